//! Wires the parts together: store and writer, DNS listeners, HTTP API, lease checker, and
//! one cancellation token that stops them all.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::ServeArgs;
use crate::config::StoreLocation;
use crate::control::{Control, Publisher};
use crate::dns::tls::Certificates;
use crate::dns::{DnsServer, Encrypted, zonefile};
use crate::edge::Caps;
use crate::snapshot::Policy;
use crate::snapshot::journal::JournalLimits;
use crate::store::etcd::EtcdStore;
use crate::store::{RedbStore, Store};

/// The zone served when no zone file is given and `zones/cluster.test.zone` is absent.
const EMBEDDED_ZONE: &str = include_str!("../zones/cluster.test.zone");
const DEFAULT_ZONE_PATH: &str = "zones/cluster.test.zone";
const ADMIN_TOKEN_ENV: &str = "STACKDNS_ADMIN_TOKEN";
/// How long requests in flight may take to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often recorded histogram samples are folded into their buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Why the server could not start; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Zone(#[from] zonefile::ZoneFileError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Control(#[from] crate::control::StartError),
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsError),
    #[error(transparent)]
    Tls(#[from] crate::dns::tls::TlsError),
    #[error("cannot bind the API on {addr}: {source}")]
    BindApi {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot bind the metrics listener on {addr}: {source}; pass --metrics-addr ADDRESS:PORT or off")]
    BindMetrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "--api listens on {addr}, which the other instances cannot reach as such; pass --advertise-api http://HOST:PORT"
    )]
    AdvertiseApi { addr: SocketAddr },
    #[error("data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("admin token: cannot {action} {path}: {source}")]
    AdminTokenFile {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin token: {path} is empty")]
    AdminTokenEmpty { path: PathBuf },
    #[error("admin token: cannot generate one: {0}")]
    AdminTokenRandom(getrandom::Error),
    #[error("DNS cookies: cannot generate a secret: {0}; pass --cookie-secret or --cookies off")]
    CookieRandom(getrandom::Error),
    #[error("dashboard: cannot generate a session key: {0}")]
    SessionRandom(getrandom::Error),
    #[error("TSIG key file {path}: {source}")]
    TsigKeyFileRead { path: PathBuf, source: std::io::Error },
    #[error("TSIG key file {path}, line {line}: {source}")]
    TsigKeyFileLine {
        path: PathBuf,
        line: usize,
        source: crate::dns::tsig::KeyError,
    },
}

/// A started server.
pub struct Server {
    pub dns_addr: SocketAddr,
    pub api_addr: SocketAddr,
    /// The certificate of the encrypted listeners, reloaded on SIGHUP.
    pub certificates: Option<std::sync::Arc<Certificates>>,
    cancel: CancellationToken,
    dns: DnsServer,
    api: tokio::task::JoinHandle<()>,
    /// The `--metrics-addr` listener, if any.
    metrics: Option<tokio::task::JoinHandle<()>>,
    /// Folds histogram samples into their buckets.
    upkeep: tokio::task::JoinHandle<()>,
    leases: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
    notifiers: Vec<tokio::task::JoinHandle<()>>,
    writer: std::thread::JoinHandle<()>,
}

impl Server {
    /// Loads everything, binds every socket and starts serving.
    pub async fn start(args: &ServeArgs) -> Result<Self, ServerError> {
        let zone = match &args.zone_file {
            Some(path) => zonefile::load(path)?,
            None if Path::new(DEFAULT_ZONE_PATH).exists() => zonefile::load(Path::new(DEFAULT_ZONE_PATH))?,
            None => zonefile::parse(EMBEDDED_ZONE, None, "(built-in zone)")?,
        };
        let apex = format!("{}.", crate::name::to_text(&zone.apex));
        std::fs::create_dir_all(&args.data).map_err(|source| ServerError::DataDir {
            path: args.data.clone(),
            source,
        })?;
        let admin_token_sha256 = crate::control::hash_token(&admin_token(args)?);
        // Read before anything is committed, so a bad key file changes nothing.
        let tsig_keys = tsig_keys(args)?;
        let certificates = args.tls_files()?.map(Certificates::load).transpose()?;

        let policy = Policy {
            ttl: args.ttl,
            rotation: args.rotation,
            max_answers: args.max_answers,
        };
        // Bound first: on a shared store the other instances are told where it is.
        let listener =
            tokio::net::TcpListener::bind(args.api)
                .await
                .map_err(|source| ServerError::BindApi {
                    addr: args.api,
                    source,
                })?;
        let api_addr = listener.local_addr().map_err(|source| ServerError::BindApi {
            addr: args.api,
            source,
        })?;
        let store = open_store(args, api_addr)?;
        let cancel = CancellationToken::new();
        let metrics = crate::metrics::Metrics::new();
        let (control, writer) = Control::start(
            store,
            Publisher {
                zone,
                policy,
                journal: JournalLimits {
                    diffs: args.ixfr_journal,
                    bytes: usize::try_from(args.ixfr_journal_mb.saturating_mul(1 << 20))
                        .unwrap_or(usize::MAX),
                },
            },
            crate::model::Limits {
                max_containers: args.default_max_containers,
                max_stacks: args.default_max_stacks,
                max_nodes: args.default_max_nodes,
            },
            metrics.clone(),
            cancel.clone(),
        )?;
        let limits = EdgeLimits::fitted(args);
        let context = dns_context(args, tsig_keys, &metrics)?;
        let dns = DnsServer::start(
            args.dns,
            args.udp_workers(),
            control.snapshots(),
            context,
            limits.dns_tcp,
            Encrypted {
                dot: args.dot,
                doh: args.doh,
                doq: args.doq,
                connections: limits.encrypted,
                certificates: certificates.clone(),
            },
            cancel.clone(),
        )
        .await?;
        if certificates.is_some() {
            let shown = |addr: Option<SocketAddr>| addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
            tracing::info!(
                "encrypted DNS listening dot={} doh={} doq={}",
                shown(dns.dot),
                shown(dns.doh),
                shown(dns.doq)
            );
        }

        let app_state = AppState {
            control: control.clone(),
            admin_token_sha256,
            apex: apex.clone(),
            node_ttl: args.node_ttl(),
            dns_ttl: args.ttl,
            dns_addr: dns.addr,
            privileged_users: std::sync::Arc::new(args.privileged_users.clone()),
            max_container_memory_mb: args.max_container_memory_mb,
            requests: std::sync::Arc::new(tokio::sync::Semaphore::new(args.api_max_requests)),
            dns_stats: dns.stats.clone(),
            sessions: std::sync::Arc::new(api::Sessions::new().map_err(ServerError::SessionRandom)?),
            read_timeout: Duration::from_millis(args.api_read_timeout_ms),
            http: api::forwarding_client(),
        };
        let metrics_listener = match args.metrics_addr.0 {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::BindMetrics { addr, source })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| ServerError::BindMetrics { addr, source })?;
                tracing::info!("metrics listening on {bound}");
                let app = api::metrics_router(app_state.clone());
                Some(tokio::spawn(api::listener::serve(
                    listener,
                    app,
                    limits.metrics,
                    cancel.clone(),
                )))
            }
            None => None,
        };
        let app = api::router(app_state);
        let api = tokio::spawn(api::listener::serve(listener, app, limits.api, cancel.clone()));
        let notifiers = crate::dns::notify::start(
            &args.notify,
            control.snapshots(),
            control.serials(),
            &metrics,
            cancel.clone(),
        );
        let upkeep = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                periodically(METRICS_UPKEEP, &cancel, || {
                    metrics.upkeep();
                    std::future::ready(())
                })
                .await;
            })
        };
        let sweeper = tokio::spawn(sweep_tombstones(
            control.clone(),
            args.tombstone_retention,
            cancel.clone(),
        ));
        let leases = tokio::spawn(check_leases(
            control,
            args.node_ttl(),
            args.lease_check(),
            cancel.clone(),
        ));
        tracing::info!(zone = %apex, "serving");
        Ok(Self {
            dns_addr: dns.addr,
            api_addr,
            certificates,
            cancel,
            dns,
            api,
            metrics: metrics_listener,
            upkeep,
            leases,
            sweeper,
            notifiers,
            writer,
        })
    }

    /// Stops accepting work, finishes what is in flight, and waits for every part. Requests
    /// still running after [`SHUTDOWN_GRACE`] are cut off (blocking queries end at once).
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let mut api = self.api;
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut api).await.is_err() {
            tracing::warn!(
                grace_s = SHUTDOWN_GRACE.as_secs(),
                "API requests still running after the grace period; closing them"
            );
            api.abort();
            let _ = api.await;
        }
        let _ = self.leases.await;
        let _ = self.sweeper.await;
        let _ = self.upkeep.await;
        if let Some(metrics) = self.metrics {
            let _ = metrics.await;
        }
        for notifier in self.notifiers {
            let _ = notifier.await;
        }
        self.dns.stop().await;
        // Every Control handle is gone now, so the writer drains its queue and exits.
        let writer = self.writer;
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    }
}

/// Opens the store `--store` names.
fn open_store(args: &ServeArgs, api_addr: SocketAddr) -> Result<Box<dyn Store>, ServerError> {
    match &args.store {
        StoreLocation::Redb(dir) => {
            let dir = dir.as_deref().unwrap_or(&args.data);
            let store = RedbStore::open(
                &dir.join("stackdns.redb"),
                args.db_cache_mb.saturating_mul(1 << 20),
            )?;
            Ok(Box::new(store))
        }
        StoreLocation::Etcd(members) => {
            let advertise = match &args.advertise_api {
                Some(url) => url.trim_end_matches('/').to_owned(),
                None if api_addr.ip().is_unspecified() => {
                    return Err(ServerError::AdvertiseApi { addr: api_addr });
                }
                None => format!("http://{api_addr}"),
            };
            tracing::info!(store = %args.store, prefix = %args.etcd.etcd_prefix, advertise = %advertise, "opening the shared store");
            let store = EtcdStore::connect(args.etcd.config(members, advertise))?;
            Ok(Box::new(store))
        }
    }
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> Result<(), ServerError> {
    // Before anything else, so a SIGHUP during start-up does not end the process either.
    let hangups = crate::signal::hangups();
    let server = Server::start(&args).await?;
    tracing::info!("listening dns={} api={}", server.dns_addr, server.api_addr);
    let reloads = tokio::spawn(reload_on_hangup(hangups, server.certificates.clone()));
    crate::systemd::notify(&format!(
        "READY=1\nSTATUS=serving DNS on {}, the API on {}",
        server.dns_addr, server.api_addr
    ));
    crate::signal::terminated().await;
    crate::systemd::notify("STOPPING=1");
    reloads.abort();
    tracing::info!("shutting down");
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Reads the TLS certificate again on each SIGHUP; a bad one is logged and the old one stays.
async fn reload_on_hangup(
    mut hangups: crate::signal::Hangups,
    certificates: Option<std::sync::Arc<Certificates>>,
) {
    while hangups.next().await {
        match &certificates {
            None => tracing::info!("SIGHUP: no TLS certificate to reload"),
            Some(certificates) => match certificates.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => tracing::error!("SIGHUP: {e}; the certificate in use stays"),
            },
        }
    }
}

/// Removes tombstones older than `retention`, checking a quarter of a retention apart (at
/// least every hour, at most every second), and at once again while a sweep found a full batch.
async fn sweep_tombstones(control: Control, retention: Duration, cancel: CancellationToken) {
    let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    periodically(every, &cancel, || async {
        loop {
            match control.sweep_tombstones(retention).await {
                Ok(swept) => {
                    if swept.removed > 0 || swept.stamped > 0 {
                        tracing::info!(
                            removed = swept.removed,
                            stamped = swept.stamped,
                            retention_s = retention.as_secs(),
                            "old tombstones removed; their generations stay in their nodes' floors"
                        );
                    }
                    if swept.removed + swept.stamped < crate::control::SWEEP_BATCH || cancel.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tombstone sweep failed");
                    break;
                }
            }
        }
    })
    .await;
}

/// Runs `tick` every `period` until `cancel` fires; a tick that comes late is not made up.
async fn periodically<F: std::future::Future<Output = ()>>(
    period: Duration,
    cancel: &CancellationToken,
    mut tick: impl FnMut() -> F,
) {
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        tick().await;
    }
}

/// The connection limits of every listener, with the total caps fitted to the process's
/// descriptor limit so that no listener can starve another (or the database) of descriptors.
struct EdgeLimits {
    api: api::listener::Limits,
    metrics: api::listener::Limits,
    dns_tcp: crate::dns::TcpLimits,
    /// The DoT and DoH listeners' caps: TCP's, each, fitted with the others.
    encrypted: Caps,
}

/// `/metrics` is scraped by a few Prometheus servers, not by clients.
const METRICS_CONNECTIONS: Caps = Caps {
    total: 64,
    per_client: 16,
};

impl EdgeLimits {
    fn fitted(args: &ServeArgs) -> Self {
        let (mut api_total, mut dns_total) = (args.api_max_connections, args.dns_tcp_max_connections);
        let mut metrics_total = METRICS_CONNECTIONS.total;
        let [mut dot_total, mut doh_total] =
            [args.dot, args.doh].map(|listener| if listener.is_some() { dns_total } else { 0 });
        let (limit, lowered) = crate::edge::fit_descriptors(&mut [
            &mut api_total,
            &mut dns_total,
            &mut metrics_total,
            &mut dot_total,
            &mut doh_total,
        ]);
        if lowered {
            tracing::warn!(
                descriptor_limit = limit,
                api_max_connections = api_total,
                dns_tcp_max_connections = dns_total,
                "the open-file limit cannot hold the connection caps; lowered them. Raise the limit \
                 (LimitNOFILE=, ulimit -n) or lower --api-max-connections and --dns-tcp-max-connections"
            );
        }
        let header_timeout = Duration::from_millis(args.api_read_timeout_ms);
        let capped = |total: usize, per_client: usize| Caps {
            total,
            per_client: per_client.min(total),
        };
        Self {
            api: api::listener::Limits {
                connections: capped(api_total, args.api_max_conns_per_client),
                header_timeout,
            },
            metrics: api::listener::Limits {
                connections: capped(metrics_total, METRICS_CONNECTIONS.per_client),
                header_timeout,
            },
            dns_tcp: crate::dns::TcpLimits {
                connections: capped(dns_total, args.dns_tcp_max_per_client),
                io_timeout: Duration::from_millis(args.dns_tcp_io_timeout_ms),
            },
            // Both were asked for with TCP's cap, so both were scaled alike.
            encrypted: capped(dot_total.max(doh_total), args.dns_tcp_max_per_client),
        }
    }
}

async fn check_leases(control: Control, ttl: Duration, every: Duration, cancel: CancellationToken) {
    periodically(every, &cancel, || async {
        if let Err(e) = control.expire_leases(ttl).await {
            tracing::warn!(error = %e, "lease check failed");
        }
    })
    .await;
}

/// What every DNS transport's handler shares: transfer rules, cookies, rate limiting.
fn dns_context(
    args: &ServeArgs,
    tsig_keys: Vec<crate::dns::tsig::Key>,
    metrics: &crate::metrics::Metrics,
) -> Result<crate::dns::handler::Context, ServerError> {
    let cookies = if args.cookies {
        let master = match &args.cookie_secret {
            Some(secret) => secret.0,
            None => {
                let mut master = [0u8; 32];
                getrandom::fill(&mut master).map_err(ServerError::CookieRandom)?;
                master
            }
        };
        Some(crate::dns::cookie::Cookies::new(master))
    } else {
        None
    };
    let rrl = (args.rrl_rate > 0).then(|| {
        crate::dns::rrl::Rrl::new(crate::dns::rrl::RrlConfig {
            rate: args.rrl_rate,
            slip: args.rrl_slip,
            ipv4_prefix: args.rrl_ipv4_prefix,
            ipv6_prefix: args.rrl_ipv6_prefix,
            whitelist: args.rrl_whitelist.clone(),
            table_size: args.rrl_table_size,
        })
    });
    Ok(crate::dns::handler::Context {
        acl: crate::dns::xfr::TransferAcl {
            allow: args.allow_transfer.clone(),
            keys: tsig_keys,
        },
        cookies,
        rrl,
        counters: Default::default(),
        metrics: metrics.clone(),
    })
}

/// The TSIG keys of `--tsig-key` and of `--tsig-key-file`.
fn tsig_keys(args: &ServeArgs) -> Result<Vec<crate::dns::tsig::Key>, ServerError> {
    let mut keys = args.tsig_keys.clone();
    if let Some(path) = &args.tsig_key_file {
        let text = std::fs::read_to_string(path).map_err(|source| ServerError::TsigKeyFileRead {
            path: path.clone(),
            source,
        })?;
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if !line.is_empty() {
                let key = line.parse().map_err(|source| ServerError::TsigKeyFileLine {
                    path: path.clone(),
                    line: i + 1,
                    source,
                })?;
                keys.push(key);
            }
        }
    }
    Ok(keys)
}

/// The admin token: from the file, the environment, or generated into `<data>/admin.token`.
fn admin_token(args: &ServeArgs) -> Result<String, ServerError> {
    let file_error = |action, path: &Path| {
        let path = path.to_owned();
        move |source| ServerError::AdminTokenFile { action, path, source }
    };
    let read = |path: &Path| {
        let token = std::fs::read_to_string(path).map_err(file_error("read", path))?;
        match token.trim() {
            "" => Err(ServerError::AdminTokenEmpty {
                path: path.to_owned(),
            }),
            token => Ok(token.to_owned()),
        }
    };
    if let Some(path) = &args.admin_token_file {
        return read(path);
    }
    if let Ok(token) = std::env::var(ADMIN_TOKEN_ENV)
        && !token.trim().is_empty()
    {
        return Ok(token.trim().to_owned());
    }
    let path = args.data.join("admin.token");
    if path.exists() {
        tracing::info!(path = %path.display(), "admin token read from file");
        return read(&path);
    }
    let token = crate::control::generate_token().map_err(ServerError::AdminTokenRandom)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(file_error("create", &path))?;
    writeln!(file, "{token}")
        .and_then(|()| file.sync_all())
        .map_err(file_error("write", &path))?;
    tracing::info!(path = %path.display(), "generated an admin token; read it from this file");
    Ok(token)
}
