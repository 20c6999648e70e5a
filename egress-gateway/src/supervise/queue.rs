//! The supervise queue protocol (the seeds' directory of JSON files): proposal and
//! response records, and the directory store. Files are written atomically (temp file,
//! fsync, rename); decided proposals move to `processed/` with their responses.
use std::{
    fs,
    io::Write,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const TOOL: &str = "egress-token-allow";
const JUSTIFICATION: &str = "The agent's request contains a value that looks like a secret. Approve only if \
    sending this value to this host is intended (for example a credential meant for this service); the value \
    is then allowed for the rest of the gateway's life. Reject if unsure.";

/// What the operator sees: never the raw value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub host: String,
    pub method: String,
    pub path: String,
    pub reason: String,
    /// The surroundings of the match, the match replaced by `********`.
    pub context: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub id: String,
    pub bottle: String,
    pub tool: String,
    pub payload: Payload,
    pub justification: String,
    /// SHA-256 of the payload's JSON, so a response can be tied to what was shown.
    pub payload_hash: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

impl Proposal {
    pub fn new(bottle: &str, payload: Payload) -> Proposal {
        let hash = hex::encode(Sha256::digest(serde_json::to_vec(&payload).unwrap_or_default()));
        Proposal {
            id: uuid::Uuid::new_v4().to_string(),
            bottle: bottle.to_string(),
            tool: TOOL.to_string(),
            payload,
            justification: JUSTIFICATION.to_string(),
            payload_hash: hash,
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Approved,
    Modified,
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub status: Status,
    #[serde(default)]
    pub notes: String,
    #[serde(default)]
    pub decided_by: Option<String>,
    #[serde(default)]
    pub decided_at: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("response {path} is not a valid response (status approved|modified|rejected): {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("queue directory {path} is unsafe: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error("no pending proposal {0}")]
    UnknownId(String),
}

/// Parses a response file's contents; anything but a known status is an error.
pub fn parse_response(path: &Path, bytes: &[u8]) -> Result<Response, QueueError> {
    serde_json::from_slice(bytes).map_err(|e| QueueError::Malformed { path: path.to_path_buf(), reason: e.to_string() })
}

/// The seeds' queue directory: `<id>.json`, `<id>.response.json`, `processed/`.
#[derive(Debug, Clone)]
pub struct QueueDir {
    dir: PathBuf,
}

impl QueueDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        QueueDir { dir: dir.into() }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory (0700) if missing and refuses one a bottle could write to:
    /// group- or world-writable, or owned by another user.
    pub fn prepare(&self) -> Result<(), QueueError> {
        let io = |e: std::io::Error| QueueError::Io { path: self.dir.clone(), reason: e.to_string() };
        if !self.dir.exists() {
            fs::create_dir_all(&self.dir).map_err(io)?;
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        fs::create_dir_all(self.dir.join("processed")).map_err(io)?;
        let meta = fs::metadata(&self.dir).map_err(io)?;
        if meta.mode() & 0o022 != 0 {
            return Err(QueueError::Unsafe {
                path: self.dir.clone(),
                reason: "it is group- or world-writable (chmod 700 it)".into(),
            });
        }
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(QueueError::Unsafe { path: self.dir.clone(), reason: "it is owned by another user".into() });
        }
        Ok(())
    }

    fn proposal_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn response_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.response.json"))
    }

    pub fn write_proposal(&self, p: &Proposal) -> Result<(), QueueError> {
        write_atomic(&self.proposal_path(&p.id), &serde_json::to_vec_pretty(p).unwrap_or_default())
    }

    pub fn write_response(&self, id: &str, r: &Response) -> Result<(), QueueError> {
        if !self.proposal_path(id).exists() {
            return Err(QueueError::UnknownId(id.to_string()));
        }
        if self.response_path(id).exists() {
            return Err(QueueError::Io { path: self.response_path(id), reason: "already decided".into() });
        }
        write_atomic(&self.response_path(id), &serde_json::to_vec_pretty(r).unwrap_or_default())
    }

    /// The response to `id`, if one was written.
    pub fn read_response(&self, id: &str) -> Result<Option<Response>, QueueError> {
        let path = self.response_path(id);
        match fs::read(&path) {
            Ok(bytes) => parse_response(&path, &bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(QueueError::Io { path, reason: e.to_string() }),
        }
    }

    pub fn read_proposal(&self, id: &str) -> Result<Proposal, QueueError> {
        let path = self.proposal_path(id);
        let bytes = fs::read(&path).map_err(|_| QueueError::UnknownId(id.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| QueueError::Io { path, reason: e.to_string() })
    }

    /// Proposals without a response, oldest first.
    pub fn pending(&self) -> Result<Vec<Proposal>, QueueError> {
        let entries =
            fs::read_dir(&self.dir).map_err(|e| QueueError::Io { path: self.dir.clone(), reason: e.to_string() })?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json").filter(|id| !id.ends_with(".response") && !id.starts_with('.'))
            else {
                continue;
            };
            if self.response_path(id).exists() {
                continue;
            }
            if let Ok(p) = self.read_proposal(id) {
                out.push(p);
            }
        }
        out.sort_by_key(|p| p.created_at);
        Ok(out)
    }

    /// Moves a decided (or abandoned) proposal and its response to `processed/`.
    pub fn archive(&self, id: &str) -> Result<(), QueueError> {
        for path in [self.proposal_path(id), self.response_path(id)] {
            if path.exists() {
                let dest = self.dir.join("processed").join(path.file_name().expect("has a name"));
                fs::rename(&path, &dest).map_err(|e| QueueError::Io { path: path.clone(), reason: e.to_string() })?;
            }
        }
        Ok(())
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), QueueError> {
    let err = |e: std::io::Error| QueueError::Io { path: path.to_path_buf(), reason: e.to_string() };
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("x")));
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> QueueDir {
        let dir = std::env::temp_dir().join(format!("egress-queue-{}-{}", std::process::id(), rand::random::<u32>()));
        let q = QueueDir::new(dir);
        q.prepare().unwrap();
        q
    }

    fn payload() -> Payload {
        Payload {
            host: "api.test".into(),
            method: "POST".into(),
            path: "/v1/x".into(),
            reason: "token_patterns: GitHub personal access token".into(),
            context: "key ********".into(),
        }
    }

    #[test]
    fn proposal_response_archive_round_trip() {
        let q = temp();
        let p = Proposal::new("demo", payload());
        q.write_proposal(&p).unwrap();
        assert_eq!(q.pending().unwrap(), vec![p.clone()]);
        assert_eq!(q.read_response(&p.id).unwrap(), None);
        q.write_response(
            &p.id,
            &Response { status: Status::Approved, notes: "ok".into(), decided_by: None, decided_at: None },
        )
        .unwrap();
        assert!(q.pending().unwrap().is_empty());
        assert_eq!(q.read_response(&p.id).unwrap().unwrap().status, Status::Approved);
        assert!(
            q.write_response(
                &p.id,
                &Response { status: Status::Rejected, notes: String::new(), decided_by: None, decided_at: None }
            )
            .is_err()
        );
        q.archive(&p.id).unwrap();
        assert!(q.path().join("processed").join(format!("{}.json", p.id)).exists());
        assert!(matches!(
            q.write_response(
                "nope",
                &Response { status: Status::Rejected, notes: String::new(), decided_by: None, decided_at: None }
            ),
            Err(QueueError::UnknownId(_))
        ));
    }

    #[test]
    fn malformed_and_unknown_status_responses_are_errors() {
        for bad in [&b"not json"[..], br#"{"status": "maybe"}"#, br#"{"notes": "x"}"#] {
            assert!(parse_response(Path::new("r.json"), bad).is_err());
        }
        assert_eq!(parse_response(Path::new("r"), br#"{"status":"modified"}"#).unwrap().status, Status::Modified);
    }

    #[test]
    fn refuses_a_writable_queue_directory() {
        let q = temp();
        fs::set_permissions(q.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(q.prepare(), Err(QueueError::Unsafe { .. })));
    }
}
