//! One rule at a time, table-driven where a rule has several cases.

use super::*;

/// `count` containers of service `filler` of stack `other` already on `node`.
fn load(world: &mut World, node: &str, count: u32) {
    let service = service_key("other", "filler");
    for _ in 0..count {
        let n = world.assignments.iter().filter(|a| a.service == service).count() + 1;
        world.assignments.push(Assignment {
            container: ContainerKey {
                user: service.user.clone(),
                stack: service.stack.clone(),
                name: label(&format!("filler-{n}")),
            },
            service: service.clone(),
            node: label(node),
            ports: Vec::new(),
            mem_limit_mb: None,
            spec_hash: 0,
            generation: 1,
        });
    }
}

struct StrategyCase {
    name: &'static str,
    nodes: Vec<NodeInfo>,
    load: &'static [(&'static str, u32)],
    service: ServiceSpec,
    /// The node of `<service>-1`, `-2`, ... in order.
    want: &'static [&'static str],
}

#[test]
fn strategies_pick_nodes_as_documented() {
    use Strategy::*;
    let abc = || vec![node("a"), node("b"), node("c")];
    let cases = vec![
        StrategyCase {
            name: "emptiest_node: ties go by name, round robin from empty",
            nodes: abc(),
            load: &[],
            service: svc("web", 4),
            want: &["a", "b", "c", "a"],
        },
        StrategyCase {
            name: "emptiest_node: counts every stack's containers",
            nodes: abc(),
            load: &[("a", 2), ("c", 1)],
            service: svc("web", 3),
            want: &["b", "b", "c"],
        },
        StrategyCase {
            name: "high_availability: fewest of this service first, then fewest in total",
            nodes: abc(),
            load: &[("a", 3)],
            service: svc("web", 3).strategy(HighAvailability),
            want: &["b", "c", "a"],
        },
        StrategyCase {
            name: "high_availability: spreads across regions before names",
            nodes: vec![
                node("a").label("region", "eu"),
                node("b").label("region", "eu"),
                node("c").label("region", "us"),
            ],
            load: &[],
            service: svc("web", 3).strategy(HighAvailability),
            want: &["a", "c", "b"],
        },
        StrategyCase {
            name: "high_availability: then across providers",
            nodes: vec![
                node("a").label("provider", "do"),
                node("b").label("provider", "do"),
                node("c").label("provider", "aws"),
            ],
            load: &[],
            service: svc("web", 2).strategy(HighAvailability),
            want: &["a", "c"],
        },
        StrategyCase {
            name: "high_availability: region before provider",
            nodes: vec![
                node("a").label("region", "eu").label("provider", "do"),
                node("b").label("region", "us").label("provider", "do"),
                node("c").label("region", "eu").label("provider", "aws"),
            ],
            load: &[],
            service: svc("web", 2).strategy(HighAvailability),
            want: &["a", "b"],
        },
        StrategyCase {
            name: "every_node: one per live node that carries the tags, target ignored",
            nodes: vec![
                node("a").tags(&["edge"]),
                node("b").tags(&["edge"]).lost(),
                node("c"),
                node("d").tags(&["edge", "ssd"]),
            ],
            load: &[],
            service: svc("agent", 1).strategy(EveryNode).tags(&["edge"]),
            want: &["a", "d"],
        },
        StrategyCase {
            name: "a lost node receives nothing",
            nodes: vec![node("a").lost(), node("b")],
            load: &[],
            service: svc("web", 2),
            want: &["b", "b"],
        },
        StrategyCase {
            name: "tags: only nodes carrying all of them",
            nodes: vec![
                node("a").tags(&["gpu"]),
                node("b").tags(&["gpu", "ssd"]),
                node("c").tags(&["ssd"]),
            ],
            load: &[],
            service: svc("ml", 2).tags(&["gpu", "ssd"]),
            want: &["b", "b"],
        },
    ];
    for case in cases {
        let mut world = World::with_nodes(case.nodes);
        for (node, count) in case.load {
            load(&mut world, node, *count);
        }
        let service = case.service.key.service.to_string();
        world
            .apply("s", vec![case.service])
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let got: Vec<String> = (1..=case.want.len())
            .map(|n| world.get(&format!("{service}-{n}")).node.to_string())
            .collect();
        assert_eq!(got, case.want, "{}", case.name);
        let of_service = world
            .assignments
            .iter()
            .filter(|a| a.service.service.as_str() == service)
            .count();
        assert_eq!(of_service, case.want.len(), "{}: no extra containers", case.name);
    }
}

#[test]
fn fixed_host_ports_never_share_a_node_across_stacks() {
    let mut world = World::with_nodes(vec![node("a"), node("b"), node("c")]);
    world
        .apply("one", vec![svc("web", 1).stack("one").ports(&["80:80"])])
        .expect("one");
    world
        .apply(
            "two",
            vec![svc("web", 1).stack("two").ports(&["80:80", "53:53/udp"])],
        )
        .expect("two");
    // udp 80 and tcp 53 are other resources than tcp 80 and udp 53.
    let three = svc("dns", 2).stack("three").ports(&["53:53", "80:80/udp"]);
    world.apply("three", vec![three]).expect("three");
    let web: BTreeSet<String> = world
        .assignments
        .iter()
        .filter(|a| a.service.service.as_str() == "web")
        .map(|a| a.node.to_string())
        .collect();
    assert_eq!(web.len(), 2, "the two web-1 containers are on different nodes");
    assert_eq!(world.get("web-1").ports[0].host_port, Some(80));
    let err = world
        .apply("four", vec![svc("lb", 2).stack("four").ports(&["80:80"])])
        .expect_err("only c is left");
    assert_eq!(err.code(), "port_conflict");
}

#[test]
fn dynamic_host_ports_are_the_lowest_free_on_the_node() {
    let mut world = World::with_nodes(vec![node("a")]);
    world
        .apply(
            "other",
            vec![svc("fixed", 1).stack("other").ports(&["32769:8080"])],
        )
        .expect("fixed");
    world
        .apply("s", vec![svc("web", 3).ports(&["80", "443", "53/udp"])])
        .expect("web");
    assert_eq!(world.host_ports("web-1"), [32768, 32770, 32768]);
    assert_eq!(world.host_ports("web-2"), [32771, 32772, 32769]);
    assert_eq!(world.host_ports("web-3"), [32773, 32774, 32770]);
    // A port freed by a scale-down is handed out again.
    world.scale("s", "web", 1).expect("down");
    world.scale("s", "web", 2).expect("up");
    assert_eq!(world.host_ports("web-2"), [32771, 32772, 32769]);
}

#[test]
fn dynamic_range_exhausted() {
    let mut world = World::with_nodes(vec![node("a")]);
    world.dynamic_ports = Some(40000..=40002);
    world
        .apply("s", vec![svc("web", 3).ports(&["80"])])
        .expect("three ports fit");
    let err = world.scale("s", "web", 4).expect_err("a fourth does not");
    assert_eq!(err.code(), "ports_exhausted");
    assert_eq!(
        err.to_string(),
        "cannot place web-4: needs a dynamic host port, and the range 40000-40002 is used up on the only \
         node that matches (a); add a node, or widen the dynamic port range"
    );
}

#[test]
fn memory_limits_are_summed_against_capacity() {
    let mut world = World::with_nodes(vec![node("a").memory(1024), node("b").memory(512)]);
    world
        .apply("s", vec![svc("db", 3).memory(512)])
        .expect("three fit");
    assert_eq!(
        world.placement(),
        BTreeMap::from([
            ("db-1".into(), "a".into()),
            ("db-2".into(), "b".into()),
            ("db-3".into(), "a".into())
        ])
    );
    // Containers without a limit count 0 and still fit on full nodes.
    world
        .apply("t", vec![svc("tiny", 2).stack("t")])
        .expect("no limit");
    let err = world.scale("s", "db", 4).expect_err("no memory left");
    assert_eq!(err.code(), "insufficient_memory");
    assert_eq!(
        err.to_string(),
        "cannot place db-4: needs 512 MB of memory, and both nodes that match have less free (a: 0 MB free \
         of 1024 MB; b: 0 MB free of 512 MB); add a node or memory, or lower the service's mem_limit"
    );
}

#[test]
fn explain_gives_every_node_a_verdict() {
    let world = World::with_nodes(vec![
        node("a").tags(&["x"]),
        node("b"),
        node("c").tags(&["x"]).lost(),
        node("d").tags(&["x"]),
    ]);
    let mut input = world.input();
    input.explain = true;
    let change = Change::Apply {
        user: label("honeniq"),
        stack: label("s"),
        services: vec![svc("web", 1).tags(&["x"])],
    };
    let plan = plan(&input, &change).expect("plan");
    let got: Vec<(String, Verdict)> = plan
        .verdicts
        .iter()
        .map(|v| (v.node.to_string(), v.verdict.clone()))
        .collect();
    let want = vec![
        (
            "a".into(),
            Verdict::Chosen {
                containers: 0,
                of_service: 0,
            },
        ),
        (
            "b".into(),
            Verdict::Refused {
                reason: Refusal::MissingTags {
                    tags: vec![label("x")],
                },
            },
        ),
        (
            "c".into(),
            Verdict::Refused {
                reason: Refusal::NotLive,
            },
        ),
        (
            "d".into(),
            Verdict::Fits {
                containers: 0,
                of_service: 0,
            },
        ),
    ];
    assert_eq!(got, want);
    let json = serde_json::to_value(&plan.verdicts[1]).expect("json");
    assert_eq!(json["verdict"]["kind"], "refused");
    assert_eq!(json["verdict"]["reason"]["kind"], "missing_tags");
}

#[test]
fn input_order_does_not_matter() {
    let mut world = World::with_nodes(
        (0..6)
            .map(|i| node(&format!("n{i}")).label("region", if i % 2 == 0 { "eu" } else { "us" }))
            .collect(),
    );
    world
        .apply(
            "s",
            vec![
                svc("web", 5).strategy(Strategy::HighAvailability).ports(&["80"]),
                svc("db", 2).ports(&["5432:5432"]),
            ],
        )
        .expect("apply");
    world.apply("t", vec![svc("api", 4).stack("t")]).expect("apply");
    world.set_live("n1", false);
    let change = Change::Scale {
        service: service_key("s", "web"),
        target: 9,
    };
    let want = plan(&world.input(), &change).expect("plan");
    let mut shuffled = world.clone();
    shuffled.nodes.reverse();
    shuffled.services.reverse();
    shuffled.assignments.rotate_left(3);
    assert_eq!(plan(&shuffled.input(), &change).expect("plan"), want);
}

#[test]
fn nodes_serve_only_their_tenants() {
    // a: honeniq's own node; b: another user's; c: a platform node open to all.
    let mut world = World::with_nodes(vec![
        node("a").tenants(&["honeniq"]),
        node("b").tenants(&["zoe"]),
        node("c"),
    ]);
    let plan = world
        .apply("s", vec![svc("web", 4).strategy(Strategy::HighAvailability)])
        .expect("placed");
    let nodes: BTreeSet<&str> = plan.assignments.iter().map(|a| a.node.as_str()).collect();
    assert_eq!(nodes, BTreeSet::from(["a", "c"]), "never on zoe's node");

    // every_node follows only the nodes that serve the user.
    let mut world = World::with_nodes(vec![node("a").tenants(&["honeniq"]), node("b").tenants(&["zoe"])]);
    let plan = world
        .apply("s", vec![svc("agent", 0).strategy(Strategy::EveryNode)])
        .expect("placed");
    let nodes: Vec<&str> = plan.assignments.iter().map(|a| a.node.as_str()).collect();
    assert_eq!(nodes, ["a"]);

    // Only other users' nodes: the error says whose they are and what to do.
    let mut world = World::with_nodes(vec![node("b").tenants(&["zoe"])]);
    let e = world.apply("s", vec![svc("web", 1)]).expect_err("nowhere to go");
    assert_eq!(e.code(), "no_node_for_user");
    let text = e.to_string();
    assert!(
        text.contains("no node runs containers of user honeniq")
            && text.contains("register a node of your own"),
        "{text}"
    );
}
