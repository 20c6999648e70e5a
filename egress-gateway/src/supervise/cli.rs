//! `egress-gateway supervise`: the scriptable operator commands over every bottle's
//! queue: list, show, approve (a reason is required), reject.
use std::process::ExitCode;

use anyhow::{Context, bail};

use super::queue::{self, QueueDir, Response, Status};
use crate::{cli::ConfigArg, config::Config};

#[derive(Debug, clap::Args)]
pub struct SuperviseArgs {
    #[command(subcommand)]
    pub command: Option<SuperviseCommand>,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, clap::Subcommand)]
pub enum SuperviseCommand {
    /// Pending proposals of every bottle, newest first.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// One proposal in full.
    Show {
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Approve: the value is allowed for the gateway's life.
    Approve {
        id: String,
        /// Why (required, recorded in the response notes).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Reject: the held request gets a 403.
    Reject {
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Every supervised bottle's queue.
fn queues(config: &Config) -> Vec<(String, QueueDir)> {
    config
        .bottles
        .iter()
        .filter_map(|b| {
            b.supervise.as_ref().map(|s| (b.name.clone(), QueueDir::new(s.queue_dir(&config.state_dir, &b.name))))
        })
        .collect()
}

fn pending(config: &Config) -> anyhow::Result<Vec<(QueueDir, queue::Proposal)>> {
    let mut out = Vec::new();
    for (bottle, q) in queues(config) {
        let list = q.pending().with_context(|| format!("reading bottle {bottle}'s queue {}", q.path().display()))?;
        out.extend(list.into_iter().map(|p| (q.clone(), p)));
    }
    out.sort_by_key(|(_, p)| std::cmp::Reverse(p.created_at));
    Ok(out)
}

fn find(config: &Config, id: &str) -> anyhow::Result<(QueueDir, queue::Proposal)> {
    pending(config)?
        .into_iter()
        .find(|(_, p)| p.id == id)
        .with_context(|| format!("no pending proposal {id:?} (unknown, or already decided)"))
}

fn decide(config: &Config, id: &str, status: Status, reason: &str) -> anyhow::Result<()> {
    let (q, _) = find(config, id)?;
    let who = std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "operator".into());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).ok();
    q.write_response(id, &Response { status, notes: reason.to_string(), decided_by: Some(who), decided_at: now })?;
    Ok(())
}

pub fn run(args: SuperviseArgs) -> anyhow::Result<ExitCode> {
    let Some(command) = args.command else {
        bail!(
            "the interactive console is not available in this version: use `supervise list`, `show`, `approve`, `reject`"
        );
    };
    match command {
        SuperviseCommand::List { json, config } => {
            let list = pending(&config.load()?)?;
            if json {
                let items: Vec<&queue::Proposal> = list.iter().map(|(_, p)| p).collect();
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else if list.is_empty() {
                println!("no pending proposals");
            } else {
                for (_, p) in &list {
                    println!(
                        "{}  {}  {} {} {}  {}",
                        p.id, p.bottle, p.payload.method, p.payload.host, p.payload.path, p.payload.reason
                    );
                }
            }
        }
        SuperviseCommand::Show { id, config } => {
            let (_, p) = find(&config.load()?, &id)?;
            println!("{}", serde_json::to_string_pretty(&p)?);
        }
        SuperviseCommand::Approve { id, reason, config } => {
            if reason.trim().is_empty() {
                bail!("approving needs a reason (--reason TEXT): it is recorded with the decision");
            }
            decide(&config.load()?, &id, Status::Approved, &reason)?;
            println!("approved {id}");
        }
        SuperviseCommand::Reject { id, reason, config } => {
            decide(&config.load()?, &id, Status::Rejected, &reason)?;
            println!("rejected {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
