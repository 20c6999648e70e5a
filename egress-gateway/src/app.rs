//! Wires the gateway together: bind the listeners, attach every bottle, serve until a
//! signal. Stopping the gateway leaves the programs pinned: bottles stay redirected to
//! listeners that no longer exist, so their connections are refused (fail closed).
use std::{
    collections::HashMap,
    net::SocketAddr,
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

use crate::{bpf, ca::CertificateAuthority, config, dns, policy, proxy, resolve::Resolver, telemetry};

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

/// Everything a connection handler needs.
pub struct Gateway {
    pub config: config::Config,
    pub resolver: Resolver,
    pub maps: bpf::KernelMaps,
    pub proxy: Arc<proxy::ProxyContext>,
    bottles: HashMap<u32, Arc<BottleState>>,
    next_conn_id: AtomicU64,
}

impl Gateway {
    pub fn bottle_by_id(&self, id: u32) -> Option<&Arc<BottleState>> {
        self.bottles.get(&id)
    }

    pub fn bottles(&self) -> impl Iterator<Item = &Arc<BottleState>> {
        self.bottles.values()
    }

    fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
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
    let mut bottles = HashMap::new();
    for b in &config.bottles {
        let routes = BottleState::load_routes(b)?;
        let supervisor = match &b.supervise {
            Some(s) => {
                let sup = crate::supervise::Supervisor::from_config(&b.name, s, &config.state_dir)
                    .with_context(|| format!("bottle {}: supervise", b.name))?;
                Some(Arc::new(sup))
            }
            None => None,
        };
        bottles.insert(
            b.id,
            Arc::new(BottleState { config: b.clone(), routes: ArcSwap::from_pointee(routes), supervisor }),
        );
    }

    let resolver = Resolver::new(config.hosts.clone());
    let ca = CertificateAuthority::load_or_create(&config.state_dir).context("loading the interception CA")?;
    let upstream = proxy::upstream::Upstream::new(resolver.clone(), &config.upstream_ca_files)
        .context("building the upstream TLS client")?;
    let dlp = Arc::new(build_dlp(&config.dlp, &bottles)?);
    tracing::info!(known_secrets = dlp.known_secrets().len(), "dlp engine ready");
    let proxy = Arc::new(proxy::ProxyContext { resolver: resolver.clone(), dlp, ca: Arc::new(ca), upstream });

    // Listeners before programs: once a bottle is attached, its connections must find them.
    let tcp = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the TCP listener {}", config.listen))?;
    let udp = UdpSocket::bind(config.dns_listen)
        .await
        .with_context(|| format!("binding the DNS listener {}", config.dns_listen))?;

    bpf::ensure_bpffs(&config)?;
    for b in &config.bottles {
        bpf::attach_bottle(&config, b).with_context(|| format!("attaching bottle {}", b.name))?;
    }
    let layout = bpf::PinLayout::new(&config);
    for stale in layout.pinned_bottles() {
        if config.bottle(&stale).is_none() {
            tracing::warn!(
                bottle = %stale,
                "pinned bottle is not in the configuration: its connections are refused; \
                 `egress-gateway detach` removes it"
            );
        }
    }
    std::fs::create_dir_all(layout.maps_dir()).ok();
    let maps = bpf::KernelMaps::open(&layout.maps_dir())?;

    let gw = Arc::new(Gateway { resolver, config, maps, proxy, bottles, next_conn_id: AtomicU64::new(1) });

    tracing::info!(
        listen = %gw.config.listen,
        dns_listen = %gw.config.dns_listen,
        bottles = gw.config.bottles.len(),
        config = %config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "<embedded default>".into()),
        "ready"
    );

    tokio::spawn(dns::serve(udp, gw.clone()));
    tokio::spawn(accept_loop(tcp, gw.clone()));

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
fn build_dlp(
    config: &config::DlpConfig,
    bottles: &HashMap<u32, Arc<BottleState>>,
) -> anyhow::Result<crate::dlp::Engine> {
    let mut prefixes: Vec<String> = std::env::var("BOT_BOTTLE_SENSITIVE_PREFIXES")
        .unwrap_or_default()
        .split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    prefixes.extend(config.sensitive_prefixes.iter().cloned());
    for b in bottles.values() {
        for route in b.routes().routes() {
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

async fn accept_loop(listener: TcpListener, gw: Arc<Gateway>) {
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
        let redirected = match gw.maps.take_orig_dst(client) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(conn = id, client = %client, error = %e, "connection refused");
                continue;
            }
        };
        let Some(bottle) = gw.bottle_by_id(redirected.bottle_id).cloned() else {
            tracing::warn!(
                conn = id,
                client = %client,
                orig_dst = %redirected.orig_dst,
                "connection from a bottle that is not configured refused"
            );
            continue;
        };
        if is_own_listener(&gw.config, redirected.orig_dst) {
            tracing::warn!(conn = id, bottle = %bottle.config.name, "connection to the gateway's own listener refused");
            continue;
        }
        let conn = proxy::Connection { id, client, orig_dst: redirected.orig_dst, bottle };
        tokio::spawn(proxy::handle(stream, conn, gw.proxy.clone()));
    }
}

fn is_own_listener(config: &config::Config, addr: SocketAddr) -> bool {
    let addr = SocketAddr::new(crate::resolve::canonical(addr.ip()), addr.port());
    addr == SocketAddr::V4(config.listen) || addr == SocketAddr::V4(config.dns_listen)
}
