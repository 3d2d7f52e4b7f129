"""Build the authors' models from a checkout at run time (never copied into this repository), for the
``--reference`` benchmarks and the opt-in parity tests.

- SAM2-UNet: github.com/WZH0120/SAM2-UNet (needs Meta's ``sam2`` package, the ``[sam2]`` extra).
- DSU-Net: github.com/CheneyXuYiMin/SAM2DINO-Seg (needs PyWavelets, einops and the ``sam2`` package) with
  DINOv2 from a checkout of github.com/facebookresearch/dinov2 (``torch.hub.load(..., source="local")``, no
  download). Its plotting / preprocessing imports (matplotlib, torchvision, pytorch_wavelets, torchinfo)
  are never called on the model path and get stand-ins when they cannot be imported.
- BiRefNet: github.com/ZhengPeng7/BiRefNet (needs einops and kornia). Its global ``Config`` hard-codes the
  backbone; it is switched to the one asked for. Where torchvision / timm cannot be imported (torchvision
  wheels do not import next to torch 2.13 CPU), stand-ins provide the few names it imports; the deformable
  conv is then ours (checked against a from-definition reference in tests/test_deform_conv.py).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from pathlib import Path

import torch

BIREFNET_CHANNELS = {
    "swin_v1_t": [768, 384, 192, 96], "swin_v1_s": [768, 384, 192, 96], "swin_v1_b": [1024, 512, 256, 128],
    "swin_v1_l": [1536, 768, 384, 192], "pvt_v2_b0": [256, 160, 64, 32], "pvt_v2_b1": [512, 320, 128, 64],
    "pvt_v2_b2": [512, 320, 128, 64], "pvt_v2_b5": [512, 320, 128, 64],
}


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # torchvision fails with RuntimeError/ImportError next to a mismatched torch
        return False


def _birefnet_standins() -> dict[str, types.ModuleType]:
    modules = {}
    if not _importable("torchvision"):
        from dsunet_hf.modules.deform_conv import deform_conv2d_pytorch

        torchvision = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")
        ops.deform_conv2d = deform_conv2d_pytorch
        tv_models = types.ModuleType("torchvision.models")
        for name in ("vgg16", "vgg16_bn", "resnet50", "VGG16_Weights", "VGG16_BN_Weights", "ResNet50_Weights"):
            setattr(tv_models, name, None)
        torchvision.ops, torchvision.models = ops, tv_models
        modules.update({"torchvision": torchvision, "torchvision.ops": ops, "torchvision.models": tv_models})
    if not _importable("timm.layers"):
        timm = types.ModuleType("timm")
        layers = types.ModuleType("timm.layers")
        layers.DropPath = lambda p=0.0: torch.nn.Identity()  # eval-mode use only
        layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
        layers.trunc_normal_ = torch.nn.init.trunc_normal_
        timm.layers = layers
        modules.update({"timm": timm, "timm.layers": layers})
    dataset = types.ModuleType("dataset")  # the real one imports cv2 and the training pipeline
    dataset.class_labels_TR_sorted = []
    modules["dataset"] = dataset
    return modules


@contextlib.contextmanager
def _isolated_imports(checkout: str, standins: dict):
    """Import from ``checkout`` with stand-ins; afterwards sys.modules and sys.path are as before."""
    before = dict(sys.modules)
    sys.modules.update(standins)
    sys.path.insert(0, str(checkout))
    try:
        yield
    finally:
        sys.path.remove(str(checkout))
        for name in set(sys.modules) - set(before):
            del sys.modules[name]
        sys.modules.update({k: v for k, v in before.items() if sys.modules.get(k) is not v})


def build_upstream_birefnet(checkout: str, backbone: str = "swin_v1_l") -> torch.nn.Module:
    """The authors' ``BiRefNet(bb_pretrained=False)`` with ``backbone``, random weights, eval mode."""
    for name in ("einops", "kornia"):
        if not _importable(name):
            raise ImportError(f"the authors' BiRefNet needs {name}: pip install {name}")
    with _isolated_imports(checkout, _birefnet_standins()):
        config = importlib.import_module("config")
        original_init = config.Config.__init__

        def init_with_backbone(self):
            original_init(self)
            self.bb = backbone
            channels = BIREFNET_CHANNELS[backbone]
            self.lateral_channels_in_collection = [2 * c for c in channels] if self.mul_scl_ipt == "cat" else channels
            self.cxt = self.lateral_channels_in_collection[1:][::-1][-self.cxt_num:] if self.cxt_num else []

        config.Config.__init__ = init_with_backbone
        try:
            model = importlib.import_module("models.birefnet").BiRefNet(bb_pretrained=False)
        finally:
            config.Config.__init__ = original_init
    return model.eval()


def upstream_refine_foreground(checkout: str):
    """The authors' CPU cut-out colour estimator, ``FB_blur_fusion_foreground_estimator_cpu_2(image, alpha)``
    (HxWx3 and HxW float arrays in [0, 1]), from their ``image_proc.py`` (needs OpenCV; torchvision, which only
    its GPU branch uses, gets a stand-in when it cannot be imported)."""
    if not _importable("cv2"):
        raise ImportError("the authors' refine_foreground needs OpenCV: pip install opencv-python-headless")
    standins = {} if _importable("torchvision") else {"torchvision": types.SimpleNamespace(transforms=None)}
    with _isolated_imports(checkout, standins):
        return importlib.import_module("image_proc").FB_blur_fusion_foreground_estimator_cpu_2


def upstream_evaluation_metrics(checkout: str):
    """The authors' ``evaluation/metrics.py`` module (``HCEMeasure``, ``MBAMeasure``, ``BIoUMeasure``,
    ``MSEMeasure``, ... stepped on uint8 maps; needs OpenCV and scikit-image)."""
    if not _importable("cv2"):
        raise ImportError("the authors' evaluation code needs OpenCV: pip install opencv-python-headless")
    with _isolated_imports(checkout, {}):
        return importlib.import_module("evaluation.metrics")


def build_upstream_sam2_unet(checkout: str) -> torch.nn.Module:
    """The authors' ``SAM2UNet()`` (Hiera-L, random weights) built on the CPU, eval mode."""
    from sam2 import build_sam

    with _isolated_imports(checkout, {}):
        module = importlib.import_module("SAM2UNet")
        module.build_sam2 = lambda cfg, checkpoint=None: build_sam.build_sam2(cfg, checkpoint, device="cpu")
        model = module.SAM2UNet()
    return model.eval()


def _dsunet_standins() -> dict[str, types.ModuleType]:
    """Stand-ins for imports the authors' DSU-Net files make but never use on the model's forward path."""
    modules = {}

    def stub(name: str, **attributes) -> None:
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        modules[name] = module

    for name in ("torchinfo", "torchsummary"):
        stub(name, summary=None)
    if not _importable("matplotlib"):
        stub("matplotlib", rcParams={})
    if not _importable("pytorch_wavelets"):
        stub("pytorch_wavelets", DWTForward=None)  # used only by the unused Down_wt block
    stub("sam2dino_seg.self_transforms.preprocess_image", transforms_image=None)  # imports torchvision
    stub("visualize.features_vis", visualize_feature_maps_mean=None, visualize_feature_maps_pca=None,
         visualize_feature_maps_tsne=None)  # imports matplotlib, sklearn, torchvision
    return modules


def build_upstream_dsunet(checkout: str, dinov2_checkout: str, sam_config: str = "configs/sam2.1/sam2.1_hiera_l.yaml",
                          dino_model: str = "dinov2_vitl14") -> torch.nn.Module:
    """The authors' ``DGSUNet()`` (SAM 2.1 Hiera-L + DINOv2-L, random weights) built on the CPU, eval mode.

    DINOv2 comes from ``dinov2_checkout`` through torch.hub's local source with ``pretrained=False``; the
    SAM 2 trunk from Meta's installed ``sam2`` package (the checkout's own copy of it is not imported)."""
    # imported before the checkout joins sys.path, so the checkout's own sam2/ copy never shadows it
    from sam2 import build_sam

    for name in ("pywt", "einops"):
        if not _importable(name):
            raise ImportError(f"the authors' DSU-Net needs {name}: pip install {'PyWavelets' if name == 'pywt' else name}")
    hub_load = torch.hub.load

    def local_hub_load(repo, model, *args, pretrained=True, **kwargs):
        return hub_load(str(dinov2_checkout), model, *args, source="local", pretrained=False, **kwargs)

    package = str(Path(checkout) / "sam2dino_seg")
    with _isolated_imports(checkout, _dsunet_standins()):
        sys.path.insert(0, package)  # DGSUNet.py imports its siblings as top-level modules
        torch.hub.load = local_hub_load
        try:
            sam2hiera = importlib.import_module("backbone.sam2hiera")
            # random weights on the CPU: DGSUNet() falls back to a Windows checkpoint path and CUDA
            sam2hiera.build_sam2 = lambda cfg, checkpoint=None: build_sam.build_sam2(cfg, None, device="cpu")
            with contextlib.redirect_stdout(sys.stderr):  # its "No ... specified" prints; stdout carries JSON
                model = importlib.import_module("DGSUNet").DGSUNet(dino_model, "facebookresearch/dinov2", sam_config)
        finally:
            torch.hub.load = hub_load
            sys.path.remove(package)
    return model.eval()


# The file each checkout must hold, and the packages its model code imports.
REFERENCE_ENTRY = {"sam2-unet": "SAM2UNet.py", "dsunet": "sam2dino_seg/DGSUNet.py", "birefnet": "models/birefnet.py"}
REFERENCE_PACKAGES = {"sam2-unet": ["sam2"], "dsunet": ["sam2", "pywt", "einops"], "birefnet": ["einops", "kornia"]}


def check_reference(model_name: str, checkout: str, preset: str | None = None,
                    dinov2_checkout: str | None = None) -> None:
    """Stop with a one-line message when the authors' model cannot be built, before anything is measured (the
    benchmarks time ours first: a wrong path would otherwise show only after minutes, with ours' figures lost)."""
    if model_name not in REFERENCE_ENTRY:
        raise SystemExit(f"--reference is supported for birefnet, sam2-unet and dsunet, not {model_name}")
    if model_name in ("sam2-unet", "dsunet") and (preset or "large") != "large":
        raise SystemExit(f"the authors' {model_name} exists for Hiera-L only: use --preset large")
    entry = Path(checkout) / REFERENCE_ENTRY[model_name]
    if not entry.is_file():
        raise SystemExit(f"--reference {checkout}: no {REFERENCE_ENTRY[model_name]} there (not a checkout of the "
                         f"authors' {model_name} repository?)")
    if model_name == "dsunet":
        if not dinov2_checkout:
            raise SystemExit("the authors' DSU-Net loads DINOv2 through torch.hub: pass --reference-dinov2 "
                             "with a checkout of facebookresearch/dinov2")
        if not (Path(dinov2_checkout) / "hubconf.py").is_file():
            raise SystemExit(f"--reference-dinov2 {dinov2_checkout}: no hubconf.py there (not a dinov2 checkout?)")
    for name in REFERENCE_PACKAGES[model_name]:
        try:
            importlib.import_module(name)
        except Exception as error:  # e.g. sam2 present but its hydra missing: say which
            package = {"pywt": "PyWavelets"}.get(name, name)
            raise SystemExit(f"the authors' {model_name} needs {name} (pip install {package}), which does not "
                             f"import: {error}") from None


def build_reference(model_name: str, checkout: str, preset: str | None = None, dinov2_checkout: str | None = None,
                    backbone: str | None = None):
    """The authors' model for ``model_name`` and ``maps(model, inputs)``: its prediction maps, final map last,
    from our benchmark inputs (``pixel_values``, and ``dino_pixel_values`` for DSU-Net). ``backbone``
    (BiRefNet) replaces the variant's encoder."""
    check_reference(model_name, checkout, preset, dinov2_checkout)
    if model_name == "birefnet":
        from dsunet_hf.models.birefnet.configuration_birefnet import VARIANTS

        backbone = backbone or VARIANTS[preset or "BiRefNet"][0]["backbone"]
        return build_upstream_birefnet(checkout, backbone), lambda m, x: [m(x["pixel_values"])[-1]]
    if model_name == "sam2-unet":  # returns (final, side 1/16, side 1/8)
        return build_upstream_sam2_unet(checkout), lambda m, x: list(m(x["pixel_values"]))[::-1]
    # dsunet: DGSUNet(x_dino, x_sam) returns (side 1/16, side 1/8, final)
    return (build_upstream_dsunet(checkout, dinov2_checkout),
            lambda m, x: list(m(x["dino_pixel_values"], x["pixel_values"])))
