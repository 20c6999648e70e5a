//! A bottle's routes: which hosts, paths and raw TCP destinations it may reach, and with
//! which credential and DLP policy. Pure: parsing, validation and decisions, no I/O
//! beyond reading the file in `Routes::load`.
//!
//! NOTE: minimal placeholder (the `tcp:` list and route hosts) until the routes engine
//! lands; its public surface (`load`, `deny_all`, `tcp`, `dns_name_allowed`, `decide`,
//! `host_allowed`, `log_level`, `allowlist_json` and the types below) stays.
use std::path::Path;

use serde::Deserialize;

use crate::config::{ConfigError, Problems, yaml};

/// One `tcp:` entry: raw TCP to this host (name or IP literal) and port is relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpAllow {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Default)]
pub struct Routes {
    hosts: Vec<String>,
    tcp: Vec<TcpAllow>,
}

/// The parts of a request the routes decide on.
pub struct RequestHead<'a> {
    /// Lower-case host name without port (from SNI/Host/:authority, already checked to agree).
    pub host: &'a str,
    pub method: &'a str,
    /// Path and query as on the wire (`/v1/x?y=z`).
    pub path_and_query: &'a str,
    pub headers: &'a http::HeaderMap,
}

#[derive(Debug)]
pub enum Decision<'r> {
    Allow(&'r Route),
    Deny(Denial),
}

/// Why a request was refused: one line the agent can read (sent as the 403 body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: String,
}

/// `log:` of a routes file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Off,
    #[default]
    Blocks,
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// As written: exact, or `*.suffix`.
    pub host: String,
    pub auth: Option<Auth>,
    pub git_fetch: bool,
    pub dlp: RouteDlp,
}

/// Credential injection: `Authorization: <scheme> <value of token_env>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub scheme: AuthScheme,
    /// Name of a variable in the gateway's own environment.
    pub token_env: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthScheme {
    Bearer,
    Token,
    /// The variable holds `user:token`; it is base64-encoded into the header.
    Basic,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteDlp {
    /// `None`: the default detectors; `Some(vec![])`: none (`false` in the file).
    pub outbound_detectors: Option<Vec<String>>,
    pub inbound_detectors: Option<Vec<String>>,
    pub on_match: OnMatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnMatch {
    Block,
    Redact,
    #[default]
    Supervise,
}

#[derive(Debug, Deserialize)]
struct RawRoutes {
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    tcp: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)]
    log: Option<serde_norway::Value>,
}

#[derive(Debug, Deserialize)]
struct RawRoute {
    host: String,
}

impl Routes {
    pub fn deny_all() -> Routes {
        Routes::default()
    }

    pub fn load(path: &Path) -> Result<Routes, ConfigError> {
        let raw: RawRoutes = yaml::load(path)?;
        let mut problems = Problems::new(path);
        let mut tcp = Vec::new();
        for (i, entry) in raw.tcp.iter().enumerate() {
            match parse_host_port(entry) {
                Some(t) => tcp.push(t),
                None => problems.push(format!("tcp[{i}]"), format!("{entry:?} is not host:port")),
            }
        }
        let hosts = raw
            .routes
            .into_iter()
            .map(|r| r.host.to_ascii_lowercase())
            .collect();
        problems.finish(Routes { hosts, tcp })
    }

    /// The route that allows `req`, or why none does (placeholder: host match only).
    pub fn decide(&self, req: &RequestHead<'_>) -> Decision<'_> {
        let _ = req;
        Decision::Deny(Denial {
            reason: "routes engine not built yet".into(),
        })
    }

    /// Whether any route names `host` (used before a request exists: SNI, CONNECT).
    pub fn host_allowed(&self, host: &str) -> bool {
        self.dns_name_allowed(host)
    }

    pub fn log_level(&self) -> LogLevel {
        LogLevel::Blocks
    }

    /// The routes as JSON for `http://_egress.local/allowlist` (never secret values).
    pub fn allowlist_json(&self) -> serde_json::Value {
        serde_json::json!({ "routes": self.hosts })
    }

    pub fn tcp(&self) -> &[TcpAllow] {
        &self.tcp
    }

    /// Whether the bottle may resolve `name` (a route host, wildcard suffix, or tcp host).
    pub fn dns_name_allowed(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(suffix) => name.ends_with(&format!(".{suffix}")),
            None => *h == name,
        }) || self.tcp.iter().any(|t| t.host == name)
    }
}

fn parse_host_port(s: &str) -> Option<TcpAllow> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some(TcpAllow {
        host: host.to_ascii_lowercase(),
        port: port.parse().ok().filter(|p| *p != 0)?,
    })
}
