"""Original checkpoints -> dsunet-hf artifacts (each module documents its key map)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch


def write_folder_atomically(output_dir, write) -> None:
    """Run ``write(folder)`` on a hidden temporary folder beside ``output_dir``, then move its files into place.

    A failed write (full disk, Ctrl-C) leaves ``output_dir`` as it was, never a half-written artifact over a good
    one; an existing folder keeps its other files and gets the new ones, where the files they replace are those of a
    saved model of the same type (else it is refused: see :func:`_replaced_files_problem`). Errors name ``output_dir``."""
    from ..files import _UMASK, output_folder_problem

    output = Path(output_dir).expanduser()
    if problem := output_folder_problem(output):
        raise ValueError(problem)
    output.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{output.name[:64]}."
    _remove_stale_staging(output.parent, prefix)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=prefix, suffix=".tmp"))
    moved = 0
    try:
        write(staging)
        if problem := _replaced_files_problem(output, staging):
            raise ValueError(problem)
        os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp makes it private (0700): give it a new folder's mode
        if output.is_dir():
            for path in sorted(staging.iterdir()):
                os.replace(path, output / path.name)
                moved += 1
        else:
            os.rename(staging, output)
    except OSError as error:
        state = ("the folder was left as it was" if not moved else
                 f"{moved} of its files were replaced before the error: convert again")
        raise OSError(f"{output}: the converted model could not be written ({error}); {state}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def saved_model_type(folder: Path) -> str | None:
    """The ``model_type`` of the saved model in ``folder`` (its ``config.json``), or None where there is none."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("model_type") if isinstance(config, dict) else None


def _replaced_files_problem(output: Path, staging: Path) -> str | None:
    """Why the files written to ``staging`` may not replace those of the same names in ``output``: they are not an
    earlier conversion to the same kind of model (a project's README.md, another model's config and weights)."""
    replaced = sorted(path.name for path in staging.iterdir() if (output / path.name).exists())
    kind = saved_model_type(staging)
    if not replaced or (kind is not None and saved_model_type(output) == kind):
        return None
    return (f"{output}: already holds {', '.join(replaced)}, not those of a saved {kind or 'model of the same type'}{' model' if kind else ''}, which the "
            f"converted model's files would replace: give a new or empty folder")


def _remove_stale_staging(parent: Path, prefix: str, older_than: float | None = None) -> None:
    """Staging folders a killed conversion left beside its output (possibly gigabytes), an hour old."""
    from ..files import STALE_TEMPORARY_SECONDS

    limit = time.time() - (STALE_TEMPORARY_SECONDS if older_than is None else older_than)
    for path in parent.glob(f"{glob.escape(prefix)}*.tmp"):
        try:
            if path.is_dir() and path.stat().st_mtime < limit:
                shutil.rmtree(path)
        except OSError:  # gone meanwhile, or not ours to remove: left alone
            continue


def class_names(count: int, id2label: dict | str | os.PathLike, source) -> dict[int, str]:
    """``id2label`` (a dict, or an ``id2label.json`` file as beside training data) checked to name exactly the ids
    0..count-1 of the head in ``source``: a gap or a missing class is refused here, naming both, rather than by the
    config (naming neither) or at the end of an evaluation."""
    given = "id2label"
    if isinstance(id2label, (str, os.PathLike)):
        from ..data import read_labels_file

        given, id2label = str(id2label), read_labels_file(id2label)
    if isinstance(id2label, (list, tuple)):  # names in id order, as from_pretrained(id2label=[...]) takes them
        id2label = dict(enumerate(id2label))
    if not isinstance(id2label, dict):  # a number, a set: named, not "'int' object has no attribute 'items'"
        raise ValueError(f"{given} must be a dict of class id -> name ({{0: 'background', ...}}) or a list of names, "
                         f"got a {type(id2label).__name__}")
    names = {}
    for key, name in id2label.items():
        try:  # JSON-style string ids ("0") are the ids transformers' configs make of them
            names[int(key) if isinstance(key, str) else key] = str(name)
        except ValueError:  # not a number: refused below with the rest
            names[key] = str(name)
    if len(names) != count:
        raise ValueError(f"{given} names {len(names)} classes, but the head in {source} predicts {count}")
    if set(names) != set(range(count)):
        ids = sorted(names, key=lambda key: (not isinstance(key, int), str(key).zfill(12)))
        raise ValueError(f"{given} names the class ids {ids}, but the head in {source} predicts the ids "
                         f"0..{count - 1}, one name each")
    return names


def head_classes(classes: int, id2label: dict | str | os.PathLike | None, source) -> dict:
    """Config fields for a converted head of ``classes`` output channels (1: the binary foreground logit): its class
    count, named by ``id2label`` when given (see :func:`class_names`; upstream checkpoints carry no names, so they
    would be LABEL_0, ...)."""
    if id2label is None:
        return {"num_labels": classes} if classes > 1 else {}
    return {"id2label": class_names(max(classes, 2), id2label, source)}


def fold_two_class_heads(state_dict: dict[str, torch.Tensor]) -> None:
    """A two-channel (background, foreground) cross-entropy head (and side heads) of an upstream checkpoint becomes
    the binary model's single foreground logit ``l1 - l0`` (``sigmoid(l1 - l0)`` is the softmax's foreground
    probability), in place; other heads stay as they are (C > 2 channels: a C-class model)."""
    head = state_dict.get("head.weight")
    if head is None or head.shape[0] != 2:
        return
    for name in ("side1", "side2", "head"):
        for kind in ("weight", "bias"):
            if (pair := state_dict.get(f"{name}.{kind}")) is not None:  # a missing one is named by the load
                state_dict[f"{name}.{kind}"] = pair[1:] - pair[:1]


def save_converted_model(model, converted: dict, source, output_dir, include_backbone: bool = False,
                         processor=None, holds_backbones: bool = False):
    """Load a converted state dict strictly (every tensor of the model, nothing else), then write the
    artifact (trainable-only unless ``include_backbone``), its image processor (the model's default unless
    given) and its card, atomically (see :func:`write_folder_atomically`). ``holds_backbones``: the checkpoint's
    frozen backbones are the ones it was trained with, so a trainable-only artifact records their fingerprint
    (loading it on another trunk, SAM 2.1's for one trained on SAM 2.0's, is then refused)."""
    own = model.state_dict()
    resized = [f"{key} {tuple(tensor.shape)} (the model's {tuple(own[key].shape)})" for key, tensor in converted.items()
               if key in own and own[key].shape != tensor.shape]
    if resized:
        raise ValueError(f"{source}: does not fit {type(model).__name__} with this config; tensors of another size: "
                         f"{', '.join(resized[:3])}{' ...' if len(resized) > 3 else ''}")
    result = model.load_state_dict(converted, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{source}: does not fit {type(model).__name__} with this config; missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )
    model.eval()
    if holds_backbones:
        model.record_frozen_weights()

    def write(folder):
        model.save_pretrained(folder, include_backbone=include_backbone)
        (processor or model.default_image_processor()).save_pretrained(folder)

    write_folder_atomically(output_dir, write)
    return model
