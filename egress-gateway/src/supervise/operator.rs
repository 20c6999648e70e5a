//! The operator's side over every supervised bottle's store: what the scriptable
//! commands and the console share (list, find, decide, history). Nothing is created:
//! a store that does not exist yet has nothing pending.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use super::{
    protocol::{AuditEntry, Proposal, Response, Scope, Status},
    store::{Store, StoreError},
};
use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("approving needs a non-empty reason: it is recorded with the decision")]
    ReasonRequired,
    #[error("no proposal {0:?} in any bottle's store (unknown id)")]
    UnknownId(String),
    /// Displays its cause itself (no `source`), so `{:#}` does not repeat it.
    #[error("bottle {bottle}: {error}")]
    Store { bottle: String, error: StoreError },
}

/// One supervised bottle's store.
pub struct BottleStore {
    pub bottle: String,
    pub allow_persist: bool,
    /// `None`: the store does not exist yet (the gateway never ran with it).
    pub store: Option<Arc<dyn Store>>,
}

pub struct Operator {
    pub bottles: Vec<BottleStore>,
}

/// The proposals a reader already has, by bottle and id.
#[derive(Default)]
pub struct PendingCache {
    proposals: HashMap<(String, String), Proposal>,
    /// How many proposals were read from the stores (not from the cache), in all.
    pub reads: u64,
}

/// One bottle's line of `supervise status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BottleStatus {
    pub bottle: String,
    pub pending: usize,
    pub max_pending: usize,
    /// `refused_over_cap` (429s), `abandoned` (holds whose request went away).
    pub counters: BTreeMap<String, u64>,
}

impl Operator {
    /// Opens every supervised bottle's store; one that is unreadable or unsafe is an error.
    pub fn open(config: &Config) -> Result<Operator, OperatorError> {
        let mut bottles = Vec::new();
        for b in &config.bottles {
            let Some(s) = &b.supervise else { continue };
            let store = s
                .open_store(&config.state_dir, &b.name)
                .map_err(|error| OperatorError::Store { bottle: b.name.clone(), error })?;
            bottles.push(BottleStore { bottle: b.name.clone(), allow_persist: s.allow_persist, store });
        }
        Ok(Operator { bottles })
    }

    fn stores(&self) -> impl Iterator<Item = (&BottleStore, &dyn Store)> {
        self.bottles.iter().filter_map(|b| b.store.as_deref().map(|s| (b, s)))
    }

    /// Every store's `read`, concatenated.
    fn gather<T>(&self, read: impl Fn(&dyn Store) -> Result<Vec<T>, StoreError>) -> Result<Vec<T>, OperatorError> {
        let mut out = Vec::new();
        for (b, s) in self.stores() {
            out.extend(read(s).map_err(|error| OperatorError::Store { bottle: b.bottle.clone(), error })?);
        }
        Ok(out)
    }

    /// Pending proposals of every bottle, newest first, as shown (`Proposal::inert`).
    pub fn pending(&self) -> Result<Vec<Proposal>, OperatorError> {
        let mut out = self.gather(|s| Ok(s.pending()?.iter().map(Proposal::inert).collect()))?;
        out.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        Ok(out)
    }

    /// Pending proposals of every bottle, newest first, as shown, reading only the
    /// proposals `cache` does not hold yet (a store lists its pending ids cheaply).
    pub fn pending_incremental(&self, cache: &mut PendingCache) -> Result<Vec<Proposal>, OperatorError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for (b, s) in self.stores() {
            let err = |error| OperatorError::Store { bottle: b.bottle.clone(), error };
            for id in s.pending_ids().map_err(err)? {
                let key = (b.bottle.clone(), id);
                if !cache.proposals.contains_key(&key) {
                    // Gone between the listing and the read: no longer pending.
                    let Some(p) = s.proposal(&key.1).map_err(err)? else { continue };
                    cache.reads += 1;
                    cache.proposals.insert(key.clone(), p.inert());
                }
                out.push(cache.proposals[&key].clone());
                seen.insert(key);
            }
        }
        cache.proposals.retain(|k, _| seen.contains(k));
        out.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        Ok(out)
    }

    /// Each bottle's pending count, its cap and its counters, for `supervise status`.
    pub fn status(&self, config: &Config) -> Result<Vec<BottleStatus>, OperatorError> {
        let mut out = Vec::new();
        for b in &self.bottles {
            let max_pending =
                config.bottle(&b.bottle).and_then(|c| c.supervise.as_ref()).map(|s| s.max_pending()).unwrap_or(0);
            let (pending, counters) = match b.store.as_deref() {
                None => (0, Default::default()),
                Some(s) => {
                    let err = |error| OperatorError::Store { bottle: b.bottle.clone(), error };
                    (s.pending_ids().map_err(err)?.len(), s.counters().map_err(err)?)
                }
            };
            out.push(BottleStatus { bottle: b.bottle.clone(), pending, max_pending, counters });
        }
        Ok(out)
    }

    /// The proposal `id` (pending or not), as shown (`Proposal::inert`), and its bottle's store.
    pub fn find(&self, id: &str) -> Result<(&BottleStore, Proposal), OperatorError> {
        for (b, s) in self.stores() {
            if let Some(p) = s.proposal(id).map_err(|error| OperatorError::Store { bottle: b.bottle.clone(), error })? {
                return Ok((b, p.inert()));
            }
        }
        Err(OperatorError::UnknownId(id.to_string()))
    }

    /// Approves (a reason is required; `scope` defaults to `gateway`) or rejects. Every
    /// check happens before anything is written.
    pub fn decide(
        &self,
        id: &str,
        status: Status,
        reason: &str,
        scope: Option<Scope>,
    ) -> Result<Proposal, OperatorError> {
        if status != Status::Rejected && reason.trim().is_empty() {
            return Err(OperatorError::ReasonRequired);
        }
        let (b, p) = self.find(id)?;
        let err = |error| OperatorError::Store { bottle: b.bottle.clone(), error };
        let scope = if status == Status::Rejected { None } else { Some(scope.unwrap_or_default()) };
        if scope == Some(Scope::Persist) && !b.allow_persist {
            return Err(err(StoreError::PersistNotAllowed));
        }
        let store = b.store.as_deref().expect("found in an existing store");
        store.write_response(id, &Response::by_operator(status, reason.trim(), scope)).map_err(err)?;
        Ok(p)
    }

    /// Every bottle's decisions, oldest first, as shown (`AuditEntry::inert`).
    pub fn history(&self) -> Result<Vec<AuditEntry>, OperatorError> {
        let mut out = self.gather(|s| Ok(s.history()?.iter().map(AuditEntry::inert).collect()))?;
        // Stable: each store's own order (finer than decided_at's seconds) is kept.
        out.sort_by_key(|e| e.decided_at);
        Ok(out)
    }
}
