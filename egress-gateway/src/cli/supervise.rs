//! `egress-gateway supervise`: without a subcommand, the console; with one, the
//! scriptable forms over every bottle's store: list, show, approve (a reason is
//! required), reject, history. Errors change nothing and exit non-zero.
use std::process::ExitCode;

use super::ConfigArg;
use crate::supervise::{
    operator::Operator,
    protocol::{self, Scope, Status},
};

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
        /// once: only the held request; gateway: the value to this host for the gateway's
        /// life; persist: also across restarts (needs allow_persist); any-host: the value
        /// to every host of the bottle.
        #[arg(long, value_parser = parse_scope, default_value = "gateway")]
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
    /// Per bottle: requests held now against the cap (max_pending), requests refused
    /// over it (429) and holds abandoned by their client.
    Status {
        #[arg(long)]
        json: bool,
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

/// `--scope`: one of the scopes' names (`once`, `gateway`, `persist`, `any-host`).
fn parse_scope(name: &str) -> Result<Scope, String> {
    Scope::ALL.into_iter().find(|s| s.as_str() == name).ok_or_else(|| {
        let names: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
        format!("{name:?} is not a scope: one of {}", names.join(", "))
    })
}

fn operator(config: &ConfigArg) -> anyhow::Result<Operator> {
    Ok(Operator::open(&config.load()?)?)
}

pub fn run(args: SuperviseArgs) -> anyhow::Result<ExitCode> {
    let Some(command) = args.command else {
        return crate::supervise::console::run(&args.config.load()?);
    };
    match command {
        SuperviseCommand::List { json, config } => print!("{}", list_output(&operator(&config)?, json)?),
        SuperviseCommand::Show { id, config } => {
            // `find` gives the proposal as shown: inert text in the JSON's strings.
            let (_, p) = operator(&config)?.find(&id)?;
            println!("{}", serde_json::to_string_pretty(&p)?);
        }
        SuperviseCommand::Approve { id, reason, scope, config } => {
            let p = operator(&config)?.decide(&id, Status::Approved, &reason, Some(scope))?;
            println!("approved {id} (bottle {}, {}, scope {scope}: {})", p.bottle, p.payload.host, scope.meaning());
        }
        SuperviseCommand::Reject { id, reason, config } => {
            let p = operator(&config)?.decide(&id, Status::Rejected, &reason, None)?;
            println!("rejected {id} (bottle {}, {})", p.bottle, p.payload.host);
        }
        SuperviseCommand::History { json, config } => print!("{}", history_output(&operator(&config)?, json)?),
        SuperviseCommand::Status { json, config } => {
            let loaded = config.load()?;
            print!("{}", status_output(&Operator::open(&loaded)?, &loaded, json)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `supervise list`'s output. The operator's reads are inert (`render::inert`): no
/// agent-controlled control, format or bidi character reaches the text or the JSON.
pub fn list_output(op: &Operator, json: bool) -> anyhow::Result<String> {
    let now = protocol::now();
    list_text(json, &op.pending()?, "no pending proposals", |p| format!("{}  {}", p.id, p.summary(now)))
}

/// `supervise status`'s output.
pub fn status_output(op: &Operator, config: &crate::config::Config, json: bool) -> anyhow::Result<String> {
    let status = op.status(config)?;
    list_text(json, &status, "no supervised bottle", |b| {
        format!(
            "{:<20} pending {}/{}   refused over the cap (429) {}   abandoned {}",
            b.bottle,
            b.pending,
            b.max_pending,
            b.counters.get("refused_over_cap").copied().unwrap_or(0),
            b.counters.get("abandoned").copied().unwrap_or(0)
        )
    })
}

/// `supervise history`'s output (inert, as `list_output`).
pub fn history_output(op: &Operator, json: bool) -> anyhow::Result<String> {
    list_text(json, &op.history()?, "no decisions yet", |e| format!("{}  ({})", e.summary(), e.proposal_id))
}

/// A JSON array, or one line per item (`empty` when there are none); newline-terminated.
fn list_text<T: serde::Serialize>(
    json: bool,
    items: &[T],
    empty: &str,
    line: impl Fn(&T) -> String,
) -> anyhow::Result<String> {
    let mut out = String::new();
    if json {
        out.push_str(&serde_json::to_string_pretty(items)?);
        out.push('\n');
    } else if items.is_empty() {
        out.push_str(empty);
        out.push('\n');
    } else {
        for item in items {
            out.push_str(&line(item));
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::{
        console::tests::setup,
        store::tests::{has_unsafe, hostile_proposal},
    };

    /// Every string in a JSON value.
    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            serde_json::Value::Object(o) => o.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }

    #[test]
    fn list_and_history_text_and_json_are_inert() {
        let (config, demo, _) = setup();
        let p = hostile_proposal("demo");
        demo.write_proposal(&p).unwrap();
        let op = Operator::open(&config).unwrap();
        let check = |out: String, json: bool| {
            assert!(!has_unsafe(&out), "{out:?}");
            if !json {
                assert!(out.contains("trusted.example\\r\\x1b[1A"), "{out}");
            } else {
                // JSON escaping alone would decode back to ESC: the strings themselves are inert.
                let mut all = Vec::new();
                strings(&serde_json::from_str(&out).unwrap(), &mut all);
                assert!(all.iter().all(|s| !has_unsafe(s)), "{all:?}");
                assert!(all.iter().any(|s| s.starts_with("trusted.example\\r\\x1b[1A")), "{all:?}");
                assert!(all.iter().any(|s| s.contains("\\u{202e}")), "{all:?}");
            }
        };
        check(list_output(&op, false).unwrap(), false);
        check(list_output(&op, true).unwrap(), true);
        op.decide(&p.id, Status::Rejected, "nope", None).unwrap();
        check(history_output(&op, false).unwrap(), false);
        check(history_output(&op, true).unwrap(), true);
        let (_, shown) = op.find(&p.id).unwrap();
        check(serde_json::to_string_pretty(&shown).unwrap(), true);
    }
}
