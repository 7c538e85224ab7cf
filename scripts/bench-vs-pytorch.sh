#!/usr/bin/env bash
# quantnet's training step against PyTorch's on the same models, back to back on this machine:
# `quantnet bench train --json` (full precision and W2A2) and benches/peer/pytorch_train_step.py
# (full precision), then one markdown row per model with the ratios. Run by hand (it needs
# PyTorch: PYTHON=/path/to/venv/bin/python, after `pip install torch` in that venv).
#
#   PYTHON=venv/bin/python scripts/bench-vs-pytorch.sh [STEPS] [WARMUP]
set -euo pipefail
STEPS=${1:-10}
WARMUP=${2:-2}
PYTHON=${PYTHON:-python3}
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

# json_field LINE KEY: a number from one JSON line.
json_field() { grep -o "\"$2\": *[0-9.e+-]*" <<< "$1" | head -1 | sed 's/.*: *//'; }

echo "| model | batch | quantnet fp ms/step | PyTorch fp ms/step | quantnet / PyTorch | quantnet W2A2 ms/step | W2A2 / fp |"
echo "|---|---|---|---|---|---|---|"
for CASE in "lenet5 64" "resnet20 32"; do
  read -r MODEL BATCH <<< "$CASE"
  OURS=$($QUANTNET bench train --model "$MODEL" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --json)
  FP=$(json_field "$(sed -n 1p <<< "$OURS")" ms_per_step)
  Q=$(json_field "$(sed -n 2p <<< "$OURS")" ms_per_step)
  PEER=$("$PYTHON" "$(dirname "$0")/../benches/peer/pytorch_train_step.py" --model "$MODEL" \
    --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --threads "$(nproc)")
  PT=$(json_field "$PEER" ms_per_step)
  awk -v m="$MODEL" -v b="$BATCH" -v fp="$FP" -v pt="$PT" -v q="$Q" \
    'BEGIN {printf "| %s | %s | %.1f | %.1f | %.2f× | %.1f | %.2f× |\n", m, b, fp, pt, fp/pt, q, q/fp}'
done
