//! The gateway's own name resolution: the config's `hosts:` overrides first, then an
//! asynchronous stub resolver (hickory) with a cache, to the configured `resolvers:` or
//! /etc/resolv.conf's name servers. Bottles never choose where a name points.
//!
//! A name whose server never answers costs a timer, not a thread: lookups are futures,
//! each bounded by `LOOKUP_DEADLINE`, and one bottle may have at most
//! `dns.concurrent_lookups` of them waiting at once, so a bottle flooding slow names waits
//! behind its own lookups while every other bottle's resolve as usual. That holds for the
//! proxy's lookups (a request's address check, CONNECT, `tcp:` relays) as for the DNS
//! listener's: each takes the bottle's slots.
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts},
    net::runtime::TokioRuntimeProvider,
};
use tokio::sync::Semaphore;

/// One upstream query's timeout, and how many tries (over the configured servers).
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
const QUERY_ATTEMPTS: usize = 2;
/// The most any one lookup (waiting for a slot included) may take.
pub const LOOKUP_DEADLINE: Duration = Duration::from_secs(4);
/// Default lookups one bottle may have in flight.
pub const DEFAULT_CONCURRENT_LOOKUPS: usize = 16;
/// Lookups made for the gateway itself (upstream connections, address checks) share
/// this many slots.
const GATEWAY_CONCURRENT_LOOKUPS: usize = 64;

#[derive(Clone)]
pub struct Resolver {
    overrides: Arc<BTreeMap<String, Vec<IpAddr>>>,
    /// `None` when no name server could be configured: every lookup not overridden fails.
    inner: Option<TokioResolver>,
    /// In-flight lookups per bottle (`""`: the gateway's own).
    slots: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    /// Shared by every clone; a reload of gateway.yaml may change it.
    per_bottle: Arc<std::sync::atomic::AtomicUsize>,
    /// Names looked up so far (overrides included, IP literals not), by every clone.
    lookups: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").field("overrides", &self.overrides).field("per_bottle", &self.per_bottle).finish()
    }
}

impl Default for Resolver {
    /// Overrides only: every other name fails (tests, and a gateway with no name server).
    fn default() -> Self {
        Resolver::with_upstream(BTreeMap::new(), None, DEFAULT_CONCURRENT_LOOKUPS)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}: {reason}")]
pub struct ResolveError {
    pub host: String,
    pub reason: String,
}

impl Resolver {
    /// Overrides only, no upstream name servers.
    pub fn new(overrides: BTreeMap<String, Vec<IpAddr>>) -> Self {
        Resolver::with_upstream(overrides, None, DEFAULT_CONCURRENT_LOOKUPS)
    }

    /// `servers`: the name servers to ask (empty: /etc/resolv.conf's). A resolv.conf that
    /// cannot be read is logged and leaves only the overrides.
    pub fn from_config(
        overrides: BTreeMap<String, Vec<IpAddr>>,
        servers: &[SocketAddr],
        per_bottle: usize,
    ) -> Result<Self, ResolveError> {
        let (config, mut opts) = if servers.is_empty() {
            hickory_resolver::system_conf::read_system_conf().map_err(|e| ResolveError {
                host: "/etc/resolv.conf".into(),
                reason: format!("cannot read the system's name servers: {e}"),
            })?
        } else {
            let servers = servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            (ResolverConfig::from_name_servers(servers), ResolverOpts::default())
        };
        opts.timeout = QUERY_TIMEOUT;
        opts.attempts = QUERY_ATTEMPTS;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Names are always asked fully qualified: no search domain ever sees a bottle's name.
        opts.ndots = 0;
        // The per-bottle slots are the limit; hickory's own per-connection cap (busy
        // errors for everyone) must never be reached before them.
        opts.max_active_requests = opts.max_active_requests.max(4096);
        let inner = hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|e| ResolveError { host: "(resolver)".into(), reason: e.to_string() })?;
        Ok(Resolver::with_upstream(overrides, Some(inner), per_bottle))
    }

    fn with_upstream(
        overrides: BTreeMap<String, Vec<IpAddr>>,
        inner: Option<TokioResolver>,
        per_bottle: usize,
    ) -> Self {
        Resolver {
            overrides: Arc::new(overrides),
            inner,
            slots: Arc::default(),
            per_bottle: Arc::new(std::sync::atomic::AtomicUsize::new(per_bottle.max(1))),
            lookups: Arc::default(),
        }
    }

    /// Every address of `host` (an IP literal resolves to itself), for the gateway itself.
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        self.lookup_for("", host).await
    }

    /// Every address of `host`, resolved on behalf of `bottle`: its lookups wait for one
    /// of its own slots, never another bottle's.
    pub async fn lookup_for(&self, bottle: &str, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        self.lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(addrs) = self.overrides.get(&host) {
            return Ok(addrs.clone());
        }
        let fail = |reason: String| ResolveError { host: host.clone(), reason };
        let Some(inner) = &self.inner else {
            return Err(fail("no name server configured".into()));
        };
        let slots = self.slots_of(bottle);
        let lookup = async {
            let _slot = slots.acquire().await.map_err(|_| fail("resolver closed".into()))?;
            inner.lookup_ip(format!("{host}.")).await.map_err(|e| fail(e.to_string()))
        };
        let found = tokio::time::timeout(LOOKUP_DEADLINE, lookup)
            .await
            .map_err(|_| fail(format!("no answer within {} s", LOOKUP_DEADLINE.as_secs())))??;
        let addrs: Vec<IpAddr> = found.iter().collect();
        if addrs.is_empty() {
            return Err(fail("no addresses".into()));
        }
        Ok(addrs)
    }

    fn slots_of(&self, bottle: &str) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let n = if bottle.is_empty() { GATEWAY_CONCURRENT_LOOKUPS } else { self.concurrent_lookups() };
        slots.entry(bottle.to_string()).or_insert_with(|| Arc::new(Semaphore::new(n))).clone()
    }

    /// Names looked up so far by this resolver and its clones (a request's path must
    /// resolve its host once).
    pub fn lookups(&self) -> u64 {
        self.lookups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Lookups one bottle may have in flight.
    pub fn concurrent_lookups(&self) -> usize {
        self.per_bottle.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A new per-bottle limit (a reload): each bottle's next lookups wait for slots of
    /// the new size; lookups already in flight keep theirs.
    pub fn set_concurrent_lookups(&self, n: usize) {
        let n = n.max(1);
        if self.per_bottle.swap(n, std::sync::atomic::Ordering::Relaxed) != n {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.retain(|bottle, _| bottle.is_empty());
        }
    }

    /// Whether `ip` is one of `host`'s addresses (looked up on behalf of `bottle`, in its
    /// own slots): the check that keeps data for a host from being delivered anywhere else.
    pub async fn is_address_of(&self, bottle: &str, host: &str, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match self.lookup_for(bottle, host).await {
            Ok(addrs) => addrs.into_iter().any(|a| canonical(a) == ip),
            Err(_) => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses compare equal to their IPv4 form.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    #[tokio::test]
    async fn overrides_win_and_literals_resolve_to_themselves() {
        let mut m = BTreeMap::new();
        m.insert("upstream.test".to_string(), vec!["127.0.0.2".parse().unwrap()]);
        let r = Resolver::new(m);
        assert_eq!(r.lookup("Upstream.Test.").await.unwrap(), vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
        assert!(r.is_address_of("b", "upstream.test", "::ffff:127.0.0.2".parse().unwrap()).await);
        assert!(!r.is_address_of("b", "upstream.test", "127.0.0.3".parse().unwrap()).await);
        assert_eq!(r.lookup("127.0.0.9").await.unwrap(), vec!["127.0.0.9".parse::<IpAddr>().unwrap()]);
        assert!(r.lookup("elsewhere.test").await.is_err(), "no name server: only overrides");
    }

    /// A loopback name server that answers `fast.test` with 127.0.0.5 and never answers
    /// anything else.
    fn silent_server() -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let Ok(q) = crate::dns::wire::parse_query(&buf[..n]) else { continue };
                if q.name == "fast.test" {
                    let addrs: &[IpAddr] =
                        if q.qtype == crate::dns::wire::QTYPE_A { &[IpAddr::V4([127, 0, 0, 5].into())] } else { &[] };
                    let _ = sock.send_to(&crate::dns::wire::reply(&q, crate::dns::wire::Rcode::NoError, addrs), peer);
                }
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_bottle_flooding_silent_names_does_not_delay_another() {
        let server = silent_server();
        let r = Resolver::from_config(BTreeMap::new(), &[server], 4).unwrap();
        let mut flood = Vec::new();
        for i in 0..50 {
            let r = r.clone();
            flood.push(tokio::spawn(async move { r.lookup_for("a", &format!("n{i}.slow.test")).await }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        let addrs = r.lookup_for("b", "fast.test").await.unwrap();
        assert_eq!(addrs, vec![IpAddr::V4([127, 0, 0, 5].into())]);
        // Generous: the point is that it does not wait behind bottle a's 50 lookups.
        assert!(started.elapsed() < LOOKUP_DEADLINE, "took {:?}", started.elapsed());
        for f in flood {
            assert!(f.await.unwrap().is_err(), "silent names fail, bounded by the deadline");
        }
    }
}
