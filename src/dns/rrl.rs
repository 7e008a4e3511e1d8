//! Response rate limiting over UDP (the classic RRL of BIND, Knot's `mod-rrl`, NSD's `rrl-*`).
//!
//! A reflector is abused by spoofing the victim's address, so what is limited is identical
//! responses to one client prefix: each response is counted in a bucket keyed by the prefix
//! (`/24` IPv4, `/56` IPv6), its class and the name it is about:
//!
//! | class | keyed by |
//! |---|---|
//! | answer (NOERROR with records) | query name and type |
//! | NODATA (NOERROR, empty) | query name |
//! | NXDOMAIN | the zone (random names under it share one bucket) |
//! | error (REFUSED, FORMERR, NOTIMP, …) | the prefix alone |
//!
//! Beyond `rate` responses in a second, a bucket's responses are limited: every `slip`-th goes
//! out as an empty truncated reply (a real client retries over TCP, which is never limited),
//! the rest are dropped. Whitelisted prefixes and clients with a valid server cookie are never
//! limited. Buckets live in a fixed table of atomic words (no lock, no allocation): a bucket
//! whose slot is taken by another key starts over, which only ever lets more through.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ipnet::IpNet;

use super::answer;
use super::wire::{HEADER_LEN, rcode};

/// How RRL is set up (`--rrl-*`).
#[derive(Debug, Clone)]
pub struct RrlConfig {
    /// Responses per second per bucket.
    pub rate: u32,
    /// Every `slip`-th limited response is sent truncated; 0 drops them all, 1 slips them all.
    pub slip: u32,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Never limited.
    pub whitelist: Vec<IpNet>,
    /// Buckets in the table, rounded up to a power of two.
    pub table_size: usize,
}

/// What to do with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Send it truncated and empty instead.
    Slip,
    Drop,
}

/// Limited responses so far, for `/metrics`.
#[derive(Debug, Default)]
pub struct RrlCounters {
    pub slipped: AtomicU64,
    pub dropped: AtomicU64,
}

pub struct Rrl {
    config: RrlConfig,
    /// Per slot: key tag (24 bits) | second, modulo 256 (8 bits) | responses counted in it
    /// (32 bits, so the slip sequence never stalls at a ceiling).
    table: Box<[AtomicU64]>,
    mask: usize,
    hasher: foldhash::fast::RandomState,
    started: Instant,
    pub counters: RrlCounters,
}

/// The response classes of the table above.
#[derive(Clone, Copy)]
enum Class {
    Answer = 1,
    NoData = 2,
    NxDomain = 3,
    Error = 4,
}

impl Rrl {
    pub fn new(config: RrlConfig) -> Self {
        let size = config.table_size.clamp(1024, 1 << 24).next_power_of_two();
        Self {
            table: (0..size).map(|_| AtomicU64::new(0)).collect(),
            mask: size - 1,
            hasher: foldhash::fast::RandomState::default(),
            started: Instant::now(),
            counters: RrlCounters::default(),
            config,
        }
    }

    pub fn config(&self) -> &RrlConfig {
        &self.config
    }

    /// Whether `peer` may have `reply` now, counting it.
    pub fn verdict(&self, peer: IpAddr, reply: &[u8]) -> Verdict {
        let peer = crate::edge::canonical(peer);
        if self.config.rate == 0 || self.config.whitelist.iter().any(|net| net.contains(&peer)) {
            return Verdict::Send;
        }
        let second = self.started.elapsed().as_secs();
        let count = self.count(self.bucket(peer, reply), second);
        if count <= self.config.rate {
            return Verdict::Send;
        }
        let over = count - self.config.rate;
        if self.config.slip > 0 && over.is_multiple_of(self.config.slip) {
            self.counters.slipped.fetch_add(1, Ordering::Relaxed);
            Verdict::Slip
        } else {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            Verdict::Drop
        }
    }

    /// Counts one response in `bucket` during `second`; returns the count so far.
    fn count(&self, bucket: u64, second: u64) -> u32 {
        let slot = &self.table[bucket as usize & self.mask];
        let tag = bucket >> 40;
        let now = second & 0xFF;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let same = current >> 40 == tag && (current >> 32) & 0xFF == now;
            let count = if same {
                (current & 0xFFFF_FFFF).saturating_add(1).min(0xFFFF_FFFF)
            } else {
                1
            };
            let next = (tag << 40) | (now << 32) | count;
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return count as u32,
                Err(seen) => current = seen,
            }
        }
    }

    /// The bucket of `reply` (a response with its question, or a bare header) to `peer`.
    fn bucket(&self, peer: IpAddr, reply: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        match peer {
            IpAddr::V4(v4) => h.write_u32(u32::from(v4) & mask32(self.config.ipv4_prefix)),
            IpAddr::V6(v6) => h.write_u128(u128::from(v6) & mask128(self.config.ipv6_prefix)),
        }
        let class = classify(reply);
        h.write_u8(class as u8);
        if matches!(class, Class::Answer | Class::NoData)
            && let Some((name, qtype)) = question(reply)
        {
            for byte in name {
                h.write_u8(byte.to_ascii_lowercase());
            }
            if matches!(class, Class::Answer) {
                h.write_u16(qtype);
            }
        }
        h.finish()
    }
}

fn classify(reply: &[u8]) -> Class {
    let header_rcode = reply.get(3).map_or(rcode::SERVFAIL, |b| u16::from(b & 0xF));
    let answers = match reply.get(6..8) {
        Some(count) => u16::from_be_bytes([count[0], count[1]]),
        None => 0,
    };
    match header_rcode {
        rcode::NOERROR if answers > 0 => Class::Answer,
        // A truncated answer has no records yet but is an answer.
        rcode::NOERROR if reply.get(2).is_some_and(|b| b & 0x02 != 0) => Class::Answer,
        rcode::NOERROR => Class::NoData,
        rcode::NXDOMAIN => Class::NxDomain,
        _ => Class::Error,
    }
}

/// The question name (wire form) and type of a reply.
fn question(reply: &[u8]) -> Option<(&[u8], u16)> {
    let end = answer::question_end(reply)?;
    Some((
        &reply[HEADER_LEN..end - 4],
        u16::from_be_bytes([reply[end - 4], reply[end - 3]]),
    ))
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix.min(128)))
        .unwrap_or(0)
}

/// Rewrites the reply in `out` as the slip of RRL: the header and question alone, TC set.
pub fn slip(out: &mut Vec<u8>) {
    answer::keep_question(out);
    if out.len() >= HEADER_LEN {
        out[2] |= 0x02; // TC
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrl(rate: u32, slip: u32) -> Rrl {
        Rrl::new(RrlConfig {
            rate,
            slip,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            whitelist: vec!["192.0.2.200/32".parse().expect("net")],
            table_size: 4096,
        })
    }

    /// A reply with the question `name` (wire form), `rcode` and `answers` records claimed.
    fn reply(name: &[u8], rcode: u8, answers: u16) -> Vec<u8> {
        let mut r = vec![0, 1, 0x84, rcode, 0, 1];
        r.extend_from_slice(&answers.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        r.extend_from_slice(name);
        r.extend_from_slice(&[0, 1, 0, 1]);
        r
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn beyond_the_rate_every_slip_th_is_slipped_and_the_rest_dropped() {
        let rrl = rrl(5, 2);
        let answer = reply(b"\x03web\x00", 0, 1);
        let verdicts: Vec<Verdict> = (0..11).map(|_| rrl.verdict(ip("192.0.2.1"), &answer)).collect();
        use Verdict::*;
        assert_eq!(
            verdicts,
            [Send, Send, Send, Send, Send, Drop, Slip, Drop, Slip, Drop, Slip]
        );
        assert_eq!(rrl.counters.slipped.load(Ordering::Relaxed), 3);
        assert_eq!(rrl.counters.dropped.load(Ordering::Relaxed), 3);
        // The same /24 shares the bucket; another /24, another name, another class do not.
        assert_eq!(rrl.verdict(ip("192.0.2.77"), &answer), Drop);
        assert_eq!(rrl.verdict(ip("192.0.3.1"), &answer), Send);
        assert_eq!(rrl.verdict(ip("192.0.2.1"), &reply(b"\x03api\x00", 0, 1)), Send);
        assert_eq!(rrl.verdict(ip("192.0.2.1"), &reply(b"\x03web\x00", 0, 0)), Send);
        // Whitelisted: never limited.
        for _ in 0..20 {
            assert_eq!(rrl.verdict(ip("192.0.2.200"), &answer), Send);
        }
    }

    #[test]
    fn the_slip_sequence_goes_on_past_sixty_five_thousand() {
        let rrl = rrl(1, 2);
        let answer = reply(b"\x03web\x00", 0, 1);
        let bucket = rrl.bucket(ip("192.0.2.1"), &answer);
        for _ in 0..70_000 {
            rrl.count(bucket, 0);
        }
        assert_eq!(rrl.count(bucket, 0), 70_001);
        assert_eq!(rrl.count(bucket, 1), 1, "a new second starts over");
    }

    #[test]
    fn nxdomain_shares_one_bucket_per_prefix_whatever_the_name() {
        let rrl = rrl(3, 0);
        let names: [&[u8]; 5] = [
            b"\x01a\x00",
            b"\x01b\x00",
            b"\x01c\x00",
            b"\x01d\x00",
            b"\x01e\x00",
        ];
        let verdicts: Vec<Verdict> = names
            .iter()
            .map(|n| rrl.verdict(ip("2001:db8:0:1::1"), &reply(n, 3, 0)))
            .collect();
        use Verdict::*;
        assert_eq!(verdicts, [Send, Send, Send, Drop, Drop], "slip 0 drops them all");
        // The same /56 shares it.
        assert_eq!(
            rrl.verdict(ip("2001:db8:0:ff::1"), &reply(b"\x01f\x00", 3, 0)),
            Drop
        );
        assert_eq!(
            rrl.verdict(ip("2001:db8:1:0::1"), &reply(b"\x01f\x00", 3, 0)),
            Send
        );
    }

    #[test]
    fn a_slip_is_the_question_with_tc() {
        let mut out = reply(b"\x03web\x00", 0, 2);
        out.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 1, 2, 3, 4]);
        slip(&mut out);
        assert_eq!(out, {
            let mut want = reply(b"\x03web\x00", 0, 0);
            want[2] |= 0x02;
            want
        });
        let mut bare = vec![0, 1, 0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        slip(&mut bare);
        assert_eq!(bare, [0, 1, 0x82, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
