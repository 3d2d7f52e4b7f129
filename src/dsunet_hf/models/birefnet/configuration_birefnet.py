"""Configuration of BiRefNet (Zheng et al., 2024): bilateral reference for high-resolution dichotomous
image segmentation.

Upstream keeps the architecture in a hard-coded global ``Config`` (and decides whether BatchNorm exists
from the *training batch size*); here every architecture choice is a typed field, ``use_bn`` is explicit,
and the official Hub variants are presets (``BiRefNetConfig.from_variant("BiRefNet_lite")``).
"""

from __future__ import annotations

import math
import numbers

from transformers import PreTrainedConfig

from ...finetune import set_finetune_fields
from ...labels import FOREGROUND_LABELS, require_binary, set_default_labels
from ..checked_config import CheckedOverrides, is_loss_weight

BACKBONES = ("swin_v1_t", "swin_v1_s", "swin_v1_b", "swin_v1_l", "pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2", "pvt_v2_b5")
MULTI_SCALE_INPUTS = ("", "add", "cat")
SQUEEZE_BLOCKS = ("", "BasicDecBlk", "ResBlk", "ASPP", "ASPPDeformable")
DECODER_BLOCKS = ("BasicDecBlk", "ResBlk")
DECODER_ATTENTIONS = ("", "ASPP", "ASPPDeformable")
LOSS_NAMES = ("bce", "iou", "ssim", "mae", "mse")

# Pixel-loss weights per task (upstream config.py `lambdas_pix_last`; zero weights omitted).
TASK_LOSS_WEIGHTS = {
    "DIS5K": {"bce": 30.0, "iou": 0.5, "ssim": 10.0},
    "COD": {"bce": 30.0, "iou": 0.5, "ssim": 10.0},
    "HRSOD": {"bce": 30.0, "iou": 0.5, "ssim": 10.0},
    "General": {"bce": 30.0, "iou": 0.5, "ssim": 10.0, "mae": 100.0},
    "General-2K": {"bce": 30.0, "iou": 0.5, "ssim": 10.0, "mae": 100.0},
    "Matting": {"bce": 30.0, "ssim": 10.0, "mae": 100.0},
}
# "Fine-tune last epochs": from this many epochs before the end, the weights are multiplied by these
# factors once per epoch, compounding (regional-loss fine-tuning from the paper).
TASK_FINETUNE_LAST_EPOCHS = {"DIS5K": 40, "COD": 20, "HRSOD": 20, "General": 20, "General-2K": 20, "Matting": 10}
# Upstream train.sh's epochs per task (from ImageNet backbones).
TASK_EPOCHS = {"DIS5K": 500, "COD": 150, "HRSOD": 150, "General": 200, "General-2K": 250, "Matting": 150}
LAST_EPOCHS_DECAY = {"bce": 0.0, "iou": 0.5, "ssim": 1.0, "mae": 0.9, "mse": 1.0}
MATTING_LAST_EPOCHS_DECAY = {"bce": 1.0, "iou": 1.0, "ssim": 0.9, "mae": 1.0, "mse": 0.9}

# Official Hub variants: (architecture/task fields, Hub repo of the released weights).
VARIANTS = {
    "BiRefNet": ({"backbone": "swin_v1_l", "task": "General"}, "ZhengPeng7/BiRefNet"),
    "BiRefNet_lite": ({"backbone": "swin_v1_t", "task": "General"}, "ZhengPeng7/BiRefNet_lite"),
    "BiRefNet_lite-2K": ({"backbone": "swin_v1_t", "task": "General-2K", "image_size": [1440, 2560]},
                         "ZhengPeng7/BiRefNet_lite-2K"),
    "BiRefNet-matting": ({"backbone": "swin_v1_l", "task": "Matting"}, "ZhengPeng7/BiRefNet-matting"),
    "BiRefNet-portrait": ({"backbone": "swin_v1_l", "task": "Matting"}, "ZhengPeng7/BiRefNet-portrait"),
    "BiRefNet_lite-matting": ({"backbone": "swin_v1_t", "task": "Matting"}, "ZhengPeng7/BiRefNet_lite-matting"),
    "BiRefNet_HR": ({"backbone": "swin_v1_l", "task": "General", "image_size": [2048, 2048]},
                    "ZhengPeng7/BiRefNet_HR"),
    "BiRefNet_HR-matting": ({"backbone": "swin_v1_l", "task": "Matting", "image_size": [2048, 2048]},
                            "ZhengPeng7/BiRefNet_HR-matting"),
    "BiRefNet_dynamic": ({"backbone": "swin_v1_l", "task": "General", "dynamic_size": [[256, 2304], [256, 2304]]},
                         "ZhengPeng7/BiRefNet_dynamic"),
    "BiRefNet_dynamic-matting": ({"backbone": "swin_v1_l", "task": "Matting",
                                  "dynamic_size": [[256, 2304], [256, 2304]]}, "ZhengPeng7/BiRefNet_dynamic-matting"),
    "BiRefNet_512x512": ({"backbone": "swin_v1_l", "task": "General", "image_size": [512, 512]},
                         "ZhengPeng7/BiRefNet_512x512"),
    "BiRefNet-DIS5K": ({"backbone": "swin_v1_l", "task": "DIS5K"}, "ZhengPeng7/BiRefNet-DIS5K"),
    "BiRefNet-COD": ({"backbone": "swin_v1_l", "task": "COD"}, "ZhengPeng7/BiRefNet-COD"),
    "BiRefNet-HRSOD": ({"backbone": "swin_v1_l", "task": "HRSOD"}, "ZhengPeng7/BiRefNet-HRSOD"),
    # The "massive" DIS model (GitHub release BiRefNet-massive-TR_DIS5K_TR_TEs): upstream's DIS5K task trained on
    # DIS-TR + DIS-TE1..4.
    "BiRefNet-DIS5K-TR_TEs": ({"backbone": "swin_v1_l", "task": "DIS5K"}, "ZhengPeng7/BiRefNet-DIS5K-TR_TEs"),
    # The previous general-use release.
    "BiRefNet-legacy": ({"backbone": "swin_v1_l", "task": "General"}, "ZhengPeng7/BiRefNet-legacy"),
}

# LoRA targets in the backbone: every linear of transformers' Swin except the key projection. With
# query+value split, rank r costs exactly what upstream's fused qkv costs (4·r·C per block), so the
# published budget holds (r=8 on Swin-L: 2,374,656 parameters).
SWIN_LORA_TARGETS = ["q_proj", "v_proj", "o_proj", "mlp.fc1", "mlp.fc2", "downsample.reduction"]
PVT_LORA_TARGETS = ["query", "key", "value", "attention.proj", "mlp.dense1", "mlp.dense2"]


def _size_pair(value, name: str) -> list[int]:
    pair = [value, value] if not isinstance(value, (list, tuple)) else list(value)
    # int() truncated 1000.5 to 1000 and a float 1024.0 failed with a bare "'float' object is not iterable"
    if len(pair) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in pair) \
            or min(pair) <= 0 or pair[0] % 32 or pair[1] % 32:
        raise ValueError(f"{name} must be a positive multiple of 32 (or [height, width] of them), got {value!r}")
    return [int(v) for v in pair]


def _check_pvt_sizes(backbone: str, backbone_config: dict, multi_scale_input: str, image_size, dynamic_size) -> None:
    """PVT-v2 has a minimum input size, which the half-size pass of multi_scale_input must meet too: refused here
    rather than at the first (or, for dynamic sizes, a random later) training step."""
    from ...backbones.pvt_v2 import pvt_v2_config, pvt_v2_min_input_size

    minimum = pvt_v2_min_input_size(pvt_v2_config(backbone, backbone_config or None)) * (2 if multi_scale_input else 1)
    smallest = min(image_size + ([low for low, _ in dynamic_size] if dynamic_size else []))
    if smallest < minimum:
        raise ValueError(f"{backbone} with multi_scale_input={multi_scale_input!r} needs image_size and dynamic_size "
                         f"of at least {minimum} px per side, got {smallest}")


class BiRefNetConfig(CheckedOverrides, PreTrainedConfig):
    """BiRefNet configuration. Defaults are the general-use ``ZhengPeng7/BiRefNet`` model (Swin-L, 1024²).

    Args:
        backbone (`str`, defaults to `"swin_v1_l"`): swin_v1_t|s|b|l or pvt_v2_b0|b1|b2|b5.
        backbone_config (`dict`, *optional*): fields overriding the backbone preset (tiny test configs).
        multi_scale_input (`str`, defaults to `"cat"`): `""`, `"add"` or `"cat"`: also run the backbone on
            the half-size image and add/concatenate its upsampled features (doubles the channels for cat).
        context_count (`int`, defaults to 3): how many shallower stages (x3, x2, x1) are resized onto the
            deepest map and concatenated before the squeeze block (upstream `cxt_num`).
        squeeze_block (`str`, defaults to `"BasicDecBlk"`): block squeezing the context back to the deepest
            width: `""`, BasicDecBlk, ResBlk, ASPP or ASPPDeformable.
        squeeze_block_count (`int`, defaults to 1): how many squeeze blocks are stacked.
        decoder_block (`str`, defaults to `"BasicDecBlk"`): BasicDecBlk (conv-norm-relu-attention-conv-norm)
            or ResBlk (the same plus a 1x1 residual).
        decoder_attention (`str`, defaults to `"ASPPDeformable"`): attention inside decoder and squeeze
            blocks: `""`, ASPP or ASPPDeformable.
        decoder_channels_inter (`str`, defaults to `"fixed"`): inner width of the blocks: fixed (64) or adap
            (input/4).
        inward_reference (`bool`, defaults to True): feed image patches into every decoder stage (InRef).
        inward_reference_split (`bool`, defaults to True): stack full-resolution patches on channels
            (lossless, space-to-depth-like); False feeds the resized image instead.
        multi_scale_supervision (`bool`, defaults to True): auxiliary 1x1 heads at 1/32, 1/16, 1/8 (training).
        outward_reference (`bool`, defaults to True): gradient branch and attention gating (OutRef).
        use_bn (`bool`, defaults to True): BatchNorm in the decoder; False = Identity (upstream's batch-size-1
            architecture, whose checkpoints have no BN tensors).
        image_size (`list[int]`, defaults to `[1024, 1024]`): [height, width] for training and inference.
        dynamic_size (`list`, *optional*): [[min_h, max_h], [min_w, max_w]]: training draws a random size per
            batch (multiples of 32), as BiRefNet_dynamic.
        task (`str`, defaults to `"General"`): DIS5K, COD, HRSOD, General, General-2K or Matting: picks the
            loss weights, the last-epochs schedule and the learning rate of the upstream recipe.
        loss_weights (`dict`, *optional*): pixel-loss weights (bce, iou, ssim, mae, mse); default per task.
        outward_reference_loss_weight (`float`, defaults to 1.0): weight of the gradient (OutRef) BCE.
        finetune_last_epochs (`int`, *optional*): epochs at the end with the decaying loss weights (default per
            task; 0 turns the schedule off).
        base_repo_id (`str`, defaults to `"ZhengPeng7/BiRefNet"`): Hub repo (or local folder / file) of the
            official weights the frozen part is loaded from.
        base_revision (`str`, *optional*): its revision; set to the exact commit once loaded from the Hub.
        finetune_strategy (`str`, defaults to `"lora"`): lora (LoRA on backbone linears and decoder convs),
            frozen (decoder and squeeze train, backbone frozen: upstream's `freeze_bb`) or full.
        lora_rank / lora_alpha / lora_dropout: LoRA settings.
        lora_target_modules (`list[str]`): backbone module-name suffixes that get LoRA.
        lora_decoder (`bool`, defaults to True): also LoRA on the decoder/squeeze convs (never on the
            deformable offset, modulator and sampling convs).
    """

    model_type = "birefnet"

    def __init__(
        self,
        backbone: str = "swin_v1_l",
        backbone_config: dict | None = None,
        multi_scale_input: str = "cat",
        context_count: int = 3,
        squeeze_block: str = "BasicDecBlk",
        squeeze_block_count: int = 1,
        decoder_block: str = "BasicDecBlk",
        decoder_attention: str = "ASPPDeformable",
        decoder_channels_inter: str = "fixed",
        inward_reference: bool = True,
        inward_reference_split: bool = True,
        multi_scale_supervision: bool = True,
        outward_reference: bool = True,
        use_bn: bool = True,
        image_size: int | list[int] = 1024,
        dynamic_size: list | None = None,
        task: str = "General",
        loss_weights: dict | None = None,
        outward_reference_loss_weight: float = 1.0,
        finetune_last_epochs: int | None = None,
        base_repo_id: str = "ZhengPeng7/BiRefNet",
        base_revision: str | None = None,
        finetune_strategy: str = "lora",
        lora_rank: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_target_modules: list[str] | None = None,
        lora_decoder: bool = True,
        **kwargs,
    ):
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {BACKBONES}")
        for name, value, choices in (
            ("multi_scale_input", multi_scale_input, MULTI_SCALE_INPUTS),
            ("squeeze_block", squeeze_block, SQUEEZE_BLOCKS),
            ("decoder_block", decoder_block, DECODER_BLOCKS),
            ("decoder_attention", decoder_attention, DECODER_ATTENTIONS),
            ("decoder_channels_inter", decoder_channels_inter, ("fixed", "adap")),
            ("task", task, tuple(TASK_LOSS_WEIGHTS)),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if not isinstance(context_count, int) or not 0 <= context_count <= 3:
            raise ValueError(f"context_count must be 0..3 (stages x1..x3), got {context_count!r}")
        if not isinstance(squeeze_block_count, int) or squeeze_block_count < 1:  # 0 built one block all the same
            raise ValueError(f"squeeze_block_count must be 1 or more (squeeze_block='' for none), got "
                             f"{squeeze_block_count!r}")
        if finetune_strategy == "adapter":
            raise ValueError("BiRefNet has no bottleneck adapters: use finetune_strategy lora, frozen or full")
        for name, value in (("inward_reference", inward_reference), ("inward_reference_split", inward_reference_split),
                            ("multi_scale_supervision", multi_scale_supervision),
                            ("outward_reference", outward_reference), ("use_bn", use_bn),
                            ("lora_decoder", lora_decoder)):
            if not isinstance(value, bool):  # the string "false" (a YAML/JSON typo) would count as True
                raise ValueError(f"{name} must be true or false (a boolean), got {value!r}")
        self.backbone = backbone
        self.backbone_config = dict(backbone_config or {})
        self.multi_scale_input = multi_scale_input
        self.context_count = context_count
        self.squeeze_block = squeeze_block
        self.squeeze_block_count = squeeze_block_count
        self.decoder_block = decoder_block
        self.decoder_attention = decoder_attention
        self.decoder_channels_inter = decoder_channels_inter
        self.inward_reference = inward_reference
        self.inward_reference_split = inward_reference_split
        self.multi_scale_supervision = multi_scale_supervision
        self.outward_reference = outward_reference
        self.use_bn = use_bn
        self.image_size = _size_pair(image_size, "image_size")
        if dynamic_size is not None:
            bad = ValueError(f"dynamic_size must be [[min_h, max_h], [min_w, max_w]] >= 32, got {dynamic_size!r}")
            try:
                pairs = [(a, b) for a, b in dynamic_size]
            except (TypeError, ValueError):  # e.g. [256, 512]: a bare "cannot unpack non-iterable int"
                raise bad from None
            # whole numbers only: int() truncated 256.5 to 256
            if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for pair in pairs for v in pair):
                raise bad
            dynamic_size = [[int(a), int(b)] for a, b in pairs]
            if len(dynamic_size) != 2 or any(not 32 <= a <= b for a, b in dynamic_size):
                raise bad
        self.dynamic_size = dynamic_size
        if backbone.startswith("pvt"):
            _check_pvt_sizes(backbone, self.backbone_config, multi_scale_input, self.image_size, dynamic_size)
        self.task = task
        weights = dict(TASK_LOSS_WEIGHTS[task] if loss_weights is None else loss_weights)
        unknown = sorted(set(weights) - set(LOSS_NAMES))
        if unknown:
            raise ValueError(f"unknown loss names {unknown} in loss_weights; known: {LOSS_NAMES}")
        # A string weight failed in the loss; a negative one trained away from the labels, all zeros trained nothing.
        if not all(is_loss_weight(w) for w in weights.values()) or not any(weights.values()):
            raise ValueError(f"loss_weights needs finite, non-negative numbers, not all 0, got {weights!r}")
        self.loss_weights = {name: float(weights.get(name, 0.0)) for name in LOSS_NAMES}
        if not is_loss_weight(outward_reference_loss_weight):
            raise ValueError(f"outward_reference_loss_weight must be a finite, non-negative number, got "
                             f"{outward_reference_loss_weight!r}")
        self.outward_reference_loss_weight = float(outward_reference_loss_weight)
        if finetune_last_epochs is not None and (isinstance(finetune_last_epochs, bool)
                                                 or not isinstance(finetune_last_epochs, numbers.Integral)):
            raise ValueError(f"finetune_last_epochs must be an integer (0: off), got {finetune_last_epochs!r}")
        self.finetune_last_epochs = (
            TASK_FINETUNE_LAST_EPOCHS[task] if finetune_last_epochs is None else abs(int(finetune_last_epochs))
        )
        self.base_repo_id = base_repo_id
        self.base_revision = base_revision
        default_targets = PVT_LORA_TARGETS if backbone.startswith("pvt") else SWIN_LORA_TARGETS
        set_finetune_fields(self, finetune_strategy, lora_rank, lora_alpha, lora_dropout,
                            (default_targets if lora_target_modules is None else lora_target_modules))
        self.lora_decoder = lora_decoder
        set_default_labels(kwargs, FOREGROUND_LABELS)
        super().__init__(**kwargs)
        require_binary(self, "BiRefNet")

    @classmethod
    def from_variant(cls, variant: str, **overrides) -> BiRefNetConfig:
        """The configuration of an official release, e.g. ``"BiRefNet"``, ``"BiRefNet_lite"``."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown BiRefNet variant {variant!r}; choose one of {sorted(VARIANTS)}")
        fields, repo_id = VARIANTS[variant]
        return cls(**{**fields, "base_repo_id": repo_id, **overrides})

    def recipe_learning_rate(self, batch_size: int) -> float:
        """Upstream's AdamW learning rate: 1e-4·sqrt(bs/4) for DIS5K, 1e-5·sqrt(bs/4) otherwise (training
        from ImageNet backbones; the author suggests 1/2-1/10 of it when fine-tuning released weights)."""
        return (1e-4 if self.task == "DIS5K" else 1e-5) * math.sqrt(batch_size / 4)

    def recipe_num_epochs(self) -> int:
        """Upstream's epochs for this task (``train.sh``): DIS5K 500, COD/HRSOD/Matting 150, General 200,
        General-2K 250; the last-epochs loss schedule is measured against them."""
        return TASK_EPOCHS[self.task]

    def loss_weights_at_epoch(self, epoch: int, num_epochs: int) -> dict[str, float]:
        """Pixel-loss weights for 0-based ``epoch`` of ``num_epochs``: the task weights, decayed once per epoch
        (compounding) during the last ``finetune_last_epochs`` epochs, as upstream's training loop does."""
        # Upstream multiplies the weights once in each epoch past num_epochs - finetune_last_epochs; a run shorter
        # than that window decays from its first epoch, once per epoch run (not for epochs before the start).
        decayed_epochs = epoch + 1 - max(0, num_epochs - self.finetune_last_epochs)
        if not self.finetune_last_epochs or decayed_epochs <= 0:
            return dict(self.loss_weights)
        decay = MATTING_LAST_EPOCHS_DECAY if self.task == "Matting" else LAST_EPOCHS_DECAY
        return {name: weight * decay[name] ** decayed_epochs for name, weight in self.loss_weights.items()}


__all__ = ["BiRefNetConfig", "VARIANTS"]
