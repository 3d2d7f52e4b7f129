#!/usr/bin/env bash
# Prepare .gpu/ (git-ignored through .git/info/exclude) for benchmarks/gpu_suite.sh on a GPU machine that
# cannot reach the network: the authors' checkouts (their .py and .yaml files only; read at run time, never
# committed) and the packages their code needs beyond what such a machine has (it has torch, transformers,
# accelerate, timm and einops, per the device tool's KINDS.md): Meta's sam2 and its config stack as
# sdists/wheels, PyWavelets for DSU-Net, transformers 5.18 (ours needs >= 5.18) and PyAV for the video part.
# About 55 MB in all, under the 64 MiB a device call carries.
#
#   bash benchmarks/gpu_prepare.sh /path/to/SAM2-UNet /path/to/SAM2DINO-Seg /path/to/dinov2
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: $0 SAM2-UNET_CHECKOUT SAM2DINO-SEG_CHECKOUT DINOV2_CHECKOUT" >&2
  exit 2
fi
checkouts=("$(realpath -m "$1")" "$(realpath -m "$2")" "$(realpath -m "$3")")
entries=(SAM2UNet.py sam2dino_seg/DGSUNet.py hubconf.py)  # one file each checkout must have (order mistakes)
for i in 0 1 2; do
  if [ ! -f "${checkouts[$i]}/${entries[$i]}" ]; then
    echo "$0: argument $((i + 1)), ${checkouts[$i]}: no ${entries[$i]} there; usage: $0 SAM2-UNET SAM2DINO-SEG DINOV2" >&2
    exit 2
  fi
done
cd "$(dirname "$0")/.."
dest=.gpu
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
rm -rf "$dest" && mkdir -p "$dest/packages"
names=(SAM2-UNet SAM2DINO-Seg dinov2)
for i in 0 1 2; do
  mkdir -p "$dest/${names[$i]}"
  (cd "${checkouts[$i]}" && find . \( -name '*.py' -o -name '*.yaml' \) -not -path './.git/*' -print0 |
    tar --null -cf - -T -) | tar -xf - -C "$dest/${names[$i]}"
done
# sdists (no wheel published for these versions); built on the device with its own setuptools.
python -m pip download --quiet --no-deps -d "$dest/packages" "sam2==1.1.0" "antlr4-python3-runtime==4.9.3" "iopath==0.1.10"
python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dest/packages" \
  "hydra-core==1.3.2" "omegaconf==2.3.0" "PyWavelets==1.8.0"
# The device image's transformers (5.17) is below our minimum (5.18, pyproject.toml); 5.18 is pure Python and
# works with the image's huggingface_hub and tokenizers.
python -m pip download --quiet --no-deps -d "$dest/packages" "transformers==5.18.0"
# PyAV for the `video` part (FFmpeg with libx264 inside the wheel, ~35 MB: the largest item here).
python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d "$dest/packages" "av==18.1.0"
du -sh "$dest"
echo "now: run(command='bash benchmarks/gpu_suite.sh sam2-unet', carry=['.gpu']) and the other parts"
