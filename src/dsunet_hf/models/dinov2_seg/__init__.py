from .configuration_dinov2_seg import Dinov2SegConfig
from .modeling_dinov2_seg import Dinov2ForSemanticSegmentation

__all__ = ["Dinov2ForSemanticSegmentation", "Dinov2SegConfig"]
