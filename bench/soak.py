#!/usr/bin/env python3
"""Soak: dnsperf saturating DNS and a steady stream of container writes for a long run against a
loaded server, with every answer checked against the expected state throughout.

Loads a dataset through the API (`load_dataset.py serve`), then for --seconds at once:

  dnsperf      the dataset's query mix at saturation (-c 8 -q 200)
  writes       `load_dataset.py latency`: --writes container PUTs a second in the background,
               and a write -> visible sample every --sample-every seconds (p50/p99 reported)
  checker      --check-rate random names a second (cont A, svc A, SRV), each compared with what
               the dataset says; the service the writes go to is left out, since it changes
  RSS          of the server every 10 s

and exits 1 if any answer was wrong (an unanswered query under saturation is counted, not an
error). Figures go to stdout as one table.

    python3 bench/soak.py --binary target/release/stackdns --data bench-out/data/large   # 300k, 10 min
    python3 bench/soak.py --binary target/debug/stackdns --synthetic 3000 --seconds 20 --writes 100

--synthetic N writes a small dataset of N containers itself (the shape of the shared kit's
gen_dataset.py), so the script runs without the kit (CI does this). Standard library only; every
process it starts is stopped by its PID.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load_dataset as L  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def synthetic(folder, containers):
    """A dataset.json, queries.txt and zone file like gen_dataset.py's: services of 3 containers
    on 20 nodes, every container answering its own address and port."""
    nodes = [{"id": i, "name": "node-%d" % i, "ipv4": "10.1.0.%d" % (i + 1)} for i in range(20)]
    items, queries = [], []
    for i in range(containers):
        service, member = i // 3, i % 3 + 1
        svc = "service-%d.stack-0.user-0.svc.cluster.test." % service
        name = "service-%d-%d" % (service, member)
        node = nodes[i % len(nodes)]
        items.append({"container_port": 80, "fqdn": "%s.stack-0.user-0.cont.cluster.test." % name,
                      "ipv4": node["ipv4"], "name": name, "node": node["name"], "port": 20000 + i,
                      "protocol": "tcp", "service": svc})
        queries += ["%s A" % svc, "_80._tcp.%s SRV" % svc, "%s.stack-0.user-0.cont.cluster.test. A" % name]
    queries.append("nope.stack-0.user-0.svc.cluster.test. A")
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"zone": "cluster.test.", "ttl": 30, "nodes": nodes, "containers": items}, f)
    with open(os.path.join(folder, "queries.txt"), "w") as f:
        f.write("\n".join(queries) + "\n")
    # The zone as the kit writes it: apex records, then every platform record at TTL 30 (which
    # load_dataset.py drops, taking the TTL), a container name last (its readiness probe).
    lines = ["$ORIGIN cluster.test.", "$TTL 30",
             "cluster.test. 3600 IN SOA ns1.cluster.test. hostmaster.cluster.test. 1 3600 600 86400 30",
             "cluster.test. 3600 IN NS ns1.cluster.test.", "ns1.cluster.test. 3600 IN A 127.0.0.1"]
    lines += ["%s.node.cluster.test. 30 IN A %s" % (n["name"], n["ipv4"]) for n in nodes]
    lines += ["%s 30 IN A %s" % (c["service"], c["ipv4"]) for c in items]
    lines += ["%s 30 IN A %s" % (c["fqdn"], c["ipv4"]) for c in items]
    with open(os.path.join(folder, "cluster.test.zone"), "w") as f:
        f.write("\n".join(lines) + "\n")


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Checker(threading.Thread):
    """Asks random names and compares the answers with the dataset until stopped."""

    def __init__(self, dns, plan, skip_service, rate):
        super().__init__(daemon=True)
        self.dns, self.rate = dns, rate
        self.keys = sorted(k for k in plan["expected"] if skip_service not in k[0])
        self.expected = plan["expected"]
        self.stop = threading.Event()
        self.checked = self.wrong = self.unanswered = 0
        self.examples = []

    def run(self):
        rng = random.Random(7)
        while not self.stop.is_set():
            t0 = time.monotonic()
            name, qtype = rng.choice(self.keys)
            try:
                resp = L.dns_query(self.dns, name, qtype, timeout=1.0, tries=2)
            except L.DnsError:
                self.unanswered += 1
                continue
            got, _ = L.answer_set(resp, name, qtype)
            self.checked += 1
            if resp["rcode"] != 0 or got != self.expected[(name, qtype)]:
                self.wrong += 1
                if len(self.examples) < 10:
                    self.examples.append("%s %s: rcode %d %s, expected %s" % (
                        name, qtype, resp["rcode"], sorted(got), sorted(self.expected[(name, qtype)])))
            self.stop.wait(max(0.0, 1.0 / self.rate - (time.monotonic() - t0)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", required=True)
    p.add_argument("--data", help="a dataset folder (dataset.json, queries.txt, cluster.test.zone)")
    p.add_argument("--synthetic", type=int, help="make a dataset of this many containers instead")
    p.add_argument("--seconds", type=int, default=600)
    p.add_argument("--writes", type=int, default=1000, help="container writes a second [1000]")
    p.add_argument("--sample-every", type=float, default=1.0, help="s between write->visible samples [1]")
    p.add_argument("--check-rate", type=float, default=100.0, help="checked names a second [100]")
    args = p.parse_args(argv)
    if not shutil.which("dnsperf"):
        raise SystemExit("dnsperf is needed (apt-get install dnsperf)")
    work = tempfile.mkdtemp(prefix="stackdns-soak.")
    procs = []
    try:
        data = args.data
        if args.synthetic:
            data = os.path.join(work, "dataset")
            os.makedirs(data)
            synthetic(data, args.synthetic)
        if not data:
            raise SystemExit("pass --data DIR or --synthetic N")
        data = os.path.abspath(data)
        with open(os.path.join(data, "dataset.json")) as f:
            plan = L.build_plan(json.load(f))
        port = L.free_tcp_port("127.0.0.1")
        env = dict(os.environ, PORT=str(port), ZONE_FILE=os.path.join(data, "cluster.test.zone"),
                   DATA_DIR=data, WORKDIR=work)
        serve_log = os.path.join(work, "serve.log")
        server = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "load_dataset.py"), "serve", "--binary", os.path.abspath(args.binary),
             "--verify", "100", "--ttl", str(plan["ttl"]), "--server-arg=--metrics-addr=off"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(serve_log, "w"))
        procs.append(server)
        t_load = time.monotonic()
        while True:
            with open(serve_log) as f:
                text = f.read()
            if "all correct" in text:
                break
            if server.poll() is not None or "error" in text.lower() or time.monotonic() - t_load > 3600:
                raise SystemExit("the server did not load:\n" + text[-2000:])
            time.sleep(0.5)
        L.log("soak: %d containers loaded in %.0f s; running %d s" % (plan["containers"], time.monotonic() - t_load, args.seconds))
        state = json.load(open(os.path.join(work, "stackdns-bench.json")))
        api = L.Api(state["api"], state["token"])
        target = argparse.Namespace(node=None, service=None)
        _, _, user, stack, service, _ = L.discover_target(api, target)
        skip = "%s.%s.%s.svc." % (service, stack, user)

        dnsperf_out = os.path.join(work, "dnsperf.txt")
        dnsperf = subprocess.Popen(
            ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", os.path.join(data, "queries.txt"),
             "-l", str(args.seconds), "-c", "8", "-q", "200"],
            stdout=open(dnsperf_out, "w"), stderr=subprocess.STDOUT)
        procs.append(dnsperf)
        samples = max(1, int(args.seconds / args.sample_every) - 5)
        latency_out = os.path.join(work, "latency.txt")
        latency = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "load_dataset.py"), "latency", "--samples", str(samples),
             "--interval", str(args.sample_every), "--background-writes", str(args.writes)],
            env=env, stdout=open(latency_out, "w"), stderr=subprocess.STDOUT)
        procs.append(latency)
        checker = Checker(("127.0.0.1", port), plan, skip, args.check_rate)
        checker.start()
        rss = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.seconds and latency.poll() is None:
            rss.append((time.monotonic() - t0, rss_kb(server.pid)))
            time.sleep(min(10.0, max(1.0, args.seconds / 20)))
        latency.wait(timeout=args.seconds + 300)
        checker.stop.set()
        checker.join()
        dnsperf.send_signal(signal.SIGINT)
        dnsperf.wait(timeout=60)
        rss.append((time.monotonic() - t0, rss_kb(server.pid)))

        perf = open(dnsperf_out).read()
        lat = open(latency_out).read()
        qps = re.search(r"Queries per second:\s+([\d.]+)", perf)
        lost = re.search(r"Queries lost:\s+(\d+) \(([\d.]+)%\)", perf)
        visible = re.search(r"^visible.*?\s([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$", lat, re.M)
        writes = re.search(r"background writes: (\d+) at (\d+)/s", lat)
        warm = [kb for t, kb in rss if t >= min(60.0, args.seconds / 5)] or [kb for _, kb in rss]
        print("soak: %d containers, %d s, %s" % (plan["containers"], args.seconds, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
        rows = [
            ("DNS queries/s (dnsperf, saturating)", qps.group(1) if qps else "?"),
            ("DNS queries lost", "%s (%s%%)" % (lost.group(1), lost.group(2)) if lost else "?"),
            ("container writes/s meanwhile", writes.group(2) if writes else "?"),
            ("write -> visible p50 / p99 / max, ms", "%s / %s / %s" % visible.group(1, 2, 3) if visible else "?"),
            ("answers checked / wrong / unanswered", "%d / %d / %d" % (checker.checked, checker.wrong, checker.unanswered)),
            ("server RSS after warm-up: first / max / last, MiB", "%d / %d / %d" % (
                warm[0] // 1024, max(warm) // 1024, warm[-1] // 1024)),
        ]
        for label, value in rows:
            print("  %-50s %s" % (label, value))
        for e in checker.examples:
            print("  WRONG " + e)
        if "FAILED" in lat or "failed:" in lat:
            print("  latency run reported failures:\n" + lat[-1500:])
        return 1 if checker.wrong or not visible else 0
    finally:
        for proc in reversed(procs):
            L.stop_process(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
