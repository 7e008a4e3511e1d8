//! Leader election on etcd: one key, created only if absent, under the candidate's lease.
//!
//! The instance whose record is in `leader` is the only one that commits, expires leases,
//! reconciles and places; every commit also compares the key (see `mod.rs`), so even an
//! instance that has not yet noticed it lost the key cannot commit. A leader steps down on
//! its own once its lease has not been renewed for two thirds of the TTL, before etcd can
//! give the key to another. When the key goes (the leader stopped, or its lease lapsed),
//! every instance campaigns again; one wins.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::watch;

/// The instance that may commit, and where its API is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Leader {
    pub id: String,
    pub api: String,
}

pub struct Campaign {
    pub client: Client,
    pub key: Vec<u8>,
    /// This instance's record (JSON of [`Leader`]).
    pub record: Vec<u8>,
    pub ttl: Duration,
    /// Set to `record` while this instance holds the key.
    pub leading: Arc<Mutex<Option<Vec<u8>>>>,
    /// The lease of the current term (0 between terms).
    pub lease: Arc<std::sync::atomic::AtomicI64>,
    pub out: watch::Sender<Option<Leader>>,
}

impl Campaign {
    fn set(&self, leader: Option<Leader>, mine: bool) {
        *self.leading.lock().unwrap_or_else(|p| p.into_inner()) = mine.then(|| self.record.clone());
        self.out.send_if_modified(|current| {
            let changed = *current != leader;
            *current = leader;
            changed
        });
    }
}

/// Campaigns until the server stops (the receiver of `out` goes away).
pub async fn campaign(c: Campaign) {
    loop {
        if let Err(e) = term(&c).await {
            tracing::warn!(error = %e, "etcd leadership: lost contact; campaigning again");
        }
        c.set(None, false);
        if c.out.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The pause before asking etcd again after a failed read or a broken watch.
const RETRY: Duration = Duration::from_millis(200);

fn parse(value: &[u8]) -> Option<Leader> {
    serde_json::from_slice(value).ok()
}

/// One lease: campaign, hold or watch the key, until the lease cannot be renewed. A broken
/// stream (the member it ran to went away) is opened again on the same lease; only a lease
/// that etcd let lapse, or one not renewed for two thirds of its TTL, ends the term.
async fn term(c: &Campaign) -> Result<(), etcd_client::Error> {
    let mut client = c.client.clone();
    let ttl = i64::try_from(c.ttl.as_secs().max(1)).unwrap_or(60);
    let lease = client.lease_grant(ttl, None).await?.id();
    c.lease.store(lease, std::sync::atomic::Ordering::Release);
    let result = hold(c, &mut client, lease).await;
    c.lease.store(0, std::sync::atomic::Ordering::Release);
    let _ = client.lease_revoke(lease).await;
    result
}

async fn hold(c: &Campaign, client: &mut Client, lease: i64) -> Result<(), etcd_client::Error> {
    let renew_every = c.ttl / 3;
    // The leader gives up before etcd could: two thirds of the TTL without a renewal.
    let give_up = c.ttl * 2 / 3;
    let mut renewed = Instant::now();
    let (mut keeper, mut acks) = client.lease_keep_alive(lease).await?;
    let mut tick = tokio::time::interval(renew_every);
    loop {
        let txn = Txn::new()
            .when([Compare::create_revision(c.key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                c.key.clone(),
                c.record.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(c.key.clone(), None)]);
        let response = match client.txn(txn).await {
            Ok(response) => response,
            // etcd is electing, or this member went away: keep the lease alive and ask again,
            // without changing who is said to lead, until the lease could lapse.
            Err(e) if renewed.elapsed() <= give_up => {
                tracing::debug!(error = %e, "etcd leadership: cannot read the key; retrying");
                tokio::time::sleep(RETRY).await;
                let _ = keeper.keep_alive().await;
                let ack = tokio::time::timeout(RETRY, acks.message()).await;
                if matches!(ack, Ok(Ok(Some(ref a))) if a.ttl() > 0) {
                    renewed = Instant::now();
                }
                continue;
            }
            Err(e) => {
                c.set(None, false);
                return Err(e);
            }
        };
        let mut revision = response.header().map_or(0, |h| h.revision());
        // The key may already be this term's own (the watch was set up again).
        let held = response.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| (kv.value().to_vec(), kv.lease())),
            _ => None,
        });
        if let Some((value, old)) = held.as_ref().filter(|(v, l)| *v == c.record && *l != lease) {
            // This instance's record under an earlier lease (its revoke failed): not this
            // term's, so it cannot commit under it. Delete it, then campaign.
            let txn = Txn::new()
                .when([
                    Compare::value(c.key.clone(), CompareOp::Equal, value.clone()),
                    Compare::lease(c.key.clone(), CompareOp::Equal, *old),
                ])
                .and_then([TxnOp::delete(c.key.clone(), None)]);
            let _ = client.txn(txn).await;
            continue;
        }
        let mut mine =
            response.succeeded() || held.as_ref().is_some_and(|(v, l)| *v == c.record && *l == lease);
        let current = if mine {
            parse(&c.record)
        } else {
            held.and_then(|(v, _)| parse(&v))
        };
        if mine && !c.leading.lock().is_ok_and(|l| l.is_some()) {
            tracing::info!("etcd leadership: this instance leads");
        }
        c.set(current, mine);
        let mut watch = None;
        'held: loop {
            if watch.is_none() {
                let options = WatchOptions::new().with_start_revision(revision + 1);
                match client.watch(c.key.clone(), Some(options)).await {
                    Ok(w) => watch = Some(w),
                    Err(e) => tracing::debug!(error = %e, "etcd leadership: cannot watch the key yet"),
                }
            }
            tokio::select! {
                _ = tick.tick() => {
                    if renewed.elapsed() > give_up {
                        if mine {
                            tracing::warn!("etcd leadership: the lease was not renewed in time; stepping down");
                        }
                        c.set(None, false);
                        return Err(etcd_client::Error::LeaseKeepAliveError("not renewed in time".into()));
                    }
                    if keeper.keep_alive().await.is_err() {
                        // The stream's member is gone: a new stream, on another member.
                        if let Ok((k, a)) = client.lease_keep_alive(lease).await {
                            (keeper, acks) = (k, a);
                        }
                    }
                }
                ack = acks.message() => match ack {
                    Ok(Some(ack)) if ack.ttl() > 0 => renewed = Instant::now(),
                    Ok(Some(_)) => {
                        c.set(None, false);
                        return Err(etcd_client::Error::LeaseKeepAliveError("the lease expired".into()));
                    }
                    Ok(None) | Err(_) => {
                        if let Ok((k, a)) = client.lease_keep_alive(lease).await {
                            (keeper, acks) = (k, a);
                        } else {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                },
                message = async { watch.as_mut()?.message().await.ok() }, if watch.is_some() => {
                    // A broken, cancelled or compacted watch: read the key again (the
                    // transaction above) and watch from there.
                    let Some(Some(message)) = message else {
                        tokio::time::sleep(RETRY).await;
                        break 'held;
                    };
                    if message.canceled() || message.compact_revision() > 0 {
                        tokio::time::sleep(RETRY).await;
                        break 'held;
                    }
                    for event in message.events() {
                        if let Some(kv) = event.kv() {
                            revision = revision.max(kv.mod_revision());
                        }
                        match event.event_type() {
                            EventType::Delete => break 'held,
                            EventType::Put => {
                                let leader = event.kv().and_then(|kv| parse(kv.value()));
                                mine = event.kv().is_some_and(|kv| kv.value() == c.record.as_slice());
                                c.set(leader, mine);
                            }
                        }
                    }
                }
                () = c.out.closed() => return Ok(()),
            }
        }
        // Campaign again at once; the result of that says who leads (this instance included).
    }
}
