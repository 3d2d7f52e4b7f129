"""Shared base class: a transformers ``PreTrainedModel`` whose frozen backbones live in their own Hub repos.

``save_pretrained`` writes only what trains (adapters, LoRA, decoder + its BatchNorm statistics) and a
model card; ``from_pretrained`` loads that, then the frozen backbone weights from the repos recorded in
the config (never inside ``__init__``: transformers 5 builds models on the meta device there).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, ModelCardData
from torch import nn
from transformers import PreTrainedModel
from transformers.initialization import copy_, kaiming_uniform_, ones_, uniform_, zeros_
from transformers.utils import ModelOutput

from .files import expand_home, give_new_file_modes
from .finetune import add_lora, is_trainable_key, lora_layers, merge_lora, parameter_counts, trainable_summary
from .hub import (
    PLACEHOLDER_REPO_ID,
    add_evaluation_to_card,
    check_evaluation_for_card,
    check_push_target,
    create_hub_repo,
    damaged_cache_file_advice,
    error_chain,
    hub_download_kwargs,
    looks_like_hub_id,
    no_local_folder_note,
    offline_fix,
    remove_stale_weights,
    render_model_card,
    saved_file_patterns,
    saved_weight_files,
    upload_folder_to_hub,
    weight_file_names,
)
from .image_processing import processor_for_model


@dataclass
class SegmentationOutput(ModelOutput):
    """
    loss: the deep-supervision loss over all outputs (weights ``config.loss_weights``), when labels are given.
    logits: (B, 1, H, W) final logits at the input size.
    aux_logits: the deep-supervision side outputs, coarsest first, each (B, 1, H, W).
    hidden_states: with ``output_hidden_states=True`` (default ``config.output_hidden_states``): the four encoder
        feature maps the decoder consumes, finest first, each (B, C_i, H/s_i, W/s_i) (strides 4, 8, 16, 32).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    aux_logits: tuple[torch.Tensor, ...] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


def check_image_batch(pixel_values: torch.Tensor, name: str = "pixel_values") -> None:
    """A (batch, 3, height, width) float tensor: what every model takes (any size)."""
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        raise ValueError(
            f"{name} must be (batch, 3, height, width) RGB, got shape {tuple(pixel_values.shape)}; "
            "use the model's image processor to convert gray/RGBA/palette images"
        )
    if not pixel_values.is_floating_point():  # a read_image-style uint8 tensor ran as 0..255 values: wrong logits
        raise ValueError(f"{name} is {pixel_values.dtype}: models take normalised float tensors; use the model's "
                         f"image processor")


def check_pixel_values(pixel_values: torch.Tensor, multiple: int, name: str = "pixel_values") -> None:
    """:func:`check_image_batch`, with a height and width in positive multiples of ``multiple``."""
    check_image_batch(pixel_values, name)
    if pixel_values.shape[2] % multiple or pixel_values.shape[3] % multiple or 0 in pixel_values.shape[2:]:
        raise ValueError(
            f"{name}: height and width must be positive multiples of {multiple}, got {tuple(pixel_values.shape[2:])}"
        )


# What forward takes and ignores: the image processor's record of the input sizes (``model(**processor(images))``)
# and what transformers' Trainer adds.
IGNORED_FORWARD_KWARGS = frozenset({"original_sizes", "num_items_in_batch"})


def refuse_unknown_kwargs(model, kwargs: dict) -> None:
    """forward's ``**kwargs`` take the keywords above; another one (``output_aux=True``) is a TypeError, as Python
    gives for a function without ``**kwargs``: it was silently ignored."""
    unknown = [name for name in kwargs if name not in IGNORED_FORWARD_KWARGS]
    if unknown:
        import difflib
        import inspect

        names = [name for name in inspect.signature(model.forward).parameters if name != "kwargs"]
        close = difflib.get_close_matches(unknown[0], names, n=1, cutoff=0.6)
        raise TypeError(f"{type(model).__name__}.forward() got an unexpected keyword argument {unknown[0]!r}"
                        + (f"; did you mean {close[0]!r}?" if close else f" (it takes {', '.join(names)})"))


def wants_hidden_states(model, output_hidden_states: bool | None, output_attentions: bool | None) -> bool:
    """transformers' forward options: ``output_hidden_states`` (default: the config's, as transformers' models);
    ``output_attentions`` refused, not silently ignored (the backbones' attention weights are not collected: their
    attention may run fused, as scaled_dot_product_attention, which computes none)."""
    if model.config.output_attentions if output_attentions is None else output_attentions:
        raise ValueError(f"{type(model).__name__}: output_attentions=True is not supported: the model returns no "
                         f"attention weights (output_hidden_states=True returns the encoder feature maps)")
    return bool(model.config.output_hidden_states if output_hidden_states is None else output_hidden_states)


def model_output(model, **inputs):
    """``model(**inputs)`` as a ModelOutput, also for a model whose config says ``return_dict=False`` (transformers'
    option, saved in its config.json); other callables (an onnxruntime graph, a stand-in) are called as they are."""
    if getattr(getattr(model, "config", None), "return_dict", True) is False:
        inputs["return_dict"] = True
    return model(**inputs)


def labels_like(labels: torch.Tensor, logits: torch.Tensor, clamp: bool = False) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W) masks in [0, 1], checked against the logits' size; ``clamp``: values above 1 taken
    as 1 (BiRefNet's loss does so), instead of integer masks above 1 being refused."""
    if labels.ndim == 3:
        labels = labels.unsqueeze(1)
    if labels.shape != logits.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must match the input size {tuple(logits.shape)}")
    # Integer masks are checked (0/255 files read as they are would give a loss 8x too large); float ones are taken
    # as given: a check there would sync the device and break torch.compile's graph on every step.
    if clamp:
        return labels.to(logits.dtype).clamp(0, 1)
    if not labels.dtype.is_floating_point and labels.dtype != torch.bool and int(labels.max()) > 1:
        raise ValueError(f"labels hold values up to {int(labels.max())}: binary models take 0/1 masks (divide 0/255 "
                         f"masks by 255, or let the image processor read them)")
    return labels.to(logits.dtype)


def probabilities_from_one_pass(logits_of, pixel_values: torch.Tensor, model_size: tuple[int, int],
                                output_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Class probabilities (B, K, H, W) at ``output_size`` (default: the input's size) from one pass at
    ``model_size``: the input resized to it (bilinear), ``logits_of(resized)`` softmaxed, the probabilities resized."""
    size = tuple(output_size or pixel_values.shape[-2:])
    model_size = tuple(model_size)
    if tuple(pixel_values.shape[-2:]) != model_size:  # the input's own size decides, not the output's
        pixel_values = F.interpolate(pixel_values, size=model_size, mode="bilinear", align_corners=False)
    probabilities = logits_of(pixel_values).float().softmax(dim=1)
    if tuple(probabilities.shape[-2:]) != size:
        probabilities = F.interpolate(probabilities, size=size, mode="bilinear", align_corners=False)
    return probabilities


def run_backbone(module: nn.Module, *args, method: str = "forward", **kwargs):
    """Call a backbone, without an autograd graph when none of its parameters trains (frozen strategy,
    DSU-Net's DINOv2): its outputs are constants to the loss, so keeping activations for backward would
    only cost memory and time. Exact: the same values and the same gradients for everything that trains."""
    call = module if method == "forward" else getattr(module, method)  # __call__ keeps the module's hooks
    if torch.is_grad_enabled() and not any(p.requires_grad for p in module.parameters()):
        with torch.no_grad():
            return call(*args, **kwargs)
    return call(*args, **kwargs)


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute the backbone activations in backward (transformers' checkpointing of its layers).

    transformers 5.25 renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable`` (the old
    name warns and goes in v6); the older versions we support only have the old name."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def pop_dtype(kwargs: dict) -> torch.dtype | None:
    """``from_pretrained``'s ``dtype`` (or its older name ``torch_dtype``), popped from ``kwargs``, as a torch dtype;
    None when absent or ``"auto"`` (the weights' float32), for loaders that build the model themselves."""
    dtype, legacy = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
    dtype = legacy if dtype is None else dtype
    if isinstance(dtype, str) and dtype != "auto" and not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"dtype must be 'auto' or a torch dtype name such as 'float16' or 'bfloat16', got {dtype!r}")
    if isinstance(dtype, str):
        dtype = None if dtype == "auto" else getattr(torch, dtype)
    return dtype


def clean_loading_info() -> dict[str, list]:
    """``output_loading_info``'s answer from a loader that checks every tensor strictly (so nothing to report)."""
    return {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}


# How many standard deviations of a cast's rounding the fingerprint numbers may move (see _fingerprint_numbers).
_FINGERPRINT_DEVIATIONS = 8


def _fingerprint_numbers(parts: list[torch.Tensor]) -> tuple[dict[str, float], dict[str, float]]:
    """(numbers, tolerances) of one backbone's sampled values, one float32 tensor per frozen weight.

    Numbers: ``tensors`` (their count); ``sum``, the sum of each tensor's values divided by its RMS, and
    ``log_rms``, the sum of the log RMS (all-zero tensors left out of both). Scaled tensor by tensor, so that each
    counts alike: raw sums would be ruled by the large norm weights, blind to the matrices. Another checkpoint of
    the same shapes moves ``sum`` by about sqrt(values) x the relative difference and ``log_rms`` by any rescaling.

    Tolerances: a cast to bfloat16/float16 moves each value v by a rounding error, unbiased, independent from value
    to value, with a standard deviation below 2^-8 |v| (+ 2^-24 for float16's subnormals); each number then moves
    by that through its derivative by each value, summed in quadrature: 8 such deviations are allowed."""
    if not parts:
        return {"tensors": 0, "sum": 0.0, "log_rms": 0.0}, {"tensors": 0, "sum": 0.0, "log_rms": 0.0}
    values = torch.nn.utils.rnn.pad_sequence([p.double() for p in parts], batch_first=True)  # (tensors, samples)
    counts = torch.tensor([len(p) for p in parts], dtype=torch.float64)
    squares = values.square().sum(1)
    live = squares > 0
    squares = torch.where(live, squares, 1.0)
    rms = (squares / counts).sqrt()
    scaled_sums = values.sum(1) / rms
    # d(sum_t S_t / rms_t) / dv_i = 1 / rms - (S_t / rms) v_i / Q_t ; d(sum_t log rms_t) / dv_i = v_i / Q_t
    d_sum = (1 / rms)[:, None] - (scaled_sums / squares)[:, None] * values
    d_log = values / squares[:, None]
    rounding = 2**-8 * values.abs() + 2**-24
    rounding = torch.where(torch.arange(values.shape[1]) < counts[:, None], rounding, 0.0)  # not the padding
    numbers = {"tensors": len(parts), "sum": scaled_sums[live].sum().item(), "log_rms": rms.log()[live].sum().item()}
    tolerances = {"tensors": 0}
    for key, derivative in (("sum", d_sum), ("log_rms", d_log)):
        spread = (derivative * rounding)[live].square().sum().sqrt().item()
        tolerances[key] = _FINGERPRINT_DEVIATIONS * spread
    return numbers, tolerances


class CheckpointMismatchError(ValueError):
    """A checkpoint whose tensors do not belong to this architecture/configuration."""


class SegmentationPreTrainedModel(PreTrainedModel):
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # Prefixes of the frozen backbones: not saved (unless trainable under the strategy), loaded from the Hub.
    frozen_backbone_prefixes: tuple[str, ...] = ("backbone.",)
    # Frozen backbone tensors are absent from trainable-only files by design: no "newly initialised"
    # report for them (adapter and LoRA tensors under the same prefix must still be present).
    _keys_to_ignore_on_load_missing = [r"^backbone\.(?!.*(\.adapter\.|lora_))"]

    # Parameters the forward pass never uses (e.g. DINOv2's masked-modelling token): never trained, so
    # even `full` fine-tuning leaves no unused parameter for DDP to trip over.
    unused_parameters: tuple[str, ...] = ()

    # Multi-class models (``segment(pixel_values, schedule)`` -> class probabilities) take the semantic path of
    # training, evaluation and prediction: label maps, mIoU, palette PNGs. Single-channel models do not.
    predicts_class_maps = False

    # forward's **kwargs made transformers' Trainer pass num_items_in_batch (ignored here) and then skip dividing
    # the loss by gradient_accumulation_steps: N-times too large gradients with N accumulation steps.
    accepts_loss_kwargs = False

    def output_as_asked(self, output: ModelOutput, return_dict: bool | None):
        """``output``, or its tuple where ``return_dict`` (else the config's, as transformers' models:
        ``from_pretrained(repo, return_dict=False)``) says so."""
        return output if (self.config.return_dict if return_dict is None else return_dict) else output.to_tuple()

    def __init__(self, config, *args, **kwargs):
        # Another model's config (the classes share field names) failed later with an AttributeError on a field.
        if self.config_class is not None and not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got "
                            f"{type(config).__name__}: build its own model class from that config")
        super().__init__(config, *args, **kwargs)

    # --- what trains, what is saved ----------------------------------------------------------------
    def is_trainable_key(self, name: str) -> bool:
        if name in self.unused_parameters:
            return False
        return is_trainable_key(name, self.config.finetune_strategy, self.frozen_backbone_prefixes)

    def apply_finetune_strategy(self) -> None:
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(self.is_trainable_key(name))

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Exactly what ``save_pretrained`` writes by default."""
        return {k: v for k, v in self.state_dict().items() if self.is_trainable_key(k)}

    def num_parameters_summary(self) -> dict[str, int]:
        trainable, total = parameter_counts(self)
        return {"trainable": trainable, "total": total}

    def finish_init(self, lora_module: nn.Module) -> None:
        """The end of a model's ``__init__``: transformers' weight init, then (strategy ``lora``) peft LoRA on
        ``lora_module`` — after the init, so it cannot overwrite LoRA's B = 0 start — then what trains."""
        self.post_init()
        config = self.config
        if config.finetune_strategy == "lora":
            add_lora(lora_module, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
        self.apply_finetune_strategy()

    def post_init(self):
        # Deformable convs start as plain convs: zero offsets, modulator 2*sigmoid(0) = 1. Marked before the
        # weight init runs, because transformers initialises each tensor once, children before parents.
        for module in self.modules():
            if hasattr(module, "reset_offset_parameters"):
                module.offset_conv.zero_init = module.modulator_conv.zero_init = True
        super().post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's own default initialisation for conv/linear layers, as the upstream decoders use; convs
        # marked ``zero_init`` (deformable offsets, see post_init) start at zero.
        if isinstance(module, nn.Conv2d) and getattr(module, "zero_init", False):
            zeros_(module.weight)
            zeros_(module.bias)
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            kaiming_uniform_(module.weight, a=5**0.5)
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = 1 / fan_in**0.5
                uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            if module.weight is not None:
                ones_(module.weight)
                zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                zeros_(module.running_mean)
                ones_(module.running_var)
                zeros_(module.num_batches_tracked)
        for name in ("pos_embed", "pos_embed_window"):  # Hiera's learned position embeddings
            if isinstance(getattr(module, name, None), nn.Parameter):
                zeros_(getattr(module, name))
        # Swin's relative position index is a non-persistent buffer: rebuilt here like transformers' own
        # Swin init does (models are built on the meta device inside from_pretrained).
        if hasattr(module, "_create_relative_position_index") and hasattr(module, "relative_position_index"):
            index = module.relative_position_index
            copy_(index, module._create_relative_position_index().reshape(index.shape))

    # --- inference ----------------------------------------------------------------------------------
    def merge_lora(self) -> int:
        """For inference: fold the LoRA updates into the frozen weights they adapt (strategy ``lora``), so each
        adapted layer runs one matmul instead of three: the same outputs to float rounding, BiRefNet_lite 1.28x
        faster on a CPU. ``dsunet-hf predict``/``evaluate``/``export`` do this by themselves. Returns the number
        of layers merged (0 without LoRA). Saving still writes the unmerged LoRA tensors (they do not change);
        training a merged model would not train them, so merge a copy you will not train further."""
        return merge_lora(self)

    @property
    def lora_is_merged(self) -> bool:
        return any(layer.merged for layer in lora_layers(self))

    def train(self, mode: bool = True):
        if mode and self.lora_is_merged:
            raise RuntimeError(f"{type(self).__name__}: LoRA is merged into the frozen weights (merge_lora, for "
                               "inference); training would not update it. Load the model again to train it.")
        return super().train(mode)

    # --- frozen backbones ---------------------------------------------------------------------------
    def load_frozen_backbones(self, **download_kwargs) -> None:
        """Load every frozen backbone's weights from the repo/revision recorded in the config (then
        :meth:`record_frozen_weights`). ``download_kwargs``: ``cache_dir``, ``token``, ``local_files_only``,
        ``force_download``, as ``from_pretrained`` takes them."""
        raise NotImplementedError

    def load_frozen_backbones_named(self, **download_kwargs) -> None:
        """:meth:`load_frozen_backbones`, where a backbone that cannot be had is named by its config field."""
        from .hub import BackboneNotAvailableError

        try:
            self.load_frozen_backbones(**download_kwargs)
        except BackboneNotAvailableError as error:
            renamed = error.naming_field(self.config)
            if renamed is error:
                raise
            # Not chained for display: the traceback would show first the advice naming the wrong field.
            raise renamed from None

    @classmethod
    def from_pretrained_backbones(cls, config=None, *, cache_dir=None, token=None, local_files_only: bool = False,
                                  force_download: bool = False, **config_kwargs):
        """A new model (random decoder/adapters) whose frozen backbones hold their pretrained weights:
        the starting point for fine-tuning. ``cache_dir``, ``token``, ``local_files_only`` and ``force_download``
        apply to the backbones' Hub files, as in ``from_pretrained``; ``dtype`` (or ``torch_dtype``) casts the
        model, as there; other keywords are config fields (with a ``config`` given they were ignored silently)."""
        dtype = pop_dtype(config_kwargs)
        if config is not None and config_kwargs:
            raise TypeError(f"{cls.__name__}.from_pretrained_backbones: config fields {sorted(config_kwargs)} given "
                            f"with a config; set them on the config")
        config = config if config is not None else cls.config_class(**config_kwargs)
        config.__dict__.pop("backbone_fingerprint", None)  # a config read from an artifact: nothing trained to check
        model = cls(config)
        model.load_frozen_backbones_named(cache_dir=cache_dir, token=token, local_files_only=local_files_only,
                                          force_download=force_download)
        return model if dtype is None else model.to(dtype)

    # A trainable-only artifact does not hold the frozen weights: changed after loading (peft's merge_and_unload
    # into the backbone, a backbone trained by hand), they would be lost silently. A few values of every frozen
    # tensor, taken when the backbones are loaded, tell cheaply (32 values a tensor) whether that happened.
    # A low-rank update moves every value of a tensor; one of them past the tolerance is enough.
    _FROZEN_SAMPLES_PER_TENSOR = 32
    # Casts (model.half(), a bfloat16 round trip) move a value by at most half a bfloat16 step (2^-9 of it).
    _FROZEN_RTOL, _FROZEN_ATOL = 2**-7, 1e-6

    def _frozen_weight_samples(self) -> dict[str, tuple[int, torch.Tensor]]:
        """``{name: (numel, sampled values as float32)}`` of the parameters a trainable-only file leaves out
        (names without peft's ``.base_layer``, so that merged and unmerged LoRA layers compare)."""
        names, sizes, parts = [], [], []
        for name, parameter in self.named_parameters():
            if (self.is_trainable_key(name) or parameter.device.type == "meta" or parameter.numel() == 0
                    or not parameter.dtype.is_floating_point):
                continue
            flat = parameter.detach().reshape(-1)
            count = min(flat.numel(), self._FROZEN_SAMPLES_PER_TENSOR)
            # Exact integer positions (not a float linspace, whose rounding differs between devices and kernels): the
            # saved fingerprint must sample the same elements wherever the artifact is loaded.
            index = torch.arange(count, dtype=torch.int64) * (flat.numel() - 1) // max(count - 1, 1)
            index = index.to(flat.device)
            names.append(name.replace(".base_layer", ""))
            sizes.append(flat.numel())
            parts.append(flat[index].float().cpu())
        return {name: (size, values) for name, size, values in zip(names, sizes, parts)}

    def record_frozen_weights(self) -> None:
        """Remember the frozen weights as loaded (see :meth:`changed_frozen_weights`); the loaders call it. A config
        read from a trainable-only artifact holds the fingerprint of the backbone weights it was saved with
        (``backbone_fingerprint``): the weights just loaded must match it (see :meth:`check_backbone_fingerprint`)."""
        self.__dict__["_frozen_weight_fingerprint"] = self._frozen_weight_samples()
        # Popped: checked once, against the weights it describes; save_pretrained writes a new one.
        expected = self.config.__dict__.pop("backbone_fingerprint", None)
        if expected:
            self.check_backbone_fingerprint(expected)

    def changed_frozen_weights(self) -> list[str]:
        """The frozen parameters (those a trainable-only ``save_pretrained`` leaves out) whose sampled values differ
        from the ones loaded by more than a dtype cast (``model.half()``, bfloat16) moves them."""
        recorded = self.__dict__.get("_frozen_weight_fingerprint")
        if not recorded:
            return []
        now = self._frozen_weight_samples()
        changed = []
        for name, (size, values) in recorded.items():
            current = now.get(name)
            if current is None or current[0] != size:  # gone, or sharded (FSDP/DeepSpeed): nothing to compare
                continue
            if not torch.allclose(current[1], values, rtol=self._FROZEN_RTOL, atol=self._FROZEN_ATOL):
                changed.append(name)
        return changed

    # --- which backbone weights a trainable-only artifact was saved with -------------------------------------
    # Its adapters/LoRA/decoder only fit the frozen weights they were trained with, but those load from their own
    # repos, where another checkpoint can stand (SAM 2.0 vs 2.1, a revision "main" that moved, a local folder).
    # save_pretrained writes per backbone a few numbers of the values sampled above (as loaded), see
    # _fingerprint_numbers; from_pretrained compares them once the backbones are loaded.

    def _fingerprint_groups(self, samples: dict[str, tuple[int, torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
        """The sampled values of each frozen backbone (``frozen_backbone_prefixes``, dot dropped), tensor by tensor;
        ``unused_parameters`` left out (they change no output)."""
        groups: dict[str, list[torch.Tensor]] = {}
        for name, (_, values) in samples.items():
            prefix = next((p for p in self.frozen_backbone_prefixes if name.startswith(p)), None)
            if prefix is not None and name not in self.unused_parameters:
                groups.setdefault(prefix.rstrip("."), []).append(values)
        return groups

    def backbone_fingerprint(self) -> dict[str, dict] | None:
        """``{backbone: {"tensors", "sum", "log_rms"}}`` of the frozen weights as loaded (see
        :meth:`record_frozen_weights` and :func:`_fingerprint_numbers`), what a trainable-only ``save_pretrained``
        writes to ``config.json``; None when no loader recorded them (backbones left at their random init)."""
        recorded = self.__dict__.get("_frozen_weight_fingerprint")
        if not recorded:
            return None
        return {group: _fingerprint_numbers(parts)[0] for group, parts in self._fingerprint_groups(recorded).items()}

    def backbone_source(self, group: str) -> tuple[str, str]:
        """The config fields (repo id, revision) a frozen backbone (``group``: its prefix without the dot) loads from,
        named in :meth:`check_backbone_fingerprint`'s error."""
        stems = {"backbone_sam": "sam_backbone", "backbone_dino": "dino_backbone", "bb": "base"}
        for stem in (stems.get(group), "backbone", "dino_backbone", "base"):
            if stem and hasattr(self.config, f"{stem}_repo_id"):
                return f"{stem}_repo_id", f"{stem}_revision"
        return "backbone_repo_id", "backbone_revision"

    def check_backbone_fingerprint(self, expected: dict[str, dict]) -> None:
        """Refuse (:class:`CheckpointMismatchError`) frozen weights, as just loaded, that are not those ``expected``
        (a saved :meth:`backbone_fingerprint`) describes, to a cast's rounding (bfloat16/float16 loads pass)."""
        groups = self._fingerprint_groups(self.__dict__.get("_frozen_weight_fingerprint") or {})
        for group, saved in expected.items():
            numbers, tolerances = _fingerprint_numbers(groups.get(group, []))
            saved = {key: float(saved.get(key, "nan")) for key in numbers}  # a number missing differs
            differs = [key for key in numbers if not abs(numbers[key] - saved[key]) <= tolerances[key]]
            if not differs:
                continue
            what = ", ".join(f"{key} {numbers[key]:.6g} (saved: {saved[key]:.6g})" for key in differs)
            repo_field, revision_field = self.backbone_source(group)
            repo, revision = getattr(self.config, repo_field, None), getattr(self.config, revision_field, None)
            raise CheckpointMismatchError(
                f"{self.name_or_path or type(self).__name__}: the frozen {group} weights loaded from {repo}"
                f"{f' (revision {revision})' if revision else ''} are not those it was saved with ({what}); its "
                f"trained parts would give other outputs. Pass the {repo_field}/{revision_field} it was trained "
                f"with, or verify_backbone_weights=False to load it anyway"
            )

    def _adjust_missing_and_unexpected_keys(self, loading_info) -> None:
        # transformers drops the missing keys that `_keys_to_ignore_on_load_missing` matches (the frozen backbone
        # tensors, absent from trainable-only files by design). A self-contained artifact (include_backbone=True,
        # strategy full) holds them: one missing there would keep its random init, so it stays reported.
        included = getattr(self.config, "backbone_weights_included", False)
        before = set(loading_info.missing_keys) if included else set()
        super()._adjust_missing_and_unexpected_keys(loading_info)
        if included:
            loading_info.missing_keys = set(loading_info.missing_keys) | {
                key for key in before if key not in self.unused_parameters  # never saved under `full`
            }

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a saved artifact: its trainable tensors, then the frozen backbones from their own repos
        (skipped for a self-contained copy that already holds them).

        Config fields can be overridden as keyword arguments, e.g.
        ``from_pretrained(repo, backbone_repo_id="/local/sam2-hiera-large")``. ``merge_lora=True`` returns the model
        ready for inference with LoRA merged (see :meth:`merge_lora`); in a pipeline:
        ``pipeline("image-segmentation", model=repo, model_kwargs={"merge_lora": True})``.

        A trainable-only artifact records a fingerprint of the backbone weights it was saved with
        (``backbone_fingerprint`` in ``config.json``): backbone weights that do not match it (another checkpoint or
        revision in the repo, e.g. SAM 2.1's trunk for a model trained on SAM 2.0's) are refused
        (:class:`CheckpointMismatchError`); the same weights in ``dtype=bfloat16``/``float16`` pass.
        ``verify_backbone_weights=False`` loads them anyway (the fingerprint is then dropped: a save records the
        weights loaded). Artifacts saved before the fingerprint existed load unchecked.
        """
        pretrained_model_name_or_path = expand_home(pretrained_model_name_or_path)  # transformers: "not a repo id"
        want_info = kwargs.pop("output_loading_info", False)
        merge = kwargs.pop("merge_lora", False)
        verify = kwargs.pop("verify_backbone_weights", True)
        # The Hub arguments also reach the backbones' own repos (a custom cache_dir, a token, offline use).
        download = hub_download_kwargs(kwargs)
        # Report shape mismatches as our own error naming the keys, not transformers' generic one; a caller who asks
        # for ignore_mismatched_sizes=True (a trained head reused for other classes) gets transformers' behaviour:
        # those tensors start from a fresh init, with its warning.
        mismatch_allowed = bool(kwargs.get("ignore_mismatched_sizes", False))
        kwargs["ignore_mismatched_sizes"] = True
        from safetensors import SafetensorError

        # transformers logs a table of every missing/unexpected/mismatched key (hundreds of lines): held back, so that
        # a user sees the one error below naming them; logged where the load goes on (ignore_mismatched_sizes=True)
        # or transformers' own error refers to it.
        with _HeldLoadReport(cls.__name__) as report:
            try:
                model, info = super().from_pretrained(
                    pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
                )
            except SafetensorError as error:  # no OSError, and it names no file (an interrupted save or download)
                raise OSError(_unreadable_weights(pretrained_model_name_or_path, kwargs, error)) from error
            except OSError as error:
                if offline := _offline_not_cached(pretrained_model_name_or_path, kwargs, error):
                    raise OSError(offline) from error
                variants = (None if kwargs.get("variant")
                            else _saved_variants(pretrained_model_name_or_path, kwargs, error))
                if not variants:
                    raise
                raise OSError(f"{error} It holds the weights of variant {' and '.join(map(repr, variants))} only "
                              f"(save_pretrained(variant=...)): load with variant={variants[0]!r}") from error
        missing = sorted(info.get("missing_keys", []))
        unexpected = sorted(info.get("unexpected_keys", []))
        mismatched = [] if mismatch_allowed else sorted(
            str(m[0] if isinstance(m, (tuple, list)) else m) for m in info.get("mismatched_keys", [])
        )
        included = getattr(model.config, "backbone_weights_included", False)
        if missing or unexpected or mismatched:
            what = ("; its config.json says it holds the backbone weights too (self-contained: include_backbone=True "
                    "or strategy 'full'), so none may be missing" if included and missing else "")
            raise CheckpointMismatchError(
                f"{pretrained_model_name_or_path}: checkpoint does not fit {cls.__name__} with this config "
                f"(strategy {model.config.finetune_strategy!r}){what}; missing keys: {_preview(missing)}; "
                f"unexpected keys: {_preview(unexpected)}; shape mismatches: {_preview(mismatched)}"
            )
        report.release()
        if not verify:
            model.config.__dict__.pop("backbone_fingerprint", None)
        if included:
            model.record_frozen_weights()
        else:
            model.load_frozen_backbones_named(**download)  # checks the fingerprint (record_frozen_weights)
        model.remember_load_source(kwargs, download)
        # Loading materialises fresh parameters (requires_grad=True): restore what the strategy trains.
        model.apply_finetune_strategy()
        model.eval()
        if merge:
            model.merge_lora()
        return (model, info) if want_info else model

    # --- saving and publishing ----------------------------------------------------------------------
    def save_pretrained(self, save_directory, *args, include_backbone: bool = False, image_processor=None, **kwargs):
        """Write ``config.json``, ``model.safetensors`` (trainable tensors only unless
        ``include_backbone=True``: a self-contained copy for offline use), a model card ``README.md`` and the
        image processor ``preprocessor_config.json``: ``image_processor`` when given, else (only where the folder
        has none yet) the one this model was loaded with (see :meth:`source_image_processor`).

        A trainable-only artifact also records in ``config.json`` a fingerprint of the frozen backbone weights it
        needs (``backbone_fingerprint``: a few numbers per backbone, of the weights as loaded, see
        :meth:`backbone_fingerprint`), which ``from_pretrained`` checks; none when the backbones were never loaded.

        ``push_to_hub=True`` (with ``repo_id``, ``commit_message``, ``commit_description``, ``private``, ``token``,
        ``revision``, ``create_pr``) uploads the files this save wrote, card and processor included, once written
        (transformers' own upload would run before them and publish its generic card); the folder's other files are
        not uploaded. Weights of an earlier save in the other layout (one file / shards) are removed, here and on the
        Hub."""
        card_kwargs = dict(kwargs.pop("model_card_kwargs", None) or {})
        save_directory = expand_home(save_directory)  # transformers wrote "~/models/x" into ./~/models/x
        push = kwargs.pop("push_to_hub", False)
        push_kwargs = {key: kwargs.pop(key) for key in ("commit_message", "commit_description", "private", "token",
                                                         "revision", "create_pr") if key in kwargs}
        repo_id = kwargs.pop("repo_id", None) or os.path.basename(os.path.normpath(save_directory))
        # Recorded in config.json so that from_pretrained knows not to fetch the backbone repos.
        backbone_included = include_backbone or self.config.finetune_strategy == "full"
        # Refused before anything is written or created on the Hub.
        kwargs["state_dict"] = self._check_saveable(include_backbone, kwargs.get("state_dict"))
        if push:
            check_push_target(push_kwargs.get("revision"), push_kwargs.get("create_pr", False))
        if push and kwargs.get("is_main_process", True):
            # The Hub's full id (a name without a namespace gets the user's) for the card's snippets.
            repo_id = create_hub_repo(repo_id, private=push_kwargs.get("private"), token=push_kwargs.get("token"))
            card_kwargs.setdefault("repo_id", repo_id)
            card_kwargs.setdefault("revision", push_kwargs.get("revision"))  # a branch's card loads that branch
        self.config.backbone_weights_included = backbone_included
        # The backbone weights a trainable-only artifact must load with (checked by from_pretrained); only a loader
        # records them: a model whose backbones were never loaded (random init) saves none, as before.
        fingerprint = None if backbone_included else self.backbone_fingerprint()
        self.config.__dict__.pop("backbone_fingerprint", None)  # one read from a config, never checked: not ours
        if fingerprint:
            self.config.backbone_fingerprint = fingerprint
        try:
            super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            del self.config.backbone_weights_included
            self.config.__dict__.pop("backbone_fingerprint", None)
        if kwargs.get("is_main_process", True):
            remove_stale_weights(save_directory, kwargs.get("variant"))
            give_new_file_modes(save_directory)
            extra_tags = card_kwargs.pop("tags", None) or []
            extra_tags = [extra_tags] if isinstance(extra_tags, str) else list(extra_tags)
            card = self.model_card(**card_kwargs, backbone_included=backbone_included)
            # transformers' tags (add_model_tags, push_to_hub(tags=...)) join the card's own, as in its cards.
            card.data.tags = list(card.data.tags or [])
            for tag in [*(getattr(self, "model_tags", None) or []), *extra_tags]:
                if tag not in card.data.tags:
                    card.data.tags.append(tag)
            card.weights_variant = kwargs.get("variant")  # the card names the weight files this save wrote
            card.save(os.path.join(save_directory, "README.md"))
            # The card's usage (AutoImageProcessor, pipeline) reads the processor from the same folder; one that is
            # there already was saved on purpose and stays.
            if image_processor is None and not os.path.isfile(os.path.join(save_directory, "preprocessor_config.json")):
                image_processor = self.source_image_processor()
            if image_processor is not None:
                # One that records no post-processing order (saved before it was, or built by hand) is saved with
                # its model's, so that pipeline() and AutoImageProcessor users get the upstream's order too.
                processor_for_model(image_processor, self).save_pretrained(save_directory)
            if push:
                # Only what this save wrote: the folder may hold other files (a Trainer's checkpoints, notes).
                upload_folder_to_hub(save_directory, repo_id, **push_kwargs, repo_created=True,
                                     allow_patterns=saved_file_patterns(kwargs.get("variant")),
                                     variant=kwargs.get("variant"))

    def _check_saveable(self, include_backbone: bool = False, state_dict: dict | None = None) -> dict | None:
        """The state dict :meth:`save_pretrained` writes: ``state_dict`` when given, else the trainable part (None
        with ``include_backbone``: the whole model), once its refusals have passed. Refused (ValueError): a
        trainable-only save after frozen backbone weights changed since loading, and LoRA merged into weights
        that would be saved. :meth:`push_to_hub` calls it before the Hub repo is created."""
        # transformers' Trainer passes state_dict=None: the default, the trainable part.
        if state_dict is None and not include_backbone:
            full = self.config.finetune_strategy == "full"
            if not full and not self.lora_is_merged and (changed := self.changed_frozen_weights()):
                # Refused, not warned: the file would load with the backbone repos' weights and give other outputs
                # than this model, with nothing to tell (a warning scrolls away in a training log).
                raise ValueError(
                    f"{type(self).__name__}: frozen backbone weights changed since they were loaded "
                    f"({_preview(changed, 4)}; e.g. peft's merge_and_unload() or a backbone trained by hand), and "
                    f"save_pretrained writes only the trainable part (strategy {self.config.finetune_strategy!r}): "
                    f"the saved model would load with the original backbone weights. Save with include_backbone=True "
                    f"(self-contained), or train the backbone with finetune_strategy=\"lora\" (saved as LoRA "
                    f"tensors) or \"full\"; to save the trainable part anyway, pass "
                    f"state_dict=model.trainable_state_dict()."
                )
            state_dict = self.trainable_state_dict()
        if self.lora_is_merged:
            # Trainable-only files hold the LoRA tensors and none of the (frozen) weights they were merged into;
            # a file with those weights would apply LoRA twice when loaded.
            state = state_dict or self.state_dict()
            merged = sorted(key for key in state if ".base_layer." in key)
            if merged:
                raise ValueError(f"LoRA is merged into {_preview(merged)}: saving them would apply LoRA twice "
                                 f"when loaded; save the model before merge_lora(), or without include_backbone")
        return state_dict

    def remember_load_source(self, load_kwargs: dict, download: dict) -> None:
        """Record where this model was loaded from (``subfolder``, ``revision`` among ``load_kwargs``; the Hub
        download arguments ``download`` but ``force_download``): :meth:`source_image_processor` reads the image
        processor from there when the model is saved or pushed again."""
        self.__dict__["_source_load_kwargs"] = {
            **{key: load_kwargs[key] for key in ("subfolder", "revision") if load_kwargs.get(key)},
            **{key: value for key, value in download.items() if key != "force_download"},
        }

    def source_image_processor(self):
        """The image processor saved beside the artifact this model was loaded from (e.g. an ADE20K head's
        ``do_reduce_labels``), else :meth:`default_image_processor`."""
        from transformers import AutoImageProcessor

        default = self.default_image_processor()
        source = self.name_or_path
        if source and (os.path.isdir(source) or looks_like_hub_id(source)):
            try:  # from where the model was: its subfolder, revision, cache_dir and token
                loaded = AutoImageProcessor.from_pretrained(source, **self.__dict__.get("_source_load_kwargs", {}))
            except (OSError, ValueError):  # no preprocessor_config.json there, or not reachable now
                return default
            if isinstance(loaded, type(default)):  # not another library's (e.g. an official repo's remote code)
                return loaded
        return default

    def model_card(self, metrics: dict | None = None, dataset_names: list[str] | None = None, **extra) -> ModelCard:
        """The filled model card; ``extra`` reaches :meth:`render_card` (``repo_id``, ``backbone_included``)."""
        raise NotImplementedError

    @staticmethod
    def card_metadata(*, license: str, tags: list[str], base_models: list[str],
                      dataset_names: list[str] | None = None) -> ModelCardData:
        """The card's YAML header; ``base_models`` and ``dataset_names`` keep only Hub ids (``org/name``): the
        Hub links each entry to a repo, so a local folder's name (``"ECSSD"``, ``"COD10K (Train)"``) stays in the
        card's text only. A Hub dataset's split suffix (``"org/COD10K (Train)"``) is dropped."""
        hub_ids = [r for r in base_models if looks_like_hub_id(r)]
        dataset_ids = list(dict.fromkeys(
            repo for repo in (str(name).split(" (")[0] for name in dataset_names or [])
            if looks_like_hub_id(repo, even_if_local=True)))
        return ModelCardData(
            license=license, library_name="dsunet-hf", pipeline_tag="image-segmentation", tags=tags,
            base_model=(hub_ids[0] if len(hub_ids) == 1 else hub_ids) or None,
            datasets=dataset_ids or None,
        )

    def render_card(self, template: str, card_data: ModelCardData, *, metrics: dict | None = None,
                    dataset_names: list[str] | None = None, repo_id: str | None = None,
                    backbone_included: bool | None = None, **variables) -> ModelCard:
        """Render ``model_cards/<template>`` with what every card shows (repo, config, parameter counts, what
        trains, metrics, data sets, whether the artifact holds the backbone weights: ``backbone_included``,
        default: only under strategy ``full``) plus the model's own ``variables``."""
        trainable, total = parameter_counts(self)
        if backbone_included is None:
            backbone_included = self.config.finetune_strategy == "full"
        return render_model_card(
            template, card_data, repo_id=repo_id or PLACEHOLDER_REPO_ID, config=self.config,
            backbone_included=backbone_included,
            trainable_params=f"{trainable:,}", total_params=f"{total:,}",
            trainable_percent=f"{100 * trainable / max(total, 1):.2f}", summary=trainable_summary(self),
            metrics=metrics or {}, dataset_names=list(dataset_names or []), **variables,
        )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        image_processor=None,
        metrics: dict | None = None,
        dataset_names: list[str] | None = None,
        commit_message: str = "Upload fine-tuned model with dsunet-hf",
        commit_description: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        include_backbone: bool = False,
        evaluation_reports: list[str] | None = None,
        tags: list[str] | str | None = None,
        **kwargs,
    ) -> str:
        """Push the trainable-only artifact, its image processor (``image_processor``, else the one the model was
        loaded with, else the default) and a filled model card in one commit; ``evaluation_reports``
        (``dsunet-hf evaluate``'s ``evaluation.json`` files) put benchmark results on the card (see
        :func:`dsunet_hf.hub.add_evaluation_to_card`). ``tags`` join the card's (as those of ``add_model_tags``);
        ``commit_description`` describes the commit (or the pull request, with ``create_pr=True``).

        (transformers' own ``push_to_hub`` would replace our card with a generic one.) ``max_shard_size`` reaches
        ``save_pretrained``; other keyword arguments are refused rather than ignored.
        """
        save_kwargs = {key: kwargs.pop(key) for key in ("max_shard_size",) if key in kwargs}
        if kwargs:
            raise TypeError(f"push_to_hub() got unexpected keyword arguments {sorted(kwargs)}")
        # Refused before the repo is created: a refused push leaves no empty repo behind.
        check_push_target(revision, create_pr)
        self._check_saveable(include_backbone)
        if evaluation_reports:
            check_evaluation_for_card(evaluation_reports)
        # The Hub's full id (a name without a namespace gets the user's) for the card's snippets.
        repo_id = create_hub_repo(repo_id, private=private, token=token)
        with tempfile.TemporaryDirectory(prefix="dsunet-hf-push-") as folder:
            self.save_pretrained(
                folder,
                include_backbone=include_backbone,
                **save_kwargs,
                image_processor=image_processor,  # None: the processor the model was loaded with, else the default
                model_card_kwargs={"metrics": metrics, "dataset_names": dataset_names, "repo_id": repo_id,
                                   "tags": tags, "revision": revision},
            )
            if evaluation_reports:
                add_evaluation_to_card(folder, evaluation_reports, model_name=repo_id.split("/")[-1])
            return upload_folder_to_hub(
                Path(folder), repo_id, commit_message=commit_message, commit_description=commit_description,
                private=private, token=token, revision=revision, create_pr=create_pr, repo_created=True,
            )

    def default_image_processor(self):
        raise NotImplementedError


class _HeldLoadReport(logging.Filter):
    """While entered, holds back transformers' LOAD REPORT warnings for ``model_class`` (a class name: another model
    loaded meanwhile keeps its own); :meth:`release` logs them. Left with an exception (e.g. transformers' error after
    a conversion failure, which points at the report), they are logged then."""

    _logger = logging.getLogger("transformers.modeling_utils")

    def __init__(self, model_class: str):
        super().__init__()
        self.marker = f"{model_class} LOAD REPORT"
        self.thread = threading.get_ident()  # a load in another thread keeps its own report (the logger is global)
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread == self.thread and self.marker in str(record.msg):
            self.records.append(record)
            return False
        return True

    def __enter__(self) -> _HeldLoadReport:
        self._logger.addFilter(self)
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self._logger.removeFilter(self)
        if error_type is not None:
            self.release()

    def release(self) -> None:
        for record in self.records:
            self._logger.handle(record)
        self.records = []


def _unreadable_weights(source, load_kwargs: dict, error: Exception) -> str:
    """The error for weights safetensors cannot read, naming the file: in a local folder, or in the Hub cache (where
    ``from_pretrained`` would read the damaged copy again and again until it is deleted or downloaded anew)."""
    from huggingface_hub import try_to_load_from_cache
    from safetensors import SafetensorError, safe_open

    subfolder = load_kwargs.get("subfolder") or ""
    folder, cached = Path(source, subfolder), False
    if not folder.is_dir() and looks_like_hub_id(str(source)):
        # The repo's snapshot in the cache: where its config.json, read before the weights, lies.
        config = try_to_load_from_cache(str(source), "/".join(filter(None, [subfolder, "config.json"])),
                                        cache_dir=load_kwargs.get("cache_dir"), revision=load_kwargs.get("revision"))
        folder, cached = (Path(config).parent, True) if isinstance(config, str) else (folder, False)
    if folder.is_dir():
        for path in sorted(folder.glob("*.safetensors")):
            try:
                with safe_open(str(path), "pt"):
                    pass
            except SafetensorError:
                if cached:
                    return (f"{path}: the Hub cache's copy of {source}'s weights is not a readable safetensors file, "
                            f"truncated or damaged ({error}); {damaged_cache_file_advice(path)}")
                return (f"{path}: not a readable safetensors file, truncated or damaged ({error}); save it again, or "
                        f"copy it again")
    return (f"{source}: its weights: not a readable safetensors file, truncated or damaged ({error}); download them "
            f"again (force_download=True)")


def _offline_not_cached(source, load_kwargs: dict, error: Exception) -> str | None:
    """Offline, a Hub id of which the local Hub cache holds nothing (transformers: two generic lines naming neither
    the repo nor a fix; a mistyped relative folder such as runs/exp1 reads as such an id): one line naming both."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    note = no_local_folder_note(str(source), load_kwargs.get("cache_dir"))
    if not (note and huggingface_hub.constants.HF_HUB_OFFLINE
            and any(isinstance(cause, LocalEntryNotFoundError) for cause in error_chain(error))):
        return None
    return f"{source} is not in the local Hub cache{note} and {offline_fix(str(source), load_kwargs.get('revision'))}"


def _saved_variants(source, load_kwargs: dict, error: Exception | None = None) -> list[str]:
    """The weight variants (``model.<variant>.safetensors``, sharded or not) in a local model folder, or a Hub repo
    (its snapshot in the local cache, else its files on the Hub), that holds no weights without a variant (the ones
    loaded by default). The Hub is not asked offline, with ``local_files_only``, or where ``error`` (the load's) says
    it could not be reached."""
    subfolder = load_kwargs.get("subfolder") or ""
    folder = Path(source, subfolder)
    if folder.is_dir():
        names = [path.name for path in saved_weight_files(folder)]
    elif looks_like_hub_id(str(source)):  # (an error path: a listing request is affordable)
        import huggingface_hub
        from huggingface_hub.errors import LocalEntryNotFoundError

        where = {"revision": load_kwargs.get("revision"), "token": load_kwargs.get("token")}
        snapshot = cached_snapshot(str(source), where["revision"], cache_dir=load_kwargs.get("cache_dir"))
        names = [] if snapshot is None else [path.name for path in saved_weight_files(snapshot / subfolder)]
        unreachable = any(isinstance(cause, LocalEntryNotFoundError) for cause in error_chain(error))
        if not names and not (huggingface_hub.constants.HF_HUB_OFFLINE or load_kwargs.get("local_files_only")
                              or unreachable):
            try:  # with a timeout: huggingface_hub's API requests have none, and a hint must not hang the error
                info = huggingface_hub.HfApi().model_info(str(source), expand=["siblings"],
                                                          timeout=huggingface_hub.constants.HF_HUB_ETAG_TIMEOUT,
                                                          **where)
                files = [sibling.rfilename for sibling in info.siblings or []]
            except Exception:  # no such repo or revision, no access, no network: no hint
                return []
            prefix = f"{subfolder.strip('/')}/" if subfolder else ""
            names = [name[len(prefix):] for name in files if name.startswith(prefix) and "/" not in name[len(prefix):]]
    else:
        return []
    if any(name in names for name in weight_file_names()):
        return []
    found = {match.group(1) for name in names
             if (match := re.fullmatch(r"model\.(?:safetensors\.index\.)?([^.]+?)(?:-\d{5}-of-\d{5})?\.(?:safetensors|json)",
                                       name))}
    return sorted(found)


def cached_snapshot(repo_id: str, revision: str | None = None, cache_dir=None) -> Path | None:
    """The folder of the local Hub cache's (``cache_dir``, default the standard one) snapshot that ``revision`` (a
    branch, tag or commit; default main) of Hub repo ``repo_id`` resolves to there, without a request (a branch or
    tag through its refs/ file, written by the download that named it); None where the cache has none."""
    import huggingface_hub

    try:
        return Path(huggingface_hub.snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                                      local_files_only=True))
    except Exception:  # not in the cache
        return None


def cached_full_commits(repo_id: str, revision: str | None) -> list[str]:
    """The commits of Hub repo ``repo_id`` whose snapshots the local Hub cache holds and that ``revision`` (a short
    commit hash) starts; none for anything else. (Offline, huggingface_hub resolves a short hash only through a refs/
    file, which only a download that named it so writes.)"""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    if not revision or not re.fullmatch(r"[0-9a-f]{4,39}", revision):
        return []
    snapshots = Path(constants.HF_HUB_CACHE, repo_folder_name(repo_id=repo_id, repo_type="model"), "snapshots")
    return sorted(p.name for p in snapshots.glob(f"{revision}*") if re.fullmatch(r"[0-9a-f]{40}", p.name))


def cached_commit(name_or_path, revision: str | None = None) -> str | None:
    """The commit a model loads from, as the local Hub cache tells it without a request: the snapshot
    (``models--org--name/snapshots/<commit>/``) that ``revision`` (a branch, tag or commit; default main) of a Hub
    repo resolves to there (:func:`cached_snapshot`), or the snapshot a local folder lies in; None where not known
    (another folder, a revision not in the cache). For reports: transformers 5 no longer records it
    (``config._commit_hash``)."""
    from .hub import snapshot_revision

    path = Path(str(name_or_path)).expanduser()
    if path.exists():
        # The folder resolved (a snapshot's folders are real, its files links into blobs/): `..` and a link to a
        # snapshot name the snapshot they lead to, not the one the path passes through.
        folder = path if path.is_dir() else path.parent
        return snapshot_revision(folder.resolve() / "config.json")
    if not looks_like_hub_id(str(name_or_path)):
        return None
    snapshot = cached_snapshot(str(name_or_path), revision)
    return None if snapshot is None else snapshot_revision(snapshot / "config.json")


def _preview(keys: list[str], limit: int = 8) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return f"{shown}{f' ... ({len(keys)} in all)' if len(keys) > limit else ''}"
