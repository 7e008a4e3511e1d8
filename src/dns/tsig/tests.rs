//! Signed requests built by hand, checked at chosen clocks (RFC 8945 §5.2 cases).

use super::*;
use crate::dns::wire;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn key() -> Key {
    "xfr-key:hmac-sha256:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
        .parse()
        .expect("key")
}

/// A SOA query for cluster.test signed with `secret` at `time`.
fn signed_query(secret: &[u8], time: u64) -> Vec<u8> {
    signed_query_with_fudge(secret, time, FUDGE)
}

fn signed_query_with_fudge(secret: &[u8], time: u64, fudge: u16) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(b"\x07cluster\x04test\x00\x00\x06\x00\x01");
    let mut mac = HmacSha256::new_from_slice(secret).expect("hmac");
    mac.update(&q);
    variables(&mut mac, &key().name, time, fudge, 0, &[]);
    let digest = mac.finalize().into_bytes();
    append_tsig(&mut q, &key().name, time, &digest, 0x1234, 0, &[]);
    // append_tsig writes our own fudge; put the client's in its place (the MAC covers it).
    let fudge_at = q.len() - 2 - 2 - 2 - MAC_LEN - 2 - 2;
    q[fudge_at..fudge_at + 2].copy_from_slice(&fudge.to_be_bytes());
    q
}

/// Checks `packet` as the handler does: parsed first, verified where the TSIG was found.
fn verify(keys: &[Key], packet: &[u8], now: u64) -> Check {
    match wire::parse(packet) {
        Ok(wire::Query { tsig: Some(at), .. }) => check_at(keys, packet, at, now),
        _ => Check::Unsigned,
    }
}

/// Where the TSIG of a reply is: the one record after its question (if any).
fn reply_tsig(reply: &[u8]) -> RecordAt {
    let mut start = HEADER_LEN;
    if reply[5] == 1 {
        start = name_end(reply, start).expect("question") + 4;
    }
    let rdata = name_end(reply, start).expect("owner") + 10;
    let end = rdata + u16::from_be_bytes([reply[rdata - 2], reply[rdata - 1]]) as usize;
    RecordAt { start, rdata, end }
}

/// The TSIG error and MAC length of a NOTAUTH reply.
fn tsig_error(reply: &[u8]) -> (u16, usize) {
    assert_eq!(reply[3] & 0x0f, RCODE_NOTAUTH as u8, "NOTAUTH");
    let found = read(reply, reply_tsig(reply)).expect("a TSIG in the reply");
    let r = &reply[name_end(reply, found.start).expect("owner") + 10..];
    let alg = name_end(r, 0).expect("algorithm");
    let error = u16::from_be_bytes([r[alg + 12 + found.mac.len()], r[alg + 13 + found.mac.len()]]);
    (error, found.mac.len())
}

#[test]
fn parses_keys() {
    assert_eq!(key().name, b"\x07xfr-key\x00");
    assert_eq!(key().secret, SECRET);
    for bad in [
        "nope",
        "k:hmac-md5:AAAA",
        "k:hmac-sha256:!!!",
        "k:hmac-sha256:",
        "a..b:hmac-sha256:AAAA",
    ] {
        assert!(bad.parse::<Key>().is_err(), "{bad}");
    }
}

#[test]
fn valid_requests_are_accepted_and_answers_signed() {
    let now = 1_800_000_000;
    let query = signed_query(SECRET, now);
    let Check::Valid(mut signer) = verify(&[key()], &query, now + 10) else {
        panic!("valid signature refused");
    };
    let mut reply = query[..query.len()].to_vec();
    let end = wire::parse(&query).expect("parses").tsig.expect("tsig").start;
    reply.truncate(end);
    reply[10..12].copy_from_slice(&0u16.to_be_bytes());
    reply[2] |= 0x80;
    let before = reply.len();
    signer.sign(&mut reply);
    assert_eq!(reply.len() - before, signer.reserve());
    assert_eq!(
        u16::from_be_bytes([reply[10], reply[11]]),
        1,
        "TSIG counted in ARCOUNT"
    );
    assert!(matches!(
        verify(&[key()], &signed_query(SECRET, now), now),
        Check::Valid(_)
    ));
    let unsigned = b"\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x06\x00\x01";
    assert!(matches!(verify(&[key()], unsigned, now), Check::Unsigned));
}

#[test]
fn bad_requests_get_the_rfc_errors() {
    let now = 1_800_000_000;
    let query = signed_query(SECRET, now);

    let Check::Refused(reply) = verify(&[], &query, now) else {
        panic!("unknown key accepted")
    };
    assert_eq!(tsig_error(&reply), (BADKEY, 0), "BADKEY, unsigned");

    let other = signed_query(b"another secret entirely, 32 byte", now);
    let Check::Refused(reply) = verify(&[key()], &other, now) else {
        panic!("bad MAC accepted")
    };
    assert_eq!(tsig_error(&reply), (BADSIG, 0), "BADSIG, unsigned");

    let mut tampered = query.clone();
    tampered[13] ^= 0x20; // the question name's case is covered by the MAC
    assert!(matches!(verify(&[key()], &tampered, now), Check::Refused(_)));

    let Check::Refused(reply) = verify(&[key()], &query, now + 301) else {
        panic!("stale time accepted")
    };
    assert_eq!(tsig_error(&reply), (BADTIME, MAC_LEN), "BADTIME, signed");
}

#[test]
fn the_time_window_is_capped_and_responses_are_not_checked() {
    let now = 1_800_000_000;
    // A client asking for a 65535 s fudge still gets 300 s.
    let mut query = signed_query(SECRET, now - 1000);
    let fudge_at = query.len() - 6 - 2 - MAC_LEN - 2 - 2;
    query[fudge_at..fudge_at + 2].copy_from_slice(&u16::MAX.to_be_bytes());
    // The MAC covers the fudge, so re-sign with it changed: check_at reads it from the record.
    let Check::Refused(reply) = verify(&[key()], &query, now) else {
        panic!("accepted")
    };
    let (error, _) = tsig_error(&reply);
    assert!(error == BADTIME || error == BADSIG, "refused either way: {error}");

    let mut response = signed_query(SECRET, now);
    response[2] |= 0x80;
    assert!(
        matches!(verify(&[key()], &response, now), Check::Unsigned),
        "left to the drop rule"
    );
}

#[test]
fn a_tsig_whose_fields_overrun_its_rdata_is_malformed() {
    // RDLENGTH 0 followed by a stray byte: the algorithm name would run past the record.
    let mut packet = vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1];
    packet.extend_from_slice(&[0, 0, 0xFA, 0, 0xFF, 0, 0, 0, 0, 0, 0, 0]);
    assert!(matches!(verify(&[key()], &packet, 0), Check::Malformed));

    let now = 1_700_000_000;
    let good = signed_query(SECRET, now);
    let mac_len_at = good.len() - 6 - MAC_LEN - 2;
    // A MAC length past the RDATA (and the packet), or short of it (bytes left over).
    for mac_len in [u16::MAX, MAC_LEN as u16 + 3, MAC_LEN as u16 - 1] {
        let mut bad = good.clone();
        bad[mac_len_at..mac_len_at + 2].copy_from_slice(&mac_len.to_be_bytes());
        assert!(
            matches!(verify(&[key()], &bad, now), Check::Malformed),
            "{mac_len}"
        );
    }
    // An other-data length past the RDATA.
    let mut bad = good.clone();
    let other_len_at = good.len() - 2;
    bad[other_len_at..].copy_from_slice(&7u16.to_be_bytes());
    assert!(matches!(verify(&[key()], &bad, now), Check::Malformed));
    assert!(
        matches!(verify(&[key()], &good, now), Check::Valid(_)),
        "the unchanged one"
    );
}
