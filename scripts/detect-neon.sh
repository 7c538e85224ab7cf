#!/usr/bin/env bash
# The small SSD on the neon-trees tiles (../shared/data/detection-neon-trees: three aerial tiles
# of three sites, every box as one class "tree"), seed by seed, in one of two splits:
#   windows  the tiles cut into disjoint 300×300 windows (12 of the 1249×1035 YELL tile, one of
#            each 400×400 tile), every third window a test window: 4 YELL windows for testing,
#            10 windows of the three sites for training (the default);
#   site     400×400 windows (12 overlapping ones of YELL, 1 of OSBS_029) for training, SOAP_061,
#            another site, for testing.
# Each training window is read 8 times per epoch with SSD's augmentation without zoom-out; 40
# full-precision epochs, then ternary weights and 4-bit activations (first conv and heads full
# precision) for 20. Prints the test mAP (VOC07 11-point, IoU 0.5, %) of the full-precision
# detector and of the quantized one (hard, and soft as a diagnostic), the same two detectors' mAP
# on their (unaugmented) training windows, the seconds per quantized epoch and the wall time.
# docs/detection.md quotes its output; the last seed's pictures go to OUT/pictures.
#
#   scripts/detect-neon.sh [OUT] [SEEDS] [SPLIT] [-- extra train flags]
set -euo pipefail
OUT=${1:-runs/detect-neon}
SEEDS=${2:-"1 2"}
SPLIT=${3:-windows}
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
extra_flags 3 "$@"
DATA=${NEON:-../shared/data/detection-neon-trees}
case "$SPLIT" in
  windows) FLAGS=(--tile 300 --split-windows) ;;
  site) FLAGS=(--tile 400) ;;
  *) echo "SPLIT is windows or site, not $SPLIT" >&2; exit 1 ;;
esac
mkdir -p "$OUT"

echo "| split | seed | test: full precision | test: ternary/4-bit hard | test: soft | test: hard, all-point | training windows: full precision | training windows: hard | s/epoch (quantized) | wall (s) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
FP=(); HARD=()
for SEED in $SEEDS; do
  RUN="$OUT/$SPLIT-w2a4-seed$SEED"
  if [[ ! -f "$RUN/summary.json" ]]; then
    START=$(date +%s)
    $QUANTNET train --model ssd-small --dataset voc --data-dir "$DATA" --merge-classes tree \
      "${FLAGS[@]}" --max-expand 1 --repeats 8 --batch-size 8 --pretrain-epochs 40 --epochs 20 \
      --weights 2 --acts 4 --seed "$SEED" --out "$RUN" "${EXTRA[@]}" > "$RUN.log"
    echo $(( $(date +%s) - START )) > "$RUN.wall"
  fi
  F=$(field "$RUN" test_map_fp); H=$(field "$RUN" test_map_hard)
  S=$(field "$RUN" test_map_soft); A=$(field "$RUN" test_map_hard_all_points)
  TF=$(field "$RUN" train_map_fp); TH=$(field "$RUN" train_map_hard)
  SEC=$(tr -d ' \n' < "$RUN/summary.json" | grep -o '"seconds_per_epoch":\[[^]]*' | sed 's/.*\[//' |
        tr ',' '\n' | awk '{s += $1; n++} END {printf "%.1f", s / n}')
  printf "| %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %s | %s |\n" "$SPLIT" "$SEED" \
    "$F" "$H" "$S" "$A" "$TF" "$TH" "$SEC" "$(cat "$RUN.wall" 2>/dev/null || echo -)"
  FP+=("$F"); HARD+=("$H")
done
echo
echo "$SPLIT split, mean ± sd over seeds $SEEDS: full precision $(printf '%s\n' "${FP[@]}" | stats), ternary/4-bit hard $(printf '%s\n' "${HARD[@]}" | stats)"
$QUANTNET detect --from "$RUN" --out "$OUT/pictures-$SPLIT" "$DATA"/images/*.png > "$OUT/pictures-$SPLIT.log"
cat "$OUT/pictures-$SPLIT.log"
