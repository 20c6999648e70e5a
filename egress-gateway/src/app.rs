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

use crate::{
    bpf, ca::CertificateAuthority, config, credentials::Credentials, dlp, dns, policy, proxy, resolve::Resolver,
    telemetry,
};

/// What a bottle's requests are decided with, replaced as a whole on reload: a request
/// takes one snapshot, so it never sees new routes with old credentials.
pub struct BottleLive {
    pub routes: Arc<policy::Routes>,
    /// The bottle's `credentials_file` (empty without one).
    pub credentials: Arc<Credentials>,
    /// The shared rules with this bottle's known secrets (and its own clean cache).
    pub dlp: Arc<dlp::Engine>,
}

impl BottleLive {
    /// The value of a route's `token_env` for this bottle: its credentials file first,
    /// then the gateway's environment. Never another bottle's file.
    pub fn credential(&self, name: &str) -> Option<String> {
        match self.credentials.get(name) {
            Some(v) => Some(v.to_string()),
            None => std::env::var(name).ok().filter(|v| !v.is_empty()),
        }
    }
}

/// A configured bottle and its live policy.
pub struct BottleState {
    pub config: config::Bottle,
    live: ArcSwap<BottleLive>,
    /// The gateway-wide engine each of this bottle's engines is derived from.
    base_dlp: Arc<dlp::Engine>,
    /// Holds supervised requests; `None` when the bottle has no `supervise:` block.
    pub supervisor: Option<Arc<crate::supervise::Supervisor>>,
}

impl BottleState {
    /// Everything a bottle needs, checked: routes, credentials file, known secrets,
    /// supervise store. Nothing is attached or served yet.
    pub fn build(
        config: &config::Config,
        bottle: &config::Bottle,
        base_dlp: &Arc<dlp::Engine>,
    ) -> anyhow::Result<Self> {
        let live = Self::load_live(bottle, base_dlp).with_context(|| format!("bottle {}", bottle.name))?;
        let supervisor = match &bottle.supervise {
            Some(s) => {
                let sup = crate::supervise::Supervisor::from_config(&bottle.name, s, &config.state_dir)
                    .with_context(|| format!("bottle {}: supervise", bottle.name))?;
                Some(Arc::new(sup))
            }
            None => None,
        };
        Ok(BottleState {
            config: bottle.clone(),
            live: ArcSwap::from_pointee(live),
            base_dlp: base_dlp.clone(),
            supervisor,
        })
    }

    /// One consistent view of the bottle's policy, credentials and DLP engine.
    pub fn live(&self) -> Arc<BottleLive> {
        self.live.load_full()
    }

    pub fn routes(&self) -> Arc<policy::Routes> {
        self.live.load().routes.clone()
    }

    /// The bottle's DLP engine: the gateway's rules with the bottle's known secrets.
    pub fn dlp(&self) -> Arc<dlp::Engine> {
        self.live.load().dlp.clone()
    }

    /// Routes (none: deny everything), credentials, and the engine that knows them.
    fn load_live(bottle: &config::Bottle, base_dlp: &dlp::Engine) -> anyhow::Result<BottleLive> {
        let routes = match &bottle.routes {
            Some(path) => policy::Routes::load(path)?,
            None => policy::Routes::deny_all(),
        };
        let credentials = match &bottle.credentials_file {
            Some(path) => Credentials::load(path)?,
            None => Credentials::empty(),
        };
        // Known secrets: every value of the file (injected or not), and the gateway
        // environment's value of each `token_env` these routes name, on top of the
        // gateway-wide ones.
        let mut own: Vec<(String, String)> =
            credentials.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        for route in routes.routes() {
            if let Some(auth) = &route.auth
                && let Ok(value) = std::env::var(&auth.token_env)
            {
                own.push((auth.token_env.clone(), value));
            }
        }
        let dlp = base_dlp.with_known_secrets(base_dlp.known_secrets().extended(own));
        Ok(BottleLive { routes: Arc::new(routes), credentials: Arc::new(credentials), dlp: Arc::new(dlp) })
    }

    /// Re-reads the routes and credentials files and rebuilds the known secrets, then
    /// swaps them in together; on any error nothing changes and the error (which names
    /// files and lines, never a value) is returned for the log.
    pub fn reload(&self) -> anyhow::Result<()> {
        let live = Self::load_live(&self.config, &self.base_dlp)?;
        self.live.store(Arc::new(live));
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
    // Policy first: a bad routes or credentials file stops the start before anything is
    // attached.
    let dlp = Arc::new(build_dlp(&config.dlp)?);
    tracing::info!(known_secrets = dlp.known_secrets().len(), "dlp engine ready");
    let mut bottles = HashMap::new();
    for b in &config.bottles {
        let state = BottleState::build(&config, b, &dlp)?;
        tracing::info!(
            bottle = %b.name,
            credentials = state.live().credentials.len(),
            known_secrets = state.dlp().known_secrets().len(),
            "bottle ready"
        );
        bottles.insert(b.id, Arc::new(state));
    }

    let resolver = Resolver::new(config.hosts.clone());
    let ca = CertificateAuthority::load_or_create(&config.state_dir).context("loading the interception CA")?;
    let upstream = proxy::upstream::Upstream::new(resolver.clone(), &config.upstream_ca_files)
        .context("building the upstream TLS client")?;
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

/// The gateway-wide DLP engine: built-in rules plus the configured rules file, and as
/// known secrets every `EGRESS_TOKEN_*` variable and every variable whose name starts
/// with a prefix in `dlp.sensitive_prefixes` or in `BOT_BOTTLE_SENSITIVE_PREFIXES`
/// (comma-separated), bot-bottle's knob. Each bottle's engine adds its own secrets to
/// these (`BottleState::build`).
fn build_dlp(config: &config::DlpConfig) -> anyhow::Result<dlp::Engine> {
    let mut prefixes: Vec<String> = std::env::var("BOT_BOTTLE_SENSITIVE_PREFIXES")
        .unwrap_or_default()
        .split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    prefixes.extend(config.sensitive_prefixes.iter().cloned());
    let partial = config.partial_min_len.unwrap_or(dlp::known::DEFAULT_PARTIAL_MIN_LEN);
    let known = dlp::KnownSecrets::from_env(std::env::vars(), &prefixes, partial);
    let rules = match &config.rules {
        Some(path) => dlp::cli::load_rules(path)?,
        None => Vec::new(),
    };
    tracing::info!(user_rules = rules.len(), "dlp rules loaded");
    dlp::Engine::new(known, rules).context("building the DLP engine")
}

fn reload(gw: &Gateway) {
    for b in gw.bottles() {
        match b.reload() {
            Ok(()) => tracing::info!(bottle = %b.config.name, "routes and credentials reloaded"),
            Err(e) => tracing::error!(
                bottle = %b.config.name,
                error = %format!("{e:#}"),
                "reload failed; keeping the previous routes and credentials"
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
