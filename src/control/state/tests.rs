//! The fencing and lease rules, without I/O.

use std::time::{Duration, Instant};

use super::*;

fn label(s: &str) -> Label {
    Label::parse("test", s).expect("valid label")
}

fn key(name: &str) -> ContainerKey {
    ContainerKey {
        user: label("honeniq"),
        stack: label("quickstart-ruby"),
        name: label(name),
    }
}

fn report(generation: u64) -> Report {
    Report {
        service: label("web"),
        address: None,
        ports: vec![],
        generation,
        ready: true,
        detail: None,
    }
}

/// Two nodes, `a` (token "ta") and `b` (token "tb").
fn state(now: Instant) -> State {
    let mut s = State::default();
    let mut changes = Changes::default();
    for (name, addr) in [("a", "10.0.0.1"), ("b", "10.0.0.2")] {
        let spec = NodeSpec {
            address: addr.parse().expect("ip"),
            labels: Default::default(),
            tags: vec![],
            capacity: None,
            tenants: None,
        };
        s.put_node(&label(name), spec, None, format!("t{name}"), now, &mut changes);
    }
    s
}

#[test]
fn reports_are_fenced_by_generation() {
    let now = Instant::now();
    // (steps, expected outcome of the last step): each step is (node, generation, put or delete).
    type Step = (&'static str, u64, bool);
    let cases: &[(&[Step], Result<Effect, &str>)] = &[
        (&[("a", 1, true)], Ok(Effect::Created)),
        (&[("a", 2, true), ("a", 1, true)], Err("stale")),
        (&[("a", 2, true), ("a", 2, true)], Ok(Effect::Unchanged)),
        (&[("a", 2, true), ("b", 2, true)], Err("stale")),
        (&[("a", 2, true), ("b", 3, true)], Ok(Effect::Updated)),
        (&[("a", 2, true), ("a", 2, false)], Ok(Effect::Updated)),
        (&[("a", 2, true), ("a", 2, false), ("a", 2, true)], Err("stale")),
        (
            &[("a", 2, true), ("a", 2, false), ("a", 3, true)],
            Ok(Effect::Created),
        ),
        (&[("a", 2, true), ("a", 1, false)], Err("stale")),
        (&[("a", 2, true), ("b", 2, false)], Err("stale")),
        (
            &[("a", 2, true), ("a", 2, false), ("a", 2, false)],
            Ok(Effect::Unchanged),
        ),
    ];
    for (steps, want) in cases {
        let mut s = state(now);
        let mut last = None;
        for &(node, generation, put) in *steps {
            let mut changes = Changes::default();
            let result = if put {
                s.put_container(&label(node), key("web-1"), report(generation), now, &mut changes)
            } else {
                s.delete_container(
                    &label(node),
                    &key("web-1"),
                    Some(generation),
                    None,
                    now,
                    &mut changes,
                )
            };
            if result.is_err() {
                assert!(
                    changes.ops.is_empty(),
                    "{steps:?}: a refused report stores nothing"
                );
            }
            last = Some(result.map(|(_, effect)| effect));
        }
        match (last.expect("a step"), want) {
            (Ok(got), Ok(want)) => assert_eq!(got, *want, "{steps:?}"),
            (Err(ControlError::StaleGeneration { .. }), Err("stale")) => {}
            (got, want) => panic!("{steps:?}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn replace_is_all_or_nothing() {
    let now = Instant::now();
    let mut s = state(now);
    let mut changes = Changes::default();
    s.put_container(&label("a"), key("web-1"), report(5), now, &mut changes)
        .expect("put");
    let mut changes = Changes::default();
    let stale = vec![(key("web-2"), report(1)), (key("web-1"), report(4))];
    assert!(
        s.replace_containers(&label("a"), stale, now, &mut changes)
            .is_err()
    );
    assert!(changes.ops.is_empty());
    assert!(s.container(&key("web-2")).is_none());

    let summary = s
        .replace_containers(&label("a"), vec![(key("web-2"), report(1))], now, &mut changes)
        .expect("replace");
    assert_eq!((summary.started, summary.stopped), (1, 1));
    assert!(
        !s.container(&key("web-1")).expect("web-1").running,
        "web-1 is a tombstone now"
    );
    assert_eq!(s.running_on(&label("a")).count(), 1);
}

#[test]
fn leases_lapse_and_renew() {
    let start = Instant::now();
    let mut s = state(start);
    let ttl = Duration::from_secs(15);
    let mut changes = Changes::default();
    s.expire_leases(start + Duration::from_secs(15), ttl, &mut changes);
    assert!(changes.nodes.is_empty(), "exactly the TTL is still live");
    s.heartbeat(&label("a"), start + Duration::from_secs(10), &mut changes)
        .expect("heartbeat");
    s.expire_leases(start + Duration::from_secs(16), ttl, &mut changes);
    assert!(changes.nodes.contains(&label("b")));
    assert!(s.nodes[&label("a")].live && !s.nodes[&label("b")].live);
    let mut changes = Changes::default();
    s.heartbeat(&label("b"), start + Duration::from_secs(17), &mut changes)
        .expect("heartbeat");
    assert!(changes.nodes.contains(&label("b")) && s.nodes[&label("b")].live);
}

#[test]
fn node_tokens_only_act_on_their_node() {
    let s = state(Instant::now());
    let node = |n: &str, t: &str| Caller::Node {
        node: label(n),
        token_sha256: t.into(),
    };
    assert!(s.authorize_node(&Caller::Admin, &label("zzz")).is_ok());
    assert!(s.authorize_node(&node("a", "ta"), &label("a")).is_ok());
    assert!(matches!(
        s.authorize_node(&node("a", "ta"), &label("b")),
        Err(ControlError::Forbidden(_))
    ));
    assert!(matches!(
        s.authorize_node(&node("a", "stale"), &label("a")),
        Err(ControlError::Unauthorized)
    ));
    assert_eq!(s.token_index().get("tb"), Some(&Principal::Node(label("b"))));
}

#[test]
fn deleting_a_node_keeps_tombstones() {
    let now = Instant::now();
    let mut s = state(now);
    let mut changes = Changes::default();
    s.put_container(&label("a"), key("web-1"), report(3), now, &mut changes)
        .expect("put");
    s.delete_node(&label("a"), &mut changes).expect("delete");
    assert!(!s.container(&key("web-1")).expect("web-1").running);
    assert!(
        s.put_container(&label("b"), key("web-1"), report(3), now, &mut changes)
            .is_err()
    );
}

#[test]
fn old_tombstones_go_and_their_node_floor_keeps_fencing() {
    let now = Instant::now();
    let mut s = state(now);
    let mut changes = Changes::default();
    let retention = Duration::from_secs(60);
    for (name, generation) in [("web-1", 3), ("web-2", 7)] {
        s.put_container(&label("a"), key(name), report(generation), now, &mut changes)
            .expect("put");
        s.delete_container(&label("a"), &key(name), None, None, now, &mut changes)
            .expect("stop");
    }
    let stopped = s
        .container(&key("web-1"))
        .and_then(|c| c.stopped_at)
        .expect("a stop time");
    // Within the retention (stop times are whole seconds, so a full second more): kept.
    let swept = s.sweep_tombstones(retention, stopped + 60, 100, &mut changes);
    assert_eq!(swept, Swept::default());
    // After it, at most `max` per sweep.
    let swept = s.sweep_tombstones(retention, stopped + 61, 1, &mut changes);
    assert_eq!(swept.removed, 1);
    let swept = s.sweep_tombstones(retention, stopped + 61, 100, &mut changes);
    assert_eq!(swept.removed, 1);
    assert!(s.container(&key("web-1")).is_none() && s.container(&key("web-2")).is_none());
    assert!(
        changes
            .ops
            .iter()
            .any(|op| matches!(op, Op::PutFloor(n, 7) if n.as_str() == "a"))
    );
    assert_eq!(s.floor(&label("a")), Some(7));
    // Late reports of either, or of a name new to the server, from node a at or below 7: stale.
    for (name, generation) in [("web-1", 3), ("web-2", 7), ("web-9", 1)] {
        let refused = s.put_container(&label("a"), key(name), report(generation), now, &mut changes);
        assert!(
            matches!(refused, Err(ControlError::StaleGeneration { stored: 7, .. })),
            "{name}"
        );
    }
    // Above the floor, or from another node: a new container.
    s.put_container(&label("a"), key("web-1"), report(8), now, &mut changes)
        .expect("above the floor");
    s.put_container(&label("b"), key("web-2"), report(1), now, &mut changes)
        .expect("node b has no floor");
}

#[test]
fn tombstones_stored_without_a_stop_time_get_one_and_go_a_retention_later() {
    let now = Instant::now();
    let mut s = state(now);
    let mut changes = Changes::default();
    s.put_container(&label("a"), key("web-1"), report(2), now, &mut changes)
        .expect("put");
    let mut legacy = s.container(&key("web-1")).cloned().expect("web-1");
    legacy.running = false;
    legacy.stopped_at = None;
    s.store_container(legacy, &mut changes);
    let retention = Duration::from_secs(60);
    let swept = s.sweep_tombstones(retention, 1_000_000, 100, &mut changes);
    assert_eq!(
        swept,
        Swept {
            removed: 0,
            stamped: 1
        }
    );
    assert_eq!(
        s.container(&key("web-1")).and_then(|c| c.stopped_at),
        Some(1_000_000)
    );
    let swept = s.sweep_tombstones(retention, 1_000_061, 100, &mut changes);
    assert_eq!(
        swept,
        Swept {
            removed: 1,
            stamped: 0
        }
    );
}
