"""The official DINOv2 segmentation heads (``dinov2_<arch>_<dataset>_<linear|ms>_head.pth``) -> an artifact.

The files are mmcv checkpoints: ``{"state_dict": {"decode_head.bn.*": [C], "decode_head.conv_seg.*": [K, C, 1, 1]}}``
with C = D (linear) or 4·D (ms) and K = 21 (VOC 2012) or 150 (ADE20K); no backbone weights. Our module names
are the same (``decode_head.bn``, ``decode_head.conv_seg``), so the key map is the identity; architecture,
head type and classes are read off the shapes and the file name.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..backbones.dinov2 import DINOV2_PRESETS, dinov2_hub_repo
from . import class_names, save_converted_model
from .sam2 import read_torch_checkpoint

_ARCH_TO_PRESET = {"vits14": "small", "vitb14": "base", "vitl14": "large", "vitg14": "giant"}
HEAD_KEYS = {f"decode_head.{k}" for k in ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                                          "bn.num_batches_tracked", "conv_seg.weight", "conv_seg.bias")}


def _preset_of_channels(source, channels: int) -> str:
    """The backbone size of a renamed head file, from its channel count (D linear, 4·D multi-layer): unique but for
    1536, a ViT-S/14 multi-layer head or a ViT-g/14 linear one."""
    fits = [preset for preset, fields in DINOV2_PRESETS.items()
            if channels in (fields["hidden_size"], 4 * fields["hidden_size"])]
    if len(fits) == 1:
        return fits[0]
    reason = f"{channels} channels fit {' and '.join(fits)}" if fits else f"{channels} channels fit no DINOv2 size"
    raise ValueError(f"{source}: cannot tell the backbone size ({reason}): name the file as Meta does "
                     f"(dinov2_vits14_..., vitb14, vitl14, vitg14), or pass preset= in Python")


def convert_dinov2_head_checkpoint(source: str | Path, output_dir: str | Path, preset: str | None = None,
                                   id2label: dict[int, str] | str | Path | None = None,
                                   reduce_zero_label: bool | None = None, backbone_repo_id: str | None = None,
                                   backbone_revision: str | None = None):
    """Convert an official head file; ``preset`` defaults to the ``vit?14`` in its name (else to the one size whose
    channels fit), ``id2label`` (a dict or an ``id2label.json`` file, ids 0..K-1) to the VOC names for 21 classes and
    the ADE20K names for 150 (other counts are named ``class_<i>``), and ``reduce_zero_label`` (recorded as the
    processor's ``do_reduce_labels``) to True for the 150-class ADE20K heads (labels 1..150, 0 = other). The backbone repo defaults to Meta's of the size."""
    from ..models.dinov2_seg import Dinov2ForSemanticSegmentation, Dinov2SegConfig
    from ..models.dinov2_seg.configuration_dinov2_seg import ADE20K_LABELS, VOC_LABELS

    state_dict = read_torch_checkpoint(source)
    if set(state_dict) != HEAD_KEYS:
        raise ValueError(f"{source}: not a DINOv2 BNHead checkpoint; expected keys {sorted(HEAD_KEYS)}, "
                         f"got {sorted(state_dict)[:8]}")
    num_labels, channels = state_dict["decode_head.conv_seg.weight"].shape[:2]
    if preset is None:
        match = re.search(r"(vit[sblg]14)", Path(source).name)
        preset = _ARCH_TO_PRESET[match.group(1)] if match else _preset_of_channels(source, channels)
    hidden = DINOV2_PRESETS[preset]["hidden_size"]
    if channels not in (hidden, 4 * hidden):
        raise ValueError(f"{source}: {channels} head channels fit neither a linear ({hidden}) nor a multi-layer "
                         f"({4 * hidden}) head on DINOv2-{preset}")
    if id2label is None:
        known = {21: VOC_LABELS, 150: ADE20K_LABELS}
        id2label = dict(enumerate(known[num_labels])) if num_labels in known else {i: f"class_{i}" for i in range(num_labels)}
    else:  # checked here, naming the names and the file (the config's own check names neither)
        id2label = class_names(num_labels, id2label, source)
    config = Dinov2SegConfig(backbone_preset=preset, backbone_repo_id=backbone_repo_id or dinov2_hub_repo(preset),
                             backbone_revision=backbone_revision,
                             head_type="linear" if channels == hidden else "multilayer", id2label=id2label,
                             # mmseg's VOC linear configs resize to (2048, 512): the long side capped too
                             max_long_side=2048 if channels == hidden and num_labels == 21 else None)
    model = Dinov2ForSemanticSegmentation(config)
    full = {**{k: v for k, v in model.state_dict().items() if not k.startswith("decode_head.")}, **state_dict}
    processor = model.default_image_processor()
    # ADE20K's annotations use 0 for "other" and 1..150 for the classes (mmseg's reduce_zero_label, with which
    # the ADE20K heads were trained); VOC's are class indices as they are.
    processor.do_reduce_labels = reduce_zero_label if reduce_zero_label is not None else num_labels == 150
    return save_converted_model(model, full, source, output_dir, processor=processor)
