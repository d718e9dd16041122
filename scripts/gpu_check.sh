#!/usr/bin/env bash
# Does our training code run on this machine's GPU? Builds a tiny random chat model on the spot (no
# downloads), runs one critic step, one actor step (batched sampling), the log-prob engine and, on
# CUDA, bf16 autocast, and prints one JSON line (tokens/s, peak GPU memory) as the last line of stdout.
# Without CUDA it runs on CPU and names the parts it skipped. Needs torch, transformers, peft, accelerate.
#   scripts/gpu_check.sh [--hidden-size 512 --layers 8] [--keep DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m training.gpu_check "$@"
