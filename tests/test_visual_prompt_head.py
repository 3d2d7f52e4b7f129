"""Trained in-context head: prompt encoder masking, prompt-independent proposals, losses, episodes, evaluation,
training through the shared loop, and Hub round trips."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModel, Dinov2Config, Dinov2Model

import dsunet_hf  # noqa: F401  (registers the Auto classes)
from dsunet_hf.data import load_segmentation_dataset
from dsunet_hf.models.visual_prompt import (
    VisualPromptConfig,
    VisualPromptEpisodes,
    VisualPromptForSegmentation,
    VisualPromptOutput,
    collate_visual_prompt,
    evaluate_visual_prompt,
    evaluation_episodes,
    index_classes,
    prompt_mask_from_region,
)
from dsunet_hf.models.visual_prompt.modeling_visual_prompt import (
    dice_loss,
    pairwise_mask_cost,
    sigmoid_focal_loss,
)
from dsunet_hf.prompts import PointPrompt

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

TINY_DINO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8,
                 image_size=64)
SIDE = 64
COLOURS = {1: (230, 40, 40), 2: (40, 200, 60), 3: (50, 80, 230), 4: (230, 220, 40)}


def tiny_config(**overrides) -> VisualPromptConfig:
    fields = dict(dino_preset="small", dino_config=TINY_DINO, image_size=SIDE, hidden_size=32, num_attention_heads=4,
                  intermediate_size=64, num_decoder_layers=2, num_queries=6, projection_dim=16,
                  dino_backbone_repo_id="test-org/tiny-dinov2")
    fields.update(overrides)
    return VisualPromptConfig(**fields)


def tiny_model(**overrides) -> VisualPromptForSegmentation:
    torch.manual_seed(0)
    return VisualPromptForSegmentation(tiny_config(**overrides)).eval()


def write_label_dataset(folder, count=8, seed=0):
    """Images with two of four flat-colour squares each (one per half, never overlapping); label maps
    0 = background, 1..4 = colour."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        image = np.full((48, 56, 3), 128, np.uint8)
        labels = np.zeros((48, 56), np.uint8)
        for half, value in enumerate(rng.choice([1, 2, 3, 4], 2, replace=False)):
            top, left = rng.integers(0, 28), 28 * half + rng.integers(0, 8)
            image[top : top + 20, left : left + 20] = COLOURS[int(value)]
            labels[top : top + 20, left : left + 20] = value
        Image.fromarray(image).save(folder / "images" / f"{index:04d}.png")
        Image.fromarray(labels).save(folder / "masks" / f"{index:04d}.png")
    (folder / "id2label.json").write_text(json.dumps({"0": "background", "1": "red", "2": "green", "3": "blue",
                                                      "4": "yellow"}))
    return folder


# --- configuration and size ------------------------------------------------------------------------------

def test_full_size_head_counts_exactly_and_the_backbone_is_dinov2_large():
    with torch.device("meta"):
        model = VisualPromptForSegmentation(VisualPromptConfig())
    config = model.config
    assert config.feature_layers == [6, 12, 18, 24] and config.dino_backbone_repo_id == "facebook/dinov2-large"
    d, big, levels, ffn, queries = 256, 1024, 4, 2048, 100
    attention = 4 * d * d + 4 * d
    expected = (
        levels * (big * d + d + 2 * d)                                      # level projections + LayerNorms
        + 2 * d + levels * (attention + 2 * d)                              # prompt encoder
        + 2 * queries * d + 2 * d                                           # proposal / prompt query embeddings
        + 6 * (2 * attention + 3 * 2 * d + d * ffn + ffn + ffn * d + d)     # decoder layers
        + 2 * d                                                             # decoder norm
        + (d * 64 * 4 + 64) + 2 * 64 + (64 * 32 * 4 + 32)                   # mask-feature upsampler
        + (d * d + d) * 2 + d * 32 + 32                                     # mask embedding MLP
        + d * 512                                                           # prompt classifier projection
    )
    summary = model.num_parameters_summary()
    assert summary["trainable"] == expected == 11_976_448
    assert summary["total"] - summary["trainable"] == 304_368_640  # DINOv2 ViT-L/14, frozen


def test_config_errors_and_defaults():
    assert VisualPromptConfig(dino_preset="small", dino_config={"num_hidden_layers": 2}).feature_layers == [1, 2]
    with pytest.raises(ValueError, match="no adapters"):
        tiny_config(finetune_strategy="adapter")
    with pytest.raises(ValueError, match="inference_mode"):
        tiny_config(inference_mode="best")
    with pytest.raises(ValueError, match="out of range"):
        tiny_config(feature_layers=[3])
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny_config(image_size=60)
    # Regression: a 0-wide projection built a model scoring every proposal 0; a negative weight trained uphill.
    # A string was a bare TypeError (a ZeroDivisionError for 0 heads), 2.5 queries silently 2.
    for field, value in [("projection_dim", 0), ("intermediate_size", 0), ("mask_bce_weight", -1.0),
                         ("match_weight", float("nan")), ("score_weight", "1"), ("num_queries", 2.5),
                         ("num_decoder_layers", "2"), ("num_attention_heads", 0), ("hidden_size", 32.0)]:
        with pytest.raises(ValueError, match=rf"^{field} must be .*, got {value!r}$"):
            tiny_config(**{field: value})
    with pytest.raises(ValueError, match=r"^feature layer must be an integer block index .*, got 1.5$"):
        tiny_config(feature_layers=[1.5])
    lora = VisualPromptForSegmentation(tiny_config(finetune_strategy="lora"))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad and n.startswith("backbone.")]
    assert trainable and all("lora_" in n for n in trainable)


# --- prompt encoder ----------------------------------------------------------------------------------------

def test_prompt_token_sees_only_the_prompted_patches_and_an_empty_prompt_sees_everything():
    model = tiny_model()
    torch.manual_seed(1)
    levels = [torch.randn(1, 16, 32) for _ in range(2)]
    prompted = torch.zeros(1, 16, dtype=torch.bool)
    prompted[0, [2, 5, 6]] = True
    changed = [level.clone() for level in levels]
    for level in changed:
        level[0, ~prompted[0]] += torch.randn(13, 32)  # everything outside the prompt
    encoder = model.prompt_encoder
    with torch.no_grad():
        assert torch.allclose(encoder(levels, prompted), encoder(changed, prompted), atol=1e-6)
        empty = torch.zeros_like(prompted)
        assert not torch.allclose(encoder(levels, empty), encoder(changed, empty), atol=1e-3)
        everything = torch.ones_like(prompted)
        assert torch.allclose(encoder(levels, empty), encoder(levels, everything), atol=1e-6)


def test_references_average_and_proposals_do_not_depend_on_the_prompt():
    model = tiny_model()
    torch.manual_seed(2)
    refs = torch.randn(1, 2, 3, SIDE, SIDE)
    masks = torch.zeros(1, 2, SIDE, SIDE)
    masks[0, 0, :20, :20] = 1
    masks[0, 1, 30:, 10:40] = 1
    with torch.no_grad():
        both = model.encode_prompt(refs, masks)
        single = [model.encode_prompt(refs[:, i], masks[:, i]) for i in range(2)]
        assert torch.allclose(both, (single[0] + single[1]) / 2, atol=1e-6)
        valid = torch.tensor([[True, False]])
        assert torch.allclose(model.encode_prompt(refs, masks, valid), single[0], atol=1e-6)
        target = torch.randn(1, 3, SIDE, SIDE)
        first, second = model(target, prompt_embeddings=single[0]), model(target, prompt_embeddings=single[1])
    assert torch.equal(first.proposal_logits, second.proposal_logits)
    assert not torch.allclose(first.proposal_scores, second.proposal_scores)
    assert not torch.allclose(first.logits, second.logits)
    assert first.logits.shape == (1, 1, SIDE, SIDE) and first.proposal_logits.shape == (1, 6, 32, 32)


def test_concept_logits_modes():
    model = tiny_model()
    with torch.no_grad():
        output = model(torch.randn(2, 3, SIDE, SIDE), torch.randn(2, 3, SIDE, SIDE), torch.ones(2, SIDE, SIDE))
        generic = model.concept_logits(output, "generic")
        expected = (output.proposal_scores.sigmoid()[..., None, None] * output.proposal_logits.sigmoid()).amax(1)
        assert torch.allclose(generic.sigmoid()[:, 0], expected, atol=1e-5)
        referring = model.concept_logits(output, "referring")
        best = output.proposal_scores.argmax(1)
        assert torch.equal(referring[1, 0], output.proposal_logits[1, best[1]])
        assert model.concept_logits(output, "prompt") is output.logits
        with pytest.raises(ValueError, match="mode"):
            model.concept_logits(output, "other")



def test_generic_logits_of_a_bf16_model_stay_finite():
    """bf16 rounds the clamp's 1 - 1e-6 to 1: a confident proposal gave logit +inf, NaN once resized (a hole)."""
    saturated = VisualPromptOutput(proposal_scores=torch.full((1, 3), 20.0, dtype=torch.bfloat16),
                                   proposal_logits=torch.full((1, 3, 4, 4), 20.0, dtype=torch.bfloat16))
    logits = VisualPromptForSegmentation.concept_logits(saturated, "generic")
    assert torch.isfinite(logits).all() and logits.min() > 10
    assert not F.interpolate(logits.float(), size=(7, 9), mode="bilinear").isnan().any()

# --- losses ------------------------------------------------------------------------------------------------

def test_loss_pieces_match_their_definitions():
    torch.manual_seed(3)
    logits, targets = torch.randn(5, 40), (torch.rand(3, 40) > 0.5).float()
    cost = pairwise_mask_cost(logits, targets)
    for i in range(5):
        for j in range(3):
            bce = F.binary_cross_entropy_with_logits(logits[i], targets[j])
            assert torch.isclose(cost[i, j], bce + dice_loss(logits[i : i + 1], targets[j : j + 1]), atol=1e-5)
    scores, labels = torch.randn(7), torch.tensor([0, 1, 0, 0, 0, 0, 0.0])
    p = scores.sigmoid()
    p_t = torch.where(labels == 1, p, 1 - p)
    alpha = torch.where(labels == 1, 0.25, 0.75)
    focal = (alpha * (1 - p_t) ** 2 * -torch.log(p_t)).sum()
    assert torch.isclose(sigmoid_focal_loss(scores, labels), focal, atol=1e-5)
    perfect = torch.full((1, 40), -20.0)
    perfect[0, targets[0].bool()] = 20.0
    assert dice_loss(perfect, targets[:1]) < 1e-3


def test_a_dice_only_loss_is_finite():
    """mask_bce_weight=0 divided the proposals' Dice term by it: a NaN loss."""
    model = tiny_model(mask_bce_weight=0.0).train()
    segments = torch.zeros(1, 2, SIDE, SIDE)
    segments[0, 0, :20, :20] = segments[0, 1, 30:, 30:] = 1
    pixels = torch.randn(1, 3, SIDE, SIDE)
    loss = model(pixels, pixels, segments[:, 0], labels=segments[:, 0], target_segments=segments,
                 segment_is_prompted=torch.tensor([[1, 0]])).loss
    assert torch.isfinite(loss) and loss > 0


def test_training_loss_backpropagates_to_every_head_parameter_only():
    model = tiny_model().train()
    labels = torch.zeros(2, SIDE, SIDE)
    labels[:, 10:30, 10:30] = 1
    segments = torch.stack([labels, 1 - labels], 1)
    flags = torch.tensor([[1, 0], [1, -1]])
    output = model(torch.randn(2, 3, SIDE, SIDE), torch.randn(2, 1, 3, SIDE, SIDE), labels[:, None],
                   labels=labels, target_segments=segments, segment_is_prompted=flags)
    output.loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith("backbone."):
            assert not parameter.requires_grad and parameter.grad is None, name
        else:
            assert parameter.grad is not None, name
    prompt_only = model(torch.randn(2, 3, SIDE, SIDE), torch.randn(2, 1, 3, SIDE, SIDE), labels[:, None], labels=labels)
    assert torch.isfinite(prompt_only.loss)
    with pytest.raises(ValueError, match="segment_is_prompted"):
        model(torch.randn(2, 3, SIDE, SIDE), torch.randn(2, 1, 3, SIDE, SIDE), labels[:, None], labels=labels,
              target_segments=segments)


def test_the_head_learns_to_copy_a_prompt_within_a_few_steps():
    """Self-referring on one image: the loss falls by more than half in 40 steps (the optimiser reaches it)."""
    model = tiny_model(num_decoder_layers=1).train()
    torch.manual_seed(4)
    image = torch.randn(1, 3, SIDE, SIDE)
    labels = torch.zeros(1, SIDE, SIDE)
    labels[:, 8:40, 16:48] = 1
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(40):
        loss = model(image, image[:, None], labels[:, None], labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# --- episodes and evaluation -------------------------------------------------------------------------------

def test_prompt_kinds_are_made_from_the_region():
    region = np.zeros((40, 50), bool)
    region[10:30, 5:25] = True
    region[12:14, 30:45] = True  # a thin second part
    rng = random.Random(0)
    assert np.array_equal(prompt_mask_from_region(region, "mask", rng), region)
    box = prompt_mask_from_region(region, "box", rng)
    assert box[10:30, 5:45].all() and box.sum() == 20 * 40
    scribble = prompt_mask_from_region(region, "scribble", rng)
    assert scribble.any() and not (scribble & ~region).any()
    point = prompt_mask_from_region(region, "point", rng)
    assert point.any() and (point & region).any() and point.sum() < 60
    # A click on a region pixel is the disk centred on that pixel (pixel (x, y)'s centre is (x + 0.5, y + 0.5), as
    # prompts.py documents): symmetric around it, not half a pixel down-right.
    dot = np.zeros((40, 40), bool)
    dot[7, 11] = True
    click = prompt_mask_from_region(dot, "point", rng)  # radius 2
    rows, cols = np.nonzero(click)
    assert click[7, 11] and click.sum() == 13 and (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 9, 9, 13)
    with pytest.raises(ValueError, match="empty region"):
        prompt_mask_from_region(np.zeros((4, 4), bool), "mask", rng)
    with pytest.raises(ValueError, match="unknown prompt kind"):
        prompt_mask_from_region(region, "lasso", rng)


def test_episodes_are_reproducible_and_label_the_prompted_class(tmp_path):
    dataset = load_segmentation_dataset(write_label_dataset(tmp_path / "data"))
    model = tiny_model()
    episodes = VisualPromptEpisodes(dataset, model.default_image_processor(), seed=3, num_references=2,
                                    negative_ratio=0.0)
    assert len(episodes) == 8 and all(len(c) == 2 for c in episodes.classes)
    first = episodes[5]
    assert torch.equal(first["reference_masks"], episodes[5]["reference_masks"])
    episodes.epoch = 1
    assert any(not torch.equal(episodes[i]["labels"], first["labels"]) or i != 5 for i in range(8))
    assert first["pixel_values"].shape == (3, SIDE, SIDE) and first["reference_pixel_values"].shape == (2, 3, SIDE, SIDE)
    assert first["reference_masks"].shape == (2, SIDE, SIDE) and set(first["reference_masks"].unique().tolist()) <= {0.0, 1.0}
    flags = first["segment_is_prompted"]
    assert flags.sum() == 1 and torch.allclose(first["target_segments"][flags.argmax()], first["labels"])
    batch = collate_visual_prompt([first, episodes[1], episodes[2]])
    assert batch["target_segments"].shape == (3, 2, SIDE, SIDE) and batch["labels"].shape == (3, SIDE, SIDE)
    negatives = VisualPromptEpisodes(dataset, model.default_image_processor(), seed=3, negative_ratio=1.0,
                                     classes=episodes.classes)
    for item in range(4):
        negative = negatives[item]
        assert negative["labels"].sum() == 0 and negative["segment_is_prompted"].sum() == 0
        assert negative["reference_masks"].sum() > 0  # the prompt shows the class on another image
    with pytest.raises(ValueError, match="prompt_kinds"):
        VisualPromptEpisodes(dataset, model.default_image_processor(), prompt_kinds=["lasso"])


def test_evaluation_episodes_cover_every_class_round_robin():
    classes = [(1, 2), (1,), (2, 3), (1,), (4,)]
    episodes = evaluation_episodes(classes, shots=1, seed=0)
    assert {(t, c) for t, c, _ in episodes} == {(0, 1), (0, 2), (1, 1), (2, 2), (3, 1)}  # 3 and 4: single images
    assert all(t not in refs for t, _, refs in episodes)
    assert [c for _, c, _ in episodes[:2]] == [1, 2]  # round robin over classes
    assert len(evaluation_episodes(classes, max_queries=3)) == 3
    fallback = evaluation_episodes(classes, self_reference_fallback=True)
    assert (4, 4, [4]) in fallback and (2, 3, [2]) in fallback
    # Regression: --shots 0 prompted the model with no reference ("need one prompt per reference image, got 0
    # references"), --shots -1 failed in random.sample.
    for shots in (0, -1):
        with pytest.raises(ValueError, match=rf"shots \(--shots\) must be at least 1, got {shots}"):
            evaluation_episodes(classes, shots=shots)


class _Oracle:
    """predict_masks returning the truth (or nothing / everything) from the target's own label map."""

    def __init__(self, folder, mode):
        self.folder, self.mode = folder, mode

    def predict_masks(self, references, prompts, targets, threshold=None):
        colours = np.asarray(references[0])[np.asarray(prompts[0], bool)]
        values, counts = np.unique(colours, axis=0, return_counts=True)
        colour = values[counts.argmax()]  # a box may cover a corner of an overlapping square
        target = np.asarray(targets[0])
        if self.mode == "empty":
            return [np.zeros(target.shape[:2], bool)]
        if self.mode == "everything":
            return [np.ones(target.shape[:2], bool)]
        return [(target == colour).all(-1)]


def test_evaluation_scores_oracles_exactly(tmp_path):
    folder = write_label_dataset(tmp_path / "data")
    dataset = load_segmentation_dataset(folder)
    names = json.loads((folder / "id2label.json").read_text())
    perfect = evaluate_visual_prompt(_Oracle(folder, "truth"), dataset, id2label=names)
    assert perfect["mIoU"] == perfect["query_mIoU"] == perfect["FB-IoU"] == 1.0
    assert set(perfect["per_class_iou"]) <= {"red", "green", "blue", "yellow"}
    assert perfect["counts"]["num_queries"] == sum(len(c) for c in index_classes(dataset))
    # Counts apart from the scores (reports and cards ranked them "higher is better", the card as validation results).
    assert not {"num_queries", "num_classes", "num_absent_queries"} & set(perfect)
    assert evaluate_visual_prompt(_Oracle(folder, "truth"), dataset, absent_queries=5)["absent_area"] == 0.0
    assert evaluate_visual_prompt(_Oracle(folder, "everything"), dataset, absent_queries=5)["absent_area"] == 1.0
    assert evaluate_visual_prompt(_Oracle(folder, "empty"), dataset)["mIoU"] == 0.0
    everything = evaluate_visual_prompt(_Oracle(folder, "everything"), dataset)
    assert 0.1 < everything["mIoU"] < 0.25  # one 20x20 square of a 48x56 image
    assert evaluate_visual_prompt(_Oracle(folder, "truth"), dataset, prompt_kind="box")["mIoU"] == 1.0


def test_segment_returns_logits_at_each_targets_size_and_checks_prompts(tmp_path):
    model = tiny_model()
    reference = np.zeros((40, 52, 3), np.uint8)
    maps = model.segment([reference], ["box:2,2,20,20"], [np.zeros((30, 70, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)])
    assert [m.shape for m in maps] == [(30, 70), (64, 64)] and maps[0].dtype == np.float32
    masks = model.predict_masks([reference, reference], ["box:2,2,20,20", "point:30,30"], [reference], mode="generic")
    assert masks[0].dtype == bool and masks[0].shape == (40, 52)
    # One reference, prompt and target alone, as the matcher takes them (was: the array's 40 rows as references).
    [alone] = model.predict_masks(reference, "box:2,2,20,20", reference, mode="generic")
    assert np.array_equal(alone, model.predict_masks([reference], ["box:2,2,20,20"], [reference], mode="generic")[0])
    with pytest.raises(ValueError, match="one prompt per reference"):
        model.segment([reference], [], [reference])
    with pytest.raises(ValueError, match="entirely outside"):
        model.segment([reference], ["box:100,2,200,20"], [reference])
    # Regression: a NaN threshold gave empty masks silently, "abc" float()'s message; batch size 0 failed in range().
    for kwargs, message in [({"threshold": float("nan")}, "threshold must be a finite number, got nan"),
                            ({"threshold": "abc"}, "threshold must be a finite number, got 'abc'"),
                            ({"batch_size": 0}, "batch_size must be a positive integer, got 0")]:
        with pytest.raises(ValueError, match=f"^{message}$"):
            model.predict_masks([reference], ["box:2,2,20,20"], [reference], **kwargs)


def test_predict_masks_prompt_errors_name_the_prompt_and_the_reference(tmp_path):
    # Regression: a prompt off one of several references did not say which reference (the CLI's did).
    model = tiny_model()
    Image.fromarray(np.zeros((400, 600, 3), np.uint8)).save(tmp_path / "big.jpg")
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "small.jpg")
    with pytest.raises(ValueError, match=r"prompt box:100,100,200,200 on reference .*small\.jpg: box \(100, 100, "
                                         r"200, 200\) lies entirely outside the image of size 60x40"):
        model.predict_masks([tmp_path / "big.jpg", tmp_path / "small.jpg"], ["box:100,100,200,200"] * 2,
                            [tmp_path / "big.jpg"])
    array = np.zeros((40, 60, 3), np.uint8)  # not a path: named by its index
    with pytest.raises(ValueError, match=r"prompt PointPrompt\(.*\) on references\[1\] \(ndarray\): "
                                         r"point prompt: point\(s\) \(70, 5\) off the image"):
        model.segment([array, array], ["box:1,1,5,5", PointPrompt(70, 5)], [array])


def test_reference_memory_tokens_average_to_the_prompt_and_found_masks_keep_their_core_patches():
    model = tiny_model()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8) for _ in range(2)]
    masks = [np.zeros((SIDE, SIDE), bool) for _ in range(2)]
    masks[0][8:24, 8:24], masks[1][40:48, 0:30] = True, True
    memory = model.reference_memory(images, masks)
    assert len(memory) == 2 and memory[0].shape == (32,)
    # Regression: an empty mask silently gave a token of the whole reference image (the prompt encoder's fallback).
    with pytest.raises(ValueError, match="reference 1 has no foreground patch: its prompt is empty"):
        model.reference_memory(images, [masks[0], np.zeros((SIDE, SIDE), bool)])
    assert torch.allclose(torch.stack(memory).mean(0, keepdim=True), model.prompt_from_references(images, masks))
    target = [images[1]]
    assert np.allclose(model.segment_with_memory(memory, target)[0], model.segment(images, masks, target)[0], atol=1e-6)
    # The same token as the training path (encode_prompt on the input-size mask) and from shared encodings.
    pixel_values = model._pixel_values([Image.fromarray(images[0])])
    assert torch.allclose(model.encode_prompt(pixel_values, torch.from_numpy(masks[0])[None])[0], memory[0], atol=1e-6)
    encodings = model.encode_frames(images)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.reference_memory(images, masks, encodings=encodings),
                                                                  memory))
    assert np.allclose(model.segment_with_memory(memory, target, encodings=encodings[1:])[0],
                       model.segment_with_memory(memory, target)[0], atol=1e-5)
    # min_coverage: a mask reaching 3 px into the next 8-px patches gives the token of its two covered patches only;
    # a 2-px line covers no patch by half and keeps every patch it touches.
    bleeding, core, line = (np.zeros((SIDE, SIDE), bool) for _ in range(3))
    bleeding[8:19, 8:24] = core[8:16, 8:24] = line[20:22, 8:24] = True
    [token_core] = model.reference_memory(images[:1], [core])
    [token_bleeding] = model.reference_memory(images[:1], [bleeding], min_coverage=0.5)
    assert torch.allclose(token_bleeding, token_core, atol=1e-6)
    assert not torch.allclose(model.reference_memory(images[:1], [bleeding])[0], token_core, atol=1e-4)
    assert torch.equal(model.reference_memory(images[:1], [line], min_coverage=0.5)[0],
                       model.reference_memory(images[:1], [line])[0])
    with pytest.raises(ValueError, match="at least one encoded reference"):
        model.segment_with_memory([], target)


# --- training and the Hub ----------------------------------------------------------------------------------

def test_train_command_runs_resumes_and_the_artifact_loads(tmp_path):
    from dsunet_hf.training import main as train_main

    folder = write_label_dataset(tmp_path / "data", count=10)
    overrides = json.dumps({"dino_preset": "small", "dino_config": TINY_DINO, "image_size": SIDE, "hidden_size": 32,
                            "num_attention_heads": 4, "intermediate_size": 64, "num_decoder_layers": 2,
                            "num_queries": 6, "projection_dim": 16})
    common = ["--model", "visual-prompt", "--train-data", str(folder), "--backbone", "random", "--output-dir",
              str(tmp_path / "out"), "--max-steps", "4", "--batch-size", "2", "--eval-steps", "2",
              "--report-to", "none", "--progress", "false", "--config-overrides", overrides, "--validation-ratio", "0.2"]
    assert train_main([*common, "--stop-after-steps", "2"]) == 0
    assert train_main([*common, "--resume-from-checkpoint", "latest"]) == 0
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert any("val/mIoU" in r for r in records)
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert summary["global_step"] == 4 and "mIoU" in summary["best_metrics"]
    model = AutoModel.from_pretrained(tmp_path / "out" / "model")
    assert isinstance(model, VisualPromptForSegmentation)
    config = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert config["id2label"]["1"] == "red"
    images = sorted((folder / "images").iterdir())
    masks = model.predict_masks([images[0]], [sorted((folder / "masks").iterdir())[0]], images[1:3])
    assert [m.shape for m in masks] == [(48, 56), (48, 56)]


@pytest.mark.parametrize("strategy", ["frozen", "lora"])
def test_push_and_pull_through_the_offline_hub(tmp_path, offline_hub, strategy):
    torch.manual_seed(1)
    Dinov2Model(Dinov2Config(**TINY_DINO)).save_pretrained(tmp_path / "dino")
    offline_hub.add("test-org/tiny-dinov2", tmp_path / "dino")
    # lora: the plain DINOv2 checkpoint loads into the LoRA-wrapped linears.
    model = VisualPromptForSegmentation.from_pretrained_backbones(tiny_config(finetune_strategy=strategy))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:  # the head, and LoRA under `lora`
                parameter.add_(torch.randn_like(parameter) * 0.05)
    model.eval().push_to_hub("me/visual-prompt-tiny", metrics={"mIoU": 0.5}, dataset_names=["shapes"])
    snapshot = next((offline_hub.repo_dir("me/visual-prompt-tiny") / "snapshots").iterdir())
    card = (snapshot / "README.md").read_text()
    assert "test-org/tiny-dinov2" in card and "li2024dinov" in card and "| mIoU | 0.5000 |" in card
    from safetensors import safe_open

    with safe_open(str(snapshot / "model.safetensors"), "pt") as handle:
        backbone_keys = [key for key in handle.keys() if key.startswith("backbone.")]
    assert all("lora_" in key for key in backbone_keys) and bool(backbone_keys) == (strategy == "lora")
    pulled = AutoModel.from_pretrained("me/visual-prompt-tiny")
    assert pulled.config.dino_backbone_revision == model.config.dino_backbone_revision
    x, ref, mask = torch.randn(2, 3, SIDE, SIDE), torch.randn(2, 1, 3, SIDE, SIDE), torch.ones(2, 1, SIDE, SIDE)
    with torch.no_grad():
        ours, theirs = model(x, ref, mask), pulled(x, ref, mask)
    for name in ("logits", "proposal_logits", "proposal_scores"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name


def test_evaluate_command_scores_a_visual_prompt_model(tmp_path):
    from dsunet_hf.cli import main

    folder = write_label_dataset(tmp_path / "data")
    tiny_model().save_pretrained(tmp_path / "model", include_backbone=True)
    assert main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(folder), "--prompt-kind", "scribble",
                 "--max-samples", "6", "--output-dir", str(tmp_path / "eval"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["info"]["query_counts"]["data"]["num_queries"] == 6 and 0 <= report["results"]["data"]["mIoU"] <= 1
    assert "num_queries" not in report["results"]["data"]
    assert set(report["info"]["per_class_iou"]["data"]) <= {"red", "green", "blue", "yellow"}
    assert report["info"]["prompt_kind"] == "scribble" and "COCO-20i" in report["protocol"]
    binary = tmp_path / "binary"
    (binary / "images").mkdir(parents=True)
    (binary / "masks").mkdir()
    for index in range(3):  # a binary-mask dataset (0/255): no class to prompt
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(binary / "images" / f"{index}.png")
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(binary / "masks" / f"{index}.png")
    with pytest.raises(SystemExit, match=f"{binary}: no evaluation query.*class-index label maps"):
        main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(binary), "--no-progress",
              "--output-dir", str(tmp_path / "eval2")])
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # damaged: was a SafetensorError traceback
    with pytest.raises(SystemExit, match=r"evaluate: .*model\.safetensors"):
        main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(folder), "--no-progress",
              "--output-dir", str(tmp_path / "eval3")])


def test_visual_prompt_demo_runs_end_to_end(tmp_path):
    from dsunet_hf.cli import build_parser
    from dsunet_hf.demo import run_visual_prompt_demo

    args = build_parser().parse_args(["demo", "--task", "visual-prompt"])
    assert args.task == "visual-prompt" and args.max_steps is None and args.output_dir is None
    run_visual_prompt_demo(tmp_path / "demo", max_steps=2, num_images=16, num_test_images=6, image_size=64)
    assert (tmp_path / "demo" / "train" / "model" / "README.md").is_file()
    report = json.loads((tmp_path / "demo" / "evaluation" / "evaluation.json").read_text())
    assert "mIoU" in report["results"]["textured shapes (test)"] and "COCO-20i" in report["protocol"]
    assert "num_queries" not in report["results"]["textured shapes (test)"]  # a count, in the info
    assert report["info"]["query_counts"]["num_queries"] >= 1
    # The trained model's card lists validation scores only (num_queries / num_classes were "results" there).
    card = (tmp_path / "demo" / "train" / "model" / "README.md").read_text()
    assert "mIoU" in card and "num_queries" not in card and "num_classes" not in card
    assert 1 <= len(list((tmp_path / "demo" / "predictions" / "overlays").glob("*.png"))) <= 5
    # The SAM2-UNet demo's options are refused here rather than ignored (a --data folder was silently unused).
    from dsunet_hf.cli import main

    with pytest.raises(SystemExit, match="^demo: --data, --backbone-preset: for --task sam2-unet"):
        main(["demo", "--task", "visual-prompt", "--data", "/no/such/folder", "--backbone-preset", "base"])
    with pytest.raises(SystemExit, match="--max-steps must be >= 1, got 0"):
        main(["demo", "--max-steps", "0"])
