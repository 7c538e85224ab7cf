#!/usr/bin/env bash
# Peak resident memory of a training run on an ImageNet-style folder as the folder grows:
# the 20 ImageNet sample images listed 1, 10 and 100 times (labels.csv lines pointing at the
# same files), one quantized LeNet-5 epoch at 224×224 (ternary weights, steps of 20, no
# batch-norm re-estimation), train and test being the same folder. Image folders are read from
# disk per image (quantnet_models::data::FolderSet), so memory should not grow with the folder.
#
#   scripts/stream-memory.sh [BINARY...]
#
# Each BINARY (default: this checkout's quantnet, built in the dev profile) is measured on
# every folder; give an older build to compare (the table in docs/distributed.md puts the
# in-memory loader of c2b4318 beside the streaming one). Needs ../shared/data and GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."
samples=../shared/data/imagenet-samples
[[ -f $samples/labels.csv ]] || { echo "needs the ImageNet samples in $samples" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "needs GNU time (/usr/bin/time; apt-get install time)" >&2; exit 1; }
if (( $# == 0 )); then
  cargo build -q -p quantnet-cli
  set -- "${CARGO_TARGET_DIR:-$HOME/.cache/quantnet/target}/debug/quantnet"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
images=$(cd "$samples/images" && pwd)
for copies in 1 10 100; do
  dir=$work/x$copies
  mkdir -p "$dir"
  echo "file,class_index" > "$dir/labels.csv"
  for _ in $(seq "$copies"); do
    tail -n +2 "$samples/labels.csv" | awk -F, -v p="$images" '{print p "/" $1 "," $2}' >> "$dir/labels.csv"
  done
done
echo "| binary | images | peak resident memory (MiB) | seconds |"
echo "|---|---|---|---|"
for binary in "$@"; do
  for copies in 1 10 100; do
    out=$work/run-$copies
    rm -rf "$out"
    /usr/bin/time -o "$work/time" -f "%M %e" "$binary" train --model lenet5 --dataset imagenet \
      --data-dir "$work/x$copies" --weights 2 --acts 32 --pretrain-epochs 0 --epochs 1 \
      --batch-size 20 --bn-reestimate false --out "$out" > "$work/log" 2>&1 \
      || { cat "$work/log" >&2; exit 1; }
    read -r kb seconds < "$work/time"
    echo "| $binary | $((copies * 20)) | $((kb / 1024)) | $seconds |"
  done
done
