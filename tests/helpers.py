"""Builders for tiny backbone checkpoints in the layouts found on the Hub, a model with known outputs, and input folders."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import TINY_HIERA
from PIL import Image
from safetensors.torch import save_file
from transformers import Sam2HieraDetConfig, Sam2HieraDetModel
from transformers.modeling_outputs import SemanticSegmenterOutput

# transformers names -> official sam2 names (the inverse of convert/sam2.py's table), built here from
# the documented renames so the test does not reuse the code under test.
_TO_OFFICIAL = [
    ("patch_embed.projection.", "patch_embed.proj."),
    (".layer_norm1.", ".norm1."),
    (".layer_norm2.", ".norm2."),
    (".mlp.proj_in.", ".mlp.layers.0."),
    (".mlp.proj_out.", ".mlp.layers.1."),
]


def tiny_hiera(seed: int = 1) -> Sam2HieraDetModel:
    torch.manual_seed(seed)
    model = Sam2HieraDetModel(Sam2HieraDetConfig(**TINY_HIERA)).eval()
    with torch.no_grad():  # position embeddings start at zero; make them count in comparisons
        model.pos_embed.normal_()
        model.pos_embed_window.normal_()
    return model


def write_photos_and_a_bad_file(folder: Path, count: int) -> list[str]:
    """``count`` small photos ``0.png``... of different widths in a new ``folder``, and ``bad.png``, which is not an
    image (predict reports it as failed, the rest go on): the photos' paths."""
    folder.mkdir()
    for i in range(count):
        Image.new("RGB", (40 + i, 30), (i * 30, 100, 50)).save(folder / f"{i}.png")
    (folder / "bad.png").write_bytes(b"not an image")
    return [str(folder / f"{i}.png") for i in range(count)]


def to_official_name(key: str) -> str:
    for new, old in _TO_OFFICIAL:
        key = key.replace(new, old)
    return key


def write_transformers_trunk_repo(folder: Path, trunk: Sam2HieraDetModel) -> Path:
    """A plain ``Sam2HieraDetModel`` repo (config.json + model.safetensors)."""
    trunk.save_pretrained(folder)
    return folder


def write_sam2_video_repo(folder: Path, trunk: Sam2HieraDetModel) -> Path:
    """The layout of transformers-format ``facebook/sam2*`` repos: the trunk nested under
    ``vision_encoder.backbone.`` next to other SAM 2 modules, config nested two levels deep."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"vision_encoder.backbone.{k}": v.contiguous() for k, v in trunk.state_dict().items()}
    tensors["mask_decoder.iou_token.weight"] = torch.zeros(1, 8)  # other SAM 2 parts must be ignored
    tensors["vision_encoder.neck.conv.weight"] = torch.zeros(8, 8, 1, 1)
    save_file(tensors, str(folder / "model.safetensors"))
    backbone_config = trunk.config.to_dict()
    config = {"model_type": "sam2_video", "vision_config": {"model_type": "sam2_vision_model",
                                                           "backbone_config": backbone_config}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def write_meta_checkpoint(path: Path, trunk: Sam2HieraDetModel) -> Path:
    """Meta's original ``sam2_hiera_*.pt`` layout: {"model": {"image_encoder.trunk.<official name>": ...}}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"image_encoder.trunk.{to_official_name(k)}": v for k, v in trunk.state_dict().items()}
    state["sam_mask_decoder.iou_token.weight"] = torch.zeros(1, 8)
    torch.save({"model": state}, path)
    return path


class RedChannelModel(torch.nn.Module):
    """A 'model' whose foreground is wherever the image (or frame) is red: the expected masks follow from the
    pixels, so a dropped, repeated or reordered frame, a misplaced output or a coarse map shows."""

    predicts_class_maps = False

    def __init__(self, fail_after_batches: int | None = None):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(6.0))
        self.calls, self.fail_after_batches, self.input_sizes = 0, fail_after_batches, set()

    def forward(self, pixel_values):
        self.calls += 1
        self.input_sizes.add(tuple(pixel_values.shape[-2:]))
        if self.fail_after_batches is not None and self.calls > self.fail_after_batches:
            raise RuntimeError("out of memory (simulated)")
        red, green = pixel_values[:, :1], pixel_values[:, 1:2]
        return SemanticSegmenterOutput(logits=self.scale * (red - green - 1))
