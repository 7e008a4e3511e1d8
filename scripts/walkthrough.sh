#!/usr/bin/env bash
# The README walkthrough, run for real against a built binary: the server, two agents, the CLI,
# dig, curl through HAProxy, with checks. Then the curl walkthrough of docs/api.md.
#
#   scripts/walkthrough.sh [path/to/stackdns]     (default: target/debug/stackdns)
#
# Starts the server on its default ports (DNS 127.0.0.1:1053, API 127.0.0.1:8053) with a fresh
# data directory, and two agents (node-do at 127.0.0.2, node-ec2 at 127.0.0.3) whose containers
# bind port 80 there: run it as root, with python3 and haproxy installed. Follows the README,
# checks every answer, and stops every process it started by its PID, containers included.
# On failure it exits non-zero and prints the server's and the agents' logs.
set -euo pipefail

BIN="${1:-target/debug/stackdns}"
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
DNS_PORT=1053
API=http://127.0.0.1:8053
STACK=honeniq/quickstart-ruby
SERVER= AGENT_DO= AGENT_EC2=

# Containers outlive their agent by design: after the agents, kill every container's process
# group that a state file still names.
kill_containers() {
  local f pid
  for f in "$WORK"/stackdns-agent-*/containers/*/*/*/state.json; do
    [ -f "$f" ] || continue
    pid=$(jq -r .pid "$f" 2>/dev/null || true)
    [[ "$pid" =~ ^[0-9]+$ ]] && [ "$pid" -gt 1 ] && kill -9 -- "-$pid" 2>/dev/null || true
  done
}
stop() { # stop PID: SIGTERM, then wait for it
  [ -n "$1" ] || return 0
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  stop "$AGENT_DO"; stop "$AGENT_EC2"; AGENT_DO= AGENT_EC2=
  kill_containers
  stop "$SERVER"; SERVER=
  rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
  echo "walkthrough: FAILED: $*" >&2
  for log in "$WORK"/*.log; do
    [ -f "$log" ] && { echo "--- $(basename "$log") ---" >&2; cat "$log" >&2; }
  done
  for log in "$WORK"/stackdns-agent-*/containers/*/*/*/stderr.log; do
    [ -s "$log" ] && { echo "--- ${log#"$WORK"/} (last lines) ---" >&2; tail -5 "$log" >&2; }
  done
  exit 1
}

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s until it succeeds.
wait_for() {
  local limit=$(($1 * 5)) what=$2 i
  shift 2
  for ((i = 0; i < limit; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  fail "timed out waiting for $what"
}

# The README and docs/api.md show the quick-start Stackfiles inline: they must be the fixtures.
shows() { # shows DOC FIXTURE
  python3 -c 'import sys; r, f = (open(p).read() for p in sys.argv[1:]); sys.exit(("<<'"'"'YAML'"'"'\n" + f + "YAML") not in r)' \
    "$ROOT/$1" "$ROOT/$2" \
    || { echo "walkthrough: FAILED: $1 does not show $2 as it is" >&2; exit 1; }
}
for f in stackfile.yml stackfile-scaled.yml; do
  shows README.md "tests/data/quickstart/process/$f"
  shows docs/api.md "tests/data/quickstart/$f"
done

for tool in dig kdig jq curl python3 haproxy; do
  command -v "$tool" >/dev/null || { echo "walkthrough: FAILED: $tool is not installed" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "walkthrough: FAILED: run it as root (the containers bind port 80)" >&2; exit 1; }

cd "$WORK"
start_server() { # start_server LOG
  "$BIN" serve --data "$WORK/stackdns-data" --zone-file "$ROOT/zones/cluster.test.zone" >"$WORK/$1" 2>&1 &
  SERVER=$!
  wait_for 10 "the server" grep -q "listening dns=" "$WORK/$1"
  grep -q "listening dns=127.0.0.1:1053 api=127.0.0.1:8053" "$WORK/$1" || fail "server did not start on the default ports"
}
start_server server.log

stackdns() { "$BIN" "$@"; }
q() { dig @127.0.0.1 -p $DNS_PORT +short "$@"; }
# running NAMES...: every named container of the stack is running (and in DNS).
running() {
  local ps want
  ps=$(stackdns stack ps $STACK --json) || return 1
  for want in "$@"; do
    [ "$(jq -r --arg n "$want" '.stack.containers[] | select(.name == $n) | .state' <<<"$ps")" = running ] || return 1
  done
}
# containers N: the stack has exactly N containers.
containers() { [ "$(stackdns stack ps $STACK --json | jq '.stack.containers | length')" = "$1" ]; }

# --- the README: two nodes, two agents ---
stackdns node add node-do --address 127.0.0.2 >node-do.token 2>add.err || fail "node add node-do"
stackdns node add node-ec2 --address 127.0.0.3 >node-ec2.token 2>>add.err || fail "node add node-ec2"
grep -Eqx '[0-9a-f]{64}' node-do.token || fail "node add printed '$(cat node-do.token)', not a token alone"
grep -q "node node-do registered at 127.0.0.2; its token is shown once" add.err || fail "node add said '$(cat add.err)'"

"$BIN" agent --node node-do --token-file node-do.token >"$WORK/agent-node-do.log" 2>&1 &
AGENT_DO=$!
"$BIN" agent --node node-ec2 --token-file node-ec2.token >"$WORK/agent-node-ec2.log" 2>&1 &
AGENT_EC2=$!
for node in node-do node-ec2; do
  wait_for 10 "agent $node" grep -q "resynchronised the node's containers" "$WORK/agent-$node.log"
done
[ "$(stackdns node ls --json | jq -r '[.nodes[] | .state] | join(" ")')" = "live live" ] || fail "nodes not live"
[ -d stackdns-agent-node-do ] || fail "the agent's data directory is not ./stackdns-agent-node-do"

# --- the first Stackfile: web on host port 80 ---
cp "$ROOT/tests/data/quickstart/process/stackfile.yml" stackfile.yml
stackdns stack up $STACK -f stackfile.yml >up.out 2>up.err || fail "stack up: $(cat up.err)"
grep -q "added redis-1 web-1" up.err || fail "stack up said '$(cat up.err)'"
wait_for 20 "web-1 and redis-1 running" running web-1 redis-1
stackdns stack ps $STACK | grep -Eq '^web-1 +web +node-do +running +80->80/tcp' || fail "stack ps: $(stackdns stack ps $STACK)"
[ "$(q web.quickstart-ruby.honeniq.svc.cluster.test)" = 127.0.0.2 ] || fail "svc did not answer 127.0.0.2"
[ "$(curl -sf http://127.0.0.2/)" = "web-1 on node-do" ] || fail "curl http://127.0.0.2/ did not reach web-1"

# Scale to 2: one web per node, both on port 80.
stackdns service scale $STACK/web 2 >/dev/null 2>scale.err || fail "scale to 2: $(cat scale.err)"
wait_for 20 "web-2 running" running web-1 web-2
[ "$(curl -sf http://127.0.0.3/)" = "web-2 on node-ec2" ] || fail "curl http://127.0.0.3/ did not reach web-2"

# DNS, as any client sees it.
both=$(q web.quickstart-ruby.honeniq.svc.cluster.test | sort | tr '\n' ' ')
[ "$both" = "127.0.0.2 127.0.0.3 " ] || fail "svc answered '$both'"
first1=$(q web.quickstart-ruby.honeniq.svc.cluster.test | head -1)
first2=$(q web.quickstart-ruby.honeniq.svc.cluster.test | head -1)
[ "$first1" != "$first2" ] || fail "order did not rotate ($first1 twice)"
[ "$(q web-1.quickstart-ruby.honeniq.cont.cluster.test)" = "127.0.0.2" ] || fail "cont name"
[ "$(q node-ec2.node.cluster.test)" = "127.0.0.3" ] || fail "node name"
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

# A third web container cannot have port 80 anywhere: 422, exit code 1, nothing changes.
code=0
stackdns service scale $STACK/web 3 >/dev/null 2>scale.err || code=$?
[ "$code" = 1 ] || fail "scale to 3 exited $code"
grep -q 'cannot place web-3: needs host port 80/tcp.*publish the port dynamically ("80").*(port_conflict, HTTP 422)' scale.err \
  || fail "scale to 3 said '$(cat scale.err)'"
containers 3 || fail "the refused scale changed the stack"

# --- the second Stackfile: web on dynamic ports x3, HAProxy on port 80 ---
cp "$ROOT/tests/data/quickstart/process/stackfile-scaled.yml" stackfile.yml
stackdns stack up $STACK -f stackfile.yml >up.out 2>up.err || fail "second stack up: $(cat up.err)"
grep -q "added haproxy-1 web-3; redeployed web-1 web-2" up.err || fail "second stack up said '$(cat up.err)'"
wait_for 30 "haproxy and three web containers running" running haproxy-1 redis-1 web-1 web-2 web-3
[ "$(stackdns lookup _80._tcp.web.quickstart-ruby.honeniq.svc SRV | grep -c ' IN SRV ')" = 3 ] || fail "SRV does not list three web containers"
LB=$(stackdns lookup haproxy-1.quickstart-ruby.honeniq.cont | awk '{print $5}')
[ "$LB" = 127.0.0.2 ] || fail "haproxy-1 is at '$LB', expected node-do's 127.0.0.2"
# seen N: N different web containers answered through HAProxy within 40 requests.
seen() {
  local i
  for i in $(seq 40); do curl -s --max-time 2 "http://$LB/" || true; echo; done | grep -E '^web-[0-9]+ on node-' | sort -u | wc -l | grep -qx "$1"
}
wait_for 20 "HAProxy to spread requests over 3 web containers" seen 3

# Scale to 5: HAProxy follows SRV; then back to 3.
stackdns service scale $STACK/web 5 >/dev/null 2>scale.err || fail "scale to 5: $(cat scale.err)"
wait_for 20 "five web containers running" running web-1 web-2 web-3 web-4 web-5
[ "$(stackdns lookup _80._tcp.web.quickstart-ruby.honeniq.svc SRV | grep -c ' IN SRV ')" = 5 ] || fail "SRV does not list five web containers"
wait_for 20 "HAProxy to spread requests over 5 web containers" seen 5
stackdns service scale $STACK/web 3 >/dev/null 2>scale.err || fail "scale to 3: $(cat scale.err)"
grep -q "removed web-4 web-5" scale.err || fail "scale back to 3 said '$(cat scale.err)'"
[ "$(stackdns lookup _80._tcp.web.quickstart-ruby.honeniq.svc SRV | grep -c ' IN SRV ')" = 3 ] || fail "SRV still lists web-4 or web-5"

# A failing health check takes web-1 out of DNS (known, NODATA), and back in when it passes.
touch stackdns-agent-node-do/containers/honeniq/quickstart-ruby/web-1/unhealthy
unready() { stackdns stack ps $STACK | grep -Eq '^web-1 .* unready .*health check failed: GET /healthz answered 503'; }
wait_for 10 "web-1 unready" unready
code=0; stackdns lookup web-1.quickstart-ruby.honeniq.cont >/dev/null 2>&1 || code=$?
[ "$code" = 1 ] || fail "the unready web-1 still answers (lookup exited $code)"
dig @127.0.0.1 -p $DNS_PORT web-1.quickstart-ruby.honeniq.cont.cluster.test | grep -q "status: NOERROR" || fail "unready web-1 is not NODATA"
rm stackdns-agent-node-do/containers/honeniq/quickstart-ruby/web-1/unhealthy
wait_for 10 "web-1 back in DNS" running web-1

# --- cleanup: the agents drain and stop every container ---
pids=$(cat stackdns-agent-*/containers/*/*/*/state.json | jq -r .pid)
[ "$(wc -w <<<"$pids")" -ge 5 ] || fail "expected a state file for each of the 5 containers, found pids: $pids"
stackdns stack rm $STACK 2>rm.err || fail "stack rm: $(cat rm.err)"
no_state() { ! compgen -G "$WORK/stackdns-agent-*/containers/*/*/*/state.json" >/dev/null; }
wait_for 30 "the agents to stop every container" no_state
for pid in $pids; do
  ! kill -0 "$pid" 2>/dev/null || fail "container process $pid still runs after stack rm"
done
q web.quickstart-ruby.honeniq.svc.cluster.test | grep -q . && fail "web still answers after stack rm"
for pid in "$AGENT_DO" "$AGENT_EC2"; do
  kill -TERM "$pid"; wait "$pid" || fail "agent $pid: unclean exit on SIGTERM"
done
AGENT_DO= AGENT_EC2=
kill -TERM "$SERVER"; wait "$SERVER" || fail "unclean exit on SIGTERM"; SERVER=

# --- docs/api.md, "Walkthrough with curl": the same API by hand, a fresh server ---
rm -rf "$WORK/stackdns-data"
start_server server-curl.log
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
both=$(q web.quickstart-ruby.honeniq.svc.cluster.test | sort | tr '\n' ' ')
[ "$both" = "52.193.37.165 95.85.30.162 " ] || fail "curl walkthrough: svc answered '$both'"
[ "$(q web-1.quickstart-ruby.honeniq.cont.cluster.test)" = "95.85.30.162" ] || fail "curl walkthrough: cont name"
[ "$(q _80._tcp.web.quickstart-ruby.honeniq.svc.cluster.test SRV | wc -l)" = 2 ] || fail "curl walkthrough: SRV"
# Out of DNS while still running (ready=false), then stopped.
curl -sf -X PUT -H "Authorization: Bearer $EC2_TOKEN" \
  $API/v1/nodes/node-ec2/containers/honeniq/quickstart-ruby/web-2 \
  -d '{"service":"web","ports":[{"container_port":80,"host_port":80}],"generation":1,"ready":false,"detail":"draining"}' >/dev/null \
  || fail "curl walkthrough: ready=false"
[ "$(q web.quickstart-ruby.honeniq.svc.cluster.test)" = "95.85.30.162" ] || fail "curl walkthrough: unready web-2 still answered"
curl -sf -X DELETE -H "Authorization: Bearer $EC2_TOKEN" \
  "$API/v1/nodes/node-ec2/containers/honeniq/quickstart-ruby/web-2?generation=1&detail=stopped+by+the+agent" >/dev/null \
  || fail "curl walkthrough: DELETE"
[ "$(q web.quickstart-ruby.honeniq.svc.cluster.test)" = "95.85.30.162" ] || fail "curl walkthrough: web-2 still answered"

cp "$ROOT/tests/data/quickstart/stackfile.yml" stackfile.yml
first=$(curl -s -X PUT -H "$AUTH" -H 'Content-Type: application/yaml' \
  --data-binary @stackfile.yml $API/v1/stacks/honeniq/quickstart-ruby | jq -r '[.stack.containers[].name] | join(" ")')
[ "$first" = "redis-1 web-1" ] || fail "curl walkthrough: first Stackfile placed '$first'"
two=$(curl -s -X PATCH -H "$AUTH" $API/v1/stacks/honeniq/quickstart-ruby/services/web \
  -d '{"target_num_containers": 2}' | jq -r '[.stack.containers[] | select(.service == "web") | .node] | unique | length')
[ "$two" = 2 ] || fail "curl walkthrough: web-1 and web-2 not on two nodes"
three=$(curl -s -X PATCH -H "$AUTH" $API/v1/stacks/honeniq/quickstart-ruby/services/web \
  -d '{"target_num_containers": 3}' | jq -r '.error.message')
grep -q "cannot place web-3: needs host port 80/tcp" <<<"$three" || fail "curl walkthrough: scale to 3 said '$three'"
cp "$ROOT/tests/data/quickstart/stackfile-scaled.yml" stackfile.yml
webs=$(curl -s -X PUT -H "$AUTH" -H 'Content-Type: application/yaml' \
  --data-binary @stackfile.yml $API/v1/stacks/honeniq/quickstart-ruby | jq '[.stack.containers[] | select(.service == "web")] | length')
[ "$webs" = 3 ] || fail "curl walkthrough: second Stackfile placed $webs web containers"
for node in node-do node-ec2; do
  token=$([ $node = node-do ] && echo $DO_TOKEN || echo $EC2_TOKEN)
  curl -s -H "Authorization: Bearer $token" $API/v1/nodes/$node/assignments \
    | jq '{containers: [.assignments[] | {user, stack, name, service, ports, generation}]}' \
    | curl -sf -X PUT -H "Authorization: Bearer $token" $API/v1/nodes/$node/containers -d @- >/dev/null \
    || fail "curl walkthrough: agent report for $node"
done
[ "$(q _80._tcp.web.quickstart-ruby.honeniq.svc.cluster.test SRV | wc -l)" = 3 ] || fail "curl walkthrough: SRV does not list three web containers"

kill -TERM "$SERVER"; wait "$SERVER" || fail "unclean exit on SIGTERM"; SERVER=
echo "walkthrough: 1 passed, 0 failed"
