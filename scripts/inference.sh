#!/usr/bin/env bash
# docs/inference.md's numbers.
#
# 1. The README's main job (Fashion-MNIST) and the same job on MNIST, exported to .qnet and
#    evaluated on the full test sets by Burn's hard forward, by the integer engine on every
#    instruction-set path this CPU runs, and by the engine's f32 mode; each engine's per-image
#    predictions are compared with Burn's (`quantnet eval --predictions`).
# 2. `quantnet bench infer` on the exported LeNet-5 and on freshly quantized ResNet-20 and LFC
#    (ternary weights, 2-bit activations), 1 and 2 threads, engines interleaved in one run.
# 3. PyTorch's f32 and int8 on the same nets (benches/peer/infer.py), when PYTHON has torch
#    (PYTHON=~/.venvs/torch/bin/python after `pip install torch` in that venv), then three
#    rounds of the engine and PyTorch back to back at one thread, then ResNet-20 batch 64 alone
#    against PyTorch's int8, ten rounds.
#
#   scripts/inference.sh [RUNS_DIR]     (runs there are reused when finished, trained otherwise)
set -euo pipefail
DIR=${1:-runs/inference}
PYTHON=${PYTHON:-python3}
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"
mkdir -p "$DIR"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) cores"

for DATASET in fashion-mnist mnist; do
  RUN=$DIR/main-job-$DATASET
  main_job "$RUN" "$DATASET"
  for CASE in "int scalar" "int avx2" "int avx512" "f32 avx512"; do
    read -r ENGINE ISA <<< "$CASE"
    if ! QUANTNET_ISA=$ISA $QUANTNET eval --model-file "$RUN/model.qnet" --engine "$ENGINE" \
      --predictions "$RUN/$ENGINE-$ISA.txt" > "$RUN/$ENGINE-$ISA.log" 2>&1; then
      echo "  ($ENGINE on $ISA: $(tail -1 "$RUN/$ENGINE-$ISA.log"))"
      continue
    fi
    grep -v '^wrote' "$RUN/$ENGINE-$ISA.log"
    DIFFER=$(paste -d' ' "$RUN/burn.txt" "$RUN/$ENGINE-$ISA.txt" | awk '$1 != $2' | wc -l)
    echo "  predictions that differ from Burn's: $DIFFER of $(wc -l < "$RUN/burn.txt")"
  done
done

RUN=$DIR/main-job-fashion-mnist
$QUANTNET bench infer --model-file "$RUN/model.qnet" --batch 1,64 --threads 1,2
$QUANTNET bench infer --model lenet5 --batch 1,64 --threads 1,2 --engine int,f32
$QUANTNET bench infer --model resnet20 --batch 1,64 --threads 1,2 --layers
$QUANTNET bench infer --model lfc --batch 1,64 --threads 1,2 --layers

if "$PYTHON" -c 'import torch' 2> /dev/null; then
  "$PYTHON" "$(dirname "$0")/../benches/peer/infer.py" --threads 1,2 --batch 1,64
  # Head to head, one thread: the engine (int, f32 mode) and PyTorch (f32, frozen f32, int8)
  # back to back, three rounds, so that both see the same moments of a noisy machine.
  for ROUND in 1 2 3; do
    echo "round $ROUND"
    for MODEL in lenet5 resnet20 lfc; do
      $QUANTNET bench infer --model "$MODEL" --batch 1,64 --threads 1 --engine int,f32 |
        grep "^| $MODEL"
    done
    "$PYTHON" "$(dirname "$0")/../benches/peer/infer.py" --threads 1 --batch 1,64 |
      grep '^| [lr]'
  done
  # ResNet-20 batch 64 alone, the engine and PyTorch's int8 alternating, ten rounds: the
  # closest race, where a round of the machine's noise decides the median.
  for ROUND in 1 2 3 4 5 6 7 8 9 10; do
    INT=$($QUANTNET bench infer --model resnet20 --batch 64 --threads 1 --engine int |
      grep '^| resnet20' | awk '{print $14}')
    INT8=$("$PYTHON" "$(dirname "$0")/../benches/peer/infer.py" --models resnet20 --batch 64 \
      --threads 1 | grep torch-int8 | awk '{print $12}')
    echo "resnet20 batch 64, round $ROUND: engine int $INT ms, torch-int8 $INT8 ms"
  done
else
  echo "PyTorch's numbers: set PYTHON to a python with torch (pip install torch)"
fi
