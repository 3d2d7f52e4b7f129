"""Frozen SAM 2 Hiera image-encoder trunk, on transformers' ``Sam2HieraDetModel``.

``HieraBackbone(config)`` returns the four stage-end maps as NCHW tensors (strides 4/8/16/32);
``.channels`` lists their widths. Pretrained weights come from a Hub repo (transformers ``sam2`` /
``sam2_video`` layout, or Meta's original ``.pt`` in the same repo), a local folder, or a checkpoint file.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import Sam2HieraDetConfig, Sam2HieraDetModel
from transformers.models.sam2.modeling_sam2 import ALL_ATTENTION_FUNCTIONS, do_pool, eager_attention_forward

from ..convert.sam2 import convert_sam2_trunk_state_dict, trunk_state_dict_from_sam2_checkpoint
from ..hub import BackboneNotAvailableError, damaged_cache_file_advice, resolve_repo_file, snapshot_revision
from .loading import git_lfs_pointer, load_state_dict_strictly, single_checkpoint

# Exact SAM 2 / SAM 2.1 trunk settings (identical for both releases; only the weights differ).
HIERA_PRESETS: dict[str, dict] = {
    "tiny": dict(
        hidden_size=96, num_attention_heads=1, blocks_per_stage=[1, 2, 7, 2],
        embed_dim_per_stage=[96, 192, 384, 768], num_attention_heads_per_stage=[1, 2, 4, 8],
        window_size_per_stage=[8, 4, 14, 7], global_attention_blocks=[5, 7, 9],
        window_positional_embedding_background_size=[7, 7],
    ),
    "small": dict(
        hidden_size=96, num_attention_heads=1, blocks_per_stage=[1, 2, 11, 2],
        embed_dim_per_stage=[96, 192, 384, 768], num_attention_heads_per_stage=[1, 2, 4, 8],
        window_size_per_stage=[8, 4, 14, 7], global_attention_blocks=[7, 10, 13],
        window_positional_embedding_background_size=[7, 7],
    ),
    "base_plus": dict(
        hidden_size=112, num_attention_heads=2, blocks_per_stage=[2, 3, 16, 3],
        embed_dim_per_stage=[112, 224, 448, 896], num_attention_heads_per_stage=[2, 4, 8, 16],
        window_size_per_stage=[8, 4, 14, 7], global_attention_blocks=[12, 16, 20],
        window_positional_embedding_background_size=[14, 14],
    ),
    "large": dict(
        hidden_size=144, num_attention_heads=2, blocks_per_stage=[2, 6, 36, 4],
        embed_dim_per_stage=[144, 288, 576, 1152], num_attention_heads_per_stage=[2, 4, 8, 16],
        window_size_per_stage=[8, 4, 16, 8], global_attention_blocks=[23, 33, 43],
        window_positional_embedding_background_size=[7, 7],
    ),
}

# Meta's Hub repos per release; SAM2-UNet was trained from the SAM 2.0 Hiera-L trunk.
_REPO_SIZE_NAMES = {"tiny": "tiny", "small": "small", "base_plus": "base-plus", "large": "large"}


def hiera_hub_repo(preset: str, release: str = "2.0") -> str:
    """Meta's Hub repo for a Hiera size: ``facebook/sam2-hiera-large``, ``facebook/sam2.1-hiera-tiny``..."""
    if preset not in _REPO_SIZE_NAMES:
        raise ValueError(f"unknown Hiera preset {preset!r}; choose one of {sorted(HIERA_PRESETS)}")
    if release not in ("2.0", "2.1"):
        raise ValueError(f"unknown SAM 2 release {release!r}; choose '2.0' or '2.1'")
    prefix = "sam2" if release == "2.0" else "sam2.1"
    return f"facebook/{prefix}-hiera-{_REPO_SIZE_NAMES[preset]}"


def hiera_config(preset: str | None = "large", **overrides) -> Sam2HieraDetConfig:
    """A ``Sam2HieraDetConfig`` for a size preset, with optional field overrides (tiny test configs)."""
    if preset is not None and preset not in HIERA_PRESETS:
        raise ValueError(f"unknown Hiera preset {preset!r}; choose one of {sorted(HIERA_PRESETS)}")
    fields = dict(HIERA_PRESETS[preset]) if preset else {}
    fields.update(overrides)
    return Sam2HieraDetConfig(**fields)


def hiera_config_dict(preset: str, overrides: dict | None = None) -> dict:
    """The resolved preset + override fields as plain JSON values, for a model config to store."""
    overrides = {k: v for k, v in (overrides or {}).items() if k not in ("model_type", "transformers_version")}
    config = hiera_config(preset, **overrides)
    return {name: getattr(config, name) for name in dict.fromkeys([*HIERA_PRESETS[preset], *overrides])}


# LoRA targets of the `lora` strategy: the attention and MLP linears of every Hiera block.
HIERA_LORA_TARGETS = ["attn.qkv", "attn.proj", "mlp.proj_in", "mlp.proj_out"]


class AdaptedBlock(nn.Module):
    """A Hiera block with a bottleneck adapter applied to its input: ``block(x + adapter(x))``."""

    def __init__(self, block: nn.Module, adapter: nn.Module):
        super().__init__()
        self.block = block
        self.adapter = adapter

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.block(hidden_states + self.adapter(hidden_states), **kwargs)


# Names of the plain trunk inside a wrapped/LoRA'd one: drop the AdaptedBlock and peft wrapper levels.
_WRAPPER_LEVELS = re.compile(r"(^blocks\.\d+\.)block\.|\.base_layer(?=\.)")


def plain_trunk_key(key: str) -> str:
    return _WRAPPER_LEVELS.sub(r"\1", key)


def is_trunk_key(key: str) -> bool:
    """True for the frozen trunk's own tensors (not adapters, not LoRA)."""
    return ".adapter." not in key and "lora_" not in key


def _multiscale_attention_forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
    """transformers' ``Sam2MultiScaleAttention.forward`` without its dead code: it also computes the full
    softmax(QKᵀ) matrix and discards it (a wasted matmul + softmax per block, and on a GPU an O(N²) buffer in
    the global-attention blocks). Same operations otherwise, so the same outputs."""
    batch_size, height, width, _ = hidden_states.shape
    qkv = self.qkv(hidden_states).reshape(batch_size, height * width, 3, self.num_attention_heads, -1)
    query, key, value = torch.unbind(qkv, 2)
    if self.query_stride:  # query pooling at the first block of a stage
        query = do_pool(query.reshape(batch_size, height, width, -1), self.query_stride)
        height, width = query.shape[1:3]
        query = query.reshape(batch_size, height * width, self.num_attention_heads, -1)
    attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
    output, _ = attention(self, query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                          attention_mask=None, is_causal=self.is_causal, scaling=self.scale, **kwargs)
    return self.proj(output.reshape(batch_size, height, width, -1))


class HieraBackbone(nn.Module):
    """SAM 2 Hiera trunk returning the four stage maps channels-first."""

    def __init__(self, config: Sam2HieraDetConfig):
        super().__init__()
        self.config = config
        self.encoder = Sam2HieraDetModel(config)
        for module in self.encoder.modules():
            if type(module).__name__ == "Sam2MultiScaleAttention":
                # A partial, not types.MethodType: a pickled bound method is looked up by its name on the instance
                # when loaded, so torch.save(model) could not be loaded back.
                module.forward = functools.partial(_multiscale_attention_forward, module)

    @property
    def channels(self) -> list[int]:
        return list(self.config.embed_dim_per_stage)

    @property
    def block_input_dims(self) -> list[int]:
        """Input width of every block (a stage's first block still sees the previous stage's width)."""
        return [plain_block(block).dim for block in self.encoder.blocks]

    def insert_adapters(self, make_adapter) -> None:
        """Wrap every block as ``AdaptedBlock(block, make_adapter(block_input_dim))``."""
        for index, block in enumerate(self.encoder.blocks):
            if isinstance(block, AdaptedBlock):
                raise RuntimeError("adapters are already inserted")
            self.encoder.blocks[index] = AdaptedBlock(block, make_adapter(block.dim))

    @property
    def input_size_multiple(self) -> int:
        """What input heights and widths must be multiples of: 32 for every SAM 2 size (see ``check_input_size``)."""
        config = self.config
        stride = _first_int(config.patch_stride)
        total_stride = stride * _first_int(config.query_stride) ** config.num_query_pool_stages
        return math.lcm(stride * config.window_size_per_stage[0], total_stride)

    def check_input_size(self, height: int, width: int) -> None:
        """transformers (as the official trunk) tiles the window position embedding over the patch grid, and a
        query-pooling block splits an odd grid into windows that it puts back together wrongly: other sizes failed
        deep inside ("The size of tensor a (25) must match the size of tensor b (24)") or, worse, returned stage
        maps of twice the batch (an 80 x 112 input to a trunk of 4 x 4 windows)."""
        multiple = self.input_size_multiple
        if height % multiple or width % multiple or height < 1 or width < 1:
            raise ValueError(f"HieraBackbone: input height and width must be multiples of {multiple}, got "
                             f"{height}x{width}")

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        if not torch.compiler.is_compiling():  # traced sizes may be symbolic; the models check multiples of 32 too
            self.check_input_size(*pixel_values.shape[-2:])
        output = self.encoder(pixel_values)
        # transformers returns (B, H, W, C) stage maps; permuted to NCHW shape they are channels_last in memory,
        # which the convolutions after them take as is (no copy; oneDNN's NHWC kernels, as upstream runs them).
        return [stage.permute(0, 3, 1, 2) for stage in output.intermediate_hidden_states]

    def trunk_state_dict(self) -> dict[str, torch.Tensor]:
        """The frozen trunk's tensors under plain ``Sam2HieraDetModel`` names."""
        return {
            plain_trunk_key(k): v for k, v in self.encoder.state_dict().items() if is_trunk_key(k)
        }

    def load_trunk_state_dict(self, state_dict: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load plain ``Sam2HieraDetModel`` weights into the (possibly adapted / LoRA'd) trunk, strictly."""
        own_names = {plain_trunk_key(k): k for k in self.encoder.state_dict() if is_trunk_key(k)}
        load_state_dict_strictly(
            self.encoder, state_dict, source, own_names,
            what="a Hiera trunk of this size", expected_by="this Hiera config", size_hint="(wrong size preset?)",
        )


def _first_int(value) -> int:
    """A config size given as an int or a per-dimension list (transformers' configs use both)."""
    return int(value if isinstance(value, int) else value[0])


def plain_block(block: nn.Module) -> nn.Module:
    return block.block if isinstance(block, AdaptedBlock) else block


# --- pretrained weights -------------------------------------------------------------------------

def _trunk_from_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Extract the Hiera trunk from any transformers layout (sam2, sam2_video, vision model, trunk only,
    or a self-contained dsunet-hf copy) by finding the prefix of ``patch_embed.projection.weight``."""
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as error:  # safetensors' own error names no file
        advice = damaged_cache_file_advice(path)  # a damaged download in the Hub cache is read again until deleted
        raise ValueError(git_lfs_pointer(path) or f"{path}: cannot read as safetensors: {error}"
                         + (f"; {advice}" if advice else "")) from error
    with handle:
        keys = list(handle.keys())
        anchors = [k for k in keys if re.search(r"(^|\.)patch_embed\.proj(ection)?\.weight$", k)]
        if len(anchors) != 1:
            raise ValueError(f"{path}: expected one SAM 2 Hiera trunk, found patch embeddings at {anchors}")
        prefix = anchors[0][: anchors[0].index("patch_embed.")]
        trunk = {
            plain_trunk_key(k[len(prefix) :]): handle.get_tensor(k)
            for k in keys
            if k.startswith(prefix) and is_trunk_key(k)
        }
    return convert_sam2_trunk_state_dict(trunk)


def _default_checkpoint_name(repo_id: str) -> str:
    # Meta's file names follow the repo names: facebook/sam2.1-hiera-base-plus -> sam2.1_hiera_base_plus.pt
    return repo_id.rstrip("/").split("/")[-1].replace("-", "_") + ".pt"


def load_hiera_state_dict(
    source: str | Path, revision: str | None = None, **download_kwargs
) -> tuple[dict[str, torch.Tensor], str | None]:
    """Load SAM 2 Hiera trunk weights as a ``Sam2HieraDetModel`` state dict.

    ``source`` is a Hub repo id (transformers ``model.safetensors``, else Meta's ``<name>.pt`` in the same
    repo), a local folder with either, or a ``.safetensors`` / ``.pt`` file. Returns the state dict and
    the resolved Hub commit (None for local sources). Raises ``BackboneNotAvailableError`` with the
    ways to fix it when the weights cannot be had. ``download_kwargs`` (``cache_dir``, ``token``,
    ``local_files_only``, ``force_download``) apply to a Hub repo's files.
    """
    path = Path(source).expanduser()  # "~/models/sam2_hiera_large.pt" was refused as missing
    if path.is_file():
        if path.suffix == ".safetensors":
            return _trunk_from_safetensors(path), None
        return trunk_state_dict_from_sam2_checkpoint(path), None
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return _trunk_from_safetensors(path / "model.safetensors"), None
        checkpoint = single_checkpoint(path, ("*.pt", "*.pth"), "SAM 2")
        if checkpoint is not None:
            return trunk_state_dict_from_sam2_checkpoint(checkpoint), None
        raise BackboneNotAvailableError(
            f"{path}: folder holds neither model.safetensors nor a SAM 2 .pt checkpoint"
        )
    repo_id = str(source)
    if path.suffix in (".pt", ".pth", ".safetensors") or repo_id.startswith((".", "/", "~")) or repo_id.count("/") > 1:
        raise BackboneNotAvailableError(f"{source}: no such backbone file or folder")
    errors = []
    for filename in ("model.safetensors", _default_checkpoint_name(repo_id)):
        local_file, error = resolve_repo_file(repo_id, filename, revision, **download_kwargs)
        if local_file is not None:
            state_dict = (
                _trunk_from_safetensors(local_file)
                if filename.endswith(".safetensors")
                else trunk_state_dict_from_sam2_checkpoint(local_file)
            )
            return state_dict, snapshot_revision(local_file)
        errors.append(f"{filename}: {error}")
    raise BackboneNotAvailableError.for_repo(  # raised from the last file's error
        repo_id, revision, errors, cache_dir=download_kwargs.get("cache_dir")) from error.error



def infer_hiera_preset(trunk_state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> str:
    """The size preset of a trunk state dict (transformers names), from its width and block count; a one-line
    error naming ``source`` when the trunk has no patch embedding (an incomplete file) or matches no preset."""
    if "patch_embed.projection.weight" not in trunk_state_dict:  # a KeyError traceback said nothing of the file
        raise ValueError(f"{source}: the SAM 2 Hiera trunk has no patch embedding (patch_embed.proj.weight): an "
                         f"incomplete checkpoint")
    width = trunk_state_dict["patch_embed.projection.weight"].shape[0]
    num_blocks = len({k.split(".")[1] for k in trunk_state_dict if k.startswith("blocks.")})
    for name, preset in HIERA_PRESETS.items():
        if preset["hidden_size"] == width and sum(preset["blocks_per_stage"]) == num_blocks:
            return name
    raise ValueError(f"{source}: a Hiera trunk of width {width} with {num_blocks} blocks matches no preset")
