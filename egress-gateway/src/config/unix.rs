//! A bottle's `unix_sockets:`: the unix sockets its processes may connect or send to.
//! Everything else named (pathname or abstract) is refused in the kernel; unnamed
//! sockets and `socketpair` are not affected.
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Longest path or abstract name (`sun_path` is 108 bytes with its terminating NUL).
pub const MAX_LEN: usize = egress_common::UNIX_PATH_MAX;

/// The value written to opt a bottle out of the kernel policing (a kernel without the
/// BPF LSM): its unix sockets are then not policed at all.
pub const UNPOLICED: &str = "unpoliced";

/// One allowed unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixRule {
    /// `/run/foo.sock`: exactly this path.
    Path(Vec<u8>),
    /// `/tmp/ipc/`: every path under this directory.
    Dir(Vec<u8>),
    /// `@name`: the abstract socket `\0name`.
    Abstract(Vec<u8>),
}

impl UnixRule {
    /// Parses one entry as written in the configuration.
    pub fn parse(s: &str) -> Result<UnixRule, String> {
        if s.contains('\0') {
            return Err(format!("{s:?} must not contain NUL"));
        }
        if let Some(name) = s.strip_prefix('@') {
            if name.is_empty() {
                return Err("an abstract socket needs a name after '@'".into());
            }
            if name.len() > MAX_LEN {
                return Err(format!("{s:?}: an abstract name is at most {MAX_LEN} bytes"));
            }
            return Ok(UnixRule::Abstract(name.as_bytes().to_vec()));
        }
        if !s.starts_with('/') {
            return Err(format!(
                "{s:?} must be an absolute path (`/run/app.sock`), a directory ending in '/' (`/tmp/ipc/`), or an \
                 abstract name (`@name`)"
            ));
        }
        if s.len() > MAX_LEN {
            return Err(format!("{s:?} is longer than {MAX_LEN} bytes (sun_path's limit)"));
        }
        if s.split('/').any(|c| c == "." || c == "..") {
            return Err(format!("{s:?} must not have '.' or '..' components"));
        }
        if s.contains("//") {
            return Err(format!("{s:?} must not have empty components ('//')"));
        }
        if s == "/" {
            return Err("\"/\" would allow every pathname socket: list the sockets or their directories".into());
        }
        Ok(if s.ends_with('/') { UnixRule::Dir(s.as_bytes().to_vec()) } else { UnixRule::Path(s.as_bytes().to_vec()) })
    }
}

impl fmt::Display for UnixRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixRule::Path(p) | UnixRule::Dir(p) => f.write_str(&String::from_utf8_lossy(p)),
            UnixRule::Abstract(n) => write!(f, "@{}", String::from_utf8_lossy(n)),
        }
    }
}

/// A bottle's unix-socket policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixSockets {
    /// Only these (empty: none) may be connected or sent to; needs the BPF LSM.
    Policed(Vec<UnixRule>),
    /// `unix_sockets: unpoliced`: not policed in the kernel.
    Unpoliced,
}

impl Default for UnixSockets {
    fn default() -> Self {
        UnixSockets::Policed(Vec::new())
    }
}

impl UnixSockets {
    pub fn is_default(&self) -> bool {
        *self == UnixSockets::default()
    }
}

impl<'de> Deserialize<'de> for UnixSockets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = UnixSockets;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "a list of unix sockets (`/path`, `/dir/`, `@abstract`) or `{UNPOLICED}`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<UnixSockets, E> {
                if v == UNPOLICED {
                    Ok(UnixSockets::Unpoliced)
                } else {
                    Err(E::custom(format!("{v:?}: expected a list of unix sockets or `{UNPOLICED}`")))
                }
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<UnixSockets, A::Error> {
                let mut rules = Vec::new();
                while let Some(Entry(rule)) = seq.next_element()? {
                    rules.push(rule);
                }
                Ok(UnixSockets::Policed(rules))
            }
        }
        d.deserialize_any(V)
    }
}

/// One list entry, validated as it is read (so an error has its line and index).
struct Entry(UnixRule);

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UnixRule::parse(&s).map(Entry).map_err(de::Error::custom)
    }
}

impl Serialize for UnixSockets {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            UnixSockets::Unpoliced => s.serialize_str(UNPOLICED),
            UnixSockets::Policed(rules) => s.collect_seq(rules.iter().map(|r| r.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_bad_ones_say_why() {
        assert_eq!(UnixRule::parse("/run/a.sock"), Ok(UnixRule::Path(b"/run/a.sock".to_vec())));
        assert_eq!(UnixRule::parse("/tmp/ipc/"), Ok(UnixRule::Dir(b"/tmp/ipc/".to_vec())));
        assert_eq!(UnixRule::parse("@agent-bus"), Ok(UnixRule::Abstract(b"agent-bus".to_vec())));
        for (bad, why) in [
            ("run/a.sock", "absolute"),
            ("@", "needs a name"),
            ("/tmp/../run/x", "'..'"),
            ("/tmp/./x", "'..'"),
            ("/tmp//x", "empty components"),
            ("/", "every pathname"),
            ("/a\0b", "NUL"),
        ] {
            let e = UnixRule::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let long = format!("/{}", "a".repeat(MAX_LEN));
        assert!(UnixRule::parse(&long).unwrap_err().contains("longer than 107"));
        assert!(UnixRule::parse(&long[..MAX_LEN]).is_ok());
        assert!(UnixRule::parse(&format!("@{}", "a".repeat(MAX_LEN + 1))).is_err());
    }

    #[test]
    fn round_trips_through_serde() {
        let v: UnixSockets = serde_json::from_str(r#"["/run/a.sock", "/tmp/ipc/", "@bus"]"#).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"["/run/a.sock","/tmp/ipc/","@bus"]"#);
        let u: UnixSockets = serde_json::from_str(r#""unpoliced""#).unwrap();
        assert_eq!(u, UnixSockets::Unpoliced);
        assert_eq!(serde_json::to_string(&u).unwrap(), r#""unpoliced""#);
        assert!(serde_json::from_str::<UnixSockets>(r#""off""#).is_err());
    }
}
