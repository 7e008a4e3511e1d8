//! Following the log: every batch committed after the last load, in order, whoever committed
//! it, by one etcd watch on `log/`.

use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::mpsc;

use super::{MAX_RESPONSE, position_of, resolve};
use crate::store::StoreError;
use crate::store::log::{self, Entry};

/// What following the log hands the writer.
#[derive(Debug)]
pub enum Followed {
    /// The batch at `position`.
    Entry { position: u64, entry: Box<Entry> },
    /// Batches were missed (etcd compacted the history the watch needed, or one could not be
    /// read): load the state again. Following goes on from after the gap.
    Reload,
}

enum End {
    /// The receiver is gone: the server is stopping.
    Closed,
    Compacted,
    Failed(StoreError),
}

/// Sends every batch committed from etcd revision `from` on, until the receiver goes away.
pub async fn follow(client: Client, prefix: String, mut from: i64, out: mpsc::Sender<Followed>) {
    loop {
        match watch(&client, &prefix, &mut from, &out).await {
            End::Closed => return,
            End::Compacted => {
                tracing::warn!(
                    revision = from,
                    "etcd compacted the history this instance was following; loading the state again"
                );
                // The reload happens after this revision, so it includes whatever lies between.
                from = current_revision(&client, &prefix).await.map_or(from, |r| r + 1);
                if out.send(Followed::Reload).await.is_err() {
                    return;
                }
            }
            End::Failed(e) => {
                tracing::warn!(error = %e, "following the etcd log failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The cluster's revision now, read with a key of the prefix (a user may be allowed no other).
async fn current_revision(client: &Client, prefix: &str) -> Option<i64> {
    let mut client = client.clone();
    let response = client.get(format!("{prefix}head"), None).await.ok()?;
    response.header().map(|h| h.revision())
}

async fn watch(client: &Client, prefix: &str, from: &mut i64, out: &mpsc::Sender<Followed>) -> End {
    let mut watcher = client.watch_client().max_decoding_message_size(MAX_RESPONSE);
    let options = WatchOptions::new().with_prefix().with_start_revision(*from);
    let mut stream = match watcher.watch(format!("{prefix}log/"), Some(options)).await {
        Ok(stream) => stream,
        Err(e) => return End::Failed(super::etcd("watch the log", e)),
    };
    let mut reader = client.clone();
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return End::Failed(StoreError::Closed),
            Err(e) => return End::Failed(super::etcd("follow the log", e)),
        };
        if response.compact_revision() > 0 {
            return End::Compacted;
        }
        if response.canceled() {
            return End::Failed(StoreError::Etcd {
                action: "follow the log",
                source: response.cancel_reason().to_owned().into(),
            });
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            *from = kv.mod_revision() + 1;
            if event.event_type() != EventType::Put {
                continue; // Compaction deleting covered batches.
            }
            let Some(position) = position_of(prefix, kv.key()) else {
                continue;
            };
            let base = format!("{prefix}chunk/{position:016x}");
            let entry = match resolve(&mut reader, &base, kv.value().to_vec(), kv.mod_revision()).await {
                Ok(bytes) => log::decode_entry(&bytes).map_err(|e| StoreError::Corrupt {
                    table: "log",
                    key: format!("{position:016x}"),
                    source: e.into(),
                }),
                Err(e) => Err(e),
            };
            let followed = match entry {
                Ok(entry) => Followed::Entry {
                    position,
                    entry: Box::new(entry),
                },
                Err(e) => {
                    tracing::error!(error = %e, position, "cannot read a batch of the etcd log; loading the state again");
                    Followed::Reload
                }
            };
            if out.send(followed).await.is_err() {
                return End::Closed;
            }
        }
    }
}
