"""The authors' DSU-Net checkpoints (``DGSUNet-*.pth``, full ``model.state_dict()``) -> a dsunet-hf artifact.

Key map (everything else is an error):

| upstream key                                      | dsunet-hf key                                           |
|---------------------------------------------------|---------------------------------------------------------|
| ``backbone_sam.sam_encoder.<SAM2-UNet encoder key>`` | ``backbone_sam.`` + the SAM2-UNet map of ``encoder.<key>`` (adapters ``prompt_learn.{0,2}`` -> ``adapter.{down,up}``, trunk renames of ``convert/sam2.py``) |
| ``backbone_dino.dino_encoder.<torch.hub DINOv2 key>`` | ``backbone_dino.encoder.<transformers Dinov2Model key>`` (``convert_dinov2_hub_state_dict``) |
| ``fusion4.*``, ``dino2sam_down14.*``, ``rfb{1-4}.*``, ``decoder{1-3}.*``, ``side1.*``, ``side2.*``, ``head.*`` | unchanged |

No trained DSU-Net weights are published; the converter serves checkpoints people trained with the
official code. By default the artifact keeps only the trainable tensors; the frozen backbones come from
the repos recorded in the config.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..backbones.dinov2 import convert_dinov2_hub_state_dict
from . import save_converted_model
from .sam2 import read_torch_checkpoint
from .sam2_unet import map_sam2_unet_key

SAM_PREFIX = "backbone_sam.sam_encoder."
DINO_PREFIX = "backbone_dino.dino_encoder."
_HEAD = re.compile(r"^(fusion4|dino2sam_down14|rfb[1-4]|decoder[1-3]|side1|side2|head)\.")


def convert_dsunet_state_dict(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    if not any(k.startswith(SAM_PREFIX) for k in state_dict) or "fusion4.conv.weight" not in state_dict:
        raise ValueError(
            f"{source}: not a DSU-Net checkpoint (no '{SAM_PREFIX}*' / 'fusion4.conv.weight'; "
            f"first keys: {sorted(state_dict)[:5]})"
        )
    converted, dino, unknown = {}, {}, []
    for key, tensor in state_dict.items():
        if key.startswith(SAM_PREFIX):
            try:
                new_key = map_sam2_unet_key("encoder." + key[len(SAM_PREFIX):])
            except KeyError:
                unknown.append(key)
                continue
            converted["backbone_sam." + new_key[len("backbone."):]] = tensor
        elif key.startswith(DINO_PREFIX):
            dino[key[len(DINO_PREFIX):]] = tensor
        elif _HEAD.match(key):
            converted[key] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{source}: keys with no mapping: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    converted.update({"backbone_dino.encoder." + k: v for k, v in convert_dinov2_hub_state_dict(dino).items()})
    return converted


def convert_dsunet_checkpoint(source: str | Path, output_dir: str | Path, config=None, include_backbone: bool = False):
    """Convert ``DGSUNet-*.pth`` into an artifact folder; strict: missing/unexpected tensors are named.

    ``config`` defaults to the paper's model (SAM 2.1 Hiera-L + DINOv2-L)."""
    from ..models.dsunet import DSUNetConfig, DSUNetForImageSegmentation

    converted = convert_dsunet_state_dict(read_torch_checkpoint(source), str(source))
    return save_converted_model(DSUNetForImageSegmentation(config or DSUNetConfig()), converted, source, output_dir, include_backbone)
