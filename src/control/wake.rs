//! Wakes the blocking assignment queries of the nodes a commit concerns, and no others.
//!
//! A node's agent waits on `GET /v1/nodes/{node}/assignments?index=N`; with a thousand nodes,
//! waking every waiter on every change would run a thousand look-ups on the writer for one
//! scaled service. Each waiting node has its own channel instead, and the writer signals only
//! the nodes whose assignments a commit changed. A channel lives while someone waits on it, so
//! names asked about once, or nodes that are gone, leave nothing behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::model::Label;

/// One wake-up channel per node that someone waits on.
#[derive(Debug, Default)]
pub struct NodeWakers {
    senders: Mutex<HashMap<Label, watch::Sender<()>>>,
}

/// One waiter's hold on its node's channel; dropping it lets the channel go with the last one.
pub struct Subscription {
    wakers: Arc<NodeWakers>,
    node: Label,
    receiver: watch::Receiver<()>,
}

impl NodeWakers {
    /// Starts waiting on `node`'s assignments. Subscribe before reading them, so a change in
    /// between is not missed.
    pub fn subscribe(self: &Arc<Self>, node: &Label) -> Subscription {
        let mut senders = self.lock();
        let receiver = match senders.get(node) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(());
                senders.insert(node.clone(), tx);
                rx
            }
        };
        Subscription {
            wakers: self.clone(),
            node: node.clone(),
            receiver,
        }
    }

    /// Wakes whoever waits on one of `nodes`.
    pub fn wake<'a>(&self, nodes: impl IntoIterator<Item = &'a Label>) {
        let senders = self.lock();
        for node in nodes {
            if let Some(tx) = senders.get(node) {
                tx.send_replace(());
            }
        }
    }

    /// Wakes every waiter (the state was reloaded: anything may have changed).
    pub fn wake_all(&self) {
        for tx in self.lock().values() {
            tx.send_replace(());
        }
    }

    /// A panic elsewhere while holding the lock leaves the map as consistent as ever.
    fn lock(&self) -> MutexGuard<'_, HashMap<Label, watch::Sender<()>>> {
        self.senders.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Subscription {
    /// Marks the current state as seen: [`changed`](Self::changed) waits for the next wake-up.
    pub fn mark_seen(&mut self) {
        self.receiver.borrow_and_update();
    }

    /// Waits for the next wake-up of this node.
    pub async fn changed(&mut self) {
        // The sender lives while this receiver does, so this does not fail; if it did, the
        // caller reads the assignments again, which is always correct.
        let _ = self.receiver.changed().await;
    }

    #[cfg(test)]
    fn has_changed(&self) -> bool {
        self.receiver.has_changed().unwrap_or(false)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut senders = self.wakers.lock();
        // This receiver is the last one (it goes right after): forget the channel.
        if senders.get(&self.node).is_some_and(|tx| tx.receiver_count() <= 1) {
            senders.remove(&self.node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(s: &str) -> Label {
        Label::parse("node", s).expect("valid")
    }

    #[test]
    fn only_the_nodes_concerned_wake() {
        let wakers = Arc::new(NodeWakers::default());
        let (a, b) = (label("a"), label("b"));
        let mut on_a = wakers.subscribe(&a);
        let also_a = wakers.subscribe(&a);
        let on_b = wakers.subscribe(&b);
        wakers.wake([&a]);
        assert!(on_a.has_changed() && also_a.has_changed());
        assert!(!on_b.has_changed(), "b's assignments did not change");
        on_a.mark_seen();
        assert!(!on_a.has_changed());
        wakers.wake_all();
        assert!(on_a.has_changed() && on_b.has_changed());
    }

    #[test]
    fn a_channel_goes_with_its_last_waiter() {
        let wakers = Arc::new(NodeWakers::default());
        let a = label("a");
        let first = wakers.subscribe(&a);
        let second = wakers.subscribe(&a);
        drop(first);
        assert_eq!(wakers.lock().len(), 1, "kept while someone still waits");
        wakers.wake([&a]);
        assert!(second.has_changed());
        drop(second);
        assert!(wakers.lock().is_empty(), "forgotten with the last waiter");
        wakers.wake([&a]);
        let again = wakers.subscribe(&a);
        assert!(!again.has_changed(), "a new waiter starts from now");
        wakers.wake([&a]);
        assert!(again.has_changed());
    }
}
