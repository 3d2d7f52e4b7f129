"""The authors' DSU-Net checkpoints (``DGSUNet-*.pth``, full ``model.state_dict()``) -> a dsunet-hf artifact.

Key map (everything else is an error):

| upstream key                                      | dsunet-hf key                                           |
|---------------------------------------------------|---------------------------------------------------------|
| ``backbone_sam.sam_encoder.<SAM2-UNet encoder key>`` | ``backbone_sam.`` + the SAM2-UNet map of ``encoder.<key>`` (adapters ``prompt_learn.{0,2}`` -> ``adapter.{down,up}``, trunk renames of ``convert/sam2.py``) |
| ``backbone_dino.dino_encoder.<torch.hub DINOv2 key>`` | ``backbone_dino.encoder.<transformers Dinov2Model key>`` (``convert_dinov2_hub_state_dict``) |
| ``fusion4.*``, ``dino2sam_down14.*``, ``rfb{1-4}.*``, ``decoder{1-3}.*``, ``side1.*``, ``side2.*``, ``head.*`` | unchanged |

A head with C > 2 output channels (a multi-class DSU-Net: the head widened as the SAM2-UNet authors advise for
multi-class data) gives a config with ``num_labels = C``; a two-channel (background, foreground) head becomes the
binary model's single foreground logit ``l1 - l0``, as in ``convert/sam2_unet.py``.

No trained DSU-Net weights are published; the converter serves checkpoints people trained with the
official code. By default the artifact keeps only the trainable tensors; the frozen backbones come from
the repos recorded in the config.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..backbones.dinov2 import DINOV2_PRESETS, convert_dinov2_hub_state_dict, dinov2_hub_repo
from ..backbones.hiera import hiera_hub_repo, infer_hiera_preset
from . import fold_two_class_heads, head_classes, save_converted_model
from .sam2 import read_torch_checkpoint
from .sam2_unet import map_sam2_unet_key

SAM_PREFIX = "backbone_sam.sam_encoder."
DINO_PREFIX = "backbone_dino.dino_encoder."
_HEAD = re.compile(r"^(fusion4|dino2sam_down14|rfb[1-4]|decoder[1-3]|side1|side2|head)\.")


def convert_dsunet_state_dict(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    if not any(k.startswith(SAM_PREFIX) for k in state_dict) or "fusion4.conv.weight" not in state_dict:
        if "encoder.blocks.0.prompt_learn.0.weight" in state_dict:
            raise ValueError(f"{source}: a SAM2-UNet checkpoint, not a DSU-Net one: convert it with "
                             f"`dsunet-hf convert sam2-unet`")
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
    try:
        dino = convert_dinov2_hub_state_dict(dino)
    except ValueError as error:  # its messages name the key without the prefix, and no file
        raise ValueError(f"{source}: {DINO_PREFIX}{error}") from error
    converted.update({"backbone_dino.encoder." + k: v for k, v in dino.items()})
    fold_two_class_heads(converted)
    return converted


def infer_dsunet_presets(converted: dict[str, torch.Tensor], source: str = "checkpoint") -> tuple[str, str]:
    """(Hiera preset, DINOv2 preset) of a converted state dict, from the trunks' widths and depths (upstream
    DGSUNet takes other SAM 2 configs and DINOv2 sizes than the paper's L + L)."""
    patch_embedding = converted.get("backbone_dino.encoder.embeddings.patch_embeddings.projection.weight")
    if patch_embedding is None:
        raise ValueError(f"{source}: no DINOv2 tensors ('{DINO_PREFIX}*'): not a whole DSU-Net checkpoint")
    trunk = {k[len("backbone_sam.encoder."):]: v for k, v in converted.items() if k.startswith("backbone_sam.encoder.")}
    sam_preset = infer_hiera_preset(trunk, str(source))
    width = patch_embedding.shape[0]
    depth = len({k.split(".")[4] for k in converted if k.startswith("backbone_dino.encoder.encoder.layer.")})
    for name, preset in DINOV2_PRESETS.items():
        if preset["hidden_size"] == width and preset["num_hidden_layers"] == depth:
            return sam_preset, name
    raise ValueError(f"{source}: a DINOv2 of width {width} with {depth} blocks matches no preset")


def convert_dsunet_checkpoint(source: str | Path, output_dir: str | Path, config=None, include_backbone: bool = False,
                              sam_backbone_repo_id: str | None = None, sam_backbone_revision: str | None = None,
                              dino_backbone_repo_id: str | None = None, dino_backbone_revision: str | None = None,
                              id2label: dict[int, str] | str | Path | None = None):
    """Convert ``DGSUNet-*.pth`` into an artifact folder; strict: missing/unexpected tensors are named.

    ``config`` defaults to the sizes the checkpoint's tensors show (the paper's: SAM 2.1 Hiera-L + DINOv2-L), with
    the backbone repos given or Meta's of those sizes (SAM 2.1, what DSU-Net trains from); ``id2label`` (a dict
    or an ``id2label.json`` file) names the head's classes: ids 0..C-1 (2 for a binary head)."""
    from ..models.dsunet import DSUNetConfig, DSUNetForImageSegmentation

    converted = convert_dsunet_state_dict(read_torch_checkpoint(source), str(source))
    classes = converted["head.weight"].shape[0] if "head.weight" in converted else 1  # a missing one: the load names it
    repos = (sam_backbone_repo_id, sam_backbone_revision, dino_backbone_repo_id, dino_backbone_revision)
    if config is not None and (any(repos) or id2label is not None):
        raise ValueError("give the backbone repos and id2label in the config when passing one (the arguments build "
                         "a config)")
    if config is None:
        sam_preset, dino_preset = infer_dsunet_presets(converted, str(source))
        config = DSUNetConfig(
            sam_preset=sam_preset, sam_backbone_repo_id=sam_backbone_repo_id or hiera_hub_repo(sam_preset, "2.1"),
            sam_backbone_revision=sam_backbone_revision, dino_preset=dino_preset,
            dino_backbone_repo_id=dino_backbone_repo_id or dinov2_hub_repo(dino_preset),
            dino_backbone_revision=dino_backbone_revision, **head_classes(classes, id2label, source),
        )
    return save_converted_model(DSUNetForImageSegmentation(config), converted, source, output_dir, include_backbone,
                                holds_backbones=True)
