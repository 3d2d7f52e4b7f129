"""Frozen DINOv2 ViT/14 encoder, on transformers' ``Dinov2Model``.

``DINOv2Backbone(config)(pixel_values)`` returns the final-LayerNorm patch tokens as an NCHW map
(B, C, H/14, W/14), i.e. the torch.hub model's ``x_norm_patchtokens`` reshaped; ``forward_layers`` returns
the same for chosen intermediate blocks. Pretrained weights come from a Hub repo (transformers
``model.safetensors``, 4.x or 5.x names), a local folder, or a file (``.safetensors``, or Meta's torch.hub
``dinov2_vit*14*.pth`` which is converted to transformers-5 names).
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from transformers import Dinov2Config, Dinov2Model

from ..convert.sam2 import read_torch_checkpoint
from ..hub import BackboneNotAvailableError, resolve_repo_file, snapshot_revision
from .loading import git_lfs_pointer, load_state_dict_strictly, single_checkpoint

# Meta's DINOv2 ViT/14 sizes (torch.hub dinov2_vit{s,b,l,g}14): 518 px, LayerScale 1.0, LayerNorm eps 1e-6.
_COMMON = dict(patch_size=14, image_size=518, layerscale_value=1.0, layer_norm_eps=1e-6, mlp_ratio=4)
DINOV2_PRESETS: dict[str, dict] = {
    "small": dict(_COMMON, hidden_size=384, num_hidden_layers=12, num_attention_heads=6),
    "base": dict(_COMMON, hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "large": dict(_COMMON, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
    "giant": dict(_COMMON, hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, use_swiglu_ffn=True),
}


def _check_preset(preset: str) -> None:
    if preset not in DINOV2_PRESETS:
        raise ValueError(f"unknown DINOv2 preset {preset!r}; choose one of {sorted(DINOV2_PRESETS)}")


def dinov2_hub_repo(preset: str) -> str:
    """Meta's transformers repo for a DINOv2 size: ``facebook/dinov2-large`` etc."""
    _check_preset(preset)
    return f"facebook/dinov2-{preset}"


def dinov2_config(preset: str | None = "large", **overrides) -> Dinov2Config:
    """A ``Dinov2Config`` for a size preset, with optional field overrides (tiny test configs)."""
    if preset is not None:
        _check_preset(preset)
    fields = dict(DINOV2_PRESETS[preset]) if preset else {}
    fields.update(overrides)
    return Dinov2Config(**fields)



def dinov2_config_dict(preset: str, overrides: dict | None = None) -> dict:
    """The resolved preset + override fields as plain JSON values, for a model config to store."""
    overrides = {k: v for k, v in (overrides or {}).items() if k not in ("model_type", "transformers_version")}
    config = dinov2_config(preset, **overrides)
    return {name: getattr(config, name) for name in dict.fromkeys([*DINOV2_PRESETS[preset], *overrides])}

def upstream_interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The original DINOv2 rule for other token grids than the trained 37x37: bicubic with
    ``scale_factor = (grid + 0.1) / 37`` (a historical kludge) instead of transformers' output ``size``. The
    official segmentation heads (multi-scale, 640-px crops) were trained and evaluated with it; bound onto
    ``Dinov2Embeddings`` by ``DINOv2Backbone(upstream_position_interpolation=True)``. While exporting (ONNX,
    ``torch.export``) the same numbers come from :func:`_upstream_grid_for_export`, which keeps the grid size
    symbolic (``F.interpolate`` would bake the traced scale factor into the graph)."""
    num_patches, num_positions = embeddings.shape[1] - 1, self.position_embeddings.shape[1] - 1
    patch = self.patch_embeddings.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    side = int(math.isqrt(num_positions))
    grid = self.position_embeddings[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if torch.compiler.is_exporting():
        grid = _upstream_grid_for_export(grid[0], height // patch, width // patch)[None]
    elif num_patches == num_positions and height == width:
        return self.position_embeddings
    else:
        scale = ((height // patch + 0.1) / side, (width // patch + 0.1) / side)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, grid.shape[1]).to(self.position_embeddings.dtype)
    return torch.cat([self.position_embeddings[:, :1], grid], dim=1)


def _bicubic_matrix(size, side: int, same_grid: torch.Tensor) -> torch.Tensor:
    """(size, side) weights of PyTorch's CPU bicubic upsampling (align_corners False, A = -0.75) with scale
    factor ``(size + 0.1) / side``, built from tensors so ``size`` may be symbolic; the identity where
    ``same_grid`` (upstream returns the embeddings untouched at the trained grid)."""
    positions = torch.arange(size, dtype=torch.float64)
    # As ATen: 1 / scale in double, rounded to float32; the source index scale' * (i + 0.5) - 0.5 rounded once (the
    # compiled kernel fuses the multiply-add), which brings the weights to within 5e-7 of ATen's.
    inverse = (1.0 / ((positions.new_full((), size) + 0.1) / side)).float().double()
    source = (inverse * (positions + 0.5) - 0.5).float()
    index = torch.floor(source).clamp(max=side - 1)
    t = (source - index).clamp(0.0, 1.0)
    a = -0.75

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=1)  # (size, 4)
    taps = (index[:, None].long() + torch.arange(-1, 3)).clamp(0, side - 1)  # (size, 4)
    columns = torch.arange(side)
    matrix = ((taps[..., None] == columns).float() * weights[..., None]).sum(1)
    identity = (torch.arange(size)[:, None] == columns).float()
    return torch.where(same_grid, identity, matrix)


def _upstream_grid_for_export(grid: torch.Tensor, rows, columns) -> torch.Tensor:
    """:func:`upstream_interpolate_pos_encoding`'s (C, rows, columns) grid from the trained (C, side, side) one as
    two matrix products (separable bicubic), with ``rows``/``columns`` possibly symbolic."""
    side = grid.shape[-1]
    same_grid = (torch.arange(rows).max() == side - 1) & (torch.arange(columns).max() == side - 1)
    along_rows = _bicubic_matrix(rows, side, same_grid)
    along_columns = _bicubic_matrix(columns, side, same_grid)
    return along_rows @ grid @ along_columns.T


class DINOv2Backbone(nn.Module):
    """DINOv2 encoder returning final-LayerNorm patch tokens channels-first (CLS / registers dropped)."""

    def __init__(self, config: Dinov2Config, upstream_position_interpolation: bool = False):
        super().__init__()
        self.config = config
        self.encoder = Dinov2Model(config)
        if upstream_position_interpolation:
            embeddings = self.encoder.embeddings
            # A partial, not types.MethodType: torch.save(model) could not be loaded back (see hiera.py).
            embeddings.interpolate_pos_encoding = functools.partial(upstream_interpolate_pos_encoding, embeddings)

    @property
    def channels(self) -> int:
        return int(self.config.hidden_size)

    @property
    def patch_size(self) -> int:
        patch = self.config.patch_size
        return int(patch[0] if isinstance(patch, (tuple, list)) else patch)

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus register tokens (``Dinov2Model`` has none; ``Dinov2WithRegisters`` configs do)."""
        return 1 + int(getattr(self.config, "num_register_tokens", 0) or 0)

    def _to_map(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        patches = tokens[:, self.num_prefix_tokens :]
        rows, cols = height // self.patch_size, width // self.patch_size
        return patches.reshape(patches.shape[0], rows, cols, patches.shape[-1]).permute(0, 3, 1, 2).contiguous()

    def check_input_size(self, height: int, width: int) -> None:
        """The patch embedding (a stride-14 conv) would silently drop the rows and columns past the last whole
        patch; upstream's asserts the same. Pad first (the DINOv2 heads centre-pad as upstream)."""
        patch = self.patch_size
        if height % patch or width % patch or height < 1 or width < 1:
            raise ValueError(f"DINOv2Backbone: input height and width must be multiples of the patch size {patch}, "
                             f"got {height}x{width} (pad the image first)")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_compiling():  # traced sizes may be symbolic; the models pad or check first too
            self.check_input_size(*pixel_values.shape[-2:])
        tokens = self.encoder(pixel_values).last_hidden_state  # already through the final LayerNorm
        return self._to_map(tokens, *pixel_values.shape[-2:])

    def block_index(self, layer: int) -> int:
        """1-based block index of ``layer`` (negative counts from the end: -1 = the last block)."""
        depth = self.config.num_hidden_layers
        index = layer + depth + 1 if layer < 0 else layer
        if not 1 <= index <= depth:
            raise ValueError(f"layer {layer} is out of range for a {depth}-block DINOv2 (use 1..{depth} or -{depth}..-1)")
        return index

    def block_tokens(self, pixel_values: torch.Tensor, indices: list[int]) -> dict[int, torch.Tensor]:
        """Tokens after the given 1-based blocks, before the final LayerNorm; stops after the deepest one.

        Runs the embeddings and blocks directly rather than ``output_hidden_states=True``: transformers'
        output capturing enters a lock that torch.compile cannot trace (a graph break per call)."""
        if not torch.compiler.is_compiling():
            self.check_input_size(*pixel_values.shape[-2:])
        hidden = self.encoder.embeddings(pixel_values)
        wanted, tokens = set(indices), {}
        for index, block in enumerate(self.encoder.encoder.layer[: max(indices)], start=1):
            hidden = block(hidden)
            if index in wanted:
                tokens[index] = hidden
        return tokens

    def forward_layers(self, pixel_values: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        """Maps after the given 1-based blocks (negative counts from the end, -1 = last), each through the
        final LayerNorm, as NCHW patch-token maps."""
        indices = [self.block_index(layer) for layer in layers]
        tokens = self.block_tokens(pixel_values, indices)
        height, width = pixel_values.shape[-2:]
        return [self._to_map(self.encoder.layernorm(tokens[i]), height, width) for i in indices]

    def _plain_names(self) -> dict[str, str]:
        """Plain ``Dinov2Model`` name -> the encoder's own key: peft's ``.base_layer`` level dropped, LoRA's own
        tensors left out (strategy ``lora``; they are the artifact's, not the checkpoint's)."""
        return {key.replace(".base_layer.", "."): key for key in self.encoder.state_dict() if "lora_" not in key}

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's tensors under plain (transformers-5) ``Dinov2Model`` names."""
        own = self.encoder.state_dict()
        return {plain: own[key] for plain, key in self._plain_names().items()}

    def load_encoder_state_dict(self, state_dict: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load plain ``Dinov2Model`` weights strictly into the (possibly LoRA'd) encoder: any missing/unexpected
        key or shape changes nothing; LoRA tensors keep their values."""
        load_state_dict_strictly(
            self.encoder, state_dict, source, self._plain_names(),
            what="a DINOv2 encoder of this size", expected_by="this DINOv2 config", size_hint="(wrong size preset?)",
        )


# --- checkpoint name conversion -----------------------------------------------------------------

_HUB_RENAMES = [  # torch.hub (facebookresearch/dinov2) -> transformers 5.x, after block-chunk flattening
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^mask_token$", "embeddings.mask_token"),
    (r"^pos_embed$", "embeddings.position_embeddings"),
    (r"^register_tokens$", "embeddings.register_tokens"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embeddings.projection."),
    (r"^norm\.", "layernorm."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layer.\1.attention.o_proj."),
    (r"^blocks\.(\d+)\.ls([12])\.gamma$", r"encoder.layer.\1.layer_scale\2.lambda1"),
    (r"^blocks\.(\d+)\.mlp\.w3\.", r"encoder.layer.\1.mlp.down_proj."),
    (r"^blocks\.(\d+)\.", r"encoder.layer.\1."),  # norm1, norm2, mlp.fc1, mlp.fc2
]
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+\.)")  # block_chunks > 0: blocks.<chunk>.<i>.<...>


def convert_dinov2_hub_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta's torch.hub DINOv2 names (``dinov2_vit*14*.pth``) -> transformers-5 ``Dinov2Model`` names.

    ``attn.qkv`` is split in thirds into ``q_proj/k_proj/v_proj``; the giant's fused SwiGLU ``mlp.w12`` is
    split in halves into ``gate_proj`` / ``up_proj``. Unknown keys raise ``ValueError``.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        key = _CHUNKED_BLOCK.sub(r"blocks.\1", key)
        split = re.match(r"^blocks\.(\d+)\.(attn\.qkv|mlp\.w12)\.(weight|bias)$", key)
        if split:
            layer, kind, param = split.groups()
            if kind == "attn.qkv":
                names = [f"encoder.layer.{layer}.attention.{p}_proj.{param}" for p in ("q", "k", "v")]
            else:  # SwiGLU: hidden = silu(x @ w1) * (x @ w2), with w12 = cat(w1, w2)
                names = [f"encoder.layer.{layer}.mlp.{p}_proj.{param}" for p in ("gate", "up")]
            if tensor.shape[0] % len(names):
                raise ValueError(f"{key}: first dimension {tensor.shape[0]} does not split into {len(names)}")
            for name, part in zip(names, tensor.chunk(len(names), dim=0)):
                converted[name] = part.clone()
            continue
        for pattern, replacement in _HUB_RENAMES:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                converted[new_key] = tensor
                break
        else:
            raise ValueError(f"{key}: not a DINOv2 torch.hub checkpoint key")
    return converted


_V4_QKV = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}


def convert_dinov2_v4_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers-4 ``Dinov2Model`` names -> transformers-5 names (v5 names pass through unchanged).

    4.x: ``attention.attention.{query,key,value}``, ``attention.output.dense``, SwiGLU ``mlp.weights_in``
    (gate and up fused, split in halves here) and ``mlp.weights_out``.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        key = re.sub(
            r"\.attention\.attention\.(query|key|value)\.", lambda m: f".attention.{_V4_QKV[m.group(1)]}.", key
        )
        key = key.replace(".attention.output.dense.", ".attention.o_proj.")
        key = key.replace(".mlp.weights_out.", ".mlp.down_proj.")
        if ".mlp.weights_in." in key:
            gate, up = tensor.chunk(2, dim=0)
            converted[key.replace(".mlp.weights_in.", ".mlp.gate_proj.")] = gate.clone()
            converted[key.replace(".mlp.weights_in.", ".mlp.up_proj.")] = up.clone()
            continue
        converted[key] = tensor
    return converted


_HUB_ANCHOR = re.compile(r"(^|\.)patch_embed\.proj\.weight$")
_ANCHOR = "embeddings.patch_embeddings.projection.weight"


def _encoder_from_named(state_dict: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Any DINOv2 layout -> plain transformers-5 ``Dinov2Model`` names.

    torch.hub names (also under a prefix such as DSU-Net's ``backbone_dino.dino_encoder.``) are converted;
    transformers names (4.x or 5.x, under any prefix such as ``dinov2.`` / ``backbone.``) are renamed. The
    prefix is the one found before the patch-embedding weight; keys outside it (heads, other models) are
    ignored.
    """
    # A SAM 2 Hiera trunk has torch.hub's patch_embed.proj too (DSU-Net checkpoints hold both): DINOv2's has a CLS token.
    hub_anchors = [k for k in state_dict if _HUB_ANCHOR.search(k) and k[: -len("patch_embed.proj.weight")] + "cls_token"
                   in state_dict]
    anchors = [k for k in state_dict if k == _ANCHOR or k.endswith("." + _ANCHOR)]
    if len(hub_anchors) + len(anchors) != 1:
        raise ValueError(f"{source}: expected one DINOv2 encoder, found DINOv2 patch embeddings at {hub_anchors + anchors}")
    if hub_anchors:
        prefix = hub_anchors[0][: -len("patch_embed.proj.weight")]
        return convert_dinov2_hub_state_dict(
            {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        )
    prefix = anchors[0][: -len(_ANCHOR)]
    encoder = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    # Heads beside the encoder under the same prefix (e.g. a classifier) are not ours.
    encoder = {k: v for k, v in encoder.items() if k.split(".")[0] in ("embeddings", "encoder", "layernorm")}
    return convert_dinov2_v4_state_dict(encoder)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as error:  # safetensors' own error names no file
        raise ValueError(git_lfs_pointer(path) or f"{path}: cannot read as safetensors: {error}") from error
    with handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    state_dict = _read_safetensors(path) if path.suffix == ".safetensors" else read_torch_checkpoint(path)
    return _encoder_from_named(state_dict, str(path))


def load_dinov2_state_dict(
    source: str | Path, revision: str | None = None, **download_kwargs
) -> tuple[dict[str, torch.Tensor], str | None]:
    """Load DINOv2 weights as a transformers-5 ``Dinov2Model`` state dict.

    ``source`` is a Hub repo id (its ``model.safetensors``), a local folder (``model.safetensors`` or a
    ``.pth``/``.pt``), or a ``.safetensors`` / ``.pth`` / ``.pt`` file (torch.hub checkpoints are converted).
    Returns the state dict and the resolved Hub commit (None for local sources). Raises
    ``BackboneNotAvailableError`` with the ways to fix it when the weights cannot be had. ``download_kwargs``
    (``cache_dir``, ``token``, ``local_files_only``, ``force_download``) apply to a Hub repo's files.
    """
    path = Path(source).expanduser()  # "~/models/dinov2.pth" was refused as missing
    if path.is_file():
        return _read_file(path), None
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return _read_file(path / "model.safetensors"), None
        checkpoint = single_checkpoint(path, ("*.pth", "*.pt"), "DINOv2")
        if checkpoint is not None:
            return _read_file(checkpoint), None
        raise BackboneNotAvailableError(f"{path}: folder holds neither model.safetensors nor a DINOv2 .pth checkpoint")
    repo_id = str(source)
    if path.suffix in (".pt", ".pth", ".safetensors") or repo_id.startswith((".", "/", "~")) or repo_id.count("/") > 1:
        raise BackboneNotAvailableError(f"{source}: no such backbone file or folder")
    local_file, error = resolve_repo_file(repo_id, "model.safetensors", revision, **download_kwargs)
    if local_file is None:
        raise BackboneNotAvailableError.for_repo(repo_id, revision, [f"model.safetensors: {error}"],
                                                 cache_dir=download_kwargs.get("cache_dir")) from error.error
    return _read_file(local_file), snapshot_revision(local_file)
