"""Atomic file writes: a temporary file in the same folder, then ``os.replace``, so an interrupted run
never leaves a half-written PNG, JSON or report behind."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from PIL import Image


def expand_home(path):
    """A ``~/...`` path with the home folder (as a shell would; transformers takes the text literally); anything
    else (a Hub id, an object) as it is."""
    return os.path.expanduser(path) if isinstance(path, (str, os.PathLike)) and str(path).startswith("~") else path


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back (once, at import, before
    os.umask(mask)      # the writer threads start: another thread creating a file in between would get mode 0666)
    return mask


_UMASK = _read_umask()


def give_new_file_modes(folder: Path, pattern: str = "*.safetensors") -> None:
    """safetensors writes its files private (0600) whatever the umask: give them a new file's mode, so that others
    on a shared machine can load the model, as they can read its config.json."""
    for path in Path(folder).glob(pattern):
        os.chmod(path, 0o666 & ~_UMASK)


def output_folder_problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be the folder outputs are written into (it, or a folder above it, is a file), or
    None. Said before a run starts: ``mkdir`` would otherwise fail at the first write with NotADirectoryError or
    FileExistsError."""
    folder = Path(folder).expanduser()
    if folder.exists():
        return None if folder.is_dir() else f"{folder} is a file, not a folder"
    for parent in folder.parents:
        if parent.exists():
            return None if parent.is_dir() else f"{folder}: {parent} is a file, so no folder can be made under it"
    return None


# What atomic_path names its temporary files: ".<start of the name>.<mkstemp's 8 random characters>.tmp".
_TEMPORARY_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
# A temporary file this old is left over from a killed run (SIGKILL, out of memory, power loss: an exception or
# Ctrl-C removes it). Not one of a run writing into the same folder now: an image's lives milliseconds, and a
# video's grows (its modification time with it) as its encoder emits packets, which takes far less than an hour
# even for the slowest model behind an encoder's look-ahead. So this is safe with concurrent runs, on any host
# of a shared file system (no process ids to compare), at the cost of leaving a fresh leftover to the next run.
STALE_TEMPORARY_SECONDS = 3600


def remove_stale_temporaries(folder: str | Path, recursive: bool = True,
                             older_than: float = STALE_TEMPORARY_SECONDS) -> list[Path]:
    """Remove :func:`atomic_path`'s temporary files (``.<name>.<random>.tmp``) left in ``folder`` (and its
    sub-folders) by a killed run, those last modified more than ``older_than`` seconds ago; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now, removed = time.time(), []
    for path in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        if not _TEMPORARY_NAME.fullmatch(path.name):
            continue
        try:
            if not path.is_file() or now - path.stat().st_mtime <= older_than:
                continue
            path.unlink()
        except OSError:  # gone meanwhile (another run cleaning up), or not ours to remove: left alone
            continue
        removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed to ``path`` when the block ends normally and
    removed when it raises (for outputs written incrementally, such as a video, frame by frame)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The name's start only: a name near the file system's limit (255 bytes) plus the random part would pass it.
    # Bytes count towards the limit, not characters: whole characters up to 64 bytes, counted by os.fsencode, which
    # keeps a name that is not UTF-8 (a Latin-1 "café" from an old camera card, surrogate-escaped) as its bytes.
    start, size = "", 0
    for character in path.name:
        size += len(os.fsencode(character))
        if size > 64:
            break
        start += character
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{start}.", suffix=".tmp")
    os.close(descriptor)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp makes the file private (0600); give it a new file's mode
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _atomic(path: Path, write) -> None:
    try:
        with atomic_path(path) as temporary:
            write(str(temporary))
    except OSError as error:  # a full disk, a quota, an I/O error: said with the file it was writing
        raise _naming(error, path) from error


def _naming(error: OSError, path: Path) -> OSError:
    """``error`` as an OSError of the same errno that names ``path`` (Pillow and json writes name no file, and a
    temporary file's name is not the output's)."""
    if error.errno is None:
        return OSError(f"{path}: {error}")
    return OSError(error.errno, error.strerror or os.strerror(error.errno), str(path))


def write_text_atomic(path: Path, text: str) -> None:
    _atomic(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, payload) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


def save_image_atomic(image: Image.Image, path: Path, icc_profile: bytes | None = None) -> None:
    """``image`` as a PNG at ``path``; ``icc_profile`` (the input photo's colour profile, e.g. Display P3) is
    embedded, so that viewers show the colours as the photo's."""
    extra = {"icc_profile": icc_profile} if icc_profile else {}
    _atomic(path, lambda temporary: image.save(temporary, format="PNG", **extra))


def save_npy_atomic(array, path: Path) -> None:
    import numpy as np

    def write(temporary):
        with open(temporary, "wb") as handle:  # a file object: np.save would append ".npy" to a name
            np.save(handle, array)

    _atomic(path, write)
