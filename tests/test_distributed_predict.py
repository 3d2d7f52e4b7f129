"""predict_files under several processes (torchrun, gloo on CPU), through the Python API: one launch, several runs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_SIZE, tiny_sam2_unet_config
from helpers import write_photos_and_a_bad_file

from dsunet_hf import Sam2UNetForImageSegmentation, SegmentationImageProcessor

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (see conftest)

# Run by every process. The processes tell each other that a run is over through the group's store (with a short
# wait), not through a collective, so that one stuck in a broadcast shows as an error here, not as a hang.
WORKER = r'''
import datetime, json, os, sys, time
from pathlib import Path
from accelerate import PartialState
PartialState(cpu=True, timeout=datetime.timedelta(seconds=60))  # the singleton predict_files uses
import dsunet_hf.predict as P
from torch.distributed.distributed_c10d import _get_default_store

model_dir, images, out, results = map(Path, sys.argv[1:5])
rank = int(os.environ["RANK"])
model, processor = P.load_model_and_processor(str(model_dir))
done, writes, videos = {}, [], []
write_outputs, predict_video = P._write_binary_outputs, P.predict_video_into_report
P._write_binary_outputs = lambda item, *args: (writes.append(str(item["path"])), write_outputs(item, *args))[1]
P.predict_video_into_report = lambda report, path, *args, **kwargs: (videos.append(str(path)),
                                                                     predict_video(report, path, *args, **kwargs))[1]

def run(label, inputs):
    writes.clear(), videos.clear()
    start = time.monotonic()
    try:
        report = P.predict_files(model, processor, inputs, out, batch_size=2, num_workers=0, progress=False)
        done[label] = {"written": sorted(report.written), "skipped": sorted(report.skipped_existing),
                       "failed": sorted(report.failed)}
        if rank == 0:  # the merged report the main process wrote
            done[label]["on_disk"] = json.loads((out / "prediction_report.json").read_text())
    except Exception as error:
        done[label] = {"error": f"{type(error).__name__}: {error}"}
    done[label].update(seconds=time.monotonic() - start, writes=sorted(writes), videos=sorted(videos))
    results.joinpath(f"{rank}.json").write_text(json.dumps(done))
    store = _get_default_store()
    store.set(f"{label}/{rank}", "1")
    store.wait([f"{label}/{1 - rank}"], datetime.timedelta(seconds=15))

# 1. The main process fails while listing what is left to do (an unreadable output folder).
finished = P.is_finished
if rank == 0:
    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(out / "masks"))
    P.is_finished = unreadable
run("listing", [images])
P.is_finished = finished
# 1b. Listing the inputs fails on the main process only (a folder unreadable from its node): every process raises at
# once; the inputs are listed by the main process alone, so a listing failing on another process alone cannot be.
collect, listed = P.collect_images, []
def collect_or_fail(*args, **kwargs):
    listed.append(rank)
    if rank == 0:
        raise PermissionError(13, "Permission denied", str(images / "clips"))
    return collect(*args, **kwargs)
P.collect_images = collect_or_fail
run("inputs", [images])
P.collect_images = collect
done["inputs"]["listed"] = listed
# 2. Images, a bad file and videos; 3. a re-run after two outputs were lost (a killed run); 4. nothing left to do;
# 5. fewer inputs left than processes.
run("first", [images])
if rank == 0:  # (both processes are past the run: see run)
    (out / "masks" / "2.png").unlink()
    for video in (out / "masks" / "clips").glob("c1.*"):
        video.unlink()
run("resumed", [images])
run("nothing", [images / "0.png", images / "1.png"])
if rank == 0:
    (out / "masks" / "0.png").unlink()
run("one", [images / "0.png", images / "1.png"])
# 6. The main process cannot write the report (a folder in its place).
if rank == 0:
    (out / "prediction_report.json").unlink()
    (out / "prediction_report.json").mkdir()
run("report", [images / "0.png"])
'''


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="needs torch.distributed with gloo (two CPU processes)")
def test_two_processes_share_list_resume_and_fail_together(tmp_path):
    model = Sam2UNetForImageSegmentation(tiny_sam2_unet_config()).eval()
    model.save_pretrained(tmp_path / "model", include_backbone=True)
    SegmentationImageProcessor(size=TINY_SIZE).save_pretrained(tmp_path / "model")
    images = tmp_path / "images"
    png = write_photos_and_a_bad_file(images, 4)
    clips = []
    if importlib.util.find_spec("av"):  # in a folder sorted after the photos
        from test_video import square_frame, write_video

        (images / "clips").mkdir()
        clips = [str(write_video(images / "clips" / f"c{i}.mp4", [square_frame(j) for j in range(3)])) for i in range(2)]
    (tmp_path / "worker.py").write_text(WORKER)
    out, results = tmp_path / "out", tmp_path / "results"
    results.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(tmp_path / "worker.py"), str(tmp_path / "model"), str(images), str(out), str(results)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    log = result.stderr[-3000:]
    ranks = [json.loads((results / f"{rank}.json").read_text()) for rank in (0, 1)]

    # 1. Every process raises at once (not the others waiting in the broadcast for the group's timeout), the main
    # process its own error, the other one naming it and its cause.
    assert ranks[0]["listing"]["error"].startswith("PermissionError: [Errno 13] Permission denied"), ranks[0]
    assert ranks[1]["listing"]["error"].startswith(
        "OSError: process 0 of 2 failed (PermissionError: [Errno 13] Permission denied"), (ranks[1], log)
    assert ranks[1]["listing"]["seconds"] < 10
    assert ranks[0]["inputs"]["error"].startswith("PermissionError: [Errno 13] Permission denied"), ranks[0]["inputs"]
    assert ranks[1]["inputs"]["error"].startswith(
        "OSError: process 0 of 2 failed (PermissionError: [Errno 13] Permission denied"), (ranks[1]["inputs"], log)
    assert ranks[1]["inputs"]["seconds"] < 10 and ranks[1]["inputs"]["listed"] == []
    assert result.returncode == 0, log

    # 2. Each output written by one process; the videos shared out (not both to the process with the last photos);
    # the bad file reported once; the same merged report everywhere and on disk.
    first = [rank["first"] for rank in ranks]
    assert sorted(first[0]["writes"] + first[1]["writes"]) == png
    assert [len(part["videos"]) for part in first] == [len(clips) // 2] * 2
    assert first[0]["written"] == first[1]["written"] == sorted(png + clips)
    assert first[0]["failed"] == first[1]["failed"] == [str(images / "bad.png")]
    on_disk = ranks[0]["first"]["on_disk"]
    assert list(on_disk["failed"]) == [str(images / "bad.png")] and sorted(on_disk["written"]) == sorted(png + clips)

    # 3. Resumed: only what was lost is predicted again, the rest skipped, alike on every process.
    resumed = [rank["resumed"] for rank in ranks]
    assert resumed[0]["written"] == resumed[1]["written"] == sorted([png[2]] + clips[1:])
    assert resumed[0]["skipped"] == resumed[1]["skipped"] == sorted(png[:2] + png[3:] + clips[:1])
    assert sorted(resumed[0]["writes"] + resumed[1]["writes"]) == [png[2]]

    # 4. Nothing left, 5. one input left for two processes: no error, no process waiting.
    for rank in ranks:
        assert (rank["nothing"]["written"], rank["nothing"]["skipped"]) == ([], png[:2])
        assert (rank["one"]["written"], rank["one"]["skipped"]) == ([png[0]], [png[1]])
    assert sorted(ranks[0]["one"]["writes"] + ranks[1]["one"]["writes"]) == [png[0]]
    assert Path(out / "masks" / "0.png").exists()

    # 6. The report not written: every process raises (none returns as if it were, to go on without the main one).
    assert ranks[0]["report"]["error"].startswith("IsADirectoryError: [Errno 21] Is a directory"), ranks[0]["report"]
    assert ranks[1]["report"]["error"].startswith("OSError: process 0 of 2 failed (IsADirectoryError: "), ranks[1]
