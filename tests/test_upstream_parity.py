"""Parity against the authors' code (SAM2-UNet, DSU-Net and BiRefNet full models; the DAVIS toolkit), when checkouts are available.

Set ``SAM2UNET_UPSTREAM_DIR`` to a checkout of github.com/WZH0120/SAM2-UNet (its ``SAM2UNet.py`` is
imported from there at run time, never copied here) and install the ``[sam2]`` extra. The upstream model
is built with random weights, saved as the authors save checkpoints, converted, and compared.
Takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

UPSTREAM = os.environ.get("SAM2UNET_UPSTREAM_DIR")


@pytest.mark.slow
@pytest.mark.skipif(
    not UPSTREAM or not (Path(UPSTREAM) / "SAM2UNet.py").is_file(),
    reason="set SAM2UNET_UPSTREAM_DIR to a checkout of WZH0120/SAM2-UNet to run the full-model parity check",
)
def test_converted_upstream_model_matches_upstream_outputs(tmp_path):
    build_sam = pytest.importorskip("sam2.build_sam", reason="the [sam2] extra is not installed")
    sys.path.insert(0, UPSTREAM)
    try:
        import SAM2UNet as upstream
    finally:
        sys.path.remove(UPSTREAM)
    # The upstream builder defaults to CUDA; build on the CPU instead.
    upstream.build_sam2 = lambda config, checkpoint=None: build_sam.build_sam2(config, checkpoint, device="cpu")
    from dsunet_hf.convert.sam2_unet import convert_sam2_unet_checkpoint

    torch.manual_seed(0)
    reference = upstream.SAM2UNet()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.02)
        for name, buffer in reference.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    reference.eval()
    assert sum(p.numel() for p in reference.parameters()) == 216_529_891  # with the unused up4
    torch.save(reference.state_dict(), tmp_path / "SAM2UNet-test.pth")

    ours = convert_sam2_unet_checkpoint(tmp_path / "SAM2UNet-test.pth", tmp_path / "converted")
    x = torch.randn(1, 3, 352, 352)
    with torch.no_grad():
        expected = reference(x)
        output = ours(x, output_aux_logits=True)
    for theirs, mine in zip(expected, (output.logits, *output.aux_logits)):
        assert (theirs - mine).abs().max().item() <= 1e-5
    artifact = (tmp_path / "converted" / "model.safetensors").stat().st_size
    assert artifact / (tmp_path / "SAM2UNet-test.pth").stat().st_size <= 0.03


DSUNET_UPSTREAM = os.environ.get("DSUNET_UPSTREAM_DIR")


@pytest.mark.skipif(
    not DSUNET_UPSTREAM or not (Path(DSUNET_UPSTREAM) / "sam2dino_seg" / "fusion" / "sff.py").is_file(),
    reason="set DSUNET_UPSTREAM_DIR to a checkout of CheneyXuYiMin/SAM2DINO-Seg (needs PyWavelets and einops) "
           "to compare the DSU-Net blocks with the authors' code",
)
def test_dsunet_blocks_match_upstream(monkeypatch):
    import types

    pytest.importorskip("pywt", reason="the upstream WTConv needs PyWavelets")
    for unused in ("torchinfo", "torchsummary"):  # imported by the upstream files, never called
        monkeypatch.setitem(sys.modules, unused, types.SimpleNamespace(summary=None))
    monkeypatch.syspath_prepend(str(Path(DSUNET_UPSTREAM) / "sam2dino_seg"))
    from fusion.CGAFusion import CGAFusion as UpstreamCGAFusion
    from fusion.sff import SFF as UpstreamSFF
    from modules.wtconv import DepthwiseSeparableConvWithWTConv2d as UpstreamWTConv

    from dsunet_hf.modules.fusion import CGAFusion
    from dsunet_hf.modules.sff import SFF
    from dsunet_hf.modules.wtconv import DepthwiseSeparableWTConv

    torch.manual_seed(0)
    cases = [
        (UpstreamCGAFusion(64), CGAFusion(64, 8), (torch.randn(2, 64, 11, 11), torch.randn(2, 64, 11, 11))),
        (UpstreamWTConv(32, 48), DepthwiseSeparableWTConv(32, 48, 3), (torch.randn(2, 32, 11, 11),)),
        (UpstreamSFF(16), SFF(16), (torch.randn(2, 16, 11, 11), torch.randn(2, 16, 22, 22))),
    ]
    for theirs, ours, inputs in cases:
        with torch.no_grad():
            for parameter in theirs.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.05)
        ours.load_state_dict(theirs.state_dict(), strict=True)  # same key layout, Haar filters included
        with torch.no_grad():
            torch.testing.assert_close(ours.eval()(*inputs), theirs.eval()(*inputs), atol=1e-5, rtol=1e-5)


DINOV2_UPSTREAM = os.environ.get("DINOV2_UPSTREAM_DIR")


def _upstream_builders():
    """benchmarks/upstream.py, which imports the authors' checkouts at run time and leaves no trace."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import upstream  # imports the checkouts at run time, leaves no trace

        return upstream
    finally:
        sys.path.pop(0)


@pytest.mark.slow
@pytest.mark.skipif(
    not DSUNET_UPSTREAM or not DINOV2_UPSTREAM,
    reason="set DSUNET_UPSTREAM_DIR to a checkout of CheneyXuYiMin/SAM2DINO-Seg and DINOV2_UPSTREAM_DIR to one of "
           "facebookresearch/dinov2 (needs PyWavelets, einops and the [sam2] extra) to compare the full DSU-Net",
)
def test_dsunet_matches_the_authors_model():
    """The authors' DGSUNet (random weights) -> the documented key map -> ours: the same three outputs."""
    pytest.importorskip("pywt", reason="the upstream WTConv needs PyWavelets")
    pytest.importorskip("sam2", reason="the upstream DSU-Net builds its Hiera with Meta's sam2 package")
    from dsunet_hf import DSUNetConfig, DSUNetForImageSegmentation
    from dsunet_hf.convert.dsunet import convert_dsunet_state_dict

    torch.manual_seed(0)
    upstream = _upstream_builders().build_upstream_dsunet(DSUNET_UPSTREAM, DINOV2_UPSTREAM)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so every buffer matters
        for name, buffer in upstream.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    ours = DSUNetForImageSegmentation(DSUNetConfig()).eval()
    # strict: every tensor of ours comes from theirs (their Haar filters are parameters, ours buffers)
    ours.load_state_dict(convert_dsunet_state_dict(upstream.state_dict()), strict=True)
    sam_view, dino_view = torch.randn(1, 3, 352, 352), torch.randn(1, 3, 518, 518)
    with torch.no_grad():
        expected = upstream(dino_view, sam_view)
        mine = ours(sam_view, dino_pixel_values=dino_view, output_aux_logits=True)
    for theirs, got in zip(expected, [*mine.aux_logits, mine.logits]):
        assert theirs.shape == got.shape
        assert (theirs - got).abs().max().item() <= 1e-5  # 6.9e-7 measured (fp32, 2-core CPU)


BIREFNET_UPSTREAM = os.environ.get("BIREFNET_UPSTREAM_DIR")


@pytest.mark.skipif(not BIREFNET_UPSTREAM, reason="set BIREFNET_UPSTREAM_DIR to a checkout of ZhengPeng7/BiRefNet "
                                                   "(needs einops and kornia) to compare the full model")
@pytest.mark.parametrize("bb, size", [("swin_v1_t", (256, 256)), ("swin_v1_t", (224, 320)), ("pvt_v2_b0", (256, 256))])
def test_birefnet_matches_the_authors_model(bb, size):
    pytest.importorskip("einops", reason="the authors' BiRefNet imports einops")
    pytest.importorskip("kornia", reason="the authors' BiRefNet imports kornia")
    from dsunet_hf import BiRefNetForImageSegmentation
    from dsunet_hf.convert.birefnet import birefnet_config_for_weights, convert_birefnet_state_dict

    build_upstream_birefnet = _upstream_builders().build_upstream_birefnet
    torch.manual_seed(0)
    upstream = build_upstream_birefnet(BIREFNET_UPSTREAM, bb)
    with torch.no_grad():  # non-trivial offsets and BatchNorm statistics, so every tensor matters
        for name, parameter in upstream.named_parameters():
            if "offset_conv" in name or "modulator_conv" in name:
                parameter.normal_(0, 0.02)
        for name, buffer in upstream.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    state = upstream.state_dict()
    config = birefnet_config_for_weights(bb, state, None, finetune_strategy="full")
    ours = BiRefNetForImageSegmentation(config)
    ours.load_base_state_dict(convert_birefnet_state_dict(state, config), include_trainable=True)
    pixels = torch.randn(2, 3, *size)
    upstream.eval()
    ours.eval()
    with torch.no_grad():
        expected = upstream(pixels)[-1]
        assert (ours(pixels).logits - expected).abs().max() <= 1e-5
    # Training mode (dropout and drop-path off; BatchNorm on batch statistics): every auxiliary output.
    for module in list(upstream.modules()) + list(ours.modules()):
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    upstream.train()
    ours.train()
    upstream.bb.eval()
    ours.bb.eval()
    with torch.no_grad():
        (gradient_pred, gradient_label), outputs = upstream(pixels)[0]
        mine = ours(pixels)
    # BatchNorm on batch statistics amplifies the PVT backbone's ~4e-6 float differences: a looser bound there.
    tolerance = 1e-5 if bb.startswith("swin") else 1e-3
    pairs = list(zip(outputs, [*mine.aux_logits, mine.logits])) + list(zip(gradient_pred, mine.gradient_logits))
    pairs += list(zip(gradient_label, mine.gradient_targets))
    assert max((a - b).abs().max().item() for a, b in pairs) <= tolerance


@pytest.mark.skipif(not BIREFNET_UPSTREAM, reason="set BIREFNET_UPSTREAM_DIR to a checkout of ZhengPeng7/BiRefNet "
                                                   "(needs OpenCV) to compare the cut-out colour estimation")
def test_foreground_estimation_matches_the_authors_refine_foreground():
    pytest.importorskip("cv2", reason="the authors' CPU refine_foreground runs OpenCV")
    import numpy as np

    from dsunet_hf import estimate_foreground

    upstream_refine_foreground = _upstream_builders().upstream_refine_foreground
    theirs_estimator = upstream_refine_foreground(BIREFNET_UPSTREAM)
    rng = np.random.default_rng(0)
    for height, width in [(480, 640), (61, 47)]:  # the second is smaller than the 90-pixel box: mirrored again
        image = rng.random((height, width, 3)).astype(np.float32)
        yy, xx = np.mgrid[:height, :width]
        alpha = np.clip((min(height, width) / 3 - np.hypot(yy - height / 2, xx - width / 2)) / 20, 0, 1)
        alpha = alpha.astype(np.float32)
        theirs = theirs_estimator(image, alpha)
        ours = estimate_foreground(torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(alpha))
        assert np.abs(ours.permute(1, 2, 0).numpy() - theirs).max() <= 1e-5  # 0.0 measured at both sizes


@pytest.mark.skipif(not BIREFNET_UPSTREAM, reason="set BIREFNET_UPSTREAM_DIR to a checkout of ZhengPeng7/BiRefNet "
                                                   "(needs OpenCV) to compare the DIS metrics")
def test_dis_metrics_match_the_authors_evaluation_code():
    """HCE, mBA, BIoU (max / mean) and MSE against the authors' evaluation/metrics.py, per image and averaged."""
    pytest.importorskip("cv2", reason="the authors' evaluation code runs OpenCV")
    import numpy as np
    from skimage.morphology import skeletonize

    from dsunet_hf.metrics import SegmentationMetrics

    upstream_evaluation_metrics = _upstream_builders().upstream_evaluation_metrics
    theirs = upstream_evaluation_metrics(BIREFNET_UPSTREAM)
    hce, mba, biou, mse = theirs.HCEMeasure(), theirs.MBAMeasure(), theirs.BIoUMeasure(), theirs.MSEMeasure()
    ours = SegmentationMetrics(dis=True)
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate([(120, 160), (97, 131), (300, 220), (64, 64), (400, 300), (150, 150)]):
        yy, xx = np.mgrid[:height, :width]
        radius = min(height, width) * (0.2 + 0.04 * index)
        gt = ((np.hypot(yy - height / 2, xx - width / 2) < radius) & ((xx + index) % 23 > 3)).astype(np.uint8) * 255
        soft = np.roll(gt, index, axis=1).astype(np.float64) * 0.7 + rng.normal(40, 50, gt.shape)
        prediction = np.clip(soft, 0, 255).astype(np.uint8)
        prediction[::7, ::5] = 128  # exactly at the threshold
        ours.update(prediction, gt)
        hce.step(prediction, gt, skeletonize(gt > 128))
        mba.step(prediction, gt)
        biou.step(prediction, gt)
        mse.step(prediction, gt)
    got = ours.compute()
    curve = biou.get_results()["biou"]["curve"]
    assert got["HCE"] == hce.get_results()["hce"]
    assert got["mBA"] == pytest.approx(mba.get_results()["mba"], abs=1e-12)
    assert got["BIoU (max)"] == pytest.approx(curve.max(), abs=1e-12)
    assert got["BIoU (mean)"] == pytest.approx(curve.mean(), abs=1e-12)
    assert got["MSE"] == pytest.approx(mse.get_results()["mse"], abs=1e-12)


DAVIS_TOOLKIT = os.environ.get("DAVIS2017_EVALUATION_DIR")


@pytest.mark.skipif(not DAVIS_TOOLKIT, reason="set DAVIS2017_EVALUATION_DIR to a checkout of "
                                              "davisvideochallenge/davis2017-evaluation (needs OpenCV and "
                                              "scikit-image) to compare the J and F scores")
def test_tracking_scores_match_the_davis_toolkit(monkeypatch):
    """J (region IoU) and F (contour accuracy) against davis2017/metrics.py, with and without void pixels."""
    pytest.importorskip("cv2", reason="the toolkit's F dilates with OpenCV")
    pytest.importorskip("skimage", reason="the toolkit's F takes its disk from scikit-image")
    import numpy as np
    from scipy import ndimage

    from dsunet_hf.tracking_evaluation import boundary_f_measure, jaccard

    monkeypatch.setattr(np, "bool", bool, raising=False)  # the toolkit still spells it np.bool (NumPy < 1.24)
    monkeypatch.syspath_prepend(DAVIS_TOOLKIT)
    from davis2017.metrics import db_eval_boundary, db_eval_iou

    rng = np.random.default_rng(0)
    for trial in range(40):
        height, width = rng.integers(40, 300, 2)
        truth = ndimage.binary_opening(rng.random((height, width)) > rng.uniform(0.3, 0.7), iterations=2)
        found = ndimage.binary_dilation(truth, iterations=int(rng.integers(0, 4))) if trial % 3 else \
            rng.random((height, width)) > 0.6
        if trial % 7 == 0:
            found = np.zeros_like(truth)
        void = rng.random((height, width)) > 0.9 if trial % 2 else None
        assert jaccard(truth, found, void) == db_eval_iou(truth, found, void)
        assert boundary_f_measure(truth, found, void) == db_eval_boundary(truth, found, void)  # 0 differences measured


@pytest.mark.skipif(not DAVIS_TOOLKIT, reason="set DAVIS2017_EVALUATION_DIR to a checkout of "
                                              "davisvideochallenge/davis2017-evaluation (needs OpenCV and "
                                              "scikit-image) to compare whole DAVIS evaluations")
def test_tracking_evaluation_matches_the_davis_toolkits_evaluation(tmp_path, monkeypatch):
    """The toolkit's DAVISEvaluation (semi-supervised, set val) on the results evaluate_tracking writes: the same
    mean, recall and decay of J and F per object, with void pixels, two objects and a train sequence left out by
    ImageSets/2017/val.txt."""
    pytest.importorskip("cv2", reason="the toolkit's F dilates with OpenCV")
    pytest.importorskip("skimage", reason="the toolkit's F takes its disk from scikit-image")
    import numpy as np
    from PIL import Image

    from dsunet_hf.models.visual_prompt import VisualPromptMatcher
    from dsunet_hf.tracking_evaluation import evaluate_tracking

    sys.path.insert(0, str(Path(__file__).parent))
    from test_visual_prompt_matcher import ONE_HOT, RED, colour_image, region, tiny_config

    monkeypatch.setattr(np, "bool", bool, raising=False)  # the toolkit still spells it np.bool (NumPy < 1.24)
    monkeypatch.syspath_prepend(DAVIS_TOOLKIT)
    from davis2017.evaluation import DAVISEvaluation

    root = tmp_path / "DAVIS"
    green = (0, 255, 0)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (252 * 3) + [224, 224, 192]
    for name, frames in (("blocks", 9), ("other", 4)):
        images, annotations = root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name
        images.mkdir(parents=True)
        annotations.mkdir(parents=True)
        for t in range(frames):
            column = min(t, 5)  # the red block moves right by a patch per frame, then stops
            red, still = [(1, column, 3, column + 2)], [(5, 5, 7, 7)]
            Image.fromarray(colour_image({RED: red, green: still})).save(images / f"{t:05d}.jpg", quality=95)
            label = np.zeros(region(red).shape, np.uint8)
            annotated_still = still if t < 5 else [(5, 5, 6, 7)]  # later annotated half: J and F decay
            label[region(red)], label[region(annotated_still)] = 1, 2
            label[region([(1, column, 3, column + 1)])] = 255  # the red block's left column is void
            annotation = Image.fromarray(label, mode="P")
            annotation.putpalette(palette)
            annotation.save(annotations / f"{t:05d}.png")
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("blocks\n")
    matcher = VisualPromptMatcher(tiny_config()).eval()
    ours, per_object = evaluate_tracking(matcher, root, progress=False, feature_fn=ONE_HOT, memory_size=2,
                                         save_dir=tmp_path / "results")
    assert sorted(per_object) == ["blocks_1", "blocks_2"]  # "other" is not in val.txt
    theirs = DAVISEvaluation(str(root), "semi-supervised", "val").evaluate(str(tmp_path / "results"))
    for metric in ("J", "F"):
        for ours_key, their_key in (("mean", "M"), ("recall", "R"), ("decay", "D")):
            assert ours[f"{metric}_{ours_key}"] == pytest.approx(np.mean(theirs[metric][their_key]), abs=1e-12)
    for name, value in per_object.items():
        assert value == pytest.approx((theirs["J"]["M_per_object"][name] + theirs["F"]["M_per_object"][name]) / 2,
                                      abs=1e-12)
