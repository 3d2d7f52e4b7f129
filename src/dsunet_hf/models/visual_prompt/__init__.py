"""Training-free visual-prompt segmentation: reference image + prompt -> target mask (frozen DINOv2)."""

from .configuration_visual_prompt import MATCHING_MODES, VisualPromptMatcherConfig
from .matcher import (
    VisualPromptMatcher,
    bidirectional_matches,
    linear_assignment,
    nearest_similarity_map,
    patch_mask,
    prototypes,
    sam_prompts,
    similarity_map,
)

__all__ = [
    "MATCHING_MODES",
    "VisualPromptMatcher",
    "VisualPromptMatcherConfig",
    "bidirectional_matches",
    "linear_assignment",
    "nearest_similarity_map",
    "patch_mask",
    "prototypes",
    "sam_prompts",
    "similarity_map",
]
