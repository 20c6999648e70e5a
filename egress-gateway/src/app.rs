//! Wires the gateway together: bind the listeners, attach every bottle, serve until a
//! signal. Stopping the gateway leaves the programs pinned: bottles stay redirected to
//! listeners that no longer exist, so their connections are refused (fail closed).
use std::{
    net::SocketAddr,
    os::fd::AsFd,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Context;
use tokio::{
    net::{TcpListener, UdpSocket},
    signal::unix::{SignalKind, signal},
};

pub use crate::bottle::{BottleLive, BottleState, ListenerScope, Registry, Served};
use crate::{
    admin::{self, BottleSource, ControlError},
    bpf,
    ca::CertificateAuthority,
    config, dlp, dns, netns, proxy,
    resolve::Resolver,
    sd_notify, telemetry,
};

/// Everything a connection handler needs, and the bottles being served.
pub struct Gateway {
    pub config: config::Config,
    pub resolver: Resolver,
    pub maps: Arc<bpf::KernelMaps>,
    pub proxy: Arc<proxy::ProxyContext>,
    /// What the DNS listeners answer with (its name budgets included).
    pub dns: Arc<dns::DnsContext>,
    /// The bottles served now, by id; replaced whole when one is attached or detached,
    /// so readers never take a lock.
    bottles: Arc<Registry>,
    /// Serialises attach and detach (each is several kernel and file-system steps).
    changes: tokio::sync::Mutex<()>,
    /// Bottles attached at run time, kept for the next start.
    runtime: crate::control::RuntimeStore,
    /// This gateway, for the listener tasks a run-time attach spawns.
    me: std::sync::Weak<Gateway>,
    next_conn_id: AtomicU64,
}

impl Gateway {
    pub fn bottle_by_id(&self, id: u32) -> Option<Arc<BottleState>> {
        self.bottles.by_id(id)
    }

    /// The bottle a connection or query on a listener of `scope` belongs to, given the id
    /// the kernel programs recorded (`None` for a namespaced listener: it has one bottle).
    pub fn bottle_for(&self, scope: ListenerScope, recorded: Option<u32>) -> Option<Arc<BottleState>> {
        self.bottles.bottle_for(scope, recorded)
    }

    /// Every bottle served, by name.
    pub fn served(&self) -> Vec<Arc<Served>> {
        self.bottles.served()
    }

    pub fn bottles(&self) -> Vec<Arc<BottleState>> {
        self.bottles.bottles()
    }

    fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    fn arc(&self) -> Arc<Gateway> {
        self.me.upgrade().expect("the gateway outlives its own tasks")
    }

    /// Starts serving a bottle whose state is built: its namespace and in-namespace
    /// listeners first, then its programs, so a redirected socket always finds a
    /// listener. The caller holds `changes`.
    async fn serve_bottle(&self, state: Arc<BottleState>, source: BottleSource) -> anyhow::Result<()> {
        let bottle = state.config.clone();
        let mut listeners = Vec::new();
        if let Some(path) = netns::ensure(&bottle)? {
            let (tcp_addr, dns_addr) = netns::listen_addrs(&self.config, &bottle);
            let ns = netns::bind_in(&path, tcp_addr, dns_addr)
                .with_context(|| format!("bottle {}: opening listeners in {}", bottle.name, path.display()))?;
            let cookie = netns::socket_netns_cookie(ns.tcp.as_fd()).context("reading the namespace cookie")?;
            let tcp = TcpListener::from_std(ns.tcp)?;
            let udp = UdpSocket::from_std(ns.udp)?;
            let scope = ListenerScope::Bottle(bottle.id);
            listeners.push(tokio::spawn(accept_loop(tcp, cookie, scope, self.arc())));
            listeners.push(tokio::spawn(dns::serve(udp, scope, self.dns.clone())));
        }
        // If attaching fails, dropping `served` stops its listeners.
        let served = Arc::new(Served::new(state, source, listeners));
        let config = self.config.clone();
        let b = bottle.clone();
        tokio::task::spawn_blocking(move || bpf::attach_bottle(&config, &b))
            .await?
            .with_context(|| format!("attaching bottle {}", bottle.name))?;
        self.bottles.insert(served);
        Ok(())
    }

    /// A run-time attach (admin API): checked against the bottles served, built, served,
    /// then kept for the next start. On any error nothing stays attached or kept.
    pub async fn attach_runtime(
        &self,
        bottle: config::Bottle,
        spec: admin::AttachSpec,
    ) -> Result<Arc<BottleState>, ControlError> {
        let _change = self.changes.lock().await;
        let existing: Vec<config::Bottle> = self.bottles().iter().map(|b| b.config.clone()).collect();
        admin::check_attach(&self.config.state_dir, &existing, &bottle)?;
        let inline = spec.inline_routes.map(|i| i.routes);
        let state = Arc::new(
            BottleState::build(&self.config, &bottle, &self.proxy.dlp, inline)
                .map_err(|e| ControlError::Invalid { message: format!("{e:#}"), problems: Vec::new() })?,
        );
        self.serve_bottle(state.clone(), BottleSource::Runtime).await?;
        if let Err(e) = self.runtime.save(&bottle.name, &spec.record) {
            // Not kept means not attached again after a restart: undo, and say why.
            let _ = self.stop_serving(&bottle.name, true).await;
            return Err(ControlError::Internal(e.context("keeping the bottle for the next start")));
        }
        Ok(state)
    }

    /// A run-time detach (admin API): refused while processes live unless `force`.
    /// A bottle from gateway.yaml is detached until the next start.
    pub async fn detach_runtime(&self, name: &str, force: bool) -> Result<(), ControlError> {
        let _change = self.changes.lock().await;
        let served = self.served().into_iter().find(|s| s.state.config.name == name);
        let Some(served) = served else { return Err(ControlError::NotFound(name.to_string())) };
        if !force {
            let dir = crate::cgroup::bottle_path(&self.config, &served.state.config)?;
            let live = crate::cgroup::processes(&dir);
            if !live.is_empty() {
                return Err(ControlError::Conflict(format!(
                    "bottle {name} still has {} process(es) in {}: detaching would give them direct egress; stop \
                     them first or pass force=true",
                    live.len(),
                    dir.display()
                )));
            }
        }
        self.stop_serving(name, force).await?;
        if served.source == BottleSource::Runtime {
            self.runtime.remove(name)?;
        }
        Ok(())
    }

    /// Stops serving a bottle and removes its programs; a namespace the gateway created
    /// goes too. The caller holds `changes`.
    async fn stop_serving(&self, name: &str, force: bool) -> anyhow::Result<()> {
        let Some(served) = self.bottles.by_name(name) else {
            anyhow::bail!("no bottle named {name:?} is attached");
        };
        let bottle = served.state.config.clone();
        let config = self.config.clone();
        let b = bottle.clone();
        tokio::task::spawn_blocking(move || bpf::detach(&config, &b, force, true)).await??;
        self.bottles.remove(bottle.id);
        if let Err(e) = netns::remove_created(&bottle) {
            tracing::warn!(bottle = %name, error = %format!("{e:#}"), "removing the bottle's namespace failed");
        }
        tracing::info!(bottle = %name, "bottle detached");
        Ok(())
    }

    /// Reloads every bottle (SIGHUP, `POST /v1/reload`): each swaps its routes,
    /// credentials and known secrets together, or keeps them all.
    pub fn reload_all(&self) -> Vec<(String, Result<(), String>)> {
        self.reload_gateway_settings();
        self.bottles()
            .iter()
            .map(|b| {
                let result = b.reload().map_err(|e| format!("{e:#}"));
                match &result {
                    Ok(()) => tracing::info!(bottle = %b.config.name, "routes and credentials reloaded"),
                    Err(e) => tracing::error!(
                        bottle = %b.config.name,
                        error = %e,
                        "reload failed; keeping the previous routes and credentials"
                    ),
                }
                (b.config.name.clone(), result)
            })
            .collect()
    }

    /// The settings of gateway.yaml that take effect without a restart (today `dns:`),
    /// read again from the file the gateway started with; a file that does not load
    /// leaves them as they were.
    fn reload_gateway_settings(&self) {
        if let Some(path) = &self.config.source {
            self.dns.reload_from(path);
        }
    }
}

pub fn run(config: config::Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    telemetry::init();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let result = runtime.block_on(serve(config, config_path));
    // The drain is over: what is still open is cut, and no blocking task holds the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn serve(config: config::Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    // Descriptors: the per-bottle connection cap, not the table, refuses a flood.
    match proxy::limits::raise_nofile_limit() {
        Ok((before, after)) => tracing::info!(before, after, "RLIMIT_NOFILE raised to the hard limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE"),
    }
    // Policy first: a bad routes or credentials file stops the start before anything is
    // attached.
    let dlp = Arc::new(build_dlp(&config.dlp)?);
    tracing::info!(known_secrets = dlp.known_secrets().len(), "dlp engine ready");
    let mut states = Vec::new();
    for b in &config.bottles {
        let state = BottleState::build(&config, b, &dlp, None)?;
        tracing::info!(
            bottle = %b.name,
            credentials = state.live().credentials.len(),
            known_secrets = state.dlp().known_secrets().len(),
            "bottle ready"
        );
        states.push(Arc::new(state));
    }

    let resolver = Resolver::from_config(config.hosts.clone(), &config.resolvers, config.dns.concurrent_lookups)
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no upstream name servers: only `hosts:` overrides resolve");
            Resolver::new(config.hosts.clone())
        });
    let ca = CertificateAuthority::load_or_create(&config.state_dir).context("loading the interception CA")?;
    let upstream = proxy::upstream::Upstream::new(resolver.clone(), &config.upstream_ca_files)
        .context("building the upstream TLS client")?;
    let limits = Arc::new(proxy::limits::Shared::new(config.limits.clone()));
    let proxy = Arc::new(proxy::ProxyContext::new(resolver.clone(), dlp, Arc::new(ca), upstream, limits));

    // The admin socket first: if another gateway runs, stop before touching anything.
    let admin = admin::AdminListener::bind(&config.admin_socket).context("opening the admin socket")?;
    // Listeners before programs: once a bottle is attached, its connections must find them.
    // Passed by a service manager (socket activation), or bound here.
    let mut passed = crate::activation::Passed::take()?;
    let (listen, dns_listen) = (SocketAddr::V4(config.listen), SocketAddr::V4(config.dns_listen));
    let tcp = match passed.tcp(listen)? {
        Some(l) => {
            tracing::info!(listen = %listen, "using the TCP listener passed by the service manager");
            TcpListener::from_std(l)?
        }
        None => TcpListener::bind(listen).await.with_context(|| format!("binding the TCP listener {listen}"))?,
    };
    let udp = match passed.udp(dns_listen)? {
        Some(s) => {
            tracing::info!(dns_listen = %dns_listen, "using the DNS socket passed by the service manager");
            UdpSocket::from_std(s)?
        }
        None => UdpSocket::bind(dns_listen).await.with_context(|| format!("binding the DNS listener {dns_listen}"))?,
    };
    passed.check_all_used(listen, dns_listen)?;
    let shared_cookie = netns::socket_netns_cookie(tcp.as_fd()).context("reading the listener's namespace cookie")?;

    bpf::ensure_bpffs(&config)?;
    // The shared maps exist before any bottle does, so a gateway may start with none.
    bpf::ensure_maps(&config)?;
    let layout = bpf::PinLayout::new(&config);
    let maps = Arc::new(bpf::KernelMaps::open(&layout)?);
    let bottles = Arc::new(Registry::new());
    let dns = Arc::new(dns::DnsContext {
        resolver: resolver.clone(),
        dlp: proxy.dlp.clone(),
        bottles: bottles.clone(),
        budgets: dns::NameBudgets::new(config.dns.new_names_per_minute),
        clients: maps.clone(),
    });

    let gw = Arc::new_cyclic(|me| Gateway {
        resolver,
        runtime: crate::control::RuntimeStore::new(&config.state_dir),
        config: config.clone(),
        maps,
        proxy,
        dns,
        bottles,
        changes: tokio::sync::Mutex::new(()),
        me: me.clone(),
        next_conn_id: AtomicU64::new(1),
    });

    {
        let _change = gw.changes.lock().await;
        for state in states {
            gw.serve_bottle(state, BottleSource::Config).await?;
        }
    }
    // Bottles attached at run time before the restart are attached again. One that no
    // longer validates stays pinned (refused) and is reported.
    for kept in gw.runtime.load_all() {
        let result = match kept {
            Ok((bottle, spec)) => {
                let name = bottle.name.clone();
                gw.attach_runtime(bottle, spec).await.map(|_| ()).map_err(|e| format!("bottle {name}: {e}"))
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::error!(
                error = %e,
                "a bottle attached at run time could not be attached again; its connections are refused"
            );
        }
    }
    // Accept only now that every bottle is served: a connection or query that waited in
    // the listener's queue (a passed listener's, while the previous gateway drained)
    // must find its bottle.
    tokio::spawn(dns::serve(udp, ListenerScope::Shared, gw.dns.clone()));
    tokio::spawn(accept_loop(tcp, shared_cookie, ListenerScope::Shared, gw.clone()));
    let served: Vec<String> = gw.bottles().iter().map(|b| b.config.name.clone()).collect();
    for stale in layout.pinned_bottles() {
        if !served.contains(&stale) {
            tracing::warn!(
                bottle = %stale,
                "pinned bottle is not served: its connections are refused; `egress-gateway detach` removes it"
            );
        }
    }

    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn(admin.serve(gw.clone(), async move {
        let _ = admin_stopped.await;
    }));

    tracing::info!(
        listen = %gw.config.listen,
        dns_listen = %gw.config.dns_listen,
        admin_socket = %gw.config.admin_socket.display(),
        bottles = served.len(),
        config = %config_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "<embedded default>".into()),
        "ready"
    );

    // systemd (Type=notify): ready once every listener is bound and every bottle attached.
    sd_notify::tell(&format!("READY=1\nSTATUS=serving {} bottle(s)\nMAINPID={}", served.len(), std::process::id()));
    if let Some(every) = sd_notify::watchdog_interval() {
        // Pinged from the runtime itself: a wedged runtime stops the pings.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                sd_notify::tell("WATCHDOG=1");
            }
        });
    }

    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                sd_notify::reloading();
                gw.reload_all();
                sd_notify::tell(&format!("READY=1\nSTATUS=serving {} bottle(s)", gw.bottles().len()));
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Drain: the listeners and the admin socket close now (a next gateway may start),
    // held requests get 403, the connections in flight get `drain_seconds`.
    sd_notify::tell("STOPPING=1");
    crate::lifecycle::stop();
    let _ = stop_admin.send(());
    let _ = admin_task.await;
    let open = || gw.bottles().iter().map(|b| b.usage.open_connections()).sum::<usize>();
    tracing::info!(
        open_connections = open(),
        drain_seconds = gw.config.drain.as_secs(),
        "stopping: no new connections; those in flight may finish"
    );
    let left = crate::lifecycle::drain(gw.config.drain, open).await;
    if left > 0 {
        tracing::warn!(open_connections = left, "drain time over: the connections still open are cut");
    }
    tracing::info!("stopped; bottles stay attached and are refused until the gateway is back");
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

/// Accepts redirected connections on one listener. `netns` is the cookie of the
/// listener's namespace: with the client's address it finds what the programs recorded.
async fn accept_loop(listener: TcpListener, netns: u64, scope: ListenerScope, gw: Arc<Gateway>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Stopping: the listener closes (or, passed by systemd, stays open for the next
            // gateway); nothing more is accepted here.
            _ = crate::lifecycle::stopped() => return,
        };
        let (stream, client) = match accepted {
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
        // The maps of the bottles this listener serves: its own bottle's, or those of the
        // bottles in the gateway's namespace.
        let bottles = gw.bottles();
        let names = bottles
            .iter()
            .filter(|b| match scope {
                ListenerScope::Bottle(id) => b.config.id == id,
                ListenerScope::Shared => b.config.netns.is_none(),
            })
            .map(|b| b.config.name.as_str());
        let redirected = match gw.maps.take_orig_dst(netns, client, names) {
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
        let Some(permit) = bottle.usage.connect() else {
            // Dropping the stream closes it: the bottle holds its cap of connections.
            if bottle.usage.should_log_refusal() {
                tracing::warn!(
                    conn = id,
                    bottle = %bottle.config.name,
                    open = bottle.usage.open_connections(),
                    cap = bottle.usage.max_connections(),
                    refused_total = bottle.usage.refused_connections.load(Ordering::Relaxed),
                    "connection refused: the bottle is at its connection cap"
                );
            }
            continue;
        };
        let stream = proxy::limits::Tracked::with_permit(stream, permit);
        let conn = proxy::Connection { id, client, orig_dst: redirected.orig_dst, bottle };
        tokio::spawn(proxy::handle(stream, conn, gw.proxy.clone()));
    }
}

fn is_own_listener(config: &config::Config, bottle: &config::Bottle, addr: SocketAddr) -> bool {
    let addr = SocketAddr::new(crate::resolve::canonical(addr.ip()), addr.port());
    let (listen, dns_listen) = netns::listen_addrs(config, bottle);
    addr == SocketAddr::V4(listen) || addr == SocketAddr::V4(dns_listen)
}
