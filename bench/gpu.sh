#!/usr/bin/env bash
# Every benchmark on a CUDA machine, in under 5 minutes, with no preparation beyond `make setup`:
# loss (all sizes, CUDA allocator peak memory), input pipeline (per CPU core), and the full pretraining step
# at 224 px, whose table gives image pairs per second per GPU in fp32 and with channels_last + bf16.
# Usage: bench/gpu.sh [extra `python -m bench` arguments]; records go to $OUT (default runs/bench-gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [[ ! -x $PY ]]; then
  echo "bench/gpu.sh: $PY not found; run 'make setup' or set PY=/path/to/python" >&2
  exit 2
fi
"$PY" -c 'import sys, torch; torch.cuda.is_available() or sys.exit("bench/gpu.sh: torch sees no CUDA device (use python -m bench for CPU)")'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" -m bench --device cuda --max-pass-seconds 20 --reps 5 --out "${OUT:-runs/bench-gpu}" "$@"
