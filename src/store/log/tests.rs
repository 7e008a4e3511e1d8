use super::*;
use crate::model::{Container, Port, Protocol, ServiceKey};

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

fn node() -> Node {
    Node {
        name: label("node-1"),
        address: "127.0.0.2".parse().expect("ip"),
        labels: Default::default(),
        tags: vec![label("edge")],
        capacity: None,
        token_sha256: "ab".repeat(32),
        owner: None,
        tenants: Some(vec![label("honeniq")]),
    }
}

fn container(name: &str) -> Container {
    Container {
        key: key(name),
        node: label("node-1"),
        service: label("web"),
        address: Some("10.0.0.9".parse().expect("ip")),
        ports: vec![Port {
            container_port: 80,
            host_port: Some(8080),
            protocol: Protocol::Tcp,
        }],
        generation: 7,
        running: false,
        ready: true,
        detail: Some("exited".into()),
        placed: true,
        stopped_at: Some(1_700_000_000),
    }
}

fn assignment() -> Assignment {
    Assignment {
        container: key("web-1"),
        service: ServiceKey {
            user: label("honeniq"),
            stack: label("quickstart-ruby"),
            service: label("web"),
        },
        node: label("node-1"),
        ports: vec![],
        mem_limit_mb: Some(64),
        spec_hash: 42,
        generation: 3,
    }
}

/// One of every op.
fn every_op() -> Vec<Op> {
    vec![
        Op::PutNode(node()),
        Op::DeleteNode(label("node-2")),
        Op::PutContainer(container("web-1")),
        Op::DeleteContainer(key("web-2")),
        Op::SetLost(label("node-1"), true),
        Op::SetLost(label("node-3"), false),
        Op::PutUserToken("cd".repeat(32), label("honeniq")),
        Op::DeleteUserTokens(label("other")),
        Op::DeleteStack(label("honeniq"), label("gone")),
        Op::PutUserLimits(
            label("honeniq"),
            Limits {
                max_containers: 5,
                max_stacks: 2,
                max_nodes: 1,
            },
        ),
        Op::PutAssignment(assignment()),
        Op::DeleteAssignment(key("web-9")),
        Op::AssignmentIndex(u64::MAX - 1),
        Op::PutFloor(label("node-1"), 11),
    ]
}

#[test]
fn an_entry_reads_back_as_it_was_written() {
    let ops = every_op();
    for journal in [
        JournalWrite::Keep,
        JournalWrite::Append {
            to: 9,
            diff: b"difference",
            keep_from: 3,
        },
        JournalWrite::Reset { fingerprint: 0xfeed },
    ] {
        let batch = Batch {
            ops: &ops,
            serial: 4_000_000_000,
            journal,
            after: 12,
        };
        let bytes = encode_entry(&batch).expect("encode");
        let entry = decode_entry(&bytes).expect("decode");
        assert_eq!(entry.serial, 4_000_000_000);
        assert_eq!(format!("{:?}", entry.ops), format!("{ops:?}"));
        assert_eq!(format!("{:?}", entry.journal.as_write()), format!("{journal:?}"));
    }
}

#[test]
fn damaged_bytes_are_refused_with_a_reason_never_a_panic() {
    let ops = every_op();
    let bytes = encode_entry(&Batch {
        ops: &ops,
        serial: 1,
        journal: JournalWrite::Keep,
        after: 0,
    })
    .expect("encode");
    for cut in 0..bytes.len() {
        assert!(
            decode_entry(&bytes[..cut]).is_err(),
            "a prefix of {cut} bytes was accepted"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(decode_entry(&longer), Err(LogError::Trailing(1))));
    assert!(matches!(decode_entry(b"SDX1...."), Err(LogError::Magic(_))));
    let mut bad_tag = bytes[..4 + 4 + 1].to_vec();
    bad_tag.extend_from_slice(&1u32.to_le_bytes());
    bad_tag.push(99);
    assert!(matches!(decode_entry(&bad_tag), Err(LogError::Tag(99))));
}

#[test]
fn an_image_rebuilds_what_was_loaded() {
    let loaded = Loaded {
        serial: 77,
        nodes: vec![node()],
        containers: vec![container("web-1"), container("web-2")],
        lost: vec![label("node-1")],
        user_tokens: vec![("cd".repeat(32), label("honeniq"))],
        stacks: vec![],
        user_limits: vec![(
            label("honeniq"),
            Limits {
                max_containers: 5,
                max_stacks: 2,
                max_nodes: 1,
            },
        )],
        assignments: vec![assignment()],
        assignment_index: 5,
        journal: vec![(76, b"a".to_vec()), (77, b"b".to_vec())],
        fingerprint: Some(99),
        floors: vec![(label("node-1"), 4)],
        position: 0,
    };
    let back = decode_image(&encode_image(&loaded).expect("encode")).expect("decode");
    assert_eq!(format!("{back:?}"), format!("{loaded:?}"));
}
