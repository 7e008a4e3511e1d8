//! The whole DNS handler, as every transport calls it, over a snapshot with zone-file records,
//! a node, containers and a service with SRV names: parse, TSIG, cookies, transfers (streamed
//! to the end), answers and rate limiting. The first byte picks the transport and the peer.

#![no_main]

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use stackdns::dns::answer::{Scratch, Transport};
use stackdns::dns::cookie::Cookies;
use stackdns::dns::handler::{Context, Outcome, Single, handle, handle_message};
use stackdns::dns::rrl::{Rrl, RrlConfig};
use stackdns::dns::stats::Channel;
use stackdns::dns::xfr::TransferAcl;
use stackdns::model::{ContainerKey, Label, Port, Protocol, ServiceKey};
use stackdns::snapshot::journal::JournalLimits;
use stackdns::snapshot::platform::Member;
use stackdns::snapshot::{Policy, Projection, Rotation, Snapshot};

const ZONE: &str = "$ORIGIN cluster.test.\n$TTL 3600\n\
    @ IN SOA ns1 hostmaster 1 3600 600 604800 5\n\
    @ IN NS ns1\n\
    ns1 IN A 127.0.0.1\n\
    ns1 IN AAAA ::1\n\
    www IN CNAME web.quickstart-ruby.honeniq.svc\n\
    loop IN CNAME loop\n\
    txt IN TXT \"hello\" \"world\"\n";

const KEY: &str = "xfr-key:hmac-sha256:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn label(text: &str) -> Label {
    Label::parse("fuzz", text).expect("a label")
}

/// Serial 2: the zone file alone; serial 3: a node, a service of 40 containers with SRV
/// names; so the journal holds 2 -> 3 for IXFR.
static SNAPSHOT: LazyLock<Arc<Snapshot>> = LazyLock::new(|| {
    let zone = stackdns::dns::zonefile::parse(ZONE, None, "fuzz zone").expect("zone parses");
    let policy = Policy {
        ttl: 5,
        rotation: Rotation::Cyclic,
        max_answers: 0,
    };
    let mut p = Projection::new(zone, policy, JournalLimits::SMALL);
    let _ = p.publish(2);
    p.node(&label("n1"), Some("10.1.1.1".parse().expect("ip")));
    let keys: Vec<ContainerKey> = (1..=40)
        .map(|i| ContainerKey {
            user: label("honeniq"),
            stack: label("quickstart-ruby"),
            name: label(&format!("web-{i}")),
        })
        .collect();
    let ports = [Port {
        container_port: 80,
        host_port: Some(8080),
        protocol: Protocol::Tcp,
    }];
    let members: Vec<Member<'_>> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let address: IpAddr = if i % 2 == 0 {
                format!("10.0.0.{}", i + 1).parse().expect("ip")
            } else {
                format!("fd00::{}", i + 1).parse().expect("ip")
            };
            p.container(key, true, Some(address));
            Member {
                key,
                address: Some(address),
                ports: &ports,
            }
        })
        .collect();
    let service = ServiceKey {
        user: label("honeniq"),
        stack: label("quickstart-ruby"),
        service: label("web"),
    };
    p.service(&service, &members, None);
    Arc::new(p.publish(3).0)
});

static CONTEXT: LazyLock<Context> = LazyLock::new(|| Context {
    acl: TransferAcl {
        allow: vec!["127.0.0.0/8".parse().expect("net")],
        keys: vec![KEY.parse().expect("key")],
    },
    cookies: Some(Cookies::new([3; 32])),
    rrl: Some(Rrl::new(RrlConfig {
        rate: 5,
        slip: 2,
        ipv4_prefix: 24,
        ipv6_prefix: 56,
        whitelist: vec!["192.0.2.0/24".parse().expect("net")],
        table_size: 1024,
    })),
    ..Context::default()
});

fuzz_target!(|data: &[u8]| {
    let Some((&how, packet)) = data.split_first() else {
        return;
    };
    // Bit 0 and bit 7: UDP, TCP, DoH/DoQ (one message), TLS 1.2 (no transfers).
    let transport = match (how & 1, how >> 7) {
        (0, 0) => Transport::Udp,
        (_, 0) => Transport::Tcp,
        (0, _) => Transport::Message,
        _ => Transport::Tls { tls13: false },
    };
    let peer: IpAddr = match (how >> 1) & 3 {
        0 => "127.0.0.1".parse().expect("ip"), // may transfer
        1 => "10.9.9.9".parse().expect("ip"),
        2 => "192.0.2.7".parse().expect("ip"), // never limited
        _ => "2001:db8::1".parse().expect("ip"),
    };
    let mut out = Vec::new();
    if transport == Transport::Message {
        if let Single::Reply(signer) = handle_message(
            packet,
            peer,
            Channel::Https,
            &SNAPSHOT,
            &CONTEXT,
            &mut Scratch::default(),
            CONTEXT.counters.shared(),
            &mut out,
        ) {
            assert!(out.len() >= 12, "a reply has a header");
            if let Some(mut signer) = signer {
                signer.sign(&mut out);
            }
            let _ = stackdns::dns::wire::min_ttl(&out);
        }
        return;
    }
    let outcome = handle(
        packet,
        peer,
        transport,
        &SNAPSHOT,
        &CONTEXT,
        &mut Scratch::default(),
        CONTEXT.counters.shared(),
        &mut out,
    );
    match outcome {
        Outcome::Reply => {
            assert!(out.len() >= 12, "a reply has a header");
            if transport == Transport::Udp {
                assert!(out.len() <= 1232, "a UDP reply of {} bytes", out.len());
            }
        }
        Outcome::Drop => {}
        Outcome::Transfer(job) => {
            let _ = job.run::<()>(|message| {
                assert!(message.len() <= 65535, "a transfer message fits a TCP frame");
                Ok(())
            });
        }
    }
});
