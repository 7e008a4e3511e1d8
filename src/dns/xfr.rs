//! Outgoing zone transfers over TCP: AXFR (RFC 5936), and IXFR (RFC 1995) answered with the
//! whole zone or "up to date".
//!
//! A transfer reads one snapshot from start to end, so it is consistent whatever changes while
//! it streams. Messages are cut at about 16 KiB; each repeats the question, so every owner name
//! is written as its labels below the apex plus a pointer to the apex in the question, and
//! compression keeps working in every message. The SOA comes first and last (RFC 5936 §2.2).
//!
//! Who may transfer is decided by [`TransferAcl`] (the handler applies it); others get REFUSED.
//! A transfer is built from a [`Request`]: the few fields of the query it needs, owned, so a
//! builder thread never parses the packet again.

use std::net::IpAddr;

use ipnet::IpNet;

use super::wire::{self, HEADER_LEN, OPCODE_QUERY, Query, flag};
use crate::name::MAX_NAME_LEN;
use crate::snapshot::{Entry, Snapshot};
use crate::zone::rtype;

/// Target size of one transfer message: big enough to amortise headers, small enough that
/// compression pointers (14 bits) reach everything.
const MESSAGE_TARGET: usize = 16 * 1024;

/// Which peers may transfer the zone: those in `allow`, and any request signed with one of
/// `keys` (which are also used to check and sign every other signed request).
#[derive(Debug, Clone, Default)]
pub struct TransferAcl {
    pub allow: Vec<IpNet>,
    pub keys: Vec<super::tsig::Key>,
}

impl TransferAcl {
    pub fn allows(&self, peer: IpAddr) -> bool {
        let peer = crate::edge::canonical(peer);
        self.allow.iter().any(|net| net.contains(&peer))
    }
}

/// Whether the query asks for a transfer that this module answers: AXFR or IXFR, opcode
/// QUERY, class IN or ANY, and no EDNS version we do not speak (those get BADVERS from the
/// ordinary answer path). The caller checks that the name is the apex.
pub fn is_transfer(query: &Query<'_>) -> bool {
    matches!(query.qtype, rtype::AXFR | rtype::IXFR)
        && query.opcode == OPCODE_QUERY
        && matches!(query.qclass, 1 | 255)
        && query.edns.is_none_or(|e| e.version == 0)
}

/// The serial in an IXFR query's authority SOA (RFC 1995 §3), if there is one.
pub fn ixfr_client_serial(packet: &[u8], query: &Query<'_>) -> Option<u32> {
    // The client's SOA is the one record of the authority section (RFC 1995 §3).
    let count = |section| wire::section_count(packet, section);
    if query.qtype != rtype::IXFR || count(1) != 0 || count(2) == 0 {
        return None;
    }
    // The authority SOA's serial is the first 32 bits after its two names; the names in a
    // query's SOA are normally pointers or short, so walk them.
    let mut pos = HEADER_LEN + query.question.len();
    pos = wire::name_end(packet, pos)?;
    let rt = u16::from_be_bytes([*packet.get(pos)?, *packet.get(pos + 1)?]);
    if rt != rtype::SOA {
        return None;
    }
    pos += 10; // type, class, TTL, RDLENGTH
    pos = wire::name_end(packet, pos)?;
    pos = wire::name_end(packet, pos)?;
    Some(u32::from_be_bytes(packet.get(pos..pos + 4)?.try_into().ok()?))
}

/// Whether serial `a` is the same as or newer than `b` in RFC 1982 serial arithmetic.
pub fn serial_at_least(a: u32, b: u32) -> bool {
    a == b || (a.wrapping_sub(b) as i32) > 0
}

/// What building a transfer needs from its query, owned: small, and no packet to parse again.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: u16,
    /// The query's flags word (RD is copied).
    pub flags: u16,
    /// The question as received (name, type, class), in `question[..question_len]`.
    question: [u8; MAX_NAME_LEN + 4],
    question_len: usize,
    /// Wire length of the question name.
    pub qname_len: usize,
    pub qtype: u16,
    /// The serial of an IXFR query's authority SOA; `None` asks for the whole zone.
    pub client_serial: Option<u32>,
}

impl Request {
    /// The request for `query`, whose packet is `packet`.
    pub fn new(packet: &[u8], query: &Query<'_>) -> Self {
        let mut question = [0u8; MAX_NAME_LEN + 4];
        // wire::parse bounds the name to MAX_NAME_LEN, so the question always fits.
        let question_len = query.question.len().min(question.len());
        question[..question_len].copy_from_slice(&query.question[..question_len]);
        Self {
            id: query.id,
            flags: query.flags,
            question,
            question_len,
            qname_len: query.qname_len,
            qtype: query.qtype,
            client_serial: ixfr_client_serial(packet, query),
        }
    }

    pub fn question(&self) -> &[u8] {
        &self.question[..self.question_len]
    }

    /// What `transfer` will send for this request from `snapshot`, for the logs.
    pub fn kind(&self, snapshot: &Snapshot) -> &'static str {
        match (self.qtype, self.client_serial) {
            (rtype::IXFR, Some(c)) if serial_at_least(c, snapshot.serial) => "IXFR (up to date)",
            (rtype::IXFR, Some(c)) if snapshot.journal.since(c).is_some() => "IXFR",
            (rtype::IXFR, _) => "IXFR (whole zone)",
            _ => "AXFR",
        }
    }
}

/// Streams a transfer of `snapshot` as DNS messages, calling `send` with each one; returns
/// the number of records sent. The caller has checked that the request's name is the apex.
///
/// An IXFR whose client already has the current serial gets the SOA alone (RFC 1995 §2); one
/// whose serial the journal reaches back to gets the differences since (RFC 1995 §4); any
/// other transfer gets the whole zone in AXFR form, which RFC 1995 §4 allows as an IXFR answer.
pub fn transfer<E>(
    snapshot: &Snapshot,
    request: &Request,
    mut send: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<usize, E> {
    let client_serial = request.client_serial;
    let mut w = Writer::new(request);
    let apex_at = (HEADER_LEN + request.qname_len).saturating_sub(snapshot.apex.len()) as u16;
    let soa = &snapshot.soa_rdata;
    let soa_ttl = snapshot.soa_ttl;
    if client_serial.is_some_and(|c| serial_at_least(c, snapshot.serial)) {
        w.record(apex_at, &[], rtype::SOA, soa_ttl, soa);
        return w.finish(&mut send).map(|()| 1);
    }
    if let Some(diffs) = client_serial.and_then(|c| snapshot.journal.since(c)) {
        let soa_at = |serial: u32| {
            let mut rdata = soa.to_vec();
            let at = rdata.len() - 20;
            rdata[at..at + 4].copy_from_slice(&serial.to_be_bytes());
            rdata
        };
        let mut count = 2;
        w.record(apex_at, &[], rtype::SOA, soa_ttl, soa);
        for diff in diffs {
            for (serial, records) in [(diff.from, diff.removed()), (diff.to, diff.added())] {
                let rdata = soa_at(serial);
                w.flush_if_full(&mut send, 12 + rdata.len())?;
                w.record(apex_at, &[], rtype::SOA, soa_ttl, &rdata);
                count += 1 + records.len();
                for r in records {
                    w.flush_if_full(&mut send, r.owner.len() + 12 + r.rdata.len())?;
                    w.record(apex_at, r.owner, r.rtype, r.ttl, r.rdata);
                }
            }
        }
        w.flush_if_full(&mut send, 12 + soa.len())?;
        w.record(apex_at, &[], rtype::SOA, soa_ttl, soa);
        w.finish(&mut send)?;
        return Ok(count);
    }
    let mut count = 0usize;
    w.record(apex_at, &[], rtype::SOA, soa_ttl, soa);
    for (rel, entry) in snapshot.iter() {
        count += w.entry(&mut send, apex_at, rel, entry)?;
    }
    w.flush_if_full(&mut send, 12 + soa.len())?;
    w.record(apex_at, &[], rtype::SOA, soa_ttl, soa);
    w.finish(&mut send)?;
    Ok(count + 2)
}

/// Builds the messages of one transfer.
struct Writer<'q> {
    header: [u8; HEADER_LEN],
    question: &'q [u8],
    out: Vec<u8>,
    count: u16,
}

impl<'q> Writer<'q> {
    fn new(request: &'q Request) -> Self {
        let mut header = [0u8; HEADER_LEN];
        header[..2].copy_from_slice(&request.id.to_be_bytes());
        let flags = flag::QR | flag::AA | (request.flags & flag::RD);
        header[2..4].copy_from_slice(&flags.to_be_bytes());
        header[5] = 1;
        let mut w = Self {
            header,
            question: request.question(),
            out: Vec::with_capacity(MESSAGE_TARGET + 1024),
            count: 0,
        };
        w.start();
        w
    }

    fn start(&mut self) {
        self.out.clear();
        self.out.extend_from_slice(&self.header);
        self.out.extend_from_slice(self.question);
        self.count = 0;
    }

    /// Appends a record whose owner is `rel` (labels below the apex) plus the apex pointer.
    fn record(&mut self, apex_at: u16, rel: &[u8], rt: u16, ttl: u32, rdata: &[u8]) {
        self.out.extend_from_slice(rel);
        self.out.extend_from_slice(&(0xC000 | apex_at).to_be_bytes());
        self.out.extend_from_slice(&rt.to_be_bytes());
        self.out.extend_from_slice(&1u16.to_be_bytes());
        self.out.extend_from_slice(&ttl.to_be_bytes());
        self.out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        self.out.extend_from_slice(rdata);
        self.count += 1;
    }

    /// Sends the current message if adding `more` bytes would pass the target size.
    fn flush_if_full<E>(
        &mut self,
        send: &mut impl FnMut(&[u8]) -> Result<(), E>,
        more: usize,
    ) -> Result<(), E> {
        if self.count > 0 && self.out.len() + more > MESSAGE_TARGET {
            self.finish(send)?;
            self.start();
        }
        Ok(())
    }

    /// Writes every record of one name except the apex SOA (which frames the transfer).
    fn entry<E>(
        &mut self,
        send: &mut impl FnMut(&[u8]) -> Result<(), E>,
        apex_at: u16,
        rel: &[u8],
        entry: &Entry,
    ) -> Result<usize, E> {
        let mut written = 0;
        for set in entry.rrsets.iter() {
            if rel.is_empty() && set.rtype == rtype::SOA {
                continue;
            }
            for rdata in set.records.iter() {
                self.flush_if_full(send, rel.len() + 12 + rdata.len())?;
                self.record(apex_at, rel, set.rtype, set.ttl, rdata);
                written += 1;
            }
        }
        Ok(written)
    }

    fn finish<E>(&mut self, send: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        self.out[6..8].copy_from_slice(&self.count.to_be_bytes());
        send(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_matches_networks_and_mapped_addresses() {
        let acl = TransferAcl {
            allow: vec![
                "127.0.0.0/8".parse().expect("net"),
                "fd00::/8".parse().expect("net"),
            ],
            keys: vec![],
        };
        assert!(acl.allows("127.0.0.2".parse().expect("ip")));
        assert!(acl.allows("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(acl.allows("fd12::1".parse().expect("ip")));
        assert!(!acl.allows("10.0.0.1".parse().expect("ip")));
        assert!(!TransferAcl::default().allows("127.0.0.1".parse().expect("ip")));
    }
}

#[cfg(test)]
mod serial_tests {
    use super::serial_at_least;

    #[test]
    fn serials_compare_as_rfc_1982_says() {
        assert!(serial_at_least(5, 5) && serial_at_least(6, 5) && !serial_at_least(4, 5));
        assert!(serial_at_least(2, u32::MAX), "2 is after a wrap from u32::MAX");
        assert!(!serial_at_least(u32::MAX, 2));
    }
}
