//! Supervise: a request whose outbound scan found a token waits while an operator
//! decides; an approved value joins the bottle's safe set for the gateway's life (the
//! seeds' semantics). The wait is async; other flows keep flowing.
pub mod cli;
pub mod queue;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::dlp::{SafeSet, Secret};
pub use queue::{Payload, QueueDir};

/// `EGRESS_TOKEN_ALLOW_TIMEOUT_SECONDS` default, as in the seeds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
pub const TIMEOUT_ENV: &str = "EGRESS_TOKEN_ALLOW_TIMEOUT_SECONDS";
/// How often a held request looks for the operator's response.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A bottle's `supervise:` block in gateway.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperviseConfig {
    pub queue_dir: Option<PathBuf>,
    pub db: Option<PathBuf>,
    pub timeout_seconds: Option<u64>,
}

impl SuperviseConfig {
    /// Problems with the block, each one sentence.
    pub fn validate(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.db.is_some() {
            out.push("db: the SQLite store is not available in this version; use queue_dir".to_string());
        }
        if self.timeout_seconds == Some(0) {
            out.push("timeout_seconds must be at least 1".to_string());
        }
        out
    }

    /// The queue directory: as configured, or `<state_dir>/queue/<bottle>`.
    pub fn queue_dir(&self, state_dir: &Path, bottle: &str) -> PathBuf {
        self.queue_dir.clone().unwrap_or_else(|| state_dir.join("queue").join(bottle))
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
}

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    Approved,
    Rejected(String),
    /// Timeout, malformed response, queue error: refused like a rejection.
    Failed(String),
}

/// Approved values of one bottle, in memory only.
#[derive(Default)]
pub struct SafeValues(RwLock<HashSet<String>>);

impl SafeSet for SafeValues {
    fn contains(&self, value: &str) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).contains(value)
    }
}

type InFlight = Arc<tokio::sync::OnceCell<HoldOutcome>>;

pub struct Supervisor {
    bottle: String,
    queue: QueueDir,
    timeout: Duration,
    safe: SafeValues,
    /// One proposal per value at a time; every request holding that value waits on it.
    in_flight: Mutex<HashMap<String, InFlight>>,
}

impl Supervisor {
    pub fn new(bottle: &str, queue: QueueDir, timeout: Duration) -> Result<Supervisor, queue::QueueError> {
        queue.prepare()?;
        Ok(Supervisor {
            bottle: bottle.to_string(),
            queue,
            timeout,
            safe: SafeValues::default(),
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    pub fn safe_set(&self) -> &SafeValues {
        &self.safe
    }

    /// Holds until the operator decides on `value` (shown as `payload`, never raw).
    pub async fn hold(&self, payload: Payload, value: &Secret) -> HoldOutcome {
        let key = hex::encode(Sha256::digest(value.expose().as_bytes()));
        let cell = {
            let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let outcome = cell.get_or_init(|| self.propose_and_wait(payload, value)).await.clone();
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            map.remove(&key);
        }
        outcome
    }

    async fn propose_and_wait(&self, payload: Payload, value: &Secret) -> HoldOutcome {
        let proposal = queue::Proposal::new(&self.bottle, payload);
        if let Err(e) = self.queue.write_proposal(&proposal) {
            return HoldOutcome::Failed(format!("supervise queue error: {e}"));
        }
        tracing::warn!(bottle = %self.bottle, proposal = %proposal.id, host = %proposal.payload.host, reason = %proposal.payload.reason, "request held for an operator");
        let deadline = tokio::time::Instant::now() + self.timeout;
        let outcome = loop {
            match self.queue.read_response(&proposal.id) {
                Ok(Some(r)) => match r.status {
                    queue::Status::Approved | queue::Status::Modified => break HoldOutcome::Approved,
                    queue::Status::Rejected => {
                        break HoldOutcome::Rejected(if r.notes.is_empty() {
                            "no reason given".into()
                        } else {
                            r.notes
                        });
                    }
                },
                Ok(None) if tokio::time::Instant::now() >= deadline => {
                    break HoldOutcome::Failed(format!("no operator decision within {} s", self.timeout.as_secs()));
                }
                Ok(None) => tokio::time::sleep(POLL_INTERVAL).await,
                Err(e) => break HoldOutcome::Failed(format!("supervise queue error: {e}")),
            }
        };
        if outcome == HoldOutcome::Approved {
            self.safe.0.write().unwrap_or_else(|e| e.into_inner()).insert(value.expose().to_string());
        }
        // The waiting gateway owns archiving.
        if let Err(e) = self.queue.archive(&proposal.id) {
            tracing::warn!(bottle = %self.bottle, proposal = %proposal.id, error = %e, "archiving the proposal failed");
        }
        tracing::info!(bottle = %self.bottle, proposal = %proposal.id, outcome = ?outcome, "hold ended");
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supervisor(timeout: Duration) -> Arc<Supervisor> {
        let dir = std::env::temp_dir().join(format!("egress-sup-{}-{}", std::process::id(), rand::random::<u32>()));
        Arc::new(Supervisor::new("demo", QueueDir::new(dir), timeout).unwrap())
    }

    fn payload() -> Payload {
        Payload {
            host: "a.test".into(),
            method: "POST".into(),
            path: "/".into(),
            reason: "r".into(),
            context: "c ********".into(),
        }
    }

    async fn decide(s: &Supervisor, status: queue::Status) -> String {
        loop {
            if let Some(p) = s.queue.pending().unwrap().into_iter().next() {
                let r = queue::Response { status, notes: "because".into(), decided_by: None, decided_at: None };
                s.queue.write_response(&p.id, &r).unwrap();
                return p.id;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn approval_releases_every_holder_of_the_value_with_one_proposal() {
        let s = supervisor(Duration::from_secs(10));
        let value = Secret::new("ghp_heldvalue0123456789");
        let holders: Vec<_> = (0..5)
            .map(|_| {
                let (s, v) = (s.clone(), value.clone());
                tokio::spawn(async move { s.hold(payload(), &v).await })
            })
            .collect();
        let id = decide(&s, queue::Status::Approved).await;
        for h in holders {
            assert_eq!(h.await.unwrap(), HoldOutcome::Approved);
        }
        assert!(s.safe_set().contains(value.expose()));
        let processed: Vec<_> = std::fs::read_dir(s.queue.path().join("processed")).unwrap().collect();
        assert_eq!(processed.len(), 2, "one proposal and its response, archived");
        let text = std::fs::read_to_string(s.queue.path().join("processed").join(format!("{id}.json"))).unwrap();
        assert!(!text.contains("heldvalue"), "the raw value is in the queue");
    }

    #[tokio::test]
    async fn rejection_timeout_and_malformed_responses_fail_closed() {
        let s = supervisor(Duration::from_secs(10));
        let v = Secret::new("value-to-reject-000");
        let h = tokio::spawn({
            let s = s.clone();
            async move { s.hold(payload(), &v).await }
        });
        decide(&s, queue::Status::Rejected).await;
        assert_eq!(h.await.unwrap(), HoldOutcome::Rejected("because".into()));

        let quick = supervisor(Duration::from_millis(300));
        assert!(matches!(quick.hold(payload(), &Secret::new("value-times-out-00")).await, HoldOutcome::Failed(_)));

        let h = tokio::spawn({
            let s = s.clone();
            async move { s.hold(payload(), &Secret::new("value-malformed-0")).await }
        });
        loop {
            if let Some(p) = s.queue.pending().unwrap().into_iter().next() {
                std::fs::write(s.queue.path().join(format!("{}.response.json", p.id)), b"{\"status\": \"perhaps\"}")
                    .unwrap();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(matches!(h.await.unwrap(), HoldOutcome::Failed(_)));
    }

    #[tokio::test]
    async fn other_work_proceeds_while_a_request_is_held() {
        let s = supervisor(Duration::from_secs(5));
        let held = tokio::spawn({
            let s = s.clone();
            async move { s.hold(payload(), &Secret::new("value-held-long-0")).await }
        });
        let others: Vec<_> = (0..100).map(|i| tokio::spawn(async move { i * 2 })).collect();
        for (i, o) in others.into_iter().enumerate() {
            assert_eq!(o.await.unwrap(), i * 2);
        }
        assert!(!held.is_finished());
        decide(&s, queue::Status::Approved).await;
        assert_eq!(held.await.unwrap(), HoldOutcome::Approved);
    }

    #[test]
    fn timeout_comes_from_config_then_default() {
        let c = SuperviseConfig { queue_dir: None, db: None, timeout_seconds: Some(7) };
        assert_eq!(c.timeout(), Duration::from_secs(7));
        assert!(
            !SuperviseConfig { queue_dir: None, db: Some("x".into()), timeout_seconds: None }.validate().is_empty()
        );
    }
}
