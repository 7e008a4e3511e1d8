#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/ (standard library only): run from fuzz/.

The DNS seeds are real queries of every kind the handler decides on, including a TSIG-signed
AXFR under the key the targets know, so the fuzzer starts past the parser.
"""
import hashlib, hmac, os, struct, time, base64, pathlib, json

HERE = pathlib.Path(__file__).resolve().parent
KEY_NAME = b"\x07xfr-key\x00"
SECRET = base64.b64decode("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
ALG = b"\x0bhmac-sha256\x00"

def name(text):
    out = b""
    for label in text.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\x00"

def opt(size=1232, options=b"", do=False):
    return b"\x00" + struct.pack(">HHIH", 41, size, 0x8000 if do else 0, len(options)) + options

def query(qname, qtype, qid=0x1234, flags=0x0100, additional=(), authority=()):
    head = struct.pack(">HHHHHH", qid, flags, 1, 0, len(authority), len(additional))
    return head + name(qname) + struct.pack(">HH", qtype, 1) + b"".join(authority) + b"".join(additional)

def sign(message, now):
    """RFC 8945 §4.3.3: the message, then the TSIG variables; returns it with the TSIG appended."""
    variables = KEY_NAME + struct.pack(">HI", 255, 0) + ALG + struct.pack(">HIHHH", now >> 32, now & 0xFFFFFFFF, 300, 0, 0)
    mac = hmac.new(SECRET, message + variables, hashlib.sha256).digest()
    qid = struct.unpack(">H", message[:2])[0]
    rdata = ALG + struct.pack(">HIH", now >> 32, now & 0xFFFFFFFF, 300) + struct.pack(">H", len(mac)) + mac + struct.pack(">HHH", qid, 0, 0)
    record = KEY_NAME + struct.pack(">HHIH", 250, 255, 0, len(rdata)) + rdata
    arcount = struct.unpack(">H", message[10:12])[0] + 1
    return message[:10] + struct.pack(">H", arcount) + message[12:] + record

SVC = "web.quickstart-ruby.honeniq.svc.cluster.test"
soa = name("cluster.test") + struct.pack(">HHIH", 6, 1, 0, 22) + b"\x00\x00" + struct.pack(">IIIII", 2, 0, 0, 0, 0)
UDP_LOCAL, TCP_LOCAL, UDP_FAR, TCP_FAR = b"\x00", b"\x01", b"\x02", b"\x03"
now = int(time.time())
dns = {
    "a_svc": UDP_FAR + query(SVC, 1, additional=[opt()]),
    "aaaa_svc_tcp": TCP_FAR + query(SVC, 28, additional=[opt()]),
    "srv": UDP_FAR + query("_80._tcp." + SVC, 33, additional=[opt(4096, do=True)]),
    "srv_no_edns": UDP_FAR + query("_80._tcp." + SVC, 33),
    "cont": UDP_FAR + query("web-1.quickstart-ruby.honeniq.cont.cluster.test", 1),
    "node": UDP_FAR + query("n1.node.cluster.test", 1),
    "nxdomain": UDP_FAR + query("nope.svc.cluster.test", 1, additional=[opt()]),
    "cname": UDP_FAR + query("www.cluster.test", 1, additional=[opt()]),
    "cname_loop": UDP_FAR + query("loop.cluster.test", 1),
    "any": UDP_FAR + query("ns1.cluster.test", 255),
    "txt_mixed_case": UDP_FAR + query("TxT.ClUsTeR.TeSt", 16),
    "outside": UDP_FAR + query("example.org", 1),
    "axfr": TCP_LOCAL + query("cluster.test", 252),
    "ixfr_tcp": TCP_LOCAL + query("cluster.test", 251, authority=[soa]),
    "ixfr_udp": UDP_LOCAL + query("cluster.test", 251, authority=[soa], additional=[opt()]),
    "axfr_signed": TCP_FAR + sign(query("cluster.test", 252, flags=0), now),
    "a_signed": UDP_FAR + sign(query("ns1.cluster.test", 1, additional=[opt()]), now),
    "cookie_client": UDP_FAR + query("ns1.cluster.test", 1, additional=[opt(options=struct.pack(">HH", 10, 8) + b"\x01" * 8)]),
    "cookie_full": UDP_FAR + query("ns1.cluster.test", 1, additional=[opt(options=struct.pack(">HH", 10, 24) + b"\x01" * 8 + b"\x01\x00\x00\x00" + b"\x02" * 12)]),
    "badvers": UDP_FAR + query("ns1.cluster.test", 1, additional=[b"\x00" + struct.pack(">HHIH", 41, 1232, 0x00010000, 0)]),
    "notify": UDP_FAR + query("cluster.test", 6, flags=0x2000),
    "opcode_15": UDP_FAR + query("cluster.test", 1, flags=0x7800),
    "header_only": UDP_FAR + struct.pack(">HHHHHH", 1, 0x0100, 0, 0, 0, 0),
}
tsig_seeds = {k: v[1:] for k, v in dns.items() if "signed" in k}
tsig_seeds["truncated"] = dns["a_signed"][1:-10]

zones = {
    "builtin": (HERE.parent / "zones" / "cluster.test.zone").read_text(),
    "records": "$ORIGIN cluster.test.\n$TTL 3600\n@ IN SOA ns1 hostmaster 1 3600 600 604800 5\n@ IN NS ns1\n"
               "ns1 IN A 127.0.0.1\nns1 IN AAAA ::1\nmail IN MX 10 ns1\n_sip._tcp IN SRV 0 1 5060 ns1\n"
               "txt IN TXT \"a\" \"b\"\nalias IN CNAME ns1\nwild IN CAA 0 issue \"ca.example\"\n",
    "no_soa": "$ORIGIN cluster.test.\n@ 60 IN NS ns1\n",
}

data = HERE.parent / "tests" / "data" / "quickstart"
stackfiles = {p.stem: b"\x02" + p.read_bytes() for p in sorted(data.glob("*.yml"))}
stackfiles["json"] = b"\x01" + json.dumps({"web": {"image": "nginx", "ports": ["80:80"], "target_num_containers": 3}}).encode()
stackfiles["anchors"] = b"\x00" + b"base: &b\n  image: x\nweb:\n  <<: *b\n  target_num_containers: 2\n"

bodies = {
    "node": b"\x00" + json.dumps({"address": "10.0.0.1", "labels": {"region": "ams"}, "tags": ["web"], "capacity": {"memory_mb": 2048, "cpus": 2.0}, "tenants": ["honeniq"]}).encode(),
    "container": b"\x01" + json.dumps({"service": "web", "address": "fd00::1", "ports": [{"container_port": 80, "host_port": 80, "protocol": "tcp"}], "generation": 3, "ready": False, "detail": "starting"}).encode(),
    "container_list": b"\x02" + json.dumps({"containers": [{"user": "honeniq", "stack": "quickstart-ruby", "name": "web-1", "service": "web", "ports": [], "generation": 1}]}).encode(),
    "scale": b"\x03" + json.dumps({"target_num_containers": 5}).encode(),
    "limits": b"\x04" + json.dumps({"max_containers": 10, "max_stacks": 2, "max_nodes": 1}).encode(),
    "query_stop": b"\x05generation=4&detail=exited%20with%20status%201",
    "query_wait": b"\x05index=12&wait=30s",
    "query_dry_run": b"\x05dry_run",
    "label": b"\x06quickstart-ruby",
}

for target, seeds in [("dns_handler", dns), ("tsig", tsig_seeds), ("zone_file", {k: v.encode() for k, v in zones.items()}),
                      ("stackfile", stackfiles), ("api_bodies", bodies)]:
    folder = HERE / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    for seed, content in seeds.items():
        (folder / seed).write_bytes(content)
    print(f"{target}: {len(seeds)} seeds")
