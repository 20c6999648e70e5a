//! The seeds' queue directory: `<id>.json` proposals, `<id>.response.json` responses,
//! both moved to `processed/` once the hold ends. Every file is written atomically (temp
//! file, fsync, rename; a response by link, so two operators cannot both decide).
//!
//! A proposal is written as bot-bottle's own record (`BotBottleRecord`), so its
//! supervisor reads it: nothing but that record's keys is in the file. How a hold ended
//! goes to a file of its own in `processed/` (`<id>.closed`), not into the record.
//!
//! The directory is opened once, from `/` down without following a symbolic link, and
//! refused when it or any directory above it could be written by someone else than root
//! and the gateway's user (`open_private_dir`). Every later step is relative to that
//! handle (`openat`, `renameat`, `linkat`, `unlinkat`): a bottle that could rename the
//! queue away and make its own in its place would still not be read from or written to.
use std::{
    ffi::OsStr,
    fs,
    io::{Read, Write},
    os::fd::OwnedFd,
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, openat, renameat},
    sys::stat::{FileStat, Mode, fstat, fstatat, mkdirat},
    unistd::{UnlinkatFlags, linkat, unlinkat},
};

use super::{
    protocol::{self, AuditEntry, Closed, Proposal, Response},
    store::{Store, StoreError},
};

/// The queue directory, opened once: every later step goes through the handles, never by
/// path again, so renaming the directory (or a directory above it) and putting another
/// in its place redirects nothing.
#[derive(Debug, Clone)]
pub struct QueueDir {
    /// For messages only.
    dir: PathBuf,
    fd: Arc<OwnedFd>,
    /// `processed/`; `None` when an operator opens a queue the gateway has not archived to.
    processed: Option<Arc<OwnedFd>>,
    /// One writer of the counters file at a time.
    counters_lock: Arc<std::sync::Mutex<()>>,
}

/// Which of the queue's two directories.
#[derive(Clone, Copy)]
enum Where {
    Queue,
    Processed,
}

const PROCESSED: &str = "processed";
/// Beside a proposal in `processed/`: how its hold ended, as JSON (`closed`, `closed_at`).
const CLOSED_SUFFIX: &str = ".closed";

/// bot-bottle's proposal record (`Proposal.new(bottle_slug=..., tool=...,
/// proposed_file=..., justification=..., current_file_hash=...)` in its egress addon),
/// key for key. `proposed_file` is the text payload; `current_file_hash` its SHA-256;
/// `created_at` is an RFC 3339 UTC time.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct BotBottleRecord {
    id: String,
    bottle_slug: String,
    tool: String,
    proposed_file: String,
    justification: String,
    current_file_hash: String,
    #[serde(default)]
    created_at: Option<String>,
}

impl BotBottleRecord {
    fn from_proposal(p: &Proposal) -> Self {
        BotBottleRecord {
            id: p.id.clone(),
            bottle_slug: p.bottle.clone(),
            tool: p.tool.clone(),
            proposed_file: p.payload.text(),
            justification: p.justification.clone(),
            current_file_hash: p.payload_hash.clone(),
            created_at: Some(protocol::format_time(p.created_at)),
        }
    }

    fn into_proposal(self) -> Result<Proposal, String> {
        Ok(Proposal {
            payload: protocol::Payload::from_text(&self.proposed_file)?,
            id: self.id,
            bottle: self.bottle_slug,
            tool: self.tool,
            justification: self.justification,
            payload_hash: self.current_file_hash,
            created_at: self.created_at.as_deref().and_then(protocol::parse_time).unwrap_or(0),
        })
    }
}

/// A proposal file: bot-bottle's record, or (read only) the record this gateway wrote
/// before it wrote bot-bottle's.
fn parse_proposal(bytes: &[u8]) -> Result<Proposal, String> {
    match serde_json::from_slice::<BotBottleRecord>(bytes) {
        Ok(record) => record.into_proposal(),
        Err(e) => serde_json::from_slice::<Proposal>(bytes).map_err(|_| e.to_string()),
    }
}
/// The gateway's counters for this bottle (hidden, not `.json`: no reader of the queue
/// mistakes it for a proposal).
const COUNTERS: &str = ".counters";

impl QueueDir {
    /// Opens (creating it 0700 if missing) the directory and `processed/`, and refuses one
    /// a bottle could write to or swap. The gateway's way in.
    pub fn prepare(dir: impl Into<PathBuf>) -> Result<QueueDir, StoreError> {
        let dir = dir.into();
        let fd = open_private_dir(&dir, true)?.expect("created");
        let processed = open_child(&dir, &fd, true)?.map(Arc::new);
        Ok(QueueDir { dir, fd: Arc::new(fd), processed, counters_lock: Default::default() })
    }

    /// An existing queue, checked but not created: the operator's way in. A missing
    /// directory is `None` (nothing was ever proposed).
    pub fn open_existing(dir: impl Into<PathBuf>) -> Result<Option<QueueDir>, StoreError> {
        let dir = dir.into();
        let Some(fd) = open_private_dir(&dir, false)? else { return Ok(None) };
        let processed = open_child(&dir, &fd, false)?.map(Arc::new);
        Ok(Some(QueueDir { dir, fd: Arc::new(fd), processed, counters_lock: Default::default() }))
    }

    fn io(&self, name: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io { path: self.dir.join(name), reason: e.to_string() }
    }

    fn handle(&self, at: Where) -> Option<&OwnedFd> {
        match at {
            Where::Queue => Some(&self.fd),
            Where::Processed => self.processed.as_deref(),
        }
    }

    fn shown(at: Where, name: &str) -> String {
        match at {
            Where::Queue => name.to_string(),
            Where::Processed => format!("{PROCESSED}/{name}"),
        }
    }

    /// A file's bytes, `None` if it is not there. A symbolic link is not followed.
    fn read_at(&self, at: Where, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(dir) = self.handle(at) else { return Ok(None) };
        match openat(dir, name, OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty()) {
            Ok(fd) => {
                let mut bytes = Vec::new();
                fs::File::from(fd).read_to_end(&mut bytes).map_err(|e| self.io(&Self::shown(at, name), e))?;
                Ok(Some(bytes))
            }
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(self.io(&Self::shown(at, name), e)),
        }
    }

    fn stat_at(&self, at: Where, name: &str) -> Option<FileStat> {
        fstatat(self.handle(at)?, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).ok()
    }

    fn exists_at(&self, at: Where, name: &str) -> bool {
        self.stat_at(at, name).is_some()
    }

    /// Writes `data` to a hidden temporary file (0600, fsynced) in the queue directory;
    /// returns its name.
    fn write_temp(&self, name: &str, data: &[u8]) -> Result<String, StoreError> {
        let tmp = format!(".{name}.{}.tmp", rand::random::<u32>());
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd =
            openat(&*self.fd, tmp.as_str(), flags, Mode::from_bits_truncate(0o600)).map_err(|e| self.io(name, e))?;
        let mut f = fs::File::from(fd);
        f.write_all(data).map_err(|e| self.io(name, e))?;
        f.sync_all().map_err(|e| self.io(name, e))?;
        Ok(tmp)
    }

    /// Names of the `<id>.json` proposals in one of the directories.
    fn proposal_ids(&self, at: Where) -> Result<Vec<String>, StoreError> {
        let Some(dir) = self.handle(at) else { return Ok(Vec::new()) };
        let shown = Self::shown(at, "");
        let mut listing =
            nix::dir::Dir::openat(dir, ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| self.io(&shown, e))?;
        Ok(listing
            .iter()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".json")
                    .filter(|id| !id.ends_with(".response") && !id.starts_with('.'))
                    .map(str::to_string)
            })
            .collect())
    }

    fn read_proposal(&self, at: Where, id: &str) -> Result<Option<Proposal>, StoreError> {
        let name = format!("{id}.json");
        match self.read_at(at, &name)? {
            Some(bytes) => parse_proposal(&bytes)
                .map(Some)
                .map_err(|e| self.io(&Self::shown(at, &name), format!("not a proposal: {e}"))),
            None => Ok(None),
        }
    }

    fn read_response_at(&self, at: Where, id: &str) -> Result<Option<Response>, StoreError> {
        match self.read_at(at, &format!("{id}.response.json"))? {
            Some(bytes) => protocol::parse_response(&bytes)
                .map(Some)
                .map_err(|reason| StoreError::Malformed { id: id.to_string(), reason }),
            None => Ok(None),
        }
    }
}

/// An id is a file name in the queue, never a path.
fn valid_id(id: &str) -> Result<(), StoreError> {
    if id.is_empty() || id.starts_with('.') || id.contains(['/', '\0']) {
        return Err(StoreError::UnknownId(id.to_string()));
    }
    Ok(())
}

fn unsafe_path(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Unsafe { path: path.to_path_buf(), reason: reason.into() }
}

/// A directory above the queue may be written only by root or the gateway's user:
/// whoever else can write there can rename the queue away and put their own in its
/// place (a sticky directory such as /tmp is no exception: the bottle's own entries
/// there are its to rename).
fn check_ancestor(path: &Path, st: &FileStat) -> Result<(), StoreError> {
    let me = nix::unistd::geteuid().as_raw();
    if st.st_mode & 0o022 != 0 || (st.st_uid != 0 && st.st_uid != me) {
        return Err(unsafe_path(
            path,
            format!(
                "this directory above the supervise queue (mode {:o}, owner uid {}) is writable by others than root \
                 and the gateway's user, so a bottle could rename the queue away and put its own in its place \
                 (sticky directories such as /tmp included); put the queue under directories only root can write, \
                 e.g. /var/lib/egress-gateway",
                st.st_mode & 0o7777,
                st.st_uid
            ),
        ));
    }
    Ok(())
}

/// The queue directory itself: not group- or world-writable, owned by the gateway's user.
fn check_queue(path: &Path, st: &FileStat) -> Result<(), StoreError> {
    if st.st_mode & 0o022 != 0 {
        return Err(unsafe_path(path, "it is group- or world-writable, so a bottle could write to it (chmod 700 it)"));
    }
    if st.st_uid != nix::unistd::geteuid().as_raw() {
        return Err(unsafe_path(
            path,
            format!("it is owned by uid {}, not by the gateway's user (chown it)", st.st_uid),
        ));
    }
    Ok(())
}

fn link_refused(path: &Path) -> StoreError {
    unsafe_path(
        path,
        "it is a symbolic link or not a directory: the queue directory and every directory above it must be real \
         directories (a link could be swapped); name the real path",
    )
}

/// Opens `path` without following any symbolic link, from `/` down, refusing a
/// directory above it that others could write and a queue directory a bottle could
/// write. With `create`, missing directories are made (the queue itself 0700).
/// `None`: it does not exist (and `create` is false).
fn open_private_dir(path: &Path, create: bool) -> Result<Option<OwnedFd>, StoreError> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_err(|e| unsafe_path(path, e.to_string()))?.join(path)
    };
    let mut names: Vec<&OsStr> = Vec::new();
    for c in abs.components() {
        match c {
            Component::Normal(n) => names.push(n),
            Component::ParentDir => {
                return Err(unsafe_path(path, "name the queue directory without `..`"));
            }
            _ => {}
        }
    }
    let Some((last, above)) = names.split_last() else {
        return Err(unsafe_path(path, "the root directory cannot be a queue directory"));
    };
    let mut at = PathBuf::from("/");
    let mut fd = nix::fcntl::open("/", OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| unsafe_path(&at, e.to_string()))?;
    check_ancestor(&at, &fstat(&fd).map_err(|e| unsafe_path(&at, e.to_string()))?)?;
    let open_flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    for (i, name) in above.iter().chain([last]).enumerate() {
        let is_queue = i == above.len();
        at.push(name);
        let flags = if is_queue { open_flags | OFlag::O_RDONLY } else { open_flags | OFlag::O_PATH };
        let opened = match openat(&fd, *name, flags, Mode::empty()) {
            Err(Errno::ENOENT) if create => {
                let mode = if is_queue { 0o700 } else { 0o755 };
                match mkdirat(&fd, *name, Mode::from_bits_truncate(mode)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(StoreError::Io { path: at, reason: e.to_string() }),
                }
                openat(&fd, *name, flags, Mode::empty())
            }
            other => other,
        };
        let next = match opened {
            Ok(next) => next,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(link_refused(&at)),
            Err(e) => return Err(unsafe_path(&at, e.to_string())),
        };
        let st = fstat(&next).map_err(|e| unsafe_path(&at, e.to_string()))?;
        if is_queue {
            check_queue(&at, &st)?
        } else {
            check_ancestor(&at, &st)?
        }
        fd = next;
    }
    Ok(Some(fd))
}

/// `processed/` inside the opened queue (created with `create`), without following a link.
fn open_child(dir: &Path, queue: &OwnedFd, create: bool) -> Result<Option<OwnedFd>, StoreError> {
    let path = dir.join(PROCESSED);
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    if create {
        match mkdirat(queue, PROCESSED, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(StoreError::Io { path, reason: e.to_string() }),
        }
    }
    match openat(queue, PROCESSED, flags, Mode::empty()) {
        Ok(fd) => {
            let st = fstat(&fd).map_err(|e| unsafe_path(&path, e.to_string()))?;
            check_queue(&path, &st)?;
            Ok(Some(fd))
        }
        Err(Errno::ENOENT) => Ok(None),
        Err(Errno::ELOOP | Errno::ENOTDIR) => Err(link_refused(&path)),
        Err(e) => Err(StoreError::Io { path, reason: e.to_string() }),
    }
}

impl Store for QueueDir {
    fn location(&self) -> &Path {
        &self.dir
    }

    fn write_proposal(&self, p: &Proposal) -> Result<(), StoreError> {
        valid_id(&p.id)?;
        let name = format!("{}.json", p.id);
        let record = serde_json::to_vec_pretty(&BotBottleRecord::from_proposal(p)).unwrap_or_default();
        let tmp = self.write_temp(&name, &record)?;
        renameat(&*self.fd, tmp.as_str(), &*self.fd, name.as_str()).map_err(|e| {
            let _ = unlinkat(&*self.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            self.io(&name, e)
        })
    }

    fn pending(&self) -> Result<Vec<Proposal>, StoreError> {
        let mut out = Vec::new();
        for id in self.proposal_ids(Where::Queue)? {
            if self.exists_at(Where::Queue, &format!("{id}.response.json")) {
                continue;
            }
            // A half-written file, or another tool's proposal (the queue may be shared
            // with bot-bottle's other daemons), is not ours; skip it.
            if let Ok(Some(p)) = self.read_proposal(Where::Queue, &id)
                && p.tool == protocol::TOOL
            {
                out.push(p);
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    fn proposal(&self, id: &str) -> Result<Option<Proposal>, StoreError> {
        if valid_id(id).is_err() {
            return Ok(None);
        }
        let name = format!("{id}.json");
        let bytes = match self.read_at(Where::Queue, &name)? {
            Some(b) => b,
            None => match self.read_at(Where::Processed, &name)? {
                Some(b) => b,
                None => return Ok(None),
            },
        };
        // Another tool's proposal in a shared queue (or a file that is no proposal) is
        // not this gateway's.
        Ok(parse_proposal(&bytes).ok().filter(|p| p.tool == protocol::TOOL))
    }

    fn write_response(&self, id: &str, r: &Response) -> Result<(), StoreError> {
        valid_id(id)?;
        let (proposal, response) = (format!("{id}.json"), format!("{id}.response.json"));
        if !self.exists_at(Where::Queue, &proposal) {
            return Err(if self.exists_at(Where::Processed, &response) {
                StoreError::AlreadyDecided(id.to_string())
            } else if self.exists_at(Where::Processed, &proposal) {
                StoreError::Closed { id: id.to_string(), why: self.closed(id)? }
            } else {
                StoreError::UnknownId(id.to_string())
            });
        }
        let tmp = self.write_temp(&response, &serde_json::to_vec_pretty(r).unwrap_or_default())?;
        // A link fails if the response exists: the first decision wins, atomically.
        let linked = linkat(&*self.fd, tmp.as_str(), &*self.fd, response.as_str(), nix::fcntl::AtFlags::empty());
        let _ = unlinkat(&*self.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        match linked {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => Err(StoreError::AlreadyDecided(id.to_string())),
            Err(e) => Err(self.io(&response, e)),
        }
    }

    fn read_response(&self, id: &str) -> Result<Option<Response>, StoreError> {
        valid_id(id)?;
        self.read_response_at(Where::Queue, id)
    }

    fn close(&self, id: &str, why: Closed) -> Result<(), StoreError> {
        valid_id(id)?;
        let Some(processed) = self.processed.as_deref() else {
            return Err(self.io(PROCESSED, "missing (the gateway creates it)"));
        };
        // The response first: a proposal in processed/ without its response reads as
        // "closed without a decision".
        let response = format!("{id}.response.json");
        if self.exists_at(Where::Queue, &response) {
            renameat(&*self.fd, response.as_str(), processed, response.as_str()).map_err(|e| self.io(&response, e))?;
        }
        let name = format!("{id}.json");
        if !self.exists_at(Where::Queue, &name) {
            return Ok(());
        }
        // How the hold ended first, in a file of its own (the record stays bot-bottle's,
        // key for key), then the proposal itself.
        let closed = format!("{id}{CLOSED_SUFFIX}");
        let note = serde_json::json!({"closed": why.as_str(), "closed_at": protocol::now()});
        let tmp = self.write_temp(&closed, &serde_json::to_vec_pretty(&note).unwrap_or_default())?;
        renameat(&*self.fd, tmp.as_str(), processed, closed.as_str()).map_err(|e| {
            let _ = unlinkat(&*self.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            self.io(&closed, e)
        })?;
        match renameat(&*self.fd, name.as_str(), processed, name.as_str()) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(self.io(&name, e)),
        }
    }

    fn closed(&self, id: &str) -> Result<Option<Closed>, StoreError> {
        if valid_id(id).is_err() {
            return Ok(None);
        }
        // A proposal archived by an earlier version carries `closed` itself.
        let note = match self.read_at(Where::Processed, &format!("{id}{CLOSED_SUFFIX}"))? {
            Some(bytes) => bytes,
            None => match self.read_at(Where::Processed, &format!("{id}.json"))? {
                Some(bytes) => bytes,
                None => return Ok(None),
            },
        };
        let record: serde_json::Value = serde_json::from_slice(&note).unwrap_or_default();
        Ok(record.get("closed").and_then(|c| c.as_str()).and_then(|c| c.parse().ok()))
    }

    fn close_stale(&self) -> Result<usize, StoreError> {
        // Only this gateway's proposals: bot-bottle's queue is shared by its other
        // daemons (git-gate's `gitleaks-allow`), whose proposals are not ours to close.
        let mut closed = 0;
        for id in self.proposal_ids(Where::Queue)? {
            if matches!(self.read_proposal(Where::Queue, &id), Ok(Some(p)) if p.tool == protocol::TOOL) {
                self.close(&id, Closed::Abandoned)?;
                closed += 1;
            }
        }
        Ok(closed)
    }

    fn pending_ids(&self) -> Result<Vec<String>, StoreError> {
        let mut ids = self.proposal_ids(Where::Queue)?;
        ids.retain(|id| !self.exists_at(Where::Queue, &format!("{id}.response.json")));
        Ok(ids)
    }

    fn bump(&self, name: &str, delta: u64) -> Result<(), StoreError> {
        let _one_writer = self.counters_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut counters = self.counters()?;
        *counters.entry(name.to_string()).or_default() += delta;
        let tmp = self.write_temp(COUNTERS, &serde_json::to_vec_pretty(&counters).unwrap_or_default())?;
        renameat(&*self.fd, tmp.as_str(), &*self.fd, COUNTERS).map_err(|e| {
            let _ = unlinkat(&*self.fd, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            self.io(COUNTERS, e)
        })
    }

    fn counters(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        match self.read_at(Where::Queue, COUNTERS)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| self.io(COUNTERS, format!("not counters: {e}"))),
            None => Ok(Default::default()),
        }
    }

    /// Derived from the responses, in `processed/` and not yet archived.
    fn history(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let mut out = Vec::new();
        for at in [Where::Processed, Where::Queue] {
            for id in self.proposal_ids(at)? {
                let Ok(Some(p)) = self.read_proposal(at, &id) else { continue };
                // A malformed response was no decision.
                if let Ok(Some(r)) = self.read_response_at(at, &id) {
                    // decided_at has a second's resolution: the file's time orders ties.
                    let written =
                        self.stat_at(at, &format!("{id}.response.json")).map(|st| (st.st_mtime, st.st_mtime_nsec));
                    out.push((r.decided_at, written, AuditEntry::new(&p, &r)));
                }
            }
        }
        out.sort_by_key(|(at, written, _)| (*at, *written));
        Ok(out.into_iter().map(|(_, _, e)| e).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::supervise::store::tests::{protocol_suite, temp_dir};

    #[test]
    fn queue_directory_passes_the_protocol_suite() {
        let dir = temp_dir("queue");
        let q = QueueDir::prepare(&dir).unwrap();
        protocol_suite(&q, &|id, status| {
            let path = dir.join(format!("{id}.response.json"));
            fs::write(&path, format!("{{\"status\": \"{status}\"}}")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        });
        // Every file is private.
        for e in fs::read_dir(dir.join("processed")).unwrap().flatten() {
            assert_eq!(e.metadata().unwrap().permissions().mode() & 0o077, 0, "{:?}", e.path());
        }
    }

    #[test]
    fn a_proposal_is_written_as_bot_bottles_record_and_nothing_else() {
        let dir = temp_dir("queue-record");
        let q = QueueDir::prepare(&dir).unwrap();
        let mut p = Proposal::new("slug-1", crate::supervise::store::tests::payload("a.test"));
        p.created_at = 1_782_331_970;
        q.write_proposal(&p).unwrap();
        let record: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join(format!("{}.json", p.id))).unwrap()).unwrap();
        let keys: Vec<&str> = record.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["bottle_slug", "created_at", "current_file_hash", "id", "justification", "proposed_file", "tool"]
        );
        assert_eq!((record["id"].as_str(), record["bottle_slug"].as_str()), (Some(p.id.as_str()), Some("slug-1")));
        assert_eq!(record["tool"], "egress-token-allow");
        assert_eq!(record["created_at"], "2026-06-24T20:12:50Z");
        let text = record["proposed_file"].as_str().unwrap();
        assert!(text.starts_with("egress blocked an outbound request carrying a detected token\nhost: a.test\n"));
        use sha2::Digest;
        assert_eq!(record["current_file_hash"], hex::encode(sha2::Sha256::digest(text)));
        assert_eq!(q.proposal(&p.id).unwrap(), Some(p.clone()), "read back whole");
        // Closed: the record is moved as it is; how the hold ended is beside it.
        q.close(&p.id, Closed::Timeout).unwrap();
        let moved: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("processed").join(format!("{}.json", p.id))).unwrap()).unwrap();
        assert_eq!(moved, record);
        assert_eq!(q.closed(&p.id).unwrap(), Some(Closed::Timeout));
    }

    #[test]
    fn another_tools_proposals_in_a_shared_queue_are_left_alone() {
        let dir = temp_dir("queue-shared");
        let q = QueueDir::prepare(&dir).unwrap();
        // git-gate's proposal in bot-bottle's queue of the same bottle.
        let foreign = serde_json::json!({"id": "gl-1", "bottle_slug": "slug-1", "tool": "gitleaks-allow",
            "proposed_file": "gitleaks found 1 leak", "justification": "x", "current_file_hash": "00"});
        fs::write(dir.join("gl-1.json"), foreign.to_string()).unwrap();
        let ours = Proposal::new("slug-1", crate::supervise::store::tests::payload("a.test"));
        q.write_proposal(&ours).unwrap();
        assert_eq!(q.pending().unwrap(), vec![ours.clone()]);
        assert_eq!(q.proposal("gl-1").unwrap(), None);
        assert_eq!(q.close_stale().unwrap(), 1, "only ours");
        assert!(dir.join("gl-1.json").exists(), "another tool's proposal was moved");
        assert_eq!(q.closed(&ours.id).unwrap(), Some(Closed::Abandoned));
    }

    fn refused(r: Result<impl std::fmt::Debug, StoreError>, why: &str) -> String {
        match r {
            Err(e @ StoreError::Unsafe { .. }) if e.to_string().contains(why) => e.to_string(),
            other => panic!("expected a refusal saying {why:?}, got {other:?}"),
        }
    }

    #[test]
    fn a_symlinked_queue_directory_is_refused() {
        let base = temp_dir("queue-link");
        let real = base.join("real");
        QueueDir::prepare(&real).unwrap();
        std::os::unix::fs::symlink(&real, base.join("q")).unwrap();
        refused(QueueDir::prepare(base.join("q")), "symbolic link");
        refused(QueueDir::open_existing(base.join("q")), "symbolic link");
        // A link above the queue too.
        std::os::unix::fs::symlink(&base, base.join("up")).unwrap();
        refused(QueueDir::open_existing(base.join("up/real")), "symbolic link");
        // And a link in place of processed/.
        let other = base.join("other");
        fs::create_dir(&other).unwrap();
        fs::set_permissions(&other, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&real, other.join("processed")).unwrap();
        refused(QueueDir::prepare(&other), "symbolic link");
    }

    #[test]
    fn a_queue_under_a_directory_others_can_write_is_refused() {
        for mode in [0o775, 0o757, 0o1777] {
            let base = temp_dir("queue-parent");
            let parent = base.join("parent");
            fs::create_dir(&parent).unwrap();
            let q = parent.join("q");
            QueueDir::prepare(&q).unwrap();
            fs::set_permissions(&parent, fs::Permissions::from_mode(mode)).unwrap();
            let why = refused(QueueDir::open_existing(&q), "writable by others than root");
            assert!(why.starts_with(&parent.display().to_string()), "names the directory: {why}");
            refused(QueueDir::prepare(&q), "rename the queue away");
        }
        // /tmp is sticky and world-writable: refused too.
        if std::path::Path::new("/tmp").exists() {
            let q = std::env::temp_dir().join(format!("egress-sup-tmpq-{}", std::process::id()));
            refused(QueueDir::prepare(&q), "writable by others than root");
            assert!(!q.exists(), "nothing is created under a refused directory");
        }
    }

    #[test]
    fn renaming_the_queue_after_open_redirects_nothing() {
        let base = temp_dir("queue-swap");
        let path = base.join("q");
        let q = QueueDir::prepare(&path).unwrap();
        let p = Proposal::new("demo", crate::supervise::store::tests::payload("a.test"));
        q.write_proposal(&p).unwrap();
        // The swap: the real queue renamed away, a forged one in its place, approving.
        fs::rename(&path, base.join("moved")).unwrap();
        fs::create_dir(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(path.join(format!("{}.json", p.id)), serde_json::to_vec(&p).unwrap()).unwrap();
        fs::write(path.join(format!("{}.response.json", p.id)), br#"{"status":"approved"}"#).unwrap();
        assert_eq!(q.read_response(&p.id).unwrap(), None, "the forged response is not read");
        assert_eq!(q.pending().unwrap().len(), 1);
        // Writes go to the opened directory, wherever it now is.
        q.write_response(&p.id, &Response::by_operator(protocol::Status::Rejected, "no", None)).unwrap();
        assert!(base.join("moved").join(format!("{}.response.json", p.id)).exists());
        q.close(&p.id, Closed::Decided).unwrap();
        assert!(base.join("moved/processed").join(format!("{}.json", p.id)).exists());
        assert!(path.join(format!("{}.response.json", p.id)).exists(), "the forged queue is untouched");
        assert_eq!(q.history().unwrap()[0].status, protocol::Status::Rejected);
    }

    #[test]
    fn refuses_a_writable_queue_directory_and_reads_a_missing_one_as_empty() {
        let dir = temp_dir("queue-perm");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(QueueDir::prepare(&dir), Err(StoreError::Unsafe { .. })));
        assert!(matches!(QueueDir::open_existing(&dir), Err(StoreError::Unsafe { .. })));
        assert!(QueueDir::open_existing(temp_dir("queue-none").join("never-created")).unwrap().is_none());
    }
}
