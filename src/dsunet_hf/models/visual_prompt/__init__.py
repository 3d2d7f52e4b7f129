"""Visual in-context prompting: reference image + visual prompt -> target mask.

``VisualPromptMatcher``: training-free (frozen DINOv2 feature matching). ``VisualPromptForSegmentation``: a
trained DINOv-style in-context head on frozen DINOv2. ``episodes``: training episodes and the evaluation.
"""

from .configuration_visual_prompt import (
    INFERENCE_MODES,
    MATCHING_MODES,
    VisualPromptConfig,
    VisualPromptMatcherConfig,
)
from .episodes import (
    PROMPT_KINDS,
    VisualPromptEpisodes,
    collate_visual_prompt,
    evaluate_visual_prompt,
    evaluation_episodes,
    index_classes,
    prompt_mask_from_region,
)
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
from .modeling_visual_prompt import VisualPromptForSegmentation, VisualPromptOutput

__all__ = [
    "INFERENCE_MODES",
    "MATCHING_MODES",
    "PROMPT_KINDS",
    "VisualPromptConfig",
    "VisualPromptEpisodes",
    "VisualPromptForSegmentation",
    "VisualPromptMatcher",
    "VisualPromptMatcherConfig",
    "VisualPromptOutput",
    "bidirectional_matches",
    "collate_visual_prompt",
    "evaluate_visual_prompt",
    "evaluation_episodes",
    "index_classes",
    "linear_assignment",
    "nearest_similarity_map",
    "patch_mask",
    "prompt_mask_from_region",
    "prototypes",
    "sam_prompts",
    "similarity_map",
]
