#!/usr/bin/env bash
# docs/results.md's main table (issue 30): every method on LeNet-5 at the lengths people train
# for, from the committed grids in sweeps/long/. For each data set, first the 10-epoch
# full-precision runs every cell starts from (DATASET-fp.toml), then one sweep over the method
# grids (3 quantized epochs each); the sweep's results.md / results.csv / accuracy-vs-bits.png
# are copied to docs/results/long-DATASET.*. Finished cells are skipped, so a killed run (or a
# later sitting) continues where it stopped.
#
#   scripts/results-long.sh [SET...]      (default: fashion-mnist mnist; also mnist-fc: TFC and SFC,
#                                          and mnist-lfc: LFC, fully quantized on MNIST)
#
# Each run trains on one thread unless RAYON_NUM_THREADS says otherwise: two data sets can run
# side by side on a 2-core machine (one process each).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
DATASETS=${*:-fashion-mnist mnist}
mkdir -p docs/results
for D in $DATASETS; do
  $QUANTNET sweep "sweeps/long/$D-fp.toml" --out "runs/results-long/$D-fp"
  case $D in
    mnist-fc | mnist-lfc) NAMES=(w1 w2a2) ;;
    *) NAMES=(methods qn-more qn-w2a4 bwn twn ste pact fp-continued) ;;
  esac
  GRIDS=()
  for G in "${NAMES[@]}"; do GRIDS+=("sweeps/long/$D-$G.toml"); done
  sweep_docs --png "runs/results-long/$D" "docs/results/long-$D" "${GRIDS[@]}"
  # Each ablation grid as a sweep of its own, copied to docs/results/long-DATASET-ablation-*.md.
  for A in sweeps/long/"$D"-ablation-*.toml; do
    [[ -f "$A" ]] || continue
    N=$(basename "$A" .toml)
    sweep_docs "runs/results-long/$N" "docs/results/long-$N" "$A"
  done
done
