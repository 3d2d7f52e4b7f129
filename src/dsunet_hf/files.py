"""Atomic file writes: a temporary file in the same folder, then ``os.replace``, so an interrupted run
never leaves a half-written PNG, JSON or report behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from PIL import Image


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    _atomic(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, payload) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


def save_image_atomic(image: Image.Image, path: Path) -> None:
    _atomic(path, lambda temporary: image.save(temporary, format="PNG"))


def save_npy_atomic(array, path: Path) -> None:
    import numpy as np

    def write(temporary):
        with open(temporary, "wb") as handle:  # a file object: np.save would append ".npy" to a name
            np.save(handle, array)

    _atomic(path, write)
