//! Connection accounting on the network edges (the HTTP API, DNS over TCP, TLS and HTTPS): a cap
//! per client and in total, the descriptor budget those caps must fit in, and the accept loop's
//! one step they all share ([`accept`]).
//!
//! A listener asks its [`Gate`] before it serves a connection; the [`Ticket`] it gets back holds
//! the connection's place until dropped. One client holding thousands of idle connections then
//! runs into its own cap, not into the process's descriptor limit, and the other listeners keep
//! the descriptors reserved for them (the caps of all listeners are fitted to `RLIMIT_NOFILE`
//! at start-up by [`fit_descriptors`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The next connection on `listener`, or `None` once `cancel` fires. An accept error (out of
/// descriptors or memory) is logged and waited out for 10 ms instead of spun on.
pub async fn accept(
    listener: &TcpListener,
    cancel: &CancellationToken,
    what: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(accepted) => return Some(accepted),
            Err(e) => {
                tracing::warn!(error = %e, listener = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Who a cap counts against: an IPv4 address, or an IPv6 /64 (one subscriber's usual
/// allocation, so stepping through addresses of one prefix does not multiply the cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Client {
    V4(u32),
    /// The address's top 64 bits.
    V6(u64),
}

impl Client {
    pub fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => Self::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// A peer's address as it is itself: an IPv4-mapped IPv6 address (a dual-stack socket's view
/// of an IPv4 client) is the IPv4 address, for every rule keyed by address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds as many connections as it may.
    Full,
    /// This client holds as many connections as one client may.
    Client,
}

/// The caps of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub total: usize,
    pub per_client: usize,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_client: HashMap<Client, usize>,
}

/// Admits connections within [`Caps`]; cheap to clone (one shared count).
#[derive(Debug, Clone)]
pub struct Gate {
    caps: Caps,
    counts: Arc<Mutex<Counts>>,
}

/// One admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Ticket {
    client: Client,
    counts: Arc<Mutex<Counts>>,
}

impl Gate {
    pub fn new(caps: Caps) -> Self {
        Self {
            caps,
            counts: Arc::default(),
        }
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// A place for a connection from `ip`, unless the listener or the client is at its cap.
    pub fn admit(&self, ip: IpAddr) -> Result<Ticket, Refused> {
        let client = Client::of(ip);
        // The counts are plain integers: a panic elsewhere cannot leave them half-updated.
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        // The client's own cap first: a client at it must not make room by evicting others.
        if counts.per_client.get(&client).copied().unwrap_or(0) >= self.caps.per_client {
            return Err(Refused::Client);
        }
        if counts.total >= self.caps.total {
            return Err(Refused::Full);
        }
        *counts.per_client.entry(client).or_insert(0) += 1;
        counts.total += 1;
        Ok(Ticket {
            client,
            counts: self.counts.clone(),
        })
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(mine) = counts.per_client.get_mut(&self.client) {
            *mine -= 1;
            if *mine == 0 {
                counts.per_client.remove(&self.client);
            }
        }
    }
}

/// Descriptors kept for everything that is not an admitted connection: the database, the UDP
/// sockets, NOTIFY sockets, refused API connections lingering (at most 64), the log, slack.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// Raises the soft descriptor limit to the hard one and lowers the listeners' total caps, in
/// proportion, until they and [`RESERVED_DESCRIPTORS`] fit under it. Returns the limit and
/// whether any cap was lowered, so the caller can say which flags to change.
pub fn fit_descriptors(caps: &mut [&mut usize]) -> (u64, bool) {
    let limit = raise_descriptor_limit();
    let available = limit.saturating_sub(RESERVED_DESCRIPTORS).max(caps.len() as u64);
    let wanted: u64 = caps.iter().map(|c| **c as u64).sum();
    if wanted <= available {
        return (limit, false);
    }
    for cap in caps.iter_mut() {
        let scaled = (**cap as u64).saturating_mul(available) / wanted.max(1);
        **cap = usize::try_from(scaled.max(1)).unwrap_or(usize::MAX);
    }
    (limit, true)
}

/// The soft `RLIMIT_NOFILE` after raising it as far as the hard limit allows.
fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn a_client_is_capped_before_the_listener() {
        let gate = Gate::new(Caps {
            total: 3,
            per_client: 2,
        });
        let a1 = gate.admit(ip("192.0.2.1")).expect("first");
        let _a2 = gate.admit(ip("192.0.2.1")).expect("second");
        assert_eq!(gate.admit(ip("192.0.2.1")).err(), Some(Refused::Client));
        let _b = gate.admit(ip("192.0.2.2")).expect("another client");
        assert_eq!(gate.admit(ip("192.0.2.3")).err(), Some(Refused::Full));
        assert_eq!(
            gate.admit(ip("192.0.2.1")).err(),
            Some(Refused::Client),
            "own cap first"
        );
        drop(a1);
        assert_eq!(gate.held(), 2);
        gate.admit(ip("192.0.2.3")).expect("a freed place");
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        assert_eq!(
            Client::of(ip("2001:db8:1:2::1")),
            Client::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            Client::of(ip("2001:db8:1:2::1")),
            Client::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(Client::of(ip("::ffff:192.0.2.1")), Client::of(ip("192.0.2.1")));
        assert_ne!(Client::of(ip("::1")), Client::of(ip("0.0.0.1")));
    }

    #[test]
    fn caps_are_fitted_to_the_descriptor_limit() {
        let (limit, _) = fit_descriptors(&mut []);
        let (mut a, mut b) = (usize::MAX / 4, usize::MAX / 4);
        let (_, lowered) = fit_descriptors(&mut [&mut a, &mut b]);
        assert!(lowered);
        assert!((a + b) as u64 <= limit.saturating_sub(RESERVED_DESCRIPTORS).max(2));
        assert_eq!(a, b, "lowered in proportion");
        let mut small = 8usize;
        assert!(!fit_descriptors(&mut [&mut small]).1);
        assert_eq!(small, 8);
    }
}
