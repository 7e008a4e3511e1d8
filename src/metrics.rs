//! The control plane's and the transfers' metrics, on the `metrics` crate with its Prometheus
//! recorder: write→visible latency, commits, lease expiries, placement refusals, HTTP requests,
//! zone transfers and NOTIFY per secondary.
//!
//! The recorder is this server's own, not the process-wide one, so two servers in one process
//! (the tests) never mix their figures. The answer path's counters are not here: they are
//! [`dns::stats`](crate::dns::stats), which costs less per query than a histogram sample.
//! `/metrics` writes both, and the zone and fleet gauges (`api`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use metrics::{Counter, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

const WRITE_VISIBLE: &str = "stackdns_write_visible_seconds";
const COMMIT_SECONDS: &str = "stackdns_commit_duration_seconds";
const COMMIT_WRITES: &str = "stackdns_commit_writes";
const COMMIT_FAILURES: &str = "stackdns_commit_failures_total";
const LEASE_EXPIRIES: &str = "stackdns_lease_expiries_total";
const PLACEMENT_REFUSALS: &str = "stackdns_placement_refusals_total";
const HTTP_REQUESTS: &str = "stackdns_http_requests_total";
const HTTP_SECONDS: &str = "stackdns_http_request_duration_seconds";
const TRANSFERS: &str = "stackdns_dns_transfers_total";
const SECONDARY_SERIAL: &str = "stackdns_dns_secondary_serial";
const NOTIFIES: &str = "stackdns_dns_notify_total";

/// Secondaries told apart by address, in the labels and for the dashboard; transfers from any
/// further address (a wide `--allow-transfer`, a TSIG key used from everywhere) are counted
/// under `secondary="other"`, so no peer can grow the series without bound.
const MAX_SECONDARIES: usize = 64;

/// Latency buckets, seconds: sub-millisecond commits up to a slow disk's seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Writes per commit: one alone up to the writer's largest batch (4096).
const BATCH_BUCKETS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 4096.0,
];

static METADATA: Metadata<'static> = Metadata::new("stackdns", Level::INFO, Some(module_path!()));

/// What a secondary last transferred.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transferred {
    pub serial: u32,
    /// `AXFR`, `IXFR`, `IXFR (whole zone)` or `IXFR (up to date)`, as the transfer log says it.
    pub kind: &'static str,
    pub at: SystemTime,
}

/// The `kind` label of a transfer whose log line says `kind`.
fn kind_label(kind: &str) -> &'static str {
    match kind {
        "AXFR" => "axfr",
        "IXFR" => "ixfr",
        "IXFR (whole zone)" => "ixfr_whole_zone",
        "IXFR (up to date)" => "ixfr_up_to_date",
        _ => "other",
    }
}

/// The server's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    write_visible: Histogram,
    commit_seconds: Histogram,
    commit_writes: Histogram,
    commit_failures: Counter,
    lease_expiries: Counter,
    secondaries: Mutex<BTreeMap<IpAddr, Transferred>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut builder = PrometheusBuilder::new();
        for (name, buckets) in [
            (WRITE_VISIBLE, &LATENCY_BUCKETS[..]),
            (COMMIT_SECONDS, &LATENCY_BUCKETS[..]),
            (HTTP_SECONDS, &LATENCY_BUCKETS[..]),
            (COMMIT_WRITES, &BATCH_BUCKETS[..]),
        ] {
            // Only an empty bucket list is refused, and none of these is empty.
            builder = match builder.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets) {
                Ok(b) => b,
                Err(_) => unreachable!("bucket lists are not empty"),
            };
        }
        let recorder = builder.build_recorder();
        let describe = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            recorder.describe_histogram(KeyName::from_const_str(name), unit, SharedString::const_str(help));
        };
        describe(
            WRITE_VISIBLE,
            Some(Unit::Seconds),
            "From a write reaching the writer's queue to the snapshot with it being published (DNS answers with it).",
        );
        describe(
            COMMIT_SECONDS,
            Some(Unit::Seconds),
            "Durable commits of a batch to the store (one fsync).",
        );
        describe(
            COMMIT_WRITES,
            None,
            "Writes folded into one commit (group commit).",
        );
        describe(
            COMMIT_FAILURES,
            None,
            "Commits the store refused; each batch's writes were answered with an error.",
        );
        describe(
            LEASE_EXPIRIES,
            None,
            "Node leases that lapsed: the node became lost and its containers left DNS.",
        );
        describe(
            PLACEMENT_REFUSALS,
            None,
            "Requests placement could not satisfy, by error code (nothing was changed).",
        );
        describe(
            HTTP_REQUESTS,
            None,
            "HTTP API requests, by route, method and status.",
        );
        describe(
            HTTP_SECONDS,
            Some(Unit::Seconds),
            "HTTP API request durations by route (blocking assignment queries last up to their wait).",
        );
        describe(
            TRANSFERS,
            None,
            "Zone transfers served, by secondary (its address), kind, transport and result.",
        );
        describe(
            SECONDARY_SERIAL,
            None,
            "The zone serial each secondary last transferred completely.",
        );
        describe(
            NOTIFIES,
            None,
            "NOTIFY rounds by secondary and outcome (acknowledged, refused, unanswered).",
        );
        let handle = recorder.handle();
        let histogram = |name| recorder.register_histogram(&Key::from_static_name(name), &METADATA);
        let counter = |name| recorder.register_counter(&Key::from_static_name(name), &METADATA);
        Self(Arc::new(Inner {
            write_visible: histogram(WRITE_VISIBLE),
            commit_seconds: histogram(COMMIT_SECONDS),
            commit_writes: histogram(COMMIT_WRITES),
            commit_failures: counter(COMMIT_FAILURES),
            lease_expiries: counter(LEASE_EXPIRIES),
            handle,
            recorder,
            secondaries: Mutex::new(BTreeMap::new()),
        }))
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.0
            .recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    /// A write became visible in DNS `after` it was queued.
    pub fn write_visible(&self, after: Duration) {
        self.0.write_visible.record(after.as_secs_f64());
    }

    /// A batch of `writes` writes was committed in `took`.
    pub fn committed(&self, writes: usize, took: Duration) {
        self.0.commit_seconds.record(took.as_secs_f64());
        self.0.commit_writes.record(writes as f64);
    }

    /// The store refused a commit.
    pub fn commit_failed(&self) {
        self.0.commit_failures.increment(1);
    }

    /// `nodes` leases lapsed.
    pub fn leases_expired(&self, nodes: u64) {
        self.0.lease_expiries.increment(nodes);
    }

    /// Placement refused a request with the error code `code`.
    pub fn placement_refused(&self, code: &'static str) {
        self.counter(PLACEMENT_REFUSALS, vec![Label::from_static_parts("code", code)])
            .increment(1);
    }

    /// An HTTP request to `route` (the matched path template) was answered `status` in `took`.
    pub fn http_request(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.counter(
            HTTP_REQUESTS,
            vec![
                Label::new("route", route.to_owned()),
                Label::new("method", method.to_owned()),
                Label::new("status", status.to_string()),
            ],
        )
        .increment(1);
        self.0
            .recorder
            .register_histogram(
                &Key::from_parts(HTTP_SECONDS, vec![Label::new("route", route.to_owned())]),
                &METADATA,
            )
            .record(took.as_secs_f64());
    }

    /// A zone transfer to `secondary` ended: `complete` if every message was sent, which
    /// makes `serial` what the secondary now has.
    pub fn transfer(&self, secondary: IpAddr, kind: &'static str, tls: bool, serial: u32, complete: bool) {
        let mut secondaries = self.0.secondaries.lock().unwrap_or_else(|p| p.into_inner());
        let known = secondaries.contains_key(&secondary) || secondaries.len() < MAX_SECONDARIES;
        let name = if known {
            secondary.to_string()
        } else {
            "other".to_owned()
        };
        self.counter(
            TRANSFERS,
            vec![
                Label::new("secondary", name.clone()),
                Label::from_static_parts("kind", kind_label(kind)),
                Label::from_static_parts("transport", if tls { "tls" } else { "tcp" }),
                Label::from_static_parts("result", if complete { "complete" } else { "failed" }),
            ],
        )
        .increment(1);
        if complete && known {
            self.0
                .recorder
                .register_gauge(
                    &Key::from_parts(SECONDARY_SERIAL, vec![Label::new("secondary", name)]),
                    &METADATA,
                )
                .set(f64::from(serial));
            secondaries.insert(
                secondary,
                Transferred {
                    serial,
                    kind,
                    at: SystemTime::now(),
                },
            );
        }
    }

    /// Writes the NOTIFY series of `secondary` at zero, so that the first unanswered round is
    /// an increase Prometheus can see.
    pub fn notify_target(&self, secondary: SocketAddr) {
        for outcome in ["acknowledged", "refused", "unanswered"] {
            self.notify_counter(secondary, outcome).absolute(0);
        }
    }

    fn notify_counter(&self, secondary: SocketAddr, outcome: &'static str) -> Counter {
        self.counter(
            NOTIFIES,
            vec![
                Label::new("secondary", secondary.to_string()),
                Label::from_static_parts("outcome", outcome),
            ],
        )
    }

    /// A round of NOTIFY to `secondary` ended with `outcome`.
    pub fn notify(&self, secondary: SocketAddr, outcome: &'static str) {
        self.notify_counter(secondary, outcome).increment(1);
    }

    /// What each secondary last transferred completely, by address.
    pub fn secondaries(&self) -> Vec<(IpAddr, Transferred)> {
        let secondaries = self.0.secondaries.lock().unwrap_or_else(|p| p.into_inner());
        secondaries.iter().map(|(a, t)| (*a, t.clone())).collect()
    }

    /// Appends every metric here in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        out.push_str(&self.0.handle.render());
    }

    /// Moves recorded histogram samples into their buckets, so they do not pile up between
    /// scrapes (or forever, when nothing scrapes); run every few seconds.
    pub fn upkeep(&self) {
        self.0.handle.run_upkeep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_recorded_is_rendered_with_its_help_and_type() {
        let metrics = Metrics::new();
        metrics.write_visible(Duration::from_micros(1500));
        metrics.committed(3, Duration::from_micros(700));
        metrics.leases_expired(2);
        metrics.placement_refused("port_conflict");
        metrics.http_request("/v1/nodes", "GET", 200, Duration::from_millis(3));
        let secondary: IpAddr = "127.0.0.3".parse().expect("ip");
        metrics.transfer(secondary, "IXFR", true, 42, true);
        metrics.notify("127.0.0.3:53".parse().expect("addr"), "acknowledged");
        metrics.upkeep();
        let mut text = String::new();
        metrics.render(&mut text);
        for line in [
            "# TYPE stackdns_write_visible_seconds histogram",
            "stackdns_write_visible_seconds_bucket{le=\"0.001\"} 0",
            "stackdns_write_visible_seconds_bucket{le=\"0.002\"} 1",
            "stackdns_write_visible_seconds_count 1",
            "stackdns_commit_writes_bucket{le=\"5\"} 1",
            "stackdns_lease_expiries_total 2",
            "stackdns_placement_refusals_total{code=\"port_conflict\"} 1",
            "stackdns_http_requests_total{route=\"/v1/nodes\",method=\"GET\",status=\"200\"} 1",
            "stackdns_http_request_duration_seconds_count{route=\"/v1/nodes\"} 1",
            "stackdns_dns_transfers_total{secondary=\"127.0.0.3\",kind=\"ixfr\",transport=\"tls\",result=\"complete\"} 1",
            "stackdns_dns_secondary_serial{secondary=\"127.0.0.3\"} 42",
            "stackdns_dns_notify_total{secondary=\"127.0.0.3:53\",outcome=\"acknowledged\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("# HELP stackdns_write_visible_seconds From a write"));
        assert_eq!(metrics.secondaries()[0].1.serial, 42);
    }

    #[test]
    fn secondaries_beyond_the_bound_share_one_label() {
        let metrics = Metrics::new();
        for i in 0..200u32 {
            let peer = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            metrics.transfer(peer, "AXFR", false, 7, true);
        }
        assert_eq!(metrics.secondaries().len(), MAX_SECONDARIES);
        let mut text = String::new();
        metrics.render(&mut text);
        let other = "stackdns_dns_transfers_total{secondary=\"other\",kind=\"axfr\",transport=\"tcp\",result=\"complete\"} 136";
        assert!(text.lines().any(|l| l == other), "{text}");
        assert_eq!(
            text.matches("stackdns_dns_secondary_serial{").count(),
            MAX_SECONDARIES
        );
    }
}
