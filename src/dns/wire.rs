//! Reading a query off the wire (RFC 1035 §4.1, RFC 6891 §6 for OPT).
//!
//! Only what an authoritative server needs is parsed, without allocating: the header, the one
//! question (kept as raw bytes so the answer echoes its case exactly, RFC 4343), the OPT
//! record, and where a TSIG record sits (so it is verified without walking the packet again).
//! Any other section is walked only to find those. Every length is checked; a packet that does
//! not parse is reported as malformed (the handler answers FORMERR or NOTIMP), or dropped when
//! not even a header can be read.

use crate::name::MAX_NAME_LEN;
use crate::zone::rtype;

/// Header flag bits (RFC 1035 §4.1.1, RFC 4035 §3.2 for AD/CD).
pub mod flag {
    pub const QR: u16 = 0x8000;
    pub const AA: u16 = 0x0400;
    pub const TC: u16 = 0x0200;
    pub const RD: u16 = 0x0100;
    pub const CD: u16 = 0x0010;
}

/// Response codes, including the extended ones carried in OPT (RFC 6891 §6.1.3).
pub mod rcode {
    pub const NOERROR: u16 = 0;
    pub const FORMERR: u16 = 1;
    pub const SERVFAIL: u16 = 2;
    pub const NXDOMAIN: u16 = 3;
    pub const NOTIMP: u16 = 4;
    pub const REFUSED: u16 = 5;
    pub const BADVERS: u16 = 16;
}

/// The one opcode answered (RFC 1035 §4.1.1); every other is NOTIMP.
pub const OPCODE_QUERY: u8 = 0;
/// The TSIG meta-type (RFC 8945 §4.2).
pub const TYPE_TSIG: u16 = 250;

pub const HEADER_LEN: usize = 12;
/// Smallest payload every DNS transport carries (RFC 1035 §4.2.1).
pub const MIN_UDP_PAYLOAD: u16 = 512;

/// EDNS(0) parameters of a query (RFC 6891 §6.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    /// Requester's UDP payload size; values under 512 are treated as 512.
    pub udp_size: u16,
    pub version: u8,
    /// The DO bit, echoed back (RFC 3225 §3).
    pub dnssec_ok: bool,
}

/// A query that parsed.
#[derive(Debug)]
pub struct Query<'a> {
    pub id: u16,
    pub opcode: u8,
    /// The raw flags word, to copy RD and CD.
    pub flags: u16,
    /// The question exactly as received: name, type, class.
    pub question: &'a [u8],
    /// Wire length of the question name, root label included.
    pub qname_len: usize,
    lower: [u8; MAX_NAME_LEN],
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
    /// The last record of the additional section, if it is a TSIG (RFC 8945 §5.1).
    pub tsig: Option<RecordAt>,
    /// The data of the OPT record's COOKIE option: a client cookie (8 bytes), or a client and
    /// a server cookie (16 to 40), as RFC 7873 §4 allows; any other length is FORMERR.
    pub cookie: Option<&'a [u8]>,
}

/// Where a record lies in the packet; every offset has been checked against its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordAt {
    /// Start of the owner name.
    pub start: usize,
    /// Start of the RDATA (type, class, TTL and RDLENGTH are the 10 bytes before it).
    pub rdata: usize,
    /// One past the end of the RDATA.
    pub end: usize,
}

impl Query<'_> {
    /// The question name in lower case, wire form.
    pub fn lower_qname(&self) -> &[u8] {
        &self.lower[..self.qname_len]
    }
}

/// Why a packet got no normal answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not worth an answer: shorter than a header, or itself a response.
    Drop,
    /// The header was read but the rest was not: answered with the header alone.
    Malformed { id: u16, flags: u16 },
}

/// The opcode in a header flags word.
pub fn opcode(flags: u16) -> u8 {
    ((flags >> 11) & 0xF) as u8
}

/// The record count of header section `section` (0 question, 1 answer, 2 authority,
/// 3 additional). The caller has checked that `packet` holds a header.
pub fn section_count(packet: &[u8], section: usize) -> u16 {
    u16::from_be_bytes([packet[4 + 2 * section], packet[5 + 2 * section]])
}

fn read_u16(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]))
}

/// Parses a query. Opcodes other than QUERY are still parsed: the caller answers NOTIMP.
/// A query must carry exactly one question (QDCOUNT 1), or it is malformed.
pub fn parse(buf: &[u8]) -> Result<Query<'_>, Reject> {
    if buf.len() < HEADER_LEN {
        return Err(Reject::Drop);
    }
    let id = u16::from_be_bytes([buf[0], buf[1]]);
    let flags = u16::from_be_bytes([buf[2], buf[3]]);
    if flags & flag::QR != 0 {
        return Err(Reject::Drop);
    }
    let formerr = Reject::Malformed { id, flags };
    let count = |section| section_count(buf, section) as usize;
    let (qdcount, ancount, nscount, arcount) = (count(0), count(1), count(2), count(3));
    if qdcount != 1 {
        return Err(formerr);
    }

    // The question name: no compression is possible (nothing precedes it to point at).
    let mut lower = [0u8; MAX_NAME_LEN];
    let mut pos = HEADER_LEN;
    loop {
        let Some(&len) = buf.get(pos) else {
            return Err(formerr);
        };
        if len & 0xC0 != 0 || pos - HEADER_LEN + 1 + len as usize > MAX_NAME_LEN {
            return Err(formerr);
        }
        let end = pos + 1 + len as usize;
        let Some(label) = buf.get(pos..end) else {
            return Err(formerr);
        };
        let at = pos - HEADER_LEN;
        lower[at] = len;
        for (dst, src) in lower[at + 1..at + 1 + label.len() - 1]
            .iter_mut()
            .zip(&label[1..])
        {
            *dst = src.to_ascii_lowercase();
        }
        pos = end;
        if len == 0 {
            break;
        }
    }
    let qname_len = pos - HEADER_LEN;
    let (Some(qtype), Some(qclass)) = (read_u16(buf, pos), read_u16(buf, pos + 2)) else {
        return Err(formerr);
    };
    let question_end = pos + 4;

    let mut pos = question_end;
    for _ in 0..ancount + nscount {
        let rr = skip_record(buf, pos).ok_or(formerr)?;
        // A TSIG belongs at the end of the additional section and nowhere else (RFC 8945 §5.1).
        if rr.rtype == TYPE_TSIG {
            return Err(formerr);
        }
        pos = rr.next;
    }
    let mut edns = None;
    let mut tsig = None;
    let mut cookie = None;
    for i in 0..arcount {
        let rr = skip_record(buf, pos).ok_or(formerr)?;
        if rr.rtype == rtype::OPT {
            // One OPT, owned by the root (RFC 6891 §6.1.1).
            if edns.is_some() || !rr.owner_is_root {
                return Err(formerr);
            }
            edns = Some(Edns {
                udp_size: rr.class.max(MIN_UDP_PAYLOAD),
                version: (rr.ttl >> 16) as u8,
                dnssec_ok: rr.ttl & 0x8000 != 0,
            });
            cookie = cookie_option(&buf[rr.rdata..rr.next]).map_err(|()| formerr)?;
        }
        if rr.rtype == TYPE_TSIG {
            // Only as the last record (RFC 8945 §5.1): one anywhere else is a format error.
            if i + 1 != arcount {
                return Err(formerr);
            }
            tsig = Some(RecordAt {
                start: pos,
                rdata: rr.rdata,
                end: rr.next,
            });
        }
        pos = rr.next;
    }

    Ok(Query {
        id,
        opcode: opcode(flags),
        flags,
        question: &buf[HEADER_LEN..question_end],
        qname_len,
        lower,
        qtype,
        qclass,
        edns,
        tsig,
        cookie,
    })
}

/// The COOKIE option among the OPT record's options (RFC 6891 §6.1.2: code, length, data).
/// `Err` if an option runs past the RDATA, or a COOKIE has a length RFC 7873 §5.2.2 calls
/// malformed; the first COOKIE counts.
fn cookie_option(options: &[u8]) -> Result<Option<&[u8]>, ()> {
    let mut pos = 0;
    let mut cookie = None;
    while pos < options.len() {
        let (Some(code), Some(len)) = (read_u16(options, pos), read_u16(options, pos + 2)) else {
            return Err(());
        };
        let data = options.get(pos + 4..pos + 4 + len as usize).ok_or(())?;
        if code == super::cookie::OPTION_COOKIE && cookie.is_none() {
            if !(data.len() == 8 || (16..=40).contains(&data.len())) {
                return Err(());
            }
            cookie = Some(data);
        }
        pos += 4 + len as usize;
    }
    Ok(cookie)
}

/// What the walk over one resource record learned.
struct Skipped {
    rdata: usize,
    next: usize,
    rtype: u16,
    class: u16,
    ttl: u32,
    /// The owner is the root name: the one zero octet, or a pointer back to one.
    owner_is_root: bool,
}

/// Where the name at `pos` ends: after its root label, or after a compression pointer.
/// `None` if it runs past the packet or uses a reserved label type.
pub fn name_end(packet: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *packet.get(pos)?;
        match len & 0xC0 {
            0x00 if len == 0 => return Some(pos + 1),
            0x00 => pos += 1 + len as usize,
            // A pointer is two bytes; one cut off by the end of the packet is no name.
            0xC0 => return packet.get(pos + 1).map(|_| pos + 2),
            _ => return None,
        }
    }
}

/// The smallest TTL of a message's answer and authority records (for how long a DoH response
/// may be cached, RFC 8484 §5.1); `None` if they hold none or the message does not parse.
pub fn min_ttl(message: &[u8]) -> Option<u32> {
    if message.len() < HEADER_LEN {
        return None;
    }
    let mut pos = HEADER_LEN;
    for _ in 0..section_count(message, 0) {
        pos = name_end(message, pos)? + 4;
    }
    let records = section_count(message, 1) + section_count(message, 2);
    let mut min = None;
    for _ in 0..records {
        let record = skip_record(message, pos)?;
        min = Some(min.map_or(record.ttl, |m: u32| m.min(record.ttl)));
        pos = record.next;
    }
    min
}

/// Steps over one resource record, checking that every length stays inside the packet.
fn skip_record(buf: &[u8], start: usize) -> Option<Skipped> {
    let pos = name_end(buf, start)?;
    let owner_is_root = match pos - start {
        1 => true,
        // A pointer must point backwards (RFC 1035 §4.1.4), here at a root label.
        2 if buf[start] & 0xC0 == 0xC0 => {
            let target = usize::from(u16::from_be_bytes([buf[start] & 0x3F, *buf.get(start + 1)?]));
            target < start && buf.get(target) == Some(&0)
        }
        _ => false,
    };
    let rtype = read_u16(buf, pos)?;
    let class = read_u16(buf, pos + 2)?;
    let ttl = u32::from_be_bytes(buf.get(pos + 4..pos + 8)?.try_into().ok()?);
    let rdlen = read_u16(buf, pos + 8)? as usize;
    let next = pos + 10 + rdlen;
    if next > buf.len() {
        return None;
    }
    Some(Skipped {
        rdata: pos + 10,
        next,
        rtype,
        class,
        ttl,
        owner_is_root,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], qtype: u16, extra: &[u8], arcount: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0];
        q.extend_from_slice(&arcount.to_be_bytes());
        q.extend_from_slice(name);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q.extend_from_slice(extra);
        q
    }

    const OPT_4096_DO: &[u8] = &[0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 0];

    #[test]
    fn parses_question_and_lowercases_name() {
        let buf = query(b"\x03WeB\x04TeSt\x00", 1, &[], 0);
        let q = parse(&buf).expect("parses");
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.lower_qname(), b"\x03web\x04test\x00");
        assert_eq!(&q.question[..4], b"\x03WeB");
        assert_eq!((q.qtype, q.qclass, q.edns, q.tsig), (1, 1, None, None));
    }

    #[test]
    fn finds_a_tsig_only_as_the_last_record() {
        // Root owner, type TSIG, class ANY, TTL 0, RDLENGTH 2, two bytes of RDATA.
        let tsig: &[u8] = &[0, 0, 250, 0, 255, 0, 0, 0, 0, 0, 2, 7, 7];
        let mut last = OPT_4096_DO.to_vec();
        last.extend_from_slice(tsig);
        let buf = query(b"\x00", 1, &last, 2);
        let start = buf.len() - tsig.len();
        let at = parse(&buf).expect("parses").tsig.expect("found");
        assert_eq!(
            at,
            RecordAt {
                start,
                rdata: start + 11,
                end: buf.len()
            }
        );

        let mut first = tsig.to_vec();
        first.extend_from_slice(OPT_4096_DO);
        let buf = query(b"\x00", 1, &first, 2);
        assert!(
            matches!(parse(&buf), Err(Reject::Malformed { .. })),
            "not last: a format error (RFC 8945 §5.1)"
        );

        // In the answer or authority section: a format error too.
        for section in [7, 9] {
            let mut buf = query(b"\x00", 1, tsig, 0);
            buf[section] = 1;
            assert!(
                matches!(parse(&buf), Err(Reject::Malformed { .. })),
                "section {section}"
            );
        }
    }

    #[test]
    fn an_opt_must_be_owned_by_the_root() {
        let formerr = |owner: &[u8]| {
            let mut opt = owner.to_vec();
            opt.extend_from_slice(&OPT_4096_DO[1..]);
            matches!(
                parse(&query(b"\x03web\x00", 1, &opt, 1)),
                Err(Reject::Malformed { .. })
            )
        };
        assert!(formerr(b"\x03web\x00"), "a name");
        assert!(formerr(b"\xc0\x0c"), "a pointer to the question name");
        assert!(formerr(b"\xc0\xff"), "a pointer past the record");
        assert!(formerr(b"\xc3\xff"), "a pointer past the packet");
        // The question name's own root label, at offset 12 + 4.
        assert!(!formerr(b"\xc0\x10"), "a pointer to a root label");
        assert!(!formerr(b"\x00"));
    }

    #[test]
    fn reads_edns() {
        let buf = query(b"\x00", 1, OPT_4096_DO, 1);
        let edns = parse(&buf).expect("parses").edns.expect("has OPT");
        assert_eq!(
            edns,
            Edns {
                udp_size: 4096,
                version: 0,
                dnssec_ok: true
            }
        );
    }

    #[test]
    fn finds_a_cookie_and_refuses_malformed_options() {
        let opt = |options: &[u8]| {
            let mut r = vec![0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0];
            r.extend_from_slice(&(options.len() as u16).to_be_bytes());
            r.extend_from_slice(options);
            query(b"\x00", 1, &r, 1)
        };
        let client = [0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8];
        let buf = opt(&client);
        assert_eq!(parse(&buf).expect("parses").cookie, Some(&client[4..]));
        // After another option (NSID, empty), with a server cookie.
        let mut both = vec![0, 3, 0, 0, 0, 10, 0, 24];
        both.extend_from_slice(&[9; 24]);
        let buf = opt(&both);
        assert_eq!(parse(&buf).expect("parses").cookie, Some(&[9u8; 24][..]));
        let malformed = |options: &[u8]| matches!(parse(&opt(options)), Err(Reject::Malformed { .. }));
        for len in [0usize, 7, 9, 15, 41] {
            let mut bad = vec![0, 10, 0, len as u8];
            bad.extend(std::iter::repeat_n(1, len));
            assert!(malformed(&bad), "a cookie of {len} bytes");
        }
        assert!(malformed(&[0, 10, 0, 8, 1, 2]), "an option past the RDATA");
        assert!(malformed(&[0, 10]), "half an option header");
        assert_eq!(parse(&opt(&[])).expect("parses").cookie, None);
    }

    #[test]
    fn a_pointer_cut_off_by_the_end_of_the_packet_is_malformed() {
        // Found by fuzzing (fuzz/corpus/dns_handler/regression-pointer-at-end): an additional
        // record whose owner is the first byte of a pointer, and the packet ends there.
        let mut buf = query(b"\x00", 1, &[0xC0], 1);
        assert!(matches!(parse(&buf), Err(Reject::Malformed { .. })));
        buf.push(0x0C);
        assert!(
            matches!(parse(&buf), Err(Reject::Malformed { .. })),
            "no type after it"
        );
        assert_eq!(name_end(&[0xC0], 0), None);
        assert_eq!(name_end(&[0xC0, 0x0C], 0), Some(2));
    }

    #[test]
    fn rejects_what_cannot_be_read() {
        assert!(matches!(parse(&[0; 5]), Err(Reject::Drop)));
        let mut response = query(b"\x00", 1, &[], 0);
        response[2] |= 0x80;
        assert!(matches!(parse(&response), Err(Reject::Drop)));
        let formerr = |buf: &[u8]| matches!(parse(buf), Err(Reject::Malformed { id: 0x1234, .. }));
        assert!(formerr(&query(b"\x05ab", 1, &[], 0)[..15]), "label runs past end");
        assert!(formerr(&query(b"\xc0\x0c", 1, &[], 0)), "pointer in question");
        assert!(formerr(&query(b"\x00", 1, &[], 1)), "missing additional");
        let mut two_opts = OPT_4096_DO.to_vec();
        two_opts.extend_from_slice(OPT_4096_DO);
        assert!(formerr(&query(b"\x00", 1, &two_opts, 2)), "two OPT records");
        let mut no_question = query(b"\x00", 1, &[], 0);
        no_question[5] = 0;
        assert!(formerr(&no_question));
        let long: Vec<u8> = std::iter::repeat_n(
            b"\x3fxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            5,
        )
        .flatten()
        .copied()
        .chain([0])
        .collect();
        assert!(formerr(&query(&long, 1, &[], 0)), "name over 255 octets");
    }
}
