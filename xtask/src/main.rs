//! Project tasks: `bootstrap` installs the eBPF toolchain, `run` builds and starts the
//! gateway, `test` runs the whole suite (lint, unit, privileged end-to-end), `bench`
//! runs the benchmarks. Every task bootstraps first, idempotently.
mod bootstrap;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs (nightly rust-src, LLVM 22, bpf-linker); idempotent.
    Bootstrap,
    /// Build in release mode and run `egress-gateway run` (root needed) with these args.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Lint, then every unit and end-to-end test (end-to-end needs root); also installs
    /// what the tests run (Podman, runc, busybox-static, clients) when missing.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run a benchmark: `dlp` or `proxy`.
    Bench { name: String },
    /// Print the DLP accuracy reports (recall per provider family and format, benign
    /// false positives) over the generated corpus in egress-dlp/testdata/dlp-corpus
    /// and the independent one (other scanners' rule examples) in testdata/dlp-independent.
    DlpReport,
    /// Rewrite the DLP corpus files from their generator.
    DlpCorpus,
    /// Re-extract the independent DLP corpus from Nosey Parker's and Kingfisher's rule
    /// files (local clones or git directories; their `HEAD` is read).
    DlpIndependent {
        #[arg(long)]
        noseyparker: PathBuf,
        #[arg(long)]
        kingfisher: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    bootstrap::ensure_cargo_bin_on_path();
    match cli.task {
        Task::Bootstrap => bootstrap::run(),
        Task::Run { args } => {
            bootstrap::run()?;
            cargo(&["build", "--release", "-p", "egress-gateway"])?;
            let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
            let bin = target.join("release/egress-gateway");
            let mut argv = vec!["run".to_string()];
            argv.extend(args);
            let status =
                Command::new(&bin).args(&argv).status().with_context(|| format!("starting {}", bin.display()))?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test { args } => {
            bootstrap::run()?;
            bootstrap::run_test_deps()?;
            cargo(&["fmt", "--all", "--", "--check"]).context("formatting: run `cargo fmt --all`")?;
            cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--features",
                "egress-e2e/root-tests",
                "--",
                "-D",
                "warnings",
            ])?;
            // The end-to-end tests run the binary, so build it first.
            cargo(&["build", "-p", "egress-gateway"])?;
            let mut argv: Vec<&str> = vec!["test", "--workspace", "--features", "egress-e2e/root-tests"];
            if !args.is_empty() {
                argv.push("--");
                argv.extend(args.iter().map(String::as_str));
            }
            cargo_test_with_summary(&argv)
        }
        Task::DlpReport => {
            bootstrap::run()?;
            // Both reports: `accuracy_report` (generated corpus), `independent_report`.
            let args = ["test", "-p", "egress-dlp", "--test", "dlp_corpus", "--", "report", "--nocapture"];
            cargo(&[&args[..], &["--test-threads", "1"]].concat())
        }
        Task::DlpIndependent { noseyparker, kingfisher } => {
            bootstrap::run()?;
            let path = |p: PathBuf| -> anyhow::Result<String> {
                let abs = std::path::absolute(&p)?;
                abs.to_str().map(str::to_string).with_context(|| format!("{} is not UTF-8", p.display()))
            };
            let (np, kf) = (path(noseyparker)?, path(kingfisher)?);
            let args = ["test", "-p", "egress-dlp", "--test", "dlp_corpus", "--", "--exact"];
            let args = [&args[..], &["independent::independent_corpus_matches_its_manifest", "--nocapture"]].concat();
            let env = [("DLP_INDEPENDENT_NOSEYPARKER", np.as_str()), ("DLP_INDEPENDENT_KINGFISHER", kf.as_str())];
            cargo_with_env(&args, &env)
        }
        Task::DlpCorpus => {
            bootstrap::run()?;
            let args = ["test", "-p", "egress-dlp", "--test", "dlp_corpus", "--", "committed_corpus"];
            cargo_with_env(&args, &[("DLP_CORPUS_WRITE", "1")])
        }
        Task::Bench { name } => {
            bootstrap::run()?;
            match name.as_str() {
                // Release builds of the gateway and the load generator; runs as root.
                "proxy" => {
                    cargo(&[
                        "build",
                        "--release",
                        "-p",
                        "egress-gateway",
                        "-p",
                        "egress-e2e",
                        "--bin",
                        "egress-gateway",
                        "--bin",
                        "egress-bench",
                    ])?;
                    let target =
                        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
                    let status = Command::new(target.join("release/egress-bench"))
                        .env("EGRESS_GATEWAY_BIN", target.join("release/egress-gateway"))
                        .status()
                        .context("running egress-bench")?;
                    if !status.success() {
                        bail!("egress-bench failed ({status})");
                    }
                    Ok(())
                }
                "dlp" => cargo(&["bench", "-p", "egress-dlp", "--bench", "dlp", "--bench", "dlp_latency"]),
                other => bail!("unknown benchmark {other:?}: expected dlp or proxy"),
            }
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Runs `cargo test`, passing its output through, and ends with one line totalling every
/// test binary's results (`N passed, N failed`), so a reader need not add them up.
fn cargo_test_with_summary(args: &[&str]) -> anyhow::Result<()> {
    use std::io::{BufRead, BufReader};
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut child =
        Command::new(cargo).args(args).stdout(std::process::Stdio::piped()).spawn().context("running cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |label: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim().strip_suffix(label).and_then(|n| n.trim().rsplit(' ').next()?.parse::<u64>().ok())
                    })
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("{passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// Runs cargo with `args` and fails if it does.
fn cargo(args: &[&str]) -> anyhow::Result<()> {
    cargo_with_env(args, &[])
}

/// Runs cargo with `args` and extra environment variables, and fails if it does.
fn cargo_with_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(cargo).args(args).envs(env.iter().copied()).status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
