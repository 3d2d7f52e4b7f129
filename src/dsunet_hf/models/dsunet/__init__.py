from .configuration_dsunet import DSUNetConfig
from .modeling_dsunet import DSUNetForImageSegmentation, DSUNetOutput

__all__ = ["DSUNetConfig", "DSUNetForImageSegmentation", "DSUNetOutput"]
