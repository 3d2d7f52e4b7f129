from .configuration_sam2_unet import Sam2UNetConfig
from .modeling_sam2_unet import Sam2UNetForImageSegmentation, Sam2UNetOutput

__all__ = ["Sam2UNetConfig", "Sam2UNetForImageSegmentation", "Sam2UNetOutput"]
