//! Control views rendered as response bodies, with their DNS names from [`crate::scheme`].

use super::types::{AssignmentItem, ContainerInfo, NodeInfo, ServiceView, StackContainer, StackView};
use crate::control::{NodeStatus, StackStatus, Work};
use crate::model::Container;
use crate::scheme;

pub fn node(n: &NodeStatus, apex: &str) -> NodeInfo {
    NodeInfo {
        name: n.node.name.to_string(),
        address: n.node.address.to_string(),
        labels: n.node.labels.clone(),
        tags: n.node.tags.iter().map(ToString::to_string).collect(),
        capacity: n.node.capacity,
        state: if n.live { "live" } else { "lost" }.to_owned(),
        last_heartbeat_seconds_ago: n.since_heartbeat.as_secs_f64(),
        containers_running: n.containers_running,
        fqdn: scheme::node_fqdn(&n.node.name, apex),
        owner: n.node.owner.as_ref().map(ToString::to_string),
        tenants: n
            .node
            .tenants
            .as_ref()
            .map(|t| t.iter().map(ToString::to_string).collect()),
    }
}

pub fn container(c: &Container, apex: &str) -> ContainerInfo {
    let k = &c.key;
    ContainerInfo {
        user: k.user.to_string(),
        stack: k.stack.to_string(),
        name: k.name.to_string(),
        service: c.service.to_string(),
        node: c.node.to_string(),
        address: c.address.map(|a| a.to_string()),
        ports: c.ports.clone(),
        generation: c.generation,
        state: if c.running { "running" } else { "stopped" }.to_owned(),
        ready: c.running && c.ready,
        detail: c.detail.clone(),
        fqdn: scheme::container_fqdn(k, apex),
        service_fqdn: scheme::service_fqdn(&c.service_key(), apex),
    }
}

pub fn stack(s: &StackStatus, apex: &str) -> StackView {
    let services = s
        .services
        .iter()
        .map(|service| ServiceView {
            name: service.key.service.to_string(),
            image: service.image.clone(),
            strategy: service.strategy,
            target_num_containers: service.target,
            assigned: service.assigned,
            running: service.running,
            endpoint: scheme::service_fqdn(&service.key, apex),
            srv: service
                .ports
                .iter()
                .map(|p| scheme::srv_fqdn(p.container_port, p.protocol, &service.key, apex))
                .collect(),
        })
        .collect();
    let containers = s
        .containers
        .iter()
        .map(|placed| {
            let a = &placed.assignment;
            StackContainer {
                name: a.container.name.to_string(),
                service: a.service.service.to_string(),
                node: a.node.to_string(),
                ports: a.ports.clone(),
                generation: a.generation,
                state: placed.state.as_str().to_owned(),
                detail: placed.detail.clone(),
                endpoint: scheme::container_fqdn(&a.container, apex),
            }
        })
        .collect();
    StackView {
        user: s.user.to_string(),
        stack: s.stack.to_string(),
        services,
        containers,
    }
}

pub fn work(w: &Work, apex: &str) -> AssignmentItem {
    let a = &w.assignment;
    let k = &a.container;
    AssignmentItem {
        user: k.user.to_string(),
        stack: k.stack.to_string(),
        service: a.service.service.to_string(),
        name: k.name.to_string(),
        image: w.image.clone(),
        command: w.command.clone(),
        entrypoint: w.entrypoint.clone(),
        environment: w.environment.clone(),
        ports: a.ports.clone(),
        mem_limit_mb: a.mem_limit_mb,
        generation: a.generation,
        endpoint: scheme::container_fqdn(k, apex),
        restart: w.restart,
        health_check: w.health_check.clone(),
    }
}
