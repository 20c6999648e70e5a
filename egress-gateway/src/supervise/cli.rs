//! `egress-gateway supervise`: the operator console and its scriptable forms.
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct SuperviseArgs {}

pub fn run(_args: SuperviseArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("supervise is not available in this build yet")
}
