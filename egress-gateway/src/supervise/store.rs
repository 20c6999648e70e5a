//! One protocol, two stores: the seeds' queue directory (`queue.rs`) and SQLite
//! (`sqlite.rs`). Both implement `Store`, and both pass the same protocol suite
//! (`tests::protocol_suite`). A store is scoped to one bottle.
use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use super::protocol::{AuditEntry, Closed, Proposal, Response};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("supervise queue {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("supervise database {path}: {reason}")]
    Db { path: PathBuf, reason: String },
    #[error("malformed response to proposal {id} (expected status approved|modified|rejected): {reason}")]
    Malformed { id: String, reason: String },
    #[error("{path} is unsafe for the supervise store: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error("no proposal {0:?} (unknown id)")]
    UnknownId(String),
    #[error("proposal {0} is already decided")]
    AlreadyDecided(String),
    #[error("approval scope persist is not allowed for this bottle (set allow_persist: true in its supervise block)")]
    PersistNotAllowed,
    /// Deciding it would do nothing: nothing was written.
    #[error("proposal {id} is no longer pending: {}; nothing was written", why.map(Closed::explain).unwrap_or("its hold ended without a decision (timeout, or the request went away)"))]
    Closed { id: String, why: Option<Closed> },
}

/// Where a bottle's proposals and responses live.
pub trait Store: Send + Sync {
    /// The queue directory or database file, for messages.
    fn location(&self) -> &Path;
    fn write_proposal(&self, p: &Proposal) -> Result<(), StoreError>;
    /// Proposals without a response whose hold has not ended, oldest first.
    fn pending(&self) -> Result<Vec<Proposal>, StoreError>;
    /// A proposal, pending or not; `None` if this store never had it.
    fn proposal(&self, id: &str) -> Result<Option<Proposal>, StoreError>;
    /// Records the decision (and its audit entry). Unknown id, already decided, or a
    /// hold that already ended: an error, and nothing is written.
    fn write_response(&self, id: &str, r: &Response) -> Result<(), StoreError>;
    /// The response to `id`, if one was written; a malformed one is an error.
    fn read_response(&self, id: &str) -> Result<Option<Response>, StoreError>;
    /// Ends the hold: the proposal (and its response, if any) is no longer pending, and
    /// `why` says how it ended. The waiting gateway calls it (once; a second call
    /// changes nothing).
    fn close(&self, id: &str, why: Closed) -> Result<(), StoreError>;
    /// How the proposal's hold ended; `None` while it is open (or for a proposal closed
    /// by a version that did not record it).
    fn closed(&self, id: &str) -> Result<Option<Closed>, StoreError>;
    /// At the gateway's start: no hold of this process waits on any proposal yet, so
    /// every one still open is closed as abandoned. Returns how many.
    fn close_stale(&self) -> Result<usize, StoreError>;
    /// The ids of the pending proposals (cheap: no proposal is read), for readers that
    /// keep the proposals they already have.
    fn pending_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.pending()?.into_iter().map(|p| p.id).collect())
    }
    /// Adds `delta` to the bottle's counter `name` (e.g. `refused_over_cap`).
    fn bump(&self, name: &str, delta: u64) -> Result<(), StoreError>;
    /// The bottle's counters, by name.
    fn counters(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError>;
    /// Every decision, oldest first.
    fn history(&self) -> Result<Vec<AuditEntry>, StoreError>;
}

/// Refuses a directory a bottle could write to: group- or world-writable, or owned by
/// another user than the gateway's.
pub fn check_private_dir(dir: &Path) -> Result<(), StoreError> {
    check_owner_and_mode(dir, "chmod 700 it")
}

/// The same check for a file (the SQLite database).
pub fn check_private_file(file: &Path) -> Result<(), StoreError> {
    check_owner_and_mode(file, "chmod 600 it")
}

fn check_owner_and_mode(path: &Path, fix: &str) -> Result<(), StoreError> {
    let meta =
        fs::metadata(path).map_err(|e| StoreError::Unsafe { path: path.to_path_buf(), reason: e.to_string() })?;
    if meta.mode() & 0o022 != 0 {
        return Err(StoreError::Unsafe {
            path: path.to_path_buf(),
            reason: format!("it is group- or world-writable, so a bottle could write to it ({fix})"),
        });
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(StoreError::Unsafe {
            path: path.to_path_buf(),
            reason: format!("it is owned by uid {}, not by the gateway's user (chown it)", meta.uid()),
        });
    }
    Ok(())
}

/// Creates `dir` (0700) if missing, then checks it.
pub fn prepare_private_dir(dir: &Path) -> Result<(), StoreError> {
    if !dir.exists() {
        let io = |e: std::io::Error| StoreError::Io { path: dir.to_path_buf(), reason: e.to_string() };
        fs::create_dir_all(dir).map_err(io)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    check_private_dir(dir)
}

#[cfg(test)]
pub(crate) mod tests {
    //! The protocol suite every store must pass.
    use super::*;
    use crate::supervise::protocol::{Payload, Scope, Status};

    pub fn payload(host: &str) -> Payload {
        Payload {
            host: host.into(),
            method: "POST".into(),
            path: "/v1/x".into(),
            reason: "token_patterns: GitHub personal access token".into(),
            context: "key ********".into(),
        }
    }

    /// Every class of character `render::inert` escapes, as an agent would plant them.
    pub const HOSTILE: &str =
        "\r\x1b[1A\x1b[2K\x1b]0;title\x07\x1b]52;c;aGk=\x1b\\\u{9b}2J\u{202e}\u{2066}\u{200b}\x08\x7f";

    /// A proposal as a store might hold it if written raw (not through `Proposal::new`):
    /// every agent-controlled field full of terminal controls and bidi characters.
    pub fn hostile_proposal(bottle: &str) -> Proposal {
        let mut p = Proposal::new(bottle, payload("x.test"));
        p.payload = Payload {
            host: format!("trusted.example{HOSTILE}.evil.test"),
            method: format!("POST{HOSTILE}"),
            path: format!("/v1/send{HOSTILE}?q=1"),
            reason: format!("token_patterns: GitHub personal access token in header x{HOSTILE}"),
            context: format!("key=******** {HOSTILE} tail"),
        };
        p
    }

    /// Whether `text` has any character a terminal would act on instead of showing,
    /// besides the line breaks between the lines of an output.
    pub fn has_unsafe(text: &str) -> bool {
        text.contains(|c| c != '\n' && crate::supervise::render::is_unsafe(c))
    }

    /// A fresh private directory under the build's target directory: a queue directory
    /// under /tmp (sticky, world-writable) is refused.
    pub fn temp_dir(tag: &str) -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        let mut base = exe.parent().and_then(Path::parent).unwrap().join("supervise-test-tmp");
        // A build under /tmp (sticky, world-writable) would be refused: use /run then.
        let open_above = base.ancestors().skip(1).any(|a| {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(a).is_ok_and(|m| m.mode() & 0o002 != 0)
        });
        if open_above {
            base = PathBuf::from("/run/egress-gateway-unit-tmp");
        }
        fs::create_dir_all(&base).unwrap();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o700)).unwrap();
        let dir = base.join(format!("egress-sup-{tag}-{}-{}", std::process::id(), rand::random::<u32>()));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    fn response(status: Status, notes: &str, scope: Option<Scope>) -> Response {
        Response { status, notes: notes.into(), scope, decided_by: Some("alice".into()), decided_at: Some(1000) }
    }

    /// `inject_raw(id, text)` writes a response the way a foreign tool might, bypassing
    /// the store's validation (for the malformed case).
    pub fn protocol_suite(store: &dyn Store, inject_raw: &dyn Fn(&str, &str)) {
        // A proposal is pending until decided, and can be read back.
        let mut first = Proposal::new("demo", payload("a.test"));
        first.created_at = 100;
        let mut second = Proposal::new("demo", payload("b.test"));
        second.created_at = 200;
        store.write_proposal(&second).unwrap();
        store.write_proposal(&first).unwrap();
        assert_eq!(store.pending().unwrap(), vec![first.clone(), second.clone()], "oldest first");
        assert_eq!(store.proposal(&first.id).unwrap(), Some(first.clone()));
        assert_eq!(store.read_response(&first.id).unwrap(), None);

        // A decision: read back with its scope; no longer pending.
        store.write_response(&first.id, &response(Status::Approved, "deploy key", Some(Scope::Once))).unwrap();
        let r = store.read_response(&first.id).unwrap().unwrap();
        assert_eq!((r.status, r.scope(), r.notes.as_str()), (Status::Approved, Scope::Once, "deploy key"));
        assert_eq!(store.pending().unwrap(), vec![second.clone()]);

        // Deciding twice, or an unknown id: errors that change nothing.
        assert!(matches!(
            store.write_response(&first.id, &response(Status::Rejected, "late", None)),
            Err(StoreError::AlreadyDecided(_))
        ));
        assert_eq!(store.read_response(&first.id).unwrap().unwrap().status, Status::Approved);
        assert!(matches!(
            store.write_response("no-such-id", &response(Status::Rejected, "", None)),
            Err(StoreError::UnknownId(_))
        ));
        assert!(store.proposal("no-such-id").unwrap().is_none());

        // The waiting gateway archives; the decision stays readable in the history.
        assert_eq!(store.closed(&first.id).unwrap(), None);
        store.close(&first.id, Closed::Decided).unwrap();
        assert_eq!(store.closed(&first.id).unwrap(), Some(Closed::Decided));
        assert_eq!(store.proposal(&first.id).unwrap(), Some(first.clone()));
        assert!(matches!(
            store.write_response(&first.id, &response(Status::Rejected, "late", None)),
            Err(StoreError::AlreadyDecided(_))
        ));

        // A hold that ended without a decision (its request went away): closed, not
        // decidable, and the refusal says approving it would release nothing.
        store.close(&second.id, Closed::Abandoned).unwrap();
        assert!(store.pending().unwrap().is_empty());
        assert!(store.pending_ids().unwrap().is_empty());
        let late = store.write_response(&second.id, &response(Status::Approved, "late", None)).unwrap_err();
        assert!(matches!(late, StoreError::Closed { why: Some(Closed::Abandoned), .. }), "{late:?}");
        assert!(late.to_string().contains("would release nothing"), "{late}");
        assert_eq!(store.closed(&second.id).unwrap(), Some(Closed::Abandoned));

        // A rejection without a scope is audited as gateway, with who and when.
        let third = Proposal::new("demo", payload("c.test"));
        store.write_proposal(&third).unwrap();
        store
            .write_response(&third.id, &Response { decided_at: Some(2000), ..response(Status::Rejected, "", None) })
            .unwrap();
        let history = store.history().unwrap();
        assert_eq!(history.len(), 2, "{history:?}");
        assert_eq!(history[0], AuditEntry::new(&first, &r));
        assert_eq!(
            (history[1].status, history[1].scope, history[1].host.as_str()),
            (Status::Rejected, Scope::Gateway, "c.test")
        );
        assert_eq!(history[1].decided_by.as_deref(), Some("alice"));

        // A foreign tool's malformed response: an error for the waiting gateway.
        let fourth = Proposal::new("demo", payload("d.test"));
        store.write_proposal(&fourth).unwrap();
        assert_eq!(store.pending_ids().unwrap(), vec![fourth.id.clone()]);
        inject_raw(&fourth.id, "perhaps");
        assert!(matches!(store.read_response(&fourth.id), Err(StoreError::Malformed { .. })));

        // At a start, whatever is still open is abandoned.
        let fifth = Proposal::new("demo", payload("e.test"));
        store.write_proposal(&fifth).unwrap();
        // The third and fourth were answered but never closed (no hold waited on them).
        assert_eq!(store.close_stale().unwrap(), 3, "the third, fourth and fifth");
        assert!(store.pending().unwrap().is_empty());
        assert_eq!(store.closed(&fifth.id).unwrap(), Some(Closed::Abandoned));
        assert_eq!(store.close_stale().unwrap(), 0);

        // Counters add up.
        store.bump("refused_over_cap", 2).unwrap();
        store.bump("refused_over_cap", 3).unwrap();
        assert_eq!(store.counters().unwrap().get("refused_over_cap"), Some(&5));
    }

    #[test]
    fn refuses_writable_or_missing_locations() {
        let dir = temp_dir("perm");
        check_private_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o770)).unwrap();
        let err = check_private_dir(&dir).unwrap_err();
        assert!(err.to_string().contains("group- or world-writable"), "{err}");
        assert!(check_private_file(&dir.join("missing.db")).is_err());
    }
}
