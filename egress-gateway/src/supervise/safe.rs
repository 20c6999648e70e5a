//! Approved values. The bottle's safe set holds only keyed hashes (HMAC-SHA256) of the
//! values, never the values; with `allow_persist`, hashes approved with scope `persist`
//! are appended to `<state_dir>/supervise-safe/<bottle>.hmac` under a per-gateway random
//! key (`<state_dir>/supervise.key`, 0600) and loaded at start, so a restart does not
//! re-prompt. A value approved `once` lives only in its request's `RequestSafe`.
use std::{
    collections::HashSet,
    fs,
    io::{Read, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::RwLock,
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{
    HoldOutcome,
    protocol::Scope,
    store::{self, StoreError},
};
use crate::{
    dlp::{SafeSet, Secret},
    supervise::Supervisor,
};

pub const KEY_FILE: &str = "supervise.key";
pub const SAFE_DIR: &str = "supervise-safe";

type Digest = [u8; 32];

/// The per-gateway HMAC key.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl Key {
    /// A key for this process only (nothing is persisted).
    pub fn ephemeral() -> Key {
        Key(rand::random())
    }

    /// Loads `<state_dir>/supervise.key`, creating it (32 random bytes, 0600) if missing;
    /// refuses one a bottle could read or write.
    pub fn load_or_create(state_dir: &Path) -> Result<Key, StoreError> {
        store::prepare_private_dir(state_dir)?;
        let path = state_dir.join(KEY_FILE);
        let err = |e: std::io::Error| StoreError::Io { path: path.clone(), reason: e.to_string() };
        match fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(mut f) => {
                let key: [u8; 32] = rand::random();
                f.write_all(&key).map_err(err)?;
                f.sync_all().map_err(err)?;
                return Ok(Key(key));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(e)),
        }
        store::check_private_file(&path)?;
        if fs::metadata(&path).map_err(err)?.mode() & 0o077 != 0 {
            let reason = "the key is readable by others (chmod 600 it)".into();
            return Err(StoreError::Unsafe { path: path.clone(), reason });
        }
        let mut key = [0u8; 32];
        fs::File::open(&path).and_then(|mut f| f.read_exact(&mut key)).map_err(err)?;
        Ok(Key(key))
    }

    /// A value alone: what persisted lines written before approvals were tied to a host
    /// hold. Nothing is approved under it any more (see `SafeValues::warn_if_legacy`).
    fn digest(&self, value: &str) -> Digest {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(value.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A value approved for any host of the bottle (`any-host`): a hash of its own,
    /// different from `digest`'s, so an old line never reads as an `any-host` approval.
    fn digest_any(&self, value: &str) -> Digest {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for part in [&b"egress-supervise-any-host\0"[..], value.as_bytes()] {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// A value approved for one host: a different hash from `digest`'s and from any
    /// other host's.
    fn digest_for(&self, host: &str, value: &str) -> Digest {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for part in [&b"egress-supervise-host\0"[..], host_key(host).as_bytes(), b"\0", value.as_bytes()] {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

/// A host as approvals compare it: lower case, no trailing dot.
fn host_key(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The file of persisted hashes, one hex HMAC a line.
pub fn persisted_path(state_dir: &Path, bottle: &str) -> PathBuf {
    state_dir.join(SAFE_DIR).join(format!("{bottle}.hmac"))
}

/// A bottle's approved values, as keyed hashes.
pub struct SafeValues {
    key: Key,
    hashes: RwLock<HashSet<Digest>>,
    /// The lines loaded at start, as they are: a line written before approvals were
    /// tied to a host is a hash of the value alone, which no check accepts any more;
    /// kept to say so when such a value is held again.
    loaded: HashSet<Digest>,
    /// Where `persist` approvals go; `None` unless `allow_persist`.
    persist_to: Option<PathBuf>,
}

impl SafeValues {
    /// In memory only: `persist` approvals are refused.
    pub fn in_memory() -> SafeValues {
        SafeValues { key: Key::ephemeral(), hashes: RwLock::default(), loaded: HashSet::new(), persist_to: None }
    }

    /// With a persisted list at `file` (loaded now; created on the first `persist`).
    pub fn persisted(key: Key, file: PathBuf) -> Result<SafeValues, StoreError> {
        let err = |e: std::io::Error| StoreError::Io { path: file.clone(), reason: e.to_string() };
        let mut hashes = HashSet::new();
        if file.exists() {
            store::check_private_file(&file)?;
            for (n, line) in fs::read_to_string(&file).map_err(err)?.lines().enumerate() {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(line.trim(), &mut digest).map_err(|e| StoreError::Io {
                    path: file.clone(),
                    reason: format!("line {}: not a hex HMAC-SHA256: {e}", n + 1),
                })?;
                hashes.insert(digest);
            }
        }
        Ok(SafeValues { key, loaded: hashes.clone(), hashes: RwLock::new(hashes), persist_to: Some(file) })
    }

    pub fn len(&self) -> usize {
        self.hashes.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records an approval of `value` sent to `host` with `scope` (`once` records nothing
    /// here). Every scope but `any-host` allows the value to `host` only.
    pub fn approve(&self, value: &Secret, scope: Scope, host: &str) -> Result<(), StoreError> {
        let digest = match scope {
            Scope::AnyHost => self.key.digest_any(value.expose()),
            _ => self.key.digest_for(host, value.expose()),
        };
        match scope {
            Scope::Once => return Ok(()),
            Scope::Gateway | Scope::AnyHost => {}
            Scope::Persist => {
                let Some(file) = &self.persist_to else { return Err(StoreError::PersistNotAllowed) };
                append_line(file, &hex::encode(digest))?;
            }
        }
        self.hashes.write().unwrap_or_else(|e| e.into_inner()).insert(digest);
        Ok(())
    }
}

impl SafeValues {
    /// Whether `value` is approved for `host`: for that host, or for any host.
    pub fn contains_for(&self, host: &str, value: &str) -> bool {
        self.approved_scope(host, value).is_some()
    }

    /// How `value` is approved for `host`: `any-host`, or for this host (`gateway`, the
    /// scope persisted approvals also have once loaded); `None`: not approved.
    pub fn approved_scope(&self, host: &str, value: &str) -> Option<Scope> {
        let hashes = self.hashes.read().unwrap_or_else(|e| e.into_inner());
        if hashes.contains(&self.key.digest_any(value)) {
            Some(Scope::AnyHost)
        } else if hashes.contains(&self.key.digest_for(host, value)) {
            Some(Scope::Gateway)
        } else {
            None
        }
    }

    /// A held value that a persisted line of an older version (a hash of the value
    /// alone, for every host) approved: that line no longer applies, and the log says so.
    pub fn warn_if_legacy(&self, bottle: &str, host: &str, value: &Secret) {
        if self.loaded.contains(&self.key.digest(value.expose())) {
            tracing::warn!(
                bottle,
                host = %crate::supervise::render::inert(host),
                "a persisted approval written before approvals were tied to a host matches this value; it no longer \
                 applies (it would allow every host): held for the operator, approve again with the scope you mean"
            );
        }
    }
}

/// Without a host: only values approved for any host. (WebSocket messages are checked
/// with their host, `contains_for`.)
impl SafeSet for SafeValues {
    fn contains(&self, value: &str) -> bool {
        let digest = self.key.digest_any(value);
        self.hashes.read().unwrap_or_else(|e| e.into_inner()).contains(&digest)
    }
}

fn append_line(file: &Path, line: &str) -> Result<(), StoreError> {
    let err = |e: std::io::Error| StoreError::Io { path: file.to_path_buf(), reason: e.to_string() };
    if let Some(dir) = file.parent() {
        store::prepare_private_dir(dir)?;
    }
    let mut f = fs::OpenOptions::new().append(true).create(true).mode(0o600).open(file).map_err(err)?;
    f.write_all(format!("{line}\n").as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

/// The safe set one request is scanned with: its bottle's, plus the values approved
/// `once` for this request.
pub struct RequestSafe<'a> {
    bottle: Option<&'a SafeValues>,
    /// The request's host: the bottle's approvals count for it only (or for any host).
    host: String,
    /// Kept as `Secret`s, which never print, and only for the life of the request.
    once: Vec<Secret>,
}

impl<'a> RequestSafe<'a> {
    pub fn new(supervisor: Option<&'a Supervisor>, host: &str) -> Self {
        RequestSafe { bottle: supervisor.map(Supervisor::safe_set), host: host.to_string(), once: Vec::new() }
    }

    /// After a hold: a value approved `once` is allowed for the rest of this request
    /// (other scopes are already in the bottle's set).
    pub fn note(&mut self, outcome: &HoldOutcome, value: &Secret) {
        if let HoldOutcome::Approved { scope: Scope::Once } = outcome {
            self.once.push(value.clone());
        }
    }
}

impl SafeSet for RequestSafe<'_> {
    fn contains(&self, value: &str) -> bool {
        self.once.iter().any(|s| s.expose() == value) || self.bottle.is_some_and(|b| b.contains_for(&self.host, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::store::tests::temp_dir;

    #[test]
    fn persisted_approvals_survive_a_restart_as_keyed_hashes_only() {
        let state = temp_dir("safe");
        let file = persisted_path(&state, "demo");
        let value = Secret::new("ghp_persistedvalue0123456789");
        {
            let key = Key::load_or_create(&state).unwrap();
            let safe = SafeValues::persisted(key, file.clone()).unwrap();
            safe.approve(&value, Scope::Persist, "a.test").unwrap();
            safe.approve(&Secret::new("gateway-only-value"), Scope::Gateway, "a.test").unwrap();
            assert!(safe.contains_for("a.test", value.expose()) && safe.contains_for("a.test", "gateway-only-value"));
        }
        let text = fs::read_to_string(&file).unwrap();
        assert!(!text.contains("persistedvalue"), "the raw value was persisted");
        assert_eq!(text.lines().count(), 1);
        // "Restart": the same key file, a fresh set.
        let safe = SafeValues::persisted(Key::load_or_create(&state).unwrap(), file.clone()).unwrap();
        assert!(safe.contains_for("a.test", value.expose()));
        assert!(!safe.contains_for("b.test", value.expose()), "a persisted approval is for its host only");
        assert!(!safe.contains_for("a.test", "gateway-only-value"), "a gateway-scope approval outlived the gateway");
        // Another gateway's key does not recognise it.
        let other = SafeValues::persisted(Key::ephemeral(), file).unwrap();
        assert!(!other.contains_for("a.test", value.expose()));
    }

    #[test]
    fn once_is_per_request_and_persist_needs_opt_in() {
        let safe = SafeValues::in_memory();
        let v = Secret::new("value-approved-once");
        safe.approve(&v, Scope::Once, "a.test").unwrap();
        assert!(!safe.contains_for("a.test", v.expose()));
        assert!(safe.approve(&v, Scope::Persist, "a.test").unwrap_err().to_string().contains("allow_persist"));
        let mut req = RequestSafe::new(None, "a.test");
        req.bottle = Some(&safe);
        req.note(&HoldOutcome::Approved { scope: Scope::Once }, &v);
        assert!(req.contains(v.expose()));
        let mut next = RequestSafe::new(None, "a.test");
        next.bottle = Some(&safe);
        assert!(!next.contains(v.expose()));
    }

    #[test]
    fn an_approval_is_for_its_host_unless_it_says_any_host() {
        let safe = SafeValues::in_memory();
        let v = Secret::new("value-approved-for-a-host");
        safe.approve(&v, Scope::Gateway, "api.a.test").unwrap();
        assert!(safe.contains_for("api.a.test", v.expose()) && safe.contains_for("API.A.test.", v.expose()));
        for other in ["api.b.test", "api.a.test.evil.test", "a.test", ""] {
            assert!(!safe.contains_for(other, v.expose()), "approved for api.a.test, allowed to {other:?}");
        }
        assert!(!safe.contains(v.expose()), "a host approval is not one for any host (WebSocket messages)");
        let request = |host: &str| {
            let mut r = RequestSafe::new(None, host);
            r.bottle = Some(&safe);
            r.contains(v.expose())
        };
        assert!(request("api.a.test") && !request("api.b.test"));
        // Explicitly for any host of the bottle.
        let w = Secret::new("value-approved-for-any-host");
        safe.approve(&w, Scope::AnyHost, "api.a.test").unwrap();
        assert!(safe.contains_for("api.b.test", w.expose()) && safe.contains(w.expose()));
    }

    #[test]
    fn a_persisted_line_from_before_hosts_allows_no_host() {
        let state = temp_dir("safe-legacy");
        let file = persisted_path(&state, "demo");
        let key = Key::load_or_create(&state).unwrap();
        let v = Secret::new("ghp_legacyapprovedvalue0123456789");
        // What an older version wrote for an approval of the value alone.
        append_line(&file, &hex::encode(key.digest(v.expose()))).unwrap();
        let safe = SafeValues::persisted(key, file).unwrap();
        assert_eq!(safe.len(), 1);
        for host in ["a.test", "b.test", ""] {
            assert!(!safe.contains_for(host, v.expose()), "an old line allowed {host:?}");
        }
        assert!(!safe.contains(v.expose()), "an old line reads as any-host");
        assert_eq!(safe.approved_scope("a.test", v.expose()), None);
    }

    #[test]
    fn a_readable_key_is_refused() {
        let state = temp_dir("safe-key");
        Key::load_or_create(&state).unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(state.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Key::load_or_create(&state).is_err());
    }
}
