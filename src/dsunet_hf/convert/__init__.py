"""Original checkpoints -> dsunet-hf artifacts (each module documents its key map)."""

from __future__ import annotations

import os
import shutil
import tempfile
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
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name[:64]}.", suffix=".tmp"))
    try:
        write(staging)
        os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp makes it private (0700): give it a new folder's mode
        if output.is_dir():
            for path in staging.iterdir():
                os.replace(path, output / path.name)
        else:
            os.rename(staging, output)
    except OSError as error:
        raise OSError(f"{output}: the converted model could not be written ({error}); the folder was left as it "
                      f"was") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_converted_model(model, converted: dict, source, output_dir, include_backbone: bool = False,
                         processor=None):
    """Load a converted state dict strictly (every tensor of the model, nothing else), then write the
    artifact (trainable-only unless ``include_backbone``), its image processor (the model's default unless
    given) and its card, atomically (see :func:`write_folder_atomically`)."""
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

    def write(folder):
        model.save_pretrained(folder, include_backbone=include_backbone)
        (processor or model.default_image_processor()).save_pretrained(folder)

    write_folder_atomically(output_dir, write)
    return model
