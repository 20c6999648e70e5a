//! `egress-gateway ca`: create the interception CA, print its certificate or the trust
//! bundle (the certificate only: no access to the key needed).
use std::process::ExitCode;

use anyhow::Context as _;

use super::ConfigArg;
use crate::ca::{CertificateAuthority, public_pem, trust_bundle};

#[derive(Debug, clap::Args)]
pub struct CaArgs {
    #[command(subcommand)]
    pub command: CaCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Create the CA in the state directory.
    Init {
        #[command(flatten)]
        config: ConfigArg,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Print the CA certificate (PEM); with --bundle, the system roots followed by it.
    Export {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        bundle: bool,
    },
}

pub fn run(args: CaArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        CaCommand::Init { config, force } => {
            let config = config.load()?;
            CertificateAuthority::init(&config.state_dir, force)?;
            println!("created {}", config.state_dir.join(crate::ca::CA_CERT_FILE).display());
        }
        CaCommand::Export { config, bundle } => {
            let config = config.load()?;
            let pem = public_pem(&config.state_dir)
                .with_context(|| "no CA yet: run `egress-gateway ca init` or start the gateway")?;
            if bundle {
                print!("{}", trust_bundle(&pem));
            } else {
                print!("{pem}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
