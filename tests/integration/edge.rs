//! Resource limits on the network edges, driven the way the attacker's probe drove them: many
//! idle connections, headers a byte at a time, a declared body that never comes, messages that
//! stop half-way. Clients come from different loopback addresses (127.0.0.0/8 is all on `lo`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::support::*;

/// `GET /readyz` from `from` on a fresh connection: the status line.
fn readyz_from(from: &str, server: &Server) -> String {
    let mut stream = connect_from(from, api_addr(server));
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .expect("write");
    read_all(&mut stream).lines().next().unwrap_or("").to_owned()
}

/// True once the server has closed `stream` (EOF or reset), within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).expect("timeout");
    let mut byte = [0u8; 512];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                );
            }
        }
    }
}

/// A TCP query for the apex SOA on `stream`: the rcode, or `None` if the connection failed.
fn soa_over(stream: &mut TcpStream) -> Option<ResponseCode> {
    let mut msg = Message::query();
    msg.metadata.id = 7;
    msg.add_query(Query::query(fqdn(ZONE), RecordType::SOA));
    let bytes = msg.to_vec().expect("encode");
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).ok()?;
    let reply = read_frame(stream)?;
    Some(Message::from_vec(&reply).ok()?.metadata.response_code)
}

#[test]
fn one_client_holding_api_connections_runs_into_its_own_cap() {
    let server = Server::start(&["--api-max-conns-per-client", "8", "--api-read-timeout-ms", "1500"]);
    let api = api_addr(&server);
    // Eight connections that each sent one byte of a request line and then nothing.
    let mut held: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = connect_from("127.0.0.1", api);
            s.write_all(b"G").expect("one byte");
            s
        })
        .collect();
    // Past the cap: refused at once, with a reason, before sending anything.
    std::thread::sleep(Duration::from_millis(100));
    let mut ninth = connect_from("127.0.0.1", api);
    let refused = read_all(&mut ninth);
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(refused.contains("too_many_connections_from_client"), "{refused}");
    // Everyone else is untouched: the API from another address, DNS over TCP.
    assert!(readyz_from("127.0.0.2", &server).contains("200"));
    assert_eq!(
        soa_over(&mut connect_from("127.0.0.2", server.dns)),
        Some(ResponseCode::NoError)
    );
    // The header deadline closes the trickling connections, and the client may connect again.
    for stream in &mut held {
        assert!(
            closed_within(stream, Duration::from_secs(5)),
            "a trickling connection stayed open"
        );
    }
    assert!(readyz_from("127.0.0.1", &server).contains("200"));
}

#[test]
fn headers_sent_a_byte_at_a_time_meet_the_deadline() {
    let server = Server::start(&["--api-read-timeout-ms", "1000"]);
    let mut stream = connect_from("127.0.0.1", api_addr(&server));
    let request = b"GET /readyz HTTP/1.1\r\nhost: x\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    // A byte every 100 ms: the headers would take about 9 s, the deadline is 1 s. The server
    // must cut the connection, which shows as a failed write or a closed read.
    let started = Instant::now();
    let mut cut = false;
    for byte in request {
        if stream.write_all(&[*byte]).is_err() {
            cut = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        cut || closed_within(&mut stream, Duration::from_secs(1)),
        "still open after {:?}",
        started.elapsed()
    );
}

#[test]
fn the_api_total_cap_answers_503_and_dns_keeps_its_descriptors() {
    let server = Server::start(&["--api-max-connections", "6"]);
    let api = api_addr(&server);
    let _held: Vec<TcpStream> = (3..9)
        .map(|i| connect_from(&format!("127.0.0.{i}"), api))
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let refused = read_all(&mut connect_from("127.0.0.20", api));
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("too_many_connections"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 1"),
        "{refused}"
    );
    assert_eq!(
        soa_over(&mut connect_from("127.0.0.20", server.dns)),
        Some(ResponseCode::NoError)
    );
}

#[test]
fn a_declared_body_over_the_limit_is_refused_at_once() {
    let server = Server::start(&[]);
    let mut stream = connect_from("127.0.0.1", api_addr(&server));
    let started = Instant::now();
    stream
        .write_all(
            format!(
                "PUT /v1/nodes/n1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN}\r\n\
                 content-type: application/json\r\ncontent-length: 2000000\r\n\r\n{{}}"
            )
            .as_bytes(),
        )
        .expect("write");
    let reply = read_all(&mut stream);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("payload_too_large"), "{reply}");
    // Not the 30 s request timeout: the body was never waited for.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_beyond_the_concurrency_limit_get_503_and_a_trickled_body_holds_no_slot() {
    let server = std::sync::Arc::new(Server::start(&[
        "--api-max-requests",
        "1",
        "--api-read-timeout-ms",
        "1000",
    ]));
    // A body that never finishes: it holds its connection, not the one request slot...
    let mut slow = connect_from("127.0.0.1", api_addr(&server));
    slow.write_all(
        format!(
            "PUT /v1/nodes/n1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN}\r\n\
             content-type: application/json\r\ncontent-length: 40\r\nconnection: close\r\n\r\n{{\"address\""
        )
        .as_bytes(),
    )
    .expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = server.call("GET", "/v1/info", Some(ADMIN), None).await;
    assert_eq!(status, 200, "{body}");
    // ... and is cut at the read deadline.
    let reply = read_all(&mut slow);
    assert!(
        reply.starts_with("HTTP/1.1 408") && reply.contains("body_timeout"),
        "{reply}"
    );
    // Many requests at once, one slot: some are refused at once, the others served.
    let calls: Vec<_> = (0..60)
        .map(|i| {
            let server = server.clone();
            tokio::spawn(async move {
                let body = serde_json::json!({"address": format!("10.0.1.{i}")});
                server
                    .call("PUT", &format!("/v1/nodes/n{i}"), Some(ADMIN), Some(body))
                    .await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        let (status, body) = call.await.expect("task");
        if status == 503 {
            assert_eq!(body["error"]["code"], "overloaded");
        }
        statuses.push(status);
    }
    let refused = statuses.iter().filter(|&&s| s == 503).count();
    assert!(refused > 0, "no request was refused: {statuses:?}");
    assert!(statuses.iter().all(|&s| s == 503 || s == 201), "{statuses:?}");
    // The probes are never refused for load.
    assert_eq!(server.call("GET", "/healthz", None, None).await.0, 200);
}

#[test]
fn idle_dns_connections_cannot_lock_other_clients_out() {
    let server = Server::start(&["--dns-tcp-max-connections", "8", "--dns-tcp-max-per-client", "4"]);
    let dns = server.dns;
    // The listener full of idle connections, four from each of two addresses.
    let mut idle: Vec<TcpStream> = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3"] {
        for _ in 0..4 {
            idle.push(connect_from(from, dns));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // A fifth from one of them is over its own cap: closed at once, nobody evicted.
    let mut fifth = connect_from("127.0.0.2", dns);
    assert!(closed_within(&mut fifth, Duration::from_secs(2)));
    // Other clients are answered, each replacing the connection idle longest, and keep their
    // connections open: once the first eight are gone, the new ones replace each other.
    let mut clients = Vec::new();
    for i in 0..12 {
        let mut client = connect_from(&format!("127.0.0.{}", 10 + i), dns);
        assert_eq!(soa_over(&mut client), Some(ResponseCode::NoError), "client {i}");
        clients.push(client);
    }
    for (i, stream) in idle.iter_mut().enumerate() {
        assert!(
            closed_within(stream, Duration::from_secs(2)),
            "idle connection {i} still open"
        );
    }
    // Eight connections at most: four of the twelve clients made room for the last four.
    // (Which four depends on when each parked after its answer, so only the count is pinned.)
    let served = clients.iter_mut().map(soa_over).filter(Option::is_some).count();
    assert_eq!(served, 8);
}

#[test]
fn a_dns_message_must_arrive_whole_within_the_io_timeout() {
    let server = Server::start(&["--dns-tcp-io-timeout-ms", "300"]);
    // Half a message, then silence: closed after the I/O deadline, not the 10 s idle timeout.
    let mut stalled = connect_from("127.0.0.1", server.dns);
    stalled.write_all(&[0, 40, 0x12, 0x34]).expect("write");
    let started = Instant::now();
    assert!(closed_within(&mut stalled, Duration::from_secs(5)));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A connection that waits between whole messages is not cut by it.
    let mut patient = connect_from("127.0.0.1", server.dns);
    assert_eq!(soa_over(&mut patient), Some(ResponseCode::NoError));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(soa_over(&mut patient), Some(ResponseCode::NoError));
}

#[test]
fn the_caps_fit_the_descriptor_limit_so_a_full_api_cannot_starve_dns() {
    // 400 descriptors: 256 reserved, the rest shared by the caps in proportion (API 4096,
    // DNS 1024, metrics 64 asked for): about 113 for the API and 28 for DNS over TCP.
    let server = Server::start_with_nofile(400, &[]);
    assert!(server.log().contains("lowered them"), "{}", server.log());
    let api = api_addr(&server);
    // Fill the API from many addresses until it refuses: a 503 from the cap, never a failed
    // accept (which would show as a connection closed without an answer).
    let mut held = Vec::new();
    let refused = (0..300).find_map(|i| {
        let mut stream = connect_from(&format!("127.0.1.{}", i % 250 + 1), api);
        stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let mut first = [0u8; 12];
        match stream.read(&mut first) {
            Ok(n) if n > 0 => Some((i, String::from_utf8_lossy(&first[..n]).into_owned())),
            _ => {
                held.push(stream);
                None
            }
        }
    });
    let (at, status) = refused.expect("the API never refused a connection");
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    assert!((50..200).contains(&at), "refused after {at} connections");
    // DNS over TCP still has its own descriptors, and UDP answers.
    let mut dns = Vec::new();
    for i in 0..20 {
        let mut stream = connect_from(&format!("127.0.2.{}", i + 1), server.dns);
        assert_eq!(
            soa_over(&mut stream),
            Some(ResponseCode::NoError),
            "DNS client {i}"
        );
        dns.push(stream);
    }
    assert_eq!(server.dns().serial(), server.dns().serial());
    assert!(!server.log().contains("accept failed"), "{}", server.log());
}
