"""Default class names (``config.id2label``): transformers' image-segmentation pipeline reports them."""

from __future__ import annotations

# Every single-channel model (SAM2-UNet, DSU-Net, BiRefNet) predicts foreground vs background.
FOREGROUND_LABELS = ("background", "foreground")


def set_default_labels(config_kwargs: dict, names) -> None:
    """Give a config ``names`` as its classes unless the caller chose classes (``id2label``/``num_labels``)."""
    if "id2label" not in config_kwargs and "num_labels" not in config_kwargs:
        config_kwargs["id2label"] = dict(enumerate(names))
