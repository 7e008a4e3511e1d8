//! Turning a parsed query and a snapshot into response bytes (design §3).
//!
//! Pure and allocation-free per query: the caller owns the output buffer and the scratch
//! space and reuses them. Owner names are written as compression pointers into the question
//! (so the answer echoes the question's case, RFC 4343) or into target names already written;
//! RDATA is copied as prepared by the snapshot builder, uncompressed (RFC 2782 forbids
//! compressing SRV targets, RFC 3597 §4 any name in a type we do not special-case).
//!
//! Truncation (RFC 2181 §9): an RRset that does not fit whole is not sent at all; if that is
//! the answer, TC is set. Additional records are dropped a target at a time, without TC.

use crate::name;
use crate::snapshot::{RRset, Snapshot};
use crate::zone::rtype;

use super::wire::{self, HEADER_LEN, OPCODE_QUERY, Query, flag, rcode};

/// UDP answers never exceed this, whatever the requester offers: it fits the IPv6 minimum MTU
/// without fragmentation (DNS Flag Day 2020) and bounds amplification.
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// Most a TCP message can carry (RFC 1035 §4.2.2).
pub const MAX_TCP_PAYLOAD: usize = 65535;
/// Size of the OPT record we append: root owner, type, class, TTL, RDLENGTH.
const OPT_LEN: usize = 11;
/// Longest CNAME chain followed inside the zone.
const MAX_CNAME_CHAIN: usize = 8;

const CLASS_IN: u16 = 1;
const CLASS_ANY: u16 = 255;

/// The transport a query came over: it decides the size limit (only UDP truncates) and, in
/// [`handler`](super::handler), whether a zone transfer may be streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    /// DNS over TLS; zone transfers only over TLS 1.3 (RFC 9103 §7.1).
    Tls {
        tls13: bool,
    },
    /// One response per request, of any size: DNS over HTTPS or QUIC (no transfers).
    Message,
}

impl Transport {
    /// Only UDP truncates: the others carry messages of up to 64 KiB, and a client has no
    /// bigger transport to retry on.
    pub fn truncates(self) -> bool {
        self == Transport::Udp
    }
}

/// Per-worker buffers reused across queries.
#[derive(Default)]
pub struct Scratch {
    /// Where each record of the RRset being written put its RDATA (u32::MAX = not written).
    rdata_at: Vec<u32>,
    /// Random order for `Rotation::Random`.
    order: Vec<u32>,
    rng: u64,
}

/// Writes a reply of the header alone, `rcode` set: for a packet whose question could not be
/// read. The opcode and RD are copied (RFC 1035 §4.1.1).
pub fn header_only(out: &mut Vec<u8>, id: u16, flags: u16, rcode: u16) {
    out.clear();
    write_header(out, id, (flags & (flag::RD | 0x7800)) | flag::QR, rcode);
}

fn write_header(out: &mut Vec<u8>, id: u16, flags: u16, rcode: u16) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(flags | (rcode & 0xF)).to_be_bytes());
    out.extend_from_slice(&[0; 8]);
}

/// The response under construction.
struct Message<'o> {
    out: &'o mut Vec<u8>,
    /// Bytes the message may use, OPT included.
    limit: usize,
    /// Bytes kept free at the end for OPT.
    reserve: usize,
    /// Offset of the apex labels inside the question name, for SOA owners.
    apex_at: u16,
    /// Not UDP: an RRset larger than a whole message is cut to a rotating subset rather than
    /// truncated to nothing, since the client has no bigger transport to retry on.
    subset_ok: bool,
}

impl Message<'_> {
    fn count(&mut self, section: usize, by: u16) {
        let at = 4 + 2 * section;
        let n = u16::from_be_bytes([self.out[at], self.out[at + 1]]) + by;
        self.out[at..at + 2].copy_from_slice(&n.to_be_bytes());
    }

    fn set_flags(&mut self, bits: u16) {
        let f = u16::from_be_bytes([self.out[2], self.out[3]]) | bits;
        self.out[2..4].copy_from_slice(&f.to_be_bytes());
    }

    fn set_rcode(&mut self, rc: u16) {
        self.out[3] = (self.out[3] & 0xF0) | (rc & 0xF) as u8;
    }

    fn fits(&self, more: usize) -> bool {
        self.out.len() + more + self.reserve <= self.limit
    }

    /// Writes one record whose owner is a compression pointer; returns where its RDATA starts,
    /// or `None` (nothing written) if it does not fit.
    fn record(&mut self, owner: u16, rtype: u16, ttl: u32, rdata: &[u8]) -> Option<usize> {
        if !self.fits(12 + rdata.len()) {
            return None;
        }
        self.out.extend_from_slice(&(0xC000 | owner).to_be_bytes());
        Some(self.record_body(rtype, ttl, rdata))
    }

    /// Everything of a record after its owner name; returns where the RDATA starts.
    fn record_body(&mut self, rtype: u16, ttl: u32, rdata: &[u8]) -> usize {
        self.out.extend_from_slice(&rtype.to_be_bytes());
        self.out.extend_from_slice(&CLASS_IN.to_be_bytes());
        self.out.extend_from_slice(&ttl.to_be_bytes());
        self.out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        let at = self.out.len();
        self.out.extend_from_slice(rdata);
        at
    }

    /// The zone's SOA in the authority section of a negative answer (RFC 2308 §3).
    fn negative(&mut self, snapshot: &Snapshot) {
        if self
            .record(
                self.apex_at,
                rtype::SOA,
                snapshot.negative_ttl,
                &snapshot.soa_rdata,
            )
            .is_some()
        {
            self.count(2, 1);
        }
    }
}

/// Writes the answer to `query` into `out` (cleared first), leaving `extra_reserve` bytes of
/// the size limit free (for a TSIG record), with `options` (whole EDNS options, a COOKIE) in
/// its OPT record if the query had one. Every rcode the query itself decides is chosen here,
/// BADVERS first (RFC 6891 §6.1.3), then NOTIMP, REFUSED outside the zone or class, REFUSED
/// for a transfer the handler did not take, FORMERR for a question of type OPT. Returns the
/// (extended) rcode.
pub fn answer(
    snapshot: &Snapshot,
    query: &Query<'_>,
    transport: Transport,
    extra_reserve: usize,
    options: &[u8],
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) -> u16 {
    out.clear();
    let keep = query.flags & (flag::RD | flag::CD | 0x7800);
    write_header(out, query.id, keep | flag::QR, rcode::NOERROR);
    out[5] = 1; // QDCOUNT
    out.extend_from_slice(query.question);

    let udp_limit = match query.edns {
        Some(e) => e.udp_size.clamp(wire::MIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD),
        None => wire::MIN_UDP_PAYLOAD,
    };
    let limit = match transport {
        Transport::Udp => udp_limit as usize,
        _ => MAX_TCP_PAYLOAD,
    };
    let reserve = extra_reserve
        + if query.edns.is_some() {
            OPT_LEN + options.len()
        } else {
            0
        };
    let rel = name::strip_apex(query.lower_qname(), &snapshot.apex);
    // Only meaningful when the name is in the zone (then it ends with the apex).
    let apex_at = (HEADER_LEN + query.qname_len).saturating_sub(snapshot.apex.len()) as u16;
    let mut msg = Message {
        out,
        limit,
        reserve,
        apex_at,
        subset_ok: !transport.truncates(),
    };

    let ext_rcode = match (query.opcode, query.edns, rel) {
        (_, Some(e), _) if e.version > 0 => rcode::BADVERS,
        (op, ..) if op != OPCODE_QUERY => rcode::NOTIMP,
        (.., None) => rcode::REFUSED,
        _ if query.qclass != CLASS_IN && query.qclass != CLASS_ANY => rcode::REFUSED,
        // Transfers the requester may have are taken by dns::handler before this.
        _ if matches!(query.qtype, rtype::AXFR | rtype::IXFR) => rcode::REFUSED,
        _ if query.qtype == rtype::OPT => rcode::FORMERR,
        (.., Some(rel)) => {
            msg.set_flags(flag::AA);
            resolve(snapshot, &mut msg, rel, query.qtype, scratch)
        }
    };
    msg.set_rcode(ext_rcode);
    if let Some(edns) = query.edns {
        write_opt(msg.out, ext_rcode, edns.dnssec_ok, options);
        msg.count(3, 1);
    }
    ext_rcode
}

/// Appends our OPT record: the extended rcode's upper bits, DO echoed, `options` as given.
fn write_opt(out: &mut Vec<u8>, ext_rcode: u16, dnssec_ok: bool, options: &[u8]) {
    let ttl = (u32::from(ext_rcode >> 4) << 24) | if dnssec_ok { 0x8000 } else { 0 };
    out.extend_from_slice(&[0, 0, 41]);
    out.extend_from_slice(&MAX_UDP_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(options.len() as u16).to_be_bytes());
    out.extend_from_slice(options);
}

/// Rewrites the reply in `out` as BADCOOKIE (RFC 7873 §5.2.3): its header and question, no
/// records, and an OPT carrying `cookie` (the client's cookie and a fresh server cookie), so
/// the client can retry with a cookie that lets it through.
pub fn bad_cookie(out: &mut Vec<u8>, dnssec_ok: bool, cookie: &[u8]) {
    if out.len() < HEADER_LEN {
        return;
    }
    keep_question(out);
    out[2] &= !((flag::AA | flag::TC) >> 8) as u8;
    out[3] = (out[3] & 0xF0) | (super::cookie::BADCOOKIE & 0xF) as u8;
    write_opt(out, super::cookie::BADCOOKIE, dnssec_ok, cookie);
    out[11] = 1;
}

/// Cuts a reply down to its header and its question (if it has one), every record count zero:
/// what a truncated answer, an RRL slip and a BADCOOKIE start from.
pub fn keep_question(out: &mut Vec<u8>) {
    if out.len() < HEADER_LEN {
        return;
    }
    let end = question_end(out).unwrap_or(HEADER_LEN);
    out.truncate(end);
    out[4..6].copy_from_slice(&u16::from(end > HEADER_LEN).to_be_bytes());
    out[6..12].fill(0);
}

/// Where the one question of a reply ends (the name is uncompressed: nothing precedes it);
/// `None` if QDCOUNT is not 1 or the question runs past the end.
pub fn question_end(reply: &[u8]) -> Option<usize> {
    if reply.get(4..6)? != [0, 1] {
        return None;
    }
    let mut pos = HEADER_LEN;
    loop {
        let len = usize::from(*reply.get(pos)?);
        pos += 1 + len;
        if len == 0 {
            break;
        }
    }
    (pos + 4 <= reply.len()).then_some(pos + 4)
}

/// Answers an in-zone name; returns the response code.
fn resolve(snapshot: &Snapshot, msg: &mut Message<'_>, rel: &[u8], qtype: u16, scratch: &mut Scratch) -> u16 {
    let mut owner = HEADER_LEN as u16;
    let mut rel = rel;
    let mut visited: [&[u8]; MAX_CNAME_CHAIN] = [&[]; MAX_CNAME_CHAIN];
    for step in 0..MAX_CNAME_CHAIN {
        if visited[..step].contains(&rel) {
            return rcode::NOERROR; // A loop in the zone file: stop at the first repeat.
        }
        visited[step] = rel;
        let Some(entry) = snapshot.lookup(rel) else {
            msg.negative(snapshot);
            return rcode::NXDOMAIN;
        };
        let set = match qtype {
            // RFC 8482 §4.2: answer ANY with one RRset of the name.
            rtype::ANY => entry.rrsets.first(),
            _ => entry.rrset(qtype),
        };
        if let Some(set) = set {
            if !write_rrset(msg, owner, set, scratch) {
                truncate(msg);
            }
            return rcode::NOERROR;
        }
        let Some(cname) = entry.rrset(rtype::CNAME) else {
            msg.negative(snapshot);
            return rcode::NOERROR;
        };
        let Some(at) = write_rrset_records(msg, owner, cname, scratch) else {
            truncate(msg);
            return rcode::NOERROR;
        };
        // Follow the alias if it stays inside the zone (RFC 1034 §4.3.2 step 3a).
        let Some(target) = name::strip_apex(&cname.records[0], &snapshot.apex) else {
            return rcode::NOERROR;
        };
        if at > 0x3FFF {
            return rcode::NOERROR;
        }
        owner = at as u16;
        rel = target;
    }
    rcode::NOERROR
}

/// Drops everything after the question and sets TC: the client must retry over TCP.
fn truncate(msg: &mut Message<'_>) {
    keep_question(msg.out);
    msg.set_flags(flag::TC);
}

/// Writes an RRset and its additional records; `false` if the RRset itself does not fit.
fn write_rrset(msg: &mut Message<'_>, owner: u16, set: &RRset, scratch: &mut Scratch) -> bool {
    if write_rrset_records(msg, owner, set, scratch).is_none() {
        return false;
    }
    let Some(offset) = RRset::target_offset(set.rtype) else {
        return true;
    };
    // Additional records, one target at a time, while they fit.
    let mut i = 0;
    let extras = &set.additionals;
    while i < extras.len() {
        let record = extras[i].record;
        let group_end = i + extras[i..].iter().take_while(|a| a.record == record).count();
        let at = scratch.rdata_at[record as usize];
        if at != u32::MAX {
            let target = at as usize + offset;
            let mark = msg.out.len();
            let mut written = 0;
            for extra in &extras[i..group_end] {
                let fitted = if target <= 0x3FFF {
                    msg.record(target as u16, extra.rtype, extra.ttl, &extra.rdata)
                } else {
                    write_full_owner(msg, target, extra.rtype, extra.ttl, &extra.rdata)
                };
                if fitted.is_none() {
                    msg.out.truncate(mark);
                    return true;
                }
                written += 1;
            }
            msg.count(3, written);
        }
        i = group_end;
    }
    true
}

/// Writes a record whose owner is the uncompressed name at `target` in the message (used when
/// the name lies past what a 14-bit compression pointer can reach).
fn write_full_owner(
    msg: &mut Message<'_>,
    target: usize,
    rtype: u16,
    ttl: u32,
    rdata: &[u8],
) -> Option<usize> {
    let mut end = target;
    while msg.out[end] != 0 {
        end += 1 + msg.out[end] as usize;
    }
    let name_len = end + 1 - target;
    if !msg.fits(name_len + 10 + rdata.len()) {
        return None;
    }
    msg.out.extend_from_within(target..=end);
    Some(msg.record_body(rtype, ttl, rdata))
}

/// Writes the answer records of `set` in rotation order, all or nothing. Records where each
/// record's RDATA landed in `scratch.rdata_at`; returns the offset of the first RDATA.
fn write_rrset_records(
    msg: &mut Message<'_>,
    owner: u16,
    set: &RRset,
    scratch: &mut Scratch,
) -> Option<usize> {
    let n = set.records.len();
    scratch.rdata_at.clear();
    scratch.rdata_at.resize(n, u32::MAX);
    let take = set.answer_len();
    let start = set.next_start();
    let random = set.rotation == crate::snapshot::Rotation::Random && n > 1;
    if random {
        shuffle(scratch, n);
    }
    let mark = msg.out.len();
    let mut first = None;
    let mut written = 0u16;
    for k in 0..take {
        let index = if random {
            scratch.order[k] as usize
        } else {
            (start + k) % n
        };
        let Some(at) = msg.record(owner, set.rtype, set.ttl, &set.records[index]) else {
            if msg.subset_ok && written > 0 {
                break;
            }
            msg.out.truncate(mark);
            scratch.rdata_at.fill(u32::MAX);
            return None;
        };
        first.get_or_insert(at);
        scratch.rdata_at[index] = at as u32;
        written += 1;
    }
    msg.count(1, written);
    first
}

/// Fisher-Yates over `0..n` into `scratch.order`, with a xorshift generator: the order only
/// needs to look random to clients, not resist prediction.
fn shuffle(scratch: &mut Scratch, n: usize) {
    if scratch.rng == 0 {
        scratch.rng = seed();
    }
    scratch.order.clear();
    scratch.order.extend(0..n as u32);
    for i in (1..n).rev() {
        let mut x = scratch.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        scratch.rng = x;
        scratch.order.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        bytes = 0x9E37_79B9_7F4A_7C15u64.to_le_bytes();
    }
    u64::from_le_bytes(bytes) | 1
}
