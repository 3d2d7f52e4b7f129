"""Original checkpoints -> dsunet-hf artifacts (each module documents its key map)."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
import time
from pathlib import Path


def write_folder_atomically(output_dir, write) -> None:
    """Run ``write(folder)`` on a hidden temporary folder beside ``output_dir``, then move its files into place.

    A failed write (full disk, Ctrl-C) leaves ``output_dir`` as it was, never a half-written artifact over a good
    one; an existing folder keeps its other files and gets the new ones. Errors name ``output_dir``."""
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


def head_classes(classes: int, id2label: dict[int, str] | None, source) -> dict:
    """Config fields for a converted head of ``classes`` output channels (1: the binary foreground logit): its class
    count, named by ``id2label`` when given (upstream checkpoints carry no names, so they would be LABEL_0, ...)."""
    count = max(classes, 2)
    if id2label is None:
        return {"num_labels": classes} if classes > 1 else {}
    if sorted(id2label) != list(range(count)):
        raise ValueError(f"{source}: its head predicts {count} classes (ids 0..{count - 1}), but the class names given "
                         f"are for ids {sorted(id2label)}")
    return {"id2label": dict(id2label)}


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
