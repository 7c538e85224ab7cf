#!/usr/bin/env bash
# docs/results.md: every method on LeNet-5, from the committed grids in sweeps/. For each data
# set, first the full-precision runs every cell starts from (DATASET-fp.toml), then one sweep over
# the method grids; the sweep's results.md / results.csv / accuracy-vs-bits.png are copied into
# docs/results/. Finished cells are skipped, so a killed run continues where it stopped.
#
# Then each ablation grid (sweeps/DATASET-ablation-*.toml) as a sweep of its own, copied to
# docs/results/DATASET-ablation-*.md.
#
#   scripts/results.sh [DATASET...]      (default: fashion-mnist)
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
DATASETS=${*:-fashion-mnist}
mkdir -p docs/results
for D in $DATASETS; do
  $QUANTNET sweep "sweeps/$D-fp.toml" --out "runs/results/$D-fp"
  GRIDS=()
  for G in methods pact bwn twn fp-continued; do GRIDS+=("sweeps/$D-$G.toml"); done
  sweep_docs --png "runs/results/$D" "docs/results/$D" "${GRIDS[@]}"
  # One run's weight histograms (levels and thresholds, at initialisation and at the end).
  CELL="runs/results/$D/cells/method-qn_weights-2_acts-2_seed-1"
  $QUANTNET plot "$CELL" --out "runs/results/$D"
  cp "runs/results/$D/weights.png" "docs/results/$D-qn-w2a2-seed1-weights.png"
  for A in sweeps/"$D"-ablation-*.toml; do
    [[ -f "$A" ]] || continue
    N=$(basename "$A" .toml)
    sweep_docs "runs/results/$N" "docs/results/$N" "$A"
  done
done
