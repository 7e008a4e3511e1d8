//! Properties over random clusters and random sequences of changes.
//!
//! After every change the invariants of design §5 hold: no host port twice on a node, no node
//! over its memory, tags honoured, only live nodes receive containers, every service at its
//! target (a plan is complete or an error, never partial), scaling stable, the same input
//! giving the same plan whatever the order of its slices.

use proptest::prelude::*;
use proptest::strategy::Strategy as Gen;

use super::*;
use crate::model::Strategy;

const TAGS: [&str; 3] = ["a", "b", "c"];
const NAMES: [&str; 4] = ["api", "db", "lb", "web"];
const STACKS: [&str; 2] = ["one", "two"];
const FIXED: [&str; 4] = ["80:80", "443:443", "80:80/udp", "53:53/udp"];
const DYNAMIC: [&str; 2] = ["80", "53/udp"];
/// Small, so that running out of dynamic ports happens too.
const RANGE: std::ops::RangeInclusive<u16> = 40000..=40011;

fn arb_node(i: usize) -> impl Gen<Value = NodeInfo> {
    (
        prop::bool::weighted(0.8),
        prop::collection::vec(prop::bool::weighted(0.4), TAGS.len()),
        prop::option::weighted(0.5, 1u64..=8),
        0usize..3,
        0usize..3,
    )
        .prop_map(move |(live, tags, memory, region, provider)| {
            let mut n = node(&format!("n{i:02}"));
            n.live = live;
            n.tags = TAGS
                .iter()
                .zip(tags)
                .filter(|(_, on)| *on)
                .map(|(t, _)| label(t))
                .collect();
            n.memory_mb = memory.map(|m| m * 256);
            if region > 0 {
                n.labels.insert("region".into(), format!("r{region}"));
            }
            if provider > 0 {
                n.labels.insert("provider".into(), format!("p{provider}"));
            }
            n
        })
}

fn arb_nodes() -> impl Gen<Value = Vec<NodeInfo>> {
    (1usize..20).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>())
}

fn arb_strategy() -> impl Gen<Value = Strategy> {
    prop_oneof![
        4 => Just(Strategy::EmptiestNode),
        4 => Just(Strategy::HighAvailability),
        1 => Just(Strategy::EveryNode),
    ]
}

/// A service of stack `one`; [`stacked`] moves it to the stack it is applied to.
fn arb_service() -> impl Gen<Value = ServiceSpec> {
    (
        0usize..NAMES.len(),
        0u32..6,
        arb_strategy(),
        prop::collection::vec(prop::bool::weighted(0.15), 2),
        prop::option::weighted(0.3, 0usize..FIXED.len()),
        prop::option::weighted(0.4, 0usize..DYNAMIC.len()),
        prop::option::weighted(0.4, 1u64..=4),
        0u64..2,
    )
        .prop_map(|(name, target, strategy, tags, fixed, dynamic, memory, hash)| {
            let mut spec = svc(NAMES[name], target)
                .stack(STACKS[0])
                .strategy(strategy)
                .hash(hash);
            spec.tags = TAGS
                .iter()
                .zip(tags)
                .filter(|(_, on)| *on)
                .map(|(t, _)| label(t))
                .collect();
            let fixed = fixed.map(|i| FIXED[i]);
            spec.ports = fixed
                .into_iter()
                .chain(dynamic.map(|i| DYNAMIC[i]))
                .map(port)
                .collect();
            spec.mem_limit_mb = memory.map(|m| m * 256);
            spec
        })
}

#[derive(Clone, Debug)]
enum Op {
    Apply(usize, Vec<ServiceSpec>),
    /// The n-th declared service (modulo their number), a new target.
    Scale(usize, u32),
    Toggle(usize),
    Reconcile,
    Delete(usize),
}

fn arb_op() -> impl Gen<Value = Op> {
    prop_oneof![
        4 => (0..STACKS.len(), prop::collection::vec(arb_service(), 0..4)).prop_map(|(s, v)| Op::Apply(s, v)),
        3 => (0usize..16, 0u32..9).prop_map(|(n, t)| Op::Scale(n, t)),
        2 => (0usize..20).prop_map(Op::Toggle),
        2 => Just(Op::Reconcile),
        1 => (0..STACKS.len()).prop_map(Op::Delete),
    ]
}

/// The services moved to stack `stack`, one per name.
fn stacked(stack: usize, services: Vec<ServiceSpec>) -> Vec<ServiceSpec> {
    let mut seen = BTreeSet::new();
    services
        .into_iter()
        .filter(|s| seen.insert(s.key.service.clone()))
        .map(|s| s.stack(STACKS[stack]))
        .collect()
}

fn change_of(world: &mut World, op: Op) -> Option<Change> {
    let user = label("honeniq");
    Some(match op {
        Op::Apply(s, services) => Change::Apply {
            user,
            stack: label(STACKS[s]),
            services: stacked(s, services),
        },
        Op::Scale(n, target) => {
            // Mostly a declared service; with none declared, an unknown one.
            let service = match world.services.len() {
                0 => service_key(STACKS[0], NAMES[n % NAMES.len()]),
                len => world.services[n % len].key.clone(),
            };
            Change::Scale { service, target }
        }
        Op::Reconcile => Change::Reconcile,
        Op::Delete(s) => Change::DeleteStack {
            user,
            stack: label(STACKS[s]),
        },
        Op::Toggle(i) => {
            let len = world.nodes.len();
            let node = &mut world.nodes[i % len];
            node.live = !node.live;
            return None;
        }
    })
}

/// Checks every invariant of one successful plan made from `before`.
fn check_plan(before: &World, change: &Change, plan: &Full) -> Result<(), TestCaseError> {
    let nodes: BTreeMap<&Label, &NodeInfo> = before.nodes.iter().map(|n| (&n.name, n)).collect();
    let services: BTreeMap<&ServiceKey, &ServiceSpec> = plan.services.iter().map(|s| (&s.key, s)).collect();
    let old: BTreeMap<&ContainerKey, &Assignment> =
        before.assignments.iter().map(|a| (&a.container, a)).collect();
    let mut ports = BTreeSet::new();
    let mut memory: BTreeMap<&Label, u64> = BTreeMap::new();
    let mut every_node = BTreeSet::new();
    let mut count: BTreeMap<&ServiceKey, u32> = BTreeMap::new();
    for a in &plan.assignments {
        let node = nodes
            .get(&a.node)
            .ok_or_else(|| TestCaseError::fail(format!("{a:?} on an unknown node")))?;
        let spec = services
            .get(&a.service)
            .ok_or_else(|| TestCaseError::fail(format!("{a:?} of no service")))?;
        *count.entry(&a.service).or_default() += 1;
        prop_assert!(spec.tags.is_subset(&node.tags), "tags not honoured: {a:?}");
        prop_assert_eq!(a.ports.len(), spec.ports.len());
        for (p, declared) in a.ports.iter().zip(&spec.ports) {
            let host = p
                .host_port
                .ok_or_else(|| TestCaseError::fail("a host port is always chosen"))?;
            prop_assert!(declared.host_port.is_none_or(|h| h == host));
            prop_assert!(
                declared.host_port.is_some() || RANGE.contains(&host),
                "dynamic port out of range"
            );
            prop_assert!(
                ports.insert((&a.node, host, p.protocol)),
                "host port {host} twice on {}",
                a.node
            );
        }
        *memory.entry(&a.node).or_default() += a.mem_limit_mb.unwrap_or(0);
        if spec.strategy == Strategy::EveryNode {
            prop_assert!(
                every_node.insert((&a.service, &a.node)),
                "two of an every_node service on one node"
            );
        }
        match old.get(&a.container) {
            None => prop_assert!(node.live, "new container on a node that is not live: {a:?}"),
            Some(o) if *o != a => {
                prop_assert!(
                    node.live,
                    "moved or redeployed onto a node that is not live: {a:?}"
                );
                prop_assert_eq!(a.generation, o.generation + 1);
            }
            Some(_) => {}
        }
    }
    // The lists say exactly what differs.
    let new: BTreeMap<&ContainerKey, &Assignment> =
        plan.assignments.iter().map(|a| (&a.container, a)).collect();
    let keys = |f: &dyn Fn(Option<&&Assignment>, Option<&&Assignment>) -> bool| -> Vec<ContainerKey> {
        let all: BTreeSet<&ContainerKey> = old.keys().chain(new.keys()).copied().collect();
        all.into_iter()
            .filter(|k| f(old.get(*k), new.get(*k)))
            .cloned()
            .collect()
    };
    prop_assert_eq!(&plan.added, &keys(&|o, n| o.is_none() && n.is_some()));
    prop_assert_eq!(&plan.removed, &keys(&|o, n| o.is_some() && n.is_none()));
    prop_assert_eq!(
        &plan.moved,
        &keys(&|o, n| o.zip(n).is_some_and(|(o, n)| o.node != n.node))
    );
    prop_assert_eq!(
        &plan.redeployed,
        &keys(&|o, n| o.zip(n).is_some_and(|(o, n)| o.node == n.node && o != n))
    );
    for (node, used) in memory {
        if let Some(cap) = nodes[node].memory_mb {
            prop_assert!(used <= cap, "{node}: {used} MB of {cap}");
        }
    }
    for spec in &plan.services {
        if spec.strategy != Strategy::EveryNode {
            let have = count.get(&spec.key).copied().unwrap_or(0);
            prop_assert_eq!(have, spec.target, "{} is complete", spec.key);
        }
    }
    if let Change::Scale { service, target } = change {
        let mut numbers: Vec<u32> = before
            .assignments
            .iter()
            .filter(|a| &a.service == service)
            .map(|a| {
                a.container
                    .name
                    .as_str()
                    .rsplit('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            })
            .collect();
        numbers.sort_unstable();
        let highest: Vec<u32> = numbers.iter().copied().skip(*target as usize).collect();
        let removed: Vec<u32> = plan
            .removed
            .iter()
            .map(|k| {
                k.name
                    .as_str()
                    .rsplit('-')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            })
            .collect();
        prop_assert_eq!(removed, highest, "scale-down removes the highest numbers");
        prop_assert!(
            plan.moved.is_empty() && plan.redeployed.is_empty(),
            "scaling moves nothing"
        );
        for a in &before.assignments {
            if !plan.removed.contains(&a.container) {
                prop_assert!(plan.assignments.contains(a), "scaling keeps {a:?}");
            }
        }
    }
    Ok(())
}

/// The same input, its slices in another order.
fn shuffled(world: &World) -> World {
    let mut other = world.clone();
    other.nodes.reverse();
    other.services.reverse();
    let half = other.assignments.len() / 2;
    other.assignments.rotate_left(half);
    other
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_over_sequences_of_changes(nodes in arb_nodes(), ops in prop::collection::vec(arb_op(), 1..14)) {
        let mut world = World::with_nodes(nodes);
        world.dynamic_ports = Some(RANGE);
        for op in ops {
            let Some(change) = change_of(&mut world, op) else { continue };
            let before = world.clone();
            let result = plan(&world.input(), &change);
            prop_assert_eq!(&result, &plan(&world.input(), &change), "deterministic");
            prop_assert_eq!(&result, &plan(&shuffled(&world).input(), &change), "independent of input order");
            match result {
                Ok(_) => {
                    let got = world.run(change.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    check_plan(&before, &change, &got)?;
                    if let Change::Apply { .. } = change {
                        let again = plan(&world.input(), &change).map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert!(!again.changes_containers(), "re-applying changes nothing");
                    }
                }
                Err(e) => {
                    prop_assert!(!matches!(change, Change::Reconcile | Change::DeleteStack { .. }), "{e}");
                    prop_assert!(!e.code().is_empty());
                    let known = ["unknown_service", "not_scalable", "invalid_service"];
                    prop_assert!(e.to_string().starts_with("cannot place ") || known.contains(&e.code()), "{e}");
                }
            }
        }
    }

    /// A single `high_availability` service placed from scratch: every node that could still
    /// take one more has at most one fewer than any node, and the plan fails only when the
    /// nodes together cannot hold the target.
    #[test]
    fn high_availability_spreads_evenly(
        nodes in arb_nodes(),
        target in 1u32..40,
        fixed in any::<bool>(),
        memory in prop::option::of(1u64..=4),
        tags in prop::collection::vec(prop::bool::weighted(0.3), 2),
    ) {
        let mut spec = svc("web", target).strategy(Strategy::HighAvailability);
        spec.ports = if fixed { vec![port("80:80")] } else { vec![port("80")] };
        spec.mem_limit_mb = memory.map(|m| m * 256);
        spec.tags = TAGS.iter().zip(tags).filter(|(_, on)| *on).map(|(t, _)| label(t)).collect();
        let mut world = World::with_nodes(nodes);
        let matching: Vec<NodeInfo> =
            world.nodes.iter().filter(|n| n.live && spec.tags.is_subset(&n.tags)).cloned().collect();
        // How many containers each matching node can hold on its own.
        let room = |n: &NodeInfo| -> u32 {
            let by_port = if fixed { 1 } else { u32::MAX };
            let by_memory = match (n.memory_mb, spec.mem_limit_mb) {
                (Some(cap), Some(need)) => u32::try_from(cap / need).unwrap_or(u32::MAX),
                _ => u32::MAX,
            };
            by_port.min(by_memory)
        };
        let total: u64 = matching.iter().map(|n| u64::from(room(n))).sum();
        let outcome = plan(&world.input(), &Change::Apply { user: label("honeniq"), stack: label("s"), services: vec![spec.clone()] });
        prop_assert_eq!(outcome.is_ok(), total >= u64::from(target), "fails only when the nodes cannot hold it: {:?}", outcome.err());
        if outcome.is_err() {
            return Ok(());
        }
        world.apply("s", vec![spec.clone()]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let on = |n: &NodeInfo| -> u32 { world.assignments.iter().filter(|a| a.node == n.name).count() as u32 };
        let most = matching.iter().map(&on).max().unwrap_or(0);
        let fewest_with_room = matching.iter().filter(|n| on(n) < room(n)).map(&on).min();
        if let Some(fewest) = fewest_with_room {
            prop_assert!(most <= fewest + 1, "uneven: {most} on one node, {fewest} on a node with room");
        }
    }

    /// Scaling up never touches what is already placed.
    #[test]
    fn scaling_up_keeps_every_assignment(nodes in arb_nodes(), first in 0u32..10, more in 1u32..10, spec in arb_service()) {
        let strategy = if spec.strategy == Strategy::EveryNode { Strategy::EmptiestNode } else { spec.strategy };
        let mut world = World::with_nodes(nodes);
        world.dynamic_ports = Some(RANGE);
        let spec = ServiceSpec { target: first, strategy, ..spec };
        if world.apply("one", vec![spec.clone()]).is_err() {
            return Ok(());
        }
        let before = world.assignments.clone();
        if let Ok(plan) = world.scale("one", spec.key.service.as_str(), first + more) {
            prop_assert_eq!(plan.added.len() as u32, more);
            for a in &before {
                prop_assert!(plan.assignments.contains(a));
            }
        } else {
            prop_assert_eq!(&world.assignments, &before, "a failed scale changes nothing");
        }
    }
}
