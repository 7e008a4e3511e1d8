//! The static part of the served zone: apex, SOA fields and the records of the zone file.
//!
//! Loaded once at start (by `dns::zonefile`, the only code that reads master-file syntax) and
//! merged with the dynamic `svc`/`cont`/`node` names every time a snapshot is built. Record
//! data is kept in uncompressed wire form, so nothing here depends on a DNS library.

/// Labels below the apex that the server owns; the zone file may not put records there.
pub const DYNAMIC_SUBTREES: [&str; 3] = ["svc", "cont", "node"];

/// Record types the answer path treats specially.
pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const HINFO: u16 = 13;
    pub const MX: u16 = 15;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const OPT: u16 = 41;
    pub const IXFR: u16 = 251;
    pub const AXFR: u16 = 252;
    pub const ANY: u16 = 255;
}

/// The SOA fields the server keeps; the serial is the server's, not the file's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Soa {
    /// Primary server name, absolute wire form.
    pub mname: Vec<u8>,
    /// Responsible mailbox, absolute wire form.
    pub rname: Vec<u8>,
    /// The serial written in the file: the server never publishes a lower one.
    pub file_serial: u32,
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    /// Negative-caching TTL (RFC 2308 §4).
    pub minimum: u32,
    /// TTL of the SOA record itself.
    pub ttl: u32,
}

impl Soa {
    /// SOA RDATA with `serial` in place of the file's.
    pub fn rdata(&self, serial: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.mname.len() + self.rname.len() + 20);
        out.extend_from_slice(&self.mname);
        out.extend_from_slice(&self.rname);
        for v in [serial, self.refresh, self.retry, self.expire, self.minimum] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out
    }

    /// TTL of the SOA in a negative answer: min(SOA TTL, SOA MINIMUM) (RFC 2308 §3).
    pub fn negative_ttl(&self) -> u32 {
        self.ttl.min(self.minimum)
    }
}

/// One record of the zone file (other than the SOA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRecord {
    /// Owner relative to the apex, lower-case wire labels (empty for the apex).
    pub owner: Vec<u8>,
    pub rtype: u16,
    pub ttl: u32,
    /// Uncompressed wire RDATA.
    pub rdata: Vec<u8>,
}

/// Everything the zone file contributes to the served zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Absolute apex name, lower-case wire form (`\x07cluster\x04test\x00`).
    pub apex: Vec<u8>,
    pub soa: Soa,
    pub records: Vec<StaticRecord>,
}
