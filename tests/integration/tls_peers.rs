//! What the encrypted-transport tests share: a CA and a server certificate made with rcgen,
//! kdig run and its output read into sections, the addresses the server logged, and a blocking
//! rustls client for DNS over TLS.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

/// A CA and a server certificate it signed, as PEM files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    ca_cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// The name the test certificates are for.
pub const TLS_NAME: &str = "ns1.cluster.test";

impl Pki {
    /// A CA and a certificate for [`TLS_NAME`] and 127.0.0.1, valid from yesterday for 30 days.
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "stackdns test CA");
        let ca_cert = params.self_signed(&ca_key).expect("CA certificate");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_cert.pem()).expect("write CA");
        let mut pki = Pki {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            dir,
            ca,
            ca_cert,
            issuer: rcgen::Issuer::new(params, ca_key),
        };
        pki.issue(&[TLS_NAME, "127.0.0.1"], -1, 30);
        pki
    }

    /// Writes a new server certificate and key over `cert` and `key`, valid from `from` to
    /// `to` days from now.
    pub fn issue(&mut self, names: &[&str], from: i64, to: i64) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from);
        params.not_after = now + time::Duration::days(to);
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        std::fs::write(&self.cert, cert.pem() + &self.ca_cert.pem()).expect("write cert");
        std::fs::write(&self.key, key.serialize_pem()).expect("write key");
    }

    /// The flags that give the server this certificate.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".to_owned(),
            self.cert.display().to_string(),
            "--tls-key".to_owned(),
            self.key.display().to_string(),
        ]
    }
}

/// `kdig`, or `None` (with a note) where it is absent and not required.
pub fn kdig_binary() -> Option<PathBuf> {
    peer("kdig", "knot-dnsutils")
}

/// What kdig printed for one query, sections as sets (rotation reorders records).
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: String,
    pub truncated: bool,
    pub answer: BTreeSet<String>,
    pub authority: BTreeSet<String>,
    pub additional: BTreeSet<String>,
    /// Records of a transfer (kdig prints them in the answer section).
    pub records: usize,
    /// kdig could not verify the reply's TSIG (it warns, and prints the reply all the same).
    pub unverified: bool,
}

/// Runs kdig against `at` with `options` (e.g. `+tls`), asking for `name` and `rtype`.
pub fn kdig(bin: &Path, at: SocketAddr, options: &[&str], name: &str, rtype: &str) -> Reply {
    let output = Command::new(bin)
        .arg(format!("@{}", at.ip()))
        .args(["-p", &at.port().to_string()])
        .args(["+timeout=3", "+retry=0"])
        .args(options)
        .args([name, rtype])
        .output()
        .expect("kdig runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut reply = Reply {
        status: String::new(),
        truncated: false,
        answer: BTreeSet::new(),
        authority: BTreeSet::new(),
        additional: BTreeSet::new(),
        records: 0,
        unverified: false,
    };
    let mut section = None;
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            reply.status = rest.split(';').next().unwrap_or("").trim().to_owned();
        } else if let Some(flags) = line.strip_prefix(";; Flags: ") {
            reply.truncated = flags
                .split(';')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .any(|f| f == "tc");
        } else if line.starts_with(";; ANSWER SECTION") {
            section = Some(0);
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = Some(1);
        } else if line.starts_with(";; ADDITIONAL SECTION") {
            section = Some(2);
        } else if line.trim().is_empty() || line.starts_with(";;") {
            section = None;
        } else if line.starts_with(';') {
            // The question, echoed.
        } else {
            // Owner, TTL, class, type, data; the TTL of a svc record counts down in caches,
            // not here, but keep the comparison to what identifies the record.
            let fields: Vec<&str> = line.split_whitespace().collect();
            let record = match fields.as_slice() {
                [owner, _ttl, class, rest @ ..] => format!("{owner} {class} {}", rest.join(" ")),
                _ => line.to_owned(),
            };
            reply.records += 1;
            match section {
                Some(1) => reply.authority.insert(record),
                Some(2) => reply.additional.insert(record),
                _ => reply.answer.insert(record),
            };
        }
    }
    // A refused transfer prints its rcode as an error.
    let errors = String::from_utf8_lossy(&output.stderr);
    reply.unverified = errors.contains("reply verification");
    if let Some(rest) = errors.split("replied with error '").nth(1) {
        reply.status = rest.split('\'').next().unwrap_or("").to_owned();
    }
    if reply.status.is_empty() && output.status.success() && reply.records > 0 {
        // A transfer prints no header.
        reply.status = "NOERROR".to_owned();
    }
    reply
}

/// The address the server logged for its encrypted listener `key` (`dot`, `doh`, `doq`).
pub fn listening(server: &Server, key: &str) -> SocketAddr {
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("encrypted DNS listening"))
        .unwrap_or_else(|| panic!("no encrypted listeners in:\n{log}"));
    line.split(&format!("{key}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{key} in {line}"))
}

/// The DoT, DoH and DoQ addresses.
pub fn encrypted(server: &Server) -> (SocketAddr, SocketAddr, SocketAddr) {
    (
        listening(server, "dot"),
        listening(server, "doh"),
        listening(server, "doq"),
    )
}

/// A server with every encrypted listener on a free port and `extra` flags.
pub fn start_encrypted(pki: &Pki, extra: &[&str]) -> Server {
    let mut args: Vec<String> = pki.flags();
    for flag in ["--dot", "--doh", "--doq"] {
        args.extend([flag.to_owned(), "127.0.0.1:0".to_owned()]);
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

/// A DNS query with `id` for `name` and `qtype`, class IN, no EDNS.
pub fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

/// A blocking TLS connection to `at` trusting `ca_pem`, held to `version`, offering `alpn`.
pub fn tls_client(
    at: SocketAddr,
    ca_pem: &[u8],
    version: &'static rustls::SupportedProtocolVersion,
    alpn: &[u8],
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.expect("CA PEM")).expect("CA");
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let name = rustls_pki_types::ServerName::try_from(TLS_NAME).expect("name");
    let connection = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let tcp = std::net::TcpStream::connect(at).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    rustls::StreamOwned::new(connection, tcp)
}

/// Sends one framed message and reads framed messages until the one with its ID (what is left
/// of an earlier transfer comes first).
pub fn exchange(stream: &mut impl ReadWrite, message: &[u8]) -> Vec<u8> {
    let mut framed = (message.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    stream.write_all(&framed).expect("send");
    loop {
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).expect("length");
        let mut reply = vec![0; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut reply).expect("reply");
        if reply[..2] == message[..2] {
            return reply;
        }
    }
}

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}
