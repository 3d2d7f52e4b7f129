"""Hugging Face Hub I/O: resolving files of frozen-backbone repos, model cards, pushing artifacts."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from importlib import resources
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData, hf_hub_download
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

# What a card shows for the repo id until it has one (a model saved without --hub-model-id).
PLACEHOLDER_REPO_ID = "path/to/this-model"


class BackboneNotAvailableError(OSError):
    """A frozen backbone's weights cannot be had (not cached offline, missing repo or file). Made by :meth:`for_repo`,
    it keeps the Hub repo's ``repo_id``, ``revision`` and the files ``tried`` (one line each), whence its message."""

    repo_id: str | None = None
    revision: str | None = None
    tried: tuple[str, ...] = ()
    cache_dir: str | os.PathLike | None = None

    @classmethod
    def for_repo(cls, repo_id: str, revision: str | None, details: list[str],
                 field: str = "backbone_repo_id", cache_dir=None) -> BackboneNotAvailableError:
        """The error for Hub repo ``repo_id`` at ``revision``, of which each file tried failed (``details``: one line
        each); its advice names the config ``field`` that holds the repo. ``cache_dir``: the Hub cache looked in."""
        where = f"'{repo_id}' (revision {revision or 'main'})"
        state = (
            f"is not in the local Hugging Face cache{no_local_folder_note(repo_id, cache_dir)} and HF_HUB_OFFLINE is set"
            if hub_constants.HF_HUB_OFFLINE
            else "could not be downloaded"
        )
        error = cls(
            f"Cannot load the frozen backbone {where}: it {state}.\n"
            + "".join(f"  - tried {line}\n" for line in details)
            + "Fix it in one of these ways:\n"
            f"  1. download it once where the Hub is reachable: {download_command(repo_id, revision)}\n"
            f"  2. point at a local copy: from_pretrained(..., {field}='/path/to/folder-or-checkpoint')\n"
            "  3. use a self-contained artifact written with save_pretrained(..., include_backbone=True)"
        )
        error.repo_id, error.revision, error.tried, error.cache_dir = repo_id, revision, tuple(details), cache_dir
        return error

    def naming_field(self, config) -> BackboneNotAvailableError:
        """This error with its advice naming the config field that holds the missing repo (DSU-Net's
        ``sam_backbone_repo_id`` / ``dino_backbone_repo_id``, BiRefNet's ``base_repo_id``, ...) instead of
        ``backbone_repo_id``; itself when that is the field or none is found."""
        field = next((name for name, value in sorted(vars(config).items())
                      if name.endswith("_repo_id") and value == self.repo_id), None)
        if self.repo_id is None or field in (None, "backbone_repo_id"):
            return self
        return type(self).for_repo(self.repo_id, self.revision, list(self.tried), field=field,
                                   cache_dir=self.cache_dir)

    def download_failure(self) -> str:
        """One line for a repo whose files are the model's own (official BiRefNet weights), not a frozen backbone
        to point elsewhere: ``revision R of ORG/NAME could not be downloaded (FILE: WHY)``."""
        what = f"revision {self.revision} of {self.repo_id}" if self.revision else str(self.repo_id)
        return f"{what} could not be downloaded ({self.tried[0] if self.tried else 'no file tried'})"


# ``from_pretrained``'s download arguments that also apply to the frozen backbones' own repos (``hf_hub_download``
# takes no ``proxies`` any more; transformers drops it too).
HUB_DOWNLOAD_KWARGS = ("cache_dir", "token", "local_files_only", "force_download")


def hub_download_kwargs(kwargs: dict) -> dict:
    """The download arguments (:data:`HUB_DOWNLOAD_KWARGS`) among ``kwargs`` that are set, for the backbones' files."""
    return {key: kwargs[key] for key in HUB_DOWNLOAD_KWARGS if kwargs.get(key) not in (None, False)}


def download_command(repo_id: str, revision: str | None = None) -> str:
    """The command, quoted as every message quotes it, that puts Hub repo ``repo_id`` (at ``revision``) into the
    local Hub cache."""
    return f"`hf download {repo_id}{revision_flag(revision)}`"


def revision_flag(revision: str | None) -> str:
    """`` --revision <revision>`` for a command line (shell-quoted: a branch may be named ``a&b``), or nothing."""
    return f" --revision {shlex.quote(revision)}" if revision else ""


def offline_fix(repo_id: str, revision: str | None = None) -> str:
    """The end of every "not in the local Hub cache" message: what to do about it offline."""
    return f"HF_HUB_OFFLINE is set: run once without HF_HUB_OFFLINE=1, or {download_command(repo_id, revision)} first"


def no_local_folder_note(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """`` (nor is there a local folder /abs/name)`` for a Hub id of which the local Hub cache holds nothing, so that a
    mistyped relative folder (``runs/exp1``, read as a Hub id since no such folder exists) is seen as one; empty
    where the cache holds some revision of the repo (a Hub repo indeed) or the path exists."""
    from huggingface_hub.file_download import repo_folder_name

    name = str(name)
    if not looks_like_hub_id(name):
        return ""
    snapshots = Path(cache_dir or hub_constants.HF_HUB_CACHE, repo_folder_name(repo_id=name, repo_type="model"),
                     "snapshots")
    if snapshots.is_dir() and any(snapshots.iterdir()):
        return ""
    return f" (nor is there a local folder {Path(name).absolute()})"


class DownloadFailure(str):
    """Why one file of a Hub repo could not be had, in one line (``ErrorType: its first line``), keeping the
    exception itself as ``error``: its type tells a file missing from the local cache (LocalEntryNotFoundError:
    offline, or the Hub not reachable) from one the Hub does not have, for the messages built on it."""

    error: BaseException


def resolve_repo_file(repo_id: str, filename: str, revision: str | None = None,
                      **download_kwargs) -> tuple[Path | None, DownloadFailure | None]:
    """Local path of one file of a Hub repo (downloaded or from the cache), or (None, why not: a
    :class:`DownloadFailure`, whose ``error`` a caller raises its own error from).
    ``download_kwargs``: ``cache_dir``, ``token``, ``local_files_only``, ``force_download`` (as ``hf_hub_download``)."""
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, **hub_download_kwargs(download_kwargs))), None
    except (
        EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError, HfHubHTTPError, HFValidationError, OSError
    ) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        why = DownloadFailure(f"{type(error).__name__}: {first_line}")
        why.error = error
        return None, why


def error_chain(error: BaseException) -> list[BaseException]:
    """``error`` and the errors it was raised from or while handling, outermost first (each once: a cycle ends it)."""
    chain, cause = [], error
    while cause is not None and all(cause is not seen for seen in chain):
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


def looks_like_hub_id(name: str, even_if_local: bool = False) -> bool:
    """``org/name`` that is not a local path (relative, absolute, home or, unless ``even_if_local``, existing) and
    that the Hub accepts as an id (no ``@revision``, spaces or ``..``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    name = str(name)
    if (not name or name.count("/") != 1 or name.startswith((".", "/", "~"))
            or (not even_if_local and Path(name).exists())):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def snapshot_revision(local_file: Path) -> str | None:
    """The commit hash of a file inside a Hub cache snapshot (``.../snapshots/<sha>/file``)."""
    for parent in Path(local_file).parents:
        if parent.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", parent.name):
            return parent.name
    return None


def damaged_cache_file_advice(path: str | os.PathLike) -> str | None:
    """What to do about a damaged file inside a Hub cache snapshot (None for a file elsewhere): a snapshot's file links
    to a blob, which a new download links to again unless the blob is deleted or the download forced."""
    path = Path(path)
    if snapshot_revision(path) is None:
        return None
    return f"delete {path.resolve()} (the Hub cache's copy) and load again, or load with force_download=True"


def package_versions(*packages: str) -> dict[str, str]:
    """``{package: version}`` of those installed (for reports and cards)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    return versions


def repo_link(repo_id: str) -> str:
    """Markdown for a model source in a card: a Hub id links to its page; a local folder or file (a converted
    trunk, an offline copy) is named as a path, not linked to a Hub page that does not exist."""
    text = str(repo_id)
    if looks_like_hub_id(text):
        return f"[`{text}`](https://huggingface.co/{text})"
    return f"`{text}` (a local path)"


# How a card names the weights in its table until it is saved beside them (see PackageModelCard.save).
DEFAULT_WEIGHT_FILES = "`model.safetensors`"


def describe_weight_files(folder: str | os.PathLike, variant: str | None = None) -> str | None:
    """Markdown naming the safetensors weights of ``variant`` in ``folder``: one file, or an index and its shards, or
    None where there are none (a save leaves one layout per variant: :func:`remove_stale_weights`)."""
    single, index = (Path(folder) / name for name in weight_file_names(variant))
    if single.is_file():
        return f"`{single.name}`"
    if not index.is_file():
        return None
    try:
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
    except (OSError, ValueError, AttributeError, TypeError):  # unreadable: the index is named alone
        shards = []
    if not shards:
        return f"`{index.name}`"
    named = f"`{shards[0]}`" if len(shards) == 1 else f"`{shards[0]}` … `{shards[-1]}`"
    return f"`{index.name}` and its {len(shards)} shard{'s' if len(shards) > 1 else ''} {named}"


class PackageModelCard(ModelCard):
    """A card rendered from this package's templates. :meth:`save` writes it atomically (a killed save never
    leaves half a card) and names the weight files actually beside it: a sharded (``max_shard_size``) or variant
    save writes no ``model.safetensors`` (``weights_variant``: the variant saved, if any)."""

    def save(self, filepath: str | os.PathLike) -> None:
        from .files import write_text_atomic

        filepath = Path(filepath)
        weights = describe_weight_files(filepath.parent, getattr(self, "weights_variant", None))
        if weights:  # the table's cell, as the template renders it (a card's text is ours: no other such phrase)
            self.text = self.text.replace(f"this repository ({DEFAULT_WEIGHT_FILES})", f"this repository ({weights})")
        write_text_atomic(filepath, str(self))


def card_revision(revision: str | None) -> str | None:
    """The revision a card pushed to ``revision`` names in its snippets: that branch, but none for ``main`` (the
    default) or a pull request (``refs/pr/N``, merged into ``main``)."""
    if not revision or revision == "main" or revision.startswith("refs/pr/"):
        return None
    return revision


def card_revision_kwarg(revision: str | None) -> str:
    """``, revision="<branch>"`` for a card's ``from_pretrained("<repo>"...)`` snippets (see :func:`card_revision`)."""
    revision = card_revision(revision)
    return f", revision={json.dumps(revision)}" if revision else ""


def render_model_card(template_name: str, card_data: ModelCardData, **variables) -> ModelCard:
    """Render ``model_cards/<template_name>`` (Jinja) with ``huggingface_hub.ModelCard``; templates link model
    sources with ``repo_link`` and name the weights with ``weight_files``. ``revision``: the branch the card is pushed
    to, which its snippets then load (``from_pretrained(..., revision=...)``, ``--revision``), as a user copying them
    from that branch's page would otherwise load ``main``."""
    template = resources.files("dsunet_hf").joinpath("model_cards", template_name).read_text(encoding="utf-8")
    variables.setdefault("weight_files", DEFAULT_WEIGHT_FILES)
    revision = card_revision(variables.pop("revision", None))
    variables["revision_kwarg"] = card_revision_kwarg(revision)
    variables["revision_flag"] = revision_flag(revision)
    return PackageModelCard.from_template(card_data, template_str=template, repo_link=repo_link, **variables)


def weight_file_names(variant: str | None = None) -> tuple[str, str]:
    """(single file, shard index) names of a model's safetensors weights, as transformers names them."""
    if not variant:
        return "model.safetensors", "model.safetensors.index.json"
    return f"model.{variant}.safetensors", f"model.safetensors.index.{variant}.json"


# The weight files of a saved model in any variant and layout (``weight_file_names`` for every variant, its shards too;
# transformers' older pytorch_model*.bin as well): an ONNX export's own files (model.onnx, model.onnx.data) match none.
SAVED_WEIGHT_GLOBS = ("model*.safetensors", "model.safetensors.index*.json", "pytorch_model*.bin",
                      "pytorch_model.bin.index*.json")


def saved_weight_files(folder: str | os.PathLike) -> list[Path]:
    """The PyTorch weight files in ``folder`` (:data:`SAVED_WEIGHT_GLOBS`), e.g. to tell a model's folder from an
    ONNX export's."""
    return sorted({path for pattern in SAVED_WEIGHT_GLOBS for path in Path(folder).glob(pattern) if path.is_file()})


def remove_stale_weights(folder: str | os.PathLike, variant: str | None = None) -> None:
    """After ``save_pretrained`` into ``folder``: remove the weights an earlier save left in the other layout.
    transformers deletes the old shards that a new save does not rewrite, but keeps a single weights file beside new
    shards (``from_pretrained`` loads that one: the older model) and an index beside a new single file (naming shards
    that are gone)."""
    single, index = (Path(folder) / name for name in weight_file_names(variant))
    if not index.is_file():
        return
    try:
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
    except (OSError, ValueError, AttributeError, TypeError):  # unreadable: not one this save wrote
        shards = set()
    # All of the index's shards there: this save was sharded (an unsharded one deletes every file named as a shard).
    shard_name = re.escape(single.name.removesuffix(".safetensors")) + r"-\d{5}-of-\d{5}\.safetensors"
    sharded = bool(shards) and all(isinstance(shard, str) and re.fullmatch(shard_name, shard)
                                   and (Path(folder) / shard).is_file() for shard in shards)
    stale = single if sharded else index
    if stale.is_file():
        stale.unlink()


# A model repo's weight files (one file, or shards and their index): a push replaces those of an earlier push, so that
# the Hub never serves an older single file beside new shards (which from_pretrained would load) or a stale index.
# A variant's (``model.fp16.safetensors``, ...) are its own: a push of one variant leaves the others' files alone.
def hub_weight_patterns(variant: str | None = None) -> list[str]:
    single, index = weight_file_names(variant)
    return [single, single.removesuffix(".safetensors") + "-?????-of-?????.safetensors", index]


def saved_file_patterns(variant: str | None = None) -> list[str]:
    """The files ``save_pretrained`` writes at the top of its folder (config, card, image processor, weights): what it
    uploads with ``push_to_hub=True``, as transformers uploads only the files its save wrote, not the folder's others
    (a Trainer's checkpoints, a user's notes)."""
    return ["config.json", "README.md", "preprocessor_config.json", *hub_weight_patterns(variant)]


def check_push_target(revision: str | None, create_pr: bool) -> None:
    """Refuse (ValueError) what the Hub would refuse only after the repo is created: a pull request is always opened
    against ``main``, so ``create_pr=True`` takes no other ``revision``."""
    if create_pr and revision and revision != "main":
        raise ValueError(f"push_to_hub: create_pr=True opens a pull request against the main branch, so it takes no "
                         f"revision ({revision!r}); push to that branch without create_pr, or open the pull request "
                         f"against main")


def create_hub_repo(repo_id: str, *, private: bool | None = None, token: str | None = None,
                    space_sdk: str | None = None) -> str:
    """Create the repo if needed and return its full id (``name`` -> ``<user>/name``, as the Hub names it): cards
    rendered before the upload need it for their snippets. ``private``/``space_sdk`` as in
    :func:`upload_folder_to_hub`."""
    api = HfApi(token=token)
    repo_type = "space" if space_sdk else None
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type, space_sdk=space_sdk).repo_id
    if private:
        api.update_repo_settings(repo_id, private=True, repo_type=repo_type)
    return repo_id


def upload_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    commit_message: str = "Upload fine-tuned dsunet-hf model",
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    space_sdk: str | None = None,
    repo_created: bool = False,
    allow_patterns: list[str] | None = None,
    variant: str | None = None,
) -> str:
    """Create the repo if needed and upload a saved artifact folder in one commit; returns the repo id.
    ``space_sdk`` (e.g. ``"gradio"``) makes it a Space instead of a model repo. ``private=True`` makes the repo
    private, an existing one too (``create_repo`` leaves an existing repo's visibility as it is); None: a new
    repo gets the account's default visibility. ``revision``: the branch to commit to, created when missing.
    ``repo_created=True``: :func:`create_hub_repo` made the repo already (``repo_id`` is the full id it returned,
    ``private`` applied), so it is not created again. ``allow_patterns``: only those files of the folder (default:
    all). ``variant``: the weights of that variant (``save_pretrained(variant=...)``) replace the repo's older ones
    of that variant; the main weights and other variants stay."""
    check_push_target(revision, create_pr)
    api = HfApi(token=token)
    repo_type = "space" if space_sdk else None
    if not repo_created:
        repo_id = create_hub_repo(repo_id, private=private, token=token, space_sdk=space_sdk)
    if revision and not create_pr and not revision.startswith("refs/pr/"):
        # The Hub refuses a commit to a branch that does not exist (404); transformers' push_to_hub creates it too.
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type=repo_type)
    # A model folder with weights replaces the repo's older weight files (those it uploads are not deleted).
    holds_weights = any((Path(folder) / name).is_file() for name in weight_file_names(variant))
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        commit_description=commit_description,
        revision=revision,
        create_pr=create_pr,
        repo_type=repo_type,
        allow_patterns=allow_patterns,
        delete_patterns=hub_weight_patterns(variant) if holds_weights and not space_sdk else None,
    )
    return repo_id


# The card section written from `dsunet-hf evaluate` reports; replaced, not repeated, when pushed again.
_EVALUATION_BEGIN, _EVALUATION_END = "<!-- dsunet-hf:evaluation -->", "<!-- /dsunet-hf:evaluation -->"


def _read_evaluation_report(path: Path) -> dict:
    import json

    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: cannot read an evaluation report ({error})") from error
    if not isinstance(report, dict) or not isinstance(report.get("results"), dict) or not report["results"]:
        raise ValueError(f"{path}: not a `dsunet-hf evaluate` report (no per-dataset \"results\")")
    return report


def eval_result(dataset: str, source: str, split: str | None, metric: str, value: float):
    """One model-index entry (``huggingface_hub.EvalResult``): ``metric`` of the model on ``dataset`` (read from
    ``source``: a Hub dataset id names the dataset on the Hub, a local folder only by its name)."""
    from huggingface_hub import EvalResult

    return EvalResult(
        task_type="image-segmentation", task_name="Image segmentation",
        dataset_type=source if looks_like_hub_id(source) else dataset, dataset_name=dataset, dataset_split=split,
        metric_type=re.sub(r"[^a-z0-9]+", "_", metric.lower()).strip("_"), metric_name=metric,
        metric_value=round(float(value), 4),
    )


def _is_finite_number(value) -> bool:
    """A metric the model-index can hold: NaN (e.g. a metric undefined on the data) is not valid there."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def add_validation_results_to_card(folder: str | os.PathLike, metrics: dict, dataset: str, source: str,
                                   model_name: str) -> None:
    """Put a training run's validation ``metrics`` into the card in ``folder`` as model-index results (split
    ``validation``, as transformers' Trainer reports its evaluation set), so the Hub shows them on the model page;
    the card's table already lists them."""
    card_path = Path(folder) / "README.md"
    card = ModelCard.load(card_path)
    card.data.eval_results = [eval_result(dataset, source, "validation", metric, value)
                              for metric, value in metrics.items() if _is_finite_number(value)]
    card.data.model_name = model_name
    from .files import write_text_atomic

    write_text_atomic(card_path, str(card))  # a killed run never leaves half a card


def check_evaluation_for_card(reports: list[str | os.PathLike], folder: str | os.PathLike | None = None) -> list[dict]:
    """What :func:`add_evaluation_to_card` refuses (ValueError), checked without writing anything, e.g. before a
    Hub repo is created: ``reports`` that are not ``dsunet-hf evaluate`` reports, and (with ``folder``) a folder
    with no ``README.md`` model card. Returns the reports read."""
    if folder is not None and not (Path(folder) / "README.md").is_file():
        raise ValueError(f"{folder}: no README.md model card (save the model with save_pretrained first)")
    return [_read_evaluation_report(Path(path)) for path in reports]


def add_evaluation_to_card(folder: str | os.PathLike, reports: list[str | os.PathLike],
                           model_name: str | None = None) -> ModelCard:
    """Fold ``dsunet-hf evaluate`` reports (``evaluation.json``) into the model card in ``folder``: the Hub's
    ``model-index`` results (shown on the model page; one entry per dataset and metric, Hub dataset ids where
    the data came from the Hub) and a section with the table, the protocol and the versions. Results for a
    dataset and metric already on the card are replaced; NaN values (a metric undefined on the data) appear in
    the table only, as the model-index cannot hold them. Writes ``README.md`` back and returns the card."""
    from .evaluate import format_table
    from .files import write_text_atomic

    folder = Path(folder)
    card_path = folder / "README.md"
    loaded = check_evaluation_for_card(reports, folder)
    card = ModelCard.load(card_path)
    reported = {}  # (dataset, metric) -> (value, source, split); a later report wins
    for report in loaded:
        sources = report.get("info", {}).get("data") or {}
        split = report.get("info", {}).get("split")
        for dataset, metrics in report["results"].items():
            for metric, value in metrics.items():
                reported[(dataset, metric)] = (value, str(sources.get(dataset, "")), split)
    kept = [result for result in (card.data.eval_results or [])
            if (result.dataset_name, result.metric_name) not in reported]
    card.data.eval_results = kept + [eval_result(dataset, source, split, metric, value)
                                     for (dataset, metric), (value, source, split) in reported.items()
                                     if _is_finite_number(value)] or None  # NaN only in the table below
    card.data.model_name = card.data.model_name or model_name or folder.resolve().name
    table: dict[str, dict[str, float]] = {}  # every result on the card, the earlier ones included
    for result in kept:
        table.setdefault(result.dataset_name, {})[result.metric_name] = result.metric_value
    for (dataset, metric), (value, _, _) in reported.items():
        table.setdefault(dataset, {})[metric] = value
    section = [_EVALUATION_BEGIN, "## Benchmark results (`dsunet-hf evaluate`)", "", format_table(table), ""]
    for report in loaded:
        section += [f"{', '.join(report['results'])}: protocol {report.get('protocol', 'see evaluation.json')}; "
                    + ", ".join(f"{name} {version}" for name, version in report.get("versions", {}).items()) + ".",
                    ""]
    section.append(_EVALUATION_END)
    text = card.text
    if _EVALUATION_BEGIN in text and _EVALUATION_END in text:
        before, rest = text.split(_EVALUATION_BEGIN, 1)
        text = before + "\n".join(section) + rest.split(_EVALUATION_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
    card.text = text
    write_text_atomic(card_path, str(card))
    return card
