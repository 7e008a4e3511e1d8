#!/usr/bin/env bash
# The README walkthrough, run for real against a built binary with curl and dig, with checks.
#
#   scripts/walkthrough.sh [path/to/stackdns]     (default: target/debug/stackdns)
#
# Starts the server on its default ports (DNS 127.0.0.1:1053, API 127.0.0.1:8053) with a fresh
# data directory, follows the README, checks every answer, and stops the server by its PID.
set -euo pipefail

BIN="${1:-target/debug/stackdns}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
DNS_PORT=1053
API=http://127.0.0.1:8053
PID=

cleanup() {
  if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "walkthrough: FAILED: $*" >&2; echo "--- server log ---" >&2; cat "$WORK/log" >&2; exit 1; }

# The README shows the quick-start Stackfiles inline: they must be the fixtures the tests use.
for f in stackfile.yml stackfile-scaled.yml; do
  python3 -c 'import sys; r, f = (open(p).read() for p in sys.argv[1:]); sys.exit(("<<'"'"'YAML'"'"'\n" + f + "YAML") not in r)' \
    "$ROOT/README.md" "$ROOT/tests/data/quickstart/$f" \
    || { echo "walkthrough: FAILED: README.md does not show tests/data/quickstart/$f as it is" >&2; exit 1; }
done

"$BIN" serve --data "$WORK/stackdns-data" --zone-file zones/cluster.test.zone >"$WORK/log" 2>&1 &
PID=$!
for _ in $(seq 100); do grep -q "listening dns=" "$WORK/log" && break; sleep 0.1; done
grep -q "listening dns=127.0.0.1:1053 api=127.0.0.1:8053" "$WORK/log" || fail "server did not start on the default ports"

# --- the README's commands, verbatim apart from the data directory ---
TOKEN=$(cat "$WORK/stackdns-data/admin.token")
AUTH="Authorization: Bearer $TOKEN"

DO_TOKEN=$(curl -sf -X PUT -H "$AUTH" $API/v1/nodes/node-do -d '{"address":"95.85.30.162"}' | jq -r .token)
EC2_TOKEN=$(curl -sf -X PUT -H "$AUTH" $API/v1/nodes/node-ec2 -d '{"address":"52.193.37.165"}' | jq -r .token)

curl -sf -X PUT -H "Authorization: Bearer $DO_TOKEN" \
  $API/v1/nodes/node-do/containers/honeniq/quickstart-ruby/web-1 \
  -d '{"service":"web","ports":[{"container_port":80,"host_port":80}],"generation":1}' >/dev/null
curl -sf -X PUT -H "Authorization: Bearer $EC2_TOKEN" \
  $API/v1/nodes/node-ec2/containers/honeniq/quickstart-ruby/web-2 \
  -d '{"service":"web","ports":[{"container_port":80,"host_port":80}],"generation":1}' >/dev/null

q() { dig @127.0.0.1 -p $DNS_PORT +short "$@"; }
# --- checks ---
both=$(q web.quickstart-ruby.honeniq.svc.cluster.test | sort | tr '\n' ' ')
[ "$both" = "52.193.37.165 95.85.30.162 " ] || fail "svc answered '$both'"
first1=$(q web.quickstart-ruby.honeniq.svc.cluster.test | head -1)
first2=$(q web.quickstart-ruby.honeniq.svc.cluster.test | head -1)
[ "$first1" != "$first2" ] || fail "order did not rotate ($first1 twice)"
[ "$(q web-1.quickstart-ruby.honeniq.cont.cluster.test)" = "95.85.30.162" ] || fail "cont name"
[ "$(q node-ec2.node.cluster.test)" = "52.193.37.165" ] || fail "node name"
srv=$(q _80._tcp.web.quickstart-ruby.honeniq.svc.cluster.test SRV | sort | tr '\n' ' ')
[ "$srv" = "0 1 80 web-1.quickstart-ruby.honeniq.cont.cluster.test. 0 1 80 web-2.quickstart-ruby.honeniq.cont.cluster.test. " ] \
  || fail "SRV answered '$srv'"
dig @127.0.0.1 -p $DNS_PORT nope.svc.cluster.test | grep -q "status: NXDOMAIN" || fail "NXDOMAIN"
dig @127.0.0.1 -p $DNS_PORT example.com | grep -q "status: REFUSED" || fail "REFUSED"
dig @127.0.0.1 -p $DNS_PORT +tcp web.quickstart-ruby.honeniq.svc.cluster.test | grep -q "flags: qr aa rd;" || fail "TCP, AA"

# A second client, kdig, on protocol corners: EDNS version 1 is BADVERS (RFC 6891), ANY is one
# RRset (RFC 8482), and zone transfers are refused to peers that are not allowed.
kdig @127.0.0.1 -p $DNS_PORT +edns=1 web.quickstart-ruby.honeniq.svc.cluster.test | grep -q "status: BADVERS" || fail "BADVERS"
[ "$(kdig @127.0.0.1 -p $DNS_PORT +short web.quickstart-ruby.honeniq.svc.cluster.test ANY | wc -l)" = 2 ] || fail "ANY"
xfr=$(kdig @127.0.0.1 -p $DNS_PORT cluster.test AXFR 2>&1 || true)   # kdig exits 1 when refused
grep -q "REFUSED" <<<"$xfr" || fail "AXFR not refused: $xfr"

# Stopping web-2 takes it out of DNS.
curl -sf -X DELETE -H "Authorization: Bearer $EC2_TOKEN" \
  "$API/v1/nodes/node-ec2/containers/honeniq/quickstart-ruby/web-2?generation=1" >/dev/null
[ "$(q web.quickstart-ruby.honeniq.svc.cluster.test)" = "95.85.30.162" ] || fail "web-2 still answered"

# --- the README's stack section ---
cd "$WORK"
cp "$ROOT/tests/data/quickstart/stackfile.yml" stackfile.yml
first=$(curl -s -X PUT -H "$AUTH" -H 'Content-Type: application/yaml' \
  --data-binary @stackfile.yml $API/v1/stacks/honeniq/quickstart-ruby | jq -r '[.stack.containers[].name] | join(" ")')
[ "$first" = "redis-1 web-1" ] || fail "first Stackfile placed '$first'"
two=$(curl -s -X PATCH -H "$AUTH" $API/v1/stacks/honeniq/quickstart-ruby/services/web \
  -d '{"target_num_containers": 2}' | jq -r '[.stack.containers[] | select(.service == "web") | .node] | unique | length')
[ "$two" = 2 ] || fail "web-1 and web-2 not on two nodes"
three=$(curl -s -X PATCH -H "$AUTH" $API/v1/stacks/honeniq/quickstart-ruby/services/web \
  -d '{"target_num_containers": 3}' | jq -r '.error.message')
grep -q "cannot place web-3: needs host port 80/tcp" <<<"$three" || fail "scale to 3 said '$three'"
cp "$ROOT/tests/data/quickstart/stackfile-scaled.yml" stackfile.yml
webs=$(curl -s -X PUT -H "$AUTH" -H 'Content-Type: application/yaml' \
  --data-binary @stackfile.yml $API/v1/stacks/honeniq/quickstart-ruby | jq '[.stack.containers[] | select(.service == "web")] | length')
[ "$webs" = 3 ] || fail "second Stackfile placed $webs web containers"
for node in node-do node-ec2; do
  token=$([ $node = node-do ] && echo $DO_TOKEN || echo $EC2_TOKEN)
  curl -s -H "Authorization: Bearer $token" $API/v1/nodes/$node/assignments \
    | jq '{containers: [.assignments[] | {user, stack, name, service, ports, generation}]}' \
    | curl -sf -X PUT -H "Authorization: Bearer $token" $API/v1/nodes/$node/containers -d @- >/dev/null \
    || fail "agent report for $node"
done
[ "$(q _80._tcp.web.quickstart-ruby.honeniq.svc.cluster.test SRV | wc -l)" = 3 ] || fail "SRV does not list three web containers"

kill -TERM "$PID"; wait "$PID" || fail "unclean exit on SIGTERM"; PID=
echo "walkthrough: 1 passed, 0 failed"
