#!/usr/bin/env bash
# The checks that need a GPU machine (issue 12 item 5), as one script of at most ~8 minutes:
# the integration tests of the quantizer, conv and batch-norm ops on wgpu and CUDA (gradient checks
# and cross-backend agreement), then `quantnet bench train` on every backend side by side.
# Prints everything; paste the tables into docs/bench.md with the machine they ran on.
#
#   scripts/gpu-check.sh            # on the GPU machine, from the repository root
#
# Not run in CI. CUDA needs the NVIDIA driver (libcuda.so.1); wgpu needs a Vulkan driver.
set -euo pipefail
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/quantnet/target}"
step() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nproc

step "op tests on wgpu and cuda (quantizer, conv, batch norm)"
timeout 300 cargo test --release -p quantnet-burn --features wgpu,cuda --test integration

step "build the CLI with every GPU backend"
timeout 300 cargo build --release -p quantnet-cli --features wgpu,cuda
Q="$CARGO_TARGET_DIR/release/quantnet"

step "training step, side by side"
timeout 120 "$Q" bench train --model resnet20 --batch 128 --steps 10 --warmup 3 --backend cpu,wgpu,cuda
timeout 60 "$Q" bench train --model lenet5 --batch 256 --steps 20 --warmup 3 --backend wgpu,cuda

step "quantizer op"
timeout 60 "$Q" bench --backend wgpu,cuda --sizes 1048576,16777216 --runs 5 --warmup 1

step "done"
