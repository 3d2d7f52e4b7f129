"""The user-facing examples: examples/demo.sh and the synthetic data they train on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dsunet_hf.synthetic import make_camouflage_dataset, make_textured_shapes_dataset

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("make", [make_camouflage_dataset, make_textured_shapes_dataset], ids=["camouflage", "shapes"])
def test_a_smaller_dataset_written_over_a_larger_one_has_only_its_own_pairs(tmp_path, make):
    folder = tmp_path / "data"
    make(folder, 3, 32, seed=0)
    (folder / "images" / "mine.png").write_bytes(b"")  # not the generator's: kept
    make(folder, 2, 32, seed=0)
    assert sorted(p.name for p in (folder / "images").iterdir()) == ["0000.png", "0001.png", "mine.png"]
    assert sorted(p.name for p in (folder / "masks").iterdir()) == ["0000.png", "0001.png"]


def _run_demo_sh(tmp_path: Path, torch_version: str | None) -> str:
    """examples/demo.sh with `python` and `dsunet-hf` stubbed: what it would install and run, given an installed
    torch of ``torch_version`` (None: no torch)."""
    fake = tmp_path / "site"
    (fake / "torch").mkdir(parents=True)
    body = f"__version__ = {torch_version!r}\n" if torch_version else "raise ImportError('no torch')\n"
    (fake / "torch" / "__init__.py").write_text(body)
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    # `python -c` runs for real (on the fake torch); everything else (pip, the demo) is only logged.
    (bin_dir / "python").write_text(f'#!/usr/bin/env bash\nif [ "$1" = "-c" ]; then exec "{sys.executable}" "$@"; fi\n'
                                    f'echo "python $*" >> "{log}"\n')
    (bin_dir / "dsunet-hf").write_text(f'#!/usr/bin/env bash\necho "in $(pwd -P): dsunet-hf $*" >> "{log}"\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(fake)}
    subprocess.run(["bash", str(REPO / "examples" / "demo.sh"), "--data", "mine"], env=env, check=True, timeout=60,
                   cwd=tmp_path)
    return log.read_text()


@pytest.mark.parametrize("torch_version, installs_torch", [
    ("2.14.1+cu128", False), ("2.13.0+cpu", False), ("2.5.0", False), (None, True), ("2.4.1", True), ("2.15.0", True),
])
def test_demo_sh_keeps_a_torch_in_range_and_runs_the_demo_where_started(tmp_path, torch_version, installs_torch):
    calls = _run_demo_sh(tmp_path, torch_version)
    assert ("install --quiet torch==2.13.0" in calls) == installs_torch, calls
    installed = calls.splitlines()[-2].split()
    assert installed[:6] == ["python", "-m", "pip", "install", "--quiet", "-e"] and installed[6].endswith("[dev]")
    assert Path(installed[6].removesuffix("[dev]")).resolve() == REPO  # the repository, not the folder started in
    # started elsewhere: the user's relative --data is theirs (the demo runs in their folder), the outputs the repo's
    where, command = calls.splitlines()[-1].split(": ", 1)
    assert where == f"in {tmp_path.resolve()}" and command.endswith(" --data mine")
    assert Path(command.split()[3]).resolve() == REPO / "outputs" / "demo"


RECIPES = REPO / "examples" / "configs"


def test_every_recipe_is_a_yaml_file_so_the_recipe_parsing_test_sees_it():
    # tests/test_training.py::test_example_recipes_parse_into_model_configs parses every *.yaml recipe.
    assert sorted(p.suffix for p in RECIPES.iterdir()) == [".yaml"] * len(list(RECIPES.iterdir()))


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*multiclass*.yaml")), ids=lambda p: p.stem)
def test_multiclass_recipes_take_their_classes_from_the_id2label_json_their_comment_names(recipe, tmp_path,
                                                                                          monkeypatch):
    from dsunet_hf.training import build_config, parse_args

    args = parse_args([str(recipe)])
    names = {0: "background", 1: "liver", 2: "kidney", 3: "spleen"}
    labels = Path(args.train_data).parent / "id2label.json"  # beside train/ and val/, as each recipe says
    assert f"{labels}" in recipe.read_text()
    monkeypatch.chdir(tmp_path)
    labels.parent.mkdir(parents=True)
    labels.write_text(json.dumps(names))
    spec, config = build_config(args)
    assert spec.multiclass and config.num_labels == 4 and config.id2label == names


def test_the_dsunet_multiclass_recipe_is_dsunets_own_recipe():
    """DSU-Net's upstream settings (SAM 2.1 + DINOv2-L, 352 / 518 px, batch 4, 50 epochs, AdamW 1e-3 / 5e-4,
    cosine per epoch), not SAM2-UNet's batch 12 / 20 epochs."""
    from dsunet_hf.training import build_config, parse_args

    args = parse_args([str(RECIPES / "dsunet_multiclass.yaml")])
    spec, config = build_config(args)
    assert (args.model, args.finetune_strategy, args.batch_size, args.num_epochs) == ("dsunet", "adapter", 4, 50)
    assert (args.learning_rate, args.weight_decay, args.lr_schedule) == (1e-3, 5e-4, "cosine-epoch")
    assert (config.sam_backbone_repo_id, config.dino_backbone_repo_id) == ("facebook/sam2.1-hiera-large",
                                                                           "facebook/dinov2-large")
    assert (config.image_size, config.dino_image_size, config.loss_weights) == (352, 518, [0.25, 0.5, 1.0])
    assert all(getattr(args, k) == spec.default(k) for k in ("batch_size", "num_epochs", "learning_rate",
                                                             "weight_decay", "lr_schedule"))  # the package's too
