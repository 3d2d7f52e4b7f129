"""Video prediction: frames in, mask / overlay / transparent cut-out videos out (dsunet_hf.video)."""

from __future__ import annotations

import json
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_SIZE, tiny_sam2_unet_config
from helpers import RedChannelModel
from PIL import Image

from dsunet_hf import Sam2UNetForImageSegmentation, SegmentationImageProcessor
from dsunet_hf.predict import collect_images, predict_files
from dsunet_hf.video import TemporalSmoothing, read_video

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

av = pytest.importorskip("av", reason="video prediction needs PyAV (the [video] extra)")

WIDTH, HEIGHT = 96, 64


def square_frame(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    frame = np.full((height, width, 3), (40, 90, 60), np.uint8)
    left = 4 + 5 * index
    frame[12:40, left:left + 24] = (230, 30, 30)  # a red square moving right
    return frame


def write_video(path: Path, frames: list[np.ndarray], *, codec: str = "libx264", pix_fmt: str = "yuv420p",
                rate: int = 25, pts: list[int] | None = None, rotation: int | None = None,
                faststart: bool = False) -> Path:
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        if codec == "libx264":
            stream.options = {"crf": "0"}
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if pts is not None:  # milliseconds
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[index], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def decoded(path: Path, image_format: str = "gray") -> tuple[list[np.ndarray], list[float]]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [f.to_ndarray(format=image_format) for f in frames], [float(f.pts * f.time_base) for f in frames]


def expected_probabilities(model, processor, frames: list[np.ndarray]) -> list[np.ndarray]:
    images = [Image.fromarray(frame) for frame in frames]
    inputs = processor(images)
    with torch.no_grad():
        logits = model(pixel_values=inputs["pixel_values"]).logits
    return [p.numpy() for p in processor.post_process_probabilities(logits, target_sizes=inputs["original_sizes"])]


@pytest.fixture
def processor():
    return SegmentationImageProcessor(size=64)


def test_masks_follow_every_frame_with_the_input_timestamps(tmp_path, processor):
    # Variable frame rate: 0, 40, 80, 200, 240, ... ms, which a constant-rate re-encode would lose.
    count = 11
    pts = [0, 40, 80] + [200 + 40 * i for i in range(count - 3)]
    clip = write_video(tmp_path / "clip.mp4", [square_frame(i) for i in range(count)], pts=pts)
    model = RedChannelModel()
    report = predict_files(model, processor, [clip], tmp_path / "out", batch_size=4, progress=False)
    assert report.written == [str(clip)] and not report.failed

    frames = [frame for frame, *_ in read_video(clip)]
    expected = expected_probabilities(model, processor, frames)
    masks, seconds = decoded(tmp_path / "out" / "masks" / "clip.mp4")
    assert len(masks) == count and masks[0].shape == (HEIGHT, WIDTH)
    assert seconds == pytest.approx([p / 1000 for p in pts], abs=1e-3)
    for mask, probability in zip(masks, expected):
        error = np.abs(mask / 255 - probability)
        assert error.mean() < 1.5 / 255 and error.max() < 12 / 255  # near-lossless H.264 (crf 4)
    # The frames really differ (the square moves), by far more than the codec error: a wrong order would fail.
    assert np.abs(expected[0] - expected[-1]).mean() > 0.1
    assert json.loads((tmp_path / "out" / "prediction_report.json").read_text())["written"] == [str(clip)]


def test_overlay_transparent_cutout_and_composite_videos(tmp_path, processor):
    clip = write_video(tmp_path / "clip.mkv", [square_frame(i) for i in range(6)], codec="ffv1", pix_fmt="bgr0")
    model = RedChannelModel()
    predict_files(model, processor, [clip], tmp_path / "out", overlay=True, cutout=True, cutout_colors="original",
                  threshold=0.5, background="#00b140", progress=False)
    frames = [frame for frame, *_ in read_video(clip)]
    assert np.array_equal(frames[2], square_frame(2))  # ffv1 is lossless: the model saw exactly these frames
    expected = [p >= 0.5 for p in expected_probabilities(model, processor, frames)]

    masks, _ = decoded(tmp_path / "out" / "masks" / "clip.mp4")
    for mask, binary in zip(masks, expected):
        assert np.mean((mask > 127) != binary) < 0.002  # binary masks survive H.264 (edges may blur by a pixel)
    cutouts, _ = decoded(tmp_path / "out" / "cutouts" / "clip.mov", "rgba")
    assert len(cutouts) == 6
    for cutout, frame, binary in zip(cutouts, frames, expected):
        assert np.array_equal(cutout[..., 3] > 127, binary)  # ProRes 4444 keeps the alpha exactly (12 bits)
        assert np.abs(cutout[..., :3].astype(int) - frame).mean() < 3  # "original" colours, ProRes 4:4:4
    composites, _ = decoded(tmp_path / "out" / "composites" / "clip.mp4", "rgb24")
    for composite, frame, binary in zip(composites, frames, expected):  # the square on green, the rest green
        assert np.abs(composite[binary].astype(int) - frame[binary]).mean() < 12  # H.264 4:2:0 at a sharp edge
        assert np.abs(composite[~binary].astype(int) - (0, 177, 64)).mean() < 6
    overlays, _ = decoded(tmp_path / "out" / "overlays" / "clip.mp4", "rgb24")
    assert overlays[3][20, 4 + 15 + 10, 0] > overlays[3][20, 4 + 15 + 10, 1]  # inside the square: tinted, red


def test_phone_rotation_is_applied_and_odd_sides_are_padded(tmp_path, processor):
    if not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("writing a rotated test video needs PyAV >= 18 (Stream.set_display_rotation)")
    frames = [square_frame(i, width=45, height=31) for i in range(3)]
    rotated = write_video(tmp_path / "portrait.mkv", frames, codec="ffv1", pix_fmt="bgr0", rotation=-90)
    read = [frame for frame, *_ in read_video(rotated)]
    assert np.array_equal(read[1], np.rot90(frames[1], -1))  # -90: shown turned 90 degrees clockwise
    predict_files(RedChannelModel(), processor, [rotated], tmp_path / "out", threshold=0.5, progress=False)
    masks, _ = decoded(tmp_path / "out" / "masks" / "portrait.mp4")
    assert masks[0].shape == (46, 32)  # 45 x 31 in display orientation, one replicated row and column
    square = np.rot90(np.all(frames[0] == (230, 30, 30), axis=-1), -1)
    assert np.mean((masks[0][:45, :31] > 127) == square) > 0.97
    assert np.array_equal(masks[0][45], masks[0][44]) and np.array_equal(masks[0][:, 31], masks[0][:, 30])


def test_native_resolution_runs_frames_at_their_own_aspect(tmp_path, processor):
    clip = write_video(tmp_path / "clip.mp4", [square_frame(i) for i in range(3)])
    model = RedChannelModel()
    predict_files(model, processor, [clip], tmp_path / "out", resolution="native", max_side=64, progress=False)
    assert model.input_sizes == {(32, 64)}  # 64 x 96 scaled to a longest side of 64, multiples of 32
    masks, _ = decoded(tmp_path / "out" / "masks" / "clip.mp4")
    assert masks[0].shape == (HEIGHT, WIDTH)


def test_crop_refine_zooms_in_on_every_frame_as_on_an_image(tmp_path, processor):
    from test_crop_refine import small_object_photo

    photo = np.asarray(small_object_photo(480, 360)[0])
    frames = [np.roll(photo, 8 * index, axis=1) for index in range(3)]  # the object moves right
    clip = write_video(tmp_path / "clip.mkv", frames, codec="ffv1", pix_fmt="bgr0")  # lossless: the frames exactly
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"frame{index}.png")
    model = RedChannelModel()
    predict_files(model, processor, [clip, *(tmp_path / f"frame{i}.png" for i in range(3))], tmp_path / "out",
                  crop_refine=True, crop_margin=0.75, progress=False)
    masks, _ = decoded(tmp_path / "out" / "masks" / "clip.mp4")
    for index, mask in enumerate(masks):
        image_path = np.asarray(Image.open(tmp_path / "out" / "masks" / f"frame{index}.png"), np.float32)
        error = np.abs(mask - image_path)
        assert error.mean() < 1 and error.max() < 20  # near-lossless H.264 (crf 4) of the same refined map
    assert model.calls == 2 * 2  # each batch (3 frames; 3 images): one whole pass, one pass on the 3 crops


def test_bad_video_is_reported_and_a_failure_leaves_no_partial_output(tmp_path, processor):
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video at all")
    write_video(folder / "good.mp4", [square_frame(i) for i in range(5)])
    Image.fromarray(square_frame(0)).save(folder / "still.png")

    report = predict_files(RedChannelModel(), processor, [folder], tmp_path / "out", overlay=True, progress=False)
    assert sorted(report.written) == sorted([str(folder / "good.mp4"), str(folder / "still.png")])
    assert list(report.failed) == [str(folder / "broken.mp4")]
    assert report.failed[str(folder / "broken.mp4")].startswith(f"{folder / 'broken.mp4'}: not a readable video")
    assert (tmp_path / "out" / "masks" / "still.png").exists() and (tmp_path / "out" / "overlays" / "good.mp4").exists()
    assert not (tmp_path / "out" / "masks" / "broken.mp4").exists()

    # A video cut short at a packet boundary decodes without an error: its declared frame count tells (it was
    # "written" with a third of its frames).
    whole = write_video(tmp_path / "whole.mp4", [square_frame(i) for i in range(30)], faststart=True).read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "cut.mp4").write_bytes(whole[: int(len(whole) * 0.8)])
    cut = predict_files(RedChannelModel(), processor, [tmp_path / "cut"], tmp_path / "cut-out", progress=False)
    assert not cut.written and "ends early" in cut.failed[str(tmp_path / "cut" / "cut.mp4")]
    assert not (tmp_path / "cut-out" / "masks" / "cut.mp4").exists()

    # A run that dies in the middle of a video (here: the model, at the second batch) leaves neither the video's
    # outputs nor temporary files; the next run does that video again and keeps the finished ones.
    with pytest.raises(RuntimeError, match="simulated"):
        predict_files(RedChannelModel(fail_after_batches=1), processor, [folder / "good.mp4"], tmp_path / "crash",
                      batch_size=2, overlay=True, progress=False)
    assert [p for p in (tmp_path / "crash").rglob("*") if p.is_file()] == []
    again = predict_files(RedChannelModel(), processor, [folder], tmp_path / "out", progress=False)
    assert sorted(again.skipped_existing) == sorted([str(folder / "good.mp4"), str(folder / "still.png")])


def test_multi_class_models_write_lossless_class_index_videos(tmp_path):
    from dsunet_hf import Dinov2ForSemanticSegmentation, Dinov2SegConfig
    from dsunet_hf.semantic import predict_classes

    config = Dinov2SegConfig(backbone_preset="small", dino_config=dict(hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4), crop_size=28, stride=14, id2label={0: "a", 1: "b", 2: "c"})
    model = Dinov2ForSemanticSegmentation(config).eval()
    clip = write_video(tmp_path / "clip.mkv", [square_frame(i, width=45, height=31) for i in range(4)], codec="ffv1",
                       pix_fmt="bgr0")
    report = predict_files(model, model.default_image_processor(), [clip], tmp_path / "out", overlay=True,
                           progress=False)
    assert report.written == [str(clip)], report.failed
    classes, _ = decoded(tmp_path / "out" / "masks" / "clip.mkv")
    assert len(classes) == 4 and classes[0].shape == (31, 45)  # FFV1: no padding, the frame's own size
    for frame, written in zip(read_video(clip), classes):  # exactly the image path's class indices (lossless)
        assert np.array_equal(written, predict_classes(model, Image.fromarray(frame[0])))
    overlays, _ = decoded(tmp_path / "out" / "overlays" / "clip.mp4", "rgb24")
    assert overlays[0].shape == (32, 45 + 160 + 1, 3)  # the frame + a legend at its height (padded to even sides)
    again = predict_files(model, model.default_image_processor(), [clip], tmp_path / "out", progress=False)
    assert again.skipped_existing == [str(clip)]  # a class-index video counts as the finished mask


def test_video_needs_pyav(tmp_path, processor, monkeypatch):
    clip = write_video(tmp_path / "clip.mp4", [square_frame(0)] * 2)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match=r"dsunet-hf\[video\]"):
        predict_files(RedChannelModel(), processor, [clip], tmp_path / "out", progress=False)


def test_command_line_video_with_a_real_model(tmp_path, capsys, hub_offline):
    """`dsunet-hf predict` on a clip (its main() in this process: a new interpreter cost about 6 s of imports)."""
    from dsunet_hf.cli import main

    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config()).eval()
    model.save_pretrained(tmp_path / "model", include_backbone=True)
    SegmentationImageProcessor(size=TINY_SIZE).save_pretrained(tmp_path / "model")
    clip = write_video(tmp_path / "clip.mp4", [square_frame(i) for i in range(5)])
    code = main(["predict", "--model", str(tmp_path / "model"), str(clip), "--output-dir", str(tmp_path / "out"),
                 "--cutout", "--num-workers", "0"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "1 written" in captured.out
    cutouts, _ = decoded(tmp_path / "out" / "cutouts" / "clip.mov", "rgba")
    masks, _ = decoded(tmp_path / "out" / "masks" / "clip.mp4")
    assert len(cutouts) == len(masks) == 5
    assert np.abs(cutouts[2][..., 3].astype(int) - masks[2]).mean() < 2  # the alpha is the mask
    assert oct((tmp_path / "out" / "masks" / "clip.mp4").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_video_with_sound(path: Path, frames: list[np.ndarray], audio_codec: str, seconds: float = 1.0,
                           start: float = 0.0, video_codec: str = "libx264", aspect: Fraction | None = None,
                           rotation: int | None = None) -> Path:
    """25 fps frames and a 440 Hz tone of ``seconds`` in ``audio_codec``, starting ``start`` seconds in; ``aspect``:
    the pixels' aspect ratio (anamorphic video), ``rotation``: the display rotation."""
    with av.open(str(path), "w") as container:
        video = container.add_stream(video_codec, rate=25)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        if aspect is not None:
            video.codec_context.sample_aspect_ratio = aspect
        if rotation is not None:
            video.set_display_rotation(rotation)
        audio = container.add_stream(audio_codec, rate=48000)
        audio.layout = "stereo"
        for array in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        tone = np.sin(np.arange(int(48000 * seconds)) / 48000 * 2 * np.pi * 440).astype(np.float32)
        for begin in range(0, len(tone), 960):
            frame = av.AudioFrame.from_ndarray(np.stack([tone[begin:begin + 960]] * 2), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48000, begin + round(start * 48000)
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode(None):
            container.mux(packet)
    return path


def audio_of(path: Path) -> tuple[str, float] | None:
    """(codec, seconds of decoded sound) of a file's first audio stream, None without one."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return stream.codec_context.name, samples / stream.codec_context.sample_rate


@pytest.mark.parametrize("suffix, audio_codec, expected_codec", [(".mp4", "aac", "aac"), (".mkv", "libopus", "aac")])
def test_sound_goes_into_the_viewable_outputs(tmp_path, processor, suffix, audio_codec, expected_codec):
    clip = write_video_with_sound(tmp_path / f"clip{suffix}", [square_frame(i) for i in range(25)], audio_codec)
    report = predict_files(RedChannelModel(), processor, [clip], tmp_path / "out", overlay=True, cutout=True,
                           background="white", progress=False)
    assert report.written == [str(clip)], report.failed
    assert audio_of(tmp_path / "out" / "masks" / "clip.mp4") is None  # a matte: no sound
    for output in ("overlays/clip.mp4", "cutouts/clip.mov", "composites/clip.mp4"):
        codec, seconds = audio_of(tmp_path / "out" / output)
        # AAC is copied; Opus (which MOV cannot hold) is re-encoded to AAC: the whole second of sound either way.
        assert codec == expected_codec and seconds == pytest.approx(1.0, abs=0.05), output
        frames, _ = decoded(tmp_path / "out" / output, "rgb24")
        assert len(frames) == 25
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".") or p.suffix == ".audio"]


@pytest.mark.parametrize("rotation, expected", [(None, Fraction(4, 3)), (-90, Fraction(3, 4))])
def test_anamorphic_video_keeps_its_pixel_aspect_ratio(tmp_path, processor, rotation, expected):
    # HDV / AVCHD (1440x1080 shown 16:9) and DVD store pixels wider than square: the outputs were tagged square, so
    # the mask was shown at another shape than the video it mattes (and the overlay squeezed). Turned a quarter
    # for display, the pixels are taller than wide.
    if rotation is not None and not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
        pytest.skip("writing a rotated test video needs PyAV >= 18 (Stream.set_display_rotation)")
    clip = write_video_with_sound(tmp_path / "hdv.mp4", [square_frame(i) for i in range(3)], "aac", seconds=0.1,
                                  aspect=Fraction(4, 3), rotation=rotation)
    report = predict_files(RedChannelModel(), processor, [clip], tmp_path / "out", overlay=True, cutout=True,
                           progress=False)
    assert report.written == [str(clip)], report.failed
    for output in ("masks/hdv.mp4", "overlays/hdv.mp4", "cutouts/hdv.mov"):  # the last two with the sound put in
        with av.open(str(tmp_path / "out" / output)) as container:
            assert container.streams.video[0].sample_aspect_ratio == expected, output


def test_a_trimmed_mp4_whose_edit_list_skips_its_first_frames_reads_whole(tmp_path):
    # A clip trimmed without re-encoding (ffmpeg -ss -c copy, QuickTime) keeps the frames before its start for
    # decoding, which FFmpeg then drops: the frame count it declares counts them, and the whole clip was refused as
    # "ends early: 30 of the 40 frames".
    source = write_video(tmp_path / "source.mp4", [square_frame(i % 12) for i in range(40)])
    trimmed = tmp_path / "trimmed.mp4"
    with av.open(str(source)) as reading, av.open(str(trimmed), "w") as writing:
        stream = writing.add_stream_from_template(reading.streams.video[0])
        shift = 10 * round(1 / (25 * reading.streams.video[0].time_base))  # 10 frames before the start
        for packet in reading.demux(reading.streams.video[0]):
            if packet.dts is not None:
                packet.pts, packet.dts, packet.stream = packet.pts - shift, packet.dts - shift, stream
                writing.mux(packet)
    with av.open(str(trimmed)) as container:
        assert container.streams.video[0].frames == 40
    frames = list(read_video(trimmed))
    assert len(frames) == 30 and np.array_equal(frames[0][0], read_video_frame(source, 10))


def read_video_frame(path: Path, index: int) -> np.ndarray:
    return list(read_video(path))[index][0]


def test_transport_program_and_3gpp_streams_are_read_as_videos(tmp_path, processor):
    # .ts / .mts (camcorders, recorders), .mpg (DVD, old cameras), .3gp (old phones): FFmpeg reads them, but they
    # were left out of folders and, named, read as images ("cannot identify image file").
    folder = tmp_path / "clips"
    folder.mkdir()
    frames = [square_frame(i) for i in range(6)]
    clips = [write_video_with_sound(folder / "cam.ts", frames, "mp2", seconds=0.3),
             write_video_with_sound(folder / "dvd.MPG", frames, "mp2", seconds=0.3, video_codec="mpeg2video"),
             write_video(folder / "phone.3gp", frames),
             write_video(folder / "bluray.m2ts", frames)]  # M2TS: 192-byte packets, a 4-byte prefix before each sync
    # TypeScript sources share .ts / .mts: text, not transport streams, so left out as any other non-media file (they
    # were "2 failed: not a readable video"), even with a "G" (the sync byte) 188 bytes apart.
    (folder / "app.ts").write_text(("G" + " " * 187) * 3 + "export const app = 1;\n")
    (folder / "lib.mts").write_text("import { app } from './app';\n")
    (folder / "short.ts").write_text(("G" + " " * 187) * 2 + "G = 1;\n")  # three "G"s 188 apart, 384 bytes
    report = predict_files(RedChannelModel(), processor, [folder], tmp_path / "out", overlay=True, progress=False)
    assert sorted(report.written) == sorted(map(str, clips)) and not report.failed
    for clip in clips:
        masks, seconds = decoded(tmp_path / "out" / "masks" / f"{clip.stem}.mp4")
        assert len(masks) == len(frames) and seconds == pytest.approx(decoded(clip)[1], abs=1e-3)
    assert audio_of(tmp_path / "out" / "overlays" / "cam.mp4")[0] == "aac"  # MP2 sound re-encoded, as it is not copied
    sources = tmp_path / "sources"  # a folder of TypeScript only: nothing to predict, said so
    sources.mkdir()
    (sources / "app.ts").write_text("export const app = 1;\n")
    with pytest.raises(FileNotFoundError, match=r"found 1 \.ts; \.ts / \.mts files that are no MPEG transport stream"):
        collect_images([sources])


def first_sound_time(path: Path) -> float:
    with av.open(str(path)) as container:
        frame = next(container.decode(audio=0))
        return float(frame.pts * frame.time_base)


@pytest.mark.parametrize("suffix, audio_codec, video_codec, start, expected_codec", [
    (".mkv", "libopus", "libx264", 0.4, "aac"),  # re-encoded: it kept its samples but started at 0
    (".avi", "pcm_s16le", "mpeg4", 0.0, "aac"),  # PCM in AVI names no channel layout: the AAC encoder refused it
    (".avi", "libmp3lame", "mpeg4", 0.0, "mp3float"),  # MP3 (decoded by "mp3float") is copied, not re-encoded
])
def test_sound_keeps_its_start_whatever_its_codec(tmp_path, processor, suffix, audio_codec, video_codec, start,
                                                  expected_codec):
    clip = write_video_with_sound(tmp_path / f"clip{suffix}", [square_frame(i) for i in range(25)], audio_codec,
                                  seconds=0.5, start=start, video_codec=video_codec)
    assert first_sound_time(clip) == pytest.approx(start, abs=0.03)  # (AVI holds no start time)
    predict_files(RedChannelModel(), processor, [clip], tmp_path / "out", overlay=True, progress=False)
    codec, seconds = audio_of(tmp_path / "out" / "overlays" / "clip.mp4")
    assert codec == expected_codec and seconds == pytest.approx(0.5, abs=0.05)
    assert first_sound_time(tmp_path / "out" / "overlays" / "clip.mp4") == pytest.approx(start, abs=0.03)


def test_a_sound_failure_keeps_the_pictures(tmp_path, processor, monkeypatch, caplog):
    from dsunet_hf import video

    def broken(*args):
        raise av.error.InvalidDataError(-1094995529, "simulated")

    monkeypatch.setattr(video, "add_audio", broken)
    clip = write_video_with_sound(tmp_path / "clip.mp4", [square_frame(i) for i in range(5)], "aac", seconds=0.2)
    with caplog.at_level("WARNING", logger="dsunet_hf.video"):
        report = predict_files(RedChannelModel(), processor, [clip], tmp_path / "out", overlay=True, progress=False)
    assert report.written == [str(clip)] and audio_of(tmp_path / "out" / "overlays" / "clip.mp4") is None
    assert "clip.mp4: the sound could not be put into overlays" in caplog.text


def test_a_run_killed_while_the_sound_goes_in_leaves_nothing_the_next_run_keeps(tmp_path):
    # The sound was muxed into "<temporary video>.audio", a name the next run's clean-up did not know: a run killed
    # then (SIGKILL, out of memory) left a hidden copy of the video in the output folder for ever.
    import heapq
    import shutil

    from dsunet_hf.files import STALE_TEMPORARY_SECONDS
    from dsunet_hf.predict import remove_leftover_temporaries
    from dsunet_hf.video import add_audio

    clip = write_video_with_sound(tmp_path / "clip.mp4", [square_frame(i) for i in range(5)], "aac", seconds=0.2)
    folder = tmp_path / "out" / "overlays"
    folder.mkdir(parents=True)
    pictures = shutil.copy(clip, folder / ".clip.mp4.abcd1234.tmp")  # named as predict_video names its temporaries
    merge = heapq.merge
    pid = os.fork()
    if pid == 0:  # the killed run: it ends at once, with no clean-up, while the packets are being muxed
        def killed(*iterables, **kwargs):
            for index, item in enumerate(merge(*iterables, **kwargs)):
                if index == 3:
                    os._exit(0)
                yield item

        heapq.merge = killed
        try:
            add_audio(Path(pictures), clip, "mp4")
        finally:
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == 0  # killed while muxing
    assert len(list(folder.iterdir())) == 2  # the pictures and the file the sound went into
    for path in folder.iterdir():
        os.utime(path, (time.time() - 2 * STALE_TEMPORARY_SECONDS,) * 2)
    remove_leftover_temporaries(tmp_path / "out")
    assert list(folder.iterdir()) == []


class FlickeringRedChannelModel(RedChannelModel):
    """RedChannelModel whose logits jitter from call to call (as a per-frame network's soft regions do)."""

    def __init__(self, jitter: float = 1.0):
        super().__init__()
        self.scale.data.fill_(1.0)  # soft maps (p ~0.12 background, ~0.9 square), which a jitter moves
        self.jitter, self.generator = jitter, torch.Generator().manual_seed(0)

    def forward(self, pixel_values):
        logits = super().forward(pixel_values).logits
        noise = torch.randn(logits.shape[0], 1, 1, 1, generator=self.generator) * self.jitter  # one shift per frame
        return type(super().forward(pixel_values))(logits=logits + noise)


def masks_of(tmp_path, name, frames, smoothing):
    clip = write_video(tmp_path / f"{name}.mkv", frames, codec="ffv1", pix_fmt="bgr0")
    report = predict_files(FlickeringRedChannelModel(), SegmentationImageProcessor(size=64), [clip],
                           tmp_path / f"out-{smoothing}", batch_size=4, progress=False, temporal_smoothing=smoothing)
    assert report.written == [str(clip)]
    return np.stack(decoded(tmp_path / f"out-{smoothing}" / "masks" / f"{name}.mp4")[0]).astype(float) / 255


def test_temporal_smoothing_steadies_still_regions_without_a_trail(tmp_path):
    # A still scene: the per-frame maps flicker; smoothing cuts the frame-to-frame change to about half or less.
    still = [square_frame(0)] * 12
    plain, smoothed = masks_of(tmp_path, "still", still, 0.0), masks_of(tmp_path, "still", still, 0.7)
    flicker = lambda masks: np.abs(np.diff(masks, axis=0)).mean()  # noqa: E731
    assert flicker(smoothed) < 0.5 * flicker(plain) and flicker(plain) > 0.01

    # A moving square: where it has just left, the map follows this frame (no trail of last frame's square).
    moving = [square_frame(i) for i in range(12)]
    plain, smoothed = masks_of(tmp_path, "moving", moving, 0.0), masks_of(tmp_path, "moving", moving, 0.7)
    for index in range(1, 12):
        left = 4 + 5 * index
        vacated = (slice(12, 40), slice(left - 5, left))  # the square's last-frame columns it no longer covers
        assert np.abs(smoothed[index][vacated] - plain[index][vacated]).max() < 0.05
    assert np.abs(smoothed - plain).max() > 0.02  # ... while the still background was smoothed


def test_temporal_smoothing_is_refused_where_it_has_no_meaning(tmp_path):
    with pytest.raises(ValueError, match=r"a \(5, 5\) map for a \(4, 4\) frame"):
        TemporalSmoothing(0.5)(np.zeros((4, 4, 3), np.uint8), np.zeros((3, 5, 5)))
    clip = write_video(tmp_path / "clip.mkv", [square_frame(0)] * 2, codec="ffv1", pix_fmt="bgr0")
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\), got 1.0"):
        predict_files(RedChannelModel(), SegmentationImageProcessor(size=64), [clip], tmp_path / "out",
                      temporal_smoothing=1.0)
    assert not (tmp_path / "out").exists()


def test_temporal_smoothing_of_class_videos_steadies_labels_where_the_picture_is_still(tmp_path):
    """A multi-class head whose class scores jitter from frame to frame (one shift per class and frame) on a still
    scene: the labels of pixels where two classes are close flip; smoothing the class probabilities before the argmax
    keeps most of them."""
    from dsunet_hf import Dinov2ForSemanticSegmentation, Dinov2SegConfig
    from dsunet_hf.semantic import predict_classes

    class FlickeringHead(Dinov2ForSemanticSegmentation):
        def forward(self, pixel_values, **kwargs):
            output = super().forward(pixel_values, **kwargs)
            noise = torch.randn(output.logits.shape[:2] + (1, 1), generator=self.generator) * 0.5
            return type(output)(logits=output.logits + noise)

    config = Dinov2SegConfig(backbone_preset="small", dino_config=dict(hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4), crop_size=28, stride=14, id2label={0: "a", 1: "b", 2: "c"})
    torch.manual_seed(0)
    model = FlickeringHead(config).eval()
    with torch.no_grad():
        model.decode_head.conv_seg.weight.normal_(0, 0.5)  # class scores that differ across the picture
    clip = write_video(tmp_path / "still.mkv", [square_frame(0, width=45, height=31)] * 10, codec="ffv1",
                       pix_fmt="bgr0")
    flips = {}
    for strength in (0.0, 0.8):
        model.generator = torch.Generator().manual_seed(0)
        report = predict_files(model, model.default_image_processor(), [clip], tmp_path / f"out-{strength}",
                               progress=False, temporal_smoothing=strength)
        assert report.written == [str(clip)], report.failed
        classes = np.stack(decoded(tmp_path / f"out-{strength}" / "masks" / "still.mkv")[0])
        flips[strength] = (np.diff(classes, axis=0) != 0).mean()
        if strength:  # the first frame has nothing before it: as the unsmoothed one
            model.generator = torch.Generator().manual_seed(0)
            assert np.array_equal(classes[0], predict_classes(model, Image.fromarray(square_frame(0, width=45,
                                                                                                   height=31))))
    assert flips[0.0] > 0.05 and flips[0.8] < 0.5 * flips[0.0]


def test_cover_art_is_not_taken_for_the_video(monkeypatch):
    """A file whose first video stream is an attached picture (cover art) is read from its real video stream."""
    from types import SimpleNamespace

    from dsunet_hf import video

    cover = SimpleNamespace(disposition=av.stream.Disposition.attached_pic)
    real = SimpleNamespace(disposition=av.stream.Disposition(0))
    class Streams(list):  # all the streams; .video: the video ones
        pass

    streams = Streams([cover, real])
    streams.video = [cover, real]
    container = SimpleNamespace(streams=streams, close=lambda: None)
    monkeypatch.setattr(av, "open", lambda path: container)
    assert video._open_video("song.mp4") == (container, real)
    container.streams.video = [cover]
    with pytest.raises(video.VideoReadError, match="song.mp4: has no video stream"):
        video._open_video("song.mp4")


class FullDiskContainer:
    """An output container whose every mux fails as on a full disk (the first one writes the header), counting
    the calls: after a failed mux PyAV segfaults muxing into the same container again."""

    def __init__(self, container):
        self.container, self.muxed = container, 0

    def add_stream(self, *args, **kwargs):
        return self.container.add_stream(*args, **kwargs)

    def mux(self, packet):
        self.muxed += 1
        if self.muxed == 1:
            time.sleep(0.3)  # the next frames are queued meanwhile, as when writing is slower than predicting
        raise av.error.OSError(28, "No space left on device", "cutouts/clip.mov")

    def close(self):
        self.container.close()


def test_a_failed_write_leaves_the_video_container_alone(tmp_path, processor, monkeypatch):
    from dsunet_hf import video

    containers = []
    original = video.VideoWriter.__init__

    def init(self, file, kind, rate, *args):
        original(self, file, kind, rate, *args)
        if kind == "cutouts":  # ProRes: one packet per frame, so the second frame already muxes (the last is held)
            self.container = FullDiskContainer(self.container)
            containers.append(self.container)

    monkeypatch.setattr(video.VideoWriter, "__init__", init)
    clip = write_video(tmp_path / "clip.mp4", [square_frame(i % 10) for i in range(24)])
    report = predict_files(RedChannelModel(), processor, [clip], tmp_path / "out", cutout=True, batch_size=4,
                           progress=False)
    assert list(report.failed) == [str(clip)] and "No space left on device" in report.failed[str(clip)]
    assert containers[0].muxed == 1  # neither the next frames nor the encoder's flush touched it again
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != "prediction_report.json"]

    # The writer itself refuses every later frame, and closes without flushing into the failed container.
    writer = video.VideoWriter(tmp_path / "alone.mov", "cutouts", Fraction(25))
    frame = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    writer.write(frame, 0, Fraction(1, 25))  # its packet is held until the next one (the last gets the end)
    with pytest.raises(OSError, match="No space left"):
        writer.write(frame, 1, Fraction(1, 25))
    with pytest.raises(OSError, match="not written after an earlier error"):
        writer.write(frame, 2, Fraction(1, 25))
    writer.close()
    assert containers[-1].muxed == 1


@pytest.mark.parametrize("error", [av.error.OSError(28, "No space left on device", "overlays/clip.mp4.audio"),
                                   av.error.OSError(122, "Disk quota exceeded", "overlays/clip.mp4.audio")])
def test_a_disk_error_while_the_sound_goes_in_fails_the_video(tmp_path, processor, monkeypatch, error):
    """Only a codec problem keeps a silent video: a full disk kept it as finished, and the re-run after freeing
    space called it "already present". The disk errors are PyAV's (av.error.OSError: FFmpegError and OSError at
    once), which the codec handler caught as well; a plain OSError never reached it."""
    assert isinstance(error, av.FFmpegError) and isinstance(error, OSError)
    from dsunet_hf import video

    def full_disk(*args):
        raise error

    monkeypatch.setattr(video, "add_audio", full_disk)
    clip = write_video_with_sound(tmp_path / "clip.mp4", [square_frame(i) for i in range(5)], "aac", seconds=0.2)
    report = predict_files(RedChannelModel(), processor, [clip], tmp_path / "out", overlay=True, progress=False)
    assert not report.written and error.strerror in report.failed[str(clip)]
    assert not (tmp_path / "out" / "overlays" / "clip.mp4").exists()
    assert not (tmp_path / "out" / "masks" / "clip.mp4").exists()
    monkeypatch.undo()
    again = predict_files(RedChannelModel(), processor, [clip], tmp_path / "out", overlay=True, progress=False)
    assert again.written == [str(clip)] and audio_of(tmp_path / "out" / "overlays" / "clip.mp4") is not None


@pytest.mark.parametrize("kind", ["overlays", "cutouts", "masks"])
def test_colour_outputs_are_bt709_limited_range_and_tagged_so(tmp_path, kind):
    # Players and browsers show an untagged HD video as BT.709: frames converted with another matrix, or untagged,
    # come out with shifted colours (a red of (200, 40, 40) showed as (212, 54, 36)).
    from dsunet_hf.video import OUTPUT_FORMATS, VideoWriter

    colour = np.array([200, 40, 40], np.uint8) if kind != "masks" else np.array([150], np.uint8)
    array = np.broadcast_to(colour, (32, 48, colour.size)).copy()
    if kind == "cutouts":
        array = np.dstack([array, np.full((32, 48), 255, np.uint8)])
    file = tmp_path / f"out.{OUTPUT_FORMATS[kind].extension}"
    writer = VideoWriter(file, kind, Fraction(25))
    for index in range(2):
        writer.write(array[..., 0] if kind == "masks" else array, index, Fraction(1, 25))
    writer.close()
    with av.open(str(file)) as container:
        context = container.streams.video[0].codec_context
        assert (context.colorspace, context.color_primaries, context.color_trc, context.color_range) == (1, 1, 1, 1)
        frame = next(container.decode(video=0))
    shown = frame.reformat(format="rgb24", src_colorspace="ITU709", src_color_range="MPEG").to_ndarray()
    expected = colour if kind != "masks" else colour.repeat(3)
    assert np.abs(shown[16, 24].astype(int) - expected).max() <= (1 if kind == "masks" else 3)


def test_a_cut_short_matroska_video_is_an_error_not_a_short_output(tmp_path, processor):
    # Matroska / WebM declare no frame count: a cut-short file decoded "whole" with the first half of its frames,
    # was written and then skipped by re-runs as done. Its video track's DURATION tag tells.
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(20)]  # noise: big packets
    whole = write_video(tmp_path / "whole.mkv", frames)
    assert len(list(read_video(whole))) == 20
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "cut.mkv").write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.7)])
    report = predict_files(RedChannelModel(), processor, [tmp_path / "cut"], tmp_path / "out", progress=False)
    assert not report.written and "ends early" in report.failed[str(tmp_path / "cut" / "cut.mkv")]
    assert not (tmp_path / "out" / "masks" / "cut.mp4").exists()


def test_a_matroska_video_whose_last_frame_is_held_reads_whole(tmp_path, processor):
    # The DURATION tag is the end of the last frame, not its start: a whole file whose last frame is shown for 3 s
    # (a held still, a slide show) was refused as cut short.
    path = tmp_path / "held.mkv"
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "gray"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for pts in (0, 40, 80):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16), pts, np.uint8), format="gray")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            for packet in [*stream.encode(frame), *(stream.encode(None) if pts == 80 else [])]:
                packet.duration = 3000 if packet.pts == 80 else 40
                container.mux(packet)
    with av.open(str(path)) as container:
        assert container.streams.video[0].metadata["DURATION"].startswith("00:00:03.08")
    assert [pts for _, pts, *_ in read_video(path)] == [0, 40, 80]
    # The outputs hold it as long (they ended 0.12 s in: the muxers gave it one frame of the rate).
    predict_files(RedChannelModel(), processor, [path], tmp_path / "out", cutout=True, progress=False)
    for output in ("masks/held.mp4", "cutouts/held.mov"):
        with av.open(str(tmp_path / "out" / output)) as container:
            assert container.duration / 1e6 == pytest.approx(3.08, abs=0.001), output


def test_a_held_last_frame_keeps_its_duration_through_h264_b_frames(tmp_path):
    # A slide show (a frame every 2 s, the last shown 5 s): ends at 63 s. H.264 reorders the frames (B-frames), so the
    # last packet is not the last frame shown: given the last frame's duration, the video ended 2 s early.
    from dsunet_hf.video import VideoWriter

    writer = VideoWriter(tmp_path / "slides.mp4", "overlays", Fraction(25))
    rows, columns = np.mgrid[0:64, 0:64]
    for index in range(30):  # smooth, slowly changing pictures: x264 codes B-frames for them
        picture = np.stack([(columns * 4 + index) % 256, rows * 4, np.full_like(rows, 128)], -1).astype(np.uint8)
        writer.write(picture, 2000 * index, Fraction(1, 1000), 5000 if index == 29 else 2000)
    writer.close()
    with av.open(str(tmp_path / "slides.mp4")) as container:
        packets = [packet for packet in container.demux(video=0) if packet.size]
        assert len(packets) == 30 and packets[-1].pts != max(packet.pts for packet in packets)  # reordered
        assert all(a.dts < b.dts for a, b in zip(packets, packets[1:]))
        assert container.duration / 1e6 == pytest.approx(63.0, abs=0.001)


def test_a_video_cut_after_its_header_is_said_to_be_damaged_naming_the_file(tmp_path):
    # A Matroska file cut inside its first frame opens and decodes nothing: it was "the video has no frames".
    whole = write_video(tmp_path / "whole.mkv", [square_frame(i) for i in range(5)], codec="ffv1", pix_fmt="bgr0")
    with av.open(str(whole)) as container:
        first = next(packet for packet in container.demux(container.streams.video[0]) if packet.size)
        cut_at = first.pos + first.size // 2
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole.read_bytes()[:cut_at])
    with pytest.raises(ValueError) as raised:
        list(read_video(cut))
    assert str(raised.value) == f"{cut}: no frame could be decoded (the video is damaged or cut short)"
    # A whole video of no frames (declaring none, holding none; an MP4 of an empty track opens with no stream) is said
    # to be empty, not damaged.
    for empty in (tmp_path / "empty.avi", tmp_path / "empty.mp4"):
        with av.open(str(empty), "w") as container:
            stream = container.add_stream("mpeg4", rate=25)
            stream.width, stream.height = WIDTH, HEIGHT
            container.start_encoding()
        with pytest.raises(ValueError) as raised:
            list(read_video(empty))
        assert str(raised.value) == f"{empty}: has no frames (an empty video): nothing to predict"
    # A file that does not open: one line naming the file once, and what it may be.
    (tmp_path / "header.mkv").write_bytes(whole.read_bytes()[:40])
    (tmp_path / "text.mp4").write_bytes(b"not a video")
    for path in (tmp_path / "header.mkv", tmp_path / "text.mp4"):
        with pytest.raises(ValueError) as raised:
            list(read_video(path))
        message = str(raised.value)
        assert message.startswith(f"{path}: not a readable video (") and message.endswith(
            ": damaged, cut short or not a video)")
        assert message.count(str(path)) == 1 and "\n" not in message
