"""ONNX export of the segmentation models (images in, logits out, a dynamic batch, checked with onnxruntime),
and :class:`OnnxSegmentationModel`, which runs an exported folder where ``dsunet-hf predict`` takes a model.

``dsunet-hf export onnx --model M OUTPUT_DIR`` (the shape of ``optimum-cli export onnx``) writes ``model.onnx``
with the model's ``config.json`` (class names) and ``preprocessor_config.json`` (size and normalisation), so
the folder holds everything needed to run it. We call ``torch.onnx.export`` (the dynamo exporter, built on
onnxscript) directly: optimum's exporters cover only architectures it knows, and ours would each need a custom
``OnnxConfig`` that adds nothing the exporter does not already do here.

Why it matters: BiRefNet's users cannot export its deformable convolution (``torchvision::deform_conv2d``
has no ONNX translation below opset 19, and the official ONNX files have a fixed batch). During export we take
our pure-PyTorch deformable convolution (``grid_sample``), which every ONNX runtime runs, the transformers
backbones' eager attention (see ``_eager_attention``), and LoRA merged into the weights it adapts (one matmul per
layer in the graph; the model's own weights are restored afterwards).

``dynamic_size=True`` (``--dynamic-size``) also leaves the height and width free (multiples of 32) for SAM2-UNet and
BiRefNet, whose backbones pad to their windows at any size: one graph for BiRefNet_dynamic / _HR photos at their own
size (``predict --resolution native``), which the official files (fixed 1024²) cannot do; and any height and width
for the DINOv2 heads (they pad to the patch size inside), whose upstream position-embedding interpolation is then
written as two matrix products the exporter keeps symbolic (``backbones.dinov2._upstream_grid_for_export``), so
every schedule runs on windows and whole images of any size. The exporter follows
the Python branches at the traced size only (pad or not, square or not), so the trace uses a size that takes the
general branch everywhere (see :func:`_generic_trace_size`), and the check runs the graph at the model's size
and at two others before anything is written.

``dtype="float16"`` (``--dtype float16``) converts the checked fp32 graph's weights and arithmetic to fp16 with
onnxruntime's own converter (``onnxruntime.transformers.float16``, inputs and outputs kept fp32, so callers feed
the same arrays): half the file (SAM2-UNet-L 872 -> 438 MB), and the fast path of GPU runtimes. It is
checked against the fp32 PyTorch model on probabilities (what a mask is made from), since fp16 logits differ by
more than fp32's 1e-4 wherever they are large.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import numbers
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import nn

from .files import output_folder_problem, write_json_atomic
from .finetune import lora_merged
from .hub import saved_weight_files
from .image_processing import processor_for_model
from .modeling_utils import model_output

__all__ = ["OnnxExportReport", "OnnxSegmentationModel", "compare_with_onnxruntime", "export_onnx", "is_onnx_export",
           "onnx_export_from_hub", "onnx_input_names", "onnx_model_card", "read_export_report"]

DTYPES = ("float32", "float16")
# The check's default tolerance per dtype: |logit difference| for fp32, |probability difference| for fp16 (sigmoid,
# or softmax over classes), generous enough for fp16 rounding through a deep network, not for an overflow (inf/NaN)
# or a wrong graph.
DEFAULT_ATOL = {"float32": 1e-4, "float16": 2e-2}

# Beyond this, weights go to an external data file (protobuf's 2 GB limit; DSU-Net-L is 2.1 GB in fp32).
_SINGLE_FILE_LIMIT_BYTES = 1_800_000_000


class _ImagesToLogits(nn.Module):
    """The model as a function of its image tensors only, returning the final logits (what ONNX users run)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, dino_pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        inputs = {"pixel_values": pixel_values}
        if dino_pixel_values is not None:
            inputs["dino_pixel_values"] = dino_pixel_values
        return model_output(self.model, **inputs).logits


def onnx_input_names(processor) -> list[str]:
    """``pixel_values`` and any extra view the model takes (DSU-Net's ``dino_pixel_values``)."""
    return ["pixel_values", *getattr(processor, "extra_sizes", {})]


def _example_inputs(processor, input_names: list[str], batch_size: int,
                    size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """Random images at the processor's size(s), or at ``(height, width)`` for every input when ``size`` is set."""
    sizes = {"pixel_values": processor.size, **getattr(processor, "extra_sizes", {})}
    generator = torch.Generator().manual_seed(0)
    shapes = {name: size or (sizes[name]["height"], sizes[name]["width"]) for name in input_names}
    return {name: torch.randn(batch_size, 3, *shapes[name], generator=generator) for name in input_names}


# Models whose graph stays exact at any height and width (multiples of this), checked per export. DSU-Net is not
# one: it runs DINOv2 and SAM 2 at two fixed sizes of its own.
DYNAMIC_SIZE_MULTIPLE = {"sam2_unet": 32, "birefnet": 32, "dinov2_seg": 1}
INPUT_SIZE_MULTIPLE = {"sam2_unet": 32, "birefnet": 32, "dsunet": 32}  # what a fixed --size must be a multiple of


def opset_range() -> tuple[int, int]:
    """The ONNX opsets the exporter writes (both ends included): from the lowest its op translations (torchlib)
    implement, 18 (below it the exporter converts the graph down afterwards, which fails for these models and then
    keeps opset 18 after printing the converter's traceback), to the highest it supports."""
    try:  # private constants: the fallbacks are their values in torch 2.6-2.13
        from torch.onnx._constants import ONNX_MAX_OPSET as highest
    except ImportError:
        highest = 23
    try:
        from torch.onnx._internal.exporter._constants import TORCHLIB_OPSET as lowest
    except ImportError:
        lowest = 18
    return int(lowest), int(highest)


def check_export_options(size: int | tuple[int, ...] | list[int] | None = None, opset: int | None = None) -> None:
    """ValueError for a ``size`` side that is not a positive integer or an ``opset`` outside :func:`opset_range`:
    said before anything is loaded or traced (torch.export would stop with a long dump, or write another opset)."""
    def integer(value) -> bool:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    if isinstance(size, dict):
        sides = [size.get("height"), size.get("width")]
    else:
        sides = [] if size is None else [size] if not isinstance(size, (list, tuple)) else list(size)
    if any(not integer(side) or side < 1 for side in sides):
        raise ValueError(f"size (--size) {size}: sides must be positive integers")
    if opset is not None:
        lowest, highest = opset_range()
        if not integer(opset) or not lowest <= opset <= highest:
            raise ValueError(f"opset (--opset) {opset}: this exporter (torch {torch.__version__}) writes opsets "
                             f"{lowest} to {highest}")


def export_folder_problem(output_dir: str | Path, source: str | Path | None = None) -> str | None:
    """Why ``output_dir`` must not receive an export, or None: it is a file (or under one), it is the model's own
    folder (``source``'s, or the folder of a ``source`` weights file), or it holds a PyTorch model (config.json and
    weights), whose config and card the export would overwrite, turning it into an ONNX folder."""
    problem = output_folder_problem(output_dir)
    if problem:
        return problem
    output_dir = Path(output_dir).expanduser()
    if source is not None and Path(source).expanduser().exists():
        model_folder = Path(source).expanduser()
        model_folder = model_folder if model_folder.is_dir() else model_folder.parent
        if output_dir.resolve() == model_folder.resolve():
            return f"{output_dir} is the model's own folder: export into another one (its config and card would be " \
                   f"overwritten)"
    if (output_dir / "config.json").is_file() and saved_weight_files(output_dir):  # any variant, sharded or not
        return f"{output_dir} holds a PyTorch model (config.json and its weights): export into another folder " \
               f"(its config and card would be overwritten)"
    return None


def _generic_trace_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """A (height, width) to trace a dynamic-size graph at: multiples of ``multiple`` near the model's size whose
    counts of ``multiple`` share no factor with 2·3·5·7, the height's smaller than the width's.

    Why: the exporter records only the branch each shape test takes at the traced size. At such a size a stage's
    map (stride 4..32) needs padding to its window (Swin 7 or 12, Hiera 16 or 8 at stride 16 and 32) wherever any
    multiple of 32 would, so each 'pad to the window' branch takes its general path, and a non-square size takes
    the general position-embedding path; at the model's own square size (1024² = 32·32 and its maps, multiples of
    8 and 16) they would be skipped, and the graph wrong at other sizes."""
    def generic(count: int) -> int:
        while math.gcd(count, 210) != 1:
            count += 1
        return count

    rows = generic(max(2, height // multiple))
    columns = generic(max(rows + 1, width // multiple))
    return rows * multiple, columns * multiple


@contextlib.contextmanager
def _pure_pytorch_deform_conv():
    from .modules import deform_conv

    previous = deform_conv._backend
    deform_conv.set_backend("pytorch")
    try:
        yield
    finally:
        deform_conv.set_backend(previous)


@contextlib.contextmanager
def _eager_attention(model: nn.Module):
    """Attention as explicit matmul + softmax while exporting: the exporter translates SDPA (below opset 23)
    with an IsNaN / Where guard for fully masked rows over every score matrix, which costs onnxruntime ~12 % of
    DSU-Net-L (10.2 -> 8.9 s per image on a 2-core CPU; 2026-12-06). Same numbers (the check compares)."""
    configs = {id(config): config for module in model.modules()
               if getattr(config := getattr(module, "config", None), "_attn_implementation", None) == "sdpa"}
    for config in configs.values():
        config._attn_implementation = "eager"
    try:
        yield
    finally:
        for config in configs.values():
            config._attn_implementation = "sdpa"


UNCHECKED_NO_CHECK = "--no-check"  # OnnxExportReport.unchecked_reason
UNCHECKED_NO_ONNXRUNTIME = "onnxruntime not installed"


@dataclass
class OnnxExportReport:
    path: str
    inputs: dict[str, list]  # name -> shape; names for the dynamic axes ("batch", "32*height", "32*width")
    opset: int
    export_seconds: float
    external_data: bool
    checked_with: str | None = None  # "onnxruntime x.y.z", or None when onnxruntime is not installed
    max_abs_difference: dict[str, float] = field(default_factory=dict)  # per checked batch ("1") or "1@HxW"
    traced_size: list[int] | None = None  # dynamic-size graphs: the (height, width) traced
    source: str | None = None  # the model exported (folder or Hub id), for the card
    revision: str | None = None  # the Hub repo's branch, tag or commit asked for (--revision), as given
    commit: str | None = None  # the commit it resolved to in the local Hub cache, where known
    license: str | None = None  # the source model's, for the card
    versions: dict[str, str] = field(default_factory=dict)  # dsunet-hf, torch, onnx, onnxscript, onnxruntime
    dtype: str = "float32"  # the graph's weights and arithmetic; inputs and outputs are fp32 either way
    compared: str = "logits"  # what max_abs_difference measures: "logits" (fp32) or "probabilities" (fp16)
    class_maps: bool | None = None  # the graph predicts class maps (None: an export written before this was recorded)
    # source is a Hub repo id, as told where it was exported (a relative folder such as runs/cod reads as one from
    # another directory); None: an export written before this was recorded
    source_is_hub_id: bool | None = None
    # Why the export did not check the graph, told where it was exported ("--no-check" or "onnxruntime not
    # installed"; None: checked, or an export written before this was recorded). Whether onnxruntime imports where
    # the report is read says nothing about the machine that exported it.
    unchecked_reason: str | None = None

    @property
    def unchecked_why(self) -> str | None:
        """Why the export was not checked, as the model card says it (None: checked, or not recorded)."""
        return {UNCHECKED_NO_CHECK: "exported with `--no-check`",
                UNCHECKED_NO_ONNXRUNTIME: "onnxruntime was not installed"}.get(self.unchecked_reason,
                                                                                 self.unchecked_reason)

    def summary(self) -> str:
        if self.checked_with:
            check = f"onnxruntime max |{self.compared} diff| vs PyTorch {max(self.max_abs_difference.values()):.2e}"
        elif self.unchecked_reason == UNCHECKED_NO_ONNXRUNTIME:
            check = "not checked (onnxruntime was not installed: pip install onnxruntime)"
        elif self.unchecked_reason:
            check = f"not checked ({self.unchecked_reason})"
        else:  # an older report: the reason was not recorded
            check = "not checked at export (--no-check, or onnxruntime not installed)"
        shapes = ", ".join(f"{name} {shape}" for name, shape in self.inputs.items())
        return f"{self.path}: {shapes}; {self.dtype}; opset {self.opset}; {check}"


def export_onnx(
    model: nn.Module,
    processor,
    output_dir: str | Path,
    size: int | tuple[int, int] | None = None,
    opset: int | None = None,
    check: bool = True,
    atol: float | None = None,
    dynamic_size: bool = False,
    source: str | None = None,
    dtype: str = "float32",
    revision: str | None = None,
) -> OnnxExportReport:
    """Export ``model`` (eval mode, on the CPU, fp32) to ``output_dir/model.onnx``.

    Args:
        model: a dsunet-hf segmentation model (SAM2-UNet, DSU-Net, BiRefNet, a DINOv2 head); it is put in eval
            mode on the CPU in fp32 (the exported graph is fp32).
        processor: its image processor; its size (or ``size``) fixes the input height and width, and it is saved
            beside the graph.
        size: input ``(height, width)`` (or one side) instead of the processor's; the saved processor gets it.
        opset: ONNX opset (default: the exporter's).
        check: run the graph with onnxruntime at batch 1 and 3 (the export traces batch 2) and compare with the
            PyTorch model; raise if any logit (fp16: probability) differs by more than ``atol``.
        atol: the check's tolerance (default :data:`DEFAULT_ATOL`: 1e-4 on logits for fp32, 0.02 on
            probabilities for fp16).
        dynamic_size: leave the height and width free (multiples of 32 for SAM2-UNet and BiRefNet, any for the
            DINOv2 heads), traced at a
            generic size and checked at the model's size and at two others (needs onnxruntime). The saved
            processor keeps the model's size (what ``predict`` runs at unless ``--resolution native``).
        source: the model's folder or Hub id, named on the model card (``README.md``, see :func:`onnx_model_card`);
            default: the model's ``name_or_path``.
        revision: the branch, tag or commit of the Hub repo ``source`` the model was loaded from (default: main),
            recorded with the commit it resolves to in the local Hub cache (``commit``; also for a ``source`` folder
            that is a Hub-cache snapshot), so that the graph can be traced to its weights. Without ``source`` no
            commit is recorded (the model does not tell which revision it was loaded from).
        dtype: ``"float32"``, or ``"float16"``: the traced fp32 graph converted to fp16 weights and arithmetic
            (fp32 inputs and outputs) with onnxruntime's converter, then checked on probabilities.

    Returns:
        :class:`OnnxExportReport` (also written to ``onnx_export.json``).
    """
    from .hub import looks_like_hub_id, package_versions
    from .image_processing import _normalize_size

    if not hasattr(processor, "size"):
        raise TypeError(f"export_onnx needs the model's SegmentationImageProcessor, got {type(processor).__name__}")
    if isinstance(model, OnnxSegmentationModel):
        raise ValueError(f"{model.folder} is already an ONNX export")
    if getattr(model.config, "model_type", None) in ("visual_prompt", "visual_prompt_matcher"):
        raise ValueError("visual-prompt models take reference images and prompts besides the image: not exportable")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    check_export_options(size, opset)
    problem = export_folder_problem(output_dir, source)
    if problem:
        raise ValueError(problem)
    convert_to_float16 = _float16_converter() if dtype == "float16" else None  # refused before anything is made
    multiple = _dynamic_size_multiple(model, check) if dynamic_size else None
    crop = getattr(model.config, "crop_size", None) if getattr(model, "predicts_class_maps", False) else None
    if size is not None and crop is not None and not dynamic_size and _normalize_size(size) != _normalize_size(crop):
        # predict runs multi-class models on windows of their crop size: a graph of another size never fits
        raise ValueError(f"size {size}: {type(model).__name__} runs windows of its crop size ({crop}), the size of "
                         f"its graph; leave --size out, or export with --dynamic-size for a graph of any size")
    stride = INPUT_SIZE_MULTIPLE.get(getattr(model.config, "model_type", None), 1)
    if size is not None and any(side % stride for side in _normalize_size(size).values()):
        # said here: tracing would stop deep inside torch.export with the reason buried in its report
        raise ValueError(f"size {size}: {type(model).__name__} takes heights and widths that are multiples of "
                         f"{stride}")
    atol = DEFAULT_ATOL[dtype] if atol is None else atol
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = model.float().cpu().eval()
    if size is not None:
        processor = copy.deepcopy(processor)
        processor.size = _normalize_size(size)
    input_names = onnx_input_names(processor)
    batch = torch.export.Dim("batch", min=1, max=1024)
    dynamic_shapes = {name: {0: batch} for name in input_names}
    traced_size = None
    if dynamic_size:
        traced_size = _generic_trace_size(processor.size["height"], processor.size["width"], multiple)
        # A free axis starts at 2 (torch.export specialises sizes 0 and 1); multiples of 32 start at 32.
        height = torch.export.Dim("height", min=1 if multiple > 1 else 2, max=8192 // multiple)
        width = torch.export.Dim("width", min=1 if multiple > 1 else 2, max=8192 // multiple)
        if multiple > 1:
            height, width = multiple * height, multiple * width
        dynamic_shapes = {"pixel_values": {0: batch, 2: height, 3: width}}
    example = _example_inputs(processor, input_names, 2, traced_size)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external_data = weight_bytes > _SINGLE_FILE_LIMIT_BYTES
    # fp16 halves the weights (DSU-Net-L: 2.1 -> 1.05 GB, one file again)
    external_data_written = (weight_bytes // 2 if dtype == "float16" else weight_bytes) > _SINGLE_FILE_LIMIT_BYTES
    path = output_dir / "model.onnx"

    # Written and checked in a scratch folder, then moved in: a failed export or check leaves no graph behind.
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".export-") as scratch:
        scratch_path = Path(scratch) / "model.onnx"
        start = time.perf_counter()
        with _pure_pytorch_deform_conv(), _eager_attention(model), lora_merged(model), torch.no_grad():
            program = torch.onnx.export(
                _ImagesToLogits(model).eval(), kwargs=example, dynamic_shapes=dynamic_shapes, dynamo=True,
                input_names=input_names, output_names=["logits"], opset_version=opset, external_data=external_data,
            )
            program.save(str(scratch_path), external_data=external_data)
        written_opset = int(program.model.opset_imports[""])
        if opset is not None and written_opset != opset:  # the exporter's down-conversion failed: it says so in a log
            raise RuntimeError(f"{path} not written: the exporter made opset {written_opset}, not the {opset} asked for")
        if convert_to_float16 is not None:
            _save_as_float16(scratch_path, convert_to_float16, external_data_written)
        report = OnnxExportReport(
            path=str(path), inputs=_graph_input_shapes(program.model),
            opset=written_opset, export_seconds=round(time.perf_counter() - start, 1),
            external_data=external_data_written, traced_size=list(traced_size) if traced_size else None,
            dtype=dtype, compared="logits" if dtype == "float32" else "probabilities",
            class_maps=bool(getattr(model, "predicts_class_maps", False)),
        )
        if check:
            try:
                checked = compare_with_onnxruntime(model, processor, scratch_path, atol, traced_size,
                                                   compare=report.compared)
            except RuntimeError as error:
                raise RuntimeError(f"{path} not written: {error}") from error
            if checked is not None:
                report.checked_with, report.max_abs_difference = checked
            else:
                report.unchecked_reason = UNCHECKED_NO_ONNXRUNTIME
        else:
            report.unchecked_reason = UNCHECKED_NO_CHECK
        (output_dir / "model.onnx.data").unlink(missing_ok=True)  # an earlier export's weights, if any
        for written in Path(scratch).iterdir():  # model.onnx (+ model.onnx.data)
            os.replace(written, output_dir / written.name)
    report.source = source or getattr(model, "name_or_path", None) or None
    report.source_is_hub_id = bool(report.source) and looks_like_hub_id(report.source)
    report.revision = revision
    if source:  # the revision loaded is known only to the caller (the command line passes both)
        from .modeling_utils import cached_commit

        report.commit = cached_commit(source, revision)
    report.license = _source_license(model)
    report.versions = package_versions("dsunet-hf", "torch", "onnx", "onnxscript", "onnxruntime")
    model.config.save_pretrained(output_dir)
    # The post-processing order recorded (BiRefNet's differs), so that the folder's own processor follows it for
    # any reader, also one saved before the order was (see image_processing.processor_for_model).
    processor_for_model(processor, model).save_pretrained(output_dir)
    write_json_atomic(output_dir / "onnx_export.json", asdict(report))
    onnx_model_card(output_dir).save(output_dir / "README.md")
    return report


def _float16_converter():
    """onnxruntime's fp32 -> fp16 graph converter (the tool made for it; it ships with onnxruntime)."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as error:
        raise ValueError(f"an fp16 export converts the graph with onnxruntime's float16 tool: pip install "
                         f"onnxruntime ({error})") from error
    return convert_float_to_float16


def _save_as_float16(path: Path, convert_to_float16, external_data: bool) -> None:
    """Replace the fp32 graph at ``path`` (and its external weights, if any) by its fp16 version: fp16 weights and
    arithmetic, fp32 inputs and outputs (Cast nodes at both ends), so callers are unchanged. Ops without fp16
    kernels stay fp32 (the converter's block list)."""
    import onnx

    graph = onnx.load(str(path))  # reads model.onnx.data beside it, if the fp32 weights needed it
    graph = convert_to_float16(graph, keep_io_types=True)
    (path.parent / f"{path.name}.data").unlink(missing_ok=True)
    onnx.save(graph, str(path), save_as_external_data=external_data, location=f"{path.name}.data")


def _source_license(model: nn.Module) -> str | None:
    """The license on the source model's card (MIT for BiRefNet, Apache-2.0 for the others)."""
    try:
        return model.model_card().data.license
    except (AttributeError, NotImplementedError):  # not one of this package's models
        return None


def onnx_model_card(folder: str | Path, repo_id: str | None = None):
    """The model card (``huggingface_hub.ModelCard``) of an exported folder, from its ``onnx_export.json`` and
    ``config.json``: what was exported from where, the graph's inputs, the onnxruntime check, how to run it
    (``repo_id`` in the snippets). ``dsunet-hf push`` renders it again with the repo id it pushes to."""
    from huggingface_hub import ModelCardData

    from .hub import PLACEHOLDER_REPO_ID, looks_like_hub_id, render_model_card

    folder = Path(folder)
    report = read_export_report(folder)
    if report is None:
        raise ValueError(f"{folder} has no onnx_export.json: not a folder written by dsunet-hf export onnx")
    config = json.loads((folder / "config.json").read_text())
    source = report.source
    source_is_hub_id = (report.source_is_hub_id if report.source_is_hub_id is not None else
                        bool(source) and looks_like_hub_id(source))
    labels = list((config.get("id2label") or {}).values())
    class_maps = report.class_maps if report.class_maps is not None else len(labels) > 2
    data = ModelCardData(
        license=report.license, library_name="onnx", pipeline_tag="image-segmentation",
        tags=["onnx", "dsunet-hf", config.get("model_type", "segmentation")],
        base_model=source if source_is_hub_id else None,
    )
    title = source.rstrip("/").split("/")[-1] if source else config.get("model_type", "segmentation")
    # Which version of the repo: the commit (a link to its files), else the revision as given.
    source_version = (f" at commit [`{report.commit[:10]}`](https://huggingface.co/{source}/tree/{report.commit})"
                      if source_is_hub_id and report.commit else
                      f" at revision `{report.revision}`" if source_is_hub_id and report.revision else "")
    versions = ", ".join(f"{name} {version}" for name, version in report.versions.items())
    return render_model_card(
        "onnx.md", data, title=title, source=source, source_is_hub_id=source_is_hub_id, source_version=source_version,
        model_type=config.get("model_type"), report=report, dynamic_size=report.traced_size is not None,
        size_multiple=DYNAMIC_SIZE_MULTIPLE.get(config.get("model_type"), 32),
        labels=labels if class_maps else [], repo_id=repo_id or PLACEHOLDER_REPO_ID,
        versions=versions or "dsunet-hf",
    )


def _dynamic_size_multiple(model: nn.Module, check: bool) -> int:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in DYNAMIC_SIZE_MULTIPLE:
        raise ValueError(f"a dynamic height and width is for {', '.join(DYNAMIC_SIZE_MULTIPLE)} models, not "
                         f"{model_type} (export at the size you run with --size instead)")
    if not check:
        raise ValueError("a dynamic-size export must be checked at other sizes: leave out --no-check")
    return DYNAMIC_SIZE_MULTIPLE[model_type]


def _graph_input_shapes(graph) -> dict[str, list]:
    """Each graph input's shape: ints for fixed axes, the axis name (e.g. "batch") for dynamic ones."""
    return {node.name: [dim if isinstance(dim, int) else dim.value for dim in node.shape] for node in graph.graph.inputs}


def _checked_shapes(traced_size: tuple[int, int] | None, multiple: int) -> list[tuple[int, tuple[int, int] | None]]:
    """(batch, size) pairs to compare at: batch 1 and 3 at the model's size (neither is the traced batch 2, so a
    batch baked into the graph fails); for a dynamic-size graph also two other sizes, neither the traced one
    nor square (a size baked into the graph fails)."""
    shapes = [(1, None), (3, None)]
    if traced_size is not None:
        rows, columns = traced_size[0] // multiple, traced_size[1] // multiple
        shapes += [(1, ((rows - 1) * multiple, (columns + 2) * multiple)),
                   (2, (max(1, rows // 2) * multiple, rows * multiple))]
    return shapes


def compare_with_onnxruntime(model, processor, path: str | Path, atol: float = 1e-4,
                             traced_size: tuple[int, int] | None = None,
                             compare: str = "logits") -> tuple[str, dict] | None:
    """Run ``path`` with onnxruntime at batch 1 and 3 (and, for a graph traced at ``traced_size`` with a dynamic
    height and width, at two other sizes) and compare its logits with ``model``'s, or with ``compare=
    "probabilities"`` their sigmoid (one channel) or softmax over classes (fp16 graphs).

    Returns ``("onnxruntime <version>", {"<batch>" or "<batch>@<H>x<W>": max |difference|})``, or None when
    onnxruntime is not installed; raises RuntimeError when a value differs by more than ``atol`` (or is not
    finite) or a shape differs.
    """
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), _quiet_session_options(onnxruntime),
                                           providers=["CPUExecutionProvider"])
    input_names = onnx_input_names(processor)
    differences = {}
    multiple = DYNAMIC_SIZE_MULTIPLE.get(getattr(model.config, "model_type", None), 32)
    for batch_size, size in _checked_shapes(traced_size, multiple):
        where = f"batch {batch_size}" + (f", {size[0]}x{size[1]}" if size else "")
        inputs = _example_inputs(processor, input_names, batch_size, size)
        with torch.no_grad(), _pure_pytorch_deform_conv():
            expected = model_output(model, **inputs).logits
        try:
            (logits,) = session.run(["logits"], {name: tensor.numpy() for name, tensor in inputs.items()})
        except Exception as error:  # onnxruntime's own exception types: a shape fixed in the graph, typically
            raise RuntimeError(f"onnxruntime cannot run the graph at {where}: {str(error).splitlines()[0]}") from error
        if logits.shape != tuple(expected.shape):
            raise RuntimeError(f"onnxruntime gave logits of shape {logits.shape} at {where}, "
                               f"PyTorch {tuple(expected.shape)}")
        logits = torch.from_numpy(logits).float()
        if compare == "probabilities":
            logits, expected = _probabilities(logits), _probabilities(expected)
        difference = float((logits - expected).abs().max())
        differences[str(batch_size) + (f"@{size[0]}x{size[1]}" if size else "")] = difference
        if not difference <= atol:  # NaN (an fp16 overflow) fails too
            raise RuntimeError(f"onnxruntime's {compare} differ from PyTorch's by {difference:.3g} at {where} "
                               f"(tolerance {atol:g})")
    return f"onnxruntime {onnxruntime.__version__}", differences


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    return logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(dim=1)


def _quiet_session_options(onnxruntime):
    """Session options logging errors only: onnxruntime warns at load about every fp16 constant it cannot fold
    on the CPU (harmless: those nodes run at inference instead)."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return options


def read_export_report(name_or_path: str | Path, revision: str | None = None, *,
                       hub: bool = False) -> OnnxExportReport | None:
    """The :class:`OnnxExportReport` of an exported folder or of a Hub repo holding one (only its
    ``onnx_export.json`` is fetched); None for anything else, or a Hub repo that cannot be reached (the caller then
    treats it as a PyTorch model, whose loading path says why). ``hub=True``: ``name_or_path`` is a Hub repo id
    even where a local folder has its name (``dsunet-hf space``: the Space loads the Hub's)."""
    from .hub import looks_like_hub_id

    path = Path(name_or_path) / "onnx_export.json"
    if hub or not path.is_file():
        if not hub and not looks_like_hub_id(str(name_or_path)):
            return None
        path = _hub_export_report_file(str(name_or_path), revision)
        if path is None:
            return None
    try:
        saved = json.loads(path.read_text())
        known = {f.name for f in fields(OnnxExportReport)}
        return OnnxExportReport(**{key: value for key, value in saved.items() if key in known})
    except (json.JSONDecodeError, AttributeError, TypeError) as error:  # not JSON, not an object, fields missing
        raise ValueError(f"{path}: not a readable dsunet-hf export report ({type(error).__name__}: {error})") from error


def _hub_export_report_file(repo_id: str, revision: str | None) -> Path | None:
    """``onnx_export.json`` of a Hub repo (at ``revision``), or None where it has none or cannot be reached and none
    is cached. One request, bounded by ``HF_HUB_ETAG_TIMEOUT``, asks whether it is there: ``hf_hub_download`` alone
    retries a Hub that does not answer for minutes (60 s timeouts) for a file it has not cached, which a PyTorch
    model's repo never has, so ``app`` / a Space / ``predict`` of a cached model waited that long."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    online = not constants.HF_HUB_OFFLINE
    if online:
        try:
            get_hf_file_metadata(hf_hub_url(repo_id, "onnx_export.json", revision=revision),
                                 timeout=constants.HF_HUB_ETAG_TIMEOUT)
        except HfHubHTTPError as error:  # the Hub answered: no such file, repo or revision (or no access)
            status = getattr(error.response, "status_code", None)
            if status is not None and status < 500 and status != 429:
                return None
            online = False  # a server error or too many requests: as unreachable
        except Exception:  # timeouts, connection errors (the Hub client's, not OSErrors): the cache decides
            online = False
    try:
        return Path(hf_hub_download(repo_id, "onnx_export.json", revision=revision, local_files_only=not online))
    except Exception:  # not cached, the Hub gone since, a bad id (errors with no common base): not an export
        return None


def onnx_export_from_hub(repo_id: str, revision: str | None = None) -> Path | None:
    """The local snapshot of a Hub repo holding an export (``dsunet-hf push`` of an exported folder), downloaded
    (or taken from the cache offline); None when ``repo_id`` is not such a repo or cannot be reached (the caller
    then loads it as a PyTorch model and reports that path's error)."""
    from huggingface_hub import snapshot_download

    if Path(repo_id).exists() or read_export_report(repo_id, revision) is None:  # local paths: is_onnx_export
        return None
    return Path(snapshot_download(repo_id, revision=revision))


def is_onnx_export(name_or_path) -> bool:
    """A ``.onnx`` file, or a folder with ``model.onnx`` and no PyTorch weights (what ``export_onnx`` writes)."""
    path = Path(name_or_path)
    if path.is_file():
        return path.suffix == ".onnx"
    return (path / "model.onnx").is_file() and not saved_weight_files(path)


class OnnxSegmentationModel(nn.Module):
    """An exported folder run by onnxruntime, called like our models: ``model(pixel_values=...).logits``.

    For ``dsunet-hf predict --model OUT/`` (batching, resuming, overlays and cut-outs as for PyTorch models). The
    graph has the export's fixed height and width and takes fp32 CPU tensors; onnxruntime runs it on its
    available providers (CUDA first with onnxruntime-gpu). Multi-class graphs take the semantic path through
    :meth:`segment`: a multi-class SAM2-UNet's one pass at its size, a DINOv2 head's schedules with every window
    of the graph's size (the crop size: the sliding window, as the PyTorch head runs by default). A graph exported
    with ``dynamic_size`` (``dynamic_size`` True, ``input_size`` None) takes any multiple of 32, so ``predict
    --resolution native`` runs each image at its own size (a DINOv2 head's: any size, so windows smaller than the
    crop and the ``single`` schedule's whole images too).
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None):
        super().__init__()
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError(f"{path}: ONNX exports run on onnxruntime, not installed: "
                              f"pip install \"dsunet-hf[onnx]\"") from error
        from transformers import AutoConfig

        path = Path(path)
        graph = path / "model.onnx" if path.is_dir() else path
        self.folder = graph.parent
        if not (self.folder / "config.json").is_file():
            raise ValueError(f"{self.folder} has no config.json beside {graph.name} (export with dsunet-hf export onnx)")
        try:
            self.session = onnxruntime.InferenceSession(
                str(graph), _quiet_session_options(onnxruntime),
                providers=providers or onnxruntime.get_available_providers())
        except Exception as error:  # onnxruntime's own exception types (InvalidProtobuf, NoSuchFile, ...)
            raise ValueError(f"{graph} cannot be loaded by onnxruntime: {error}") from error
        self.input_names = [node.name for node in self.session.get_inputs()]
        height, width = self.session.get_inputs()[0].shape[2:]
        self.dynamic_size = not (isinstance(height, int) and isinstance(width, int))  # named axes: any size
        self.input_size = None if self.dynamic_size else (height, width)  # the export's fixed (height, width)
        self.predicts_class_maps = self.session.get_outputs()[0].shape[1] != 1
        self.config = AutoConfig.from_pretrained(self.folder)
        self._processor = None
        self.sliding_window = self.config.model_type == "dinov2_seg"  # crops of the graph's size, as exported
        self.default_schedule = "slide" if self.sliding_window else "single"

    def default_image_processor(self):
        """The processor saved with the export (read once)."""
        if self._processor is None:
            from transformers import AutoImageProcessor

            self._processor = AutoImageProcessor.from_pretrained(self.folder)
        return self._processor

    def segment(self, pixel_values, schedule: str | None = None, output_size: tuple[int, int] | None = None
                ) -> torch.Tensor:
        """Class probabilities (B, K, H, W) at ``output_size`` (default: the input size; multi-class graphs). A
        DINOv2 head's graph runs its schedules (``slide`` by default) on windows of the graph's size, logits resized
        before the softmax as the PyTorch head (``multiscale`` also takes its per-scale views as a list); other graphs
        one pass with the input resized to the graph's size, softmax, resized back (``single``)."""
        from .modeling_utils import probabilities_from_one_pass

        if not self.predicts_class_maps:
            raise ValueError(f"{self.folder}: a single-channel graph; segment() is for multi-class graphs")
        schedule = schedule or self.default_schedule
        if self.sliding_window:
            from .models.dinov2_seg.modeling_dinov2_seg import segment_with_schedule

            return segment_with_schedule(self._window_logits, pixel_values, schedule, self.config, output_size)
        if schedule != "single":
            raise ValueError(f"{self.folder}: this graph runs the 'single' schedule (one pass at the model's size); "
                             f"got {schedule!r}")
        processor_size = self.default_image_processor().size
        size = self.input_size or (processor_size["height"], processor_size["width"])
        return probabilities_from_one_pass(self._one_pass_logits, pixel_values.float(), size, output_size)

    def _one_pass_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        inputs = {"pixel_values": pixels}
        if "dino_pixel_values" in self.input_names:  # DSU-Net: its DINOv2 view of the same tensor, as in PyTorch
            side = self.config.dino_image_size
            inputs["dino_pixel_values"] = torch.nn.functional.interpolate(pixels, size=(side, side), mode="bilinear",
                                                                          align_corners=False)
        return self(**inputs).logits

    def _window_logits(self, window: torch.Tensor) -> torch.Tensor:
        if not self.dynamic_size and tuple(window.shape[-2:]) != self.input_size:
            raise ValueError(f"{self.folder}: a {tuple(window.shape[-2:])} window, but the graph takes "
                             f"{self.input_size} (the export's size) only: give images whose short side is at least "
                             f"the crop size to the 'slide' schedule, or run the PyTorch model")
        return self(pixel_values=window).logits

    def forward(self, **inputs: torch.Tensor):
        from transformers.modeling_outputs import SemanticSegmenterOutput

        missing = [name for name in self.input_names if name not in inputs]
        if missing:
            raise ValueError(f"{self.folder}: the graph needs inputs {missing}")
        feeds = {name: inputs[name].detach().to("cpu", torch.float32).numpy() for name in self.input_names}
        (logits,) = self.session.run(["logits"], feeds)
        return SemanticSegmenterOutput(logits=torch.from_numpy(logits))
