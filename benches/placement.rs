//! Placement at scale: 10,000 containers over 1,000 nodes (issue 3).
//!
//! Three measurements: placing a whole stack of 1,000 services × 10 containers from scratch
//! (half `emptiest_node`, half `high_availability`, one service in ten with a fixed host
//! port, most with a dynamic one and a memory limit); scaling one service in that full
//! cluster (what a PATCH costs: mostly indexing the 10,000 assignments); and a Reconcile after
//! ten nodes were lost (about 100 containers to move).
//!
//! `cargo bench --bench placement -- --quick`

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use stackdns::model::{Label, PortSpec, Protocol, ServiceKey, Strategy};
use stackdns::placement::{Assignment, Change, Input, NodeInfo, ServiceSpec, plan};

const NODES: usize = 1_000;
const SERVICES: usize = 1_000;
const PER_SERVICE: u32 = 10;

fn label(s: &str) -> Label {
    Label::parse("bench", s).expect("valid label")
}

fn nodes() -> Vec<NodeInfo> {
    (0..NODES)
        .map(|i| NodeInfo {
            name: label(&format!("node-{i:04}")),
            live: true,
            tags: if i % 4 == 0 {
                BTreeSet::from([label("ssd")])
            } else {
                BTreeSet::new()
            },
            labels: BTreeMap::from([
                ("region".to_owned(), format!("region-{}", i % 5)),
                ("provider".to_owned(), format!("provider-{}", i % 3)),
            ]),
            memory_mb: Some(64 * 1024),
            tenants: None,
        })
        .collect()
}

fn services() -> Vec<ServiceSpec> {
    (0..SERVICES)
        .map(|i| {
            let mut ports = vec![PortSpec {
                container_port: 8080,
                host_port: None,
                protocol: Protocol::Tcp,
            }];
            if i % 10 == 0 {
                // 100 services over 20 fixed ports: each port is on 50 services' 500 containers.
                let fixed = 9000 + u16::try_from(i % 200 / 10).unwrap_or(0);
                ports.push(PortSpec {
                    container_port: 80,
                    host_port: Some(fixed),
                    protocol: Protocol::Tcp,
                });
            }
            ServiceSpec {
                key: ServiceKey {
                    user: label("bench"),
                    stack: label("big"),
                    service: label(&format!("svc-{i:04}")),
                },
                target: PER_SERVICE,
                strategy: if i % 2 == 0 {
                    Strategy::EmptiestNode
                } else {
                    Strategy::HighAvailability
                },
                tags: if i % 50 == 0 {
                    BTreeSet::from([label("ssd")])
                } else {
                    BTreeSet::new()
                },
                ports,
                mem_limit_mb: if i % 3 == 0 { None } else { Some(256) },
                spec_hash: i as u64,
            }
        })
        .collect()
}

fn apply(services: Vec<ServiceSpec>) -> Change {
    Change::Apply {
        user: label("bench"),
        stack: label("big"),
        services,
    }
}

fn bench(c: &mut Criterion) {
    let nodes = nodes();
    let specs = services();
    let change = apply(specs.clone());
    let empty = Input::new(&nodes, &[], &[]);

    let full = plan(&empty, &change).expect("10,000 containers fit");
    assert_eq!(full.assignments.len(), SERVICES * PER_SERVICE as usize);
    let assignments: Vec<Assignment> = full.assignments;
    let declared = full.services;

    let mut group = c.benchmark_group("placement");
    group.sample_size(20);
    group.bench_function("apply 1,000 services x 10 on 1,000 nodes", |b| {
        b.iter(|| plan(black_box(&empty), black_box(&change)).expect("fits"))
    });

    let scale = Change::Scale {
        service: specs[1].key.clone(),
        target: PER_SERVICE + 1,
    };
    let input = Input::new(&nodes, &declared, &assignments);
    group.bench_function("scale one service among 10,000 containers", |b| {
        b.iter(|| plan(black_box(&input), black_box(&scale)).expect("fits"))
    });

    let mut lost = nodes.clone();
    for node in lost.iter_mut().step_by(100) {
        node.live = false;
    }
    let input = Input::new(&lost, &declared, &assignments);
    group.bench_function("reconcile after losing 10 of 1,000 nodes", |b| {
        b.iter(|| plan(black_box(&input), black_box(&Change::Reconcile)).expect("never fails"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
