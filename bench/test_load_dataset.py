#!/usr/bin/env python3
"""Tests of load_dataset.py's pure parts (no server needed): zone trimming, dataset -> API mapping,
DNS packet building and parsing.  Run: python3 -m unittest bench/test_load_dataset.py

The dataset tests use the shared kit's gen_dataset.py, found at $BENCH_KIT or ../shared/bench next to
this repository; they are skipped without it.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import load_dataset as L  # noqa: E402

KIT = os.environ.get("BENCH_KIT") or os.path.join(HERE, "..", "..", "shared", "bench")
GEN = os.path.join(KIT, "gen_dataset.py")


@unittest.skipUnless(os.path.isfile(GEN), "shared kit's gen_dataset.py not found (set BENCH_KIT)")
class GeneratedDataset(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        # the wide service needs as many nodes as containers, so keep it small too
        subprocess.run([sys.executable, GEN, "--stacks", "2", "--services", "3", "--nodes", "10",
                        "--wide-containers", "8", "--queries", "100", "--out-dir", cls.tmp.name],
                       check=True, stdout=subprocess.DEVNULL)
        cls.zone_path = os.path.join(cls.tmp.name, "cluster.test.zone")
        with open(cls.zone_path) as f:
            cls.zone_text = f.read()
        with open(os.path.join(cls.tmp.name, "dataset.json")) as f:
            cls.dataset = json.load(f)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_trim_keeps_only_soa_ns_glue(self):
        r = L.trim_zone(self.zone_text)
        records = [l for l in r["text"].splitlines() if l and not l.startswith("$")]
        self.assertEqual(records, [
            "cluster.test. 3600 IN SOA ns1.cluster.test. hostmaster.cluster.test. 1 3600 600 86400 30",
            "cluster.test. 3600 IN NS ns1.cluster.test.",
            "ns1.cluster.test. 3600 IN A 127.0.0.1"])
        self.assertEqual(r["apex"], "cluster.test.")
        self.assertEqual(r["dropped_ttls"], {30})
        self.assertEqual(r["kept"] + r["dropped"], sum(1 for l in self.zone_text.splitlines()
                                                        if l and not l.startswith("$")))
        # the regex fast path and the line parser agree
        self.assertEqual(r, L._trim_zone_lines(self.zone_text))

    def test_probe_is_the_last_line(self):
        last = self.zone_text.rstrip("\n").splitlines()[-1].split()
        self.assertEqual(L.anchor_probe(self.zone_path), (last[0], last[3]))

    def test_plan_answers_what_the_reference_zone_answers(self):
        plan = L.build_plan(self.dataset)
        zone = {}
        for line in self.zone_text.splitlines():
            f = line.split()
            if len(f) >= 5 and f[3] in ("A", "SRV") and (".svc." in f[0] or ".cont." in f[0]):
                zone.setdefault((f[0], f[3]), set()).add(f[4] if f[3] == "A" else (int(f[6]), f[7]))
        self.assertEqual(plan["expected"], zone)
        self.assertEqual(plan["ttl"], 30)
        self.assertEqual(sum(len(v) for v in plan["reports"].values()), len(self.dataset["containers"]))
        c = self.dataset["containers"][0]
        item = next(i for i in plan["reports"][c["node"]] if i["name"] == c["name"])
        svc, stack, user = c["service"].split(".")[:3]
        self.assertEqual(item, {"user": user, "stack": stack, "name": c["name"], "service": svc,
                                "ports": [{"container_port": 80, "host_port": c["port"], "protocol": "tcp"}],
                                "generation": 1})
        probe = L.anchor_probe(self.zone_path)
        self.assertEqual(len(plan["sources"][probe]), 1)


class TrimEdgeCases(unittest.TestCase):
    ZONE = ("$ORIGIN example.\n$TTL 60\n"
            "@ IN SOA ns1 host (\n  1 ; serial\n  2 3 4 5 )\n"
            "@ IN NS ns1\n  IN NS ns2\n"
            "ns1 IN A 1.1.1.1\nns2 300 IN A 1.1.1.2\n"
            "a.svc IN A 10.0.0.1\n  IN TXT \"x;y\"\n"
            "svc IN A 10.0.0.9\n"
            "b.node 120 IN A 10.0.0.2\n"
            "x.cont.example. 45 IN A 1.2.3.4\n"
            "svcx IN A 10.0.0.3\n")

    def test_relative_owners_multiline_and_omitted_owners(self):
        r = L.trim_zone(self.ZONE)
        self.assertEqual(r["apex"], "example.")
        self.assertEqual((r["kept"], r["dropped"]), (6, 5))
        self.assertEqual(r["dropped_ttls"], {45, 60, 120})
        self.assertIn("  2 3 4 5 )", r["text"])           # the SOA continuation stays
        self.assertIn("example.  IN NS ns2", r["text"])    # owner written out for an omitted one
        self.assertIn("svcx IN A", r["text"])
        self.assertNotIn("10.0.0.1", r["text"])
        self.assertNotIn("x;y", r["text"])

    def test_errors(self):
        with self.assertRaises(L.Fatal):
            L.trim_zone("$ORIGIN example.\n@ IN NS ns1\n")                         # no SOA
        with self.assertRaises(L.Fatal):
            L.trim_zone("$ORIGIN example.\n@ IN SOA a b 1 2 3 4 5\n")                # no NS
        with self.assertRaises(L.Fatal):
            L.trim_zone("$ORIGIN example.\n@ IN SOA a b 1 2 3 4 5\n@ IN NS a\nx.other. IN A 1.1.1.1\n")


class DnsWire(unittest.TestCase):
    def test_query_layout(self):
        q = L.build_query("a.b.", "SRV", 0x1234)
        self.assertEqual(q[:12], struct.pack("!HHHHHH", 0x1234, 0, 1, 0, 0, 1))
        self.assertEqual(q[12:17], b"\x01a\x01b\x00")
        self.assertEqual(q[17:21], struct.pack("!HH", 33, 1))
        self.assertEqual(q[21:], b"\x00" + struct.pack("!HHIH", 41, 4096, 0, 0))
        self.assertEqual(L.build_query(".", "SOA", 1, edns_size=0)[12:], b"\x00\x00\x06\x00\x01")

    def test_parse_compressed_answer(self):
        qname = "svc.example."
        head = struct.pack("!HHHHHH", 7, 0x8400 | 3, 1, 3, 0, 0)
        question = L.encode_name(qname) + struct.pack("!HH", 33, 1)
        ptr = b"\xc0\x0c"                                   # -> offset 12, the question name
        a = ptr + struct.pack("!HHIH", 1, 1, 30, 4) + bytes([10, 1, 0, 1])
        srv_rdata = struct.pack("!HHH", 0, 1, 20000) + b"\x01x" + ptr
        srv = ptr + struct.pack("!HHIH", 33, 1, 30, len(srv_rdata)) + srv_rdata
        soa_rdata = b"\x03ns1" + b"\xc0\x10" + b"\x01h\x00" + struct.pack("!IIIII", 9, 1, 2, 3, 4)
        soa = ptr + struct.pack("!HHIH", 6, 1, 60, len(soa_rdata)) + soa_rdata
        msg = L.parse_response(head + question + a + srv + soa)
        self.assertEqual((msg["id"], msg["rcode"], msg["aa"], msg["tc"]), (7, 3, True, False))
        self.assertEqual(msg["question"], [(qname, 33, 1)])
        self.assertEqual(msg["answer"][0], (qname, 1, 1, 30, "10.1.0.1"))
        self.assertEqual(msg["answer"][1][4], (0, 1, 20000, "x." + qname))
        self.assertEqual(msg["answer"][2][4]["mname"], "ns1.example.")
        self.assertEqual(msg["answer"][2][4]["serial"], 9)
        self.assertEqual(L.answer_set(msg, qname, "SRV"), ({(20000, "x." + qname)}, {30}))

    def test_malformed(self):
        head = struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0)
        with self.assertRaises(L.DnsError):
            L.parse_response(head + b"\xc0\x0c" + b"\x00\x01\x00\x01")     # pointer to itself
        with self.assertRaises(L.DnsError):
            L.parse_response(head + b"\x05ab")                              # label past the end
        with self.assertRaises(L.DnsError):
            L.parse_response(b"\x00" * 5)

    def test_percentile(self):
        v = list(range(1, 101))
        self.assertEqual((L.percentile(v, 50), L.percentile(v, 99), L.percentile(v, 100), L.percentile(v, 0)),
                         (50, 99, 100, 1))


class BackgroundWrites(unittest.TestCase):
    """The loaded latency run's writer, against a small HTTP server that records what it gets."""

    def test_steady_rate_of_ready_flips_then_cleanup(self):
        import http.server
        import threading
        seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen.append((self.command, self.path, json.loads(body) if body else None))
                # One write: headers and body apart would meet the client's delayed ACK.
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 2\r\n\r\n{}")

            do_PUT = do_DELETE = answer

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            api = L.Api("http://127.0.0.1:%d" % server.server_address[1], "t")
            writer = L.BackgroundWriter(api, "n1", "u", "s", "web", 200, "x")
            writer.start()
            import time
            time.sleep(1.0)
            writer.finish()
        finally:
            server.shutdown()
        puts = [(p, b) for m, p, b in seen if m == "PUT"]
        deletes = {p for m, p, _ in seen if m == "DELETE"}
        self.assertIsNone(writer.error)
        self.assertGreater(len(puts), 100, "about 200 in a second")
        self.assertLess(len(puts), 300, "paced, not as fast as possible")
        self.assertEqual(len(puts), writer.done)
        by_path = {}
        for path, body in puts:
            by_path.setdefault(path, []).append(body)
        self.assertIn("/v1/nodes/n1/containers/u/s/bg-x-0", by_path)
        for path, bodies in by_path.items():
            want = [{"service": "web", "generation": g, "ready": g % 2 == 1} for g in range(1, len(bodies) + 1)]
            self.assertEqual(bodies, want, "%s: each round a new generation, flipping ready" % path)
        self.assertTrue(any(len(b) > 1 for b in by_path.values()), "some container written twice")
        self.assertEqual(deletes, set(writer.paths), "every container it wrote is deleted")


if __name__ == "__main__":
    unittest.main()
