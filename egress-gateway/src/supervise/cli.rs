//! `egress-gateway supervise`: without a subcommand, the console; with one, the
//! scriptable forms over every bottle's store: list, show, approve (a reason is
//! required), reject, history. Errors change nothing and exit non-zero.
use std::process::ExitCode;

use super::{
    operator::Operator,
    protocol::{self, Scope, Status},
};
use crate::cli::ConfigArg;

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
    /// Approve: the held request is released.
    Approve {
        id: String,
        /// Why (required, recorded in the response notes and the audit).
        #[arg(long)]
        reason: String,
        /// once: only the held request; gateway: the value for the gateway's life;
        /// persist: also across restarts (needs allow_persist).
        #[arg(long, value_enum, default_value_t = Scope::Gateway)]
        scope: Scope,
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
    /// Every decision (who, when, reason, scope, status), oldest first.
    History {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn operator(config: &ConfigArg) -> anyhow::Result<Operator> {
    Ok(Operator::open(&config.load()?)?)
}

pub fn run(args: SuperviseArgs) -> anyhow::Result<ExitCode> {
    let Some(command) = args.command else {
        return super::console::run(&args.config.load()?);
    };
    match command {
        SuperviseCommand::List { json, config } => {
            let now = protocol::now();
            print_list(json, &operator(&config)?.pending()?, "no pending proposals", |p| {
                format!("{}  {}", p.id, p.summary(now))
            })?;
        }
        SuperviseCommand::Show { id, config } => {
            let (_, p) = operator(&config)?.find(&id)?;
            println!("{}", serde_json::to_string_pretty(&p)?);
        }
        SuperviseCommand::Approve { id, reason, scope, config } => {
            let p = operator(&config)?.decide(&id, Status::Approved, &reason, Some(scope))?;
            println!("approved {id} (bottle {}, {}, scope {scope})", p.bottle, p.payload.host);
        }
        SuperviseCommand::Reject { id, reason, config } => {
            let p = operator(&config)?.decide(&id, Status::Rejected, &reason, None)?;
            println!("rejected {id} (bottle {}, {})", p.bottle, p.payload.host);
        }
        SuperviseCommand::History { json, config } => {
            print_list(json, &operator(&config)?.history()?, "no decisions yet", |e| {
                format!("{}  ({})", e.summary(), e.proposal_id)
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A JSON array, or one line per item (`empty` when there are none).
fn print_list<T: serde::Serialize>(
    json: bool,
    items: &[T],
    empty: &str,
    line: impl Fn(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(items)?);
    } else if items.is_empty() {
        println!("{empty}");
    } else {
        for item in items {
            println!("{}", line(item));
        }
    }
    Ok(())
}
