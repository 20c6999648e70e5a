//! `egress-gateway check`: "will it start, and will it do what I think". Everything `run`
//! would refuse is an error here (a routes, credentials or rules file that does not load,
//! an unsafe state directory, a missing cgroup root, a listener address in use), and so is
//! a route whose credential is unset (`run` starts, but refuses that route's requests
//! with 502 until it is set); what would start but surprise is a warning (no bottle, a
//! `tcp:` entry on 443 that bypasses inspection, `supervise` routes of a bottle whose
//! supervise is turned off). Every problem of every file is reported
//! in one run, one line each.
//!
//! The findings are computed by pure functions over what was loaded (`Findings`); the
//! probes of the machine (files, ports) are at the edge, in `run`.
use std::{fmt, net::SocketAddr, os::unix::fs::MetadataExt, path::Path, process::ExitCode};

use crate::{config, policy::Routes};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub text: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "egress-gateway: {tag}: {}", self.text)
    }
}

#[derive(Debug, Default)]
pub struct Findings(pub Vec<Finding>);

impl Findings {
    fn error(&mut self, text: impl Into<String>) {
        self.0.push(Finding { severity: Severity::Error, text: text.into() });
    }

    fn warn(&mut self, text: impl Into<String>) {
        self.0.push(Finding { severity: Severity::Warning, text: text.into() });
    }

    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|f| f.severity == Severity::Error)
    }
}

/// What a bottle's routes mean for a start: credentials that would be missing, raw
/// relays that skip inspection. `credential` says whether a `token_env` has a value for
/// this bottle (its credentials file, then the gateway's environment).
pub fn routes_findings(
    bottle: &str,
    routes_file: &Path,
    routes: &Routes,
    supervised: bool,
    credential: impl Fn(&str) -> bool,
    out: &mut Findings,
) {
    for route in routes.routes() {
        if !supervised && route.dlp.on_match == crate::policy::OnMatch::Supervise {
            out.warn(format!(
                "bottle {bottle}: {}: route {}: outbound_on_match is supervise but the bottle's supervise is off \
                 (enabled: false): a request carrying a secret is refused, never held",
                routes_file.display(),
                route.host
            ));
        }
        if let Some(auth) = &route.auth
            && !credential(&auth.token_env)
        {
            out.error(format!(
                "bottle {bottle}: {}: route {}: token_env {} is not set (not in the bottle's credentials_file nor in \
                 this environment): its requests will be refused with 502 until it is",
                routes_file.display(),
                route.host,
                auth.token_env
            ));
        }
    }
    for tcp in routes.tcp().iter().filter(|t| t.port == 443) {
        out.warn(format!(
            "bottle {bottle}: {}: tcp entry {}:443 relays TLS uninspected (no allowlist of paths, no credential \
             injection, no DLP): use an HTTPS route unless the protocol is not HTTP",
            routes_file.display(),
            tcp.host
        ));
    }
}

/// Warnings about the configuration as a whole.
pub fn config_findings(config: &config::Config, out: &mut Findings) {
    if config.bottles.is_empty() {
        out.warn(format!(
            "{}: no bottles: the gateway will start and serve nothing until one is attached (`egress-gateway attach`)",
            source(config)
        ));
    }
}

fn source(config: &config::Config) -> String {
    config.source.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "<embedded default>".into())
}

/// The state directory as `run` will use it: it must be the gateway's and writable by no
/// one else (it holds the CA key), or creatable.
pub fn state_dir_finding(state_dir: &Path, euid: u32, out: &mut Findings) {
    match std::fs::metadata(state_dir) {
        Ok(meta) if !meta.is_dir() => out.error(format!("state_dir {}: is not a directory", state_dir.display())),
        Ok(meta) if meta.mode() & 0o022 != 0 => out.error(format!(
            "state_dir {}: is group- or world-writable (mode {:o}); it holds the CA key: chmod 711 it",
            state_dir.display(),
            meta.mode() & 0o7777
        )),
        Ok(meta) if meta.uid() != euid => out.error(format!(
            "state_dir {}: is owned by uid {}, not by the gateway's user (uid {euid}): chown it",
            state_dir.display(),
            meta.uid()
        )),
        Ok(_) => {
            if let Err(e) = probe_writable(state_dir) {
                out.error(format!("state_dir {}: cannot be written: {e}", state_dir.display()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = state_dir.ancestors().skip(1).find(|p| p.exists());
            if let Some(p) = parent
                && let Err(e) = probe_writable(p)
            {
                out.error(format!(
                    "state_dir {}: does not exist and cannot be created in {}: {e}",
                    state_dir.display(),
                    p.display()
                ));
            }
        }
        Err(e) => out.error(format!("state_dir {}: {e}", state_dir.display())),
    }
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".egress-check-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// Whether `run` could bind its listeners. Skipped when a gateway answers on the admin
/// socket: it holds them, and checking a change to a running gateway's file is normal.
fn listener_findings(config: &config::Config, out: &mut Findings) {
    let tcp = |addr: SocketAddr| probe_bind(addr, socket2::Type::STREAM);
    let udp = |addr: SocketAddr| probe_bind(addr, socket2::Type::DGRAM);
    let mut probes: Vec<(&str, SocketAddr, std::io::Result<()>)> = vec![
        ("listen", config.listen.into(), tcp(config.listen.into())),
        ("dns_listen", config.dns_listen.into(), udp(config.dns_listen.into())),
    ];
    if let Some(admin) = config.admin_listen {
        probes.push(("admin_listen", admin, tcp(admin)));
    }
    for (field, addr, result) in probes {
        if result.is_err() && held_by_service_manager(addr, field != "dns_listen") {
            println!("{field} {addr}: held by the service manager (socket activation): ok");
            continue;
        }
        if let Err(e) = result {
            let why = if e.kind() == std::io::ErrorKind::AddrInUse {
                "is in use by another process".to_string()
            } else {
                e.to_string()
            };
            out.error(format!("{field} {addr}: {why}"));
        }
    }
}

/// Binds without listening, with SO_REUSEADDR: fails when a process listens there (or
/// holds the UDP port), while two checks running at once do not fail each other.
fn probe_bind(addr: SocketAddr, kind: socket2::Type) -> std::io::Result<()> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), kind, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())
}

/// Whether process 1 (systemd, for a `.socket` unit) holds the socket bound to `addr`:
/// then the gateway will be handed it, and the address is not "in use" for `run`.
fn held_by_service_manager(addr: SocketAddr, tcp: bool) -> bool {
    let Ok(fds) = std::fs::read_dir("/proc/1/fd") else { return false };
    let inodes: Vec<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[").and_then(|i| i.strip_suffix(']')).map(str::to_string)
        })
        .collect();
    let table = match (tcp, addr.is_ipv4()) {
        (true, true) => "/proc/net/tcp",
        (true, false) => "/proc/net/tcp6",
        (false, true) => "/proc/net/udp",
        (false, false) => "/proc/net/udp6",
    };
    let text = std::fs::read_to_string(table).unwrap_or_default();
    socket_inode(&text, addr).is_some_and(|inode| inodes.contains(&inode))
}

/// The inode of the socket bound to `addr` in a `/proc/net/{tcp,udp}` table (IPv4:
/// `0100007F:3A99` is 127.0.0.1:15001, the address in host byte order).
fn socket_inode(table: &str, addr: SocketAddr) -> Option<String> {
    let SocketAddr::V4(v4) = addr else { return None };
    let local = format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port());
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.get(1) == Some(&local.as_str())).then(|| cols.get(9).map(|s| s.to_string()))?
    })
}

/// Whether the cgroup v2 hierarchy `run` would use is there.
fn cgroup_finding(config: &config::Config, out: &mut Findings) {
    if let Some(root) = &config.cgroup_root {
        let cgroup2 = root.join("cgroup.controllers").exists();
        if !cgroup2 {
            out.error(format!("cgroup_root {}: is not a mounted cgroup v2 hierarchy", root.display()));
        }
    }
}

/// The whole check: prints the explanation and what loaded, then every finding; exit 2
/// when there is an error.
pub fn run(config: &config::Config) -> ExitCode {
    print!("{}", config.explain());
    let mut findings = Findings::default();
    config_findings(config, &mut findings);
    for b in &config.bottles {
        let credentials = match &b.credentials_file {
            None => None,
            // Checked as `run` checks it, with this process's user as the gateway's.
            Some(path) => match crate::credentials::Credentials::load(path) {
                Ok(c) => {
                    println!("credentials: {}: ok, {} values", path.display(), c.len());
                    Some(c)
                }
                Err(e) => {
                    findings.error(format!("bottle {}: {e}", b.name));
                    None
                }
            },
        };
        if let Some(path) = &b.routes {
            match Routes::load(path) {
                Ok(routes) => {
                    println!("routes: {}: ok", path.display());
                    let has = |name: &str| {
                        credentials.as_ref().is_some_and(|c| c.get(name).is_some())
                            || std::env::var(name).is_ok_and(|v| !v.is_empty())
                    };
                    routes_findings(&b.name, path, &routes, b.supervise.is_some(), has, &mut findings);
                }
                Err(e) => findings.error(e.to_string()),
            }
        }
    }
    if let Some(path) = &config.dlp.rules {
        match crate::dlp::load_rules(path) {
            Ok(rules) => println!("dlp rules: {}: ok, {} rules", path.display(), rules.len()),
            Err(e) => findings.error(format!("{e:#}")),
        }
    }
    state_dir_finding(&config.state_dir, nix::unistd::geteuid().as_raw(), &mut findings);
    cgroup_finding(config, &mut findings);
    if config.admin_socket.exists() && std::os::unix::net::UnixStream::connect(&config.admin_socket).is_ok() {
        println!("listeners: a gateway is running on {}: not probed", config.admin_socket.display());
    } else {
        listener_findings(config, &mut findings);
    }
    for f in &findings.0 {
        eprintln!("{f}");
    }
    let errors = findings.0.iter().filter(|f| f.severity == Severity::Error).count();
    let warnings = findings.0.len() - errors;
    println!("check: {errors} error(s), {warnings} warning(s)");
    if findings.has_errors() { ExitCode::from(2) } else { ExitCode::SUCCESS }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(text: &str) -> Routes {
        Routes::parse(Path::new("r.yaml"), text).unwrap()
    }

    #[test]
    fn unset_credentials_are_errors_and_uninspected_tls_relays_warnings() {
        let r = routes(
            "routes:\n  - host: a.test\n    auth_scheme: Bearer\n    token_env: EGRESS_TOKEN_A\n  - host: b.test\n    \
             auth_scheme: Bearer\n    token_env: EGRESS_TOKEN_B\ntcp:\n  - db.test:5432\n  - api.test:443\n",
        );
        let mut out = Findings::default();
        routes_findings("demo", Path::new("r.yaml"), &r, true, |name| name == "EGRESS_TOKEN_B", &mut out);
        let texts: Vec<&str> = out.0.iter().map(|f| f.text.as_str()).collect();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(texts[0].contains("token_env EGRESS_TOKEN_A is not set") && texts[0].contains("a.test"));
        assert!(texts[1].contains("api.test:443 relays TLS uninspected"));
        assert_eq!(out.0[0].severity, Severity::Error);
        assert_eq!(out.0[1].severity, Severity::Warning);
    }

    #[test]
    fn supervise_routes_of_a_bottle_with_supervise_off_are_warned_about() {
        let r = routes("routes:\n  - host: a.test\n  - host: b.test\n    dlp:\n      outbound_on_match: block\n");
        let mut out = Findings::default();
        routes_findings("demo", Path::new("r.yaml"), &r, false, |_| true, &mut out);
        assert_eq!(out.0.len(), 1, "{:?}", out.0);
        assert!(out.0[0].text.contains("route a.test") && out.0[0].text.contains("refused, never held"));
        let mut out = Findings::default();
        routes_findings("demo", Path::new("r.yaml"), &r, true, |_| true, &mut out);
        assert!(out.0.is_empty());
    }

    #[test]
    fn a_bound_socket_is_found_in_the_proc_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                     0: 0100007F:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 48211 1 0\n";
        let addr: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        assert_eq!(socket_inode(table, addr).as_deref(), Some("48211"));
        assert_eq!(socket_inode(table, "127.0.0.1:15002".parse().unwrap()), None);
    }

    #[test]
    fn an_unsafe_or_foreign_state_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let euid = nix::unistd::geteuid().as_raw();
        let mut out = Findings::default();
        state_dir_finding(dir.path(), euid, &mut out);
        assert!(out.0.is_empty(), "{:?}", out.0);
        state_dir_finding(&dir.path().join("new/deeper"), euid, &mut out);
        assert!(out.0.is_empty(), "a directory that can be created is fine: {:?}", out.0);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        state_dir_finding(dir.path(), euid, &mut out);
        assert!(out.0[0].text.contains("world-writable") && out.0[0].text.contains("chmod"), "{:?}", out.0);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut out = Findings::default();
        state_dir_finding(dir.path(), euid + 1, &mut out);
        assert!(out.0[0].text.contains("not by the gateway's user"), "{:?}", out.0);
        assert!(out.has_errors());
    }
}
