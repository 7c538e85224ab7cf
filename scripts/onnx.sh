#!/usr/bin/env bash
# docs/onnx.md's numbers: the README's main job (Fashion-MNIST) and the same job on MNIST,
# exported to ONNX and evaluated on the full test sets by ONNX Runtime (scripts/onnx_runtime.py:
# the ONNX checker, accuracy with graph optimisations off and on, per-image predictions against
# Burn's hard forward, timings), then `quantnet bench infer` on the same model (the integer
# engine, its f32 mode and Burn) at the same batches and threads.
#
#   PYTHON=python-with-onnx-and-onnxruntime scripts/onnx.sh [RUNS_DIR] [DATA_DIR]
#   (pip install onnx onnxruntime numpy; runs there are reused when finished, trained otherwise)
set -euo pipefail
DIR=${1:-runs/inference}
DATA=${2:-../shared/data}
PYTHON=${PYTHON:-python3}
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
mkdir -p "$DIR"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) cores"

for DATASET in fashion-mnist mnist; do
  RUN=$DIR/main-job-$DATASET
  main_job "$RUN" "$DATASET"
  $QUANTNET export --from "$RUN" --out "$RUN/model.onnx"
  "$PYTHON" "$(dirname "$0")/onnx_runtime.py" "$RUN/model.onnx" --data "$DATA/$DATASET" \
    --predictions "$RUN/burn.txt"
done
$QUANTNET bench infer --model-file "$DIR/main-job-fashion-mnist/model.qnet" --batch 1,64 --threads 1,2
