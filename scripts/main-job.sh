#!/usr/bin/env bash
# The README's main job (`quantnet train`, no flags: LeNet-5 on Fashion-MNIST, 1 full-precision
# epoch, then ternary weights + 2-bit activations for 2 epochs) over several seeds; prints one
# markdown row per seed and the mean ± sd. The README quotes this script's output.
#
#   scripts/main-job.sh [OUT] [SEEDS] [-- extra train flags]
set -euo pipefail
OUT=${1:-runs/main-job}
SEEDS=${2:-42 43 44}
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
extra_flags 2 "$@"
mkdir -p "$OUT"

echo "| seed | full precision (%) | hard (%) | soft (%) | hard − FP | soft − hard |"
echo "|---|---|---|---|---|---|"
FPS=(); HARD=(); SOFT=(); DIFF=(); GAP=()
for SEED in $SEEDS; do
  RUN="$OUT/seed$SEED"
  [[ -f "$RUN/summary.json" ]] || $QUANTNET train --seed "$SEED" --out "$RUN" "${EXTRA[@]}" > "$RUN.log"
  # The full-precision accuracy is printed by the pretraining phase.
  F=$(grep -o 'full precision: test accuracy [0-9.]*' "$RUN.log" | sed 's/.* //')
  H=$(printf '%.2f' "$(field "$RUN" test_accuracy_hard)")
  S=$(printf '%.2f' "$(field "$RUN" test_accuracy_soft)")
  D=$(awk -v h="$H" -v f="$F" 'BEGIN {printf "%+.2f", h - f}')
  G=$(awk -v h="$H" -v s="$S" 'BEGIN {printf "%.2f", s - h}')
  FPS+=("$F"); HARD+=("$H"); SOFT+=("$S"); DIFF+=("$D"); GAP+=("$G")
  echo "| $SEED | $F | $H | $S | $D | $G |"
done
m() { printf '%s\n' "$@" | stats; }
echo "| mean ± sd | $(m "${FPS[@]}") | $(m "${HARD[@]}") | $(m "${SOFT[@]}") | $(m "${DIFF[@]}") | $(m "${GAP[@]}") |"
