//! Protocol conformance pinned by data: each case is a query, the transport, and what the
//! answer must look like, with the RFC section that requires it.

use hickory_proto::op::Message;

use crate::support::*;

const SVC: &str = "web.quickstart-ruby.honeniq.svc.cluster.test.";

/// A query as raw bytes, so unusual flags and options can be sent.
#[derive(Clone, Copy)]
struct Q {
    name: &'static str,
    qtype: u16,
    qclass: u16,
    /// Header flags word (opcode, RD, CD, Z...).
    flags: u16,
    /// QDCOUNT, and how many times the question is written.
    qdcount: u16,
    /// (UDP size, version, DO, option bytes) of an OPT record.
    edns: Option<(u16, u8, bool, &'static [u8])>,
    /// The OPT record's owner name, as wire bytes (the root, `\0`, unless a case says else).
    opt_owner: &'static [u8],
    /// Raw records placed in a section: answer, authority, or additional before or after OPT.
    records: &'static [(Section, &'static [u8])],
    tcp: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Answer,
    Authority,
    BeforeOpt,
    AfterOpt,
}

/// A TSIG record (key `k.`, hmac-sha256, a zero MAC) whose MAC length field says `mac_len`
/// while 32 bytes follow: 32 is well-formed (and fails verification), others overrun.
const fn tsig(mac_len: u8) -> [u8; 74] {
    let mut r = [0u8; 74];
    let head: [u8; 24] = [
        1, b'k', 0, 0, 250, 0, 255, 0, 0, 0, 0, 0, 61, 11, b'h', b'm', b'a', b'c', b'-', b's', b'h', b'a',
        b'2', b'5',
    ];
    let mut i = 0;
    while i < head.len() {
        r[i] = head[i];
        i += 1;
    }
    // "6", root; time signed (6), fudge 300; MAC length; 32-byte MAC; id, error, other length.
    r[24] = b'6';
    r[25] = 0;
    r[32] = 1;
    r[33] = 44;
    r[35] = mac_len;
    r
}
const TSIG_OK: [u8; 74] = tsig(32);
const TSIG_OVERRUN: [u8; 74] = tsig(200);

const fn q(name: &'static str, qtype: u16) -> Q {
    Q {
        name,
        qtype,
        qclass: 1,
        flags: 0x0100,
        qdcount: 1,
        edns: Some((1232, 0, false, &[])),
        opt_owner: b"\0",
        records: &[],
        tcp: false,
    }
}

impl Q {
    fn bytes(&self) -> Vec<u8> {
        let mut out = vec![0xbe, 0xef];
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.extend_from_slice(&self.qdcount.to_be_bytes());
        let count =
            |section: &[Section]| self.records.iter().filter(|(s, _)| section.contains(s)).count() as u16;
        let additional = count(&[Section::BeforeOpt, Section::AfterOpt]) + u16::from(self.edns.is_some());
        out.extend_from_slice(&count(&[Section::Answer]).to_be_bytes());
        out.extend_from_slice(&count(&[Section::Authority]).to_be_bytes());
        out.extend_from_slice(&additional.to_be_bytes());
        for _ in 0..self.qdcount {
            for label in self
                .name
                .trim_end_matches('.')
                .split('.')
                .filter(|l| !l.is_empty())
            {
                out.push(label.len() as u8);
                out.extend_from_slice(label.as_bytes());
            }
            out.push(0);
            out.extend_from_slice(&self.qtype.to_be_bytes());
            out.extend_from_slice(&self.qclass.to_be_bytes());
        }
        let records = |out: &mut Vec<u8>, section| {
            for (_, record) in self.records.iter().filter(|(s, _)| *s == section) {
                out.extend_from_slice(record);
            }
        };
        for section in [Section::Answer, Section::Authority, Section::BeforeOpt] {
            records(&mut out, section);
        }
        if let Some((size, version, dnssec_ok, options)) = self.edns {
            out.extend_from_slice(self.opt_owner);
            out.extend_from_slice(&[0, 41]);
            out.extend_from_slice(&size.to_be_bytes());
            out.extend_from_slice(&[0, version, if dnssec_ok { 0x80 } else { 0 }, 0]);
            out.extend_from_slice(&(options.len() as u16).to_be_bytes());
            out.extend_from_slice(options);
        }
        records(&mut out, Section::AfterOpt);
        out
    }
}

/// What the answer must be; `None` fields are not checked.
#[derive(Default)]
struct Expect {
    rcode: u16,
    aa: Option<bool>,
    answers: Option<usize>,
    /// The SOA in the authority section (negative answers).
    soa: Option<bool>,
    /// ... with this TTL (the negative TTL, RFC 2308 §5).
    soa_ttl: Option<u32>,
    /// Records in the authority section.
    authorities: Option<usize>,
    /// Distinct RRsets (owner and type) in the answer section.
    rrsets: Option<usize>,
    /// The question and every answer owner echo the query's name exactly, case included.
    echo: bool,
    /// An OPT record in the answer.
    opt: Option<bool>,
    /// ... offering this UDP payload size.
    opt_payload: Option<u16>,
    /// The answer's raw flags word must include these bits.
    flags_set: u16,
    /// ... and must not include these.
    flags_clear: u16,
}

fn check(dns: &Dns, rfc: &str, query: Q, want: Expect) {
    let packet = query.bytes();
    let raw = if query.tcp {
        dns.tcp_raw(&packet)
    } else {
        dns.udp_raw(&packet)
    };
    let raw = raw.unwrap_or_else(|| panic!("{rfc}: no answer"));
    let flags = u16::from_be_bytes([raw[2], raw[3]]);
    assert_eq!(&raw[..2], &[0xbe, 0xef], "{rfc}: ID echoed");
    assert!(flags & 0x8000 != 0, "{rfc}: QR set");
    assert_eq!(flags & 0x0080, 0, "{rfc}: RA never set");
    assert_eq!(flags & 0x0040, 0, "{rfc}: Z zero in answers");
    assert_eq!(
        flags & want.flags_set,
        want.flags_set,
        "{rfc}: flags {flags:#06x}"
    );
    assert_eq!(flags & want.flags_clear, 0, "{rfc}: flags {flags:#06x}");
    let msg = Message::from_vec(&raw).unwrap_or_else(|e| panic!("{rfc}: answer does not parse: {e}"));
    let rcode = u16::from(msg.metadata.response_code);
    assert_eq!(rcode, want.rcode, "{rfc}: rcode");
    if let Some(aa) = want.aa {
        assert_eq!(msg.metadata.authoritative, aa, "{rfc}: AA");
    }
    if let Some(n) = want.answers {
        assert_eq!(msg.answers.len(), n, "{rfc}: answers {:?}", msg.answers);
    }
    let soa = msg
        .authorities
        .iter()
        .find(|r| r.record_type() == hickory_proto::rr::RecordType::SOA);
    if let Some(want_soa) = want.soa {
        assert_eq!(soa.is_some(), want_soa, "{rfc}: SOA in authority");
    }
    if let Some(ttl) = want.soa_ttl {
        assert_eq!(soa.map(|r| r.ttl), Some(ttl), "{rfc}: negative TTL");
    }
    if let Some(n) = want.authorities {
        assert_eq!(msg.authorities.len(), n, "{rfc}: authority {:?}", msg.authorities);
    }
    if let Some(n) = want.rrsets {
        let sets: std::collections::BTreeSet<_> = msg
            .answers
            .iter()
            .map(|r| (r.name.to_ascii().to_lowercase(), r.record_type()))
            .collect();
        assert_eq!(sets.len(), n, "{rfc}: RRsets {:?}", msg.answers);
    }
    if want.echo {
        let names = msg
            .queries
            .iter()
            .map(|q| q.name())
            .chain(msg.answers.iter().map(|r| &r.name));
        for name in names {
            assert_eq!(name.to_ascii(), query.name, "{rfc}: case echoed");
        }
    }
    if let Some(opt) = want.opt {
        assert_eq!(msg.edns.is_some(), opt, "{rfc}: OPT");
    }
    if let Some(edns) = &msg.edns {
        assert_eq!(edns.version(), 0, "{rfc}: RFC 6891 §6.1.3: we speak version 0");
        if let Some(size) = want.opt_payload {
            assert_eq!(edns.max_payload(), size, "{rfc}: OPT payload size");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc_behaviours() {
    let s = Server::start(&[]);
    let t1 = s.add_node("node-do", "95.85.30.162").await;
    let t2 = s.add_node("node-ec2", "52.193.37.165").await;
    s.report("node-do", &t1, "web-1", web(1)).await;
    s.report("node-ec2", &t2, "web-2", web(1)).await;
    let dns = s.dns();
    let ok = |answers| Expect {
        aa: Some(true),
        answers: Some(answers),
        ..Expect::default()
    };
    let nodata = || Expect {
        aa: Some(true),
        answers: Some(0),
        soa: Some(true),
        soa_ttl: Some(5),
        authorities: Some(1),
        ..Expect::default()
    };
    let nxdomain = || Expect { rcode: 3, ..nodata() };
    // A format error gets the header alone: no answer, no OPT (RFC 6891 §7).
    let formerr = || Expect {
        rcode: 1,
        answers: Some(0),
        opt: Some(false),
        ..Expect::default()
    };
    let refused = || Expect {
        rcode: 5,
        aa: Some(false),
        answers: Some(0),
        authorities: Some(0),
        ..Expect::default()
    };
    let cases: Vec<(&str, Q, Expect)> = vec![
        ("RFC 1034 §4.3.2: authoritative data, AA set", q(SVC, 1), ok(2)),
        (
            "RFC 1035 §4.2.2: the same answer over TCP",
            Q {
                tcp: true,
                ..q(SVC, 1)
            },
            ok(2),
        ),
        (
            "RFC 1035 §4.1.1: RD is copied",
            q(SVC, 1),
            Expect {
                flags_set: 0x0100,
                ..ok(2)
            },
        ),
        (
            "RFC 4035 §3.2.2: CD is copied",
            Q {
                flags: 0x0110,
                ..q(SVC, 1)
            },
            Expect {
                flags_set: 0x0010,
                ..ok(2)
            },
        ),
        (
            "RFC 8906 §3.1.3: the Z bit is ignored and zero in the answer",
            Q {
                flags: 0x0140,
                ..q(SVC, 1)
            },
            ok(2),
        ),
        ("RFC 2308 §2.2: NODATA carries the SOA", q(SVC, 15), nodata()),
        (
            "RFC 8906 §3.1.4: an unknown type is NODATA",
            q(SVC, 65280),
            nodata(),
        ),
        (
            "RFC 8020 §2: an empty non-terminal is NODATA",
            q("honeniq.svc.cluster.test.", 1),
            nodata(),
        ),
        (
            "RFC 8020 §2: an empty non-terminal is NODATA (stack)",
            q("quickstart-ruby.honeniq.svc.cluster.test.", 1),
            nodata(),
        ),
        (
            "RFC 8020 §2: an empty non-terminal is NODATA (svc subtree)",
            q("svc.cluster.test.", 1),
            nodata(),
        ),
        (
            "RFC 8020 §2: an empty non-terminal is NODATA (SRV protocol label)",
            q("_tcp.web.quickstart-ruby.honeniq.svc.cluster.test.", 1),
            nodata(),
        ),
        (
            "RFC 2308 §2.1: NXDOMAIN carries the SOA",
            q("nope.svc.cluster.test.", 1),
            nxdomain(),
        ),
        (
            "RFC 2308 §2.1: NXDOMAIN for an unknown service of a known stack",
            q("db.quickstart-ruby.honeniq.svc.cluster.test.", 1),
            nxdomain(),
        ),
        (
            "RFC 2308 §2.1: NXDOMAIN below a container name",
            q("x.web-1.quickstart-ruby.honeniq.cont.cluster.test.", 1),
            nxdomain(),
        ),
        (
            "RFC 1034 §4.3.2: not authoritative for the name: REFUSED, no AA",
            q("example.com.", 1),
            refused(),
        ),
        (
            "RFC 1034 §4.3.2: REFUSED for the root, shorter than the apex",
            q(".", 1),
            refused(),
        ),
        (
            "RFC 1034 §4.3.2: REFUSED for a parent of the apex",
            q("test.", 1),
            refused(),
        ),
        (
            "RFC 1034 §4.3.2: REFUSED for a name that only ends like the apex",
            q("xcluster.test.", 1),
            refused(),
        ),
        (
            "RFC 1035 §3.2.4: class CH is not served",
            Q {
                qclass: 3,
                ..q(SVC, 1)
            },
            Expect {
                rcode: 5,
                aa: Some(false),
                ..Expect::default()
            },
        ),
        (
            "RFC 1035 §3.2.5: QCLASS * matches IN",
            Q {
                qclass: 255,
                ..q(SVC, 1)
            },
            ok(2),
        ),
        (
            "RFC 4343 §4.1: a mixed-case question is answered, its case echoed",
            q("WeB.QuickStart-Ruby.HONENIQ.svc.Cluster.TEST.", 1),
            Expect { echo: true, ..ok(2) },
        ),
        (
            "RFC 8482 §4.2: ANY gets one RRset",
            q(SVC, 255),
            Expect {
                rrsets: Some(1),
                ..ok(2)
            },
        ),
        (
            "RFC 8482 §4.2: ANY at the apex gets one RRset",
            q("cluster.test.", 255),
            Expect {
                aa: Some(true),
                rrsets: Some(1),
                ..Expect::default()
            },
        ),
        (
            "RFC 2782: SRV with target addresses",
            q("_80._tcp.web.quickstart-ruby.honeniq.svc.cluster.test.", 33),
            ok(2),
        ),
        (
            "RFC 6891 §6.1.1: OPT echoed, offering our 1232-byte payload",
            Q {
                edns: Some((4096, 0, false, &[])),
                ..q(SVC, 1)
            },
            Expect {
                opt: Some(true),
                opt_payload: Some(1232),
                ..ok(2)
            },
        ),
        (
            "RFC 6891 §7: no OPT without one in the query",
            Q {
                edns: None,
                ..q(SVC, 1)
            },
            Expect {
                opt: Some(false),
                ..ok(2)
            },
        ),
        (
            "RFC 6891 §6.1.3: an unknown EDNS version is BADVERS",
            Q {
                edns: Some((1232, 1, false, &[])),
                ..q(SVC, 1)
            },
            Expect {
                rcode: 16,
                opt: Some(true),
                answers: Some(0),
                ..Expect::default()
            },
        ),
        (
            "RFC 6891 §6.1.2: unknown EDNS options are ignored",
            Q {
                edns: Some((1232, 0, false, &[0xfd, 0xe9, 0, 2, 1, 2])),
                ..q(SVC, 1)
            },
            Expect {
                opt: Some(true),
                ..ok(2)
            },
        ),
        (
            "RFC 6891 §6.2.5: a payload size under 512 counts as 512",
            Q {
                edns: Some((100, 0, false, &[])),
                ..q(SVC, 1)
            },
            ok(2),
        ),
        (
            "RFC 1035 §4.1.1: other opcodes are NOTIMP (STATUS)",
            Q {
                flags: 0x1000,
                ..q(SVC, 1)
            },
            Expect {
                rcode: 4,
                aa: Some(false),
                ..Expect::default()
            },
        ),
        (
            "RFC 2136 §3.1: UPDATE is not implemented",
            Q {
                flags: 0x2800,
                ..q("cluster.test.", 6)
            },
            Expect {
                rcode: 4,
                ..Expect::default()
            },
        ),
        (
            "RFC 1035 §4.1.1, RFC 6895 §2: an unknown opcode is NOTIMP whatever QDCOUNT says (0)",
            Q {
                flags: 0x7800,
                qdcount: 0,
                edns: None,
                ..q(SVC, 1)
            },
            Expect {
                rcode: 4,
                aa: Some(false),
                answers: Some(0),
                flags_set: 0x7800,
                ..Expect::default()
            },
        ),
        (
            "RFC 1035 §4.1.1, RFC 6895 §2: an unknown opcode is NOTIMP whatever QDCOUNT says (2)",
            Q {
                flags: 0x7800,
                qdcount: 2,
                ..q(SVC, 1)
            },
            Expect {
                rcode: 4,
                aa: Some(false),
                answers: Some(0),
                flags_set: 0x7800,
                ..Expect::default()
            },
        ),
        (
            "RFC 1035 §4.1.1, RFC 6895 §2: an unknown opcode is NOTIMP over TCP too",
            Q {
                flags: 0x7800,
                qdcount: 0,
                edns: None,
                tcp: true,
                ..q(SVC, 1)
            },
            Expect {
                rcode: 4,
                flags_set: 0x7800,
                ..Expect::default()
            },
        ),
        (
            "RFC 1035 §4.1.2: QDCOUNT 0 is a format error",
            Q {
                qdcount: 0,
                edns: None,
                ..q("", 1)
            },
            Expect {
                rcode: 1,
                ..Expect::default()
            },
        ),
        (
            "RFC 1035 §4.1.2: QDCOUNT 2 is a format error",
            Q {
                qdcount: 2,
                edns: None,
                ..q("test.", 1)
            },
            Expect {
                rcode: 1,
                ..Expect::default()
            },
        ),
        (
            "RFC 5936 §6: AXFR from a peer not allowed is REFUSED",
            Q {
                tcp: true,
                edns: None,
                ..q("cluster.test.", 252)
            },
            Expect {
                rcode: 5,
                answers: Some(0),
                ..Expect::default()
            },
        ),
        (
            "RFC 5936 §4.2: AXFR over UDP is REFUSED",
            Q {
                edns: None,
                ..q("cluster.test.", 252)
            },
            Expect {
                rcode: 5,
                answers: Some(0),
                ..Expect::default()
            },
        ),
        (
            "RFC 1995 §2: IXFR from a peer not allowed is REFUSED",
            Q {
                edns: None,
                ..q("cluster.test.", 251)
            },
            Expect {
                rcode: 5,
                ..Expect::default()
            },
        ),
        (
            "RFC 1995 §2: IXFR over TCP from a peer not allowed is REFUSED",
            Q {
                edns: None,
                tcp: true,
                ..q("cluster.test.", 251)
            },
            Expect {
                rcode: 5,
                answers: Some(0),
                ..Expect::default()
            },
        ),
        (
            "RFC 8945 §5.1: a TSIG that is not the last record is FORMERR",
            Q {
                records: &[(Section::BeforeOpt, &TSIG_OK)],
                ..q(SVC, 1)
            },
            formerr(),
        ),
        (
            "RFC 8945 §5.1: a TSIG in the answer section is FORMERR",
            Q {
                records: &[(Section::Answer, &TSIG_OK)],
                ..q(SVC, 1)
            },
            formerr(),
        ),
        (
            "RFC 8945 §5.1: a TSIG in the authority section is FORMERR",
            Q {
                records: &[(Section::Authority, &TSIG_OK)],
                ..q(SVC, 1)
            },
            formerr(),
        ),
        (
            "RFC 8945 §5.1: two TSIG records are FORMERR",
            Q {
                records: &[(Section::AfterOpt, &TSIG_OK), (Section::AfterOpt, &TSIG_OK)],
                ..q(SVC, 1)
            },
            formerr(),
        ),
        (
            "RFC 8945 §5.1: a TSIG whose MAC length overruns its RDATA is FORMERR, not BADKEY",
            Q {
                records: &[(Section::AfterOpt, &TSIG_OVERRUN)],
                ..q(SVC, 1)
            },
            formerr(),
        ),
        (
            "RFC 8945 §5.2: a well-formed TSIG with an unknown key is NOTAUTH (BADKEY)",
            Q {
                records: &[(Section::AfterOpt, &TSIG_OK)],
                ..q(SVC, 1)
            },
            Expect {
                rcode: 9,
                answers: Some(0),
                ..Expect::default()
            },
        ),
        (
            "RFC 6891 §6.1.1: an OPT owned by a name other than the root is FORMERR",
            Q {
                opt_owner: b"\x03web\0",
                ..q(SVC, 1)
            },
            formerr(),
        ),
        (
            "RFC 6891 §6.1.1: an OPT owned by a pointer to a name other than the root is FORMERR",
            Q {
                opt_owner: b"\xc0\x0c",
                ..q(SVC, 1)
            },
            formerr(),
        ),
        (
            "RFC 6891 §6.1.1, RFC 1035 §4.1.4: an OPT owned by a pointer past the packet is FORMERR",
            Q {
                opt_owner: b"\xff\xff",
                ..q(SVC, 1)
            },
            formerr(),
        ),
        (
            "RFC 6891 §6.1.1, RFC 1035 §4.1.4: an OPT owned by a forward pointer is FORMERR",
            Q {
                opt_owner: b"\xc1\x00",
                ..q(SVC, 1)
            },
            formerr(),
        ),
    ];
    for (rfc, query, want) in cases {
        check(&dns, rfc, query, want);
    }

    // RFC 3225 §3: DO is copied into the answer's OPT.
    let raw = dns
        .udp_raw(
            &Q {
                edns: Some((1232, 0, true, &[])),
                ..q(SVC, 1)
            }
            .bytes(),
        )
        .expect("answer");
    let msg = Message::from_vec(&raw).expect("parses");
    assert!(
        msg.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        "RFC 3225 §3: DO echoed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rfc7766_idle_tcp_connections_are_closed() {
    use std::io::Read;
    let s = Server::start(&[]);
    let mut stream = std::net::TcpStream::connect(s.dns).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .expect("timeout");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1];
    let read = stream
        .read(&mut buf)
        .expect("the server closes, it does not hang");
    assert_eq!(read, 0, "closed without a message");
    let idle = started.elapsed();
    assert!(
        idle >= std::time::Duration::from_secs(9) && idle < std::time::Duration::from_secs(14),
        "{idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn transfers_check_class_and_edns_version() {
    let s = Server::start(&["--allow-transfer", "127.0.0.1/32"]);
    let dns = s.dns();
    let axfr = Q {
        tcp: true,
        edns: None,
        ..q("cluster.test.", 252)
    };
    check(
        &dns,
        "RFC 5936 §2.2: AXFR from an allowed peer",
        axfr,
        Expect {
            aa: Some(true),
            ..Expect::default()
        },
    );
    let chaos = Q { qclass: 3, ..axfr };
    check(
        &dns,
        "RFC 1035 §3.2.4: no CH-class transfer",
        chaos,
        Expect {
            rcode: 5,
            answers: Some(0),
            ..Expect::default()
        },
    );
    let v1 = Q {
        edns: Some((1232, 1, false, &[])),
        ..axfr
    };
    check(
        &dns,
        "RFC 6891 §6.1.3: BADVERS before any transfer",
        v1,
        Expect {
            rcode: 16,
            answers: Some(0),
            ..Expect::default()
        },
    );
}
