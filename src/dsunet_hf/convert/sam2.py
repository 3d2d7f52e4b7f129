"""Meta's original SAM 2 checkpoints (``sam2_hiera_*.pt``) -> transformers ``Sam2HieraDetModel`` names.

The official trunk and transformers' ``Sam2HieraDetModel`` are the same network; only five module
names differ (checked: max abs difference 0.0 on all four stage maps). The table below is the whole
key map; every other key (``pos_embed``, ``pos_embed_window``, ``blocks.N.attn.qkv``,
``blocks.N.attn.proj``, ``blocks.N.proj``) keeps its name.

| official sam2 trunk         | transformers Sam2HieraDetModel |
|-----------------------------|--------------------------------|
| ``patch_embed.proj.*``      | ``patch_embed.projection.*``   |
| ``blocks.N.norm1.*``        | ``blocks.N.layer_norm1.*``     |
| ``blocks.N.norm2.*``        | ``blocks.N.layer_norm2.*``     |
| ``blocks.N.mlp.layers.0.*`` | ``blocks.N.mlp.proj_in.*``     |
| ``blocks.N.mlp.layers.1.*`` | ``blocks.N.mlp.proj_out.*``    |

In a full SAM 2 checkpoint the trunk sits under ``image_encoder.trunk.`` inside the ``"model"`` entry. Only the
trunk is read; everything else (the FPN neck ``image_encoder.neck``, the prompt encoder, mask decoder, memory
encoder / attention and object-pointer layers) is left out on purpose: the segmentation models here use the
trunk's four stage maps alone, as SAM2-UNet and DSU-Net do upstream.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch

from ..backbones.loading import git_lfs_pointer

SAM2_TRUNK_PREFIX = "image_encoder.trunk."

# (pattern, replacement) pairs; each is idempotent on names that are already transformers names.
_TRUNK_RENAMES = [
    (re.compile(r"^patch_embed\.proj\."), "patch_embed.projection."),
    (re.compile(r"(^|\.)norm1\."), r"\1layer_norm1."),
    (re.compile(r"(^|\.)norm2\."), r"\1layer_norm2."),
    (re.compile(r"(^|\.)mlp\.layers\.0\."), r"\1mlp.proj_in."),
    (re.compile(r"(^|\.)mlp\.layers\.1\."), r"\1mlp.proj_out."),
]


def sam2_trunk_key_to_transformers(key: str) -> str:
    """Rename one official sam2 trunk key (without the ``image_encoder.trunk.`` prefix)."""
    for pattern, replacement in _TRUNK_RENAMES:
        key = pattern.sub(replacement, key)
    return key


def convert_sam2_trunk_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official trunk state dict (prefix already stripped) -> ``Sam2HieraDetModel`` state dict."""
    return {sam2_trunk_key_to_transformers(k): v for k, v in state_dict.items()}


def _unreadable(path: Path, error: Exception) -> str:
    """One line saying why ``torch.load`` failed (its own messages run over several lines and name no file)."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(error)).split())
    if refused := re.search(r"Unsupported global: GLOBAL (\S+)", text):
        return (f"{path}: holds pickled {refused.group(1)} objects besides tensors, which are not loaded (weights_only="
                f"True: no code from a checkpoint runs); if you trust the file, load it with torch.load(file, "
                f"weights_only=False) and torch.save its state dict alone")
    if pointer := git_lfs_pointer(path):
        return pointer
    with open(path, "rb") as handle:
        head = handle.read(16)
    # torch.save writes a zip archive (PK) or, in its legacy format, a pickle (protocol >= 2 starts with 0x80);
    # anything else is some other file (an HTML error page, JSON), whatever weights_only's advice says.
    if head and not head.startswith((b"PK", b"\x80")):
        return f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle; it starts with {head!r})"
    size = path.stat().st_size
    # A zip cut short (a partial download) has no central directory: zipfile says so where torch's reader gives
    # "[Errno 22] Invalid argument" or the like.
    cut_zip = head.startswith(b"PK") and not zipfile.is_zipfile(path)
    if isinstance(error, EOFError) or "central directory" in text or size == 0 or cut_zip:
        return (f"{path}: truncated or corrupt checkpoint ({size:,} bytes; {text.split('. ')[0] or type(error).__name__}); "
                f"download or copy it again")
    return f"{path}: cannot read as a PyTorch checkpoint: {text or type(error).__name__}"


def read_torch_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``.pt``/``.pth`` state dict without executing pickled code (``weights_only=True``).

    Unwraps the ``{"model": ...}`` / ``{"state_dict": ...}`` containers and strips the ``module.``
    (DataParallel) and ``_orig_mod.`` (torch.compile) prefixes. Errors are one line naming the file.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle/zip errors carry no file name: add it
        raise ValueError(_unreadable(path, error)) from error
    for container in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(container), dict):
            checkpoint = checkpoint[container]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(checkpoint).__name__}")
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in checkpoint.items()}


def trunk_state_dict_from_sam2_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Meta's ``sam2_hiera_*.pt`` / ``sam2.1_hiera_*.pt`` -> ``Sam2HieraDetModel`` state dict."""
    state_dict = read_torch_checkpoint(path)
    trunk = {k[len(SAM2_TRUNK_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(SAM2_TRUNK_PREFIX)}
    if not trunk:
        raise ValueError(
            f"{path}: no '{SAM2_TRUNK_PREFIX}*' keys; this is not a SAM 2 checkpoint "
            f"(first keys: {sorted(state_dict)[:5]})"
        )
    return convert_sam2_trunk_state_dict(trunk)


def convert_sam2_hiera_checkpoint(source: str | Path, output_dir: str | Path):
    """Meta's ``sam2*_hiera_*.pt`` -> a ``Sam2HieraDetModel`` folder (usable as ``backbone_repo_id``), written
    atomically. The size preset is read from the tensors; a missing, unexpected or resized tensor is a one-line
    ``ValueError`` naming the file. Returns the model and its preset."""
    from transformers import Sam2HieraDetModel

    from ..backbones.hiera import hiera_config, infer_hiera_preset
    from ..backbones.loading import load_state_dict_strictly
    from ..files import give_new_file_modes
    from . import write_folder_atomically

    state_dict = trunk_state_dict_from_sam2_checkpoint(source)
    preset = infer_hiera_preset(state_dict, str(source))
    trunk = Sam2HieraDetModel(hiera_config(preset)).eval()
    load_state_dict_strictly(trunk, state_dict, str(source), what=f"a SAM 2 Hiera-{preset} trunk",
                             expected_by=f"Hiera-{preset}")

    def write(folder):
        trunk.save_pretrained(folder)
        give_new_file_modes(folder)  # safetensors writes 0600: others on a shared machine could not load it

    write_folder_atomically(output_dir, write)
    return trunk, preset
