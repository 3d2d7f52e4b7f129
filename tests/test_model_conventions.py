"""transformers conventions every model follows: forward's output_hidden_states / output_attentions, config label maps
on from_pretrained overrides, the weight-variant hint's cache lookup (CPU, tiny random configs)."""

from __future__ import annotations

import functools

import pytest
import torch
from test_compile import _models
from test_visual_prompt_head import SIDE
from test_visual_prompt_head import tiny_model as tiny_visual_prompt

MODELS = ["sam2-unet", "dsunet", "birefnet", "dinov2-seg", "visual-prompt"]


@functools.cache  # each model built once for the tests below (BiRefNet's takes seconds); they leave it as it was
def _model_and_inputs(name):
    torch.manual_seed(0)
    if name == "visual-prompt":
        model = tiny_visual_prompt()
        pixel_values = torch.randn(1, 3, SIDE, SIDE)
        return model, {"pixel_values": pixel_values, "reference_pixel_values": pixel_values,
                       "reference_masks": torch.ones(1, SIDE, SIDE)}
    model, size = _models()[name]()
    return model.eval(), {"pixel_values": torch.randn(1, 3, size, size)}


@pytest.mark.parametrize("name", MODELS)
def test_output_hidden_states_returns_the_encoder_maps_and_output_attentions_is_refused(name):
    """Both options were swallowed by forward's **kwargs: no hidden_states, no error."""
    model, inputs = _model_and_inputs(name)
    with torch.no_grad():
        plain = model(**inputs)
        assert plain.hidden_states is None  # off by default: the compiled and exported paths are unchanged
        output = model(**inputs, output_hidden_states=True)
        torch.testing.assert_close(output.logits, plain.logits)
        hidden = output.hidden_states
        batch = inputs["pixel_values"].shape[0]
        assert isinstance(hidden, tuple) and len(hidden) >= 1
        assert all(h.ndim == 4 and h.shape[0] == batch for h in hidden)
        size = inputs["pixel_values"].shape[-1]
        if name not in ("dinov2-seg", "visual-prompt"):  # the four stage maps, strides 4 to 32, finest first
            assert [size // h.shape[-1] for h in hidden] == [4, 8, 16, 32]
        else:  # DINOv2 token maps: one per patch, of the backbone's width (not, say, the pixels themselves)
            assert all(h.shape[-2:] == (size // model.backbone.patch_size,) * 2 and h.shape[1] == 32 for h in hidden)
        # transformers' default: the config's; return_dict=False appends the tuple to the outputs
        model.config.output_hidden_states = True
        try:
            as_tuple = model(**inputs, return_dict=False)
            assert len(as_tuple) == len(plain.to_tuple()) + 1
            assert all(torch.equal(a, b) for a, b in zip(as_tuple[-1], hidden))
            assert model(**inputs, output_hidden_states=False).hidden_states is None
        finally:
            model.config.output_hidden_states = False
    with pytest.raises(ValueError, match=f"{type(model).__name__}: output_attentions=True is not supported"):
        model(**inputs, output_attentions=True)


@pytest.mark.parametrize("name", MODELS)
def test_forward_refuses_a_keyword_it_does_not_take(name):
    """forward's **kwargs (there for the processor's original_sizes, the Trainer's num_items_in_batch) swallowed a
    misspelt option: model(x, output_aux=True) returned no aux_logits without a word."""
    model, inputs = _model_and_inputs(name)
    with pytest.raises(TypeError, match=rf"^{type(model).__name__}\.forward\(\) got an unexpected keyword argument "
                                        r"'output_hiden_states'; did you mean 'output_hidden_states'\?$"):
        model(**inputs, output_hiden_states=True)
    with torch.no_grad():  # what model(**processor(images)) and the Trainer pass: taken and ignored
        model(**inputs, original_sizes=[(8, 8)], num_items_in_batch=1)


def test_the_matcher_refuses_hidden_states_and_attentions():
    from test_visual_prompt_matcher import P
    from test_visual_prompt_matcher import tiny_config as tiny_matcher_config

    from dsunet_hf import VisualPromptMatcher

    matcher = VisualPromptMatcher(tiny_matcher_config()).eval()
    pixel_values = torch.randn(1, 3, 2 * P, 2 * P)
    assert matcher(pixel_values).shape[-2:] == (2, 2)
    for option in ("output_hidden_states", "output_attentions"):
        with pytest.raises(ValueError, match="VisualPromptMatcher: output_attentions/output_hidden_states"):
            matcher(pixel_values, **{option: True})
    matcher.config.output_hidden_states = True  # the config's default, as every other model reads it
    with pytest.raises(ValueError, match="VisualPromptMatcher: output_attentions/output_hidden_states"):
        matcher(pixel_values)
    with pytest.raises(TypeError, match=r"^VisualPromptMatcher\.forward\(\) got an unexpected keyword argument "
                                        r"'output_aux'"):
        matcher(pixel_values, output_aux=True)


@pytest.mark.parametrize("kind", ["dinov2-seg", "sam2-unet"])
def test_an_id2label_override_brings_its_label2id(tmp_path, kind):
    """from_pretrained(path, id2label=...) kept the file's label2id (the old class names)."""
    from conftest import tiny_sam2_unet_config
    from test_dinov2_seg import tiny

    config = tiny() if kind == "dinov2-seg" else tiny_sam2_unet_config(id2label={0: "bg", 1: "a", 2: "b"})
    config.save_pretrained(tmp_path)
    new = {0: "sky", 1: "road", 2: "car", 3: "tree"}
    loaded = type(config).from_pretrained(tmp_path, id2label=new)
    assert loaded.id2label == new and loaded.num_labels == 4
    assert loaded.label2id == {"sky": 0, "road": 1, "car": 2, "tree": 3}
    # both given: both kept as given
    kept = type(config).from_pretrained(tmp_path, id2label=new, label2id={"x": 0})
    assert kept.label2id == {"x": 0}
    # no override: the file's maps
    assert type(config).from_pretrained(tmp_path).label2id == config.label2id
    # A JSON-read map (string keys) kept them (id2label[0]: KeyError); a list of names was saved as a list that did
    # not load again; a map with a gap went past the class-id check; keys that are no ids failed inside int().
    for given in ({str(index): name for index, name in new.items()}, list(new.values())):
        loaded = type(config).from_pretrained(tmp_path, id2label=given)
        assert loaded.id2label == new and loaded.label2id == {"sky": 0, "road": 1, "car": 2, "tree": 3}
    legacy = {key: value for key, value in config.to_dict().items() if key not in ("id2label", "label2id")}
    assert type(config).from_dict(legacy, id2label=new).id2label == new  # a file without classes (DINOv2: 2 of them)
    loaded.save_pretrained(tmp_path / "again")
    assert type(config).from_pretrained(tmp_path / "again").id2label == new
    with pytest.raises(ValueError, match=r"id2label must name the classes 0\.\.1 .* got the ids \[0, 2\]"):
        type(config).from_pretrained(tmp_path, id2label={0: "sky", 2: "car"})
    with pytest.raises(ValueError, match=r"^id2label must map the class ids 0, 1, \.\.\. to names .* got \{'sky': 0\}"):
        type(config).from_pretrained(tmp_path, id2label={"sky": 0})


def test_the_variant_hint_reads_the_snapshot_of_the_given_cache_dir(tmp_path):
    from dsunet_hf.modeling_utils import _saved_variants, cached_snapshot

    commit = "a" * 40
    repo = tmp_path / "models--test-org--variants"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.fp16.safetensors").write_bytes(b"")
    assert cached_snapshot("test-org/variants", cache_dir=tmp_path) == snapshot
    assert _saved_variants("test-org/variants", {"cache_dir": tmp_path, "local_files_only": True}) == ["fp16"]
    (snapshot / "model.safetensors").write_bytes(b"")  # the default weights are there: no hint
    assert _saved_variants("test-org/variants", {"cache_dir": tmp_path, "local_files_only": True}) == []


@pytest.mark.parametrize("name", MODELS)
def test_a_bfloat16_model_takes_the_processors_float32_pixels(name):
    """model.to(torch.bfloat16) then the image processor's float32 tensors: BiRefNet failed inside Swin's patch
    embedding ('Input type (float) and bias type (c10::BFloat16) should be the same'); the others cast."""
    model, inputs = _model_and_inputs(name)
    model.to(torch.bfloat16)
    try:
        with torch.no_grad():
            logits = model(**inputs).logits
    finally:
        model.float()
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_a_home_relative_path_saves_and_loads_in_the_home_folder(tmp_path, monkeypatch):
    """transformers took "~/models/x" literally: save_pretrained wrote ./~/models/x, from_pretrained said it was not
    a valid repo id."""
    model, inputs = _model_and_inputs("sam2-unet")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    model.save_pretrained("~/models/x", include_backbone=True)
    assert (tmp_path / "home" / "models" / "x" / "config.json").is_file() and not (tmp_path / "~").exists()
    loaded = type(model).from_pretrained("~/models/x").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    # predict / evaluate / the demo page load through these (--model=~/models/x: no shell expands it after "=")
    from dsunet_hf.predict import load_model_and_processor
    from dsunet_hf.prompt_predict import visual_prompt_model_type

    through_cli, _ = load_model_and_processor("~/models/x")
    with torch.no_grad():
        torch.testing.assert_close(through_cli(**inputs).logits, model(**inputs).logits)
    tiny_visual_prompt().save_pretrained("~/models/vp")
    assert visual_prompt_model_type("~/models/vp") == "visual_prompt"


def test_card_metadata_lists_only_hub_dataset_ids():
    """The card's ``datasets:`` took every training-data name, local folders included ("ECSSD", "COD10K (Train)"):
    the Hub links each entry to a dataset repo, so those were broken links. The card's text still names them."""
    model, _ = _model_and_inputs("sam2-unet")
    names = ["ECSSD", "COD10K (Train)", "org/COD10K (Train)", "org/COD10K", "user/duts"]
    card = model.model_card(dataset_names=names)
    assert card.data.datasets == ["org/COD10K", "user/duts"]
    assert all(name in card.text for name in names)
    assert model.model_card(dataset_names=["ECSSD"]).data.datasets is None


def test_a_misspelt_config_field_is_refused_and_other_extras_are_kept(tmp_path):
    """transformers' configs keep any keyword as an attribute: Sam2UNetConfig(finetune_strategyy="lora") built an
    adapter model without a word (the README's Python check found it)."""
    from dsunet_hf import BiRefNetConfig, Sam2UNetConfig
    from dsunet_hf.models.visual_prompt.configuration_visual_prompt import VisualPromptConfig

    with pytest.raises(ValueError, match=r"^Sam2UNetConfig: no field 'finetune_strategyy'; did you mean "
                                         r"'finetune_strategy'\?$"):
        Sam2UNetConfig(finetune_strategyy="lora")
    with pytest.raises(ValueError, match="did you mean 'backbone'"):
        BiRefNetConfig(bakbone="swin_v1_t")
    with pytest.raises(ValueError, match="did you mean 'num_queries'"):
        VisualPromptConfig(num_querys=4)
    Sam2UNetConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="did you mean 'finetune_strategy'"):  # an override of from_pretrained
        Sam2UNetConfig.from_pretrained(tmp_path, finetune_strategyy="lora")
    assert Sam2UNetConfig(my_tool_note="x").my_tool_note == "x"  # far from every field: kept, as transformers does
    from dsunet_hf import SegmentationImageProcessor

    with pytest.raises(ValueError, match=r"^SegmentationImageProcessor: no field 'sizes'; did you mean 'size'\?$"):
        SegmentationImageProcessor(sizes=352)  # was saved in preprocessor_config.json and never read
    from transformers import AutoImageProcessor

    SegmentationImageProcessor(size=32).save_pretrained(tmp_path / "processor")
    with pytest.raises(ValueError, match="did you mean 'size'"):  # transformers dropped it: the saved size stayed
        AutoImageProcessor.from_pretrained(tmp_path / "processor", sizes=64)
    assert SegmentationImageProcessor(do_resize=None).size == {"height": 352, "width": 352}  # None: the default
