"""Strict, all-or-nothing loading of plain backbone state dicts into (possibly wrapped) modules, and the checks of
backbone checkpoint files shared by the loaders."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def _first(names: list[str], limit: int = 8) -> str:
    return f"{names[:limit]}{' ...' if len(names) > limit else ''}"


@torch.no_grad()
def load_state_dict_strictly(
    module: nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    own_names: dict[str, str] | None = None,
    *,
    what: str = "a checkpoint for this module",
    expected_by: str = "this module",
    size_hint: str = "",
) -> None:
    """Copy ``state_dict`` into ``module`` only if every key and shape matches; otherwise change nothing.

    ``own_names`` maps each plain (checkpoint) name to the module's own state-dict key (default: the
    identity over ``module.state_dict()``), so wrapped modules (adapters, LoRA) can load plain weights.
    Raises ``ValueError`` naming ``source`` and the missing / unexpected keys or the first shape mismatch;
    every check runs before any tensor is copied. Tensors are cast to the target's dtype and device.
    ``what`` / ``expected_by`` / ``size_hint`` word the errors ("not <what>", "<expected_by> expects ...").
    """
    own = module.state_dict(keep_vars=True)
    if own_names is None:
        own_names = {name: name for name in own}
    unknown = sorted(set(own_names.values()) - set(own))
    if unknown:
        raise KeyError(f"own_names point at keys the module does not have: {_first(unknown)}")
    missing = sorted(set(own_names) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own_names))
    if missing or unexpected:
        raise ValueError(
            f"{source}: not {what}; missing keys {_first(missing)}, unexpected keys {_first(unexpected)}"
        )
    for name, tensor in state_dict.items():
        target = own[own_names[name]]
        if target.shape != tensor.shape:
            raise ValueError(
                f"{source}: {name} has shape {tuple(tensor.shape)}, {expected_by} expects {tuple(target.shape)}"
                + (f" {size_hint}" if size_hint else "")
            )
    for name, tensor in state_dict.items():
        target = own[own_names[name]]
        target.copy_(tensor.to(dtype=target.dtype, device=target.device))


def git_lfs_pointer(path: Path) -> str | None:
    """One line for a Git LFS pointer in place of the weights (a repo cloned without git-lfs), else None: torch and
    safetensors read its text as a broken pickle / header and say nothing of the cause."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if not head.startswith(b"version https://git-lfs.github.com/spec/"):
        return None
    return (f"{path}: a Git LFS pointer ({path.stat().st_size} bytes), not the weights: the repository was cloned "
            f"without Git LFS; run `git lfs pull` in it, or download the file with `hf download`")


def single_checkpoint(folder: Path, patterns: tuple[str, ...], what: str) -> Path | None:
    """The one checkpoint file in ``folder`` matching ``patterns`` (None if there is none); several are an error
    naming them, since picking one would load whichever sorts first (SAM 2's download script leaves all sizes of a
    release, or both releases, side by side)."""
    found = sorted({file for pattern in patterns for file in folder.glob(pattern) if file.is_file()})
    if len(found) > 1:
        raise ValueError(f"{folder}: folder holds several {what} checkpoints {[file.name for file in found]}; name "
                         f"the file to load instead of the folder")
    return found[0] if found else None
