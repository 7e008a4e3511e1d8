//! How services live: scaling, re-applying, redeploying, removing, and following nodes
//! through Reconcile.

use super::*;

#[test]
fn scaling_up_keeps_containers_and_down_removes_the_highest() {
    let mut world = World::with_nodes(vec![node("a"), node("b")]);
    world
        .apply("s", vec![svc("web", 1).ports(&["80"])])
        .expect("apply");
    let first = world.get("web-1").clone();
    let plan = world.scale("s", "web", 3).expect("up");
    assert_eq!(names(&plan.added), ["web-2", "web-3"]);
    assert!(plan.moved.is_empty() && plan.redeployed.is_empty() && plan.removed.is_empty());
    assert_eq!(world.get("web-1"), &first);
    let before: Vec<Assignment> = world.assignments.clone();
    let plan = world.scale("s", "web", 1).expect("down");
    assert_eq!(names(&plan.removed), ["web-2", "web-3"]);
    assert_eq!(world.assignments, before[..1]);
    assert_eq!(world.services[0].target, 1, "the plan declares the new target");
    // Names come back, fenced above their previous life.
    world.scale("s", "web", 2).expect("up again");
    assert_eq!(world.get("web-2").generation, 2);
    // Scaling to the same target changes nothing.
    assert!(!world.scale("s", "web", 2).expect("same").changes_containers());
}

#[test]
fn reapplying_the_same_stack_changes_nothing() {
    let mut world = World::with_nodes(vec![node("a"), node("b").tags(&["edge"])]);
    let stack = vec![
        svc("web", 3).ports(&["80"]).strategy(Strategy::HighAvailability),
        svc("lb", 1).ports(&["80:80"]).tags(&["edge"]).memory(64),
        svc("agent", 0).strategy(Strategy::EveryNode),
    ];
    world.apply("s", stack.clone()).expect("first");
    let before = world.assignments.clone();
    let plan = world.apply("s", stack).expect("again");
    assert!(!plan.changes_containers(), "{plan:?}");
    assert_eq!(plan.assignments, before);
    assert!(plan.verdicts.is_empty(), "nothing was placed");
}

#[test]
fn a_changed_spec_redeploys_under_the_same_names() {
    type Tweak = fn(ServiceSpec) -> ServiceSpec;
    let tweaks: [(&str, Tweak); 5] = [
        ("spec_hash", |s| s.hash(7)),
        ("ports", |s| s.ports(&["8080"])),
        ("memory", |s| s.memory(128)),
        ("strategy", |s| s.strategy(Strategy::HighAvailability)),
        ("tags", |s| s.tags(&["x"])),
    ];
    for (what, tweak) in tweaks {
        let mut world = World::with_nodes(vec![node("a").tags(&["x"]), node("b").tags(&["x"])]);
        world
            .apply("s", vec![svc("web", 2).ports(&["80"]), svc("db", 1)])
            .expect("first");
        let before = world.clone();
        let plan = world
            .apply("s", vec![tweak(svc("web", 2).ports(&["80"])), svc("db", 1)])
            .expect(what);
        assert_eq!(names(&plan.redeployed), ["web-1", "web-2"], "{what}");
        assert!(
            plan.added.is_empty() && plan.removed.is_empty() && plan.moved.is_empty(),
            "{what}"
        );
        for name in ["web-1", "web-2"] {
            assert_eq!(
                world.get(name).node,
                before.get(name).node,
                "{what}: stays on its node"
            );
            assert_eq!(world.get(name).generation, 2, "{what}");
        }
        assert_eq!(
            world.get("db-1"),
            before.get("db-1"),
            "{what}: the unchanged service is untouched"
        );
    }
}

#[test]
fn a_redeploy_moves_what_its_node_no_longer_takes() {
    let mut world = World::with_nodes(vec![node("a").tags(&["x"]), node("b")]);
    world.apply("s", vec![svc("web", 2)]).expect("first");
    assert_eq!(world.get("web-2").node.as_str(), "b");
    let plan = world
        .apply("s", vec![svc("web", 2).tags(&["x"])])
        .expect("tagged");
    assert_eq!(names(&plan.moved), ["web-2"]);
    assert_eq!(names(&plan.redeployed), ["web-1"]);
    assert_eq!(world.get("web-2").node.as_str(), "a");
}

#[test]
fn services_left_out_of_the_stack_lose_their_containers() {
    let mut world = World::with_nodes(vec![node("a")]);
    world
        .apply("s", vec![svc("web", 2), svc("db", 1)])
        .expect("first");
    world
        .apply("t", vec![svc("web", 1).stack("t")])
        .expect("other stack");
    let plan = world.apply("s", vec![svc("db", 1)]).expect("second");
    assert_eq!(names(&plan.removed), ["web-1", "web-2"]);
    assert_eq!(world.services.len(), 2, "db of s and web of t");
    let plan = world
        .run(Change::DeleteStack {
            user: label("honeniq"),
            stack: label("s"),
        })
        .expect("delete");
    assert_eq!(names(&plan.removed), ["db-1"]);
    assert_eq!(
        world.placement(),
        BTreeMap::from([("web-1".into(), "a".into())]),
        "stack t stays"
    );
}

#[test]
fn every_node_follows_nodes_on_reconcile() {
    let mut world = World::with_nodes(vec![node("a"), node("b")]);
    world
        .apply(
            "s",
            vec![
                svc("agent", 1)
                    .strategy(Strategy::EveryNode)
                    .ports(&["9100:9100"]),
            ],
        )
        .expect("apply");
    assert_eq!(
        world.placement(),
        BTreeMap::from([("agent-1".into(), "a".into()), ("agent-2".into(), "b".into())])
    );

    // A node joins: it gets one, under the lowest free number.
    world.nodes.push(node("c"));
    let plan = world.reconcile();
    assert_eq!(names(&plan.added), ["agent-3"]);
    assert_eq!(world.get("agent-3").node.as_str(), "c");

    // A node is lost: its container stays assigned to it, nothing new is added elsewhere.
    world.set_live("a", false);
    assert!(!world.reconcile().changes_containers());

    // A node leaves the cluster: its container goes; one that joins reuses the number.
    world.nodes.retain(|n| n.name.as_str() != "b");
    assert_eq!(names(&world.reconcile().removed), ["agent-2"]);
    world.nodes.push(node("d"));
    world.reconcile();
    assert_eq!(world.get("agent-2").node.as_str(), "d");

    // A node where it does not fit is reported, not an error.
    world.nodes.push(node("e"));
    world
        .apply("t", vec![svc("exporter", 1).stack("t").ports(&["9100:9100"])])
        .expect("takes e's port");
    assert_eq!(world.get("exporter-1").node.as_str(), "e");
    let plan = world.reconcile();
    assert!(!plan.changes_containers());
    let refused: Vec<_> = plan
        .verdicts
        .iter()
        .filter(|v| matches!(v.verdict, Verdict::Refused { .. }))
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].node.as_str(), "e");

    // Hand scaling is refused.
    let err = world.scale("s", "agent", 5).expect_err("every_node");
    assert_eq!(err.code(), "not_scalable");
}

#[test]
fn containers_on_a_lost_node_move_and_do_not_come_back() {
    let mut world = World::with_nodes(vec![node("a"), node("b"), node("c")]);
    world
        .apply("s", vec![svc("web", 3).ports(&["80:80"]), svc("db", 1)])
        .expect("apply");
    let on_a: Vec<String> = world
        .assignments
        .iter()
        .filter(|a| a.node.as_str() == "a")
        .map(|a| a.container.name.to_string())
        .collect();
    assert_eq!(
        on_a,
        ["db-1", "web-1"],
        "fixed ports go first: web takes a, b, c, then db goes to a"
    );

    world.set_live("a", false);
    let plan = world.reconcile();
    assert_eq!(names(&plan.moved), ["db-1"]);
    assert_eq!(world.get("db-1").node.as_str(), "b");
    assert_eq!(world.get("db-1").generation, 2);
    let stranded: Vec<_> = plan
        .verdicts
        .iter()
        .filter(|v| v.verdict == Verdict::Stranded)
        .map(|v| v.container.name.to_string())
        .collect();
    assert_eq!(stranded, ["web-1"], "port 80 is taken on b and c");
    assert_eq!(world.get("web-1").node.as_str(), "a", "it stays where it is");

    world.set_live("a", true);
    assert!(!world.reconcile().changes_containers(), "nothing moves back");
}

#[test]
fn a_port_freed_by_a_redeploy_is_taken_in_the_same_apply() {
    let mut world = World::with_nodes(vec![node("a")]);
    world
        .apply("s", vec![svc("web", 1).ports(&["80:80"])])
        .expect("first");
    let plan = world
        .apply(
            "s",
            vec![svc("web", 1).ports(&["80"]), svc("lb", 1).ports(&["80:80"])],
        )
        .expect("second");
    assert_eq!(names(&plan.added), ["lb-1"]);
    assert_eq!(names(&plan.redeployed), ["web-1"]);
    assert_eq!(world.host_ports("lb-1"), [80]);
    assert_eq!(world.host_ports("web-1"), [32768]);
}

#[test]
fn new_names_start_above_their_retired_generation() {
    let mut world = World::with_nodes(vec![node("a")]);
    world.retired.push((
        ContainerKey {
            user: label("honeniq"),
            stack: label("s"),
            name: label("web-1"),
        },
        7,
    ));
    world.apply("s", vec![svc("web", 2)]).expect("apply");
    assert_eq!(world.get("web-1").generation, 8);
    assert_eq!(world.get("web-2").generation, 1);
}

#[test]
fn a_name_recreated_in_the_same_change_is_fenced_above_its_old_life() {
    // Found by the properties: lb-1 leaves a (the new tags exclude it) and a new lb-1 starts
    // on b; the agent on b must not see the generation the one on a had.
    let mut world = World::with_nodes(vec![node("a"), node("b").tags(&["x"])]);
    world.apply("s", vec![svc("lb", 1)]).expect("first");
    assert_eq!(world.get("lb-1").node.as_str(), "a");
    let plan = world
        .apply("s", vec![svc("lb", 1).strategy(Strategy::EveryNode).tags(&["x"])])
        .expect("second");
    assert_eq!(names(&plan.moved), ["lb-1"]);
    assert_eq!(world.get("lb-1").node.as_str(), "b");
    assert_eq!(world.get("lb-1").generation, 2);
}
