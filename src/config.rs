//! Command-line flags and their environment variables, validated into a [`ServeConfig`]; the
//! optional configuration file of `serve` in [`file`].

mod file;
mod store;

pub use file::{ConfigFileError, expand};
pub use store::{EtcdArgs, StoreLocation, store_location};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::cli;
use crate::snapshot::Rotation;

#[derive(Debug, Parser)]
#[command(
    name = "stackdns",
    version,
    about = "Authoritative DNS for container platforms"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the DNS server and the registration API.
    Serve(Box<ServeArgs>),
    /// Run a node's agent: it starts, stops and reports the containers placed on the node.
    Agent(crate::agent::AgentArgs),
    /// Nodes: add, ls, rm, token.
    Node {
        #[command(subcommand)]
        command: cli::NodeCommand,
        #[command(flatten)]
        connection: cli::Connection,
    },
    /// Stacks: up, ls, ps, rm.
    Stack {
        #[command(subcommand)]
        command: cli::StackCommand,
        #[command(flatten)]
        connection: cli::Connection,
    },
    /// Services: scale.
    Service {
        #[command(subcommand)]
        command: cli::ServiceCommand,
        #[command(flatten)]
        connection: cli::Connection,
    },
    /// User tokens: token, revoke.
    User {
        #[command(subcommand)]
        command: cli::UserCommand,
        #[command(flatten)]
        connection: cli::Connection,
    },
    /// Ask the server over DNS.
    Lookup {
        #[command(flatten)]
        args: cli::LookupArgs,
        #[command(flatten)]
        connection: cli::Connection,
    },
    /// Moves the state between stores (stop every server using them first).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copies everything (serial and IXFR journal included) from one store into an empty one,
    /// e.g. `--from /var/lib/stackdns --to etcd://10.0.0.1:2379,10.0.0.2:2379`.
    Copy {
        /// A data directory (its stackdns.redb) or etcd://HOST:PORT[,…].
        #[arg(long, value_parser = store_location)]
        from: StoreLocation,
        /// A data directory or etcd://HOST:PORT[,…]; must hold no state.
        #[arg(long, value_parser = store_location)]
        to: StoreLocation,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML file of settings, one key per flag (`ttl = 5`, `allow-transfer = ["10.0.0.0/8"]`);
    /// a flag or an environment variable wins over the file's key.
    #[arg(long, env = "STACKDNS_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log lines as `text` or `json` (one object per line); `STACKDNS_LOG` filters them.
    #[arg(long, env = "STACKDNS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// DNS listen address, UDP and TCP (port 0 picks a free port).
    #[arg(long, env = "STACKDNS_DNS", default_value = "127.0.0.1:1053")]
    pub dns: SocketAddr,
    /// HTTP API listen address.
    #[arg(long, env = "STACKDNS_API_LISTEN", default_value = "127.0.0.1:8053")]
    pub api: SocketAddr,
    /// Data directory: the database and the generated admin token live here.
    #[arg(long, env = "STACKDNS_DATA", default_value = "stackdns-data")]
    pub data: PathBuf,
    /// Where the state lives: `redb`, the embedded database in --data (the default), or
    /// `etcd://HOST:PORT[,HOST:PORT…]`, an etcd v3 cluster that several instances share
    /// (docs/ha.md).
    #[arg(long, env = "STACKDNS_STORE", default_value = "redb", value_parser = store_location)]
    pub store: StoreLocation,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// With --store etcd://…: the URL at which the other instances reach this one's API
    /// (they forward writes to the leader). Default: http://<--api> when that is a specific
    /// address.
    #[arg(long, env = "STACKDNS_ADVERTISE_API", value_name = "URL")]
    pub advertise_api: Option<String>,
    /// Zone file with the apex SOA and NS records. Without it, `zones/cluster.test.zone` is
    /// used if present, else the same zone built into the binary.
    #[arg(long, env = "STACKDNS_ZONE_FILE")]
    pub zone_file: Option<PathBuf>,
    /// TTL in seconds of svc, cont and node records.
    #[arg(long, env = "STACKDNS_TTL", default_value_t = 5)]
    pub ttl: u32,
    /// Seconds without a heartbeat after which a node is lost and its containers leave DNS.
    #[arg(long, env = "STACKDNS_NODE_TTL", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub node_ttl: u64,
    /// How often leases are checked, in milliseconds.
    #[arg(long, env = "STACKDNS_LEASE_CHECK_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    pub lease_check_ms: u64,
    /// File holding the admin token. Otherwise STACKDNS_ADMIN_TOKEN, otherwise one is generated
    /// into <data>/admin.token on first start.
    #[arg(long, env = "STACKDNS_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Order of records in answers.
    #[arg(long, env = "STACKDNS_ROTATION", value_enum, default_value_t = Rotation::Cyclic)]
    pub rotation: Rotation,
    /// Most addresses or SRV records per svc answer (0 = all); a rotating, fair subset.
    #[arg(long, env = "STACKDNS_MAX_ANSWERS", default_value_t = 0)]
    pub max_answers: u16,
    /// Networks allowed to transfer the zone (AXFR/IXFR), e.g. 127.0.0.1/32; repeatable.
    /// Without any, transfers are refused.
    #[arg(
        long = "allow-transfer",
        env = "STACKDNS_ALLOW_TRANSFER",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub allow_transfer: Vec<ipnet::IpNet>,
    /// TSIG key NAME:hmac-sha256:BASE64SECRET; requests signed with it may transfer the zone
    /// from any address, and their answers are signed. Repeatable.
    #[arg(
        long = "tsig-key",
        env = "STACKDNS_TSIG_KEY",
        value_delimiter = ',',
        value_name = "NAME:ALG:SECRET",
        hide_env_values = true
    )]
    pub tsig_keys: Vec<crate::dns::tsig::Key>,
    /// File of TSIG keys, one NAME:hmac-sha256:BASE64SECRET per line (# starts a comment).
    #[arg(long = "tsig-key-file", env = "STACKDNS_TSIG_KEY_FILE", value_name = "PATH")]
    pub tsig_key_file: Option<PathBuf>,
    /// Published serials whose differences are kept (in redb) to answer IXFR; older clients
    /// get the whole zone. 0 turns the journal off.
    #[arg(long = "ixfr-journal", env = "STACKDNS_IXFR_JOURNAL", default_value_t = 1000)]
    pub ixfr_journal: usize,
    /// Most memory the IXFR journal's differences may hold, in MiB (they are also kept in
    /// redb); the oldest go first, and a secondary behind them gets the whole zone.
    #[arg(long = "ixfr-journal-mb", env = "STACKDNS_IXFR_JOURNAL_MB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub ixfr_journal_mb: u64,
    /// Memory redb may use to cache database pages, in MiB. The writer only reads the
    /// database at start-up and after a failed commit (the state lives in memory), so a small
    /// cache costs little; redb's own default is 1 GiB.
    #[arg(long = "db-cache-mb", env = "STACKDNS_DB_CACHE_MB", default_value_t = crate::store::redb::DEFAULT_CACHE_MB)]
    pub db_cache_mb: usize,
    /// Secondary to send NOTIFY to after each published serial (ADDR:PORT); repeatable.
    #[arg(
        long = "notify",
        env = "STACKDNS_NOTIFY",
        value_delimiter = ',',
        value_name = "ADDR:PORT"
    )]
    pub notify: Vec<SocketAddr>,
    /// UDP worker threads (sockets sharing the port); default: one per CPU.
    #[arg(long, env = "STACKDNS_UDP_WORKERS")]
    pub udp_workers: Option<usize>,
    /// Where Prometheus scrapes `/metrics` without a token (`off`: nowhere). On the API's own
    /// address `/metrics` needs the admin token, since it tells how many nodes and containers
    /// there are.
    #[arg(long, env = "STACKDNS_METRICS_ADDR", default_value = "127.0.0.1:9153", value_parser = metrics_addr)]
    pub metrics_addr: MetricsAddr,
    /// Users whose Stackfiles may ask for privileged options (`privileged`, `devices`,
    /// `cap_add`, `security_opt`, `pid: host`, host mounts in `volumes`); repeatable or
    /// comma-separated. Everyone else is refused them.
    #[arg(long = "privileged-users", env = "STACKDNS_PRIVILEGED_USERS", value_delimiter = ',', value_parser = user_label)]
    pub privileged_users: Vec<crate::model::Label>,
    /// Containers a user may run unless an admin set their own limit (PUT /v1/users/U/limits).
    #[arg(long, env = "STACKDNS_DEFAULT_MAX_CONTAINERS", default_value_t = crate::model::Limits::default().max_containers)]
    pub default_max_containers: u32,
    /// Stacks a user may declare unless an admin set their own limit.
    #[arg(long, env = "STACKDNS_DEFAULT_MAX_STACKS", default_value_t = crate::model::Limits::default().max_stacks)]
    pub default_max_stacks: u32,
    /// Nodes a user may register with its own token unless an admin set their own limit.
    #[arg(long, env = "STACKDNS_DEFAULT_MAX_NODES", default_value_t = crate::model::Limits::default().max_nodes)]
    pub default_max_nodes: u32,
    /// How long a stopped container's record (its tombstone, which fences late reports) is
    /// kept, e.g. `7d`, `12h`, `90s`; then it is removed and its generation folded into its
    /// node's floor, which keeps fencing late reports.
    #[arg(long, env = "STACKDNS_TOMBSTONE_RETENTION", default_value = "7d", value_parser = retention)]
    pub tombstone_retention: Duration,
    /// Response rate limiting over UDP: identical responses per second to one client prefix
    /// (per response class and name; see docs/limits.md). 0 turns it off.
    #[arg(long, env = "STACKDNS_RRL_RATE", default_value_t = 200, value_parser = clap::value_parser!(u32).range(0..=65534))]
    pub rrl_rate: u32,
    /// Every Nth rate-limited response is sent as an empty truncated reply (the client retries
    /// over TCP), the others are dropped; 0 drops them all, 1 truncates them all.
    #[arg(long, env = "STACKDNS_RRL_SLIP", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub rrl_slip: u32,
    /// IPv4 prefix length that makes one RRL client.
    #[arg(long, env = "STACKDNS_RRL_IPV4_PREFIX", default_value_t = 24, value_parser = clap::value_parser!(u8).range(8..=32))]
    pub rrl_ipv4_prefix: u8,
    /// IPv6 prefix length that makes one RRL client.
    #[arg(long, env = "STACKDNS_RRL_IPV6_PREFIX", default_value_t = 56, value_parser = clap::value_parser!(u8).range(16..=128))]
    pub rrl_ipv6_prefix: u8,
    /// Networks never rate-limited; repeatable or comma-separated. Giving any replaces the
    /// default (this host's loopback addresses).
    #[arg(
        long = "rrl-whitelist",
        env = "STACKDNS_RRL_WHITELIST",
        value_delimiter = ',',
        value_name = "CIDR",
        default_value = "127.0.0.0/8,::1/128"
    )]
    pub rrl_whitelist: Vec<ipnet::IpNet>,
    /// Buckets in the RRL table (8 bytes each), rounded up to a power of two.
    #[arg(long, env = "STACKDNS_RRL_TABLE_SIZE", default_value_t = 262_144, value_parser = positive)]
    pub rrl_table_size: usize,
    /// DNS cookies (RFC 7873, RFC 9018 server cookies): `on` or `off`.
    #[arg(long, env = "STACKDNS_COOKIES", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    pub cookies: bool,
    /// Master secret of the server cookies, hex, 16 bytes or more: give every server of a
    /// zone the same one so that each accepts the others' cookies. Default: random at start.
    #[arg(long, env = "STACKDNS_COOKIE_SECRET", value_parser = cookie_secret, hide_env_values = true)]
    pub cookie_secret: Option<CookieSecret>,
    /// Most open API connections; more are answered 503 and closed.
    #[arg(long, env = "STACKDNS_API_MAX_CONNECTIONS", default_value_t = 4096, value_parser = positive)]
    pub api_max_connections: usize,
    /// Most open API connections from one client (an IPv4 address or an IPv6 /64); more are
    /// answered 429 and closed.
    #[arg(long, env = "STACKDNS_API_MAX_CONNS_PER_CLIENT", default_value_t = 200, value_parser = positive)]
    pub api_max_conns_per_client: usize,
    /// Milliseconds a client has to send a request's headers (the idle time of a kept-alive
    /// connection before them included), and again its body.
    #[arg(long, env = "STACKDNS_API_READ_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_read_timeout_ms: u64,
    /// Most API requests served at once (blocking queries aside); more are answered 503.
    #[arg(long, env = "STACKDNS_API_MAX_REQUESTS", default_value_t = 1024, value_parser = positive)]
    pub api_max_requests: usize,
    /// Most open DNS TCP connections; at the limit a new one replaces the longest idle.
    #[arg(long, env = "STACKDNS_DNS_TCP_MAX_CONNECTIONS", default_value_t = 1024, value_parser = positive)]
    pub dns_tcp_max_connections: usize,
    /// Most open DNS TCP connections from one client (an IPv4 address or an IPv6 /64).
    #[arg(long, env = "STACKDNS_DNS_TCP_MAX_PER_CLIENT", default_value_t = 64, value_parser = positive)]
    pub dns_tcp_max_per_client: usize,
    /// Milliseconds to receive a whole DNS message over TCP once its first byte is in, and to
    /// send an answer (Knot's `tcp-io-timeout`); a connection waits up to 10 s for a message.
    #[arg(long, env = "STACKDNS_DNS_TCP_IO_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub dns_tcp_io_timeout_ms: u64,
    /// DNS over TLS listen address (RFC 7858; zone transfers over TLS 1.3 too, RFC 9103), e.g.
    /// 0.0.0.0:853. Needs --tls-cert and --tls-key.
    #[arg(long, env = "STACKDNS_DOT", value_name = "ADDR:PORT")]
    pub dot: Option<SocketAddr>,
    /// DNS over HTTPS listen address (RFC 8484, HTTP/2, path /dns-query), e.g. 0.0.0.0:443.
    #[arg(long, env = "STACKDNS_DOH", value_name = "ADDR:PORT")]
    pub doh: Option<SocketAddr>,
    /// DNS over QUIC listen address (RFC 9250, UDP), e.g. 0.0.0.0:853.
    #[arg(long, env = "STACKDNS_DOQ", value_name = "ADDR:PORT")]
    pub doq: Option<SocketAddr>,
    /// PEM certificate chain (server certificate first) of the DoT, DoH and DoQ listeners;
    /// read again on SIGHUP.
    #[arg(long, env = "STACKDNS_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert; read again on SIGHUP.
    #[arg(long, env = "STACKDNS_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// A name the certificate must cover (the name clients authenticate, e.g. the server's NS
    /// name); checked at start-up and on every reload.
    #[arg(long, env = "STACKDNS_TLS_NAME", value_name = "NAME")]
    pub tls_name: Option<String>,
    /// The largest `mem_limit` a Stackfile may ask for, MiB.
    #[arg(long, env = "STACKDNS_MAX_CONTAINER_MEMORY_MB", default_value_t = crate::stackfile::DEFAULT_MAX_MEMORY_MB)]
    pub max_container_memory_mb: u64,
}

/// `--log-format`: how log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields), for log collectors.
    Json,
}

impl Command {
    /// The log format asked for (the server and the agent have the flag; other commands log
    /// as text).
    pub fn log_format(&self) -> LogFormat {
        match self {
            Command::Serve(args) => args.log_format,
            Command::Agent(args) => args.log_format,
            _ => LogFormat::Text,
        }
    }
}

/// `--cookie-secret`: hashed to the 32 bytes the cookie secrets are derived from.
#[derive(Clone, PartialEq, Eq)]
pub struct CookieSecret(pub [u8; 32]);

impl std::fmt::Debug for CookieSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSecret(…)")
    }
}

fn cookie_secret(text: &str) -> Result<CookieSecret, String> {
    let text = text.trim();
    let bytes: Option<Vec<u8>> = text
        .len()
        .is_multiple_of(2)
        .then(|| {
            (0..text.len())
                .step_by(2)
                .map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                .collect()
        })
        .flatten();
    match bytes {
        Some(bytes) if bytes.len() >= 16 => {
            use sha2::Digest;
            Ok(CookieSecret(sha2::Sha256::digest(&bytes).into()))
        }
        _ => Err("expected at least 16 bytes as hex (32 or more hex digits)".to_owned()),
    }
}

fn on_off(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{text:?} is neither on nor off")),
    }
}

/// A retention like `7d`, `12h`, `30m` or `90s` (a bare number is seconds), at least a second.
fn retention(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 7d, 12h, 30m or 90s");
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((at, 'd')) => (&text[..at], 86_400),
        Some((at, 'h')) => (&text[..at], 3_600),
        Some((at, 'm')) => (&text[..at], 60),
        Some((at, 's')) => (&text[..at], 1),
        _ => (text, 1),
    };
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|&s| s >= 1)
        .ok_or_else(bad)?;
    Ok(Duration::from_secs(seconds))
}

fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{text:?} is not a whole number above 0")),
    }
}

fn user_label(text: &str) -> Result<crate::model::Label, String> {
    crate::model::Label::parse("user", text).map_err(|e| e.to_string())
}

/// `--metrics-addr`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<SocketAddr>);

fn metrics_addr(text: &str) -> Result<MetricsAddr, String> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(MetricsAddr(None));
    }
    text.parse()
        .map(|a| MetricsAddr(Some(a)))
        .map_err(|_| format!("{text:?} is neither ADDRESS:PORT nor off"))
}

impl ServeArgs {
    pub fn node_ttl(&self) -> Duration {
        Duration::from_secs(self.node_ttl)
    }

    pub fn lease_check(&self) -> Duration {
        Duration::from_millis(self.lease_check_ms)
    }

    /// The certificate files, if any encrypted listener was asked for.
    pub fn tls_files(&self) -> Result<Option<crate::dns::tls::CertFiles>, crate::dns::tls::TlsError> {
        if self.dot.is_none() && self.doh.is_none() && self.doq.is_none() {
            return Ok(None);
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(crate::dns::tls::CertFiles {
                cert: cert.clone(),
                key: key.clone(),
                name: self.tls_name.clone(),
            })),
            _ => Err(crate::dns::tls::TlsError::Missing),
        }
    }

    pub fn udp_workers(&self) -> usize {
        self.udp_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, 64)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let cli = Cli::try_parse_from(["stackdns", "serve"].iter().chain(args))?;
        match cli.command {
            Command::Serve(args) => Ok(*args),
            _ => unreachable!("parsed as serve"),
        }
    }

    #[test]
    fn cookies_and_retention_take_their_values() {
        assert!(serve(&[]).expect("defaults").cookies);
        assert!(!serve(&["--cookies", "off"]).expect("off").cookies);
        assert!(!serve(&["--cookies=off"]).expect("off").cookies);
        assert!(serve(&["--cookies", "maybe"]).is_err());
        let retention = |text| serve(&["--tombstone-retention", text]).map(|a| a.tombstone_retention);
        assert_eq!(retention("7d").expect("7d"), Duration::from_secs(7 * 86_400));
        assert_eq!(retention("90").expect("90"), Duration::from_secs(90));
        for bad in ["0s", "1w", "-1d", "d", ""] {
            assert!(retention(bad).is_err(), "{bad:?}");
        }
        let secret = serve(&["--cookie-secret", "00112233445566778899aabbccddeeff"]).expect("16 bytes");
        assert!(secret.cookie_secret.is_some());
        assert!(serve(&["--cookie-secret", "0011"]).is_err(), "too short");
        assert!(
            serve(&["--cookie-secret", "zz112233445566778899aabbccddeeff"]).is_err(),
            "not hex"
        );
    }
}
