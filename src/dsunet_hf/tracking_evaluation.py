"""Semi-supervised video object segmentation scores (DAVIS-2017 protocol) for visual-prompt tracking.

``dsunet-hf evaluate --model <visual-prompt model> --data DAVIS/`` on a folder in the DAVIS layout
(``JPEGImages/<resolution>/<sequence>/*.jpg`` and ``Annotations/<resolution>/<sequence>/*.png``, the resolution level
optional): every object of a sequence's first annotated frame is the prompt (its mask on that frame) and is followed
through the frames by :class:`dsunet_hf.prompt_predict.PromptTracker` (DINOv's video memory), one tracker per
object; where objects' masks overlap, the pixel goes to the object with the highest score (the DAVIS results format
has one object per pixel). Scored as the DAVIS-2017 toolkit (``davis2017-evaluation``) scores semi-supervised
results, written here from its definitions so that no OpenCV / scikit-image are needed: the first and the last
frame are left out; per frame, J is the IoU and F the boundary F-measure (boundaries one pixel wide, matched within
``ceil(0.008 * image diagonal)`` pixels, a disk); void pixels (label 255) count as background, as the toolkit's
semi-supervised evaluation passes no void mask to its metrics; per object, the mean over frames (M), the share of
frames above 0.5 (recall, R) and the decay (D: the mean of the first quarter of the frames minus that of the last);
J&F = (mean J_M + mean F_M) / 2 over all objects. A folder with DAVIS's split lists (``ImageSets/2017/<split>.txt``)
is scored on the listed sequences only, ``val`` unless another split is named (the toolkit's ``--set``).

Annotations are read as the toolkit reads them, the PNG's values as object ids (palette or grey index maps), with
one exception for single-object sets: a grey mask of 0 and 255 only (which the toolkit would read as all void) is
object 1.

Sequences annotated on some frames only (YouTube-VOS validation and DAVIS test-dev give each object's mask on the
frame where it first appears, objects may appear later) are tracked and written in the results format for the
benchmark's server, which holds the remaining annotations: every object is followed from its first annotation on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm.auto import tqdm

from .files import save_image_atomic
from .image_io import load_image
from .predict import stored_size
from .prompt_predict import PromptTracker, default_threshold, frame_order, memory_kwargs

__all__ = ["VideoSequence", "boundary_f_measure", "davis_sequences", "evaluate_tracking", "first_frame_objects",
           "is_davis_layout", "is_youtube_vos", "jaccard", "split_list"]

VOID_LABEL = 255
BOUNDARY_TOLERANCE = 0.008  # of the image diagonal (the toolkit's bound_th)
PROTOCOL = (
    "DAVIS-2017 semi-supervised: each object of a sequence's first annotation prompts a tracker (references = that "
    "frame and mask, memory of the last found frames); overlaps go to the highest score; first and last frames left "
    "out; J = IoU, F = boundary F-measure within ceil(0.008 x diagonal) px, void (255) as background (the toolkit's "
    "semi-supervised scores); M = mean over frames, R = share of frames > 0.5, D = decay (first quarter's mean minus "
    "the last's); J&F = (mean J_M + mean F_M) / 2 over objects; the ImageSets/2017/<split>.txt list when there is one "
    "(val by default)")
DEFAULT_SPLIT = "val"  # the toolkit's default --set


def is_davis_layout(folder: str | Path) -> bool:
    """A folder with ``JPEGImages/`` and ``Annotations/``: the DAVIS layout, also YouTube-VOS's (whose validation
    set annotates each object's first appearance only)."""
    folder = Path(folder)
    return (folder / "JPEGImages").is_dir() and (folder / "Annotations").is_dir()


def is_youtube_vos(folder: str | Path) -> bool:
    """YouTube-VOS (a DAVIS-like layout with ``meta.json``): its server takes results under ``Annotations/``."""
    return is_davis_layout(folder) and (Path(folder) / "meta.json").is_file()


def _level(folder: Path) -> Path:
    """DAVIS nests the sequences under a resolution level (``480p``, ``Full-Resolution``); other sets do not."""
    children = [child for child in sorted(folder.iterdir()) if child.is_dir()]
    nested = [child for child in children if any(grandchild.is_dir() for grandchild in child.iterdir())]
    if nested and len(nested) == len(children):
        preferred = [child for child in nested if child.name == "480p"]
        return (preferred or nested)[0]
    return folder


@dataclass
class VideoSequence:
    """A sequence's frames (name order) and its annotations by frame index. Every frame annotated (DAVIS train/val):
    scored, the first annotation being the prompt. Some frames only (YouTube-VOS validation, DAVIS test-dev: each
    object's first appearance): every annotation is a prompt, and the results go to the benchmark's server."""

    name: str
    frames: list[Path]
    annotations: dict[int, Path]

    @property
    def scored(self) -> bool:
        return len(self.annotations) == len(self.frames)

    @property
    def prompt_frames(self) -> list[int]:
        return [0] if self.scored else sorted(self.annotations)


def split_list(root: str | Path, split: str | None = None) -> tuple[Path | None, list[str] | None]:
    """DAVIS's list of the sequences of a split (``ImageSets/2017/<split>.txt``, else ``ImageSets/<split>.txt``):
    its path and names. Unnamed: ``val`` (the toolkit's default), or the only list there is (a test-dev download
    holds ``test-dev.txt`` alone). (None, None) when the folder has no ``ImageSets`` (every annotated sequence is
    scored; a named split then has nothing to choose and is an error)."""
    sets = Path(root) / "ImageSets"
    name = split or DEFAULT_SPLIT
    if not sets.is_dir():
        if split is not None:
            raise ValueError(f"{root}: no ImageSets/ folder listing the sequences of split {split!r}; leave out "
                             f"--split to score every annotated sequence")
        return None, None
    candidates = [sets / "2017" / f"{name}.txt", sets / f"{name}.txt"]
    found = next((path for path in candidates if path.is_file()), None)
    lists = sorted(sets.glob("2017/*.txt")) or sorted(sets.glob("*.txt"))
    if found is None and split is None and len(lists) == 1:
        found = lists[0]
    if found is None:
        available = sorted({path.stem for path in sets.rglob("*.txt")})
        raise ValueError(f"{sets}: no list for split {name!r} ({' or '.join(str(path) for path in candidates)}); "
                         f"lists found: {', '.join(available) or 'none'}"
                         f"{'; name one with --split' if available and split is None else ''}")
    names = [line.strip() for line in found.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{found}: lists no sequence")
    return found, names


def davis_sequences(root: str | Path, split: str | None = None) -> list[VideoSequence]:
    """Every sequence with annotations (only those of the split's list when the folder has ``ImageSets``, see
    :func:`split_list`): all its frames in name order, its annotations matched to them by file stem."""
    root = Path(root)
    images, annotations = _level(root / "JPEGImages"), _level(root / "Annotations")
    list_path, listed = split_list(root, split)
    folders = sorted(path for path in annotations.iterdir() if path.is_dir())
    if listed is not None:
        present = {folder.name for folder in folders}
        missing = [name for name in listed if name not in present]
        if missing:
            raise ValueError(f"{list_path}: no annotations for the listed sequence(s) {', '.join(missing[:3])}"
                             f"{' ...' if len(missing) > 3 else ''} under {annotations}")
        folders = [annotations / name for name in listed]
    sequences = []
    for folder in folders:
        masks = sorted(folder.glob("*.png"), key=frame_order)
        frames_folder = images / folder.name
        if not masks:
            continue
        if not frames_folder.is_dir():
            raise ValueError(f"{folder}: annotations without frames (no {frames_folder})")
        frames = sorted((path for path in frames_folder.iterdir() if path.suffix.lower() in (".jpg", ".jpeg", ".png")),
                        key=frame_order)
        index = {path.stem: position for position, path in enumerate(frames)}
        missing = [mask.name for mask in masks if mask.stem not in index]
        if missing:
            raise ValueError(f"{frames_folder}: no frame for the annotation(s) {', '.join(missing[:3])}")
        sequences.append(VideoSequence(folder.name, frames, {index[mask.stem]: mask for mask in masks}))
    if not sequences:
        raise ValueError(f"{root}: no annotated sequence under {annotations}")
    return sequences


def _read_ids(path: Path) -> tuple[str, np.ndarray]:
    try:
        with Image.open(path) as image:
            image.load()
            mode, values = image.mode, np.asarray(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: not a readable annotation ({error})") from error
    if mode not in ("1", "P", "L"):
        raise ValueError(f"{path}: a {mode} annotation; DAVIS annotations are palette (P) or grey (L) PNGs of "
                         f"object ids")
    return mode, values.astype(np.uint8)


def _binary_grey(mode: str, values: np.ndarray) -> bool:
    """A grey mask of 0 and 255 only: a single-object binary mask (all void to the toolkit)."""
    return mode == "L" and values.max(initial=0) == VOID_LABEL and not np.isin(values, (0, VOID_LABEL), invert=True).any()


def read_annotation(path: Path, binary: bool | None = None) -> np.ndarray:
    """Object ids (0 background, 255 void) as the toolkit reads them: the PNG's values (a palette or grey index
    map). A 1-bit mask is object 1, and so is a grey mask of a binary sequence (``binary``: decided by the
    sequence's first annotation, see :func:`reads_binary`; None: by this file, 0 and 255 only). Colour annotations
    are refused (the toolkit cannot read them either), naming the file."""
    mode, values = _read_ids(path)
    if mode == "1":
        return values
    if mode == "L" and (binary if binary is not None else _binary_grey(mode, values)):
        return (values > 127).astype(np.uint8)
    return values


def reads_binary(sequence: VideoSequence) -> bool:
    """Whether the sequence's annotations are binary grey masks (its first annotation of 0 and 255 only): then 255
    is object 1 on every frame, else void as the toolkit reads it (a frame of a grey index map that shows only
    background and void stays so)."""
    return _binary_grey(*_read_ids(sequence.annotations[min(sequence.annotations)]))


def jaccard(annotation: np.ndarray, segmentation: np.ndarray, void: np.ndarray | None = None) -> float:
    """Region similarity J: IoU outside the void pixels; 1 when both are empty."""
    keep = ~void if void is not None else np.ones(annotation.shape, bool)
    union = ((annotation | segmentation) & keep).sum()
    return 1.0 if union == 0 else float(((annotation & segmentation) & keep).sum() / union)


def _boundary(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundaries: a pixel that differs from its right, lower or lower-right neighbour (the toolkit's
    seg2bmap, half a pixel towards the origin; in the last row and column only the neighbour that exists)."""
    right, below, diagonal = (np.zeros_like(mask) for _ in range(3))
    right[:, :-1], below[:-1, :], diagonal[:-1, :-1] = mask[:, 1:], mask[1:, :], mask[1:, 1:]
    boundary = (mask ^ right) | (mask ^ below) | (mask ^ diagonal)
    boundary[-1, :] = mask[-1, :] ^ right[-1, :]
    boundary[:, -1] = mask[:, -1] ^ below[:, -1]
    boundary[-1, -1] = False
    return boundary


def _disk(radius: int) -> np.ndarray:
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2


def boundary_f_measure(annotation: np.ndarray, segmentation: np.ndarray, void: np.ndarray | None = None,
                       tolerance: float = BOUNDARY_TOLERANCE) -> float:
    """Contour accuracy F: boundary precision and recall, each boundary pixel matched when the other boundary lies
    within ``ceil(tolerance * diagonal)`` pixels (a disk); void pixels removed from both masks first."""
    keep = ~void if void is not None else np.ones(annotation.shape, bool)
    radius = int(math.ceil(tolerance * math.hypot(*annotation.shape)))
    found, truth = _boundary(segmentation & keep), _boundary(annotation & keep)
    found_count, truth_count = int(found.sum()), int(truth.sum())
    if found_count == 0 or truth_count == 0:  # the toolkit's conventions for empty boundaries
        return 1.0 if found_count == truth_count else 0.0
    disk = _disk(radius)
    precision = (found & ndimage.binary_dilation(truth, disk)).sum() / found_count
    recall = (truth & ndimage.binary_dilation(found, disk)).sum() / truth_count
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def first_frame_objects(labels: np.ndarray) -> list[int]:
    """The object ids of a sequence's first annotation (neither background nor void)."""
    return [int(value) for value in np.unique(labels) if value not in (0, VOID_LABEL)]


def _track_sequence(model, sequence: VideoSequence, memory_size: int, **segment_kwargs) -> list[np.ndarray]:
    """Object-id maps of every frame: each object of a prompt annotation is followed from that frame on by its own
    tracker (prompted with its mask there; an object already followed is not prompted again); overlaps go to the
    highest score. On a prompt frame the given masks are the result (void as background), the objects followed
    before it predicted around them; before the first prompt, nothing."""
    threshold = default_threshold(model, segment_kwargs)  # refine=False: matching scores, not SAM 2's logits
    encode_kwargs = memory_kwargs(segment_kwargs)
    objects: list[int] = []
    trackers: list[PromptTracker] = []
    predictions = []
    prompt_frames = set(sequence.prompt_frames)
    binary = reads_binary(sequence)
    for index, path in enumerate(sequence.frames):
        given, new = None, []
        if index in prompt_frames:
            given = read_annotation(sequence.annotations[index], binary)
            new = [obj for obj in first_frame_objects(given) if obj not in objects]
        if not trackers and not new:  # nothing followed yet: no need to decode the frame
            predictions.append(np.zeros(_frame_size(path), np.uint8))
            continue
        frame = load_image(path)
        if given is not None and given.shape != (frame.height, frame.width):
            raise ValueError(f"{sequence.annotations[index]}: the annotation is {given.shape[1]}x{given.shape[0]}, "
                             f"the frame {frame.width}x{frame.height}")
        [encoding] = model.encode_frames([frame], **encode_kwargs)  # once for every object
        ids = np.zeros((frame.height, frame.width), np.uint8)
        if trackers:
            scores = np.stack([tracker.step(frame, encoding) for tracker in trackers])  # (objects, H, W)
            best = scores.argmax(0)
            found = np.take_along_axis(scores, best[None], 0)[0] > threshold
            ids = np.where(found, np.asarray(objects, np.uint8)[best], 0).astype(np.uint8)
        if new:
            ids = np.where(np.isin(given, new), given, ids).astype(np.uint8)
            for obj in new:
                memory = model.reference_memory([frame], [given == obj], encodings=[encoding], **encode_kwargs)
                trackers.append(PromptTracker(model, memory, threshold, memory_size, **segment_kwargs))
                objects.append(obj)
        predictions.append(ids)
    return predictions


def _frame_size(path: Path) -> tuple[int, int]:
    """(height, width) of a frame as it is read (EXIF orientation applied), from its header; an unreadable frame
    is an error naming it (from decoding it)."""
    size = stored_size(path)
    if size is None:
        image = load_image(path)  # raises ImageReadError naming the file
        size = (image.height, image.width)
    return size


def _save_results(folder: Path, sequence: VideoSequence, predicted: list[np.ndarray]) -> None:
    """The sequence in the DAVIS / YouTube-VOS results format: one palette PNG of object ids per frame, named as the
    frames, in the first annotation's palette."""
    with Image.open(sequence.annotations[min(sequence.annotations)]) as image:
        palette = image.getpalette() if image.mode == "P" else None
    for path, ids in zip(sequence.frames, predicted):
        result = Image.fromarray(ids, mode="P")
        result.putpalette(palette or [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0, 0, 0, 128])
        save_image_atomic(result, folder / f"{path.stem}.png")


def decay(per_frame: list[float]) -> float:
    """The toolkit's decay: the mean of the first of four equal bins of frames minus that of the last (bin edges
    ``round(linspace(1, n, 5)) - 1``, each bin including its upper edge)."""
    values = np.asarray(per_frame, dtype=float)
    edges = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(int)
    return float(np.mean(values[edges[0] : edges[1] + 1]) - np.mean(values[edges[3] : edges[4] + 1]))


def evaluate_tracking(model, root: str | Path, memory_size: int = 8, max_sequences: int | None = None,
                      progress: bool = True, save_dir: str | Path | None = None, unscored: list | None = None,
                      split: str | None = None, **segment_kwargs) -> tuple[dict[str, float], dict[str, float]]:
    """DAVIS-2017 semi-supervised scores of ``model`` (a visual-prompt model) tracking every first-frame object of
    each fully annotated sequence under ``root`` (those of ``split``'s list, ``val`` by default, when ``root`` has
    DAVIS's ``ImageSets``; see the module docstring). Returns (``{"J&F", "J_mean", "J_recall", "J_decay", "F_mean",
    "F_recall", "F_decay"}``, J&F per object named ``<sequence>_<id>``, as the toolkit names them; both
    empty when no sequence is fully annotated). ``save_dir``: also write the results as the evaluation servers take
    them, ``<save_dir>/<sequence>/<frame>.png`` (YouTube-VOS: ``<save_dir>/Annotations/<sequence>/...``).

    Sequences annotated on some frames only (each object's first appearance: YouTube-VOS validation, DAVIS
    test-dev) cannot be scored here: each object is followed from its first annotation on, the results are written
    (``save_dir`` is then required) and their names appended to ``unscored``."""
    sequences = davis_sequences(root, split)[:max_sequences]
    prompts_only = [sequence.name for sequence in sequences if not sequence.scored]
    if prompts_only and save_dir is None:
        raise ValueError(f"{', '.join(prompts_only[:3])}{' ...' if len(prompts_only) > 3 else ''}: annotated on some "
                         f"frames only (first appearances, as YouTube-VOS validation or DAVIS test-dev), so not "
                         f"scored here; write the results for the benchmark's server with --save-predictions")
    if save_dir is not None and is_youtube_vos(root):
        save_dir = Path(save_dir) / "Annotations"
    per_object: dict[str, tuple[float, ...]] = {}  # J mean, recall, decay; F mean, recall, decay
    for sequence in tqdm(sequences, desc="track", unit="sequence", disable=not progress):
        name = sequence.name
        if sequence.scored and len(sequence.frames) < 3:
            raise ValueError(f"{name}: {len(sequence.frames)} frame(s); the protocol scores frames between the first "
                             f"and last")
        predicted = _track_sequence(model, sequence, memory_size, **segment_kwargs)
        binary = reads_binary(sequence)
        truth = [read_annotation(sequence.annotations[index], binary) for index in range(len(sequence.frames))
                 ] if sequence.scored else []
        for labels, found, index in zip(truth, predicted, range(len(truth))):
            if labels.shape != found.shape:
                raise ValueError(f"{sequence.annotations[index]}: the annotation is {labels.shape[1]}x"
                                 f"{labels.shape[0]}, its frame {found.shape[1]}x{found.shape[0]}")
        if save_dir is not None:
            _save_results(Path(save_dir) / name, sequence, predicted)
        if not sequence.scored:
            if unscored is not None:
                unscored.append(name)
            continue
        scored = list(zip(truth[1:-1], predicted[1:-1]))  # the toolkit leaves out the first and last frames
        for obj in first_frame_objects(truth[0]):  # void counts as background: no void mask, as the toolkit
            j = [jaccard(gt == obj, pred == obj) for gt, pred in scored]
            f = [boundary_f_measure(gt == obj, pred == obj) for gt, pred in scored]
            per_object[f"{name}_{obj}"] = (float(np.mean(j)), float(np.mean(np.asarray(j) > 0.5)), decay(j),
                                           float(np.mean(f)), float(np.mean(np.asarray(f) > 0.5)), decay(f))
    if not per_object:
        if prompts_only:
            return {}, {}
        raise ValueError(f"{root}: no object in any first annotation")
    j_mean, j_recall, j_decay, f_mean, f_recall, f_decay = (float(np.mean(column))
                                                            for column in zip(*per_object.values()))
    scores = {"J&F": (j_mean + f_mean) / 2, "J_mean": j_mean, "J_recall": j_recall, "J_decay": j_decay,
              "F_mean": f_mean, "F_recall": f_recall, "F_decay": f_decay}
    return scores, {name: (values[0] + values[3]) / 2 for name, values in per_object.items()}
