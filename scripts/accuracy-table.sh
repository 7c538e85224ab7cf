#!/usr/bin/env bash
# Accuracy table of docs/accuracy.md: LeNet-5 on Fashion-MNIST and MNIST (full sets from the data
# folder), full precision, then W1, W2, W3(±4) and W2A2 fine-tuned from that full-precision run.
#
#   scripts/accuracy-table.sh [EPOCHS] [OUT] [-- extra train flags, e.g. --backend wgpu]
#
# Every number in the table is read from the runs' summary.json files.
set -euo pipefail
EPOCHS=${1:-3}
OUT=${2:-runs/accuracy-table}
shift $(( $# < 2 ? $# : 2 ))
[[ "${1:-}" == "--" ]] && shift
EXTRA=("$@")
QUANTNET=${QUANTNET:-cargo run -q -p quantnet-cli --}
mkdir -p "$OUT"

field() { grep -o "\"$2\": [0-9.]*" "$1/summary.json" | head -1 | sed 's/.*: //'; }
per_epoch() {
  tr -d '\n ' < "$1/summary.json" | grep -o '"seconds_per_epoch":\[[^]]*\]' |
    sed 's/.*\[//; s/\]//' | awk -F, '{s=0; for(i=1;i<=NF;i++) s+=$i; printf "%.1f", s/NF}'
}

echo "| data set | weights | acts | test accuracy, hard (%) | soft (%) | s/epoch |"
echo "|---|---|---|---|---|---|"
for DATASET in fashion-mnist mnist; do
  FP="$OUT/$DATASET-fp"
  [[ -f "$FP/summary.json" ]] || $QUANTNET train --dataset "$DATASET" --weights fp --acts 32 \
      --epochs "$EPOCHS" --out "$FP" "${EXTRA[@]}" > "$OUT/$DATASET-fp.log"
  echo "| $DATASET | fp | 32 | $(field "$FP" test_accuracy_hard) | – | $(per_epoch "$FP") |"
  for SPEC in "1 32" "2 32" "3pm4 32" "2 2"; do
    set -- $SPEC
    RUN="$OUT/$DATASET-w$1-a$2"
    [[ -f "$RUN/summary.json" ]] || $QUANTNET train --dataset "$DATASET" --from "$FP" \
        --weights "$1" --acts "$2" --epochs "$EPOCHS" --out "$RUN" "${EXTRA[@]}" > "$RUN.log"
    echo "| $DATASET | $1 | $2 | $(field "$RUN" test_accuracy_hard) | $(field "$RUN" test_accuracy_soft) | $(per_epoch "$RUN") |"
  done
done
