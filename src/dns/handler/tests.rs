//! The handler over a snapshot built from a zone file, checked with hickory-proto's codec or,
//! where that cannot read the message (TSIG), by its header bytes.

use std::net::IpAddr;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use super::*;
use crate::model::Label;
use crate::snapshot::journal::JournalLimits;
use crate::snapshot::{Policy, Projection, Rotation};

const ALLOWED: &str = "127.0.0.1";
const STRANGER: &str = "10.9.9.9";

fn zone_text() -> String {
    let mut text = String::from(
        "$ORIGIN cluster.test.\n$TTL 3600\n\
         @ IN SOA ns1 hostmaster 1 3600 600 604800 5\n\
         @ IN NS ns1\n\
         ns1 IN A 127.0.0.1\n",
    );
    // 60 addresses: 960 bytes of answer, more than 512 and less than 1232.
    for i in 1..=60 {
        text.push_str(&format!("big IN A 10.0.0.{i}\n"));
    }
    text
}

/// The zone at serial 2, then with one node added at serial 3 (so the journal has 2 → 3).
fn snapshots() -> (Arc<Snapshot>, Arc<Snapshot>) {
    let zone = crate::dns::zonefile::parse(&zone_text(), None, "test zone").expect("zone parses");
    let policy = Policy {
        ttl: 5,
        rotation: Rotation::Cyclic,
        max_answers: 0,
    };
    let mut p = Projection::new(zone, policy, JournalLimits::SMALL);
    let first = Arc::new(p.publish(2).0);
    let node = Label::parse("node", "n1").expect("label");
    p.node(&node, Some("10.1.1.1".parse().expect("ip")));
    (first, Arc::new(p.publish(3).0))
}

fn snapshot() -> Arc<Snapshot> {
    snapshots().0
}

fn acl(keys: Vec<tsig::Key>) -> TransferAcl {
    TransferAcl {
        allow: vec!["127.0.0.0/8".parse().expect("net")],
        keys,
    }
}

/// Transfers for 127.0.0.0/8 and the test key, cookies on, and RRL at `rrl` responses/s
/// (slip 2) if given.
fn context(rrl: Option<u32>) -> Context {
    Context {
        acl: acl(vec![key()]),
        cookies: Some(Cookies::new([5; 32])),
        rrl: rrl.map(|rate| {
            Rrl::new(rrl::RrlConfig {
                rate,
                slip: 2,
                ipv4_prefix: 24,
                ipv6_prefix: 56,
                whitelist: Vec::new(),
                table_size: 1024,
            })
        }),
        ..Context::default()
    }
}

fn key() -> tsig::Key {
    "xfr-key:hmac-sha256:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
        .parse()
        .expect("key")
}

/// A query in wire form: `flags` (opcode, RD...), `qdcount` questions of `name`/`qtype`,
/// and an OPT record of `edns` = (UDP size, version, DO) if given.
fn query(flags: u16, qdcount: u16, name: &str, qtype: u16, edns: Option<(u16, u8, bool)>) -> Vec<u8> {
    let mut out = vec![0xbe, 0xef];
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&qdcount.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    for _ in 0..qdcount {
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
    }
    if let Some((size, version, dnssec_ok)) = edns {
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&[0, version, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    out
}

fn ask(name: &str, qtype: u16) -> Vec<u8> {
    query(0x0100, 1, name, qtype, None)
}

/// Runs the handler; returns the outcome and the bytes it wrote.
fn run(snapshot: &Arc<Snapshot>, packet: &[u8], peer: &str, transport: Transport) -> (Outcome, Vec<u8>) {
    run_in(&context(None), snapshot, packet, peer, transport)
}

fn run_in(
    context: &Context,
    snapshot: &Arc<Snapshot>,
    packet: &[u8],
    peer: &str,
    transport: Transport,
) -> (Outcome, Vec<u8>) {
    let mut out = Vec::new();
    let peer: IpAddr = peer.parse().expect("ip");
    let outcome = handle(
        packet,
        peer,
        transport,
        snapshot,
        context,
        &mut Scratch::default(),
        context.counters.shared(),
        &mut out,
    );
    (outcome, out)
}

/// The reply to `packet` from a peer the ACL does not allow, decoded.
fn reply(snapshot: &Arc<Snapshot>, packet: &[u8], transport: Transport) -> Message {
    let (outcome, out) = run(snapshot, packet, STRANGER, transport);
    assert!(matches!(outcome, Outcome::Reply), "a reply");
    Message::from_vec(&out).expect("the reply parses")
}

fn has_soa(msg: &Message) -> bool {
    msg.authorities
        .iter()
        .any(|r| r.record_type() == RecordType::SOA && r.ttl == 5)
}

#[test]
fn nxdomain_and_nodata_carry_the_soa() {
    let s = snapshot();
    let nx = reply(&s, &ask("nope.cluster.test", 1), Transport::Udp);
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.metadata.authoritative && nx.answers.is_empty());
    assert!(has_soa(&nx), "RFC 2308 §3: SOA with the negative TTL");

    let nodata = reply(&s, &ask("ns1.cluster.test", 15), Transport::Udp);
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.metadata.authoritative && nodata.answers.is_empty());
    assert!(has_soa(&nodata));

    let found = reply(&s, &ask("NS1.Cluster.test", 1), Transport::Udp);
    assert_eq!(found.answers.len(), 1);
    assert_eq!(
        found.answers[0].name.to_ascii(),
        "NS1.Cluster.test.",
        "case echoed"
    );
}

#[test]
fn names_outside_the_zone_are_refused_without_aa() {
    let s = snapshot();
    for name in ["example.com", "", "test", "xcluster.test"] {
        let msg = reply(&s, &ask(name, 1), Transport::Udp);
        assert_eq!(msg.metadata.response_code, ResponseCode::Refused, "{name:?}");
        assert!(!msg.metadata.authoritative, "{name:?}");
        assert!(msg.answers.is_empty() && msg.authorities.is_empty(), "{name:?}");
    }
}

#[test]
fn udp_truncates_whole_rrsets_and_tcp_gets_them() {
    let s = snapshot();
    let (_, raw) = run(&s, &ask("big.cluster.test", 1), STRANGER, Transport::Udp);
    assert!(raw.len() <= 512, "{}", raw.len());
    let small = Message::from_vec(&raw).expect("parses");
    assert!(small.metadata.truncation, "TC set");
    assert!(small.answers.is_empty(), "no partial RRset");

    let edns = query(0x0100, 1, "big.cluster.test", 1, Some((4096, 0, false)));
    let (_, raw) = run(&s, &edns, STRANGER, Transport::Udp);
    assert!(raw.len() <= answer::MAX_UDP_PAYLOAD as usize, "{}", raw.len());
    let fits = Message::from_vec(&raw).expect("parses");
    assert!(!fits.metadata.truncation);
    assert_eq!(fits.answers.len(), 60);

    let tcp = reply(&s, &ask("big.cluster.test", 1), Transport::Tcp);
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 60, "TCP gets the full set");
}

#[test]
fn edns_is_echoed_and_unknown_versions_get_badvers() {
    let s = snapshot();
    let msg = reply(
        &s,
        &query(0x0100, 1, "ns1.cluster.test", 1, Some((4096, 0, true))),
        Transport::Udp,
    );
    let edns = msg.edns.as_ref().expect("RFC 6891 §6.1.1: OPT echoed");
    assert_eq!(edns.max_payload(), answer::MAX_UDP_PAYLOAD);
    assert!(edns.flags().dnssec_ok, "RFC 3225 §3: DO copied");
    assert_eq!(msg.answers.len(), 1);

    assert!(
        reply(&s, &ask("ns1.cluster.test", 1), Transport::Udp)
            .edns
            .is_none()
    );

    // BADVERS before anything else the query would get, NOTIMP included (RFC 6891 §6.1.3).
    for flags in [0x0100, 0x7800] {
        let v1 = query(flags, 1, "ns1.cluster.test", 1, Some((1232, 1, false)));
        let msg = reply(&s, &v1, Transport::Udp);
        assert_eq!(
            u16::from(msg.metadata.response_code),
            16,
            "BADVERS, flags {flags:#x}"
        );
        assert_eq!(msg.edns.as_ref().map(|e| e.version()), Some(0));
        assert!(msg.answers.is_empty());
    }
}

#[test]
fn unknown_opcodes_are_notimp_whatever_the_section_counts() {
    let s = snapshot();
    for qdcount in [0, 2] {
        let packet = query(0x7900, qdcount, "cluster.test", 6, None);
        let (outcome, out) = run(&s, &packet, STRANGER, Transport::Udp);
        assert!(matches!(outcome, Outcome::Reply));
        assert_eq!(
            out.len(),
            wire::HEADER_LEN,
            "the header alone (QDCOUNT {qdcount})"
        );
        assert_eq!(&out[..2], &[0xbe, 0xef]);
        assert_eq!(out[2], 0x80 | 0x78 | 0x01, "QR, opcode 15 and RD copied");
        assert_eq!(out[3] & 0x0f, 4, "NOTIMP (QDCOUNT {qdcount})");
        assert_eq!(&out[4..], &[0; 8], "no sections");
    }
    // With a question that can be read, it is echoed as for any answer.
    let msg = reply(&s, &query(0x7800, 1, "cluster.test", 6, None), Transport::Udp);
    assert_eq!(msg.metadata.response_code, ResponseCode::NotImp);
    assert_eq!(msg.queries.len(), 1);
    assert!(!msg.metadata.authoritative);

    // QUERY with a question that cannot be read stays a format error.
    for qdcount in [0, 2] {
        let (_, out) = run(
            &s,
            &query(0x0100, qdcount, "cluster.test", 6, None),
            STRANGER,
            Transport::Tcp,
        );
        assert_eq!((out.len(), out[3] & 0x0f), (wire::HEADER_LEN, 1), "FORMERR");
    }
}

#[test]
fn responses_and_runts_are_dropped() {
    let s = snapshot();
    let mut response = ask("ns1.cluster.test", 1);
    response[2] |= 0x80;
    for packet in [&response[..], &[1, 2, 3]] {
        let (outcome, out) = run(&s, packet, ALLOWED, Transport::Tcp);
        assert!(matches!(outcome, Outcome::Drop) && out.is_empty());
    }
}

/// Every message of a transfer, decoded.
fn stream(job: TransferJob) -> Vec<Message> {
    let mut messages = Vec::new();
    let records = job
        .run::<()>(|m| {
            messages.push(Message::from_vec(m).expect("a transfer message parses"));
            Ok(())
        })
        .expect("sent");
    assert!(records > 0);
    messages
}

#[test]
fn transfers_go_to_allowed_peers_over_tcp_only() {
    let s = snapshot();
    let axfr = ask("cluster.test", 252);
    let (outcome, _) = run(&s, &axfr, ALLOWED, Transport::Tcp);
    let Outcome::Transfer(job) = outcome else {
        panic!("an allowed AXFR over TCP is a transfer");
    };
    assert_eq!((job.kind(), job.signer.is_some()), ("AXFR", false));
    let messages = stream(*job);
    let records: Vec<_> = messages.iter().flat_map(|m| m.answers.iter()).collect();
    assert_eq!(records.first().map(|r| r.record_type()), Some(RecordType::SOA));
    assert_eq!(records.last().map(|r| r.record_type()), Some(RecordType::SOA));
    assert_eq!(records.len(), 1 + 1 + 1 + 60 + 1, "SOA, NS, ns1, big, SOA");

    for (peer, transport, what) in [
        (STRANGER, Transport::Tcp, "AXFR from a stranger"),
        (ALLOWED, Transport::Udp, "AXFR over UDP"),
    ] {
        let (outcome, out) = run(&s, &axfr, peer, transport);
        assert!(matches!(outcome, Outcome::Reply), "{what}");
        let msg = Message::from_vec(&out).expect("parses");
        assert_eq!(msg.metadata.response_code, ResponseCode::Refused, "{what}");
    }
    let chaos = {
        let mut q = axfr.clone();
        let at = q.len() - 1;
        q[at] = 3;
        q
    };
    let (outcome, _) = run(&s, &chaos, ALLOWED, Transport::Tcp);
    assert!(matches!(outcome, Outcome::Reply), "no CH-class transfer");
}

/// An IXFR for the apex with the client's SOA at `serial` in the authority section.
fn ixfr(serial: u32, edns: bool) -> Vec<u8> {
    let mut q = query(0, 1, "cluster.test", 251, None);
    q[9] = 1; // NSCOUNT
    q.extend_from_slice(&[0xc0, 12, 0, 6, 0, 1, 0, 0, 0, 0, 0, 22, 0, 0]);
    q.extend_from_slice(&serial.to_be_bytes());
    q.extend_from_slice(&[0; 16]);
    if edns {
        q[11] = 1;
        q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    }
    q
}

#[test]
fn ixfr_over_udp_sends_an_increment_that_fits_else_the_soa() {
    let (_, s) = snapshots();
    let (_, out) = run(&s, &ixfr(2, true), ALLOWED, Transport::Udp);
    let msg = Message::from_vec(&out).expect("parses");
    let types: Vec<_> = msg.answers.iter().map(|r| r.record_type()).collect();
    assert_eq!(
        types,
        [
            RecordType::SOA,
            RecordType::SOA,
            RecordType::SOA,
            RecordType::A,
            RecordType::SOA
        ],
        "RFC 1995 §4: new SOA, old SOA, removed (none), new SOA, added, new SOA"
    );
    for (serial, what) in [(3, "up to date"), (1, "beyond the journal")] {
        let (_, out) = run(&s, &ixfr(serial, false), ALLOWED, Transport::Udp);
        let msg = Message::from_vec(&out).expect("parses");
        assert_eq!(msg.answers.len(), 1, "{what}: the SOA alone");
        assert_eq!(msg.answers[0].record_type(), RecordType::SOA);
    }
    let (_, out) = run(&s, &ixfr(2, false), STRANGER, Transport::Udp);
    let refused = Message::from_vec(&out).expect("parses");
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);

    let (outcome, _) = run(&s, &ixfr(2, false), ALLOWED, Transport::Tcp);
    let Outcome::Transfer(job) = outcome else {
        panic!("IXFR over TCP is a transfer");
    };
    assert_eq!(job.kind(), "IXFR");
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `message` counts an additional record and ends with a TSIG (type 250, class ANY).
fn signed(message: &[u8]) -> bool {
    let tail = &message[message.len().saturating_sub(128)..];
    u16::from_be_bytes([message[10], message[11]]) >= 1 && tail.windows(4).any(|w| w == [0, 250, 0, 255])
}

#[test]
fn signed_requests_transfer_from_anywhere_and_every_message_is_signed() {
    let s = snapshot();
    let mut axfr = ask("cluster.test", 252);
    tsig::sign_request(&key(), &mut axfr, now());
    let (outcome, _) = run(&s, &axfr, STRANGER, Transport::Tcp);
    let Outcome::Transfer(job) = outcome else {
        panic!("a signed AXFR is a transfer from any address");
    };
    assert!(job.signer.is_some());
    let mut messages = Vec::new();
    job.run::<()>(|m| {
        messages.push(m.to_vec());
        Ok(())
    })
    .expect("sent");
    assert!(messages.iter().all(|m| signed(m)), "every message signed");

    let mut plain = ask("ns1.cluster.test", 1);
    tsig::sign_request(&key(), &mut plain, now());
    let (_, out) = run(&s, &plain, STRANGER, Transport::Udp);
    assert_eq!(out[3] & 0x0f, 0, "NOERROR");
    assert_eq!(u16::from_be_bytes([out[6], out[7]]), 1, "one answer");
    assert!(signed(&out), "the reply is signed");
}

#[test]
fn bad_signatures_get_notauth() {
    let s = snapshot();
    let other: tsig::Key = "xfr-key:hmac-sha256:b3RoZXIgc2VjcmV0".parse().expect("key");
    let unknown: tsig::Key = "who:hmac-sha256:b3RoZXIgc2VjcmV0".parse().expect("key");
    for (key, time, what) in [
        (other, now(), "BADSIG"),
        (unknown, now(), "BADKEY"),
        (key(), now() - 3600, "BADTIME"),
    ] {
        let mut q = ask("cluster.test", 252);
        tsig::sign_request(&key, &mut q, time);
        let (outcome, out) = run(&s, &q, ALLOWED, Transport::Tcp);
        assert!(
            matches!(outcome, Outcome::Reply),
            "{what}: no transfer, even from an allowed peer"
        );
        assert_eq!(out[3] & 0x0f, 9, "{what}: NOTAUTH");
        assert!(signed(&out), "{what}: with a TSIG carrying the error");
    }
}

/// A query for `name` A with EDNS and a COOKIE option of `cookie` (8 bytes, or 24).
fn with_cookie(name: &str, cookie: &[u8]) -> Vec<u8> {
    let mut packet = query(0x0100, 1, name, 1, Some((1232, 0, false)));
    let rdlen_at = packet.len() - 2;
    packet[rdlen_at..].copy_from_slice(&(4 + cookie.len() as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 10, 0, cookie.len() as u8]);
    packet.extend_from_slice(cookie);
    packet
}

/// The COOKIE option data in a reply: the last option of its OPT, the last record.
fn reply_cookie(reply: &[u8]) -> Vec<u8> {
    let tail = &reply[reply.len() - 28..];
    assert_eq!(&tail[..4], &[0, 10, 0, 24], "a COOKIE option of 24 bytes last");
    assert!(Message::from_vec(reply).expect("parses").edns.is_some());
    tail[4..].to_vec()
}

#[test]
fn a_client_cookie_gets_a_server_cookie_and_an_echo_a_fresh_one() {
    let snapshot = snapshot();
    let client = [1, 2, 3, 4, 5, 6, 7, 8];
    let (_, first) = run(
        &snapshot,
        &with_cookie("ns1.cluster.test.", &client),
        STRANGER,
        Transport::Udp,
    );
    let cookie = reply_cookie(&first);
    assert_eq!(cookie.len(), 24, "client and server cookie");
    assert_eq!(&cookie[..8], &client);
    assert_eq!(&cookie[8..12], &[1, 0, 0, 0], "RFC 9018: version 1, reserved");
    let (_, second) = run(
        &snapshot,
        &with_cookie("ns1.cluster.test.", &cookie),
        STRANGER,
        Transport::Tcp,
    );
    assert_eq!(
        Message::from_vec(&second).expect("parses").metadata.response_code,
        ResponseCode::NoError
    );
    assert_eq!(&reply_cookie(&second)[..8], &client);
    // RFC 7873 §5.2.2: a COOKIE of a length no cookie has is FORMERR.
    let (_, bad) = run(
        &snapshot,
        &with_cookie("ns1.cluster.test.", &[1; 12]),
        STRANGER,
        Transport::Udp,
    );
    assert_eq!(bad[3] & 0xF, 1);
}

#[test]
fn rate_limiting_drops_and_slips_over_udp_only_and_lets_proven_clients_through() {
    let snapshot = snapshot();
    let context = context(Some(2));
    let ask = ask("ns1.cluster.test.", 1);
    let outcomes: Vec<(bool, bool)> = (0..6)
        .map(|_| {
            let (outcome, out) = run_in(&context, &snapshot, &ask, STRANGER, Transport::Udp);
            (
                matches!(outcome, Outcome::Reply),
                out.get(2).is_some_and(|f| f & 0x02 != 0),
            )
        })
        .collect();
    // Two answered, then dropped and slipped (TC) in turn.
    assert_eq!(
        outcomes,
        [
            (true, false),
            (true, false),
            (false, false),
            (true, true),
            (false, false),
            (true, true)
        ]
    );
    // TCP is never limited.
    let (outcome, out) = run_in(&context, &snapshot, &ask, STRANGER, Transport::Tcp);
    assert!(matches!(outcome, Outcome::Reply) && out[2] & 0x02 == 0);

    // A client cookie alone is limited like anyone, and its slip is BADCOOKIE with a cookie...
    let client = [7u8; 8];
    let mut slipped = None;
    for _ in 0..4 {
        let (outcome, out) = run_in(
            &context,
            &snapshot,
            &with_cookie("ns1.cluster.test.", &client),
            STRANGER,
            Transport::Udp,
        );
        if matches!(outcome, Outcome::Reply) && out[3] & 0xF == 7 {
            slipped = Some(out);
        }
    }
    let slipped = slipped.expect("a BADCOOKIE");
    let msg = Message::from_vec(&slipped).expect("parses");
    assert_eq!(u16::from(msg.metadata.response_code), 23, "BADCOOKIE");
    assert!(msg.answers.is_empty());
    // ... and with the cookie it learned, it is answered however many times it asks.
    let cookie = reply_cookie(&slipped);
    for _ in 0..10 {
        let (outcome, out) = run_in(
            &context,
            &snapshot,
            &with_cookie("ns1.cluster.test.", &cookie),
            STRANGER,
            Transport::Udp,
        );
        assert!(matches!(outcome, Outcome::Reply));
        assert_eq!(out[3] & 0xF, 0);
        assert_eq!(Message::from_vec(&out).expect("parses").answers.len(), 1);
    }
}
