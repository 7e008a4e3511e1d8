#!/usr/bin/env bash
# Scale figures for stackdns next to Knot, in one sitting, on one dataset (issue 9's table):
#
#   memory      RSS once the zone is served (Knot: zone file loaded; stackdns: loaded through the
#               API) and, for stackdns, after a restart on the stored data
#   start-up    launch -> first correct answer for the dataset's last name (Knot: zone load;
#               stackdns: a restart on the stored data)
#   load        containers/s through the registration API (batched per node, as agents do)
#   AXFR        time of a whole zone transfer over TCP
#   latency     write -> visible in DNS, p50/p99 (load_dataset.py latency), idle, and again while
#               dnsperf saturates DNS and LATENCY_BG_WRITES (default 1000) other writes/s flow
#
# Usage: bench/scale.sh [DATA_DIR] (default bench-out/data/default; make one with
# ../shared/bench/gen_dataset.py). Needs knotd, kdig (or dig), python3 and a release build.
# BIN=path overrides the stackdns binary; LATENCY_SAMPLES (default 300; 0 skips it);
# LATENCY_BG_WRITES (default 1000; 0 skips the loaded run, as does a missing dnsperf).
# Prints one "figure knot stackdns ratio" table; numbers are from this machine and sitting only.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=$(realpath "${1:-bench-out/data/default}")
BIN=$(realpath "${BIN:-target/release/stackdns}")
SAMPLES=${LATENCY_SAMPLES:-300}
BG_WRITES=${LATENCY_BG_WRITES:-1000}
PORT=${PORT:-5391}
API_PORT=${API_PORT:-8391}
ZONE=$DATA/cluster.test.zone
[ -f "$ZONE" ] && [ -f "$DATA/dataset.json" ] || { echo "no dataset in $DATA" >&2; exit 1; }
[ -x "$BIN" ] || { echo "no stackdns binary at $BIN (cargo build --release)" >&2; exit 1; }
W=$(mktemp -d /tmp/stackdns-scale.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT

PROBE=$(tail -n 1 "$ZONE" | awk '{print $1}')
now() { date +%s.%N; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# Waits until $PROBE A answers NOERROR with data on $PORT; fails after $2 seconds.
wait_answer() {
  local pid=$1 limit=$2 start; start=$(now)
  while :; do
    kill -0 "$pid" 2>/dev/null || { echo "server $pid exited" >&2; return 1; }
    if dig +short +time=1 +tries=1 -p "$PORT" @127.0.0.1 "$PROBE" A 2>/dev/null | grep -q '^[0-9]'; then
      return 0
    fi
    if (( $(echo "$(now) - $start > $limit" | bc) )); then echo "no answer within ${limit}s" >&2; return 1; fi
    sleep 0.02
  done
}
axfr_s() {
  local t0; t0=$(now)
  local n; n=$(dig +noall +answer +tcp -p "$PORT" @127.0.0.1 cluster.test. AXFR | wc -l)
  echo "$(echo "$(now) - $t0" | bc) $n"
}
stop() { kill "$1"; wait "$1" 2>/dev/null || true; }

# ---- Knot
mkdir -p "$W/knot"
cat >"$W/knot/knot.conf" <<EOF
server:
    rundir: "$W/knot"
    listen: 127.0.0.1@$PORT
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "$W/knot"
log:
  - target: stderr
    any: warning
acl:
  - id: local
    address: 127.0.0.1
    action: transfer
template:
  - id: default
    acl: local
    storage: "$W/knot"
    file: "$ZONE"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
  - domain: cluster.test.
EOF
t0=$(now)
knotd -c "$W/knot/knot.conf" 2>"$W/knot/log" & KPID=$!; PIDS+=("$KPID")
wait_answer "$KPID" 600
knot_start=$(echo "$(now) - $t0" | bc)
sleep 1
knot_rss=$(rss_kb "$KPID")
read -r knot_axfr knot_axfr_records < <(axfr_s)
stop "$KPID"

# ---- stackdns: load through the API, then restart on the stored data
mkdir -p "$W/sd"
PORT=$PORT ZONE_FILE=$ZONE DATA_DIR=$DATA WORKDIR=$W/sd python3 bench/load_dataset.py serve \
  --binary "$BIN" --api-port "$API_PORT" --verify 100 --server-arg=--metrics-addr=off --server-arg=--allow-transfer=127.0.0.1/32 >"$W/sd/serve.log" 2>&1 &
SPID=$!; PIDS+=("$SPID")
for _ in $(seq 1 3600); do grep -q "verified\|error" "$W/sd/serve.log" && break; sleep 1; done
grep -q "all correct" "$W/sd/serve.log" || { tail -5 "$W/sd/serve.log" >&2; exit 1; }
load=$(grep -o 'LOAD_RESULT.*' "$W/sd/serve.log" | sed 's/LOAD_RESULT //')
per_s=$(echo "$load" | python3 -c 'import json,sys; print(json.load(sys.stdin)["containers_per_s"])')
sleep 1
sd_rss=$(rss_kb "$SPID")
read -r sd_axfr sd_axfr_records < <(axfr_s)
lat="skipped"; lat_loaded="skipped"; loaded_qps="-"; bg_rate="-"
visible() { awk '/^visible/ {printf "p50 %s ms, p99 %s ms", $(NF-3), $(NF-2)}' "$1"; }
if [ "$SAMPLES" -gt 0 ]; then
  WORKDIR=$W/sd python3 bench/load_dataset.py latency --samples "$SAMPLES" >"$W/lat.txt" 2>&1 || true
  lat=$(visible "$W/lat.txt")
  if [ "$BG_WRITES" -gt 0 ] && command -v dnsperf >/dev/null; then
    # DNS saturated by dnsperf (the dataset's query mix) for the whole run, writes meanwhile.
    dnsperf -s 127.0.0.1 -p "$PORT" -d "$DATA/queries.txt" -l 600 -c 8 -q 200 >"$W/dnsperf.txt" 2>&1 &
    DPID=$!; PIDS+=("$DPID")
    sleep 2
    WORKDIR=$W/sd python3 bench/load_dataset.py latency --samples "$SAMPLES" \
      --background-writes "$BG_WRITES" >"$W/lat-loaded.txt" 2>&1 || true
    kill -INT "$DPID" 2>/dev/null || true; wait "$DPID" 2>/dev/null || true
    lat_loaded=$(visible "$W/lat-loaded.txt")
    loaded_qps=$(awk '/Queries per second:/ {printf "%.0f", $4}' "$W/dnsperf.txt")
    bg_rate=$(grep -o 'at [0-9]*/s' "$W/lat-loaded.txt" | head -1 | tr -dc '0-9')
  fi
fi
stop "$SPID"

TOKEN=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$W/sd/stackdns-bench.json")
t0=$(now)
STACKDNS_ADMIN_TOKEN=$TOKEN "$BIN" serve --dns "127.0.0.1:$PORT" --api "127.0.0.1:$API_PORT" \
  --data "$W/sd/stackdns-data" --zone-file "$W/sd/stackdns-apex.zone" --ttl 30 --node-ttl 86400 \
  --udp-workers 1 --metrics-addr off --allow-transfer 127.0.0.1/32 2>"$W/sd/restart.log" & RPID=$!; PIDS+=("$RPID")
wait_answer "$RPID" 600
sd_start=$(echo "$(now) - $t0" | bc)
sleep 1
sd_rss2=$(rss_kb "$RPID")
build_ms=$(grep -o 'build_ms=[0-9]*' "$W/sd/restart.log" | head -1 | cut -d= -f2)
stop "$RPID"

containers=$(echo "$load" | python3 -c 'import json,sys; print(json.load(sys.stdin)["containers"])')
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print('%.2f' % (b/a) if a else '-')" "$1" "$2"; }
echo "dataset $DATA: $containers containers; $(nproc) CPUs; $(date -u +%FT%TZ); stackdns $("$BIN" --version 2>/dev/null || echo "?")"
printf '%-42s %14s %14s %8s\n' figure knot stackdns ratio
printf '%-42s %14s %14s %8s\n' "RSS serving, MiB" "$((knot_rss / 1024))" "$((sd_rss / 1024))" "$(ratio "$knot_rss" "$sd_rss")"
printf '%-42s %14s %14s %8s\n' "RSS after a restart, MiB" "-" "$((sd_rss2 / 1024))" "$(ratio "$knot_rss" "$sd_rss2")"
printf '%-42s %14s %14s %8s\n' "bytes of RSS per container" "$((knot_rss * 1024 / containers))" "$((sd_rss * 1024 / containers))" "-"
printf '%-42s %14.2f %14.2f %8s\n' "start -> first answer, s (stackdns: restart)" "$knot_start" "$sd_start" "$(ratio "$knot_start" "$sd_start")"
printf '%-42s %14s %14.2f %8s\n' "  of which building the zone, s" "-" "$(echo "${build_ms:-0} / 1000" | bc -l)" "-"
printf '%-42s %14.2f %14.2f %8s\n' "AXFR over TCP, s" "$knot_axfr" "$sd_axfr" "$(ratio "$knot_axfr" "$sd_axfr")"
printf '%-42s %14s %14s %8s\n' "AXFR records" "$knot_axfr_records" "$sd_axfr_records" "-"
printf '%-42s %14s %14s %8s\n' "containers/s loaded through the API" "-" "$per_s" "-"
printf '%-42s %14s %14s %8s\n' "write -> visible (DNS)" "-" "${lat:-?}" "-"
printf '%-42s %14s %14s %8s\n' "write -> visible, DNS saturated + writes/s" "-" "${lat_loaded:-?}" "-"
printf '%-42s %14s %14s %8s\n' "  DNS qps meanwhile / writes/s meanwhile" "-" "${loaded_qps:-?} / ${bg_rate:-?}" "-"
