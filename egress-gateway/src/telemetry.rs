//! Logging: JSON lines on stderr through tracing; each line carries its span (`span`)
//! and every span above it (`spans`: the connection, then the request). `EGRESS_LOG` (an
//! env-filter directive) overrides the default level. Under systemd (stderr is the journal
//! stream named by `JOURNAL_STREAM`) each line starts with its syslog priority, `<N>`, so
//! `journalctl -p warning` finds refusals.
use std::io::{self, Write};

use tracing::{Level, Metadata};
use tracing_subscriber::{EnvFilter, fmt, fmt::MakeWriter};

pub fn init() {
    let filter = EnvFilter::try_from_env("EGRESS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = StderrWriter { journal: stderr_is_journal() };
    let _ = fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(true)
        .with_target(false)
        .with_writer(writer)
        .with_env_filter(filter)
        .try_init();
}

/// The first line of a run: what is running, so a log can be matched to a build.
pub fn log_build(ebpf_object: &[u8]) {
    tracing::info!(
        event = "egress_start",
        version = env!("CARGO_PKG_VERSION"),
        commit = env!("EGRESS_GIT_COMMIT"),
        ebpf_sha256 = %ebpf_digest(ebpf_object),
        "egress-gateway starting"
    );
}

fn ebpf_digest(object: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(object))
}

/// The syslog priority journald reads from a `<N>` line prefix.
fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// `JOURNAL_STREAM` is `<dev>:<ino>` of the journal socket; it holds for us only if our
/// stderr is still that socket (a child whose stderr was redirected inherits the variable).
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else { return false };
    let Ok(stat) = nix::sys::stat::fstat(io::stderr()) else { return false };
    journal_stream_matches(&stream, stat.st_dev, stat.st_ino)
}

fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    let mut parts = value.trim().splitn(2, ':');
    let parse = |p: Option<&str>| p.and_then(|s| s.parse::<u64>().ok());
    matches!((parse(parts.next()), parse(parts.next())), (Some(d), Some(i)) if d == dev && i == ino)
}

#[derive(Clone, Copy)]
struct StderrWriter {
    journal: bool,
}

/// One formatted line; the prefix goes in front of its first byte.
struct Line {
    prefix: Option<u8>,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut err = io::stderr().lock();
        if let Some(p) = self.prefix.take() {
            write!(err, "<{p}>")?;
        }
        err.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for StderrWriter {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { prefix: None }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line { prefix: self.journal.then(|| priority(meta.level())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_matched_on_device_and_inode() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(journal_stream_matches("8:12345\n", 8, 12345));
        assert!(!journal_stream_matches("8:12346", 8, 12345));
        assert!(!journal_stream_matches("9:12345", 8, 12345));
        assert!(!journal_stream_matches("garbage", 8, 12345));
        assert!(!journal_stream_matches("", 0, 0));
    }

    #[test]
    fn refusals_are_warnings_to_journald() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }

    #[test]
    fn the_ebpf_digest_is_sha256_hex() {
        assert_eq!(ebpf_digest(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
