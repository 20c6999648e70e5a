//! The admin API's requests, without I/O: method, target and body in, a validated
//! `AdminRequest` or an `ApiError` (status, message, problems by field) out.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /v1/bottles` | 200, a JSON list of `BottleInfo` |
//! | `GET /v1/bottles/{name}` | 200, one `BottleInfo` |
//! | `PUT /v1/bottles/{name}` | 201, the attached `BottleInfo`; the body is a `BottleRequest` |
//! | `DELETE /v1/bottles/{name}[?force=true]` | 200, `{"detached": name}` |
//! | `POST /v1/reload` | 200, a `ReloadReport` |
//! | `GET /healthz`, `GET /readyz` | 200 (503 when not ready), JSON |
//! | `GET /metrics` | 200, Prometheus metrics (OpenMetrics text) |
use std::path::{Path, PathBuf};

use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use super::ControlError;
use crate::{
    config::{self, Bottle, PathBase, Problem, Problems, RawBottle},
    policy::Routes,
    supervise::SuperviseConfig,
};

/// The largest request body read (a bottle entry with inline routes is a few KiB).
pub const MAX_BODY: usize = 64 * 1024;

/// Names the request in `Problems`; never shown (the problems carry the fields).
const REQUEST: &str = "<request>";

/// A valid request.
#[derive(Debug)]
pub enum AdminRequest {
    List,
    Get(String),
    Attach {
        bottle: Box<Bottle>,
        spec: AttachSpec,
    },
    Detach {
        name: String,
        force: bool,
    },
    Reload,
    /// `GET /healthz`: the process answers.
    Health,
    /// `GET /readyz`: listeners bound, every bottle attached, the state directory writable.
    Ready,
    /// `GET /metrics`: Prometheus metrics.
    Metrics,
}

impl AdminRequest {
    /// Whether it only reads (what `admin_listen`, the TCP listener, may serve).
    pub fn is_read_only_probe(&self) -> bool {
        matches!(self, AdminRequest::Health | AdminRequest::Ready | AdminRequest::Metrics)
    }
}

/// What an attach needs besides the `Bottle`.
#[derive(Debug, Clone)]
pub struct AttachSpec {
    /// The routes when the request carried them inline (already validated): the bottle
    /// has no routes file, so a reload keeps these.
    pub inline_routes: Option<InlineRoutes>,
    /// The request, normalised (the name included, paths absolute): what a registry
    /// keeps to attach the bottle again after a restart. `parse_record` reads it back
    /// through the same validation.
    pub record: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct InlineRoutes {
    pub routes: Routes,
    /// The routes document as JSON text.
    pub json: String,
}

/// The body of `PUT /v1/bottles/{name}`: a gateway.yaml bottle entry, with the name
/// from the URL (a `name` here must match it), and the routes either as a file or inline.
/// Every path is absolute: a request has no directory to be relative to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BottleRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub cgroup: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<PathBuf>,
    /// A routes document (the routes file's content as JSON), validated like a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes_inline: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervise: Option<SuperviseConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<PathBuf>,
    /// The unix sockets the bottle may reach (`unix_sockets:` of gateway.yaml).
    #[serde(default, skip_serializing_if = "config::UnixSockets::is_default")]
    pub unix_sockets: config::UnixSockets,
}

/// A refused request: the status, one sentence, and the problems by field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub problems: Vec<ApiProblem>,
    /// The methods the resource takes (the `Allow` header of a 405).
    pub allow: Option<&'static str>,
}

/// One problem, by field: `cgroup`, `mounts[1]`, `routes_inline.routes[0].host`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiProblem {
    pub field: String,
    pub message: String,
}

/// The JSON of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default)]
    pub problems: Vec<ApiProblem>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError { status, error: error.into(), problems: Vec::new(), allow: None }
    }

    fn bad(error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error)
    }

    fn field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: format!("{field}: {message}"),
            problems: vec![ApiProblem { field: field.into(), message }],
            allow: None,
        }
    }

    fn method(allow: &'static str) -> Self {
        ApiError { allow: Some(allow), ..Self::new(StatusCode::METHOD_NOT_ALLOWED, format!("allowed: {allow}")) }
    }

    fn invalid(error: impl Into<String>, problems: Vec<Problem>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: error.into(),
            problems: problems.into_iter().map(ApiProblem::from).collect(),
            allow: None,
        }
    }

    pub fn body(&self) -> Vec<u8> {
        json(&ErrorBody { error: self.error.clone(), problems: self.problems.clone() })
    }
}

impl From<Problem> for ApiProblem {
    fn from(p: Problem) -> Self {
        let message = match p.position {
            Some((line, col)) => format!("line {line}, column {col}: {}", p.message),
            None => p.message,
        };
        ApiProblem { field: p.field, message }
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            ControlError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, m),
            ControlError::Invalid { message, problems } => ApiError::invalid(message, problems),
            ControlError::Internal(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        }
    }
}

/// Serialises an answer (these types cannot fail to serialise).
pub fn json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    out
}

/// Routes one request. `target` is the request line's path and query, as received.
pub fn parse(method: &Method, target: &str, body: &[u8]) -> Result<AdminRequest, ApiError> {
    if body.len() > MAX_BODY {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {} KiB", MAX_BODY / 1024)));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params = query_params(query)?;
    let no_body = || if body.is_empty() { Ok(()) } else { Err(ApiError::bad("this request takes no body")) };
    let no_params = || match params.first() {
        None => Ok(()),
        Some((k, _)) => Err(ApiError::bad(format!("unknown query parameter {k:?}"))),
    };

    if path == "/v1/bottles" {
        if method != Method::GET {
            return Err(ApiError::method("GET"));
        }
        no_params()?;
        no_body()?;
        return Ok(AdminRequest::List);
    }
    let probe = match path {
        "/healthz" => Some(AdminRequest::Health),
        "/readyz" => Some(AdminRequest::Ready),
        "/metrics" => Some(AdminRequest::Metrics),
        _ => None,
    };
    if let Some(probe) = probe {
        if method != Method::GET {
            return Err(ApiError::method("GET"));
        }
        no_params()?;
        no_body()?;
        return Ok(probe);
    }
    if path == "/v1/reload" {
        if method != Method::POST {
            return Err(ApiError::method("POST"));
        }
        no_params()?;
        no_body()?;
        return Ok(AdminRequest::Reload);
    }
    let Some(raw_name) = path.strip_prefix("/v1/bottles/") else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no such endpoint {path:?}")));
    };
    if ![Method::GET, Method::PUT, Method::DELETE].contains(method) {
        return Err(ApiError::method("GET, PUT, DELETE"));
    }
    // Decoded before it is checked, so `%2e%2e` and `%2F` meet the same rule as `..`, `/`.
    let name = percent_decode(raw_name).ok_or_else(|| ApiError::field("name", "is not valid percent-encoded UTF-8"))?;
    if let Some(msg) = config::bottle_name_problem(&name) {
        return Err(ApiError::field("name", msg));
    }
    match *method {
        Method::GET => {
            no_params()?;
            no_body()?;
            Ok(AdminRequest::Get(name))
        }
        Method::DELETE => {
            let mut force = false;
            for (k, v) in &params {
                match (k.as_str(), v.as_str()) {
                    ("force", "true") => force = true,
                    ("force", "false") => force = false,
                    ("force", other) => {
                        return Err(ApiError::bad(format!("force must be true or false, not {other:?}")));
                    }
                    (other, _) => return Err(ApiError::bad(format!("unknown query parameter {other:?}"))),
                }
            }
            no_body()?;
            Ok(AdminRequest::Detach { name, force })
        }
        _ => {
            no_params()?;
            if body.is_empty() {
                return Err(ApiError::bad("a JSON body is required: the bottle's cgroup, routes..."));
            }
            let mut de = serde_json::Deserializer::from_slice(body);
            let request: BottleRequest = serde_path_to_error::deserialize(&mut de).map_err(body_error)?;
            de.end().map_err(|e| ApiError::bad(format!("the body is not JSON: {e}")))?;
            let (bottle, spec) = parse_bottle(name, request)?;
            Ok(AdminRequest::Attach { bottle: Box::new(bottle), spec })
        }
    }
}

/// A JSON syntax error, or a field that does not fit (unknown fields included).
fn body_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let field = e.path().to_string();
    let inner = e.into_inner();
    if inner.is_syntax() || inner.is_eof() || field == "." {
        return ApiError::bad(format!("the body is not a JSON bottle entry: {inner}"));
    }
    ApiError::field(&field, inner.to_string())
}

/// Validates a bottle request named `name` (already checked) with gateway.yaml's rules.
pub fn parse_bottle(name: String, request: BottleRequest) -> Result<(Bottle, AttachSpec), ApiError> {
    if let Some(msg) = config::bottle_name_problem(&name) {
        return Err(ApiError::field("name", msg));
    }
    if request.name.as_ref().is_some_and(|n| *n != name) {
        return Err(ApiError::field("name", format!("{:?} differs from the URL's {name:?}", request.name.unwrap())));
    }
    let mut problems = Problems::new(REQUEST);
    if request.routes.is_some() && request.routes_inline.is_some() {
        problems.push("routes_inline", "give either routes (a file) or routes_inline, not both");
    }
    let inline_routes = match &request.routes_inline {
        None => None,
        Some(doc @ serde_json::Value::Object(_)) => {
            let json = doc.to_string();
            // The routes loader reads YAML, which JSON is; positions in this re-serialised
            // text would mean nothing to the client, so only fields are kept.
            match Routes::parse(Path::new("routes_inline"), &json) {
                Ok(routes) => Some(InlineRoutes { routes, json }),
                Err(e) => {
                    for p in e.problems {
                        let field = if p.field.is_empty() {
                            "routes_inline".to_string()
                        } else {
                            format!("routes_inline.{}", p.field)
                        };
                        problems.push(field, p.message);
                    }
                    None
                }
            }
        }
        Some(_) => {
            problems.push("routes_inline", "must be a routes document (a JSON object)");
            None
        }
    };
    let mut record = request.clone();
    record.name = Some(name.clone());
    let raw = RawBottle {
        name,
        cgroup: request.cgroup,
        netns: request.netns,
        routes: request.routes,
        credentials_file: request.credentials_file,
        supervise: request.supervise,
        mounts: request.mounts,
        unix_sockets: request.unix_sockets,
    };
    let bottle = Bottle::from_raw(raw, "", PathBase::AbsoluteOnly, &mut problems);
    problems.finish(()).map_err(|e| ApiError::invalid(format!("invalid bottle {:?}", bottle.name), e.problems))?;
    Ok((bottle, AttachSpec { inline_routes, record: json(&record) }))
}

/// Reads back an `AttachSpec::record` through the same validation as a request.
pub fn parse_record(record: &[u8]) -> Result<(Bottle, AttachSpec), ApiError> {
    let request: BottleRequest = serde_json::from_slice(record).map_err(|e| ApiError::bad(format!("record: {e}")))?;
    let name = request.name.clone().ok_or_else(|| ApiError::field("name", "the record has no name"))?;
    parse_bottle(name, request)
}

/// `a=b&c=d`, percent-decoded; a key without `=` has an empty value.
fn query_params(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), Some(v)) = (percent_decode(k), percent_decode(v)) else {
            return Err(ApiError::bad("the query is not valid percent-encoded UTF-8"));
        };
        if out.iter().any(|(o, _)| *o == k) {
            return Err(ApiError::bad(format!("query parameter {k:?} given twice")));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// `%XX` escapes decoded; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(name: &str, body: &str) -> Result<AdminRequest, ApiError> {
        parse(&Method::PUT, &format!("/v1/bottles/{name}"), body.as_bytes())
    }

    fn status(r: Result<AdminRequest, ApiError>) -> StatusCode {
        r.map(|r| panic!("accepted: {r:?}")).unwrap_or_else(|e| e.status)
    }

    fn fields(r: Result<AdminRequest, ApiError>) -> Vec<String> {
        let e = r.expect_err("accepted");
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{e:?}");
        e.problems.into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn happy_paths() {
        assert!(matches!(parse(&Method::GET, "/v1/bottles", b""), Ok(AdminRequest::List)));
        assert!(matches!(parse(&Method::GET, "/v1/bottles/demo", b""), Ok(AdminRequest::Get(n)) if n == "demo"));
        assert!(matches!(parse(&Method::POST, "/v1/reload", b""), Ok(AdminRequest::Reload)));
        assert!(matches!(
            parse(&Method::DELETE, "/v1/bottles/demo", b""),
            Ok(AdminRequest::Detach { name, force: false }) if name == "demo"
        ));
        assert!(matches!(
            parse(&Method::DELETE, "/v1/bottles/demo?force=true", b""),
            Ok(AdminRequest::Detach { force: true, .. })
        ));
        assert!(matches!(
            parse(&Method::DELETE, "/v1/bottles/demo?force=false", b""),
            Ok(AdminRequest::Detach { force: false, .. })
        ));
    }

    #[test]
    fn attach_with_a_routes_file() {
        let body = r#"{"cgroup": "egress/job-1", "netns": "new", "routes": "/etc/eg/r.yaml",
            "credentials_file": "/etc/eg/job-1.env", "mounts": ["/home/job-1"],
            "supervise": {"db": "/var/lib/eg/s.db", "timeout_seconds": 30}}"#;
        let Ok(AdminRequest::Attach { bottle, spec }) = put("job-1", body) else { panic!() };
        assert_eq!(bottle.name, "job-1");
        assert_eq!(bottle.id, egress_common::bottle_id(b"job-1"));
        assert_eq!(bottle.cgroup, Path::new("egress/job-1"));
        assert_eq!(bottle.netns, Some(config::Netns::New));
        assert_eq!(bottle.routes.as_deref(), Some(Path::new("/etc/eg/r.yaml")));
        assert_eq!(bottle.credentials_file.as_deref(), Some(Path::new("/etc/eg/job-1.env")));
        assert_eq!(bottle.supervise.as_ref().unwrap().timeout_seconds, Some(30));
        assert!(spec.inline_routes.is_none());
        // The record replays to the same bottle.
        let (again, _) = parse_record(&spec.record).unwrap();
        assert_eq!((again.name, again.routes, again.mounts), (bottle.name, bottle.routes, bottle.mounts));
    }

    #[test]
    fn attach_with_inline_routes() {
        let body = r#"{"cgroup": "/sys/fs/cgroup/egress/b", "netns": "/run/netns/b",
            "routes_inline": {"routes": [{"host": "api.example.com"}], "tcp": ["db.test:5432"]}}"#;
        let Ok(AdminRequest::Attach { bottle, spec }) = put("b", body) else { panic!() };
        assert_eq!(bottle.netns, Some(config::Netns::Path("/run/netns/b".into())));
        let inline = spec.inline_routes.unwrap();
        assert!(inline.routes.host_allowed("api.example.com"));
        assert!(!inline.routes.host_allowed("evil.test"));
        let (_, again) = parse_record(&spec.record).unwrap();
        assert!(again.inline_routes.unwrap().routes.host_allowed("api.example.com"));
        // A name in the body is accepted when it is the URL's.
        assert!(put("b", r#"{"name": "b", "cgroup": "x"}"#).is_ok());
    }

    #[test]
    fn invalid_routes_inline_names_its_fields() {
        let body = r#"{"cgroup": "x", "routes_inline": {"routes": [{"host": "no such host!"}], "tpc": []}}"#;
        let f = fields(put("b", body));
        assert_eq!(f.len(), 1);
        assert!(f[0].starts_with("routes_inline"), "{f:?}");
        let body = r#"{"cgroup": "x", "routes_inline": {"routes": [{"host": "bad host"}]}}"#;
        assert_eq!(fields(put("b", body)), ["routes_inline.routes[0].host"]);
        assert_eq!(fields(put("b", r#"{"cgroup": "x", "routes_inline": "routes: []"}"#)), ["routes_inline"]);
        let both = r#"{"cgroup": "x", "routes": "/r.yaml", "routes_inline": {}}"#;
        assert_eq!(fields(put("b", both)), ["routes_inline"]);
    }

    #[test]
    fn bottle_fields_use_the_gateway_yaml_rules() {
        let body = r#"{"cgroup": "../escape", "netns": "ns", "routes": "r.yaml", "credentials_file": "c.env",
            "mounts": ["rel", "/a/../b"], "supervise": {"queue_dir": "q", "db": "/d", "timeout_seconds": 0}}"#;
        let f = fields(put("b", body));
        assert_eq!(
            f,
            [
                "cgroup",
                "supervise",
                "supervise",
                "mounts[0]",
                "mounts[1]",
                "netns",
                "routes",
                "credentials_file",
                "supervise.queue_dir"
            ]
        );
        assert_eq!(fields(put("b", r#"{"cgroup": ""}"#)), ["cgroup"]);
    }

    #[test]
    fn bad_json_and_unknown_fields_are_400() {
        let e = put("b", "{not json").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.error.contains("not a JSON"), "{e}");
        assert_eq!(status(put("b", r#"{"cgroup": "x"} trailing"#)), StatusCode::BAD_REQUEST);
        assert_eq!(status(put("b", "[]")), StatusCode::BAD_REQUEST);
        assert_eq!(status(put("b", "")), StatusCode::BAD_REQUEST);
        let f = fields(put("b", r#"{"cgroup": "x", "rotues": "/r.yaml"}"#));
        assert_eq!(f, ["rotues"]);
        let f = fields(put("b", r#"{"cgroup": "x", "supervise": {"dbb": "/x"}}"#));
        assert_eq!(f, ["supervise.dbb"]);
        assert_eq!(fields(put("b", r#"{"cgroup": 5}"#)), ["cgroup"]);
        // Missing required field.
        assert_eq!(status(put("b", r#"{"routes": "/r.yaml"}"#)), StatusCode::BAD_REQUEST);
        // A name in the body must be the URL's.
        assert_eq!(fields(put("b", r#"{"name": "c", "cgroup": "x"}"#)), ["name"]);
    }

    #[test]
    fn names_are_checked_after_decoding() {
        let long = "a".repeat(65);
        for bad in ["..", "%2e%2e", "%2E%2E", "a%2Fb", "a/b", "../etc", "Demo", "", &long, "a%", "a%zz", "%ff", "a b"] {
            for method in [Method::GET, Method::PUT, Method::DELETE] {
                let e = parse(&method, &format!("/v1/bottles/{bad}"), b"").unwrap_err();
                assert_eq!(e.status, StatusCode::BAD_REQUEST, "{method} {bad:?}: {e:?}");
                assert_eq!(e.problems[0].field, "name", "{bad:?}");
            }
        }
        assert!(parse(&Method::GET, &format!("/v1/bottles/{}", "a".repeat(64)), b"").is_ok());
        assert!(matches!(parse(&Method::GET, "/v1/bottles/a%2db", b""), Ok(AdminRequest::Get(n)) if n == "a-b"));
    }

    #[test]
    fn wrong_method_is_405_with_allow() {
        for (m, path, allow) in [
            (Method::POST, "/v1/bottles", "GET"),
            (Method::PUT, "/v1/bottles", "GET"),
            (Method::GET, "/v1/reload", "POST"),
            (Method::POST, "/v1/bottles/a", "GET, PUT, DELETE"),
            (Method::PATCH, "/v1/bottles/a", "GET, PUT, DELETE"),
        ] {
            let e = parse(&m, path, b"").unwrap_err();
            assert_eq!((e.status, e.allow), (StatusCode::METHOD_NOT_ALLOWED, Some(allow)), "{m} {path}");
        }
    }

    #[test]
    fn unknown_paths_are_404() {
        for path in ["/", "/v1", "/v2/bottles", "/v1/bottles2", "/v1/reload/x", "/v1/reloadx"] {
            assert_eq!(status(parse(&Method::GET, path, b"")), StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[test]
    fn oversized_bodies_are_413() {
        let big = vec![b' '; MAX_BODY + 1];
        assert_eq!(status(parse(&Method::PUT, "/v1/bottles/a", &big)), StatusCode::PAYLOAD_TOO_LARGE);
        let mut fits = br#"{"cgroup": "x"}"#.to_vec();
        fits.resize(MAX_BODY, b' ');
        assert!(parse(&Method::PUT, "/v1/bottles/a", &fits).is_ok());
    }

    #[test]
    fn query_and_body_rules() {
        for (m, target) in [
            (Method::DELETE, "/v1/bottles/a?force=yes"),
            (Method::DELETE, "/v1/bottles/a?force"),
            (Method::DELETE, "/v1/bottles/a?force=true&force=true"),
            (Method::DELETE, "/v1/bottles/a?forse=true"),
            (Method::GET, "/v1/bottles?x=1"),
            (Method::POST, "/v1/reload?all"),
            (Method::GET, "/v1/bottles/a?%zz"),
        ] {
            assert_eq!(status(parse(&m, target, b"")), StatusCode::BAD_REQUEST, "{m} {target}");
        }
        assert_eq!(status(parse(&Method::GET, "/v1/bottles", b"{}")), StatusCode::BAD_REQUEST);
        assert_eq!(status(parse(&Method::DELETE, "/v1/bottles/a", b"{}")), StatusCode::BAD_REQUEST);
        assert_eq!(status(parse(&Method::POST, "/v1/reload", b"x")), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn control_errors_map_to_statuses_and_bodies() {
        let cases = [
            (ControlError::NotFound("a".into()), StatusCode::NOT_FOUND),
            (ControlError::Conflict("taken".into()), StatusCode::CONFLICT),
            (ControlError::invalid(vec![]), StatusCode::BAD_REQUEST),
            (ControlError::Internal(anyhow::anyhow!("boom")), StatusCode::INTERNAL_SERVER_ERROR),
        ];
        for (e, s) in cases {
            assert_eq!(ApiError::from(e).status, s);
        }
        let e = ApiError::from(ControlError::invalid(vec![Problem {
            field: "mounts[0]".into(),
            position: None,
            message: "holds the state directory".into(),
        }]));
        let body: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(body["problems"][0]["field"], "mounts[0]");
        assert_eq!(body["error"], "invalid bottle");
    }
}
