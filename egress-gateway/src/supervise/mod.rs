//! Supervise: a request whose outbound scan found a token waits while an operator
//! decides. Approved values join the bottle's safe set (scope `gateway`, the seeds'
//! semantics), only release the held request (`once`), or are also persisted as keyed
//! hashes (`persist`, opt-in). The wait is async; other flows keep flowing. Proposals
//! and responses go through a `Store`: SQLite (the default) or the seeds' queue
//! directory.
pub mod cli;
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
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::dlp::Secret;
pub use protocol::{Payload, Proposal, Response, Scope, Status};
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

/// A bottle's `supervise:` block in gateway.yaml.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SuperviseConfig {
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
            Ok(v) => match v.trim().parse::<u64>() {
                Ok(s) if s > 0 => Duration::from_secs(s),
                _ => {
                    tracing::warn!(variable = TIMEOUT_ENV, value = %v, "invalid timeout, using the default of 300 s");
                    DEFAULT_TIMEOUT
                }
            },
            Err(_) => DEFAULT_TIMEOUT,
        }
    }

    fn notifier(&self) -> Option<notify::Notifier> {
        self.notify_command.clone().map(|argv| notify::Notifier {
            argv,
            timeout: self.notify_timeout_seconds.map(Duration::from_secs).unwrap_or(notify::DEFAULT_TIMEOUT),
        })
    }
}

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    Approved {
        scope: Scope,
    },
    Rejected(String),
    /// Timeout, malformed response, store error: refused like a rejection.
    Failed(String),
}

type InFlight = Arc<tokio::sync::OnceCell<HoldOutcome>>;

pub struct Supervisor {
    bottle: String,
    store: Arc<dyn Store>,
    timeout: Duration,
    safe: SafeValues,
    notifier: Option<notify::Notifier>,
    /// One proposal per value at a time; every request holding that value waits on it.
    in_flight: Mutex<HashMap<String, InFlight>>,
}

impl Supervisor {
    pub fn new(bottle: &str, store: Arc<dyn Store>, timeout: Duration, safe: SafeValues) -> Supervisor {
        Supervisor {
            bottle: bottle.to_string(),
            store,
            timeout,
            safe,
            notifier: None,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The bottle's supervisor as its `supervise:` block describes it: the store, the
    /// persisted safe list (loaded now) when `allow_persist`, the notification.
    pub fn from_config(bottle: &str, config: &SuperviseConfig, state_dir: &Path) -> Result<Supervisor, StoreError> {
        let store = config.prepare_store(state_dir, bottle)?;
        let safe = if config.allow_persist {
            let key = safe::Key::load_or_create(state_dir)?;
            SafeValues::persisted(key, safe::persisted_path(state_dir, bottle))?
        } else {
            SafeValues::in_memory()
        };
        if !safe.is_empty() {
            tracing::info!(bottle, values = safe.len(), "persisted approvals loaded");
        }
        let mut sup = Supervisor::new(bottle, store, config.timeout(), safe);
        sup.notifier = config.notifier();
        Ok(sup)
    }

    pub fn safe_set(&self) -> &SafeValues {
        &self.safe
    }

    /// Holds until the operator decides on `value` (shown as `payload`, never raw).
    /// Concurrent holds of the same value for the same request line share one proposal
    /// and its decision; another host, method or path gets its own, since an approval
    /// `once` means the request the operator saw.
    pub async fn hold(&self, payload: Payload, value: &Secret) -> HoldOutcome {
        let mut digest = Sha256::new();
        for part in [value.expose(), &payload.host, &payload.method, &payload.path] {
            digest.update(part.as_bytes());
            digest.update([0]);
        }
        let key = hex::encode(digest.finalize());
        let cell = {
            let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let host = payload.host.clone();
        let outcome = cell.get_or_init(|| self.propose_and_wait(payload, value)).await.clone();
        if let HoldOutcome::Approved { scope } = &outcome {
            tracing::info!(bottle = %self.bottle, host = %render::inert(&host), scope = %scope, "held request released by an approval");
        }
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(&key);
        }
        outcome
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

    async fn propose_and_wait(&self, payload: Payload, value: &Secret) -> HoldOutcome {
        // The approval is for the request's host as sent (the proposal shows it inert).
        let host = payload.host.clone();
        let proposal = Proposal::new(&self.bottle, payload);
        let id = proposal.id.clone();
        let written = proposal.clone();
        if let Err(e) = self.with_store(move |s| s.write_proposal(&written)).await {
            return HoldOutcome::Failed(format!("supervise store error: {e}"));
        }
        tracing::warn!(bottle = %self.bottle, proposal = %id, host = %proposal.payload.host, reason = %proposal.payload.reason, "request held for an operator");
        if let Some(n) = &self.notifier {
            n.spawn(&proposal);
        }
        let outcome = self.wait_for_decision(&id).await;
        let outcome = match outcome {
            HoldOutcome::Approved { scope } => match self.safe.approve(value, scope, &host) {
                Ok(()) => outcome,
                Err(e) => HoldOutcome::Failed(format!("approved, but {e}")),
            },
            other => other,
        };
        // The waiting gateway owns archiving.
        let archived = id.clone();
        if let Err(e) = self.with_store(move |s| s.archive(&archived)).await {
            tracing::warn!(bottle = %self.bottle, proposal = %id, error = %e, "archiving the proposal failed");
        }
        tracing::info!(bottle = %self.bottle, proposal = %id, outcome = ?outcome, "hold ended");
        outcome
    }

    async fn wait_for_decision(&self, id: &str) -> HoldOutcome {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let read = id.to_string();
            match self.with_store(move |s| s.read_response(&read)).await {
                Ok(Some(r)) => {
                    return match r.status {
                        Status::Approved | Status::Modified => HoldOutcome::Approved { scope: r.scope() },
                        Status::Rejected if r.notes.is_empty() => HoldOutcome::Rejected("no reason given".into()),
                        Status::Rejected => HoldOutcome::Rejected(r.notes),
                    };
                }
                Ok(None) if tokio::time::Instant::now() >= deadline => {
                    return HoldOutcome::Failed(format!("no operator decision within {} s", self.timeout.as_secs()));
                }
                Ok(None) => tokio::time::sleep(POLL_INTERVAL).await,
                Err(e) => return HoldOutcome::Failed(format!("supervise store error: {e}")),
            }
        }
    }
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
    async fn approval_releases_every_holder_of_the_value_with_one_proposal() {
        for (dir, store) in stores("approve") {
            let s = supervisor(store, Duration::from_secs(10));
            let value = Secret::new("ghp_heldvalue0123456789");
            let holders: Vec<_> = (0..5)
                .map(|_| {
                    let (s, v) = (s.clone(), value.clone());
                    tokio::spawn(async move { s.hold(payload("a.test"), &v).await })
                })
                .collect();
            decide(&s, Status::Approved, None).await;
            for h in holders {
                assert_eq!(h.await.unwrap(), HoldOutcome::Approved { scope: Scope::Gateway });
            }
            assert!(s.safe_set().contains_for("a.test", value.expose()));
            assert!(s.store.pending().unwrap().is_empty());
            assert_eq!(s.store.history().unwrap().len(), 1, "one proposal, one decision");
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
