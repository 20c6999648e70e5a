//! Routes file → `Routes`: serde structures that mirror the file (unknown keys rejected),
//! then one validation pass that collects every problem with its field path.
use std::path::Path;

use regex::Regex;
use serde::Deserialize;

use super::{
    Auth, AuthScheme, HeaderMatch, INBOUND_DETECTORS, LogLevel, Match, OUTBOUND_DETECTORS, OnMatch, PathMatch, Route,
    RouteDlp, Routes, TcpAllow, ValueMatch,
};
use crate::config::{ConfigError, Problems, is_host_name, yaml};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoutes {
    log: Option<RawLog>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    tcp: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawLog {
    Number(i64),
    Word(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    host: String,
    matches: Option<Vec<RawMatch>>,
    auth_scheme: Option<String>,
    token_env: Option<String>,
    /// bot-bottle's manifest form, accepted too: `auth: {scheme, token_env}`.
    auth: Option<RawAuth>,
    git: Option<RawGit>,
    dlp: Option<RawDlp>,
    #[serde(default)]
    provider: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    scheme: String,
    token_env: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGit {
    #[serde(default)]
    fetch: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDlp {
    outbound_detectors: Option<RawDetectors>,
    inbound_detectors: Option<RawDetectors>,
    outbound_on_match: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDetectors {
    Off(bool),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    paths: Vec<RawPath>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    headers: Vec<RawHeader>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPath {
    #[serde(rename = "type", default = "default_path_type")]
    kind: String,
    value: String,
}

fn default_path_type() -> String {
    "prefix".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    value: String,
    #[serde(rename = "type", default = "default_header_type")]
    kind: String,
}

fn default_header_type() -> String {
    "exact".into()
}

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"];

pub(super) fn parse(path: &Path, text: &str) -> Result<Routes, ConfigError> {
    let raw: RawRoutes = yaml::parse(path, text)?;
    let mut problems = Problems::new(path);

    let log = match raw.log {
        None => LogLevel::Off,
        Some(RawLog::Number(0)) => LogLevel::Off,
        Some(RawLog::Number(1)) => LogLevel::Blocks,
        Some(RawLog::Number(2)) => LogLevel::Full,
        Some(RawLog::Word(w)) if w == "off" => LogLevel::Off,
        Some(RawLog::Word(w)) if w == "blocks" => LogLevel::Blocks,
        Some(RawLog::Word(w)) if w == "full" => LogLevel::Full,
        Some(other) => {
            let shown = match other {
                RawLog::Number(n) => n.to_string(),
                RawLog::Word(w) => format!("{w:?}"),
            };
            problems.push("log", format!("{shown} is not one of 0, 1, 2, off, blocks, full"));
            LogLevel::Off
        }
    };

    let mut routes = Vec::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        if let Some(route) = route(r, &format!("routes[{i}]"), &mut problems) {
            if routes.iter().any(|o: &Route| o.host == route.host) {
                problems.push(format!("routes[{i}].host"), format!("duplicate route for {}", route.host));
            }
            routes.push(route);
        }
    }

    let mut tcp = Vec::new();
    for (i, entry) in raw.tcp.iter().enumerate() {
        match parse_host_port(entry) {
            Some(t) => tcp.push(t),
            None => problems.push(format!("tcp[{i}]"), format!("{entry:?} is not host:port (port 1-65535)")),
        }
    }
    problems.finish(Routes { log, routes, tcp })
}

fn route(r: RawRoute, field: &str, problems: &mut Problems) -> Option<Route> {
    let host = r.host.trim().to_ascii_lowercase();
    let bare = host.strip_prefix("*.").unwrap_or(&host);
    if host.is_empty() || !is_host_name(bare) || bare.contains('*') {
        problems.push(format!("{field}.host"), format!("{:?} is not a host name or *.suffix", r.host));
    }

    let auth = match (r.auth_scheme, r.token_env, r.auth) {
        (None, None, None) => None,
        (Some(scheme), Some(token_env), None) | (None, None, Some(RawAuth { scheme, token_env })) => {
            match auth_scheme(&scheme) {
                Some(scheme) if is_env_name(&token_env) => Some(Auth { scheme, token_env }),
                Some(_) => {
                    problems.push(format!("{field}.token_env"), format!("{token_env:?} is not a variable name"));
                    None
                }
                None => {
                    problems.push(format!("{field}.auth_scheme"), format!("{scheme:?} is not Bearer, token or Basic"));
                    None
                }
            }
        }
        (_, _, Some(_)) => {
            problems.push(format!("{field}.auth"), "give either auth or auth_scheme + token_env, not both");
            None
        }
        (Some(_), None, None) => {
            problems.push(format!("{field}.token_env"), "auth_scheme needs token_env (both or neither)");
            None
        }
        (None, Some(_), None) => {
            problems.push(format!("{field}.auth_scheme"), "token_env needs auth_scheme (both or neither)");
            None
        }
    };

    let mut matches = Vec::new();
    for (j, m) in r.matches.unwrap_or_default().into_iter().enumerate() {
        matches.push(match_entry(m, &format!("{field}.matches[{j}]"), problems));
    }

    let dlp = dlp(r.dlp, r.provider, &format!("{field}.dlp"), problems);
    Some(Route { host, auth, git_fetch: r.git.is_some_and(|g| g.fetch), dlp, provider: r.provider, matches })
}

fn auth_scheme(s: &str) -> Option<AuthScheme> {
    match s {
        "Bearer" | "bearer" => Some(AuthScheme::Bearer),
        "token" | "Token" => Some(AuthScheme::Token),
        "Basic" | "basic" => Some(AuthScheme::Basic),
        _ => None,
    }
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn match_entry(m: RawMatch, field: &str, problems: &mut Problems) -> Match {
    let mut paths = Vec::new();
    for (k, p) in m.paths.into_iter().enumerate() {
        let f = format!("{field}.paths[{k}]");
        match p.kind.as_str() {
            "prefix" | "exact" if !p.value.starts_with('/') => {
                problems.push(format!("{f}.value"), format!("{:?} must start with /", p.value));
            }
            kind @ ("prefix" | "exact") => match super::target::check_path(&p.value) {
                Err(why) => {
                    problems.push(format!("{f}.value"), format!("{:?} can never match a request: {why}", p.value))
                }
                Ok(()) => {
                    // Stored canonical, as request paths are matched (target::canonical_path).
                    let value = super::target::canonical_path(&p.value).into_owned();
                    paths.push(if kind == "prefix" { PathMatch::Prefix(value) } else { PathMatch::Exact(value) });
                }
            },
            "regex" => match anchored(&p.value) {
                Ok(r) => paths.push(PathMatch::Regex(r)),
                Err(e) => problems.push(format!("{f}.value"), format!("invalid regex: {e}")),
            },
            other => problems.push(format!("{f}.type"), format!("{other:?} is not prefix, exact or regex")),
        }
    }
    let mut methods = Vec::new();
    for (k, method) in m.methods.into_iter().enumerate() {
        let upper = method.to_ascii_uppercase();
        if METHODS.contains(&upper.as_str()) {
            methods.push(upper);
        } else {
            problems.push(format!("{field}.methods[{k}]"), format!("{method:?} is not an HTTP method"));
        }
    }
    let mut headers = Vec::new();
    for (k, h) in m.headers.into_iter().enumerate() {
        let f = format!("{field}.headers[{k}]");
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            problems.push(format!("{f}.name"), format!("{:?} is not a header name", h.name));
            continue;
        }
        let value = match h.kind.as_str() {
            "exact" => ValueMatch::Exact(h.value),
            "regex" => match anchored(&h.value) {
                Ok(r) => ValueMatch::Regex(r),
                Err(e) => {
                    problems.push(format!("{f}.value"), format!("invalid regex: {e}"));
                    continue;
                }
            },
            other => {
                problems.push(format!("{f}.type"), format!("{other:?} is not exact or regex"));
                continue;
            }
        };
        headers.push(HeaderMatch { name: h.name.to_ascii_lowercase(), value });
    }
    Match { paths, methods, headers }
}

/// Regexes match the whole value, as Gateway API implementations do.
fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

fn dlp(raw: Option<RawDlp>, provider: bool, field: &str, problems: &mut Problems) -> RouteDlp {
    let default_on_match = if provider { OnMatch::Redact } else { OnMatch::Supervise };
    let Some(raw) = raw else {
        return RouteDlp { on_match: default_on_match, ..Default::default() };
    };
    let on_match = match raw.outbound_on_match.as_deref() {
        None | Some("") => default_on_match,
        Some("block") => OnMatch::Block,
        Some("redact") => OnMatch::Redact,
        Some("supervise") => OnMatch::Supervise,
        Some(other) => {
            problems.push(format!("{field}.outbound_on_match"), format!("{other:?} is not block, redact or supervise"));
            default_on_match
        }
    };
    RouteDlp {
        outbound_detectors: detectors(
            raw.outbound_detectors,
            OUTBOUND_DETECTORS,
            &format!("{field}.outbound_detectors"),
            problems,
        ),
        inbound_detectors: detectors(
            raw.inbound_detectors,
            INBOUND_DETECTORS,
            &format!("{field}.inbound_detectors"),
            problems,
        ),
        on_match,
    }
}

fn detectors(raw: Option<RawDetectors>, known: &[&str], field: &str, problems: &mut Problems) -> Option<Vec<String>> {
    match raw {
        None => None,
        Some(RawDetectors::Off(false)) => Some(Vec::new()),
        Some(RawDetectors::Off(true)) => {
            problems.push(field, "true is not allowed: omit the key for the defaults, or list detectors");
            None
        }
        Some(RawDetectors::List(names)) => {
            for (i, n) in names.iter().enumerate() {
                if !known.contains(&n.as_str()) {
                    problems
                        .push(format!("{field}[{i}]"), format!("unknown detector {n:?} (known: {})", known.join(", ")));
                }
            }
            Some(names)
        }
    }
}

fn parse_host_port(s: &str) -> Option<TcpAllow> {
    let (host, port) = s.trim().rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    let valid_host = host.parse::<std::net::IpAddr>().is_ok() || is_host_name(&host);
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    valid_host.then_some(TcpAllow { host, port })
}
