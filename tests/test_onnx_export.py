"""ONNX export: every segmentation model (BiRefNet's deformable convolution included) exports with a dynamic
batch, and onnxruntime gives PyTorch's logits; the folder runs on its own with the saved processor."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_SIZE, tiny_sam2_unet_config
from PIL import Image
from test_compile import _models

from dsunet_hf import Sam2UNetForImageSegmentation, SegmentationImageProcessor, onnx_export
from dsunet_hf.onnx_export import (
    OnnxExportReport,
    OnnxSegmentationModel,
    compare_with_onnxruntime,
    export_onnx,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

onnx = pytest.importorskip("onnx", reason="the [onnx] extra (in [dev]) is not installed")
onnxruntime = pytest.importorskip("onnxruntime", reason="the [onnx] extra (in [dev]) is not installed")
pytest.importorskip("onnxscript", reason="the [onnx] extra (in [dev]) is not installed")


def photos(sizes) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def input_shapes(path) -> dict[str, list]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}


def record_traces(patch, programs: list) -> None:
    """Keep each graph torch.onnx.export traces in ``programs``: tests that export the same model at the same size
    again give it back to export_onnx (``patch.setattr(torch.onnx, "export", lambda *a, **k: program)``), which
    then saves, converts and checks it as usual; the trace is most of an export's time."""
    trace = torch.onnx.export

    def recorded(*args, **kwargs):
        programs.append(trace(*args, **kwargs))
        return programs[-1]

    patch.setattr(torch.onnx, "export", recorded)


def check_export(report, processor, folder, name):

    assert report.checked_with.startswith("onnxruntime")
    assert set(report.max_abs_difference) == {"1", "3"}  # the export traced batch 2
    assert max(report.max_abs_difference.values()) <= 1e-4
    shapes = input_shapes(folder / "model.onnx")
    size = processor.size
    assert shapes["pixel_values"][1:] == [3, size["height"], size["width"]]
    assert isinstance(shapes["pixel_values"][0], str)  # a named, dynamic batch axis
    if name == "dsunet":
        assert set(shapes) == {"pixel_values", "dino_pixel_values"}
    # Attention exported as matmul + softmax, without the SDPA translation's IsNaN/Where guard (slow in onnxruntime).
    ops = {node.op_type for node in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node}
    assert "Softmax" in ops and "IsNaN" not in ops
    saved = json.loads((folder / "onnx_export.json").read_text())
    assert saved["max_abs_difference"] == report.max_abs_difference
    assert {p.name for p in folder.iterdir()} >= {"model.onnx", "config.json", "preprocessor_config.json"}


# SAM2-UNet: exported once for the module (fixture below), checked in test_sam2_unet_export_*; BiRefNet with a
# dynamic size in test_a_dynamic_size_birefnet_graph_*.
@pytest.mark.parametrize("name", ["dsunet", "dinov2-seg"])
def test_export_has_a_dynamic_batch_and_matches_pytorch(name, tmp_path):
    if name == "dsunet":  # multi-class: the class maps and segment() below; the binary graph differs in width only
        from test_dsunet import tiny_config as tiny_dsunet

        from dsunet_hf import DSUNetForImageSegmentation

        model = DSUNetForImageSegmentation(tiny_dsunet(num_labels=3)).eval()
    else:
        model, _ = _models()[name]()
    processor = model.default_image_processor()
    attention = {id(m): m.config._attn_implementation for m in model.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")}
    check_export(export_onnx(model, processor, tmp_path / "onnx"), processor, tmp_path / "onnx", name)
    assert attention == {id(m): m.config._attn_implementation for m in model.modules()
                         if hasattr(getattr(m, "config", None), "_attn_implementation")}  # restored after export
    if name == "dinov2-seg":  # multi-class: the head's schedules over windows of the graph's (crop) size
        assert json.loads((tmp_path / "onnx" / "onnx_export.json").read_text())["class_maps"] is True
        graph = OnnxSegmentationModel(tmp_path / "onnx")
        assert graph.predicts_class_maps and graph.default_schedule == "slide"
        crop = model.config.crop_size
        pixels = torch.randn(1, 3, crop + 12, crop + 22)  # several overlapping windows
        for schedule in ("slide", "multiscale"):
            with torch.no_grad():
                expected = model.segment(pixels, schedule)
            torch.testing.assert_close(graph.segment(pixels, schedule), expected, atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="the graph takes"):
            graph.segment(pixels, "single")  # one pass at a size the graph was not exported at
        from dsunet_hf.predict import predict_files  # predict: palette masks as the PyTorch head's

        for index, image in enumerate(photos([(40, 30), (20, 50)])):
            image.save(tmp_path / f"{index}.png")
        inputs = [tmp_path / "0.png", tmp_path / "1.png"]
        for runner, out in ((graph, "onnx-out"), (model, "torch-out")):
            assert len(predict_files(runner, processor, inputs, tmp_path / out, progress=False).written) == 2
        for index in range(2):
            masks = [np.asarray(Image.open(tmp_path / out / "masks" / f"{index}.png")) for out in ("onnx-out", "torch-out")]
            assert (masks[0] != masks[1]).mean() <= 0.01  # arg-max ties at float noise only
        return
    # The folder as `dsunet-hf predict` runs it: called like the PyTorch model, the same logits.
    inputs = {k: v for k, v in processor(photos([(40, 30), (20, 50)])).items() if k.endswith("pixel_values")}
    with torch.no_grad():
        expected = model(**inputs).logits
    graph = OnnxSegmentationModel(tmp_path / "onnx")
    assert torch.allclose(graph(**inputs).logits, expected, atol=1e-4)
    # segment() (predict / evaluate / the app on the folder) feeds the DINOv2 view as the PyTorch model makes it
    # from one tensor (it asked for the missing graph input).
    pixels = torch.randn(1, 3, 100, 90)
    torch.testing.assert_close(graph.segment(pixels), model.segment(pixels), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def exported_sam2_unet(tmp_path_factory):
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config()).eval()
    folder = tmp_path_factory.mktemp("export") / "onnx"
    # As if the weights were over protobuf's 2 GB (DSU-Net-L): they go to an external data file.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_export, "_SINGLE_FILE_LIMIT_BYTES", 0)
        report = export_onnx(model, SegmentationImageProcessor(size=TINY_SIZE), folder, size=96)
    return model, folder, report


@pytest.fixture(scope="module")
def traced_sam2_unet(tmp_path_factory):
    """``traced_sam2_unet(num_labels)``: a tiny SAM2-UNet and the fp32 graph traced for it at its own size (64),
    made once for the module's tests that export that model (each still saves, converts and checks the graph)."""
    traced = {}

    def model_and_graph(num_labels: int):
        if num_labels not in traced:
            model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config(num_labels=num_labels)).eval()
            programs = []
            with pytest.MonkeyPatch.context() as patch:
                record_traces(patch, programs)
                export_onnx(model, model.default_image_processor(), tmp_path_factory.mktemp("traced") / "onnx",
                            check=False)
            traced[num_labels] = model, programs[0]
        return traced[num_labels]

    return model_and_graph


def test_large_weights_go_to_an_external_data_file_that_onnxruntime_reads(exported_sam2_unet):
    _, folder, report = exported_sam2_unet
    assert report.external_data and (folder / "model.onnx.data").stat().st_size > (folder / "model.onnx").stat().st_size
    assert report.checked_with  # the check above ran the graph with its external weights


def test_sam2_unet_export_has_a_dynamic_batch_and_matches_pytorch(exported_sam2_unet):
    _, folder, report = exported_sam2_unet
    check_export(report, SegmentationImageProcessor.from_pretrained(folder), folder, "sam2-unet")


def test_exported_folder_predicts_like_the_model(exported_sam2_unet):
    """What a user of the folder does: its processor (numpy), onnxruntime, post-processing."""
    model, folder, _ = exported_sam2_unet
    processor = SegmentationImageProcessor.from_pretrained(folder)
    assert processor.size == {"height": 96, "width": 96}
    inputs = processor(photos([(70, 50), (40, 90)]), return_tensors="np")
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"pixel_values": inputs["pixel_values"]})
    masks = processor.post_process_probabilities(logits, target_sizes=inputs["original_sizes"])
    with torch.no_grad():
        expected = processor.post_process_probabilities(
            model(pixel_values=torch.from_numpy(inputs["pixel_values"])).logits, target_sizes=inputs["original_sizes"]
        )
    assert [tuple(m.shape) for m in masks] == [(70, 50), (40, 90)]
    for mask, reference in zip(masks, expected):
        assert torch.allclose(mask, reference, atol=1e-5)


def test_predict_runs_an_exported_folder_like_the_pytorch_model(exported_sam2_unet, tmp_path, capsys):
    from dsunet_hf.cli import main
    from dsunet_hf.predict import predict_files

    model, folder, _ = exported_sam2_unet
    images = tmp_path / "images"
    images.mkdir()
    for index, image in enumerate(photos([(70, 50), (40, 90), (64, 64)])):
        image.save(images / f"{index}.png")
    (images / "broken.jpg").write_bytes(b"not an image")

    assert main(["predict", "--model", str(folder), str(images), "--output-dir", str(tmp_path / "onnx-out"),
                 "--batch-size", "2", "--num-workers", "0"]) == 1  # 1: the broken file, reported and skipped
    assert "3 written" in capsys.readouterr().out
    predict_files(model, SegmentationImageProcessor.from_pretrained(folder), [images], tmp_path / "torch-out",
                  batch_size=2, progress=False)
    for index in range(3):
        onnx_mask = np.asarray(Image.open(tmp_path / "onnx-out" / "masks" / f"{index}.png"), dtype=np.int16)
        torch_mask = np.asarray(Image.open(tmp_path / "torch-out" / "masks" / f"{index}.png"), dtype=np.int16)
        assert onnx_mask.shape == torch_mask.shape and np.abs(onnx_mask - torch_mask).max() <= 1

    with pytest.raises(SystemExit, match="ONNX graph run by onnxruntime; options for PyTorch models only: --compile"):
        main(["predict", "--model", str(folder), str(images), "--output-dir", str(tmp_path / "x"), "--compile"])
    with pytest.raises(SystemExit, match=r"predict: resolution='native': .* is an ONNX graph of fixed size "
                                         r"\(96, 96\); export with --dynamic-size"):
        main(["predict", "--model", str(folder), str(images), "--output-dir", str(tmp_path / "x"),
              "--resolution", "native"])
    with pytest.raises(SystemExit, match="is already an ONNX export"):
        main(["export", "onnx", "--model", str(folder), str(tmp_path / "again")])
    with pytest.raises(SystemExit, match="leave out --device and --dtype"):
        main(["predict", "--model", str(folder), str(images), "--output-dir", str(tmp_path / "x"), "--dtype", "bf16"])


def test_an_export_pushed_to_the_hub_has_a_card_and_predicts_from_its_repo_id(exported_sam2_unet, tmp_path,
                                                                               offline_hub, capsys, monkeypatch):
    """`dsunet-hf push` of an exported folder: a card naming the repo; `predict --model <repo id>` downloads it
    (here: from the offline Hub cache) and runs it with onnxruntime, the masks of the local folder."""
    import shutil

    from huggingface_hub import ModelCard

    from dsunet_hf.cli import main

    _, exported, _ = exported_sam2_unet
    folder = tmp_path / "export"
    shutil.copytree(exported, folder)
    card = ModelCard.load(folder / "README.md")  # written by the export
    assert card.data.library_name == "onnx" and card.data.pipeline_tag == "image-segmentation"
    assert "onnx" in card.data.tags and card.data.license == "apache-2.0"
    assert "`pixel_values` | `[batch, 3, 96, 96]`" in card.text and "path/to/this-model" in card.text
    assert "Checked against the fp32 PyTorch model with onnxruntime" in card.text

    assert main(["push", str(folder), "me/sam2unet-onnx"]) == 0
    pushed = next(offline_hub.repo_dir("me/sam2unet-onnx").glob("snapshots/*"))
    assert {"model.onnx", "model.onnx.data", "config.json", "preprocessor_config.json", "onnx_export.json",
            "README.md"} <= {p.name for p in pushed.iterdir()}
    card = ModelCard.load(pushed / "README.md")
    assert "dsunet-hf predict --model me/sam2unet-onnx photos/" in card.text and "path/to/this-model" not in card.text
    # A card edited by hand is uploaded as it is (a generated one is rendered again for the repo it goes to).
    assert main(["push", str(folder), "me/sam2unet-onnx"]) == 0  # the same repo again: still the generated card
    with open(folder / "README.md", "a", encoding="utf-8") as readme:
        readme.write("\nTrained on our scans.\n")
    capsys.readouterr()
    assert main(["push", str(folder), "me/sam2unet-onnx-copy"]) == 0
    assert "edited since the export, uploaded as it is" in capsys.readouterr().out
    copy = next(offline_hub.repo_dir("me/sam2unet-onnx-copy").glob("snapshots/*")) / "README.md"
    assert copy.read_text().endswith("Trained on our scans.\n") and "me/sam2unet-onnx photos/" in copy.read_text()

    images = tmp_path / "images"
    images.mkdir()
    for index, image in enumerate(photos([(70, 50), (40, 90)])):
        image.save(images / f"{index}.png")
    capsys.readouterr()
    for model, out in (("me/sam2unet-onnx", "hub-out"), (str(folder), "local-out")):
        assert main(["predict", "--model", model, str(images), "--output-dir", str(tmp_path / out)]) == 0
    for index in range(2):
        hub_mask, local_mask = (np.asarray(Image.open(tmp_path / out / "masks" / f"{index}.png"))
                                for out in ("hub-out", "local-out"))
        np.testing.assert_array_equal(hub_mask, local_mask)
    # A damaged export report is one line naming the file, for every command reading it.
    (folder / "onnx_export.json").write_text("{bad")
    for command in (["info", str(folder)], ["push", str(folder), "me/x"]):
        with pytest.raises(SystemExit, match=r"onnx_export.json: not a readable dsunet-hf export report"):
            main(command)
    with pytest.raises(SystemExit, match="not a saved model folder .* or dsunet-hf export onnx first"):
        main(["push", str(images), "me/nothing"])
    from dsunet_hf.app import write_space

    write_space(tmp_path / "space", "me/sam2unet-onnx")  # a Space showing the ONNX repo installs onnxruntime
    assert (tmp_path / "space" / "requirements.txt").read_text().startswith("dsunet-hf[app,onnx]")
    capsys.readouterr()
    assert main(["info", "me/sam2unet-onnx"]) == 0
    assert "ONNX export of a model: " in capsys.readouterr().out  # the report, read from the repo

    # The card's Python snippet runs as written (snapshot_download from the offline cache).
    snippet = card.text.split("```python\n")[1].split("```")[0]
    photos([(48, 36)])[0].save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(snippet, namespace)
    assert tuple(namespace["probability"].shape) == (48, 36)


def test_a_broken_exported_folder_is_a_clear_error(exported_sam2_unet, tmp_path):
    import shutil

    from dsunet_hf.cli import main

    _, folder, _ = exported_sam2_unet
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not a graph")
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")  # something to predict: checked before the model loads
    with pytest.raises(SystemExit, match=r"broken has no config\.json beside model\.onnx"):
        main(["predict", "--model", str(broken), str(tmp_path), "--output-dir", str(tmp_path / "out")])
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(folder / name, broken / name)
    with pytest.raises(SystemExit, match=r"broken/model\.onnx cannot be loaded by onnxruntime"):
        main(["predict", "--model", str(broken), str(tmp_path), "--output-dir", str(tmp_path / "out")])


def test_a_graph_that_disagrees_with_pytorch_is_an_error(exported_sam2_unet):
    model, folder, _ = exported_sam2_unet
    processor = SegmentationImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        model.head.bias.add_(0.01)  # the PyTorch model changes after the export
    try:
        with pytest.raises(RuntimeError, match=r"onnxruntime's logits differ from PyTorch's by 0\.01 at batch 1"):
            compare_with_onnxruntime(model, processor, folder / "model.onnx")
    finally:
        with torch.no_grad():
            model.head.bias.sub_(0.01)


def test_without_onnxruntime_the_export_says_it_is_unchecked(exported_sam2_unet, traced_sam2_unet, tmp_path,
                                                             monkeypatch):
    """Was: why an export was not checked was guessed from whether onnxruntime imports where the report is READ (an
    export made with --no-check read as "pip install onnxruntime" elsewhere, and the other way round). It is recorded
    at export time in onnx_export.json now."""
    from dsunet_hf.onnx_export import read_export_report

    model, folder, _ = exported_sam2_unet
    processor = SegmentationImageProcessor.from_pretrained(folder)
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "onnxruntime", None)  # import fails
        assert compare_with_onnxruntime(model, processor, folder / "model.onnx") is None
    tiny, program = traced_sam2_unet(1)
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: program)  # its graph, saved here
    export_onnx(tiny, tiny.default_image_processor(), tmp_path / "no-check", check=False)  # onnxruntime installed
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "onnxruntime", None)
        export_onnx(tiny, tiny.default_image_processor(), tmp_path / "no-ort")  # asked to check, nothing to check with
        assert read_export_report(tmp_path / "no-check").summary().endswith("; not checked (--no-check)")
    # The card says the same (it said "onnxruntime was not installed" for every unchecked export).
    assert "exported with `--no-check`" in (tmp_path / "no-check" / "README.md").read_text()
    assert "(onnxruntime was not installed)" in (tmp_path / "no-ort" / "README.md").read_text()
    assert json.loads((tmp_path / "no-ort" / "onnx_export.json").read_text())["unchecked_reason"] == \
        "onnxruntime not installed"
    assert read_export_report(tmp_path / "no-ort").summary().endswith(
        "; not checked (onnxruntime was not installed: pip install onnxruntime)")
    # A report written before the reason was recorded stays readable, and guesses nothing.
    report = OnnxExportReport(path="m.onnx", inputs={"pixel_values": ["batch", 3, 96, 96]}, opset=20,
                              export_seconds=1.0, external_data=False)
    assert report.summary() == ("m.onnx: pixel_values ['batch', 3, 96, 96]; float32; opset 20; "
                                "not checked at export (--no-check, or onnxruntime not installed)")
    old = json.loads((tmp_path / "no-ort" / "onnx_export.json").read_text())
    del old["unchecked_reason"]
    (tmp_path / "no-ort" / "onnx_export.json").write_text(json.dumps(old))
    assert read_export_report(tmp_path / "no-ort").summary().endswith("or onnxruntime not installed)")


def test_cli_exports_a_saved_artifact_at_another_size(tmp_path, capsys, monkeypatch):
    from dsunet_hf.cli import main

    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config())
    model.save_pretrained(tmp_path / "model", include_backbone=True)
    SegmentationImageProcessor(size=TINY_SIZE).save_pretrained(tmp_path / "model")

    programs = []
    record_traces(monkeypatch, programs)  # the traced graph, kept for the failing export below
    assert main(["export", "onnx", "--model", str(tmp_path / "model"), str(tmp_path / "onnx"), "--size", "64", "96"]) == 0
    assert "onnxruntime max |logits diff|" in capsys.readouterr().out
    assert input_shapes(tmp_path / "onnx" / "model.onnx")["pixel_values"][1:] == [3, 64, 96]
    config = json.loads((tmp_path / "onnx" / "config.json").read_text())
    assert config["model_type"] == "sam2_unet" and config["id2label"] == {"0": "background", "1": "foreground"}

    # A graph that fails the check is not written (here: a tolerance nothing meets). The same model and size as
    # above: the graph traced there is saved and checked again with onnxruntime (tracing it twice took ~10 s).
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: programs[0])
    with pytest.raises(SystemExit, match=r"model\.onnx not written: onnxruntime's logits differ .* \(tolerance -1\)"):
        main(["export", "onnx", "--model", str(tmp_path / "model"), str(tmp_path / "failed"), "--size", "64", "96",
              "--atol", "-1"])
    assert not list((tmp_path / "failed").iterdir())

    with pytest.raises(SystemExit, match="--size takes a height and an optional width"):
        main(["export", "onnx", "--model", str(tmp_path / "model"), str(tmp_path / "x"), "--size", "1", "2", "3"])


def predict_with_both(tmp_path, onnx_folder, model_folder, *options: str) -> None:
    """`dsunet-hf predict` on two photos (tmp_path/images) with the ONNX folder (-> onnx-out/) and with the PyTorch
    artifact (-> torch-out/)."""
    from dsunet_hf.cli import main

    images = tmp_path / "images"
    images.mkdir()
    for index, image in enumerate(photos([(70, 50), (40, 90)])):
        image.save(images / f"{index}.png")
    for source, out in ((onnx_folder, "onnx-out"), (model_folder, "torch-out")):
        assert main(["predict", "--model", str(source), str(images), "--output-dir", str(tmp_path / out),
                     *options, "--num-workers", "0"]) == 0


def initializer_bytes(path) -> dict[str, int]:
    """Bytes of the graph's weights by element type ("FLOAT", "FLOAT16", ...)."""
    totals = {}
    for tensor in onnx.load(str(path)).graph.initializer:
        name = onnx.TensorProto.DataType.Name(tensor.data_type)
        totals[name] = totals.get(name, 0) + len(tensor.raw_data)  # the exporter writes raw bytes
    return totals


@pytest.mark.parametrize("multiclass", [False, True])
def test_a_float16_export_halves_the_weights_and_predicts_like_the_fp32_model(multiclass, traced_sam2_unet, tmp_path,
                                                                             capsys, monkeypatch):
    from dsunet_hf.cli import main

    if multiclass:  # as if over protobuf's limit even in fp16: the fp16 weights go to model.onnx.data
        monkeypatch.setattr(onnx_export, "_SINGLE_FILE_LIMIT_BYTES", 0)
    model, program = traced_sam2_unet(4 if multiclass else 1)
    model.save_pretrained(tmp_path / "model", include_backbone=True)
    model.default_image_processor().save_pretrained(tmp_path / "model")
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: program)  # its fp32 graph: converted here
    assert main(["export", "onnx", "--model", str(tmp_path / "model"), str(tmp_path / "onnx16"),
                 "--dtype", "float16"]) == 0
    assert "float16; opset" in capsys.readouterr().out

    report = json.loads((tmp_path / "onnx16" / "onnx_export.json").read_text())
    assert report["dtype"] == "float16" and report["compared"] == "probabilities"
    assert report["external_data"] == multiclass == (tmp_path / "onnx16" / "model.onnx.data").is_file()
    # fp16 arithmetic (the fp32 graph's probabilities differ by ~1e-8 here), within the fp16 default tolerance
    assert 1e-6 < max(report["max_abs_difference"].values()) <= 0.02
    weights = initializer_bytes(tmp_path / "onnx16" / "model.onnx")
    assert weights.get("FLOAT", 0) < 0.001 * weights["FLOAT16"]  # every weight converted: 2 bytes a parameter
    assert weights["FLOAT16"] == pytest.approx(2 * sum(p.numel() for p in model.parameters()), rel=0.01)
    graph = onnx.load(str(tmp_path / "onnx16" / "model.onnx"), load_external_data=False).graph
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.input] == [("pixel_values", onnx.TensorProto.FLOAT)]
    assert [(o.name, o.type.tensor_type.elem_type) for o in graph.output] == [("logits", onnx.TensorProto.FLOAT)]
    card = (tmp_path / "onnx16" / "README.md").read_text()
    assert "--dtype float16" in card and "fp16 weights and arithmetic with fp32 inputs and outputs" in card
    assert "largest probability difference" in card

    # predict takes the fp16 folder as it is (fp32 arrays in and out): masks within a few grey levels of PyTorch's
    predict_with_both(tmp_path, tmp_path / "onnx16", tmp_path / "model")
    for index in range(2):
        onnx_mask = np.asarray(Image.open(tmp_path / "onnx-out" / "masks" / f"{index}.png")).astype(int)
        torch_mask = np.asarray(Image.open(tmp_path / "torch-out" / "masks" / f"{index}.png")).astype(int)
        if multiclass:  # class maps: arg-max ties at fp16 rounding only
            assert len(np.unique(torch_mask)) > 1 and (onnx_mask != torch_mask).mean() <= 0.02
        else:
            assert np.abs(onnx_mask - torch_mask).max() <= 3


def test_a_float16_export_is_checked_on_probabilities_and_refused_where_it_cannot_be(traced_sam2_unet, tmp_path,
                                                                                     monkeypatch):
    model, program = traced_sam2_unet(1)
    processor = model.default_image_processor()
    with monkeypatch.context() as patch:  # the fixture's fp32 graph, converted and checked
        patch.setattr(torch.onnx, "export", lambda *args, **kwargs: program)
        with pytest.raises(RuntimeError, match=r"model\.onnx not written: onnxruntime's probabilities differ .* "
                                               r"\(tolerance 1e-09\)"):
            export_onnx(model, processor, tmp_path / "failed", dtype="float16", atol=1e-9)
    assert not list((tmp_path / "failed").iterdir())
    with pytest.raises(ValueError, match="dtype must be one of float32, float16, got 'bfloat16'"):
        export_onnx(model, processor, tmp_path / "bf16", dtype="bfloat16")
    monkeypatch.setitem(sys.modules, "onnxruntime.transformers.float16", None)  # an onnx install without onnxruntime
    with pytest.raises(ValueError, match="onnxruntime's float16 tool: pip install onnxruntime"):
        export_onnx(model, processor, tmp_path / "no-ort", dtype="float16")
    assert not (tmp_path / "bf16").exists() and not (tmp_path / "no-ort").exists()


def test_visual_prompt_models_are_refused_with_the_reason(tmp_path):
    from test_visual_prompt_head import tiny_model

    model = tiny_model()
    with pytest.raises(ValueError, match="prompts besides the image"):
        export_onnx(model, model.default_image_processor(), tmp_path / "onnx")


def test_a_multiclass_graph_predicts_palette_masks_like_the_pytorch_model(traced_sam2_unet, tmp_path, monkeypatch):
    from dsunet_hf.cli import main

    model, program = traced_sam2_unet(4)
    model.save_pretrained(tmp_path / "model", include_backbone=True)
    model.default_image_processor().save_pretrained(tmp_path / "model")
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: program)  # its graph, saved and checked here
    assert main(["export", "onnx", "--model", str(tmp_path / "model"), str(tmp_path / "onnx")]) == 0
    predict_with_both(tmp_path, tmp_path / "onnx", tmp_path / "model", "--overlay")
    for index in range(2):
        onnx_mask = Image.open(tmp_path / "onnx-out" / "masks" / f"{index}.png")
        torch_mask = np.asarray(Image.open(tmp_path / "torch-out" / "masks" / f"{index}.png"))
        assert onnx_mask.mode == "P" and len(np.unique(torch_mask)) > 1
        assert (np.asarray(onnx_mask) != torch_mask).mean() <= 0.01  # arg-max ties at float noise only
        assert (tmp_path / "onnx-out" / "overlays" / f"{index}.png").is_file()
    card = (tmp_path / "onnx" / "README.md").read_text()  # a class graph's card: its classes, overlays, class maps
    assert "Classes: LABEL_0, LABEL_1, LABEL_2, LABEL_3." in card and "--overlay" in card and "--cutout" not in card
    assert "post_process_semantic_segmentation" in card


def test_an_export_records_the_revision_and_commit_of_its_hub_source(traced_sam2_unet, tmp_path, monkeypatch,
                                                                     offline_hub, capsys):
    """Was: `export onnx --model REPO --revision TAG` recorded REPO alone (onnx_export.json, the card): the graph could
    not be traced to the weights it came from. The tag is resolved to its commit from the local Hub cache."""
    from dsunet_hf.cli import main
    from dsunet_hf.onnx_export import onnx_model_card

    model, program = traced_sam2_unet(1)
    model.save_pretrained(tmp_path / "model", include_backbone=True)
    model.default_image_processor().save_pretrained(tmp_path / "model")
    tagged = offline_hub.add("me/rev", tmp_path / "model", branch="v1.0")
    (tmp_path / "model" / "notes.txt").write_text("a later push")
    offline_hub.add("me/rev", tmp_path / "model")  # main: another commit
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: program)  # its graph, saved here
    assert main(["export", "onnx", "--model", "me/rev", "--revision", "v1.0", str(tmp_path / "onnx"), "--no-check"]) == 0
    report = json.loads((tmp_path / "onnx" / "onnx_export.json").read_text())
    assert (report["source"], report["revision"], report["commit"]) == ("me/rev", "v1.0", tagged)
    card = (tmp_path / "onnx" / "README.md").read_text()
    assert "base_model: me/rev" in card and f"at commit [`{tagged[:10]}`](https://huggingface.co/me/rev/tree/{tagged})" in card
    assert f"/tree/{tagged}" in str(onnx_model_card(tmp_path / "onnx", repo_id="me/rev-onnx"))  # as `push` renders it
    capsys.readouterr()
    assert main(["info", str(tmp_path / "onnx")]) == 0
    assert f"ONNX export of me/rev at commit {tagged}: " in capsys.readouterr().out
    report.update(commit=None)  # a commit the cache did not tell: the revision as given
    (tmp_path / "onnx" / "onnx_export.json").write_text(json.dumps(report))
    assert "at revision `v1.0`" in str(onnx_model_card(tmp_path / "onnx"))
    assert report["source_is_hub_id"] is True
    # Was: a relative folder recorded as the source (runs/cod) was taken for a Hub id wherever it is not a folder:
    # pushed from another directory, the card linked a Hub repo runs/cod (base_model). Told at export now.
    import shutil

    shutil.copytree(tmp_path / "model", tmp_path / "runs" / "cod")
    monkeypatch.chdir(tmp_path)
    assert main(["export", "onnx", "--model", "runs/cod", "local-onnx", "--no-check"]) == 0
    monkeypatch.chdir(tmp_path / "runs")  # no runs/cod here
    card = onnx_model_card(tmp_path / "local-onnx", repo_id="me/cod-onnx")
    assert card.data.base_model is None and "huggingface.co/runs/cod" not in str(card)


def test_generic_trace_sizes_pad_every_window_and_are_not_square():
    from dsunet_hf.onnx_export import _generic_trace_size

    assert _generic_trace_size(1024, 1024, 32) == (37 * 32, 41 * 32)  # BiRefNet: 32 -> 37 and 41 (no 2, 3, 5, 7)
    assert _generic_trace_size(352, 352, 32) == (11 * 32, 13 * 32)  # SAM2-UNet
    assert _generic_trace_size(64, 64, 32) == (11 * 32, 13 * 32)
    height, width = _generic_trace_size(2048, 1536, 32)
    assert height < width
    for side in (height, width):  # at strides 4..32 the map is a multiple of none of the windows (Swin, Hiera)
        for stride in (4, 8, 16, 32):
            assert all((side // stride) % window for window in (7, 12, 14, 16) if side // stride > window)


def test_dynamic_size_is_refused_where_the_graph_would_be_wrong(tmp_path):
    model, _ = _models()["dsunet"]()
    with pytest.raises(ValueError, match="dynamic height and width is for sam2_unet, birefnet, dinov2_seg models, "
                                         "not dsunet"):
        export_onnx(model, model.default_image_processor(), tmp_path / "onnx", dynamic_size=True)
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config())
    with pytest.raises(ValueError, match="must be checked at other sizes"):
        export_onnx(model, model.default_image_processor(), tmp_path / "onnx", dynamic_size=True, check=False)
    assert not (tmp_path / "onnx").exists()  # refused before the output folder is made
    # A DINOv2 head runs windows of its crop size: a fixed graph of another size would fit none of them.
    from test_dinov2_seg import tiny

    from dsunet_hf import Dinov2ForSemanticSegmentation

    head = Dinov2ForSemanticSegmentation(tiny())
    with pytest.raises(ValueError, match=r"size 42: Dinov2ForSemanticSegmentation runs windows of its crop size \(56\)"):
        export_onnx(head, head.default_image_processor(), tmp_path / "onnx", size=42)
    with pytest.raises(ValueError, match=r"size \(64, 80\): Sam2UNetForImageSegmentation takes heights and widths "
                                         r"that are multiples of 32"):
        export_onnx(model, model.default_image_processor(), tmp_path / "onnx", size=(64, 80))
    dsunet, _ = _models()["dsunet"]()
    with pytest.raises(ValueError, match=r"size 144: DSUNetForImageSegmentation takes heights and widths that are "
                                         r"multiples of 32"):
        export_onnx(dsunet, dsunet.default_image_processor(), tmp_path / "onnx", size=144)
    assert not (tmp_path / "onnx").exists()


def test_a_dynamic_size_dinov2_head_runs_every_schedule_at_any_size(tmp_path):
    """The DINOv2 head's upstream position-embedding interpolation (scale factor (grid + 0.1) / 37) stays symbolic in
    the graph: one export runs windows smaller than the crop, whole images ('single') and the trained 37 x 37 grid
    (where upstream uses the embeddings as they are) with the PyTorch head's numbers."""
    from test_dinov2_seg import randomized, tiny

    from dsunet_hf import Dinov2ForSemanticSegmentation

    torch.manual_seed(0)
    model = randomized(Dinov2ForSemanticSegmentation(tiny())).eval()  # crop 56: a 4 x 4 grid, not the trained 37
    report = export_onnx(model, model.default_image_processor(), tmp_path / "onnx", dynamic_size=True)
    assert report.inputs["pixel_values"] == ["batch", 3, "height", "width"] and report.traced_size == [59, 61]
    assert len(report.max_abs_difference) == 4 and max(report.max_abs_difference.values()) <= 1e-4
    card = (tmp_path / "onnx" / "README.md").read_text()
    assert "Any height and width (traced at 59×61)" in card and "--resolution native" not in card
    graph = OnnxSegmentationModel(tmp_path / "onnx")
    assert graph.dynamic_size
    pixels = torch.randn(1, 3, 45, 100)  # shorter than the crop: a fixed-size graph refuses these windows
    for schedule in ("single", "slide", "multiscale"):
        assert torch.allclose(graph.segment(pixels, schedule), model.segment(pixels, schedule), atol=1e-5)
    for size in ((518, 518), (518, 532)):  # the trained grid (embeddings as they are), then one column more
        pixels = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected = model(pixel_values=pixels).logits
        assert torch.allclose(graph(pixel_values=pixels).logits, expected, atol=1e-4)


def test_the_deformable_attention_exports_with_any_height_and_width(tmp_path):
    """BiRefNet's ASPPDeformable (deformable convolutions with kernels 1, 3, 7 and learned offsets) traced at one
    size runs at others in onnxruntime with PyTorch's outputs. (The whole-model dynamic-size test below uses plain
    ASPP: tracing fifteen of these with symbolic shapes took it from about 70 to 125 s.)"""
    from dsunet_hf.modules.aspp import ASPPDeformable
    from dsunet_hf.modules.deform_conv import DeformableConv2d

    torch.manual_seed(0)
    block = ASPPDeformable(8, 8).eval()
    for layer in block.modules():  # learned offsets: the sampling positions really move
        if isinstance(layer, DeformableConv2d):
            torch.nn.init.normal_(layer.offset_conv.weight, std=0.5)
    height, width = torch.export.Dim("height", min=4, max=512), torch.export.Dim("width", min=4, max=512)
    with onnx_export._pure_pytorch_deform_conv(), torch.no_grad():
        program = torch.onnx.export(block, (torch.randn(2, 8, 12, 20),), dynamo=True, verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim("batch", max=64), 2: height, 3: width},))
    program.save(str(tmp_path / "aspp.onnx"))
    assert "GridSample" in {node.op_type for node in onnx.load(str(tmp_path / "aspp.onnx")).graph.node}
    session = onnxruntime.InferenceSession(str(tmp_path / "aspp.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(1, 8, 12, 20), (2, 8, 7, 33), (1, 8, 40, 9)]:
        x = torch.randn(shape)
        with torch.no_grad(), onnx_export._pure_pytorch_deform_conv():
            expected = block(x)
        [got] = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        assert got.shape == tuple(expected.shape) and np.abs(got - expected.numpy()).max() < 1e-4


def test_a_dynamic_size_birefnet_graph_runs_photos_at_their_own_size(tmp_path, capsys, offline_hub):
    """BiRefNet with any height and width: traced at 352x416, checked at its own size and two more, pushed to the
    Hub; `predict --model <repo> --resolution native` gives the PyTorch model's masks. Plain ASPP in the decoder
    (the deformable one at any size: the test above), and no multi-scale input: its half-size backbone pass doubles
    the export (67 -> 34 s on 2 cores); every real dynamic-size export is checked at other sizes the same way."""
    from test_birefnet import tiny_config

    from dsunet_hf import BiRefNetForImageSegmentation
    from dsunet_hf.cli import main
    from dsunet_hf.predict import predict_files

    model = BiRefNetForImageSegmentation(tiny_config(decoder_attention="ASPP", multi_scale_input="")).eval()
    model.save_pretrained(tmp_path / "model", include_backbone=True)
    processor = model.default_image_processor()
    processor.post_processing = None  # as saved before the order was recorded: the export records BiRefNet's
    processor.save_pretrained(tmp_path / "model")
    folder = tmp_path / "onnx"
    assert main(["export", "onnx", "--model", str(tmp_path / "model"), str(folder), "--dynamic-size",
                 "--push-to-hub", "me/birefnet-onnx"]) == 0
    assert "pixel_values ['batch', 3, '32*height', '32*width']" in capsys.readouterr().out
    assert offline_hub.pushes == [("me/birefnet-onnx", f"ONNX export of {tmp_path / 'model'}")]
    card = (folder / "README.md").read_text()
    assert "Any height and width that are multiples of 32 (traced at 352×416)" in card
    assert "dsunet-hf predict --model me/birefnet-onnx photos/ --output-dir out --cutout --resolution native" in card
    report = json.loads((folder / "onnx_export.json").read_text())
    assert json.loads((folder / "preprocessor_config.json").read_text())["post_processing"] == "birefnet"
    assert report["traced_size"] == [352, 416] and report["class_maps"] is False
    assert set(report["max_abs_difference"]) == {"1", "3", "1@320x480", "2@160x352"}  # model size 64x64 + two
    assert max(report["max_abs_difference"].values()) <= 1e-4
    ops = {node.op_type for node in onnx.load(str(folder / "model.onnx")).graph.node}
    assert "Softmax" in ops and "IsNaN" not in ops  # eager attention

    graph = OnnxSegmentationModel(folder)
    assert graph.dynamic_size and graph.input_size is None
    images = tmp_path / "images"
    images.mkdir()
    for index, image in enumerate(photos([(70, 50), (40, 90), (130, 96)])):
        image.save(images / f"{index}.png")
    assert main(["predict", "--model", "me/birefnet-onnx", str(images), "--output-dir", str(tmp_path / "onnx-out"),
                 "--resolution", "native", "--num-workers", "0"]) == 0
    predict_files(model, processor, [images], tmp_path / "torch-out", resolution="native", progress=False)
    for index in range(3):
        onnx_mask = np.asarray(Image.open(tmp_path / "onnx-out" / "masks" / f"{index}.png"), dtype=np.int16)
        torch_mask = np.asarray(Image.open(tmp_path / "torch-out" / "masks" / f"{index}.png"), dtype=np.int16)
        assert onnx_mask.shape == torch_mask.shape and np.abs(onnx_mask - torch_mask).max() <= 1
    # At its own size (not the model's 64x64): a native 128x96 input, the PyTorch logits.
    pixels = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
    assert torch.allclose(graph(pixel_values=pixels).logits, expected, atol=1e-4)


@pytest.mark.parametrize("options, message", [
    (["--size", "0"], r"size \(--size\) 0: sides must be positive integers"),
    (["--size", "64", "-32"], r"size \(--size\) \(64, -32\): sides must be positive"),
    (["--opset", "12"], r"opset \(--opset\) 12: this exporter \(torch .*\) writes opsets 18 to \d+"),
    (["--opset", "99"], r"opset \(--opset\) 99: "),
    (["{model}"], r"OUTPUT_DIR \S+model is the model's own folder"),
    (["{other_model}"], r"OUTPUT_DIR \S+other holds a PyTorch model \(config.json and its weights\)"),
    (["{variant_model}"], r"OUTPUT_DIR \S+variant holds a PyTorch model \(config.json and its weights\)"),
    (["{sharded_model}"], r"OUTPUT_DIR \S+sharded holds a PyTorch model \(config.json and its weights\)"),
    (["{file}"], r"OUTPUT_DIR \S+afile is a file, not a folder"),
])
def test_cli_export_refuses_bad_options_before_loading_the_model(tmp_path, options, message):
    """--size 0 stopped deep in torch.export; a low --opset printed the converter's traceback and wrote opset 18;
    exporting into a model's folder turned it into an ONNX folder (its config and card overwritten), also one saved
    as a variant (save_pretrained(variant="fp16"), sharded or not)."""
    from dsunet_hf.cli import main

    weights = {"model": ["model.safetensors"], "other": ["model.safetensors"], "variant": ["model.fp16.safetensors"],
               "sharded": ["model.safetensors.index.fp16.json", "model.fp16-00001-of-00002.safetensors"]}
    for folder, names in weights.items():  # never loaded: the checks come first
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text("{}")
        for name in names:
            (tmp_path / folder / name).write_bytes(b"")
    (tmp_path / "afile").write_text("")
    paths = {"model": tmp_path / "model", "other_model": tmp_path / "other", "file": tmp_path / "afile",
             "variant_model": tmp_path / "variant", "sharded_model": tmp_path / "sharded"}
    output = [option.format(**paths) for option in options if option.startswith("{")] or [str(tmp_path / "out")]
    options = [option for option in options if not option.startswith("{")]
    with pytest.raises(SystemExit, match="^export: " + message):
        main(["export", "onnx", "--model", str(tmp_path / "model"), *output, *options])
    assert not (tmp_path / "out").exists() and (tmp_path / "model" / "config.json").read_text() == "{}"


@pytest.mark.parametrize("weights", ["model.safetensors", "model.fp16.safetensors", "model.safetensors.index.fp16.json"])
def test_a_folder_with_pytorch_weights_of_any_variant_is_not_taken_for_an_onnx_export(tmp_path, weights):
    from dsunet_hf.onnx_export import is_onnx_export

    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "model.onnx.data").write_bytes(b"")
    assert is_onnx_export(tmp_path)
    (tmp_path / weights).write_bytes(b"")
    assert not is_onnx_export(tmp_path)


def test_export_onnx_refuses_bad_options_and_an_opset_the_exporter_did_not_write(tmp_path, monkeypatch):
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config()).eval()
    processor = SegmentationImageProcessor(size=TINY_SIZE)
    with pytest.raises(ValueError, match=r"size \(--size\) \(0, 64\): sides must be positive integers"):
        export_onnx(model, processor, tmp_path / "out", size=(0, 64))
    with pytest.raises(ValueError, match=r"opset \(--opset\) 17: .* writes opsets 18 to"):
        export_onnx(model, processor, tmp_path / "out", opset=17)
    model.save_pretrained(tmp_path / "model", include_backbone=True)
    with pytest.raises(ValueError, match="holds a PyTorch model"):
        export_onnx(model, processor, tmp_path / "model")
    assert not (tmp_path / "out").exists() and not (tmp_path / "model" / "model.onnx").exists()

    class Program:  # what the exporter returns when its down-conversion fails: the graph at its own opset
        model = SimpleNamespace(opset_imports={"": 19})

        def save(self, path, external_data=False):
            Path(path).write_bytes(b"a graph")

    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: Program())
    with pytest.raises(RuntimeError, match=r"model.onnx not written: the exporter made opset 19, not the 20 asked for"):
        export_onnx(model, processor, tmp_path / "out", opset=20, check=False)
    assert not list((tmp_path / "out").iterdir())


def test_the_card_of_a_two_class_graph_is_a_class_graphs_card(exported_sam2_unet, tmp_path):
    """Two classes (background, road) are still class maps: the card gives overlays and class-map post-processing,
    not cut-outs (which predict refuses for class models). Exports written before the kind was recorded keep the
    old guess (more than two labels)."""
    import shutil

    from dsunet_hf.onnx_export import onnx_model_card

    _, exported, _ = exported_sam2_unet
    folder = tmp_path / "two-class"
    shutil.copytree(exported, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="dinov2_seg", id2label={"0": "background", "1": "road"})
    (folder / "config.json").write_text(json.dumps(config))
    report = json.loads((folder / "onnx_export.json").read_text())
    for class_maps, expected in ((True, True), (None, False)):
        report["class_maps"] = class_maps
        (folder / "onnx_export.json").write_text(json.dumps(report))
        card = str(onnx_model_card(folder))
        assert ("Classes: background, road." in card and "--overlay" in card and "--cutout" not in card
                and "post_process_semantic_segmentation" in card) is expected, class_maps


def test_the_export_report_look_up_gives_up_on_a_hub_that_never_answers(tmp_path, offline_hub, monkeypatch):
    # Was: hf_hub_download retried an uncached onnx_export.json (a PyTorch repo never has one) with 60 s timeouts
    # for minutes, whatever HF_HUB_ETAG_TIMEOUT said: `app`, `predict`, a Space of a cached model waited that long.
    import socket
    import threading

    from huggingface_hub import constants

    from dsunet_hf.onnx_export import read_export_report

    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "onnx_export.json").write_text(json.dumps(
        {"path": "model.onnx", "inputs": {}, "opset": 18, "export_seconds": 1.0, "external_data": False,
         "source": "me/pytorch"}))
    offline_hub.add("me/cached-export", tmp_path / "export")
    with socket.socket() as server:  # accepts connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 0.2)
        found = []
        worker = threading.Thread(daemon=True, target=lambda: found.extend(
            read_export_report(name) for name in ("me/never-answers", "me/cached-export")))
        worker.start()
        worker.join(timeout=10)
    assert len(found) == 2 and found[0] is None  # not cached: not known as an export
    assert found[1].source == "me/pytorch"  # cached: read from the cache
