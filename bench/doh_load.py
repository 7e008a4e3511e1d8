#!/usr/bin/env python3
"""DNS over HTTPS load with h2load (nghttp2-client): the shared query mix as RFC 8484 GET
requests, HTTP/2, against a running server, with the server's CPU per query.

dnsperf's DoH mode (2.10 here) loses track of answers it received once several queries are in
flight (DNS-OARC/dnsperf#240: "HTTP/2 return codes" counts every 200 while queries time out),
so it cannot measure a DoH server; h2load is the HTTP/2 load generator of nghttp2.

    doh_load.py --queries queries.txt --url https://127.0.0.1:5302/dns-query --pid PID

Prints one line: requests/s, succeeded and failed requests, server CPU %, and CPU µs per query.
The server's CPU is summed over its process tree from /proc, as run_anchor.sh does.
"""
import argparse
import base64
import os
import re
import struct
import subprocess
import sys
import tempfile
import time

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33, "ANY": 255}


def query(name, rtype):
    """A DNS query in wire form, ID 0 as RFC 8484 §4.1 recommends."""
    wire = struct.pack(">HHHHHH", 0, 0, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        wire += bytes([len(label)]) + label.encode()
    return wire + b"\0" + struct.pack(">HH", TYPES[rtype.upper()], 1)


def tree(pid):
    """pid and all its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid):
    ticks = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", required=True, help="dnsperf query file: '<name> <type>' per line")
    p.add_argument("--url", required=True, help="the DoH endpoint")
    p.add_argument("--pid", type=int, required=True, help="the server's PID")
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--clients", type=int, default=8, help="h2load -c: connections")
    p.add_argument("--streams", type=int, default=25, help="h2load -m: requests in flight per connection")
    p.add_argument("--lines", type=int, default=20000, help="distinct queries taken from the file")
    args = p.parse_args()

    with open(args.queries) as f, tempfile.NamedTemporaryFile("w", suffix=".uris", delete=False) as uris:
        for n, line in enumerate(f):
            if n >= args.lines:
                break
            name, rtype = line.split()[:2]
            dns = base64.urlsafe_b64encode(query(name, rtype)).rstrip(b"=").decode()
            uris.write(f"{args.url}?dns={dns}\n")
    try:
        command = ["taskset", "-c", "0", "h2load", "-i", uris.name, "-c", str(args.clients),
                   "-m", str(args.streams), "-t", "1", "-D", str(args.seconds)]
        before, started = cpu_seconds(args.pid), time.monotonic()
        run = subprocess.run(command, capture_output=True, text=True, check=False)
        cpu, elapsed = cpu_seconds(args.pid) - before, time.monotonic() - started
    finally:
        os.unlink(uris.name)
    out = run.stdout
    rate = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", out)
    status = re.search(r"status codes: (\d+) 2xx", out)
    if not (rate and done and status):
        sys.exit(f"h2load gave no result:\n{out}\n{run.stderr}")
    succeeded = int(done.group(1))
    print(f"doh: {float(rate.group(1)):.0f} req/s, {succeeded} succeeded ({status.group(1)} 2xx), "
          f"{done.group(2)} failed, server CPU {100 * cpu / elapsed:.0f}%, "
          f"{1e6 * cpu / max(succeeded, 1):.2f} µs per query")


if __name__ == "__main__":
    main()
