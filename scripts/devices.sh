#!/usr/bin/env bash
# The README's main job on one device and on two (`--devices cpu,cpu`: burn-train's multi-device
# strategy, each 64-image step split 32 + 32), seed by seed, run one after the other on the same
# machine: full-precision, hard and soft accuracy, the weight temperature of each epoch and the
# seconds per epoch. docs/distributed.md quotes its output.
#
#   scripts/devices.sh [OUT] [SEEDS] [-- extra train flags]
set -euo pipefail
OUT=${1:-runs/devices}
SEEDS=${2:-42}
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
extra_flags 2 "$@"
mkdir -p "$OUT"

echo "| seed | devices | full precision (%) | hard (%) | soft (%) | weight T (epoch mean) | s/epoch |"
echo "|---|---|---|---|---|---|---|"
for SEED in $SEEDS; do
  for DEVICES in cpu cpu,cpu; do
    RUN="$OUT/seed$SEED-${DEVICES//,/-}"
    [[ -f "$RUN/summary.json" ]] ||
      $QUANTNET train --seed "$SEED" --devices "$DEVICES" --out "$RUN" "${EXTRA[@]}" > "$RUN.log"
    F=$(grep -o 'full precision: test accuracy [0-9.]*' "$RUN.log" | sed 's/.* //')
    H=$(field "$RUN" test_accuracy_hard); S=$(field "$RUN" test_accuracy_soft)
    T=$(awk -F, 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == "weights_temperature_mean") c = i}
                 NR > 1 {printf "%s%.2f", (NR > 2 ? ", " : ""), $c}' "$RUN/metrics.csv")
    SEC=$(awk -F, 'NR == 1 {for (i = 1; i <= NF; i++) if ($i == "seconds") c = i}
                   NR > 1 {s += $c; n++} END {printf "%.1f", s / n}' "$RUN/metrics.csv")
    echo "| $SEED | $DEVICES | $F | $H | $S | $T | $SEC |"
  done
done
