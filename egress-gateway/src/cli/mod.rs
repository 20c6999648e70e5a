//! The command line: every clap type, one subcommand per operator task. The command
//! families `ca`, `dlp` and `supervise` have a file each here; the modules they drive
//! know nothing of clap.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::{admin, app, bpf, config};

pub mod ca;
pub mod dlp;
pub mod supervise;

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
    /// Attach a bottle to the running gateway (through its admin socket).
    Attach(AttachArgs),
    /// Remove a bottle: the running gateway stops serving it and its eBPF programs and
    /// pins go (the bottle then has no egress control). With the gateway stopped, only a
    /// bottle of the configuration file can be detached (its pins are removed).
    Detach(DetachArgs),
    /// List the running gateway's bottles: from the configuration and attached at run time.
    Bottles(BottlesArgs),
    /// Make the running gateway re-read every bottle's routes (as SIGHUP does), and report.
    Reload(AdminArg),
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
    Dlp(dlp::DlpArgs),
    /// The operator console for held requests, and its scriptable forms.
    Supervise(supervise::SuperviseArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The gateway configuration (YAML). Default: /etc/egress-gateway/gateway.yaml; `run`
    /// and `doctor` fall back to an embedded default when that does not exist.
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
    /// Point the usual TLS trust variables (SSL_CERT_FILE, REQUESTS_CA_BUNDLE,
    /// NODE_EXTRA_CA_CERTS, GIT_SSL_CAINFO, ...) at the gateway's CA files.
    #[arg(long)]
    pub trust_env: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Where the running gateway's admin socket is.
#[derive(Debug, clap::Args)]
pub struct AdminArg {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The admin socket (default: the configuration's `admin_socket`).
    #[arg(long, env = "EGRESS_GATEWAY_ADMIN_SOCKET")]
    pub admin_socket: Option<PathBuf>,
}

impl AdminArg {
    /// The override, or the configuration's socket (the configuration is read only then).
    pub fn client(&self) -> anyhow::Result<admin::AdminClient> {
        let path = match (&self.admin_socket, self.config.path()) {
            (Some(p), _) => p.clone(),
            (None, Some(config)) => config::Config::load(&config)?.admin_socket,
            (None, None) => config::DEFAULT_ADMIN_SOCKET.into(),
        };
        Ok(admin::AdminClient::new(path))
    }
}

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    #[command(flatten)]
    pub admin: AdminArg,
    /// The new bottle's name (1-64 characters of a-z, 0-9, '-', '_').
    #[arg(long, short = 'b')]
    pub bottle: String,
    /// Its cgroup: relative to the cgroup v2 mount (not to this directory), or absolute.
    #[arg(long)]
    pub cgroup: PathBuf,
    /// `new` (the gateway creates /run/netns/egress-NAME) or a namespace file.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// Its routes file; without one, everything is denied.
    #[arg(long)]
    pub routes: Option<PathBuf>,
    /// A KEY=VALUE file of the bottle's own credentials (mode 0600).
    #[arg(long = "credentials")]
    pub credentials_file: Option<PathBuf>,
    /// A host path the bottle can see (repeatable): the state directory and supervise
    /// stores must be outside them.
    #[arg(long = "mount")]
    pub mounts: Vec<PathBuf>,
    /// A unix socket the bottle may connect or send to (repeatable): `/path`, a
    /// directory `/dir/`, or `@abstract`; `unpoliced` alone opts out of the kernel policing.
    #[arg(long = "unix-socket")]
    pub unix_sockets: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct BottlesArgs {
    #[command(flatten)]
    pub admin: AdminArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    #[command(flatten)]
    pub admin: AdminArg,
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

/// Where every command looks without `--config` (the path the systemd unit uses).
pub const DEFAULT_CONFIG: &str = "/etc/egress-gateway/gateway.yaml";

impl ConfigArg {
    /// `--config`, else `/etc/egress-gateway/gateway.yaml`; without either, an error that
    /// says so (only `run` and `doctor` fall back to the embedded default).
    pub fn load(&self) -> anyhow::Result<config::Config> {
        match self.path() {
            Some(path) => config::Config::load(&path).map_err(anyhow::Error::from),
            None => anyhow::bail!(
                "no configuration: pass --config FILE (or EGRESS_GATEWAY_CONFIG), or create {DEFAULT_CONFIG}"
            ),
        }
    }

    /// As `load`, falling back to the embedded default (one bottle, `default`, that may
    /// reach nothing), and saying so on stderr.
    pub fn load_or_embedded(&self) -> anyhow::Result<config::Config> {
        match self.path() {
            Some(path) => config::Config::load(&path).map_err(anyhow::Error::from),
            None => {
                eprintln!(
                    "egress-gateway: no --config and no {DEFAULT_CONFIG}: using the embedded default configuration \
                     (bottle `default`, cgroup egress/default, no routes: everything refused)"
                );
                config::Config::embedded_default().map_err(anyhow::Error::from)
            }
        }
    }

    /// The file to read: `--config`, or the default path when it exists.
    pub fn path(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| {
            let default = PathBuf::from(DEFAULT_CONFIG);
            default.exists().then_some(default)
        })
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let config = args.load_or_embedded()?;
            app::run(config, args.path())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec(args) => {
            let config = args.config.load()?;
            // A bottle of gateway.yaml, or one attached at run time (kept in the state dir).
            let bottle = crate::control::find_bottle(&config, &args.bottle)?;
            let opts = crate::exec::ExecOptions {
                user: args.user,
                keep_caps: args.keep_caps,
                allow_root: args.allow_root,
                trust_env: args.trust_env,
            };
            let status = crate::exec::run(&config, &bottle, &args.command, &opts)?;
            Ok(ExitCode::from(status))
        }
        Command::Attach(args) => {
            let client = args.admin.client()?;
            let request = attach_request(&args)?;
            let info = block_on(client.attach(&args.bottle, &request))??;
            println!("attached bottle {} (cgroup {})", info.name, info.cgroup.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Detach(args) => detach(&args),
        Command::Bottles(args) => {
            let bottles = block_on(args.admin.client()?.list())??;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&bottles)?);
            } else {
                print!("{}", bottles_table(&bottles));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload(args) => {
            let report = block_on(args.client()?.reload())??;
            for name in &report.reloaded {
                println!("reloaded {name}");
            }
            for f in &report.failed {
                eprintln!("egress-gateway: error: bottle {}: {} (its previous routes stay)", f.bottle, f.error);
            }
            Ok(if report.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        Command::Check(args) => {
            let config = args.load()?;
            Ok(crate::check::run(&config))
        }
        Command::Doctor(args) => {
            let config = args.load_or_embedded()?;
            Ok(crate::bpf::doctor::run(&config))
        }
        Command::Status(args) => {
            let config = args.config.load()?;
            // gateway.yaml's bottles and those attached at run time.
            let mut bottles = config.bottles.clone();
            bottles.extend(crate::control::RuntimeStore::new(&config.state_dir).bottles());
            let report = bpf::status(&config, &bottles);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for b in &report {
                    let counters = match &b.counters {
                        Some(c) => format!(
                            "tcp_redirected {:<6} dns_redirected {:<6} refused {:<6} dropped {:<6} unix_refused {}",
                            c.tcp_redirected, c.dns_redirected, c.refused, c.dropped, c.unix_refused
                        ),
                        None => "counters unreadable".to_string(),
                    };
                    println!(
                        "{:<20} {:<9} processes {:<4} {counters}",
                        b.bottle,
                        if b.attached { "attached" } else { "detached" },
                        b.processes,
                    );
                    for why in &b.unreadable {
                        println!("  unreadable: {why}");
                    }
                }
            }
            // The report is incomplete: a script must not take it for a healthy one.
            let unreadable: Vec<_> = report.iter().flat_map(|b| &b.unreadable).collect();
            if let Some(first) = unreadable.first() {
                eprintln!("egress-gateway status: {} kernel map(s) unreadable, first: {first}", unreadable.len());
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca(args) => ca::run(args),
        Command::Dlp(args) => dlp::run(args),
        Command::Supervise(args) => supervise::run(args),
    }
}

/// The CLI's admin commands are one request each: a small runtime is enough.
fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a runtime")?;
    Ok(rt.block_on(f))
}

/// The request of `attach`, its file paths made absolute here: the gateway has no
/// working directory to resolve them against. The cgroup stays as written.
fn attach_request(args: &AttachArgs) -> anyhow::Result<admin::api::BottleRequest> {
    let abs = |p: &PathBuf| std::path::absolute(p).with_context(|| format!("{}", p.display()));
    let netns = match &args.netns {
        Some(p) if p.as_os_str() == "new" => Some(p.clone()),
        Some(p) => Some(abs(p)?),
        None => None,
    };
    Ok(admin::api::BottleRequest {
        name: None,
        cgroup: args.cgroup.clone(),
        netns,
        routes: args.routes.as_ref().map(abs).transpose()?,
        routes_inline: None,
        credentials_file: args.credentials_file.as_ref().map(abs).transpose()?,
        supervise: None,
        mounts: args.mounts.iter().map(abs).collect::<anyhow::Result<_>>()?,
        unix_sockets: unix_sockets(&args.unix_sockets)?,
    })
}

/// `--unix-socket` values: entries, or `unpoliced` alone.
fn unix_sockets(values: &[String]) -> anyhow::Result<crate::config::UnixSockets> {
    use crate::config::{UnixRule, UnixSockets, unix::UNPOLICED};
    if values.iter().any(|v| v == UNPOLICED) {
        if values.len() > 1 {
            anyhow::bail!("--unix-socket {UNPOLICED} cannot be combined with other --unix-socket entries");
        }
        return Ok(UnixSockets::Unpoliced);
    }
    let rules = values
        .iter()
        .map(|v| UnixRule::parse(v).map_err(|e| anyhow::anyhow!("--unix-socket: {e}")))
        .collect::<anyhow::Result<_>>()?;
    Ok(UnixSockets::Policed(rules))
}

/// Through the running gateway when it answers, so it also stops serving the bottle.
/// When it is not running, a bottle of the configuration file is detached offline as
/// before (its pins removed; the gateway attaches it again when it starts, since the
/// file still names it). A bottle attached at run time is refused offline: the gateway
/// may attach it again at start, and only the gateway knows it.
fn detach(args: &DetachArgs) -> anyhow::Result<ExitCode> {
    let client = args.admin.client()?;
    match block_on(client.detach(&args.bottle, args.force))? {
        Ok(()) => {
            println!("detached bottle {}", args.bottle);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is_not_running() => {
            // Offline: the pins (and a namespace the gateway made) are removed directly.
            // A bottle attached at run time is forgotten too, or the next start would
            // attach it again.
            let config = args.admin.config.load()?;
            let bottle = crate::control::find_bottle(&config, &args.bottle).with_context(|| e.to_string())?;
            eprintln!("egress-gateway: {e}; detaching bottle {} offline", bottle.name);
            bpf::detach(&config, &bottle, args.force, false)?;
            crate::netns::remove_created(&bottle)?;
            if config.bottle(&bottle.name).is_none() {
                crate::control::RuntimeStore::new(&config.state_dir).remove(&bottle.name)?;
                println!("detached bottle {} (attached at run time: forgotten)", bottle.name);
            } else {
                println!(
                    "detached bottle {} (its pins are removed; `egress-gateway run` attaches it again)",
                    bottle.name
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.into()),
    }
}

fn bottles_table(bottles: &[admin::BottleInfo]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<20} {:<8} {:<9} {:>9}  {:<28} {:<20} {}\n",
        "NAME", "SOURCE", "STATE", "PROCESSES", "CGROUP", "NETNS", "ROUTES"
    );
    for b in bottles {
        let routes = match (&b.routes, b.routes_inline) {
            (Some(p), _) => p.display().to_string(),
            (None, true) => "(inline)".into(),
            (None, false) => "(none: everything denied)".into(),
        };
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:<9} {:>9}  {:<28} {:<20} {}",
            b.name,
            match b.source {
                admin::BottleSource::Config => "config",
                admin::BottleSource::Runtime => "runtime",
            },
            if b.attached { "attached" } else { "detached" },
            b.processes,
            b.cgroup.display(),
            b.netns.as_deref().unwrap_or("-"),
            routes
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn attach_makes_paths_absolute_but_not_the_cgroup() {
        let cli = Cli::try_parse_from([
            "egress-gateway",
            "attach",
            "--admin-socket",
            "/tmp/a.sock",
            "-b",
            "job",
            "--cgroup",
            "egress/job",
            "--netns",
            "new",
            "--routes",
            "routes.yaml",
            "--credentials",
            "/etc/eg/job.env",
            "--mount",
            "work",
        ])
        .unwrap();
        let Command::Attach(args) = cli.command else { panic!() };
        let r = attach_request(&args).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(r.cgroup, PathBuf::from("egress/job"));
        assert_eq!(r.netns, Some(PathBuf::from("new")));
        assert_eq!(r.routes, Some(cwd.join("routes.yaml")));
        assert_eq!(r.credentials_file, Some(PathBuf::from("/etc/eg/job.env")));
        assert_eq!(r.mounts, vec![cwd.join("work")]);
        assert_eq!(args.admin.client().unwrap().path(), std::path::Path::new("/tmp/a.sock"));
    }

    #[test]
    fn the_socket_comes_from_the_configuration_without_an_override() {
        let cli = Cli::try_parse_from(["egress-gateway", "bottles", "--json"]).unwrap();
        let Command::Bottles(args) = cli.command else { panic!() };
        let expected = std::env::var_os("EGRESS_GATEWAY_ADMIN_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| config::DEFAULT_ADMIN_SOCKET.into());
        if std::env::var_os("EGRESS_GATEWAY_CONFIG").is_none() {
            assert_eq!(args.admin.client().unwrap().path(), expected);
        }
    }

    #[test]
    fn table_shows_each_bottle() {
        let mut info = admin::BottleInfo::new(
            &config::Config::embedded_default().unwrap().bottles[0],
            admin::BottleSource::Config,
            false,
        );
        info.attached = true;
        let table = bottles_table(&[info]);
        assert!(table.lines().nth(1).unwrap().starts_with("default              config   attached"), "{table}");
        assert!(table.contains("(none: everything denied)"), "{table}");
    }
}
