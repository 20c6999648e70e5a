//! The bottles a gateway serves, as plain state: each bottle's live policy
//! (`BottleState`, swapped whole on reload) and the registry that maps the id the kernel
//! programs record to it (`Registry`, replaced whole on every attach or detach, so a
//! connection handler never takes a lock). No kernel, no listener: tests build these
//! directly.
use std::{collections::HashMap, sync::Arc};

use anyhow::Context;
use arc_swap::ArcSwap;

use crate::{admin::BottleSource, config, credentials::Credentials, dlp, policy, proxy};

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
    /// Routes given inline when the bottle was attached at run time (it has no routes
    /// file): a reload keeps them.
    inline_routes: Option<Arc<policy::Routes>>,
    /// Holds supervised requests; `None` when the bottle has no `supervise:` block.
    pub supervisor: Option<Arc<crate::supervise::Supervisor>>,
    /// Its open connections and buffered body bytes, against its limits.
    pub usage: Arc<proxy::limits::BottleUsage>,
}

impl BottleState {
    /// Everything a bottle needs, checked: routes, credentials file, known secrets,
    /// supervise store. Nothing is attached or served yet.
    pub fn build(
        config: &config::Config,
        bottle: &config::Bottle,
        base_dlp: &Arc<dlp::Engine>,
        inline_routes: Option<policy::Routes>,
    ) -> anyhow::Result<Self> {
        let inline_routes = inline_routes.map(Arc::new);
        let live = Self::load_live(bottle, inline_routes.as_ref(), base_dlp)
            .with_context(|| format!("bottle {}", bottle.name))?;
        Self::with_live(config, bottle, base_dlp, inline_routes, live)
    }

    /// `build` at the gateway's start: a routes file that does not load leaves that
    /// bottle denying everything (logged as an error; a reload of a fixed file brings
    /// its routes) instead of stopping every bottle, as the seed's sidecar did. Any other
    /// problem (credentials, supervise store) still stops the start.
    pub fn build_at_start(
        config: &config::Config,
        bottle: &config::Bottle,
        base_dlp: &Arc<dlp::Engine>,
    ) -> anyhow::Result<Self> {
        let routes = match &bottle.routes {
            Some(path) => match policy::Routes::load(path) {
                Ok(r) => Arc::new(r),
                Err(e) => {
                    tracing::error!(bottle = %bottle.name, error = %e, "routes did not load: this bottle denies everything until a reload loads them");
                    Arc::new(policy::Routes::deny_all())
                }
            },
            None => Arc::new(policy::Routes::deny_all()),
        };
        let live =
            Self::live_with_routes(bottle, routes, base_dlp).with_context(|| format!("bottle {}", bottle.name))?;
        Self::with_live(config, bottle, base_dlp, None, live)
    }

    fn with_live(
        config: &config::Config,
        bottle: &config::Bottle,
        base_dlp: &Arc<dlp::Engine>,
        inline_routes: Option<Arc<policy::Routes>>,
        live: BottleLive,
    ) -> anyhow::Result<Self> {
        let supervisor = match &bottle.supervise {
            Some(s) => {
                let sup = crate::supervise::Supervisor::from_config(&bottle.name, s, &config.state_dir)
                    .with_context(|| format!("bottle {}: supervise", bottle.name))?;
                Some(Arc::new(sup))
            }
            None => None,
        };
        Ok(BottleState::new(bottle.clone(), live, base_dlp.clone(), inline_routes, supervisor, &config.limits))
    }

    /// A bottle from parts already built (tests, and callers with their own policy):
    /// `live` is what its requests are decided with, `base_dlp` what a reload derives
    /// the next engine from. A reload re-reads `bottle.routes` unless `inline_routes`.
    pub fn new(
        bottle: config::Bottle,
        live: BottleLive,
        base_dlp: Arc<dlp::Engine>,
        inline_routes: Option<Arc<policy::Routes>>,
        supervisor: Option<Arc<crate::supervise::Supervisor>>,
        limits: &config::Limits,
    ) -> Self {
        BottleState {
            config: bottle,
            live: ArcSwap::from_pointee(live),
            base_dlp,
            inline_routes,
            supervisor,
            usage: Arc::new(proxy::limits::BottleUsage::new(limits)),
        }
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

    /// Whether the routes came inline with a run-time attach.
    pub fn has_inline_routes(&self) -> bool {
        self.inline_routes.is_some()
    }

    /// Routes (inline, a file, or none: deny everything), credentials, and the engine
    /// that knows them.
    pub fn load_live(
        bottle: &config::Bottle,
        inline_routes: Option<&Arc<policy::Routes>>,
        base_dlp: &dlp::Engine,
    ) -> anyhow::Result<BottleLive> {
        let routes = match (inline_routes, &bottle.routes) {
            (Some(inline), _) => inline.clone(),
            (None, Some(path)) => Arc::new(policy::Routes::load(path)?),
            (None, None) => Arc::new(policy::Routes::deny_all()),
        };
        Self::live_with_routes(bottle, routes, base_dlp)
    }

    /// The credentials and the engine that knows them, for these routes.
    fn live_with_routes(
        bottle: &config::Bottle,
        routes: Arc<policy::Routes>,
        base_dlp: &dlp::Engine,
    ) -> anyhow::Result<BottleLive> {
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
        Ok(BottleLive { routes, credentials: Arc::new(credentials), dlp: Arc::new(dlp) })
    }

    /// Re-reads the routes and credentials files and rebuilds the known secrets; nothing
    /// changes until `apply`. The error names files and lines, never a value.
    pub fn prepare_reload(&self) -> anyhow::Result<BottleLive> {
        Self::load_live(&self.config, self.inline_routes.as_ref(), &self.base_dlp)
    }

    /// Swaps in what `prepare_reload` built: routes, credentials and known secrets together.
    pub fn apply(&self, live: BottleLive) {
        self.live.store(Arc::new(live));
    }

    /// `prepare_reload` then `apply`: on any error nothing changes.
    pub fn reload(&self) -> anyhow::Result<()> {
        let live = self.prepare_reload()?;
        self.apply(live);
        Ok(())
    }
}

/// A bottle being served: its policy, where it came from, and the listener tasks opened
/// in its network namespace (none for a bottle in the gateway's namespace: it uses the
/// shared ones).
pub struct Served {
    pub state: Arc<BottleState>,
    pub source: BottleSource,
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

impl Served {
    /// `listeners` are aborted when the bottle stops being served.
    pub fn new(state: Arc<BottleState>, source: BottleSource, listeners: Vec<tokio::task::JoinHandle<()>>) -> Self {
        Served { state, source, listeners }
    }
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

/// The bottles served now, by kernel id.
#[derive(Default)]
pub struct Registry {
    bottles: ArcSwap<HashMap<u32, Arc<Served>>>,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    pub fn by_id(&self, id: u32) -> Option<Arc<BottleState>> {
        self.bottles.load().get(&id).map(|s| s.state.clone())
    }

    /// The bottle a connection or query on a listener of `scope` belongs to, given the id
    /// the kernel programs recorded (`None` for a namespaced listener: it has one bottle).
    pub fn bottle_for(&self, scope: ListenerScope, recorded: Option<u32>) -> Option<Arc<BottleState>> {
        match (scope, recorded) {
            (ListenerScope::Bottle(id), None) => self.by_id(id),
            (ListenerScope::Bottle(id), Some(r)) if r == id => self.by_id(id),
            (ListenerScope::Shared, Some(r)) => self.by_id(r).filter(|b| b.config.netns.is_none()),
            _ => None,
        }
    }

    /// Every bottle served, by name.
    pub fn served(&self) -> Vec<Arc<Served>> {
        let mut all: Vec<_> = self.bottles.load().values().cloned().collect();
        all.sort_by(|a, b| a.state.config.name.cmp(&b.state.config.name));
        all
    }

    pub fn bottles(&self) -> Vec<Arc<BottleState>> {
        self.served().into_iter().map(|s| s.state.clone()).collect()
    }

    /// Serves `served` under its bottle's id (replacing one with the same id).
    pub fn insert(&self, served: Arc<Served>) {
        let mut next = HashMap::clone(&self.bottles.load());
        next.insert(served.state.config.id, served);
        self.bottles.store(Arc::new(next));
    }

    /// Stops serving the bottle with this id; its listeners stop when the last
    /// reference goes.
    pub fn remove(&self, id: u32) -> Option<Arc<Served>> {
        let mut next = HashMap::clone(&self.bottles.load());
        let gone = next.remove(&id);
        self.bottles.store(Arc::new(next));
        gone
    }

    /// The served bottle named `name`.
    pub fn by_name(&self, name: &str) -> Option<Arc<Served>> {
        self.bottles.load().values().find(|s| s.state.config.name == name).cloned()
    }
}
