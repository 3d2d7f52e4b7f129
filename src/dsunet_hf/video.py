"""Videos in, per-frame masks out: ``dsunet-hf predict clip.mp4`` (background removal, salient or camouflaged
objects in every frame).

Frames are decoded with PyAV (FFmpeg bindings, the ``[video]`` extra; transformers' video processors read videos
with it too) in a background thread, run through the model in batches exactly as images are, and encoded as they
come:

- ``masks/<name>.mp4``: the mask (soft, or binary with a threshold), H.264 at near-lossless quality (crf 4);
- ``overlays/<name>.mp4``: the frames with the foreground tinted, H.264;
- ``cutouts/<name>.mov``: the frames with the mask as alpha, ProRes 4444: the transparent-video format that
  video editors import (H.264 and VP9-in-MP4 have no alpha; FFmpeg's own VP9 decoder drops WebM's);
- ``composites/<name>.mp4``: the foreground on a new background (a colour or an image), H.264: plays anywhere;
- multi-class models: ``masks/<name>.mkv``, the class index of every pixel as its gray value, lossless (FFV1),
  and ``overlays/<name>.mp4`` in class colours with a legend.

Outputs keep the input's frame timestamps (variable frame rates included, the last frame's duration too), its pixel
aspect ratio (anamorphic video) and its display orientation (the rotation phones record is applied to the pixels). Each output is written under a temporary name and renamed
when the whole video is done, so an interrupted run leaves no half video and a re-run starts with the videos
that have no mask yet. The source's sound goes into the overlay, cut-out and composite videos (copied, or re-encoded
to AAC where the container cannot hold its codec); the mask video has none.

By default every frame is predicted as the same picture would be as an image. ``temporal_smoothing`` (``predict
--temporal-smoothing S``) instead carries part of the previous frame's map into still parts of the picture (see
:class:`TemporalSmoothing`): per-frame models flicker at soft edges and in low-contrast regions from frame to
frame, which shows in cut-out videos.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from .files import atomic_path

logger = logging.getLogger(__name__)

# What FFmpeg reads of what cameras, phones and recorders write: MPEG transport streams (.ts; AVCHD .mts / .m2ts), MPEG
# program streams (.mpg, .mpeg: DVD, old cameras), 3GPP (old phones). Their outputs are .mp4 / .mov / .mkv as any video's.
VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg", ".3gp"}


class VideoFormat(NamedTuple):
    extension: str
    container: str  # FFmpeg's muxer name
    codec: str
    pix_fmt: str
    options: dict


# The file format of each output kind: near-lossless H.264 for the masks (crf 4: soft masks come back within
# 5/255, mean 0.1/255), visually lossless H.264 for what people watch (crf 18), ProRes 4444 for alpha.
OUTPUT_FORMATS = {
    "masks": VideoFormat("mp4", "mp4", "libx264", "yuv420p", {"crf": "4"}),
    "overlays": VideoFormat("mp4", "mp4", "libx264", "yuv420p", {"crf": "18"}),
    "cutouts": VideoFormat("mov", "mov", "prores_ks", "yuva444p10le", {"profile": "4444"}),
    "composites": VideoFormat("mp4", "mp4", "libx264", "yuv420p", {"crf": "18"}),
    # Multi-class models: the class index of every pixel as its gray value, lossless (FFV1 in Matroska), so the
    # indices come back exactly, as from the palette PNGs of images.
    "classes": VideoFormat("mkv", "matroska", "ffv1", "gray", {}),
}
# FFmpeg's codes for BT.709 (matrix, primaries and transfer alike) and for the limited (TV, "MPEG") range.
BT709, LIMITED_RANGE = 1, 1
OUTPUT_FOLDERS = {"classes": "masks"}  # the folder of each kind's videos, where it is not the kind's name


class VideoReadError(ValueError):
    """A video that cannot be opened or decoded; the message names the file (and the frame)."""


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


# Suffixes that TypeScript source shares with transport streams (.ts, .mts; .m2ts is checked alike).
TRANSPORT_SUFFIXES = {".ts", ".mts", ".m2ts"}
SYNC_BYTE, SYNC_CHECKS = 0x47, 4


def looks_like_video(path: str | Path) -> bool:
    """Whether a file found in a folder is to be read as a video: a video suffix, and for ``.ts`` / ``.mts`` /
    ``.m2ts`` the sync byte of an MPEG transport stream (0x47) every 188 bytes (M2TS: every 192, after a 4-byte
    prefix) in its first packets, or at least binary data (a NUL byte: another container misnamed, which FFmpeg
    reads by its content), so that TypeScript sources (text) beside the clips are not videos that "failed". A file
    that cannot be read counts as a video (its error is reported when it is predicted)."""
    if not is_video(path):
        return False
    if Path(path).suffix.lower() not in TRANSPORT_SUFFIXES:
        return True
    try:
        with open(path, "rb") as file:
            head = file.read(192 * SYNC_CHECKS)
    except OSError:
        return True
    if b"\0" in head:
        return True
    for size in (188, 192):
        for start in range(size):  # a recording cut from a broadcast may begin inside a packet
            syncs = head[start::size][:SYNC_CHECKS]
            # all four: a few "G"s 188 bytes apart in a short text file are no sync (a real stream this short is
            # no video, and its first packets hold NUL bytes anyway)
            if len(syncs) == SYNC_CHECKS and all(byte == SYNC_BYTE for byte in syncs):
                return True
    return False


def video_output_path(output_dir: str | Path, kind: str, name: Path) -> Path:
    """Where a video's ``kind`` output (masks, classes, overlays, cutouts, composites) goes:
    ``<output_dir>/<folder>/<name>.<ext>``, the folder being the kind's name (``masks`` for ``classes``)."""
    # name + extension (not with_suffix: "clip.take1" would become "clip")
    return Path(output_dir) / OUTPUT_FOLDERS.get(kind, kind) / name.with_name(f"{name.name}.{OUTPUT_FORMATS[kind].extension}")


def import_av():
    try:
        import av
    except ImportError as error:
        raise ImportError("videos need PyAV: pip install 'dsunet-hf[video]' (or pip install av)") from error
    return av


def _open_video(path: str | Path):
    """(container, its first video stream), or a VideoReadError naming the file."""
    av = import_av()
    try:
        container = av.open(str(path))
    except av.FFmpegError as error:  # FFmpeg's reason without the file name it repeats
        reason = getattr(error, "strerror", None) or str(error)
        raise VideoReadError(f"{path}: not a readable video ({reason}: damaged, cut short or not a video)") from error
    # Cover art (an attached picture, as music videos and podcasts carry) is a one-frame video stream: not the video.
    cover = getattr(getattr(av.stream, "Disposition", None), "attached_pic", 0)
    streams = [stream for stream in container.streams.video if not (cover and stream.disposition & cover)]
    if not streams:
        # An MP4 or MOV whose tracks hold no sample (a recording stopped at once) opens with no stream at all.
        empty = len(container.streams) == 0
        container.close()
        raise VideoReadError(f"{path}: has no frames (an empty video): nothing to predict" if empty
                             else f"{path}: has no video stream")
    return container, streams[0]


def read_video(path: str | Path, durations: bool = False) -> Iterator[tuple]:
    """The frames of a video's first video stream as (RGB uint8 array in display orientation, pts, time base), and
    with ``durations`` each frame's duration in the time base as a fourth item (0 when unknown)."""
    av = import_av()
    container, stream = _open_video(path)
    with container:
        stream.thread_type = "AUTO"  # FFmpeg's frame and slice threads
        index, last_time = 0, None
        try:
            for frame in container.decode(stream):
                if frame.pts is not None and frame.time_base:  # the end of the frame: a held last frame is whole
                    last_time = float((frame.pts + max(getattr(frame, "duration", 0) or 0, 0)) * frame.time_base)
                rgb = frame.to_ndarray(format="rgb24")
                # The display matrix rotates counterclockwise by `rotation` degrees (phones record -90 for portrait).
                turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4  # older PyAV does not read it
                rotated = np.ascontiguousarray(np.rot90(rgb, turns))
                yield ((rotated, frame.pts, frame.time_base, max(getattr(frame, "duration", 0) or 0, 0)) if durations
                       else (rotated, frame.pts, frame.time_base))
                index += 1
        except av.FFmpegError as error:
            reason = getattr(error, "strerror", None) or str(error)  # without the file name FFmpeg repeats
            raise VideoReadError(f"{path}: decoding failed at frame {index} ({reason}: damaged or cut short)"
                                 ) from error
        if index == 0:
            # A whole video of no frames (a recording stopped at once) declares none and holds none; a header and no
            # whole frame is what a file cut short after its header leaves.
            declared = stream.frames or (stream.duration or 0) > 0 or _tagged_duration(stream)
            if not declared and not _holds_packets(path, stream.index):
                raise VideoReadError(f"{path}: has no frames (an empty video): nothing to predict")
            raise VideoReadError(f"{path}: no frame could be decoded (the video is damaged or cut short)")
        # A file cut short at a packet boundary decodes without an error (FFmpeg's threaded decoder swallows the
        # rest): the container's own frame count tells. Some containers count one frame more than they hold (AVI
        # with MP3 sound: 26 for 25), so a shortfall of one frame (or 1 %) is let through.
        # An MP4 / MOV whose edit list starts after its first stored frames (a clip trimmed without re-encoding:
        # ffmpeg -ss -c copy, QuickTime) counts them too, though FFmpeg decodes them only to drop them: they are
        # left out of the count then (the file read again only in that case).
        if stream.frames and stream.frames - index > max(1, stream.frames // 100):
            shown = stream.frames - _dropped_packets(path, stream.index)
            if shown - index > max(1, shown // 100):
                raise VideoReadError(f"{path}: ends early: {index} of the {shown} frames it declares could be "
                                     f"decoded (truncated or damaged)")
        # Matroska / WebM count no frames, but FFmpeg and mkvmerge tag each track with its duration (the end of its
        # last frame): a file cut short ends well before it. Gaps of up to 2 frames (or 1 %) are let through.
        declared = _tagged_duration(stream)
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        if not stream.frames and declared and last_time is not None and \
                declared - last_time > max(2 / rate, declared / 100):
            raise VideoReadError(f"{path}: ends early: its frames stop at {last_time:.2f} s of the {declared:.2f} s it "
                                 f"declares (truncated or damaged)")


def _holds_packets(path: str | Path, index: int) -> bool:
    """Whether stream ``index`` of ``path`` holds a packet with data (an unreadable file counts as holding some)."""
    av = import_av()
    try:
        with av.open(str(path)) as container:
            return any(packet.size for packet in container.demux(container.streams[index]))
    except av.FFmpegError:
        return True


def _dropped_packets(path: str | Path, index: int) -> int:
    """How many packets of stream ``index`` hold a frame that its edit list drops (decoded, not shown: those before
    a trimmed clip's start), counted as far as the file can be read (a file cut short still misses its end)."""
    av = import_av()
    dropped = 0
    with contextlib.suppress(av.FFmpegError):
        with av.open(str(path)) as container:
            for packet in container.demux(container.streams[index]):
                dropped += bool(packet.size and packet.is_discard)
    return dropped


def _tagged_duration(stream) -> float | None:
    """A track's ``DURATION`` tag (Matroska: ``HH:MM:SS.nnnnnnnnn``) in seconds, None when absent or unreadable."""
    # mkvmerge may name it per language (DURATION-eng)
    text = next((value for key, value in stream.metadata.items() if key.upper().split("-")[0] == "DURATION"), None)
    try:
        hours, minutes, seconds = str(text).split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def frame_rate(path: str | Path) -> Fraction:
    """The video's average frame rate (25 when the file does not say), the rate the outputs declare."""
    container, stream = _open_video(path)
    with container:
        return stream.average_rate or stream.guessed_rate or Fraction(25)


def pixel_aspect(path: str | Path) -> Fraction | None:
    """The sample (pixel) aspect ratio the outputs declare, None for square pixels: anamorphic video (HDV and AVCHD
    1440x1080 shown 16:9, DVD and DV 720x480) is stored narrower than it is shown, and a mask of its stored size
    tagged square would be shown at another shape than the input it mattes. Inverted where the frames are turned
    a quarter (read from the first frame's rotation)."""
    av = import_av()
    container, stream = _open_video(path)
    with container:
        aspect = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        if not aspect or aspect == 1:
            return None
        try:
            turns = round((getattr(next(container.decode(stream)), "rotation", 0) or 0) / 90)
        except (StopIteration, av.FFmpegError):  # no frame: read_video says what is wrong
            turns = 0
        return 1 / Fraction(aspect) if turns % 2 else Fraction(aspect)


class VideoWriter:
    """One output video, encoded frame by frame into ``file`` (a temporary path: see :func:`predict_video`).
    The stream is created at the first frame, when the size is known; odd sides get one replicated row or
    column for H.264 and ProRes (their 4:2:0 and 4:2:2 chroma need even sides). ``aspect``: the pixel aspect
    ratio declared (see :func:`pixel_aspect`), square when None."""

    def __init__(self, file: Path, kind: str, rate: Fraction, aspect: Fraction | None = None):
        av = import_av()
        _, container, self.codec, self.pix_fmt, self.options = OUTPUT_FORMATS[kind]
        self.file = file
        self.container = av.open(str(file), "w", format=container)
        self.rate, self.aspect, self.stream, self.last_pts, self.av = rate, aspect, None, None, av
        # The last frame's duration (in the time base, 0: unknown): the last packet is held back until the flush and
        # made to end where that frame ends, where the muxers end the video. The encoders drop frame durations, and
        # the muxers gave the last one a frame of the rate (a held last frame, a slide show's, ended the video
        # seconds early). With H.264's B-frames the last packet is not the last frame shown: it lasts until then.
        self.last_duration, self.held_packet = 0, None
        # The first error of an encode or mux: the container is not touched again (PyAV segfaults muxing into a
        # container whose header failed to write, e.g. on a full disk), only closed.
        self.failure: BaseException | None = None

    def write(self, array: np.ndarray, pts: int | None, time_base: Fraction | None, duration: int = 0) -> None:
        """Encode one frame shown at ``pts`` for ``duration`` (both in ``time_base``; 0: until the next frame)."""
        if self.failure is not None:
            raise OSError(f"{self.file}: not written after an earlier error ({self.failure})") from self.failure
        try:
            self._write(array, pts, time_base, duration)
        except BaseException as error:
            self.failure = error
            raise

    def _write(self, array: np.ndarray, pts: int | None, time_base: Fraction | None, duration: int) -> None:
        height, width = array.shape[:2]
        if (height % 2 or width % 2) and self.codec != "ffv1":  # FFV1 takes any size: class indices stay unpadded
            array = np.pad(array, ((0, height % 2), (0, width % 2)) + ((0, 0),) * (array.ndim - 2), mode="edge")
        if self.stream is None:
            self.stream = self.container.add_stream(self.codec, rate=self.rate)
            self.stream.width, self.stream.height = array.shape[1], array.shape[0]
            self.stream.pix_fmt, self.stream.options = self.pix_fmt, dict(self.options)
            if self.aspect:
                self.stream.codec_context.sample_aspect_ratio = self.aspect
            if self.codec != "ffv1":  # class indices are not colours
                # Tagged BT.709, limited range (what the frames are converted with, below): an untagged HD video is
                # shown as BT.709 by players and browsers, so PyAV's default BT.601 conversion shifted its colours.
                tags = {"colorspace": BT709, "color_range": LIMITED_RANGE, "color_primaries": BT709, "color_trc": BT709}
                for name, value in tags.items():
                    with contextlib.suppress(AttributeError):  # an older PyAV without the setter: the others still
                        setattr(self.stream.codec_context, name, value)
            self.time_base = time_base if pts is not None and time_base else Fraction(1) / self.rate
            # The encoder counts in the input's time base too: its default, 1/rate, would round timestamps of a
            # variable-rate video onto a grid (two frames on one tick, which the muxer refuses).
            self.stream.time_base = self.stream.codec_context.time_base = self.time_base
        if pts is None or time_base != self.time_base:
            pts = 0 if self.last_pts is None else self.last_pts + max(1, round(1 / (self.rate * self.time_base)))
            duration = 0
        if self.last_pts is not None and pts <= self.last_pts:  # repeated timestamps: encoders need them rising
            pts = self.last_pts + 1
        image_format = "gray" if array.ndim == 2 else {3: "rgb24", 4: "rgba"}[array.shape[2]]
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=image_format)
        if self.codec != "ffv1" and array.ndim == 3:  # grey (masks) has no colour matrix: the encoder converts it
            frame = frame.reformat(format=self.pix_fmt, dst_colorspace=BT709, dst_color_range=LIMITED_RANGE)
        frame.pts, frame.time_base, self.last_pts = pts, self.time_base, pts
        self.last_duration = duration
        self._mux(self.stream.encode(frame))

    def _mux(self, packets) -> None:
        for packet in packets:
            if self.held_packet is not None:
                self.container.mux(self.held_packet)
            self.held_packet = packet

    def close(self, flush: bool = True) -> None:
        """Flush the encoder (unless ``flush`` is False, or a write failed: then the file is abandoned) and close."""
        try:
            if flush and self.failure is None and self.stream is not None:
                try:
                    self._mux(self.stream.encode(None))
                    held = self.held_packet
                    if held is not None:
                        if self.last_duration > 0 and held.pts is not None:  # last_pts: the last frame shown
                            held.duration = self.last_pts + self.last_duration - held.pts
                        self.container.mux(held)
                except BaseException as error:
                    self.failure = error
                    raise
        finally:
            self.container.close()


# Audio codecs both MP4 and MOV hold, copied as they are; any other (Vorbis, Opus, PCM in MP4, ...) is re-encoded to AAC.
COPIED_AUDIO_CODECS = {"aac", "mp3", "alac", "ac3"}
AUDIO_OUTPUTS = ("overlays", "cutouts", "composites")  # a mask is a matte: no sound
# FFmpeg's default layout per channel count (av_channel_layout_default), for sources that name none.
DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


def add_audio(video_file: Path, source: str | Path, container_format: str) -> bool:
    """Put the first audio stream of ``source`` into ``video_file`` (written by :class:`VideoWriter`), in place:
    copied when the container holds its codec, else re-encoded to AAC. Packets go to the muxer in time order, so
    nothing piles up in its interleaving queue. Returns False (and leaves the file alone) when there is no audio."""
    import heapq

    av = import_av()
    with av.open(str(source)) as probe:
        if not probe.streams.audio:
            return False
    # Named as every temporary file of ours, so that one a killed run leaves is removed by the next run.
    with atomic_path(video_file) as temporary:
        with av.open(str(source)) as sound, av.open(str(video_file), format=container_format) as pictures, \
                av.open(str(temporary), "w", format=container_format) as output:
            audio_in, video_in = sound.streams.audio[0], pictures.streams.video[0]
            video_out = output.add_stream_from_template(video_in)
            if video_in.sample_aspect_ratio:  # MOV keeps it beside the stream (ProRes: not in the codec's parameters)
                video_out.codec_context.sample_aspect_ratio = video_in.sample_aspect_ratio
            # The codec's name, not its decoder's (MP3 decodes with "mp3float").
            codec = getattr(audio_in.codec_context.codec, "canonical_name", audio_in.codec_context.name)
            copy = codec in COPIED_AUDIO_CODECS
            if copy:
                audio_out = output.add_stream_from_template(audio_in)
                audio_packets = sound.demux(audio_in)
            else:
                audio_out = output.add_stream("aac", rate=audio_in.codec_context.sample_rate)
                layout = audio_in.codec_context.layout
                # A layout of unspecified order ("2 channels": PCM in AVI) does not open the AAC encoder.
                audio_out.layout = DEFAULT_LAYOUTS.get(layout.nb_channels, layout) if layout.name.endswith(
                    "channels") else layout

                def encoded():  # PyAV's encoder resamples to AAC's sample format by itself
                    samples = None
                    for frame in sound.decode(audio_in):
                        if samples is None:  # where the sound starts (a late track, a trimmed clip), in samples
                            samples = (0 if frame.pts is None
                                       else round(frame.pts * frame.time_base * frame.sample_rate))
                        # Timestamps counted in samples from there: the packets need them to be placed in time.
                        frame.pts, frame.time_base = samples, Fraction(1, frame.sample_rate)
                        samples += frame.samples
                        yield from audio_out.encode(frame)
                    yield from audio_out.encode(None)

                audio_packets = encoded()

            def timed(packets, stream, order):
                for index, packet in enumerate(packets):
                    if packet.dts is not None:  # demuxers end with an empty flush packet
                        yield float(packet.dts * packet.time_base), order, index, packet, stream

            for *_, packet, stream in heapq.merge(timed(pictures.demux(video_in), video_out, 0),
                                                  timed(audio_packets, audio_out, 1)):
                if stream is video_out or copy:
                    packet.stream = stream
                output.mux(packet)
    return True


def prefetch(items: Iterable, depth: int = 2) -> Iterator:
    """``items`` produced in a background thread, at most ``depth`` ahead (decoding and resizing overlap the
    model's forward pass; FFmpeg and Pillow release the GIL). An exception in the thread is raised here."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(("end", None))
        except BaseException as error:  # handed to the consumer
            buffer.put(("error", error))

    thread = threading.Thread(target=produce, name="video-reader", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = buffer.get()
            if kind == "error":
                raise value
            if kind == "end":
                return
            yield value
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue, then let it finish
            with contextlib.suppress(queue.Empty):
                buffer.get_nowait()
            thread.join(timeout=0.1)


class TemporalSmoothing:
    """Motion-gated exponential smoothing of foreground (or class) probabilities, one video's frames in order.

    Where the picture stays put, the map keeps ``strength`` of the previous frame's smoothed map (the rest from
    this frame's prediction), so frame-to-frame flicker averages out; the weight falls linearly to 0 as the pixel's
    change (the grey-level difference from the previous frame, averaged over a 5x5 window so codec noise does not
    count) reaches ``MOTION_LEVELS``: moving objects and scene cuts follow the current frame, with no trail.
    A frame of another size starts afresh. Not a learned temporal model (as video matting networks have): it
    steadies what stays still, and changes nothing where things move."""

    MOTION_LEVELS = 12.0  # grey levels (of 255) of change at which a pixel counts as moving
    WINDOW = 5

    def __init__(self, strength: float):
        if not 0 <= strength < 1:
            raise ValueError(f"temporal smoothing strength must be in [0, 1), got {strength}")
        self.strength = strength
        self._previous: tuple[np.ndarray, np.ndarray] | None = None  # (grey frame, smoothed map)

    def __call__(self, frame: np.ndarray, probability: np.ndarray) -> np.ndarray:
        """``frame``: (H, W, 3) uint8; ``probability``: (H, W) in [0, 1] for it, or (K, H, W) class probabilities
        (one weight per pixel for all classes); returns the smoothed map(s)."""
        from scipy.ndimage import uniform_filter

        grey = frame.astype(np.float32).mean(axis=2)
        smoothed = probability.astype(np.float32)
        if smoothed.shape[-2:] != grey.shape:
            raise ValueError(f"a {smoothed.shape[-2:]} map for a {grey.shape} frame: smoothing needs them equal")
        if self._previous is not None and self._previous[1].shape == smoothed.shape:  # else: another size, afresh
            previous_grey, previous_map = self._previous
            change = uniform_filter(np.abs(grey - previous_grey), size=self.WINDOW, mode="nearest")
            weight = self.strength * np.clip(1 - change / self.MOTION_LEVELS, 0, 1)
            smoothed = weight * previous_map + (1 - weight) * smoothed
        self._previous = (grey, smoothed)
        return smoothed


def _batches(frames: Iterator, batch_size: int) -> Iterator[list]:
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_video(
    path: str | Path,
    output_paths: dict[str, Path],
    prepare: Callable[[list[Image.Image]], Any],
    predict: Callable[[Any], list[np.ndarray]],
    render: Callable[[str, Image.Image, np.ndarray], np.ndarray] | None = None,
    *,
    batch_size: int = 4,
    on_frames: Callable[[int], None] = lambda count: None,
    temporal_smoothing: float = 0.0,
) -> None:
    """Predict every frame of ``path`` and write the outputs named in ``output_paths`` (kind -> final path: masks,
    classes, overlays, cutouts, composites). ``prepare(images)`` turns a batch of frames (PIL, all one size) into
    the model's inputs, in the reader thread (e.g. the image processor); ``predict(inputs)`` runs the model and
    returns one (H, W) result per frame at the frame's size; ``render(kind, frame, result)`` draws one output as a
    uint8 array (default: :func:`dsunet_hf.predict.render_output` with default options, for foreground
    probabilities). ``on_frames(n)`` is told of every finished batch. ``temporal_smoothing`` > 0 (foreground
    probabilities only) passes each frame's map through :class:`TemporalSmoothing` of that strength before it is
    rendered. Nothing is left at the final paths unless the whole video succeeded."""
    from .predict import BackgroundWriter, OutputOptions, render_output

    if render is None:
        def render(kind, image, probability):
            return render_output(kind, image, probability, OutputOptions())
    rate, aspect = frame_rate(path), pixel_aspect(path)
    smooth = TemporalSmoothing(temporal_smoothing) if temporal_smoothing else None  # checked before reading

    def prepared(batch):  # in the reader thread
        images = [Image.fromarray(frame) for frame, *_ in batch]
        return batch, images, prepare(images)

    succeeded = False
    with contextlib.ExitStack() as stack:
        files = {kind: stack.enter_context(atomic_path(final)) for kind, final in output_paths.items()}
        writers = {kind: VideoWriter(file, kind, rate, aspect) for kind, file in files.items()}

        def render_and_write(kind, image, result, pts, time_base, duration):
            writers[kind].write(render(kind, image, result), pts, time_base, duration)

        # One thread per output, so frames stay in order within a video while the outputs render and encode side by
        # side and the model runs the next batch (cut-out colours and ProRes encoding cost more than a forward pass).
        threads = {kind: BackgroundWriter(1, max_pending=2 * batch_size, on_done=lambda _: None) for kind in writers}
        # Closed explicitly: on an error the reader thread stops now, not when the traceback is collected.
        frames = read_video(path, durations=True)
        batches = stack.enter_context(contextlib.closing(prefetch(map(prepared, _batches(frames, batch_size)))))
        try:
            for batch, images, inputs in batches:
                for (frame, pts, time_base, duration), image, result in zip(batch, images, predict(inputs)):
                    if smooth is not None:
                        result = smooth(frame, result)
                    for kind, thread in threads.items():
                        thread.submit(render_and_write, kind, image, result, pts, time_base, duration)
                on_frames(len(batch))
            for thread in threads.values():
                thread.close()  # waits for the last frames; a failed render or write raises here
            succeeded = True
        finally:
            if not succeeded:
                for thread in threads.values():
                    with contextlib.suppress(Exception):  # the error that got us here is the one to report
                        thread.close()
            for writer in writers.values():
                writer.close(flush=succeeded)
        for kind, file in files.items():  # still under the temporary names: renamed when this block ends
            if kind not in AUDIO_OUTPUTS:
                continue
            try:
                if not add_audio(file, path, OUTPUT_FORMATS[kind].container):
                    break  # the source has no sound
            except import_av().FFmpegError as error:  # keep the finished pictures: a silent video, said so
                if isinstance(error, OSError):  # the disk (full, a quota, an I/O error), not the sound's codec: a
                    raise  # silent video kept as finished would be "already present" to the re-run that could fix it
                logger.warning("%s: the sound could not be put into %s (%s); written without it", path, kind, error)


def predict_video_into_report(report, path: Path, *args, **kwargs) -> None:
    """:func:`predict_video`, its outcome recorded in a :class:`dsunet_hf.predict.PredictionReport`: written, or
    failed with the reason (an unreadable video, an encoding or disk error), so that the other inputs go on."""
    av = import_av()
    try:
        predict_video(path, *args, **kwargs)
    except (VideoReadError, OSError, av.FFmpegError) as error:
        report.failed[str(path)] = str(error)
    else:
        report.written.append(str(path))
