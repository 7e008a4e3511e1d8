//! The encrypted transports against real clients: kdig over TLS, HTTPS (POST and GET) and
//! QUIC gets what kdig over TCP gets; zone transfers over TLS (kdig, and a rustls client that
//! is refused them over TLS 1.2); a certificate reloaded on SIGHUP; certificate problems stop
//! the start with an error that names them. NSD as an XoT secondary is in `secondary.rs`.
//!
//! Needs `kdig` (Debian `knot-dnsutils`) and `curl`; skipped where absent unless
//! STACKDNS_REQUIRE_PEERS=1.

use std::io::Read;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support::*;
use crate::tls_peers::*;

/// A node with `web` (three containers, host port 80) and `big` (120 containers: more
/// addresses than a 1232-byte UDP answer holds).
async fn populate(s: &Server) {
    let token = s.add_node("node-1", "10.0.0.1").await;
    for i in 1..=3 {
        let body = json!({"service": "web", "address": format!("172.17.0.{i}"), "ports": [{"container_port": 80, "host_port": 32767 + i}], "generation": 1});
        assert_eq!(s.report("node-1", &token, &format!("web-{i}"), body).await.0, 201);
    }
    for i in 1..=120 {
        let body = json!({"service": "big", "address": format!("172.18.{}.{}", i / 200, i % 200 + 1), "generation": 1});
        assert_eq!(s.report("node-1", &token, &format!("big-{i}"), body).await.0, 201);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kdig_over_tls_https_and_quic_gets_what_kdig_over_tcp_gets() {
    let Some(bin) = kdig_binary() else { return };
    let pki = Pki::new();
    let s = start_encrypted(&pki, &[]);
    populate(&s).await;
    let (dot, doh, doq) = encrypted(&s);
    let ca = format!("+tls-ca={}", pki.ca.display());
    let host = format!("+tls-hostname={TLS_NAME}");
    let svc = "quickstart-ruby.honeniq.svc.cluster.test";
    let queries = [
        (format!("web.{svc}"), "A"),
        (format!("_80._tcp.web.{svc}"), "SRV"),
        (format!("nope.{svc}"), "A"),
        (format!("web.{svc}"), "TXT"),
        (format!("big.{svc}"), "A"),
    ];
    for (name, rtype) in &queries {
        let tcp = kdig(&bin, s.dns, &["+tcp"], name, rtype);
        let udp = kdig(&bin, s.dns, &["+ignore"], name, rtype);
        let transports: [(&str, SocketAddr, Vec<&str>); 4] = [
            ("tls", dot, vec![&ca, &host]),
            ("https (POST)", doh, vec!["+https", &ca, &host]),
            ("https (GET)", doh, vec!["+https-get", &ca, &host]),
            // kdig 3.2 crashes verifying a certificate over QUIC: opportunistic TLS there.
            ("quic", doq, vec!["+quic"]),
        ];
        for (label, at, options) in &transports {
            let got = kdig(&bin, *at, options, name, rtype);
            assert_eq!(got, tcp, "{name} {rtype} over {label}");
        }
        if name.starts_with("big") {
            assert!(udp.truncated, "the big answer does not fit UDP: {udp:?}");
            assert_eq!(tcp.answer.len(), 120, "{tcp:?}");
        } else {
            assert_eq!(udp, tcp, "{name} {rtype}: UDP and TCP agree");
        }
    }
    let nx = kdig(&bin, dot, &[&ca, &host], &format!("nope.{svc}"), "A");
    assert_eq!(nx.status, "NXDOMAIN");
    assert_eq!(nx.authority.len(), 1, "the SOA: {nx:?}");
    let srv = kdig(&bin, doq, &["+quic"], &format!("_80._tcp.web.{svc}"), "SRV");
    assert_eq!(srv.answer.len(), 3, "{srv:?}");
    assert_eq!(srv.additional.len(), 3, "each target's address: {srv:?}");
    for (at, options) in [
        (doh, vec!["+https", &ca, &host, "+edns=1"]),
        (doq, vec!["+quic", "+edns=1"]),
    ] {
        let badvers = kdig(&bin, at, &options, "cluster.test", "SOA");
        // Over QUIC the reply goes through hickory's encoder: its extended rcode too.
        assert_eq!(badvers.status, "BADVERS", "{options:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn zone_transfers_go_over_tls_1_3_and_not_over_tls_1_2_https_or_quic() {
    let Some(bin) = kdig_binary() else { return };
    let pki = Pki::new();
    let s = start_encrypted(&pki, &["--allow-transfer", "127.0.0.1/32"]);
    populate(&s).await;
    let (dot, doh, doq) = encrypted(&s);
    let ca = format!("+tls-ca={}", pki.ca.display());
    let host = format!("+tls-hostname={TLS_NAME}");

    let tcp = kdig(&bin, s.dns, &["+tcp"], "cluster.test", "AXFR");
    let tls = kdig(&bin, dot, &[&ca, &host], "cluster.test", "AXFR");
    assert!(
        tcp.records > 240,
        "two records per container and more: {}",
        tcp.records
    );
    assert_eq!(tls.answer, tcp.answer, "AXFR over TLS is AXFR over TCP");
    assert_eq!(tls.records, tcp.records);

    // An increment over TLS: one container more since the serial we knew.
    let serial = s.dns().serial();
    let token = s.add_node("node-2", "10.0.0.2").await;
    let body = json!({"service": "web", "address": "172.17.0.9", "generation": 1});
    assert_eq!(s.report("node-2", &token, "web-9", body).await.0, 201);
    let ixfr = kdig(
        &bin,
        dot,
        &[&ca, &host],
        "cluster.test",
        &format!("IXFR={serial}"),
    );
    assert!(
        ixfr.answer.iter().any(|r| r.contains("172.17.0.9")),
        "the increment holds the new address: {ixfr:?}"
    );
    assert!(
        ixfr.records < 20,
        "an increment, not the zone: {} records",
        ixfr.records
    );
    assert!(eventually(Duration::from_secs(2), || s
        .log()
        .matches("kind=\"IXFR\"")
        .count()
        >= 1));

    for (label, at, options) in [
        ("https", doh, vec!["+https", &ca, &host]),
        ("quic", doq, vec!["+quic"]),
    ] {
        let soa = kdig(&bin, at, &options, "cluster.test", &format!("IXFR={serial}"));
        assert_eq!(soa.status, "REFUSED", "IXFR over {label}: {soa:?}");
    }

    // RFC 9103 §7.1: XoT needs TLS 1.3. A client held to TLS 1.2 gets answers, not the zone.
    let ca_der = std::fs::read(&pki.ca).expect("CA");
    for (version, expected) in [(&rustls::version::TLS12, 5u8), (&rustls::version::TLS13, 0)] {
        let mut stream = tls_client(dot, &ca_der, version, b"dot");
        let reply = exchange(&mut stream, &query(0x2a, "cluster.test", 252));
        assert_eq!(reply[3] & 0x0f, expected, "AXFR over {version:?}");
        let reply = exchange(&mut stream, &query(0x2b, "cluster.test", 6));
        assert_eq!(reply[3] & 0x0f, 0, "SOA over {version:?}, same connection");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_certificate_is_taken_on_sighup_and_a_bad_one_is_not() {
    let Some(bin) = kdig_binary() else { return };
    let mut pki = Pki::new();
    let s = start_encrypted(&pki, &[]);
    let (dot, ..) = encrypted(&s);
    let ca = format!("+tls-ca={}", pki.ca.display());
    let asks = |host: &str| {
        let host = format!("+tls-hostname={host}");
        kdig(&bin, dot, &[&ca, &host, "+tls"], "cluster.test", "SOA").status == "NOERROR"
    };
    assert!(asks(TLS_NAME));
    assert!(
        !asks("ns2.cluster.test"),
        "the first certificate does not name ns2"
    );

    pki.issue(&["ns2.cluster.test"], -1, 30);
    let hangup = |s: &Server| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(s.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP");
    };
    hangup(&s);
    assert!(eventually(Duration::from_secs(5), || s
        .log()
        .contains("TLS certificate reloaded")));
    assert!(asks("ns2.cluster.test"), "the new certificate is presented");

    std::fs::write(&pki.key, "garbage").expect("break the key");
    hangup(&s);
    assert!(eventually(Duration::from_secs(5), || s
        .log()
        .contains("the certificate in use stays")));
    assert!(
        asks("ns2.cluster.test"),
        "still serving with the last good certificate"
    );
}

/// Runs `stackdns serve` with `extra` on a fresh data directory; it must fail to start.
fn start_fails(extra: &[String]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::support::start_fails(&dir.path().join("data"), extra).1
}

#[test]
fn certificate_problems_stop_the_start_with_an_error_that_names_them() {
    let mut pki = Pki::new();
    let dot = ["--dot".to_owned(), "127.0.0.1:0".to_owned()];
    let with = |more: &[&str], pki: &Pki| -> Vec<String> {
        let mut args = dot.to_vec();
        args.extend(pki.flags());
        args.extend(more.iter().map(|s| (*s).to_owned()));
        args
    };
    let cert = pki.cert.display().to_string();

    let err = start_fails(&with(&["--tls-name", "ns9.cluster.test"], &pki));
    assert!(
        err.contains(&format!(
            "TLS certificate {cert}: is for {TLS_NAME}, 127.0.0.1, not ns9.cluster.test"
        )),
        "{err}"
    );
    let err = start_fails(&dot);
    assert!(
        err.contains("--dot, --doh and --doq need --tls-cert and --tls-key"),
        "{err}"
    );
    let missing = pki.dir.path().join("absent.pem").display().to_string();
    let err = start_fails(
        &[
            &dot[..],
            &[
                "--tls-cert".to_owned(),
                cert.clone(),
                "--tls-key".to_owned(),
                missing.clone(),
            ],
        ]
        .concat(),
    );
    assert!(err.contains(&format!("TLS key {missing}: cannot read")), "{err}");

    let other = Pki::new();
    let mismatched = [
        &dot[..],
        &[
            "--tls-cert".to_owned(),
            cert.clone(),
            "--tls-key".to_owned(),
            other.key.display().to_string(),
        ],
    ]
    .concat();
    let err = start_fails(&mismatched);
    assert!(err.contains("is not the key of the certificate in"), "{err}");

    pki.issue(&[TLS_NAME], -30, -1);
    let err = start_fails(&with(&[], &pki));
    assert!(
        err.contains(&format!("TLS certificate {cert}: expired on")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_queries_get_signed_answers_over_every_transport() {
    let Some(bin) = kdig_binary() else { return };
    let pki = Pki::new();
    let secret = "c3RhY2tkbnMgdGVzdCBzZWNyZXQgZm9yIFRTSUc=";
    let key = format!("xfr-key:hmac-sha256:{secret}");
    // No --allow-transfer: only the signature lets the transfer through.
    let s = start_encrypted(&pki, &["--tsig-key", &key]);
    populate(&s).await;
    let (dot, doh, doq) = encrypted(&s);
    let ca = format!("+tls-ca={}", pki.ca.display());
    let host = format!("+tls-hostname={TLS_NAME}");
    let signed = format!("-y hmac-sha256:xfr-key:{secret}");
    let wrong = "-y hmac-sha256:xfr-key:d3Jvbmcgc2VjcmV0IGZvciBUU0lHIHRlc3Rpbmc=".to_owned();
    let svc = "_80._tcp.web.quickstart-ruby.honeniq.svc.cluster.test";
    for (label, at, options) in [
        ("tcp", s.dns, vec!["+tcp"]),
        ("tls", dot, vec![&ca, &host]),
        ("https", doh, vec!["+https", &ca, &host]),
        ("quic", doq, vec!["+quic"]),
    ] {
        // kdig checks the reply's MAC: a reply re-encoded after signing would fail here.
        let mut with_key: Vec<&str> = signed.split(' ').collect();
        with_key.extend(&options);
        let reply = kdig(&bin, at, &with_key, svc, "SRV");
        assert_eq!(reply.status, "NOERROR", "signed SRV over {label}: {reply:?}");
        assert!(
            !reply.unverified,
            "kdig could not verify the reply's TSIG over {label}"
        );
        assert_eq!(reply.additional.len(), 3, "{label}: {reply:?}");
        let mut bad: Vec<&str> = wrong.split(' ').collect();
        bad.extend(&options);
        assert_eq!(
            kdig(&bin, at, &bad, svc, "SRV").status,
            "BADSIG",
            "wrong key over {label}"
        );
    }
    let mut axfr: Vec<&str> = signed.split(' ').collect();
    axfr.extend([ca.as_str(), host.as_str()]);
    let zone = kdig(&bin, dot, &axfr, "cluster.test", "AXFR");
    assert!(
        zone.records > 240,
        "a signed AXFR over TLS: {} records",
        zone.records
    );
    assert!(eventually(Duration::from_secs(2), || s
        .log()
        .contains("signed=true")));
}

/// `curl` over HTTP/2 to the DoH listener: the status, and the headers.
fn curl(at: SocketAddr, args: &[&str], path: &str) -> (String, String) {
    let output = Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "-w",
            "%{http_code}",
        ])
        .args(args)
        .arg(format!("https://{at}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let status = text.lines().last().unwrap_or("").trim().to_owned();
    (status, text.to_ascii_lowercase())
}

#[tokio::test(flavor = "multi_thread")]
async fn doh_answers_what_is_not_a_dns_query_with_a_status_that_says_why() {
    let Some(_) = peer("curl", "curl") else { return };
    let pki = Pki::new();
    let s = start_encrypted(&pki, &[]);
    let doh = listening(&s, "doh");
    // cluster.test SOA, ID 0, base64url without padding.
    let soa = "AAABAAABAAAAAAAAB2NsdXN0ZXIEdGVzdAAABgAB";
    let (status, headers) = curl(doh, &[], &format!("/dns-query?dns={soa}"));
    assert_eq!(status, "200", "{headers}");
    assert!(
        headers.contains("content-type: application/dns-message"),
        "{headers}"
    );
    assert!(
        headers.contains("cache-control: max-age=3600"),
        "the SOA's TTL: {headers}"
    );

    let body = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(body.path(), vec![0u8; 70_000]).expect("write");
    let big = format!("@{}", body.path().display());
    for (args, path, expected) in [
        (vec![], "/other", "404"),
        (vec!["-X", "PUT"], "/dns-query", "405"),
        (
            vec!["--data-binary", "x", "-H", "content-type: text/plain"],
            "/dns-query",
            "415",
        ),
        (vec![], "/dns-query", "400"),
        (vec![], "/dns-query?dns=***", "400"),
        (
            vec![
                "--data-binary",
                &big,
                "-H",
                "content-type: application/dns-message",
            ],
            "/dns-query",
            "413",
        ),
        // A DNS response is not a query.
        (
            vec![],
            "/dns-query?dns=AACAAAABAAAAAAAAB2NsdXN0ZXIEdGVzdAAABgAB",
            "400",
        ),
    ] {
        let (status, headers) = curl(doh, &args, path);
        assert_eq!(status, expected, "{args:?} {path}: {headers}");
        if expected == "405" {
            assert!(headers.contains("allow: get, post"), "{headers}");
        }
    }
    // The server still answers.
    assert_eq!(curl(doh, &[], &format!("/dns-query?dns={soa}")).0, "200");
}

/// A DoH connection that never sends a request holds its place for the idle timeout (10 s),
/// not for ever; meanwhile others are served.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_doh_connection_is_closed_after_the_idle_timeout() {
    let pki = Pki::new();
    let s = start_encrypted(&pki, &[]);
    let doh = listening(&s, "doh");
    let ca = std::fs::read(&pki.ca).expect("CA");
    let opened = std::time::Instant::now();
    let mut silent = tls_client(doh, &ca, &rustls::version::TLS13, b"h2");
    // The handshake completes on the first read or write; then nothing is sent.
    let mut byte = [0u8; 1];
    let closed = loop {
        match silent.read(&mut byte) {
            Ok(0) => break true,
            Ok(_) => continue, // the server's HTTP/2 SETTINGS and pings
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break false;
            }
            Err(_) => break true,
        }
    };
    let waited = opened.elapsed();
    assert!(closed, "still open after {waited:?}");
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(14),
        "closed after {waited:?}, expected about 10 s"
    );
}
