//! `egress-gateway`: parse the command line, start logging, hand over to the command.
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = egress_gateway::cli::Cli::parse();
    match egress_gateway::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("egress-gateway: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
