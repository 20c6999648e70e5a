//! A bottle's credentials file (`credentials_file:` in gateway.yaml): the values the
//! gateway injects for that bottle's routes, looked up before the gateway's environment.
//!
//! The format is a small subset of a shell / systemd `EnvironmentFile`:
//!
//! - one `KEY=VALUE` per line; `KEY` is a variable name (`[A-Za-z_][A-Za-z0-9_]*`),
//!   optionally preceded by `export `; each key at most once;
//! - blank lines and lines starting with `#` are ignored; there are no trailing comments
//!   (a `#` after the `=` is part of the value: secrets contain `#`);
//! - a value is taken as written, surrounding spaces removed; or quoted whole in `'...'`
//!   or `"..."`, which keeps spaces and is taken literally (no escapes, no expansion, no
//!   quote of the same kind inside); values span one line and are never empty.
//!
//! The file must be a regular file owned by the gateway's effective user, with no group
//! or other permission bits (0600 or 0400). Errors name the file, the line and the
//! problem, never a value: they end up in logs.
use std::{
    collections::BTreeMap,
    fmt,
    io::Read,
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use crate::dlp::Secret;

/// Larger files are refused: a credentials file is a handful of lines.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("credentials file {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("credentials file {}: not a regular file", path.display())]
    NotRegular { path: PathBuf },
    #[error(
        "credentials file {}: mode {mode:04o} gives its group or others access; it must be 0600 (chmod 600)",
        path.display()
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error(
        "credentials file {}: owned by uid {owner}, not by the gateway's user (uid {euid})",
        path.display()
    )]
    Owner { path: PathBuf, owner: u32, euid: u32 },
    #[error("credentials file {}: larger than {MAX_FILE_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("credentials file {}, line {line}: {reason}", path.display())]
    Syntax { path: PathBuf, line: usize, reason: String },
}

/// A bottle's credentials: names in clear, values only through `get`.
#[derive(Default)]
pub struct Credentials {
    values: BTreeMap<String, Secret>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("names", &self.values.keys().collect::<Vec<_>>()).finish()
    }
}

impl Credentials {
    /// No credentials: every lookup falls through to the gateway's environment.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads `path` after checking that only the gateway's user can read or change it.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let io = |source| CredentialsError::Io { path: path.to_path_buf(), source };
        // Checked on the opened file, not the name (no race with a rename). Non-blocking,
        // so a FIFO put in its place is refused instead of hanging the gateway.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        check_metadata(path, &meta, nix::unistd::geteuid().as_raw())?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(CredentialsError::TooLarge { path: path.to_path_buf() });
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(io)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(CredentialsError::TooLarge { path: path.to_path_buf() });
        }
        Self::parse(path, &bytes)
    }

    /// Parses the file's contents (`path` only names it in errors).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Credentials, CredentialsError> {
        let mut values = BTreeMap::new();
        let mut first_line: BTreeMap<String, usize> = BTreeMap::new();
        for (idx, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let line = idx + 1;
            let err = |reason: String| CredentialsError::Syntax { path: path.to_path_buf(), line, reason };
            let text = std::str::from_utf8(raw).map_err(|_| err("not valid UTF-8".into()))?;
            let Some((key, value)) = parse_line(text).map_err(|r| err(r.into()))? else { continue };
            if let Some(first) = first_line.get(key) {
                return Err(err(format!("{key} is already set on line {first}")));
            }
            first_line.insert(key.to_string(), line);
            values.insert(key.to_string(), Secret::new(value));
        }
        Ok(Credentials { values })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(Secret::expose)
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Every (name, value): the bottle's known secrets.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.expose()))
    }
}

/// Regular, owned by `euid`, no group or other bits.
fn check_metadata(path: &Path, meta: &std::fs::Metadata, euid: u32) -> Result<(), CredentialsError> {
    let path = path.to_path_buf();
    if !meta.file_type().is_file() {
        return Err(CredentialsError::NotRegular { path });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CredentialsError::Mode { path, mode });
    }
    if meta.uid() != euid {
        return Err(CredentialsError::Owner { path, owner: meta.uid(), euid });
    }
    Ok(())
}

/// One line: `None` for blank lines and comments. Reasons never quote the line (it may
/// hold a value).
fn parse_line(line: &str) -> Result<Option<(&str, &str)>, &'static str> {
    let line = line.strip_suffix('\r').unwrap_or(line).trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let line = match line.strip_prefix("export") {
        Some(rest) if rest.starts_with([' ', '\t']) => rest.trim_start(),
        _ => line,
    };
    let Some((key, value)) = line.split_once('=') else {
        return Err("expected KEY=VALUE");
    };
    let key = key.trim_end();
    if !is_env_name(key) {
        return Err("the name before '=' is not a variable name (letters, digits and _, not starting with a digit)");
    }
    let value = value.trim();
    let value = match value.chars().next() {
        Some(q @ ('\'' | '"')) => {
            let inner =
                value[1..].strip_suffix(q).ok_or("a quoted value must end with its quote, and nothing after it")?;
            if inner.contains(q) {
                return Err("a quote inside a value quoted with the same quote (quoted values have no escapes)");
            }
            inner
        }
        _ => value,
    };
    if value.is_empty() {
        return Err("empty value");
    }
    Ok(Some((key, value)))
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn parse(text: &str) -> Result<Credentials, CredentialsError> {
        Credentials::parse(Path::new("/etc/eg/creds.env"), text.as_bytes())
    }

    fn syntax_line(text: &str) -> (usize, String) {
        match parse(text).unwrap_err() {
            CredentialsError::Syntax { line, reason, .. } => (line, reason),
            other => panic!("not a syntax error: {other}"),
        }
    }

    #[test]
    fn parses_keys_values_comments_export_and_quotes() {
        let c = parse(
            "# a comment\n\
             \n\
             EGRESS_TOKEN_0=plain-value#with-hash\n\
             export EGRESS_TOKEN_1 = spaced-around  \r\n\
             \tQUOTED_S='  kept spaces \"and\" = '\n\
             QUOTED_D=\"it's\"\n\
             _X1=a=b=c\n",
        )
        .unwrap();
        assert_eq!(c.get("EGRESS_TOKEN_0"), Some("plain-value#with-hash"));
        assert_eq!(c.get("EGRESS_TOKEN_1"), Some("spaced-around"));
        assert_eq!(c.get("QUOTED_S"), Some("  kept spaces \"and\" = "));
        assert_eq!(c.get("QUOTED_D"), Some("it's"));
        assert_eq!(c.get("_X1"), Some("a=b=c"));
        assert_eq!(c.get("MISSING"), None);
        assert_eq!(c.len(), 5);
        // `export` is a prefix only when a space follows it.
        assert_eq!(parse("exported=v\n").unwrap().get("exported"), Some("v"));
    }

    #[test]
    fn errors_name_file_and_line_and_never_the_value() {
        let secret = "hunter2-very-secret";
        for (text, line, reason) in [
            (format!("A=1\n{secret}\n"), 2, "expected KEY=VALUE"),
            (format!("\n\n1BAD={secret}\n"), 3, "not a variable name"),
            (format!("TOKEN: {secret}=x\n"), 1, "not a variable name"),
            (format!("A='{secret}\n"), 1, "must end with its quote"),
            (format!("A=\"{secret}\" trailing\n"), 1, "must end with its quote"),
            (format!("A='{secret}'x'\n"), 1, "quote inside"),
            ("A=\nB=x\n".to_string(), 1, "empty value"),
            ("A=''\n".to_string(), 1, "empty value"),
            (format!("# c\nA={secret}\nB=x\nA={secret}2\n"), 4, "A is already set on line 2"),
        ] {
            let (got_line, got_reason) = syntax_line(&text);
            assert_eq!(got_line, line, "{text:?}: {got_reason}");
            assert!(got_reason.contains(reason), "{text:?}: {got_reason}");
            let shown = parse(&text).unwrap_err().to_string();
            assert!(shown.starts_with(&format!("credentials file /etc/eg/creds.env, line {line}: ")), "{shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        let bad_utf8 = Credentials::parse(Path::new("c.env"), b"A=1\nB=\xff\xfe\n").unwrap_err();
        assert_eq!(bad_utf8.to_string(), "credentials file c.env, line 2: not valid UTF-8");
    }

    #[test]
    fn debug_shows_names_only() {
        let c = parse("EGRESS_TOKEN_0=do-not-print-me\n").unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains("EGRESS_TOKEN_0") && !shown.contains("do-not-print-me"), "{shown}");
        let pairs: Vec<(&str, &str)> = c.iter().collect();
        assert_eq!(pairs, [("EGRESS_TOKEN_0", "do-not-print-me")]);
    }

    fn temp_file(dir: &tempfile::TempDir, mode: u32) -> PathBuf {
        let path = dir.path().join("creds.env");
        std::fs::write(&path, "EGRESS_TOKEN_0=file-value-123\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn load_accepts_0600_and_0400_files_of_the_gateway_user() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o400] {
            let path = temp_file(&dir, mode);
            let c = Credentials::load(&path).unwrap();
            assert_eq!(c.get("EGRESS_TOKEN_0"), Some("file-value-123"));
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn load_refuses_group_or_other_bits() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660, 0o601] {
            let path = temp_file(&dir, mode);
            let err = Credentials::load(&path).unwrap_err();
            assert!(matches!(err, CredentialsError::Mode { .. }), "{mode:o}: {err}");
            let shown = err.to_string();
            assert!(
                shown.contains(&path.display().to_string())
                    && shown.contains(&format!("mode {mode:04o}"))
                    && shown.contains("must be 0600"),
                "{shown}"
            );
            assert!(!shown.contains("file-value-123"));
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn load_refuses_a_file_of_another_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = temp_file(&dir, 0o600);
        let meta = std::fs::metadata(&path).unwrap();
        // The owner check itself, for any uid: the file's owner is not `euid + 1`.
        let other = meta.uid().wrapping_add(1);
        let err = check_metadata(&path, &meta, other).unwrap_err();
        assert!(matches!(err, CredentialsError::Owner { .. }), "{err}");
        assert!(err.to_string().contains(&format!("not by the gateway's user (uid {other})")), "{err}");
        // And end to end when the tests run as root: chown to nobody.
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            let err = Credentials::load(&path).unwrap_err();
            assert!(err.to_string().contains("owned by uid 65534"), "{err}");
        }
    }

    #[test]
    fn load_refuses_directories_fifos_missing_and_huge_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = Credentials::load(dir.path()).unwrap_err();
        assert!(matches!(err, CredentialsError::NotRegular { .. }), "{err}");
        assert!(err.to_string().ends_with("not a regular file"), "{err}");

        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let err = Credentials::load(&fifo).unwrap_err();
        assert!(matches!(err, CredentialsError::NotRegular { .. }), "a FIFO is refused without blocking: {err}");

        let err = Credentials::load(&dir.path().join("missing.env")).unwrap_err();
        assert!(matches!(err, CredentialsError::Io { .. }) && err.to_string().contains("missing.env"), "{err}");

        let big = dir.path().join("big.env");
        std::fs::write(&big, "A=".to_string() + &"x".repeat(MAX_FILE_BYTES as usize)).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(Credentials::load(&big).unwrap_err(), CredentialsError::TooLarge { .. }));
    }
}
