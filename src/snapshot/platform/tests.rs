//! The projection from platform state to names, and the copy-on-write name table under it.

use super::*;
use crate::model::Protocol;
use crate::zone::Soa;

fn label(s: &str) -> Label {
    Label::parse("test", s).expect("valid label")
}

fn zone() -> Zone {
    let ns1 = b"\x03ns1\x07cluster\x04test\x00".to_vec();
    Zone {
        apex: b"\x07cluster\x04test\x00".to_vec(),
        soa: Soa {
            mname: ns1.clone(),
            rname: b"\x0ahostmaster\x07cluster\x04test\x00".to_vec(),
            file_serial: 1,
            refresh: 3600,
            retry: 600,
            expire: 86400,
            minimum: 5,
            ttl: 3600,
        },
        records: vec![
            crate::zone::StaticRecord {
                owner: vec![],
                rtype: rtype::NS,
                ttl: 3600,
                rdata: ns1,
            },
            crate::zone::StaticRecord {
                owner: b"\x03ns1".to_vec(),
                rtype: rtype::A,
                ttl: 3600,
                rdata: vec![127, 0, 0, 1],
            },
        ],
    }
}

const POLICY: Policy = Policy {
    ttl: 5,
    rotation: Rotation::Cyclic,
    max_answers: 0,
};

fn key(name: &str) -> ContainerKey {
    ContainerKey {
        user: label("u"),
        stack: label("s"),
        name: label(name),
    }
}

fn service() -> ServiceKey {
    ServiceKey {
        user: label("u"),
        stack: label("s"),
        service: label("web"),
    }
}

const HTTP: [Port; 1] = [Port {
    container_port: 80,
    host_port: Some(8080),
    protocol: Protocol::Tcp,
}];

fn rel(labels: &[&str]) -> Vec<u8> {
    name::relative(labels)
}

#[test]
fn services_get_addresses_srv_and_empty_non_terminals() {
    let mut p = Projection::new(zone(), POLICY, JournalLimits::SMALL);
    let (k1, k2, k3) = (key("web-1"), key("web-2"), key("web-3"));
    let addr = |s: &str| Some(s.parse().expect("ip"));
    let members = [
        Member {
            key: &k1,
            address: addr("10.0.0.1"),
            ports: &HTTP,
        },
        Member {
            key: &k2,
            address: addr("10.0.0.1"),
            ports: &HTTP,
        },
        Member {
            key: &k3,
            address: None,
            ports: &HTTP,
        },
    ];
    p.service(&service(), &members, None);
    let snap = p.publish(9).0;

    let svc = snap.lookup(&rel(&["web", "s", "u", "svc"])).expect("svc");
    assert_eq!(svc.rrset(rtype::A).expect("A").records.len(), 1, "de-duplicated");
    let srv = snap
        .lookup(&rel(&["_80", "_tcp", "web", "s", "u", "svc"]))
        .and_then(|e| e.rrset(rtype::SRV));
    let srv = srv.expect("SRV");
    assert_eq!(
        (srv.records.len(), srv.additionals.len()),
        (2, 2),
        "live members only"
    );
    for ent in [
        &["s", "u", "svc"][..],
        &["u", "svc"],
        &["svc"],
        &["_tcp", "web", "s", "u", "svc"],
    ] {
        assert!(
            snap.lookup(&rel(ent))
                .expect("empty non-terminal")
                .rrsets
                .is_empty(),
            "{ent:?}"
        );
    }
    let apex = snap.lookup(b"").expect("apex");
    assert_eq!(
        apex.rrset(rtype::SOA).expect("SOA").records[0][..],
        zone().soa.rdata(9)[..]
    );
    let ns = apex.rrset(rtype::NS).expect("NS");
    assert_eq!(ns.additionals.len(), 1, "glue for ns1");
    assert_eq!(snap.serial, 9);
}

#[test]
fn names_come_and_go_with_their_last_member() {
    let mut p = Projection::new(zone(), POLICY, JournalLimits::SMALL);
    let k1 = key("web-1");
    let up = [Member {
        key: &k1,
        address: Some("10.0.0.1".parse().expect("ip")),
        ports: &HTTP,
    }];
    p.service(&service(), &up, None);
    p.container(&k1, true, up[0].address);
    p.node(&label("n1"), Some("10.0.0.1".parse().expect("ip")));
    let before = p.publish(2).0;
    let static_names = Projection::new(zone(), POLICY, JournalLimits::SMALL)
        .publish(1)
        .0
        .len();
    assert!(before.len() > static_names);

    // The service loses its ports: its SRV name and the `_tcp` non-terminal go.
    let no_ports = [Member {
        key: &k1,
        address: up[0].address,
        ports: &[],
    }];
    p.service(&service(), &no_ports, None);
    let (snap, diff) = p.publish(3);
    let diff = diff.expect("a difference from serial 2");
    assert_eq!((diff.from, diff.to, diff.added().len()), (2, 3, 0));
    assert_eq!(diff.removed().len(), 1, "the SRV record: {diff:?}");
    assert_eq!(diff.removed().next().map(|r| r.rtype), Some(rtype::SRV));
    assert_eq!(snap.journal.since(2).map(<[_]>::len), Some(1));
    assert!(
        snap.lookup(&rel(&["_80", "_tcp", "web", "s", "u", "svc"]))
            .is_none()
    );
    assert!(snap.lookup(&rel(&["_tcp", "web", "s", "u", "svc"])).is_none());
    assert!(
        before
            .lookup(&rel(&["_80", "_tcp", "web", "s", "u", "svc"]))
            .is_some(),
        "published snapshots never change"
    );

    // Everything forgotten: back to the zone file's names exactly.
    p.service(&service(), &[], None);
    p.container(&k1, false, None);
    p.node(&label("n1"), None);
    let snap = p.publish(4).0;
    assert_eq!(snap.len(), static_names);
    assert!(snap.lookup(&rel(&["svc"])).is_none() && snap.lookup(&rel(&["node"])).is_none());
    assert!(snap.lookup(&rel(&["ns1"])).is_some());
}

#[test]
fn unchanged_entries_keep_their_rotation() {
    let mut p = Projection::new(zone(), POLICY, JournalLimits::SMALL);
    let keys: Vec<_> = (1..=3).map(|i| key(&format!("web-{i}"))).collect();
    let members: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| Member {
            key: k,
            address: Some(format!("10.0.0.{i}").parse().expect("ip")),
            ports: &[],
        })
        .collect();
    p.service(&service(), &members, None);
    let first = p.publish(2).0;
    let a = |s: &Snapshot| {
        s.lookup(&rel(&["web", "s", "u", "svc"]))
            .and_then(|e| e.rrset(rtype::A))
            .map(|r| r as *const RRset)
    };
    p.service(&service(), &members, None);
    let second = p.publish(3).0;
    assert_eq!(a(&first), a(&second), "the same RRset object, cursor included");
    let starts: std::collections::BTreeSet<_> = (0..3)
        .map(|_| {
            second
                .lookup(&rel(&["web", "s", "u", "svc"]))
                .and_then(|e| e.rrset(rtype::A))
                .expect("A")
                .next_start()
        })
        .collect();
    assert_eq!(starts.len(), 3, "cyclic rotation visits every start");
}

#[test]
fn a_stored_journal_is_not_resumed_when_the_journal_is_off() {
    use crate::snapshot::journal::Diff;
    let stored = || Journal::from_diffs(vec![Diff::new(1, 2, &[], &[])]);
    let off = JournalLimits {
        diffs: 0,
        bytes: 1 << 20,
    };
    let mut p = Projection::new(zone(), POLICY, off);
    p.publish(2);
    p.resume_journal(stored());
    assert!(
        p.publish(3).0.journal.since(1).is_none(),
        "off: no IXFR from the old chain"
    );
    let mut p = Projection::new(zone(), POLICY, JournalLimits::SMALL);
    p.publish(2);
    p.resume_journal(stored());
    assert!(
        p.publish(3).0.journal.since(1).is_some(),
        "on: the chain continues"
    );
}
