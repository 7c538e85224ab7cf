#!/usr/bin/env bash
# Accuracy table of docs/accuracy.md: LeNet-5 on Fashion-MNIST and MNIST (full sets from the data
# folder), a full-precision run of FP_EPOCHS epochs, then W1, W2, W3(±4), W2A2 and W1A2
# fine-tuned from it for EPOCHS epochs with the default recipe; then the fully quantized
# (--quantize-all) FC nets TFC and SFC on MNIST at W1A1, W1A2 and W2A2, each from its own
# full-precision run.
#
#   scripts/accuracy-table.sh [FP_EPOCHS] [EPOCHS] [OUT] [-- extra train flags, e.g. --backend wgpu]
#
# Every number in the table is read from the runs' summary.json files; the full-precision
# reference is printed beside every quantized row.
set -euo pipefail
FP_EPOCHS=${1:-10}
EPOCHS=${2:-3}
OUT=${3:-runs/accuracy-table}
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
extra_flags 3 "$@"
mkdir -p "$OUT"
per_epoch() {
  tr -d '\n ' < "$1/summary.json" | grep -o '"seconds_per_epoch":\[[^]]*\]' |
    sed 's/.*\[//; s/\]//' | awk -F, '{s=0; for(i=1;i<=NF;i++) s+=$i; printf "%.1f", s/NF}'
}
row() { # model dataset weights acts fp-run run
  local F H S
  F=$(field "$5" test_accuracy_hard); H=$(field "$6" test_accuracy_hard)
  S=$(field "$6" test_accuracy_soft)
  echo "| $1 | $2 | $3 | $4 | $F | $H | $S | $(awk -v h="$H" -v f="$F" 'BEGIN {printf "%+.2f", h - f}') | $(awk -v h="$H" -v s="$S" 'BEGIN {printf "%.2f", s - h}') | $(per_epoch "$6") |"
}

echo "| model | data set | weights | acts | FP (%) | hard (%) | soft (%) | hard − FP | soft − hard | s/epoch |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for DATASET in fashion-mnist mnist; do
  FP="$OUT/$DATASET-fp"
  [[ -f "$FP/summary.json" ]] || $QUANTNET train --dataset "$DATASET" --weights fp --acts 32 \
      --epochs "$FP_EPOCHS" --out "$FP" "${EXTRA[@]}" > "$OUT/$DATASET-fp.log"
  # The last spec: the official weight-gradient rule against the default exact one.
  for SPEC in "1 32" "2 32" "3pm4 32" "2 2" "1 2" "2 2 --gradient official"; do
    set -- $SPEC
    W=$1; A=$2; shift 2; FLAGS=("$@")
    TAG=$(echo "${FLAGS[*]:-}" | tr -c 'a-zA-Z0-9\n' '-' | tr -s '-')
    RUN="$OUT/$DATASET-w$W-a$A$TAG"
    [[ -f "$RUN/summary.json" ]] || $QUANTNET train --dataset "$DATASET" --from "$FP" \
        --weights "$W" --acts "$A" --epochs "$EPOCHS" --out "$RUN" "${FLAGS[@]}" "${EXTRA[@]}" \
        > "$RUN.log"
    row "lenet5${FLAGS[*]:+ (${FLAGS[*]})}" "$DATASET" "$W" "$A" "$FP" "$RUN"
  done
done
for MODEL in tfc sfc; do
  FP="$OUT/$MODEL-mnist-fp"
  [[ -f "$FP/summary.json" ]] || $QUANTNET train --model "$MODEL" --dataset mnist --weights fp \
      --acts 32 --epochs "$FP_EPOCHS" --out "$FP" "${EXTRA[@]}" > "$FP.log"
  for SPEC in "1 1" "1 2" "2 2"; do
    set -- $SPEC
    RUN="$OUT/$MODEL-mnist-w$1-a$2"
    [[ -f "$RUN/summary.json" ]] || $QUANTNET train --model "$MODEL" --dataset mnist --from "$FP" \
        --quantize-all --weights "$1" --acts "$2" --epochs "$EPOCHS" --out "$RUN" "${EXTRA[@]}" \
        > "$RUN.log"
    row "$MODEL (all layers)" mnist "$1" "$2" "$FP" "$RUN"
  done
done
