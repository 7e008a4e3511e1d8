//! The shared store on etcd v3: the platform's state as a log of committed batches, so any
//! number of stackdns instances share one truth (design §11).
//!
//! # Keys (under `--etcd-prefix`, default `/stackdns/`)
//!
//! | key | value |
//! |---|---|
//! | `head` | the position (decimal) of the last committed batch |
//! | `log/<position, 16 hex digits>` | one batch ([`log`](super::log) entry), or a reference to its chunks |
//! | `chunk/<position>/<nonce>/<i>` | a piece of a batch larger than [`INLINE_MAX`] |
//! | `image` | a reference to the image: the whole state at one position (written by compaction) |
//! | `image-chunk/<position>/<nonce>/<i>` | a piece of it |
//! | `leader` | `{"id", "api"}` of the instance that may commit, under that instance's etcd lease |
//!
//! # Commit protocol
//!
//! Only the leader commits (see [`leader`]), and every commit is one etcd transaction that
//! succeeds only if `head` is still the position the writer's state was built from and
//! `leader` still holds this instance: a deposed or lagging instance cannot commit, so two
//! instances can never both accept conflicting changes. It puts `log/<head+1>` and moves
//! `head`; it is acknowledged once etcd's quorum has it. A batch larger than one etcd request
//! goes first as chunks under a fresh nonce (invisible until the transaction names them).
//!
//! Every instance follows the log by watch ([`follow`]) and applies each batch to its own
//! state; the batch carries its SOA serial and zone difference, so all serve the same serial
//! for the same state and IXFR chains hold across instances.
//!
//! # Compaction
//!
//! Once the log since the image outgrows the image (and at least [`COMPACT_MIN_BYTES`]), the
//! leader writes a new image at the head and deletes the batches it covers. Loading reads the
//! image and the batches after it at one etcd revision.

mod follow;
mod leader;

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp, TxnOpResponse};
use tokio::sync::{mpsc, watch};

use super::image::Image;
use super::log::{self, Entry};
use super::{Batch, Loaded, Store, StoreError};

pub use follow::Followed;
pub use leader::Leader;

/// Largest batch stored in its log key itself; larger ones go in chunks of this size (etcd
/// refuses requests over 1.5 MiB by default).
pub const INLINE_MAX: usize = 1 << 20;
/// The log is compacted into a new image once it holds more than this and more than the image.
pub const COMPACT_MIN_BYTES: u64 = 16 << 20;
/// Largest response the client accepts (images and log pages are read in pieces below it).
const MAX_RESPONSE: usize = 256 << 20;
/// Log entries read per request when loading.
const LOG_PAGE: i64 = 64;
const REFERENCE_MAGIC: &[u8; 4] = b"SDR1";

/// How to reach etcd and what this instance tells the others.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `host:port` of each member (`http://` or `https://` may be given).
    pub endpoints: Vec<String>,
    /// Every key starts with this.
    pub prefix: String,
    pub user: Option<(String, String)>,
    /// PEM files: the CA that signed the members' certificates, and this client's own.
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// The TTL of the leader's etcd lease: how long a dead leader blocks writes.
    pub lease_ttl: Duration,
    /// Where the other instances reach this one's API (`http://host:port`).
    pub advertise_api: String,
    /// How long one etcd request may take before it fails (a lost quorum).
    pub request_timeout: Duration,
    /// The log is compacted once it holds more than this and more than the image
    /// ([`COMPACT_MIN_BYTES`] unless a test wants it sooner).
    pub compact_bytes: u64,
}

/// The store's own runtime: the writer calls from a plain thread, and the API's runtime must
/// never be blocked waiting on etcd.
struct Runtime(Option<tokio::runtime::Runtime>);

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The etcd store.
pub struct EtcdStore {
    client: Client,
    prefix: String,
    /// Held for its drop: the client's tasks run on it.
    _runtime: Runtime,
    handle: tokio::runtime::Handle,
    /// This instance's leader record while it holds the leadership (what commits compare).
    leading: Arc<Mutex<Option<Vec<u8>>>>,
    leader: watch::Receiver<Option<Leader>>,
    id: String,
    /// The etcd revision of the last load: where following starts.
    loaded_revision: AtomicI64,
    /// Bytes of log since the image, and the image's size: when to compact.
    log_bytes: Arc<AtomicU64>,
    image_bytes: Arc<AtomicU64>,
    compacting: Arc<AtomicBool>,
    following: AtomicBool,
    compact_bytes: u64,
    /// The etcd lease this instance campaigns under (0: none yet), revoked when the store
    /// closes so another instance takes the lead at once instead of after the TTL.
    lease: Arc<AtomicI64>,
    request_timeout: Duration,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if self.revoke_lease() {
            tracing::info!("etcd leadership: handed over (lease revoked)");
        }
    }
}

impl EtcdStore {
    /// Revokes the lease this instance campaigns under: the leader key goes with it, and every
    /// instance campaigns again. Whether etcd confirmed it.
    fn revoke_lease(&self) -> bool {
        let lease = self.lease.load(Ordering::Acquire);
        if lease == 0 {
            return false;
        }
        let mut client = self.client.clone();
        let timeout = self.request_timeout;
        let revoked =
            self.run(async move { tokio::time::timeout(timeout, client.lease_revoke(lease)).await });
        matches!(revoked, Ok(Ok(Ok(_))))
    }
}

impl EtcdStore {
    /// Connects to the cluster and starts campaigning for leadership.
    pub fn connect(config: EtcdConfig) -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Etcd {
                action: "start the etcd client's runtime",
                source: e.into(),
            })?;
        let handle = rt.handle().clone();
        let runtime = Runtime(Some(rt));
        let options = connect_options(&config)?;
        let endpoints = config.endpoints.clone();
        let client = run(
            &handle,
            async move { Client::connect(endpoints, Some(options)).await },
        )?
        .map_err(|e| etcd("connect to etcd", e))?;
        let id = random_id()?;
        let prefix = config.prefix.clone();
        let record = serde_json::to_vec(&Leader {
            id: id.clone(),
            api: config.advertise_api.clone(),
        })
        .map_err(|source| StoreError::Encode {
            what: "leader record",
            source,
        })?;
        let leading = Arc::new(Mutex::new(None));
        let lease = Arc::new(AtomicI64::new(0));
        let (tx, leader) = watch::channel(None);
        handle.spawn(leader::campaign(leader::Campaign {
            client: client.clone(),
            key: format!("{prefix}leader").into_bytes(),
            record,
            ttl: config.lease_ttl,
            leading: leading.clone(),
            lease: lease.clone(),
            out: tx,
        }));
        Ok(Self {
            client,
            prefix,
            _runtime: runtime,
            handle,
            leading,
            leader,
            id,
            loaded_revision: AtomicI64::new(0),
            log_bytes: Arc::new(AtomicU64::new(0)),
            image_bytes: Arc::new(AtomicU64::new(0)),
            compacting: Arc::new(AtomicBool::new(false)),
            following: AtomicBool::new(false),
            compact_bytes: config.compact_bytes,
            lease,
            request_timeout: config.request_timeout,
        })
    }

    /// Runs `f` on the store's runtime and waits for it (from any thread).
    fn run<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        run(&self.handle, f)
    }
}

fn run<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv().map_err(|_| StoreError::Closed)
}

fn etcd(action: &'static str, e: etcd_client::Error) -> StoreError {
    StoreError::Etcd {
        action,
        source: Box::new(e),
    }
}

fn connect_options(config: &EtcdConfig) -> Result<ConnectOptions, StoreError> {
    let mut options = ConnectOptions::new()
        .with_timeout(config.request_timeout)
        .with_connect_timeout(Duration::from_secs(3))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_require_leader(true);
    if let Some((user, password)) = &config.user {
        options = options.with_user(user.clone(), password.clone());
    }
    if config.ca_file.is_some() || config.cert_file.is_some() {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| StoreError::Etcd {
                action: "read an etcd TLS file",
                source: format!("{}: {e}", path.display()).into(),
            })
        };
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &config.ca_file {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => {
                return Err(StoreError::Etcd {
                    action: "set up TLS to etcd",
                    source: "--etcd-cert-file and --etcd-key-file go together".into(),
                });
            }
        }
        options = options.with_tls(tls);
    }
    Ok(options)
}

fn random_id() -> Result<String, StoreError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Etcd {
        action: "generate an instance id",
        source: e.to_string().into(),
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn log_key(prefix: &str, position: u64) -> Vec<u8> {
    format!("{prefix}log/{position:016x}").into_bytes()
}

/// The position of a `log/` key.
fn position_of(prefix: &str, key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(format!("{prefix}log/").as_bytes())?;
    u64::from_str_radix(std::str::from_utf8(rest).ok()?, 16).ok()
}

/// A stored value that names chunks instead of holding the bytes.
fn reference(nonce: &str, chunks: usize) -> Vec<u8> {
    let mut out = REFERENCE_MAGIC.to_vec();
    out.extend_from_slice(format!("{chunks} {nonce}").as_bytes());
    out
}

fn parse_reference(value: &[u8]) -> Option<(usize, String)> {
    let text = std::str::from_utf8(value.strip_prefix(REFERENCE_MAGIC)?).ok()?;
    let (count, nonce) = text.split_once(' ')?;
    Some((count.parse().ok()?, nonce.to_owned()))
}

/// Writes `bytes` in chunks under `base/<nonce>/`; answers the reference to store.
async fn put_chunks(
    client: &mut Client,
    base: &str,
    nonce: &str,
    bytes: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let mut count = 0;
    for (i, piece) in bytes.chunks(INLINE_MAX).enumerate() {
        client
            .put(format!("{base}/{nonce}/{i:08}"), piece, None)
            .await
            .map_err(|e| etcd("write a chunk", e))?;
        count = i + 1;
    }
    Ok(reference(nonce, count))
}

/// The bytes a stored value stands for: itself, or its chunks (read at `revision`).
async fn resolve(
    client: &mut Client,
    base: &str,
    value: Vec<u8>,
    revision: i64,
) -> Result<Vec<u8>, StoreError> {
    let Some((count, nonce)) = parse_reference(&value) else {
        return Ok(value);
    };
    let mut bytes = Vec::with_capacity(count.min(16) * INLINE_MAX);
    for i in 0..count {
        let key = format!("{base}/{nonce}/{i:08}");
        let mut got = client
            .get(key.clone(), Some(GetOptions::new().with_revision(revision)))
            .await
            .map_err(|e| etcd("read a chunk", e))?;
        let kv = got
            .take_kvs()
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Corrupt {
                table: "chunk",
                key: key.clone(),
                source: "the chunk is missing".into(),
            })?;
        bytes.extend_from_slice(kv.value());
    }
    Ok(bytes)
}

fn corrupt(table: &'static str, key: impl Into<String>) -> impl FnOnce(log::LogError) -> StoreError {
    let key = key.into();
    move |e| StoreError::Corrupt {
        table,
        key,
        source: e.into(),
    }
}

/// The state at one etcd revision: the image, then every batch after it.
struct Read {
    image: Image,
    position: u64,
    revision: i64,
    log_bytes: u64,
    image_bytes: u64,
}

async fn read_state(mut client: Client, prefix: String) -> Result<Read, StoreError> {
    let head_key = format!("{prefix}head");
    let image_key = format!("{prefix}image");
    let txn = Txn::new().and_then([TxnOp::get(head_key, None), TxnOp::get(image_key.clone(), None)]);
    let response = client.txn(txn).await.map_err(|e| etcd("read the head", e))?;
    let revision = response.header().map_or(0, |h| h.revision());
    let mut values = response.op_responses().into_iter().map(|r| match r {
        TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
        _ => None,
    });
    let head = values.next().flatten();
    let image = values.next().flatten();
    let head: u64 = match head {
        Some(kv) => (std::str::from_utf8(kv.value()).ok())
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| StoreError::Corrupt {
                table: "head",
                key: "head".into(),
                source: "not a position".into(),
            })?,
        None => 0,
    };
    let (mut image, from, image_bytes) = match image {
        Some(kv) => {
            let value = kv.value().to_vec();
            let position = parse_reference(&value)
                .and_then(|(_, nonce)| nonce.split_once('@').and_then(|(p, _)| p.parse::<u64>().ok()))
                .ok_or_else(|| StoreError::Corrupt {
                    table: "image",
                    key: "image".into(),
                    source: "not an image reference".into(),
                })?;
            let base = format!("{prefix}image-chunk/{position:016x}");
            let bytes = resolve(&mut client, &base, value, revision).await?;
            let len = bytes.len() as u64;
            let loaded = log::decode_image(&bytes).map_err(corrupt("image", "image"))?;
            (Image::from_loaded(loaded), position, len)
        }
        None => (Image::default(), 0, 0),
    };
    let mut position = from;
    let mut log_bytes = 0;
    let end = format!("{prefix}log/g").into_bytes();
    let mut kv = client.kv_client().max_decoding_message_size(MAX_RESPONSE);
    while position < head {
        let options = GetOptions::new()
            .with_range(end.clone())
            .with_revision(revision)
            .with_limit(LOG_PAGE);
        let mut page = kv
            .get(log_key(&prefix, position + 1), Some(options))
            .await
            .map_err(|e| etcd("read the log", e))?;
        let kvs = page.take_kvs();
        if kvs.is_empty() {
            break;
        }
        for kv in kvs {
            let at = position_of(&prefix, kv.key()).unwrap_or(0);
            if at != position + 1 {
                return Err(StoreError::Corrupt {
                    table: "log",
                    key: format!("{at:016x}"),
                    source: format!("the log skips from {position} to {at}").into(),
                });
            }
            let bytes = resolve(
                &mut client,
                &format!("{prefix}chunk/{at:016x}"),
                kv.value().to_vec(),
                revision,
            )
            .await?;
            log_bytes += bytes.len() as u64;
            let entry = log::decode_entry(&bytes).map_err(corrupt("log", format!("{at:016x}")))?;
            apply(&mut image, &entry);
            position = at;
        }
    }
    if position != head {
        return Err(StoreError::Corrupt {
            table: "log",
            key: format!("{head:016x}"),
            source: format!("the head is at {head} but the log ends at {position}").into(),
        });
    }
    Ok(Read {
        image,
        position,
        revision,
        log_bytes,
        image_bytes,
    })
}

fn apply(image: &mut Image, entry: &Entry) {
    image.apply(&Batch {
        ops: &entry.ops,
        serial: entry.serial,
        journal: entry.journal.as_write(),
        after: 0,
    });
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let read = self.run(read_state(self.client.clone(), self.prefix.clone()))??;
        self.loaded_revision.store(read.revision, Ordering::Relaxed);
        self.log_bytes.store(read.log_bytes, Ordering::Relaxed);
        self.image_bytes.store(read.image_bytes, Ordering::Relaxed);
        let mut loaded = read.image.into_loaded();
        loaded.position = read.position;
        Ok(loaded)
    }

    fn commit(&self, batch: Batch<'_>) -> Result<(), StoreError> {
        let Some(leader_record) = self.leading.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Err(StoreError::NotLeader);
        };
        let bytes = log::encode_entry(&batch).map_err(|e| StoreError::Corrupt {
            table: "log",
            key: "(new entry)".into(),
            source: e.into(),
        })?;
        let size = bytes.len() as u64;
        let position = batch.after + 1;
        let prefix = self.prefix.clone();
        let mut client = self.client.clone();
        let after = batch.after;
        let committed = self.run(async move {
            let value = if bytes.len() <= INLINE_MAX {
                bytes
            } else {
                put_chunks(
                    &mut client,
                    &format!("{prefix}chunk/{position:016x}"),
                    &random_id()?,
                    &bytes,
                )
                .await?
            };
            let head = format!("{prefix}head");
            let at_head = if after == 0 {
                Compare::version(head.clone(), CompareOp::Equal, 0)
            } else {
                Compare::value(head.clone(), CompareOp::Equal, after.to_string())
            };
            let txn = Txn::new()
                .when([
                    at_head,
                    Compare::value(format!("{prefix}leader"), CompareOp::Equal, leader_record),
                ])
                .and_then([
                    TxnOp::put(log_key(&prefix, position), value.clone(), None),
                    TxnOp::put(head, position.to_string(), None),
                ]);
            match client.txn(txn).await {
                Ok(response) => Ok::<bool, StoreError>(response.succeeded()),
                // The answer was lost (a member went away, a timeout): what the log holds at
                // the position says whether it was stored.
                Err(e) => match client.get(log_key(&prefix, position), None).await {
                    Ok(mut got) => match got.take_kvs().first() {
                        Some(kv) if kv.value() == value.as_slice() => Ok(true),
                        Some(_) => Ok(false),
                        None => Err(StoreError::Etcd {
                            action: "commit (etcd's answer was lost; the batch may yet be stored)",
                            source: Box::new(e),
                        }),
                    },
                    Err(_) => Err(StoreError::Etcd {
                        action: "commit (etcd did not answer, and the batch may yet be stored)",
                        source: Box::new(e),
                    }),
                },
            }
        })??;
        if !committed {
            return Err(StoreError::Conflict { position: after });
        }
        let log_bytes = self.log_bytes.fetch_add(size, Ordering::Relaxed) + size;
        if log_bytes > self.compact_bytes.max(self.image_bytes.load(Ordering::Relaxed))
            && !self.compacting.swap(true, Ordering::AcqRel)
        {
            self.handle.spawn(compact(Compaction {
                client: self.client.clone(),
                prefix: self.prefix.clone(),
                log_bytes: self.log_bytes.clone(),
                image_bytes: self.image_bytes.clone(),
                compacting: self.compacting.clone(),
            }));
        }
        Ok(())
    }

    fn cluster(&self) -> Option<super::Cluster> {
        let followed = if self.following.swap(true, Ordering::AcqRel) {
            None
        } else {
            let (tx, rx) = mpsc::channel(1024);
            self.handle.spawn(follow::follow(
                self.client.clone(),
                self.prefix.clone(),
                self.loaded_revision.load(Ordering::Relaxed) + 1,
                tx,
            ));
            Some(rx)
        };
        Some(super::Cluster {
            id: self.id.clone(),
            leader: self.leader.clone(),
            followed,
        })
    }
}

struct Compaction {
    client: Client,
    prefix: String,
    log_bytes: Arc<AtomicU64>,
    image_bytes: Arc<AtomicU64>,
    compacting: Arc<AtomicBool>,
}

/// Writes the state at the head as the new image and deletes what it covers.
async fn compact(c: Compaction) {
    match compact_once(&c).await {
        Ok((position, bytes)) => {
            tracing::info!(
                position,
                image_bytes = bytes,
                "etcd log compacted into a new image"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "etcd log compaction failed; the log keeps growing until it succeeds")
        }
    }
    c.compacting.store(false, Ordering::Release);
}

async fn compact_once(c: &Compaction) -> Result<(u64, u64), StoreError> {
    let prefix = &c.prefix;
    let read = read_state(c.client.clone(), prefix.clone()).await?;
    let mut client = c.client.clone();
    let position = read.position;
    let loaded = read.image.into_loaded();
    let bytes = tokio::task::spawn_blocking(move || log::encode_image(&loaded))
        .await
        .map_err(|_| StoreError::Closed)?
        .map_err(|e| StoreError::Corrupt {
            table: "image",
            key: "(new image)".into(),
            source: e.into(),
        })?;
    let size = bytes.len() as u64;
    let base = format!("{prefix}image-chunk/{position:016x}");
    // The image's position goes in its nonce: a load reads it from the reference.
    let nonce = format!("{position}@{}", random_id()?);
    let image = put_chunks(&mut client, &base, &nonce, &bytes).await?;
    // Only if no other compaction moved the image since this one read it.
    let image_key = format!("{prefix}image");
    let mut current = client
        .get(
            image_key.clone(),
            Some(GetOptions::new().with_revision(read.revision)),
        )
        .await
        .map_err(|e| etcd("read the image", e))?;
    let image_rev = current.take_kvs().first().map_or(0, |kv| kv.mod_revision());
    let txn = Txn::new()
        .when([Compare::mod_revision(
            image_key.clone(),
            CompareOp::Equal,
            image_rev,
        )])
        .and_then([TxnOp::put(image_key, image, None)]);
    if !client
        .txn(txn)
        .await
        .map_err(|e| etcd("store the image", e))?
        .succeeded()
    {
        return Err(StoreError::Conflict { position });
    }
    // What the new image covers: the batches up to it, their chunks, older images.
    let deletes = [
        (format!("{prefix}log/"), log_key(prefix, position + 1)),
        (
            format!("{prefix}chunk/"),
            format!("{prefix}chunk/{:016x}", position + 1).into_bytes(),
        ),
        (
            format!("{prefix}image-chunk/"),
            format!("{prefix}image-chunk/{position:016x}").into_bytes(),
        ),
    ];
    for (from, to) in deletes {
        client
            .delete(from, Some(etcd_client::DeleteOptions::new().with_range(to)))
            .await
            .map_err(|e| etcd("delete compacted keys", e))?;
    }
    c.image_bytes.store(size, Ordering::Relaxed);
    let covered = read.log_bytes;
    let _ = (c.log_bytes).fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
        Some(b.saturating_sub(covered))
    });
    Ok((position, size))
}

#[cfg(test)]
mod tests;
