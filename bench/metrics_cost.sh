#!/usr/bin/env bash
# What the answer path's counters cost: Knot, stackdns with the counters and stackdns from
# before them, on the shared kit's query mix, in one sitting (docs/operations.md, "What counting
# costs"). Usage: bench/metrics_cost.sh WITH_BINARY WITHOUT_BINARY [ROUNDS]
# (build WITHOUT_BINARY from 019af23: `git worktree add /tmp/base 019af23 && cargo build --release`).
set -euo pipefail
cd "$(dirname "$0")/.."
with=${1:?stackdns binary with the counters}
without=${2:?stackdns binary without them}
rounds=${3:-2}
for _ in $(seq "$rounds"); do
  ../shared/bench/run_anchor.sh knot
  NAME=stackdns-with-metrics VERSION=with ../shared/bench/run_anchor.sh custom \
    "python3 $PWD/bench/load_dataset.py serve --binary $with --server-arg=--metrics-addr=off"
  NAME=stackdns-without-metrics VERSION=without ../shared/bench/run_anchor.sh custom \
    "python3 $PWD/bench/load_dataset.py serve --binary $without --server-arg=--metrics-addr=off"
done
../shared/bench/run_anchor.sh summary
