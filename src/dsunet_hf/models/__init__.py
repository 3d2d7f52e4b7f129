"""Model registry: the names the training/evaluation command lines use (``--model sam2-unet``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    config_class: type
    model_class: type
    # Upstream training augmentation (applied to image and mask together).
    hflip: bool = True
    vflip: bool = True


def get_model_spec(name: str) -> ModelSpec:
    from .sam2_unet import Sam2UNetConfig, Sam2UNetForImageSegmentation

    registry = {"sam2-unet": ModelSpec(Sam2UNetConfig, Sam2UNetForImageSegmentation, hflip=True, vflip=True)}
    if name not in registry:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(registry)}")
    return registry[name]
