//! Supervise: a request whose outbound scan found a token waits while an operator
//! decides. Approved values join the bottle's safe set (scope `gateway`, the seeds'
//! semantics), only release the held request (`once`), or are also persisted as keyed
//! hashes (`persist`, opt-in). The wait is async; other flows keep flowing. Proposals
//! and responses go through a `Store`: SQLite (the default) or the seeds' queue
//! directory.
pub mod console;
pub mod notify;
pub mod operator;
pub mod protocol;
pub mod queue;
pub mod render;
pub mod safe;
pub mod sqlite;
pub mod store;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::Deserialize;

use crate::dlp::Secret;
pub use protocol::{Closed, Payload, Proposal, Response, Scope, Status};
pub use queue::QueueDir;
pub use safe::{RequestSafe, SafeValues};
pub use sqlite::SqliteStore;
pub use store::{Store, StoreError};

/// `EGRESS_TOKEN_ALLOW_TIMEOUT_SECONDS` default, as in the seeds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
pub const TIMEOUT_ENV: &str = "EGRESS_TOKEN_ALLOW_TIMEOUT_SECONDS";
/// The SQLite store's file in the state directory, when the block names no store.
pub const DEFAULT_DB: &str = "supervise.db";
/// How often a held request looks for the operator's response.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// bot-bottle's egress sidecar environment: its queue directory and the bottle's slug.
pub const QUEUE_DIR_ENV: &str = "SUPERVISE_QUEUE_DIR";
pub const SLUG_ENV: &str = "SUPERVISE_BOTTLE_SLUG";

/// The seeds' supervise environment, read once: a bottle whose block names no store
/// uses `SUPERVISE_QUEUE_DIR`, and its proposals carry `SUPERVISE_BOTTLE_SLUG`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SuperviseEnv {
    pub queue_dir: Option<PathBuf>,
    pub slug: Option<String>,
}

impl SuperviseEnv {
    pub fn from_process() -> SuperviseEnv {
        let var = |name| std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        SuperviseEnv { queue_dir: var(QUEUE_DIR_ENV).map(PathBuf::from), slug: var(SLUG_ENV) }
    }
}

/// A bottle's `supervise:` block in gateway.yaml. Supervise is on without one (SQLite
/// in the state directory); `enabled: false` turns it off.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SuperviseConfig {
    /// `false`: no supervise for this bottle, its `supervise` routes act as `block`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The seeds' queue directory.
    pub queue_dir: Option<PathBuf>,
    /// A SQLite database (the default is `<state_dir>/supervise.db`).
    pub db: Option<PathBuf>,
    pub timeout_seconds: Option<u64>,
    /// Allows approvals with scope `persist`.
    #[serde(default)]
    pub allow_persist: bool,
    /// Run (no shell) for each new proposal, its JSON on standard input.
    pub notify_command: Option<Vec<String>>,
    /// Kill the notification after this long (default 10).
    pub notify_timeout_seconds: Option<u64>,
    /// At most this many requests of the bottle held at once (default 32); more get 429.
    pub max_pending: Option<usize>,
    /// The `bottle_slug` proposals carry (`SUPERVISE_BOTTLE_SLUG`); the bottle's name
    /// when `None`.
    #[serde(skip)]
    pub slug: Option<String>,
    /// `queue_dir` came from `SUPERVISE_QUEUE_DIR`.
    #[serde(skip)]
    pub queue_from_env: bool,
}

/// Which store a bottle's block names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Queue(PathBuf),
    Sqlite(PathBuf),
}

impl SuperviseConfig {
    /// Problems with the block, each one sentence.
    pub fn validate(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.enabled == Some(false) {
            let off = SuperviseConfig { enabled: Some(false), ..Default::default() };
            let serde_json::Value::Object(set) = serde_json::to_value(self).unwrap_or_default() else { return out };
            let serde_json::Value::Object(bare) = serde_json::to_value(off).unwrap_or_default() else { return out };
            let extra: Vec<&String> = set.iter().filter(|(k, v)| bare.get(*k) != Some(*v)).map(|(k, _)| k).collect();
            if !extra.is_empty() {
                out.push(format!(
                    "enabled: false turns supervise off, so {} would mean nothing: remove them, or remove enabled: \
                     false",
                    extra.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                ));
            }
            return out;
        }
        if self.queue_dir.is_some() && self.db.is_some() {
            out.push(
                "names both queue_dir and db: a bottle has one store, name either the queue directory or the SQLite \
                 database"
                    .to_string(),
            );
        }
        if self.timeout_seconds == Some(0) {
            out.push("timeout_seconds must be at least 1".to_string());
        }
        if self.max_pending == Some(0) {
            out.push("max_pending must be at least 1".to_string());
        }
        if self.notify_timeout_seconds == Some(0) {
            out.push("notify_timeout_seconds must be at least 1".to_string());
        }
        if self.notify_command.as_ref().is_some_and(|c| c.first().is_none_or(|p| p.is_empty())) {
            out.push("notify_command must be a non-empty list: the program, then its arguments".to_string());
        }
        out
    }

    /// The store: `queue_dir`, else `db`, else `<state_dir>/supervise.db`.
    pub fn store_spec(&self, state_dir: &Path) -> StoreSpec {
        match (&self.queue_dir, &self.db) {
            (Some(q), _) => StoreSpec::Queue(q.clone()),
            (None, Some(d)) => StoreSpec::Sqlite(d.clone()),
            (None, None) => StoreSpec::Sqlite(state_dir.join(DEFAULT_DB)),
        }
    }

    /// The store for the gateway: created if missing, refused if a bottle could write it.
    pub fn prepare_store(&self, state_dir: &Path, bottle: &str) -> Result<Arc<dyn Store>, StoreError> {
        Ok(match self.store_spec(state_dir) {
            StoreSpec::Queue(dir) => Arc::new(QueueDir::prepare(dir)?),
            StoreSpec::Sqlite(path) => Arc::new(SqliteStore::prepare(&path, bottle)?),
        })
    }

    /// The store for an operator's command: never created; `None` if it does not exist yet.
    pub fn open_store(&self, state_dir: &Path, bottle: &str) -> Result<Option<Arc<dyn Store>>, StoreError> {
        Ok(match self.store_spec(state_dir) {
            StoreSpec::Queue(dir) => QueueDir::open_existing(dir)?.map(|q| Arc::new(q) as Arc<dyn Store>),
            StoreSpec::Sqlite(path) => {
                SqliteStore::open_existing(&path, bottle)?.map(|s| Arc::new(s) as Arc<dyn Store>)
            }
        })
    }

    /// The configured timeout, else the environment's, else the default (an invalid
    /// environment value falls back to the default with a warning).
    pub fn timeout(&self) -> Duration {
        if let Some(s) = self.timeout_seconds {
            return Duration::from_secs(s);
        }
        match std::env::var(TIMEOUT_ENV) {
            Ok(v) => parse_timeout(&v).unwrap_or_else(|| {
                tracing::warn!(variable = TIMEOUT_ENV, value = %v, "invalid timeout, using the default of 300 s");
                DEFAULT_TIMEOUT
            }),
            Err(_) => DEFAULT_TIMEOUT,
        }
    }

    /// The block with the seeds' environment applied: a block that names no store takes
    /// `SUPERVISE_QUEUE_DIR` (and its proposals `SUPERVISE_BOTTLE_SLUG`).
    pub fn with_env(mut self, env: &SuperviseEnv) -> SuperviseConfig {
        if self.queue_dir.is_none()
            && self.db.is_none()
            && let Some(dir) = &env.queue_dir
        {
            self.queue_dir = Some(dir.clone());
            self.queue_from_env = true;
            self.slug = env.slug.clone();
        }
        self
    }

    /// How many requests of the bottle may be held at once.
    pub fn max_pending(&self) -> usize {
        self.max_pending.unwrap_or(DEFAULT_MAX_PENDING).max(1)
    }

    fn notifier(&self) -> Option<notify::Notifier> {
        self.notify_command.clone().map(|argv| notify::Notifier {
            argv,
            timeout: self.notify_timeout_seconds.map(Duration::from_secs).unwrap_or(notify::DEFAULT_TIMEOUT),
        })
    }
}

/// `EGRESS_TOKEN_ALLOW_TIMEOUT_SECONDS` as the seed reads it: seconds, fractions
/// allowed (`0.5`); `None` unless a positive finite number.
pub fn parse_timeout(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    if secs.is_nan() || secs <= 0.0 {
        return None;
    }
    Duration::try_from_secs_f64(secs).ok()
}

/// `300`, `0.5`: a duration in seconds as a person writes it.
pub fn format_secs(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    Approved {
        scope: Scope,
    },
    Rejected(String),
    /// Timeout, malformed response, store error, a request too long to show: refused
    /// like a rejection.
    Failed(String),
    /// The bottle already has `max_pending` requests held: refused (429) without a
    /// proposal.
    TooMany(String),
}

/// Counters of the bottle's holds; the store keeps them too (`supervise status`).
#[derive(Debug, Default)]
pub struct HoldCounters {
    /// Requests refused (429) because `max_pending` were already held.
    pub refused_over_cap: AtomicU64,
    /// Holds whose request went away before a decision.
    pub abandoned: AtomicU64,
    /// `refused_over_cap` as last written to the store.
    refused_flushed: AtomicU64,
    /// A flush of `refused_over_cap` is scheduled.
    flush_scheduled: AtomicBool,
}

/// The longest path (in characters, as sent) a proposal carries. A held request with a
/// longer path is refused without asking: the operator could not read it whole. (As
/// shown, with every unusual character escaped, it may be up to ten times longer; the
/// console's detail shows it all.)
pub const MAX_PATH_CHARS: usize = 2048;
/// The longest context a proposal carries (the detector's window is about 24 characters
/// each side; escapes make it longer).
pub const MAX_CONTEXT_CHARS: usize = 1024;
/// `max_pending` when the block does not say.
pub const DEFAULT_MAX_PENDING: usize = 32;

pub struct Supervisor {
    bottle: String,
    /// What proposals name the bottle by (`bottle_slug`): its name, or
    /// `SUPERVISE_BOTTLE_SLUG` with the seeds' environment.
    slug: String,
    store: Arc<dyn Store>,
    timeout: Duration,
    safe: SafeValues,
    notifier: Option<notify::Notifier>,
    max_pending: usize,
    /// The proposals this gateway's holds wait on. Each hold has its own proposal: a
    /// decision on it is a decision on the request it shows. An entry leaves the table
    /// when its hold ends, however it ends (cancelled included).
    in_flight: Arc<Mutex<HashSet<String>>>,
    counters: Arc<HoldCounters>,
}

/// Removes a hold's entry from the in-flight table when the hold ends; a hold that
/// ends by being dropped (its client went away) closes its proposal as abandoned.
struct HoldGuard {
    id: String,
    bottle: String,
    store: Arc<dyn Store>,
    in_flight: Arc<Mutex<HashSet<String>>>,
    counters: Arc<HoldCounters>,
    /// The hold reached its end and closed the proposal itself.
    ended: bool,
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        if self.ended {
            return;
        }
        self.counters.abandoned.fetch_add(1, Ordering::Relaxed);
        tracing::info!(bottle = %self.bottle, proposal = %self.id, abandoned_total = self.counters.abandoned.load(Ordering::Relaxed), "held request abandoned (its client went away): proposal closed as abandoned");
        let (store, id, bottle) = (self.store.clone(), self.id.clone(), self.bottle.clone());
        let close = move || {
            let closed = store.close(&id, Closed::Abandoned).and_then(|()| store.bump("abandoned", 1));
            if let Err(e) = closed {
                tracing::warn!(bottle = %bottle, proposal = %id, error = %e, "closing an abandoned proposal failed");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(close)),
            Err(_) => close(),
        }
    }
}

impl Supervisor {
    pub fn new(bottle: &str, store: Arc<dyn Store>, timeout: Duration, safe: SafeValues) -> Supervisor {
        Supervisor {
            bottle: bottle.to_string(),
            slug: bottle.to_string(),
            store,
            timeout,
            safe,
            notifier: None,
            max_pending: DEFAULT_MAX_PENDING,
            in_flight: Arc::default(),
            counters: Arc::default(),
        }
    }

    /// At most `max` requests of the bottle held at once; more get 429.
    pub fn with_max_pending(mut self, max: usize) -> Supervisor {
        self.max_pending = max.max(1);
        self
    }

    /// The bottle's supervisor as its `supervise:` block describes it: the store, the
    /// persisted safe list (loaded now) when `allow_persist`, the notification. Every
    /// proposal a previous run left open is closed as abandoned: no hold waits on it.
    pub fn from_config(bottle: &str, config: &SuperviseConfig, state_dir: &Path) -> Result<Supervisor, StoreError> {
        let store = config.prepare_store(state_dir, bottle)?;
        let stale = store.close_stale()?;
        if stale > 0 {
            tracing::warn!(
                bottle,
                proposals = stale,
                "proposals left open by a previous run closed as abandoned (their requests are gone)"
            );
            store.bump("abandoned", stale as u64)?;
        }
        let safe = if config.allow_persist {
            let key = safe::Key::load_or_create(state_dir)?;
            SafeValues::persisted(key, safe::persisted_path(state_dir, bottle))?
        } else {
            SafeValues::in_memory()
        };
        if !safe.is_empty() {
            tracing::info!(
                bottle,
                values = safe.len(),
                "persisted approvals loaded (each for its host; lines written before approvals were tied to a host no longer apply)"
            );
        }
        let mut sup = Supervisor::new(bottle, store, config.timeout(), safe).with_max_pending(config.max_pending());
        sup.notifier = config.notifier();
        if let Some(slug) = &config.slug {
            sup.slug = slug.clone();
        }
        Ok(sup)
    }

    pub fn safe_set(&self) -> &SafeValues {
        &self.safe
    }

    pub fn counters(&self) -> &HoldCounters {
        &self.counters
    }

    /// Requests of this bottle held now.
    pub fn held(&self) -> usize {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Holds until the operator decides on `value` (shown as `payload`, never raw).
    /// Every held request has its own proposal, so a decision (`once` above all) means
    /// the request it shows. A request held while another proposal approves the same
    /// value for its host (or any host) is released by that approval, its proposal
    /// closed as `covered`. Dropping the returned future (the client went away) closes
    /// the proposal as `abandoned`.
    pub async fn hold(&self, payload: Payload, value: &Secret) -> HoldOutcome {
        if let Some(why) = too_long(&payload) {
            tracing::warn!(bottle = %self.bottle, host = %render::inert(&payload.host), reason = %why, "held request refused without a proposal");
            return HoldOutcome::Failed(why);
        }
        self.safe.warn_if_legacy(&self.bottle, &payload.host, value);
        let proposal = Proposal::new(&self.slug, payload);
        let id = proposal.id.clone();
        {
            let mut held = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if held.len() >= self.max_pending {
                drop(held);
                return self.refuse_over_cap();
            }
            held.insert(id.clone());
        }
        let mut guard = HoldGuard {
            id: id.clone(),
            bottle: self.bottle.clone(),
            store: self.store.clone(),
            in_flight: self.in_flight.clone(),
            counters: self.counters.clone(),
            ended: false,
        };
        let host = proposal.payload.host.clone();
        let written = proposal.clone();
        if let Err(e) = self.with_store(move |s| s.write_proposal(&written)).await {
            // Nothing was written: nothing to close.
            guard.ended = true;
            return HoldOutcome::Failed(format!("supervise store error: {e}"));
        }
        tracing::warn!(bottle = %self.bottle, proposal = %id, host = %proposal.payload.host, reason = %proposal.payload.reason, "request held for an operator");
        if let Some(n) = &self.notifier {
            n.spawn(&proposal);
        }
        let (outcome, closed) = self.wait_for_decision(&id, &host, value).await;
        let outcome = match outcome {
            HoldOutcome::Approved { scope } if closed == Closed::Decided => {
                match self.safe.approve(value, scope, &host) {
                    Ok(()) => outcome,
                    Err(e) => HoldOutcome::Failed(format!("approved, but {e}")),
                }
            }
            other => other,
        };
        // The waiting gateway owns archiving.
        let archived = id.clone();
        if let Err(e) = self.with_store(move |s| s.close(&archived, closed)).await {
            tracing::warn!(bottle = %self.bottle, proposal = %id, error = %e, "archiving the proposal failed");
        }
        guard.ended = true;
        if let HoldOutcome::Approved { scope } = &outcome {
            tracing::info!(bottle = %self.bottle, proposal = %id, host = %render::inert(&host), scope = %scope, closed = %closed, "held request released by an approval");
        }
        tracing::info!(bottle = %self.bottle, proposal = %id, outcome = ?outcome, "hold ended");
        outcome
    }

    /// 429 without a proposal; counted, and logged and written to the store at most once
    /// a second (a flood of refusals does not become a flood of log lines and writes).
    fn refuse_over_cap(&self) -> HoldOutcome {
        self.counters.refused_over_cap.fetch_add(1, Ordering::Relaxed);
        if !self.counters.flush_scheduled.swap(true, Ordering::AcqRel)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (store, c, bottle, max) =
                (self.store.clone(), self.counters.clone(), self.bottle.clone(), self.max_pending);
            rt.spawn(async move {
                loop {
                    let now = c.refused_over_cap.load(Ordering::Acquire);
                    let delta = now - c.refused_flushed.swap(now, Ordering::AcqRel);
                    if delta == 0 {
                        c.flush_scheduled.store(false, Ordering::Release);
                        // A refusal between the load and the store: flush it too.
                        if c.refused_over_cap.load(Ordering::Acquire) > c.refused_flushed.load(Ordering::Acquire)
                            && !c.flush_scheduled.swap(true, Ordering::AcqRel)
                        {
                            continue;
                        }
                        return;
                    }
                    tracing::warn!(bottle = %bottle, max_pending = max, refused = delta, refused_total = now, "held-request cap reached: requests refused with 429 (supervise.max_pending)");
                    let s = store.clone();
                    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || s.bump("refused_over_cap", delta)).await {
                        tracing::warn!(bottle = %bottle, error = %e, "recording refused requests failed");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        HoldOutcome::TooMany(format!(
            "{} requests of bottle {} are already held for an operator (supervise.max_pending); decide or reject \
             those first",
            self.max_pending, self.bottle
        ))
    }

    /// Runs a (blocking) store operation off the async workers.
    async fn with_store<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&*store)).await.unwrap_or_else(|e| {
            Err(StoreError::Io { path: self.store.location().to_path_buf(), reason: format!("store task failed: {e}") })
        })
    }

    /// The decision, and how the hold ends in the store.
    async fn wait_for_decision(&self, id: &str, host: &str, value: &Secret) -> (HoldOutcome, Closed) {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let read = id.to_string();
            match self.with_store(move |s| s.read_response(&read)).await {
                Ok(Some(r)) => {
                    let outcome = match r.status {
                        Status::Approved | Status::Modified => HoldOutcome::Approved { scope: r.scope() },
                        Status::Rejected if r.notes.is_empty() => HoldOutcome::Rejected("no reason given".into()),
                        Status::Rejected => HoldOutcome::Rejected(r.notes),
                    };
                    return (outcome, Closed::Decided);
                }
                Ok(None) => {
                    // A stopping gateway answers what it holds (403) rather than cut it.
                    if crate::lifecycle::is_stopping() {
                        return (HoldOutcome::Failed("the gateway is stopping".into()), Closed::Stopped);
                    }
                    // Another proposal's approval of this value for this host (or any
                    // host) covers this request too: it says so.
                    if let Some(scope) = self.safe.approved_scope(host, value.expose()) {
                        return (HoldOutcome::Approved { scope }, Closed::Covered);
                    }
                    if tokio::time::Instant::now() >= deadline {
                        let why = format!("no operator decision within {} s", format_secs(self.timeout));
                        return (HoldOutcome::Failed(why), Closed::Timeout);
                    }
                    tokio::time::sleep(POLL_INTERVAL).await
                }
                // A response being written by a tool that does not write atomically reads
                // as malformed for a moment (as in the seed): read again until the
                // deadline, then refuse, naming it.
                Err(e @ StoreError::Malformed { .. }) => {
                    if tokio::time::Instant::now() >= deadline {
                        return (HoldOutcome::Failed(format!("supervise store error: {e}")), Closed::Failed);
                    }
                    tokio::time::sleep(POLL_INTERVAL).await
                }
                Err(e) => return (HoldOutcome::Failed(format!("supervise store error: {e}")), Closed::Failed),
            }
        }
    }
}

/// Why a held request cannot be proposed: a field too long for the operator to read
/// whole (the path as sent; the context, which the detector already made inert, as shown).
fn too_long(p: &Payload) -> Option<String> {
    let path = p.path.chars().count();
    if path > MAX_PATH_CHARS {
        return Some(format!(
            "the request's path is {path} characters long, over the {MAX_PATH_CHARS} a proposal shows whole: refused \
             without asking the operator"
        ));
    }
    let context = render::inert(&p.context).chars().count();
    if context > MAX_CONTEXT_CHARS {
        return Some(format!(
            "the finding's context is {context} characters long (as shown), over {MAX_CONTEXT_CHARS}: refused without \
             asking the operator"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        dlp::SafeSet,
        supervise::store::tests::{payload, temp_dir},
    };

    /// Both stores, each in a fresh private directory.
    fn stores(tag: &str) -> Vec<(PathBuf, Arc<dyn Store>)> {
        let q = temp_dir(&format!("{tag}-q"));
        let d = temp_dir(&format!("{tag}-db"));
        vec![
            (q.clone(), Arc::new(QueueDir::prepare(&q).unwrap()) as Arc<dyn Store>),
            (d.clone(), Arc::new(SqliteStore::prepare(&d.join("s.db"), "demo").unwrap()) as Arc<dyn Store>),
        ]
    }

    fn supervisor(store: Arc<dyn Store>, timeout: Duration) -> Arc<Supervisor> {
        Arc::new(Supervisor::new("demo", store, timeout, SafeValues::in_memory()))
    }

    async fn decide(s: &Supervisor, status: Status, scope: Option<Scope>) -> String {
        loop {
            if let Some(p) = s.store.pending().unwrap().into_iter().next() {
                s.store.write_response(&p.id, &Response::by_operator(status, "because", scope)).unwrap();
                return p.id;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_dir() { out.extend(files_under(&e.path())) } else { out.push(e.path()) }
        }
        out
    }

    #[tokio::test]
    async fn a_host_approval_releases_every_holder_of_the_value_on_that_host() {
        for (dir, store) in stores("approve") {
            let s = supervisor(store, Duration::from_secs(10));
            let value = Secret::new("ghp_heldvalue0123456789");
            let holders: Vec<_> = (0..5)
                .map(|_| {
                    let (s, v) = (s.clone(), value.clone());
                    tokio::spawn(async move { s.hold(payload("a.test"), &v).await })
                })
                .collect();
            // Each held request has its own proposal; approving one for the host covers
            // the others (the same value to the same host), which close as `covered`.
            while s.store.pending().unwrap().len() < 5 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let ids = s.store.pending_ids().unwrap();
            let decided = decide(&s, Status::Approved, None).await;
            for h in holders {
                assert_eq!(h.await.unwrap(), HoldOutcome::Approved { scope: Scope::Gateway });
            }
            assert!(s.safe_set().contains_for("a.test", value.expose()));
            assert!(s.store.pending().unwrap().is_empty());
            assert_eq!(s.store.history().unwrap().len(), 1, "one decision");
            for id in ids {
                let want = if id == decided { Closed::Decided } else { Closed::Covered };
                assert_eq!(s.store.closed(&id).unwrap(), Some(want));
            }
            assert_eq!(s.held(), 0, "the in-flight table is empty");
            for f in files_under(&dir) {
                let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
                assert!(!text.contains("heldvalue"), "the raw value is in {}", f.display());
            }
        }
    }

    #[tokio::test]
    async fn once_releases_the_held_request_but_not_the_next() {
        for (_, store) in stores("once") {
            let s = supervisor(store, Duration::from_secs(10));
            let value = Secret::new("value-approved-once-0");
            let h = tokio::spawn({
                let (s, v) = (s.clone(), value.clone());
                async move { s.hold(payload("a.test"), &v).await }
            });
            decide(&s, Status::Approved, Some(Scope::Once)).await;
            assert_eq!(h.await.unwrap(), HoldOutcome::Approved { scope: Scope::Once });
            assert!(!s.safe_set().contains_for("a.test", value.expose()), "once joined the bottle's safe set");
        }
    }

    /// Waits until `n` proposals are pending; their ids, oldest first.
    async fn wait_pending(s: &Supervisor, n: usize) -> Vec<String> {
        loop {
            let p = s.store.pending().unwrap();
            if p.len() >= n {
                return p.into_iter().map(|p| p.id).collect();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn same_value_host_and_path_are_held_separately_and_once_releases_one() {
        for (_, store) in stores("separate") {
            let s = supervisor(store, Duration::from_secs(10));
            let value = Secret::new("ghp_sharedvalue0123456789abcdef01");
            let mut first = payload("a.test");
            first.context = "q=1&key=******** body one".into();
            let mut second = payload("a.test");
            second.context = "q=2&key=******** body two".into();
            let a = tokio::spawn({
                let (s, v) = (s.clone(), value.clone());
                async move { s.hold(first, &v).await }
            });
            wait_pending(&s, 1).await;
            let b = tokio::spawn({
                let (s, v) = (s.clone(), value.clone());
                async move { s.hold(second, &v).await }
            });
            let ids = wait_pending(&s, 2).await;
            let shown: Vec<String> =
                ids.iter().map(|id| s.store.proposal(id).unwrap().unwrap().payload.context).collect();
            assert!(
                shown.iter().any(|c| c.contains("body one")) && shown.iter().any(|c| c.contains("body two")),
                "each shows its own: {shown:?}"
            );
            let first_id = ids.iter().find(|id| s.store.proposal(id).unwrap().unwrap().payload.context.contains("one"));
            let first_id = first_id.unwrap().clone();
            s.store
                .write_response(&first_id, &Response::by_operator(Status::Approved, "ok", Some(Scope::Once)))
                .unwrap();
            assert_eq!(a.await.unwrap(), HoldOutcome::Approved { scope: Scope::Once });
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert!(!b.is_finished(), "once released another request");
            assert_eq!(s.store.pending().unwrap().len(), 1);
            decide(&s, Status::Rejected, None).await;
            assert!(matches!(b.await.unwrap(), HoldOutcome::Rejected(_)));
            assert_eq!(s.held(), 0);
        }
    }

    #[tokio::test]
    async fn a_cancelled_hold_closes_its_proposal_as_abandoned_and_leaves_no_entry() {
        for (_, store) in stores("abandon") {
            let s = supervisor(store, Duration::from_secs(30));
            let holders: Vec<_> = (0..3)
                .map(|i| {
                    let s = s.clone();
                    let v = Secret::new(&format!("ghp_abandonedvalue{i}0123456789abcdef"));
                    tokio::spawn(async move { s.hold(payload("a.test"), &v).await })
                })
                .collect();
            let ids = wait_pending(&s, 3).await;
            assert_eq!(s.held(), 3);
            // The clients go away: hyper drops the request's future, as abort does.
            for h in holders {
                h.abort();
                assert!(h.await.unwrap_err().is_cancelled());
            }
            for id in &ids {
                while s.store.closed(id).unwrap() != Some(Closed::Abandoned) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let late = s.store.write_response(id, &Response::by_operator(Status::Approved, "x", None));
                let err = late.unwrap_err().to_string();
                assert!(err.contains("abandoned") && err.contains("release nothing"), "{err}");
            }
            assert_eq!(s.held(), 0, "a cancelled hold left an entry in the in-flight table");
            assert!(s.store.pending().unwrap().is_empty());
            assert_eq!(s.counters().abandoned.load(Ordering::Relaxed), 3);
            while s.store.counters().unwrap().get("abandoned") != Some(&3) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    #[tokio::test]
    async fn over_the_cap_a_request_is_refused_and_counted() {
        for (_, store) in stores("cap") {
            let s = Arc::new(
                Supervisor::new("demo", store, Duration::from_secs(30), SafeValues::in_memory()).with_max_pending(2),
            );
            let held: Vec<_> = (0..2)
                .map(|i| {
                    let s = s.clone();
                    let v = Secret::new(&format!("ghp_capvalue{i}0123456789abcdef0123"));
                    tokio::spawn(async move { s.hold(payload("a.test"), &v).await })
                })
                .collect();
            wait_pending(&s, 2).await;
            for _ in 0..3 {
                let out = s.hold(payload("a.test"), &Secret::new("ghp_overthecap0123456789abcdef01")).await;
                assert!(matches!(&out, HoldOutcome::TooMany(why) if why.contains("max_pending")), "{out:?}");
            }
            assert_eq!(s.store.pending().unwrap().len(), 2, "a refused request wrote a proposal");
            assert_eq!(s.counters().refused_over_cap.load(Ordering::Relaxed), 3);
            while s.store.counters().unwrap().get("refused_over_cap") != Some(&3) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for h in held {
                h.abort();
            }
        }
    }

    #[tokio::test]
    async fn a_path_too_long_to_show_is_refused_without_a_proposal() {
        for (_, store) in stores("long") {
            let s = supervisor(store, Duration::from_secs(5));
            let mut p = payload("a.test");
            p.path = format!("/{}", "a".repeat(MAX_PATH_CHARS));
            let out = s.hold(p, &Secret::new("ghp_longpathvalue0123456789abcdef")).await;
            assert!(matches!(&out, HoldOutcome::Failed(why) if why.contains("2049 characters")), "{out:?}");
            assert!(s.store.pending().unwrap().is_empty());
            assert_eq!(s.held(), 0);
        }
    }

    #[tokio::test]
    async fn proposals_left_open_by_a_previous_run_are_closed_at_start() {
        let state = temp_dir("stale");
        let config = SuperviseConfig::default();
        let store = config.prepare_store(&state, "demo").unwrap();
        let ghost = Proposal::new("demo", payload("a.test"));
        store.write_proposal(&ghost).unwrap();
        let s = Supervisor::from_config("demo", &config, &state).unwrap();
        assert!(s.store.pending().unwrap().is_empty());
        assert_eq!(s.store.closed(&ghost.id).unwrap(), Some(Closed::Abandoned));
        assert_eq!(s.store.counters().unwrap().get("abandoned"), Some(&1));
    }

    #[tokio::test]
    async fn rejection_timeout_malformed_and_disallowed_persist_fail_closed() {
        for (dir, store) in stores("fail") {
            let s = supervisor(store.clone(), Duration::from_secs(10));
            let h = tokio::spawn({
                let s = s.clone();
                async move { s.hold(payload("a.test"), &Secret::new("value-to-reject-000")).await }
            });
            decide(&s, Status::Rejected, None).await;
            assert_eq!(h.await.unwrap(), HoldOutcome::Rejected("because".into()));

            let h = tokio::spawn({
                let s = s.clone();
                async move { s.hold(payload("a.test"), &Secret::new("value-persisted-00")).await }
            });
            decide(&s, Status::Approved, Some(Scope::Persist)).await;
            let out = h.await.unwrap();
            assert!(matches!(&out, HoldOutcome::Failed(why) if why.contains("allow_persist")), "{out:?}");
            assert!(!s.safe_set().contains("value-persisted-00"));

            let quick = supervisor(store, Duration::from_millis(300));
            let out = quick.hold(payload("a.test"), &Secret::new("value-times-out-00")).await;
            assert!(matches!(&out, HoldOutcome::Failed(why) if why.contains("no operator decision")), "{out:?}");

            // The store breaks under the gateway.
            let db = dir.join("s.db");
            if db.exists() {
                rusqlite::Connection::open(&db)
                    .unwrap()
                    .execute_batch("PRAGMA foreign_keys = OFF; DROP TABLE proposals")
                    .unwrap();
            } else {
                std::fs::remove_dir_all(&dir).unwrap();
            }
            let out = s.hold(payload("a.test"), &Secret::new("value-no-store-000")).await;
            assert!(matches!(&out, HoldOutcome::Failed(why) if why.contains("store error")), "{out:?}");
        }
    }

    #[tokio::test]
    async fn a_value_approved_for_one_host_is_held_again_on_another() {
        for (_, store) in stores("host") {
            let s = supervisor(store, Duration::from_secs(10));
            let value = Secret::new("ghp_approvedforonehost0123456789ab");
            let h = tokio::spawn({
                let (s, v) = (s.clone(), value.clone());
                async move { s.hold(payload("a.test"), &v).await }
            });
            let first = decide(&s, Status::Approved, None).await;
            assert_eq!(h.await.unwrap(), HoldOutcome::Approved { scope: Scope::Gateway });
            let p = s.store.proposal(&first).unwrap().unwrap();
            assert!(p.justification.contains("for a.test only"), "the proposal says so: {}", p.justification);
            let mut a = RequestSafe::new(Some(&*s), "a.test");
            assert!(crate::dlp::SafeSet::contains(&a, value.expose()), "released for a.test from now on");
            a = RequestSafe::new(Some(&*s), "b.test");
            assert!(!crate::dlp::SafeSet::contains(&a, value.expose()), "approved for a.test, allowed to b.test");
            // Another host: held again, with a proposal of its own.
            let h = tokio::spawn({
                let (s, v) = (s.clone(), value.clone());
                async move { s.hold(payload("b.test"), &v).await }
            });
            let second = decide(&s, Status::Rejected, None).await;
            assert_ne!(first, second);
            assert!(matches!(h.await.unwrap(), HoldOutcome::Rejected(_)));
            // `any-host`, explicitly: every host of the bottle.
            let h = tokio::spawn({
                let (s, v) = (s.clone(), value.clone());
                async move { s.hold(payload("c.test"), &v).await }
            });
            decide(&s, Status::Approved, Some(Scope::AnyHost)).await;
            assert_eq!(h.await.unwrap(), HoldOutcome::Approved { scope: Scope::AnyHost });
            assert!(s.safe_set().contains_for("d.test", value.expose()));
            // Every decision is in the history with its host and scope.
            let history: Vec<(String, Scope)> =
                s.store.history().unwrap().into_iter().map(|e| (e.host, e.scope)).collect();
            assert_eq!(
                history,
                [
                    ("a.test".into(), Scope::Gateway),
                    ("b.test".into(), Scope::Gateway),
                    ("c.test".into(), Scope::AnyHost)
                ]
            );
        }
    }

    #[tokio::test]
    async fn other_work_proceeds_while_a_request_is_held() {
        for (_, store) in stores("flow") {
            let s = supervisor(store, Duration::from_secs(5));
            let held = tokio::spawn({
                let s = s.clone();
                async move { s.hold(payload("a.test"), &Secret::new("value-held-long-0")).await }
            });
            let others: Vec<_> = (0..100).map(|i| tokio::spawn(async move { i * 2 })).collect();
            for (i, o) in others.into_iter().enumerate() {
                assert_eq!(o.await.unwrap(), i * 2);
            }
            assert!(!held.is_finished());
            decide(&s, Status::Approved, None).await;
            assert_eq!(held.await.unwrap(), HoldOutcome::Approved { scope: Scope::Gateway });
        }
    }

    #[tokio::test]
    async fn from_config_persists_and_reloads_approvals() {
        let state = temp_dir("persist");
        let config = SuperviseConfig { allow_persist: true, ..Default::default() };
        let value = Secret::new("ghp_persistacrossrestart0123");
        {
            let s = Arc::new(Supervisor::from_config("demo", &config, &state).unwrap());
            let h = tokio::spawn({
                let (s, v) = (s.clone(), value.clone());
                async move { s.hold(payload("a.test"), &v).await }
            });
            decide(&s, Status::Approved, Some(Scope::Persist)).await;
            assert_eq!(h.await.unwrap(), HoldOutcome::Approved { scope: Scope::Persist });
        }
        let restarted = Supervisor::from_config("demo", &config, &state).unwrap();
        assert!(restarted.safe_set().contains_for("a.test", value.expose()));
        assert!(!restarted.safe_set().contains_for("b.test", value.expose()));
        assert!(state.join(DEFAULT_DB).exists(), "SQLite is the default store");
    }

    #[tokio::test]
    async fn notifications_get_the_proposal_and_their_failure_releases_nothing() {
        let state = temp_dir("notify-hold");
        let out = state.join("notified.json");
        let value = Secret::new("ghp_notifiedvalue0123456789abcdef");
        let argv = |cmd: String| Some(vec!["sh".to_string(), "-c".to_string(), cmd]);
        let config = SuperviseConfig {
            notify_command: argv(format!("cat > {}.tmp && mv {0}.tmp {0}", out.display())),
            timeout_seconds: Some(1),
            ..Default::default()
        };
        let s = Supervisor::from_config("demo", &config, &state).unwrap();
        let outcome = s.hold(payload("n.test"), &value).await;
        assert!(matches!(outcome, HoldOutcome::Failed(_)), "{outcome:?}");
        // The notification runs in the background; the hold's second is usually enough.
        while !out.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let text = std::fs::read_to_string(&out).unwrap();
        let got: Proposal = serde_json::from_str(&text).unwrap();
        assert_eq!((got.bottle.as_str(), got.payload.host.as_str()), ("demo", "n.test"));
        assert!(!text.contains("notifiedvalue"));

        let failing = SuperviseConfig { notify_command: argv("exit 3".into()), timeout_seconds: Some(1), ..config };
        let s = Supervisor::from_config("demo", &failing, &state).unwrap();
        let outcome = s.hold(payload("n.test"), &value).await;
        assert!(matches!(&outcome, HoldOutcome::Failed(why) if why.contains("no operator decision")), "{outcome:?}");
    }

    #[test]
    fn the_issue_example_parses_and_naming_both_stores_is_an_error() {
        let example = "bottles:\n  - name: demo\n    cgroup: egress/demo\n    routes: demo-routes.yaml\n    \
                       supervise:\n      queue_dir: /var/lib/egress-gateway/queue/demo\n      timeout_seconds: 300\n";
        let c = crate::config::Config::parse(Path::new("/etc/eg/gateway.yaml"), example).unwrap();
        let s = c.bottle("demo").unwrap().supervise.as_ref().unwrap();
        assert_eq!(s.store_spec(&c.state_dir), StoreSpec::Queue("/var/lib/egress-gateway/queue/demo".into()));
        assert_eq!(s.timeout(), Duration::from_secs(300));
        let both = example.replace("timeout_seconds: 300", "db: supervise.db");
        let err = crate::config::Config::parse(Path::new("/etc/eg/gateway.yaml"), &both).unwrap_err().to_string();
        assert!(err.contains("bottles[0].supervise") && err.contains("both queue_dir and db"), "{err}");
    }

    #[tokio::test]
    async fn a_half_written_response_is_read_again_until_it_is_whole() {
        let dir = temp_dir("half");
        let store: Arc<dyn Store> = Arc::new(QueueDir::prepare(&dir).unwrap());
        let s = supervisor(store.clone(), Duration::from_secs(20));
        let h = tokio::spawn({
            let s = s.clone();
            async move { s.hold(payload("a.test"), &Secret::new("ghp_halfwrittenresponse0123456")).await }
        });
        let id = wait_pending(&s, 1).await.remove(0);
        // A tool writing the file in place: first a part of it, read by a few polls.
        let path = dir.join(format!("{id}.response.json"));
        std::fs::write(&path, br#"{"status": "appr"#).unwrap();
        tokio::time::sleep(POLL_INTERVAL * 3).await;
        assert!(!h.is_finished(), "a half-written response ended the hold");
        std::fs::write(&path, br#"{"status": "approved", "notes": null}"#).unwrap();
        assert_eq!(h.await.unwrap(), HoldOutcome::Approved { scope: Scope::Gateway });

        // One that stays malformed: refused at the deadline, naming it.
        let quick = supervisor(store.clone(), Duration::from_secs(1));
        let h = tokio::spawn({
            let s = quick.clone();
            async move { s.hold(payload("a.test"), &Secret::new("ghp_malformeduntiltheend012345")).await }
        });
        let id = wait_pending(&quick, 1).await.remove(0);
        std::fs::write(dir.join(format!("{id}.response.json")), b"{\"status\": \"sure\"}").unwrap();
        let out = h.await.unwrap();
        assert!(matches!(&out, HoldOutcome::Failed(why) if why.contains("malformed response")), "{out:?}");
    }

    #[test]
    fn the_token_allow_timeout_is_read_as_the_seed_reads_it() {
        assert_eq!(parse_timeout("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_timeout(" 300 "), Some(Duration::from_secs(300)));
        assert_eq!(parse_timeout("1e1"), Some(Duration::from_secs(10)));
        for bad in ["0", "-1", "abc", "", "NaN", "inf", "1e400"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
        assert_eq!(format_secs(Duration::from_millis(500)), "0.5");
        assert_eq!(format_secs(Duration::from_secs(300)), "300");
    }

    #[test]
    fn supervise_is_on_without_a_block_and_off_only_when_said() {
        let parse = |bottle_lines: &str, env: &SuperviseEnv| {
            let text = format!("bottles:\n  - name: demo\n    cgroup: egress/demo\n{bottle_lines}");
            crate::config::Config::parse_with_env(Path::new("/etc/eg/gateway.yaml"), &text, env)
        };
        let none = SuperviseEnv::default();
        let c = parse("", &none).unwrap();
        let s = c.bottles[0].supervise.as_ref().expect("on without a block");
        assert_eq!(s.store_spec(&c.state_dir), StoreSpec::Sqlite(c.state_dir.join(DEFAULT_DB)));
        let c = parse("    supervise: {enabled: false}\n", &none).unwrap();
        assert!(c.bottles[0].supervise.is_none());
        assert!(c.explain().contains("supervise: off"), "{}", c.explain());
        let err = parse("    supervise: {enabled: false, queue_dir: /var/q}\n", &none).unwrap_err().to_string();
        assert!(err.contains("bottles[0].supervise") && err.contains("queue_dir would mean nothing"), "{err}");
        assert!(
            parse("    supervise: {enabled: true, timeout_seconds: 5}\n", &none).unwrap().bottles[0]
                .supervise
                .is_some()
        );

        // The seeds' environment, when the block names no store.
        let env = SuperviseEnv { queue_dir: Some("/var/lib/bb/queue".into()), slug: Some("bb-slug".into()) };
        let c = parse("", &env).unwrap();
        let s = c.bottles[0].supervise.as_ref().unwrap();
        assert_eq!(s.store_spec(&c.state_dir), StoreSpec::Queue("/var/lib/bb/queue".into()));
        assert_eq!(s.slug.as_deref(), Some("bb-slug"));
        assert!(c.explain().contains("(from SUPERVISE_QUEUE_DIR)"), "{}", c.explain());
        let c = parse("    supervise: {db: s.db}\n", &env).unwrap();
        let s = c.bottles[0].supervise.as_ref().unwrap();
        assert_eq!((s.store_spec(&c.state_dir), s.slug.as_ref()), (StoreSpec::Sqlite("/etc/eg/s.db".into()), None));
        // One queue for two bottles: an error that says what to do.
        let two = "  - name: other\n    cgroup: egress/other\n";
        let err = parse(two, &env).unwrap_err().to_string();
        assert!(err.contains("bottles[1].supervise") && err.contains("SUPERVISE_QUEUE_DIR"), "{err}");
    }

    #[tokio::test]
    async fn proposals_carry_the_slug_of_the_seeds_environment() {
        let state = temp_dir("slug");
        let queue = state.join("queue");
        let env = SuperviseEnv { queue_dir: Some(queue.clone()), slug: Some("bb-slug".into()) };
        let config = SuperviseConfig::default().with_env(&env);
        let s = Arc::new(Supervisor::from_config("demo", &config, &state).unwrap());
        let h = tokio::spawn({
            let s = s.clone();
            async move { s.hold(payload("a.test"), &Secret::new("ghp_slugvalue0123456789abcdef")).await }
        });
        decide(&s, Status::Rejected, None).await;
        assert!(matches!(h.await.unwrap(), HoldOutcome::Rejected(_)));
        let file = std::fs::read_dir(queue.join("processed"))
            .unwrap()
            .flatten()
            .find(|e| {
                e.file_name().to_string_lossy().ends_with(".json")
                    && !e.file_name().to_string_lossy().contains("response")
            })
            .unwrap();
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(file.path()).unwrap()).unwrap();
        assert_eq!(record["bottle_slug"], "bb-slug");
    }

    #[test]
    fn config_validation_and_store_choice() {
        let c = SuperviseConfig { timeout_seconds: Some(7), ..Default::default() };
        assert_eq!(c.timeout(), Duration::from_secs(7));
        assert_eq!(c.store_spec(Path::new("/s")), StoreSpec::Sqlite("/s/supervise.db".into()));
        let both = SuperviseConfig { queue_dir: Some("q".into()), db: Some("d".into()), ..Default::default() };
        assert!(both.validate()[0].contains("both queue_dir and db"));
        let empty = SuperviseConfig { notify_command: Some(vec![]), ..Default::default() };
        assert_eq!(empty.validate().len(), 1);
    }
}
