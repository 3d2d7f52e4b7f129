"""Publishing: push -> pull through the offline Hub, Auto classes, the model card."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_SIZE, tiny_sam2_unet_config
from helpers import tiny_hiera, write_transformers_trunk_repo
from safetensors import safe_open
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageSegmentation

from dsunet_hf import Sam2UNetConfig, Sam2UNetForImageSegmentation, SegmentationImageProcessor


@pytest.fixture
def trained_model(offline_hub, tmp_path):
    offline_hub.add("test-org/tiny-hiera", write_transformers_trunk_repo(tmp_path / "trunk", tiny_hiera()))
    model = Sam2UNetForImageSegmentation.from_pretrained_backbones(tiny_sam2_unet_config())
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    return model.eval()


def test_push_then_pull_gives_identical_outputs(trained_model, offline_hub):
    processor = SegmentationImageProcessor(size=TINY_SIZE)
    repo_id = trained_model.push_to_hub(
        "me/sam2unet-test", image_processor=processor, metrics={"S-measure": 0.9123, "MAE": 0.0312},
        dataset_names=["ECSSD"],
    )
    assert repo_id == "me/sam2unet-test" and offline_hub.pushes[-1][0] == repo_id

    snapshot = next((offline_hub.repo_dir(repo_id) / "snapshots").iterdir())
    assert {p.name for p in snapshot.iterdir()} == {
        "config.json", "model.safetensors", "preprocessor_config.json", "README.md"
    }
    with safe_open(str(snapshot / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(trained_model.trainable_state_dict())

    card = (snapshot / "README.md").read_text()
    for expected in ("test-org/tiny-hiera", "S-measure", "0.9123", "ECSSD", "xiong2024sam2unet", "ravi2024sam2",
                     "license: apache-2.0", "adapter", "me/sam2unet-test",
                     'pipeline("image-segmentation", model="me/sam2unet-test")',
                     "dsunet-hf export onnx --model me/sam2unet-test onnx/"):
        assert expected in card, expected

    pulled = AutoModelForImageSegmentation.from_pretrained(repo_id)
    pulled_processor = AutoImageProcessor.from_pretrained(repo_id)
    assert isinstance(pulled, Sam2UNetForImageSegmentation)
    assert isinstance(pulled_processor, SegmentationImageProcessor) and pulled_processor.size == processor.size
    x = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        assert torch.equal(trained_model(x).logits, pulled(x).logits)


def test_save_pretrained_with_push_to_hub_publishes_our_card_and_the_processor(trained_model, offline_hub, tmp_path):
    """transformers' save_pretrained(push_to_hub=True) uploads before our card and processor exist (its generic
    card went up instead); ours uploads the finished folder."""
    processor = SegmentationImageProcessor(size=TINY_SIZE)
    trained_model.save_pretrained(tmp_path / "m", image_processor=processor, push_to_hub=True,
                                  repo_id="me/saved-and-pushed", commit_message="first", private=True)
    assert offline_hub.pushes == [("me/saved-and-pushed", "first")] and offline_hub.private["me/saved-and-pushed"]
    snapshot = next((offline_hub.repo_dir("me/saved-and-pushed") / "snapshots").iterdir())
    assert {p.name for p in snapshot.iterdir()} == {"config.json", "model.safetensors", "preprocessor_config.json",
                                                    "README.md"}
    card = (snapshot / "README.md").read_text()
    assert "xiong2024sam2unet" in card and "Model Card for Model ID" not in card
    assert AutoImageProcessor.from_pretrained("me/saved-and-pushed").size == processor.size


def test_auto_classes_load_a_saved_model(trained_model, tmp_path):
    trained_model.save_pretrained(tmp_path / "m")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "m"), Sam2UNetConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path / "m"), Sam2UNetForImageSegmentation)
    loaded = AutoModelForImageSegmentation.from_pretrained(tmp_path / "m")
    x = torch.randn(1, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        assert torch.equal(trained_model(x).logits, loaded(x).logits)


def test_processor_and_model_work_together(trained_model, tmp_path):
    from PIL import Image

    Image.new("RGB", (90, 70), (200, 30, 30)).save(tmp_path / "red.png")
    processor = SegmentationImageProcessor(size=TINY_SIZE)
    inputs = processor(str(tmp_path / "red.png"))
    with torch.no_grad():
        logits = trained_model(pixel_values=inputs["pixel_values"]).logits
    (labels,) = processor.post_process_semantic_segmentation(logits, target_sizes=inputs["original_sizes"])
    assert labels.shape == (70, 90) and labels.dtype == torch.int64 and set(labels.unique().tolist()) <= {0, 1}
    assert trained_model.config.id2label == {0: "background", 1: "foreground"}


def test_backbone_config_override_at_load_time(trained_model, tmp_path, offline_hub):
    """A user without Hub access points the saved artifact at a local backbone folder holding its trunk; another
    trunk there is refused unless verify_backbone_weights=False."""
    from dsunet_hf import CheckpointMismatchError

    trained_model.save_pretrained(tmp_path / "m")
    same = write_transformers_trunk_repo(tmp_path / "local-trunk", tiny_hiera())
    loaded = Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "m", backbone_repo_id=str(same))
    assert loaded.config.backbone_repo_id == str(same)
    other = write_transformers_trunk_repo(tmp_path / "other-trunk", tiny_hiera(seed=5))
    with pytest.raises(CheckpointMismatchError, match="verify_backbone_weights=False"):
        Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "m", backbone_repo_id=str(other))
    loaded = Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "m", backbone_repo_id=str(other),
                                                          verify_backbone_weights=False)
    assert torch.equal(loaded.backbone.encoder.pos_embed, tiny_hiera(seed=5).pos_embed)


def test_save_pretrained_writes_the_processor_its_card_uses(trained_model, tmp_path):
    """The card's usage (AutoImageProcessor, the pipeline) reads the processor from the saved folder."""
    from PIL import Image
    from transformers import pipeline

    trained_model.save_pretrained(tmp_path / "m")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "m")
    assert isinstance(processor, SegmentationImageProcessor)
    assert processor.to_dict() == trained_model.default_image_processor().to_dict()
    segments = pipeline("image-segmentation", model=str(tmp_path / "m"))(Image.new("RGB", (90, 70), (200, 30, 30)))
    assert {s["label"] for s in segments} <= {"background", "foreground"} and segments[0]["mask"].size == (90, 70)

    SegmentationImageProcessor(size=32).save_pretrained(tmp_path / "m")  # saved there on purpose: kept
    trained_model.save_pretrained(tmp_path / "m")
    assert AutoImageProcessor.from_pretrained(tmp_path / "m").size == {"height": 32, "width": 32}
    trained_model.save_pretrained(tmp_path / "m", image_processor=SegmentationImageProcessor(size=96))  # given: written
    assert AutoImageProcessor.from_pretrained(tmp_path / "m").size == {"height": 96, "width": 96}


def test_push_without_a_processor_keeps_the_one_the_model_was_loaded_with(trained_model, offline_hub):
    trained_model.push_to_hub("me/first", image_processor=SegmentationImageProcessor(size=96))
    AutoModelForImageSegmentation.from_pretrained("me/first").push_to_hub("me/again")
    assert AutoImageProcessor.from_pretrained("me/again").size == {"height": 96, "width": 96}
    trained_model.push_to_hub("me/new")  # built here, loaded from nowhere: the default
    assert AutoImageProcessor.from_pretrained("me/new").to_dict() == trained_model.default_image_processor().to_dict()


@pytest.mark.parametrize("strategy, include_backbone, expected, absent", [
    ("adapter", False, ["**only the trainable part**", "SAM 2 Hiera trunk (frozen)"], ["self-contained"]),
    ("adapter", True, ["**self-contained**", "frozen SAM 2 Hiera trunk (from [`test-org/tiny-hiera`]"],
     ["only the trainable part", "loaded from its own repository"]),
    ("full", False, ["**whole network**", "fine-tuned whole", "started from [`test-org/tiny-hiera`]"],
     ["only the trainable part", "loaded from its own repository", "(frozen)", "a frozen SAM 2"]),
])
def test_card_says_what_the_artifact_holds(offline_hub, tmp_path, strategy, include_backbone, expected, absent):
    offline_hub.add("test-org/tiny-hiera", write_transformers_trunk_repo(tmp_path / "trunk", tiny_hiera()))
    model = Sam2UNetForImageSegmentation.from_pretrained_backbones(tiny_sam2_unet_config(finetune_strategy=strategy))
    model.save_pretrained(tmp_path / "m", include_backbone=include_backbone)
    card = (tmp_path / "m" / "README.md").read_text()
    for text in expected:
        assert text in card, text
    for text in absent:
        assert text not in card, text


def test_a_local_backbone_path_is_named_on_the_card_not_linked_as_a_hub_page(tmp_path):
    trunk = write_transformers_trunk_repo(tmp_path / "converted-trunk", tiny_hiera())
    model = Sam2UNetForImageSegmentation.from_pretrained_backbones(tiny_sam2_unet_config(backbone_repo_id=str(trunk)))
    model.save_pretrained(tmp_path / "m")
    card = (tmp_path / "m" / "README.md").read_text()
    # Was: [`/tmp/.../converted-trunk`](https://huggingface.co//tmp/.../converted-trunk), a page that does not exist.
    assert "huggingface.co//" not in card and f"`{trunk}` (a local path)" in card
    from dsunet_hf.hub import repo_link

    assert repo_link("facebook/sam2-hiera-large") == "[`facebook/sam2-hiera-large`](https://huggingface.co/facebook/sam2-hiera-large)"
    assert repo_link("./weights") == "`./weights` (a local path)"


def test_nan_metrics_stay_out_of_the_model_index(tmp_path):
    """The model-index cannot hold NaN (a metric undefined on the data): such values show in the table only."""
    import json

    from huggingface_hub import ModelCard

    from dsunet_hf.hub import add_evaluation_to_card, add_validation_results_to_card

    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# model\n")
    add_validation_results_to_card(tmp_path, {"mIoU": 0.5, "mAcc": float("nan")}, "toy", "toy", model_name="m")
    assert [r.metric_name for r in ModelCard.load(tmp_path / "README.md").data.eval_results] == ["mIoU"]
    report = {"results": {"ECSSD": {"S-measure": 0.9, "MAE": float("nan")}}, "info": {"split": "test"}}
    (tmp_path / "evaluation.json").write_text(json.dumps(report))
    card = add_evaluation_to_card(tmp_path, [tmp_path / "evaluation.json"])
    assert {(r.dataset_name, r.metric_name) for r in card.data.eval_results} == {("toy", "mIoU"), ("ECSSD", "S-measure")}
    text = (tmp_path / "README.md").read_text()
    assert "nan" not in text.split("---")[1].lower()  # the YAML header
    (row,) = [line for line in text.splitlines() if line.startswith("| ECSSD |")]
    assert "| 0.900 |" in row and "| nan |" in row


# --- Hub arguments, Trainer saves, self-contained artifacts, branches, namespaces (review fixes) ------------------

def test_hub_download_arguments_reach_the_backbone_repos(trained_model, offline_hub, tmp_path, monkeypatch):
    """A cache_dir (and token, local_files_only) given to from_pretrained also applies to the frozen backbone's
    own repo: with everything in a custom cache, the backbone was looked up in the default one only."""
    import shutil

    import dsunet_hf.hub as hub_module

    trained_model.push_to_hub("me/custom-cache")
    custom = tmp_path / "custom-cache"
    shutil.move(str(offline_hub.cache), str(custom))
    offline_hub.cache.mkdir()
    calls = []
    download = hub_module.hf_hub_download
    monkeypatch.setattr(hub_module, "hf_hub_download",
                        lambda repo_id, filename, **kw: calls.append((repo_id, kw)) or download(repo_id, filename, **kw))
    loaded = Sam2UNetForImageSegmentation.from_pretrained("me/custom-cache", cache_dir=str(custom), token="hf_x",
                                                          local_files_only=True)
    assert calls and all(repo == "test-org/tiny-hiera" and kw["cache_dir"] == str(custom) and kw["token"] == "hf_x"
                         and kw["local_files_only"] for repo, kw in calls)
    x = torch.randn(1, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        assert torch.equal(trained_model(x).logits, loaded(x).logits)
    fresh = Sam2UNetForImageSegmentation.from_pretrained_backbones(tiny_sam2_unet_config(), cache_dir=str(custom))
    assert torch.equal(fresh.backbone.encoder.pos_embed, trained_model.backbone.encoder.pos_embed)
    # dtype casts as from_pretrained's; config fields beside a config were ignored without a word.
    half = Sam2UNetForImageSegmentation.from_pretrained_backbones(tiny_sam2_unet_config(), cache_dir=str(custom),
                                                                  dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match=r"dtype must be 'auto' or a torch dtype name .* got 'fp16'"):
        Sam2UNetForImageSegmentation.from_pretrained_backbones(tiny_sam2_unet_config(), dtype="fp16")
    with pytest.raises(TypeError, match=r"config fields \['image_size'\] given with a config"):
        Sam2UNetForImageSegmentation.from_pretrained_backbones(tiny_sam2_unet_config(), image_size=64)


def test_save_pretrained_with_state_dict_none_writes_the_trainable_part(trained_model, tmp_path):
    """transformers' Trainer saves with save_pretrained(dir, state_dict=None): the default, not the whole network
    (the config says the backbone is not included)."""
    import json

    trained_model.save_pretrained(tmp_path / "m", state_dict=None)
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(trained_model.trainable_state_dict())
    assert json.loads((tmp_path / "m" / "config.json").read_text())["backbone_weights_included"] is False


def test_a_self_contained_artifact_missing_backbone_tensors_is_refused(trained_model, tmp_path):
    """include_backbone=True: the backbone is not fetched, so a backbone tensor missing from the file would keep its
    random init; the loader names it instead, in one error: transformers' LOAD REPORT table of the same keys (a wall
    of text before it) is held back."""
    from safetensors.torch import load_file, save_file

    from dsunet_hf.modeling_utils import CheckpointMismatchError

    trained_model.save_pretrained(tmp_path / "m", include_backbone=True)
    Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "m")  # complete: loads
    # Records seen on transformers' logger itself: it propagates to the root (caplog) only when CI is set.
    reports = []
    collect = logging.Handler()
    collect.emit = lambda record: reports.append(record.getMessage())
    transformers_logger = logging.getLogger("transformers.modeling_utils")
    transformers_logger.addHandler(collect)
    try:
        with pytest.raises(CheckpointMismatchError, match=r"shape mismatches: head\.weight"):
            Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "m", rfb_channels=8)
        tensors = load_file(str(tmp_path / "m" / "model.safetensors"))
        del tensors["backbone.encoder.pos_embed"]
        save_file(tensors, str(tmp_path / "m" / "model.safetensors"), metadata={"format": "pt"})
        with pytest.raises(CheckpointMismatchError, match=r"holds the backbone weights.*backbone\.encoder\.pos_embed"):
            Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "m")
        assert not [message for message in reports if "LOAD REPORT" in message]
        # Re-initialised tensors asked for: the load goes on, and transformers' report tells which, once.
        tensors["backbone.encoder.pos_embed"] = trained_model.state_dict()["backbone.encoder.pos_embed"]
        save_file(tensors, str(tmp_path / "m" / "model.safetensors"), metadata={"format": "pt"})
        Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "m", rfb_channels=8, ignore_mismatched_sizes=True)
        assert len([message for message in reports if "LOAD REPORT" in message]) == 1
    finally:
        transformers_logger.removeHandler(collect)


def test_push_to_a_new_branch_creates_it(trained_model, offline_hub, tmp_path):
    """The Hub refuses a commit to a branch that does not exist: push_to_hub(revision=...) creates it first."""
    trained_model.push_to_hub("me/branched")
    main = (offline_hub.repo_dir("me/branched") / "refs" / "main").read_text()
    trained_model.push_to_hub("me/branched", revision="experiment-1", image_processor=SegmentationImageProcessor(96))
    assert "experiment-1" in offline_hub.branches["me/branched"]
    assert (offline_hub.repo_dir("me/branched") / "refs" / "main").read_text() == main  # main untouched
    assert AutoImageProcessor.from_pretrained("me/branched", revision="experiment-1").size["height"] == 96
    trained_model.save_pretrained(tmp_path / "m", push_to_hub=True, repo_id="me/saved", revision="exp-2")
    assert (offline_hub.repo_dir("me/saved") / "refs" / "exp-2").is_file()


def test_a_repo_name_without_namespace_is_named_in_full_on_the_card(trained_model, hub_namespace, tmp_path):
    """push_to_hub("name"): the Hub creates "<user>/name"; the card's snippets name that, not the bare name."""
    from dsunet_hf.cli import main as cli_main

    offline_hub = hub_namespace
    assert trained_model.push_to_hub("sam2unet-cod") == "me/sam2unet-cod"
    trained_model.save_pretrained(tmp_path / "m", push_to_hub=True, repo_id="saved-cod")
    trained_model.save_pretrained(tmp_path / "plain")
    assert cli_main(["push", str(tmp_path / "plain"), "cli-cod"]) == 0
    for repo in ("me/sam2unet-cod", "me/saved-cod", "me/cli-cod"):
        card = (next((offline_hub.repo_dir(repo) / "snapshots").iterdir()) / "README.md").read_text()
        assert f'from_pretrained("{repo}")' in card and f'from_pretrained("{repo.split("/")[1]}")' not in card
    assert offline_hub.create_calls == [(repo, None) for repo in ("me/sam2unet-cod", "me/saved-cod", "me/cli-cod")]


def test_a_refused_push_leaves_no_repo_behind(trained_model, offline_hub, tmp_path, capsys):
    """The refusals (frozen weights changed since loading, LoRA merged and include_backbone, a bad evaluation
    report) run before the Hub repo is created: a refused push leaves no new empty repo. A pushed one is created
    once, private included."""
    from dsunet_hf.cli import main as cli_main

    trained_model.save_pretrained(tmp_path / "plain")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a `dsunet-hf evaluate` report"):
        cli_main(["push", str(tmp_path / "plain"), "me/cli", "--evaluation", str(tmp_path / "bad.json")])
    with pytest.raises(ValueError, match="not a `dsunet-hf evaluate` report"):
        trained_model.push_to_hub("me/evaluated", evaluation_reports=[str(tmp_path / "bad.json")])

    merged = Sam2UNetForImageSegmentation(tiny_sam2_unet_config(finetune_strategy="lora")).eval()
    merged.merge_lora()
    with pytest.raises(ValueError, match="apply LoRA twice"):
        merged.push_to_hub("me/merged", include_backbone=True)
    with pytest.raises(ValueError, match="apply LoRA twice"):
        merged.save_pretrained(tmp_path / "merged", include_backbone=True, push_to_hub=True, repo_id="me/merged")

    with torch.no_grad():
        next(p for n, p in trained_model.named_parameters()
             if n.startswith("backbone.") and not trained_model.is_trainable_key(n)).add_(1.0)
    with pytest.raises(ValueError, match="frozen backbone weights changed"):
        trained_model.push_to_hub("me/changed")
    with pytest.raises(ValueError, match="frozen backbone weights changed"):
        trained_model.save_pretrained(tmp_path / "changed", push_to_hub=True, repo_id="me/changed")
    assert offline_hub.create_calls == [] and offline_hub.pushes == []

    assert cli_main(["push", str(tmp_path / "plain"), "me/cli", "--private"]) == 0
    assert offline_hub.create_calls == [("me/cli", True)] and offline_hub.private["me/cli"]


def test_republishing_keeps_the_processor_of_the_subfolder_and_revision(trained_model, offline_hub, tmp_path):
    """The processor the model was loaded with comes from the same subfolder / revision as the model."""
    custom = SegmentationImageProcessor(size=96, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    trained_model.save_pretrained(tmp_path / "repo" / "cod", image_processor=custom)
    offline_hub.add("me/multi", tmp_path / "repo")
    Sam2UNetForImageSegmentation.from_pretrained("me/multi", subfolder="cod").push_to_hub("me/from-subfolder")
    assert AutoImageProcessor.from_pretrained("me/from-subfolder").to_dict() == custom.to_dict()

    trained_model.push_to_hub("me/rev", image_processor=custom)
    first = (offline_hub.repo_dir("me/rev") / "refs" / "main").read_text()
    trained_model.push_to_hub("me/rev", image_processor=SegmentationImageProcessor(size=32))
    Sam2UNetForImageSegmentation.from_pretrained("me/rev", revision=first).push_to_hub("me/from-revision")
    assert AutoImageProcessor.from_pretrained("me/from-revision").size == {"height": 96, "width": 96}


def test_frozen_weights_changed_after_loading_are_not_dropped_silently(trained_model, tmp_path):
    """peft's merge_and_unload() into the frozen backbone changes weights a trainable-only file does not hold:
    save_pretrained refuses (naming the ways out) rather than write a model that loads with other outputs."""
    from peft import LoraConfig, get_peft_model

    trained_model.save_pretrained(tmp_path / "base")
    model = Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "base")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["attn.qkv"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    merged = peft_model.merge_and_unload()
    with pytest.raises(ValueError, match=r"frozen backbone weights changed.*include_backbone=True.*\"lora\""):
        merged.save_pretrained(tmp_path / "merged")
    merged.save_pretrained(tmp_path / "merged", include_backbone=True)  # self-contained: the merged weights kept
    x = torch.randn(1, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        assert torch.equal(merged(x).logits, Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "merged")(x).logits)
    cast = Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "base").to(torch.bfloat16).to(torch.float32)
    cast.save_pretrained(tmp_path / "cast")  # a dtype round trip is no change


def test_matcher_through_auto_model_warns_of_no_hub_argument(offline_hub, tmp_path, caplog):
    """AutoModel passes its Hub arguments (cache_dir, revision, ...) with the config it read: they are not
    "ignored" arguments the user gave; the DINOv2 repo is read with them."""
    import logging

    from transformers import Dinov2Config, Dinov2Model

    from dsunet_hf import VisualPromptMatcher, VisualPromptMatcherConfig

    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=518,
                             patch_size=14)).save_pretrained(tmp_path / "dino")
    offline_hub.add("test-org/tiny-dinov2", tmp_path / "dino")
    config = VisualPromptMatcherConfig(dino_preset="small", image_size=112, dino_backbone_repo_id="test-org/tiny-dinov2",
                                       dino_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4))
    VisualPromptMatcher.from_pretrained_backbones(config).save_pretrained(tmp_path / "matcher")
    with caplog.at_level(logging.WARNING):
        model = AutoModel.from_pretrained(tmp_path / "matcher", cache_dir=str(offline_hub.cache))
    assert isinstance(model, VisualPromptMatcher) and "ignores" not in caplog.text


def test_a_missing_backbone_is_named_by_its_config_field(offline_hub):
    """The advice to point at a local copy named backbone_repo_id for every model; a visual-prompt model's (and
    DSU-Net's, BiRefNet's) field is another one, which from_pretrained would not apply."""
    from dsunet_hf import VisualPromptMatcher, VisualPromptMatcherConfig
    from dsunet_hf.hub import BackboneNotAvailableError

    config = VisualPromptMatcherConfig(dino_preset="small", image_size=112, dino_backbone_repo_id="test-org/absent",
                                       dino_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4))
    with pytest.raises(BackboneNotAvailableError, match="'test-org/absent'") as error:
        VisualPromptMatcher.from_pretrained_backbones(config)
    assert "from_pretrained(..., dino_backbone_repo_id='/path/to/folder-or-checkpoint')" in str(error.value)
    assert "backbone_repo_id='" not in str(error.value).replace("dino_backbone_repo_id='", "")
    # Nor in the traceback: the error it replaces is not shown above it.
    assert error.value.__cause__ is None and error.value.__suppress_context__


def test_a_save_in_the_other_layout_leaves_no_older_weights_behind(trained_model, tmp_path):
    """transformers keeps a single model.safetensors beside new shards (and from_pretrained loads it: the older
    model, silently) and an index beside a new single file; save_pretrained removes the one of the earlier save."""
    trained_model.save_pretrained(tmp_path / "m")  # one file
    with torch.no_grad():
        trained_model.head.weight.add_(1.0)  # trained further
    trained_model.save_pretrained(tmp_path / "m", max_shard_size="200KB")
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names
    x = torch.randn(1, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        assert torch.equal(trained_model(x).logits, Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "m")(x).logits)
    trained_model.save_pretrained(tmp_path / "m")  # back to one file: no index naming deleted shards
    assert {p.name for p in (tmp_path / "m").iterdir() if p.name.startswith("model")} == {"model.safetensors"}


def test_a_push_replaces_the_repos_older_weight_files_and_refuses_a_pr_to_a_branch(trained_model, offline_hub,
                                                                                   monkeypatch):
    """upload_folder only adds files: a sharded push onto a repo holding model.safetensors left it there (and
    from_pretrained loads that older model). create_pr=True with a revision is refused by the Hub only after the repo
    was created: refused first."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    upload = huggingface_hub.HfApi.upload_folder
    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(kw) or upload(self, **kw))
    trained_model.push_to_hub("me/sharded", max_shard_size="200KB")
    remote = ["model.safetensors", "model-00001-of-00009.safetensors", "model.safetensors.index.json", "README.md",
              "onnx/model.onnx", "model.onnx", ".gitattributes"]
    assert set(filter_repo_objects(remote, allow_patterns=calls[-1]["delete_patterns"])) == set(remote[:3])
    with pytest.raises(ValueError, match="create_pr=True .* takes no revision"):
        trained_model.push_to_hub("me/pr", revision="dev", create_pr=True)
    assert [repo for repo, _ in offline_hub.create_calls] == ["me/sharded"]


def test_a_damaged_weights_file_is_named_by_from_pretrained(trained_model, tmp_path):
    """safetensors' own error (no OSError) named neither the file nor the model; a damaged shard is named."""
    trained_model.save_pretrained(tmp_path / "m", max_shard_size="200KB")
    shard = tmp_path / "m" / "model-00002-of-00004.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])  # an interrupted copy
    with pytest.raises(OSError, match=rf"^{shard}: not a readable safetensors file, truncated or damaged"):
        Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "m")


def test_a_damaged_weights_file_in_the_hub_cache_is_named_by_its_path(trained_model, offline_hub):
    """An interrupted download leaves a damaged blob in the Hub cache, read again at every load: the error names the
    file to delete (the blob the snapshot links to, not the repo id) and force_download."""
    repo_id = trained_model.push_to_hub("me/damaged")
    weights, blob = offline_hub.damage(repo_id, "model.safetensors", keep_bytes=1000)
    with pytest.raises(OSError, match=rf"^{weights}: the Hub cache's copy of me/damaged's weights is not a readable "
                                      rf"safetensors file.*delete {blob} .*and load again.*force_download=True"):
        Sam2UNetForImageSegmentation.from_pretrained(repo_id)


def test_a_folder_with_variant_weights_only_names_the_variant_to_load(tmp_path):
    """transformers said only "no file named model.safetensors" beside a model.fp16.safetensors."""
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config())
    model.save_pretrained(tmp_path / "m", include_backbone=True, variant="fp16", max_shard_size="1MB")
    with pytest.raises(OSError, match=r"no file named model\.safetensors.*It holds the weights of variant 'fp16' "
                                      r"only .*load with variant='fp16'"):
        Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "m")
    Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "m", variant="fp16")


def test_push_to_hub_takes_transformers_tags_and_commit_description(trained_model, offline_hub, monkeypatch):
    """transformers' push_to_hub(tags=..., commit_description=...) and add_model_tags: refused (TypeError), and the
    tags of add_model_tags left off the card."""
    import huggingface_hub
    from huggingface_hub import ModelCard

    upload = huggingface_hub.HfApi.upload_folder
    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(kw) or upload(self, **kw))
    trained_model.add_model_tags(["polyp"])
    trained_model.push_to_hub("me/tagged", tags=["kvasir", "polyp"], commit_description="20 epochs on Kvasir")
    assert calls[-1]["commit_description"] == "20 epochs on Kvasir"
    tags = ModelCard.load(next((offline_hub.repo_dir("me/tagged") / "snapshots").iterdir()) / "README.md").data.tags
    assert tags[-2:] == ["polyp", "kvasir"] and "sam2-unet" in tags


def test_save_pretrained_pushes_only_the_files_it_wrote(trained_model, offline_hub, tmp_path, monkeypatch):
    """save_pretrained(folder, push_to_hub=True) into a Trainer's output folder uploaded all of it (checkpoints,
    optimizer states, anything else there); transformers uploads only the files its save wrote."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(kw))
    (tmp_path / "out" / "checkpoint-500").mkdir(parents=True)
    (tmp_path / "out" / "checkpoint-500" / "optimizer.pt").write_bytes(b"state")
    (tmp_path / "out" / "notes.txt").write_text("private")
    trained_model.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="me/out")
    files = [p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert sorted(filter_repo_objects(files, allow_patterns=calls[-1]["allow_patterns"])) == [
        "README.md", "config.json", "model.safetensors", "preprocessor_config.json"]


def test_a_variant_push_keeps_the_repos_main_weights(trained_model, offline_hub, tmp_path):
    """save_pretrained(variant="fp16", push_to_hub=True) into the folder of the main weights deleted the repo's
    model.safetensors (the push's delete patterns were the main weights', its uploads only the variant's)."""
    trained_model.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="me/variants")
    trained_model.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="me/variants", variant="fp16")
    head = (offline_hub.repo_dir("me/variants") / "refs" / "main").read_text()
    files = {p.name for p in (offline_hub.repo_dir("me/variants") / "snapshots" / head).iterdir()}
    assert {"model.safetensors", "model.fp16.safetensors"} <= files


def test_the_card_names_the_weight_files_the_save_wrote(tmp_path):
    """The card's table said `model.safetensors` after a sharded or variant save, which writes no such file."""
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config())

    def weights_row():
        return next(line for line in (tmp_path / "m" / "README.md").read_text().splitlines() if "this repository (" in line)

    model.save_pretrained(tmp_path / "m", max_shard_size="100KB")
    shards = sorted(p.name for p in (tmp_path / "m").glob("model-*-of-*.safetensors"))
    assert len(shards) > 1
    assert f"`model.safetensors.index.json` and its {len(shards)} shards `{shards[0]}` … `{shards[-1]}`" in weights_row()
    model.save_pretrained(tmp_path / "m", variant="fp16")
    assert "(`model.fp16.safetensors`)" in weights_row()
    model.save_pretrained(tmp_path / "m")
    assert "(`model.safetensors`)" in weights_row()
    for template in ("sam2_unet.md", "dsunet.md", "birefnet.md"):  # no template names a fixed file any more
        from importlib import resources

        assert "`model.safetensors`" not in resources.files("dsunet_hf").joinpath("model_cards", template).read_text()


@pytest.mark.parametrize("writer", ["save", "validation_results"])
def test_a_card_write_that_dies_midway_leaves_the_earlier_card(tmp_path, monkeypatch, writer):
    """card.save truncated README.md before it rendered the card: a save killed then left an empty card."""
    from huggingface_hub import ModelCardData

    from dsunet_hf.hub import add_validation_results_to_card

    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config())
    model.save_pretrained(tmp_path / "m")
    before = (tmp_path / "m" / "README.md").read_text()
    card = model.model_card()  # rendered before the write is killed

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ModelCardData, "to_yaml", killed)
    with pytest.raises(KeyboardInterrupt):
        if writer == "save":
            card.save(tmp_path / "m" / "README.md")
        else:
            add_validation_results_to_card(tmp_path / "m", {"dice": 0.5}, "data", "data", "m")
    assert (tmp_path / "m" / "README.md").read_text() == before
    assert [p.name for p in (tmp_path / "m").iterdir() if p.suffix == ".tmp"] == []


def test_a_held_load_report_is_per_thread():
    # Regression: the filter sat on transformers' global logger and matched the class name only: a load of the same
    # class in another thread lost its report to this one's holder (dropped when this load raised).
    import logging
    import threading

    from dsunet_hf.modeling_utils import _HeldLoadReport

    seen = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger, handler = logging.getLogger("transformers.modeling_utils"), Collect()
    logger.addHandler(handler)
    try:
        with _HeldLoadReport("Sam2UNetForImageSegmentation"):  # this load ends in our error: its report dropped

            def other_load():
                with _HeldLoadReport("Sam2UNetForImageSegmentation") as report:
                    logger.warning("Sam2UNetForImageSegmentation LOAD REPORT from: other/model")
                report.release()  # that load went on: its report is shown

            thread = threading.Thread(target=other_load)
            thread.start()
            thread.join()
    finally:
        logger.removeHandler(handler)
    assert seen == ["Sam2UNetForImageSegmentation LOAD REPORT from: other/model"]


def test_cached_commit_of_a_folder_is_the_snapshot_it_leads_to(tmp_path, offline_hub, monkeypatch):
    # Regression: the path was read as written: `--model ../<other commit>` from inside a snapshot recorded the commit
    # it passed through (evaluation.json, onnx_export.json), and a link to a snapshot folder recorded none.
    from dsunet_hf.modeling_utils import cached_commit

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    first = offline_hub.add("me/rev", tmp_path / "m")
    (tmp_path / "m" / "notes.txt").write_text("a later push")
    second = offline_hub.add("me/rev", tmp_path / "m")
    snapshots = offline_hub.repo_dir("me/rev") / "snapshots"
    (tmp_path / "link").symlink_to(snapshots / second)
    monkeypatch.chdir(snapshots / first)
    assert cached_commit(f"../{second}") == cached_commit(tmp_path / "link") == second
    assert cached_commit(".") == cached_commit(snapshots / first / "config.json") == cached_commit("me/rev", first) == first
    assert cached_commit("me/rev") == second and cached_commit(tmp_path / "m") is None


def _config_only(tmp_path, offline_hub, repo_id: str, config: dict) -> str:
    """A Hub repo of which only config.json reached the local cache (an interrupted download): its commit."""
    import json

    (tmp_path / "cfg").mkdir(exist_ok=True)
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(config))
    return offline_hub.add(repo_id, tmp_path / "cfg")


@pytest.mark.parametrize("kind", ["official_birefnet", "artifact"])
def test_a_partly_cached_repo_without_its_weights_says_so_in_one_line(tmp_path, offline_hub, kind):
    """Was, offline: official BiRefNet weights got eight lines calling them "the frozen backbone" (with Python advice,
    backbone_repo_id=...); a dsunet-hf artifact "does not appear to have a file named model.safetensors", as if the
    repo had none. Both: the snapshot lacks the weights, and `hf download` gets them."""
    from PIL import Image

    from dsunet_hf.cli import main

    if kind == "official_birefnet":
        repo_id, config = "ZhengPeng7/BiRefNet", {"architectures": ["BiRefNet"],
                                                  "auto_map": {"AutoModelForImageSegmentation": "birefnet.BiRefNet"}}
    else:
        repo_id, config = "me/art", {**tiny_sam2_unet_config().to_dict(), "backbone_weights_included": True}
    commit = _config_only(tmp_path, offline_hub, repo_id, config)
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", repo_id, str(tmp_path / "a.png"), "--output-dir", str(tmp_path / "out")])
    assert str(exit_info.value) == (
        f"predict: cannot load {repo_id}: {repo_id} is only partly in the local Hub cache (snapshot {commit}, without "
        f"its weights file: an interrupted download?) and HF_HUB_OFFLINE is set: run once without HF_HUB_OFFLINE=1, "
        f"or `hf download {repo_id}` first")


def test_a_missing_backbone_of_a_weightless_artifact_keeps_its_own_advice(tmp_path, offline_hub):
    """A visual-prompt matcher's artifact holds no weights by design: a frozen backbone (another repo) that is not in
    the cache is that repo's problem, not an interrupted download of the matcher."""
    from dsunet_hf.cli import load_failure
    from dsunet_hf.hub import BackboneNotAvailableError
    from dsunet_hf.modeling_utils import CheckpointMismatchError

    _config_only(tmp_path, offline_hub, "me/matcher", {"model_type": "visual_prompt_matcher"})
    error = BackboneNotAvailableError.for_repo("facebook/dinov2-small", None, ["model.safetensors: LocalEntryNotFound"])
    message = str(load_failure("predict", "me/matcher", error))
    assert "partly" not in message and "'facebook/dinov2-small'" in message and "hf download facebook/dinov2-small" in message
    mismatch = CheckpointMismatchError("me/matcher: the frozen backbone weights loaded are not those it was saved with")
    assert str(load_failure("predict", "me/matcher", mismatch)) == f"predict: cannot load me/matcher: {mismatch}"


def test_official_weights_that_cannot_be_downloaded_are_one_line_built_from_the_errors_fields(offline_hub, tmp_path,
                                                                                               monkeypatch):
    """Online, official BiRefNet weights (the model's own repo) that fail to download: one line naming the revision
    and the file's error, not a frozen backbone's advice; naming_field keeps the fields it is built from."""
    from types import SimpleNamespace

    from huggingface_hub import constants

    from dsunet_hf.cli import load_failure
    from dsunet_hf.hub import BackboneNotAvailableError

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    error = BackboneNotAvailableError.for_repo("ZhengPeng7/BiRefNet", "v2", ["model.safetensors: HfHubHTTPError: 500"])
    renamed = error.naming_field(SimpleNamespace(base_repo_id="ZhengPeng7/BiRefNet"))
    assert "from_pretrained(..., base_repo_id='/path" in str(renamed) and "backbone_repo_id" not in str(renamed)
    for failed in (error, renamed):
        assert str(load_failure("info", "ZhengPeng7/BiRefNet", failed, revision="v2")) == (
            "info: cannot load ZhengPeng7/BiRefNet: revision v2 of ZhengPeng7/BiRefNet could not be downloaded "
            "(model.safetensors: HfHubHTTPError: 500)")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # offline, not in the cache at all (convert birefnet)
    monkeypatch.chdir(tmp_path)
    error = BackboneNotAvailableError.for_repo("ZhengPeng7/BiRefNet", "v2", ["model.safetensors: LocalEntryNotFound"])
    assert str(load_failure("convert birefnet", "ZhengPeng7/BiRefNet", error, revision="v2")) == (
        "convert birefnet: cannot load ZhengPeng7/BiRefNet: revision v2 of ZhengPeng7/BiRefNet is not in the local Hub "
        f"cache (nor is there a local folder {tmp_path}/ZhengPeng7/BiRefNet) and HF_HUB_OFFLINE is set: run once "
        "without HF_HUB_OFFLINE=1, or `hf download ZhengPeng7/BiRefNet --revision v2` first")


def test_cached_full_commits_finds_the_snapshots_a_short_hash_starts(tmp_path, offline_hub):
    from dsunet_hf.modeling_utils import cached_full_commits

    commit = _config_only(tmp_path, offline_hub, "me/rev", {})
    assert cached_full_commits("me/rev", commit[:7]) == [commit]
    assert cached_full_commits("me/rev", "main") == cached_full_commits("me/other", commit[:7]) == []


@pytest.fixture
def variant_only_hub_repo(tmp_path, offline_hub, monkeypatch):
    """Online (no request made: the load's failure and the Hub's listing are stubbed), a Hub repo that holds only
    fp16 weights, none of it cached: the listing requests made, as (repo id, timeout)."""
    from types import SimpleNamespace

    import huggingface_hub
    from huggingface_hub import constants
    from transformers import PreTrainedModel

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    requests = []

    def model_info(self, repo_id, *, revision=None, timeout=None, **kwargs):
        requests.append((repo_id, timeout))
        if repo_id == "me/down":
            raise TimeoutError("the Hub did not answer")
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=n) for n in ("config.json", "model.fp16.safetensors")])

    def list_repo_files(repo_id, **kwargs):
        requests.append((repo_id, None))  # no timeout of its own: may wait forever where the network drops packets
        return [] if repo_id == "me/down" else ["config.json", "model.fp16.safetensors"]

    def no_weights(cls, name, *args, **kwargs):
        raise OSError(f"{name} does not appear to have a file named model.safetensors.")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(no_weights))
    return requests


def test_a_hub_repo_with_variant_weights_only_names_the_variant(variant_only_hub_repo):
    """The online hint: after the load fails, the repo's files (one request, with a timeout) name --variant."""
    from dsunet_hf.cli import load_failure

    with pytest.raises(OSError, match=r"^me/fp16 does not appear to have a file named model\.safetensors\. It holds the "
                                      r"weights of variant 'fp16' only .*load with variant='fp16'$") as error:
        Sam2UNetForImageSegmentation.from_pretrained("me/fp16")
    assert str(load_failure("predict", "me/fp16", error.value)).endswith("add --variant fp16")
    assert [(repo, timeout is not None) for repo, timeout in variant_only_hub_repo] == [("me/fp16", True)]


def test_the_variant_hint_never_replaces_or_delays_the_load_error(variant_only_hub_repo, monkeypatch):
    """A listing that fails leaves the load's error as it was; none is asked for where the Hub was just found
    unreachable (LocalEntryNotFoundError: another request would wait out another timeout) or local_files_only."""
    from huggingface_hub.errors import LocalEntryNotFoundError
    from transformers import PreTrainedModel

    with pytest.raises(OSError, match=r"^me/down does not appear to have a file named model\.safetensors\.$"):
        Sam2UNetForImageSegmentation.from_pretrained("me/down")
    assert len(variant_only_hub_repo) == 1
    with pytest.raises(OSError, match=r"^me/fp16 does not appear .*safetensors\.$"):
        Sam2UNetForImageSegmentation.from_pretrained("me/fp16", local_files_only=True)

    def unreachable(cls, name, *args, **kwargs):
        try:
            raise LocalEntryNotFoundError("cannot reach the Hub")
        except LocalEntryNotFoundError as cause:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files") from cause

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(unreachable))
    with pytest.raises(OSError, match=r"^We couldn't connect"):
        Sam2UNetForImageSegmentation.from_pretrained("me/fp16")
    assert len(variant_only_hub_repo) == 1


def test_visual_prompts_for_a_weights_file_are_refused_as_such(tmp_path):
    """Was: "cannot load BiRefNet.pth: It looks like the config file at ... is not a valid JSON file" for official
    BiRefNet weights (a file, without config), which load fine: they are no visual-prompt model."""
    from PIL import Image

    from dsunet_hf.cli import main

    torch.save({"x": torch.zeros(1)}, tmp_path / "BiRefNet-general-epoch_244.pth")
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit, match=r"^predict: --reference/--prompt need a visual-prompt model .*"
                                         r"BiRefNet-general-epoch_244\.pth is not one$"):
        main(["predict", "--model", str(tmp_path / "BiRefNet-general-epoch_244.pth"), str(tmp_path / "a.png"),
              "--reference", str(tmp_path / "a.png"), "--prompt", "box:2,2,20,20", "--output-dir", str(tmp_path / "o")])


def test_error_chain_follows_causes_and_contexts_once():
    from dsunet_hf.hub import error_chain

    inner, middle = KeyError("a"), OSError("b")
    middle.__cause__ = inner
    outer = ValueError("c")
    outer.__context__ = middle
    inner.__context__ = outer  # a cycle ends the walk
    assert error_chain(outer) == [outer, middle, inner]


def test_the_download_advice_is_one_command_for_models_and_backbones(offline_hub, tmp_path, monkeypatch):
    """Was built in two places, worded apart: `hf download o/n --revision v1` (a model) and hf download o/n
    --revision v1 unquoted (a frozen backbone)."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    from dsunet_hf.cli import load_failure
    from dsunet_hf.hub import BackboneNotAvailableError, download_command

    command = download_command("o/n", "v1")
    assert command == "`hf download o/n --revision v1`" and download_command("o/n") == "`hf download o/n`"
    assert f"  1. download it once where the Hub is reachable: {command}\n" in str(
        BackboneNotAvailableError.for_repo("o/n", "v1", ["model.safetensors: LocalEntryNotFoundError"]))
    assert f"or {command} first" in str(load_failure("predict", "o/n", LocalEntryNotFoundError("x"), revision="v1"))


def test_a_mistyped_relative_folder_offline_is_said_to_be_no_local_folder(offline_hub, tmp_path, monkeypatch):
    """Offline, `--model runs/exp1` (a typo of runs/exp_1: no such folder, so read as a Hub id) was only told to
    `hf download runs/exp1`; a frozen backbone's mistyped folder (backbone_repo_id=) alike. Now the folder looked for
    is named; a repo of which the cache holds some revision (a Hub repo indeed) gets no such note."""
    from PIL import Image

    from dsunet_hf.cli import main
    from dsunet_hf.hub import BackboneNotAvailableError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "exp_1").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", "runs/exp1", "a.png", "--output-dir", "out"])
    assert str(exit_info.value) == (
        f"predict: cannot load runs/exp1: runs/exp1 is not in the local Hub cache (nor is there a local folder "
        f"{tmp_path}/runs/exp1) and HF_HUB_OFFLINE is set: run once without HF_HUB_OFFLINE=1, or `hf download "
        f"runs/exp1` first")
    backbone = BackboneNotAvailableError.for_repo("weights/sam2", None, ["model.safetensors: LocalEntryNotFoundError"])
    assert (f"it is not in the local Hugging Face cache (nor is there a local folder {tmp_path}/weights/sam2) and "
            f"HF_HUB_OFFLINE is set.") in str(backbone)
    _config_only(tmp_path, offline_hub, "me/hub-repo", {})
    assert "local folder" not in str(BackboneNotAvailableError.for_repo("me/hub-repo", "v9", ["model.safetensors: x"]))
    # A backbone cached in the cache_dir given (at another revision): a Hub repo, no folder note (the default cache
    # was looked in), also once the advice names another config field.
    from dsunet_hf.backbones.dinov2 import load_dinov2_state_dict

    (tmp_path / "custom" / "models--me--backbone" / "snapshots" / ("0" * 40)).mkdir(parents=True)
    with pytest.raises(BackboneNotAvailableError) as error_info:
        load_dinov2_state_dict("me/backbone", revision="v9", cache_dir=tmp_path / "custom")
    assert "local folder" not in str(error_info.value)
    renamed = error_info.value.naming_field(SimpleNamespace(dino_repo_id="me/backbone"))
    assert "dino_repo_id='/path/to" in str(renamed) and "local folder" not in str(renamed)
    # In Python too (was transformers' two generic lines naming neither the repo nor a fix).
    from dsunet_hf import Sam2UNetForImageSegmentation

    with pytest.raises(OSError) as error_info:
        Sam2UNetForImageSegmentation.from_pretrained("runs/exp1")
    assert str(error_info.value) == (
        f"runs/exp1 is not in the local Hub cache (nor is there a local folder {tmp_path}/runs/exp1) and "
        f"HF_HUB_OFFLINE is set: run once without HF_HUB_OFFLINE=1, or `hf download runs/exp1` first")


def test_a_failed_hub_file_keeps_huggingface_hubs_error(offline_hub):
    """resolve_repo_file kept only the error's text: callers (convert birefnet) made up a LocalEntryNotFoundError to
    tell the local cache's state. Its failure keeps the exception, which the official weights' error is raised from."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    from dsunet_hf.convert.birefnet import locate_birefnet_weights
    from dsunet_hf.hub import BackboneNotAvailableError, resolve_repo_file

    path, why = resolve_repo_file("me/absent", "config.json")
    assert path is None and why.startswith("LocalEntryNotFoundError: ")
    assert isinstance(why.error, LocalEntryNotFoundError)
    with pytest.raises(BackboneNotAvailableError) as error:
        locate_birefnet_weights("me/absent")
    assert isinstance(error.value.__cause__, LocalEntryNotFoundError) and error.value.repo_id == "me/absent"
    # The frozen backbones' loaders alike (their last file's error).
    from dsunet_hf.backbones.dinov2 import load_dinov2_state_dict
    from dsunet_hf.backbones.hiera import load_hiera_state_dict

    for load in (load_hiera_state_dict, load_dinov2_state_dict):
        with pytest.raises(BackboneNotAvailableError) as error:
            load("me/absent")
        assert isinstance(error.value.__cause__, LocalEntryNotFoundError), load


def test_official_weights_partly_cached_with_the_hub_unreachable_say_so(tmp_path, offline_hub, monkeypatch):
    """Online with the Hub unreachable, the official BiRefNet repo's config cached but not its weights: was "could
    not be downloaded (model.safetensors: LocalEntryNotFoundError: An error happened ...)"; now the partly-cached
    line used offline (huggingface_hub's error is the cause the CLI reads)."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError

    import dsunet_hf.hub
    from dsunet_hf.cli import load_failure, main
    from dsunet_hf.convert.birefnet import locate_birefnet_weights

    commit = _config_only(tmp_path, offline_hub, "ZhengPeng7/BiRefNet", {"architectures": ["BiRefNet"]})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def unreachable(repo_id, filename, revision=None, **kwargs):  # huggingface_hub with no connection: the cache only
        cached = try_to_load_from_cache(repo_id, filename, revision=revision)
        if isinstance(cached, str):
            return cached
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub and we cannot "
                                      "find the requested files in the local cache.")

    monkeypatch.setattr(dsunet_hf.hub, "hf_hub_download", unreachable)
    line = (f"ZhengPeng7/BiRefNet is only partly in the local Hub cache (snapshot {commit}, without its weights file: "
            f"an interrupted download?) and the Hub cannot be reached: run it where the Hub is, or `hf download "
            f"ZhengPeng7/BiRefNet` there first")
    with pytest.raises(OSError) as error:
        locate_birefnet_weights("ZhengPeng7/BiRefNet")
    assert str(load_failure("predict", "ZhengPeng7/BiRefNet", error.value)) == f"predict: cannot load ZhengPeng7/BiRefNet: {line}"
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "birefnet", "ZhengPeng7/BiRefNet", str(tmp_path / "out")])
    assert str(exit_info.value) == f"convert birefnet: cannot load ZhengPeng7/BiRefNet: {line}"



def test_the_dsunet_card_names_the_input_sizes_of_its_config():
    """The DSU-Net card's snippet said "pixel_values (352 px) and dino_pixel_values (518 px)" whatever the model's
    sizes (its processor makes them from the config: here 128 and 56 px)."""
    from test_dsunet import tiny_config

    from dsunet_hf import DSUNetForImageSegmentation

    text = DSUNetForImageSegmentation(tiny_config()).model_card().text
    assert "# pixel_values (128 px) and dino_pixel_values (56 px)" in text and "352 px" not in text


def test_a_cached_fine_tune_whose_base_weights_are_not_cached_names_the_base(tmp_path, offline_hub):
    """The official weights' error is raised from huggingface_hub's (not in the cache): for a cached trainable-only
    BiRefNet fine-tune (me/bl) whose base repo is missing, that cause must not make me/bl "only partly in the local
    Hub cache"; the base repo's own error is told."""
    from dsunet_hf.cli import load_failure
    from dsunet_hf.convert.birefnet import locate_birefnet_weights

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "model.safetensors").write_bytes(b"weights")
    _config_only(tmp_path, offline_hub, "me/bl", {"model_type": "birefnet"})
    with pytest.raises(OSError) as error:
        locate_birefnet_weights("ZhengPeng7/BiRefNet_lite")
    message = str(load_failure("predict", "me/bl", error.value))
    assert "partly" not in message and "Cannot load the frozen backbone 'ZhengPeng7/BiRefNet_lite'" in message


@pytest.mark.parametrize("revision, shown", [("exp-1", "exp-1"), ("main", None), ("refs/pr/3", None), (None, None)])
def test_a_card_pushed_to_a_branch_loads_that_branch_in_its_snippets(trained_model, revision, shown):
    """push_to_hub(revision="exp-1")'s card showed from_pretrained("org/name"): a user copying it loaded main. The card
    rendered for a branch names it in every snippet; main and a pull request (merged into main) name none."""
    import re

    card = str(trained_model.model_card(repo_id="me/x", revision=revision))
    snippets = re.findall(r"```python\n(.*?)```", card, re.S)
    for snippet in snippets:
        compile(snippet, "card", "exec")
    code = "\n".join(snippets)
    commands = re.findall(r"`(dsunet-hf [^`]*--model me/x[^`]*)`", card)
    assert code.count("from_pretrained(") == 2 and commands
    if shown:
        assert code.count(f'from_pretrained("me/x", revision="{shown}")') == 2
        assert f'pipeline("image-segmentation", model="me/x", revision="{shown}"' in code
        assert all(f"--model me/x --revision {shown}" in command for command in commands), commands
    else:
        assert "revision=" not in code and not any("--revision" in command for command in commands)


def test_a_model_pushed_to_a_branch_has_a_card_that_loads_that_branch(trained_model, offline_hub, tmp_path):
    """push_to_hub(revision=...) / save_pretrained(push_to_hub=True, revision=...) put cards on the branch whose
    snippets loaded main; the matcher's own card too."""
    from huggingface_hub import hf_hub_download
    from test_visual_prompt_matcher import tiny_config

    from dsunet_hf.models.visual_prompt import VisualPromptMatcher

    trained_model.push_to_hub("me/b", revision="exp-1")
    trained_model.save_pretrained(tmp_path / "m", push_to_hub=True, repo_id="me/s", revision="exp-2")
    assert 'from_pretrained("me/b", revision="exp-1")' in Path(hf_hub_download("me/b", "README.md",
                                                                               revision="exp-1")).read_text()
    assert 'from_pretrained("me/s", revision="exp-2")' in Path(hf_hub_download("me/s", "README.md",
                                                                               revision="exp-2")).read_text()
    matcher = VisualPromptMatcher(tiny_config())
    assert 'from_pretrained("me/v", revision="exp-3")' in matcher.model_card(repo_id="me/v", revision="exp-3").text
    assert 'from_pretrained("me/v")\n' in matcher.model_card(repo_id="me/v", revision="main").text
