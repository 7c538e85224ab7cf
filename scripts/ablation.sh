#!/usr/bin/env bash
# The recipe ablation of docs/accuracy.md: LeNet-5 on Fashion-MNIST (full sets), one
# full-precision run, then ternary weights + 2-bit activations fine-tuned from it for EPOCHS
# epochs with the default recipe, the old (paper-literal) recipe, and the default recipe with one
# change switched off at a time.
#
#   scripts/ablation.sh [EPOCHS] [OUT] [SEEDS] [-- extra train flags]
#
# Every number is read from the runs' summary.json files; rows with several seeds give mean ± sd.
set -euo pipefail
EPOCHS=${1:-2}
OUT=${2:-runs/ablation}
SEEDS=${3:-42 43}
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
extra_flags 3 "$@"
mkdir -p "$OUT"

# name | flags (on top of the defaults)
ROWS=(
  "default recipe|"
  "paper-literal (old default)|--temperature linear:5,cap=2000 --act-temperature linear:10 --act-gradient exact --calibrate hard --act-range percentile --quant-lr-mult 1"
  "− anneal (linear:5 / linear:10 per epoch)|--temperature linear:5,cap=2000 --act-temperature linear:10"
  "− act gradient at T = 1 (exact)|--act-gradient exact"
  "− soft calibration (hard)|--calibrate hard"
  "− MSE range (99.9th percentile)|--act-range percentile"
  "− quantizer lr ×100 (×1)|--quant-lr-mult 1"
  "+ official weight gradient (default: exact)|--gradient official"
  "− weight quantizers' scales at ×100 (--quant-lr-group acts)|--quant-lr-group acts"
)

echo "| recipe | seeds | FP (%) | hard (%) | soft (%) | hard − FP |"
echo "|---|---|---|---|---|---|"
for ROW in "${ROWS[@]}"; do
  NAME=${ROW%%|*}; FLAGS=${ROW#*|}
  TAG=$(echo "$NAME" | tr -c 'a-zA-Z0-9\n' '-' | tr -s '-')
  HARD=(); SOFT=(); FPS=(); DIFF=()
  for SEED in $SEEDS; do
    FP="$OUT/fp-seed$SEED"
    [[ -f "$FP/summary.json" ]] || $QUANTNET train --weights fp --acts 32 --epochs 1 \
        --seed "$SEED" --out "$FP" "${EXTRA[@]}" > "$FP.log"
    RUN="$OUT/$TAG-seed$SEED"
    # shellcheck disable=SC2086
    [[ -f "$RUN/summary.json" ]] || $QUANTNET train --from "$FP" --epochs "$EPOCHS" \
        --seed "$SEED" --out "$RUN" $FLAGS "${EXTRA[@]}" > "$RUN.log"
    F=$(field "$FP" test_accuracy_hard); H=$(field "$RUN" test_accuracy_hard)
    FPS+=("$F"); HARD+=("$H"); SOFT+=("$(field "$RUN" test_accuracy_soft)")
    DIFF+=("$(awk -v h="$H" -v f="$F" 'BEGIN {print h - f}')")
  done
  echo "| $NAME | $SEEDS | $(printf '%s\n' "${FPS[@]}" | stats) | $(printf '%s\n' "${HARD[@]}" | stats) | $(printf '%s\n' "${SOFT[@]}" | stats) | $(printf '%s\n' "${DIFF[@]}" | stats) |"
done
