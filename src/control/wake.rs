//! Wakes the blocking assignment queries of the nodes a commit concerns, and no others.
//!
//! A node's agent waits on `GET /v1/nodes/{node}/assignments?index=N`; with a thousand nodes,
//! waking every waiter on every change would run a thousand look-ups on the writer for one
//! scaled service. Each waiting node has its own channel instead, and the writer signals only
//! the nodes whose assignments a commit changed.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use crate::model::Label;

/// One wake-up channel per node that someone waits on.
#[derive(Debug, Default)]
pub struct NodeWakers {
    senders: Mutex<HashMap<Label, watch::Sender<()>>>,
}

impl NodeWakers {
    /// A receiver that changes whenever `node`'s assignments may have changed. Subscribe
    /// before reading the assignments, so a change in between is not missed.
    pub fn subscribe(&self, node: &Label) -> watch::Receiver<()> {
        let mut senders = self.lock();
        match senders.get(node) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(());
                senders.insert(node.clone(), tx);
                rx
            }
        }
    }

    /// Wakes whoever waits on one of `nodes`, and forgets the channels nobody waits on.
    pub fn wake<'a>(&self, nodes: impl IntoIterator<Item = &'a Label>) {
        let mut senders = self.lock();
        for node in nodes {
            if let Some(tx) = senders.get(node) {
                if tx.receiver_count() == 0 {
                    senders.remove(node);
                } else {
                    tx.send_replace(());
                }
            }
        }
    }

    /// Wakes every waiter (the state was reloaded: anything may have changed).
    pub fn wake_all(&self) {
        let mut senders = self.lock();
        senders.retain(|_, tx| tx.receiver_count() > 0);
        for tx in senders.values() {
            tx.send_replace(());
        }
    }

    /// A panic elsewhere while holding the lock leaves the map as consistent as ever.
    fn lock(&self) -> MutexGuard<'_, HashMap<Label, watch::Sender<()>>> {
        self.senders.lock().unwrap_or_else(|e| e.into_inner())
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
        let wakers = NodeWakers::default();
        let (a, b) = (label("a"), label("b"));
        let mut on_a = wakers.subscribe(&a);
        let mut also_a = wakers.subscribe(&a);
        let on_b = wakers.subscribe(&b);
        wakers.wake([&a]);
        assert!(on_a.has_changed().unwrap_or(false));
        assert!(also_a.has_changed().unwrap_or(false));
        assert!(
            !on_b.has_changed().unwrap_or(true),
            "b's assignments did not change"
        );
        on_a.borrow_and_update();
        wakers.wake_all();
        assert!(on_a.has_changed().unwrap_or(false) && on_b.has_changed().unwrap_or(false));
        also_a.borrow_and_update();
    }

    #[test]
    fn channels_nobody_waits_on_are_forgotten() {
        let wakers = NodeWakers::default();
        let a = label("a");
        drop(wakers.subscribe(&a));
        wakers.wake([&a]);
        assert!(wakers.lock().is_empty());
        let again = wakers.subscribe(&a);
        wakers.wake([&a]);
        assert!(
            again.has_changed().unwrap_or(false),
            "a new waiter gets a fresh channel"
        );
    }
}
