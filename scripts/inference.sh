#!/usr/bin/env bash
# docs/inference.md's numbers: the README's main job exported to .qnet and evaluated on the
# full test set by Burn's hard forward and by the integer engine (and its f32 mode), then
# `quantnet bench infer` on the exported LeNet-5 and on freshly quantized ResNet-20 and LFC
# (ternary weights, 2-bit activations), 1 and 2 threads, engines interleaved in one run.
#
#   scripts/inference.sh [RUN]     (RUN: a finished main-job run; trained when absent)
set -euo pipefail
RUN=${1:-runs/inference-main-job}
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
[[ -f "$RUN/summary.json" ]] || $QUANTNET train --out "$RUN" > "$RUN.log"
$QUANTNET export --from "$RUN" --out "$RUN/model.qnet" > /dev/null
for ENGINE in burn int f32; do
  $QUANTNET eval --model-file "$RUN/model.qnet" --engine "$ENGINE"
done
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) cores"
$QUANTNET bench infer --model-file "$RUN/model.qnet" --batch 1,64 --threads 1,2
$QUANTNET bench infer --model resnet20 --batch 1,64 --threads 1,2 --layers
$QUANTNET bench infer --model lfc --batch 1,64 --threads 1,2
