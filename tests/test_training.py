"""Training: accelerate launch end to end, exact resume, checkpoints, logged metrics."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import SHARED_DATA, TINY_HIERA, TINY_SIZE
from PIL import Image
from safetensors.torch import load_file

from dsunet_hf.synthetic import make_camouflage_dataset
from dsunet_hf.training import TrainingArguments, checkpoint_dirs, train

REPO = Path(__file__).resolve().parents[1]
TINY_OVERRIDES = json.dumps({"hiera_config": TINY_HIERA, "rfb_channels": 16})


@pytest.fixture(scope="module")
def generated_data(tmp_path_factory):
    return make_camouflage_dataset(tmp_path_factory.mktemp("data") / "camo", num_pairs=24, size=(80, 72), seed=1)


def tiny_args(data, output_dir, **overrides) -> TrainingArguments:
    fields = dict(
        train_data=str(data), output_dir=str(output_dir), backbone="random", backbone_preset="tiny",
        config_overrides=TINY_OVERRIDES, image_size=TINY_SIZE, batch_size=4, max_steps=8, save_steps=2,
        eval_steps=4, save_total_limit=10, validation_ratio=0.25, report_to="none", progress=False, logging_steps=1,
    )
    fields.update(overrides)
    return TrainingArguments(**fields)


def launch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(REPO / "examples" / "train.py"), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def check_run_outputs(output: Path, dataset: str) -> None:
    model_dir = output / "model"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md"):
        assert (model_dir / name).is_file(), name
    card = (model_dir / "README.md").read_text()
    assert "S-measure" in card and dataset in card
    checkpoints = checkpoint_dirs(output)
    assert checkpoints and (checkpoints[-1] / "trainable_weights.safetensors").is_file()
    assert json.loads((checkpoints[-1] / "trainer_state.json").read_text())["global_step"] == int(
        checkpoints[-1].name.split("-")[-1]
    )
    assert not any(p.name.endswith(".tmp") for p in (output / "checkpoints").iterdir())
    logged = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in row for row in logged)
    validation = [row for row in logged if "val/S-measure" in row]
    assert validation and all(0 <= row["val/S-measure"] <= 1 for row in validation)
    assert {"val/MAE", "val/mDice", "val/E-measure (mean)", "val/loss"} <= set(validation[-1])
    assert all(0 < row["val/loss"] < float("inf") for row in validation)  # the validation loss (BiRefNet #211)


def test_accelerate_launch_on_generated_data(generated_data, tmp_path):
    output = tmp_path / "run"
    launch(["--train-data", str(generated_data), "--output-dir", str(output), "--backbone", "random",
            "--backbone-preset", "tiny", "--config-overrides", TINY_OVERRIDES, "--image-size", str(TINY_SIZE),
            "--batch-size", "4", "--max-steps", "4", "--save-steps", "2", "--eval-steps", "2",
            "--save-total-limit", "1", "--report-to", "tensorboard", "--validation-ratio", "0.25"], cwd=tmp_path)
    check_run_outputs(output, "camo")
    assert [p.name for p in checkpoint_dirs(output)] == ["checkpoint-4"]  # the keep limit removed checkpoint-2
    assert list((output / "logs").rglob("events.out.tfevents*")), "no TensorBoard event file"
    from transformers import AutoModelForImageSegmentation

    import dsunet_hf  # noqa: F401

    model = AutoModelForImageSegmentation.from_pretrained(output / "model")  # self-contained (random backbone)
    assert model(torch.randn(1, 3, TINY_SIZE, TINY_SIZE)).logits.shape == (1, 1, TINY_SIZE, TINY_SIZE)


# examples/train.py with rank 1 writing its RNG state 2 s late (a slow disk or a busy node).
SLOW_RANK_TRAIN = f"""
import runpy, sys, time
import torch

save = torch.save

def slow_save(obj, f, *args, **kwargs):
    if "random_states_1" in str(f):
        time.sleep(2)
    return save(obj, f, *args, **kwargs)

torch.save = slow_save
sys.argv[0] = {str(REPO / "examples" / "train.py")!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_torchrun_on_cpu_trains_as_one_process_group(generated_data, tmp_path):
    # accelerate forms a CPU process group only when told cpu=True; without it the two processes would each
    # train alone, race to write the same checkpoints and each print a summary. Rank 1 is slow to write its part
    # of the checkpoint: the checkpoint is renamed into place only once every process has written it.
    output = tmp_path / "ddp"
    (tmp_path / "slow_rank_train.py").write_text(SLOW_RANK_TRAIN)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(tmp_path / "slow_rank_train.py"), "--train-data", str(generated_data), "--output-dir", str(output),
               "--backbone", "random", "--backbone-preset", "tiny", "--config-overrides", TINY_OVERRIDES,
               "--image-size", str(TINY_SIZE), "--batch-size", "2", "--max-steps", "2", "--eval-steps", "2",
               "--report-to", "none", "--validation-ratio", "0.25"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count('"global_step"') == 1, result.stdout
    assert "[RANK 1]" not in result.stderr and "[RANK 0] Saving current state" in result.stderr
    check_run_outputs(output, "camo")
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in checkpoint_dirs(output)[-1].iterdir()}


@pytest.mark.skipif(not (SHARED_DATA / "ECSSD").is_dir(), reason=f"real benchmark samples not found under {SHARED_DATA}")
def test_accelerate_launch_on_real_samples(tmp_path):
    output = tmp_path / "ecssd"
    launch(["--train-data", str(SHARED_DATA / "ECSSD"), "--output-dir", str(output), "--backbone", "random",
            "--backbone-preset", "tiny", "--config-overrides", TINY_OVERRIDES, "--image-size", str(TINY_SIZE),
            "--batch-size", "4", "--max-steps", "3", "--eval-steps", "3", "--max-val-samples", "8",
            "--report-to", "none"], cwd=tmp_path)
    check_run_outputs(output, "ECSSD")


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(generated_data, tmp_path):
    straight = train(tiny_args(generated_data, tmp_path / "straight", max_steps=6, logging_steps=4))
    assert straight["global_step"] == 6
    # Stop after step 3 (mid-epoch: 5 batches per epoch), then resume from the latest checkpoint.
    first = train(tiny_args(generated_data, tmp_path / "split", max_steps=6, logging_steps=4, stop_after_steps=3))
    assert first["global_step"] == 3 and "model_dir" not in first
    assert [p.name for p in checkpoint_dirs(tmp_path / "split")] == ["checkpoint-2", "checkpoint-3"]
    # Resumed at another batch size it skipped the wrong samples, or never reached its last step: refused, naming it.
    for other, named in ((dict(batch_size=2), r"--batch-size 4 \(now 2\)"),
                         (dict(gradient_accumulation_steps=2), r"--gradient-accumulation-steps 1 \(now 2\)")):
        with pytest.raises(ValueError, match=rf"checkpoint-3: trained with {named}.*Resume with --batch-size 4"):
            train(tiny_args(generated_data, tmp_path / "split", max_steps=6, logging_steps=4,
                            resume_from_checkpoint="latest", **other))
    (tmp_path / "split" / "model").mkdir()
    (tmp_path / "split" / "model" / "stale.safetensors").write_text("an older model's file")
    # Was: a resume from an older checkpoint left the later ones of the course it abandons (here a checkpoint-5 that
    # found a best model at step 5): killed before they were overwritten, `latest` resumed that abandoned course, and
    # its best/ became model/. They are moved aside now, whole, not deleted.
    for abandoned in ("checkpoints/checkpoint-5", "best"):
        (tmp_path / "split" / abandoned).mkdir()
        (tmp_path / "split" / abandoned / "trainer_state.json").write_text(json.dumps({"best_step": 5}))
    resumed = train(tiny_args(generated_data, tmp_path / "split", max_steps=6, logging_steps=4,
                              resume_from_checkpoint=str(tmp_path / "split" / "checkpoints" / "checkpoint-3")))
    assert resumed["global_step"] == 6
    assert not (tmp_path / "split" / "model" / "stale.safetensors").exists()  # the best model replaced model/ whole
    assert [p.name for p in checkpoint_dirs(tmp_path / "split")] == ["checkpoint-2", "checkpoint-3", "checkpoint-4",
                                                                      "checkpoint-6"]
    (aside,) = (tmp_path / "split" / "abandoned-checkpoints").iterdir()
    assert aside.name.endswith("-resumed-from-checkpoint-3") and sorted(p.name for p in aside.iterdir()) == \
        ["best", "checkpoint-5"]

    final_straight = load_file(str(tmp_path / "straight/checkpoints/checkpoint-6/trainable_weights.safetensors"))
    final_split = load_file(str(tmp_path / "split/checkpoints/checkpoint-6/trainable_weights.safetensors"))
    assert final_straight.keys() == final_split.keys()
    for key, value in final_straight.items():
        assert torch.equal(value, final_split[key]), key
    def train_losses(run):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [(row["step"], row["train/loss"]) for row in rows if "train/loss" in row]

    # The logging window across the stop (steps 1-4) is logged once, whole, as in the uninterrupted run.
    assert train_losses("split") == train_losses("straight") and [s for s, _ in train_losses("split")] == [4, 6]
    assert straight["best_metrics"] == resumed["best_metrics"]


def test_the_best_model_can_be_the_one_with_the_lowest_validation_loss(generated_data, tmp_path):
    # num_workers: training batches and validation samples both read in worker processes
    train(tiny_args(generated_data, tmp_path / "run", metric_for_best_model="loss", max_steps=3, eval_steps=1,
                    save_steps=3, num_workers=2))
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = {row["step"]: row["val/loss"] for row in logged if "val/loss" in row}
    assert len(losses) == 3
    state = json.loads((tmp_path / "run" / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["best_metric"] == min(losses.values()) and losses[state["best_step"]] == state["best_metric"]


def test_bad_arguments_are_refused(generated_data, tmp_path):
    with pytest.raises(ValueError, match="metric"):
        train(tiny_args(generated_data, tmp_path / "x", metric_for_best_model="accuracy"))
    with pytest.raises(ValueError, match="hub-model-id"):
        train(tiny_args(generated_data, tmp_path / "x", push_to_hub=True))
    with pytest.raises(FileNotFoundError, match="not a checkpoint"):
        train(tiny_args(generated_data, tmp_path / "x", resume_from_checkpoint=str(tmp_path)))
    with pytest.raises(ValueError, match="--reduce-zero-label is for multi-class label maps"):
        train(tiny_args(generated_data, tmp_path / "x", reduce_zero_label=True))
    with pytest.raises(ValueError, match="--logging-steps must be at least 1"):
        train(tiny_args(generated_data, tmp_path / "x", logging_steps=0))


def test_push_to_hub_at_the_end(generated_data, tmp_path, hub_namespace, monkeypatch):
    """The repo is created before training (a bad token stops the run first), once; a name without a namespace is
    the Hub's full id in the cards."""
    offline_hub = hub_namespace
    summary = train(tiny_args(generated_data, tmp_path / "run", max_steps=2, eval_steps=2, push_to_hub=True,
                              hub_model_id="camo-tiny"))
    assert offline_hub.pushes == [("me/camo-tiny", "End of training")] and summary["hub_repo_id"] == "me/camo-tiny"
    assert offline_hub.create_calls == [("me/camo-tiny", None)]
    assert 'from_pretrained("me/camo-tiny")' in (tmp_path / "run" / "model" / "README.md").read_text()
    from dsunet_hf import Sam2UNetForImageSegmentation

    pulled = Sam2UNetForImageSegmentation.from_pretrained("me/camo-tiny")
    card = next((offline_hub.repo_dir("me/camo-tiny") / "snapshots").iterdir()) / "README.md"
    assert "S-measure" in card.read_text() and "camo" in card.read_text()
    # The best validation metrics are the card's model-index too (what the Hub shows on the model page).
    from huggingface_hub import ModelCard

    data = ModelCard.load(card).data
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    validation = next(row for row in logged if "val/S-measure" in row)
    results = {result.metric_name: result for result in data.eval_results}
    assert data.model_name == "camo-tiny" and {"S-measure", "MAE", "loss"} <= set(results)
    assert results["S-measure"].metric_value == round(validation["val/S-measure"], 4)
    assert results["S-measure"].dataset_split == "validation"
    assert results["S-measure"].dataset_name.endswith("(25% held out)")
    assert pulled(torch.randn(1, 3, TINY_SIZE, TINY_SIZE)).logits.shape[-1] == TINY_SIZE
    # An upload that fails at the end said only the network's error, as if the run had failed: now where the model is.
    import huggingface_hub

    def unreachable(self, **kwargs):
        raise ConnectionError("Connection aborted.")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", unreachable)
    with pytest.raises(OSError, match=r"^training finished and the model is saved in .*model, but uploading it to "
                                      r"me/camo-tiny failed \(ConnectionError: Connection aborted.\); upload it with "
                                      r"`dsunet-hf push .*model me/camo-tiny`$"):
        train(tiny_args(generated_data, tmp_path / "run", max_steps=2, eval_steps=2, push_to_hub=True,
                        hub_model_id="camo-tiny", resume_from_checkpoint="latest"))  # done: straight to the upload


def test_demo_runs_end_to_end(tmp_path):
    from dsunet_hf.demo import run_demo

    stale = tmp_path / "demo" / "predictions" / "masks" / "from-another-run.png"  # was: left beside the new ones
    stale.parent.mkdir(parents=True)
    stale.touch()
    result = run_demo(tmp_path / "demo", max_steps=3, num_pairs=10, image_size=64)
    assert not stale.exists() and len(list(stale.parent.glob("*.png"))) == 2  # the validation share of 10 pairs
    assert (tmp_path / "demo" / "contact_sheet.png").is_file()
    assert (tmp_path / "demo" / "evaluation" / "evaluation.json").is_file()
    assert (tmp_path / "demo" / "train" / "model" / "README.md").is_file()
    (metrics,) = result["metrics"].values()
    assert 0 <= metrics["S-measure"] <= 1
    from dsunet_hf.cli import main as cli_main

    (tmp_path / "empty").mkdir()
    for flags, message in ((["--data", str(tmp_path / "empty")], "demo: .*empty: no image/mask folder pair"),
                           (["--backbone-preset", "huge"], "demo: .*huge")):  # were tracebacks
        with pytest.raises(SystemExit, match=message):
            cli_main(["demo", "--output-dir", str(tmp_path / "again"), "--max-steps", "1", *flags])


@pytest.mark.skipif(not (SHARED_DATA / "ECSSD").is_dir(), reason=f"real benchmark samples not found under {SHARED_DATA}")
def test_accelerate_launch_dsunet_on_real_samples(tmp_path):
    overrides = json.dumps({"hiera_config": TINY_HIERA, "dino_preset": "small", "decoder_channels": 16,
                            "fusion_reduction": 4, "dino_image_size": 56,
                            "dino_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}})
    output = tmp_path / "dsunet"
    launch(["--model", "dsunet", "--train-data", str(SHARED_DATA / "ECSSD"), "--output-dir", str(output),
            "--backbone", "random", "--backbone-preset", "tiny", "--config-overrides", overrides,
            "--image-size", "128", "--batch-size", "2", "--max-steps", "2", "--eval-steps", "2",
            "--max-val-samples", "4", "--report-to", "none"], cwd=tmp_path)
    check_run_outputs(output, "ECSSD")
    config = json.loads((output / "model" / "config.json").read_text())
    assert config["model_type"] == "dsunet" and json.loads((output / "model" / "preprocessor_config.json").read_text())[
        "extra_sizes"] == {"dino_pixel_values": {"height": 56, "width": 56}}


def test_accelerate_launch_dinov2_seg_on_a_multiclass_palette_dataset(generated_data, tmp_path):
    """Three classes (background, object left / right of centre) as palette PNGs, numbered as ADE20K does
    (0 = other, classes from 1: --reduce-zero-label), which the saved processor records for evaluation."""
    import numpy as np
    from PIL import Image

    from dsunet_hf.semantic import palette_png

    data = tmp_path / "multiclass"
    (data / "masks").mkdir(parents=True)
    (data / "images").symlink_to(generated_data / "images")
    for mask_file in sorted((generated_data / "masks").glob("*.png")):
        binary = np.asarray(Image.open(mask_file)) > 127
        classes = binary.astype(np.uint8)
        classes[:, classes.shape[1] // 2:] *= 2
        classes += 1  # ADE20K numbering: 1..3, 0 = other
        classes[0, 0] = 0  # an "other" pixel, ignored
        palette_png(classes, 4).save(data / "masks" / mask_file.name)
    (data / "id2label.json").write_text(json.dumps({"0": "background", "1": "left", "2": "right"}))
    overrides = json.dumps({"dino_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4},
                            "head_type": "multilayer", "num_layers": 2, "crop_size": 42, "stride": 28})
    output = tmp_path / "seg"
    launch(["--model", "dinov2-seg", "--train-data", str(data), "--output-dir", str(output), "--backbone", "random",
            "--backbone-preset", "small", "--config-overrides", overrides, "--batch-size", "4", "--max-steps", "3",
            "--eval-steps", "3", "--save-steps", "3", "--validation-ratio", "0.25", "--report-to", "none",
            "--reduce-zero-label"], cwd=tmp_path)
    logged = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert any("val/mIoU" in row and 0 <= row["val/mIoU"] <= 1 for row in logged)
    from dsunet_hf import SegmentationImageProcessor

    assert SegmentationImageProcessor.from_pretrained(output / "model").do_reduce_labels
    assert (output / "checkpoints" / "checkpoint-3" / "trainable_weights.safetensors").is_file()
    card = (output / "model" / "README.md").read_text()
    assert "background, left, right" in card and "mIoU" in card  # class names came from id2label.json
    saved_args = json.loads((output / "training_args.json").read_text())
    assert (saved_args["weight_decay"], saved_args["lr_schedule"], saved_args["warmup_steps"]) == (1e-4, "poly", 1500)
    from transformers import AutoModelForSemanticSegmentation

    import dsunet_hf  # noqa: F401

    model = AutoModelForSemanticSegmentation.from_pretrained(output / "model")
    assert model.segment(torch.randn(1, 3, 50, 60), "slide").shape == (1, 3, 50, 60)


def test_malformed_config_overrides_are_named(generated_data, tmp_path):
    from dsunet_hf.training import build_config

    with pytest.raises(ValueError, match="--config-overrides is not valid JSON"):
        train(tiny_args(generated_data, tmp_path / "x", config_overrides="{rfb_channels: 16"))
    with pytest.raises(ValueError, match="JSON object"):
        train(tiny_args(generated_data, tmp_path / "x", config_overrides="[1, 2]"))
    # A misspelled field would be stored on the config and ignored.
    with pytest.raises(ValueError, match=r"Sam2UNetConfig has no field 'rfb_chanels' \(did you mean 'rfb_channels'\?\)"):
        build_config(tiny_args(generated_data, tmp_path / "x", config_overrides=json.dumps({"rfb_chanels": 8})))
    # dinov2-seg has no single input size: --image-size would be ignored.
    with pytest.raises(ValueError, match=r"--image-size does not apply to dinov2-seg.*crop_size"):
        build_config(TrainingArguments(train_data=str(generated_data), model="dinov2-seg", image_size=224))


@pytest.mark.parametrize("content, message", [
    ('{"0": "sky", "1": "road", "3": "car"}', "id2label must name the classes 0..2"),  # was: no file named
    ('{"0": "sky", "one": "road"}', "not a JSON object of class id -> name"),  # was: int()'s "invalid literal"
    ('["sky", "road"]', "not a JSON object of class id -> name"),  # was: "'list' object has no attribute 'items'"
])
def test_a_bad_labels_file_is_named(tmp_path, content, message):
    from dsunet_hf.training import build_config

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "id2label.json").write_text(content)
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / 'id2label.json'))}: .*{re.escape(message)}"):
        build_config(TrainingArguments(train_data=str(tmp_path), model="dinov2-seg"))


def test_a_backbone_preset_fetches_that_size_s_repo(generated_data):
    """--backbone-preset tiny trained on Hiera-L's repo before (a size-mismatch error after the download)."""
    from dsunet_hf.training import build_config

    def repos(model, preset, **overrides):
        _, config = build_config(TrainingArguments(train_data=str(generated_data), model=model, backbone_preset=preset,
                                                   config_overrides=json.dumps(overrides)))
        return [getattr(config, name) for name in ("backbone_repo_id", "sam_backbone_repo_id", "dino_backbone_repo_id")
                if hasattr(config, name)]

    assert repos("sam2-unet", "tiny") == ["facebook/sam2-hiera-tiny"]
    assert repos("dsunet", "base_plus", dino_preset="base") == ["facebook/sam2.1-hiera-base-plus", "facebook/dinov2-base"]
    assert repos("dinov2-seg", "small") == ["facebook/dinov2-small"]
    assert repos("sam2-unet", "small", backbone_repo_id="me/my-hiera") == ["me/my-hiera"]  # a given repo stays


def test_bad_numbers_and_a_truncated_file_are_one_line_and_verify_data_full_leaves_it_out(generated_data, tmp_path):
    """`train` printed tracebacks for every refused argument (--batch-size 0 was a ZeroDivisionError); a truncated
    file (it passes the header check) stopped training at its batch with a traceback."""
    import shutil
    from dataclasses import asdict

    from dsunet_hf.training import main as train_main

    saved = tmp_path / "args.json"
    saved.write_text(json.dumps(asdict(tiny_args(generated_data, tmp_path / "x", max_steps=2, eval_steps=2))))
    for flags, message in ((["--batch-size", "0"], "train: --batch-size must be at least 1, got 0"),
                           (["--learning-rate", "nan"], "train: --learning-rate must be a finite number >= 0, got nan"),
                           (["--validation-ratio", "1.5"], r"train: --validation-ratio must be in \(0, 1\)"),
                           (["--verify-data", "some"], "train: --verify-data must be header, full or none")):
        with pytest.raises(SystemExit, match=message):
            train_main([str(saved), *flags])
    data = tmp_path / "data"
    shutil.copytree(generated_data, data)
    for mask in sorted((data / "masks").iterdir())[::2]:  # every other mask: the first batch meets one
        mask.write_bytes(mask.read_bytes()[: mask.stat().st_size // 2])  # a valid header, half the pixels
    with pytest.raises(SystemExit, match=r"train: cannot read mask .*truncated.*--verify-data full"):
        train_main([str(saved), "--train-data", str(data), "--output-dir", str(tmp_path / "header"),
                    "--max-steps", "1"])
    summary = train(tiny_args(data, tmp_path / "full", max_steps=1, eval_steps=1, verify_data="full"))
    assert summary["global_step"] == 1


def test_max_val_samples_below_one_is_refused_before_anything_loads(generated_data, tmp_path):
    """--max-val-samples 0 was accepted and the run died at its first validation ("no sample could be evaluated")."""
    from dsunet_hf.training import check_numbers

    for value in (0, -3):
        with pytest.raises(ValueError, match=f"--max-val-samples must be at least 1, got {value}"):
            check_numbers(tiny_args(generated_data, tmp_path / "x", max_val_samples=value))
    check_numbers(tiny_args(generated_data, tmp_path / "x", max_val_samples=1))


def test_bad_options_are_refused_before_anything_loads(generated_data, tmp_path):
    """--lr-schedule was checked only once the model and data had loaded (naming `lr_schedule`); --warmup-steps -5
    and --stop-after-steps -1 (a run that stopped at once, without a checkpoint) were accepted; --validation-ratio 0
    passed here and was refused by the data split after the model had loaded."""
    from dsunet_hf.training import check_numbers

    for options, message in (({"lr_schedule": "linear"}, "--lr-schedule must be one of cosine-epoch, cosine, poly, "
                                                         "constant, got 'linear'"),
                             ({"warmup_steps": -5}, "--warmup-steps must be 0 or more, got -5"),
                             ({"stop_after_steps": -1}, "--stop-after-steps must be at least 1, got -1"),
                             ({"stop_after_steps": 0}, "--stop-after-steps must be at least 1, got 0"),
                             ({"validation_ratio": 0.0}, r"--validation-ratio must be in \(0, 1\) without --val-data"),
                             ({"verify_data": "all"}, "--verify-data must be header, full or none, got 'all'")):
        with pytest.raises(ValueError, match=message):
            check_numbers(tiny_args(generated_data, tmp_path / "x", **options))
    # With --val-data nothing is split off: the ratio is not used.
    check_numbers(tiny_args(generated_data, tmp_path / "x", val_data=str(generated_data), validation_ratio=0.0,
                            lr_schedule="poly", warmup_steps=0, stop_after_steps=1))


def test_an_epochs_short_last_accumulation_window_averages_its_micro_batches(generated_data, tmp_path, monkeypatch):
    """accelerate divides each loss by --gradient-accumulation-steps, also in an epoch's last window of fewer
    micro-batches: with 4 steps asked for and an epoch of 2 micro-batches, the step got half the gradient."""
    norms = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    for accumulation in (2, 4):  # 18 training samples in batches of 12: 2 micro-batches per epoch
        train(tiny_args(generated_data, tmp_path / f"ga{accumulation}", batch_size=12, max_steps=1, save_steps=100,
                        eval_steps=100, max_val_samples=1, gradient_accumulation_steps=accumulation))
    assert len(norms) == 2 and norms[1] == pytest.approx(norms[0], rel=1e-6)


def test_a_run_killed_after_its_checkpoint_logs_each_step_once_when_resumed(generated_data, tmp_path):
    """Steps logged after the last checkpoint were logged again by the resumed run: twice in metrics.jsonl and
    TensorBoard (with different values where the replay is not bit-identical, as on GPUs); so were those of an attempt
    killed before its first checkpoint, by the run started again."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    output = tmp_path / "run"
    options = dict(max_steps=3, save_steps=1, eval_steps=2, max_val_samples=1, report_to="tensorboard")
    # An earlier attempt killed before its first checkpoint (nothing to resume): its step 1 was there twice too.
    output.mkdir()
    (output / "metrics.jsonl").write_text('{"step": 1, "epoch": 0, "train/loss": 9.0}\n')
    with SummaryWriter(str(output / "logs" / "dsunet-hf")) as writer:
        writer.add_scalar("train/loss", 9.0, 1)
    train(tiny_args(generated_data, output, stop_after_steps=2, **options))
    # Killed while writing checkpoint-2: the steps after checkpoint-1 are replayed.
    (output / "checkpoints" / "checkpoint-2").rename(output / "checkpoints" / "checkpoint-2.tmp")
    with open(output / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 3, "train/lo')  # a line cut short by the kill
    train(tiny_args(generated_data, output, resume_from_checkpoint="latest", **options))
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "train/loss" in row] == [1, 2, 3]
    assert [row["step"] for row in rows if "val/S-measure" in row] == [2, 3]
    events = EventAccumulator(str(output / "logs" / "dsunet-hf"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3]
    assert 9.0 not in [event.value for event in events.Scalars("train/loss")]


def test_a_multi_class_model_given_0_255_masks_is_refused(generated_data, tmp_path):
    """255 is a multi-class model's ignore index: 0/255 binary masks trained the background only, silently."""
    overrides = json.dumps({"hiera_config": TINY_HIERA, "rfb_channels": 16, "num_labels": 3})
    with pytest.raises(ValueError, match=r"hold only 0 and 255, and 255 is the ignore index of Sam2UNet.*multi-class"):
        train(tiny_args(generated_data, tmp_path / "multi", config_overrides=overrides))
    assert not (tmp_path / "multi" / "checkpoints").exists()


def test_a_none_cell_of_a_saved_dataset_is_one_line(tmp_path):
    """A None mask cell of a datasets.Dataset was a TypeError traceback out of training.main."""
    from dsunet_hf.training import main as train_main

    mask = np.zeros((TINY_SIZE, TINY_SIZE), np.uint8)
    mask[4:20, 4:20] = 255
    images = [Image.fromarray(np.full((TINY_SIZE, TINY_SIZE, 3), 40 * i, np.uint8)) for i in range(4)]
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image()})
    masks = [Image.fromarray(mask)] * 3 + [None]
    datasets.Dataset.from_dict({"image": images, "mask": masks}, features=features).save_to_disk(tmp_path / "train")
    datasets.Dataset.from_dict({"image": images[:2], "mask": masks[:2]}, features=features).save_to_disk(tmp_path / "val")
    with pytest.raises(SystemExit, match=r"^train: sample 3, column 'mask': the cell is empty \(None\)$"):
        train_main(["--train-data", str(tmp_path / "train"), "--val-data", str(tmp_path / "val"), "--output-dir",
                    str(tmp_path / "out"), "--backbone", "random", "--backbone-preset", "tiny", "--config-overrides",
                    TINY_OVERRIDES, "--image-size", str(TINY_SIZE), "--batch-size", "4", "--max-steps", "1",
                    "--report-to", "none", "--no-progress"])


def test_a_runs_training_args_json_reproduces_it(generated_data, tmp_path):
    from dsunet_hf.training import main as train_main

    train(tiny_args(generated_data, tmp_path / "first", max_steps=4, eval_steps=4, save_steps=4))
    saved = tmp_path / "first" / "training_args.json"
    assert train_main([str(saved), "--output-dir", str(tmp_path / "again")]) == 0  # flags after the file win
    assert json.loads((tmp_path / "again" / "training_args.json").read_text()) == {
        **json.loads(saved.read_text()), "output_dir": str(tmp_path / "again")}
    first = load_file(str(tmp_path / "first/checkpoints/checkpoint-4/trainable_weights.safetensors"))
    again = load_file(str(tmp_path / "again/checkpoints/checkpoint-4/trainable_weights.safetensors"))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.parametrize("recipe", sorted((REPO / "examples" / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_example_recipes_parse_into_model_configs(recipe):
    from dsunet_hf.training import build_config, parse_args

    args = parse_args([str(recipe)])
    spec, config = build_config(args)
    assert isinstance(config, spec.config_class) and args.train_data and args.output_dir.startswith("runs/")
    overridden = parse_args([str(recipe), "--max-steps", "3", "--train-data", "elsewhere"])
    assert (overridden.max_steps, overridden.train_data) == (3, "elsewhere")


def test_bad_training_config_files_are_named(tmp_path):
    from dsunet_hf.training import parse_args

    (tmp_path / "typo.yaml").write_text("train_data: x\nmax_step: 3\n")
    with pytest.raises(ValueError, match=r"typo\.yaml: unknown training options \['max_step'\]"):
        parse_args([str(tmp_path / "typo.yaml")])
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json: a training config is a mapping"):
        parse_args([str(tmp_path / "list.json")])
    (tmp_path / "broken.json").write_text("{train_data: x")
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        parse_args([str(tmp_path / "broken.json")])
    with pytest.raises(FileNotFoundError, match="no such training config file"):
        parse_args([str(tmp_path / "missing.yaml")])
    # Was PyYAML's 8 lines naming "<unicode string>"; an upper-case suffix was not taken for a recipe at all.
    (tmp_path / "bad.YAML").write_text("train_data: x\nmodel: [sam2-unet\n")
    with pytest.raises(ValueError, match=r"^\S*bad\.YAML: not valid YAML \(line 3, column 1: expected ',' or ']'[^\n]*$"):
        parse_args([str(tmp_path / "bad.YAML")])
    # Repeating a run from its training_args.json (written with --overwrite-output-dir) deleted that run.
    (tmp_path / "training_args.json").write_text(json.dumps({"train_data": "x", "overwrite_output_dir": True}))
    assert parse_args([str(tmp_path / "training_args.json")]).overwrite_output_dir is False
    assert parse_args([str(tmp_path / "training_args.json"), "--overwrite-output-dir"]).overwrite_output_dir is True


def test_early_stopping_keeps_the_best_model_and_a_resume_finishes_at_once(generated_data, tmp_path, monkeypatch):
    import shutil

    import dsunet_hf.evaluate

    scores = iter([0.5, 0.6, 0.55, 0.58, 0.9, 0.9])  # best at the 2nd validation, then two without improvement

    def scripted(*args, **kwargs):
        return {"S-measure": next(scores), "MAE": 0.1, "loss": 1.0}

    monkeypatch.setattr(dsunet_hf.evaluate, "evaluate_model", scripted)
    summary = train(tiny_args(generated_data, tmp_path / "run", eval_steps=1, save_steps=100,
                              early_stopping_patience=2))
    assert summary["stopped_early"] and summary["global_step"] == 4 and summary["best_step"] == 2
    assert summary["best_metrics"]["S-measure"] == 0.6
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["checkpoint-4"]  # where it stopped: resumable
    assert "| S-measure | 0.6" in (tmp_path / "run" / "model" / "README.md").read_text()  # the best model's card
    # Killed while a newer best/ went in (_replace_dir moved the recorded one aside to best.old): the resume puts it
    # back; it was dropped with a "not in" warning and model/ became the last weights.
    os.replace(tmp_path / "run" / "best", tmp_path / "run" / "best.old")
    shutil.rmtree(tmp_path / "run" / "model")
    # The same folder spelt otherwise is still the checkpoint's own: its best.old is the recorded best.
    resumed = train(tiny_args(generated_data, tmp_path / "run" / ".." / "run", eval_steps=1, save_steps=100,
                              early_stopping_patience=2,
                              resume_from_checkpoint=str(tmp_path / "run" / "checkpoints" / "checkpoint-4")))
    assert resumed["stopped_early"] and resumed["global_step"] == 4  # no step more, no validation more
    assert resumed["best_step"] == 2 and not (tmp_path / "run" / "best.old").exists()
    assert "| S-measure | 0.6" in (tmp_path / "run" / "model" / "README.md").read_text()
    assert next(scores) == 0.9
    with pytest.raises(ValueError, match="early-stopping-patience must be at least 1"):
        train(tiny_args(generated_data, tmp_path / "x", early_stopping_patience=0))


def test_a_model_trained_without_a_repo_id_is_pushed_with_a_card_naming_the_repo(generated_data, tmp_path, offline_hub,
                                                                                monkeypatch):
    """Trained without --hub-model-id, the card's snippets say path/to/this-model and its results carry the output
    folder's name; `dsunet-hf push` names the repo in both. --push-to-hub leaves a new repo's visibility alone;
    the mixed precision left unset is accelerate's."""
    from huggingface_hub import ModelCard

    from dsunet_hf.cli import main

    train(tiny_args(generated_data, tmp_path / "run", max_steps=2, eval_steps=2))
    assert "path/to/this-model" in (tmp_path / "run" / "model" / "README.md").read_text()
    # Weights readable like the config (safetensors writes 0600 whatever the umask), checkpoints too.
    modes = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "run").rglob("*")
             if path.suffix in (".safetensors", ".json") and path.parent.name in ("model", "checkpoint-2")}
    assert modes["model.safetensors"] == modes["config.json"] == modes["trainable_weights.safetensors"]
    assert main(["push", str(tmp_path / "run" / "model"), "alice/camo-adapter"]) == 0
    card = ModelCard.load(next((offline_hub.repo_dir("alice/camo-adapter") / "snapshots").iterdir()) / "README.md")
    assert "path/to/this-model" not in card.content and 'from_pretrained("alice/camo-adapter")' in card.content
    assert card.data.model_name == "camo-adapter" and card.data.eval_results
    # `accelerate launch --mixed_precision bf16` (ACCELERATE_MIXED_PRECISION) was overridden by the flag's "no".
    from accelerate.state import AcceleratorState

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    AcceleratorState._reset_state(True)  # accelerate's state is per process: the first run in it decides, as launched
    try:
        train(tiny_args(generated_data, tmp_path / "pushed", max_steps=1, eval_steps=1, push_to_hub=True,
                        hub_model_id="org/m"))
    finally:
        AcceleratorState._reset_state(True)
    assert json.loads((tmp_path / "pushed" / "training_args.json").read_text())["mixed_precision"] == "bf16"
    assert offline_hub.create_calls[-1] == ("org/m", None)  # not False: a new repo gets the account's default


def test_a_resume_into_another_output_dir_chooses_the_best_again(generated_data, tmp_path, monkeypatch, caplog):
    """The earlier run's best/ is not in the new folder: its model/ was silently the last weights, with the old
    best's numbers in the summary (or, where the new folder held another run's best/, that model)."""
    import dsunet_hf.evaluate

    scores = iter([0.9, 0.1])
    monkeypatch.setattr(dsunet_hf.evaluate, "evaluate_model",
                        lambda *args, **kwargs: {"S-measure": next(scores), "MAE": 0.1, "loss": 1.0})
    train(tiny_args(generated_data, tmp_path / "a", max_steps=4, eval_steps=2, stop_after_steps=2))
    # Another run's best/ in the new folder: it became model/ under the checkpoint's best metric.
    (tmp_path / "b" / "best").mkdir(parents=True)
    (tmp_path / "b" / "best" / "README.md").write_text("another run's best model")
    # Another run's checkpoint in the new folder: `latest` resumed it, and --save-total-limit pruned against it.
    (tmp_path / "b" / "checkpoints" / "checkpoint-9").mkdir(parents=True)
    (tmp_path / "b" / "checkpoints" / "checkpoint-9" / "trainer_state.json").write_text("{}")
    resumed = train(tiny_args(generated_data, tmp_path / "b", max_steps=4, eval_steps=2,
                              resume_from_checkpoint=str(tmp_path / "a" / "checkpoints" / "checkpoint-2")))
    assert "the best model so far (step 2, S-measure 0.9000) is not in" in caplog.text
    assert "a resume into another folder does not copy" in caplog.text  # was: "the earlier run's best/ stays"
    assert [p.name for p in checkpoint_dirs(tmp_path / "b")] == ["checkpoint-4"]
    assert [p.name for p in (tmp_path / "b" / "abandoned-checkpoints").glob("*/*")] == ["checkpoint-9"]
    assert "moved checkpoint-9, this folder's, of another run, to" in caplog.text  # was: "written after it"
    assert resumed["best_step"] == 4 and resumed["best_metrics"]["S-measure"] == 0.1
    assert "| S-measure | 0.1" in (tmp_path / "b" / "model" / "README.md").read_text()


def test_a_best_model_saved_after_the_last_checkpoint_is_set_aside_on_resume(generated_data, tmp_path, monkeypatch,
                                                                             caplog):
    """Killed after best/ was rewritten (step 4) but before a checkpoint recorded it: the resume from checkpoint-2
    (best: step 2) kept that best/ under step 2's label, and it became model/, the model of an abandoned course."""
    import shutil

    import dsunet_hf.evaluate

    scores = iter([0.5, 0.6, 0.55, 0.9, 0.58, 0.55])
    monkeypatch.setattr(dsunet_hf.evaluate, "evaluate_model",
                        lambda *args, **kwargs: {"S-measure": next(scores), "MAE": 0.1, "loss": 1.0})
    run = tmp_path / "run"
    train(tiny_args(generated_data, run, max_steps=4, eval_steps=1, stop_after_steps=4))
    assert json.loads((run / "best" / "best_record.json").read_text()) == {"step": 4, "metric": "S-measure",
                                                                           "value": 0.9}
    assert not (run / "model" / "best_record.json").exists()  # the record stays out of the artifact
    shutil.rmtree(run / "checkpoints" / "checkpoint-4")  # the kill: best/ of step 4 written, its checkpoint not
    resumed = train(tiny_args(generated_data, run, max_steps=4, eval_steps=1, resume_from_checkpoint="latest"))
    (aside,) = (run / "abandoned-checkpoints").iterdir()
    assert json.loads((aside / "best" / "best_record.json").read_text())["step"] == 4  # moved whole, not deleted
    assert "moved best/ (the best model of step 4)" in caplog.text
    assert "is not in" in caplog.text and f"a later best model replaced it, set aside in {aside}" in caplog.text
    assert resumed["best_step"] == 3 and resumed["best_metrics"]["S-measure"] == 0.58
    assert "| S-measure | 0.58" in (run / "model" / "README.md").read_text()  # was the abandoned 0.9


@pytest.mark.parametrize("best_step", [4, 5])
def test_a_best_old_left_beside_the_checkpoints_best_is_not_abandoned(tmp_path, best_step):
    """Killed while the swap that put best/ of step 4 in deleted best.old (step 2): a resume from checkpoint-4 (which
    records step 4) moved best.old aside as "written after it by the course of training it abandons". Where best/ is
    not the checkpoint's (step 5, unrecorded), best.old is its best: it stays, to be put back as best/."""
    from dsunet_hf.training import set_aside_abandoned_checkpoints

    best = (4, 0.9) if best_step == 4 else (2, 0.6)  # what checkpoint-4 records
    checkpoint = tmp_path / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 4, "best_step": best[0],
                                                               "best_metric": best[1]}))
    for name, step, value in (("best", best_step, 0.9), ("best.old", 2, 0.6)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "best_record.json").write_text(json.dumps({"step": step, "metric": "S-measure",
                                                                      "value": value}))
    aside = set_aside_abandoned_checkpoints(tmp_path, checkpoint, 4, best, own=True)
    assert (tmp_path / "best.old").is_dir()  # was moved aside when best/ was the checkpoint's
    assert (aside is None) == (best_step == 4) and (tmp_path / "best").is_dir() == (best_step == 4)


def test_torch_compile_trains_like_eager(generated_data, tmp_path):
    # aot_eager: the forward and backward graphs captured as inductor would get them, without its (slow on a
    # 2-core CPU) code generation.
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    train(tiny_args(generated_data, tmp_path / "eager", max_steps=3, eval_steps=3, save_steps=3))
    compiled = train(tiny_args(generated_data, tmp_path / "compiled", max_steps=3, eval_steps=3, save_steps=3,
                               torch_compile=True, torch_compile_backend="aot_eager"))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the forward really went through dynamo
    assert compiled["global_step"] == 3 and (tmp_path / "compiled" / "model" / "model.safetensors").is_file()
    eager = load_file(str(tmp_path / "eager/checkpoints/checkpoint-3/trainable_weights.safetensors"))
    traced = load_file(str(tmp_path / "compiled/checkpoints/checkpoint-3/trainable_weights.safetensors"))
    assert eager.keys() == traced.keys()  # saved without the compiled wrapper's "_orig_mod." prefix
    # The same losses step by step (AdamW turns rounding-level gradient differences into lr-sized weight steps
    # where a gradient is near zero, so the weights are compared at the learning rate's scale).
    losses = {run: [json.loads(line)["train/loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
                    if "train/loss" in line] for run in ("eager", "compiled")}
    assert len(losses["eager"]) == 3
    torch.testing.assert_close(losses["compiled"], losses["eager"], rtol=1e-4, atol=1e-5)
    for key in eager:
        torch.testing.assert_close(traced[key], eager[key], rtol=0, atol=3e-3)
    torch._dynamo.reset()


def test_mid_epoch_resume_with_dropout_is_bit_identical(generated_data, tmp_path):
    # LoRA dropout draws from the global RNG at every step: iterating the data must not (5 batches per epoch).
    overrides = json.dumps({"hiera_config": TINY_HIERA, "rfb_channels": 16, "lora_rank": 2, "lora_dropout": 0.5})
    options = dict(finetune_strategy="lora", config_overrides=overrides, max_steps=4, save_steps=2, eval_steps=100,
                   max_val_samples=1)
    train(tiny_args(generated_data, tmp_path / "straight", **options))
    train(tiny_args(generated_data, tmp_path / "split", stop_after_steps=2, **options))
    train(tiny_args(generated_data, tmp_path / "split", resume_from_checkpoint="latest", **options))
    straight, split = (load_file(str(tmp_path / run / "checkpoints/checkpoint-4/trainable_weights.safetensors"))
                       for run in ("straight", "split"))
    assert any("lora" in key for key in straight) and straight.keys() == split.keys()
    assert all(torch.equal(straight[key], split[key]) for key in straight)


def test_a_fresh_run_refuses_an_output_dir_holding_checkpoints(generated_data, tmp_path):
    options = dict(max_steps=1, eval_steps=1, save_steps=1)
    train(tiny_args(generated_data, tmp_path / "run", **options))
    # Its checkpoints would be pruned against the earlier run's, and "latest" would resume that one.
    with pytest.raises(ValueError, match=r"run/checkpoints holds checkpoints of an earlier run \(up to checkpoint-1\): "
                                         r"continue it with --resume-from-checkpoint latest.*--overwrite-output-dir"):
        train(tiny_args(generated_data, tmp_path / "run", seed=5, **options))
    (tmp_path / "run" / "checkpoints" / "checkpoint-9").mkdir()  # an earlier run's, beyond the new run's steps
    # A run refused for another reason deletes nothing: the earlier run goes only once everything was checked.
    with pytest.raises(ValueError, match="--metric-for-best-model 'S-mesure'"):
        train(tiny_args(generated_data, tmp_path / "run", overwrite_output_dir=True, metric_for_best_model="S-mesure",
                        **options))
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["checkpoint-1", "checkpoint-9"]
    train(tiny_args(generated_data, tmp_path / "run", seed=5, overwrite_output_dir=True, **options))
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["checkpoint-1"]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2  # one train, one val row: new run's
    state = json.loads((tmp_path / "run" / "checkpoints" / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["global_step"] == 1


@pytest.mark.parametrize("schedule", ["poly", "cosine", "cosine-epoch", "constant"])
def test_warmup_and_decay_count_optimizer_steps_at_any_process_count(schedule):
    from dsunet_hf.training import lr_lambda_factory

    args = TrainingArguments(train_data="x", learning_rate=1e-3, warmup_steps=4, lr_schedule=schedule)
    one = lr_lambda_factory(args, total_steps=10, steps_per_epoch=5)
    two = lr_lambda_factory(args, total_steps=10, steps_per_epoch=5, num_processes=2)
    # accelerate steps a prepared scheduler num_processes times per optimizer step.
    assert [two(2 * step) for step in range(11)] == [one(step) for step in range(11)]
    if schedule == "poly":  # mmcv: (1 - step/total) from step 0, times a linear warm-up from 1e-6
        assert [two(2 * step) for step in range(6)] == pytest.approx(
            [1e-6, 0.9 * (0.25 + 0.75e-6), 0.8 * (0.5 + 0.5e-6), 0.7 * (0.75 + 0.25e-6), 0.6, 0.5], rel=1e-9)
        assert two(2 * 10) == 0.0
    else:
        assert [two(2 * step) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]  # warm-up: --warmup-steps optimizer steps


def test_a_warmup_as_long_as_the_run_is_warned_of(generated_data, tmp_path, monkeypatch, caplog):
    """dinov2-seg's recipe warm-up (1500 steps) in a --max-steps 500 run: the learning rate never got to its peak,
    silently."""
    import dsunet_hf.training

    class Scheduled(Exception):
        """Raised where the schedule is built: the warning comes before it, nothing needs to train."""

    def stop(*args, **kwargs):
        raise Scheduled

    monkeypatch.setattr(dsunet_hf.training, "lr_lambda_factory", stop)
    with pytest.raises(Scheduled):
        train(tiny_args(generated_data, tmp_path / "run", warmup_steps=500, max_steps=500, learning_rate=1e-3))
    assert ("--warmup-steps 500 >= this run's 500 optimizer steps: the whole run is warm-up, below the peak "
            "--learning-rate 0.001; give --warmup-steps below 500 (e.g. 50, a tenth of the run)") in caplog.text
    caplog.clear()
    with pytest.raises(Scheduled):
        train(tiny_args(generated_data, tmp_path / "run2", warmup_steps=499, max_steps=500))
    assert "--warmup-steps" not in caplog.text and "--mixed-precision" not in caplog.text
    # Was: --mixed-precision fp16 on the CPU trained in float32 (accelerate's autocast is a no-op there), silently,
    # and training_args.json said fp16.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # accelerate's state is per process: the first run in it decides
    try:
        with pytest.raises(Scheduled):
            train(tiny_args(generated_data, tmp_path / "run3", mixed_precision="fp16"))
    finally:
        AcceleratorState._reset_state(True)
    assert "--mixed-precision fp16 does nothing on the CPU" in caplog.text


def test_best_model_metric_must_be_one_the_validation_computes(generated_data, tmp_path):
    from dsunet_hf.training import validation_metrics

    with pytest.raises(ValueError, match=r"'absent_area': the validation of this model \(binary\) computes mDice.*HCE"):
        train(tiny_args(generated_data, tmp_path / "x", metric_for_best_model="absent_area"))
    assert "S-measure" not in validation_metrics("visual-prompt") and "absent_area" in validation_metrics("visual-prompt")
    assert set(validation_metrics("semantic")) == {"mIoU", "mAcc", "aAcc"}
    # BiRefNet's DIS metrics: the validation computes them when one selects the best model.
    summary = train(tiny_args(generated_data, tmp_path / "dis", metric_for_best_model="HCE", max_steps=1, eval_steps=1,
                              save_steps=1))
    assert summary["best_step"] == 1 and {"HCE", "mBA", "BIoU (mean)", "MSE"} <= set(summary["best_metrics"])


def test_a_last_batch_of_one_sample_is_dropped(generated_data, tmp_path):
    # 5 training samples in batches of 4: the second batch would hold one, and a trainable BatchNorm after a
    # pooling to 1x1 (BiRefNet's ASPP, strategy full) cannot train on a batch of one.
    tiny_swin = {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 4}
    summary = train(tiny_args(generated_data, tmp_path / "run", model="birefnet", backbone_preset="swin_v1_t",
                              config_overrides=json.dumps({"backbone_config": tiny_swin}), finetune_strategy="full",
                              image_size=32, validation_ratio=0.79, max_val_samples=1, max_steps=2, save_steps=100,
                              eval_steps=100))
    assert summary["global_step"] == 2
    state = json.loads((tmp_path / "run" / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert (state["epoch"], state["batches_in_epoch"]) == (2, 0)  # one batch per epoch: two steps, two epochs
    from dsunet_hf.training import drops_last_batch

    # Only a batch of one after others: a one-sample training set still trains; several processes fill theirs.
    assert drops_last_batch(5, 4, 1) and not drops_last_batch(1, 4, 1) and not drops_last_batch(1, 1, 1)
    assert not drops_last_batch(6, 4, 1) and not drops_last_batch(5, 4, 2)


def test_class_names_come_from_beside_the_split_folders(tmp_path):
    from dsunet_hf.training import build_config

    (tmp_path / "organs" / "train").mkdir(parents=True)
    (tmp_path / "organs" / "id2label.json").write_text(json.dumps({"0": "background", "1": "liver", "2": "kidney"}))
    args = TrainingArguments(train_data=str(tmp_path / "organs" / "train"), config_overrides=TINY_OVERRIDES)
    _, config = build_config(args)
    assert config.num_labels == 3 and config.id2label[2] == "kidney"


def test_a_resume_on_other_backbone_weights_is_refused_naming_the_checkpoint_and_the_fix(generated_data, tmp_path,
                                                                                        offline_hub):
    """Checkpoints hold only the trainable tensors: resumed after the backbone repo's unpinned "main" moved on, the
    adapters went on training on another trunk, silently. Each checkpoint now records the trunk's fingerprint."""
    from helpers import tiny_hiera, write_transformers_trunk_repo

    from dsunet_hf import CheckpointMismatchError

    first = offline_hub.add("test-org/tiny-hiera", write_transformers_trunk_repo(tmp_path / "h1", tiny_hiera(1)))
    run = tmp_path / "run"
    options = dict(backbone="test-org/tiny-hiera", max_steps=4, eval_steps=2, save_steps=2)
    train(tiny_args(generated_data, run, stop_after_steps=2, **options))
    record = json.loads((run / "checkpoints" / "checkpoint-2" / "backbone_fingerprint.json").read_text())
    assert record["backbone"]["repo"] == "test-org/tiny-hiera" and record["backbone"]["revision"] == first
    assert set(record["backbone"]["fingerprint"]) == {"tensors", "sum", "log_rms"}

    moved = offline_hub.add("test-org/tiny-hiera", write_transformers_trunk_repo(tmp_path / "h2", tiny_hiera(2)))
    with pytest.raises(CheckpointMismatchError) as error:
        train(tiny_args(generated_data, run, resume_from_checkpoint="latest", **options))
    message = str(error.value)
    assert "\n" not in message and message.startswith(
        f"{run / 'checkpoints' / 'checkpoint-2'}: the frozen backbone weights loaded now from test-org/tiny-hiera "
        f"(revision {moved}) are not those it was trained on, from test-org/tiny-hiera (revision {first})")
    assert f'add "backbone_revision": "{first}" to --config-overrides' in message
    assert "--no-verify-backbone-weights" in message
    assert [p.name for p in checkpoint_dirs(run)] == ["checkpoint-2"]  # refused before training a step

    # The fix it names resumes; the final model/ and best/ record the trunk they were trained on.
    pinned = json.dumps({**json.loads(TINY_OVERRIDES), "backbone_revision": first})
    assert train(tiny_args(generated_data, run, resume_from_checkpoint="latest", config_overrides=pinned,
                           **options))["global_step"] == 4
    for folder in ("best", "model"):
        config = json.loads((run / folder / "config.json").read_text())
        assert config["backbone_fingerprint"] == {"backbone": record["backbone"]["fingerprint"]}, folder
        assert config["backbone_revision"] == first


def test_no_verify_backbone_weights_resumes_anyway_and_older_checkpoints_resume_unchecked(generated_data, tmp_path,
                                                                                        caplog):
    import logging
    import shutil

    from helpers import tiny_hiera, write_transformers_trunk_repo

    from dsunet_hf.training import parse_args

    assert parse_args(["--train-data", "x"]).verify_backbone_weights
    assert not parse_args(["--train-data", "x", "--no-verify-backbone-weights"]).verify_backbone_weights
    trunk = write_transformers_trunk_repo(tmp_path / "trunk", tiny_hiera(1))  # a local folder
    run = tmp_path / "run"
    options = dict(backbone=str(trunk), max_steps=3, eval_steps=3, save_steps=1)
    train(tiny_args(generated_data, run, stop_after_steps=1, **options))
    shutil.rmtree(trunk)
    write_transformers_trunk_repo(trunk, tiny_hiera(2))  # another checkpoint in the same folder
    with caplog.at_level(logging.INFO, logger="dsunet_hf.training"):
        train(tiny_args(generated_data, run, resume_from_checkpoint="latest", stop_after_steps=2,
                        verify_backbone_weights=False, **options))
        assert f"--no-verify-backbone-weights: resuming {run / 'checkpoints' / 'checkpoint-1'}" in caplog.text
        # A checkpoint written before they recorded the backbone resumes as before, on any weights.
        (run / "checkpoints" / "checkpoint-2" / "backbone_fingerprint.json").unlink()
        shutil.rmtree(trunk)
        write_transformers_trunk_repo(trunk, tiny_hiera(1))
        assert train(tiny_args(generated_data, run, resume_from_checkpoint="latest", **options))["global_step"] == 3
        assert "checkpoint-2 records no backbone fingerprint" in caplog.text


def test_a_recipe_value_of_the_wrong_type_is_named_with_its_file(tmp_path):
    """`batch_size: abc` was argparse's `argument --batch-size: invalid int value` (no file named, exit 2), and
    `batch_size: 2.5` was taken as it was."""
    from dsunet_hf.training import parse_args

    for text, problem in [("batch_size: abc", "batch_size must be an integer, got 'abc'"),
                          ("batch_size: 2.5", "batch_size must be an integer, got 2.5"),
                          ("learning_rate: fast", "learning_rate must be a number, got 'fast'"),
                          ("gradient_checkpointing: maybe", "gradient_checkpointing must be true or false, got 'maybe'"),
                          ("seed: true", "seed must be an integer, got True")]:
        (tmp_path / "recipe.yaml").write_text(f"train_data: x\n{text}\n")
        with pytest.raises(ValueError, match=rf"^\S*recipe\.yaml: {re.escape(problem)}$"):
            parse_args([str(tmp_path / "recipe.yaml")])
    # Valid values are taken as before: YAML's 1e-4 is text (argparse's float() reads it), yes/no and 0/1 switches.
    (tmp_path / "recipe.yaml").write_text("train_data: x\nlearning_rate: 1e-4\nbatch_size: 4\nimage_size: '64'\n"
                                          "gradient_checkpointing: yes\ntorch_compile: 0\nmax_grad_norm: 1\n")
    args = parse_args([str(tmp_path / "recipe.yaml")])
    assert (args.learning_rate, args.batch_size, args.image_size) == (1e-4, 4, 64)
    assert args.gradient_checkpointing is True and not args.torch_compile and args.max_grad_norm == 1


def test_a_run_killed_while_best_is_replaced_keeps_the_older_one_whole(tmp_path, monkeypatch):
    # Regression: the older folder was deleted before the new one was renamed in: a kill in between lost both.
    from dsunet_hf import training

    final, temporary = tmp_path / "best", tmp_path / "best.tmp"
    final.mkdir()
    (final / "model.safetensors").write_text("older")
    temporary.mkdir()
    (temporary / "model.safetensors").write_text("newer")
    rename = os.replace

    def killed_before_the_new_one_is_in(source, target):
        if Path(source) == temporary:
            raise KeyboardInterrupt
        rename(source, target)

    monkeypatch.setattr(training.os, "replace", killed_before_the_new_one_is_in)
    with pytest.raises(KeyboardInterrupt):
        training._replace_dir(temporary, final)
    assert (tmp_path / "best.old" / "model.safetensors").read_text() == "older"
    monkeypatch.setattr(training.os, "replace", rename)
    training._replace_dir(temporary, final)  # the next save: the new one in, nothing left aside
    assert (final / "model.safetensors").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_a_training_set_that_lost_a_sample_in_as_many_batches_resumes_with_a_warning(tmp_path, caplog):
    """The error of a truncated file says to rerun with --verify-data full (which leaves it out) and resume with
    --resume-from-checkpoint latest; the resume was refused because the training set was one sample smaller."""
    from dsunet_hf.training import check_data_layout

    saved = {"batch_size": 3, "gradient_accumulation_steps": 1, "num_processes": 1, "train_samples": 18,
             "train_batches": 6}
    with caplog.at_level("WARNING", logger="dsunet_hf.training"):
        check_data_layout(tmp_path / "checkpoint-6", saved, {**saved, "train_samples": 17})  # an epoch boundary
        check_data_layout(tmp_path / "checkpoint-7", saved, {**saved, "train_samples": 17}, 1)  # mid-epoch
    assert "checkpoint-6: trained on 18 training samples, now 17 (in as many batches per epoch): resuming on these\n" \
        in caplog.text + "\n"
    assert "checkpoint-7: trained on 18 training samples, now 17" in caplog.text and "some samples of that epoch repeat" \
        in caplog.text
    # Another number of batches per epoch shifts the step count and the schedule: refused, naming both.
    with pytest.raises(ValueError, match=r"checkpoint-6: trained with training samples 18 \(now 16\), batches per "
                                         r"epoch 6 \(now 5\): .*Resume with --batch-size 3"):
        check_data_layout(tmp_path / "checkpoint-6", saved, {**saved, "train_samples": 16, "train_batches": 5})
    # Another --seed or --validation-ratio moves samples across the held-out split (and reorders the data).
    for key, value, named in (("seed", 1, r"--seed 0 \(now 1\)"), ("validation_ratio", 0.2, r"--validation-ratio 0.25 "
                                                                                          r"\(now 0.2\)")):
        with pytest.raises(ValueError, match=rf"trained with {named}: .*Resume with --batch-size 3 "
                                             r"--gradient-accumulation-steps 1 --seed 0 --validation-ratio 0.25 on 1"):
            check_data_layout(tmp_path / "checkpoint-6", {**saved, "seed": 0, "validation_ratio": 0.25},
                              {**saved, "seed": 0, "validation_ratio": 0.25, key: value})
    # A checkpoint that recorded no batch count: the training set size is compared as before.
    older = {key: value for key, value in saved.items() if key != "train_batches"}
    with pytest.raises(ValueError, match=r"trained with training samples 18 \(now 17\)"):
        check_data_layout(tmp_path / "checkpoint-6", older, {**saved, "train_samples": 17})


def test_overwrite_output_dir_also_deletes_the_old_and_tmp_folders_of_the_earlier_run(tmp_path):
    """A run killed while it replaced best/ or model/ leaves best.old / model.old (and best.tmp): they outlived
    --overwrite-output-dir, the earlier run's models beside the new run's checkpoints."""
    from types import SimpleNamespace

    from dsunet_hf.training import clear_earlier_run

    names = ["best", "best.old", "best.tmp", "model.old", "model.tmp", "checkpoints", "logs", "abandoned-checkpoints"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_text("earlier run")
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "data").mkdir()  # not a run output: kept
    clear_earlier_run(tmp_path, SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_an_empty_list_of_lora_target_modules_is_refused_naming_the_field(generated_data, tmp_path):
    """The configs read [] as their default modules (peft reads it as none, an error): LoRA went silently onto
    every default linear."""
    from dsunet_hf.training import build_config

    overrides = json.dumps({"hiera_config": TINY_HIERA, "lora_target_modules": []})
    with pytest.raises(ValueError, match=r"--config-overrides: lora_target_modules must name at least one module "
                                         r"\(leave it out for the model's defaults\), got \[\]"):
        build_config(tiny_args(generated_data, tmp_path, finetune_strategy="lora", config_overrides=overrides))
    overrides = json.dumps({"hiera_config": TINY_HIERA, "lora_target_modules": ["attn.qkv"]})
    _, config = build_config(tiny_args(generated_data, tmp_path, finetune_strategy="lora", config_overrides=overrides))
    assert config.lora_target_modules == ["attn.qkv"]


def test_whose_checkpoint_a_resume_starts_from_decides_what_is_set_aside(tmp_path):
    """The folder's own checkpoint-4: the later ones go; another folder's (own=False): every one of this folder's but
    the one resumed; one set aside earlier is told apart from both."""
    from dsunet_hf import training

    for step in (2, 4, 6):
        (tmp_path / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    checkpoint = tmp_path / "checkpoints" / "checkpoint-4"
    assert training.is_own_checkpoint(tmp_path, checkpoint)
    assert not training.is_own_checkpoint(tmp_path / "other", checkpoint)
    set_aside = tmp_path / "abandoned-checkpoints" / "20261208-000000-resumed-from-checkpoint-2" / "checkpoint-8"
    assert training.is_set_aside_checkpoint(tmp_path, set_aside) and not training.is_set_aside_checkpoint(tmp_path,
                                                                                                           checkpoint)
    assert not training.is_own_checkpoint(tmp_path, set_aside)
    aside = training.set_aside_abandoned_checkpoints(tmp_path, checkpoint, 4, own=False)
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-2", "checkpoint-6"]
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["checkpoint-4"]


def test_a_bad_data_set_is_refused_before_the_model_is_built_or_a_hub_repo_created(tmp_path, monkeypatch,
                                                                                    offline_hub):
    """On every process of a multi-process run the model was built (and its backbones loaded) before the data set
    was found missing; with --push-to-hub an empty Hub repo was created for a run that could not start."""
    from dsunet_hf.models import get_model_spec

    built = []
    model_class = get_model_spec("sam2-unet").model_class
    monkeypatch.setattr(model_class, "__init__", lambda self, *args, **kwargs: built.append(args) or 1 / 0)
    with pytest.raises(FileNotFoundError, match="no-such-data: no such folder"):
        train(tiny_args(tmp_path / "no-such-data", tmp_path / "run", push_to_hub=True, hub_model_id="me/run"))
    assert not built and not offline_hub.create_calls


def test_the_training_loss_is_read_by_name_behind_a_wrapper_that_hides_the_config(generated_data, tmp_path,
                                                                                   monkeypatch):
    """On several processes the prepared model is a DistributedDataParallel, which has no ``config``: with
    --config-overrides '{"return_dict": false}' the model returned a tuple and training died ('tuple' object has no
    attribute 'loss'). nn.DataParallel on the CPU is the same kind of wrapper (and accelerate unwraps it too)."""
    from accelerate import Accelerator

    import dsunet_hf.evaluate

    monkeypatch.setattr(dsunet_hf.evaluate, "evaluate_model", lambda *args, **kwargs: {"S-measure": 0.5})
    prepare_model = Accelerator.prepare_model
    monkeypatch.setattr(Accelerator, "prepare_model",
                        lambda self, model, *args, **kwargs: torch.nn.DataParallel(prepare_model(self, model, *args,
                                                                                                 **kwargs)))
    overrides = json.dumps({**json.loads(TINY_OVERRIDES), "return_dict": False})
    summary = train(tiny_args(generated_data, tmp_path / "run", config_overrides=overrides, max_steps=1))
    assert summary["global_step"] == 1


def test_going_back_to_a_set_aside_checkpoint_takes_its_best_model_back_by_its_metric(generated_data, tmp_path,
                                                                                      monkeypatch, caplog):
    """A mistaken resume (from checkpoint-1 of a run at step 2) sets checkpoint-2 and its best/ aside; resuming that
    set-aside checkpoint-2 to go back took it for another folder's: the best (step 2, 0.9) was chosen again from
    nothing, and model/ became the last weights, without metrics."""
    import dsunet_hf.evaluate

    scores = iter([0.5, 0.9])
    monkeypatch.setattr(dsunet_hf.evaluate, "evaluate_model",
                        lambda *args, **kwargs: {"S-measure": next(scores), "MAE": 0.1, "loss": 1.0})
    run = tmp_path / "run"
    options = dict(max_steps=2, eval_steps=1, save_steps=1)
    train(tiny_args(generated_data, run, stop_after_steps=2, **options))
    train(tiny_args(generated_data, run, stop_after_steps=1, resume_from_checkpoint=str(checkpoint_dirs(run)[0]),
                    **options))  # the mistake: stops at once, with checkpoint-2 and best/ set aside
    (aside,) = (run / "abandoned-checkpoints").iterdir()
    assert sorted(p.name for p in aside.iterdir()) == ["best", "checkpoint-2"] and not (run / "best").exists()
    # Was: resumed with another --metric-for-best-model, the checkpoint's best S-measure (0.9) was compared as a loss
    # (lower is better), and the model it chose became model/ whatever the losses after it (own checkpoints too).
    state = json.loads((aside / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["metric_for_best_model"] == "S-measure" and state["best_step"] == 2
    with pytest.raises(ValueError, match=r"checkpoint-2: its best model \(step 2\) was chosen by --metric-for-best-model "
                                         r"S-measure, not loss: resume with --metric-for-best-model 'S-measure'"):
        train(tiny_args(generated_data, run, resume_from_checkpoint=str(aside / "checkpoint-2"),
                        metric_for_best_model="loss", **options))
    with caplog.at_level(logging.WARNING, logger="dsunet_hf.training"):
        summary = train(tiny_args(generated_data, run, resume_from_checkpoint=str(aside / "checkpoint-2"), **options))
    assert "moved checkpoint-1, this folder's, of the course of training it leaves, to" in caplog.text  # not "another run"
    assert summary["best_step"] == 2 and summary["best_metrics"]["S-measure"] == 0.9
    assert "| S-measure | 0.9" in (run / "model" / "README.md").read_text()
    assert json.loads((run / "best" / "best_record.json").read_text())["step"] == 2
