# Helpers the result scripts share (sourced, not run).

# The quantnet command the scripts run (override with QUANTNET=...).
QUANTNET=${QUANTNET:-cargo run -q -p quantnet-cli --}

# extra_flags N ARGS...: the train flags after the first N positional arguments and an
# optional `--`, into the array EXTRA.
extra_flags() {
  local n=$1; shift
  shift $(( $# < n ? $# : n ))
  [[ "${1:-}" == "--" ]] && shift
  EXTRA=("$@")
}

# field RUN KEY: the first number under "KEY" in RUN/summary.json.
field() { grep -o "\"$2\": [0-9.]*" "$1/summary.json" | head -1 | sed 's/.*: //'; }

# sweep_docs [--png] RUN DOC GRID...: `quantnet sweep GRID... --out RUN`, then the sweep's
# results.md and results.csv (and with --png its accuracy-vs-bits.png) copied to DOC.md, DOC.csv
# (DOC.png).
sweep_docs() {
  local png=0
  [[ "$1" == "--png" ]] && { png=1; shift; }
  local run=$1 doc=$2; shift 2
  $QUANTNET sweep "$@" --out "$run"
  cp "$run/results.md" "$doc.md"
  cp "$run/results.csv" "$doc.csv"
  if [[ $png == 1 ]]; then cp "$run/accuracy-vs-bits.png" "$doc.png"; fi
}

# stats: mean (± sample sd when there are several) of the numbers on stdin, one per line.
stats() { awk '{s+=$1; q+=$1*$1; n++} END {m=s/n; sd=(n>1)?sqrt((q-n*m*m)/(n-1)):0;
  if (n>1) printf "%.2f ± %.2f", m, sd; else printf "%.2f", m}'; }

# main_job RUN DATASET: the README's main job on DATASET in RUN (trained unless finished),
# exported to RUN/model.qnet, and Burn's hard forward of the file on the full test set: its
# accuracy printed, each image's class in RUN/burn.txt.
main_job() {
  local run=$1 dataset=$2
  [[ -f "$run/summary.json" ]] || $QUANTNET train --dataset "$dataset" --out "$run" > "$run.log"
  $QUANTNET export --from "$run" --out "$run/model.qnet" > /dev/null
  $QUANTNET eval --model-file "$run/model.qnet" --engine burn --predictions "$run/burn.txt" |
    grep -v '^wrote'
}
