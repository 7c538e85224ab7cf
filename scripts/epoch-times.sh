#!/usr/bin/env bash
# Wall time per epoch, side by side on each backend given (default: cpu and wgpu): LeNet-5 on
# Fashion-MNIST with ternary weights and 2-bit activations, the README main job's model, on the
# first N training images (default 10000), validation on all 10,000 test images included.
#
#   scripts/epoch-times.sh [N] [BACKEND...]
#
# Needs a quantnet built with the backends' features, e.g.
#   cargo build -p quantnet-cli --features wgpu && QUANTNET=target/debug/quantnet scripts/epoch-times.sh
set -euo pipefail
N=${1:-10000}
shift || true
BACKENDS=("${@:-cpu wgpu}")
[[ $# -eq 0 ]] && BACKENDS=(cpu wgpu)
QUANTNET=${QUANTNET:-cargo run -q -p quantnet-cli --features wgpu --}
OUT=$(mktemp -d)
echo "| backend | images | epoch 1 (s) | epoch 2 (s) | test accuracy, hard (%) |"
echo "|---|---|---|---|---|"
for B in "${BACKENDS[@]}"; do
  $QUANTNET train --backend "$B" --limit "$N" --pretrain-epochs 0 --epochs 2 --out "$OUT/$B" > "$OUT/$B.log"
  S=$(tr -d '\n ' < "$OUT/$B/summary.json" | grep -o '"seconds_per_epoch":\[[^]]*\]' | sed 's/.*\[//; s/\]//')
  A=$(grep -o '"test_accuracy_hard": [0-9.]*' "$OUT/$B/summary.json" | sed 's/.*: //')
  echo "| $B | $N | $(echo "$S" | cut -d, -f1 | xargs printf '%.1f') | $(echo "$S" | cut -d, -f2 | xargs printf '%.1f') | $A |"
done
rm -rf "$OUT"
