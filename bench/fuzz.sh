#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS seconds each [20] (cargo-fuzz on the stable toolchain),
# starting from the committed seeds; new inputs go to fuzz/work/<target>. Exits non-zero on the
# first crash, leaving its input in fuzz/artifacts/<target>/ and the log's tail on stderr.
#   bench/fuzz.sh                         # all targets, 20 s each (what .ci/run does)
#   FUZZ_SECONDS=3600 bench/fuzz.sh tsig  # one target for an hour
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1
seconds=${FUZZ_SECONDS:-20}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(dns_handler tsig zone_file stackfile api_bodies)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
  # Built first, so that the time limit is all fuzzing.
  cargo fuzz build "$target" >"$log" 2>&1 || { tail -40 "$log" >&2; exit 1; }
  mkdir -p "work/$target"
  if ! cargo fuzz run "$target" "work/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -60 "$log" >&2
    echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  runs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 || true)
  echo "$target: ${runs:-?} executions in ${seconds}s, ${cov:-cov: ?}, no crash"
done
