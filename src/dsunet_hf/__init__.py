"""dsunet-hf: Hugging Face-native foundation-model image segmentation.

Importing the package registers its configs, models and image processors with the transformers Auto
classes, so ``AutoModel.from_pretrained`` / ``AutoImageProcessor.from_pretrained`` load saved artifacts.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageSegmentation,
    AutoModelForSemanticSegmentation,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_SEGMENTATION_MAPPING_NAMES

from .backbones.hiera import HIERA_PRESETS, HieraBackbone, hiera_config, hiera_hub_repo
from .finetune import STRATEGIES, trainable_summary
from .foreground import estimate_foreground, refine_foreground
from .hub import BackboneNotAvailableError
from .image_processing import SegmentationImageProcessor
from .modeling_utils import CheckpointMismatchError
from .models.birefnet import BiRefNetConfig, BiRefNetForImageSegmentation, BiRefNetOutput
from .models.dinov2_seg import Dinov2ForSemanticSegmentation, Dinov2SegConfig
from .models.dsunet import DSUNetConfig, DSUNetForImageSegmentation, DSUNetOutput
from .models.sam2_unet import Sam2UNetConfig, Sam2UNetForImageSegmentation, Sam2UNetOutput
from .models.visual_prompt import (
    VisualPromptConfig,
    VisualPromptForSegmentation,
    VisualPromptMatcher,
    VisualPromptMatcherConfig,
)

__version__ = "0.1.0"

_SEGMENTATION_MODELS = (
    (Sam2UNetConfig, Sam2UNetForImageSegmentation),
    (DSUNetConfig, DSUNetForImageSegmentation),
    (BiRefNetConfig, BiRefNetForImageSegmentation),
)
for _config, _model in _SEGMENTATION_MODELS:
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForImageSegmentation.register(_config, _model, exist_ok=True)
    AutoImageProcessor.register(_config, slow_image_processor_class=SegmentationImageProcessor, exist_ok=True)
# The training-free matcher returns features, not logits: registered for AutoConfig/AutoModel only.
AutoConfig.register(VisualPromptMatcherConfig.model_type, VisualPromptMatcherConfig, exist_ok=True)
AutoModel.register(VisualPromptMatcherConfig, VisualPromptMatcher, exist_ok=True)
# The trained in-context head needs references and prompts besides the image: AutoModel, not the
# image-segmentation pipeline (``dsunet-hf predict --reference ... --prompt ...`` loads it).
AutoConfig.register(VisualPromptConfig.model_type, VisualPromptConfig, exist_ok=True)
AutoModel.register(VisualPromptConfig, VisualPromptForSegmentation, exist_ok=True)
AutoImageProcessor.register(VisualPromptConfig, slow_image_processor_class=SegmentationImageProcessor, exist_ok=True)
AutoConfig.register(Dinov2SegConfig.model_type, Dinov2SegConfig, exist_ok=True)
AutoModel.register(Dinov2SegConfig, Dinov2ForSemanticSegmentation, exist_ok=True)
AutoModelForSemanticSegmentation.register(Dinov2SegConfig, Dinov2ForSemanticSegmentation, exist_ok=True)
# Also under image segmentation, so the model-agnostic predict/evaluate loaders find every dsunet-hf model.
AutoModelForImageSegmentation.register(Dinov2SegConfig, Dinov2ForSemanticSegmentation, exist_ok=True)
AutoImageProcessor.register(Dinov2SegConfig, slow_image_processor_class=SegmentationImageProcessor, exist_ok=True)
# ``pipeline("image-segmentation")`` checks the model class against a *copy* of this name table, which
# loses the registrations above, and logs "not supported" although it runs our models fine. Naming them
# here silences that; the lazy Auto mappings skip model types that transformers' own config table lacks.
for _config, _model in (*_SEGMENTATION_MODELS, (Dinov2SegConfig, Dinov2ForSemanticSegmentation)):
    MODEL_FOR_IMAGE_SEGMENTATION_MAPPING_NAMES.setdefault(_config.model_type, _model.__name__)

__all__ = [
    "HIERA_PRESETS",
    "BiRefNetConfig",
    "BiRefNetForImageSegmentation",
    "BiRefNetOutput",
    "STRATEGIES",
    "BackboneNotAvailableError",
    "CheckpointMismatchError",
    "DSUNetConfig",
    "Dinov2ForSemanticSegmentation",
    "Dinov2SegConfig",
    "DSUNetForImageSegmentation",
    "DSUNetOutput",
    "HieraBackbone",
    "SegmentationImageProcessor",
    "Sam2UNetConfig",
    "Sam2UNetForImageSegmentation",
    "Sam2UNetOutput",
    "VisualPromptConfig",
    "VisualPromptForSegmentation",
    "VisualPromptMatcher",
    "VisualPromptMatcherConfig",
    "estimate_foreground",
    "hiera_config",
    "hiera_hub_repo",
    "refine_foreground",
    "trainable_summary",
]
