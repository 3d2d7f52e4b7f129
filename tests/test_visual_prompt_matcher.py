"""Training-free visual-prompt matcher: matching logic on known features, a tiny DINOv2 end to end, saving."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_HIERA
from transformers import Dinov2Config, Dinov2Model

from dsunet_hf.image_processing import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from dsunet_hf.models.visual_prompt import (
    MATCHING_MODES,
    VisualPromptMatcher,
    VisualPromptMatcherConfig,
    bidirectional_matches,
    linear_assignment,
    patch_mask,
    prototypes,
    sam_prompts,
    similarity_map,
)
from dsunet_hf.models.visual_prompt import matcher as matcher_module
from dsunet_hf.prompts import BoxPrompt

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

TINY_DINO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
P = 14  # patch size
SIZE = 8 * P  # 112 px: an 8 x 8 patch grid

BLACK, RED, GREEN, BLUE = (0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)
PALETTE = [BLACK, RED, GREEN, BLUE]


def tiny_config(**overrides) -> VisualPromptMatcherConfig:
    fields = dict(dino_preset="small", dino_config=TINY_DINO, image_size=SIZE,
                  dino_backbone_repo_id="test-org/tiny-dinov2")
    fields.update(overrides)
    return VisualPromptMatcherConfig(**fields)


def colour_image(regions: dict[tuple, list[tuple[int, int, int, int]]], scale: int = 1) -> np.ndarray:
    """A black SIZE*scale square with flat colour rectangles given in patches (row0, col0, row1, col1)."""
    image = np.zeros((SIZE * scale, SIZE * scale, 3), np.uint8)
    step = P * scale
    for colour, boxes in regions.items():
        for r0, c0, r1, c1 in boxes:
            image[r0 * step : r1 * step, c0 * step : c1 * step] = colour
    return image


def region(boxes: list[tuple[int, int, int, int]], scale: int = 1) -> np.ndarray:
    mask = np.zeros((SIZE * scale, SIZE * scale), bool)
    step = P * scale
    for r0, c0, r1, c1 in boxes:
        mask[r0 * step : r1 * step, c0 * step : c1 * step] = True
    return mask


def colour_features(table: torch.Tensor):
    """A feature extractor with known output: each patch's mean colour -> the nearest palette colour ->
    that colour's row of ``table`` (the identity: one-hot colour features)."""
    palette = torch.tensor(PALETTE, dtype=torch.float32) / 255

    def extract(pixel_values: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
        colours = F.avg_pool2d(pixel_values * std + mean, P)  # (B, 3, h, w)
        distance = ((colours[:, None] - palette[None, :, :, None, None]) ** 2).sum(2)  # (B, K, h, w)
        return table[distance.argmin(1)].permute(0, 3, 1, 2)  # (B, C, h, w)

    return extract


ONE_HOT = colour_features(torch.eye(len(PALETTE)))


def patch_centres(score: np.ndarray) -> torch.Tensor:
    """The score map at the pixel next to each patch centre (bilinear mixes in 1/28 of a neighbour there)."""
    return torch.from_numpy(score)[P // 2 :: P, P // 2 :: P]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.fixture(scope="module")
def random_matcher():
    torch.manual_seed(0)
    return VisualPromptMatcher(tiny_config()).eval()


# --- pure functions ------------------------------------------------------------------------------------------

def test_patch_mask_marks_every_patch_the_mask_overlaps():
    mask = np.zeros((28, 42), bool)  # 2 x 3 patches of 14 px
    mask[13, 14] = True  # one pixel in patch (0, 1)
    mask[20:22, 40] = True  # patch (1, 2)
    assert patch_mask(mask, (2, 3)).tolist() == [[False, True, False], [False, False, True]]
    # Any size maps onto the grid: pixel 2 of a 5-px axis overlaps patches 0 and 1 of 2 ([0, 2.5), [2.5, 5)).
    assert patch_mask(np.eye(5)[2:3].repeat(2, 0), (1, 2)).tolist() == [[True, True]]
    # min_coverage (tracked frames): the half-covered patches only, or every touched one where none is.
    mask[14:28, 14:22] = True  # 8/14 of patch (1, 1)
    assert patch_mask(mask, (2, 3), min_coverage=0.5).tolist() == [[False, False, False], [False, True, False]]
    assert patch_mask(mask[:, 30:], (2, 1), min_coverage=0.5).tolist() == [[False], [True]]  # 2 pixels: touched


def test_prototype_matching_finds_exactly_the_prompted_region():
    reference = colour_image({RED: [(2, 1, 5, 4)], GREEN: [(5, 5, 8, 8)]})
    target = colour_image({RED: [(0, 4, 2, 8), (6, 0, 8, 2)], GREEN: [(3, 3, 5, 5)], BLUE: [(5, 5, 7, 7)]})
    expected = region([(0, 4, 2, 8), (6, 0, 8, 2)])
    model = VisualPromptMatcher(tiny_config())
    box = BoxPrompt(1 * P, 2 * P, 4 * P, 5 * P)  # exactly the red square
    [score] = model.segment([reference], [box], [target], feature_fn=ONE_HOT)
    assert score.shape == (SIZE, SIZE) and score.dtype == np.float32
    assert torch.equal(patch_centres(score) > 0, patch_mask(expected, (8, 8)))  # positive on the red patches
    [mask] = model.predict_masks([reference], [box], [target], feature_fn=ONE_HOT)
    assert mask.dtype == bool and iou(mask, expected) > 0.9  # bilinear upsampling softens patch edges only
    # The same target at twice the size: the map comes back at the original size.
    big_target = colour_image({RED: [(0, 4, 2, 8), (6, 0, 8, 2)], GREEN: [(3, 3, 5, 5)], BLUE: [(5, 5, 7, 7)]}, 2)
    [big] = model.predict_masks([reference], [box], [big_target], feature_fn=ONE_HOT)
    assert big.shape == (2 * SIZE, 2 * SIZE) and iou(big, region([(0, 4, 2, 8), (6, 0, 8, 2)], 2)) > 0.9


def test_background_prototype_suppresses_a_look_alike_distractor():
    # Features: object a = (1, 1, 0), background b = (0, 1, 0), distractor d = (0.2, 1, 0): the distractor
    # shares the object's "1 on axis 1" with the background, so cos(d, a) = 0.83 leaks onto it, while
    # cos(d, a) - cos(d, b) = 0.83 - 0.98 < 0. (Blue is unused.)
    table = torch.tensor([[0, 1, 0], [1, 1, 0], [0.2, 1, 0], [0, 0, 1]], dtype=torch.float32)
    features = colour_features(table)  # BLACK -> b, RED -> a, GREEN -> d
    reference = colour_image({RED: [(3, 3, 5, 5)]})
    target = colour_image({RED: [(0, 0, 2, 3)], GREEN: [(5, 4, 8, 8)]})
    obj, distractor = region([(0, 0, 2, 3)]), region([(5, 4, 8, 8)])
    prompt = [BoxPrompt(3 * P, 3 * P, 5 * P, 5 * P)]

    fg_only = VisualPromptMatcher(tiny_config(background_prototype=False))
    [score] = fg_only.segment([reference], prompt, [target], feature_fn=features)
    # Cosine to the object prototype alone: a strong false match (0.83 inside, > 0.7 at its blurred edges).
    assert score[6 * P + P // 2, 6 * P + P // 2] == pytest.approx(1.2 / (2 * 1.04) ** 0.5, abs=1e-5)
    assert score[distractor].min() > 0.7
    [leaky] = fg_only.predict_masks([reference], prompt, [target], feature_fn=features)  # cosine > 0.5
    assert leaky[distractor].mean() > 0.9 and leaky[obj].all()

    suppressed = VisualPromptMatcher(tiny_config())  # background_prototype=True, threshold 0
    [score] = suppressed.segment([reference], prompt, [target], feature_fn=features)
    assert score[distractor].max() < 0
    assert torch.equal(patch_centres(score) > 0, patch_mask(obj, (8, 8)))  # 1 - cos(a, b) = 0.29 on the object
    [mask] = suppressed.predict_masks([reference], prompt, [target], feature_fn=features)
    assert not mask[distractor].any() and iou(mask, obj) > 0.85


def test_prototypes_average_references_with_equal_weights():
    features = torch.zeros(2, 4, 3, 3)
    features[:, 3] = 1  # background everywhere ...
    features[0, :, 0, 0] = torch.tensor([1.0, 0, 0, 0])  # ... reference 0: one e0 patch
    masks = torch.zeros(2, 3, 3, dtype=torch.bool)
    masks[0, 0, 0] = True
    features[1, :, :2, :] = torch.tensor([0, 5.0, 0, 0]).view(4, 1, 1)  # reference 1: six e1 patches (norm 5)
    masks[1, :2, :] = True
    fg, bg = prototypes(features, masks)
    torch.testing.assert_close(fg, torch.tensor([1.0, 1.0, 0, 0]) / 2**0.5)  # not weighted by patch count
    torch.testing.assert_close(bg, torch.tensor([0, 0, 0, 1.0]))
    assert prototypes(features, masks, background=False)[1] is None
    with pytest.raises(ValueError, match="reference 1 has no foreground patch"):
        prototypes(features, torch.stack([masks[0], torch.zeros(3, 3, dtype=torch.bool)]))
    target = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]).T.reshape(4, 2, 2)
    torch.testing.assert_close(similarity_map(target, fg), torch.tensor([[0.5**0.5, 0.5**0.5], [0, 0]]))
    torch.testing.assert_close(similarity_map(target, fg, bg), torch.tensor([[0.5**0.5, 0.5**0.5], [0, -1]]))


def test_several_references_find_the_union_of_their_concepts():
    red_ref = colour_image({RED: [(1, 1, 3, 3)]})
    green_ref = colour_image({GREEN: [(4, 4, 8, 8)]})
    target = colour_image({RED: [(0, 0, 2, 2)], GREEN: [(6, 6, 8, 8)], BLUE: [(3, 3, 5, 5)]})
    prompts = [BoxPrompt(P, P, 3 * P, 3 * P), BoxPrompt(4 * P, 4 * P, 8 * P, 8 * P)]
    model = VisualPromptMatcher(tiny_config())
    [both] = model.predict_masks([red_ref, green_ref], prompts, [target], feature_fn=ONE_HOT)
    [red_only] = model.predict_masks([red_ref], prompts[:1], [target], feature_fn=ONE_HOT)
    red, green = region([(0, 0, 2, 2)]), region([(6, 6, 8, 8)])
    assert iou(both, red | green) > 0.85 and not both[region([(3, 3, 5, 5)])].any()
    assert iou(red_only, red) > 0.85 and not red_only[green].any()
    [score] = model.segment([red_ref, green_ref], prompts, [target], feature_fn=ONE_HOT)
    centre = P // 2
    # The averaged prototype (e_red + e_green) / sqrt(2): both concepts score 1/sqrt(2) (bg is black).
    assert score[centre, centre] == pytest.approx(0.5**0.5, abs=1e-5)
    assert score[7 * P + centre, 7 * P + centre] == pytest.approx(0.5**0.5, abs=1e-5)


def cycle_features(with_lookalike: bool):
    """Reference 3 x 3: object patches (e0) at (0, 0), (0, 1), (0, 2) and a spill patch u at (1, 0), all in
    the mask; background patches e1, and (``with_lookalike``) one background patch w at (2, 2) closer to the
    target's t than u is. Target 3 x 3: e0 at (0, 0..2), t at (2, 1), e1 elsewhere."""
    u = F.normalize(torch.tensor([0, 0, 1.0, 0.2]), dim=0)
    w = F.normalize(torch.tensor([0, 0, 0.6, 1.0]), dim=0)
    t = F.normalize(torch.tensor([0, 0, 1.0, 1.0]), dim=0)
    e0, e1 = torch.eye(4)[0], torch.eye(4)[1]
    reference = e1.view(4, 1, 1).repeat(1, 3, 3)
    reference[:, 0, :] = e0.view(4, 1)
    reference[:, 1, 0] = u
    if with_lookalike:
        reference[:, 2, 2] = w
    mask = torch.zeros(3, 3, dtype=torch.bool)
    mask[0, :] = True
    mask[1, 0] = True
    target = e1.view(4, 1, 1).repeat(1, 3, 3)
    target[:, 0, :] = e0.view(4, 1)
    target[:, 2, 1] = t
    return reference, mask, target


@pytest.mark.parametrize("solver", ["hungarian", "greedy"])
def test_bidirectional_matching_keeps_only_cycle_consistent_matches(solver):
    reference, mask, target = cycle_features(with_lookalike=True)
    # Forward: the spill patch u (reference index 3) matches t (target index 7); reverse: t prefers the
    # background look-alike w (index 8, outside the mask) -> the pair is dropped; the object pairs stay.
    ref_index, tgt_index = bidirectional_matches(reference, mask, target, solver=solver, return_pairs=True)
    assert sorted(zip(ref_index.tolist(), tgt_index.tolist())) == [(0, 0), (1, 1), (2, 2)]
    assert sorted(bidirectional_matches(reference, mask, target, solver=solver).tolist()) == [0, 1, 2]
    # Without the look-alike, t's best reference patch is u itself, inside the mask: the pair is kept.
    reference, mask, target = cycle_features(with_lookalike=False)
    kept = bidirectional_matches(reference, mask, target, solver=solver)
    assert sorted(kept.tolist()) == [0, 1, 2, 7]
    assert bidirectional_matches(reference, torch.zeros(3, 3, dtype=torch.bool), target).numel() == 0


def test_assignment_solvers_are_one_to_one_and_the_fallback_needs_no_scipy(monkeypatch):
    torch.manual_seed(0)
    similarity = torch.rand(5, 7)
    for solver in ("hungarian", "greedy"):
        rows, cols = linear_assignment(similarity, solver)
        assert rows.tolist() == list(range(5)) and len(set(cols.tolist())) == 5
    hungarian_total = similarity[linear_assignment(similarity, "hungarian")].sum()
    assert hungarian_total >= similarity[linear_assignment(similarity, "greedy")].sum() - 1e-6
    diagonal = torch.eye(4) + 0.1  # each row's best column is distinct: greedy is optimal too
    assert linear_assignment(diagonal, "greedy")[1].tolist() == [0, 1, 2, 3]
    monkeypatch.setattr(matcher_module, "have_scipy", lambda: False)
    reference, mask, target = cycle_features(with_lookalike=True)
    assert sorted(bidirectional_matches(reference, mask, target).tolist()) == [0, 1, 2]
    with pytest.raises(ValueError, match="solver"):
        linear_assignment(similarity, "auction")


def test_bidirectional_mode_segments_the_prompted_region():
    reference = colour_image({RED: [(2, 1, 5, 4)], GREEN: [(5, 5, 8, 8)]})
    target = colour_image({RED: [(0, 4, 2, 8)], GREEN: [(3, 3, 5, 5)], BLUE: [(6, 0, 8, 2)]})
    model = VisualPromptMatcher(tiny_config(matching="bidirectional"))
    [mask] = model.predict_masks([reference], [BoxPrompt(P, 2 * P, 4 * P, 5 * P)], [target], feature_fn=ONE_HOT)
    assert iou(mask, region([(0, 4, 2, 8)])) > 0.85

    # Regression: an empty prompt in the memory (reference_memory takes any mask) failed inside torch's amax in
    # bidirectional mode; both modes now say which reference.
    memory = model.reference_memory([reference, reference], [np.ones((SIZE, SIZE)), np.zeros((SIZE, SIZE))],
                                    feature_fn=ONE_HOT)
    for matching in MATCHING_MODES:
        model.config.matching = matching
        with pytest.raises(ValueError, match="reference 1 has no foreground patch: its prompt is empty"):
            model.segment_with_memory(memory, [target], feature_fn=ONE_HOT)

# --- tiny DINOv2 end to end, config, saving -------------------------------------------------------------------

def test_tiny_dinov2_runs_end_to_end_at_each_targets_size(random_matcher):
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    targets = [rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), rng.integers(0, 256, (90, 33, 3), dtype=np.uint8)]
    scores = random_matcher.segment([reference], ["box:10,5,40,30"], targets)
    assert [s.shape for s in scores] == [(40, 60), (90, 33)]
    assert all(s.dtype == np.float32 and np.isfinite(s).all() and np.abs(s).max() <= 2 + 1e-5 for s in scores)
    masks = random_matcher.predict_masks([reference, reference], ["point:20,20", "scribble:5,5;60,40"], targets,
                                         threshold=-3.0)
    assert [m.shape for m in masks] == [(40, 60), (90, 33)] and all(m.dtype == bool and m.all() for m in masks)
    bidirectional = VisualPromptMatcher(tiny_config(matching="bidirectional"))
    bidirectional.load_state_dict(random_matcher.state_dict())
    assert [s.shape for s in bidirectional.segment([reference], [BoxPrompt(0, 0, 30, 30)], targets)] == [
        (40, 60), (90, 33)]


def test_features_are_the_chosen_block_before_the_final_norm(random_matcher):
    pixel_values = torch.randn(1, 3, 28, 42)
    features = random_matcher.features(pixel_values)
    encoder = random_matcher.backbone.encoder
    with torch.no_grad():
        hidden = encoder(pixel_values, output_hidden_states=True).hidden_states
    expected = hidden[2][:, 1:].reshape(1, 2, 3, 32).permute(0, 3, 1, 2)  # block 2 of 2, pre-norm
    torch.testing.assert_close(features, expected)
    normed = VisualPromptMatcher(tiny_config(feature_layer_norm=True, feature_layer=1))
    normed.load_state_dict(random_matcher.state_dict())
    first = encoder.layernorm(hidden[1])[:, 1:].reshape(1, 2, 3, 32).permute(0, 3, 1, 2)
    torch.testing.assert_close(normed.features(pixel_values), first.detach())
    assert not any(p.requires_grad for p in random_matcher.parameters())


def test_config_defaults_and_errors():
    from dsunet_hf import Dinov2SegConfig, DSUNetConfig

    config = VisualPromptMatcherConfig()
    assert config.dino_backbone_repo_id == DSUNetConfig().dino_backbone_repo_id == "facebook/dinov2-large"
    assert Dinov2SegConfig().backbone_repo_id == config.dino_backbone_repo_id
    assert (config.image_size, config.feature_layer, config.feature_layer_norm) == (518, -1, False)
    assert config.background_prototype and config.matching == "prototype" and config.sam_repo_id is None
    assert config.score_threshold == 0.0
    assert VisualPromptMatcherConfig(dino_preset="base").dino_backbone_repo_id == "facebook/dinov2-base"
    assert tiny_config(background_prototype=False).score_threshold == 0.5
    assert tiny_config(threshold=0.2).score_threshold == 0.2
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        tiny_config(image_size=100)
    with pytest.raises(ValueError, match="matching must be one of"):
        tiny_config(matching="nearest")
    with pytest.raises(ValueError, match="feature_layer 3 is out of range for a 2-block"):
        tiny_config(feature_layer=3)
    with pytest.raises(ValueError, match="finetune_strategy must be 'frozen'"):
        tiny_config(finetune_strategy="lora")
    # Regression: "3" was a bare TypeError, 2.5 silently 2 points, 1.5 block 1, "28" a TypeError from `%`.
    for field, value in [("sam_num_points", 0), ("sam_num_points", "3"), ("sam_num_points", 2.5),
                         ("image_size", "28")]:
        with pytest.raises(ValueError, match=rf"^{field} must be a positive integer, got {value!r}$"):
            tiny_config(**{field: value})
    with pytest.raises(ValueError, match=r"^feature_layer must be an integer block index \(1..2 or -2..-1\), got 1.5$"):
        tiny_config(feature_layer=1.5)
    with pytest.raises(ValueError, match="needs config.sam_repo_id"):
        VisualPromptMatcher(tiny_config()).sam_model()


def tiny_sam2():
    """A random SAM 2 with 64-px inputs (tiny Hiera, 32-wide FPN / prompt encoder / mask decoder)."""
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2Model, Sam2VisionConfig

    vision = Sam2VisionConfig(
        backbone_config=Sam2HieraDetConfig(**TINY_HIERA, image_size=[64, 64]),
        backbone_channel_list=[128, 64, 32, 16], backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]],
        fpn_hidden_size=32,
    )
    config = Sam2Config(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
    )
    torch.manual_seed(0)
    return Sam2Model(config).eval()


def test_sam_prompts_take_the_best_and_worst_patches_and_the_coarse_box():
    scores = torch.full((4, 4), -1.0)
    scores[1, 2], scores[1, 3], scores[2, 2] = 0.9, 0.5, 0.2  # the match: three patches above 0
    scores[3, 0], scores[0, 0] = -1.5, -1.2  # the two worst
    score_map = np.full((40, 80), -1.0, np.float32)  # the image is 80 wide, 40 high: patches 20 x 10 px
    score_map[12:28, 41:79] = 0.5
    points, labels, box = sam_prompts(scores, score_map, threshold=0.0, num_points=2)
    assert labels.tolist() == [1, 1, 0, 0]
    # Patch (row, col) centre = ((col + 0.5) * 20 - 0.5, (row + 0.5) * 10 - 0.5) in pixel indices.
    assert points.tolist() == [[49.5, 14.5], [69.5, 14.5], [9.5, 34.5], [9.5, 4.5]]
    assert box.tolist() == [41, 12, 78, 27]
    # Nothing above the threshold: still the single best patch as a positive, and no box.
    points, labels, box = sam_prompts(scores, score_map, threshold=1.0, num_points=3)
    assert labels.tolist() == [1, 0, 0, 0] and points[0].tolist() == [49.5, 14.5] and box is None
    assert sam_prompts(scores, score_map, 0.0, 1, use_box=False)[2] is None


def test_sam2_refinement_runs_and_returns_logits_at_each_targets_size():
    reference = colour_image({RED: [(2, 1, 5, 4)]})
    targets = [colour_image({RED: [(0, 4, 2, 8)]})[:100, :90], colour_image({RED: [(5, 0, 8, 3)]}, 2)]
    prompt = [BoxPrompt(P, 2 * P, 4 * P, 5 * P)]
    model = VisualPromptMatcher(tiny_config(sam_repo_id="facebook/sam2.1-hiera-large", sam_num_points=2))
    sam = tiny_sam2()
    model.set_sam_model(sam)
    calls = []
    sam.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
    logits = model.segment([reference], prompt, targets, feature_fn=ONE_HOT)
    assert [m.shape for m in logits] == [(100, 90), (2 * SIZE, 2 * SIZE)]
    assert all(m.dtype == np.float32 and np.isfinite(m).all() for m in logits)
    first = calls[0]
    assert first["pixel_values"].shape == (1, 3, 64, 64) and first["multimask_output"] is False
    assert first["input_points"].shape == (1, 1, 4, 2) and first["input_labels"].tolist() == [[[1, 1, 0, 0]]]
    # The box of the coarse red match, mapped into SAM's 64-px input; the points lie inside the input.
    assert first["input_boxes"].shape == (1, 1, 4) and (first["input_points"] >= -0.5).all()
    assert (first["input_points"] <= 63.5).all()
    masks = model.predict_masks([reference], prompt, targets, feature_fn=ONE_HOT)
    assert [m.shape for m in masks] == [(100, 90), (2 * SIZE, 2 * SIZE)] and masks[0].dtype == bool
    assert all(np.array_equal(m, lg > 0) for m, lg in zip(masks, logits))  # SAM logits thresholded at 0
    coarse = model.segment([reference], prompt, targets, feature_fn=ONE_HOT, refine=False)
    plain = VisualPromptMatcher(tiny_config()).segment([reference], prompt, targets, feature_fn=ONE_HOT)
    assert all(np.array_equal(a, b) for a, b in zip(coarse, plain))
    assert "_sam_model" not in dict(model.named_modules()) and not any("sam" in k for k in model.state_dict())


def test_prompt_count_must_match_references(random_matcher):
    image = np.zeros((28, 28, 3), np.uint8)
    with pytest.raises(ValueError, match="one prompt per reference image, got 2 references and 1 prompts"):
        random_matcher.segment([image, image], ["box:0,0,5,5"], [image])
    with pytest.raises(ValueError, match="mask is empty"):
        random_matcher.segment([image], [np.zeros((28, 28))], [image])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_threshold_that_is_not_a_finite_number_is_refused(bad):
    # Regression: threshold=nan compared False everywhere and gave empty masks, silently.
    with pytest.raises(ValueError, match=r"^threshold must be a finite number, got"):
        VisualPromptMatcher(tiny_config(threshold=bad))
    with pytest.raises(ValueError, match=r"^threshold must be a finite number, got 'abc'"):
        tiny_config(threshold="abc")  # was float()'s message, naming no field
    reference = colour_image({RED: [(2, 1, 5, 4)]})
    with pytest.raises(ValueError, match=r"^threshold must be a finite number, got"):
        VisualPromptMatcher(tiny_config()).predict_masks([reference], ["box:14,28,56,70"], [reference],
                                                          feature_fn=ONE_HOT, threshold=bad)


@pytest.mark.parametrize("value", [np.float32(0.25), np.int64(0), torch.tensor(0.25), 1])
def test_a_threshold_given_as_a_numpy_or_tensor_number_is_taken(value):
    # Regression: the finite-number check refused np.float32(0.25) ("must be a finite number"), which float() took.
    assert tiny_config(threshold=value).threshold == float(value)
    reference = colour_image({RED: [(2, 1, 5, 4)]})
    matcher = VisualPromptMatcher(tiny_config())
    masks = matcher.predict_masks([reference], ["box:14,28,56,70"], [reference], feature_fn=ONE_HOT, threshold=value,
                                  batch_size=np.int64(2))  # was refused too
    [score] = matcher.segment([reference], ["box:14,28,56,70"], [reference], feature_fn=ONE_HOT)
    # The threshold given, not the default 0: at 0.25 and 1 the masks are smaller than the default's.
    assert masks[0].dtype == bool and np.array_equal(masks[0], score > float(value))


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_a_batch_size_below_one_or_not_an_integer_is_refused(bad):
    # Regression: batch_size=0 failed inside range() ("arg 3 must not be zero"), 1.5 inside slicing.
    reference = colour_image({RED: [(2, 1, 5, 4)]})
    with pytest.raises(ValueError, match=rf"^batch_size must be a positive integer, got {bad}$"):
        VisualPromptMatcher(tiny_config()).segment([reference], ["box:14,28,56,70"], [reference], feature_fn=ONE_HOT,
                                                   batch_size=bad)


def test_prompt_errors_name_the_prompt_and_the_reference(random_matcher, tmp_path):
    # Regression: predict_masks / segment's prompt errors did not say which of several references they were on.
    from PIL import Image

    image = np.zeros((28, 28, 3), np.uint8)
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "small.jpg")
    with pytest.raises(ValueError, match=r"prompt box:100,100,200,200 on reference .*small\.jpg: box \(100, 100, "
                                         r"200, 200\) lies entirely outside the image of size 60x40"):
        random_matcher.predict_masks([image, tmp_path / "small.jpg"], ["box:0,0,5,5", "box:100,100,200,200"], [image])
    with pytest.raises(ValueError, match=r"prompt mask array 28x28 on references\[0\] \(ndarray\): mask is empty"):
        random_matcher.segment([image], [np.zeros((28, 28))], [image])


def test_config_only_artifact_round_trips(tmp_path, offline_hub):
    torch.manual_seed(1)
    Dinov2Model(Dinov2Config(**TINY_DINO, image_size=518, patch_size=14)).save_pretrained(tmp_path / "dino")
    sha = offline_hub.add("test-org/tiny-dinov2", tmp_path / "dino")
    model = VisualPromptMatcher.from_pretrained_backbones(tiny_config(matching="bidirectional", threshold=0.1))
    assert model.config.dino_backbone_revision == sha  # pinned to the exact commit
    model.save_pretrained(tmp_path / "matcher")
    assert sorted(p.name for p in (tmp_path / "matcher").iterdir()) == ["README.md", "config.json", "preprocessor_config.json"]
    saved = json.loads((tmp_path / "matcher" / "config.json").read_text())
    assert saved["model_type"] == "visual_prompt_matcher" and saved["dino_backbone_revision"] == sha

    loaded = VisualPromptMatcher.from_pretrained(tmp_path / "matcher")
    for name in ("dino_backbone_repo_id", "dino_backbone_revision", "image_size", "feature_layer", "matching",
                 "threshold", "background_prototype", "dino_config", "sam_repo_id"):
        assert getattr(loaded.config, name) == getattr(model.config, name), name
    pixel_values = torch.randn(1, 3, 42, 28)
    assert torch.equal(loaded.features(pixel_values), model.features(pixel_values))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    # Config fields can be overridden at load time, the backbone taken from a local folder.
    local = VisualPromptMatcher.from_pretrained(tmp_path / "matcher", matching="prototype",
                                                dino_backbone_repo_id=str(tmp_path / "dino"))
    assert local.config.matching == "prototype"
    assert torch.equal(local.features(pixel_values), model.features(pixel_values))
    # A self-contained copy loads without the backbone repo.
    model.save_pretrained(tmp_path / "full", include_backbone=True)
    full = VisualPromptMatcher.from_pretrained(tmp_path / "full", dino_backbone_repo_id="test-org/absent")
    assert torch.equal(full.features(pixel_values), model.features(pixel_values))
