//! Placement at scale (issues 3 and 9).
//!
//! The cluster: 1,000 nodes; services of 10 containers, half `emptiest_node`, half
//! `high_availability`, one in ten with a fixed host port, most with a dynamic one and a memory
//! limit. Two sizes: 1,000 services (10,000 containers) and, unless `PLACEMENT_BENCH_1M=0`,
//! 100,000 services (1,000,000 containers).
//!
//! Measured: placing a whole stack of 1,000 services from scratch; on an index kept between
//! plans as the control plane keeps it, scaling one service up by one, applying a new stack of
//! 10 services × 10 containers, and a Reconcile after ten nodes were lost (the 10k cluster
//! only: at 1M it moves 10,000 containers). A kept-index plan costs what it changes, so the
//! scale and stack rows should be about the same at both sizes.
//!
//! `cargo bench --bench placement -- --quick`

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use stackdns::model::{Label, PortSpec, Protocol, ServiceKey, Strategy};
use stackdns::placement::{
    Assignment, Change, DEFAULT_DYNAMIC_PORTS, Index, Input, Lists, NodeInfo, ServiceSpec, plan,
};

const NODES: usize = 1_000;
const SERVICES: usize = 1_000;
const PER_SERVICE: u32 = 10;
/// Services in the large cluster: 1,000,000 containers.
const SERVICES_1M: usize = 100_000;

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
            memory_mb: Some(512 * 1024),
            tenants: None,
        })
        .collect()
}

fn services(stack: &str, count: usize) -> Vec<ServiceSpec> {
    (0..count)
        .map(|i| {
            let mut ports = vec![PortSpec {
                container_port: 8080,
                host_port: None,
                protocol: Protocol::Tcp,
            }];
            if i % 10 == 0 {
                // One service in ten, over count / 50 ports (odd, so that the `ssd` services,
                // every fifth of these, spread over all of them): at most 500 containers per
                // port, about one node in two.
                let spread = (count / 50) | 1;
                let fixed = 9000 + u16::try_from((i / 10) % spread).unwrap_or(0);
                ports.push(PortSpec {
                    container_port: 80,
                    host_port: Some(fixed),
                    protocol: Protocol::Tcp,
                });
            }
            ServiceSpec {
                key: ServiceKey {
                    user: label("bench"),
                    stack: label(stack),
                    service: label(&format!("svc-{i:05}")),
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

fn apply(stack: &str, services: Vec<ServiceSpec>) -> Change {
    Change::Apply {
        user: label("bench"),
        stack: label(stack),
        services,
    }
}

/// A cluster of `count` services placed by the engine, as a kept index and its declared specs.
fn cluster(nodes: &[NodeInfo], count: usize) -> (Index, Vec<ServiceSpec>) {
    let mut index = Index::build(nodes, [], &DEFAULT_DYNAMIC_PORTS);
    let specs = services("big", count);
    let started = std::time::Instant::now();
    let plan = index
        .plan(&Lists::of(&[], &[]), &apply("big", specs), false)
        .expect("the cluster fits");
    index.apply(&plan);
    eprintln!(
        "{} containers placed and applied in {:?}",
        index.len(),
        started.elapsed()
    );
    assert_eq!(index.len(), count * PER_SERVICE as usize);
    let declared = plan.services.into_iter().filter_map(|(_, s)| s).collect();
    (index, declared)
}

/// The kept-index rows for one cluster size.
fn kept(c: &mut Criterion, nodes: &[NodeInfo], count: usize, size: &str) {
    let (mut index, declared) = cluster(nodes, count);
    let mut group = c.benchmark_group(format!("placement {size}"));
    group.sample_size(20);
    let scale = Change::Scale {
        service: declared[1].key.clone(),
        target: PER_SERVICE + 1,
    };
    let lists = Lists::of(&declared, &[]);
    group.bench_function("scale one service, kept index", |b| {
        b.iter(|| {
            index
                .plan(black_box(&lists), black_box(&scale), false)
                .expect("fits")
        })
    });
    let new_stack = apply("new", services("new", 10));
    group.bench_function("apply a new stack of 10 x 10, kept index", |b| {
        b.iter(|| {
            index
                .plan(black_box(&lists), black_box(&new_stack), false)
                .expect("fits")
        })
    });
    group.bench_function("scale one service and apply it, kept index", |b| {
        b.iter(|| {
            let plan = index.plan(&lists, &scale, false).expect("fits");
            index.apply(black_box(&plan));
            // Back to the cluster the next iteration expects.
            let back: Vec<_> = (plan.assignments.iter().rev())
                .map(|c| stackdns::placement::ContainerChange {
                    container: c.container.clone(),
                    before: c.after.clone(),
                    after: c.before.clone(),
                })
                .collect();
            index.apply(&stackdns::placement::Plan {
                assignments: back,
                ..plan
            });
        })
    });
    group.finish();
}

fn bench(c: &mut Criterion) {
    let nodes = nodes();
    let specs = services("big", SERVICES);
    let change = apply("big", specs);
    let empty = Input::new(&nodes, &[], &[]);

    let full = plan(&empty, &change).expect("10,000 containers fit");
    assert_eq!(full.assignments.len(), SERVICES * PER_SERVICE as usize);
    let assignments: Vec<Assignment> = full.assignments.into_iter().filter_map(|c| c.after).collect();
    let declared: Vec<ServiceSpec> = full.services.into_iter().filter_map(|(_, s)| s).collect();

    let mut group = c.benchmark_group("placement");
    group.sample_size(20);
    group.bench_function("apply 1,000 services x 10 on 1,000 nodes", |b| {
        b.iter(|| plan(black_box(&empty), black_box(&change)).expect("fits"))
    });
    let mut lost = nodes.clone();
    for node in lost.iter_mut().step_by(100) {
        node.live = false;
    }
    let input = Input::new(&lost, &declared, &assignments);
    group.bench_function("reconcile after losing 10 of 1,000 nodes (index built)", |b| {
        b.iter(|| plan(black_box(&input), black_box(&Change::Reconcile)).expect("never fails"))
    });
    group.finish();

    kept(c, &nodes, SERVICES, "10k containers");
    if std::env::var("PLACEMENT_BENCH_1M").as_deref() != Ok("0") {
        kept(c, &nodes, SERVICES_1M, "1M containers");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
