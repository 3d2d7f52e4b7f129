"""A trainable-only artifact records which frozen backbone weights it was saved with (``backbone_fingerprint`` in
config.json) and refuses to load on others: another checkpoint or a moved revision in the backbone repo."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_SIZE, tiny_sam2_unet_config
from helpers import tiny_hiera, write_transformers_trunk_repo
from safetensors.torch import save_file
from transformers import AutoModelForImageSegmentation, Dinov2Config, Dinov2Model

from dsunet_hf import CheckpointMismatchError, Sam2UNetForImageSegmentation


def saved_config(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


def trained(model):
    """The trainable part moved off its initialisation, the frozen backbones as loaded."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.01)
    return model.eval()


@pytest.fixture
def hiera_repo(offline_hub, tmp_path):
    """``publish(trunk)``: a new revision of test-org/tiny-hiera (on main), returning its commit."""
    count = iter(range(100))
    return lambda trunk: offline_hub.add(
        "test-org/tiny-hiera", write_transformers_trunk_repo(tmp_path / f"hiera{next(count)}", trunk))


def publish_dinov2(offline_hub, folder, seed: int, **config) -> str:
    torch.manual_seed(seed)
    Dinov2Model(Dinov2Config(**config)).save_pretrained(folder)
    return offline_hub.add("test-org/tiny-dinov2", folder)


def test_sam2_unet_refuses_another_trunk_and_names_the_fix(hiera_repo, tmp_path):
    first = hiera_repo(tiny_hiera(1))
    model = trained(Sam2UNetForImageSegmentation.from_pretrained_backbones(tiny_sam2_unet_config()))
    model.save_pretrained(tmp_path / "artifact")
    fingerprint = saved_config(tmp_path / "artifact")["backbone_fingerprint"]
    assert list(fingerprint) == ["backbone"] and set(fingerprint["backbone"]) == {"tensors", "sum", "log_rms"}
    assert "backbone_fingerprint" not in model.config.to_dict()  # written to the file only

    x = torch.randn(1, 3, TINY_SIZE, TINY_SIZE)
    with torch.no_grad():
        expected = model(x).logits
        # The pinned commit still serves the trunk it was trained with.
        reloaded = Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "artifact")
        assert torch.equal(reloaded(x).logits, expected)
    assert not hasattr(reloaded.config, "backbone_fingerprint")  # checked, then dropped: never stale in memory

    moved = hiera_repo(tiny_hiera(2))  # "main" moved on: another trunk of the same shapes
    with pytest.raises(CheckpointMismatchError) as error:
        Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "artifact", backbone_revision="main")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'artifact'}: the frozen backbone weights")
    assert f"loaded from test-org/tiny-hiera (revision {moved})" in message
    assert "backbone_repo_id/backbone_revision it was trained with" in message
    assert "verify_backbone_weights=False" in message and first not in message

    # Loaded anyway on request (other outputs); saved again, it records the trunk it now runs on.
    anyway = Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "artifact", backbone_revision="main",
                                                          verify_backbone_weights=False)
    with torch.no_grad():
        assert not torch.allclose(anyway(x).logits, expected)
    anyway.save_pretrained(tmp_path / "again")
    assert saved_config(tmp_path / "again")["backbone_fingerprint"] != fingerprint
    Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "again")  # pinned to `moved`: loads


def test_the_same_weights_in_half_precision_pass_and_a_fine_tuned_trunk_does_not(hiera_repo, tmp_path):
    trunk = tiny_hiera(1)
    hiera_repo(trunk)
    model = trained(Sam2UNetForImageSegmentation.from_pretrained_backbones(tiny_sam2_unet_config()))
    model.save_pretrained(tmp_path / "artifact")
    for dtype in (torch.bfloat16, "float16"):  # loaded in half precision: the same weights, rounded
        assert Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "artifact", torch_dtype=dtype) is not None
    # The repo re-published in bfloat16, loaded in float32: passes too.
    hiera_repo(tiny_hiera(1).to(torch.bfloat16))
    Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "artifact", backbone_revision="main")
    # The same trunk trained a little further (values moved by 10% of each tensor's spread): other weights.
    torch.manual_seed(5)
    with torch.no_grad():
        for parameter in trunk.parameters():
            parameter.add_(0.1 * parameter.std() * torch.randn_like(parameter))
    hiera_repo(trunk)
    with pytest.raises(CheckpointMismatchError, match="are not those it was saved with"):
        Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "artifact", backbone_revision="main")


def test_dsunet_names_the_backbone_that_differs_and_push_to_hub_records_both(offline_hub, tmp_path):
    from test_dsunet import TINY_DINO, inputs, tiny_config

    from dsunet_hf import DSUNetForImageSegmentation

    offline_hub.add("test-org/tiny-hiera", write_transformers_trunk_repo(tmp_path / "hiera", tiny_hiera(1)))
    publish_dinov2(offline_hub, tmp_path / "dino", 2, **TINY_DINO)
    assert DSUNetForImageSegmentation(tiny_config()).backbone_fingerprint() is None  # never loaded: nothing recorded
    model = trained(DSUNetForImageSegmentation.from_pretrained_backbones(tiny_config()))
    model.push_to_hub("me/dsunet-tiny")
    snapshot = next((offline_hub.repo_dir("me/dsunet-tiny") / "snapshots").iterdir())
    assert set(saved_config(snapshot)["backbone_fingerprint"]) == {"backbone_sam", "backbone_dino"}
    sam, dino = inputs(1)
    with torch.no_grad():
        assert torch.equal(AutoModelForImageSegmentation.from_pretrained("me/dsunet-tiny")(sam, dino).logits,
                           model(sam, dino).logits)

    publish_dinov2(offline_hub, tmp_path / "dino2", 3, **TINY_DINO)
    with pytest.raises(CheckpointMismatchError, match=r"frozen backbone_dino weights loaded from test-org/tiny-dinov2 "
                       r"\(revision [0-9a-f]{40}\).*Pass the dino_backbone_repo_id/dino_backbone_revision"):
        AutoModelForImageSegmentation.from_pretrained("me/dsunet-tiny", dino_backbone_revision="main")
    offline_hub.add("test-org/other-hiera", write_transformers_trunk_repo(tmp_path / "hiera2", tiny_hiera(2)))
    with pytest.raises(CheckpointMismatchError, match=r"frozen backbone_sam weights loaded from test-org/other-hiera"
                       r".*sam_backbone_repo_id/sam_backbone_revision"):
        DSUNetForImageSegmentation.from_pretrained("me/dsunet-tiny", sam_backbone_repo_id="test-org/other-hiera",
                                                   sam_backbone_revision=None)


def test_birefnet_refuses_another_base_checkpoint(offline_hub, tmp_path):
    from test_birefnet import official_tiny_state_dict, tiny_config

    from dsunet_hf import BiRefNetForImageSegmentation

    def publish(seed):
        torch.manual_seed(seed)
        folder = tmp_path / f"base{seed}"
        folder.mkdir()
        tensors = {k.split(".", 1)[1]: v.contiguous() for k, v in official_tiny_state_dict().items()}
        save_file(tensors, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"architectures": ["BiRefNet"], "bb_pretrained": False}))
        return offline_hub.add("test-org/tiny-birefnet", folder)

    publish(1)
    model = trained(BiRefNetForImageSegmentation.from_pretrained_backbones(tiny_config(finetune_strategy="lora")))
    model.save_pretrained(tmp_path / "lora")
    assert list(saved_config(tmp_path / "lora")["backbone_fingerprint"]) == ["bb"]
    BiRefNetForImageSegmentation.from_pretrained(tmp_path / "lora")
    publish(2)
    with pytest.raises(CheckpointMismatchError, match=r"frozen bb weights loaded from test-org/tiny-birefnet .*"
                                                      r"base_repo_id/base_revision"):
        BiRefNetForImageSegmentation.from_pretrained(tmp_path / "lora", base_revision="main")


@pytest.mark.parametrize("family", ["dinov2_seg", "visual_prompt", "matcher"])
def test_dinov2_families_refuse_another_dinov2(family, offline_hub, tmp_path):
    if family == "dinov2_seg":
        from test_dinov2_seg import TINY_DINO, tiny

        from dsunet_hf.models.dinov2_seg import Dinov2ForSemanticSegmentation as model_class
        config, dino = tiny(), dict(TINY_DINO, image_size=518, patch_size=14)
        field = "backbone_repo_id/backbone_revision"
    elif family == "visual_prompt":
        from test_visual_prompt_head import TINY_DINO, tiny_config

        from dsunet_hf.models.visual_prompt import VisualPromptForSegmentation as model_class
        config, dino, field = tiny_config(), TINY_DINO, "dino_backbone_repo_id/dino_backbone_revision"
    else:  # config-only artifact (nothing trains), loaded by the matcher's own from_pretrained
        from test_visual_prompt_matcher import TINY_DINO, tiny_config

        from dsunet_hf.models.visual_prompt import VisualPromptMatcher as model_class
        config = tiny_config()
        dino, field = dict(TINY_DINO, image_size=518, patch_size=14), "dino_backbone_repo_id/dino_backbone_revision"
    publish_dinov2(offline_hub, tmp_path / "dino1", 1, **dino)
    model = model_class.from_pretrained_backbones(config)
    model.save_pretrained(tmp_path / "artifact")
    assert list(saved_config(tmp_path / "artifact")["backbone_fingerprint"]) == ["backbone"]
    model_class.from_pretrained(tmp_path / "artifact")
    publish_dinov2(offline_hub, tmp_path / "dino2", 2, **dino)
    with pytest.raises(CheckpointMismatchError, match=f"frozen backbone weights loaded from test-org/tiny-dinov2 .*"
                                                      f"{field}"):
        model_class.from_pretrained(tmp_path / "artifact", dino_backbone_revision="main") if family != "dinov2_seg" \
            else model_class.from_pretrained(tmp_path / "artifact", backbone_revision="main")
    loaded = model_class.from_pretrained(tmp_path / "artifact", verify_backbone_weights=False)  # loads anyway
    assert str(loaded.name_or_path) == str(tmp_path / "artifact")  # named in the errors (the matcher had none)


def test_older_and_self_contained_artifacts_load_unchecked(hiera_repo, tmp_path):
    hiera_repo(tiny_hiera(1))
    model = trained(Sam2UNetForImageSegmentation.from_pretrained_backbones(tiny_sam2_unet_config()))
    model.save_pretrained(tmp_path / "full", include_backbone=True)
    assert "backbone_fingerprint" not in saved_config(tmp_path / "full")  # it holds the backbone itself
    model.save_pretrained(tmp_path / "old")
    config = saved_config(tmp_path / "old")
    del config["backbone_fingerprint"]  # as saved before the fingerprint existed
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    hiera_repo(tiny_hiera(2))
    Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "old", backbone_revision="main")
    # A random-init model (backbones never loaded) records nothing: it loads on the repo's weights, as before.
    fresh = Sam2UNetForImageSegmentation(tiny_sam2_unet_config())
    fresh.save_pretrained(tmp_path / "fresh")
    assert "backbone_fingerprint" not in saved_config(tmp_path / "fresh")


def test_a_converted_checkpoint_records_the_trunk_it_holds(hiera_repo, tmp_path):
    """A model whose frozen weights came from a whole checkpoint (as a converter loads them) records those once
    ``record_frozen_weights`` is called: loaded later on the repo's other trunk, it is refused."""
    hiera_repo(tiny_hiera(2))  # the repo the config names holds another trunk (SAM 2.1 for a 2.0-trained model)
    trained_on = Sam2UNetForImageSegmentation(tiny_sam2_unet_config())
    trained_on.backbone.load_trunk_state_dict(tiny_hiera(1).state_dict())
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config())
    model.load_state_dict(trained(trained_on).state_dict())
    model.record_frozen_weights()
    model.save_pretrained(tmp_path / "converted")
    with pytest.raises(CheckpointMismatchError, match="backbone weights loaded from test-org/tiny-hiera"):
        Sam2UNetForImageSegmentation.from_pretrained(tmp_path / "converted")


def test_a_config_read_from_an_artifact_starts_a_new_model_on_any_backbone(hiera_repo, tmp_path):
    """from_pretrained_backbones(AutoConfig.from_pretrained(artifact)) trains anew: nothing to check (it was refused
    as if trained parts would give other outputs)."""
    from transformers import AutoConfig

    hiera_repo(tiny_hiera(1))
    Sam2UNetForImageSegmentation.from_pretrained_backbones(tiny_sam2_unet_config()).save_pretrained(tmp_path / "a")
    config = AutoConfig.from_pretrained(tmp_path / "a")
    assert "backbone_fingerprint" in config.to_dict()
    hiera_repo(tiny_hiera(2))
    model = Sam2UNetForImageSegmentation.from_pretrained_backbones(config)
    assert "backbone_fingerprint" not in model.config.to_dict()
