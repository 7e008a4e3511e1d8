//! The name scheme (design §2): how nodes, containers and services are named under the zone.
//!
//! ```text
//! <node>.node                              a node
//! <container>.<stack>.<user>.cont          one container
//! <service>.<stack>.<user>.svc             every running container of a service
//! _<port>._<proto>.<service>.<stack>.<user>.svc   SRV of a published port
//! ```
//!
//! The one place these formats are written down: the snapshot takes the wire form relative to
//! the apex, the API the text form with the apex appended (`cluster.test.`).

use crate::model::{ContainerKey, Label, Protocol, ServiceKey};
use crate::name;

/// The labels under the apex that own the dynamic names.
pub const SVC: &str = "svc";
pub const CONT: &str = "cont";
pub const NODE: &str = "node";

fn node_labels(node: &Label) -> [&str; 2] {
    [node.as_str(), NODE]
}

fn container_labels(key: &ContainerKey) -> [&str; 4] {
    [key.name.as_str(), key.stack.as_str(), key.user.as_str(), CONT]
}

fn service_labels(key: &ServiceKey) -> [&str; 4] {
    [key.service.as_str(), key.stack.as_str(), key.user.as_str(), SVC]
}

/// `_<port>` and `_<proto>`, the labels an SRV owner adds in front of its service's name.
fn srv_labels(container_port: u16, protocol: Protocol) -> (String, &'static str) {
    let proto = match protocol {
        Protocol::Tcp => "_tcp",
        Protocol::Udp => "_udp",
    };
    (format!("_{container_port}"), proto)
}

/// `<node>.node`, wire form relative to the apex.
pub fn node_rel(node: &Label) -> Vec<u8> {
    name::relative(&node_labels(node))
}

/// `<container>.<stack>.<user>.cont`, wire form relative to the apex.
pub fn container_rel(key: &ContainerKey) -> Vec<u8> {
    name::relative(&container_labels(key))
}

/// `<container>.<stack>.<user>.cont` and then `apex`, appended to `out` (an SRV target, written
/// into its RDATA without a buffer of its own), and how long that is, to size `out` first.
pub fn container_target_len(key: &ContainerKey, apex: &[u8]) -> usize {
    name::relative_len(&container_labels(key)) + apex.len()
}

pub fn push_container_target(out: &mut Vec<u8>, key: &ContainerKey, apex: &[u8]) {
    name::push_relative(out, &container_labels(key));
    out.extend_from_slice(apex);
}

/// `<service>.<stack>.<user>.svc`, wire form relative to the apex.
pub fn service_rel(key: &ServiceKey) -> Vec<u8> {
    name::relative(&service_labels(key))
}

/// `_<port>._<proto>` followed by `service_rel` (the service's relative wire name).
pub fn srv_rel(container_port: u16, protocol: Protocol, service_rel: &[u8]) -> Vec<u8> {
    let (port, proto) = srv_labels(container_port, protocol);
    let mut owner = Vec::with_capacity(service_rel.len() + port.len() + proto.len() + 2);
    name::push_label(&mut owner, &port);
    name::push_label(&mut owner, proto);
    owner.extend_from_slice(service_rel);
    owner
}

/// Text names with the apex appended; `apex` is absolute with its trailing dot (`cluster.test.`).
fn fqdn(labels: &[&str], apex: &str) -> String {
    let mut out = String::with_capacity(labels.iter().map(|l| l.len() + 1).sum::<usize>() + apex.len());
    for label in labels {
        out.push_str(label);
        out.push('.');
    }
    out.push_str(apex);
    out
}

/// `<node>.node.<apex>`.
pub fn node_fqdn(node: &Label, apex: &str) -> String {
    fqdn(&node_labels(node), apex)
}

/// `<container>.<stack>.<user>.cont.<apex>`.
pub fn container_fqdn(key: &ContainerKey, apex: &str) -> String {
    fqdn(&container_labels(key), apex)
}

/// `<service>.<stack>.<user>.svc.<apex>`.
pub fn service_fqdn(key: &ServiceKey, apex: &str) -> String {
    fqdn(&service_labels(key), apex)
}

/// `_<port>._<proto>.<service>.<stack>.<user>.svc.<apex>`.
pub fn srv_fqdn(container_port: u16, protocol: Protocol, key: &ServiceKey, apex: &str) -> String {
    let (port, proto) = srv_labels(container_port, protocol);
    let service = service_labels(key);
    fqdn(
        &[&port, proto, service[0], service[1], service[2], service[3]],
        apex,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(s: &str) -> Label {
        Label::parse("test", s).expect("valid label")
    }

    #[test]
    fn wire_and_text_forms_name_the_same_things() {
        let service = ServiceKey {
            user: label("honeniq"),
            stack: label("quickstart-ruby"),
            service: label("web"),
        };
        let container = ContainerKey {
            user: label("honeniq"),
            stack: label("quickstart-ruby"),
            name: label("web-1"),
        };
        let apex = "cluster.test.";
        let cases: [(Vec<u8>, String, &str); 4] = [
            (
                node_rel(&label("node-do")),
                node_fqdn(&label("node-do"), apex),
                "node-do.node.cluster.test.",
            ),
            (
                container_rel(&container),
                container_fqdn(&container, apex),
                "web-1.quickstart-ruby.honeniq.cont.cluster.test.",
            ),
            (
                service_rel(&service),
                service_fqdn(&service, apex),
                "web.quickstart-ruby.honeniq.svc.cluster.test.",
            ),
            (
                srv_rel(80, Protocol::Tcp, &service_rel(&service)),
                srv_fqdn(80, Protocol::Tcp, &service, apex),
                "_80._tcp.web.quickstart-ruby.honeniq.svc.cluster.test.",
            ),
        ];
        for (wire, text, expected) in cases {
            assert_eq!(text, expected);
            assert_eq!(format!("{}.{apex}", name::to_text(&wire)), expected);
        }
        assert_eq!(
            srv_fqdn(53, Protocol::Udp, &service, apex),
            "_53._udp.web.quickstart-ruby.honeniq.svc.cluster.test."
        );
    }
}
