"""Default class names (``config.id2label``): transformers' image-segmentation pipeline reports them."""

from __future__ import annotations

# Every single-channel model (SAM2-UNet and DSU-Net with two classes, BiRefNet) predicts foreground vs background.
FOREGROUND_LABELS = ("background", "foreground")


def set_default_labels(config_kwargs: dict, names) -> None:
    """Give a config ``names`` as its classes unless the caller chose classes (``id2label``/``num_labels``)."""
    if "id2label" not in config_kwargs and "num_labels" not in config_kwargs:
        config_kwargs["id2label"] = dict(enumerate(names))
    if config_kwargs.get("id2label") and config_kwargs.get("label2id") is None:  # transformers 5 leaves it unset
        config_kwargs["label2id"] = {name: int(index) for index, name in config_kwargs["id2label"].items()}


def require_binary(config, model_name: str) -> None:
    """Single-channel models (BiRefNet) predict foreground vs background only: more classes would be silently
    ignored."""
    if config.num_labels > 2:
        raise ValueError(f"{model_name} predicts one foreground map, so num_labels must be at most 2, got "
                         f"{config.num_labels}; SAM2-UNet, DSU-Net and the DINOv2 heads are the multi-class models")
