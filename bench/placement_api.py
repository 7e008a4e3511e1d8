#!/usr/bin/env python3
"""Placement at scale through the real server: `service scale` and `stack up` on a big cluster.

Starts `stackdns serve` on a fresh data directory, registers --nodes nodes, declares --stacks
stacks of 10 services (dynamic port 80, half emptiest_node, half high_availability) so that
placement holds --stacks x 10 x --per-service assignments, then times, through the HTTP API:

  scale    PATCH one service's target up by one and back (each a committed write)
  stack    PUT a new stack of 10 services x 10 containers, then DELETE it

and prints p50/p99 of each. What it measures is the whole path: authorization, quota, the plan
on the kept index, the commit, the DNS snapshot and the response.

    python3 bench/placement_api.py --binary target/release/stackdns --stacks 1000   # 1M assignments

Standard library only; loopback only; the server is stopped by its PID.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load_dataset as L  # noqa: E402

TOKEN = "placement-bench-admin-token-0123456789abcdef"


def stack_yaml(per_service, prefix="svc"):
    return "".join(
        "%s-%d:\n  image: x\n  ports: ['80']\n  target_num_containers: %d\n  deployment_strategy: %s\n"
        % (prefix, i, per_service, "emptiest_node" if i % 2 == 0 else "high_availability")
        for i in range(10))


def put_yaml(api, path, text):
    """PUT a Stackfile as YAML; raises on a status other than 2xx."""
    api.request("PUT", path, text=text, content_type="application/yaml")


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", required=True)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--stacks", type=int, default=100, help="stacks of 10 services [100]")
    p.add_argument("--per-service", type=int, default=100, help="containers per service [100]")
    p.add_argument("--samples", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args(argv)

    work = tempfile.mkdtemp(prefix="stackdns-placement.")
    api_port, dns_port = L.free_tcp_port("127.0.0.1"), L.free_tcp_port("127.0.0.1")
    env = dict(os.environ, STACKDNS_ADMIN_TOKEN=TOKEN)
    server = subprocess.Popen(
        [args.binary, "serve", "--dns", "127.0.0.1:%d" % dns_port, "--api", "127.0.0.1:%d" % api_port,
         "--data", os.path.join(work, "data"), "--metrics-addr", "off", "--node-ttl", "86400"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "server.log"), "w"))
    try:
        api = L.Api("http://127.0.0.1:%d" % api_port, TOKEN, timeout=600)
        for _ in range(300):
            try:
                api.request("GET", "/readyz")
                break
            except (OSError, L.ApiError):
                api.reset()
                time.sleep(0.1)
        api.request("PUT", "/v1/users/bench/limits",
                    {"max_containers": 10 * args.stacks * args.per_service + 1000, "max_stacks": args.stacks + 10})

        import concurrent.futures as cf
        with cf.ThreadPoolExecutor(args.concurrency) as pool:
            def node(i):
                api.request("PUT", "/v1/nodes/node-%04d" % i,
                            {"address": "10.%d.%d.%d" % (i // 65536, i // 256 % 256, i % 256),
                             "labels": {"region": "r%d" % (i % 5), "provider": "p%d" % (i % 3)}})
            list(pool.map(node, range(args.nodes)))
        t0 = time.perf_counter()
        body = stack_yaml(args.per_service)
        for s in range(args.stacks):
            put_yaml(api, "/v1/stacks/bench/st-%04d" % s, body)
        declared = time.perf_counter() - t0
        total = 10 * args.stacks * args.per_service
        L.log("%d assignments on %d nodes declared in %.1f s (%d stacks)" % (total, args.nodes, declared, args.stacks))

        path = "/v1/stacks/bench/st-0000/services/svc-1"
        scale = []
        for i in range(args.samples):
            scale.append(timed(lambda: api.request("PATCH", path, {"target_num_containers": args.per_service + 1})))
            scale.append(timed(lambda: api.request("PATCH", path, {"target_num_containers": args.per_service})))
        small = stack_yaml(10, prefix="new")
        up, down = [], []
        for i in range(args.samples):
            up.append(timed(lambda: put_yaml(api, "/v1/stacks/bench/extra", small)))
            down.append(timed(lambda: api.request("DELETE", "/v1/stacks/bench/extra", ok=(200, 204))))

        def row(name, vals):
            vals = sorted(vals)
            print("%-52s p50 %8.2f ms   p99 %8.2f ms   (%d)" % (
                name, 1000 * L.percentile(vals, 50), 1000 * L.percentile(vals, 99), len(vals)))
        print("placement through the API: %d assignments, %d nodes" % (total, args.nodes))
        row("service scale (+1 / -1), PATCH", scale)
        row("stack up of 10 services x 10 containers, PUT", up)
        row("stack rm of the same, DELETE", down)
        return 0
    finally:
        L.stop_process(server)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
