//! A bottle's routes: which hosts, paths and raw TCP destinations it may reach, and with
//! which credential and DLP policy. Pure: `load` parses and validates a routes file
//! (bot-bottle's rendered `routes.yaml`, JSON accepted), `decide` answers one request.
mod load;
pub mod target;

use std::path::Path;

use regex::Regex;

use crate::config::ConfigError;

/// Outbound detector names a route may list (bot-bottle's names).
pub const OUTBOUND_DETECTORS: &[&str] = &["token_patterns", "known_secrets", "entropy"];
/// Inbound detector names a route may list.
pub const INBOUND_DETECTORS: &[&str] = &["naive_injection_detection"];

/// One `tcp:` entry: raw TCP to this host (name or IP literal) and port is relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpAllow {
    pub host: String,
    pub port: u16,
}

/// A validated routes file.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    log: LogLevel,
    routes: Vec<Route>,
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

impl Denial {
    fn new(reason: impl Into<String>) -> Self {
        Denial { reason: reason.into() }
    }
}

/// `log:` of a routes file: 0 off, 1 blocks, 2 full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    #[default]
    Off,
    Blocks,
    Full,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Blocks => "blocks",
            LogLevel::Full => "full",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    /// As written, lower-case: exact, or `*.suffix`.
    pub host: String,
    pub auth: Option<Auth>,
    pub git_fetch: bool,
    pub dlp: RouteDlp,
    /// An LLM provider route (its default `on_match` is `redact`).
    pub provider: bool,
    /// Empty: every path and method.
    matches: Vec<Match>,
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

impl AuthScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthScheme::Bearer => "Bearer",
            AuthScheme::Token => "token",
            AuthScheme::Basic => "Basic",
        }
    }

    /// The `Authorization` header value for `secret`.
    pub fn header_value(self, secret: &str) -> String {
        use base64::Engine as _;
        match self {
            AuthScheme::Basic => {
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(secret.as_bytes()))
            }
            other => format!("{} {secret}", other.as_str()),
        }
    }
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

impl OnMatch {
    pub fn as_str(self) -> &'static str {
        match self {
            OnMatch::Block => "block",
            OnMatch::Redact => "redact",
            OnMatch::Supervise => "supervise",
        }
    }
}

/// One `matches` entry: every given condition must hold.
#[derive(Debug, Clone)]
struct Match {
    paths: Vec<PathMatch>,
    /// Upper-case; empty: any method.
    methods: Vec<String>,
    headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone)]
enum PathMatch {
    /// Ends with `/`: plain prefix. Otherwise segment-aware: the path equals the value or
    /// continues with `/` (so `/v1` matches `/v1/x` but not `/v1x`).
    Prefix(String),
    Exact(String),
    /// Anchored: the whole path must match.
    Regex(Regex),
}

#[derive(Debug, Clone)]
struct HeaderMatch {
    /// Lower-case.
    name: String,
    value: ValueMatch,
}

#[derive(Debug, Clone)]
enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

impl Routes {
    /// No routes, no raw TCP: every request is denied.
    pub fn deny_all() -> Routes {
        Routes::default()
    }

    /// Reads, parses and validates a routes file; every problem is reported with the
    /// file, line (for syntax) and field path.
    pub fn load(path: &Path) -> Result<Routes, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::single(path, "", format!("cannot read: {e}")))?;
        load::parse(path, &text)
    }

    /// Parses routes from text (`path` names the source in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Routes, ConfigError> {
        load::parse(path, text)
    }

    pub fn log_level(&self) -> LogLevel {
        self.log
    }

    pub fn tcp(&self) -> &[TcpAllow] {
        &self.tcp
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for `host`: an exact route beats any wildcard; among wildcards the
    /// longest suffix wins.
    pub fn route_for(&self, host: &str) -> Option<&Route> {
        let host = normalize_host(host);
        if let Some(exact) = self.routes.iter().find(|r| r.host == host) {
            return Some(exact);
        }
        self.routes
            .iter()
            .filter(|r| r.host.strip_prefix("*.").is_some_and(|suffix| is_strict_subdomain(&host, suffix)))
            .max_by_key(|r| r.host.len())
    }

    /// Whether any route names `host` (used before a request exists: SNI, CONNECT).
    pub fn host_allowed(&self, host: &str) -> bool {
        self.route_for(host).is_some()
    }

    /// Whether the bottle may resolve `name`: a route host (wildcards included) or a
    /// `tcp:` host.
    pub fn dns_name_allowed(&self, name: &str) -> bool {
        let name = normalize_host(name);
        self.route_for(&name).is_some() || self.tcp.iter().any(|t| t.host == name)
    }

    /// The route that allows `req`, or why none does.
    pub fn decide(&self, req: &RequestHead<'_>) -> Decision<'_> {
        let host = normalize_host(req.host);
        let Some(route) = self.route_for(&host) else {
            return Decision::Deny(Denial::new(format!("egress: host {host} is not in the allowlist")));
        };
        let (path, query) = req.path_and_query.split_once('?').unwrap_or((req.path_and_query, ""));
        if let Err(why) = target::check_path(path) {
            return Decision::Deny(Denial::new(format!("egress: request path for {host} refused: {why}")));
        }
        // Routes and the git rules see one spelling of the path (see target.rs).
        let path = &*target::canonical_path(path);
        match git_service(path, query) {
            Some(GitService::ReceivePack) => {
                return Decision::Deny(Denial::new(
                    "egress: git push over HTTPS is blocked; push through the git gate over SSH instead",
                ));
            }
            Some(GitService::UploadPack) if !route.git_fetch => {
                return Decision::Deny(Denial::new(format!(
                    "egress: git fetch over HTTPS is not enabled for {host} (route needs git: {{fetch: true}})"
                )));
            }
            _ => {}
        }
        if route.matches.is_empty() || route.matches.iter().any(|m| m.matches(req.method, path, req.headers)) {
            Decision::Allow(route)
        } else {
            Decision::Deny(Denial::new(format!("egress: {} {path} is not allowed for {host}", req.method)))
        }
    }

    /// The routes as JSON for `http://_egress.local/allowlist` (names of credential
    /// variables, never their values), in the seed's shape: `{"routes": [...]}`, each
    /// route as it is written in routes.yaml (only the keys it sets, `dlp` with its
    /// resolved `outbound_on_match`). Raw `tcp:` entries, which the seed did not have,
    /// are listed under `tcp` when there are any.
    pub fn allowlist_json(&self) -> serde_json::Value {
        let routes: Vec<serde_json::Value> = self.routes.iter().map(Route::to_yaml_json).collect();
        let mut out = serde_json::json!({ "routes": routes });
        if !self.tcp.is_empty() {
            let tcp: Vec<String> = self.tcp.iter().map(|t| format!("{}:{}", t.host, t.port)).collect();
            out["tcp"] = tcp.into();
        }
        out
    }
}

impl Route {
    /// The route as routes.yaml writes it (the seed's `route_to_yaml_dict`).
    fn to_yaml_json(&self) -> serde_json::Value {
        let mut r = serde_json::Map::new();
        r.insert("host".into(), self.host.clone().into());
        if let Some(a) = &self.auth {
            r.insert("auth_scheme".into(), a.scheme.as_str().into());
            r.insert("token_env".into(), a.token_env.clone().into());
        }
        if !self.matches.is_empty() {
            r.insert("matches".into(), self.matches.iter().map(Match::to_json).collect::<Vec<_>>().into());
        }
        if self.git_fetch {
            r.insert("git".into(), serde_json::json!({"fetch": true}));
        }
        let detectors = |d: &Option<Vec<String>>| match d {
            None => None,
            Some(v) if v.is_empty() => Some(serde_json::Value::Bool(false)),
            Some(v) => Some(v.clone().into()),
        };
        let mut dlp = serde_json::Map::new();
        if let Some(d) = detectors(&self.dlp.outbound_detectors) {
            dlp.insert("outbound_detectors".into(), d);
        }
        if let Some(d) = detectors(&self.dlp.inbound_detectors) {
            dlp.insert("inbound_detectors".into(), d);
        }
        dlp.insert("outbound_on_match".into(), self.dlp.on_match.as_str().into());
        r.insert("dlp".into(), dlp.into());
        r.into()
    }
}

impl Match {
    fn matches(&self, method: &str, path: &str, headers: &http::HeaderMap) -> bool {
        let path_ok = self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path));
        let method_ok = self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method));
        let headers_ok = self
            .headers
            .iter()
            .all(|h| headers.get_all(h.name.as_str()).iter().any(|v| v.to_str().is_ok_and(|v| h.value.matches(v))));
        path_ok && method_ok && headers_ok
    }

    fn to_json(&self) -> serde_json::Value {
        let paths: Vec<serde_json::Value> = self
            .paths
            .iter()
            .map(|p| match p {
                PathMatch::Prefix(v) => serde_json::json!({"type": "prefix", "value": v}),
                PathMatch::Exact(v) => serde_json::json!({"type": "exact", "value": v}),
                PathMatch::Regex(r) => {
                    serde_json::json!({"type": "regex", "value": regex_source(r)})
                }
            })
            .collect();
        let headers: Vec<serde_json::Value> = self
            .headers
            .iter()
            .map(|h| match &h.value {
                ValueMatch::Exact(v) => {
                    serde_json::json!({"name": h.name, "type": "exact", "value": v})
                }
                ValueMatch::Regex(r) => {
                    serde_json::json!({"name": h.name, "type": "regex", "value": regex_source(r)})
                }
            })
            .collect();
        serde_json::json!({"paths": paths, "methods": self.methods, "headers": headers})
    }
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(p) if p.ends_with('/') => path.starts_with(p.as_str()),
            PathMatch::Prefix(p) => {
                path == p || path.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('/'))
            }
            PathMatch::Exact(p) => path == p,
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

impl ValueMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => v == value,
            ValueMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// The user's pattern without the anchoring added at load.
fn regex_source(r: &Regex) -> String {
    let s = r.as_str();
    s.strip_prefix("^(?:").and_then(|s| s.strip_suffix(")$")).unwrap_or(s).to_string()
}

fn normalize_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// `host` is a subdomain (any depth) of `suffix`, not `suffix` itself nor `xsuffix`.
fn is_strict_subdomain(host: &str, suffix: &str) -> bool {
    host.len() > suffix.len() + 1 && host.ends_with(suffix) && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
}

enum GitService {
    UploadPack,
    ReceivePack,
}

/// The git smart-HTTP service a request is for, if any.
/// Which git service a (canonical) path and its query ask for. The last segment counts
/// whatever trails it (`/`, `;x`), and the query is read canonical too (`git%2Dreceive-pack`).
fn git_service(path: &str, query: &str) -> Option<GitService> {
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    let last = last.split(';').next().unwrap_or("");
    let query = target::canonical_path(query);
    let service_in_query = |name: &str| query.split('&').any(|kv| kv == format!("service={name}"));
    if last == "git-receive-pack" || service_in_query("git-receive-pack") {
        Some(GitService::ReceivePack)
    } else if last == "git-upload-pack" || service_in_query("git-upload-pack") {
        Some(GitService::UploadPack)
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
