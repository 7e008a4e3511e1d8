//! The certificate of the encrypted transports (DoT, DoH, DoQ): read from PEM files, checked
//! when it is loaded so that a wrong file is one clear error at start-up instead of failed
//! handshakes later, and swapped in place on SIGHUP without dropping any listener.
//!
//! The checks: the chain and the key parse, the key is the certificate's, the certificate is
//! valid now, and, with `--tls-name`, names that name (a DNS name in its subjectAltName,
//! wildcards covering one label, or an IP address) — the name clients authenticate (RFC 8310).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN of DNS over TLS (RFC 7858 §3.2) and of zone transfers over TLS (RFC 9103 §7.1).
pub const ALPN_DOT: &[u8] = b"dot";

/// Why a certificate could not be loaded; each names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--dot, --doh and --doq need --tls-cert and --tls-key")]
    Missing,
    #[error("TLS certificate {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("TLS key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("TLS key {key} is not the key of the certificate in {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
}

/// Where the certificate comes from (`--tls-cert`, `--tls-key`, `--tls-name`).
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// PEM: the server's certificate first, then the intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// A name the certificate must cover, if given.
    pub name: Option<String>,
}

/// The certificate every TLS listener presents; [`Certificates::reload`] replaces it for the
/// handshakes that follow, connections already open keep theirs.
pub struct Certificates {
    files: CertFiles,
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    /// Loads and checks the files.
    pub fn load(files: CertFiles) -> Result<Arc<Self>, TlsError> {
        let current = ArcSwap::from(load(&files, now())?);
        Ok(Arc::new(Self { files, current }))
    }

    /// Reads the files again; on any error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.current.store(load(&self.files, now())?);
        Ok(())
    }

    /// A rustls configuration presenting this certificate, TLS 1.2 and 1.3, with `alpn`.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> rustls::ServerConfig {
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("the ring provider supports the default protocol versions")
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn now() -> i64 {
    i64::try_from(super::unix_now()).unwrap_or(i64::MAX)
}

/// Reads and checks `files` as of `now` (seconds since the epoch).
fn load(files: &CertFiles, now: i64) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate {
        path: files.cert.clone(),
        reason,
    };
    let key_error = |reason: String| TlsError::Key {
        path: files.key.clone(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| cert_error(pem_reason(&e, "certificate")))?;
    let Some(leaf) = chain.first() else {
        return Err(cert_error("holds no PEM certificate".to_owned()));
    };
    check_leaf(leaf, files.name.as_deref(), now).map_err(cert_error)?;
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| key_error(pem_reason(&e, "private key")))?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_error(format!("not a usable private key ({e})")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(_) => Err(TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        }),
    }
}

fn pem_reason(error: &pem::Error, what: &str) -> String {
    match error {
        pem::Error::Io(e) => format!("cannot read: {e}"),
        pem::Error::NoItemsFound => format!("holds no PEM {what}"),
        other => format!("not a PEM {what} ({other:?})"),
    }
}

/// The server certificate's validity now and, if `name` is given, that it names it.
fn check_leaf(der: &CertificateDer<'_>, name: Option<&str>, now: i64) -> Result<(), String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let validity = cert.validity();
    if now < validity.not_before.timestamp() {
        return Err(format!("is not valid before {}", validity.not_before));
    }
    if now > validity.not_after.timestamp() {
        return Err(format!("expired on {}", validity.not_after));
    }
    let Some(name) = name else { return Ok(()) };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general in &san.value.general_names {
            match general {
                x509_parser::extensions::GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_of(bytes) {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    if names.iter().any(|pattern| covers(pattern, name)) {
        return Ok(());
    }
    if names.is_empty() {
        return Err(format!(
            "names nothing in its subjectAltName, so not {name} (--tls-name)"
        ));
    }
    Err(format!("is for {}, not {name} (--tls-name)", names.join(", ")))
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// Whether the subjectAltName entry `pattern` covers `name` (RFC 6125 §6.4: case-insensitive,
/// a leading `*` label standing for exactly one label; IP addresses compare as addresses).
fn covers(pattern: &str, name: &str) -> bool {
    if let (Ok(a), Ok(b)) = (pattern.parse::<IpAddr>(), name.parse::<IpAddr>()) {
        return a == b;
    }
    let name = name.trim_end_matches('.');
    let pattern = pattern.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(parent)),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// For tests: loads `files` as if the clock said `now`.
#[cfg(test)]
fn load_at(files: &CertFiles, now: i64) -> Result<Arc<CertifiedKey>, TlsError> {
    load(files, now)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    struct Made {
        _dir: tempfile::TempDir,
        files: CertFiles,
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    fn make(names: &[&str], days: (i64, i64)) -> Made {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        let today = time::OffsetDateTime::now_utc();
        params.not_before = today + time::Duration::days(days.0);
        params.not_after = today + time::Duration::days(days.1);
        let cert = params.self_signed(&key).expect("self-signed");
        let dir = tempfile::tempdir().expect("tempdir");
        let files = CertFiles {
            cert: write(dir.path(), "cert.pem", &cert.pem()),
            key: write(dir.path(), "key.pem", &key.serialize_pem()),
            name: None,
        };
        Made { _dir: dir, files }
    }

    fn message(result: Result<Arc<CertifiedKey>, TlsError>) -> String {
        result.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn a_good_certificate_loads_and_is_named() {
        let made = make(&["ns1.cluster.test", "*.dns.example"], (-1, 30));
        assert!(load_at(&made.files, now()).is_ok());
        for name in ["ns1.cluster.test", "NS1.cluster.test.", "a.dns.example"] {
            let files = CertFiles {
                name: Some(name.to_owned()),
                ..made.files.clone()
            };
            assert!(load_at(&files, now()).is_ok(), "{name}");
        }
    }

    #[test]
    fn each_problem_is_named() {
        let made = make(&["ns1.cluster.test"], (-1, 30));
        let wrong_name = CertFiles {
            name: Some("ns2.cluster.test".to_owned()),
            ..made.files.clone()
        };
        assert_eq!(
            message(load_at(&wrong_name, now())),
            format!(
                "TLS certificate {}: is for ns1.cluster.test, not ns2.cluster.test (--tls-name)",
                made.files.cert.display()
            )
        );
        let later = now() + 31 * 86_400;
        assert!(
            message(load_at(&made.files, later)).contains("expired on"),
            "expired"
        );
        let future = make(&["ns1.cluster.test"], (2, 30));
        assert!(message(load_at(&future.files, now())).contains("is not valid before"));

        let other = make(&["ns1.cluster.test"], (-1, 30));
        let mismatch = CertFiles {
            key: other.files.key.clone(),
            ..made.files.clone()
        };
        assert!(message(load_at(&mismatch, now())).contains("is not the key of the certificate"));

        let missing = CertFiles {
            key: made.files.key.with_extension("absent"),
            ..made.files.clone()
        };
        assert!(
            message(load_at(&missing, now())).contains("cannot read"),
            "missing key"
        );
        let swapped = CertFiles {
            cert: made.files.key.clone(),
            key: made.files.cert.clone(),
            name: None,
        };
        assert!(message(load_at(&swapped, now())).contains("holds no PEM certificate"));
        let dir = tempfile::tempdir().expect("tempdir");
        let garbage = CertFiles {
            cert: write(
                dir.path(),
                "c.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            ),
            ..made.files.clone()
        };
        assert!(message(load_at(&garbage, now())).contains("not an X.509 certificate"));
    }

    #[test]
    fn wildcards_cover_one_label_and_addresses_compare_as_addresses() {
        assert!(covers("*.example", "a.example"));
        assert!(!covers("*.example", "a.b.example"));
        assert!(!covers("*.example", "example"));
        assert!(covers("127.0.0.1", "127.0.0.1"));
        assert!(covers("::1", "0:0::1"));
        assert!(!covers("127.0.0.1", "127.0.0.2"));
    }

    #[test]
    fn a_reload_that_fails_keeps_the_certificate() {
        let made = make(&["ns1.cluster.test"], (-1, 30));
        let certificates = Certificates::load(made.files.clone()).expect("load");
        let before = certificates.current.load_full();
        std::fs::write(&made.files.cert, "not pem").expect("break");
        assert!(certificates.reload().is_err());
        assert!(Arc::ptr_eq(&before, &certificates.current.load_full()));
        let other = make(&["ns1.cluster.test"], (-1, 30));
        std::fs::copy(&other.files.cert, &made.files.cert).expect("copy");
        std::fs::copy(&other.files.key, &made.files.key).expect("copy");
        certificates.reload().expect("reload");
        assert!(!Arc::ptr_eq(&before, &certificates.current.load_full()));
    }
}
