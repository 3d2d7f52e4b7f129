"""Fine-tuning loop on accelerate: ``accelerate launch examples/train.py`` and ``dsunet-hf train``.

Model-agnostic: a model is picked by name from the registry (``--model sam2-unet``). Defaults follow the
upstream recipe (AdamW lr 1e-3, weight decay 5e-4, cosine to 1e-7 stepped per epoch, batch 12, horizontal
and vertical flips). Checkpoints hold only the trainable tensors (plus optimizer, scheduler and RNG
states), are written atomically, and ``--resume-from-checkpoint latest`` continues exactly where a run
stopped, skipping the batches it had consumed.
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from .distributed import use_cpu
from .files import give_new_file_modes, write_json_atomic, write_text_atomic
from .hub import add_validation_results_to_card
from .predict import pixel_inputs

logger = logging.getLogger(__name__)

TRAINABLE_WEIGHTS = "trainable_weights.safetensors"
TRAINER_STATE = "trainer_state.json"
# The frozen backbones a checkpoint's trainable tensors were trained on (fingerprint and source of each).
BACKBONE_RECORD = "backbone_fingerprint.json"
# Inside best/: the step (and metric value) it was saved at, written with it, so that a resume tells whether it is the
# best its checkpoint records (not copied into model/).
BEST_RECORD = "best_record.json"


@dataclass
class TrainingArguments:
    """Every option of ``dsunet-hf train`` / ``examples/train.py`` (one flag per field)."""

    train_data: str = field(metadata={"help": "folder of image/mask pairs, imagefolder with metadata.jsonl, or Hub dataset id"})
    model: str = field(default="sam2-unet", metadata={"help": "sam2-unet | dsunet | birefnet | dinov2-seg | visual-prompt"})
    val_data: str | None = field(default=None, metadata={"help": "validation data; default: split off --validation-ratio"})
    validation_ratio: float = field(default=0.1, metadata={"help": "validation share when --val-data is not given"})
    image_column: str | None = field(default=None, metadata={"help": "image column of a Hub/imagefolder dataset"})
    mask_column: str | None = field(default=None, metadata={"help": "mask column of a Hub/imagefolder dataset"})
    output_dir: str = field(default="outputs/train", metadata={"help": "checkpoints, logs and the final model"})
    backbone: str | None = field(
        default=None,
        metadata={"help": "frozen backbone weights: Hub id, local folder or checkpoint file; 'random' = random "
                          "init without download (smoke tests); default: the preset's official repo"},
    )
    backbone_preset: str | None = field(default=None, metadata={"help": "backbone size preset (e.g. tiny, large)"})
    config_overrides: str | None = field(default=None, metadata={"help": "JSON of extra model-config fields"})
    finetune_strategy: str | None = field(
        default=None, metadata={"help": "adapter | lora | full | frozen (default: the model's, adapter or frozen)"}
    )
    image_size: int | None = field(default=None, metadata={"help": "input size (default: the model's; dinov2-seg: "
                                                                    "set crop_size/stride in --config-overrides)"})
    reduce_zero_label: bool = field(
        default=False, metadata={"help": "label maps: 0 is 'other' (ignored), classes start at 1 (ADE20K)"}
    )
    learning_rate: float | None = field(
        default=None, metadata={"help": "AdamW learning rate (default: the model's recipe, 1e-3; birefnet: "
                                        "1e-5·sqrt(batch/4), 1e-4·sqrt(batch/4) for its DIS5K task)"}
    )
    weight_decay: float | None = field(default=None, metadata={"help": "AdamW weight decay (default: the model's "
                                                                        "recipe, 5e-4; 1e-4 for dinov2-seg)"})
    min_learning_rate: float = field(default=1e-7, metadata={"help": "cosine schedule floor"})
    lr_schedule: str | None = field(
        default=None,
        metadata={"help": "cosine-epoch (upstream: constant within an epoch) | cosine (per step) | poly (DINOv2 "
                          "heads, as mmcv: (1 - step/total)^1, times a linear warm-up from 1e-6) | constant; "
                          "default: the model's"},
    )
    warmup_steps: int | None = field(default=None, metadata={"help": "linear warm-up steps (default: the "
                                                                      "model's, 0; 1500 for dinov2-seg)"})
    num_epochs: int | None = field(default=None, metadata={"help": "epochs (default: the model's recipe, 20 for "
                                                                     "sam2-unet, 50 for dsunet, per task for birefnet "
                                                                     "(General 200, DIS5K 500, ...); ignored with "
                                                                     "--max-steps)"})
    max_steps: int | None = field(default=None, metadata={"help": "total optimizer steps (default: the recipe's "
                                                                    "epochs; 40000 for dinov2-seg)"})
    batch_size: int | None = field(default=None, metadata={"help": "per-device batch size (default: the model's "
                                                                      "recipe, 12 for sam2-unet, 4 for dsunet)"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_grad_norm: float | None = field(default=None, metadata={"help": "gradient clipping (upstream: none)"})
    mixed_precision: str | None = field(
        default=None, metadata={"help": "no | fp16 | bf16 (default: accelerate's, from `accelerate launch "
                                        "--mixed_precision` or `accelerate config`; else no)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute backbone activations"})
    torch_compile: bool = field(
        default=False, metadata={"help": "torch.compile the training forward (inductor): faster steps "
                                         "after a slow first one, on GPUs; validation runs eagerly"}
    )
    torch_compile_backend: str = field(default="inductor", metadata={"help": "torch.compile backend for --torch-compile"})
    seed: int = field(default=0, metadata={"help": "seed of init, data order and augmentation"})
    eval_steps: int | None = field(default=None, metadata={"help": "validate every N steps (default: each epoch)"})
    metric_for_best_model: str | None = field(
        default=None, metadata={"help": "metric that selects the best model (default: S-measure; mIoU for dinov2-seg and multi-class models; "
                                        "loss: the lowest validation loss; HCE, mBA, 'BIoU (max)', 'BIoU (mean)', MSE: validation adds "
                                        "BiRefNet's DIS metrics)"}
    )
    max_val_samples: int | None = field(default=None, metadata={"help": "cap on validation images"})
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "stop when --metric-for-best-model has not improved for N validations in a row "
                                        "(the best model is kept; default: train to the end)"}
    )
    save_steps: int | None = field(default=None, metadata={"help": "checkpoint every N steps (default: each epoch)"})
    save_total_limit: int | None = field(default=2, metadata={"help": "checkpoints kept (oldest removed; 0 keeps all)"})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder"})
    verify_backbone_weights: bool = field(
        default=True, metadata={"help": "a resumed run refuses frozen backbone weights other than those its checkpoint "
                                        "was trained on (a moved revision, another folder); "
                                        "--no-verify-backbone-weights resumes on them anyway"}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "start afresh in an --output-dir that holds an earlier run: its checkpoints, "
                                         "best model, final model, logs, metrics.jsonl, train_summary.json and "
                                         "abandoned-checkpoints/ are deleted first"}
    )
    stop_after_steps: int | None = field(
        default=None, metadata={"help": "checkpoint and stop at this step (split a run across job slots)"}
    )
    logging_steps: int = field(default=10, metadata={"help": "log loss and lr every N steps"})
    report_to: str = field(default="tensorboard", metadata={"help": "accelerate tracker (tensorboard | none | ...)"})
    num_workers: int = field(default=0, metadata={"help": "data-loading worker processes"})
    verify_data: str = field(
        default="header", metadata={"help": "check local image/mask folders before training: header (sizes; fast), "
                                            "full (decode every file: also leaves out truncated ones) or none"})
    push_to_hub: bool = field(default=False, metadata={"help": "upload the final model"})
    hub_model_id: str | None = field(default=None, metadata={"help": "repo id for --push-to-hub"})
    hub_private: bool = field(default=False, metadata={"help": "make the Hub repo private (default: a new repo gets "
                                                                 "the account's default visibility)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})


@dataclass
class TrainerState:
    """What a checkpoint needs beyond weights/optimizer/RNG to continue exactly."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    best_metric: float | None = None
    best_step: int | None = None
    best_metrics: dict = field(default_factory=dict)
    validations_without_improvement: int = 0
    stopped_early: bool = False  # a resumed run that had stopped early finishes at once
    # The train/loss logging window so far (sum, micro-batches): a resumed run logs what an uninterrupted one would.
    running_loss: float = 0.0
    running_count: int = 0
    # What the step counter and the data position count in (see data_layout); None in older checkpoints.
    data_layout: dict | None = None
    # The --metric-for-best-model that best_metric is a value of; None in older checkpoints.
    metric_for_best_model: str | None = None


CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def read_training_config(path: str | Path) -> dict:
    """Training options from a JSON or YAML file (a mapping of field names, as in ``training_args.json``;
    ``config_overrides`` may be a mapping). Unknown names, and values not of their option's type, are an error
    naming them."""
    import argparse
    import typing

    import yaml
    from transformers.hf_argparser import string_to_bool

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such training config file")
    try:
        values = json.loads(path.read_text()) if path.suffix.lower() == ".json" else yaml.safe_load(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    except yaml.YAMLError as error:  # PyYAML's own text runs over several lines and names "<unicode string>"
        mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark and problem else \
            str(error).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML ({where})") from error
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a training config is a mapping of options (train_data: ..., model: ...)")
    values = {key.replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(values) - {f.name for f in fields(TrainingArguments)})
    if unknown:
        raise ValueError(f"{path}: unknown training options {unknown} (see examples/train.py --help)")
    # argparse converts a file's text values as if they were flags, and its error names the flag, not the file;
    # numbers and lists it takes unchecked (batch_size: 2.5 reached the DataLoader). So each number and switch is
    # checked here against its field's type; the values themselves are passed on unchanged.
    kinds = typing.get_type_hints(TrainingArguments)
    expected = {int: "an integer", float: "a number", bool: "true or false"}
    problems = []
    for name, value in values.items():
        kind = next(k for k in typing.get_args(kinds[name]) or (kinds[name],) if k is not type(None))
        if value is None or kind not in expected:
            continue
        if isinstance(value, str):
            try:
                (string_to_bool if kind is bool else kind)(value)
                continue
            except (ValueError, argparse.ArgumentTypeError):
                pass
        elif kind is bool and value in (True, False, 0, 1) and not isinstance(value, float):
            continue
        elif kind is not bool and not isinstance(value, bool) and isinstance(value, int if kind is int else (int, float)):
            continue
        problems.append(f"{name} must be {expected[kind]}, got {value!r}")
    if problems:
        raise ValueError(f"{path}: {'; '.join(problems)}")
    if isinstance(values.get("config_overrides"), dict):
        values["config_overrides"] = json.dumps(values["config_overrides"])
    if values.pop("overwrite_output_dir", False):  # a run's own training_args.json, repeated, would delete that run
        logger.warning("%s: overwrite_output_dir is taken from the command line only (--overwrite-output-dir), not "
                       "from a file", path)
    return values


def parse_args(argv: list[str] | None = None, prog: str = "train.py") -> TrainingArguments:
    """Command-line flags, optionally after a JSON/YAML config file whose values they override:
    ``examples/train.py recipe.yaml --max-steps 100`` (a run's own ``training_args.json`` reproduces it)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(
        TrainingArguments, prog=prog, usage=f"{prog} [RECIPE.yaml|RECIPE.json] [--option value ...]",
        description="Options come from the flags, or from a JSON/YAML recipe file given first (flags after it win).")
    if argv and argv[0].lower().endswith(CONFIG_SUFFIXES) and not argv[0].startswith("-"):
        values = read_training_config(argv.pop(0))
        parser.set_defaults(**values)
        for action in parser._actions:  # what the file sets is no longer required on the command line
            if action.dest in values:
                action.required = False
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return args


# --- model, data, schedule ------------------------------------------------------------------------

def build_config(args: TrainingArguments):
    """(model spec, model config) from the training options: --config-overrides, preset, size, strategy,
    backbone repo and the data's id2label.json."""
    from .data import find_labels_file, read_labels_file
    from .models import get_model_spec

    spec = get_model_spec(args.model)
    try:
        config_kwargs = json.loads(args.config_overrides) if args.config_overrides else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"--config-overrides is not valid JSON ({error}): {args.config_overrides!r}") from error
    if not isinstance(config_kwargs, dict):
        raise ValueError(f"--config-overrides must be a JSON object of config fields, got {args.config_overrides!r}")
    if config_kwargs.get("lora_target_modules") == []:  # said naming the option (the configs refuse it too)
        raise ValueError("--config-overrides: lora_target_modules must name at least one module (leave it out for the "
                         "model's defaults), got []")
    known = config_fields(spec.config_class)
    unknown = [key for key in config_kwargs if key not in known]
    if unknown:  # a misspelled field would otherwise be stored on the config and ignored
        hints = "; ".join(f"{key!r}" + "".join(f" (did you mean {close!r}?)"
                                               for close in difflib.get_close_matches(key, known, n=1))
                          for key in unknown)
        raise ValueError(f"--config-overrides: {spec.config_class.__name__} has no field {hints}")
    if args.finetune_strategy:
        config_kwargs["finetune_strategy"] = args.finetune_strategy
    # --backbone / --backbone-preset name the SAM 2 trunk (both models); DSU-Net's DINOv2 is set through
    # --config-overrides '{"dino_preset": ..., "dino_backbone_repo_id": ...}'.
    # BiRefNet: --backbone-preset picks swin_v1_t..pvt_v2_b5, --backbone the official weights it starts from.
    preset_field, repo_field = {"dsunet": ("sam_preset", "sam_backbone_repo_id"),
                                "birefnet": ("backbone", "base_repo_id"),
                                "visual-prompt": ("dino_preset", "dino_backbone_repo_id")}.get(
        args.model, ("backbone_preset", "backbone_repo_id"))
    if args.backbone_preset:
        config_kwargs[preset_field] = args.backbone_preset
    if args.image_size:
        if "image_size" not in known:
            raise ValueError(
                f"--image-size does not apply to {args.model}: it trains on crops of config.crop_size (and slides a "
                f"window of that size with config.stride); set them with --config-overrides "
                f"'{{\"crop_size\": {args.image_size}, \"stride\": {args.image_size * 2 // 3}}}'")
        config_kwargs["image_size"] = args.image_size
    if args.backbone and args.backbone != "random":
        config_kwargs[repo_field] = args.backbone
    labels_file = find_labels_file(args.train_data, "train")  # the split training loads (organs/train/...)
    takes_labels = spec.task in ("semantic", "visual-prompt") or spec.multiclass
    from_file = takes_labels and not {"id2label", "num_labels"} & set(config_kwargs) and labels_file
    if from_file:
        # The class names travel from the dataset to the config, the card and the evaluation report.
        config_kwargs["id2label"] = read_labels_file(labels_file)
    try:
        return spec, spec.config_class(**config_kwargs)
    except ValueError as error:
        if from_file and "id2label" in str(error):  # the file's classes (e.g. ids with a gap): name it
            raise ValueError(f"{labels_file}: {error}") from None
        raise


def config_fields(config_class) -> list[str]:
    """Names a config class takes: its own arguments and the fields a default instance holds (num_labels is
    an argument of every config, stored as id2label)."""
    own = [name for name, parameter in inspect.signature(config_class.__init__).parameters.items()
           if name != "self" and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL)]
    return sorted({*own, *config_class().to_dict(), "num_labels"})


def build_model(args: TrainingArguments):
    from .modeling_utils import enable_activation_checkpointing

    spec, config = build_config(args)
    if args.backbone == "random":
        logger.warning("--backbone random: the frozen backbones keep their RANDOM initialisation (no download)")
        for field_name in ("backbone_repo_id", "sam_backbone_repo_id", "dino_backbone_repo_id", "base_repo_id"):
            if hasattr(config, field_name):
                setattr(config, field_name, "random-init")
        model = spec.model_class(config)
    else:
        model = spec.model_class.from_pretrained_backbones(config)
    if args.gradient_checkpointing:
        enable_activation_checkpointing(model)
    return spec, model


def build_datasets(args: TrainingArguments):
    """(train, validation) datasets; their Image columns are decoded by the transforms, which name a bad cell's
    sample, column and file (see :func:`~dsunet_hf.data.undecoded_images`)."""
    from .data import load_segmentation_dataset, train_validation_split, undecoded_images

    verify = {"header": True, "full": "full", "none": False}.get(args.verify_data)
    if verify is None:
        raise ValueError(f"--verify-data must be header, full or none, got {args.verify_data!r}")
    columns = {"image_column": args.image_column, "mask_column": args.mask_column, "verify": verify}
    if args.val_data:
        train = load_segmentation_dataset(args.train_data, split="train", **columns)
        validation = load_segmentation_dataset(args.val_data, split="validation", **columns)
    else:
        train, validation = train_validation_split(
            load_segmentation_dataset(args.train_data, split="train", **columns), args.validation_ratio, args.seed
        )
    return undecoded_images(train), undecoded_images(validation)


def warn_if_class_index_masks(dataset, source: str, model_name: str, samples: int = 8) -> int | None:
    """Warn when the first masks of a binary model's data are class-index label maps (0..k, k >= 2, or palette
    PNGs): the model would read class k as a faint foreground of k/255 and learn next to nothing. Returns k; else,
    when one of them is colour-coded (a palette or RGB mask of several colours, read by its luminance), warns
    about that and returns the number of colours; None when there is nothing to warn about."""
    from .data import binary_mask_problem

    problem = binary_mask_problem(dataset, samples)
    if problem is None:
        return None
    kind, count = problem
    if kind == "colours":
        logger.warning(
            "%s: colour-coded masks (%d colours in a palette or RGB mask), but %s is a binary model that reads "
            "such a mask by its luminance: objects become faint foreground (a red one 0.3). Save binary masks as "
            "0/255 or 0/1 gray PNGs (a palette PNG of the indices 0 and k, or one colour on black, is read as "
            "binary too); for several classes, class-index label maps with an id2label.json beside the data.",
            source, count, model_name,
        )
        return count
    logger.warning(
        "%s: the masks hold class indices (0..%d), but %s is a binary model that reads a mask as foreground "
        "intensity (class %d = %.3f). For several classes, SAM2-UNet and DSU-Net take them from an id2label.json beside the data "
        "or --config-overrides '{\"num_labels\": %d}'; for foreground / background, save masks as 0/255 or 0/1.",
        source, count, model_name, count, count / 255, count + 1,
    )
    return count


MMCV_WARMUP_RATIO = 1e-6  # the DINOv2 heads' configs: warmup='linear', warmup_ratio=1e-6


def lr_lambda_factory(args: TrainingArguments, total_steps: int, steps_per_epoch: int, num_processes: int = 1):
    """Multiplier of the base lr per optimizer step. Written here (not transformers' schedules) because the
    upstream recipe steps a cosine per *epoch* (CosineAnnealingLR, T_max=epochs, eta_min=1e-7).

    ``total_steps``, ``steps_per_epoch`` and ``--warmup-steps`` count optimizer steps; accelerate steps a prepared
    scheduler ``num_processes`` times per optimizer step, so the scheduler's count is divided back."""
    floor = args.min_learning_rate / args.learning_rate
    total_epochs = max(1, math.ceil(total_steps / steps_per_epoch))

    def multiplier(scheduler_step: int) -> float:
        step = scheduler_step // num_processes
        if args.lr_schedule == "poly":
            # mmcv's PolyLrUpdaterHook (the DINOv2 heads' recipe): (1 - step/total)^1 from step 0, and during the
            # warm-up that value times mmcv's linear warm-up factor, from warmup_ratio 1e-6 up to 1.
            poly = max(0.0, 1 - step / max(1, total_steps))  # min_lr 0 (--min-learning-rate is the cosine floor)
            if step < args.warmup_steps:
                return poly * (1 - (1 - step / args.warmup_steps) * (1 - MMCV_WARMUP_RATIO))
            return poly
        if step < args.warmup_steps:
            return (step + 1) / args.warmup_steps
        if args.lr_schedule == "constant":
            return 1.0
        if args.lr_schedule == "cosine-epoch":
            progress = (step // steps_per_epoch) / total_epochs
        elif args.lr_schedule == "cosine":
            progress = (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps)
        else:
            raise ValueError(f"unknown lr_schedule {args.lr_schedule!r}")
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return multiplier


def drops_last_batch(num_samples: int, batch_size: int, num_processes: int) -> bool:
    """Whether an epoch's last batch is dropped: only when it would hold a single sample of several batches (one
    process; accelerate fills the last batches of several). BatchNorm cannot train on one sample where a map is
    pooled to 1x1 (BiRefNet's ASPP); other remainders are kept, so step counts stay what they were."""
    return num_processes == 1 and num_samples > batch_size and num_samples % batch_size == 1


def validation_metrics(task: str) -> tuple[str, ...]:
    """What the validation of a task computes: the names --metric-for-best-model takes."""
    from .metrics import DIS_METRIC_NAMES, METRIC_NAMES, SEMANTIC_METRIC_NAMES

    if task == "semantic":
        return SEMANTIC_METRIC_NAMES
    if task == "visual-prompt":
        return ("mIoU", "absent_area")
    return (*METRIC_NAMES, "loss", *DIS_METRIC_NAMES)  # DIS metrics: computed only when one is chosen


# --- checkpoints ----------------------------------------------------------------------------------

def dynamic_resize(inputs: dict, labels: torch.Tensor, config, seed: int, step: int):
    """BiRefNet_dynamic-style training: when the config has ``dynamic_size`` [[min_h, max_h], [min_w, max_w]],
    each batch is resized (bilinear) to a size drawn per step (multiples of 32, reproducible from seed and
    step, so a resumed run draws the same sizes). Upstream resizes the decoded images instead; resizing the
    processed batch is the same up to interpolation of an already-resized image."""
    limits = getattr(config, "dynamic_size", None)
    if not limits:
        return inputs, labels
    rng = random.Random(seed * 1_000_003 + step)
    size = tuple(max(32, rng.randint(low, high) // 32 * 32) for low, high in limits)

    def resize(x):
        return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)

    inputs = {name: resize(value) for name, value in inputs.items()}
    labels = resize(labels.unsqueeze(1) if labels.ndim == 3 else labels)
    return inputs, labels


def checkpoint_dirs(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (``checkpoint-<step>``; half-written ``.tmp`` ones are ignored)."""
    folder = output_dir / "checkpoints"
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


# Where a resume from an older checkpoint moves the later ones it abandons (see set_aside_abandoned_checkpoints).
ABANDONED = "abandoned-checkpoints"
RUN_OUTPUTS = ("checkpoints", "best", "model", "logs", "metrics.jsonl", "train_summary.json", ABANDONED)


def check_output_dir(args: TrainingArguments) -> bool:
    """Refuse a fresh run where an earlier run left checkpoints: its own would be pruned against them (sorted by
    step) and ``--resume-from-checkpoint latest`` would resume the earlier run. True when ``--overwrite-output-dir``
    asks for the earlier run to be deleted (by :func:`clear_earlier_run`, once every argument has been checked)."""
    output_dir = Path(args.output_dir)
    found = checkpoint_dirs(output_dir)
    if args.resume_from_checkpoint or not found:
        return False
    if not args.overwrite_output_dir:
        raise ValueError(f"{output_dir / 'checkpoints'} holds checkpoints of an earlier run (up to {found[-1].name}): "
                         "continue it with --resume-from-checkpoint latest, or pick a new --output-dir, or pass "
                         "--overwrite-output-dir to delete that run first")
    return True


def clear_earlier_run(output_dir: Path, accelerator: Accelerator) -> None:
    """Delete an earlier run's outputs (``--overwrite-output-dir``)."""
    if accelerator.is_main_process:
        logger.warning("--overwrite-output-dir: deleting the earlier run's %s in %s (with the .old and .tmp folders a "
                       "killed run leaves beside them)", ", ".join(RUN_OUTPUTS), output_dir)
        # best.old / model.old (_replace_dir) and best.tmp / model.tmp (_temporary) hold the earlier run's models too.
        for name in RUN_OUTPUTS:
            for path in (output_dir / name, output_dir / f"{name}.old", output_dir / f"{name}.tmp"):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
    accelerator.wait_for_everyone()


def resolve_resume_path(args: TrainingArguments) -> Path | None:
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint == "latest":
        found = checkpoint_dirs(Path(args.output_dir))
        if not found:
            logger.warning("--resume-from-checkpoint latest: no checkpoint in %s, starting fresh", args.output_dir)
            return None
        return found[-1]
    path = Path(args.resume_from_checkpoint)
    if not (path / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{path}: not a checkpoint folder (no {TRAINER_STATE})")
    return path


def read_best_record(folder: Path) -> dict | None:
    """What ``folder/best_record.json`` says (step, metric, value); None for a best/ saved before it was written."""
    try:
        record = json.loads((folder / BEST_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None  # a hand-edited file of another shape: as if none


def is_own_checkpoint(output_dir: Path, checkpoint: Path) -> bool:
    """Whether ``checkpoint`` is one of ``output_dir``'s own (``OUTPUT/checkpoints/checkpoint-N``), not another run's
    folder's (or one set aside in ``OUTPUT/abandoned-checkpoints``)."""
    return checkpoint.resolve().parent == (output_dir / "checkpoints").resolve()


def is_set_aside_checkpoint(output_dir: Path, checkpoint: Path) -> bool:
    """Whether ``checkpoint`` is one an earlier resume set aside (``OUTPUT/abandoned-checkpoints/<when>/checkpoint-N``),
    resumed to go back to that course of training."""
    return checkpoint.resolve().parent.parent == (output_dir / ABANDONED).resolve()


def is_best_of(folder: Path, best: tuple[int | None, float | None]) -> bool:
    """Whether ``folder`` (a best/) is the best model ``best`` (step, value) of a checkpoint, by its record."""
    record = read_best_record(folder)
    return best[0] is not None and record is not None and (record.get("step"), record.get("value")) == tuple(best)


def set_aside_abandoned_checkpoints(output_dir: Path, resume_path: Path, step: int,
                                    best: tuple[int | None, float | None] = (None, None), *, own: bool) -> Path | None:
    """Move out of ``OUTPUT/checkpoints`` what a resume from ``resume_path`` (at ``step``) abandons: the checkpoints of
    this folder after that step (a resume from an older checkpoint of its own, ``own``: :func:`is_own_checkpoint`) or
    all of them (a resume from another folder's checkpoint), so that ``--resume-from-checkpoint latest`` and
    ``--save-total-limit`` never take them for this run's (a run killed before it overwrote them resumed the abandoned
    branch; a new checkpoint-150 was pruned against an abandoned checkpoint-300). Moved aside, not deleted: a resume
    from the wrong checkpoint (100 for 1000) must not cost the hours behind the later ones (resuming a checkpoint set
    aside takes its best/ back, see :func:`train`). ``best/`` (and ``best.old``) goes with them when it is not
    the checkpoint's ``best`` (step, value), by its own record, or, saved before that record, when they record a best
    model found after ``step`` (it would become this run's ``model/``). Returns the folder they went to, if any."""
    resume_path = resume_path.resolve()
    later = [p for p in checkpoint_dirs(output_dir)
             if p.resolve() != resume_path and (not own or int(p.name.split("-")[-1]) > step)]
    best_steps = []
    for checkpoint in later:
        try:
            best_steps.append(json.loads((checkpoint / TRAINER_STATE).read_text()).get("best_step"))
        except (OSError, ValueError):
            pass
    bests = {}  # best/ and best.old that are not the checkpoint's best model: {name: the step it was saved at}
    for name in ("best", "best.old"):
        if (output_dir / name).is_dir():
            record = read_best_record(output_dir / name)
            if record is None:  # saved before best/ recorded its step: judged by the later checkpoints' records
                if own and any(later_best is not None and later_best > step for later_best in best_steps):
                    bests[name] = None
            elif not is_best_of(output_dir / name, best):  # e.g. a run killed before it checkpointed
                bests[name] = record.get("step")
    if (output_dir / "best").is_dir() and "best" not in bests:
        # best/ is the checkpoint's: a best.old beside it is the older best a killed swap left (_replace_dir), not a
        # model of the abandoned course (it was moved aside as one, "written after" a resume from the latest).
        bests.pop("best.old", None)
    if not later and not bests:
        return None
    aside = output_dir / ABANDONED / f"{time.strftime('%Y%m%d-%H%M%S')}-resumed-from-{resume_path.name}"
    while aside.exists():  # a second resume within the same second
        aside = aside.with_name(aside.name + "+")
    aside.mkdir(parents=True)
    for checkpoint in later:  # one rename each, in the same file system: a checkpoint is moved whole or not at all
        os.replace(checkpoint, aside / checkpoint.name)
    moved = [checkpoint.name for checkpoint in later]
    for name, saved_at in bests.items():
        os.replace(output_dir / name, aside / name)
        moved.append(f"{name}/" if saved_at is None else f"{name}/ (the best model of step {saved_at})")
    if own:
        whose = "written after it by the course of training it abandons"
    elif is_set_aside_checkpoint(output_dir, resume_path):
        whose = "this folder's, of the course of training it leaves"
    else:
        whose = "this folder's, of another run"
    logger.warning("resuming from %s (step %d): moved %s, %s, to %s (delete it when it is not needed)", resume_path,
                   step, ", ".join(moved), whose, aside)
    return aside


def forget_logs_after(log_file: Path, step: int) -> int:
    """Drop the rows of ``metrics.jsonl`` logged after ``step`` (and a line cut short): a run killed after its
    last checkpoint logged steps that the resumed run logs again, so each step would be there twice. Returns how
    many rows were dropped."""
    if not log_file.is_file():
        return 0
    lines, kept = log_file.read_text().splitlines(), []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step", 0) <= step:
            kept.append(line + "\n")
    if len(kept) < len(lines):
        write_text_atomic(log_file, "".join(kept))
    return len(lines) - len(kept)


def _temporary(folder: Path, clear: bool = True) -> Path:
    """``folder.tmp``, where ``folder`` is written before :func:`_replace_dir`; emptied (``clear``): what a killed
    run left there would otherwise be renamed into ``folder`` with the new files."""
    temporary = folder.with_name(folder.name + ".tmp")
    if clear:
        shutil.rmtree(temporary, ignore_errors=True)
    return temporary


def _replace_dir(temporary: Path, final: Path) -> None:
    """Move ``temporary`` into place as ``final``; the older ``final`` is moved aside first and deleted only after,
    so a run killed in between leaves one of the two whole (``final.old`` where ``final`` is missing)."""
    aside = final.with_name(final.name + ".old")
    shutil.rmtree(aside, ignore_errors=True)
    if final.exists():
        os.replace(final, aside)
    os.replace(temporary, final)
    shutil.rmtree(aside, ignore_errors=True)


def register_trainable_checkpoint_hooks(accelerator: Accelerator) -> None:
    """``save_state`` writes only the trainable tensors of our models (not the frozen backbones)."""

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for model in models:
                save_file(
                    {k: v.detach().contiguous().cpu() for k, v in accelerator.unwrap_model(model, keep_torch_compile=False).trainable_state_dict().items()},
                    os.path.join(output_dir, TRAINABLE_WEIGHTS),
                )
                give_new_file_modes(output_dir)
        weights.clear()  # keep accelerate from also writing the full model

    def load_hook(models, input_dir):
        while models:
            model = accelerator.unwrap_model(models.pop(), keep_torch_compile=False)
            load_trainable_weights(model, Path(input_dir) / TRAINABLE_WEIGHTS)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def load_trainable_weights(model, path: Path) -> None:
    state = load_file(str(path))
    expected = set(model.trainable_state_dict())
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"{path}: does not fit this model; missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.load_state_dict(state, strict=False)


# A checkpoint holds only the trainable tensors: resumed, they go on training on whatever the backbone repos or folders
# hold now (an unpinned "main" that moved, a folder holding another checkpoint), as the final artifact's fingerprint
# (see SegmentationPreTrainedModel.backbone_fingerprint) would only tell after the run. So each checkpoint records
# the fingerprint of the frozen weights it was trained on, with where they came from, and a resume compares.

def backbone_record(model) -> dict:
    """``{backbone: {"fingerprint", "repo_field", "repo", "revision_field", "revision"}}`` of the frozen backbones as
    loaded; empty when none was loaded (``--backbone random``) or none is frozen (strategy ``full``)."""
    record = {}
    for group, fingerprint in (model.backbone_fingerprint() or {}).items():
        repo_field, revision_field = model.backbone_source(group)
        record[group] = {"fingerprint": fingerprint, "repo_field": repo_field,
                         "repo": getattr(model.config, repo_field, None), "revision_field": revision_field,
                         "revision": getattr(model.config, revision_field, None)}
    return record


def check_checkpoint_backbones(model, checkpoint: Path, verify: bool = True) -> None:
    """Refuse (:class:`~dsunet_hf.CheckpointMismatchError`, one line naming the checkpoint, the backbone and the fix)
    to resume ``checkpoint`` on frozen backbone weights, as ``model`` loaded them, other than those it was trained on;
    ``verify=False`` (``--no-verify-backbone-weights``) warns instead. Checkpoints written before the record: unchecked."""
    from .modeling_utils import CheckpointMismatchError

    path = checkpoint / BACKBONE_RECORD
    if not path.is_file():
        logger.info("%s records no backbone fingerprint (written before checkpoints did): the frozen backbone weights "
                    "are not compared with those it was trained on", checkpoint)
        return
    for group, saved in json.loads(path.read_text()).items():
        try:
            model.check_backbone_fingerprint({group: saved["fingerprint"]})
        except CheckpointMismatchError:
            now = model.backbone_source(group)
            now = f"{getattr(model.config, now[0], None)}{_at_revision(getattr(model.config, now[1], None))}"
            then = f"{saved['repo']}{_at_revision(saved['revision'])}"
            if not verify:
                logger.warning("--no-verify-backbone-weights: resuming %s, trained on the frozen %s weights of %s, on "
                               "other ones (%s)", checkpoint, group, then, now)
                continue
            pin = (f" (the same repo pinned: add \"{saved['revision_field']}\": \"{saved['revision']}\" to "
                   f"--config-overrides)" if saved["revision"] else "")
            raise CheckpointMismatchError(
                f"{checkpoint}: the frozen {group} weights loaded now from {now} are not those it was trained on, from "
                f"{then}: resuming would train its adapters on another backbone. Resume with the weights it was "
                f"trained on{pin}, or pass --no-verify-backbone-weights to resume on these anyway"
            ) from None


LAYOUT_NAMES = {"batch_size": "--batch-size", "gradient_accumulation_steps": "--gradient-accumulation-steps",
                "num_processes": "processes", "train_samples": "training samples",
                "train_batches": "batches per epoch", "seed": "--seed", "validation_ratio": "--validation-ratio"}


def data_layout(args: TrainingArguments, num_processes: int, train_samples: int, train_batches: int) -> dict:
    """What a run's step counter, its position in an epoch (micro-batches consumed) and its schedule count in, and
    what its data order and held-out validation split are drawn from (another --seed or --validation-ratio moves
    samples across the split: the resumed run would validate on images it trained on)."""
    return {"batch_size": args.batch_size, "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "num_processes": num_processes, "train_samples": train_samples, "train_batches": train_batches,
            "seed": args.seed, "validation_ratio": None if args.val_data else args.validation_ratio}


def check_data_layout(checkpoint: Path, saved: dict | None, now: dict, batches_consumed: int = 0) -> None:
    """Refuse to resume ``checkpoint`` with another batch size, accumulation, process count or number of batches per
    epoch: the batches it skips, its optimizer steps per epoch and so its schedule and end would count in other units
    (a run resumed at another batch size repeated samples, or stopped short of its last epoch without a final model).
    A training set that lost or gained a few samples in the same number of batches (a truncated file left out by
    ``--verify-data full``, as the error that stopped the run says to do) resumes with a warning."""
    if saved is None:  # written before checkpoints recorded it
        return
    differs = [key for key in now if key in saved and saved[key] != now[key]]  # keys it lacks: unchecked
    if differs == ["train_samples"] and "train_batches" in saved:
        rest = ("; the rest of its current epoch is drawn from a new order, so some samples of that epoch repeat or "
                "are left out" if batches_consumed else "")
        logger.warning("%s: trained on %d training samples, now %d (in as many batches per epoch): resuming on "
                       "these%s", checkpoint, saved["train_samples"], now["train_samples"], rest)
    elif differs:
        same = " ".join(f"--{key.replace('_', '-')} {saved[key]}" for key in
                        ("batch_size", "gradient_accumulation_steps", "seed", "validation_ratio")
                        if saved.get(key) is not None)
        named = ", ".join(f"{LAYOUT_NAMES.get(key, key)} {saved[key]} (now {now[key]})" for key in differs)
        raise ValueError(f"{checkpoint}: trained with {named}: its step count, position in the epoch, data order, "
                         f"validation split and learning-rate schedule hold only for the same data layout. Resume with "
                         f"{same} on "
                         f"{saved.get('num_processes')} process(es) and the same training data, or start a new run "
                         "in another --output-dir")


def check_best_metric(checkpoint: Path, saved: TrainerState, metric: str) -> None:
    """Refuse to resume ``checkpoint`` with another --metric-for-best-model than the one its best model was chosen by:
    its best value (an S-measure, higher is better) was compared as the new metric's (a loss, lower is better), and
    the model it chose became the final model/ whatever the new metric said."""
    if saved.best_step is None or saved.metric_for_best_model in (None, metric):  # no best yet, or not recorded
        return
    raise ValueError(f"{checkpoint}: its best model (step {saved.best_step}) was chosen by --metric-for-best-model "
                     f"{saved.metric_for_best_model}, not {metric}: resume with --metric-for-best-model "
                     f"{saved.metric_for_best_model!r}, or start a new run in another --output-dir to choose by {metric}")


def _at_revision(revision: str | None) -> str:
    return f" (revision {revision})" if revision else ""


LR_SCHEDULES = ("cosine-epoch", "cosine", "poly", "constant")
VERIFY_DATA = ("header", "full", "none")


def check_numbers(args: TrainingArguments) -> None:
    """Flags out of range are refused before anything loads (0 would divide by zero hours later; a misspelt
    --lr-schedule would be found only once the model and data had loaded)."""
    # --stop-after-steps: 0 meant no stop (a recipe file could hold it), a negative value stopped at once without a
    # checkpoint: both refused.
    at_least_one = ("batch_size", "logging_steps", "gradient_accumulation_steps", "max_steps", "num_epochs",
                    "early_stopping_patience", "image_size", "max_val_samples", "stop_after_steps")
    for name in at_least_one:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    # 0: each epoch / keep all / none / no warm-up
    for name in ("eval_steps", "save_steps", "save_total_limit", "num_workers", "warmup_steps"):
        value = getattr(args, name, None)
        if value is not None and value < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be 0 or more, got {value}")
    for name in ("learning_rate", "weight_decay", "max_grad_norm", "min_learning_rate"):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
    if not args.val_data and not 0 < args.validation_ratio < 1:  # the share split off when there is no --val-data
        raise ValueError(f"--validation-ratio must be in (0, 1) without --val-data, got {args.validation_ratio}")
    if args.lr_schedule is not None and args.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {args.lr_schedule!r}")
    if args.verify_data not in VERIFY_DATA:
        raise ValueError(f"--verify-data must be header, full or none, got {args.verify_data!r}")


# --- the loop -------------------------------------------------------------------------------------

def train(args: TrainingArguments) -> dict:
    """Run training; returns a summary (steps, best metrics, paths)."""
    from .data import SegmentationTransform, collate_segmentation, dataset_name
    from .evaluate import evaluate_model
    from .metrics import DIS_METRIC_NAMES, is_better

    output_dir = Path(args.output_dir)
    check_numbers(args)
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push-to-hub needs --hub-model-id")
    report_to = None if args.report_to in ("none", "", None) else args.report_to
    accelerator = Accelerator(
        cpu=use_cpu(),  # torchrun on a CPU-only machine: one process group, not N independent runs
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        # The data order is a function of (seed, epoch): needed to skip consumed batches on resume.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    overwrite = check_output_dir(args)
    resume_path = resolve_resume_path(args)  # a bad path is refused before the backbones load
    # The data needs nothing of the model: a bad data set is refused before the backbones load (on every process, each
    # of which would load them first) and before a Hub repo is created for a run that cannot start.
    train_set, validation_set = build_datasets(args)
    if args.push_to_hub and accelerator.is_main_process:
        # As transformers' Trainer: the repo is created now, so that a bad token or name stops the run before it
        # trains, and a name without a namespace becomes the Hub's full id (the cards' snippets name it).
        from .hub import create_hub_repo

        args.hub_model_id = create_hub_repo(args.hub_model_id, private=args.hub_private or None)
    set_seed(args.seed)
    spec, model = build_model(args)
    if resume_path is not None:  # before anything trains: the checkpoint's adapters fit only its backbone weights
        check_checkpoint_backbones(model, resume_path, args.verify_backbone_weights)
    # SAM2-UNet with more than two classes trains on label maps like the DINOv2 heads (mIoU, not S-measure).
    task = "semantic" if getattr(model, "predicts_class_maps", False) else spec.task
    args.metric_for_best_model = args.metric_for_best_model or ("mIoU" if task == "semantic" else spec.best_metric)
    if args.metric_for_best_model not in validation_metrics(task):  # refused now, not after an epoch of training
        raise ValueError(f"--metric-for-best-model {args.metric_for_best_model!r}: the validation of this model "
                         f"({task}) computes {', '.join(validation_metrics(task))}")
    args.mixed_precision = accelerator.mixed_precision  # what runs (accelerate's setting when the flag is unset)
    if args.mixed_precision == "fp16" and accelerator.device.type == "cpu":  # accelerate ignores it there, silently
        logger.warning("--mixed-precision fp16 does nothing on the CPU (accelerate autocasts to fp16 on GPUs only): "
                       "this run trains in float32; --mixed-precision bf16 autocasts on the CPU")
    if args.num_epochs is None and args.max_steps is None:  # the recipe's length: steps (DINOv2 heads) or epochs
        args.max_steps = spec.default("max_steps")
        recipe_epochs = getattr(model.config, "recipe_num_epochs", None)  # BiRefNet: per task
        args.num_epochs = recipe_epochs() if recipe_epochs else spec.default("num_epochs")
    for name in ("batch_size", "num_epochs", "weight_decay", "lr_schedule", "warmup_steps"):
        if getattr(args, name) is None:  # unset flags take the model's upstream recipe
            setattr(args, name, spec.default(name))
    if args.learning_rate is None:  # some recipes scale it with the batch size (BiRefNet)
        recipe_lr = getattr(model.config, "recipe_learning_rate", None)
        args.learning_rate = recipe_lr(args.batch_size) if recipe_lr else spec.default("learning_rate")
    processor = model.default_image_processor()
    if args.reduce_zero_label:
        if task != "semantic":
            raise ValueError("--reduce-zero-label is for multi-class label maps (a DINOv2 head, a multi-class "
                             "SAM2-UNet); this model is trained on binary masks")
        processor.do_reduce_labels = True  # saved with the model: evaluation reads its labels the same way
    if task == "semantic":  # 0/255 masks: 255 is the ignore index, the foreground would never be learnt
        from .semantic import check_not_binary_255

        check_not_binary_255(train_set, args.train_data, type(model).__name__, model.config.semantic_loss_ignore_index)
    if overwrite:  # only now, with every argument and the data checked: a typo must not cost the earlier run
        clear_earlier_run(output_dir, accelerator)
    if task == "binary":
        warn_if_class_index_masks(train_set, args.train_data, type(model).__name__)
    collate = collate_segmentation
    if task == "visual-prompt":
        from .models.visual_prompt import VisualPromptEpisodes, collate_visual_prompt

        # Episodes are a map-style dataset drawing (reference, prompt, target) per (seed, epoch, item).
        train_transform = VisualPromptEpisodes(train_set, processor, seed=args.seed, hflip=spec.hflip)
        train_episodes, collate = train_transform, collate_visual_prompt
    elif task == "semantic":
        from .semantic import SemanticSegmentationTransform, training_scale_range

        train_transform = SemanticSegmentationTransform(
            processor, train=True, crop_size=model.config.crop_size, ignore_index=model.config.semantic_loss_ignore_index,
            reduce_zero_label=args.reduce_zero_label, seed=args.seed, num_labels=model.config.num_labels,
            scale_range=training_scale_range(model.config), max_long_side=getattr(model.config, "max_long_side", None),
        )
    else:
        train_transform = SegmentationTransform(processor, train=True, hflip=spec.hflip, vflip=spec.vflip,
                                                seed=args.seed, augment=spec.augment)
    if task != "visual-prompt":
        train_episodes = train_set.with_transform(train_transform)
    # The loader's own generator: creating an iterator draws a seed from it, which from the global RNG would shift
    # every later dropout mask of a resumed run (the checkpoint's RNG state is restored before that draw).
    loader_generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        train_episodes, batch_size=args.batch_size, shuffle=True, collate_fn=collate, num_workers=args.num_workers,
        generator=loader_generator,
        drop_last=drops_last_batch(len(train_episodes), args.batch_size, accelerator.num_processes),
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=args.learning_rate, weight_decay=args.weight_decay
    )
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if args.torch_compile:
        # Compiled here rather than through accelerate's dynamo plugin, which lives in a process-wide state (a
        # second run in the same process would keep the first one's choice). dynamic=None: PyTorch's automatic
        # dynamic shapes, static first, then one recompile that makes the changed size (the last, smaller batch)
        # symbolic. dynamic=True (everything symbolic) did not finish compiling SAM2-UNet's backward in 5 minutes.
        model = torch.compile(model, backend=args.torch_compile_backend)
    accumulation = args.gradient_accumulation_steps
    steps_per_epoch = max(1, math.ceil(len(train_loader) / accumulation))
    total_steps = args.max_steps or args.num_epochs * steps_per_epoch
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    if args.warmup_steps and args.warmup_steps >= total_steps:  # e.g. dinov2-seg's 1500 in a 500-step run
        logger.warning("--warmup-steps %d >= this run's %d optimizer steps: the whole run is warm-up, below the "
                       "peak --learning-rate %g; give --warmup-steps below %d (e.g. %d, a tenth of the run)",
                       args.warmup_steps, total_steps, args.learning_rate, total_steps, total_steps // 10)
    multiplier = lr_lambda_factory(args, total_steps, steps_per_epoch, accelerator.num_processes)
    scheduler = accelerator.prepare(torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier))
    register_trainable_checkpoint_hooks(accelerator)

    layout = data_layout(args, accelerator.num_processes, len(train_episodes), len(train_loader))
    state = TrainerState(data_layout=layout, metric_for_best_model=args.metric_for_best_model)
    if resume_path is not None:
        saved = TrainerState(**json.loads((resume_path / TRAINER_STATE).read_text()))
        # The best/ (or best.old) of this folder is the checkpoint's best only when the checkpoint is this folder's;
        # another run's best/ would have become model/ under this run's best metric.
        own = is_own_checkpoint(output_dir, resume_path)
        # One that an earlier resume set aside (OUTPUT/abandoned-checkpoints/<when>/checkpoint-N), resumed to go back to
        # that course of training: the best/ set aside beside it is its best when its record says so (see below).
        set_aside_here = is_set_aside_checkpoint(output_dir, resume_path)
        # Before load_state: nothing changed yet.
        check_data_layout(resume_path, saved.data_layout, layout, saved.batches_in_epoch)
        if own or set_aside_here:  # into another folder, the best is chosen again (below) under this run's metric
            check_best_metric(resume_path, saved, args.metric_for_best_model)
        accelerator.load_state(str(resume_path))
        state = saved
        state.data_layout, state.metric_for_best_model = layout, args.metric_for_best_model
        logger.info("resumed from %s at step %d", resume_path, state.global_step)
        aside = None
        if accelerator.is_main_process:  # only now, with the checkpoint loaded: a refused resume moves nothing
            aside = set_aside_abandoned_checkpoints(output_dir, resume_path, state.global_step,
                                                    (state.best_step, state.best_metric), own=own)
        accelerator.wait_for_everyone()
        old = output_dir / "best.old"  # a run killed while a newer best/ went in (_replace_dir): the one it recorded
        if accelerator.is_main_process and own and state.best_step is not None and old.is_dir() and \
                not (output_dir / "best").exists():
            os.replace(old, output_dir / "best")
        best = (state.best_step, state.best_metric)
        if accelerator.is_main_process and set_aside_here and not (output_dir / "best").exists() and \
                is_best_of(resume_path.parent / "best", best):
            os.replace(resume_path.parent / "best", output_dir / "best")
            logger.info("resuming %s: its best model (step %d) is back in %s", resume_path, state.best_step,
                        output_dir / "best")
        accelerator.wait_for_everyone()
        own_best = own or (set_aside_here and is_best_of(output_dir / "best", best))
        if state.best_step is not None and not (own_best and (output_dir / "best").is_dir()):
            # Resumed into another output dir (or best/ was deleted, or set aside as a later one): the best weights
            # are not here, and the final model/ must not silently become the last weights (or a model of a course
            # of training abandoned); the best is chosen again from the coming validations.
            if accelerator.is_main_process:  # where set_aside_abandoned_checkpoints ran
                why = ("not beside the set-aside checkpoint either" if set_aside_here else
                       "a resume into another folder does not copy the checkpoint's folder's best/" if not own else
                       f"a later best model replaced it, set aside in {aside}" if aside and (aside / "best").is_dir()
                       else "it was deleted")
                logger.warning("the best model so far (step %d, %s %.4f) is not in %s (%s): the best is chosen again "
                               "from the validations after step %d", state.best_step, args.metric_for_best_model,
                               state.best_metric, output_dir / "best", why, state.global_step)
            state.best_metric, state.best_step, state.best_metrics = None, None, {}
            state.validations_without_improvement = 0

    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)  # validation and saving: eager
    train_names = [dataset_name(args.train_data)]
    # A held-out share of the training data is named so on the card's results, not as if it were another data set.
    validation_name = (dataset_name(args.val_data) if args.val_data
                       else f"{train_names[0]} ({args.validation_ratio:.0%} held out)")
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output_dir / "training_args.json", asdict(args))
        # A fresh start too: a run killed before its first checkpoint (nothing to resume) logged steps this one logs again.
        dropped = forget_logs_after(output_dir / "metrics.jsonl", state.global_step)
        if dropped and resume_path is None:
            logger.warning("%s: dropped the %d rows that an earlier run without a checkpoint logged (this run starts "
                           "at step 0)", output_dir / "metrics.jsonl", dropped)
    # A resumed (or restarted) run replays steps: TensorBoard drops what the stopped run logged after its checkpoint.
    tracker_kwargs = {"tensorboard": {"purge_step": state.global_step + 1}}
    if report_to:
        accelerator.init_trackers("dsunet-hf", config={k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))},
                                  init_kwargs=tracker_kwargs)

    def log(values: dict) -> None:
        accelerator.log(values, step=state.global_step)
        if accelerator.is_main_process:
            with open(output_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **values}) + "\n")

    def save_checkpoint() -> None:
        final = output_dir / "checkpoints" / f"checkpoint-{state.global_step}"
        temporary = _temporary(final, clear=accelerator.is_main_process)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary))
        # Every process writes its own RNG states into the folder: all must be done before it is renamed.
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json_atomic(temporary / TRAINER_STATE, asdict(state))
            write_json_atomic(temporary / BACKBONE_RECORD, backbone_record(unwrapped))
            _replace_dir(temporary, final)
            if args.save_total_limit:
                for old in checkpoint_dirs(output_dir)[: -args.save_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def save_model(folder: Path, metrics: dict, record: dict | None = None) -> None:
        temporary = _temporary(folder)
        # A random backbone exists nowhere else: keep it in the artifact so that it loads again.
        unwrapped.save_pretrained(
            temporary, include_backbone=args.backbone == "random", image_processor=processor,
            model_card_kwargs={"metrics": metrics, "dataset_names": train_names, "repo_id": args.hub_model_id},
        )
        if metrics:  # the validation results as the card's model-index too (shown on the Hub's model page)
            add_validation_results_to_card(temporary, metrics, validation_name, str(args.val_data or args.train_data),
                                           model_name=(args.hub_model_id or str(output_dir)).rstrip("/").split("/")[-1])
        if record:  # in the folder before it is renamed into place: the two go in together
            write_json_atomic(temporary / BEST_RECORD, record)
        _replace_dir(temporary, folder)

    def validate() -> None:
        """Validate on the main process; ``state.stopped_early`` on every process when early stopping ends training."""
        stop = False
        if accelerator.is_main_process:
            if task == "visual-prompt":
                from .models.visual_prompt import evaluate_visual_prompt

                # Small validation splits: a class seen in one image only is prompted on that image itself.
                metrics = evaluate_visual_prompt(unwrapped, validation_set, max_queries=args.max_val_samples,
                                                 seed=args.seed, id2label=unwrapped.config.id2label,
                                                 self_reference_fallback=True)
                metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            elif task == "semantic":
                from .semantic import evaluate_semantic

                metrics = evaluate_semantic(unwrapped, validation_set, schedule="single", max_samples=args.max_val_samples,
                                            reduce_zero_label=args.reduce_zero_label)
                metrics = {k: v for k, v in metrics.items() if isinstance(v, float)}  # per-class IoU stays out of logs
            else:
                # With the validation loss (BiRefNet's users asked for it back, their #211), from the same pass.
                metrics = evaluate_model(unwrapped, processor, validation_set, max_samples=args.max_val_samples,
                                         progress=False, with_loss=True, num_workers=args.num_workers,
                                         dis_metrics=args.metric_for_best_model in DIS_METRIC_NAMES)
            model.train()
            log({f"val/{k}": v for k, v in metrics.items()})
            if args.metric_for_best_model not in metrics:  # absent_area needs a class that some images lack
                raise ValueError(f"--metric-for-best-model {args.metric_for_best_model}: not computed on this "
                                 f"validation data (found {sorted(metrics)})")
            value = metrics[args.metric_for_best_model]
            if is_better(args.metric_for_best_model, value, state.best_metric):
                state.best_metric, state.best_step, state.best_metrics = value, state.global_step, metrics
                state.validations_without_improvement = 0
                save_model(output_dir / "best", metrics, {"step": state.global_step,
                                                          "metric": args.metric_for_best_model, "value": value})
            else:
                state.validations_without_improvement += 1
            patience = args.early_stopping_patience
            stop = bool(patience) and state.validations_without_improvement >= patience
            if stop:
                logger.info("early stopping at step %d: %s has not improved for %d validations (best %.4f at step %s)",
                            state.global_step, args.metric_for_best_model, patience, state.best_metric, state.best_step)
            bar.set_postfix_str(f"{args.metric_for_best_model} {value:.4f}")
        accelerator.wait_for_everyone()
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            stop = broadcast_object_list([stop])[0]
        state.stopped_early = stop

    bar = tqdm(total=total_steps, initial=state.global_step, desc="train", unit="step",
               disable=not (args.progress and accelerator.is_local_main_process))
    model.train()
    stop_at = min(total_steps, args.stop_after_steps or total_steps)
    while state.global_step < stop_at and state.epoch < num_epochs and not state.stopped_early:
        train_transform.epoch = state.epoch
        if hasattr(unwrapped, "set_epoch"):  # epoch-dependent loss schedules (BiRefNet's last epochs)
            unwrapped.set_epoch(state.epoch, num_epochs)
        train_loader.set_epoch(state.epoch)
        # Worker seeds drawn from the loader's generator are then a function of (seed, epoch), resumed or not, like the
        # shuffling order (accelerate's seedable sampler reseeds per epoch: the seed set by set_seed + epoch).
        loader_generator.manual_seed(args.seed + state.epoch)
        batches = train_loader
        if state.batches_in_epoch:
            batches = accelerator.skip_first_batches(train_loader, state.batches_in_epoch)
        for batch in batches:
            with accelerator.accumulate(model):
                inputs, labels = dynamic_resize(pixel_inputs(batch), batch["labels"], unwrapped.config,
                                                args.seed, state.global_step)
                # Non-image inputs some models take (visual prompts: reference masks, target segments).
                inputs.update({k: batch[k] for k in getattr(unwrapped, "extra_input_names", ()) if k in batch})
                # By name, and asked for as such: a prepared model (DDP) hides the config that model_output reads, so
                # a config's return_dict=False gave a tuple on several processes.
                loss = model(**inputs, labels=labels, return_dict=True).loss
                # accelerate divides every loss by --gradient-accumulation-steps, also in an epoch's last window of
                # fewer micro-batches (whose step then got a fraction of the gradient): each optimizer step averages
                # the micro-batches it has, as transformers' Trainer does.
                window = min(accumulation, len(train_loader) - state.batches_in_epoch // accumulation * accumulation)
                accelerator.backward(loss * (accumulation / window) if window < accumulation else loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state.batches_in_epoch += 1
            state.running_loss += loss.detach().float().item()
            state.running_count += 1
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            bar.update(1)
            # Not at a --stop-after-steps stop: the window goes on in the resumed run (and is logged there, whole).
            if state.global_step % args.logging_steps == 0 or state.global_step == total_steps:
                values = {"train/loss": state.running_loss / state.running_count, "train/lr": scheduler.get_last_lr()[0]}
                bar.set_postfix(loss=f"{values['train/loss']:.4f}", lr=f"{values['train/lr']:.2e}")
                log(values)
                state.running_loss, state.running_count = 0.0, 0
            end_of_epoch = state.batches_in_epoch >= len(train_loader)
            if end_of_epoch:  # the epoch is complete: a checkpoint taken now resumes at the next one
                state.epoch += 1
                state.batches_in_epoch = 0
            due_eval = args.eval_steps and state.global_step % args.eval_steps == 0
            if due_eval or (not args.eval_steps and end_of_epoch) or state.global_step == total_steps:
                validate()
            due_save = args.save_steps and state.global_step % args.save_steps == 0
            if due_save or (not args.save_steps and end_of_epoch) or state.global_step == stop_at or state.stopped_early:
                save_checkpoint()
            if state.global_step >= stop_at or end_of_epoch or state.stopped_early:
                break
        else:  # the loader ran out without a synced step marking the end of the epoch
            state.epoch += 1
            state.batches_in_epoch = 0
    bar.close()

    summary = {"global_step": state.global_step, "total_steps": total_steps, "best_step": state.best_step,
               "best_metrics": state.best_metrics, "output_dir": str(output_dir), "stopped_early": state.stopped_early}
    if state.global_step < total_steps and not state.stopped_early:
        logger.warning("stopped at step %d of %d; continue with --resume-from-checkpoint latest",
                       state.global_step, total_steps)
        accelerator.end_training()
        return summary
    if accelerator.is_main_process:
        final = output_dir / "model"
        if (output_dir / "best").is_dir():  # copied whole, then swapped in: no file of an older model stays
            temporary = _temporary(final)
            shutil.copytree(output_dir / "best", temporary, ignore=shutil.ignore_patterns(BEST_RECORD))
            _replace_dir(temporary, final)
        else:
            save_model(final, {})
        summary["model_dir"] = str(final)
        write_json_atomic(output_dir / "train_summary.json", summary)  # there also when the upload fails
        if args.push_to_hub:
            from .hub import upload_folder_to_hub

            try:
                summary["hub_repo_id"] = upload_folder_to_hub(
                    final, args.hub_model_id, private=args.hub_private or None, commit_message="End of training",
                    repo_created=True,  # at the start, on this (the main) process
                )
            except Exception as error:  # the run itself is done: say so, and where its model is, not only the error
                first_line = (str(error).splitlines() or [""])[0]
                raise OSError(f"training finished and the model is saved in {final}, but uploading it to "
                              f"{args.hub_model_id} failed ({type(error).__name__}: {first_line}); upload it with "
                              f"`dsunet-hf push {final} {args.hub_model_id}`") from error
            write_json_atomic(output_dir / "train_summary.json", summary)
    accelerator.end_training()
    return summary


def main(argv: list[str] | None = None, prog: str = "train.py") -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import dsunet_hf  # noqa: F401  (registers the Auto classes)

    try:
        summary = train(parse_args(argv, prog=prog))
    except (ValueError, OSError) as error:  # bad arguments, data or files: one line naming them, not a traceback
        from .image_io import ImageReadError

        hint = (" (--verify-data full decodes every file before training and leaves out unreadable ones; continue "
                "with --resume-from-checkpoint latest)") if isinstance(error, ImageReadError) else ""
        raise SystemExit(f"train: {error}{hint}") from error
    from .distributed import process_state

    if process_state().is_main_process:  # one summary per run, not one per process
        print(json.dumps(summary, indent=2, default=str))
    return 0
