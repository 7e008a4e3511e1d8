#!/usr/bin/env python3
"""Benchmark driver for stackdns with the shared kit (../../shared/bench: gen_dataset.py, run_anchor.sh).

Standard library only.  Two modes:

  serve    The start command for `run_anchor.sh custom`.  Starts stackdns on $PORT, loads dataset.json
           through the registration API, and leaves stackdns serving.
  latency  Measures how long an accepted container write takes to show up in DNS, against a running
           stackdns (for example from run_anchor.sh's AFTER_LOAD_CMD, or by hand).

How `serve` fits run_anchor.sh, and why it is built this way
-------------------------------------------------------------
run_anchor.sh starts the custom command as `taskset -c 1 bash -c "<cmd>" &` and keeps `$!` as SRV_PID.
bash execs a single simple command, so SRV_PID is this script's PID.  What it then does with SRV_PID:

  * CPU: `cpu_ticks_tree` sums utime+stime over SRV_PID *and its live descendants* (found through
    /proc/<pid>/task/*/children), sampled from 1 s after dnsperf starts to 1 s before it ends.
  * memory: `rss_load_kb` / `rss_run_kb` are the VmRSS of SRV_PID *alone*; `pss_tree_kb` sums PSS over
    the tree.  It also warns if /proc/SRV_PID/comm is still "bash".
  * pinning: 1 s after the first correct answer every thread of the tree is re-pinned to CPU 1.
  * stop: TERM to SRV_PID (KILL after 15 s); the child PIDs listed just before are then killed if left.
  * load time: from launching the command until `dig` gets an answer for the owner of the zone file's
    last line (a container name of the last, "wide", service).

A "python parent loads, then waits on the stackdns child and forwards SIGTERM" design would get the CPU
right (the tree is summed and an idle waiting parent adds ~0 ticks), but the RSS columns would be
Python's and the PSS column would include the loader's copy of the dataset.  So this script makes
SRV_PID *be* stackdns instead:

    P (this script, PID = SRV_PID) trims the zone file, picks the API port and the admin token, then
      fork -> C: fork -> G (the loader); C exits as soon as G is set up, so G is re-parented away
      from P and is never in P's process tree
      P reaps C, then os.execve()s stackdns: same PID, comm "stackdns", pinned like P was.
    G opens a pidfd on P *before* C exits (C waits for G's go-ahead on a pipe), so G can tell when the
      server dies and signal exactly that process, never a recycled PID.  G waits for the API and DNS
      to answer, registers the nodes, reports the containers, checks a sample of answers, prints
      figures to stderr (which is run_anchor's server log) and exits.

So the server's process tree is stackdns alone: CPU, RSS, PSS and re-pinning all see only the server,
and the loader (not in the tree) cannot be mistaken for server work.  While loading, the loader moves
itself off the CPUs it inherited (`--loader-cpus auto`: in MODE=pinned it runs on CPU 0, which is idle
before dnsperf starts), so the server's core is not shared with the client that feeds it.  The loader
exits right after loading and verifying; run_anchor's wait for a quiet machine before each run keeps
any tail of it out of the measurement.

The nodes (or node) hosting the containers that make up run_anchor's probe name are reported last,
after every other report has been answered.  stackdns answers a write only once it is committed and
published in DNS, so when the probe answers, the whole dataset is served and run_anchor's load_s is
the full load time (exec of the script to everything visible), including the loader's own time.

The `listening dns=... api=...` line: after the exec stackdns writes its stderr straight to
run_anchor's log file and no process of ours reads it, so readiness is checked where it matters: the
API's /readyz answers 200 (the API is bound after the DNS sockets, right before that line is logged),
the admin token is accepted, and the SOA of the zone is answered over UDP on $PORT.  If that does not
happen within --start-timeout seconds, or stackdns exits, the loader says so and stops the server,
so run_anchor fails with the reason at the end of the server log.

Leases: stackdns marks a node lost (and drops its containers from DNS) --node-ttl seconds after its
last report or heartbeat.  The loader does not heartbeat during the benchmark (that would be client
work inside the measurement), so `serve` passes --node-ttl 86400 by default.
"""

import argparse
import concurrent.futures
import http.client
import ipaddress
import json
import math
import os
import random
import re
import secrets
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse

PROG = "load_dataset"
DYNAMIC_SUBTREES = ("svc", "cont", "node")


class Fatal(Exception):
    """An error with a message meant for the user; no traceback."""


def log(msg):
    # One write per line: stderr may be shared with stackdns (run_anchor's server log).
    sys.stderr.write("%s: %s\n" % (PROG, msg))
    sys.stderr.flush()


# =============================================================================================
# Zone file trimming
# =============================================================================================

def _strip_comment(line):
    """The line without its ';' comment (';' inside a quoted string is kept)."""
    if ";" not in line:
        return line
    quoted = False
    escaped = False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            return line[:i]
    return line


def _absolute(name, origin):
    if name == "@":
        return origin
    if name.endswith(".") and not name.endswith("\\."):
        return name
    return name + "." + origin if origin != "." else name + "."


def _relative_labels(owner, apex):
    """Labels of `owner` below `apex` (both absolute, lower case), or None if outside the zone."""
    if owner == apex:
        return []
    if apex == ".":
        return owner.rstrip(".").split(".")
    if not owner.endswith("." + apex):
        return None
    return owner[: -len(apex) - 1].split(".")


_SOA_LINE = re.compile(r"^(\S+\.)[ \t]+(?:\S+[ \t]+){0,2}SOA[ \t]", re.M | re.I)


def trim_zone(text, default_origin="."):
    """Keep what stackdns accepts in its zone file: every record not under svc./cont./node.<apex>.

    This runs before stackdns is exec'd, so it counts in run_anchor's load time: the ~90k one-line
    records of the default dataset are dropped by one regex pass (absolute owner, explicit TTL, no
    comment, parenthesis or quote, next line not an owner-less continuation); whatever is left goes
    through the line parser below (_trim_zone_lines), which applies the same rule to everything.
    """
    m = _SOA_LINE.search(text)
    if m:
        apex = m.group(1).lower()
        simple = re.compile(r"^\S+\.(?:svc|cont|node)\.%s[ \t]+(\d+)[ \t][^\n;()\"]*\n(?![ \t])"
                            % re.escape(apex), re.M | re.I)
        ttls = simple.findall(text)
        if ttls:
            result = _trim_zone_lines(simple.sub("", text), default_origin)
            if result["apex"] == apex:
                result["dropped"] += len(ttls)
                result["dropped_ttls"].update(int(t) for t in set(ttls))
                return result
    return _trim_zone_lines(text, default_origin)


def _trim_zone_lines(text, default_origin="."):
    """The line parser behind trim_zone(): drops every record under svc./cont./node.<apex>.

    `text` is an RFC 1035 master file as gen_dataset.py writes it (the parser also copes with
    relative and omitted owners, '@', $ORIGIN/$TTL and parenthesised multi-line records).
    Returns a dict: text (the trimmed zone), apex, kept and dropped (record counts), dropped_ttls
    (the set of TTLs of the dropped records: what the svc/cont/node answers carried).  Records are
    kept as their original lines; a kept record whose owner was omitted gets its owner written out,
    so it cannot inherit a different one from a dropped line above it.
    """
    origin = default_origin
    default_ttl = None
    records = []      # [owner, type, [lines], owner_omitted, ttl]; directives: [None, directive, [line], False, None]
    current = None
    depth = 0         # open parentheses of the current record
    last_owner = None
    for raw in text.splitlines():
        body = _strip_comment(raw)
        if depth > 0:                                   # continuation of a multi-line record
            current[2].append(raw)
            depth += body.count("(") - body.count(")")
            continue
        if not body.strip():
            continue
        if body.startswith("$"):
            parts = body.split()
            directive = parts[0].upper()
            if directive == "$ORIGIN":
                origin = _absolute(parts[1].lower(), origin)
            elif directive == "$TTL" and len(parts) > 1 and parts[1].isdigit():
                default_ttl = int(parts[1])
            elif directive == "$INCLUDE":
                raise Fatal("zone file uses $INCLUDE, which the trimmer does not follow")
            records.append([None, directive, [raw], False, None])
            continue
        tokens = body.split()
        omitted = body[0] in " \t"
        if omitted:
            if last_owner is None:
                raise Fatal("zone file: record without an owner before any owner: %r" % raw)
            owner = last_owner
        else:
            owner = _absolute(tokens[0].lower(), origin)
            tokens = tokens[1:]
        last_owner = owner
        # [ttl] [class] type  or  [class] [ttl] type
        rtype, ttl = None, default_ttl
        for tok in tokens:
            t = tok.upper()
            if t.isdigit():
                ttl = int(t)
                continue
            if t in ("IN", "CH", "HS", "CS") or (t[:-1].isdigit() and t[-1:] in "SMHDW"):
                continue
            rtype = t
            break
        current = [owner, rtype, [raw], omitted, ttl]
        records.append(current)
        depth = body.count("(") - body.count(")")
    if depth > 0:
        raise Fatal("zone file ends inside a parenthesised record")

    soa_owners = [r[0] for r in records if r[0] is not None and r[1] == "SOA"]
    if len(soa_owners) != 1:
        raise Fatal("zone file must have exactly one SOA record; found %d" % len(soa_owners))
    apex = soa_owners[0]

    out, kept, dropped, dropped_ttls = [], 0, 0, set()
    has_ns = False
    for owner, rtype, lines, omitted, ttl in records:
        if owner is None:
            out.extend(lines)
            continue
        rel = _relative_labels(owner, apex)
        if rel is None:
            raise Fatal("zone file: %s is outside the zone %s" % (owner, apex))
        if rel and rel[-1] in DYNAMIC_SUBTREES:
            dropped += 1
            if ttl is not None:
                dropped_ttls.add(ttl)
            continue
        kept += 1
        has_ns = has_ns or (rtype == "NS" and not rel)
        if omitted:
            lines = [owner + lines[0]] + lines[1:]
        out.extend(lines)
    if not has_ns:
        raise Fatal("zone file has no NS record at the apex %s" % apex)
    return {"text": "\n".join(out) + "\n", "apex": apex, "kept": kept, "dropped": dropped,
            "dropped_ttls": dropped_ttls}


def anchor_probe(zone_path):
    """The (name, type) run_anchor.sh polls with dig: the first and fourth fields of the last line."""
    with open(zone_path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 4096))
        tail = f.read().decode("utf-8", "replace")
    lines = tail.split("\n")
    if lines and lines[-1] == "":        # `tail -n 1` ignores the final newline
        lines.pop()
    fields = lines[-1].split() if lines else []
    if len(fields) < 4:
        return None, None
    return fields[0].lower(), fields[3].upper()


# =============================================================================================
# dataset.json -> API requests
# =============================================================================================

def _check_label(what, value):
    ok = (0 < len(value) <= 63 and value[0] != "-" and value[-1] != "-"
          and all(c.isascii() and (c.isalnum() or c == "-") for c in value))
    if not ok:
        raise Fatal("dataset: %s %r is not a DNS label stackdns accepts (a-z, 0-9, '-', 1-63 chars)"
                    % (what, value))
    return value.lower()


def build_plan(dataset):
    """Map gen_dataset.py's dataset.json onto stackdns API requests, and what DNS must answer.

    Returns a dict:
      zone       apex with the trailing dot
      ttl        the dataset's record TTL
      nodes      [(node name, ipv4)] in dataset order            -> PUT /v1/nodes/{node}
      reports    {node name: [container list items]}             -> PUT /v1/nodes/{node}/containers
      expected   {(fqdn, type): expected answer set} for verification:
                 A -> set of addresses, SRV -> set of (port, target)
      sources    {(fqdn, type): set of nodes whose reports make up that RRset}
      containers number of containers
    """
    zone = dataset["zone"].lower()
    if not zone.endswith("."):
        zone += "."
    ttl = int(dataset["ttl"])
    node_ip = {}
    nodes = []
    for n in dataset["nodes"]:
        name = _check_label("node name", n["name"])
        ip = str(ipaddress.ip_address(n["ipv4"]))
        if name in node_ip:
            raise Fatal("dataset: node %s listed twice" % name)
        node_ip[name] = ip
        nodes.append((name, ip))

    reports = {}
    expected = {}
    sources = {}
    seen = set()

    def expect(key, value, node):
        expected.setdefault(key, set()).add(value)
        sources.setdefault(key, set()).add(node)

    for c in dataset["containers"]:
        svc_fqdn = c["service"].lower()
        labels = svc_fqdn[: -len(zone)].rstrip(".").split(".") if svc_fqdn.endswith("." + zone) else []
        if len(labels) != 4 or labels[3] != "svc":
            raise Fatal("dataset: service %r is not <service>.<stack>.<user>.svc.%s" % (c["service"], zone))
        service, stack, user = (_check_label(w, v) for w, v in zip(("service", "stack", "user"), labels[:3]))
        name = _check_label("container name", c["name"])
        node = c["node"].lower()
        if node not in node_ip:
            raise Fatal("dataset: container %s is on unknown node %s" % (c["fqdn"], c["node"]))
        # stackdns builds the container name from (name, stack, user); it must be the dataset's.
        cont_fqdn = "%s.%s.%s.cont.%s" % (name, stack, user, zone)
        if c.get("fqdn", cont_fqdn).lower() != cont_fqdn:
            raise Fatal("dataset: container fqdn %s is not what stackdns would build (%s)" % (c["fqdn"], cont_fqdn))
        if (user, stack, name) in seen:
            raise Fatal("dataset: container %s listed twice" % cont_fqdn)
        seen.add((user, stack, name))
        ip = str(ipaddress.ip_address(c["ipv4"]))
        cport = int(c.get("container_port", 80))
        proto = c.get("protocol", "tcp").lower()
        if proto != "tcp":
            raise Fatal("dataset: container %s has protocol %r; the SRV names assume tcp" % (cont_fqdn, proto))
        item = {"user": user, "stack": stack, "name": name, "service": service,
                "ports": [{"container_port": cport, "host_port": int(c["port"]), "protocol": proto}],
                "generation": 1}
        if ip != node_ip[node]:
            # Not the case in gen_dataset.py output (a container answers its node's IP); keep it exact anyway.
            item["address"] = ip
        reports.setdefault(node, []).append(item)
        expect((cont_fqdn, "A"), ip, node)
        expect((svc_fqdn, "A"), ip, node)
        expect(("_%d._tcp.%s" % (cport, svc_fqdn), "SRV"), (int(c["port"]), cont_fqdn), node)
    return {"zone": zone, "ttl": ttl, "nodes": nodes, "reports": reports, "expected": expected,
            "sources": sources, "containers": len(dataset["containers"])}


# =============================================================================================
# DNS wire format (RFC 1035, RFC 6891 for OPT), by hand
# =============================================================================================

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "AAAA": 28, "SRV": 33, "OPT": 41}
QTYPE_NAMES = {v: k for k, v in QTYPES.items()}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
FLAG_QR, FLAG_AA, FLAG_TC, FLAG_RD = 0x8000, 0x0400, 0x0200, 0x0100


class DnsError(Exception):
    pass


def encode_name(name):
    out = bytearray()
    for label in name.rstrip(".").split(".") if name not in (".", "") else []:
        raw = label.encode("ascii")
        if not 0 < len(raw) <= 63:
            raise DnsError("bad label %r in %r" % (label, name))
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise DnsError("name too long: %r" % name)
    return bytes(out)


def build_query(qname, qtype, qid, edns_size=4096):
    """A non-recursive query for qname/qtype, with an OPT record advertising edns_size (0: no EDNS)."""
    qt = QTYPES[qtype] if isinstance(qtype, str) else qtype
    header = struct.pack("!HHHHHH", qid, 0, 1, 0, 0, 1 if edns_size else 0)
    msg = header + encode_name(qname) + struct.pack("!HH", qt, 1)
    if edns_size:
        # root owner, type OPT, class = UDP payload size, TTL = ext-rcode/version/flags 0, RDLENGTH 0
        msg += b"\x00" + struct.pack("!HHIH", 41, edns_size, 0, 0)
    return msg


def read_name(buf, off):
    """(name with trailing dot, offset after the name), following compression pointers safely."""
    labels = []
    end = None
    hops = 0
    while True:
        if off >= len(buf):
            raise DnsError("name runs past the end of the message")
        length = buf[off]
        if length & 0xC0 == 0xC0:
            if off + 1 >= len(buf):
                raise DnsError("truncated compression pointer")
            if end is None:
                end = off + 2
            hops += 1
            if hops > 127:
                raise DnsError("compression pointer loop")
            off = ((length & 0x3F) << 8) | buf[off + 1]
            continue
        if length & 0xC0:
            raise DnsError("unsupported label type 0x%02x" % length)
        off += 1
        if length == 0:
            break
        if off + length > len(buf):
            raise DnsError("label runs past the end of the message")
        labels.append(buf[off:off + length].decode("ascii", "backslashreplace"))
        off += length
    return ".".join(labels) + ".", (end if end is not None else off)


def _rdata(buf, rtype, off, rdlen):
    end = off + rdlen
    if rtype == 1 and rdlen == 4:
        return socket.inet_ntop(socket.AF_INET, buf[off:end])
    if rtype == 28 and rdlen == 16:
        return socket.inet_ntop(socket.AF_INET6, buf[off:end])
    if rtype in (2, 5):
        return read_name(buf, off)[0]
    if rtype == 33:
        if rdlen < 7:
            raise DnsError("short SRV rdata")
        prio, weight, port = struct.unpack_from("!HHH", buf, off)
        return (prio, weight, port, read_name(buf, off + 6)[0])
    if rtype == 6:
        mname, o = read_name(buf, off)
        rname, o = read_name(buf, o)
        if o + 20 > end:
            raise DnsError("short SOA rdata")
        serial, refresh, retry, expire, minimum = struct.unpack_from("!IIIII", buf, o)
        return {"mname": mname, "rname": rname, "serial": serial, "refresh": refresh,
                "retry": retry, "expire": expire, "minimum": minimum}
    return bytes(buf[off:end])


def parse_response(buf):
    """Parse a DNS message into a dict: id, flags, rcode, tc, aa, question, answer/authority/additional
    as lists of (name, type, class, ttl, rdata); rdata is decoded for A, AAAA, NS, CNAME, SOA, SRV."""
    if len(buf) < 12:
        raise DnsError("message shorter than a header")
    qid, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", buf, 0)
    off = 12
    question = []
    for _ in range(qd):
        name, off = read_name(buf, off)
        if off + 4 > len(buf):
            raise DnsError("truncated question")
        qt, qc = struct.unpack_from("!HH", buf, off)
        off += 4
        question.append((name, qt, qc))
    sections = []
    for count in (an, ns, ar):
        rrs = []
        for _ in range(count):
            name, off = read_name(buf, off)
            if off + 10 > len(buf):
                raise DnsError("truncated resource record")
            rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", buf, off)
            off += 10
            if off + rdlen > len(buf):
                raise DnsError("rdata runs past the end of the message")
            rrs.append((name, rtype, rclass, ttl, _rdata(buf, rtype, off, rdlen)))
            off += rdlen
        sections.append(rrs)
    return {"id": qid, "flags": flags, "rcode": flags & 0xF, "tc": bool(flags & FLAG_TC),
            "aa": bool(flags & FLAG_AA), "qr": bool(flags & FLAG_QR), "question": question,
            "answer": sections[0], "authority": sections[1], "additional": sections[2]}


def _matches(resp, qid, qname, qtype):
    if not resp["qr"] or resp["id"] != qid or len(resp["question"]) != 1:
        return False
    name, qt, _ = resp["question"][0]
    return name.lower() == qname.lower() and qt == qtype


def dns_query(server, qname, qtype, timeout=1.0, tries=3):
    """Ask server (host, port) over UDP, falling back to TCP if the answer is truncated."""
    qt = QTYPES[qtype]
    with socket.socket(socket.AF_INET6 if ":" in server[0] else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(server)
        for _ in range(tries):
            qid = random.getrandbits(16)
            try:
                s.send(build_query(qname, qt, qid))
            except ConnectionRefusedError:
                raise DnsError("nothing listens on %s:%d/udp" % server)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                s.settimeout(left)
                try:
                    data = s.recv(65535)
                except socket.timeout:
                    break
                except ConnectionRefusedError:
                    raise DnsError("nothing listens on %s:%d/udp" % server)
                try:
                    resp = parse_response(data)
                except DnsError:
                    continue
                if not _matches(resp, qid, qname, qt):
                    continue
                if resp["tc"]:
                    return dns_query_tcp(server, qname, qtype, timeout)
                return resp
    raise DnsError("no answer from %s:%d for %s %s after %d tries" % (server[0], server[1], qname, qtype, tries))


def dns_query_tcp(server, qname, qtype, timeout=2.0):
    qt = QTYPES[qtype]
    qid = random.getrandbits(16)
    with socket.create_connection(server, timeout=timeout) as s:
        msg = build_query(qname, qt, qid, edns_size=0)
        s.sendall(struct.pack("!H", len(msg)) + msg)
        buf = b""
        while len(buf) < 2 or len(buf) < 2 + struct.unpack_from("!H", buf)[0]:
            chunk = s.recv(65537)
            if not chunk:
                raise DnsError("TCP connection closed before a full answer")
            buf += chunk
        resp = parse_response(buf[2:2 + struct.unpack_from("!H", buf)[0]])
    if not _matches(resp, qid, qname, qt):
        raise DnsError("TCP answer does not match the question")
    return resp


def answer_set(resp, qname, qtype):
    """The answer RRset for qname/qtype: A -> {address}, SRV -> {(port, target)}; and the TTLs seen."""
    qt = QTYPES[qtype]
    values, ttls = set(), set()
    for name, rtype, _, ttl, data in resp["answer"]:
        if name.lower() != qname.lower() or rtype != qt:
            continue
        ttls.add(ttl)
        values.add((data[2], data[3].lower()) if rtype == 33 else data)
    return values, ttls


def parse_hostport(text, default_host="127.0.0.1"):
    host, sep, port = text.rpartition(":")
    if not sep:
        return default_host, int(text)
    host = host.strip("[]") or default_host
    return host, int(port)


def percentile(sorted_values, pct):
    """Nearest-rank percentile of an ascending list (pct in 0..100; 0 gives the minimum)."""
    if not sorted_values:
        return float("nan")
    k = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(k, len(sorted_values)) - 1]


# =============================================================================================
# HTTP API client
# =============================================================================================

class ApiError(Exception):
    def __init__(self, method, path, status, body):
        self.status = status
        try:
            err = json.loads(body)["error"]
            detail = "%s: %s" % (err.get("code"), err.get("message"))
        except (ValueError, KeyError, TypeError):
            detail = body[:300].decode("utf-8", "replace") if isinstance(body, bytes) else str(body)[:300]
        super().__init__("%s %s -> HTTP %s: %s" % (method, path, status, detail))


class Api:
    """stackdns API over keep-alive HTTP/1.1 connections, one per thread."""

    def __init__(self, base_url, token, timeout=60.0):
        u = urllib.parse.urlsplit(base_url if "://" in base_url else "http://" + base_url)
        if u.scheme != "http":
            raise Fatal("only http:// API URLs are supported, not %r" % base_url)
        self.host, self.port = u.hostname, u.port or 80
        self.base = "http://%s:%d" % (self.host, self.port)
        self.token = token
        self.timeout = timeout
        self._local = threading.local()

    def connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def reset(self):
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def headers(self, body, token=None, content_type="application/json"):
        h = {"Authorization": "Bearer %s" % (token or self.token), "Accept": "application/json"}
        if body is not None:
            h["Content-Type"] = content_type
        return h

    def request(self, method, path, payload=None, token=None, ok=(200, 201), text=None, content_type=None):
        """(status, decoded JSON or text, seconds).  The body is `payload` as JSON, or `text` as it is
        (`content_type`, e.g. a YAML Stackfile).  Retries once on a dropped keep-alive connection
        (every request this script sends is idempotent).  Raises ApiError on a status not in ok."""
        if text is not None:
            body, ctype = text.encode(), content_type or "text/plain"
        else:
            body = None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
            ctype = "application/json"
        for attempt in (1, 2):
            conn = self.connection()
            t0 = time.perf_counter()
            try:
                conn.request(method, path, body=body, headers=self.headers(body, token, ctype))
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.BadStatusLine):
                self.reset()
                if attempt == 2:
                    raise
                continue
            except OSError:
                self.reset()
                raise
            elapsed = time.perf_counter() - t0
            if resp.getheader("Connection", "").lower() == "close":
                self.reset()
            if resp.status not in ok:
                raise ApiError(method, path, resp.status, data)
            ctype = resp.getheader("Content-Type", "")
            return resp.status, (json.loads(data) if "json" in ctype and data else data.decode()), elapsed
        raise AssertionError("unreachable")


def q(*parts):
    return "/".join(urllib.parse.quote(p, safe="") for p in parts)


# Failures reported as one line, without a traceback.
EXPECTED_ERRORS = (Fatal, ApiError, DnsError, OSError, http.client.HTTPException, json.JSONDecodeError)


# =============================================================================================
# serve
# =============================================================================================

def stop_process(proc, grace=30):
    """SIGTERM, then SIGKILL if `proc` is still there after `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_tcp_port(host):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def env_or(value, var, what):
    if value is not None:
        return value
    v = os.environ.get(var)
    if not v:
        raise Fatal("%s: pass it or set $%s (run_anchor.sh custom exports it)" % (what, var))
    return v


class Loader:
    """Runs in the forked loader process G; `server` is stackdns (the exec'd P)."""

    def __init__(self, args, cfg, server_pid, pidfd, t_launch):
        self.args = args
        self.cfg = cfg
        self.server_pid = server_pid
        self.pidfd = pidfd
        self.t_launch = t_launch
        self.dns = (cfg["dns_host"], cfg["dns_port"])
        self.api = Api(cfg["api"], cfg["token"])

    def sleep_unless_server_exits(self, seconds):
        if self.pidfd is not None:
            exited = bool(select.select([self.pidfd], [], [], seconds)[0])   # a pidfd is readable once the process exits
        else:
            time.sleep(seconds)
            exited = not server_alive(None, self.server_pid)
        if exited:
            raise Fatal("stackdns (pid %d) exited; its own messages are above in this log" % self.server_pid)

    # --- phases ---------------------------------------------------------------------------------
    def wait_ready(self):
        """Until /readyz is 200, the admin token works and DNS answers the apex SOA."""
        deadline = time.monotonic() + self.args.start_timeout
        last = "no attempt yet"
        stage = "api"
        while True:
            if time.monotonic() > deadline:
                raise Fatal("stackdns did not become ready within %.0f s (API %s, DNS %s:%d): %s"
                            % (self.args.start_timeout, self.api.base, self.dns[0], self.dns[1], last))
            try:
                if stage == "api":
                    self.api.request("GET", "/readyz")
                    stage = "token"
                if stage == "token":
                    _, body, _ = self.api.request("GET", "/v1/nodes")
                    if body.get("nodes"):
                        log("warning: stackdns already has %d nodes (data directory not empty?)" % len(body["nodes"]))
                    stage = "dns"
                resp = dns_query(self.dns, self.cfg["zone"], "SOA", timeout=0.5, tries=1)
                soa = [rr for rr in resp["answer"] if rr[1] == 6]
                if resp["rcode"] == 0 and soa:
                    return soa[0][4]["serial"]
                last = "DNS answered the SOA query with %s and %d SOA records" % (RCODES.get(resp["rcode"]), len(soa))
            except ApiError as e:
                if e.status in (401, 403):
                    raise Fatal("the admin token is refused (%s); is STACKDNS_ADMIN_TOKEN_FILE set, or "
                                "<data>/admin.token left from another run?" % e)
                last = str(e)
            except (OSError, http.client.HTTPException, DnsError) as e:
                self.api.reset()
                last = "%s: %s" % (type(e).__name__, e)
            self.sleep_unless_server_exits(0.02)

    def run_pool(self, what, jobs, fn):
        """Run fn(job) for every job on --concurrency threads; returns per-call results in order."""
        results = [None] * len(jobs)
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.args.concurrency,
                                                   thread_name_prefix=what) as pool:
            futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
            try:
                for fut in concurrent.futures.as_completed(futures):
                    results[futures[fut]] = fut.result()
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
        return results

    def register_node(self, node):
        name, ip = node
        status, body, dt = self.api.request("PUT", "/v1/nodes/" + q(name), {"address": ip})
        return dt, body.get("token"), body.get("serial", 0), status

    def report_node(self, job):
        name, items, token = job
        _, body, dt = self.api.request("PUT", "/v1/nodes/%s/containers" % q(name), {"containers": items},
                                       token=token)
        if body.get("started", 0) + body.get("updated", 0) + body.get("unchanged", 0) != len(items):
            raise Fatal("node %s: %d containers sent but the answer counts started=%s updated=%s unchanged=%s"
                        % (name, len(items), body.get("started"), body.get("updated"), body.get("unchanged")))
        return dt, body.get("serial", 0)

    def run(self):
        plan = self.cfg["plan"]
        serial0 = self.wait_ready()
        t_ready = time.monotonic()
        log("stackdns ready %.2f s after launch (API %s, DNS %s:%d, SOA serial %d)"
            % (t_ready - self.t_launch, self.api.base, self.dns[0], self.dns[1], serial0))

        # 1. nodes
        t0 = time.monotonic()
        res = self.run_pool("node", plan["nodes"], self.register_node)
        t_nodes = time.monotonic() - t0
        created = sum(1 for r in res if r[3] == 201)
        tokens = {n[0]: r[1] for n, r in zip(plan["nodes"], res)}
        if self.args.report_auth == "node" and created != len(res):
            log("warning: %d nodes already existed (no token returned); their reports use the admin token"
                % (len(res) - created))
        node_lat = sorted(r[0] for r in res)
        log("registered %d nodes (%d new) in %.2f s: %.0f nodes/s; PUT p50 %.1f ms p99 %.1f ms"
            % (len(res), created, t_nodes, len(res) / max(t_nodes, 1e-9),
               1000 * percentile(node_lat, 50), 1000 * percentile(node_lat, 99)))

        # 2. containers: everything but the nodes behind run_anchor's probe name, then those
        probe, probe_type = self.cfg["probe"]
        last_nodes = plan["sources"].get((probe, probe_type), set())
        if probe and not last_nodes:
            log("warning: run_anchor's probe %s %s does not come from any container report; its load_s "
                "will not cover the container load" % (probe, probe_type))

        def job(node):
            tok = tokens.get(node) if self.args.report_auth == "node" else None
            return (node, plan["reports"][node], tok)
        order = [n for n, _ in plan["nodes"] if n in plan["reports"]]
        first = [job(n) for n in order if n not in last_nodes]
        final = [job(n) for n in order if n in last_nodes]
        t0 = time.monotonic()
        res = self.run_pool("report", first, self.report_node)
        res += self.run_pool("report", final, self.report_node)
        t_cont = time.monotonic() - t0
        serial = max([r[1] for r in res] + [serial0])
        rep_lat = sorted(r[0] for r in res)
        n_cont = sum(len(j[1]) for j in first + final)
        log("reported %d containers on %d nodes in %.2f s: %.0f containers/s, %.0f reports/s; "
            "PUT p50 %.1f ms p99 %.1f ms max %.1f ms (%d at a time, probe's %d node(s) last)"
            % (n_cont, len(res), t_cont, n_cont / max(t_cont, 1e-9), len(res) / max(t_cont, 1e-9),
               1000 * percentile(rep_lat, 50), 1000 * percentile(rep_lat, 99), 1000 * rep_lat[-1] if rep_lat else 0,
               self.args.concurrency, len(final)))

        # 3. visible: the probe answers and the SOA serial has caught up with the last write
        # (stackdns answers a write once it is published, so this should succeed at once.)
        t_probe = None
        if probe:
            limit = time.monotonic() + 5
            while True:
                resp = dns_query(self.dns, probe, probe_type if probe_type in QTYPES else "A")
                if resp["answer"]:
                    t_probe = time.monotonic()
                    break
                if time.monotonic() > limit:
                    raise Fatal("every report was accepted but after 5 s the probe %s %s still gets %s with "
                                "no answer" % (probe, probe_type, RCODES.get(resp["rcode"], resp["rcode"])))
                time.sleep(0.01)
        soa = dns_query(self.dns, self.cfg["zone"], "SOA")
        dns_serial = next((rr[4]["serial"] for rr in soa["answer"] if rr[1] == 6), None)
        if dns_serial is not None and (dns_serial - serial) % (1 << 32) >= (1 << 31):
            log("warning: DNS serves SOA serial %d, older than the last write's serial %d" % (dns_serial, serial))
        total = (t_probe or time.monotonic()) - self.t_launch
        log("loaded: probe %s %s answered %.2f s after launch (%.2f s of it loading); SOA serial %s, last write %d"
            % (probe, probe_type, total, (t_probe or time.monotonic()) - t_ready, dns_serial, serial))
        summary = {"nodes": len(plan["nodes"]), "containers": n_cont, "reports": len(res),
                   "ready_s": round(t_ready - self.t_launch, 3), "nodes_s": round(t_nodes, 3),
                   "containers_s": round(t_cont, 3), "containers_per_s": round(n_cont / max(t_cont, 1e-9)),
                   "report_p50_ms": round(1000 * percentile(rep_lat, 50), 2),
                   "report_p99_ms": round(1000 * percentile(rep_lat, 99), 2),
                   "launch_to_loaded_s": round(total, 3), "concurrency": self.args.concurrency,
                   "serial": serial}
        log("LOAD_RESULT " + json.dumps(summary, sort_keys=True))

        # 4. spot-check answers against the dataset (after load_s, so it does not count in it)
        if self.args.verify:
            self.verify(plan)

    def verify(self, plan):
        rng = random.Random(12345)
        keys = sorted(plan["expected"])
        sample = rng.sample(keys, min(self.args.verify, len(keys)))
        some = next(iter(next(iter(plan["reports"].values()), [])), None)
        nx = ("nx-load-dataset-check.%s.%s.svc.%s" % (some["stack"], some["user"], plan["zone"])) if some else None
        bad = []
        t0 = time.monotonic()
        for name, qtype in sample:
            want = plan["expected"][(name, qtype)]
            try:
                resp = dns_query(self.dns, name, qtype)
            except DnsError as e:
                bad.append("%s %s: %s" % (name, qtype, e))
                continue
            got, ttls = answer_set(resp, name, qtype)
            if resp["rcode"] != 0 or got != want:
                bad.append("%s %s: %s %s, expected %s" % (name, qtype, RCODES.get(resp["rcode"], resp["rcode"]),
                                                         sorted(got), sorted(want)))
            elif ttls != {plan["ttl"]}:
                bad.append("%s %s: TTL %s, expected %d" % (name, qtype, sorted(ttls), plan["ttl"]))
        if nx:
            try:
                resp = dns_query(self.dns, nx, "A")
                if resp["rcode"] != 3:
                    bad.append("%s A: %s, expected NXDOMAIN" % (nx, RCODES.get(resp["rcode"], resp["rcode"])))
            except DnsError as e:
                bad.append("%s A: %s" % (nx, e))
        if bad:
            for b in bad[:20]:
                log("MISMATCH " + b)
            msg = "%d of %d checked names answer differently from the dataset" % (len(bad), len(sample) + (1 if nx else 0))
            if self.args.verify_warn_only:
                log("warning: " + msg)
                return
            raise Fatal(msg)
        log("verified %d names (cont A, svc A, SRV _80._tcp, one NXDOMAIN) against dataset.json in %.2f s: all correct"
            % (len(sample) + (1 if nx else 0), time.monotonic() - t0))


def set_loader_cpus(spec):
    if spec == "inherit" or not hasattr(os, "sched_setaffinity"):
        return None
    mine = os.sched_getaffinity(0)
    if spec == "auto":
        allcpus = set(range(os.cpu_count() or 1))
        target = allcpus - mine
        if not target:           # unpinned (MODE=multi) or a single CPU: leave it
            return None
    else:
        target = set()
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            target.update(range(int(lo), int(hi or lo) + 1))
    try:
        os.sched_setaffinity(0, target)
    except OSError as e:
        log("warning: cannot move the loader to CPUs %s: %s" % (sorted(target), e))
        return None
    return sorted(target)


def serve(args):
    t_launch = time.monotonic()
    binary = os.path.abspath(args.binary)
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise Fatal("--binary %s is not an executable file (build it: cargo build --release)" % binary)
    port = int(env_or(args.port, "PORT", "DNS port"))
    zone_file = env_or(args.zone_file, "ZONE_FILE", "reference zone file")
    workdir = env_or(args.workdir, "WORKDIR", "scratch directory")
    dataset_path = args.dataset or os.path.join(env_or(None, "DATA_DIR", "dataset directory"), "dataset.json")
    if not os.path.isfile(dataset_path):
        raise Fatal("no dataset at %s (make it with gen_dataset.py)" % dataset_path)
    udp_workers = args.udp_workers or int(os.environ.get("WORKERS") or 1)

    # The zone file stackdns may load: SOA, apex NS, glue; nothing under svc/cont/node.
    with open(zone_file) as f:
        trim = trim_zone(f.read())
    apex = trim["apex"]
    os.makedirs(workdir, exist_ok=True)
    apex_zone = os.path.join(workdir, "stackdns-apex.zone")
    with open(apex_zone, "w") as f:
        f.write("; %s minus the svc/cont/node records (%d dropped), written by %s\n"
                % (os.path.abspath(zone_file), trim["dropped"], os.path.basename(__file__)))
        f.write(trim["text"])
    probe = anchor_probe(zone_file)

    data_dir = args.data_dir or os.path.join(workdir, "stackdns-data")
    if os.path.isdir(data_dir) and os.listdir(data_dir):
        raise Fatal("data directory %s is not empty; a benchmark loads into an empty server" % data_dir)
    os.makedirs(data_dir, exist_ok=True)
    api_host = "127.0.0.1"
    api_port = args.api_port or free_tcp_port(api_host)
    token = secrets.token_hex(24)
    # The TTL the reference zone gives its svc/cont/node records (gen_dataset.py --ttl, 30), read from
    # the zone file: parsing dataset.json here would delay the exec.  The loader checks answers
    # against the dataset's ttl.
    ttl = args.ttl
    if ttl is None:
        if len(trim["dropped_ttls"]) != 1:
            raise Fatal("the svc/cont/node records of %s have TTLs %s; pass --ttl"
                        % (zone_file, sorted(trim["dropped_ttls"]) or "none"))
        ttl = trim["dropped_ttls"].pop()

    argv = [binary, "serve", "--dns", "127.0.0.1:%d" % port, "--api", "%s:%d" % (api_host, api_port),
            "--data", data_dir, "--zone-file", apex_zone, "--ttl", str(ttl),
            "--node-ttl", str(args.node_ttl), "--udp-workers", str(udp_workers)] + args.server_arg
    env = dict(os.environ)
    env.pop("STACKDNS_ADMIN_TOKEN_FILE", None)     # it would win over STACKDNS_ADMIN_TOKEN
    env["STACKDNS_ADMIN_TOKEN"] = token
    others = sorted(k for k in env if k.startswith("STACKDNS_") and k != "STACKDNS_ADMIN_TOKEN")
    state = {"api": "http://%s:%d" % (api_host, api_port), "dns": "127.0.0.1:%d" % port, "token": token,
             "zone": apex, "server_pid": os.getpid(), "data_dir": data_dir, "zone_file": apex_zone}
    state_path = os.path.join(workdir, "stackdns-bench.json")
    fd = os.open(state_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=1)
    log("zone %s: kept %d records, dropped %d (svc/cont/node, TTL %d) -> %s; run_anchor probe %s %s"
        % (apex, trim["kept"], trim["dropped"], ttl, apex_zone, probe[0], probe[1]))
    log("exec %s%s (admin token in %s)" % (" ".join(argv), "; env " + " ".join(others) if others else "", state_path))

    cfg = {"api": state["api"], "token": token, "dns_host": "127.0.0.1", "dns_port": port, "zone": apex,
           "probe": probe, "dataset": dataset_path}

    server_pid = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    ready_r, ready_w = os.pipe()
    child = os.fork()
    if child == 0:
        # C: start the loader G, wait until G holds a pidfd on P, then exit so G is orphaned
        # (re-parented away from P) and never part of the server's process tree.
        started = False
        try:
            if os.fork() == 0:
                os.close(ready_r)
                run_loader(args, cfg, server_pid, ready_w, t_launch)   # never returns
            os.close(ready_w)
            started = os.read(ready_r, 1) == b"x"
        finally:
            os._exit(0 if started else 1)
    os.close(ready_r)
    os.close(ready_w)
    _, status = os.waitpid(child, 0)
    if status != 0:
        raise Fatal("the loader process did not start; not starting stackdns")
    try:
        os.execve(binary, argv, env)
    except OSError as e:
        log("cannot exec %s: %s" % (binary, e))
        os._exit(127)


def run_loader(args, cfg, server_pid, ready_w, t_launch):
    """Body of the loader process G.  Never returns: exits 0 once loaded (and verified), else stops
    the server (so run_anchor fails at once, with this log's last lines as the reason) and exits 1."""
    code = 1
    pidfd = None
    try:
        try:
            pidfd = os.pidfd_open(server_pid)
        except (AttributeError, OSError):
            pidfd = None        # old Python or kernel: fall back to kill(pid, 0)
        os.write(ready_w, b"x")
        os.close(ready_w)
        cpus = set_loader_cpus(args.loader_cpus)
        if cpus is not None:
            log("loader pid %d runs on CPU %s, off the server's" % (os.getpid(), ",".join(map(str, cpus))))
        with open(cfg["dataset"]) as f:
            dataset = json.load(f)
        cfg["plan"] = plan = build_plan(dataset)
        if plan["zone"] != cfg["zone"]:
            raise Fatal("dataset zone %s differs from the zone file's apex %s" % (plan["zone"], cfg["zone"]))
        Loader(args, cfg, server_pid, pidfd, t_launch).run()
        code = 0
    except EXPECTED_ERRORS as e:
        log("error: %s" % e)
    except BaseException:
        log("error: loader crashed:\n" + traceback.format_exc())
    finally:
        if code != 0 and server_alive(pidfd, server_pid):
            log("stopping stackdns (pid %d) so no benchmark runs on a partial or wrong zone" % server_pid)
            try:
                if pidfd is not None:
                    signal.pidfd_send_signal(pidfd, signal.SIGTERM)
                else:
                    os.kill(server_pid, signal.SIGTERM)
            except OSError:
                pass
        sys.stderr.flush()
        os._exit(code)


def server_alive(pidfd, pid):
    if pidfd is not None:
        return not select.select([pidfd], [], [], 0)[0]
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


# =============================================================================================
# latency
# =============================================================================================

def discover_target(api, args):
    """(node, node address, user, stack, service, zone) of an existing service to add containers to."""
    _, body, _ = api.request("GET", "/v1/nodes")
    nodes = sorted(body["nodes"], key=lambda n: n["name"])
    if args.node:
        nodes = [n for n in nodes if n["name"] == args.node]
        if not nodes:
            raise Fatal("node %s is not registered" % args.node)
    for n in nodes:
        if n["state"] != "live":
            continue
        if args.service:
            user, stack, service = args.service.split("/")
        else:
            if not n["containers_running"]:
                continue
            _, cl, _ = api.request("GET", "/v1/nodes/%s/containers" % q(n["name"]))
            if not cl["containers"]:
                continue
            c = min(cl["containers"], key=lambda c: (c["user"], c["stack"], c["name"]))
            user, stack, service = c["user"], c["stack"], c["service"]
        zone = n["fqdn"].split(".node.", 1)[1]
        return n["name"], n["address"], user, stack, service, zone
    raise Fatal("no live node%s with running containers: load a dataset first, or pass --node and --service"
                % (" " + args.node if args.node else ""))


def one_sample(api, dns_sock, path, payload, qname, qtype, want, args):
    """PUT one container and poll DNS for it from the moment the request is sent.

    The PUT and the DNS polling overlap in one thread: the request is written, then a select() loop
    sends A queries every --poll-interval while watching both sockets.  Returns (PUT response time,
    send-to-first-correct-DNS-answer time) in seconds; either may be None on timeout."""
    conn = api.connection()
    body = json.dumps(payload, separators=(",", ":")).encode()
    ids = set()
    t_http = t_dns = None
    t0 = time.perf_counter()
    conn.request("PUT", path, body=body, headers=api.headers(body))
    deadline = t0 + args.timeout
    next_query = t0
    http_sock = conn.sock
    while t_dns is None or t_http is None:
        now = time.perf_counter()
        if now >= deadline:
            break
        if t_dns is None and now >= next_query:
            qid = random.getrandbits(16)
            ids.add(qid)
            dns_sock.send(build_query(qname, qtype, qid))
            # poll quickly, but resend after 100 ms if an answer went missing
            next_query = now + 0.1
        watch = ([dns_sock] if t_dns is None else []) + ([http_sock] if t_http is None else [])
        r, _, _ = select.select(watch, [], [], max(0.0, min(next_query, deadline) - time.perf_counter()))
        if http_sock in r:
            t_http = time.perf_counter()
            resp = conn.getresponse()
            data = resp.read()
            if resp.status not in (200, 201):
                raise ApiError("PUT", path, resp.status, data)
        if dns_sock in r:
            t_recv = time.perf_counter()
            try:
                msg = parse_response(dns_sock.recv(65535))
            except (DnsError, ConnectionRefusedError):
                continue
            if msg["id"] not in ids:
                continue
            got, _ = answer_set(msg, qname, qtype)
            if want in got:
                t_dns = t_recv
            else:
                next_query = t_recv + args.poll_interval
    if t_http is None:          # the response is still owed: drop this connection, the next sample opens another
        api.reset()
    return (t_http - t0 if t_http else None), (t_dns - t0 if t_dns else None)


def _background_writes(base, token, paths, service, per_s, stop, done, late, error):
    """The body of BackgroundWriter's process: one thread per connection, each paced at its share
    of the rate and writing its own containers (a write waits for its commit, a few ms, so one
    connection alone would not reach the rate)."""
    api = Api(base, token)
    lock = threading.Lock()
    threads = max(1, min(len(paths), (per_s + 99) // 100))

    def run(mine):
        period = threads / per_s
        next_t = time.perf_counter()
        generation = n = 0
        try:
            while not stop.is_set():
                i = n % len(mine)
                if i == 0:
                    generation += 1
                api.request("PUT", mine[i], {"service": service, "generation": generation, "ready": generation % 2 == 1})
                n += 1
                next_t += period
                pause = next_t - time.perf_counter()
                with lock:
                    done.value += 1
                    if pause <= 0:
                        late.value += 1
                if pause > 0:
                    time.sleep(pause)
        except (ApiError, OSError, http.client.HTTPException) as e:
            error.value = str(e)[:200].encode()
            stop.set()

    workers = [threading.Thread(target=run, args=(paths[t::threads],)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


class BackgroundWriter:
    """Durable writes at a steady rate while latency is sampled: container reports from another
    process (so they do not share the sampler's interpreter), --background-writes per second over
    one connection per 100/s, each flipping one of 100 containers between ready and not ready, so
    each one changes DNS: a commit, a snapshot and a zone difference."""

    def __init__(self, api, node, user, stack, service, per_s, run_id):
        import multiprocessing
        ctx = multiprocessing.get_context("fork")
        self.api, self.per_s = api, per_s
        self.paths = ["/v1/nodes/%s/containers/%s" % (q(node), q(user, stack, "bg-%s-%d" % (run_id, i)))
                      for i in range(100)]
        self.stop = ctx.Event()
        self.done_v, self.late_v, self.error_v = ctx.Value("q", 0), ctx.Value("q", 0), ctx.Array("c", 256)
        self.proc = ctx.Process(target=_background_writes, daemon=True,
                                args=(api.base, api.token, self.paths, service, per_s, self.stop,
                                      self.done_v, self.late_v, self.error_v))

    def start(self):
        self.proc.start()

    @property
    def done(self):
        return self.done_v.value

    @property
    def late(self):
        return self.late_v.value

    @property
    def error(self):
        return self.error_v.value.decode() or None

    def finish(self):
        self.stop.set()
        self.proc.join(timeout=30)
        for path in self.paths:
            try:
                self.api.request("DELETE", path)
            except (ApiError, OSError, http.client.HTTPException):
                pass


def latency(args):
    if not args.api:
        state_path = args.state or (os.path.join(os.environ["WORKDIR"], "stackdns-bench.json")
                                    if os.environ.get("WORKDIR") else None)
        if not state_path or not os.path.isfile(state_path):
            raise Fatal("pass --api, --token and --dns, or --state <WORKDIR>/stackdns-bench.json")
        with open(state_path) as f:
            st = json.load(f)
        args.api = args.api or st["api"]
        args.token = args.token or st["token"]
        args.dns = args.dns or st["dns"]
    if not args.token:
        args.token = os.environ.get("STACKDNS_ADMIN_TOKEN")
    if not args.token or not args.dns:
        raise Fatal("latency needs --token (or $STACKDNS_ADMIN_TOKEN) and --dns")
    api = Api(args.api, args.token, timeout=args.timeout)
    dns = parse_hostport(args.dns)
    node, node_addr, user, stack, service, zone = discover_target(api, args)
    node_addr = str(ipaddress.ip_address(node_addr))      # the form inet_ntop gives back
    qtype = "AAAA" if ":" in node_addr else "A"
    run_id = "%x" % (int(time.time() * 1000) & 0xFFFFFFFF)
    log("latency: %d samples: PUT a new container of %s.%s.%s.svc.%s on node %s (%s), poll its cont %s over UDP "
        "every %.1f ms; API %s, DNS %s:%d" % (args.samples, service, stack, user, zone, node, node_addr, qtype,
                                               1000 * args.poll_interval, api.base, dns[0], dns[1]))
    dns_sock = socket.socket(socket.AF_INET6 if ":" in dns[0] else socket.AF_INET, socket.SOCK_DGRAM)
    dns_sock.connect(dns)
    pairs, failures, created = [], [], []
    api.request("GET", "/readyz")          # open the keep-alive connection outside the timed part
    writer = None
    if args.background_writes > 0:
        writer = BackgroundWriter(api, node, user, stack, service, args.background_writes, run_id)
        writer.start()
        time.sleep(1.0)                    # let the rate settle before sampling
    t_sampling = time.perf_counter()
    try:
        for i in range(args.samples):
            name = "lat-%s-%d" % (run_id, i)
            path = "/v1/nodes/%s/containers/%s" % (q(node), q(user, stack, name))
            payload = {"service": service, "generation": 1,
                       "ports": [{"container_port": 80, "host_port": 40000 + i % 20000, "protocol": "tcp"}]}
            qname = "%s.%s.%s.cont.%s" % (name, stack, user, zone)
            put_s, vis_s = one_sample(api, dns_sock, path, payload, qname, qtype, node_addr, args)
            created.append(path)
            if put_s is None or vis_s is None:
                failures.append("%s: %s" % (qname, "no PUT response within %.1f s" % args.timeout
                                            if put_s is None else "not in DNS after %.1f s" % args.timeout))
            else:
                pairs.append((put_s, vis_s))
            if not args.keep:
                api.request("DELETE", path)
                created.pop()
            time.sleep(args.interval)
    finally:
        dns_sock.close()
        sampled_s = time.perf_counter() - t_sampling
        if writer:
            writer.finish()
        for path in created if not args.keep else []:
            try:
                api.request("DELETE", path)
            except (ApiError, OSError, http.client.HTTPException) as e:
                log("warning: could not delete %s: %s" % (path, e))
    put_times = sorted(p for p, _ in pairs)
    vis_times = sorted(v for _, v in pairs)
    before = sum(1 for p, v in pairs if v <= p)

    def ms(vals, pct):
        return 1000 * percentile(vals, pct)
    print("%-40s %8s %8s %8s %8s   (ms; %d samples%s)" % ("", "p50", "p99", "max", "min", len(pairs),
                                                         ", %d FAILED" % len(failures) if failures else ""))
    for label, vals in (("PUT response (send -> HTTP response)", put_times),
                        ("visible (send -> first DNS answer)", vis_times)):
        print("%-40s %8.2f %8.2f %8.2f %8.2f" % (label, ms(vals, 50), ms(vals, 99), ms(vals, 100), ms(vals, 0)))
    if pairs:
        print("DNS answered before the HTTP response arrived in %d of %d samples (stackdns answers a write "
              "only once it is committed and published)" % (before, len(pairs)))
    if writer:
        rate = writer.done / (sampled_s + 1.0)
        print("background writes: %d at %.0f/s (asked %d/s; %d behind schedule)%s"
              % (writer.done, rate, args.background_writes, writer.late,
                 "; stopped by an error: %s" % writer.error if writer.error else ""))
        if writer.error:
            failures.append("background writer: %s" % writer.error)
    for f in failures[:10]:
        print("failed: " + f)
    if args.json:
        print(json.dumps({"samples": len(pairs), "failed": len(failures), "visible_before_response": before,
                          "put_ms": {k: round(ms(put_times, p), 3) for k, p in (("p50", 50), ("p99", 99), ("max", 100))},
                          "visible_ms": {k: round(ms(vis_times, p), 3) for k, p in (("p50", 50), ("p99", 99), ("max", 100))}},
                         sort_keys=True))
    return 1 if failures else 0


# =============================================================================================
# command line
# =============================================================================================

def parse_args(argv):
    p = argparse.ArgumentParser(prog="load_dataset.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)

    s = sub.add_parser("serve", help="start stackdns on $PORT, load dataset.json through the API, keep serving",
                       description="Start command for `run_anchor.sh custom`; see the module docstring.")
    s.add_argument("--binary", required=True, help="path of the stackdns executable")
    s.add_argument("--dataset", help="dataset.json [$DATA_DIR/dataset.json]")
    s.add_argument("--zone-file", help="reference zone file to take SOA/NS/glue from [$ZONE_FILE]")
    s.add_argument("--port", type=int, help="DNS port [$PORT]")
    s.add_argument("--workdir", help="scratch directory [$WORKDIR]")
    s.add_argument("--data-dir", help="stackdns --data; must be empty [$WORKDIR/stackdns-data]")
    s.add_argument("--api-port", type=int, default=0, help="API port on 127.0.0.1 [0: a free one]")
    s.add_argument("--ttl", type=int, help="record TTL [the dataset's, 30 from gen_dataset.py]")
    s.add_argument("--node-ttl", type=int, default=86400,
                   help="stackdns --node-ttl: nodes are not heartbeated during the benchmark [86400]")
    s.add_argument("--udp-workers", type=int, help="stackdns --udp-workers [$WORKERS, else 1]")
    s.add_argument("--concurrency", type=int, default=8, help="API requests in flight while loading [8]")
    s.add_argument("--report-auth", choices=("node", "admin"), default="node",
                   help="token for container reports: each node's own (as an agent would) or admin [node]")
    s.add_argument("--loader-cpus", default="auto",
                   help="CPUs for the loader: auto (those the server was not pinned to, if any), inherit, "
                        "or a list like 0 or 0-1 [auto]")
    s.add_argument("--verify", type=int, default=200,
                   help="after loading, check this many random names against the dataset [200; 0 = off]")
    s.add_argument("--verify-warn-only", action="store_true",
                   help="on a mismatch only warn; by default the server is stopped so no benchmark runs on it")
    s.add_argument("--start-timeout", type=float, default=60, help="seconds for stackdns to become ready [60]")
    s.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra argument for `stackdns serve` (repeat; e.g. --server-arg=--rotation=...)")

    l = sub.add_parser("latency", help="time from a container PUT to its name answering in DNS")
    l.add_argument("--api", help="API base URL, e.g. http://127.0.0.1:8053")
    l.add_argument("--token", help="admin token [$STACKDNS_ADMIN_TOKEN]")
    l.add_argument("--dns", help="DNS server HOST:PORT")
    l.add_argument("--state", help="read api/token/dns from serve's state file [$WORKDIR/stackdns-bench.json]")
    l.add_argument("--samples", type=int, default=200)
    l.add_argument("--node", help="node to add the containers to [first live node with containers]")
    l.add_argument("--service", metavar="USER/STACK/SERVICE", help="service of the new containers "
                   "[that of the node's first container]")
    l.add_argument("--poll-interval", type=float, default=0.0005,
                   help="seconds between DNS queries after a negative answer [0.0005]")
    l.add_argument("--interval", type=float, default=0.02, help="pause between samples, seconds [0.02]")
    l.add_argument("--timeout", type=float, default=5.0, help="per-sample limit, seconds [5]")
    l.add_argument("--keep", action="store_true", help="do not delete the sample containers afterwards")
    l.add_argument("--background-writes", type=int, default=0, metavar="N",
                   help="meanwhile, N durable container writes per second on another connection [0]")
    l.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.mode == "serve":
            if args.concurrency < 1:
                raise Fatal("--concurrency must be at least 1")
            serve(args)                   # execs stackdns; returns only on error
            return 1
        return latency(args)
    except EXPECTED_ERRORS as e:
        log("error: %s" % e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
