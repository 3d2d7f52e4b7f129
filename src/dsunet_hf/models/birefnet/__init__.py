from .configuration_birefnet import VARIANTS, BiRefNetConfig
from .modeling_birefnet import BiRefNetForImageSegmentation, BiRefNetOutput

__all__ = ["BiRefNetConfig", "BiRefNetForImageSegmentation", "BiRefNetOutput", "VARIANTS"]
