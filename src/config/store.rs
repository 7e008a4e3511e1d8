//! Where the state lives (`--store`), and how to reach etcd when it is there.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::store::etcd::EtcdConfig;

/// `--store`: the embedded database, or an etcd cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// redb: the file `stackdns.redb` in this directory (`None`: in `--data`).
    Redb(Option<PathBuf>),
    /// etcd v3 members, `host:port` each.
    Etcd(Vec<String>),
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Redb(None) => f.write_str("redb"),
            StoreLocation::Redb(Some(dir)) => write!(f, "{}", dir.display()),
            StoreLocation::Etcd(members) => write!(f, "etcd://{}", members.join(",")),
        }
    }
}

/// `redb`, `etcd://HOST:PORT[,HOST:PORT…]`, or (for `store copy`) a data directory.
pub fn store_location(text: &str) -> Result<StoreLocation, String> {
    if text == "redb" {
        return Ok(StoreLocation::Redb(None));
    }
    let Some(members) = text.strip_prefix("etcd://") else {
        if text.contains("://") {
            return Err(format!(
                "{text:?}: the stores are redb and etcd://HOST:PORT[,HOST:PORT…]"
            ));
        }
        return Ok(StoreLocation::Redb(Some(PathBuf::from(text))));
    };
    let members: Vec<String> = members.split(',').map(str::trim).map(str::to_owned).collect();
    for m in &members {
        let hostport = m
            .strip_prefix("https://")
            .or_else(|| m.strip_prefix("http://"))
            .unwrap_or(m);
        let port_ok = hostport
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        if !port_ok {
            return Err(format!(
                "etcd member {m:?} is not HOST:PORT (e.g. 127.0.0.1:2379)"
            ));
        }
    }
    Ok(StoreLocation::Etcd(members))
}

/// How to reach etcd (with `--store etcd://…`).
#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// Every key stackdns writes starts with this, so several platforms may share a cluster.
    #[arg(long, env = "STACKDNS_ETCD_PREFIX", default_value = "/stackdns/", value_parser = prefix)]
    pub etcd_prefix: String,
    /// etcd user (with --etcd-password), when etcd's authentication is on.
    #[arg(long, env = "STACKDNS_ETCD_USER", requires = "etcd_password")]
    pub etcd_user: Option<String>,
    /// The etcd user's password (better given by its environment variable).
    #[arg(
        long,
        env = "STACKDNS_ETCD_PASSWORD",
        hide_env_values = true,
        requires = "etcd_user"
    )]
    pub etcd_password: Option<String>,
    /// PEM file of the CA that signed the etcd members' certificates (turns TLS on; give the
    /// members as https://HOST:PORT).
    #[arg(long, env = "STACKDNS_ETCD_CA_FILE", value_name = "PATH")]
    pub etcd_ca_file: Option<PathBuf>,
    /// PEM client certificate, for etcd's --client-cert-auth (with --etcd-key-file).
    #[arg(
        long,
        env = "STACKDNS_ETCD_CERT_FILE",
        value_name = "PATH",
        requires = "etcd_key_file"
    )]
    pub etcd_cert_file: Option<PathBuf>,
    /// PEM private key of --etcd-cert-file.
    #[arg(
        long,
        env = "STACKDNS_ETCD_KEY_FILE",
        value_name = "PATH",
        requires = "etcd_cert_file"
    )]
    pub etcd_key_file: Option<PathBuf>,
    /// Seconds the leader's etcd lease lasts: a leader that dies stops blocking writes after
    /// at most this long (another instance takes over).
    #[arg(long, env = "STACKDNS_ETCD_LEASE_TTL", default_value_t = 5, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub etcd_lease_ttl: u64,
    /// How long one etcd request may take, in milliseconds, before the write it carries is
    /// refused (503) as unavailable: a lost quorum shows as this.
    #[arg(long, env = "STACKDNS_ETCD_TIMEOUT_MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub etcd_timeout_ms: u64,
    /// Bytes of log after which the leader writes a new image (never below the image's own
    /// size); for tests that want compaction to happen.
    #[arg(long, env = "STACKDNS_ETCD_COMPACT_BYTES", default_value_t = crate::store::etcd::COMPACT_MIN_BYTES, hide = true)]
    pub etcd_compact_bytes: u64,
}

fn prefix(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("the prefix is empty".to_owned());
    }
    Ok(if text.ends_with('/') {
        text.to_owned()
    } else {
        format!("{text}/")
    })
}

impl EtcdArgs {
    /// The client's configuration for `members`; `advertise_api` is how the other instances
    /// reach this one.
    pub fn config(&self, members: &[String], advertise_api: String) -> EtcdConfig {
        EtcdConfig {
            endpoints: members.to_vec(),
            prefix: self.etcd_prefix.clone(),
            user: self.etcd_user.clone().zip(self.etcd_password.clone()),
            ca_file: self.etcd_ca_file.clone(),
            cert_file: self.etcd_cert_file.clone(),
            key_file: self.etcd_key_file.clone(),
            lease_ttl: Duration::from_secs(self.etcd_lease_ttl),
            advertise_api,
            request_timeout: Duration::from_millis(self.etcd_timeout_ms),
            compact_bytes: self.etcd_compact_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_or_say_what_is_wrong() {
        assert_eq!(store_location("redb"), Ok(StoreLocation::Redb(None)));
        assert_eq!(
            store_location("etcd://127.0.0.1:2379,127.0.0.2:2379"),
            Ok(StoreLocation::Etcd(vec![
                "127.0.0.1:2379".into(),
                "127.0.0.2:2379".into()
            ]))
        );
        assert_eq!(
            store_location("/var/lib/stackdns"),
            Ok(StoreLocation::Redb(Some("/var/lib/stackdns".into())))
        );
        let e = store_location("etcd://127.0.0.1").expect_err("refused");
        assert!(e.contains("127.0.0.1") && e.contains("HOST:PORT"), "{e}");
        assert!(
            store_location("consul://x:1")
                .expect_err("refused")
                .contains("redb and etcd://")
        );
        assert_eq!(prefix("/p").as_deref(), Ok("/p/"));
    }
}
