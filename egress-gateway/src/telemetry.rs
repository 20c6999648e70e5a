//! Logging: JSON lines on stderr through tracing; each line carries its span (`span`)
//! and every span above it (`spans`: the connection, then the request). `EGRESS_LOG` (an env-filter directive)
//! overrides the default level.
use tracing_subscriber::{EnvFilter, fmt};

pub fn init() {
    let filter = EnvFilter::try_from_env("EGRESS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(true)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
}
