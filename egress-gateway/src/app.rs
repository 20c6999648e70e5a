//! Wires the gateway together: bind the listeners, attach every bottle, serve until a
//! signal. Stopping the gateway leaves the programs pinned: bottles stay redirected to
//! listeners that no longer exist, so their connections are refused (fail closed).
use std::{os::fd::AsFd, path::PathBuf, sync::Arc};

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
    proxy::accept::{Acceptor, OwnListeners, accept_loop},
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
    /// What every accept loop shares (`proxy::accept`).
    acceptor: Arc<Acceptor>,
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
            listeners.push(tokio::spawn(accept_loop(tcp, cookie, scope, self.acceptor.clone())));
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

    /// Reloads every bottle (SIGHUP, `POST /v1/reload`), all or nothing: every bottle's
    /// routes, credentials and known secrets are read and checked first; only when all of
    /// them load are they swapped in, so the gateway never runs half old, half new policy.
    /// Each result is the bottle's own problem, or `Ok` (for every bottle, when applied).
    pub fn reload_all(&self) -> Vec<(String, Result<(), String>)> {
        self.reload_gateway_settings();
        let bottles = self.bottles();
        let prepared: Vec<(Arc<BottleState>, Result<BottleLive, String>)> =
            bottles.iter().map(|b| (b.clone(), b.prepare_reload().map_err(|e| format!("{e:#}")))).collect();
        let failed = prepared.iter().filter(|(_, r)| r.is_err()).count();
        let mut results = Vec::new();
        if failed == 0 {
            for (b, live) in prepared {
                b.apply(live.expect("checked above"));
                tracing::info!(bottle = %b.config.name, "routes and credentials reloaded");
                results.push((b.config.name.clone(), Ok(())));
            }
        } else {
            for (b, live) in prepared {
                let result = match live {
                    Ok(_) => {
                        Err("not applied: another bottle's files did not load (a reload is all or nothing)".into())
                    }
                    Err(e) => {
                        tracing::error!(
                            bottle = %b.config.name,
                            error = %e,
                            "reload failed; keeping the previous routes and credentials"
                        );
                        Err(e)
                    }
                };
                results.push((b.config.name.clone(), result));
            }
            tracing::error!(failed, bottles = bottles.len(), "reload abandoned: no bottle's policy changed");
        }
        crate::metrics::global().reload(failed == 0);
        results
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
    telemetry::log_build(crate::bpf::EBPF_OBJECT);
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
    // Policy first: a bad credentials file stops the start before anything is attached;
    // a bad routes file leaves its bottle denying everything (logged).
    let dlp = Arc::new(build_dlp(&config.dlp)?);
    tracing::info!(known_secrets = dlp.known_secrets().len(), "dlp engine ready");
    let mut states = Vec::new();
    for b in &config.bottles {
        let state = BottleState::build_at_start(&config, b, &dlp)?;
        let routes = state.routes();
        let hosts: Vec<&str> = routes.routes().iter().map(|r| r.host.as_str()).collect();
        // The seed's boot line: which routes file, which routes, which log level.
        tracing::info!(
            bottle = %b.name,
            routes_file = %b.routes.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(none: deny all)".into()),
            routes = %hosts.join(", "),
            log = routes.log_level().as_str(),
            credentials = state.live().credentials.len(),
            known_secrets = state.dlp().known_secrets().len(),
            "bottle ready: {} route(s) [log={}]",
            hosts.len(),
            routes.log_level().as_str()
        );
        states.push(Arc::new(state));
    }

    let resolver = Resolver::from_config(config.hosts.clone(), &config.resolvers, config.dns.concurrent_lookups)
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no upstream name servers: only `hosts:` overrides resolve");
            Resolver::new(config.hosts.clone())
        });
    let ca = CertificateAuthority::load_or_create(&config.state_dir).context("loading the interception CA")?;
    let trust = crate::ca::publish(&config.state_dir).context("publishing the CA certificate")?;
    tracing::info!(ca = %trust.ca.display(), bundle = %trust.bundle.display(), "CA certificate and trust bundle published");
    let upstream =
        proxy::upstream::Upstream::new(&config.upstream_ca_files).context("building the upstream TLS client")?;
    let limits = Arc::new(proxy::limits::Shared::new(config.limits.clone()));
    let proxy = Arc::new(proxy::ProxyContext::new(resolver.clone(), dlp, Arc::new(ca), upstream, limits));

    // The admin socket first: if another gateway runs, stop before touching anything.
    let admin = admin::AdminListener::bind(&config.admin_socket).context("opening the admin socket")?;
    let admin_tcp = match config.admin_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("binding admin_listen {addr}"))?),
        None => None,
    };
    // Listeners before programs: once a bottle is attached, its connections must find them.
    // Passed by a service manager (socket activation), or bound here.
    let mut passed = crate::activation::Passed::take()?;
    let (listen, dns_listen) = (std::net::SocketAddr::V4(config.listen), std::net::SocketAddr::V4(config.dns_listen));
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
    // A listener configured on port 0 has the port the kernel picked from now on: the
    // programs redirect to it, namespaced listeners use it, the ready line reports it.
    let bound = |addr: std::io::Result<std::net::SocketAddr>| match addr {
        Ok(std::net::SocketAddr::V4(v4)) => Ok(v4),
        Ok(other) => Err(anyhow::anyhow!("listener bound to {other}, not IPv4")),
        Err(e) => Err(anyhow::Error::new(e).context("reading a listener's address")),
    };
    let mut config = config;
    config.listen = bound(tcp.local_addr())?;
    config.dns_listen = bound(udp.local_addr())?;
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

    let own = OwnListeners::new(config.listen, config.dns_listen);
    let orig_dst: Arc<dyn proxy::accept::OrigDst> = maps.clone();
    let acceptor = Arc::new(Acceptor::new(bottles.clone(), orig_dst, proxy.clone(), own));
    let gw = Arc::new(Gateway {
        resolver,
        runtime: crate::control::RuntimeStore::new(&config.state_dir),
        config: config.clone(),
        maps,
        proxy,
        dns,
        bottles,
        changes: tokio::sync::Mutex::new(()),
        acceptor,
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
    tokio::spawn(accept_loop(tcp, shared_cookie, ListenerScope::Shared, gw.acceptor.clone()));
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
    if let Some(addr) = admin_tcp {
        tokio::spawn(admin::server::serve_tcp(addr, gw.clone(), crate::lifecycle::stopped()));
    }

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
        Some(path) => dlp::load_rules(path)?,
        None => Vec::new(),
    };
    tracing::info!(user_rules = rules.len(), "dlp rules loaded");
    dlp::Engine::new(known, rules).context("building the DLP engine")
}
