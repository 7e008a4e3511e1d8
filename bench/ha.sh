#!/usr/bin/env bash
# Writes on etcd next to writes on redb, in one sitting, on one dataset (issue 12's figures):
#
#   load        containers/s through the registration API (batched per node, as agents do),
#               every write acknowledged after its commit (redb: fsync; etcd: quorum)
#   latency     write -> visible in DNS, p50/p99 (load_dataset.py latency), idle, and again while
#               LATENCY_BG_WRITES (default 500) other durable writes/s flow
#   follower    the same write -> visible, with writes sent to a second instance (a follower that
#               forwards them to the leader and answers once its own DNS serves them), and DNS
#               polled there
#
# Stores: redb in a temp dir; etcd as a three-member cluster on loopback (Debian etcd-server),
# data in a temp dir on the same disk. Usage: bench/ha.sh [DATA_DIR] (default
# bench-out/data/default; make one with ../shared/bench/gen_dataset.py), or SYNTHETIC=N for a
# small one of N containers made here (as bench/soak.py makes it; what CI runs). Needs etcd,
# etcdctl, python3 and a release build; BIN=path overrides the binary. Prints
# "figure redb etcd ratio".
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${BIN:-target/release/stackdns}")
W=$(mktemp -d /tmp/stackdns-ha.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
if [ -n "${SYNTHETIC:-}" ]; then
  DATA=$W/data; mkdir -p "$DATA"
  python3 -c 'import sys; sys.path.insert(0, "bench"); import soak; soak.synthetic(sys.argv[1], int(sys.argv[2]))' "$DATA" "$SYNTHETIC"
else
  DATA=$(realpath "${1:-bench-out/data/default}")
fi
SAMPLES=${LATENCY_SAMPLES:-300}
BG_WRITES=${LATENCY_BG_WRITES:-500}
PORT=${PORT:-5392}
API_PORT=${API_PORT:-8392}
ZONE=$DATA/cluster.test.zone
[ -f "$ZONE" ] && [ -f "$DATA/dataset.json" ] || { echo "no dataset in $DATA" >&2; exit 1; }
[ -x "$BIN" ] || { echo "no stackdns binary at $BIN (cargo build --release)" >&2; exit 1; }
command -v etcd >/dev/null && command -v etcdctl >/dev/null || { echo "needs etcd and etcdctl (apt-get install etcd-server etcd-client)" >&2; exit 1; }
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# ---- a three-member etcd on loopback
CLIENTS=(23791 23792 23793); PEERS=(23801 23802 23803)
CLUSTER="m0=http://127.0.0.1:${PEERS[0]},m1=http://127.0.0.1:${PEERS[1]},m2=http://127.0.0.1:${PEERS[2]}"
for i in 0 1 2; do
  etcd --name "m$i" --data-dir "$W/etcd-m$i" \
    --listen-client-urls "http://127.0.0.1:${CLIENTS[$i]}" --advertise-client-urls "http://127.0.0.1:${CLIENTS[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${PEERS[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${PEERS[$i]}" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token stackdns-bench \
    >"$W/etcd-m$i.log" 2>&1 &
  PIDS+=("$!")
done
ENDPOINTS="127.0.0.1:${CLIENTS[0]},127.0.0.1:${CLIENTS[1]},127.0.0.1:${CLIENTS[2]}"
for _ in $(seq 1 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$ENDPOINTS" endpoint health >/dev/null 2>&1 && break; sleep 0.2
done

visible() { awk '/^visible/ {printf "%s %s", $(NF-3), $(NF-2)}' "$1"; }

# Loads the dataset into one server on store $1 (extra serve args after it), measures, stops it.
# Prints: containers/s, idle p50, idle p99, loaded p50, loaded p99 (ms).
measure() {
  local name=$1; shift
  local dir=$W/$name; mkdir -p "$dir"
  local args=(--server-arg=--metrics-addr=off)
  for a in "$@"; do args+=("--server-arg=$a"); done
  PORT=$PORT ZONE_FILE=$ZONE DATA_DIR=$DATA WORKDIR=$dir python3 bench/load_dataset.py serve \
    --binary "$BIN" --api-port "$API_PORT" --verify 100 "${args[@]}" >"$dir/serve.log" 2>&1 &
  local spid=$!; PIDS+=("$spid")
  for _ in $(seq 1 3600); do grep -q "verified\|error" "$dir/serve.log" && break; sleep 1; done
  grep -q "all correct" "$dir/serve.log" || { tail -20 "$dir/serve.log" >&2; exit 1; }
  local per_s
  per_s=$(grep -o 'LOAD_RESULT.*' "$dir/serve.log" | sed 's/LOAD_RESULT //' \
    | python3 -c 'import json,sys; print("%.0f" % json.load(sys.stdin)["containers_per_s"])')
  WORKDIR=$dir python3 bench/load_dataset.py latency --samples "$SAMPLES" >"$dir/lat.txt" 2>&1 || true
  WORKDIR=$dir python3 bench/load_dataset.py latency --samples "$SAMPLES" \
    --background-writes "$BG_WRITES" >"$dir/lat-loaded.txt" 2>&1 || true
  echo "$per_s $(visible "$dir/lat.txt") $(visible "$dir/lat-loaded.txt")"
  if [ "$name" = etcd ]; then
    # A follower on the same store: writes and DNS polls go to it.
    local token; token=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$dir/stackdns-bench.json")
    STACKDNS_ADMIN_TOKEN=$token "$BIN" serve --dns "127.0.0.1:$((PORT + 1))" --api "127.0.0.1:$((API_PORT + 1))" \
      --data "$dir/follower-data" --zone-file "$dir/stackdns-apex.zone" --ttl 30 --node-ttl 86400 \
      --udp-workers 1 --metrics-addr off "$@" 2>"$dir/follower.log" & local fpid=$!; PIDS+=("$fpid")
    for _ in $(seq 1 600); do grep -q "listening dns=" "$dir/follower.log" && break; sleep 0.1; done
    python3 - "$dir/stackdns-bench.json" "$((API_PORT + 1))" "$((PORT + 1))" "$dir/follower.json" <<'EOF'
import json, sys
state = json.load(open(sys.argv[1]))
state["api"] = "http://127.0.0.1:%s" % sys.argv[2]
state["dns"] = "127.0.0.1:%s" % sys.argv[3]
json.dump(state, open(sys.argv[4], "w"))
EOF
    sleep 2
    python3 bench/load_dataset.py latency --state "$dir/follower.json" --samples "$SAMPLES" >"$dir/lat-follower.txt" 2>&1 || true
    visible "$dir/lat-follower.txt" >"$W/follower-figures"
    stop "$fpid"
  fi
  stop "$spid"
}

redb=$(measure redb)
etcd=$(measure etcd "--store=etcd://$ENDPOINTS" --etcd-prefix=/bench/)
follower=$(cat "$W/follower-figures" 2>/dev/null || true)
read -r r_load r_p50 r_p99 r_lp50 r_lp99 <<<"$redb"
read -r e_load e_p50 e_p99 e_lp50 e_lp99 <<<"$etcd"
read -r f_p50 f_p99 <<<"${follower:-- -}"
containers=$(grep -o 'LOAD_RESULT.*' "$W/redb/serve.log" | sed 's/LOAD_RESULT //' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["containers"])' 2>/dev/null || echo "?")
ratio() { python3 -c "import sys; a,b=sys.argv[1],sys.argv[2]
try: print('%.2f' % (float(b)/float(a)))
except Exception: print('-')" "$1" "$2"; }
echo "dataset $DATA: $containers containers; $(nproc) CPUs; $(date -u +%FT%TZ); etcd $(etcd --version | head -1 | awk '{print $3}'), 3 members on loopback"
printf '%-44s %10s %10s %7s\n' figure redb etcd ratio
printf '%-44s %10s %10s %7s\n' "load, containers/s (batched PUTs)" "$r_load" "$e_load" "$(ratio "$r_load" "$e_load")"
printf '%-44s %10s %10s %7s\n' "write -> visible p50, ms (idle)" "$r_p50" "$e_p50" "$(ratio "$r_p50" "$e_p50")"
printf '%-44s %10s %10s %7s\n' "write -> visible p99, ms (idle)" "$r_p99" "$e_p99" "$(ratio "$r_p99" "$e_p99")"
printf '%-44s %10s %10s %7s\n' "write -> visible p50, ms ($BG_WRITES writes/s)" "$r_lp50" "$e_lp50" "$(ratio "$r_lp50" "$e_lp50")"
printf '%-44s %10s %10s %7s\n' "write -> visible p99, ms ($BG_WRITES writes/s)" "$r_lp99" "$e_lp99" "$(ratio "$r_lp99" "$e_lp99")"
printf '%-44s %10s %10s %7s\n' "via a follower: write -> visible p50, ms" "-" "$f_p50" "-"
printf '%-44s %10s %10s %7s\n' "via a follower: write -> visible p99, ms" "-" "$f_p99" "-"
