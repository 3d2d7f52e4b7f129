"""``dsunet-hf``: train, evaluate, predict, convert, export, push, info, app/space (a demo page), and a demo on generated data."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

DEFAULT_CROP_MARGIN = 0.25  # --crop-margin of predict and evaluate

VERIFY_HELP = ("trainable-only artifacts: load even on frozen backbone weights other than those the model was saved "
               "with (its config.json's backbone_fingerprint: a moved revision, another local folder); the outputs "
               "then differ from the trained model's")


BACKBONE_SOURCE_HELP = ("trainable-only artifacts: load a frozen backbone from another repo id, local folder or "
                        "revision, a field of the model's config.json: backbone_repo_id, backbone_revision (DSU-Net: "
                        "sam_backbone_*, dino_backbone_*; visual-prompt models: dino_backbone_*; BiRefNet: base_*), "
                        "e.g. backbone_revision=COMMIT (a refusal of other backbone weights names the model's "
                        "fields); repeat for several")


def load_failure(command: str, name: str, error: Exception, revision: str | None = None) -> SystemExit:
    """``<command>: cannot load <name>: <why>`` in one line; where the error names the Python keywords that choose
    the backbone weights (or load a model on others anyway), the command line's options instead; a Hub repo (at
    ``revision``, --revision) that is not in the local cache and cannot be downloaded is said so, naming both."""
    from .hub import BackboneNotAvailableError

    not_cached = _not_in_local_cache(name, error, revision)
    if not_cached:
        return SystemExit(f"{command}: cannot load {name}: {not_cached}")
    if isinstance(error, BackboneNotAvailableError) and error.repo_id == name:
        # The model's own weights (official BiRefNet weights), not a frozen backbone to point elsewhere: one line.
        return SystemExit(f"{command}: cannot load {name}: {error.download_failure()}")
    reason = str(error).replace("verify_backbone_weights=False", "--no-verify-backbone-weights")
    reason = re.sub(r"Pass the (\w+)/(\w+) it was trained with",
                    r"Pass the backbone it was trained with (--backbone-source \1=REPO_OR_FOLDER and/or "
                    r"--backbone-source \2=REVISION)", reason)
    reason = re.sub(r"from_pretrained\(\.\.\., (\w+)='([^']*)'\)", r"--backbone-source \1=\2", reason)
    reason = re.sub(r"load with variant='([^']*)'", r"add --variant \1", reason)  # a folder of variant weights only
    return SystemExit(f"{command}: cannot load {name}: {reason}")


def _not_in_local_cache(name: str, error: Exception, revision: str | None) -> str | None:
    """Why a Hub repo's files could not be had, where the cause is huggingface_hub's LocalEntryNotFoundError (not in
    the local cache, and offline or the Hub not reachable), or where, offline, the repo's snapshot in the local cache
    holds no weights (an interrupted download): transformers says that in two generic lines naming neither the repo
    nor the revision, or as if the repo had no weights ("does not appear to have a file named model.safetensors"),
    and the loader of official BiRefNet weights as if they were a frozen backbone."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    from .hub import (
        BackboneNotAvailableError,
        download_command,
        error_chain,
        looks_like_hub_id,
        no_local_folder_note,
        offline_fix,
        saved_weight_files,
        snapshot_revision,
    )
    from .modeling_utils import cached_full_commits, cached_snapshot

    if not looks_like_hub_id(name):
        return None
    chain = error_chain(error)
    # Offline, the model's own weights (official BiRefNet's) missing from the cache are as transformers' files.
    own_weights = any(isinstance(cause, BackboneNotAvailableError) and cause.repo_id == name for cause in chain)
    unreachable = (any(isinstance(cause, LocalEntryNotFoundError) for cause in chain)
                   or (own_weights and constants.HF_HUB_OFFLINE))
    # Another repo's files (a frozen backbone's) are that error's own to tell, the cache's error it was raised from
    # (BiRefNet's base weights) too: the model's own repo is cached.
    if any(isinstance(cause, BackboneNotAvailableError) and cause.repo_id != name for cause in chain):
        return None
    if not unreachable and not constants.HF_HUB_OFFLINE:
        return None
    snapshot = cached_snapshot(name, revision)
    # Offline, a file missing (OSError) from a snapshot without any weights file; a visual-prompt matcher's artifact
    # has none by design, and fails on other repos (said above) or with a ValueError.
    weightless = (isinstance(error, OSError) and snapshot is not None and not saved_weight_files(snapshot)
                  and not any(snapshot.glob("*.onnx")))
    if not unreachable and not weightless:
        return None
    what = f"revision {revision} of {name}" if revision else name
    commit = None if snapshot is None else snapshot_revision(snapshot / "config.json")
    # Offline, huggingface_hub resolves a short commit hash only through a refs/ file (written by a download that
    # named it so): the commit itself may well be in the cache, under its full hash.
    full = cached_full_commits(name, revision) if constants.HF_HUB_OFFLINE and not commit else []
    if len(full) == 1:
        return (f"{what}: offline, a short commit hash is not resolved; the local Hub cache holds commit {full[0]}: "
                f"pass --revision {full[0]}")
    where = (f"is only partly in the local Hub cache (snapshot {commit}"
             + (", without its weights file: an interrupted download?)" if weightless else ")") if commit else
             "is not in the local Hub cache")
    if constants.HF_HUB_OFFLINE:  # a mistyped relative folder (runs/exp1) reads as a Hub id: said where it is none
        where += "" if commit else no_local_folder_note(name)
        return f"{what} {where} and {offline_fix(name, revision)}"
    return f"{what} {where} and the Hub cannot be reached: run it where the Hub is, or {download_command(name, revision)} there first"


def not_visual_prompt(command: str, name: str, refusal: str, revision: str | None = None) -> SystemExit:
    """``refusal`` (visual-prompt options for a model that is not one), unless the model's config (of ``revision``)
    cannot be reached at all (a mistyped folder, no network): that is said instead, not "not a visual-prompt model"."""
    from transformers import AutoConfig

    if Path(name).expanduser().is_file():  # a weights file (official BiRefNet's .pth): no config, no visual prompts
        return SystemExit(refusal)
    try:
        AutoConfig.from_pretrained(name, revision=revision)
    except OSError as error:
        return load_failure(command, name, error, revision=revision)
    except (ValueError, TypeError, AttributeError):  # readable but not ours (e.g. remote code): not one indeed
        pass
    return SystemExit(refusal)


def backbone_sources(command: str, given: list[str] | None) -> dict[str, str]:
    """``--backbone-source FIELD=VALUE`` options as ``from_pretrained`` keywords (which fields a model has is checked
    where it loads)."""
    sources: dict[str, str] = {}
    for item in given or []:
        field, _, value = item.partition("=")
        if not re.fullmatch(r"\w+_(repo_id|revision)", field) or not value:
            raise SystemExit(f"{command}: --backbone-source takes FIELD=VALUE with FIELD a config field ending in "
                             f"_repo_id or _revision (e.g. backbone_revision=main), got {item!r}")
        if field in sources:
            raise SystemExit(f"{command}: --backbone-source {field} given twice")
        sources[field] = value
    return sources


REVISION_HELP = ("a Hub repo's branch, tag or commit to load (default: main), as from_pretrained(revision=...); "
                 "the image processor comes from the same one")
VARIANT_HELP = ("load the weights saved with save_pretrained(variant=VARIANT): model.VARIANT.safetensors (e.g. fp16); "
                "official BiRefNet weights: the official variant (BiRefNet_lite, BiRefNet_HR, ...) where their name "
                "does not say it; ONNX exports have none")


def add_model_source_arguments(parser) -> None:
    """``--revision`` and ``--variant``: which version of ``--model`` a command loads."""
    parser.add_argument("--revision", default=None, metavar="BRANCH|TAG|COMMIT", help=REVISION_HELP)
    parser.add_argument("--variant", default=None, help=VARIANT_HELP)


def model_source(command: str, args) -> dict:
    """``--revision`` / ``--variant`` as the ``from_pretrained`` keywords given; a revision of a local path (which
    names no Hub repo, so it would be ignored) or an empty value is refused before anything loads."""
    given = {key: getattr(args, key, None) for key in ("revision", "variant")}
    for key, value in given.items():
        if value is not None and not value.strip():
            raise SystemExit(f"{command}: --{key} is empty")
    if given["revision"] is not None and args.model and Path(args.model).expanduser().exists():
        from .hub import looks_like_hub_id

        if looks_like_hub_id(args.model, even_if_local=True):  # a folder here named like a Hub repo: the folder wins
            raise SystemExit(f"{command}: --revision {given['revision']}: {args.model} is both a folder here and a Hub "
                             f"repo id; the folder is loaded, and it has no revisions: to load that revision of the "
                             f"Hub repo, run from another directory or rename the folder")
        raise SystemExit(f"{command}: --revision {given['revision']}: a Hub repo's branch, tag or commit, but "
                         f"{args.model} is a local path; name the Hub repo, or check that revision out there")
    return {key: value for key, value in given.items() if value is not None}


def _predict_with_prompts(args) -> int:
    from .models.checked_config import check_finite_number
    from .prompt_predict import (
        check_track_memory,
        load_visual_prompt_model,
        predict_with_prompts,
        read_reference_prompts,
        visual_prompt_model_type,
    )
    from .prompts import MaskPrompt, as_prompt

    if len(args.reference) != len(args.prompt or []):
        raise SystemExit(f"predict: give one --prompt per --reference (got {len(args.reference)} reference(s) and "
                         f"{len(args.prompt or [])} prompt(s))")
    source = model_source("predict", args)
    model_type = visual_prompt_model_type(args.model, revision=source.get("revision"))
    if model_type is None:
        raise not_visual_prompt("predict", args.model, "predict: --reference/--prompt need a visual-prompt model "
                                f"(model_type visual_prompt or visual_prompt_matcher); {args.model} is not one",
                                revision=source.get("revision"))
    unused = {"--cutout": args.cutout, "--background": args.background is not None,
              "--minmax-normalize": args.minmax_normalize, "--schedule": args.schedule is not None,
              "--resolution native": args.resolution == "native", "--autocast": args.autocast != "none",
              "--channels-last": args.channels_last, "--compile": args.compile, "--crop-refine": args.crop_refine,
              "--temporal-smoothing": bool(args.temporal_smoothing), "--num-workers": args.num_workers is not None}
    if any(unused.values()):  # rather than silently ignored
        raise SystemExit(f"predict: {', '.join(k for k, v in unused.items() if v)}: not for visual-prompt models "
                         f"(they write masks, --overlay and --save-scores)")
    if args.track_memory is not None and not args.track:
        raise SystemExit("predict: --track-memory sets the memory of --track; add --track")
    if args.mode and model_type != "visual_prompt":
        raise SystemExit(f"predict: --mode applies to the trained visual-prompt head (model_type visual_prompt); "
                         f"{args.model} is a {model_type}")
    if args.threshold is not None:  # before the model loads; the same check as predict_with_prompts'
        try:
            check_finite_number("--threshold", args.threshold)
        except ValueError as error:
            raise SystemExit(f"predict: {error} (on the model's score scale)") from error
    try:  # a typo in a prompt or a reference: said before the model loads (for a Hub model, a download)
        if args.track_memory is not None:
            check_track_memory(args.track_memory)
        if args.mask_threshold is not None:  # its value is checked by read_reference_prompts, below
            if not any(isinstance(as_prompt(prompt), MaskPrompt) for prompt in args.prompt):  # rather than ignored
                raise ValueError("--mask-threshold applies to mask prompts (mask:path.png or a mask image path); "
                                 "no --prompt is one")
        given = read_reference_prompts(args.reference, args.prompt, args.mask_threshold)  # read once
    except (ValueError, OSError) as error:
        raise SystemExit(f"predict: {error}") from error
    try:
        model = load_visual_prompt_model(args.model, device=args.device, dtype=_torch_dtype(args.dtype),
                                         verify_backbone_weights=args.verify_backbone_weights,
                                         backbone_sources=backbone_sources("predict", args.backbone_source), **source)
    except (ValueError, OSError) as error:  # a damaged weights file, not a model folder, other backbone weights
        raise load_failure("predict", args.model, error, revision=source.get("revision")) from error
    extra = {"mode": args.mode} if args.mode else {}
    try:
        report = predict_with_prompts(
            model, given, None, args.inputs, args.output_dir, threshold=args.threshold,
            overlay=args.overlay, overwrite=args.overwrite, batch_size=args.batch_size, save_scores=args.save_scores,
            track=args.track, track_memory=8 if args.track_memory is None else args.track_memory, **extra,
        )
    except (ValueError, ImportError, OSError) as error:  # a bad reference or prompt, no PyAV, disk full
        raise SystemExit(f"predict: {error}") from error
    print(f"{report.summary()} -> {args.output_dir}")
    for path, reason in report.failed.items():
        print(f"  skipped {path}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0


def _predict(args) -> int:
    import torch

    from .distributed import process_state
    from .onnx_export import OnnxSegmentationModel, is_onnx_export
    from .predict import check_inputs, class_map_refusal, load_model_and_processor, predict_files
    from .prompt_predict import visual_prompt_model_type

    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--num-workers", args.num_workers, 0)):
        if value is not None and value < least:
            raise SystemExit(f"predict: {flag} must be >= {least}, got {value}")
    if args.cutout_colors is not None and not (args.cutout or args.background is not None):
        raise SystemExit("predict: --cutout-colors needs --cutout or --background (the colours of their foreground)")
    check_output_folder("predict", args.output_dir, "--output-dir")
    sources = backbone_sources("predict", args.backbone_source)  # a malformed one: said before anything loads
    source = model_source("predict", args)
    try:
        check_inputs(args.inputs)  # a mistyped path: said before a model loads
    except FileNotFoundError as error:
        raise SystemExit(f"predict: {error}") from error
    if args.reference:
        return _predict_with_prompts(args)
    if args.prompt:
        raise SystemExit("predict: --prompt needs --reference (the image the prompt is drawn on)")
    prompt_only = {"--save-scores": args.save_scores, "--mode": args.mode is not None, "--track": args.track,
                   "--track-memory": args.track_memory is not None, "--mask-threshold": args.mask_threshold is not None}
    if any(prompt_only.values()):  # rather than silently ignored
        raise SystemExit(f"predict: {', '.join(k for k, v in prompt_only.items() if v)}: for visual-prompt models "
                         f"with --reference and --prompt")
    if visual_prompt_model_type(args.model, revision=source.get("revision")):
        raise SystemExit(f"predict: {args.model} is a visual-prompt model: pass --reference IMAGE --prompt PROMPT "
                         "(e.g. box:x0,y0,x1,y1, point:x,y, scribble:x,y;x,y or mask.png)")
    if is_onnx_export(args.model):
        check_extra("predict", "onnx", ("onnxruntime",))
    dtype = _torch_dtype(args.dtype)
    state = process_state(args.device)  # under `accelerate launch` / torchrun: one device per process, files split
    device = args.device or (str(state.device) if state.num_processes > 1 else None)
    try:
        model, processor = load_model_and_processor(args.model, device=device, dtype=dtype,
                                                    verify_backbone_weights=args.verify_backbone_weights,
                                                    backbone_sources=sources, **source)
    except (ValueError, OSError, ImportError) as error:  # OSError: not a model folder, or a Hub id neither cached
        # nor reachable; ImportError: a Hub repo of an ONNX export without onnxruntime
        raise load_failure("predict", args.model, error, revision=source.get("revision")) from error
    if isinstance(model, OnnxSegmentationModel):  # an exported graph, run by onnxruntime
        torch_only = {"--autocast": args.autocast != "none", "--channels-last": args.channels_last,
                      "--compile": args.compile}
        if any(torch_only.values()):
            raise SystemExit(f"predict: {args.model} is an ONNX graph run by onnxruntime; options for PyTorch models "
                             f"only: {', '.join(k for k, v in torch_only.items() if v)}")
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:  # dynamic shapes: the last, smaller batch does not trigger a recompile
        model = torch.compile(model, dynamic=True)
    autocast = None if args.autocast == "none" else _torch_dtype(args.autocast)
    foreground_only = {"--cutout": args.cutout, "--background": args.background is not None,
                       "--threshold": args.threshold is not None, "--minmax-normalize": args.minmax_normalize,
                       "--crop-refine": args.crop_refine}
    if getattr(model, "predicts_class_maps", False) and any(foreground_only.values()):  # named as flags, not keywords
        raise SystemExit(f"predict: {class_map_refusal(foreground_only, args.model)}")
    try:
        report = predict_files(
            model, processor, args.inputs, args.output_dir, batch_size=args.batch_size, threshold=args.threshold,
            minmax_normalize=args.minmax_normalize, overlay=args.overlay, cutout=args.cutout,
            cutout_colors=args.cutout_colors or "estimate", background=args.background, overwrite=args.overwrite,
            num_workers=2 if args.num_workers is None else args.num_workers,
            autocast_dtype=autocast, channels_last=args.channels_last, resolution=args.resolution,
            max_side=args.max_side, schedule=args.schedule, crop_refine=args.crop_refine, crop_margin=args.crop_margin,
            temporal_smoothing=args.temporal_smoothing,
        )
    except (ValueError, ImportError, OSError) as error:  # options that do not fit, no PyAV, inputs gone, disk full
        raise SystemExit(f"predict: {error}") from error
    if not state.is_main_process:
        return 0
    print(f"{report.summary()} -> {args.output_dir}")
    for path, reason in report.failed.items():
        print(f"  skipped {path}: {reason}", file=sys.stderr)
    return 1 if report.failed else 0  # non-zero: some inputs could not be read (listed above)


# Which convert options each kind takes (the rest are refused, not silently ignored).
_CONVERT_OPTIONS = {
    "sam2-unet": {"backbone_repo_id", "backbone_revision", "include_backbone", "id2label"},
    "dsunet": {"backbone_repo_id", "backbone_revision", "dino_backbone_repo_id", "dino_backbone_revision",
               "include_backbone", "id2label"},
    "dinov2-head": {"backbone_repo_id", "backbone_revision", "id2label"},
    "sam2-hiera": set(),
    "birefnet": {"variant", "config_overrides", "revision"},  # always self-contained (the backbone is in the weights)
}


def _convert(args) -> int:
    options = sorted(set().union(*_CONVERT_OPTIONS.values()))
    for name in ("revision", "variant"):  # an empty one loaded main / the default weights silently
        if getattr(args, name) is not None and not getattr(args, name).strip():
            raise SystemExit(f"convert {args.kind}: --{name} is empty")
    given = [name for name in options if getattr(args, name) not in (None, False)]
    refused = [name for name in given if name not in _CONVERT_OPTIONS[args.kind]]
    if refused:
        raise SystemExit(f"convert {args.kind}: {', '.join('--' + n.replace('_', '-') for n in refused)} do(es) not "
                         f"apply to this kind")
    try:
        summary = _convert_checkpoint(args)
    except (ValueError, OSError, RuntimeError) as error:  # a missing file, not such a checkpoint, another size
        if args.kind == "birefnet" and getattr(error, "repo_id", None) == args.source:
            # The official weights themselves (not a "frozen backbone" to point backbone_repo_id= at): one line, the
            # local cache's state where that is what failed (the error is raised from huggingface_hub's).
            raise load_failure("convert birefnet", args.source, error, revision=args.revision) from error
        raise SystemExit(f"convert {args.kind}: {error}") from error
    print(f"converted {args.source} -> {args.output} ({summary})")
    return 0


def _convert_checkpoint(args) -> str:
    """Convert ``args.source`` as ``args.kind``; returns a one-line summary of what was written."""
    from .data import read_labels_file
    from .finetune import parameter_counts, trainable_summary

    id2label = args.id2label or None  # the file: the converters' class-id checks name it
    if args.id2label:  # said before the checkpoint is read, naming the option
        try:
            read_labels_file(args.id2label)
        except OSError as error:  # e.g. "[Errno 2] No such file or directory: 'x.json'" named neither the option
            raise ValueError(f"--id2label {args.id2label}: cannot be read ({error.strerror or error})") from error
        except ValueError as error:
            raise ValueError(f"--id2label {error}") from error
    if args.kind == "sam2-unet":
        from .convert.sam2_unet import convert_sam2_unet_checkpoint

        model = convert_sam2_unet_checkpoint(
            args.source, args.output, backbone_repo_id=args.backbone_repo_id,
            backbone_revision=args.backbone_revision, include_backbone=args.include_backbone, id2label=id2label,
        )
        return trainable_summary(model)
    if args.kind == "dinov2-head":
        from .convert.dinov2_head import convert_dinov2_head_checkpoint

        model = convert_dinov2_head_checkpoint(args.source, args.output, backbone_repo_id=args.backbone_repo_id,
                                               backbone_revision=args.backbone_revision, id2label=id2label)
        return f"{model.config.head_type} head, {model.config.num_labels} classes"
    if args.kind == "dsunet":
        from .convert.dsunet import convert_dsunet_checkpoint

        model = convert_dsunet_checkpoint(
            args.source, args.output, include_backbone=args.include_backbone,
            sam_backbone_repo_id=args.backbone_repo_id, sam_backbone_revision=args.backbone_revision,
            dino_backbone_repo_id=args.dino_backbone_repo_id, dino_backbone_revision=args.dino_backbone_revision,
            id2label=id2label,
        )
        return trainable_summary(model)
    if args.kind == "birefnet":
        from .convert.birefnet import convert_birefnet_checkpoint

        try:
            overrides = json.loads(args.config_overrides) if args.config_overrides else {}
        except json.JSONDecodeError as error:
            raise ValueError(f"--config-overrides is not valid JSON ({error}): {args.config_overrides!r}") from error
        if not isinstance(overrides, dict):
            raise ValueError(f"--config-overrides must be a JSON object of config fields (e.g. "
                             f"'{{\"use_bn\": true}}'), got a JSON {type(overrides).__name__}: {args.config_overrides!r}")
        if args.revision is not None and Path(args.source).expanduser().exists():  # it would change nothing
            raise ValueError(f"--revision {args.revision}: a Hub repo's branch, tag or commit, but {args.source} is a "
                             f"local path")
        model = convert_birefnet_checkpoint(args.source, args.output, variant=args.variant, revision=args.revision,
                                            **overrides)
        return f"BiRefNet {model.config.backbone}, {parameter_counts(model)[1]:,} parameters, self-contained"
    # sam2-hiera: Meta's .pt -> a transformers Sam2HieraDetModel folder usable as backbone_repo_id
    from .convert.sam2 import convert_sam2_hiera_checkpoint

    trunk, preset = convert_sam2_hiera_checkpoint(args.source, args.output)
    return f"Hiera {preset}, {len(trunk.state_dict())} tensors"


def _push(args) -> int:
    return _push_folder(args.folder, args.repo_id, evaluation=args.evaluation, commit_message=args.commit_message,
                        private=args.private or None)


def name_card_after_repo(readme: Path, repo_id: str) -> None:
    """A card saved without a repo id (training without --hub-model-id) shows ``path/to/this-model`` in its
    snippets and the output folder's name in its results: both become the repo's before the upload."""
    from huggingface_hub import ModelCard

    from .files import write_text_atomic
    from .hub import PLACEHOLDER_REPO_ID

    if not readme.is_file() or PLACEHOLDER_REPO_ID not in (text := readme.read_text(encoding="utf-8")):
        return
    card = ModelCard(text.replace(PLACEHOLDER_REPO_ID, repo_id))
    if card.data.eval_results:
        card.data.model_name = repo_id.split("/")[-1]
    write_text_atomic(readme, str(card))  # ModelCard.save empties the file before writing it


def _push_folder(folder: str, repo_id: str, *, evaluation: list[str] | None, commit_message: str,
                 private: bool) -> int:
    """Upload a saved model or ONNX export folder (its card first: an export's names the repo; evaluation
    reports onto a model's)."""
    from .hub import add_evaluation_to_card, check_evaluation_for_card, create_hub_repo, upload_folder_to_hub
    from .onnx_export import is_onnx_export, onnx_model_card

    folder = Path(folder)
    export = is_onnx_export(folder) and (folder / "onnx_export.json").is_file()
    if export:
        try:
            onnx_model_card(folder)
        except ValueError as error:  # a damaged onnx_export.json
            raise SystemExit(f"push: {error}") from error
    else:
        for required in ("config.json", "model.safetensors"):
            if not (folder / required).is_file():
                raise SystemExit(f"{folder}: not a saved model folder (no {required}); run save_pretrained or "
                                 f"dsunet-hf export onnx first")
    if evaluation:  # refused before the repo is created: a refused push leaves no empty repo behind
        try:  # an export's card is written below, once the repo's full id is known
            check_evaluation_for_card(evaluation, None if export else folder)
        except ValueError as error:
            raise SystemExit(f"push: {error}") from error
    given = repo_id
    try:  # the Hub's full id (a name without a namespace gets the user's): the card's snippets name it
        repo_id = create_hub_repo(repo_id, private=private)
    except Exception as error:  # the Hub client's HTTP, connection and offline-mode errors have no common base
        raise SystemExit(f"push: creating {repo_id} failed ({type(error).__name__}: {error})") from error
    if export:  # an ONNX export: its card names the repo
        readme = folder / "README.md"
        ours = {onnx_model_card(folder, repo_id=repo).content for repo in (None, given, repo_id)}
        if not readme.is_file() or readme.read_text(encoding="utf-8") in ours:
            onnx_model_card(folder, repo_id=repo_id).save(readme)
        else:  # edited by hand since the export wrote it: the user's words win
            print(f"{readme}: edited since the export, uploaded as it is (its snippets may not name {repo_id})")
    else:
        name_card_after_repo(folder / "README.md", repo_id)
    if evaluation:  # benchmark results onto the card (model-index + a table), written into the folder too
        try:
            card = add_evaluation_to_card(folder, evaluation, model_name=repo_id.split("/")[-1])
        except ValueError as error:
            raise SystemExit(f"push: {error}") from error
        print(f"model card: {len(card.data.eval_results)} results from {', '.join(evaluation)}")
    try:
        pushed = upload_folder_to_hub(folder, repo_id, commit_message=commit_message, private=private,
                                      repo_created=True)
    except Exception as error:  # the Hub client's HTTP, connection and offline-mode errors have no common base
        raise SystemExit(f"push: uploading {folder} to {repo_id} failed ({type(error).__name__}: {error})") from error
    print(f"pushed {folder} -> https://huggingface.co/{pushed}")
    return 0


def _app(args) -> int:
    from .app import Demo, build_app
    from .onnx_export import is_onnx_export

    if args.port is not None and not 0 <= args.port <= 65535:  # said before the model loads
        raise SystemExit(f"app: --port must be between 0 and 65535, got {args.port}")
    sources = backbone_sources("app", args.backbone_source)
    source = model_source("app", args)
    if is_onnx_export(args.model):
        check_extra("app", "onnx", ("onnxruntime",))
    try:
        demo = Demo.from_pretrained(args.model, device=args.device, dtype=_torch_dtype(args.dtype),
                                    resolution=args.resolution, max_side=args.max_side,
                                    verify_backbone_weights=args.verify_backbone_weights, backbone_sources=sources,
                                    **source)
    except (ValueError, OSError, ImportError) as error:  # OSError: not a model folder, or a Hub id neither cached
        # nor reachable; ImportError: a Hub repo of an ONNX export without onnxruntime; ValueError: other backbone
        # weights, --no-verify-backbone-weights for an ONNX graph
        raise load_failure("app", args.model, error, revision=source.get("revision")) from error
    try:
        page = build_app(demo, title=args.title or args.model)
    except ImportError as error:  # no Gradio: says which extra to install
        raise SystemExit(f"app: {error}") from error
    try:
        page.launch(server_name=args.host, server_port=args.port, share=args.share)
    except OSError as error:  # the port is taken (Gradio: "Cannot find empty port"), or the host is not this machine's
        where = f"{args.host}:{args.port}" if args.port is not None else args.host
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SystemExit(f"app: cannot serve on {where}: {reason}") from error
    return 0


def _hub_repo_may_exist(repo_id: str) -> bool:
    """False only where the Hub says that model repo does not exist (one request bounded by the etag timeout);
    offline or unreachable, it may."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError

    if constants.HF_HUB_OFFLINE:
        return True
    try:
        HfApi().model_info(repo_id, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except RepositoryNotFoundError:
        return False
    except Exception:  # noqa: BLE001 - no network, a hung Hub, a gated repo: it may well exist
        return True
    return True


def _space(args) -> int:
    from .app import write_space
    from .hub import looks_like_hub_id

    # The Space runs on the Hub: --model is always a Hub repo id, also where a local folder here has its name (a
    # model saved as org/name before its push), which it cannot reach; --revision then is that repo's.
    shadowed = Path(args.model).exists() and looks_like_hub_id(args.model, even_if_local=True)
    if shadowed and not _hub_repo_may_exist(args.model):  # a training folder such as runs/cod: not on the Hub
        raise SystemExit(f"space: --model {args.model} is a folder here, and the Hub has no model repo of that name "
                         f"(or it is private and you are not logged in): push the model first (dsunet-hf push "
                         f"{args.model} <org/name>) and name that repo")
    if not shadowed and not looks_like_hub_id(args.model):
        raise SystemExit(f"space: --model {args.model} is not a Hub repo id (org/name); push the model first "
                         f"(dsunet-hf push {args.model} <org/name>) and name that repo")
    if args.private and not args.push_to_hub:
        raise SystemExit("space: --private applies to --push-to-hub")
    check_output_folder("space", args.folder, "FOLDER")
    revision = args.revision
    if revision is not None and not revision.strip():
        raise SystemExit("space: --revision is empty")
    if shadowed:
        print(f"space: --model {args.model} is the Hub repo, not the local folder of that name here (the Space "
              f"cannot reach it; push it first if it is not on the Hub: dsunet-hf push {args.model} {args.model})")

    try:
        folder = write_space(args.folder, args.model, title=args.title, requirement=args.requirement,
                             resolution=args.resolution, max_side=args.max_side, revision=revision)
    except ValueError as error:  # e.g. the model's repo holds a damaged onnx_export.json
        raise SystemExit(f"space: {error}") from error
    requirement = (folder / "requirements.txt").read_text().strip()
    print(f"space written to {folder} (requirements.txt: {requirement})")
    if args.push_to_hub:
        from .hub import upload_folder_to_hub

        try:
            repo_id = upload_folder_to_hub(folder, args.push_to_hub, private=args.private or None,
                                           space_sdk="gradio",
                                           commit_message=f"dsunet-hf demo of {args.model}"
                                                          + (f" at {revision}" if revision else ""))
        except Exception as error:  # the Hub client's HTTP, connection and offline-mode errors have no common base
            raise SystemExit(f"space: pushing {folder} to {args.push_to_hub} failed ({type(error).__name__}: "
                             f"{error})") from error
        print(f"pushed -> https://huggingface.co/spaces/{repo_id}")
    return 0


# Precision names as torch spells them and as accelerate / the README do (bf16, fp16).
PRECISIONS = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
              "float16": "float16", "fp16": "float16"}


def _torch_dtype(name: str):
    import torch

    return getattr(torch, PRECISIONS[name])


def _device_summary() -> str:
    """Where predictions run and which fast path pays off there (measured: benchmarks/, README)."""
    import torch

    if torch.cuda.is_available():
        half = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return (f"device: cuda ({torch.cuda.get_device_name()}); fast path: predict --autocast {half} "
                f"--channels-last --compile")
    # torch's own CPU feature checks (private, hence the fallback): bf16 matrix units, else bf16 is emulated.
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    native_bf16 = any(check() for check in checks if check is not None)
    hint = ("bf16 in hardware: predict --autocast bf16 --channels-last is the fast path (~1.7x on SAM2-UNet-L)"
            if native_bf16 else "no bf16 matrix units found: fp32 is the safe choice (measure bf16 first)")
    exact = ("; exact fp32: export onnx, then predict --model <that folder> (onnxruntime: 1.34x SAM2-UNet-L, "
             "2x BiRefNet_lite, 1.1x DSU-Net-L)")
    from .foreground import opencv_available

    cutouts = ("; cut-out colours: OpenCV's blur" if opencv_available() else
               "; cut-out colours: torch (pip install opencv-python-headless: 2-5x faster)")
    return f"device: cpu ({torch.get_num_threads()} threads); {hint}{exact}{cutouts}"


# Optional extras: (what it enables, the distributions that provide it).
EXTRAS = {
    "onnx": ("export onnx, ONNX folders in predict", ["onnxruntime", "onnxruntime-gpu"]),
    "video": ("videos in predict", ["av"]),
    "app": ("the demo page: app, space", ["gradio"]),
    "opencv": ("faster cut-out colours", ["opencv-python-headless", "opencv-python", "opencv-contrib-python"]),
    "sam2": ("Hiera parity, Meta's .pt", ["sam2"]),
    "torchvision": ("torchvision's deformable conv", ["torchvision"]),
}


def _extras_summary() -> str:
    """Which optional extras are installed (with versions): the first thing to check in a bug report."""
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for extra, (purpose, distributions) in EXTRAS.items():
        for distribution in distributions:
            try:
                parts.append(f"{extra}: {distribution} {version(distribution)}")
                break
            except PackageNotFoundError:
                continue
        else:
            parts.append(f"{extra}: not installed ({purpose}: pip install 'dsunet-hf[{extra}]')")
    return "extras: " + "; ".join(parts)


def _info(args) -> int:
    import torch
    import transformers

    from . import __version__

    print(f"dsunet-hf {__version__} | torch {torch.__version__} | transformers {transformers.__version__}")
    print(_device_summary())
    print(_extras_summary())
    if args.model:
        from transformers import AutoConfig

        from .onnx_export import read_export_report

        revision = model_source("info", args).get("revision")
        try:
            config = AutoConfig.from_pretrained(args.model, revision=revision)
        except (ValueError, OSError) as error:
            raise load_failure("info", args.model, error, revision=revision) from error
        try:
            export = read_export_report(args.model, revision)
        except ValueError as error:  # a damaged onnx_export.json
            raise SystemExit(f"info: {error}") from error
        if export is not None:  # an ONNX export (folder or Hub repo): what it takes and how it was checked
            version = (f" at commit {export.commit}" if export.commit else
                       f" at revision {export.revision}" if export.revision else "")
            print(f"ONNX export of {export.source or 'a model'}{version}: {export.summary()}")
        print(json.dumps(config.to_diff_dict(), indent=2, default=str))
    else:
        from .models import MODEL_NAMES, get_model_spec

        specs = {name: get_model_spec(name) for name in MODEL_NAMES}
        print("models (--model NAME): " + ", ".join(f"{name} ({spec.model_class.__name__})" for name, spec in specs.items()))
    return 0


def _export(args) -> int:
    from .onnx_export import check_export_options, export_folder_problem, export_onnx
    from .predict import load_model_and_processor

    if args.size and len(args.size) > 2:
        raise SystemExit(f"export: --size takes a height and an optional width, got {args.size}")
    if args.private and not args.push_to_hub:
        raise SystemExit("export: --private applies to --push-to-hub")
    if args.atol is not None and args.no_check:
        raise SystemExit("export: --atol is the tolerance of the onnxruntime check, which --no-check skips")
    check_extra("export", "onnx", ("onnx", "onnxscript"))  # torch's exporter needs both: said before the model loads
    size = None if not args.size else args.size[0] if len(args.size) == 1 else tuple(args.size)
    try:  # before the model loads
        check_export_options(size, args.opset)
    except ValueError as error:
        raise SystemExit(f"export: {error}") from error
    problem = export_folder_problem(args.output_dir, args.model)
    if problem:
        raise SystemExit(f"export: OUTPUT_DIR {problem}")
    sources = backbone_sources("export", args.backbone_source)
    source = model_source("export", args)
    try:
        model, processor = load_model_and_processor(args.model, verify_backbone_weights=args.verify_backbone_weights,
                                                    backbone_sources=sources, **source)
    except (ValueError, OSError) as error:
        raise load_failure("export", args.model, error, revision=source.get("revision")) from error
    try:  # the revision is recorded with the commit it resolved to (onnx_export.json, the card)
        report = export_onnx(model, processor, args.output_dir, size=size, opset=args.opset, check=not args.no_check,
                             atol=args.atol, dynamic_size=args.dynamic_size, source=args.model, dtype=args.dtype,
                             revision=source.get("revision"))
    except (ValueError, TypeError, RuntimeError) as error:  # not exportable, or the graph disagrees with PyTorch
        raise SystemExit(f"export: {args.model}: {error}") from error
    print(report.summary())
    if args.push_to_hub:  # the folder with its card, named after the repo (as `dsunet-hf push` does)
        version = report.commit or report.revision
        return _push_folder(args.output_dir, args.push_to_hub, evaluation=None,
                            commit_message=f"ONNX export of {args.model}" + (f" at {version}" if version else ""),
                            private=args.private or None)
    return 0


def _demo(args) -> int:
    if args.max_steps is not None and args.max_steps < 1:
        raise SystemExit(f"demo: --max-steps must be >= 1, got {args.max_steps}")
    default_dir = "outputs/demo-visual-prompt" if args.task == "visual-prompt" else "outputs/demo"
    check_output_folder("demo", args.output_dir or default_dir, "--output-dir")
    if args.task == "visual-prompt":
        from .demo import run_visual_prompt_demo

        sam2_unet_only = {"--data": args.data is not None, "--backbone": args.backbone is not None,
                          "--backbone-preset": args.backbone_preset is not None}
        if any(sam2_unet_only.values()):  # rather than silently ignored
            raise SystemExit(f"demo: {', '.join(k for k, v in sam2_unet_only.items() if v)}: for --task sam2-unet; "
                             f"the visual-prompt demo generates its data and uses a tiny DINOv2")
        try:
            run_visual_prompt_demo(args.output_dir or "outputs/demo-visual-prompt",
                                   max_steps=600 if args.max_steps is None else args.max_steps, seed=args.seed)
        except (ValueError, OSError) as error:  # a bad --seed, an unwritable --output-dir: one line naming it
            raise SystemExit(f"demo: {error}") from error
        return 0
    from .demo import run_demo

    if args.backbone_preset is not None and args.backbone is None:  # the demo's random Hiera has its own size
        raise SystemExit(f"demo: --backbone-preset {args.backbone_preset}: the size of the --backbone weights; "
                         f"without --backbone the demo trains its own small random Hiera")
    try:
        run_demo(args.output_dir or "outputs/demo", data=args.data, backbone=args.backbone,
                 backbone_preset=args.backbone_preset or "tiny",
                 max_steps=150 if args.max_steps is None else args.max_steps, seed=args.seed)
    except (ValueError, OSError) as error:  # bad --data / --backbone / --backbone-preset: one line naming it
        raise SystemExit(f"demo: {error}") from error
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .predict import add_resolution_arguments

    parser = argparse.ArgumentParser(prog="dsunet-hf", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="predict masks for images, videos or folders")
    predict.add_argument("--model", required=True,
                         help="artifact folder, Hub repo id, or a folder written by `dsunet-hf export onnx`")
    predict.add_argument("inputs", nargs="+",
                         help="image and video files, folders, glob patterns (videos: .mp4 .mov .m4v .mkv .avi "
                              ".webm .ts .mts .m2ts .mpg .mpeg .3gp -> masks/<name>.mp4; the [video] extra)")
    predict.add_argument("--output-dir", default="predictions")
    predict.add_argument("--batch-size", type=int, default=4)
    predict.add_argument("--threshold", type=float, default=None, help="write binary masks (foreground where the probability, 0-1, is >= "
                         "threshold; visual-prompt models: above it, on their score scale)")
    predict.add_argument("--minmax-normalize", action="store_true", help="upstream test.py's per-image min-max")
    predict.add_argument("--overlay", action="store_true", help="also write overlays/ (videos: overlays/<name>.mp4)")
    predict.add_argument("--cutout", action="store_true", help="also write RGBA cutouts/ (videos: ProRes 4444 .mov with alpha)")
    predict.add_argument("--cutout-colors", default=None, choices=["estimate", "original"],
                         help="--cutout, --background: RGB under soft alpha: estimated foreground colours (default; "
                              "blur-fusion, as BiRefNet's refine_foreground: no halo of the old background) or the "
                              "photo's own")
    predict.add_argument("--background", default=None, metavar="COLOR|IMAGE",
                         help="also write composites/: the foreground (colours as --cutout-colors) on a new "
                              "background, a colour (white, #00b140, 0,177,64) or an image file scaled to cover "
                              "(videos: composites/<name>.mp4)")
    predict.add_argument("--overwrite", action="store_true", help="recompute every output (by default an input whose outputs all exist is skipped)")
    predict.add_argument("--device", default=None)
    # None: not given (refused for visual-prompt models, which read their targets in this process), else 2.
    predict.add_argument("--num-workers", type=int, default=None,
                         help="DataLoader workers decoding and resizing images (default 2)")
    predict.add_argument("--autocast", default="none", choices=["none", "bf16", "fp16", "bfloat16", "float16"],
                         help="mixed precision with fp32 weights (fast on GPUs)")
    predict.add_argument("--channels-last", action="store_true", help="NHWC memory format for the conv decoders")
    predict.add_argument("--compile", action="store_true", help="torch.compile the model (long first call)")
    predict.add_argument("--dtype", default="float32", choices=list(PRECISIONS))
    predict.add_argument("--no-verify-backbone-weights", dest="verify_backbone_weights", action="store_false",
                         help=VERIFY_HELP)
    predict.add_argument("--backbone-source", action="append", metavar="FIELD=VALUE", help=BACKBONE_SOURCE_HELP)
    add_model_source_arguments(predict)
    add_resolution_arguments(predict)
    predict.add_argument("--schedule", default=None, choices=["single", "slide", "multiscale"],
                         help="multi-class models: inference schedule (default: the model's; DINOv2 heads: slide; "
                              "multiscale = multi-scale + flip, the DINOv2 paper's +ms)")
    predict.add_argument("--crop-refine", action="store_true",
                         help="predict once more on the crop around each object (or group of nearby objects), "
                              "zoomed to the model's input: finer edges for objects that fill a small part of a large "
                              "image")
    predict.add_argument("--crop-margin", type=float, default=None,
                         help=f"--crop-refine: margin around the foreground, a fraction of its box's longer side "
                              f"(default {DEFAULT_CROP_MARGIN})")
    predict.add_argument("--temporal-smoothing", type=float, default=0.0, metavar="S",
                         help="videos: keep S (0 to <1, e.g. 0.6) of the previous frame's map (class models: class "
                              "probabilities) where the picture stays still: less flicker, no trail behind moving "
                              "things (default 0: each frame as an image)")
    predict.add_argument("--reference", action="append", default=[], metavar="IMAGE",
                         help="visual-prompt models: an example image (repeat for several; one --prompt each)")
    predict.add_argument("--prompt", action="append", default=[], metavar="PROMPT",
                         help="the prompt on the matching --reference: box:x0,y0,x1,y1 | point:x,y[;x,y] | "
                              "scribble:x,y;x,y[;...] | mask:path.png | path.png")
    predict.add_argument("--mask-threshold", type=float, default=None, metavar="T",
                         help="mask prompts: foreground where the mask, scaled to 0-1, is >= T (above 0, at most 1; "
                              "e.g. 0.5 for JPEG masks, whose compression noise is not zero; default: any non-zero "
                              "pixel)")
    predict.add_argument("--save-scores", action="store_true", help="visual-prompt models: also write scores/*.npy")
    predict.add_argument("--mode", default=None, choices=["prompt", "generic", "referring"],
                         help="trained visual-prompt head: which output (default: its config's inference_mode)")
    predict.add_argument("--track", action="store_true",
                         help="visual-prompt models: follow the concept through each video's frames (and each "
                              "folder's images, in name order): each found mask joins the prompt, as DINOv's video "
                              "memory, instead of prompting every frame alone")
    predict.add_argument("--track-memory", type=int, default=None, metavar="N",
                         help="with --track: the most recent frames kept in the prompt beside the references "
                              "(default 8, as DINOv)")
    predict.set_defaults(func=_predict)

    convert = commands.add_parser("convert", help="convert an original checkpoint")
    convert.add_argument("kind", choices=["sam2-unet", "dsunet", "dinov2-head", "sam2-hiera", "birefnet"])
    convert.add_argument("source", help="SAM2UNet-*.pth, DGSUNet-*.pth, dinov2_*_head.pth, Meta's sam2*_hiera_*.pt, "
                                        "or official BiRefNet weights (Hub id, folder, .safetensors/.pth)")
    convert.add_argument("output", help="output folder")
    convert.add_argument("--backbone-repo-id", default=None,
                         help="sam2-unet, dsunet (the SAM 2 trunk), dinov2-head: the frozen backbone's repo; default: "
                              "Meta's of the size (SAM 2.0 for SAM2-UNet, SAM 2.1 for DSU-Net, DINOv2)")
    convert.add_argument("--backbone-revision", default=None, help="its revision (pinned to the commit once loaded)")
    convert.add_argument("--dino-backbone-repo-id", default=None,
                         help="dsunet: the DINOv2 repo; default: Meta's of the size")
    convert.add_argument("--dino-backbone-revision", default=None, help="dsunet: its revision")
    convert.add_argument("--include-backbone", action="store_true",
                         help="sam2-unet, dsunet: write a self-contained copy")
    convert.add_argument("--id2label", default=None, metavar="id2label.json",
                         help="sam2-unet, dsunet, dinov2-head: the names of the head's classes ({\"0\": "
                              "\"background\", ...}, as beside training data); default: LABEL_0, LABEL_1, ... "
                              "(dinov2-head: VOC's names for 21 classes, ADE20K's for 150, else class_0, ...)")
    convert.add_argument("--variant", default=None, help="birefnet: official variant (BiRefNet, BiRefNet_lite, "
                                                       "BiRefNet_HR, ...); default: from the name")
    convert.add_argument("--config-overrides", default=None, help="birefnet: JSON of extra config fields")
    convert.add_argument("--revision", default=None, metavar="BRANCH|TAG|COMMIT",
                         help="birefnet: the Hub repo's branch, tag or commit (default: main)")
    convert.set_defaults(func=_convert)

    export = commands.add_parser("export", help="export a model to ONNX (dynamic batch, checked with onnxruntime)")
    export.add_argument("format", choices=["onnx"])
    export.add_argument("--model", required=True, help="artifact folder, Hub repo id, or official BiRefNet weights")
    export.add_argument("output_dir", help="gets model.onnx, config.json, preprocessor_config.json")
    export.add_argument("--size", type=int, nargs="+", default=None, metavar="SIDE",
                        help="input height [width] (default: the model's size)")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    export.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                        help="float16: half the file, fp16 weights and arithmetic (fp32 inputs and outputs), for GPU "
                             "runtimes; checked on probabilities")
    export.add_argument("--atol", type=float, default=None,
                        help="largest allowed difference in the check: |logit| for float32 (default 1e-4), "
                             "|probability| for float16 (default 0.02)")
    export.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    export.add_argument("--no-verify-backbone-weights", dest="verify_backbone_weights", action="store_false",
                        help=VERIFY_HELP)
    export.add_argument("--backbone-source", action="append", metavar="FIELD=VALUE", help=BACKBONE_SOURCE_HELP)
    add_model_source_arguments(export)
    export.add_argument("--dynamic-size", action="store_true",
                        help="any height and width (multiples of 32 for SAM2-UNet and BiRefNet, for predict "
                             "--resolution native; any for DINOv2 heads, for every schedule); checked at three sizes")
    export.add_argument("--push-to-hub", metavar="REPO_ID", default=None, help="upload the export with its card")
    export.add_argument("--private", action="store_true", help="--push-to-hub: create the repo private")
    export.set_defaults(func=_export)

    push = commands.add_parser("push", help="upload a saved artifact folder to the Hub")
    push.add_argument("folder")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    push.add_argument("--commit-message", default="Upload fine-tuned model with dsunet-hf")
    push.add_argument("--evaluation", action="append", default=[], metavar="evaluation.json",
                      help="a `dsunet-hf evaluate` report to put on the model card (Hub model-index results and a "
                           "table); repeat for several")
    push.set_defaults(func=_push)

    info = commands.add_parser("info", help="versions, or a saved model's config")
    info.add_argument("model", nargs="?")
    info.add_argument("--revision", default=None, metavar="BRANCH|TAG|COMMIT", help=REVISION_HELP)
    info.set_defaults(func=_info)

    # No abbreviations (--ta for --task): examples/demo.sh reads --task and --output-dir by their full names.
    demo = commands.add_parser("demo", help="short fine-tune + evaluation + predictions on built-in data",
                               allow_abbrev=False)
    demo.add_argument("--output-dir", default=None, help="default: outputs/demo (outputs/demo-visual-prompt)")
    demo.add_argument("--data", default=None, help="image/mask folder (default: generated camouflage-like data)")
    demo.add_argument("--backbone", default=None, help="real SAM 2 weights (Hub id/folder); default: random tiny")
    demo.add_argument("--backbone-preset", default=None, help="the size of the --backbone weights (default: tiny)")
    demo.add_argument("--max-steps", type=int, default=None, help="default: 150 (visual-prompt: 600)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--task", default="sam2-unet", choices=["sam2-unet", "visual-prompt"],
                      help="visual-prompt: train the in-context head on generated textured shapes (600 steps, "
                           "outputs/demo-visual-prompt)")
    demo.set_defaults(func=_demo)

    app = commands.add_parser("app", help="a Gradio demo page for a model (the [app] extra)")
    app.add_argument("--model", required=True, help="artifact folder, Hub repo id or ONNX export folder")
    app.add_argument("--title", default=None)
    app.add_argument("--device", default=None)
    app.add_argument("--dtype", default="float32", choices=list(PRECISIONS))
    app.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    app.add_argument("--port", type=int, default=None, help="default: Gradio's (7860, or the next free one)")
    app.add_argument("--share", action="store_true", help="a temporary public gradio.live link")
    app.add_argument("--no-verify-backbone-weights", dest="verify_backbone_weights", action="store_false",
                     help=VERIFY_HELP)
    app.add_argument("--backbone-source", action="append", metavar="FIELD=VALUE", help=BACKBONE_SOURCE_HELP)
    add_model_source_arguments(app)
    add_resolution_arguments(app)
    app.set_defaults(func=_app)

    space = commands.add_parser("space", help="write (and push) a Hugging Face Space with the demo page of a model")
    space.add_argument("folder", help="where app.py, requirements.txt and README.md go")
    space.add_argument("--model", required=True, help="the Hub repo id the Space shows")
    space.add_argument("--revision", default=None, metavar="BRANCH|TAG|COMMIT",
                       help="the version of --model the Space's app.py loads, e.g. a tag or commit (default: main, "
                            "which changes what the Space shows whenever the model's repo is pushed to)")
    space.add_argument("--title", default=None)
    space.add_argument("--requirement", default=None,
                       help="the requirements.txt line that installs dsunet-hf on the Space (default: "
                            "dsunet-hf[app]==VERSION where this one came from PyPI, else from git: the commit pip "
                            "installed, or for a local checkout 'dsunet-hf[app] @ "
                            "git+https://github.com/dsunet-hf/dsunet-hf'; [app,onnx] for an ONNX export's repo)")
    space.add_argument("--push-to-hub", metavar="SPACE_ID", default=None, help="create/update this Space (user/name)")
    space.add_argument("--private", action="store_true")
    add_resolution_arguments(space)
    space.set_defaults(func=_space)

    from .evaluate import add_evaluate_parser

    add_evaluate_parser(commands)
    # `train` is parsed by transformers' HfArgumentParser from the TrainingArguments dataclass (see main).
    commands.add_parser("train", help="fine-tune (same as accelerate launch examples/train.py); train --help",
                        add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        from .training import main as train_main

        return train_main(argv[1:], prog="dsunet-hf train")
    args = build_parser().parse_args(argv)
    problem = missing_model_problem(getattr(args, "model", None))
    if problem:
        raise SystemExit(f"{args.command}: {problem}")
    check_shared_options(args)
    import dsunet_hf  # noqa: F401  (registers the Auto classes)

    return args.func(args)


def check_extra(command: str, extra: str, modules: tuple[str, ...]) -> None:
    """SystemExit naming the optional extra to install when one of ``modules`` is not installed: one line before
    anything loads, not an ImportError traceback from deep inside torch or onnxruntime."""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"{command}: needs {', '.join(missing)}, not installed: pip install \"dsunet-hf[{extra}]\"")


def check_output_folder(command: str, folder: str | Path | None, option: str) -> None:
    """SystemExit ``<command>: <option> <why>`` when ``folder`` cannot be the folder a command writes into (a
    file, or under one; not writable): said up front, not as a traceback at the first write."""
    from .files import output_folder_problem

    if folder is None:
        return
    problem = output_folder_problem(folder)
    if problem is None:
        existing = next((p for p in (Path(folder).expanduser(), *Path(folder).expanduser().parents) if p.exists()),
                        None)
        if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            problem = f"{folder}: {existing} is not writable"
    if problem:
        raise SystemExit(f"{command}: {option} {problem}")


def device_problem(device: str) -> str | None:
    """Why ``--device`` cannot run a model here (not a device name, or no such device available), or None."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return f"--device {device!r} is not a device name (e.g. cpu, cuda, cuda:1, mps)"
    if parsed.type == "cpu":
        return None
    backend = torch.backends.mps if parsed.type == "mps" else getattr(torch, parsed.type, None)
    is_available = getattr(backend, "is_available", None)
    if not callable(is_available):  # meta, mkldnn, opengl, ...: names torch knows, not devices to run a model on
        return f"--device {device}: not a device to run a model on (e.g. cpu, cuda, cuda:1, mps)"
    if not is_available():
        return (f"--device {device}: no {parsed.type} device is available here (torch {torch.__version__}); use "
                f"--device cpu or leave it out")
    count = getattr(torch.mps if parsed.type == "mps" else backend, "device_count", None)
    if parsed.index is not None and callable(count) and parsed.index >= count():
        return f"--device {device}: there are {count()} {parsed.type} device(s) here, numbered from 0"
    return None


# Output folders of the commands whose functions live in other modules (the others check their own).
_OUTPUT_FOLDER_OPTIONS = {"evaluate": (("output_dir", "--output-dir"), ("save_predictions", "--save-predictions"))}


def check_shared_options(args) -> None:
    """The options several commands take, checked before anything loads: ``--device`` (predict, evaluate, app),
    ``--max-side`` (predict, evaluate, app, space: needs ``--resolution native``), ``--crop-margin`` (predict,
    evaluate: needs ``--crop-refine``)."""
    from .predict import DEFAULT_MAX_SIDE, check_max_side

    command = args.command
    # Saved maps (evaluate --predictions) run no model: run_evaluate_cli refuses these options there, for that reason.
    saved_maps = command == "evaluate" and (args.predictions is not None or args.ground_truth is not None)
    device = getattr(args, "device", None)
    if device is not None and not saved_maps:
        problem = device_problem(device)
        if problem:
            raise SystemExit(f"{command}: {problem}")
    if getattr(args, "max_side", None) is not None and not saved_maps:
        try:
            check_max_side(args.max_side)
        except ValueError as error:
            raise SystemExit(f"{command}: --max-side must be >= 32 (the longest input side, multiples of 32), got "
                             f"{args.max_side}") from error
    margin = getattr(args, "crop_margin", None)
    if margin is not None and not saved_maps and not (math.isfinite(margin) and margin >= 0):
        raise SystemExit(f"{command}: --crop-margin: crop_margin must be >= 0 and finite (a fraction of the "
                         f"foreground box's longer side), got {margin}")
    # Options that only tune another one: refused without it rather than silently ignored. Their parsers default
    # to None (not given); the defaults are filled in once checked (on saved maps: left None, refused if given).
    for name, option, needed, needs, default in (
        ("max_side", "--max-side", getattr(args, "resolution", None) == "native", "--resolution native",
         DEFAULT_MAX_SIDE),
        ("crop_margin", "--crop-margin", getattr(args, "crop_refine", False), "--crop-refine", DEFAULT_CROP_MARGIN),
    ):
        if not hasattr(args, name) or saved_maps:
            continue
        if getattr(args, name) is not None and not needed:
            raise SystemExit(f"{command}: {option} needs {needs}")
        if getattr(args, name) is None:
            setattr(args, name, default)
    for name, option in _OUTPUT_FOLDER_OPTIONS.get(command, ()):
        check_output_folder(command, getattr(args, name, None), option)


def missing_model_problem(name: str | None) -> str | None:
    """What is wrong with a ``--model`` that names a local path (absolute, relative with ./ ../ ~, or more than one
    folder deep, which no Hub id is) that does not exist; None otherwise (Hub ids are checked when loading)."""
    if not name or Path(name).expanduser().exists():
        return None
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:
        return f"{name}: no such model folder or file"
    return None


if __name__ == "__main__":
    sys.exit(main())
