//! `egress-gateway dlp scan`: run the outbound detectors over a file or stdin and print
//! each finding (rule, reason, byte offsets, redacted context; never the value). Exit 1
//! when something was found.
use std::{io::Read, path::PathBuf, process::ExitCode};

use anyhow::Context;

use crate::{
    dlp::{Engine, KnownSecrets, Location, Selection, known::DEFAULT_PARTIAL_MIN_LEN, load_rules},
    supervise::render::inert,
};

#[derive(Debug, clap::Args)]
pub struct DlpArgs {
    #[command(subcommand)]
    pub command: DlpCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DlpCommand {
    /// Scan a file (or `-` for stdin) with the outbound detectors.
    Scan {
        /// Extra rules in gitleaks TOML format.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// One JSON object per finding.
        #[arg(long)]
        json: bool,
        /// Also run the opt-in entropy detector.
        #[arg(long)]
        entropy: bool,
        #[arg(default_value = "-")]
        file: String,
    },
}

pub fn run(args: DlpArgs) -> anyhow::Result<ExitCode> {
    let DlpCommand::Scan { rules, json, entropy, file } = args.command;
    let extra = match &rules {
        Some(p) => load_rules(p)?,
        None => Vec::new(),
    };
    let known = KnownSecrets::from_env(std::env::vars(), &[], DEFAULT_PARTIAL_MIN_LEN);
    let engine = Engine::new(known, extra)?;
    let mut data = Vec::new();
    if file == "-" {
        std::io::stdin().read_to_end(&mut data).context("reading stdin")?;
    } else {
        data = std::fs::read(&file).with_context(|| format!("reading {file}"))?;
    }
    let text = String::from_utf8_lossy(&data);
    let sel = Selection { token_patterns: true, known_secrets: true, entropy };
    let mut findings = Vec::new();
    engine.scan_surface(&text, Location::Body, sel, &std::collections::HashSet::new(), &mut findings);
    for f in &findings {
        // The reason may name a header; the context is the scanned text: both inert.
        let (reason, context) = (inert(&f.reason), inert(&f.context));
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "rule_id": f.rule_id, "reason": reason, "start": f.span.0, "end": f.span.1,
                    "context": context, "severity": format!("{:?}", f.severity).to_lowercase(),
                })
            );
        } else {
            println!("{}:{}-{}: {} [{}]: {}", inert(&file), f.span.0, f.span.1, reason, f.rule_id, context);
        }
    }
    Ok(if findings.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
