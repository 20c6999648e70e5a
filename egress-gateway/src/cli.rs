//! The command line: one subcommand per operator task. Each module that owns a command
//! family (`ca`, `dlp`, `supervise`) exposes its own clap arguments and `run`.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{app, bpf, ca, config, dlp, supervise};

#[derive(Debug, Parser)]
#[command(name = "egress-gateway", version, about = "Transparent egress gateway for agent sandboxes")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the eBPF programs, attach every bottle and serve the listeners.
    Run(ConfigArg),
    /// Run a command inside a bottle (its cgroup, its network namespace, a PID namespace of
    /// its own, no inherited descriptors, no capabilities) and return its exit status.
    Exec(ExecArgs),
    /// Remove a bottle's eBPF programs and pins (the bottle then has no egress control).
    Detach(DetachArgs),
    /// Validate the configuration and every routes file, and explain them.
    Check(ConfigArg),
    /// Check the kernel, cgroup v2, bpffs and permissions this machine gives the gateway.
    Doctor(ConfigArg),
    /// Show each bottle's attachment, processes and kernel counters (works while the
    /// gateway is down: the counters are in pinned maps).
    Status(StatusArgs),
    /// Manage the interception CA.
    Ca(ca::CaArgs),
    /// Run the DLP detectors over a file.
    Dlp(dlp::cli::DlpArgs),
    /// The operator console for held requests, and its scriptable forms.
    Supervise(supervise::cli::SuperviseArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The gateway configuration (YAML). Without it, the embedded default is used.
    #[arg(long, short = 'c', env = "EGRESS_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The bottle to run the command in.
    #[arg(long, short = 'b')]
    pub bottle: String,
    /// Run the command as this user (name or uid), with its primary group only.
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// Keep the capabilities the command would have (default: all dropped, no_new_privs).
    #[arg(long)]
    pub keep_caps: bool,
    /// Allow the command to run as root in a bottle that shares the gateway's network
    /// namespace (root there can reach the host's interfaces with packet sockets).
    #[arg(long)]
    pub allow_root: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[arg(long, short = 'b')]
    pub bottle: String,
    /// Detach even if processes still run in the bottle (they get direct egress).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl ConfigArg {
    pub fn load(&self) -> anyhow::Result<config::Config> {
        match &self.config {
            Some(path) => config::Config::load(path).map_err(anyhow::Error::from),
            None => config::Config::embedded_default().map_err(anyhow::Error::from),
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let config = args.load()?;
            app::run(config, args.config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec(args) => {
            let config = args.config.load()?;
            // A bottle of gateway.yaml, or one attached at run time (kept in the state dir).
            let bottle = crate::control::find_bottle(&config, &args.bottle)?;
            let opts =
                crate::exec::ExecOptions { user: args.user, keep_caps: args.keep_caps, allow_root: args.allow_root };
            let status = crate::exec::run(&config, &bottle, &args.command, &opts)?;
            Ok(ExitCode::from(status))
        }
        Command::Detach(args) => {
            let config = args.config.load()?;
            let bottle = config
                .bottle(&args.bottle)
                .with_context(|| format!("no bottle named {:?} in the configuration", args.bottle))?;
            bpf::detach(&config, bottle, args.force, false)?;
            crate::netns::remove_created(bottle)?;
            println!("detached bottle {}", bottle.name);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => {
            let config = args.load()?;
            print!("{}", config.explain());
            // Every routes file too; report all broken ones, not just the first.
            let mut failed = false;
            for b in &config.bottles {
                if let Some(path) = &b.routes {
                    match crate::policy::Routes::load(path) {
                        Ok(_) => println!("routes: {}: ok", path.display()),
                        Err(e) => {
                            eprintln!("egress-gateway: error: {e}");
                            failed = true;
                        }
                    }
                }
                // Checked as `run` checks it, with this process's user as the gateway's.
                if let Some(path) = &b.credentials_file {
                    match crate::credentials::Credentials::load(path) {
                        Ok(c) => println!("credentials: {}: ok, {} values", path.display(), c.len()),
                        Err(e) => {
                            eprintln!("egress-gateway: error: bottle {}: {e}", b.name);
                            failed = true;
                        }
                    }
                }
            }
            if let Some(path) = &config.dlp.rules {
                match crate::dlp::cli::load_rules(path) {
                    Ok(rules) => println!("dlp rules: {}: ok, {} rules", path.display(), rules.len()),
                    Err(e) => {
                        eprintln!("egress-gateway: error: {e:#}");
                        failed = true;
                    }
                }
            }
            Ok(if failed { ExitCode::from(2) } else { ExitCode::SUCCESS })
        }
        Command::Doctor(args) => {
            let config = args.load()?;
            Ok(crate::bpf::doctor::run(&config))
        }
        Command::Status(args) => {
            let config = args.config.load()?;
            let report = bpf::status(&config)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for b in &report {
                    println!(
                        "{:<20} {:<9} processes {:<4} tcp_redirected {:<6} dns_redirected {:<6} refused {:<6} dropped {}",
                        b.bottle,
                        if b.attached { "attached" } else { "detached" },
                        b.processes,
                        b.counters.tcp_redirected,
                        b.counters.dns_redirected,
                        b.counters.refused,
                        b.counters.dropped
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca(args) => ca::run(args),
        Command::Dlp(args) => dlp::cli::run(args),
        Command::Supervise(args) => supervise::cli::run(args),
    }
}
