"""BiRefNet: Swin / PVT-v2 encoder (run at full and half resolution), multi-scale context, squeeze block,
and a decoder with the bilateral reference.

- Inward reference (InRef): at every decoder stage the full-resolution normalised image, cut into a grid
  of patches the size of that stage's feature map, is stacked on channels (channel c·(gh·gw) + i·gw + j
  for grid cell (i, j): the current upstream order) and fed in through a small conv block.
- Outward reference (OutRef): at 1/32, 1/16 and 1/8 a 16-channel branch predicts the image gradient and
  gates the stage's features with a sigmoid attention (also at inference); in training its target is the
  Laplacian of the grey normalised input masked by that stage's auxiliary prediction.

Module and parameter names follow the official code (``squeeze_module.*``, ``decoder.*``) so official
checkpoints load with the key map in ``convert/birefnet.py``; the backbone lives under ``bb.``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...finetune import add_lora
from ...hub import HUB_DOWNLOAD_KWARGS, hub_download_kwargs
from ...losses import birefnet_pixel_loss, outward_reference_loss
from ...modeling_utils import (
    SegmentationOutput,
    SegmentationPreTrainedModel,
    check_pixel_values,
    clean_loading_info,
    labels_like,
    pop_dtype,
    refuse_unknown_kwargs,
    run_backbone,
    wants_hidden_states,
)
from ...modules.aspp import ASPP, ASPPDeformable, norm_2d
from ...modules.deform_conv import DeformableConv2d
from .configuration_birefnet import BiRefNetConfig

INNER_CHANNELS = 64  # fixed inner width of the decoder blocks and the InRef blocks
GRADIENT_CHANNELS = 16  # width of the OutRef gradient branch


@dataclass
class BiRefNetOutput(SegmentationOutput):
    """
    logits: (B, 1, H, W) final logits at the input size (both modes).
    aux_logits: training only: the multi-scale supervision logits at 1/32, 1/16, 1/8 (coarsest first).
    gradient_logits: training only: OutRef gradient predictions at 1/32, 1/16, 1/8.
    gradient_targets: training only: their targets at the input size (Laplacian of the grey input masked
        by each stage's auxiliary map).
    loss: pixel losses on all four maps + the OutRef BCE, when labels are given (training: upstream's, its IoU
        term summed over the batch; eval mode: the final map's, a per-sample mean independent of the batch size).
    hidden_states: with ``output_hidden_states=True``: the four encoder maps the decoder takes (``encode``'s: after
        the multi-scale input, context and squeeze), strides 4 to 32.
    """

    gradient_logits: tuple[torch.Tensor, ...] | None = None
    gradient_targets: tuple[torch.Tensor, ...] | None = None


# --- blocks ---------------------------------------------------------------------------------------------

def _attention(kind: str, channels: int, use_bn: bool) -> nn.Module | None:
    if kind == "ASPP":
        return ASPP(channels, use_bn=use_bn)
    if kind == "ASPPDeformable":
        return ASPPDeformable(channels, use_bn=use_bn)
    return None


class BasicDecBlk(nn.Module):
    """conv3x3 -> norm -> ReLU -> attention (ASPP / deformable ASPP) -> conv3x3 -> norm."""

    def __init__(self, in_channels: int, out_channels: int, config: BiRefNetConfig):
        super().__init__()
        inner = in_channels // 4 if config.decoder_channels_inter == "adap" else INNER_CHANNELS
        self.conv_in = nn.Conv2d(in_channels, inner, 3, padding=1)
        self.bn_in = norm_2d(inner, config.use_bn)
        self.relu_in = nn.ReLU(inplace=True)
        attention = _attention(config.decoder_attention, inner, config.use_bn)
        if attention is not None:
            self.dec_att = attention
        self.conv_out = nn.Conv2d(inner, out_channels, 3, padding=1)
        self.bn_out = norm_2d(out_channels, config.use_bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu_in(self.bn_in(self.conv_in(x)))
        if hasattr(self, "dec_att"):
            x = self.dec_att(x)
        return self.bn_out(self.conv_out(x))


class ResBlk(BasicDecBlk):
    """BasicDecBlk plus a 1x1 residual projection."""

    def __init__(self, in_channels: int, out_channels: int, config: BiRefNetConfig):
        super().__init__(in_channels, out_channels, config)
        self.conv_resi = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.conv_resi(x)


class SimpleConvs(nn.Module):
    """The InRef block: conv3x3 -> conv3x3, no norm or activation (as upstream)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, INNER_CHANNELS, 3, padding=1)
        self.conv_out = nn.Conv2d(INNER_CHANNELS, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv1(x))


class BasicLatBlk(nn.Module):
    """Lateral 1x1 conv from an encoder stage to the decoder width."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _block(kind: str, in_channels: int, out_channels: int, config: BiRefNetConfig) -> nn.Module:
    if kind == "ResBlk":
        return ResBlk(in_channels, out_channels, config)
    if kind == "BasicDecBlk":
        return BasicDecBlk(in_channels, out_channels, config)
    if kind == "ASPP":
        return ASPP(in_channels, out_channels, use_bn=config.use_bn)
    return ASPPDeformable(in_channels, out_channels, use_bn=config.use_bn)


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize with align_corners=True, BiRefNet's convention everywhere."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x  # an exact copy under align_corners=True: skip the work
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def image_to_patch_channels(image: torch.Tensor, size) -> torch.Tensor:
    """Cut ``image`` (B, C, H, W) into a grid of patches of ``size`` (h, w) and stack them on channels:
    (B, C·gh·gw, h, w), channel c·gh·gw + i·gw + j for grid cell (i, j) (einops ``b c (hg h) (wg w) ->
    b (c hg wg) h w``, upstream's order since its commit 5198d3f)."""
    batch, channels, height, width = image.shape
    h, w = size
    if height % h or width % w:
        raise ValueError(f"image size {(height, width)} is not a whole number of {h}x{w} patches")
    grid_h, grid_w = height // h, width // w
    patches = image.reshape(batch, channels, grid_h, h, grid_w, w).permute(0, 1, 2, 4, 3, 5)
    return patches.reshape(batch, channels * grid_h * grid_w, h, w)


def grey_laplacian(image: torch.Tensor) -> torch.Tensor:
    """OutRef gradient target: 5x5 Laplacian (ones, centre -24, normalised by its absolute sum 48) of the
    channel-mean of the normalised image, reflect-padded (kornia ``filters.laplacian(·, 5)``)."""
    grey = image.mean(dim=1, keepdim=True)
    kernel = torch.ones(5, 5, dtype=grey.dtype, device=grey.device)
    kernel[2, 2] = -24
    kernel = (kernel / 48).view(1, 1, 5, 5)
    return F.conv2d(F.pad(grey, (2, 2, 2, 2), mode="reflect"), kernel)


# --- decoder --------------------------------------------------------------------------------------------

class BiRefNetDecoder(nn.Module):
    """Reconstruction module: four decoder stages with laterals, InRef and OutRef."""

    def __init__(self, channels: list[int], config: BiRefNetConfig):
        super().__init__()
        self.config = config
        out_channels = channels[1:] + [channels[-1] // 2]
        if config.inward_reference:
            # Patches of the full image at strides 32, 16, 8, 4 and 1: 3·stride² channels (or the image).
            strides = (32, 16, 8, 4, 1)
            ipt_in = [3 * s * s for s in strides] if config.inward_reference_split else [3] * 5
            ipt_out = [c // 8 for c in channels]
            self.ipt_blk5 = SimpleConvs(ipt_in[0], ipt_out[0])
            self.ipt_blk4 = SimpleConvs(ipt_in[1], ipt_out[0])
            self.ipt_blk3 = SimpleConvs(ipt_in[2], ipt_out[1])
            self.ipt_blk2 = SimpleConvs(ipt_in[3], ipt_out[2])
            self.ipt_blk1 = SimpleConvs(ipt_in[4], ipt_out[3])
            in_channels = [channels[i] + ipt_out[max(0, i - 1)] for i in range(4)]
            head_in = out_channels[3] + ipt_out[3]
        else:
            in_channels, head_in = list(channels), out_channels[3]
        for stage, (cin, cout) in zip((4, 3, 2, 1), zip(in_channels, out_channels)):
            setattr(self, f"decoder_block{stage}", _block(config.decoder_block, cin, cout, config))
        self.conv_out1 = nn.Sequential(nn.Conv2d(head_in, 1, 1))
        self.lateral_block4 = BasicLatBlk(channels[1], out_channels[0])
        self.lateral_block3 = BasicLatBlk(channels[2], out_channels[1])
        self.lateral_block2 = BasicLatBlk(channels[3], out_channels[2])
        if config.multi_scale_supervision:
            for stage, cout in zip((4, 3, 2), out_channels):
                setattr(self, f"conv_ms_spvn_{stage}", nn.Conv2d(cout, 1, 1))
        if config.outward_reference:
            for stage, cout in zip((4, 3, 2), out_channels):
                setattr(self, f"gdt_convs_{stage}", nn.Sequential(
                    nn.Conv2d(cout, GRADIENT_CHANNELS, 3, padding=1), norm_2d(GRADIENT_CHANNELS, config.use_bn),
                    nn.ReLU(inplace=True),
                ))
                setattr(self, f"gdt_convs_pred_{stage}", nn.Sequential(nn.Conv2d(GRADIENT_CHANNELS, 1, 1)))
                setattr(self, f"gdt_convs_attn_{stage}", nn.Sequential(nn.Conv2d(GRADIENT_CHANNELS, 1, 1)))

    def _with_reference(self, features: torch.Tensor, image: torch.Tensor, block_name: str) -> torch.Tensor:
        if not self.config.inward_reference:
            return features
        size = features.shape[-2:]
        if self.config.inward_reference_split:
            reference = image_to_patch_channels(image, size)
        else:
            reference = resize(image, size)
        return torch.cat((features, getattr(self, block_name)(reference)), dim=1)

    def forward(self, image, x1, x2, x3, x4, gradient_target=None):
        """Returns (final logits, aux logits, gradient logits, gradient targets); the last three are empty
        tuples outside training."""
        training = self.training
        aux, gradient_logits, gradient_targets = [], [], []
        laterals = {3: (self.lateral_block4, x3), 2: (self.lateral_block3, x2), 1: (self.lateral_block2, x1)}
        features = self._with_reference(x4, image, "ipt_blk5")
        for stage in (4, 3, 2):
            p = getattr(self, f"decoder_block{stage}")(features)
            side = getattr(self, f"conv_ms_spvn_{stage}")(p) if training and self.config.multi_scale_supervision else None
            if side is not None:
                aux.append(side)
            if self.config.outward_reference:
                gradient_features = getattr(self, f"gdt_convs_{stage}")(p)
                if training:
                    gradient_logits.append(getattr(self, f"gdt_convs_pred_{stage}")(gradient_features))
                    gradient_targets.append(gradient_target * resize(side, gradient_target.shape[-2:]))
                p = p * getattr(self, f"gdt_convs_attn_{stage}")(gradient_features).sigmoid()
            lateral, skip = laterals[stage - 1]
            features = resize(p, skip.shape[-2:]) + lateral(skip)
            features = self._with_reference(features, image, f"ipt_blk{stage}")
        p1 = resize(self.decoder_block1(features), image.shape[-2:])
        p1 = self._with_reference(p1, image, "ipt_blk1")
        return self.conv_out1(p1), tuple(aux), tuple(gradient_logits), tuple(gradient_targets)


# --- model ----------------------------------------------------------------------------------------------

def build_backbone(config: BiRefNetConfig) -> nn.Module:
    if config.backbone.startswith("swin"):
        from ...backbones.swin import SwinBackbone, swin_config

        return SwinBackbone(swin_config(config.backbone, config.backbone_config or None))
    from ...backbones.pvt_v2 import PvtV2Backbone, pvt_v2_config

    return PvtV2Backbone(pvt_v2_config(config.backbone, config.backbone_config or None))


def decoder_lora_targets(module: nn.Module) -> list[str]:
    """Plain convs of a decoder/squeeze module that LoRA may wrap: not the deformable convs (zero-initialised
    offsets are sensitive; the sampling conv is left as in upstream-style adapters) and not dilated convs
    (peft's conv LoRA has no dilation)."""
    deformable = {name for name, m in module.named_modules() if isinstance(m, DeformableConv2d)}
    return [
        name for name, m in module.named_modules()
        if isinstance(m, nn.Conv2d) and m.dilation == (1, 1) and m.groups == 1
        and not any(name.startswith(prefix + ".") for prefix in deformable)
    ]


class BiRefNetForImageSegmentation(SegmentationPreTrainedModel):
    config_class = BiRefNetConfig
    config: BiRefNetConfig
    base_model_prefix = "birefnet"
    frozen_backbone_prefixes = ("bb.",)
    _no_split_modules = ["SwinStage", "PvtV2EncoderLayer"]

    def __init__(self, config: BiRefNetConfig):
        super().__init__(config)
        if config.outward_reference and not config.multi_scale_supervision:
            raise ValueError("outward_reference needs multi_scale_supervision (its targets use the auxiliary maps)")
        self.bb = build_backbone(config)
        stage_channels = list(self.bb.channels)[::-1]  # deepest first, as upstream
        channels = [c * 2 for c in stage_channels] if config.multi_scale_input == "cat" else stage_channels
        shallower = channels[1:][::-1]
        context = shallower[len(shallower) - config.context_count:] if config.context_count else []
        if config.squeeze_block:
            blocks = [_block(config.squeeze_block, channels[0] + sum(context), channels[0], config)]
            # Upstream builds every repeat with the widened input (only x1 runs); repeats here take C0.
            blocks += [_block(config.squeeze_block, channels[0], channels[0], config)
                       for _ in range(config.squeeze_block_count - 1)]
            self.squeeze_module = nn.Sequential(*blocks)
        elif context:
            raise ValueError("context_count > 0 needs a squeeze_block to bring the widened map back to C0")
        self.decoder = BiRefNetDecoder(channels, config)
        # What is not trained comes from the base checkpoint: keep transformers from calling it "missing".
        self._keys_to_ignore_on_load_missing = {
            "full": [], "frozen": [r"^bb\."], "lora": [r"^(?!.*lora_)"],
        }[config.finetune_strategy]
        self.post_init()
        if config.finetune_strategy == "lora":
            # After post_init, so transformers' init cannot overwrite peft's (B = 0) LoRA init.
            add_lora(self.bb.model, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
            if config.lora_decoder:
                for module in (self.decoder, getattr(self, "squeeze_module", None)):
                    if module is not None:
                        add_lora(module, config.lora_rank, config.lora_alpha, config.lora_dropout,
                                 decoder_lora_targets(module))
        self.apply_finetune_strategy()
        self._epoch_progress: tuple[int, int] | None = None

    # --- what trains --------------------------------------------------------------------------------------
    def is_trainable_key(self, name: str) -> bool:
        strategy = self.config.finetune_strategy
        if strategy == "full":
            return True
        if strategy == "frozen":
            return not name.startswith("bb.")
        return "lora_" in name

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.config.finetune_strategy == "lora":
            # LoRA leaves the decoder's BatchNorm frozen: its running statistics must not drift either.
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        """Called by the training loop at each epoch: drives the last-epochs loss-weight schedule."""
        self._epoch_progress = (epoch, num_epochs)

    def current_loss_weights(self) -> dict[str, float]:
        # Validation (eval mode) scores with the task's fixed weights: the decayed ones would make the last epochs'
        # loss look better by construction (and --metric-for-best-model loss pick them).
        if self._epoch_progress is None or not self.training:
            return dict(self.config.loss_weights)
        return self.config.loss_weights_at_epoch(*self._epoch_progress)

    # --- forward ------------------------------------------------------------------------------------------
    def encode(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """Localization module: backbone at full (and half) resolution, context concat, squeeze."""
        x1, x2, x3, x4 = run_backbone(self.bb, pixel_values)
        if self.config.multi_scale_input:
            height, width = pixel_values.shape[-2:]
            half = F.interpolate(pixel_values, size=(height // 2, width // 2), mode="bilinear", align_corners=True)
            half_features = run_backbone(self.bb, half)
            merged = []
            for full, coarse in zip((x1, x2, x3, x4), half_features):
                coarse = resize(coarse, full.shape[-2:])
                merged.append(torch.cat((full, coarse), dim=1) if self.config.multi_scale_input == "cat"
                              else full + coarse)
            x1, x2, x3, x4 = merged
        if self.config.context_count:
            context = [resize(x, x4.shape[-2:]) for x in (x1, x2, x3)][3 - self.config.context_count:]
            x4 = torch.cat((*context, x4), dim=1)
        if self.config.squeeze_block:
            x4 = self.squeeze_module(x4)
        return [x1, x2, x3, x4]

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict: bool | None = None,
        output_hidden_states: bool | None = None, output_attentions: bool | None = None, **kwargs
    ) -> BiRefNetOutput | tuple:
        refuse_unknown_kwargs(self, kwargs)
        with_hidden = wants_hidden_states(self, output_hidden_states, output_attentions)
        check_pixel_values(pixel_values, 32)
        # The model's dtype, as the Hiera and DINOv2 models take it (a bfloat16 model given the processor's float32
        # pixels failed inside Swin's patch embedding): the decoder reads the image too.
        pixel_values = pixel_values.to(self.decoder.conv_out1[0].weight.dtype)
        # PVT-v2 needs a minimum size (its spatial-reduction convs), which the half-size pass must meet too. Only
        # checked where 32 (the multiple) is not enough, and not while exporting: a shape guard there would narrow
        # a dynamic-size export's height and width.
        minimum = getattr(self.bb, "min_input_size", 1) * (2 if self.config.multi_scale_input else 1)
        height, width = pixel_values.shape[-2:]
        if minimum > 32 and not torch.compiler.is_exporting() and (height < minimum or width < minimum):
            raise ValueError(
                f"pixel_values: BiRefNet with {self.config.backbone} and multi_scale_input="
                f"{self.config.multi_scale_input!r} needs at least {minimum} px per side, got "
                f"{tuple(pixel_values.shape[-2:])}"
            )
        x1, x2, x3, x4 = self.encode(pixel_values)
        gradient_target = None
        if self.training and self.config.outward_reference:
            gradient_target = grey_laplacian(pixel_values)
        logits, aux, gradient_logits, gradient_targets = self.decoder(
            pixel_values, x1, x2, x3, x4, gradient_target
        )
        loss = None
        if labels is not None:
            target = labels_like(labels, logits, clamp=True)
            # Training: upstream's loss (its IoU term summed over the batch). Eval mode (validation): the IoU term
            # averaged, so that the loss is a per-sample mean whatever the batch size.
            loss = birefnet_pixel_loss([*aux, logits], target, self.current_loss_weights(),
                                       iou_reduction="sum" if self.training else "mean")
            if gradient_logits:
                loss = loss + self.config.outward_reference_loss_weight * outward_reference_loss(
                    gradient_logits, gradient_targets
                )
        output = BiRefNetOutput(
            loss=loss, logits=logits, aux_logits=aux or None, hidden_states=(x1, x2, x3, x4) if with_hidden else None,
            gradient_logits=gradient_logits or None, gradient_targets=gradient_targets or None,
        )
        return self.output_as_asked(output, return_dict)

    # --- loading ------------------------------------------------------------------------------------------
    @classmethod
    def from_official(cls, source, variant: str | None = None, revision: str | None = None, *, cache_dir=None,
                      token=None, local_files_only: bool = False, force_download: bool = False, **config_overrides):
        """Load official BiRefNet weights (Hub id such as ``"ZhengPeng7/BiRefNet"``, a local folder, or a
        ``model.safetensors`` / ``.pth`` file). The variant comes from the name or ``variant=``; backbone and
        BatchNorm are read from the tensors. ``finetune_strategy`` defaults to ``full`` (no LoRA layers: the
        plain network); pass ``finetune_strategy="lora"`` to start fine-tuning from these weights. ``cache_dir``,
        ``token``, ``local_files_only`` and ``force_download`` apply to a Hub repo's files."""
        download_kwargs = {"cache_dir": cache_dir, "token": token, "local_files_only": local_files_only,
                           "force_download": force_download}
        from ...convert.birefnet import (
            birefnet_config_for_weights,
            convert_birefnet_state_dict,
            locate_birefnet_weights,
            read_checkpoint,
        )

        path, commit = locate_birefnet_weights(source, revision, **download_kwargs)
        raw = read_checkpoint(path)
        config_overrides.setdefault("finetune_strategy", "full")
        config = birefnet_config_for_weights(source, raw, variant, **config_overrides)
        config.base_revision = commit
        model = cls(config)
        model.load_base_state_dict(convert_birefnet_state_dict(raw, config, source=str(path)), source=str(path),
                                   include_trainable=True)
        model.record_frozen_weights()
        return model.eval()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """A dsunet-hf BiRefNet artifact, or (detected by its config) an official BiRefNet repo, folder or
        weights file, which goes through ``from_official``: there ``revision``, ``variant`` (the BiRefNet
        variant), ``cache_dir``, ``token``, ``local_files_only``, ``force_download``, config fields, ``dtype`` /
        ``torch_dtype``, ``merge_lora`` and ``output_loading_info`` apply; any other argument is refused
        (``TypeError``)."""
        from ...convert.birefnet import is_official_birefnet_source

        download = hub_download_kwargs(kwargs)
        if not is_official_birefnet_source(pretrained_model_name_or_path, kwargs.get("revision"), **download):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        for key in HUB_DOWNLOAD_KWARGS:
            kwargs.pop(key, None)
        want_info = kwargs.pop("output_loading_info", False)
        merge = kwargs.pop("merge_lora", False)
        dtype = pop_dtype(kwargs)
        revision, variant = kwargs.pop("revision", None), kwargs.pop("variant", None)
        kwargs.pop("trust_remote_code", None)  # (the official snippet passes it; no remote code runs here)
        kwargs.pop("verify_backbone_weights", None)  # whole official weights: no separate backbone to check
        overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in cls.config_class().to_dict()}
        # Underscored arguments are transformers' own bookkeeping (_from_auto, _from_pipeline, ...).
        refused = sorted(k for k in kwargs if not k.startswith("_"))
        if model_args or refused:
            raise TypeError(
                f"{pretrained_model_name_or_path} holds official BiRefNet weights, loaded by from_official, which "
                f"does not take {refused or list(model_args)}; it takes revision, variant, cache_dir, token, "
                "local_files_only, force_download, config fields, dtype, merge_lora and output_loading_info (convert "
                "the weights with `dsunet-hf convert birefnet` for the rest)"
            )
        model = cls.from_official(pretrained_model_name_or_path, variant=variant, revision=revision, **download,
                                  **overrides)
        if merge:
            model.merge_lora()  # in float32, before the cast (as predict does)
        if dtype is not None:
            model.to(dtype)
        return (model, clean_loading_info()) if want_info else model

    # --- base weights -------------------------------------------------------------------------------------
    def load_frozen_backbones(self, **download_kwargs) -> None:
        """Load every tensor that does not train from the official checkpoint in ``config.base_repo_id``."""
        from ...convert.birefnet import load_birefnet_weights

        state_dict, commit = load_birefnet_weights(self.config.base_repo_id, self.config.base_revision, self.config,
                                                   **download_kwargs)
        self.load_base_state_dict(state_dict, source=self.config.base_repo_id)
        if commit is not None:
            self.config.base_revision = commit
        self.record_frozen_weights()

    @torch.no_grad()
    def load_base_state_dict(
        self, state_dict: dict[str, torch.Tensor], source: str = "state dict", include_trainable: bool = False
    ) -> None:
        """Load a plain (un-LoRA'd) BiRefNet state dict in this package's names. By default only the frozen part
        (trained tensors come from the artifact); ``include_trainable`` loads every non-LoRA tensor. Every
        tensor wanted must be present with its shape; nothing is copied otherwise."""
        from ...backbones.loading import load_state_dict_strictly

        own_names = {
            key.replace(".base_layer", ""): key for key in self.state_dict()
            if "lora_" not in key and (include_trainable or not self.is_trainable_key(key))
        }
        missing = sorted(set(own_names) - set(state_dict))
        if missing:
            raise ValueError(f"{source}: not a BiRefNet checkpoint for this config; missing {missing[:8]}")
        unknown = sorted(k for k in state_dict if k.replace(".base_layer", "") not in own_names
                         and k not in self.state_dict())
        if unknown:
            raise ValueError(f"{source}: tensors this BiRefNet config does not have: {unknown[:8]}")
        wanted = {k: v for k, v in state_dict.items() if k in own_names}
        own_subset = {k: own_names[k] for k in wanted}
        load_state_dict_strictly(self, wanted, source, own_subset, what="a BiRefNet checkpoint for this config",
                                 expected_by="this BiRefNet config", size_hint="(wrong backbone or variant?)")

    def default_image_processor(self):
        from ...image_processing import SegmentationImageProcessor

        height, width = self.config.image_size
        # Upstream inference.py's order: sigmoid, then the probabilities resized to the image (align_corners=True).
        return SegmentationImageProcessor(size={"height": height, "width": width}, post_processing="birefnet")

    def model_card(self, metrics=None, dataset_names=None, repo_id=None, **extra):
        config = self.config
        card_data = self.card_metadata(
            license="mit", base_models=[config.base_repo_id], dataset_names=dataset_names,
            tags=["image-segmentation", "birefnet", "background-removal", "dichotomous-image-segmentation",
                  "dsunet-hf", f"finetune-{config.finetune_strategy}"],
        )
        return self.render_card("birefnet.md", card_data, metrics=metrics, dataset_names=dataset_names,
                                repo_id=repo_id, **extra)


__all__ = ["BiRefNetForImageSegmentation", "BiRefNetOutput", "image_to_patch_channels", "grey_laplacian"]
