//! The index kept between plans: claims follow nodes by name, replacements keep a container on
//! its node, and the counts stay exact.

use super::*;

fn assigned(name: &str, node: &str, host_port: u16, spec_hash: u64) -> Assignment {
    let service = service_key("s", "web");
    Assignment {
        container: ContainerKey {
            user: service.user.clone(),
            stack: service.stack.clone(),
            name: label(name),
        },
        service,
        node: label(node),
        ports: vec![crate::model::Port {
            container_port: 80,
            host_port: Some(host_port),
            protocol: Protocol::Tcp,
        }],
        mem_limit_mb: Some(100),
        spec_hash,
        generation: 1,
    }
}

fn on(index: &Index, node: &str) -> Vec<String> {
    (index.of_node(&label(node)))
        .map(|a| a.container.name.to_string())
        .collect()
}

#[test]
fn claims_on_an_unregistered_node_follow_it_when_it_registers() {
    let mut index = Index::build(
        &[node("a")],
        [assigned("web-1", "b", 80, 0), assigned("web-2", "a", 80, 0)],
        &DEFAULT_DYNAMIC_PORTS,
    );
    assert_eq!(on(&index, "b"), ["web-1"], "found on a node nobody registered");
    index.set_nodes(vec![node("b"), node("a")]);
    assert_eq!(
        (on(&index, "a"), on(&index, "b")),
        (vec!["web-2".to_owned()], vec!["web-1".to_owned()])
    );
    let b = index.node_index(&label("b")).expect("registered");
    assert_eq!(index.nodes[b].containers(), 1, "its container is counted there");
    let spec = svc("web", 1).ports(&["80:80"]);
    assert!(
        matches!(
            index.nodes[b].check(&spec, index.dynamic),
            Err(Refusal::HostPortInUse { .. })
        ),
        "and its host port is taken"
    );
    index.set_nodes(vec![node("a")]);
    assert_eq!(
        on(&index, "b"),
        ["web-1"],
        "and it is kept when the node goes again"
    );
}

#[test]
fn a_replacement_on_the_same_node_keeps_the_container_there() {
    for node_name in ["a", "gone"] {
        let mut index = Index::build(
            &[node("a")],
            [assigned("web-1", node_name, 80, 0)],
            &DEFAULT_DYNAMIC_PORTS,
        );
        let old = index.insert(assigned("web-1", node_name, 81, 7));
        assert_eq!(old.map(|o| o.spec_hash), Some(0));
        assert_eq!(on(&index, node_name), ["web-1"], "{node_name}");
        assert_eq!(index.len(), 1);
        assert_eq!(index.count_of_user(&label("honeniq")), 1);
        assert_eq!(index.members(&service_key("s", "web")).map(|m| m.len()), Some(1));
        index.remove(&assigned("web-1", node_name, 81, 7).container);
        assert!(on(&index, node_name).is_empty() && index.is_empty());
        assert_eq!(index.count_of_user(&label("honeniq")), 0);
        assert!(index.members(&service_key("s", "web")).is_none());
    }
    let mut index = Index::build(
        &[node("a")],
        [assigned("web-1", "a", 80, 0)],
        &DEFAULT_DYNAMIC_PORTS,
    );
    index.insert(assigned("web-1", "a", 81, 0));
    let a = index.node_index(&label("a")).expect("registered");
    assert_eq!(index.nodes[a].containers(), 1);
    assert!(
        index.nodes[a]
            .check(&svc("x", 1).ports(&["80:80"]), index.dynamic)
            .is_ok(),
        "port 80 released"
    );
    assert!(
        index.nodes[a]
            .check(&svc("x", 1).ports(&["81:81"]), index.dynamic)
            .is_err(),
        "port 81 taken"
    );
}

#[test]
fn the_lowest_free_dynamic_port_is_found_after_claims_and_releases() {
    let range = 40000..=40003;
    let mut index = Index::build(&[node("a")], [], &range);
    let spec = svc("web", 1).ports(&["80"]);
    let a = index.node_index(&label("a")).expect("registered");
    let next = |index: &Index| -> Option<u16> {
        let ports = index.nodes[a].allocate(&spec, index.dynamic).ok()?;
        ports[0].host_port
    };
    for (i, port) in (40000..=40003).enumerate() {
        assert_eq!(next(&index), Some(port));
        index.insert(assigned(&format!("web-{}", i + 1), "a", port, 0));
    }
    assert_eq!(next(&index), None, "the range is used up");
    index.remove(&assigned("web-3", "a", 40002, 0).container);
    assert_eq!(next(&index), Some(40002), "a port given back is the lowest free");
    index.remove(&assigned("web-1", "a", 40000, 0).container);
    assert_eq!(next(&index), Some(40000));
    index.insert(assigned("web-1", "a", 40000, 0));
    assert_eq!(
        next(&index),
        Some(40002),
        "past the used run, not the first port above it"
    );
}
