//! Data-loss prevention: the `egress-dlp` crate (detectors, scan, redact), re-exported so
//! the gateway names it `crate::dlp`, and the loading of user rule files.
use anyhow::Context as _;

pub use egress_dlp::*;

/// Reads and compiles a gitleaks TOML rule file; errors name the file, the rule and why.
pub fn load_rules(path: &std::path::Path) -> anyhow::Result<Vec<gitleaks::UserRule>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(egress_dlp::gitleaks::parse(&path.display().to_string(), &text)?)
}
