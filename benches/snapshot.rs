//! What one container event costs the zone (issue 9): recomputing the names it touches and
//! publishing the next snapshot with its IXFR difference.
//!
//! A zone of `N` containers in services of 3 (the shared kit's shape), plus one service of
//! 10,000 containers. Each iteration starts one more container (or stops the one it started),
//! in the large service or in a service of one, and publishes: `event/<zone size>/<service size>`. The gap between the two
//! service sizes is what a write pays for the size of its service; the gap between zone sizes
//! what it pays for the zone's.
//!
//! `cargo bench --bench snapshot -- --quick` (the 1M zone takes a minute to build;
//! `SNAPSHOT_BENCH_SIZES=30000` for the small one only).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use stackdns::model::{ContainerKey, Label, Port, Protocol, ServiceKey};
use stackdns::snapshot::journal::JournalLimits;
use stackdns::snapshot::platform::Member;
use stackdns::snapshot::{Policy, Projection, Rotation};
use stackdns::zone::{Soa, StaticRecord, Zone, rtype};

const LARGE: usize = 10_000;
const PORTS: [Port; 1] = [Port {
    container_port: 80,
    host_port: Some(20000),
    protocol: Protocol::Tcp,
}];

fn label(s: &str) -> Label {
    Label::parse("bench", s).expect("valid label")
}

fn zone() -> Zone {
    let ns1 = b"\x03ns1\x07cluster\x04test\x00".to_vec();
    Zone {
        apex: b"\x07cluster\x04test\x00".to_vec(),
        soa: Soa {
            mname: ns1.clone(),
            rname: b"\x0ahostmaster\x07cluster\x04test\x00".to_vec(),
            file_serial: 1,
            refresh: 3600,
            retry: 600,
            expire: 86400,
            minimum: 30,
            ttl: 3600,
        },
        records: vec![StaticRecord {
            owner: vec![],
            rtype: rtype::NS,
            ttl: 3600,
            rdata: ns1,
        }],
    }
}

fn service(user: usize, stack: usize, name: &str) -> ServiceKey {
    ServiceKey {
        user: label(&format!("user-{user}")),
        stack: label(&format!("stack-{stack}")),
        service: label(name),
    }
}

fn key(s: &ServiceKey, i: usize) -> ContainerKey {
    ContainerKey {
        user: s.user.clone(),
        stack: s.stack.clone(),
        name: label(&format!("{}-{i}", s.service)),
    }
}

fn address(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + (i as u32 % 1000) + 1))
}

/// One service as the projection sees it: its containers' keys and addresses.
struct Service {
    key: ServiceKey,
    containers: Vec<(ContainerKey, IpAddr)>,
    /// Its size between events.
    base: usize,
}

impl Service {
    fn new(service: ServiceKey, n: usize) -> Self {
        let containers = (1..=n).map(|i| (key(&service, i), address(i))).collect();
        Service {
            key: service,
            containers,
            base: n,
        }
    }

    fn project(&self, p: &mut Projection) {
        let members: Vec<Member<'_>> = self
            .containers
            .iter()
            .map(|(k, a)| Member {
                key: k,
                address: Some(*a),
                ports: &PORTS,
            })
            .collect();
        p.service(&self.key, &members, None);
    }

    /// One container event, as the writer projects it: one more container starts or, if it
    /// runs, it goes (so the service keeps its size across iterations).
    fn event(&mut self, p: &mut Projection) {
        if self.containers.len() > self.base {
            if let Some((k, _)) = self.containers.pop() {
                p.container(&k, false, None);
            }
        } else {
            let i = self.containers.len() + 1;
            let k = key(&self.key, i);
            p.container(&k, true, Some(address(i)));
            self.containers.push((k, address(i)));
        }
        self.project(p);
    }
}

/// A projection of `containers` containers in services of three, plus one large service and
/// one service of one container.
fn build(containers: usize) -> (Projection, Service, Service) {
    let policy = Policy {
        ttl: 30,
        rotation: Rotation::Cyclic,
        max_answers: 0,
    };
    let limits = JournalLimits {
        diffs: 1000,
        bytes: 64 << 20,
    };
    let mut p = Projection::new(zone(), policy, limits);
    for s in 0..containers / 3 {
        let svc = Service::new(service(s % 10, s / 1000, &format!("svc-{}", s % 1000)), 3);
        for (k, a) in &svc.containers {
            p.container(k, true, Some(*a));
        }
        svc.project(&mut p);
    }
    let large = Service::new(service(0, 0, "wide"), LARGE);
    for (k, a) in &large.containers {
        p.container(k, true, Some(*a));
    }
    large.project(&mut p);
    let small = Service::new(service(0, 0, "single"), 1);
    for (k, a) in &small.containers {
        p.container(k, true, Some(*a));
    }
    small.project(&mut p);
    p.publish(2);
    (p, large, small)
}

fn events(c: &mut Criterion) {
    let sizes: Vec<usize> = std::env::var("SNAPSHOT_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![30_000, 1_000_000]);
    for size in sizes {
        let (mut p, mut large, mut small) = build(size);
        let mut serial = 3u32;
        for (name, svc) in [("10000", &mut large), ("1", &mut small)] {
            c.bench_function(&format!("event/{size}/{name}"), |b| {
                b.iter(|| {
                    svc.event(&mut p);
                    serial = serial.wrapping_add(1);
                    black_box(p.publish(serial));
                })
            });
        }
    }
}

criterion_group!(benches, events);
criterion_main!(benches);
