//! Supervise: hold requests whose outbound scan found a token until an operator decides.
//!
//! NOTE: placeholder for the configuration type until the supervise engine lands.
pub mod cli;

use std::path::PathBuf;

use serde::Deserialize;

/// A bottle's `supervise:` block in gateway.yaml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperviseConfig {
    pub queue_dir: Option<PathBuf>,
    pub db: Option<PathBuf>,
    pub timeout_seconds: Option<u64>,
}

impl SuperviseConfig {
    /// Problems with the block, each one sentence.
    pub fn validate(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.queue_dir.is_some() && self.db.is_some() {
            out.push("give either queue_dir or db, not both".to_string());
        }
        if self.timeout_seconds == Some(0) {
            out.push("timeout_seconds must be at least 1".to_string());
        }
        out
    }
}
