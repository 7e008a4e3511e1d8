#!/usr/bin/env python3
"""Crash loop: kill -9 the server at random moments under concurrent writes, restart it, and
check that every acknowledged write is there and nothing else changed.

Each of --writers threads owns one node and sends, as fast as the server answers, a random mix
of single reports (new containers, or a higher generation), stops, and anti-entropy replaces of
the node's whole list. Every acknowledged write updates the thread's model of its node. After a
random delay the server gets SIGKILL; the write in flight on each thread is "in doubt": it may
or may not have been applied, but if it was, all of it was (a replace is all or nothing). The
server is started again on the same data and every node's containers are compared with the
model: each container must be as acknowledged, or exactly as its in-doubt write would leave it,
and no container may exist that no write created. Then the next trial starts from there.

    python3 bench/crash_loop.py --binary target/release/stackdns --trials 200

Standard library only; loopback only; the server is stopped by its PID. Exits 1 on the first
violation, printing it.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load_dataset as L  # noqa: E402

TOKEN = "crash-loop-admin-token-0123456789abcdef"
USER, STACK = "crash", "loop"


class Crashed(Exception):
    """The server went away during a request: the write is in doubt."""


def call(conn_box, port, method, path, token, body=None, timeout=10):
    """One request on the thread's connection; (status, JSON). Raises Crashed on any failure
    to get an answer (the server died, or the connection was cut)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": "Bearer " + token}
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        if conn_box[0] is None:
            conn_box[0] = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn_box[0].request(method, path, body=data, headers=headers)
        resp = conn_box[0].getresponse()
        raw = resp.read()
    except (OSError, http.client.HTTPException) as e:
        if conn_box[0] is not None:
            conn_box[0].close()
        conn_box[0] = None
        raise Crashed(str(e)) from e
    if "json" not in resp.getheader("Content-Type", ""):
        return resp.status, raw.decode("utf-8", "replace")
    return resp.status, json.loads(raw)


class Node:
    """One node's model: container name -> (running, generation), as acknowledged."""

    def __init__(self, name, token, rng):
        self.name, self.token, self.rng = name, token, rng
        self.model = {}
        self.doubt = None  # (before, after): the states of the names the write in flight touches
        self.acked = 0
        self.next_id = 0

    def path(self, container=None):
        base = "/v1/nodes/%s/containers" % self.name
        return base if container is None else "%s/%s/%s/%s" % (base, USER, STACK, container)

    def new_name(self):
        self.next_id += 1
        return "%s-c%d" % (self.name, self.next_id)

    def write(self, conn, port):
        """One random write; updates the model if it is acknowledged."""
        running = sorted(n for n, (up, _) in self.model.items() if up)
        roll = self.rng.random()
        if roll < 0.45 or not running:
            # A report: a new container, or a known one at a higher generation (restart, move).
            name = self.new_name() if (roll < 0.25 or not self.model) else self.rng.choice(sorted(self.model))
            gen = self.model.get(name, (False, 0))[1] + 1
            after = {name: (True, gen)}
            request = ("PUT", self.path(name), {"service": "web", "generation": gen})
        elif roll < 0.75:
            name = self.rng.choice(running)
            gen = self.model[name][1]
            after = {name: (False, gen)}
            request = ("DELETE", self.path(name) + "?generation=%d" % gen, None)
        else:
            # Anti-entropy: keep a random part, restart one at a higher generation, add one.
            keep = [n for n in running if self.rng.random() < 0.6]
            listed = {n: self.model[n][1] for n in keep}
            if keep and self.rng.random() < 0.5:
                bumped = self.rng.choice(keep)
                listed[bumped] += 1
            listed[self.new_name()] = 1
            after = {n: (True, g) for n, g in listed.items()}
            for n in running:
                if n not in listed:
                    after[n] = (False, self.model[n][1])
            items = [{"user": USER, "stack": STACK, "name": n, "service": "web", "generation": g}
                     for n, g in sorted(listed.items())]
            request = ("PUT", self.path(), {"containers": items})
        before = {n: self.model.get(n) for n in after}
        self.doubt = (before, after)
        method, path, body = request
        status, reply = call(conn, port, method, path, self.token, body)
        if status not in (200, 201):
            raise SystemExit("%s %s refused with %s: %s" % (method, path, status, reply))
        self.model.update(after)
        self.doubt = None
        self.acked += 1

    def check(self, running):
        """Compares what the server runs after a restart (`running`: name -> generation) with
        the model, and adopts it. A stopped container is not listed by the server, so the view
        compared is "running at generation G" or "not running"; the tombstones themselves are
        checked over DNS by the caller. Returns (violation or None, whether the in-doubt write
        was applied: True, False, or None when there was none or it changed nothing)."""
        def view(state):
            return ("running", state[1]) if state and state[0] else "not running"

        doubt_before, doubt_after = self.doubt or ({}, {})
        names = set(self.model) | set(running) | set(doubt_after)
        applied = None
        for name in sorted(names):
            have = ("running", running[name]) if name in running else "not running"
            if name in doubt_after:
                before, after = view(doubt_before.get(name)), view(doubt_after[name])
                if have == after and have != before:
                    state = True
                elif have == before and have != after:
                    state = False
                elif have == after:
                    state = None  # the write would not change what shows of this name
                else:
                    return "%s/%s: %r is neither before (%r) nor after (%r) its in-doubt write" % (
                        self.name, name, have, before, after), None
                if state is not None:
                    if applied is not None and applied != state:
                        return "%s: the in-doubt write was applied in part (%s)" % (self.name, name), None
                    applied = state
            elif have != view(self.model.get(name)):
                return "%s/%s: acknowledged %r, found %r" % (
                    self.name, name, view(self.model.get(name)), have), None
        if applied:
            self.model.update(doubt_after)
        self.model = {n: ((True, running[n]) if n in running else (False, st[1]))
                      for n, st in self.model.items()}
        self.doubt = None
        return None, applied

    def tombstones(self):
        return [n for n, (up, _) in self.model.items() if not up]


def server_state(port, node):
    """What the server runs on `node`: name -> generation."""
    conn = [None]
    status, body = call(conn, port, "GET", "/v1/nodes/%s/containers" % node.name, TOKEN)
    if status != 200:
        raise SystemExit("listing %s: HTTP %s %s" % (node.name, status, body))
    return {c["name"]: c["generation"] for c in body["containers"]
            if c["user"] == USER and c["stack"] == STACK and c["state"] == "running"}


def tombstone_lost(dns_port, node):
    """A stopped container whose record is gone: its name is NXDOMAIN (a tombstone is NODATA)."""
    for name in node.tombstones():
        qname = "%s.%s.%s.cont.cluster.test." % (name, STACK, USER)
        resp = L.dns_query(("127.0.0.1", dns_port), qname, "A")
        if resp["rcode"] != 0:
            return "%s/%s: acknowledged stopped, but its record is gone (rcode %d)" % (node.name, name, resp["rcode"])
    return None


def start(args, data, api_port, dns_port, log):
    env = dict(os.environ, STACKDNS_ADMIN_TOKEN=TOKEN)
    proc = subprocess.Popen(
        [args.binary, "serve", "--dns", "127.0.0.1:%d" % dns_port, "--api", "127.0.0.1:%d" % api_port,
         "--data", data, "--metrics-addr", "off", "--node-ttl", "86400"],
        env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited with %s at start; see its log" % proc.returncode)
        try:
            if call([None], api_port, "GET", "/readyz", TOKEN, timeout=2)[0] == 200:
                return proc
        except Crashed:
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the server did not become ready")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", required=True)
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--writers", type=int, default=4, help="threads, one node each [4]")
    p.add_argument("--max-delay", type=float, default=0.8, help="longest run before the kill, s [0.8]")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    work = tempfile.mkdtemp(prefix="stackdns-crash.")
    data = os.path.join(work, "data")
    api_port, dns_port = L.free_tcp_port("127.0.0.1"), L.free_tcp_port("127.0.0.1")
    log = open(os.path.join(work, "server.log"), "ab")
    proc = start(args, data, api_port, dns_port, log)
    try:
        nodes = []
        for i in range(args.writers):
            name = "n%d" % i
            status, body = call([None], api_port, "PUT", "/v1/nodes/" + name, TOKEN, {"address": "10.0.0.%d" % (i + 1)})
            nodes.append(Node(name, body["token"], random.Random(rng.random())))
        acked = doubt_applied = doubt_lost = 0
        for trial in range(1, args.trials + 1):
            stop = threading.Event()

            def writer(node):
                conn = [None]
                while not stop.is_set():
                    try:
                        node.write(conn, api_port)
                    except Crashed:
                        return

            threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in nodes]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.05, args.max_delay))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            stop.set()
            for t in threads:
                t.join(timeout=30)
            proc = start(args, data, api_port, dns_port, log)
            for node in nodes:
                violation, applied = node.check(server_state(api_port, node))
                violation = violation or tombstone_lost(dns_port, node)
                if violation:
                    print("trial %d (seed %d): %s" % (trial, seed, violation), file=sys.stderr)
                    print("server log: %s" % os.path.join(work, "server.log"), file=sys.stderr)
                    work = None  # kept for a look
                    return 1
                doubt_applied += applied is True
                doubt_lost += applied is False
            acked = sum(n.acked for n in nodes)
            if trial % 20 == 0 or trial == args.trials:
                L.log("trial %d: %d acknowledged writes checked, in-doubt writes applied %d / not applied %d"
                      % (trial, acked, doubt_applied, doubt_lost))
        print("crash loop: %d trials (seed %d), %d acknowledged writes all present, %d containers, "
              "in-doubt writes: %d applied, %d not" % (
                  args.trials, seed, acked, sum(len(n.model) for n in nodes), doubt_applied, doubt_lost))
        return 0
    finally:
        L.stop_process(proc)
        log.close()
        if work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
