#!/usr/bin/env bash
# Issue 8's GPU figures, one part per call so that each fits a 10-minute device command:
#
#   bash benchmarks/gpu_suite.sh sam2-unet        # inference, batch 1 and 32: authors (fp32, eager) vs ours;
#                                                 # artifact size and cold start to the first bf16 prediction
#   bash benchmarks/gpu_suite.sh sam2-unet-train  # adapter training, batch 12: steps/s and peak memory
#   bash benchmarks/gpu_suite.sh dsunet           # inference, batch 1 and 16
#   bash benchmarks/gpu_suite.sh dsunet-train     # adapter training, batch 12
#   bash benchmarks/gpu_suite.sh birefnet         # BiRefNet inference at 1024², ours fp32 vs ours fast; cut-out
#                                                 # colour estimation at 1 and 12 MP; LoRA merged vs unmerged
#   bash benchmarks/gpu_suite.sh video            # predict on a 1080p clip (BiRefNet_lite, bf16, cut-outs and
#                                                 # composites): pipelined vs one thread vs the model alone
#   bash benchmarks/gpu_suite.sh evaluate         # evaluate on 200 synthetic 1024² pairs (SAM2-UNet-L, bf16): the
#                                                 # metrics in this process vs in 8 worker processes
#   bash benchmarks/gpu_suite.sh tracking         # visual-prompt tracking (DINOv2-L head, bf16): frames/s with each
#                                                 # frame encoded once vs per use, 1 and 3 objects
#   bash benchmarks/gpu_suite.sh goals            # only the goals' figures, each once, most important first:
#                                                 # SAM2-UNet-L inference b32 (ratio, % of bf16 peak), adapter
#                                                 # training b12 (steps/s, memory with checkpointing), DSU-Net-L
#                                                 # inference b16; for a session with little device time. Its
#                                                 # training runs bf16 autocast without torch.compile, as
#                                                 # `dsunet-hf train --mixed-precision bf16` does by default (two
#                                                 # compiled training processes would take minutes of compiling);
#                                                 # TRAIN_FAST="--dtype bfloat16 --compile" compiles it too
#
# Needs .gpu/ from benchmarks/gpu_prepare.sh (the device call carries it). Ours runs as published by this
# package's fast paths (FAST, default: bf16 autocast + torch.compile + channels_last) and plain fp32; the
# authors' code as they publish it (fp32, no compile), in the same process. JSON files go to $OUT (the device
# tool's folder that comes back) or benchmarks/results/gpu. DEVICE, BATCHES, TRAIN_BATCH, WARMUP, REPEATS,
# STEPS, FAST and TRAIN_FAST override the defaults (e.g. DEVICE=cpu for a smoke run of this script).
set -euo pipefail
part=${1:?usage: gpu_suite.sh sam2-unet|sam2-unet-train|dsunet|dsunet-train|birefnet|video|evaluate|tracking|goals}
cd "$(dirname "$0")/.."
root=$(pwd)
case "$part" in  # the parts that time the authors' code: stop now, not after our first measurement
  sam2-unet | sam2-unet-train | dsunet | dsunet-train | goals)
    for checkout in SAM2-UNet SAM2DINO-Seg dinov2; do
      if [ ! -d ".gpu/$checkout" ]; then
        echo "gpu_suite.sh: no .gpu/$checkout: run benchmarks/gpu_prepare.sh first and carry .gpu with the call" >&2
        exit 2
      fi
    done ;;
esac
out=${OUT:-$root/benchmarks/results/gpu}
mkdir -p "$out"
device=${DEVICE:-cuda}
warmup=${WARMUP:-3}
repeats=${REPEATS:-10}
steps=${STEPS:-5}
read -r -a fast <<< "${FAST:---dtype bfloat16 --compile --channels-last}"

# The authors' code needs Meta's sam2 (+ hydra, iopath) and PyWavelets, ours transformers >= 5.18: installed
# from .gpu/packages into a private folder (first on PYTHONPATH), never into the machine's Python.
site=${TMPDIR:-/tmp}/gpu-suite-site
if [ -d .gpu/packages ] && [ ! -d "$site/sam2" ]; then
  SAM2_BUILD_CUDA=0 python3 -m pip install --quiet --no-index --no-deps --no-build-isolation --no-compile \
    --target "$site" .gpu/packages/* >&2
fi
export PYTHONPATH="$root/src:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, \
  torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" >&2

bench() {  # bench NAME SCRIPT ARGS...: one JSON file per measurement; a failure is reported, the rest go on
  local name=$1 script=$2 start=$SECONDS
  shift 2
  echo "== $name: $script $*" >&2
  if ! (cd "$root/benchmarks" && python3 "$script" --device "$device" "$@") > "$out/$name.json.tmp"; then
    echo "!! $name failed after $((SECONDS - start)) s" >&2
    rm -f "$out/$name.json.tmp"
    return 0
  fi
  mv "$out/$name.json.tmp" "$out/$name.json"
  echo "== $name: $((SECONDS - start)) s" >&2  # wall time, for sizing the next device call
}

sam2unet=(--reference "$root/.gpu/SAM2-UNet")
dsunet=(--reference "$root/.gpu/SAM2DINO-Seg" --reference-dinov2 "$root/.gpu/dinov2")
timing=(--warmup "$warmup" --repeats "$repeats")
fast_train=()  # training.py has no channels_last switch
for flag in "${fast[@]}"; do [ "$flag" = --channels-last ] || fast_train+=("$flag"); done
read -r -a goals_train <<< "${TRAIN_FAST:---dtype bfloat16}"
case "$part" in
  sam2-unet)
    for batch in ${BATCHES:-1 32}; do
      bench "sam2unet_infer_fp32_b$batch" inference.py --model sam2-unet --preset large --batch-size "$batch" \
        "${timing[@]}" "${sam2unet[@]}"
      bench "sam2unet_infer_fast_b$batch" inference.py --model sam2-unet --preset large --batch-size "$batch" \
        "${timing[@]}" "${fast[@]}" "${sam2unet[@]}"
    done
    bench sam2unet_artifact_cold_start artifact.py --model sam2-unet --preset large --dtype bfloat16 ;;
  dsunet)
    for batch in ${BATCHES:-1 16}; do
      bench "dsunet_infer_fp32_b$batch" inference.py --model dsunet --batch-size "$batch" "${timing[@]}" "${dsunet[@]}"
      bench "dsunet_infer_fast_b$batch" inference.py --model dsunet --batch-size "$batch" "${timing[@]}" \
        "${fast[@]}" "${dsunet[@]}"
    done ;;
  sam2-unet-train | dsunet-train)
    model=${part%-train}
    if [ "$model" = sam2-unet ]; then extra=(--preset large "${sam2unet[@]}"); else extra=("${dsunet[@]}"); fi
    batch=${TRAIN_BATCH:-12}
    bench "${model}_train_fp32_b$batch" training.py --model "$model" --batch-size "$batch" --strategies adapter \
      --checkpointing both --steps "$steps" "${extra[@]}"
    bench "${model}_train_fast_b$batch" training.py --model "$model" --batch-size "$batch" --strategies adapter \
      --checkpointing both --steps "$steps" "${fast_train[@]}" "${extra[@]}" ;;
  goals)
    # Each JSON file is written as soon as it is measured: a call stopped at its limit still returns the first.
    infer_batch=${INFER_BATCH:-32} dsunet_batch=${DSUNET_BATCH:-16} batch=${TRAIN_BATCH:-12}
    bench "sam2unet_infer_fast_b$infer_batch" inference.py --model sam2-unet --preset large \
      --batch-size "$infer_batch" "${timing[@]}" "${fast[@]}" "${sam2unet[@]}"
    bench "sam2-unet_train_bf16_b$batch" training.py --model sam2-unet --preset large --batch-size "$batch" \
      --strategies adapter --checkpointing both --steps "$steps" "${goals_train[@]}" "${sam2unet[@]}"
    bench "dsunet_infer_fast_b$dsunet_batch" inference.py --model dsunet --batch-size "$dsunet_batch" \
      "${timing[@]}" "${fast[@]}" "${dsunet[@]}" ;;
  birefnet)
    for batch in ${BATCHES:-1 8}; do
      bench "birefnet_infer_fp32_b$batch" inference.py --model birefnet --preset BiRefNet --batch-size "$batch" "${timing[@]}"
      bench "birefnet_infer_fast_b$batch" inference.py --model birefnet --preset BiRefNet --batch-size "$batch" \
        "${timing[@]}" "${fast[@]}"
    done
    bench birefnet_cutout_colours cutout.py --sizes 1024x1024 3000x4000 --repeats 5  # refine_foreground on GPU
    # A LoRA fine-tuned BiRefNet_lite (the default strategy) unmerged vs merged, in bf16 as predict runs it.
    bench birefnet_lite_lora_merge_bf16_b1 lora_merge.py --model birefnet --preset BiRefNet_lite --dtype bfloat16 \
      "${timing[@]}" ;;
  video)
    bench birefnet_lite_video_bf16 video.py --model birefnet --preset BiRefNet_lite --dtype bfloat16 --frames 96 \
      --width 1920 --height 1080 --batch-size 4 --outputs masks cutouts composites ;;
  evaluate)
    data=${TMPDIR:-/tmp}/synthetic-1024
    [ -d "$data" ] || python3 -c "from dsunet_hf.synthetic import make_camouflage_dataset as make; \
      make('$data', num_pairs=200, size=1024)"
    bench sam2unet_evaluate_bf16 evaluate.py --data "$data" --model sam2-unet --preset large --dtype bfloat16 \
      --batch-size 16 --metric-workers 0 8 ;;
  tracking)
    bench tracking_head_large_bf16 tracking.py --model visual-prompt --preset large --dtype bfloat16 \
      --objects 1 3 --frames 24 ;;
  *) echo "unknown part $part" >&2; exit 2 ;;
esac
ls -l "$out" >&2
