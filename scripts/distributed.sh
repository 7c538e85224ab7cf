#!/usr/bin/env bash
# One process with 2 threads against 2 MPI ranks with 1 thread each, on this machine
# (docs/distributed.md, "Measured"): the training step of LeNet-5 (batch 64) and ResNet-20
# (batch 32), full precision and ternary/2-bit, in alternating rounds; then the README's main job
# both ways. Prints markdown tables; every run's output stays in OUT.
#
#   scripts/distributed.sh OUT [ROUNDS]
#
# Needs a quantnet built with MPI (QUANTNET=path, default: target/release/quantnet, built here
# with `--features mpi`), mpirun, python3, and ../shared/data for the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/distributed.sh OUT [ROUNDS]}
ROUNDS=${2:-3}
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
if [ -z "${QUANTNET:-}" ]; then
  cargo build -q --release -p quantnet-cli --features mpi
  QUANTNET="${CARGO_TARGET_DIR:-target}/release/quantnet"
fi
MPIRUN=(mpirun --oversubscribe -q -np 2 -x RAYON_NUM_THREADS=1)

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(date -u +%F)"
for round in $(seq 1 "$ROUNDS"); do
  for case in "lenet5 64" "resnet20 32"; do
    set -- $case
    RAYON_NUM_THREADS=2 "$QUANTNET" bench train --model "$1" --batch "$2" --steps 20 --json \
      > "$OUT/bench-$1-one-$round.jsonl"
    "${MPIRUN[@]}" "$QUANTNET" bench train --model "$1" --batch "$2" --steps 20 --json \
      --distributed mpi > "$OUT/bench-$1-two-$round.jsonl"
  done
done
python3 - "$OUT" "$ROUNDS" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print("\n| model | batch | precision | 1 process × 2 threads, ms/step | 2 ranks × 1 thread, ms/step | ratio | bytes all-reduced per step | share of the step in the all-reduce |")
print("|---|---|---|---|---|---|---|---|")
for model in ["lenet5", "resnet20"]:
    rows = {}
    for way in ["one", "two"]:
        for r in range(1, rounds + 1):
            for line in open(f"{out}/bench-{model}-{way}-{r}.jsonl"):
                row = json.loads(line)
                rows.setdefault((row["weights"], row["acts"], way), []).append(row)
    for (w, a, way) in sorted(rows):
        if way != "one":
            continue
        one, two = rows[(w, a, "one")], rows[(w, a, "two")]
        m1 = statistics.median(r["ms_per_step"] for r in one)
        m2 = statistics.median(r["ms_per_step"] for r in two)
        share = statistics.median(r["allreduce_share"] for r in two)
        prec = "fp" if w == "fp" else f"W{w}A{a}"
        print(f"| {model} | {one[0]['batch']} | {prec} | {m1:.1f} | {m2:.1f} | {m2 / m1:.2f} | "
              f"{two[0]['allreduce_bytes_per_step']:,} | {100 * share:.1f} % |")
print(f"\n(medians over {rounds} alternating rounds of 20 steps each, after 2 warm-up steps)")
EOF

if [ -d ../shared/data/fashion-mnist ]; then
  rm -rf "$OUT/main-one" "$OUT/main-two"
  RAYON_NUM_THREADS=2 "$QUANTNET" train --out "$OUT/main-one" > "$OUT/main-one.log"
  "${MPIRUN[@]}" "$QUANTNET" train --out "$OUT/main-two" --distributed mpi > "$OUT/main-two.log"
  python3 - "$OUT" <<'EOF'
import json, re, sys
out = sys.argv[1]
print("\n| README main job | full precision (%) | hard (%) | s/epoch (quantized epochs) | all-reduce |")
print("|---|---|---|---|---|")
for way, name in [("one", "1 process × 2 threads"), ("two", "2 ranks × 1 thread")]:
    s = json.load(open(f"{out}/main-{way}/summary.json"))
    secs = ", ".join(f"{x:.1f}" for x in s["seconds_per_epoch"])
    lines = [l.strip() for l in open(f"{out}/main-{way}.log") if l.startswith("all-reduced")]
    print(f"| {name} | {s['test_accuracy_fp']:.2f} | {s['test_accuracy_hard']:.2f} | {secs} | "
          f"{lines[-1] if lines else '-'} |")
EOF
else
  echo "no ../shared/data: the main job is skipped"
fi
