#!/usr/bin/env bash
# The diff examples/guide_model/README.md shows: what quantnet adds to the guide model's code
# (float/ is the user's code before). `cargo test -p quantnet-examples --test guide_diff` checks
# that the README matches it.
set -euo pipefail
cd "$(dirname "$0")/../examples/guide_model"
for f in model.rs training.rs; do
  echo '```diff'
  diff -U1 --label "float/$f" --label "$f" "float/$f" "$f" || true
  echo '```'
  echo "\`$f\`: $(diff "float/$f" "$f" | grep -c '^> .*[^ ]') added lines"
done
