//! The seeds' queue directory: `<id>.json` proposals, `<id>.response.json` responses,
//! both moved to `processed/` once the hold ends. Every file is written atomically (temp
//! file, fsync, rename; a response by link, so two operators cannot both decide).
use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use super::{
    protocol::{self, AuditEntry, Proposal, Response},
    store::{self, Store, StoreError},
};

#[derive(Debug, Clone)]
pub struct QueueDir {
    dir: PathBuf,
}

impl QueueDir {
    /// Creates the directory (0700) and `processed/` if missing, and refuses one a bottle
    /// could write to. The gateway's way in.
    pub fn prepare(dir: impl Into<PathBuf>) -> Result<QueueDir, StoreError> {
        let q = QueueDir { dir: dir.into() };
        store::prepare_private_dir(&q.dir)?;
        fs::create_dir_all(q.processed()).map_err(|e| q.io(&q.processed(), e))?;
        Ok(q)
    }

    /// An existing queue, checked but not created: the operator's way in. A missing
    /// directory is `None` (nothing was ever proposed).
    pub fn open_existing(dir: impl Into<PathBuf>) -> Result<Option<QueueDir>, StoreError> {
        let q = QueueDir { dir: dir.into() };
        if !q.dir.exists() {
            return Ok(None);
        }
        store::check_private_dir(&q.dir)?;
        Ok(Some(q))
    }

    fn io(&self, path: &Path, e: std::io::Error) -> StoreError {
        StoreError::Io { path: path.to_path_buf(), reason: e.to_string() }
    }

    fn processed(&self) -> PathBuf {
        self.dir.join("processed")
    }

    fn proposal_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn response_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.response.json"))
    }

    fn archived(&self, path: &Path) -> PathBuf {
        self.processed().join(path.file_name().expect("has a name"))
    }

    fn read_proposal_file(&self, path: &Path) -> Result<Option<Proposal>, StoreError> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Io { path: path.to_path_buf(), reason: format!("not a proposal: {e}") }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(path, e)),
        }
    }

    fn read_response_file(&self, id: &str, path: &Path) -> Result<Option<Response>, StoreError> {
        match fs::read(path) {
            Ok(bytes) => protocol::parse_response(&bytes)
                .map(Some)
                .map_err(|reason| StoreError::Malformed { id: id.to_string(), reason }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(path, e)),
        }
    }

    /// Ids of the `<id>.json` proposals in `dir`.
    fn proposal_ids(&self, dir: &Path) -> Result<Vec<String>, StoreError> {
        let entries = fs::read_dir(dir).map_err(|e| self.io(dir, e))?;
        Ok(entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".json")
                    .filter(|id| !id.ends_with(".response") && !id.starts_with('.'))
                    .map(str::to_string)
            })
            .collect())
    }
}

impl Store for QueueDir {
    fn location(&self) -> &Path {
        &self.dir
    }

    fn write_proposal(&self, p: &Proposal) -> Result<(), StoreError> {
        let path = self.proposal_path(&p.id);
        let tmp = write_temp(&path, &serde_json::to_vec_pretty(p).unwrap_or_default())?;
        fs::rename(&tmp, &path).map_err(|e| self.io(&path, e))
    }

    fn pending(&self) -> Result<Vec<Proposal>, StoreError> {
        let mut out = Vec::new();
        for id in self.proposal_ids(&self.dir)? {
            if self.response_path(&id).exists() {
                continue;
            }
            // A half-written or foreign file is not a proposal; skip it.
            if let Ok(Some(p)) = self.read_proposal_file(&self.proposal_path(&id)) {
                out.push(p);
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    fn proposal(&self, id: &str) -> Result<Option<Proposal>, StoreError> {
        let path = self.proposal_path(id);
        match self.read_proposal_file(&path)? {
            Some(p) => Ok(Some(p)),
            None => self.read_proposal_file(&self.archived(&path)),
        }
    }

    fn write_response(&self, id: &str, r: &Response) -> Result<(), StoreError> {
        let (proposal, response) = (self.proposal_path(id), self.response_path(id));
        if !proposal.exists() {
            return Err(if self.archived(&response).exists() {
                StoreError::AlreadyDecided(id.to_string())
            } else if self.archived(&proposal).exists() {
                StoreError::Closed(id.to_string())
            } else {
                StoreError::UnknownId(id.to_string())
            });
        }
        let tmp = write_temp(&response, &serde_json::to_vec_pretty(r).unwrap_or_default())?;
        // A link fails if the response exists: the first decision wins, atomically.
        let linked = fs::hard_link(&tmp, &response);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(StoreError::AlreadyDecided(id.to_string())),
            Err(e) => Err(self.io(&response, e)),
        }
    }

    fn read_response(&self, id: &str) -> Result<Option<Response>, StoreError> {
        self.read_response_file(id, &self.response_path(id))
    }

    fn archive(&self, id: &str) -> Result<(), StoreError> {
        // The response first: a proposal in processed/ without its response reads as
        // "closed without a decision".
        for path in [self.response_path(id), self.proposal_path(id)] {
            if path.exists() {
                fs::rename(&path, self.archived(&path)).map_err(|e| self.io(&path, e))?;
            }
        }
        Ok(())
    }

    /// Derived from the responses, in `processed/` and not yet archived.
    fn history(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let mut out = Vec::new();
        for dir in [self.processed(), self.dir.clone()] {
            if !dir.exists() {
                continue;
            }
            for id in self.proposal_ids(&dir)? {
                let Ok(Some(p)) = self.read_proposal_file(&dir.join(format!("{id}.json"))) else { continue };
                let path = dir.join(format!("{id}.response.json"));
                // A malformed response was no decision.
                if let Ok(Some(r)) = self.read_response_file(&id, &path) {
                    // decided_at has a second's resolution: the file's time orders ties.
                    let written = fs::metadata(&path).and_then(|m| m.modified()).ok();
                    out.push((r.decided_at, written, AuditEntry::new(&p, &r)));
                }
            }
        }
        out.sort_by_key(|(at, written, _)| (*at, *written));
        Ok(out.into_iter().map(|(_, _, e)| e).collect())
    }
}

/// Writes `data` to a hidden temporary file (0600, fsynced) next to `path`.
fn write_temp(path: &Path, data: &[u8]) -> Result<PathBuf, StoreError> {
    let err = |e: std::io::Error| StoreError::Io { path: path.to_path_buf(), reason: e.to_string() };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("x");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", rand::random::<u32>()));
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    Ok(tmp)
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
            fs::write(dir.join(format!("{id}.response.json")), format!("{{\"status\": \"{status}\"}}")).unwrap()
        });
        // Every file is private.
        for e in fs::read_dir(dir.join("processed")).unwrap().flatten() {
            assert_eq!(e.metadata().unwrap().permissions().mode() & 0o077, 0, "{:?}", e.path());
        }
    }

    #[test]
    fn refuses_a_writable_queue_directory_and_reads_a_missing_one_as_empty() {
        let dir = temp_dir("queue-perm");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(QueueDir::prepare(&dir), Err(StoreError::Unsafe { .. })));
        assert!(matches!(QueueDir::open_existing(&dir), Err(StoreError::Unsafe { .. })));
        assert!(QueueDir::open_existing(dir.join("never-created")).unwrap().is_none());
    }
}
