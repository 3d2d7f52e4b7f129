"""Model registry: the names the training/evaluation command lines use (``--model sam2-unet``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    config_class: type
    model_class: type
    # Upstream training recipe: augmentation (image and mask together), batch size and epochs.
    hflip: bool = True
    vflip: bool = True
    batch_size: int = 12
    num_epochs: int = 20
    task: str = "binary"  # "binary" (soft masks, SOD metrics) or "semantic" (label maps, mIoU)
    best_metric: str = "S-measure"


def get_model_spec(name: str) -> ModelSpec:
    from .dinov2_seg import Dinov2ForSemanticSegmentation, Dinov2SegConfig
    from .dsunet import DSUNetConfig, DSUNetForImageSegmentation
    from .sam2_unet import Sam2UNetConfig, Sam2UNetForImageSegmentation

    registry = {
        "sam2-unet": ModelSpec(Sam2UNetConfig, Sam2UNetForImageSegmentation, batch_size=12, num_epochs=20),
        "dsunet": ModelSpec(DSUNetConfig, DSUNetForImageSegmentation, batch_size=4, num_epochs=50),
        "dinov2-seg": ModelSpec(Dinov2SegConfig, Dinov2ForSemanticSegmentation, batch_size=16, num_epochs=40,
                                task="semantic", best_metric="mIoU"),
    }
    if name not in registry:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(registry)}")
    return registry[name]
