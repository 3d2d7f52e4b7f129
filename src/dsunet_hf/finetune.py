"""Fine-tuning strategies: which parameters of a model train, and which are saved.

- ``adapter`` (default): bottleneck adapters in the frozen backbone + the decoder (SAM2-UNet's recipe).
- ``lora``: LoRA (peft) on the backbone's attention and MLP linears + the decoder; no adapters.
- ``full``: everything, adapters included.
- ``frozen``: the decoder only; the backbone is used as a fixed feature extractor.

The same predicate decides what trains and what ``save_pretrained`` writes, so a saved artifact always
holds exactly the trainable tensors (and the decoder's BatchNorm statistics next to them).
"""

from __future__ import annotations

import contextlib

from torch import nn

STRATEGIES = ("adapter", "lora", "full", "frozen")


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown fine-tuning strategy {strategy!r}; choose one of {STRATEGIES}")
    return strategy


def set_finetune_fields(config, strategy: str, rank: int, alpha: int, dropout: float, targets: list[str]) -> None:
    """The fine-tuning fields every model config shares (strategy and its LoRA settings), checked: alpha 0 trained
    nothing (every LoRA gradient is 0) and a negative dropout passed silently; rank 0 or 2.5 failed in peft."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"lora_rank must be a positive integer, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < float("inf"):
        raise ValueError(f"lora_alpha must be a positive number (LoRA's scale is alpha / rank), got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"lora_dropout must be a probability in [0, 1), got {dropout!r}")
    if isinstance(targets, str) or not all(isinstance(name, str) for name in targets) or not targets:
        raise ValueError(f"lora_target_modules must be a non-empty list of module names, got {targets!r}")
    config.finetune_strategy = check_strategy(strategy)
    config.lora_rank = rank
    config.lora_alpha = alpha
    config.lora_dropout = dropout
    config.lora_target_modules = list(targets)


def uses_adapters(strategy: str) -> bool:
    return check_strategy(strategy) in ("adapter", "full")


def is_trainable_key(name: str, strategy: str, frozen_prefixes: tuple[str, ...]) -> bool:
    """Whether a parameter/buffer name trains (and is saved) under ``strategy``."""
    if strategy == "full" or not name.startswith(frozen_prefixes):
        return True
    if strategy == "adapter":
        return ".adapter." in name
    if strategy == "lora":
        return "lora_" in name
    return False


def add_lora(module: nn.Module, rank: int, alpha: int, dropout: float, target_modules: list[str]) -> None:
    """Inject peft LoRA layers into ``module`` in place (names end in ``lora_A/lora_B``)."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules))
    inject_adapter_in_model(config, module)


def lora_layers(module: nn.Module) -> list[nn.Module]:
    """The peft LoRA layers in ``module`` (none unless its strategy is ``lora``)."""
    from peft.tuners.lora import LoraLayer

    return [layer for layer in module.modules() if isinstance(layer, LoraLayer)]


def merge_lora(module: nn.Module) -> int:
    """Fold every LoRA update into the frozen weight it adapts (W + scale * B @ A, peft's ``merge``), so that
    inference runs one matmul per layer instead of three; returns how many layers were merged."""
    layers = [layer for layer in lora_layers(module) if not layer.merged]
    for layer in layers:
        layer.merge()
    return len(layers)


@contextlib.contextmanager
def lora_merged(module: nn.Module):
    """LoRA merged inside the block, and the frozen weights restored bit for bit after it (peft's ``unmerge``
    subtracts the update again, which is exact only to float rounding)."""
    layers = [layer for layer in lora_layers(module) if not layer.merged]
    originals = [{name: tensor.detach().clone() for name, tensor in layer.get_base_layer().state_dict().items()}
                 for layer in layers]
    for layer in layers:
        layer.merge()
    try:
        yield len(layers)
    finally:
        for layer, original in zip(layers, originals):
            layer.get_base_layer().load_state_dict(original)
            layer.merged_adapters.clear()  # peft's record of what is merged: now nothing


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def trainable_summary(model: nn.Module) -> str:
    """One line, like peft's: ``trainable params: 4,269,747 || all params: 216,419,043 || trainable%: 1.97``."""
    trainable, total = parameter_counts(model)
    return f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.2f}"
