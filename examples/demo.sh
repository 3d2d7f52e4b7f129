#!/usr/bin/env bash
# One command on a fresh machine: install (torch 2.13 first: the CPU build where pip finds one locally),
# then run the demo on the built-in samples. A torch already installed in the project's range (2.5 to 2.14.1)
# is kept: pip would otherwise swap it (a CUDA build, say) for 2.13.0.
# Run from anywhere: the outputs go to the repository's outputs/demo/ (outputs/demo-visual-prompt/ with --task
# visual-prompt), and paths given to it (--data DIR, --output-dir DIR) are read from the folder it was started in.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if ! python -c 'import re, sys, torch
version = tuple(int(part) for part in re.findall(r"\d+", torch.__version__.split("+")[0])[:3])
sys.exit(not (2, 5) <= version <= (2, 14, 1))' 2>/dev/null; then
  python -m pip install --quiet "torch==2.13.0" 2>/dev/null || python -m pip install --quiet "torch>=2.5,<=2.14.1"
fi
python -m pip install --quiet -e "$repo[dev]"
# Each task's own default folder: the visual-prompt demo would otherwise start afresh in outputs/demo/ and delete the
# SAM2-UNet demo's model there. A --output-dir given to this script comes later and wins.
out="$repo/outputs/demo" previous=""
for arg in "$@"; do
  if [ "$arg" = --task=visual-prompt ] || { [ "$previous" = --task ] && [ "$arg" = visual-prompt ]; }; then
    out="$repo/outputs/demo-visual-prompt"
  fi
  previous=$arg
done
dsunet-hf demo --output-dir "$out" "$@"
