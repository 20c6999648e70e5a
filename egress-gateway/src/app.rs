//! Wires the gateway together: bind the listeners, attach every bottle, serve until a
//! signal. Stopping the gateway leaves the programs pinned: bottles stay redirected to
//! listeners that no longer exist, so their connections are refused (fail closed).
use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::AsFd,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::{
    net::{TcpListener, UdpSocket},
    signal::unix::{SignalKind, signal},
};

use crate::{bpf, ca::CertificateAuthority, config, dns, netns, policy, proxy, resolve::Resolver, telemetry};

/// A configured bottle and its live policy.
pub struct BottleState {
    pub config: config::Bottle,
    routes: ArcSwap<policy::Routes>,
    /// Holds supervised requests; `None` when the bottle has no `supervise:` block.
    pub supervisor: Option<Arc<crate::supervise::Supervisor>>,
}

impl BottleState {
    pub fn routes(&self) -> arc_swap::Guard<Arc<policy::Routes>> {
        self.routes.load()
    }

    /// The bottle's live state: its routes and its supervisor.
    pub fn build(bottle: &config::Bottle, config: &config::Config) -> anyhow::Result<BottleState> {
        let routes = Self::load_routes(bottle)?;
        let supervisor = match &bottle.supervise {
            Some(s) => {
                let sup = crate::supervise::Supervisor::from_config(&bottle.name, s, &config.state_dir)
                    .with_context(|| format!("bottle {}: supervise", bottle.name))?;
                Some(Arc::new(sup))
            }
            None => None,
        };
        Ok(BottleState { config: bottle.clone(), routes: ArcSwap::from_pointee(routes), supervisor })
    }

    /// Loads the bottle's routes file (none: deny everything).
    fn load_routes(bottle: &config::Bottle) -> Result<policy::Routes, config::ConfigError> {
        match &bottle.routes {
            Some(path) => policy::Routes::load(path),
            None => Ok(policy::Routes::deny_all()),
        }
    }

    /// Re-reads the routes file; on error the current policy stays and the error is
    /// returned for the log.
    pub fn reload(&self) -> Result<(), config::ConfigError> {
        let routes = Self::load_routes(&self.config)?;
        self.routes.store(Arc::new(routes));
        Ok(())
    }
}

/// Everything a connection handler needs, and the bottles being served.
pub struct Gateway {
    pub config: config::Config,
    pub resolver: Resolver,
    pub maps: bpf::KernelMaps,
    pub proxy: Arc<proxy::ProxyContext>,
    /// The bottles served now, by id; replaced whole when one is attached or detached,
    /// so readers never take a lock.
    bottles: ArcSwap<HashMap<u32, Arc<Served>>>,
    /// Serialises attach and detach (each is several kernel and file-system steps).
    changes: tokio::sync::Mutex<()>,
    next_conn_id: AtomicU64,
}

/// A bottle being served: its policy, and the listener tasks opened in its network
/// namespace (none for a bottle in the gateway's namespace: it uses the shared ones).
pub struct Served {
    pub state: Arc<BottleState>,
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        for task in &self.listeners {
            task.abort();
        }
    }
}

/// Which bottles a listener may serve: the shared listeners serve every bottle in the
/// gateway's namespace; a listener opened in a bottle's namespace serves that bottle only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerScope {
    Shared,
    Bottle(u32),
}

impl Gateway {
    pub fn bottle_by_id(&self, id: u32) -> Option<Arc<BottleState>> {
        self.bottles.load().get(&id).map(|s| s.state.clone())
    }

    /// The bottle a connection or query on a listener of `scope` belongs to, given the id
    /// the kernel programs recorded (`None` for a namespaced listener: it has one bottle).
    pub fn bottle_for(&self, scope: ListenerScope, recorded: Option<u32>) -> Option<Arc<BottleState>> {
        match (scope, recorded) {
            (ListenerScope::Bottle(id), None) => self.bottle_by_id(id),
            (ListenerScope::Bottle(id), Some(r)) if r == id => self.bottle_by_id(id),
            (ListenerScope::Shared, Some(r)) => self.bottle_by_id(r).filter(|b| b.config.netns.is_none()),
            _ => None,
        }
    }

    pub fn bottles(&self) -> Vec<Arc<BottleState>> {
        let mut all: Vec<_> = self.bottles.load().values().map(|s| s.state.clone()).collect();
        all.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        all
    }

    fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Starts serving `bottle`: its policy is loaded first (a bad routes file attaches
    /// nothing), then its namespace and in-namespace listeners, then its programs, so a
    /// redirected socket always finds a listener.
    pub async fn attach(self: &Arc<Self>, bottle: config::Bottle) -> anyhow::Result<Arc<BottleState>> {
        let _change = self.changes.lock().await;
        if self.bottles.load().values().any(|s| s.state.config.name == bottle.name) {
            anyhow::bail!("bottle {} is already attached", bottle.name);
        }
        let state = Arc::new(BottleState::build(&bottle, &self.config)?);
        let mut listeners = Vec::new();
        if let Some(path) = netns::ensure(&bottle)? {
            let (tcp_addr, dns_addr) = netns::listen_addrs(&self.config, &bottle);
            let ns = netns::bind_in(&path, tcp_addr, dns_addr)
                .with_context(|| format!("bottle {}: opening listeners in {}", bottle.name, path.display()))?;
            let cookie = netns::socket_netns_cookie(ns.tcp.as_fd()).context("reading the namespace cookie")?;
            let tcp = TcpListener::from_std(ns.tcp)?;
            let udp = UdpSocket::from_std(ns.udp)?;
            let scope = ListenerScope::Bottle(bottle.id);
            listeners.push(tokio::spawn(accept_loop(tcp, cookie, scope, self.clone())));
            listeners.push(tokio::spawn(dns::serve(udp, scope, self.clone())));
        }
        let config = self.config.clone();
        let b = bottle.clone();
        tokio::task::spawn_blocking(move || bpf::attach_bottle(&config, &b))
            .await?
            .with_context(|| format!("attaching bottle {}", bottle.name))?;
        let served = Arc::new(Served { state: state.clone(), listeners });
        let mut next = HashMap::clone(&self.bottles.load());
        next.insert(bottle.id, served);
        self.bottles.store(Arc::new(next));
        Ok(state)
    }

    /// Stops serving a bottle and removes its programs (refused while processes live
    /// unless `force`: they would get direct egress). A namespace the gateway created goes
    /// too.
    pub async fn detach(&self, name: &str, force: bool) -> anyhow::Result<()> {
        let _change = self.changes.lock().await;
        let current = self.bottles.load_full();
        let Some((&id, served)) = current.iter().find(|(_, s)| s.state.config.name == name) else {
            anyhow::bail!("no bottle named {name:?} is attached");
        };
        let bottle = served.state.config.clone();
        let config = self.config.clone();
        let b = bottle.clone();
        tokio::task::spawn_blocking(move || bpf::detach(&config, &b, force, true)).await??;
        let mut next = HashMap::clone(&current);
        next.remove(&id);
        self.bottles.store(Arc::new(next));
        if let Err(e) = netns::remove_created(&bottle) {
            tracing::warn!(bottle = %name, error = %format!("{e:#}"), "removing the bottle's namespace failed");
        }
        tracing::info!(bottle = %name, "bottle detached");
        Ok(())
    }
}

pub fn run(config: config::Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    telemetry::init();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(serve(config, config_path))
}

async fn serve(config: config::Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    // Policy first: a bad routes file stops the start before anything is attached.
    for b in &config.bottles {
        BottleState::load_routes(b)?;
    }

    let resolver = Resolver::new(config.hosts.clone());
    let ca = CertificateAuthority::load_or_create(&config.state_dir).context("loading the interception CA")?;
    let upstream = proxy::upstream::Upstream::new(resolver.clone(), &config.upstream_ca_files)
        .context("building the upstream TLS client")?;
    let dlp = Arc::new(build_dlp(&config)?);
    tracing::info!(known_secrets = dlp.known_secrets().len(), "dlp engine ready");
    let proxy = Arc::new(proxy::ProxyContext { resolver: resolver.clone(), dlp, ca: Arc::new(ca), upstream });

    // Listeners before programs: once a bottle is attached, its connections must find them.
    let tcp = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the TCP listener {}", config.listen))?;
    let udp = UdpSocket::bind(config.dns_listen)
        .await
        .with_context(|| format!("binding the DNS listener {}", config.dns_listen))?;
    let shared_cookie = netns::socket_netns_cookie(tcp.as_fd()).context("reading the listener's namespace cookie")?;

    bpf::ensure_bpffs(&config)?;
    // The shared maps exist before any bottle does, so a gateway may start with none.
    bpf::ensure_maps(&config)?;
    let layout = bpf::PinLayout::new(&config);
    let maps = bpf::KernelMaps::open(&layout.maps_dir())?;

    let gw = Arc::new(Gateway {
        resolver,
        config: config.clone(),
        maps,
        proxy,
        bottles: ArcSwap::from_pointee(HashMap::new()),
        changes: tokio::sync::Mutex::new(()),
        next_conn_id: AtomicU64::new(1),
    });
    tokio::spawn(dns::serve(udp, ListenerScope::Shared, gw.clone()));
    tokio::spawn(accept_loop(tcp, shared_cookie, ListenerScope::Shared, gw.clone()));

    for b in &config.bottles {
        gw.attach(b.clone()).await?;
    }
    for stale in layout.pinned_bottles() {
        if config.bottle(&stale).is_none() {
            tracing::warn!(
                bottle = %stale,
                "pinned bottle is not in the configuration: its connections are refused; \
                 `egress-gateway detach` removes it"
            );
        }
    }

    tracing::info!(
        listen = %gw.config.listen,
        dns_listen = %gw.config.dns_listen,
        bottles = gw.config.bottles.len(),
        config = %config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "<embedded default>".into()),
        "ready"
    );

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&gw),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping; bottles stay attached and are refused until the gateway is back");
    Ok(())
}

/// The DLP engine: built-in rules plus the configured rules file, and as known secrets
/// every `EGRESS_TOKEN_*` variable, every variable named by a route's `token_env`, and
/// every variable whose name starts with a prefix in `dlp.sensitive_prefixes` or in
/// `BOT_BOTTLE_SENSITIVE_PREFIXES` (comma-separated), bot-bottle's knob.
fn build_dlp(gateway: &config::Config) -> anyhow::Result<crate::dlp::Engine> {
    let config = &gateway.dlp;
    let mut prefixes: Vec<String> = std::env::var("BOT_BOTTLE_SENSITIVE_PREFIXES")
        .unwrap_or_default()
        .split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    prefixes.extend(config.sensitive_prefixes.iter().cloned());
    for b in &gateway.bottles {
        for route in BottleState::load_routes(b)?.routes() {
            if let Some(auth) = &route.auth {
                prefixes.push(auth.token_env.clone());
            }
        }
    }
    let partial = config.partial_min_len.unwrap_or(crate::dlp::known::DEFAULT_PARTIAL_MIN_LEN);
    let known = crate::dlp::KnownSecrets::from_env(std::env::vars(), &prefixes, partial);
    let rules = match &config.rules {
        Some(path) => crate::dlp::cli::load_rules(path)?,
        None => Vec::new(),
    };
    tracing::info!(user_rules = rules.len(), "dlp rules loaded");
    crate::dlp::Engine::new(known, rules).context("building the DLP engine")
}

fn reload(gw: &Gateway) {
    for b in gw.bottles() {
        match b.reload() {
            Ok(()) => tracing::info!(bottle = %b.config.name, "routes reloaded"),
            Err(e) => tracing::error!(
                bottle = %b.config.name,
                error = %e,
                "routes reload failed; keeping the previous policy"
            ),
        }
    }
}

/// Accepts redirected connections on one listener. `netns` is the cookie of the
/// listener's namespace: with the client's address it finds what the programs recorded.
async fn accept_loop(listener: TcpListener, netns: u64, scope: ListenerScope, gw: Arc<Gateway>) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small writes (TLS records, HTTP heads) must not wait for delayed ACKs.
        let _ = stream.set_nodelay(true);
        let id = gw.next_conn_id();
        let redirected = match gw.maps.take_orig_dst(netns, client) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(conn = id, client = %client, error = %e, "connection refused");
                continue;
            }
        };
        let Some(bottle) = gw.bottle_for(scope, Some(redirected.bottle_id)) else {
            tracing::warn!(
                conn = id,
                client = %client,
                orig_dst = %redirected.orig_dst,
                "connection from a bottle that is not configured refused"
            );
            continue;
        };
        if is_own_listener(&gw.config, &bottle.config, redirected.orig_dst) {
            tracing::warn!(conn = id, bottle = %bottle.config.name, "connection to the gateway's own listener refused");
            continue;
        }
        let conn = proxy::Connection { id, client, orig_dst: redirected.orig_dst, bottle };
        tokio::spawn(proxy::handle(stream, conn, gw.proxy.clone()));
    }
}

fn is_own_listener(config: &config::Config, bottle: &config::Bottle, addr: SocketAddr) -> bool {
    let addr = SocketAddr::new(crate::resolve::canonical(addr.ip()), addr.port());
    let (listen, dns_listen) = netns::listen_addrs(config, bottle);
    addr == SocketAddr::V4(listen) || addr == SocketAddr::V4(dns_listen)
}
