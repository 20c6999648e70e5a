//! The gateway-wide configuration (`gateway.yaml`): listeners, state, resolver overrides,
//! upstream trust and the bottles. Pure: `Config::parse` turns text into a validated
//! `Config`; only `Config::load` touches the file system.
mod error;
pub mod limits;
pub mod unix;
pub mod yaml;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
};

use serde::Deserialize;

pub use error::{ConfigError, Problem, Problems};
pub use limits::Limits;
pub use unix::{UnixRule, UnixSockets};

use crate::supervise::{SuperviseConfig, SuperviseEnv};

/// Default transparent TCP listener.
pub const DEFAULT_LISTEN: SocketAddrV4 = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 15001);
/// Default DNS listener.
pub const DEFAULT_DNS_LISTEN: SocketAddrV4 = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 15053);
pub const DEFAULT_STATE_DIR: &str = "/var/lib/egress-gateway";
/// Where links and maps are pinned; one directory per gateway instance.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/egress-gateway";
/// The admin socket: run-time attach/detach, listing, reload (root only, mode 0600).
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/egress-gateway/admin.sock";
/// Where `netns: new` bottles' namespaces are kept (as `ip netns` does).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The configuration used when `--config` is not given: one bottle, `default`, whose
/// routes allow nothing.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.yaml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<SocketAddrV4>,
    dns_listen: Option<SocketAddrV4>,
    state_dir: Option<PathBuf>,
    bpffs_dir: Option<PathBuf>,
    admin_socket: Option<PathBuf>,
    /// A TCP listener for `/healthz`, `/readyz` and `/metrics` (off by default).
    admin_listen: Option<SocketAddr>,
    /// Mount point of the cgroup v2 hierarchy; found in /proc/self/mountinfo when absent.
    cgroup_root: Option<PathBuf>,
    #[serde(default)]
    hosts: BTreeMap<String, OneOrMany<IpAddr>>,
    #[serde(default)]
    upstream_ca_files: Vec<PathBuf>,
    #[serde(default)]
    bottles: Vec<RawBottle>,
    #[serde(default)]
    dlp: DlpConfig,
    /// Upstream name servers of the gateway's resolver; empty: /etc/resolv.conf's.
    #[serde(default)]
    resolvers: Vec<SocketAddr>,
    #[serde(default)]
    dns: DnsConfig,
    #[serde(default)]
    limits: limits::RawLimits,
    /// Seconds a stopping gateway (SIGTERM) lets its connections in flight finish.
    drain_seconds: Option<u64>,
}

/// The gateway-wide `dns:` block: limits on what bottles can make the resolver do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Distinct names under a wildcard route one bottle may resolve per minute (DNS
    /// answers); further new names get NXDOMAIN. 0: no limit.
    pub new_names_per_minute: u32,
    /// Lookups one bottle may have waiting on upstream name servers at once.
    pub concurrent_lookups: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig { new_names_per_minute: 60, concurrent_lookups: 16 }
    }
}

/// The gateway-wide `dlp:` block.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlpConfig {
    /// A gitleaks-format TOML file of extra token rules (relative to this file).
    pub rules: Option<PathBuf>,
    /// Variables whose names start with one of these are known secrets (added to
    /// `BOT_BOTTLE_SENSITIVE_PREFIXES` and `EGRESS_TOKEN_*`).
    #[serde(default)]
    pub sensitive_prefixes: Vec<String>,
    /// Shortest fragment of a known secret that counts as a leak.
    pub partial_min_len: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

/// One bottle entry as written: in gateway.yaml's `bottles:`, or (with the name taken
/// from the URL) in an admin API request. `Bottle::from_raw` validates it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawBottle {
    pub name: String,
    pub cgroup: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routes: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supervise: Option<SuperviseConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<PathBuf>,
    /// The unix sockets the bottle may connect or send to; default: none.
    #[serde(default, skip_serializing_if = "UnixSockets::is_default")]
    pub unix_sockets: UnixSockets,
}

/// How the relative paths of a bottle entry (`routes`, `credentials_file`, the supervise
/// store) are taken.
#[derive(Debug, Clone, Copy)]
pub enum PathBase<'a> {
    /// Relative to this directory: gateway.yaml's.
    Dir(&'a Path),
    /// Refused: an admin API request has no directory to be relative to (the CLI makes
    /// its paths absolute before sending them).
    AbsoluteOnly,
}

/// A validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from; `None` for the embedded default.
    pub source: Option<PathBuf>,
    pub listen: SocketAddrV4,
    pub dns_listen: SocketAddrV4,
    pub state_dir: PathBuf,
    pub bpffs_dir: PathBuf,
    pub admin_socket: PathBuf,
    /// The read-only TCP admin listener (health, readiness, metrics), if any.
    pub admin_listen: Option<SocketAddr>,
    pub cgroup_root: Option<PathBuf>,
    /// Resolver overrides, lower-case names.
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
    /// Extra roots for upstream TLS, resolved against the config file's directory.
    pub upstream_ca_files: Vec<PathBuf>,
    pub bottles: Vec<Bottle>,
    pub dlp: DlpConfig,
    /// Upstream name servers (`resolvers:`); empty: the system's (/etc/resolv.conf).
    pub resolvers: Vec<SocketAddr>,
    pub dns: DnsConfig,
    /// Memory, descriptor and time limits (`limits:`).
    pub limits: Limits,
    /// How long a stopping gateway lets its connections in flight finish (`drain_seconds:`).
    pub drain: std::time::Duration,
}

/// `drain_seconds` when gateway.yaml does not say.
pub const DEFAULT_DRAIN_SECONDS: u64 = 30;

/// Where a bottle's network namespace comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Netns {
    /// `netns: new`: the gateway creates `/run/netns/egress-<bottle>` with only `lo` up.
    New,
    /// An existing namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`).
    Path(PathBuf),
}

impl Netns {
    /// The namespace file this bottle's namespace is (or will be) reachable at.
    pub fn path(&self, bottle: &str) -> PathBuf {
        match self {
            Netns::New => Path::new(NETNS_RUN_DIR).join(format!("egress-{bottle}")),
            Netns::Path(p) => p.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Bottle {
    pub name: String,
    /// The id the kernel programs tag entries with (`egress_common::bottle_id`).
    pub id: u32,
    /// As written: relative to the cgroup v2 mount, or absolute.
    pub cgroup: PathBuf,
    /// The bottle's network namespace; `None`: the gateway's own.
    pub netns: Option<Netns>,
    /// Resolved against the config file's directory; `None` allows nothing.
    pub routes: Option<PathBuf>,
    /// KEY=VALUE lines (mode 0600, owned by the gateway's user): the bottle's own
    /// credentials, looked up before the gateway's environment.
    pub credentials_file: Option<PathBuf>,
    /// The bottle's supervise settings (every default without a `supervise:` block);
    /// `None`: turned off (`enabled: false`), its `supervise` routes act as `block`.
    pub supervise: Option<SuperviseConfig>,
    /// Host paths the bottle can see (bind-mounted into it: its workspace, say). The
    /// gateway's state and every supervise store must be outside all of them.
    pub mounts: Vec<PathBuf>,
    /// Unix sockets the bottle may connect or send to (policed by BPF LSM programs).
    pub unix_sockets: UnixSockets,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::single(path, "", format!("cannot read: {e}")))?;
        Self::parse(path, &text)
    }

    pub fn embedded_default() -> Result<Config, ConfigError> {
        let mut config = Self::parse(Path::new("<embedded default>"), EMBEDDED_DEFAULT)?;
        config.source = None;
        Ok(config)
    }

    /// Parses and validates `text`; relative paths are taken from `path`'s directory.
    /// A bottle whose `supervise:` names no store takes the seeds' `SUPERVISE_QUEUE_DIR`
    /// (and `SUPERVISE_BOTTLE_SLUG`) from this process's environment.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Self::parse_with_env(path, text, &SuperviseEnv::from_process())
    }

    /// `parse` with the supervise environment given.
    pub fn parse_with_env(path: &Path, text: &str, env: &SuperviseEnv) -> Result<Config, ConfigError> {
        let raw: RawConfig = yaml::parse(path, text)?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut problems = Problems::new(path);

        let listen = raw.listen.unwrap_or(DEFAULT_LISTEN);
        let dns_listen = raw.dns_listen.unwrap_or(DEFAULT_DNS_LISTEN);
        // Port 0: the kernel picks one at bind, and the programs are given the bound port.
        if listen == dns_listen && listen.port() != 0 {
            problems.push("dns_listen", "must differ from listen");
        }
        if let Some(admin) = raw.admin_listen {
            if admin.port() == 0 {
                problems.push("admin_listen", "needs a fixed port (a monitoring system scrapes it)");
            } else if admin == SocketAddr::V4(listen) || admin == SocketAddr::V4(dns_listen) {
                problems.push("admin_listen", "must differ from listen and dns_listen");
            }
        }

        let mut hosts = BTreeMap::new();
        for (name, addrs) in raw.hosts {
            let addrs = match addrs {
                OneOrMany::One(a) => vec![a],
                OneOrMany::Many(v) => v,
            };
            if addrs.is_empty() {
                problems.push(format!("hosts.{name}"), "needs at least one address");
            }
            if !is_host_name(&name) {
                problems.push(format!("hosts.{name}"), "is not a valid host name");
            }
            hosts.insert(name.to_ascii_lowercase(), addrs);
        }

        let mut bottles: Vec<Bottle> = Vec::new();
        for (i, b) in raw.bottles.into_iter().enumerate() {
            let field = format!("bottles[{i}]");
            if bottles.iter().any(|o| o.name == b.name) {
                problems.push(format!("{field}.name"), format!("duplicate bottle name {:?}", b.name));
            }
            let mut bottle = Bottle::from_raw(b, &field, PathBase::Dir(&base), &mut problems);
            if bottles.iter().any(|o| o.id == bottle.id && o.name != bottle.name) {
                problems.push(format!("{field}.name"), "its id collides with another bottle's: rename it");
            }
            bottle.supervise = bottle.supervise.map(|s| s.with_env(env));
            bottles.push(bottle);
        }
        // A queue directory is one bottle's: the gateway moves what it finds there.
        for (i, b) in bottles.iter().enumerate() {
            let Some(s) = b.supervise.as_ref().filter(|s| s.queue_dir.is_some()) else { continue };
            let Some(other) =
                bottles[..i].iter().find(|o| o.supervise.as_ref().is_some_and(|t| t.queue_dir == s.queue_dir))
            else {
                continue;
            };
            let dir = s.queue_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default();
            let why = if s.queue_from_env {
                format!(
                    "has no store of its own, so it would share {} ({dir}) with bottle {}: name a queue_dir or db \
                     for each bottle",
                    crate::supervise::QUEUE_DIR_ENV,
                    other.name
                )
            } else {
                format!("shares the queue directory {dir} with bottle {}: each bottle needs its own", other.name)
            };
            problems.push(format!("bottles[{i}].supervise"), why);
        }
        if bottles.len() as u32 > egress_common::MAX_BOTTLES {
            problems.push("bottles", format!("at most {} bottles", egress_common::MAX_BOTTLES));
        }
        let state_dir = raw.state_dir.map(|p| base.join(p)).unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        for g in guarded_paths(&state_dir, &bottles) {
            if let Some((holder, mount)) = mount_holding(&bottles, &g.path) {
                let field = match g.owner {
                    None => "state_dir".to_string(),
                    Some(i) => format!("bottles[{i}].supervise"),
                };
                problems.push(field, g.inside_message(&bottles[holder].name, mount));
            }
        }

        if raw.dlp.partial_min_len.is_some_and(|n| n < 8) {
            problems.push("dlp.partial_min_len", "must be at least 8 (shorter fragments match everywhere)");
        }
        if raw.dlp.sensitive_prefixes.iter().any(|p| p.is_empty()) {
            problems.push("dlp.sensitive_prefixes", "an empty prefix would make every variable a secret");
        }
        let dlp = DlpConfig { rules: raw.dlp.rules.map(|r| base.join(r)), ..raw.dlp };
        if raw.dns.concurrent_lookups == 0 {
            problems.push("dns.concurrent_lookups", "must be at least 1");
        }
        if raw.resolvers.iter().any(|r| r.port() == 0 || r.ip().is_unspecified()) {
            problems.push("resolvers", "each must be a name server's ip:port (port 53 usually)");
        }
        let limits = Limits::from_raw(raw.limits, &mut problems);
        let drain_seconds = raw.drain_seconds.unwrap_or(DEFAULT_DRAIN_SECONDS);
        if drain_seconds > 3600 {
            problems.push("drain_seconds", "must be at most 3600 (an hour)");
        }

        problems.finish(Config {
            source: Some(path.to_path_buf()),
            listen,
            dns_listen,
            state_dir,
            bpffs_dir: raw.bpffs_dir.unwrap_or_else(|| DEFAULT_BPFFS_DIR.into()),
            admin_socket: raw.admin_socket.map(|p| base.join(p)).unwrap_or_else(|| DEFAULT_ADMIN_SOCKET.into()),
            admin_listen: raw.admin_listen,
            cgroup_root: raw.cgroup_root,
            hosts,
            upstream_ca_files: raw.upstream_ca_files.into_iter().map(|p| base.join(p)).collect(),
            bottles,
            dlp,
            resolvers: raw.resolvers,
            dns: raw.dns,
            limits,
            drain: std::time::Duration::from_secs(drain_seconds),
        })
    }

    pub fn bottle(&self, name: &str) -> Option<&Bottle> {
        self.bottles.iter().find(|b| b.name == name)
    }

    /// A human-readable summary for `check`.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        let source =
            self.source.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "<embedded default>".into());
        let _ = writeln!(out, "configuration: {source}: ok");
        let _ = writeln!(out, "  listen {}  dns {}", self.listen, self.dns_listen);
        let _ = writeln!(out, "  state_dir {}", self.state_dir.display());
        let _ = writeln!(out, "  bpffs_dir {}", self.bpffs_dir.display());
        for (name, addrs) in &self.hosts {
            let _ = writeln!(out, "  host {name} -> {addrs:?}");
        }
        match self.resolvers.as_slice() {
            [] => {
                let _ = writeln!(out, "  resolvers: /etc/resolv.conf's");
            }
            r => {
                let _ = writeln!(out, "  resolvers: {r:?}");
            }
        }
        let _ = writeln!(
            out,
            "  dns: {} new names per minute under wildcards, {} concurrent lookups per bottle",
            self.dns.new_names_per_minute, self.dns.concurrent_lookups
        );
        for b in &self.bottles {
            let routes = b
                .routes
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(none: everything denied)".into());
            let _ = writeln!(out, "  bottle {} cgroup {} routes {}", b.name, b.cgroup.display(), routes);
            let unix = match &b.unix_sockets {
                UnixSockets::Unpoliced => "not policed (unpoliced)".to_string(),
                UnixSockets::Policed(r) if r.is_empty() => "none".to_string(),
                UnixSockets::Policed(r) => r.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", "),
            };
            let _ = writeln!(out, "    unix sockets: {unix}");
            if let Some(s) = &b.supervise {
                let store = match s.store_spec(&self.state_dir) {
                    crate::supervise::StoreSpec::Queue(q) => format!("queue directory {}", q.display()),
                    crate::supervise::StoreSpec::Sqlite(d) => format!("SQLite {}", d.display()),
                };
                let from = if s.queue_from_env {
                    format!(" (from {})", crate::supervise::QUEUE_DIR_ENV)
                } else {
                    String::new()
                };
                let timeout = crate::supervise::format_secs(s.timeout());
                let _ = writeln!(out, "    supervise: {store}{from}, timeout {timeout} s");
            } else {
                let _ = writeln!(out, "    supervise: off (enabled: false): supervise routes act as block");
            }
        }
        out
    }
}

impl Bottle {
    /// Validates one bottle entry: the same rules for gateway.yaml and the admin API.
    /// Problems are pushed under `prefix` (`bottles[2]` gives `bottles[2].cgroup`; an
    /// empty prefix gives `cgroup`). The bottle is returned even when a problem was
    /// pushed, so the caller can go on checking the rest; `problems.finish` decides.
    pub fn from_raw(b: RawBottle, prefix: &str, base: PathBase<'_>, problems: &mut Problems) -> Bottle {
        let field = |name: &str| if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
        if let Some(msg) = bottle_name_problem(&b.name) {
            problems.push(field("name"), msg);
        }
        if b.cgroup.as_os_str().is_empty() || has_parent_dir(&b.cgroup) {
            problems.push(field("cgroup"), "must be a non-empty path without '..'");
        }
        if let Some(s) = &b.supervise {
            for msg in s.validate() {
                problems.push(field("supervise"), msg);
            }
        }
        for (j, m) in b.mounts.iter().enumerate() {
            if !m.is_absolute() || has_parent_dir(m) {
                problems.push(field(&format!("mounts[{j}]")), "must be an absolute path without '..'");
            }
        }
        let netns = match b.netns {
            None => None,
            Some(p) if p.as_os_str() == "new" => Some(Netns::New),
            Some(p) if p.is_absolute() && !has_parent_dir(&p) => Some(Netns::Path(p)),
            Some(p) => {
                problems.push(
                    field("netns"),
                    format!("{:?} must be `new` or an absolute path without '..'", p.display().to_string()),
                );
                None
            }
        };
        let mut resolve = |name: &str, p: PathBuf| -> PathBuf {
            match base {
                PathBase::Dir(dir) => dir.join(p),
                PathBase::AbsoluteOnly => {
                    if !p.is_absolute() {
                        problems.push(
                            field(name),
                            format!(
                                "{:?} must be an absolute path (a request has no directory to be relative to)",
                                p.display().to_string()
                            ),
                        );
                    }
                    p
                }
            }
        };
        let routes = b.routes.map(|r| resolve("routes", r));
        let credentials_file = b.credentials_file.map(|c| resolve("credentials_file", c));
        // Supervise is on unless the block says `enabled: false`. Paths in the block are
        // relative to the file, like routes.
        let supervise = match b.supervise {
            Some(s) if s.enabled == Some(false) => None,
            s => {
                let mut s = s.unwrap_or_default();
                s.queue_dir = s.queue_dir.map(|q| resolve("supervise.queue_dir", q));
                s.db = s.db.map(|d| resolve("supervise.db", d));
                Some(s)
            }
        };
        Bottle {
            id: egress_common::bottle_id(b.name.as_bytes()),
            name: b.name,
            cgroup: b.cgroup,
            netns,
            routes,
            credentials_file,
            supervise,
            mounts: b.mounts,
            unix_sockets: b.unix_sockets,
        }
    }
}

/// The reach checks for a bottle added to a running gateway: `new`'s mounts must not
/// hold the state directory or another bottle's supervise store, and `new`'s store must
/// not be inside any bottle's mounts (its own included). The same rules as
/// `Config::parse`; fields are `new`'s own (`mounts[0]`, `supervise`).
pub fn check_added_bottle(state_dir: &Path, existing: &[Bottle], new: &Bottle) -> Vec<Problem> {
    let mut all = existing.to_vec();
    all.push(new.clone());
    let n = all.len() - 1;
    let mut out = Vec::new();
    for g in guarded_paths(state_dir, &all) {
        if g.owner == Some(n) {
            if let Some((holder, mount)) = mount_holding(&all, &g.path) {
                out.push(Problem {
                    field: "supervise".into(),
                    position: None,
                    message: g.inside_message(&all[holder].name, mount),
                });
            }
        } else if let Some((_, mount)) = mount_holding(&all[n..], &g.path) {
            let j = new.mounts.iter().position(|m| m == mount).unwrap_or(0);
            let of = match g.owner {
                Some(i) => format!(" of bottle {}", all[i].name),
                None => String::new(),
            };
            out.push(Problem {
                field: format!("mounts[{j}]"),
                position: None,
                message: format!(
                    "{} holds {}{of} ({}): the bottle could reach it",
                    mount.display(),
                    g.what,
                    g.path.display()
                ),
            });
        }
    }
    out
}

/// A path that must stay out of every bottle's reach.
struct Guarded {
    /// The bottle (index) whose supervise store it is; `None`: the state directory.
    owner: Option<usize>,
    path: PathBuf,
    what: &'static str,
}

impl Guarded {
    fn inside_message(&self, bottle: &str, mount: &Path) -> String {
        format!(
            "{} {} is inside bottle {bottle}'s mount {}: the bottle could reach it",
            self.what,
            self.path.display(),
            mount.display()
        )
    }
}

/// The state directory and every bottle's supervise store.
fn guarded_paths(state_dir: &Path, bottles: &[Bottle]) -> Vec<Guarded> {
    let mut out = vec![Guarded { owner: None, path: state_dir.to_path_buf(), what: "the state directory (CA key)" }];
    for (i, b) in bottles.iter().enumerate() {
        if let Some(s) = &b.supervise {
            let (path, what) = match s.store_spec(state_dir) {
                crate::supervise::StoreSpec::Queue(dir) => (dir, "the supervise queue directory"),
                crate::supervise::StoreSpec::Sqlite(db) => (db, "the supervise database"),
            };
            // A store in the state directory (the default) is guarded with it.
            if !path.starts_with(state_dir) {
                out.push(Guarded { owner: Some(i), path, what });
            }
        }
    }
    out
}

/// The bottle (index) and mount whose tree holds `path` (or lies inside it), compared
/// as written.
fn mount_holding<'a>(bottles: &'a [Bottle], path: &Path) -> Option<(usize, &'a Path)> {
    bottles.iter().enumerate().find_map(|(i, b)| {
        b.mounts.iter().find(|m| path.starts_with(m) || m.starts_with(path)).map(|m| (i, m.as_path()))
    })
}

fn has_parent_dir(p: &Path) -> bool {
    p.components().any(|c| matches!(c, std::path::Component::ParentDir))
}

/// Why `name` is not a valid bottle name (the rule for gateway.yaml, the admin API and
/// the CLI), or `None`.
pub fn bottle_name_problem(name: &str) -> Option<String> {
    (!is_bottle_name(name)).then(|| format!("{name:?} must be 1-64 characters of a-z, 0-9, '-', '_'"))
}

pub fn is_bottle_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

/// RFC 1123 host name (letters, digits, hyphens; dot-separated labels).
pub fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE_EXAMPLE: &str = r#"
listen: 127.0.0.1:15001          # transparent TCP listener
dns_listen: 127.0.0.1:15053
state_dir: /var/lib/egress-gateway
hosts:                           # the gateway's resolver overrides
  upstream.test: 127.0.0.2
bottles:
  - name: demo
    cgroup: egress/demo          # relative to the cgroup v2 mount, or absolute
    routes: demo-routes.yaml     # relative to this file
"#;

    #[test]
    fn issue_example_parses() {
        let c = Config::parse(Path::new("/etc/eg/gateway.yaml"), ISSUE_EXAMPLE).unwrap();
        assert_eq!(c.listen, "127.0.0.1:15001".parse().unwrap());
        assert_eq!(c.hosts["upstream.test"], vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
        let b = c.bottle("demo").unwrap();
        assert_eq!(b.routes.as_deref(), Some(Path::new("/etc/eg/demo-routes.yaml")));
        assert_eq!(b.cgroup, Path::new("egress/demo"));
    }

    /// Listeners on port 0: the kernel picks the ports at bind (tests stop guessing free
    /// ones); only two fixed equal addresses clash.
    #[test]
    fn listeners_may_take_port_0() {
        let text = "listen: 127.0.0.1:0\ndns_listen: 127.0.0.1:0\nbottles: []\n";
        let c = Config::parse(Path::new("g.yaml"), text).unwrap();
        assert_eq!(c.listen.port(), 0);
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default().unwrap();
        assert_eq!(c.bottles.len(), 1);
        assert_eq!(c.bottles[0].name, "default");
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let text = "listen: 127.0.0.1:15001\nbottles:\n  - name: a\n    cgroup: x\n    rotues: r.yaml\n";
        let err = Config::parse(Path::new("g.yaml"), text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("g.yaml: line 5"), "{msg}");
        assert!(msg.contains("bottles[0]"), "{msg}");
        assert!(msg.contains("rotues"), "{msg}");
    }

    #[test]
    fn validation_reports_every_problem() {
        let text = "listen: 127.0.0.1:15001\ndns_listen: 127.0.0.1:15001\nbottles:\n  - {name: Bad!, cgroup: ../x}\n";
        let err = Config::parse(Path::new("g.yaml"), text).unwrap_err();
        let fields: Vec<_> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["dns_listen", "bottles[0].name", "bottles[0].cgroup"]);
    }

    #[test]
    fn bad_address_is_reported_with_field() {
        let err = Config::parse(Path::new("g.yaml"), "listen: nowhere\n").unwrap_err();
        assert_eq!(err.problems[0].field, "listen");
        assert_eq!(err.problems[0].position.map(|p| p.0), Some(1));
    }

    #[test]
    fn unix_sockets_parse_and_a_bad_entry_is_named_by_its_index() {
        let text = "bottles:\n  - name: a\n    cgroup: x\n    unix_sockets: [/run/a.sock, /tmp/ipc/, '@bus']\n  \
                    - name: b\n    cgroup: y\n    unix_sockets: unpoliced\n  - {name: c, cgroup: z}\n";
        let c = Config::parse(Path::new("g.yaml"), text).unwrap();
        assert_eq!(
            c.bottle("a").unwrap().unix_sockets,
            UnixSockets::Policed(vec![
                UnixRule::Path(b"/run/a.sock".to_vec()),
                UnixRule::Dir(b"/tmp/ipc/".to_vec()),
                UnixRule::Abstract(b"bus".to_vec()),
            ])
        );
        assert_eq!(c.bottle("b").unwrap().unix_sockets, UnixSockets::Unpoliced);
        assert_eq!(c.bottle("c").unwrap().unix_sockets, UnixSockets::Policed(vec![]));
        let bad = "bottles:\n  - name: a\n    cgroup: x\n    unix_sockets:\n      - /run/a.sock\n      - run/b.sock\n";
        let err = Config::parse(Path::new("g.yaml"), bad).unwrap_err();
        assert_eq!(err.problems[0].field, "bottles[0].unix_sockets[1]");
        // serde_norway places a custom error of a sequence element at the end of the one
        // before it (line 5 here); the field path names the entry exactly.
        assert!(err.problems[0].position.is_some(), "{err}");
        assert!(err.to_string().contains("must be an absolute path"), "{err}");
        let err =
            Config::parse(Path::new("g.yaml"), "bottles:\n  - {name: a, cgroup: x, unix_sockets: off}\n").unwrap_err();
        assert!(err.to_string().contains("unpoliced"), "{err}");
    }

    #[test]
    fn dlp_block_resolves_the_rules_path_and_checks_its_values() {
        let text = "dlp:\n  rules: rules/acme.toml\n  sensitive_prefixes: [ACME_]\n  partial_min_len: 16\n";
        let c = Config::parse(Path::new("/etc/eg/gateway.yaml"), text).unwrap();
        assert_eq!(c.dlp.rules.as_deref(), Some(Path::new("/etc/eg/rules/acme.toml")));
        assert_eq!(
            (c.dlp.sensitive_prefixes.as_slice(), c.dlp.partial_min_len),
            (&["ACME_".to_string()][..], Some(16))
        );
        let err =
            Config::parse(Path::new("g.yaml"), "dlp:\n  partial_min_len: 4\n  sensitive_prefixes: ['']\n").unwrap_err();
        let fields: Vec<_> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["dlp.partial_min_len", "dlp.sensitive_prefixes"]);
        let err = Config::parse(Path::new("g.yaml"), "dlp:\n  rule: x.toml\n").unwrap_err();
        assert!(err.to_string().contains("rule"), "{err}");
    }

    #[test]
    fn stores_and_state_inside_a_bottle_mount_are_refused() {
        let text = "state_dir: /srv/eg\nbottles:\n  - name: a\n    cgroup: egress/a\n    mounts: [/home/agent]\n    \
                    supervise: {queue_dir: /home/agent/queue}\n  - name: b\n    cgroup: egress/b\n    mounts: [/srv]\n";
        let err = Config::parse(Path::new("/etc/eg/gateway.yaml"), text).unwrap_err();
        let fields: Vec<_> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["state_dir", "bottles[0].supervise"]);
        assert!(err.to_string().contains("inside bottle b's mount /srv"), "{err}");
        assert!(err.to_string().contains("inside bottle a's mount /home/agent"), "{err}");
        let ok = "bottles:\n  - {name: a, cgroup: egress/a, mounts: [/home/agent], supervise: {queue_dir: /var/q}}\n";
        assert!(Config::parse(Path::new("/etc/eg/gateway.yaml"), ok).is_ok());
        let relative = "bottles:\n  - {name: a, cgroup: egress/a, mounts: [work]}\n";
        assert!(Config::parse(Path::new("g.yaml"), relative).unwrap_err().to_string().contains("mounts[0]"));
    }

    fn raw(name: &str) -> RawBottle {
        RawBottle {
            name: name.into(),
            cgroup: "egress/x".into(),
            netns: None,
            routes: None,
            credentials_file: None,
            supervise: None,
            mounts: vec![],
            unix_sockets: UnixSockets::default(),
        }
    }

    #[test]
    fn from_raw_without_base_refuses_relative_paths_by_field() {
        let mut p = Problems::new("<request>");
        let b = RawBottle {
            routes: Some("r.yaml".into()),
            credentials_file: Some("creds".into()),
            supervise: Some(SuperviseConfig { db: Some("s.db".into()), ..Default::default() }),
            ..raw("a")
        };
        Bottle::from_raw(b, "", PathBase::AbsoluteOnly, &mut p);
        let err = p.finish(()).unwrap_err();
        let fields: Vec<_> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["routes", "credentials_file", "supervise.db"]);
        assert!(err.problems[0].message.contains("absolute"), "{err}");

        let mut p = Problems::new("<request>");
        let b = RawBottle { routes: Some("/etc/r.yaml".into()), netns: Some("new".into()), ..raw("a") };
        let b = Bottle::from_raw(b, "", PathBase::AbsoluteOnly, &mut p);
        p.finish(()).unwrap();
        assert_eq!((b.routes.as_deref(), b.netns), (Some(Path::new("/etc/r.yaml")), Some(Netns::New)));
        assert_eq!(b.id, egress_common::bottle_id(b"a"));
    }

    #[test]
    fn from_raw_prefixes_fields() {
        let mut p = Problems::new("g.yaml");
        let b = RawBottle { cgroup: "../x".into(), netns: Some("rel/ns".into()), ..raw("Bad") };
        Bottle::from_raw(b, "bottles[3]", PathBase::Dir(Path::new("/etc")), &mut p);
        let fields: Vec<_> = p.finish(()).unwrap_err().problems.into_iter().map(|p| p.field).collect();
        assert_eq!(fields, ["bottles[3].name", "bottles[3].cgroup", "bottles[3].netns"]);
    }

    #[test]
    fn added_bottle_reach_checks() {
        let state = Path::new("/var/lib/eg");
        let existing = Bottle::from_raw(
            RawBottle {
                supervise: Some(SuperviseConfig { queue_dir: Some("/srv/q".into()), ..Default::default() }),
                mounts: vec!["/home/a".into()],
                ..raw("a")
            },
            "",
            PathBase::AbsoluteOnly,
            &mut Problems::new("x"),
        );
        let new = |mounts: &[&str], db: Option<&str>| {
            Bottle::from_raw(
                RawBottle {
                    mounts: mounts.iter().map(PathBuf::from).collect(),
                    supervise: db.map(|d| SuperviseConfig { db: Some(d.into()), ..Default::default() }),
                    ..raw("b")
                },
                "",
                PathBase::AbsoluteOnly,
                &mut Problems::new("x"),
            )
        };
        assert!(check_added_bottle(state, std::slice::from_ref(&existing), &new(&["/home/b"], None)).is_empty());
        let p = check_added_bottle(state, std::slice::from_ref(&existing), &new(&["/home/b", "/var"], None));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].field, "mounts[1]");
        assert!(p[0].message.contains("the state directory"), "{}", p[0].message);
        let p = check_added_bottle(state, std::slice::from_ref(&existing), &new(&["/srv"], None));
        assert_eq!(p[0].field, "mounts[0]");
        assert!(p[0].message.contains("of bottle a"), "{}", p[0].message);
        let p = check_added_bottle(state, std::slice::from_ref(&existing), &new(&[], Some("/home/a/s.db")));
        assert_eq!(p[0].field, "supervise");
        assert!(p[0].message.contains("inside bottle a's mount /home/a"), "{}", p[0].message);
        let p = check_added_bottle(state, &[], &new(&["/w"], Some("/w/s.db")));
        assert_eq!(p[0].field, "supervise");
        // The default store is in the state directory.
        let p = check_added_bottle(state, &[], &new(&["/var/lib"], Some("/x.db")));
        assert_eq!(p[0].field, "mounts[0]");
    }
}
