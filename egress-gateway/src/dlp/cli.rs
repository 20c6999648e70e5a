//! `egress-gateway dlp scan`: run the outbound detectors over a file.
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct DlpArgs {}

pub fn run(_args: DlpArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("dlp scan is not available in this build yet")
}
