//! Waiting for the signal that asks a process to stop, SIGINT (Ctrl-C) or SIGTERM, and for
//! SIGHUP, which asks the server to read its certificate again.

/// Returns once SIGINT or SIGTERM arrives.
pub async fn terminated() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// SIGHUP, each time it arrives. Once this exists, SIGHUP no longer ends the process.
#[cfg(unix)]
pub fn hangups() -> Hangups {
    use tokio::signal::unix::{SignalKind, signal};
    Hangups(signal(SignalKind::hangup()).ok())
}

/// See [`hangups`].
#[cfg(unix)]
pub struct Hangups(Option<tokio::signal::unix::Signal>);

#[cfg(unix)]
impl Hangups {
    /// Waits for the next SIGHUP; false if they cannot be received.
    pub async fn next(&mut self) -> bool {
        match self.0.as_mut() {
            Some(signal) => signal.recv().await.is_some(),
            None => false,
        }
    }
}
