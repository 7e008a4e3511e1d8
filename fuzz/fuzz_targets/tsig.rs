//! TSIG verification from where the parser found the record: every length in the record is
//! checked against the packet and the RDATA, whatever the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stackdns::dns::tsig::{self, Check};
use stackdns::dns::wire;

const KEYS: [&str; 2] = [
    "xfr-key:hmac-sha256:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    "k:hmac-sha256:AAAA",
];

fuzz_target!(|packet: &[u8]| {
    let keys: Vec<tsig::Key> = KEYS.iter().map(|k| k.parse().expect("key")).collect();
    if let Ok(wire::Query { tsig: Some(at), .. }) = wire::parse(packet) {
        match tsig::check(&keys, packet, at) {
            Check::Unsigned | Check::Malformed => {}
            Check::Refused(reply) => assert!(reply.len() >= 12),
            Check::Valid(mut signer) => {
                let mut reply = packet.to_vec();
                signer.sign(&mut reply);
            }
        }
    }
});
