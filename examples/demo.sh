#!/usr/bin/env bash
# One command on a fresh machine: install (torch 2.13 first: the CPU build where pip finds one locally),
# then run the demo on the built-in samples.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.13.0" 2>/dev/null || python -m pip install --quiet "torch>=2.5,<=2.14.1"
python -m pip install --quiet -e ".[dev]"
dsunet-hf demo --output-dir outputs/demo "$@"
