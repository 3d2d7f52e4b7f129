"""The authors' released SAM2-UNet checkpoints (``SAM2UNet-*.pth``) -> a dsunet-hf artifact.

The files are bare ``model.state_dict()`` dumps of the upstream ``SAM2UNet`` (1,192 keys, ~867 MB):
the whole Hiera-L trunk (identical to SAM 2.0 ``sam2_hiera_large.pt``) plus adapters and decoder.
Key map (everything else is an error):

| upstream key                                   | dsunet-hf key                                              |
|------------------------------------------------|------------------------------------------------------------|
| ``encoder.blocks.N.prompt_learn.0.*``          | ``backbone.encoder.blocks.N.adapter.down.*``               |
| ``encoder.blocks.N.prompt_learn.2.*``          | ``backbone.encoder.blocks.N.adapter.up.*``                 |
| ``encoder.blocks.N.block.<sam2 name>``         | ``backbone.encoder.blocks.N.block.<transformers name>``    |
| ``encoder.{pos_embed,pos_embed_window,patch_embed.proj.*}`` | ``backbone.encoder.{pos_embed,pos_embed_window,patch_embed.projection.*}`` |
| ``rfb{1-4}.*``, ``up{1-3}.*``, ``side1.*``, ``side2.*``, ``head.*`` | unchanged                     |
| ``up4.*`` (defined but never used upstream)    | dropped                                                    |

A head with C > 2 output channels (the authors' advice for multi-class data: change the head's channels and
train with cross-entropy) gives a config with ``num_labels = C``. A two-channel (background, foreground)
cross-entropy head becomes the single foreground logit ``l1 - l0`` of each output (``sigmoid(l1 - l0)`` is the
softmax's foreground probability), so it converts to the binary model.

sam2 -> transformers trunk names follow ``convert/sam2.py``. The trunk is used to check the file and,
with ``include_backbone=True``, kept in a self-contained copy; by default the artifact holds only the
17 MB of adapters and decoder, and the trunk comes from ``backbone_repo_id`` at load time.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..backbones.hiera import infer_hiera_preset
from . import fold_two_class_heads, head_classes, save_converted_model
from .sam2 import read_torch_checkpoint, sam2_trunk_key_to_transformers

_ADAPTER = re.compile(r"^encoder\.blocks\.(\d+)\.prompt_learn\.([02])\.(weight|bias)$")
_BLOCK = re.compile(r"^encoder\.blocks\.(\d+)\.block\.(.+)$")
_DECODER = re.compile(r"^(rfb[1-4]|up[1-3]|side1|side2|head)\.")


def map_sam2_unet_key(key: str) -> str | None:
    """One upstream key -> our key; None for keys that are dropped (``up4``)."""
    if key.startswith("up4."):
        return None
    if match := _ADAPTER.match(key):
        block, layer, kind = match.groups()
        return f"backbone.encoder.blocks.{block}.adapter.{'down' if layer == '0' else 'up'}.{kind}"
    if match := _BLOCK.match(key):
        block, rest = match.groups()
        return f"backbone.encoder.blocks.{block}.block." + sam2_trunk_key_to_transformers(rest)
    if key.startswith("encoder."):
        return "backbone.encoder." + sam2_trunk_key_to_transformers(key[len("encoder.") :])
    if _DECODER.match(key):
        return key
    raise KeyError(key)


def convert_sam2_unet_state_dict(state_dict: dict[str, torch.Tensor], source: str = "checkpoint", infer: bool = True):
    """Upstream state dict -> (our state dict, inferred Hiera preset or None)."""
    if "encoder.blocks.0.prompt_learn.0.weight" not in state_dict or "head.weight" not in state_dict:
        if "fusion4.conv.weight" in state_dict:
            raise ValueError(f"{source}: a DSU-Net (DGSUNet) checkpoint, not a SAM2-UNet one: convert it with "
                             f"`dsunet-hf convert dsunet`")
        raise ValueError(
            f"{source}: not a SAM2-UNet checkpoint (no 'encoder.blocks.0.prompt_learn.0.weight' / 'head.weight'; "
            f"first keys: {sorted(state_dict)[:5]})"
        )
    converted, unknown = {}, []
    for key, tensor in state_dict.items():
        try:
            new_key = map_sam2_unet_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if new_key is not None:
            converted[new_key] = tensor
    if unknown:
        raise ValueError(f"{source}: keys with no mapping: {unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    fold_two_class_heads(converted)  # two classes are our single-map binary model
    if not infer:
        return converted, None
    trunk = {
        k.replace("backbone.encoder.", "", 1).replace(".block.", ".", 1): v
        for k, v in converted.items()
        if k.startswith("backbone.encoder.") and ".adapter." not in k
    }
    return converted, infer_hiera_preset(trunk, str(source))


def convert_sam2_unet_checkpoint(
    source: str | Path,
    output_dir: str | Path,
    backbone_repo_id: str | None = None,
    backbone_revision: str | None = None,
    include_backbone: bool = False,
    config=None,
    id2label: dict[int, str] | str | Path | None = None,
):
    """Convert ``SAM2UNet-*.pth`` into a dsunet-hf artifact folder (config, safetensors, processor, card).

    ``config`` (a ``Sam2UNetConfig``) is inferred from the checkpoint's trunk when not given. Returns the
    converted model (fp32, eval mode). Loading is strict: a missing or unexpected tensor raises
    ``ValueError`` naming it. ``id2label`` (a dict or an ``id2label.json`` file) names the head's classes: ids 0..C-1 (2 for a binary head).
    """
    from ..backbones.hiera import hiera_hub_repo
    from ..models.sam2_unet import Sam2UNetConfig, Sam2UNetForImageSegmentation

    converted, preset = convert_sam2_unet_state_dict(read_torch_checkpoint(source), str(source), infer=config is None)
    if config is not None and id2label is not None:
        raise ValueError("give id2label in the config when passing one")
    if config is None:
        config = Sam2UNetConfig(
            backbone_preset=preset,
            backbone_repo_id=backbone_repo_id or hiera_hub_repo(preset, "2.0"),
            backbone_revision=backbone_revision,
            **head_classes(converted["head.weight"].shape[0], id2label, source),
        )
    return save_converted_model(Sam2UNetForImageSegmentation(config), converted, source, output_dir, include_backbone,
                                holds_backbones=True)
