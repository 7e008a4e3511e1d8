//! The seed scenario of issue 3, and every error's code and message.

use super::*;

/// The first Stackfile of the seed: redis, and web publishing host port 80.
fn first() -> Vec<ServiceSpec> {
    vec![
        svc("redis", 1).stack("quickstart-ruby").hash(1),
        svc("web", 1).stack("quickstart-ruby").ports(&["80:80"]).hash(2),
    ]
}

/// The second: haproxy takes host port 80, web publishes 80 dynamically, three of them.
fn second() -> Vec<ServiceSpec> {
    vec![
        svc("haproxy", 1)
            .stack("quickstart-ruby")
            .ports(&["80:80"])
            .hash(3),
        svc("redis", 1).stack("quickstart-ruby").hash(1),
        svc("web", 3).stack("quickstart-ruby").ports(&["80"]).hash(2),
    ]
}

#[test]
fn seed_scenario() {
    let mut world = World::with_nodes(vec![node("node-do"), node("node-ec2")]);
    let plan = world.apply("quickstart-ruby", first()).expect("first stackfile");
    assert_eq!(names(&plan.added), ["redis-1", "web-1"]);

    world.scale("quickstart-ruby", "web", 2).expect("scale to 2");
    assert_ne!(
        world.get("web-1").node,
        world.get("web-2").node,
        "web-1 and web-2 on different nodes"
    );

    let before = world.clone();
    let err = world
        .scale("quickstart-ruby", "web", 3)
        .expect_err("no third node for port 80");
    assert_eq!(err.code(), "port_conflict");
    assert_eq!(
        err.to_string(),
        "cannot place web-3: needs host port 80/tcp, and both nodes that match (node-do, node-ec2) already \
         use it; add a node, or publish the port dynamically (\"80\") and reach the service through SRV or \
         a load balancer"
    );
    assert_eq!(world.assignments, before.assignments, "nothing changed");
    assert_eq!(world.services, before.services);

    let plan = world
        .apply("quickstart-ruby", second())
        .expect("second stackfile");
    assert_eq!(names(&plan.added), ["haproxy-1", "web-3"]);
    assert!(plan.removed.is_empty());
    let webs: Vec<&Assignment> = world
        .assignments
        .iter()
        .filter(|a| a.service.service.as_str() == "web")
        .collect();
    assert_eq!(webs.len(), 3);
    for w in &webs {
        let host = w.ports[0].host_port.expect("allocated");
        assert!(DEFAULT_DYNAMIC_PORTS.contains(&host), "{w:?}");
    }
    let haproxy = world.get("haproxy-1");
    assert_eq!(haproxy.ports[0].host_port, Some(80));
    assert_eq!(world.get("redis-1"), before.get("redis-1"), "redis is unchanged");
    // Each node's host ports are distinct.
    for n in ["node-do", "node-ec2"] {
        let mut ports: Vec<u16> = world
            .assignments
            .iter()
            .filter(|a| a.node.as_str() == n)
            .flat_map(|a| a.ports.iter().filter_map(|p| p.host_port))
            .collect();
        let all = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), all, "{n}");
    }
    let again = world.apply("quickstart-ruby", second()).expect("again");
    assert!(!again.changes_containers());
}

#[test]
fn every_error_has_a_code_and_explains_itself() {
    struct Case {
        name: &'static str,
        nodes: Vec<NodeInfo>,
        /// Stacks applied before the change.
        setup: fn(&mut World),
        change: fn() -> Change,
        code: &'static str,
        message: &'static str,
    }
    let cases = [
        Case {
            name: "no node at all",
            setup: |_| {},
            nodes: vec![],
            change: || Change::Apply {
                user: label("honeniq"),
                stack: label("s"),
                services: vec![svc("web", 1)],
            },
            code: "no_live_node",
            message: "cannot place web-1: no node is registered; add a node",
        },
        Case {
            name: "only lost nodes",
            setup: |_| {},
            nodes: vec![node("a").lost(), node("b").lost()],
            change: || Change::Apply {
                user: label("honeniq"),
                stack: label("s"),
                services: vec![svc("web", 1)],
            },
            code: "no_live_node",
            message: "cannot place web-1: no node is live (a, b are lost or not yet heartbeating); start a node's \
                      agent, or add a node",
        },
        Case {
            name: "tags no live node carries",
            setup: |_| {},
            nodes: vec![
                node("a").tags(&["gpu"]),
                node("b"),
                node("c").tags(&["gpu", "ssd"]).lost(),
            ],
            change: || Change::Apply {
                user: label("honeniq"),
                stack: label("s"),
                services: vec![svc("ml", 1).tags(&["gpu", "ssd"])],
            },
            code: "no_matching_node",
            message: "cannot place ml-1: needs a node tagged gpu and ssd, and no live node carries all of them (a \
                      lacks ssd; b lacks gpu and ssd); tag a node, or change the service's tags",
        },
        Case {
            name: "one node, udp port in use",
            setup: |_| {},
            nodes: vec![node("a")],
            change: || Change::Apply {
                user: label("honeniq"),
                stack: label("s"),
                services: vec![svc("dns", 2).ports(&["8053:53/udp"])],
            },
            code: "port_conflict",
            message: "cannot place dns-2: needs host port 8053/udp, and the only node that matches (a) already uses \
                      it; add a node, or publish the port dynamically (\"53/udp\") and reach the service through \
                      SRV or a load balancer",
        },
        Case {
            name: "the first port in use on every node is named",
            setup: |_| {},
            nodes: vec![node("a"), node("b"), node("c")],
            change: || Change::Apply {
                user: label("honeniq"),
                stack: label("s"),
                services: vec![svc("web", 4).ports(&["80:80", "443:443"])],
            },
            code: "port_conflict",
            message: "cannot place web-4: needs host port 80/tcp, and all 3 nodes that match (a, b, c) already use \
                      it; add a node, or publish the port dynamically (\"80\") and reach the service through SRV \
                      or a load balancer",
        },
        Case {
            name: "memory on one, port on the other",
            setup: |_| {},
            nodes: vec![node("a").memory(100), node("b").memory(1000)],
            change: || Change::Apply {
                user: label("honeniq"),
                stack: label("s"),
                services: vec![svc("web", 2).ports(&["80:80"]).memory(200)],
            },
            code: "no_node_fits",
            message: "cannot place web-2: no node that matches can take it (a: 100 MB free of 100 MB, needs 200 MB; \
                      b: host port 80/tcp is in use); add a node, or free what they lack",
        },
        Case {
            name: "every_node on a node whose port is taken",
            setup: |w| {
                w.apply("t", vec![svc("lb", 1).stack("t").ports(&["80:80"])])
                    .expect("lb");
            },
            nodes: vec![node("a"), node("b")],
            change: || Change::Apply {
                user: label("honeniq"),
                stack: label("s"),
                services: vec![svc("agent", 1).strategy(Strategy::EveryNode).ports(&["80:8080"])],
            },
            code: "port_conflict",
            message: "cannot place agent-1 on a, where every_node runs one container per matching node: host port \
                      80/tcp is in use; free that on a, or change the service or the node's tags so that they no \
                      longer match",
        },
        Case {
            name: "scale of an unknown service",
            setup: |_| {},
            nodes: vec![node("a")],
            change: || Change::Scale {
                service: service_key("s", "nope"),
                target: 2,
            },
            code: "unknown_service",
            message: "no service nope in stack s of user honeniq",
        },
        Case {
            name: "a host port twice",
            setup: |_| {},
            nodes: vec![node("a")],
            change: || Change::Apply {
                user: label("honeniq"),
                stack: label("s"),
                services: vec![svc("web", 1).ports(&["80:80", "80:8080"])],
            },
            code: "invalid_service",
            message: "service web of stack s: host port 80/tcp is published twice",
        },
        Case {
            name: "a service of another stack",
            setup: |_| {},
            nodes: vec![node("a")],
            change: || Change::Apply {
                user: label("honeniq"),
                stack: label("s"),
                services: vec![svc("web", 1).stack("t")],
            },
            code: "invalid_service",
            message: "service web of stack t: it belongs to stack t of user honeniq, not to the stack applied (s of \
                      honeniq)",
        },
        Case {
            name: "too many containers",
            setup: |_| {},
            nodes: vec![node("a")],
            change: || Change::Apply {
                user: label("honeniq"),
                stack: label("s"),
                services: vec![svc("web", 10_001)],
            },
            code: "invalid_service",
            message: "service web of stack s: target_num_containers 10001 is above the limit of 10000",
        },
        Case {
            name: "a service name too long for its container names",
            setup: |_| {},
            nodes: vec![node("a")],
            change: || Change::Apply {
                user: label("honeniq"),
                stack: label("s"),
                services: vec![svc(&"w".repeat(62), 1)],
            },
            code: "invalid_service",
            message: "service wwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwww of stack s: its container \
                      name \"wwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwwww-1\" is not a valid name: \
                      it is longer than 63 characters",
        },
    ];
    for case in cases {
        let mut world = World::with_nodes(case.nodes);
        (case.setup)(&mut world);
        let err = plan(&world.input(), &(case.change)()).expect_err(case.name);
        assert_eq!(err.code(), case.code, "{}", case.name);
        assert_eq!(err.to_string(), case.message, "{}", case.name);
    }
}

#[test]
fn scaling_every_node_is_refused() {
    let mut world = World::with_nodes(vec![node("a")]);
    world
        .apply("s", vec![svc("agent", 1).strategy(Strategy::EveryNode)])
        .expect("apply");
    let err = world.scale("s", "agent", 3).expect_err("not scalable");
    assert_eq!(err.code(), "not_scalable");
    assert_eq!(
        err.to_string(),
        "cannot scale agent: its deployment_strategy is every_node, which runs one container on each matching \
         node; add or tag nodes, or change the service's tags, instead"
    );
}

#[test]
fn long_node_lists_are_cut() {
    let nodes: Vec<NodeInfo> = (0..10).map(|i| node(&format!("n{i}"))).collect();
    let mut world = World::with_nodes(nodes);
    world
        .apply("s", vec![svc("web", 10).ports(&["80:80"])])
        .expect("one per node");
    let err = world.scale("s", "web", 11).expect_err("full");
    assert_eq!(
        err.to_string(),
        "cannot place web-11: needs host port 80/tcp, and all 10 nodes that match (n0, n1, n2, n3, n4, n5, n6, \
         n7, and 2 more) already use it; add a node, or publish the port dynamically (\"80\") and reach the \
         service through SRV or a load balancer"
    );
}

#[test]
fn multiple_ports_taken_differently_are_each_named() {
    let mut world = World::with_nodes(vec![node("a"), node("b")]);
    world
        .apply(
            "t",
            vec![
                svc("x", 1).stack("t").ports(&["80:80"]),
                svc("y", 1).stack("t").ports(&["443:443"]),
            ],
        )
        .expect("t");
    let err = world
        .apply("s", vec![svc("web", 1).ports(&["80:80", "443:443"])])
        .expect_err("each node has one of them");
    assert_eq!(err.code(), "port_conflict");
    assert_eq!(
        err.to_string(),
        "cannot place web-1: needs host ports 80/tcp and 443/tcp, and each node that matches already uses one \
         of them (a: 80/tcp, b: 443/tcp); add a node, or publish the ports dynamically (\"80\", \"443\") and \
         reach the service through SRV or a load balancer"
    );
}
