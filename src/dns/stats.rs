//! What the DNS listeners count, on the answer path: requests by transport and type, responses
//! by transport, type and rcode, response sizes, truncations.
//!
//! The answer path pays one relaxed atomic add per counter and takes no lock: every counter has
//! a fixed place in an array, found by a `match` on the type and the rcode, and each UDP worker
//! counts into a shard of its own (the streamed transports, which run on the async runtime,
//! share one more), so no two cores write the same cache line for the common case. The
//! `/metrics` handler adds the shards up when it is scraped and writes the Prometheus text
//! itself: the metrics library's histograms take one sample at a time into a shared queue,
//! which is the cost this module exists to avoid.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::wire::rcode;
use crate::zone::rtype;

/// What carried a message, as the `transport` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Udp,
    Tcp,
    Tls,
    Https,
    Quic,
}

const CHANNELS: [&str; 5] = ["udp", "tcp", "tls", "https", "quic"];

/// The `qtype` label values: the types a client asks for, then `other` (any type not listed)
/// and `none` (a message whose question could not be read).
const QTYPES: [&str; 22] = [
    "A", "NS", "CNAME", "SOA", "PTR", "MX", "TXT", "AAAA", "SRV", "NAPTR", "DS", "RRSIG", "NSEC", "DNSKEY",
    "SVCB", "HTTPS", "CAA", "ANY", "AXFR", "IXFR", "other", "none",
];
const QTYPE_OTHER: usize = 20;
/// The `qtype` of a message without a readable question.
pub const QTYPE_NONE: usize = 21;

/// The `rcode` label values (extended rcodes included), then `other`.
const RCODES: [&str; 10] = [
    "NOERROR",
    "FORMERR",
    "SERVFAIL",
    "NXDOMAIN",
    "NOTIMP",
    "REFUSED",
    "NOTAUTH",
    "BADVERS",
    "BADCOOKIE",
    "other",
];
const RCODE_NOTAUTH: u16 = 9;

/// Upper bounds of the response size buckets, bytes: the classic UDP limit, the EDNS sizes of
/// DNS flag day 2020 (1232) and of a typical Ethernet MTU, then stream sizes up to the maximum.
const SIZE_BOUNDS: [u32; 9] = [64, 128, 256, 512, 1232, 1472, 4096, 16384, 65535];
/// Buckets per channel: one per bound and one above the last (never used: a message is at most
/// 65535 bytes, but the histogram must say `+Inf`).
const SIZE_BUCKETS: usize = SIZE_BOUNDS.len() + 1;

const NC: usize = CHANNELS.len();
const NQ: usize = QTYPES.len();
const NR: usize = RCODES.len();

/// The index of `qtype` in the `qtype` labels.
pub fn qtype_index(qtype: u16) -> usize {
    match qtype {
        rtype::A => 0,
        rtype::NS => 1,
        rtype::CNAME => 2,
        rtype::SOA => 3,
        12 => 4, // PTR
        rtype::MX => 5,
        16 => 6, // TXT
        rtype::AAAA => 7,
        rtype::SRV => 8,
        35 => 9,   // NAPTR
        43 => 10,  // DS
        46 => 11,  // RRSIG
        47 => 12,  // NSEC
        48 => 13,  // DNSKEY
        64 => 14,  // SVCB
        65 => 15,  // HTTPS
        257 => 16, // CAA
        rtype::ANY => 17,
        rtype::AXFR => 18,
        rtype::IXFR => 19,
        _ => QTYPE_OTHER,
    }
}

fn rcode_index(rcode: u16) -> usize {
    match rcode {
        rcode::NOERROR => 0,
        rcode::FORMERR => 1,
        rcode::SERVFAIL => 2,
        rcode::NXDOMAIN => 3,
        rcode::NOTIMP => 4,
        rcode::REFUSED => 5,
        RCODE_NOTAUTH => 6,
        rcode::BADVERS => 7,
        super::cookie::BADCOOKIE => 8,
        _ => 9,
    }
}

fn size_bucket(len: usize) -> usize {
    SIZE_BOUNDS
        .iter()
        .position(|&bound| len <= bound as usize)
        .unwrap_or(SIZE_BOUNDS.len())
}

/// One writer's counters. Aligned so that two shards never share a cache line.
#[repr(align(128))]
pub struct Shard {
    requests: [AtomicU64; NC * NQ],
    responses: [AtomicU64; NC * NQ * NR],
    sizes: [AtomicU64; NC * SIZE_BUCKETS],
    size_sums: [AtomicU64; NC],
    truncated: [AtomicU64; NC],
}

fn zeros<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl Shard {
    fn new() -> Self {
        Self {
            requests: zeros(),
            responses: zeros(),
            sizes: zeros(),
            size_sums: zeros(),
            truncated: zeros(),
        }
    }

    /// A message arrived over `channel` asking for the type at `qtype` (see [`qtype_index`]).
    pub fn request(&self, channel: Channel, qtype: usize) {
        bump(&self.requests[channel as usize * NQ + qtype], 1);
    }

    /// A response went out over `channel`: its question's type, its (extended) rcode, and the
    /// message itself, for its size and its TC bit.
    pub fn response(&self, channel: Channel, qtype: usize, rcode: u16, message: &[u8]) {
        let c = channel as usize;
        bump(&self.responses[(c * NQ + qtype) * NR + rcode_index(rcode)], 1);
        bump(&self.sizes[c * SIZE_BUCKETS + size_bucket(message.len())], 1);
        bump(&self.size_sums[c], message.len() as u64);
        if message.get(2).is_some_and(|b| b & 0x02 != 0) {
            bump(&self.truncated[c], 1);
        }
    }
}

/// Every shard, and the Prometheus text of their sum.
#[derive(Clone)]
pub struct DnsCounters {
    shards: Arc<[Shard]>,
}

impl Default for DnsCounters {
    /// The shared shard alone.
    fn default() -> Self {
        Self::new(0)
    }
}

impl DnsCounters {
    /// Counters for `udp_workers` UDP threads (shards `0..udp_workers`) and one shared shard.
    pub fn new(udp_workers: usize) -> Self {
        Self {
            shards: (0..=udp_workers).map(|_| Shard::new()).collect(),
        }
    }

    /// The shard of UDP worker `i`.
    pub fn udp(&self, i: usize) -> &Shard {
        let last = self.shards.len() - 1;
        &self.shards[i.min(last)]
    }

    /// The shard every streamed transport shares.
    pub fn shared(&self) -> &Shard {
        &self.shards[self.shards.len() - 1]
    }

    fn sum(&self, field: impl Fn(&Shard) -> &[AtomicU64], i: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| field(s)[i].load(Ordering::Relaxed))
            .sum()
    }

    /// Appends the counters in Prometheus text format. Series that are still zero are left out,
    /// or the 1,100 combinations of transport, type and rcode would all be written; a series
    /// appears with its first event, which `rate()` and `increase()` do not see (alert on them
    /// with that in mind: docs/operations.md).
    pub fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP stackdns_dns_requests_total DNS messages received, by transport and question type.\n\
             # TYPE stackdns_dns_requests_total counter\n",
        );
        for (c, channel) in CHANNELS.iter().enumerate() {
            for (q, qtype) in QTYPES.iter().enumerate() {
                let n = self.sum(|s| &s.requests, c * NQ + q);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "stackdns_dns_requests_total{{transport=\"{channel}\",qtype=\"{qtype}\"}} {n}"
                    );
                }
            }
        }
        out.push_str(
            "# HELP stackdns_dns_responses_total DNS responses sent, by transport, question type and rcode \
             (extended rcodes included; zone transfers are counted in stackdns_dns_transfers_total).\n\
             # TYPE stackdns_dns_responses_total counter\n",
        );
        for (c, channel) in CHANNELS.iter().enumerate() {
            for (q, qtype) in QTYPES.iter().enumerate() {
                for (r, rcode) in RCODES.iter().enumerate() {
                    let n = self.sum(|s| &s.responses, (c * NQ + q) * NR + r);
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "stackdns_dns_responses_total{{transport=\"{channel}\",qtype=\"{qtype}\",rcode=\"{rcode}\"}} {n}"
                        );
                    }
                }
            }
        }
        out.push_str(
            "# HELP stackdns_dns_response_size_bytes Size of the DNS responses sent, by transport.\n\
             # TYPE stackdns_dns_response_size_bytes histogram\n",
        );
        for (c, channel) in CHANNELS.iter().enumerate() {
            let counts: Vec<u64> = (0..SIZE_BUCKETS)
                .map(|b| self.sum(|s| &s.sizes, c * SIZE_BUCKETS + b))
                .collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (bound, count) in SIZE_BOUNDS.iter().zip(&counts) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "stackdns_dns_response_size_bytes_bucket{{transport=\"{channel}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let sum = self.sum(|s| &s.size_sums, c);
            let _ = writeln!(
                out,
                "stackdns_dns_response_size_bytes_bucket{{transport=\"{channel}\",le=\"+Inf\"}} {total}\n\
                 stackdns_dns_response_size_bytes_sum{{transport=\"{channel}\"}} {sum}\n\
                 stackdns_dns_response_size_bytes_count{{transport=\"{channel}\"}} {total}"
            );
        }
        out.push_str(
            "# HELP stackdns_dns_truncated_total Responses sent with the TC bit (the answer did not fit; \
             the client retries over TCP), by transport.\n\
             # TYPE stackdns_dns_truncated_total counter\n",
        );
        for (c, channel) in CHANNELS.iter().enumerate() {
            let _ = writeln!(
                out,
                "stackdns_dns_truncated_total{{transport=\"{channel}\"}} {}",
                self.sum(|s| &s.truncated, c)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(len: usize, tc: bool) -> Vec<u8> {
        let mut m = vec![0u8; len];
        if tc {
            m[2] = 0x82;
        }
        m
    }

    #[test]
    fn shards_add_up_and_the_text_says_what_was_counted() {
        let counters = DnsCounters::new(2);
        counters.udp(0).request(Channel::Udp, qtype_index(rtype::A));
        counters.udp(1).request(Channel::Udp, qtype_index(rtype::A));
        counters.udp(0).response(
            Channel::Udp,
            qtype_index(rtype::A),
            rcode::NOERROR,
            &reply(100, false),
        );
        counters.udp(1).response(
            Channel::Udp,
            qtype_index(rtype::A),
            rcode::NOERROR,
            &reply(600, true),
        );
        counters.shared().request(Channel::Https, qtype_index(4711));
        counters.shared().response(
            Channel::Https,
            qtype_index(4711),
            rcode::BADVERS,
            &reply(40, false),
        );
        counters.shared().request(Channel::Tcp, QTYPE_NONE);
        let mut text = String::new();
        counters.render(&mut text);
        for line in [
            "stackdns_dns_requests_total{transport=\"udp\",qtype=\"A\"} 2",
            "stackdns_dns_requests_total{transport=\"https\",qtype=\"other\"} 1",
            "stackdns_dns_requests_total{transport=\"tcp\",qtype=\"none\"} 1",
            "stackdns_dns_responses_total{transport=\"udp\",qtype=\"A\",rcode=\"NOERROR\"} 2",
            "stackdns_dns_responses_total{transport=\"https\",qtype=\"other\",rcode=\"BADVERS\"} 1",
            "stackdns_dns_response_size_bytes_bucket{transport=\"udp\",le=\"64\"} 0",
            "stackdns_dns_response_size_bytes_bucket{transport=\"udp\",le=\"128\"} 1",
            "stackdns_dns_response_size_bytes_bucket{transport=\"udp\",le=\"512\"} 1",
            "stackdns_dns_response_size_bytes_bucket{transport=\"udp\",le=\"1232\"} 2",
            "stackdns_dns_response_size_bytes_bucket{transport=\"udp\",le=\"+Inf\"} 2",
            "stackdns_dns_response_size_bytes_sum{transport=\"udp\"} 700",
            "stackdns_dns_response_size_bytes_count{transport=\"udp\"} 2",
            "stackdns_dns_truncated_total{transport=\"udp\"} 1",
            "stackdns_dns_truncated_total{transport=\"https\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(
            !text.contains("transport=\"quic\",qtype"),
            "zero series are left out"
        );
    }

    #[test]
    fn every_label_table_is_indexed_in_range() {
        for t in 0..=u16::MAX {
            assert!(qtype_index(t) < QTYPE_NONE);
            assert!(rcode_index(t) < NR);
        }
        assert_eq!(size_bucket(0), 0);
        assert_eq!(size_bucket(65535), SIZE_BOUNDS.len() - 1);
        assert_eq!(size_bucket(70000), SIZE_BOUNDS.len());
        assert_eq!(QTYPES[QTYPE_OTHER], "other");
    }
}
