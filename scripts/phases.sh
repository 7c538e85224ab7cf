#!/usr/bin/env bash
# Training recipes of docs/accuracy.md ("Phases and clipping"): LeNet-5 on Fashion-MNIST, ternary
# weights and 2-bit activations, three quantized epochs in every variant, all fine-tuned from one
# full-precision run:
#   joint      W2A2 for 3 epochs (the default)
#   phases     W2 (float activations) 1 epoch -> activations only 1 epoch -> joint 1 epoch
#   clip-wq    joint, --clip 20 with the norm over ∂ℓ/∂ŵ (the official code's clipping)
#   clip-w     joint, --clip 20 with the norm over the latent weights' gradients
#
#   scripts/phases.sh [FP_EPOCHS] [OUT]
#
# Every number is read from the runs' summary.json files.
set -euo pipefail
FP_EPOCHS=${1:-3}
OUT=${2:-runs/phases}
QUANTNET=${QUANTNET:-cargo run -q -p quantnet-cli --}
mkdir -p "$OUT"
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
train() { # NAME FLAGS...
  local name=$1; shift
  [[ -f "$OUT/$name/summary.json" ]] || $QUANTNET train --dataset fashion-mnist "$@" \
      --out "$OUT/$name" > "$OUT/$name.log"
}
train fp --weights fp --acts 32 --epochs "$FP_EPOCHS"
train joint --from "$OUT/fp" --weights 2 --acts 2 --epochs 3
train p1 --from "$OUT/fp" --weights 2 --acts 32 --epochs 1
train p2 --from "$OUT/p1" --weights 2 --acts 2 --phase acts --epochs 1
train p3 --from "$OUT/p2" --weights 2 --acts 2 --epochs 1
train clip-wq --from "$OUT/fp" --weights 2 --acts 2 --epochs 3 --clip 20 --clip-in wq
train clip-w --from "$OUT/fp" --weights 2 --acts 2 --epochs 3 --clip 20 --clip-in w

echo "| recipe (3 quantized epochs) | test accuracy, hard (%) | soft (%) |"
echo "|---|---|---|"
echo "| full precision ($FP_EPOCHS epochs) | $(field "$OUT/fp" test_accuracy_hard) | – |"
echo "| joint W2A2 | $(field "$OUT/joint" test_accuracy_hard) | $(field "$OUT/joint" test_accuracy_soft) |"
for p in p1 p2 p3; do
  case $p in
    p1) what="phase 1: W2, float activations" ;;
    p2) what="phase 2: activations only (weights fixed)" ;;
    p3) what="phase 3: joint W2A2" ;;
  esac
  echo "| $what | $(field "$OUT/$p" test_accuracy_hard) | $(field "$OUT/$p" test_accuracy_soft) |"
done
echo "| joint W2A2, \`--clip 20 --clip-in wq\` | $(field "$OUT/clip-wq" test_accuracy_hard) | $(field "$OUT/clip-wq" test_accuracy_soft) |"
echo "| joint W2A2, \`--clip 20 --clip-in w\` | $(field "$OUT/clip-w" test_accuracy_hard) | $(field "$OUT/clip-w" test_accuracy_soft) |"
