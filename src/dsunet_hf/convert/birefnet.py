"""The official BiRefNet weights (``ZhengPeng7/BiRefNet*`` ``model.safetensors``, or GitHub ``.pth``) ->
``BiRefNetForImageSegmentation``.

Key map (everything else is an error):

| official key                          | dsunet-hf key                                                      |
|---------------------------------------|--------------------------------------------------------------------|
| ``module.`` / ``_orig_mod.`` prefixes  | stripped (DDP / torch.compile checkpoints)                         |
| ``bb.<swin_v1 / pvt_v2 name>``        | ``bb.<transformers name>`` (``backbones/swin.py``, ``pvt_v2.py``): |
|                                       | fused ``qkv`` / ``kv`` split; ``relative_position_index`` checked   |
|                                       | against the recomputed index and dropped (non-persistent here)     |
| ``squeeze_module.*``, ``decoder.*``   | unchanged (same module names)                                      |

A state dict already in this package's names (a self-contained ``save_pretrained(include_backbone=True)``
copy) is accepted as is. The architecture of an official file is read from its tensors (backbone size,
BatchNorm present or not); variant names (``BiRefNet_lite``, ...) give the rest.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..backbones.loading import git_lfs_pointer
from ..hub import BackboneNotAvailableError, damaged_cache_file_advice, resolve_repo_file, snapshot_revision
from . import saved_model_type, write_folder_atomically
from .sam2 import read_torch_checkpoint

logger = logging.getLogger(__name__)

OFFICIAL_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")  # .pt: torch.save's other usual suffix
_PREFIXES = re.compile(r"^(module\.|_orig_mod\.)+")


def strip_wrapper_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_PREFIXES.sub("", key): value for key, value in state_dict.items()}


def is_official_layout(state_dict: dict) -> bool:
    return any(k.startswith(("bb.patch_embed.", "bb.patch_embed1.")) for k in state_dict)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth/.bin`` file (``weights_only`` unpickling), prefixes stripped."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return read_torch_checkpoint(path)  # one-line errors naming the file, containers unwrapped
    try:
        state_dict = load_file(str(path))
    except Exception as error:  # safetensors' own errors do not name the file, nor say what to do
        # A damaged file in the Hub cache is read again on every try until its blob is deleted.
        advice = damaged_cache_file_advice(path) or "download or copy it again"
        raise ValueError(git_lfs_pointer(path) or f"{path}: cannot read as safetensors ({path.stat().st_size:,} bytes; "
                                                  f"{error}): cut short or of another format; {advice}") from error
    return strip_wrapper_prefixes(state_dict)


def _check_birefnet_tensors(state_dict: dict, source) -> None:
    if not any(k.startswith("bb.") for k in state_dict):
        raise ValueError(f"{source}: not a BiRefNet checkpoint (no 'bb.*' backbone tensors; first keys: "
                         f"{sorted(state_dict)[:5]})")


def uses_batchnorm(state_dict: dict) -> bool:
    """Upstream drops every decoder BatchNorm when trained with batch size 1; its checkpoints then have none."""
    return any(k.startswith(("decoder.", "squeeze_module.")) and k.endswith("running_mean")
               for k in strip_wrapper_prefixes(state_dict))


def infer_birefnet_fields(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> dict:
    """Architecture fields an official checkpoint determines: backbone size and whether BatchNorm exists."""
    state_dict = strip_wrapper_prefixes(state_dict)
    fields = {"use_bn": uses_batchnorm(state_dict)}
    if "bb.patch_embed.proj.weight" in state_dict:
        embed = state_dict["bb.patch_embed.proj.weight"].shape[0]
        depth3 = len({k.split(".")[4] for k in state_dict if k.startswith("bb.layers.2.blocks.")})
        by_shape = {(96, 6): "swin_v1_t", (96, 18): "swin_v1_s", (128, 18): "swin_v1_b", (192, 18): "swin_v1_l"}
        backbone = by_shape.get((embed, depth3))
    elif "bb.patch_embed1.proj.weight" in state_dict:
        embed = state_dict["bb.patch_embed1.proj.weight"].shape[0]
        depth3 = len({k.split(".")[2] for k in state_dict if k.startswith("bb.block3.")})
        by_shape = {(32, 2): "pvt_v2_b0", (64, 2): "pvt_v2_b1", (64, 6): "pvt_v2_b2", (64, 40): "pvt_v2_b5"}
        backbone = by_shape.get((embed, depth3))
    else:
        raise ValueError(f"{source}: not an official BiRefNet checkpoint (no bb.patch_embed weights)")
    if backbone is None:
        raise ValueError(f"{source}: unknown BiRefNet backbone (embed {embed}, stage-3 depth {depth3}); pass "
                         "backbone and backbone_config for a custom size")
    fields["backbone"] = backbone
    return fields


def convert_birefnet_state_dict(state_dict: dict[str, torch.Tensor], config, source: str = "checkpoint"):
    """Official BiRefNet state dict -> this package's names for ``config`` (un-LoRA'd)."""
    state_dict = strip_wrapper_prefixes(state_dict)
    if not is_official_layout(state_dict):
        _check_birefnet_tensors(state_dict, source)
        return state_dict  # already in our names (a self-contained dsunet-hf copy)
    backbone = {k[len("bb."):]: v for k, v in state_dict.items() if k.startswith("bb.")}
    rest = {k: v for k, v in state_dict.items() if not k.startswith("bb.")}
    unknown = sorted(k for k in rest if not k.startswith(("squeeze_module.", "decoder.")))
    if unknown:
        raise ValueError(f"{source}: keys outside bb./squeeze_module./decoder.: {unknown[:8]}")
    try:
        if config.backbone.startswith("swin"):
            from ..backbones.swin import convert_official_swin_state_dict, swin_config

            converted = convert_official_swin_state_dict(backbone, swin_config(config.backbone, config.backbone_config or None))
        else:
            from ..backbones.pvt_v2 import convert_official_pvt_v2_state_dict, pvt_v2_config

            converted = convert_official_pvt_v2_state_dict(
                backbone, pvt_v2_config(config.backbone, config.backbone_config or None)
            )
    except ValueError as error:
        raise ValueError(f"{source}: backbone does not match {config.backbone}: {error}") from error
    return {**{f"bb.{k}": v for k, v in converted.items()}, **rest}


def _weights_in_folder(folder: Path, pick: bool = False) -> Path | None:
    """The weights file of a folder (or None). With ``pick``, a folder of several ``.pth`` files (a training run's
    epochs) is refused, naming them, rather than one of them taken by name order."""
    for name in OFFICIAL_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    checkpoints = sorted(folder.glob("*.pth"))
    if pick and len(checkpoints) > 1:
        names = ", ".join(p.name for p in checkpoints[:4]) + (" ..." if len(checkpoints) > 4 else "")
        raise ValueError(f"{folder}: holds {len(checkpoints)} .pth checkpoints ({names}); give the file to use")
    return checkpoints[0] if checkpoints else None


def locate_birefnet_weights(source: str | Path, revision: str | None = None,
                            **download_kwargs) -> tuple[Path, str | None]:
    """Local path of the weights file for a file, folder or Hub repo id, and the Hub commit (or None).
    ``download_kwargs`` (``cache_dir``, ``token``, ``local_files_only``, ``force_download``) apply to a Hub repo."""
    path = Path(source)
    if path.is_file():
        return path, None
    if path.is_dir():
        found = _weights_in_folder(path, pick=True)
        if found is None:
            raise BackboneNotAvailableError(f"{path}: folder holds neither model.safetensors nor a .pth checkpoint")
        return found, None
    repo_id = str(source)
    if path.suffix in WEIGHT_SUFFIXES or repo_id.startswith((".", "/", "~")) or repo_id.count("/") > 1:
        raise BackboneNotAvailableError(f"{source}: no such BiRefNet weights file or folder")
    filename = OFFICIAL_WEIGHT_FILES[0]
    local_file, error = resolve_repo_file(repo_id, filename, revision, **download_kwargs)
    if local_file is not None:
        return local_file, snapshot_revision(local_file)
    # Raised from huggingface_hub's error: a LocalEntryNotFoundError (not cached; offline or the Hub unreachable) is
    # then told as the local cache's state (cli.load_failure), not as a download that failed.
    raise BackboneNotAvailableError.for_repo(repo_id, revision, [f"{filename}: {error}"],
                                             cache_dir=download_kwargs.get("cache_dir")) from error.error


def _is_dsunet_artifact(folder: Path) -> bool:
    return saved_model_type(folder) == "birefnet"


def load_birefnet_weights(source, revision, config, **download_kwargs) -> tuple[dict[str, torch.Tensor], str | None]:
    """Official (or dsunet-hf) BiRefNet weights in this package's names, and the commit. ``download_kwargs`` as
    :func:`locate_birefnet_weights`'s."""
    path, commit = locate_birefnet_weights(source, revision, **download_kwargs)
    if _is_dsunet_artifact(path.parent):
        # A dsunet-hf copy: transformers writes nested backbones under their legacy names and maps them back
        # on load, so it is read through from_pretrained (which also follows its own base, if any).
        from ..models.birefnet import BiRefNetForImageSegmentation

        model = BiRefNetForImageSegmentation.from_pretrained(str(path.parent), **download_kwargs)
        plain = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
        return plain, commit
    return convert_birefnet_state_dict(read_checkpoint(path), config, source=str(path)), commit


def is_official_birefnet_source(source: str | Path, revision: str | None = None, **download_kwargs) -> bool:
    """True when ``source`` holds official BiRefNet weights rather than a dsunet-hf artifact: a weights file,
    a folder of weights without config.json, or a folder / Hub repo whose config.json is the official one.
    ``download_kwargs`` (``cache_dir``, ``token``, ...) apply to a Hub repo's config.json."""
    path = Path(source)
    if path.is_file():
        return path.suffix in WEIGHT_SUFFIXES
    if path.is_dir():
        config_file = path / "config.json"
    else:
        if str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
            return False
        config_file, _ = resolve_repo_file(str(source), "config.json", revision, **download_kwargs)
        if config_file is None:
            return False
    if config_file is None or not Path(config_file).is_file():
        return path.is_dir() and _weights_in_folder(path) is not None
    try:
        config = json.loads(Path(config_file).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(config, dict):  # valid JSON, but no config (e.g. a list): no model can be loaded from it
        raise ValueError(f"{config_file}: not a model config (a JSON object of fields), but a JSON "
                         f"{type(config).__name__}")
    if config.get("model_type") == "birefnet":
        return False  # a dsunet-hf artifact
    # The official repos: architectures ["BiRefNet"] and an auto_map into their remote code birefnet.py.
    return "BiRefNet" in (config.get("architectures") or []) or "birefnet" in json.dumps(config.get("auto_map", {}))


# Parts of a checkpoint's name beside its variant: the task it was trained on ("-general") and the epoch it was saved
# at ("-epoch_244", or "_ep580" in older files), as in the GitHub release file BiRefNet-general-epoch_244.pth.
_NAME_PARTS = re.compile(r"-general(?=-|$)|-epoch_\d+$|_ep\d+$", re.IGNORECASE)
# Release files and former Hub names whose name (so reduced, lower case) is not their variant's: the 512² model would
# run at 1024², the HRSOD and DIS ones train with the general task's recipe.
_RELEASE_NAMES = {"birefnet-resolution_512x512-fp16": "BiRefNet_512x512", "birefnet-hrsod_dhu": "BiRefNet-HRSOD",
                  "birefnet-bb_swin_v1_tiny": "BiRefNet_lite", "birefnet-dis": "BiRefNet-DIS5K",
                  "birefnet-massive-tr_dis5k_tr_tes": "BiRefNet-DIS5K-TR_TEs", "birefnet_t": "BiRefNet_lite",
                  "birefnet-portrait-tr_p3m_10k": "BiRefNet-portrait"}


def variant_for_source(source: str | Path) -> str | None:
    """The official variant a Hub id, folder or weights file is named after, or None.

    The name (a file's without its suffix) is a variant's name in any letter case (``ZhengPeng7/BiRefNet_lite`` ->
    BiRefNet_lite), optionally with ``-general`` and a final ``-epoch_<N>``, the parts of the GitHub release
    files' names (``BiRefNet-general-epoch_244.pth`` -> BiRefNet), and the release files named otherwise
    (``_RELEASE_NAMES``: ``BiRefNet-general-resolution_512x512-fp16-epoch_216.pth`` -> BiRefNet_512x512, ...); other
    names are not guessed at. A Hub file name
    (``BiRefNet_HR/model.safetensors``) is named by its folder, and a file or folder in the Hub cache
    (``.../models--ZhengPeng7--BiRefNet_HR/snapshots/<commit>``) by its repo."""
    from ..models.birefnet.configuration_birefnet import VARIANTS

    path = Path(str(source).rstrip("/"))
    names = [path.name]
    if path.is_file() or path.suffix.lower() in WEIGHT_SUFFIXES:
        names = [path.stem]
        if path.stem.lower() in ("model", "pytorch_model"):  # the Hub's file names say nothing: its folder's does
            names.append(path.parent.name)
    names += [part.split("--")[-1] for part in path.parts if part.startswith("models--")]
    for name in names:
        name = _NAME_PARTS.sub("", name).lower()
        variant = next((variant for variant in VARIANTS if variant.lower() == name), _RELEASE_NAMES.get(name))
        if variant is not None:
            return variant
    return None


def official_variant_name(name: str) -> str:
    """The official spelling of a variant name given in any case, with - or _ (``birefnet-lite`` ->
    ``BiRefNet_lite``); a ValueError listing the variants otherwise."""
    from ..models.birefnet.configuration_birefnet import VARIANTS

    def key(text: str) -> str:
        return text.lower().replace("-", "_")

    for variant in VARIANTS:
        if key(variant) == key(name):
            return variant
    raise ValueError(f"unknown BiRefNet variant {name!r}; the official ones: {', '.join(VARIANTS)}")


def birefnet_config_for_weights(source, state_dict: dict, variant: str | None = None, **overrides):
    """A ``BiRefNetConfig`` for official weights: the named (or recognised) variant, with the backbone and
    BatchNorm read from the tensors (they win over the variant when they disagree)."""
    from ..models.birefnet.configuration_birefnet import VARIANTS, BiRefNetConfig

    _check_birefnet_tensors(strip_wrapper_prefixes(state_dict), source)  # before a model is built for them
    variant = official_variant_name(variant) if variant else variant_for_source(source)
    fields = dict(VARIANTS[variant][0]) if variant else {}
    if is_official_layout(state_dict):
        if "backbone_config" in overrides:  # a custom-size backbone: only BatchNorm is read from the tensors
            fields["use_bn"] = uses_batchnorm(state_dict)
        else:
            fields.update(infer_birefnet_fields(state_dict, str(source)))
    fields["base_repo_id"] = str(source)
    fields.update(overrides)
    config = BiRefNetConfig(**fields)
    if variant is None:  # the task and image size are not in the tensors: said, not silently the general model's
        logger.warning("%s: no BiRefNet variant recognised in the name; assumed task %s, image size %s (the "
                       "general BiRefNet's; backbone and BatchNorm read from the weights): --variant (Python: "
                       "variant=) sets the variant, one of %s", source, config.task,
                       "x".join(map(str, config.image_size)), ", ".join(VARIANTS))
    return config


def convert_birefnet_checkpoint(source, output_dir, variant: str | None = None, revision: str | None = None,
                                **config_overrides):
    """Official weights (file, folder or Hub id) -> a self-contained dsunet-hf artifact in ``output_dir``, which must
    not be the weights' own folder."""
    from ..models.birefnet import BiRefNetForImageSegmentation

    # Written into the weights' folder, the artifact replaced the official model.safetensors, config.json and model
    # card (upstream's code could not load the folder any more): refused before anything is read (other files the
    # artifact would replace are refused by write_folder_atomically, once it is written).
    local = Path(str(source)).expanduser()
    folder = local if local.is_dir() else local.parent
    replaced = local.is_dir() or local.name == "model.safetensors"
    if replaced and local.exists() and Path(output_dir).expanduser().resolve() == folder.resolve():
        raise ValueError(f"{output_dir}: the folder of the weights being converted ({source}); the artifact's files "
                         f"(model.safetensors, config.json, README.md) would replace theirs: give another output folder")
    model = BiRefNetForImageSegmentation.from_official(source, variant=variant, revision=revision, **config_overrides)

    def write(folder):
        model.save_pretrained(folder, include_backbone=True)
        model.default_image_processor().save_pretrained(folder)

    write_folder_atomically(output_dir, write)
    return model


__all__ = [
    "convert_birefnet_state_dict", "convert_birefnet_checkpoint", "load_birefnet_weights", "infer_birefnet_fields",
    "birefnet_config_for_weights", "is_official_birefnet_source",
]
