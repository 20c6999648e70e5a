//! The interception CA: create, export, and mint leaf certificates per host.
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct CaArgs {}

pub fn run(_args: CaArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("ca is not available in this build yet")
}
