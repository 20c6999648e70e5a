//! A graceful stop (SIGTERM, SIGINT): the listeners stop accepting, the requests held for
//! an operator are answered (403) and their proposals closed as `stopped`, idle
//! keep-alive connections close, and the connections in flight get `drain_seconds` to
//! finish before the process exits. Bottles stay attached (fail closed).
use std::{sync::LazyLock, time::Duration};

use tokio::{sync::watch, time::Instant};

/// Set once, when the gateway starts stopping; never cleared (the process exits).
static STOPPING: LazyLock<watch::Sender<bool>> = LazyLock::new(|| watch::Sender::new(false));

/// Starts the stop: every listener, hold and keep-alive connection waiting on
/// `stopped()` or checking `is_stopping()` sees it.
pub fn stop() {
    STOPPING.send_replace(true);
}

pub fn is_stopping() -> bool {
    *STOPPING.borrow()
}

/// Resolves once the gateway is stopping.
pub async fn stopped() {
    let mut rx = STOPPING.subscribe();
    // The sender is a static: it is never dropped, so this only returns once set.
    let _ = rx.wait_for(|s| *s).await;
}

/// How often the drain looks at the connections still open.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Waits until `open()` (the client connections still open, upgraded ones included)
/// reaches zero or `within` has passed; returns what is still open.
pub async fn drain(within: Duration, open: impl Fn() -> usize) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let left = open();
        if left == 0 || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(DRAIN_POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn drain_ends_when_the_last_connection_closes_or_at_the_deadline() {
        let open = Arc::new(AtomicUsize::new(2));
        let closer = open.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            closer.store(0, Ordering::SeqCst);
        });
        assert_eq!(drain(Duration::from_secs(30), || open.load(Ordering::SeqCst)).await, 0);
        open.store(3, Ordering::SeqCst);
        assert_eq!(drain(Duration::from_millis(300), || open.load(Ordering::SeqCst)).await, 3);
    }
}
