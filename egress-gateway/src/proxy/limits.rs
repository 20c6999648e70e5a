//! What a hostile bottle may hold of the gateway: buffered request-body bytes (a
//! gateway-wide and a per-bottle budget, reserved as bytes arrive and released on drop),
//! open connections (a per-bottle cap, the permit travels with the socket), and time
//! (idle watchdogs for HTTP connections and for byte relays).
use std::{
    io,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::Limits;

/// A budget of bytes: `used` never exceeds `cap`.
#[derive(Debug)]
pub struct Pool {
    cap: u64,
    used: AtomicU64,
}

impl Pool {
    pub fn new(cap: u64) -> Pool {
        Pool { cap, used: AtomicU64::new(0) }
    }

    fn try_take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.cap)
            })
            .is_ok()
    }

    fn give(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }
}

/// The gateway-wide limits and budget, shared by every connection.
#[derive(Debug)]
pub struct Shared {
    pub config: Limits,
    pub buffered: Arc<Pool>,
}

impl Shared {
    pub fn new(config: Limits) -> Shared {
        let buffered = Arc::new(Pool::new(config.buffered_bytes));
        Shared { config, buffered }
    }
}

/// One bottle's share: its body budget and its open connections.
#[derive(Debug)]
pub struct BottleUsage {
    pub buffered: Arc<Pool>,
    max_connections: usize,
    connections: AtomicUsize,
    /// Connections closed at accept because the bottle was at its cap.
    pub refused_connections: AtomicU64,
    /// Requests refused because a body budget was spent.
    pub refused_requests: AtomicU64,
    last_refusal_log: AtomicU64,
}

impl BottleUsage {
    pub fn new(limits: &Limits) -> BottleUsage {
        BottleUsage {
            buffered: Arc::new(Pool::new(limits.bottle_buffered_bytes)),
            max_connections: limits.bottle_connections as usize,
            connections: AtomicUsize::new(0),
            refused_connections: AtomicU64::new(0),
            refused_requests: AtomicU64::new(0),
            last_refusal_log: AtomicU64::new(0),
        }
    }

    /// A permit for one more open connection, or `None` at the cap (the refusal is
    /// counted).
    pub fn connect(self: &Arc<Self>) -> Option<ConnPermit> {
        let taken = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_connections).then_some(n + 1))
            .is_ok();
        if taken {
            Some(ConnPermit(self.clone()))
        } else {
            self.refused_connections.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Whether a refusal should be logged now: at most one line a second per bottle, so
    /// a flood cannot flood the log as well (the counters keep the totals).
    pub fn should_log_refusal(&self) -> bool {
        let now = now_ms();
        let last = self.last_refusal_log.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= 1000)
            && self.last_refusal_log.compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }
}

/// One open connection of a bottle; released when dropped.
#[derive(Debug)]
pub struct ConnPermit(Arc<BottleUsage>);

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Which budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    Bottle,
    Gateway,
}

/// Bytes held against both budgets; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    gateway: Arc<Pool>,
    bottle: Arc<Pool>,
    held: u64,
}

impl Reservation {
    pub fn new(gateway: Arc<Pool>, bottle: Arc<Pool>) -> Reservation {
        Reservation { gateway, bottle, held: 0 }
    }

    /// Takes `n` more bytes from both budgets, or nothing.
    pub fn grow(&mut self, n: u64) -> Result<(), Spent> {
        if !self.bottle.try_take(n) {
            return Err(Spent::Bottle);
        }
        if !self.gateway.try_take(n) {
            self.bottle.give(n);
            return Err(Spent::Gateway);
        }
        self.held += n;
        Ok(())
    }

    pub fn held(&self) -> u64 {
        self.held
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held > 0 {
            self.bottle.give(self.held);
            self.gateway.give(self.held);
        }
    }
}

fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// The requests in flight on one HTTP connection and when that number last changed: a
/// connection with none for the idle timeout is closed (keep-alive, HTTP/2 with no
/// stream). Bytes are not the measure: HTTP/2 pings would keep an idle client alive.
#[derive(Debug)]
pub struct InFlight {
    count: AtomicUsize,
    changed_ms: AtomicU64,
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight { count: AtomicUsize::new(0), changed_ms: AtomicU64::new(now_ms()) }
    }
}

impl InFlight {
    pub fn start(self: &Arc<Self>) -> RequestGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.changed_ms.store(now_ms(), Ordering::Release);
        RequestGuard(self.clone())
    }

    /// Resolves once nothing has been in flight for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let since = Duration::from_millis(now_ms().saturating_sub(self.changed_ms.load(Ordering::Acquire)));
            if self.count.load(Ordering::Acquire) == 0 && since >= timeout {
                return;
            }
            let wait = if self.count.load(Ordering::Acquire) == 0 { timeout.saturating_sub(since) } else { timeout };
            tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
        }
    }
}

/// One request in flight; ends when dropped (with the response body, when it streams).
#[derive(Debug)]
pub struct RequestGuard(Arc<InFlight>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.changed_ms.store(now_ms(), Ordering::Release);
    }
}

/// When bytes last moved through any stream that shares it.
#[derive(Debug)]
pub struct Stamp(AtomicU64);

impl Default for Stamp {
    fn default() -> Self {
        Stamp(AtomicU64::new(now_ms()))
    }
}

impl Stamp {
    fn touch(&self) {
        self.0.store(now_ms(), Ordering::Release);
    }

    /// Resolves once no byte has moved for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let since = Duration::from_millis(now_ms().saturating_sub(self.0.load(Ordering::Acquire)));
            if since >= timeout {
                return;
            }
            tokio::time::sleep((timeout - since).max(Duration::from_millis(100))).await;
        }
    }
}

/// A stream that stamps every byte read or written (for relays: a raw `tcp:` relay or a
/// WebSocket is idle when neither side moves), and may carry the connection's permit
/// so the bottle's count follows the socket wherever it goes (upgrades, tunnels).
pub struct Tracked<I> {
    inner: I,
    stamp: Option<Arc<Stamp>>,
    _permit: Option<ConnPermit>,
}

impl<I> Tracked<I> {
    pub fn with_permit(inner: I, permit: ConnPermit) -> Self {
        Tracked { inner, stamp: None, _permit: Some(permit) }
    }

    pub fn stamped(inner: I, stamp: Arc<Stamp>) -> Self {
        Tracked { inner, stamp: Some(stamp), _permit: None }
    }

    fn touch(&self) {
        if let Some(s) = &self.stamp {
            s.touch();
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: each intercepted connection holds
/// two descriptors, and the per-bottle cap (not the descriptor table) is what should
/// refuse a flood. Returns (before, after).
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        let before = lim.rlim_cur;
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok((before, lim.rlim_cur))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_hold_both_budgets_and_give_back_on_drop() {
        let gateway = Arc::new(Pool::new(100));
        let (a, b) = (Arc::new(Pool::new(60)), Arc::new(Pool::new(60)));
        let mut r1 = Reservation::new(gateway.clone(), a.clone());
        assert_eq!(r1.grow(50), Ok(()));
        assert_eq!(r1.grow(20), Err(Spent::Bottle), "over the bottle's share");
        assert_eq!(r1.held(), 50);
        let mut r2 = Reservation::new(gateway.clone(), b.clone());
        assert_eq!(r2.grow(51), Err(Spent::Gateway), "over the gateway's budget");
        assert_eq!(b.used(), 0, "a refused growth takes nothing");
        assert_eq!(r2.grow(50), Ok(()));
        drop(r1);
        assert_eq!((gateway.used(), a.used(), b.used()), (50, 0, 50));
        drop(r2);
        assert_eq!(gateway.used(), 0);
    }

    #[test]
    fn connection_permits_stop_at_the_cap_and_come_back() {
        let limits = Limits { bottle_connections: 2, ..Limits::default() };
        let usage = Arc::new(BottleUsage::new(&limits));
        let p1 = usage.connect().unwrap();
        let _p2 = usage.connect().unwrap();
        assert!(usage.connect().is_none());
        assert_eq!(usage.refused_connections.load(Ordering::Relaxed), 1);
        drop(p1);
        assert!(usage.connect().is_some());
    }
}
