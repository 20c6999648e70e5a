//! The `limits:` block of gateway.yaml: what one bottle (or all of them) may hold of the
//! gateway's memory, descriptors and time. Every field is optional; the defaults suit a
//! host running a handful of agents.
use std::time::Duration;

use serde::Deserialize;

use super::Problems;

const MIB: u64 = 1024 * 1024;

/// Request-body bytes buffered for scanning, all bottles together.
pub const DEFAULT_BUFFERED_BYTES: u64 = 256 * MIB;
/// Request-body bytes buffered for scanning, per bottle.
pub const DEFAULT_BOTTLE_BUFFERED_BYTES: u64 = 64 * MIB;
/// Open client connections per bottle.
pub const DEFAULT_BOTTLE_CONNECTIONS: u32 = 1024;
/// Concurrent HTTP/2 streams per client connection.
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 100;
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// `limits:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    buffered_bytes: Option<u64>,
    bottle_buffered_bytes: Option<u64>,
    bottle_connections: Option<u32>,
    h2_max_concurrent_streams: Option<u32>,
    /// Seconds.
    idle_timeout: Option<u64>,
    header_timeout: Option<u64>,
    body_timeout: Option<u64>,
}

/// The validated limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Request-body bytes held for scanning by all bottles together; beyond it a request
    /// is refused with 503.
    pub buffered_bytes: u64,
    /// The same, per bottle: one bottle cannot spend the others' share.
    pub bottle_buffered_bytes: u64,
    /// Client connections one bottle may hold open; more are closed at accept.
    pub bottle_connections: u32,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` offered to HTTP/2 clients.
    pub h2_max_concurrent_streams: u32,
    /// A connection with nothing in flight (keep-alive, HTTP/2 without a stream, a relay
    /// or WebSocket with no byte either way) is closed after this long.
    pub idle_timeout: Duration,
    /// An HTTP/1 request head must arrive within this.
    pub header_timeout: Duration,
    /// A request body that makes no progress for this long is cut (408).
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            buffered_bytes: DEFAULT_BUFFERED_BYTES,
            bottle_buffered_bytes: DEFAULT_BOTTLE_BUFFERED_BYTES,
            bottle_connections: DEFAULT_BOTTLE_CONNECTIONS,
            h2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }
}

impl Limits {
    /// Applies the defaults and checks the values; problems go under `limits.<field>`.
    pub fn from_raw(raw: RawLimits, problems: &mut Problems) -> Limits {
        let d = Limits::default();
        let secs = |field: &str, v: Option<u64>, default: Duration, problems: &mut Problems| match v {
            None => default,
            Some(0) => {
                problems.push(format!("limits.{field}"), "must be at least 1 (seconds)");
                default
            }
            Some(s) => Duration::from_secs(s),
        };
        let limits = Limits {
            buffered_bytes: raw.buffered_bytes.unwrap_or(d.buffered_bytes),
            bottle_buffered_bytes: raw.bottle_buffered_bytes.unwrap_or(d.bottle_buffered_bytes),
            bottle_connections: raw.bottle_connections.unwrap_or(d.bottle_connections),
            h2_max_concurrent_streams: raw.h2_max_concurrent_streams.unwrap_or(d.h2_max_concurrent_streams),
            idle_timeout: secs("idle_timeout", raw.idle_timeout, d.idle_timeout, problems),
            header_timeout: secs("header_timeout", raw.header_timeout, d.header_timeout, problems),
            body_timeout: secs("body_timeout", raw.body_timeout, d.body_timeout, problems),
        };
        if limits.bottle_buffered_bytes < MIB {
            problems.push("limits.bottle_buffered_bytes", "must be at least 1048576 (1 MiB)");
        }
        if limits.buffered_bytes < limits.bottle_buffered_bytes {
            problems.push("limits.buffered_bytes", "must be at least limits.bottle_buffered_bytes");
        }
        if limits.bottle_connections == 0 {
            problems.push("limits.bottle_connections", "must be at least 1");
        }
        if limits.h2_max_concurrent_streams == 0 {
            problems.push("limits.h2_max_concurrent_streams", "must be at least 1");
        }
        limits
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    #[test]
    fn defaults_apply_and_values_are_checked() {
        let c = Config::parse(Path::new("/etc/g.yaml"), "bottles: []\n").unwrap();
        assert_eq!(c.limits, Limits::default());
        let c = Config::parse(
            Path::new("/etc/g.yaml"),
            "limits:\n  bottle_buffered_bytes: 2097152\n  buffered_bytes: 4194304\n  idle_timeout: 5\n",
        )
        .unwrap();
        assert_eq!(c.limits.bottle_buffered_bytes, 2 * MIB);
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.body_timeout, DEFAULT_BODY_TIMEOUT);
        let err = Config::parse(
            Path::new("/etc/g.yaml"),
            "limits:\n  buffered_bytes: 2097152\n  bottle_buffered_bytes: 4194304\n  body_timeout: 0\n  \
             bottle_connections: 0\n",
        )
        .unwrap_err()
        .to_string();
        for field in ["limits.buffered_bytes", "limits.body_timeout", "limits.bottle_connections"] {
            assert!(err.contains(field), "{field} not reported: {err}");
        }
        let err = Config::parse(Path::new("/etc/g.yaml"), "limits:\n  max_bytes: 1\n").unwrap_err().to_string();
        assert!(err.contains("max_bytes"), "{err}");
    }
}
