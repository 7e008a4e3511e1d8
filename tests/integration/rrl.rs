//! Response rate limiting and DNS cookies against the real server: a flood from one source at
//! ten times the limit, clients elsewhere untouched, and cookies learned and echoed by the real
//! `dig` and `kdig`.

use std::io::Write;
use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::RecordType;

use crate::support::*;

const NAME: &str = "ns1.cluster.test.";

/// Loopback is whitelisted by default; these tests limit it by whitelisting something else.
const LIMITED: [&str; 6] = [
    "--rrl-rate",
    "20",
    "--rrl-slip",
    "2",
    "--rrl-whitelist",
    "192.0.2.1/32",
];

fn query_bytes(id: u16) -> Vec<u8> {
    let mut msg = Message::query();
    msg.metadata.id = id;
    msg.add_query(Query::query(fqdn(NAME), RecordType::A));
    msg.to_vec().expect("encode")
}

fn udp_from(from: &str) -> UdpSocket {
    let socket = UdpSocket::bind(format!("{from}:0")).expect("bind source address");
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    socket
}

/// What came back to `socket`: (answered, slipped), reading until it stays quiet.
fn collect(socket: &UdpSocket) -> (usize, usize) {
    let (mut answered, mut slipped) = (0, 0);
    let mut buf = [0u8; 2048];
    while let Ok(len) = socket.recv(&mut buf) {
        let msg = Message::from_vec(&buf[..len]).expect("a reply parses");
        if msg.metadata.truncation {
            assert!(msg.answers.is_empty(), "a slip is empty");
            slipped += 1;
        } else {
            assert_eq!(msg.answers.len(), 1);
            answered += 1;
        }
    }
    (answered, slipped)
}

/// What has already come back to a non-blocking `socket`: (answered, slipped).
fn drain(socket: &UdpSocket) -> (usize, usize) {
    let (mut answered, mut slipped) = (0, 0);
    let mut buf = [0u8; 2048];
    while let Ok(len) = socket.recv(&mut buf) {
        let msg = Message::from_vec(&buf[..len]).expect("a reply parses");
        if msg.metadata.truncation {
            slipped += 1;
        } else {
            answered += 1;
        }
    }
    (answered, slipped)
}

/// `stackdns_rrl_responses_total{action}` from the API's `/metrics`.
fn rrl_metric(server: &Server, action: &str) -> u64 {
    let mut stream = connect_from("127.0.0.1", api_addr(server));
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN}\r\nconnection: close\r\n\r\n"
    )
    .expect("write");
    let text = read_all(&mut stream);
    let prefix = format!("stackdns_rrl_responses_total{{action=\"{action}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in {text}"))
}

#[test]
fn a_flood_at_ten_times_the_limit_is_answered_slipped_and_dropped_and_others_are_untouched() {
    let server = Server::start(&LIMITED);
    let flood = udp_from("127.0.0.1");
    let neighbour = udp_from("127.0.1.1"); // another /24
    let (mut sent, mut neighbour_sent) = (0, 0);
    let started = Instant::now();
    // 200 queries a second for two seconds, ten times the rate of 20; a neighbour asks the
    // same name ten times a second.
    flood.set_nonblocking(true).expect("nonblocking");
    let (mut answered, mut slipped) = (0, 0);
    while started.elapsed() < Duration::from_secs(2) {
        flood
            .send_to(&query_bytes(sent as u16), server.dns)
            .expect("send");
        sent += 1;
        // Read as we go, so no reply is lost to a full receive buffer.
        let (a, s) = drain(&flood);
        answered += a;
        slipped += s;
        if sent % 20 == 0 {
            neighbour
                .send_to(&query_bytes(neighbour_sent), server.dns)
                .expect("send");
            neighbour_sent += 1;
        }
        if sent % 100 == 50 {
            // TCP is never limited, even from the flooding address.
            let reply = server.dns().try_ask(
                NAME,
                RecordType::A,
                Ask {
                    edns: None,
                    tcp: true,
                },
            );
            assert_eq!(reply.expect("a TCP answer").answers.len(), 1);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    flood.set_nonblocking(false).expect("blocking");
    let (a, s) = collect(&flood);
    let (answered, slipped) = (answered + a, slipped + s);
    let dropped = sent - answered - slipped;
    eprintln!("flood: sent {sent}, answered {answered}, slipped {slipped}, dropped {dropped}");
    // About the rate each second (two or three windows), the rest split by slip 2.
    assert!((20..=60).contains(&answered), "answered {answered} of {sent}");
    assert!(
        slipped.abs_diff(dropped) <= 3,
        "slipped {slipped}, dropped {dropped}"
    );
    assert_eq!(
        collect(&neighbour),
        (neighbour_sent as usize, 0),
        "the neighbour is untouched"
    );
    // The counters say the same.
    assert_eq!(rrl_metric(&server, "slipped"), slipped as u64);
    assert_eq!(rrl_metric(&server, "dropped"), dropped as u64);
}

/// Runs `tool` (dig or kdig) against the server from 127.0.0.1; returns its output.
fn run(tool: &str, server: &Server, args: &[&str]) -> String {
    let output = Command::new(tool)
        .arg(format!("@{}", server.dns.ip()))
        .args(["-p", &server.dns.port().to_string(), "-b", "127.0.0.1"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is installed (dnsutils, knot-dnsutils): {e}"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The full cookie (client and server, hex) a dig or kdig output shows.
fn cookie_in(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.split("COOKIE: ").nth(1))
        .and_then(|rest| rest.split([' ', ';']).next())
        .unwrap_or_else(|| panic!("no COOKIE in:\n{output}"))
        .to_ascii_lowercase()
}

/// Whether dig's or kdig's flags line shows TC.
fn truncated(output: &str) -> bool {
    output
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| l.split("flags:").nth(1).map(str::to_owned))
        .is_some_and(|flags| {
            let flags = flags.split(';').next().unwrap_or("");
            flags.split_whitespace().any(|f| f == "tc")
        })
}

/// Floods `server` from 127.0.0.1 with queries for [`NAME`] until the returned flag is set,
/// so its bucket stays over the limit whatever the second.
fn flood(
    server: &Server,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (flag, dns) = (stop.clone(), server.dns);
    let thread = std::thread::spawn(move || {
        let socket = udp_from("127.0.0.1");
        socket.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 2048];
        let mut id = 0u16;
        while !flag.load(Ordering::Relaxed) {
            let _ = socket.send_to(&query_bytes(id), dns);
            id = id.wrapping_add(1);
            while socket.recv(&mut buf).is_ok() {}
            std::thread::sleep(Duration::from_micros(500));
        }
    });
    (stop, thread)
}

#[test]
fn dig_and_kdig_learn_a_cookie_that_lets_them_through_a_flood() {
    // One response a second per bucket, every limited one slipped: the outcome of each
    // query is certain once the flood has taken the second's one answer.
    let server = Server::start(&[
        "--rrl-rate",
        "1",
        "--rrl-slip",
        "1",
        "--rrl-whitelist",
        "192.0.2.1/32",
    ]);
    // Learn a cookie: a client cookie gets a server cookie (16 bytes, RFC 9018 version 1).
    let first = run("dig", &server, &[NAME, "A", "+cookie", "+tries=1", "+time=1"]);
    assert!(
        first.contains("(good)"),
        "dig checked the echoed client cookie:\n{first}"
    );
    let dig_cookie = cookie_in(&first);
    assert_eq!(dig_cookie.len(), 48, "{dig_cookie}");
    assert_eq!(&dig_cookie[16..24], "01000000");
    let second = run("dig", &server, &[NAME, "A", &format!("+cookie={dig_cookie}")]);
    assert!(
        second.contains("status: NOERROR") && second.contains("(good)"),
        "{second}"
    );
    let kdig_first = run("kdig", &server, &[NAME, "A", "+cookie"]);
    let kdig_cookie = cookie_in(&kdig_first);
    assert_eq!(kdig_cookie.len(), 48, "{kdig_first}");

    let (stop, flooding) = flood(&server);
    std::thread::sleep(Duration::from_millis(100));
    // Without a cookie, over UDP only: an empty truncated reply. (The flood takes each
    // second's one answer within a millisecond; two of three is certain enough.)
    let limited = (0..3)
        .filter(|_| {
            let plain = run(
                "dig",
                &server,
                &[NAME, "A", "+ignore", "+tries=1", "+time=1", "+nocookie"],
            );
            truncated(&plain) && plain.contains("ANSWER: 0")
        })
        .count();
    assert!(limited >= 2, "{limited} of 3 plain queries limited");
    // With the server cookie it learned, each tool is answered at once, again and again.
    for _ in 0..5 {
        let dig = run(
            "dig",
            &server,
            &[NAME, "A", "+ignore", "+tries=1", &format!("+cookie={dig_cookie}")],
        );
        assert!(dig.contains("ANSWER: 1") && !truncated(&dig), "{dig}");
        let kdig = run(
            "kdig",
            &server,
            &[NAME, "A", "+notcp", "+retry=0", &format!("+cookie={kdig_cookie}")],
        );
        assert!(kdig.contains("ANSWER: 1") && !truncated(&kdig), "{kdig}");
    }
    // A client cookie alone gets BADCOOKIE with a fresh server cookie instead of the slip,
    // and dig retries with it (RFC 7873 §5.3) and is answered.
    let learning = run(
        "dig",
        &server,
        &[NAME, "A", "+cookie", "+ignore", "+tries=2", "+time=1"],
    );
    assert!(
        learning.contains("BADCOOKIE"),
        "dig saw the BADCOOKIE:\n{learning}"
    );
    assert!(
        learning.contains("ANSWER: 1"),
        "and was answered on its retry:\n{learning}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flooding.join().expect("flood thread");
}
