#!/usr/bin/env bash
# DNS over TLS and over HTTPS next to UDP on the shared query mix (UDP and DoT: dnsperf through
# the shared kit's run_anchor.sh; DoH: h2load through bench/doh_load.py; the server pinned to one
# core either way), then the time of a whole-zone AXFR over TLS next to plain TCP.
#
#   bench/transports.sh [BINARY]        default: target/release/stackdns
#
# Environment: DATA (dataset for the query mix [bench-out/data/default], 30k containers),
# XFR_DATA (dataset for the transfer [bench-out/data/xfr-100k], made with gen_dataset.py
# --stacks 334 if absent: 100,240 containers), RUNS [3], DURATION [20], XFR_RUNS [5]. Results: the
# run_anchor table (bench-out/transports.tsv), one line per DoH run and per transfer. Needs
# dnsperf, h2load (nghttp2-client), kdig, openssl. Every server started is stopped by its PID (run_anchor.sh does that).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIT="$ROOT/../shared/bench"
BIN="$(realpath "${1:-$ROOT/target/release/stackdns}")"
OUT="${OUTDIR:-$ROOT/bench-out}"
DATA="${DATA:-$OUT/data/default}"
XFR_DATA="${XFR_DATA:-$OUT/data/xfr-100k}"
RESULTS="$OUT/transports.tsv"
VERSION="$(git -C "$ROOT" rev-parse --short HEAD)"
TLS="$OUT/tls"
mkdir -p "$TLS"

# A self-signed certificate for ns1.cluster.test and 127.0.0.1 (dnsperf does not verify).
if [ ! -f "$TLS/cert.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -keyout "$TLS/key.pem" -out "$TLS/cert.pem" -subj /CN=ns1.cluster.test \
    -addext subjectAltName=DNS:ns1.cluster.test,IP:127.0.0.1 2>/dev/null
fi
serve="python3 $ROOT/bench/load_dataset.py serve --binary $BIN --server-arg=--metrics-addr=off \
  --server-arg=--dot=127.0.0.1:5301 --server-arg=--doh=127.0.0.1:5302 \
  --server-arg=--allow-transfer=127.0.0.1/32 \
  --server-arg=--tls-cert=$TLS/cert.pem --server-arg=--tls-key=$TLS/key.pem"

# UDP and DoT with dnsperf, through the shared kit.
for mode in udp dot; do
  case $mode in
    udp) extra="" ;;
    dot) extra="-m dot -p 5301" ;;
  esac
  echo "== $mode"
  NAME="stackdns-$mode" VERSION="$VERSION" DATA="$DATA" RESULTS="$RESULTS" DNSPERF_EXTRA="$extra" \
    "$KIT/run_anchor.sh" custom "$serve"
done
# (the summary cannot read the DoT rows: dnsperf prints a second average latency, of connections)
RESULTS="$RESULTS" "$KIT/run_anchor.sh" summary || true
echo "(server CPU per query = srv CPU % / 100 / QPS)"

# DoH with h2load (doh_load.py says why not dnsperf), the same server start and pinning.
runs="${RUNS:-3}" duration="${DURATION:-20}"
echo "== doh"
NAME="stackdns-doh" VERSION="$VERSION" DATA="$DATA" RESULTS="$OUT/transports-doh.tsv" RUNS=0 \
  AFTER_LOAD_CMD="for i in \$(seq 1 $runs); do python3 $ROOT/bench/doh_load.py --queries $DATA/queries.txt \
    --url https://127.0.0.1:5302/dns-query --pid \$SRV_PID --seconds $duration; done" \
  "$KIT/run_anchor.sh" custom "$serve"

# The transfer: kdig over TCP and over TLS against the same loaded server, alternating.
if [ ! -f "$XFR_DATA/dataset.json" ]; then
  python3 "$KIT/gen_dataset.py" --stacks 334 --out-dir "$XFR_DATA"   # 100,240 containers
fi
xfr_runs="${XFR_RUNS:-5}"
cat > "$OUT/xfr_time.sh" <<SCRIPT
set -e
for i in \$(seq 1 $xfr_runs); do
  for how in tcp tls; do
    if [ \$how = tcp ]; then port=\$PORT; opt=+tcp; else port=5301; opt=+tls; fi
    start=\$EPOCHREALTIME
    records=\$(kdig @127.0.0.1 -p \$port \$opt +noall +answer cluster.test AXFR | wc -l)
    end=\$EPOCHREALTIME
    awk -v h=\$how -v r=\$records -v a=\$start -v b=\$end 'BEGIN { printf "AXFR over %s: %d records in %.3f s\\n", h, r, b - a }'
  done
done
SCRIPT
echo "== AXFR, $XFR_DATA"
NAME="stackdns-xfr" VERSION="$VERSION" DATA="$XFR_DATA" RESULTS="$OUT/transports-xfr.tsv" RUNS=0 \
  AFTER_LOAD_CMD="bash $OUT/xfr_time.sh" "$KIT/run_anchor.sh" custom "$serve"
