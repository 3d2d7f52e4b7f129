"""The front door: the README's commands against the parser, options refused before a model loads, the extras a
command needs named in one line, the runtime imports declared in pyproject.toml, and each model card's snippets."""

from __future__ import annotations

import ast
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_HIERA
from PIL import Image

from dsunet_hf.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def readme_commands() -> list[str]:
    """Every whole ``dsunet-hf ...`` command line of the README's bash blocks (continuations joined, comments cut)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("dsunet-hf ") and not any(mark in line for mark in ("...", "[", "<")):
                commands.append(line)
    return commands


def test_readme_commands_parse():
    commands = readme_commands()
    assert len(commands) > 20  # the Command line section's examples at least
    parser = build_parser()
    for command in commands:
        argv = shlex.split(command)[1:]
        if argv[0] == "train":  # parsed by HfArgumentParser (training.py)
            continue
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"README command does not parse: {command}")


class Loaded(Exception):
    """Raised instead of loading a model: the checks under test must come first."""


@pytest.fixture
def no_model_loading(monkeypatch):
    import dsunet_hf.predict

    def refuse(*args, **kwargs):
        raise Loaded("the model was loaded before the options were checked")

    monkeypatch.setattr(dsunet_hf.predict, "load_model_and_processor", refuse)


def test_export_without_the_onnx_extra_says_which(tmp_path, no_model_loading, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    # Was: the model loaded, then a ModuleNotFoundError traceback from torch.onnx's internals.
    with pytest.raises(SystemExit, match=r'^export: needs onnxscript, not installed: pip install "dsunet-hf\[onnx\]"$'):
        main(["export", "onnx", "--model", "org/model", str(tmp_path / "out")])


@pytest.mark.parametrize("command", ["predict", "app"])
def test_onnx_folder_without_onnxruntime_says_which_extra(tmp_path, monkeypatch, command):
    folder = tmp_path / "model-onnx"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"")
    (folder / "config.json").write_text("{}")
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    argv = {"predict": ["predict", "--model", str(folder), str(tmp_path / "a.png"), "--output-dir", str(tmp_path / "o")],
            "app": ["app", "--model", str(folder)]}[command]
    # Was: a ModuleNotFoundError traceback from OnnxSegmentationModel.
    with pytest.raises(SystemExit, match=rf'^{command}: needs onnxruntime, not installed: pip install '
                                         r'"dsunet-hf\[onnx\]"$'):
        main(argv)


def test_hub_repo_of_an_onnx_export_without_onnxruntime_is_one_line(tmp_path, monkeypatch, offline_hub):
    import json

    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"")
    (folder / "config.json").write_text("{}")
    (folder / "onnx_export.json").write_text(json.dumps({"path": "model.onnx", "inputs": {"pixel_values": []},
                                                         "opset": 20, "export_seconds": 1.0, "external_data": False}))
    offline_hub.add("org/model-onnx", folder)
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    # Was: a ModuleNotFoundError traceback (the load caught ValueError and OSError only).
    with pytest.raises(SystemExit, match=r"^predict: cannot load org/model-onnx: .*onnxruntime"):
        main(["predict", "--model", "org/model-onnx", str(tmp_path / "a.png"), "--output-dir", str(tmp_path / "o")])


def test_evaluate_and_the_python_api_name_the_onnx_extra_without_onnxruntime(tmp_path, monkeypatch):
    from dsunet_hf.onnx_export import OnnxSegmentationModel

    folder = tmp_path / "model-onnx"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"")
    (folder / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    # Was: a bare ModuleNotFoundError (Python) and a traceback from `evaluate`.
    with pytest.raises(ImportError, match=r"model-onnx: ONNX exports run on onnxruntime.*dsunet-hf\[onnx\]"):
        OnnxSegmentationModel(folder)
    data = tmp_path / "data"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(data / "images" / "a.png")
    Image.new("L", (32, 32)).save(data / "masks" / "a.png")
    with pytest.raises(SystemExit, match=r"^evaluate: cannot load .*model-onnx.*dsunet-hf\[onnx\]"):
        main(["evaluate", "--model", str(folder), "--data", str(data), "--output-dir", str(tmp_path / "r")])


def test_train_help_names_the_command_it_was_called_as(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert capsys.readouterr().out.startswith("usage: dsunet-hf train ")


def test_demo_backbone_preset_needs_backbone(tmp_path, monkeypatch):
    import dsunet_hf.demo

    def refuse(*args, **kwargs):
        raise Loaded("the demo ran")

    monkeypatch.setattr(dsunet_hf.demo, "run_demo", refuse)
    # Was: the demo trained its own small random Hiera whatever the preset, and the card called it "large Hiera".
    with pytest.raises(SystemExit, match=r"^demo: --backbone-preset large: the size of the --backbone weights"):
        main(["demo", "--backbone-preset", "large", "--output-dir", str(tmp_path / "demo")])
    # --ta for --task: examples/demo.sh, which picks each task's folder by the full name, missed it.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--ta", "visual-prompt"])


@pytest.mark.parametrize("argv, message", [
    (["predict", "--model", "org/m", "{image}", "--crop-margin", "0.5"], "predict: --crop-margin needs --crop-refine"),
    (["predict", "--model", "org/m", "{image}", "--max-side", "1024"], "predict: --max-side needs --resolution native"),
    (["predict", "--model", "org/m", "{image}", "--cutout-colors", "original", "--overlay"],
     r"predict: --cutout-colors needs --cutout or --background \(the colours of their foreground\)"),
    (["evaluate", "--model", "org/m", "--data", "d", "--crop-margin", "0.1"], "evaluate: --crop-margin needs --crop-refine"),
    (["evaluate", "--model", "org/m", "--data", "d", "--max-side", "512"], "evaluate: --max-side needs --resolution native"),
    (["app", "--model", "org/m", "--max-side", "512"], "app: --max-side needs --resolution native"),
    (["space", "{tmp}/space", "--model", "org/m", "--max-side", "512"], "space: --max-side needs --resolution native"),
    (["export", "onnx", "--model", "org/m", "{tmp}/onnx", "--no-check", "--atol", "0.1"],
     "export: --atol is the tolerance of the onnxruntime check, which --no-check skips"),
])
def test_an_option_that_only_tunes_another_one_needs_it(tmp_path, no_model_loading, argv, message):
    """Each was silently ignored (the run went on with the option doing nothing)."""
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit, match=f"^{message}$"):
        main([arg.format(image=tmp_path / "a.png", tmp=tmp_path) for arg in argv])


def test_options_that_tune_another_one_keep_their_defaults(tmp_path, monkeypatch):
    """--crop-margin, --max-side and --cutout-colors default to None in the parsers (given or not): what runs still
    gets 0.25, 2048 and estimated colours, and what is given where it applies."""
    import dsunet_hf.predict
    from dsunet_hf.cli import check_shared_options

    seen = {}

    class Report:
        failed = {}

        def summary(self):
            return "done"

    monkeypatch.setattr(dsunet_hf.predict, "load_model_and_processor", lambda *args, **kwargs: (object(), None))
    monkeypatch.setattr(dsunet_hf.predict, "predict_files", lambda *args, **kwargs: seen.update(kwargs) or Report())
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    (tmp_path / "model").mkdir()  # a folder: no Hub lookups
    base = ["predict", "--model", str(tmp_path / "model"), str(tmp_path / "a.png"), "--output-dir", str(tmp_path / "out")]
    assert main(base) == 0
    assert (seen["crop_margin"], seen["max_side"], seen["cutout_colors"]) == (0.25, 2048, "estimate")
    assert seen["num_workers"] == 2
    assert main([*base, "--crop-refine", "--crop-margin", "0.5", "--resolution", "native", "--max-side", "1024",
                 "--cutout", "--cutout-colors", "original"]) == 0
    assert (seen["crop_margin"], seen["max_side"], seen["cutout_colors"]) == (0.5, 1024, "original")
    for argv, expected in [(["evaluate", "--model", "m", "--data", "d"], (0.25, 2048)),
                           (["evaluate", "--model", "m", "--data", "d", "--crop-refine", "--crop-margin", "0.1",
                             "--resolution", "native", "--max-side", "512"], (0.1, 512))]:
        args = build_parser().parse_args(argv)
        check_shared_options(args)
        assert (args.crop_margin, args.max_side) == expected
    args = build_parser().parse_args(["app", "--model", "m"])
    check_shared_options(args)
    assert args.max_side == 2048


# --- pyproject.toml --------------------------------------------------------------------------------------------

# Imported without a guard but only on paths that check for them first: torchvision (deform_conv.get_backend),
# onnx / onnxruntime (the [onnx] extra: `export onnx` and ONNX folders, checked by the CLI before they load).
CHECKED_OPTIONAL = {"torchvision", "onnx", "onnxruntime"}


def _guarded(node: ast.AST, parents: list[ast.AST]) -> bool:
    """Inside the body of a ``try`` that catches ImportError (or a base of it)."""
    for parent in parents:
        if not isinstance(parent, ast.Try):
            continue
        caught = {name.id for handler in parent.handlers for name in ast.walk(handler.type) if isinstance(name, ast.Name)}
        in_body = any(node is inner for statement in parent.body for inner in ast.walk(statement))
        if in_body and caught & {"ImportError", "ModuleNotFoundError", "Exception"}:
            return True
    return False


def unguarded_imports() -> dict[str, str]:
    """Top-level third-party module -> one place in src/dsunet_hf that imports it without a guard."""
    found = {}
    for path in sorted((ROOT / "src" / "dsunet_hf").rglob("*.py")):
        stack = [(ast.parse(path.read_text(encoding="utf-8")), [])]
        while stack:
            node, parents = stack.pop()
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                names = []
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "dsunet_hf" and not _guarded(node, parents):
                    found.setdefault(top, f"{path.relative_to(ROOT)}:{node.lineno}")
            stack.extend((child, [*parents, node]) for child in ast.iter_child_nodes(node))
    return found


def _project():
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_runtime_import_is_a_declared_dependency():
    from importlib.metadata import packages_distributions

    from packaging.requirements import Requirement

    declared = {_normalized(Requirement(line).name) for line in _project()["dependencies"]}
    distributions = packages_distributions()
    undeclared = []
    for module, where in unguarded_imports().items():
        if module in CHECKED_OPTIONAL:
            continue
        provided_by = {_normalized(name) for name in distributions.get(module, [])}
        assert provided_by, f"{module} ({where}) is not installed here"
        if not provided_by & declared:
            undeclared.append(f"{module} ({where}; from {', '.join(sorted(provided_by))})")
    # Was: cv2 (semantic.py, metrics.py, BiRefNet's augmentation) and yaml (recipe files) came in only through
    # other packages' requirements.
    assert not undeclared, f"imported but not in [project] dependencies: {undeclared}"


def test_pysodmetrics_floor_has_what_the_metrics_use():
    from packaging.requirements import Requirement

    (line,) = [line for line in _project()["dependencies"] if Requirement(line).name == "pysodmetrics"]
    specifier = Requirement(line).specifier
    # 1.5.0 and earlier: no HumanCorrectionEffortMeasure (--dis-metrics) and no OpenCV requirement.
    assert not specifier.contains("1.5.0") and specifier.contains("1.5.1") and specifier.contains("1.6.2")


# --- model cards ----------------------------------------------------------------------------------------------

def _tiny_model(family: str):
    from dsunet_hf import (
        BiRefNetConfig,
        BiRefNetForImageSegmentation,
        Dinov2ForSemanticSegmentation,
        Dinov2SegConfig,
        Sam2UNetConfig,
        Sam2UNetForImageSegmentation,
    )
    from dsunet_hf.models.visual_prompt import VisualPromptConfig, VisualPromptForSegmentation

    torch.manual_seed(0)
    if family == "sam2_unet":
        return Sam2UNetForImageSegmentation(Sam2UNetConfig(
            backbone_preset="tiny", hiera_config=TINY_HIERA, rfb_channels=16, image_size=64,
            backbone_repo_id="facebook/sam2-hiera-tiny"))
    if family == "birefnet":
        return BiRefNetForImageSegmentation(BiRefNetConfig(
            backbone="swin_v1_t", backbone_config={"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
                                                   "window_size": 4},
            image_size=64, base_repo_id="ZhengPeng7/BiRefNet_lite"))
    if family == "dinov2_seg":
        return Dinov2ForSemanticSegmentation(Dinov2SegConfig(
            backbone_preset="small", dino_config={"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4},
            head_type="multilayer", crop_size=56, stride=28, test_scales=[1.0], test_flip=False,
            id2label={0: "background", 1: "thing", 2: "stuff"}))
    return VisualPromptForSegmentation(VisualPromptConfig(
        dino_preset="small", dino_config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                          "intermediate_size": 64, "patch_size": 8, "image_size": 64},
        image_size=64, hidden_size=32, num_attention_heads=4, intermediate_size=64, num_decoder_layers=2,
        num_queries=6, projection_dim=16))


CARD_LICENSES = {"sam2_unet": "apache-2.0", "birefnet": "mit", "dinov2_seg": "apache-2.0", "visual_prompt": "apache-2.0"}
CARD_BASE_MODELS = {"sam2_unet": "facebook/sam2-hiera-tiny", "birefnet": "ZhengPeng7/BiRefNet_lite",
                    "dinov2_seg": "facebook/dinov2-small", "visual_prompt": "facebook/dinov2-small"}


@pytest.mark.parametrize("family", ["sam2_unet", "birefnet", "dinov2_seg", "visual_prompt"])
def test_model_card_metadata_and_snippets_run(tmp_path, monkeypatch, family):
    from dsunet_hf.hub import PLACEHOLDER_REPO_ID

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for name in ("image.jpg", "photo.jpg", "reference.jpg", "target1.jpg", "target2.jpg"):
        Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(name)
    model = _tiny_model(family).eval()
    model.save_pretrained("model", include_backbone=True)  # loads offline: no backbone repo to fetch
    card = (tmp_path / "model" / "README.md").read_text()
    header = card.split("---")[1]
    for field in ("library_name: dsunet-hf", "pipeline_tag: image-segmentation", f"license: {CARD_LICENSES[family]}",
                  f"base_model: {CARD_BASE_MODELS[family]}"):
        assert field in header, (family, field, header)
    snippets = re.findall(r"```python\n(.*?)```", card, re.S)
    assert snippets
    for snippet in snippets:  # as written, the repo id being this folder (was: the DINOv2 card's NameError)
        exec(compile(snippet.replace(PLACEHOLDER_REPO_ID, "model"), f"{family} card", "exec"), {})
    # Was: the DINOv2 head's and the visual-prompt head's cards showed the demo-page line only with metrics.
    assert f"dsunet-hf app --model {PLACEHOLDER_REPO_ID}" in card


# --- --no-verify-backbone-weights ------------------------------------------------------------------------------

def _on_other_backbone_weights(tmp_path, family: str) -> Path:
    """A trainable-only artifact (SAM2-UNet) or a config-only matcher saved on a local backbone folder, whose
    folder then gets another checkpoint of the same shapes (as a moved revision would): its fingerprint refuses it.
    A copy of the original backbone stays in ``<family>-original``."""
    import shutil

    from transformers import Dinov2Config, Dinov2Model

    backbone = tmp_path / f"{family}-backbone"
    if family == "sam2_unet":
        from conftest import tiny_sam2_unet_config
        from helpers import tiny_hiera

        from dsunet_hf import Sam2UNetForImageSegmentation

        tiny_hiera(1).save_pretrained(backbone)
        model = Sam2UNetForImageSegmentation.from_pretrained_backbones(
            tiny_sam2_unet_config(backbone_repo_id=str(backbone)))
        swap = lambda: tiny_hiera(2).save_pretrained(backbone)  # noqa: E731
    else:
        from test_visual_prompt_matcher import TINY_DINO, tiny_config

        from dsunet_hf.models.visual_prompt import VisualPromptMatcher

        def dinov2(seed):
            torch.manual_seed(seed)
            Dinov2Model(Dinov2Config(**TINY_DINO, image_size=518, patch_size=14)).save_pretrained(backbone)

        dinov2(1)
        model = VisualPromptMatcher.from_pretrained_backbones(tiny_config(dino_backbone_repo_id=str(backbone)))
        swap = lambda: dinov2(2)  # noqa: E731
    model.save_pretrained(tmp_path / family)
    shutil.copytree(backbone, tmp_path / f"{family}-original")
    swap()
    return tmp_path / family


REFUSED_BACKBONE = (r"cannot load {model}: {model}: the frozen backbone weights loaded from .* are not those it was "
                    r"saved with .* or --no-verify-backbone-weights to load it anyway$")


def test_no_verify_backbone_weights_predict(tmp_path):
    """Was: no such flag; the refusal named the Python keyword (verify_backbone_weights=False), which the command
    line does not take, so such a model could not be run from it at all."""
    model = _on_other_backbone_weights(tmp_path, "sam2_unet")
    refused = REFUSED_BACKBONE.format(model=re.escape(str(model)))
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    predict = ["predict", "--model", str(model), str(tmp_path / "a.png"), "--output-dir", str(tmp_path / "out"),
               "--num-workers", "0"]
    with pytest.raises(SystemExit, match=f"^predict: {refused}"):
        main(predict)
    assert main([*predict, "--no-verify-backbone-weights"]) == 0
    assert (tmp_path / "out" / "masks" / "a.png").is_file()


def _evaluate_one_pair(tmp_path, model) -> list[str]:
    """``dsunet-hf evaluate`` arguments scoring ``model`` on a folder of one image/mask pair."""
    data = tmp_path / "data"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(data / "images" / "a.png")
    Image.new("L", (32, 32)).save(data / "masks" / "a.png")
    return ["evaluate", "--model", str(model), "--data", str(data), "--output-dir", str(tmp_path / "report"),
            "--no-progress", "--metric-workers", "0"]


def test_no_verify_backbone_weights_evaluate_and_export(tmp_path, monkeypatch):
    import dsunet_hf.onnx_export

    model = _on_other_backbone_weights(tmp_path, "sam2_unet")
    refused = REFUSED_BACKBONE.format(model=re.escape(str(model)))
    evaluate = _evaluate_one_pair(tmp_path, model)
    with pytest.raises(SystemExit, match=f"^evaluate: {refused}"):
        main(evaluate)
    assert main([*evaluate, "--no-verify-backbone-weights"]) == 0

    def exported(model, *args, **kwargs):  # the model loaded: that is what is checked here
        raise Loaded("export_onnx")

    monkeypatch.setattr(dsunet_hf.onnx_export, "export_onnx", exported)
    export = ["export", "onnx", "--model", str(model), str(tmp_path / "onnx")]
    with pytest.raises(SystemExit, match=f"^export: {refused}"):
        main(export)
    with pytest.raises(Loaded):
        main([*export, "--no-verify-backbone-weights"])


def test_no_verify_backbone_weights_for_visual_prompt_models(tmp_path):
    model = _on_other_backbone_weights(tmp_path, "matcher")
    refused = REFUSED_BACKBONE.format(model=re.escape(str(model)))
    Image.new("RGB", (28, 28), (200, 30, 30)).save(tmp_path / "a.png")
    predict = ["predict", "--model", str(model), str(tmp_path / "a.png"), "--reference", str(tmp_path / "a.png"),
               "--prompt", "box:2,2,20,20", "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=f"^predict: {refused}"):
        main(predict)
    assert main([*predict, "--no-verify-backbone-weights"]) == 0
    assert (tmp_path / "out" / "masks" / "a.png").is_file()
    evaluate = ["evaluate", "--model", str(model), "--data", str(tmp_path / "no-data"), "--output-dir",
                str(tmp_path / "report")]
    with pytest.raises(SystemExit, match=f"^evaluate: {refused}"):
        main(evaluate)
    with pytest.raises(SystemExit, match=r"^evaluate: --data .*no-data"):  # loaded: on to the data
        main([*evaluate, "--no-verify-backbone-weights"])



def test_no_verify_backbone_weights_is_refused_for_official_birefnet_weights(tmp_path):
    """Official BiRefNet weights hold the whole model: the flag has nothing to apply to (was: silently ignored)."""
    weights = tmp_path / "BiRefNet-general-epoch_244.pth"
    weights.write_bytes(b"")  # refused before anything is read
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit, match=rf"^predict: cannot load {weights}: {weights} holds BiRefNet's whole "
                                         r"official weights: .*; leave out --no-verify-backbone-weights$"):
        main(["predict", "--model", str(weights), str(tmp_path / "a.png"), "--output-dir", str(tmp_path / "o"),
              "--no-verify-backbone-weights"])

# --- --backbone-source ------------------------------------------------------------------------------------------

def test_backbone_source_loads_on_the_backbone_it_was_trained_with(tmp_path, monkeypatch):
    """Was: no such option; the refusal of other backbone weights named the Python keywords
    (backbone_repo_id/backbone_revision), which the command line does not take: only --no-verify-backbone-weights
    (other outputs) was left."""
    import dsunet_hf.app
    import dsunet_hf.onnx_export

    model = _on_other_backbone_weights(tmp_path, "sam2_unet")
    original = tmp_path / "sam2_unet-original"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "a.png")
    predict = ["predict", "--model", str(model), str(tmp_path / "a.png"), "--output-dir", str(tmp_path / "out"),
               "--num-workers", "0"]
    with pytest.raises(SystemExit, match=r"Pass the backbone it was trained with \(--backbone-source "
                                         r"backbone_repo_id=REPO_OR_FOLDER and/or --backbone-source "
                                         r"backbone_revision=REVISION\), or --no-verify-backbone-weights"):
        main(predict)
    source = ["--backbone-source", f"backbone_repo_id={original}"]
    assert main([*predict, *source]) == 0
    assert (tmp_path / "out" / "masks" / "a.png").is_file()

    evaluate = _evaluate_one_pair(tmp_path, model)
    with pytest.raises(SystemExit, match="^evaluate: .*--backbone-source backbone_repo_id="):
        main(evaluate)
    assert main([*evaluate, *source]) == 0

    def loaded(*args, **kwargs):  # the model loaded: that is what is checked here
        raise Loaded

    monkeypatch.setattr(dsunet_hf.onnx_export, "export_onnx", loaded)
    monkeypatch.setattr(dsunet_hf.app, "build_app", loaded)
    for argv in (["export", "onnx", "--model", str(model), str(tmp_path / "onnx")], ["app", "--model", str(model)]):
        with pytest.raises(SystemExit, match=f"^{argv[0]}: .*--backbone-source backbone_repo_id="):
            main(argv)
        with pytest.raises(Loaded):
            main([*argv, *source])


def test_backbone_source_for_visual_prompt_models(tmp_path):
    model = _on_other_backbone_weights(tmp_path, "matcher")
    Image.new("RGB", (28, 28), (200, 30, 30)).save(tmp_path / "a.png")
    predict = ["predict", "--model", str(model), str(tmp_path / "a.png"), "--reference", str(tmp_path / "a.png"),
               "--prompt", "box:2,2,20,20", "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"--backbone-source dino_backbone_repo_id=REPO_OR_FOLDER and/or "
                                         r"--backbone-source dino_backbone_revision=REVISION"):
        main(predict)
    source = ["--backbone-source", f"dino_backbone_repo_id={tmp_path / 'matcher-original'}"]
    assert main([*predict, *source]) == 0
    assert (tmp_path / "out" / "masks" / "a.png").is_file()
    evaluate = ["evaluate", "--model", str(model), "--data", str(tmp_path / "no-data"), "--output-dir",
                str(tmp_path / "report")]
    with pytest.raises(SystemExit, match="^evaluate: .*--backbone-source dino_backbone_repo_id="):
        main(evaluate)
    with pytest.raises(SystemExit, match=r"^evaluate: --data .*no-data"):  # loaded: on to the data
        main([*evaluate, *source])
    with pytest.raises(SystemExit, match=r"^predict: cannot load .*: a visual_prompt_matcher model loads no backbone "
                                         r"from backbone_revision \(--backbone-source\); its fields: "
                                         r"dino_backbone_repo_id, dino_backbone_revision$"):
        main([*predict, "--backbone-source", "backbone_revision=main"])


@pytest.mark.parametrize("given, message", [
    (["backbone_revision"], "takes FIELD=VALUE .*, got 'backbone_revision'"),
    (["backbone_preset=large"], "takes FIELD=VALUE .*, got 'backbone_preset=large'"),
    (["backbone_revision="], "takes FIELD=VALUE .*, got 'backbone_revision='"),
    (["backbone_revision=a", "backbone_revision=b"], "backbone_revision given twice")])
def test_backbone_source_refuses_a_malformed_option(tmp_path, no_model_loading, given, message):
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit, match=f"^predict: --backbone-source {message}$"):
        main(["predict", "--model", str(tmp_path), str(tmp_path / "a.png"), "--output-dir", str(tmp_path / "o"),
              *[arg for value in given for arg in ("--backbone-source", value)]])


def test_backbone_source_refuses_fields_the_model_has_not_and_self_contained_artifacts(tmp_path):
    """Was (Python keywords): transformers' TypeError (an unknown field) or silently ignored (self-contained)."""
    model = _on_other_backbone_weights(tmp_path, "sam2_unet")
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    predict = ["predict", "--model", str(model), str(tmp_path / "a.png"), "--output-dir", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match=r"^predict: cannot load .*: a sam2_unet model loads no backbone from "
                                         r"dino_backbone_revision \(--backbone-source\); its fields: "
                                         r"backbone_repo_id, backbone_revision$"):
        main([*predict, "--backbone-source", "dino_backbone_revision=main"])
    _tiny_model("sam2_unet").save_pretrained(tmp_path / "whole", include_backbone=True)
    predict[2] = str(tmp_path / "whole")
    with pytest.raises(SystemExit, match=r"^predict: cannot load .*whole: .*whole is self-contained \(it holds its "
                                         r"backbone weights\): none load from elsewhere; leave out --backbone-source$"):
        main([*predict, "--backbone-source", "backbone_revision=main"])



def test_no_verify_backbone_weights_is_refused_for_a_self_contained_visual_prompt_model(tmp_path):
    """Was: accepted and ignored for visual-prompt models (refused for the others), against the README."""
    _tiny_model("visual_prompt").save_pretrained(tmp_path / "whole", include_backbone=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit, match=r"^predict: cannot load .*whole: .*whole is self-contained \(it holds its "
                                         r"backbone weights\): none load from elsewhere; leave out "
                                         r"--no-verify-backbone-weights$"):
        main(["predict", "--model", str(tmp_path / "whole"), str(tmp_path / "a.png"), "--reference",
              str(tmp_path / "a.png"), "--prompt", "box:2,2,20,20", "--output-dir", str(tmp_path / "out"),
              "--no-verify-backbone-weights"])
    assert not (tmp_path / "out").exists()

def test_a_backbone_not_available_names_the_option(tmp_path, offline_hub):
    """Was: "point at a local copy: from_pretrained(..., backbone_repo_id='...')", a Python call, on the command line."""
    model = _on_other_backbone_weights(tmp_path, "sam2_unet")
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit) as refused:
        main(["predict", "--model", str(model), str(tmp_path / "a.png"), "--output-dir", str(tmp_path / "o"),
              "--backbone-source", "backbone_repo_id=test-org/absent"])
    message = str(refused.value)
    assert "Cannot load the frozen backbone 'test-org/absent'" in message and "from_pretrained(..., " not in message
    assert "point at a local copy: --backbone-source backbone_repo_id=/path/to/folder-or-checkpoint" in message


@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "app"])
@pytest.mark.parametrize("option, refusal", [
    (["--no-verify-backbone-weights"], "which holds all its weights: .*; leave out --no-verify-backbone-weights"),
    (["--backbone-source", "backbone_revision=main"], "which holds all its weights: .*; leave out --backbone-source"),
    (["--variant", "fp16"], "it has no weight variants .*; leave out --variant"),  # a graph has none (was ignored)
])
def test_model_options_are_refused_for_an_onnx_export(tmp_path, monkeypatch, command, option, refusal):
    """An ONNX graph holds all its weights, in one form: the options have nothing to apply to (was: silently
    ignored)."""
    monkeypatch.setattr("dsunet_hf.cli.check_extra", lambda *args: None)  # refused before onnxruntime is needed
    folder = tmp_path / "model-onnx"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"")
    (folder / "config.json").write_text("{}")
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    argv = {"predict": ["predict", "--model", str(folder), str(tmp_path / "a.png"), "--output-dir", str(tmp_path / "o")],
            "evaluate": ["evaluate", "--model", str(folder), "--data", str(tmp_path), "--output-dir", str(tmp_path / "r")],
            "export": ["export", "onnx", "--model", str(folder), str(tmp_path / "onnx")],
            "app": ["app", "--model", str(folder)]}[command]
    with pytest.raises(SystemExit, match=rf"^{command}: cannot load {folder}: {folder} is an ONNX graph[:,] {refusal}$"):
        main([*argv, *option])


def test_backbone_source_is_refused_for_official_birefnet_weights(tmp_path):
    weights = tmp_path / "BiRefNet-general-epoch_244.pth"
    weights.write_bytes(b"")  # refused before anything is read
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit, match=rf"^predict: cannot load {weights}: {weights} holds BiRefNet's whole "
                                         r"official weights: .*; leave out --no-verify-backbone-weights and "
                                         r"--backbone-source$"):
        main(["predict", "--model", str(weights), str(tmp_path / "a.png"), "--output-dir", str(tmp_path / "o"),
              "--no-verify-backbone-weights", "--backbone-source", "base_revision=main"])


# --- evaluate on saved maps, options checked before the model loads --------------------------------------------

@pytest.mark.parametrize("given", [["--device", "cpu"], ["--device", "cuda:7"], ["--batch-size", "2"],
                                   ["--num-workers", "3"], ["--dtype", "float32"], ["--shots", "1"],
                                   ["--prompt-kind", "mask"], ["--no-verify-backbone-weights"],
                                   ["--backbone-source", "backbone_revision=main"], ["--crop-margin", "0.3"], ["--crop-margin", "-1"], ["--max-side", "512"],
                                   ["--no-reduce-zero-label"], ["--no-minmax-normalize"], ["--revision", "main"],
                                   ["--variant", "fp16"]])
def test_evaluate_refuses_options_of_running_a_model_on_saved_maps(tmp_path, given):
    """Was: silently ignored (the first six with their default value: refused only when they differed from it), or
    refused for another reason (--crop-margin "needs --crop-refine", which is refused there too; --device cuda:7
    "no cuda device")."""
    for sub in ("pred", "gt"):
        (tmp_path / sub).mkdir()
        Image.new("L", (16, 16), 200).save(tmp_path / sub / "a.png")
    argv = ["evaluate", "--predictions", str(tmp_path / "pred"), "--ground-truth", str(tmp_path / "gt"),
            "--output-dir", str(tmp_path / "report"), "--no-progress", "--metric-workers", "0"]
    with pytest.raises(SystemExit, match=f"^evaluate: {given[0]}: for --model/--data, not for --predictions/"
                                         r"--ground-truth \(saved maps are scored as they are\)$"):
        main([*argv, *given])
    assert not (tmp_path / "report").exists()
    assert main(argv) == 0


@pytest.mark.parametrize("given", [["--shots", "3"], ["--absent-queries", "0"], ["--prompt-kind", "box"],
                                   ["--track-memory", "4"]])
def test_evaluate_refuses_visual_prompt_options_before_loading_another_model(tmp_path, no_model_loading, given):
    """Was: the model loaded (minutes for a large one), then the options were refused."""
    from dsunet_hf import Sam2UNetConfig

    Sam2UNetConfig().save_pretrained(tmp_path / "model")  # another kind of model (its config alone)
    with pytest.raises(SystemExit, match=rf"^evaluate: {given[0]}: (for visual-prompt models; |tracking, for a "
                                         r"visual-prompt model)"):
        main(["evaluate", "--model", str(tmp_path / "model"), "--data", str(tmp_path), *given,
              "--output-dir", str(tmp_path / "report")])


def test_visual_prompt_options_for_a_model_that_cannot_be_reached(tmp_path, offline_hub):
    """Was: "--reference/--prompt need a visual-prompt model; <model> is not one" for a Hub id that cannot be
    reached (offline, mistyped): it is named as not loadable instead."""
    (tmp_path / "r.png").touch()
    with pytest.raises(SystemExit, match="^predict: cannot load someone/no-such-model: "):
        main(["predict", "--model", "someone/no-such-model", "--reference", str(tmp_path / "r.png"), "--prompt",
              "box:1,1,9,9", str(tmp_path), "--output-dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="^evaluate: cannot load someone/no-such-model: "):
        main(["evaluate", "--model", "someone/no-such-model", "--data", str(tmp_path), "--shots", "3",
              "--output-dir", str(tmp_path / "report")])


@pytest.mark.parametrize("given", [["--minmax-normalize"], ["--no-minmax-normalize"], ["--batch-size", "8"],
                                   ["--num-workers", "2"], ["--metric-workers", "0"], ["--crop-refine"]])
def test_evaluate_refuses_foreground_options_for_other_models(tmp_path, monkeypatch, offline_hub, given):
    """Multi-class and visual-prompt models are scored without batches of maps (nor min-max, nor metric processes):
    was silently ignored (and --minmax-normalize recorded in the report as used); a visual-prompt model's were
    refused only once it loaded (--crop-refine)."""
    import types

    import dsunet_hf.predict
    from dsunet_hf.models.visual_prompt import VisualPromptMatcherConfig

    message = rf"^evaluate: {given[0]}: for models that predict one foreground map; .* is not such a model$"
    VisualPromptMatcherConfig().save_pretrained(tmp_path / "matcher")  # its DINOv2 is nowhere: it cannot load
    with pytest.raises(SystemExit, match=message):
        main(["evaluate", "--model", str(tmp_path / "matcher"), "--data", "d", *given])
    multi_class = types.SimpleNamespace(predicts_class_maps=True)
    monkeypatch.setattr(dsunet_hf.predict, "load_model_and_processor", lambda *args, **kwargs: (multi_class, None))
    (tmp_path / "head").mkdir()
    with pytest.raises(SystemExit, match=message):
        main(["evaluate", "--model", str(tmp_path / "head"), "--data", "d", *given])


def test_predict_refuses_num_workers_for_visual_prompt_models(tmp_path, offline_hub, no_model_loading):
    """They read their targets in this process: --num-workers was silently ignored (its default, 2, hid it)."""
    from dsunet_hf.models.visual_prompt import VisualPromptMatcherConfig

    VisualPromptMatcherConfig().save_pretrained(tmp_path / "matcher")
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit, match=r"^predict: --num-workers: not for visual-prompt models"):
        main(["predict", "--model", str(tmp_path / "matcher"), str(tmp_path / "a.png"), "--reference",
              str(tmp_path / "a.png"), "--prompt", "box:1,1,9,9", "--num-workers", "4", "--output-dir",
              str(tmp_path / "out")])


def test_evaluate_refuses_no_reduce_zero_label_for_a_foreground_model(tmp_path, monkeypatch):
    """Was: --reduce-zero-label refused for it, --no-reduce-zero-label silently ignored."""
    import types

    import dsunet_hf.predict

    foreground = types.SimpleNamespace(predicts_class_maps=False)
    monkeypatch.setattr(dsunet_hf.predict, "load_model_and_processor", lambda *args, **kwargs: (foreground, None))
    (tmp_path / "model").mkdir()
    # Named as given (was "--reduce-zero-label", which the user had not typed).
    with pytest.raises(SystemExit, match=r"^evaluate: --no-reduce-zero-label apply to multi-class models"):
        main(["evaluate", "--model", str(tmp_path / "model"), "--data", "d", "--no-reduce-zero-label"])


# --- --revision / --variant: which version of a model a command loads -------------------------------------------

def _predict_one(tmp_path, model: str, *options: str) -> np.ndarray:
    """The mask ``dsunet-hf predict`` writes for one generated image (a fresh output folder each call)."""
    image = tmp_path / "a.png"
    if not image.exists():
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(image)
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    assert main(["predict", "--model", model, str(image), "--output-dir", str(out), "--num-workers", "0",
                 *options]) == 0
    return np.asarray(Image.open(out / "masks" / "a.png"))


def test_revision_loads_that_commit_with_its_processor(tmp_path, offline_hub, monkeypatch, capsys):
    """Was: no --revision on any command: a Hub model could only be run at its latest commit from the command line."""
    import dsunet_hf.app
    import dsunet_hf.onnx_export
    from dsunet_hf import SegmentationImageProcessor

    for seed, size in ((1, 96), (2, 64)):  # two pushes: other weights, another processor size
        torch.manual_seed(seed)
        model = _tiny_model("sam2_unet")
        if seed == 1:  # a config that tells the pushes apart (info below)
            model.config.id2label = {0: "background", 1: "camouflaged"}
        model.save_pretrained(tmp_path / f"v{seed}", include_backbone=True,
                              image_processor=SegmentationImageProcessor(size=size))
    first = offline_hub.add("me/rev", tmp_path / "v1")
    offline_hub.add("me/rev", tmp_path / "v2")
    old = _predict_one(tmp_path, str(tmp_path / "v1"))
    assert np.array_equal(_predict_one(tmp_path, "me/rev", "--revision", first), old)
    assert not np.array_equal(_predict_one(tmp_path, "me/rev"), old)  # main: the second push

    def loaded(demo_or_model, processor=None, *args, **kwargs):  # what app and export were given
        raise Loaded((processor or demo_or_model.processor).size["height"])

    monkeypatch.setattr(dsunet_hf.onnx_export, "export_onnx", loaded)
    monkeypatch.setattr(dsunet_hf.app, "build_app", loaded)
    for argv in (["export", "onnx", "--model", "me/rev", str(tmp_path / "onnx")], ["app", "--model", "me/rev"]):
        with pytest.raises(Loaded, match="^96$"):
            main([*argv, "--revision", first])
    # info reads that revision's config (was: main's only)
    capsys.readouterr()
    assert main(["info", "me/rev", "--revision", first]) == 0 and '"camouflaged"' in capsys.readouterr().out
    assert main(["info", "me/rev"]) == 0 and '"camouflaged"' not in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"^info: cannot load me/rev: revision v9 of me/rev is not in the local Hub"):
        main(["info", "me/rev", "--revision", "v9"])
    with pytest.raises(SystemExit, match=r"^predict: --revision main: a Hub repo's branch, tag or commit, but .*v1 "
                                         r"is a local path"):  # was (Python): silently ignored
        main(["predict", "--model", str(tmp_path / "v1"), str(tmp_path / "a.png"), "--revision", "main"])


@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "app"])
def test_a_revision_not_in_the_offline_cache_is_named(tmp_path, offline_hub, command):
    """Was: transformers' two generic lines ("We couldn't connect to 'https://huggingface.co' ... couldn't find them
    in the cached files"), naming neither the repo nor the revision, nor how to get it."""
    _tiny_model("sam2_unet").save_pretrained(tmp_path / "v1", include_backbone=True)
    offline_hub.add("me/rev", tmp_path / "v1")  # main is cached, the tag asked for is not
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    argv = {"predict": ["predict", str(tmp_path / "a.png"), "--output-dir", str(tmp_path / "o")],
            "evaluate": ["evaluate", "--data", str(tmp_path), "--output-dir", str(tmp_path / "r")],
            "export": ["export", "onnx", str(tmp_path / "onnx")], "app": ["app"]}[command]
    with pytest.raises(SystemExit, match=rf"^{command}: cannot load me/rev: revision v9 of me/rev is not in the local "
                                         r"Hub cache and HF_HUB_OFFLINE is set: run once without HF_HUB_OFFLINE=1, or "
                                         r"`hf download me/rev --revision v9` first$"):
        main([*argv, "--model", "me/rev", "--revision", "v9"])


def test_an_offline_short_commit_hash_names_the_full_one_in_the_cache(tmp_path, offline_hub):
    """Was: "revision 1a2b3c4 of me/rev is not in the local Hub cache" (advice: download it) for a commit that is
    there, under its full hash: offline, huggingface_hub resolves a short hash only through a refs/ file."""
    _tiny_model("sam2_unet").save_pretrained(tmp_path / "v1", include_backbone=True)
    commit = offline_hub.add("me/rev", tmp_path / "v1")
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit, match=rf"^predict: cannot load me/rev: revision {commit[:7]} of me/rev: offline, a "
                                         rf"short commit hash is not resolved; the local Hub cache holds commit "
                                         rf"{commit}: pass --revision {commit}$"):
        main(["predict", "--model", "me/rev", str(tmp_path / "a.png"), "--output-dir", str(tmp_path / "o"),
              "--revision", commit[:7]])


def test_convert_birefnet_of_a_revision_that_cannot_be_had_is_one_line(tmp_path, offline_hub, monkeypatch):
    """Was: eight lines calling the official weights "the frozen backbone" with a Python fix
    (from_pretrained(..., backbone_repo_id=...)) that convert has no option for."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    import dsunet_hf.convert.birefnet
    from dsunet_hf.hub import BackboneNotAvailableError

    (tmp_path / "base").mkdir()
    save_file({"x": torch.zeros(1)}, str(tmp_path / "base" / "model.safetensors"))
    commit = offline_hub.add("ZhengPeng7/BiRefNet_lite", tmp_path / "base")
    convert = ["convert", "birefnet", "ZhengPeng7/BiRefNet_lite", str(tmp_path / "out"), "--revision"]
    with pytest.raises(SystemExit, match=r"^convert birefnet: cannot load ZhengPeng7/BiRefNet_lite: revision v9 of "
                                         r"ZhengPeng7/BiRefNet_lite is not in the local Hub cache and HF_HUB_OFFLINE is "
                                         r"set: run once without HF_HUB_OFFLINE=1, or `hf download "
                                         r"ZhengPeng7/BiRefNet_lite --revision v9` first$"):
        main([*convert, "v9"])
    with pytest.raises(SystemExit, match=rf"^convert birefnet: .*: pass --revision {commit}$"):
        main([*convert, commit[:7]])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def unreachable(source, output_dir, revision=None, **kwargs):  # what the Hub answers a mistyped revision
        raise BackboneNotAvailableError.for_repo(source, revision, ["model.safetensors: RevisionNotFoundError: 404"])

    monkeypatch.setattr(dsunet_hf.convert.birefnet, "convert_birefnet_checkpoint", unreachable)
    with pytest.raises(SystemExit, match=r"^convert birefnet: cannot load ZhengPeng7/BiRefNet_lite: revision v9 of "
                                         r"ZhengPeng7/BiRefNet_lite could not be downloaded \(model.safetensors: "
                                         r"RevisionNotFoundError: 404\)$"):
        main([*convert, "v9"])


def test_a_hub_repo_not_in_the_cache_is_named_when_the_hub_cannot_be_reached(monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    from dsunet_hf.cli import load_failure

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    try:  # transformers' OSError, raised from huggingface_hub's
        try:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub ...")
        except LocalEntryNotFoundError as cause:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files ...") from cause
    except OSError as error:
        message = str(load_failure("predict", "me/absent", error))
    assert message == ("predict: cannot load me/absent: me/absent is not in the local Hub cache and the Hub cannot be "
                       "reached: run it where the Hub is, or `hf download me/absent` there first")


def test_revision_of_a_visual_prompt_model(tmp_path, offline_hub):
    """The model's kind is read from the revision asked for: a repo whose main is now another kind of model."""
    _tiny_model("visual_prompt").save_pretrained(tmp_path / "prompt", include_backbone=True)
    _tiny_model("sam2_unet").save_pretrained(tmp_path / "other", include_backbone=True)
    first = offline_hub.add("me/kinds", tmp_path / "prompt")
    offline_hub.add("me/kinds", tmp_path / "other")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "a.png")
    predict = ["predict", "--model", "me/kinds", str(tmp_path / "a.png"), "--reference", str(tmp_path / "a.png"),
               "--prompt", "box:2,2,40,40", "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match="need a visual-prompt model"):
        main(predict)
    assert main([*predict, "--revision", first]) == 0
    assert (tmp_path / "out" / "masks" / "a.png").is_file()


def test_variant_loads_weights_saved_as_a_variant(tmp_path, monkeypatch, offline_hub):
    """Was: a folder of model.fp16.safetensors only could not be loaded from the command line, and its refusal said
    "load with variant='fp16'", a Python keyword; a Hub repo of them got no hint at all."""
    import dsunet_hf.app
    import dsunet_hf.onnx_export

    _tiny_model("sam2_unet").save_pretrained(tmp_path / "fp16", include_backbone=True, variant="fp16")
    model = str(tmp_path / "fp16")
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit, match=r"^predict: cannot load .*fp16: .* holds the weights of variant 'fp16' only "
                                         r"\(save_pretrained\(variant=\.\.\.\)\): add --variant fp16$"):
        main(["predict", "--model", model, str(tmp_path / "a.png"), "--output-dir", str(tmp_path / "o")])
    offline_hub.add("me/fp16", tmp_path / "fp16")
    with pytest.raises(SystemExit, match=r"^predict: cannot load me/fp16: .* holds the weights of variant 'fp16' "
                                         r"only .*: add --variant fp16$"):
        main(["predict", "--model", "me/fp16", str(tmp_path / "a.png"), "--output-dir", str(tmp_path / "o")])
    plain = tmp_path / "plain"
    _tiny_model("sam2_unet").save_pretrained(plain, include_backbone=True)
    assert np.array_equal(_predict_one(tmp_path, model, "--variant", "fp16"), _predict_one(tmp_path, str(plain)))

    def loaded(*args, **kwargs):  # the model loaded: that is what is checked here
        raise Loaded

    monkeypatch.setattr(dsunet_hf.onnx_export, "export_onnx", loaded)
    monkeypatch.setattr(dsunet_hf.app, "build_app", loaded)
    for argv in (["export", "onnx", "--model", model, str(tmp_path / "onnx")], ["app", "--model", model]):
        with pytest.raises(SystemExit, match=f"^{argv[0]}: .*add --variant fp16$"):
            main(argv)
        with pytest.raises(Loaded):
            main([*argv, "--variant", "fp16"])


@pytest.mark.parametrize("content, problem", [(None, "cannot be read (No such file or directory)"),
                                              ("{bad", "not a JSON object of class id -> name")])
def test_convert_id2label_that_cannot_be_read_names_the_option(tmp_path, content, problem):
    """A missing or malformed --id2label: one line naming the option and the file, before the checkpoint is read
    (was: "convert sam2-unet: [Errno 2] No such file or directory: 'x.json'")."""
    labels = tmp_path / "id2label.json"
    if content is not None:
        labels.write_text(content)
    with pytest.raises(SystemExit) as raised:
        main(["convert", "sam2-unet", str(tmp_path / "missing.pth"), str(tmp_path / "out"), "--id2label", str(labels)])
    message = str(raised.value.code)
    assert message.startswith(f"convert sam2-unet: --id2label {labels}") and problem in message
    assert "\n" not in message


@pytest.mark.parametrize("option", ["--revision", "--variant"])
def test_convert_birefnet_refuses_an_empty_revision_or_variant(tmp_path, option, monkeypatch):
    """As predict / export / app / space do (was: '' downloaded main's default weights, silently)."""
    import dsunet_hf.convert.birefnet

    def converted(*args, **kwargs):
        raise AssertionError("converted")

    monkeypatch.setattr(dsunet_hf.convert.birefnet, "convert_birefnet_checkpoint", converted)
    with pytest.raises(SystemExit, match=rf"^convert birefnet: {option} is empty$"):
        main(["convert", "birefnet", "ZhengPeng7/BiRefNet", str(tmp_path / "out"), option, " "])


def test_convert_birefnet_revision(tmp_path, monkeypatch):
    """Official BiRefNet weights from a Hub repo's revision (was: convert had no --revision; main only)."""
    import dsunet_hf.convert.birefnet

    def convert(source, output_dir, **kwargs):
        raise Loaded(kwargs["revision"])

    monkeypatch.setattr(dsunet_hf.convert.birefnet, "convert_birefnet_checkpoint", convert)
    with pytest.raises(Loaded, match="^abc123$"):
        main(["convert", "birefnet", "ZhengPeng7/BiRefNet_lite", str(tmp_path / "out"), "--revision", "abc123"])
    weights = tmp_path / "BiRefNet_lite.pth"
    weights.write_bytes(b"")
    with pytest.raises(SystemExit, match=r"^convert birefnet: --revision abc123: a Hub repo's .* is a local path$"):
        main(["convert", "birefnet", str(weights), str(tmp_path / "out"), "--revision", "abc123"])
    with pytest.raises(SystemExit, match=r"^convert sam2-unet: --revision do\(es\) not apply to this kind$"):
        main(["convert", "sam2-unet", str(weights), str(tmp_path / "out"), "--revision", "abc123"])
