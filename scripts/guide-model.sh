#!/usr/bin/env bash
# The numbers examples/guide_model/README.md quotes: the guide model on full MNIST, full precision
# and hard-quantized (ternary weights, 2-bit activations), with the example's defaults, for each
# seed given (default 1 2 3), then mean ± sd. Each run's whole output is kept in OUT.
#
#   scripts/guide-model.sh [OUT] [SEED...]
#
# GUIDE_MODEL=path/to/guide_model runs a built example (default: cargo run --release).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
OUT=${1:-$(mktemp -d)}
shift || true
SEEDS=("${@:-1 2 3}")
[[ $# -eq 0 ]] && SEEDS=(1 2 3)
GUIDE_MODEL=${GUIDE_MODEL:-cargo run -q --release -p quantnet-examples --example guide_model --}
mkdir -p "$OUT"
echo "| seed | full precision (%) | hard-quantized (%) | difference (points) | wall time (s) |"
echo "|---|---|---|---|---|"
for S in "${SEEDS[@]}"; do
  start=$(date +%s)
  $GUIDE_MODEL --seed "$S" --out "$OUT/run-$S" > "$OUT/seed-$S.log"
  end=$(date +%s)
  fp=$(grep -o 'full precision: test accuracy [0-9.]*' "$OUT/seed-$S.log" | sed 's/.* //')
  hard=$(grep -o 'test accuracy (hard-quantized): [0-9.]*' "$OUT/seed-$S.log" | sed 's/.* //')
  echo "$fp" >> "$OUT/fp.txt"; echo "$hard" >> "$OUT/hard.txt"
  awk -v h="$hard" -v f="$fp" 'BEGIN { print h - f }' >> "$OUT/diff.txt"
  printf '| %s | %s | %s | %+.2f | %s |\n' "$S" "$fp" "$hard" "$(tail -1 "$OUT/diff.txt")" "$((end - start))"
done
echo "| mean ± sd | $(stats < "$OUT/fp.txt") | $(stats < "$OUT/hard.txt") | $(stats < "$OUT/diff.txt") | |"
