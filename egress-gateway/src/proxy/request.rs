//! What every phase of a request shares: the request's context (`RequestCtx`: its flow,
//! bottle, host, method and scrubbed path, and its span) and how a phase says no
//! (`Refusal`, tagged with where the refusal comes from). A refusal is logged and
//! answered in one place, `RequestCtx::refuse`.
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use super::{Flow, upstream::Body};
use crate::{app::BottleLive, policy::LogLevel, supervise::render::inert};

/// Where a refusal comes from. The source picks the log level and the event name; the
/// status code is the source's default unless the phase needs a finer one (a client
/// error is 400, 408, 413 or 421).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The request itself is malformed, too large, too slow or misdirected.
    Client,
    /// The routes (or the address check) do not allow it.
    Policy,
    /// The outbound or inbound scan found something.
    Dlp,
    /// The operator rejected a held request, or the hold failed.
    Supervise,
    /// The upstream failed or answered something the gateway cannot pass on.
    Upstream,
    /// The gateway itself: a budget spent, a credential not configured.
    Gateway,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Policy => "policy",
            Source::Dlp => "dlp",
            Source::Supervise => "supervise",
            Source::Upstream => "upstream",
            Source::Gateway => "gateway",
        }
    }

    /// The status a refusal from this source gets unless the phase says otherwise.
    pub fn default_status(self) -> StatusCode {
        match self {
            Source::Client => StatusCode::BAD_REQUEST,
            Source::Policy | Source::Dlp | Source::Supervise => StatusCode::FORBIDDEN,
            Source::Upstream => StatusCode::BAD_GATEWAY,
            Source::Gateway => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable event name of its log line: bot-bottle's `egress_block` for every
    /// source (operators' alerts match on it); the `source` field tells them apart.
    pub fn event(self) -> &'static str {
        "egress_block"
    }
}

/// A phase's "no": where from, the status, and a one-line reason that never carries a
/// matched value (the reason is sent to the agent and logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub source: Source,
    pub status: StatusCode,
    pub reason: String,
    /// The match's surroundings (the value masked), for the log only.
    pub context: Option<String>,
}

impl Refusal {
    pub fn new(source: Source, reason: impl Into<String>) -> Self {
        Refusal { source, status: source.default_status(), reason: reason.into(), context: None }
    }

    pub fn with_context(mut self, context: Option<String>) -> Self {
        self.context = context;
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn client(status: StatusCode, reason: impl Into<String>) -> Self {
        Refusal::new(Source::Client, reason).with_status(status)
    }

    pub fn policy(reason: impl Into<String>) -> Self {
        Refusal::new(Source::Policy, reason)
    }

    pub fn dlp(reason: impl Into<String>) -> Self {
        Refusal::new(Source::Dlp, reason)
    }

    pub fn supervise(reason: impl Into<String>) -> Self {
        Refusal::new(Source::Supervise, reason)
    }

    pub fn upstream(reason: impl Into<String>) -> Self {
        Refusal::new(Source::Upstream, reason)
    }

    pub fn gateway(status: StatusCode, reason: impl Into<String>) -> Self {
        Refusal::new(Source::Gateway, reason).with_status(status)
    }
}

/// One request as the phases see it. `host` is `-` until identify has found it (or a
/// loggable stand-in when the host itself was refused).
#[derive(Clone)]
pub struct RequestCtx {
    pub flow: Arc<Flow>,
    /// One snapshot of the bottle for the whole request (a reload swaps all of it).
    pub live: Arc<BottleLive>,
    pub host: String,
    pub method: Method,
    /// The method as logs show it: scrubbed (an extension method can carry a secret).
    pub shown_method: String,
    /// The path without the query, scrubbed: what logs and proposals show.
    pub path: String,
    pub span: tracing::Span,
    /// How long the upstream took to answer, once it was asked (for the metrics).
    pub upstream_time: Option<std::time::Duration>,
}

impl RequestCtx {
    /// The context of a request with this method and path, under the connection's span.
    pub fn new(flow: Arc<Flow>, method: &Method, path: &str) -> Self {
        let live = flow.conn.bottle.live();
        let shown_method = live.dlp.scrub(method.as_str(), crate::dlp::Location::Method).into_owned();
        let path = live.dlp.scrub(path, crate::dlp::Location::Path).into_owned();
        let span = tracing::info_span!(
            "request",
            method = %inert(&shown_method),
            path = %inert(&path),
            host = tracing::field::Empty,
            route = tracing::field::Empty,
        );
        RequestCtx {
            flow,
            live,
            host: "-".into(),
            method: method.clone(),
            shown_method,
            path,
            span,
            upstream_time: None,
        }
    }

    pub fn bottle(&self) -> &str {
        &self.flow.conn.bottle.config.name
    }

    pub fn log_level(&self) -> LogLevel {
        self.live.routes.log_level()
    }

    /// The host identify found (or the stand-in logs show for a refused one).
    pub fn set_host(&mut self, host: impl Into<String>) {
        self.host = host.into();
        self.span.record("host", tracing::field::display(inert(&self.host)));
    }

    pub fn set_route(&self, route: &str) {
        self.span.record("route", tracing::field::display(inert(route)));
    }

    /// Logs the refusal (whatever the routes' `log:` says: `log: 0` hides allowed
    /// requests only) with the request's bottle, host, method and path, every
    /// agent-controlled field made inert; answers it with the reason as `text/plain`.
    pub fn refuse(&self, refusal: Refusal) -> Response<Body> {
        self.log_refusal(&refusal);
        text_response(refusal.status, format!("{}\n", refusal.reason))
    }

    /// The refusal's log line alone (a stream cut after its head was sent).
    pub fn log_refusal(&self, refusal: &Refusal) {
        let event = refusal.source.event();
        tracing::warn!(
            event,
            bottle = %self.bottle(),
            host = %inert(&self.host),
            method = %inert(&self.shown_method),
            path = %inert(&self.path),
            status = refusal.status.as_u16(),
            decision = "deny",
            source = refusal.source.as_str(),
            reason = %inert(&refusal.reason),
            context = refusal.context.as_deref().map(inert).map(tracing::field::display),
            "{event}"
        );
    }

    /// A note about this request (`egress_token_supervise`, `egress_response_redacted`:
    /// always logged; `egress_token_allowed`), with the request's fields.
    pub fn note(&self, event: &'static str, reason: &str, context: Option<&str>) {
        tracing::warn!(
            event,
            bottle = %self.bottle(),
            host = %inert(&self.host),
            method = %inert(&self.shown_method),
            path = %inert(&self.path),
            reason = %inert(reason),
            context = context.map(inert).map(tracing::field::display),
            "{event}"
        );
    }

    /// A DLP warning (`egress_warn`: a finding that does not block, a weak injection
    /// signal), at `log: 1` and above as in the seed. `direction`: `outbound` or
    /// `inbound`.
    pub fn warn(&self, direction: &'static str, reason: &str) {
        if self.log_level() < LogLevel::Blocks {
            return;
        }
        tracing::warn!(
            event = "egress_warn",
            bottle = %self.bottle(),
            host = %inert(&self.host),
            method = %inert(&self.shown_method),
            path = %inert(&self.path),
            direction,
            reason = %inert(reason),
            "egress_warn"
        );
    }

    /// `egress_request` / `egress_response` at `log: 2` (the caller checks the level):
    /// the request's fields, the status of a response, the headers with credentials
    /// masked, and the body's size when it is known.
    pub fn full_log(&self, event: &'static str, status: Option<u16>, headers: &HeaderMap, body_bytes: Option<usize>) {
        tracing::info!(
            event,
            bottle = %self.bottle(),
            host = %inert(&self.host),
            method = %inert(&self.shown_method),
            path = %inert(&self.path),
            status,
            headers = %shown_headers(&self.live.dlp, headers),
            body_bytes,
            "{event}"
        );
    }

    /// An operator's approval released the held request (`egress_token_allowed`, at
    /// `log: 1` and above as in the seed).
    pub fn allowed(&self, reason: &str, context: &str) {
        if self.log_level() >= LogLevel::Blocks {
            self.note("egress_token_allowed", reason, Some(context));
        }
    }
}

/// Headers whose values are credentials: a level-2 log shows them as `********`.
const CREDENTIAL_HEADERS: [&str; 5] = ["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"];

/// Headers as a level-2 log shows them, a JSON object (a repeated name's values joined
/// with `, `): credentials masked (the headers above and any value marked sensitive),
/// every other value and name scrubbed of tokens and known secrets, all made inert.
pub fn shown_headers(dlp: &crate::dlp::Engine, headers: &HeaderMap) -> String {
    let mut shown = serde_json::Map::new();
    for (name, value) in headers {
        let key = if dlp.known_secrets().find_folded(name.as_str()).is_empty() {
            inert(&dlp.scrub(name.as_str(), crate::dlp::Location::HeaderName)).into_owned()
        } else {
            "(withheld: a known secret)".to_string()
        };
        let text = if value.is_sensitive() || CREDENTIAL_HEADERS.contains(&name.as_str()) {
            crate::dlp::REDACTED.to_string()
        } else {
            let raw = String::from_utf8_lossy(value.as_bytes());
            inert(&dlp.scrub(&raw, crate::dlp::Location::Header(name.as_str().to_string()))).into_owned()
        };
        match shown.get_mut(&key) {
            Some(serde_json::Value::String(v)) => {
                v.push_str(", ");
                v.push_str(&text);
            }
            _ => {
                shown.insert(key, serde_json::Value::String(text));
            }
        }
    }
    serde_json::Value::Object(shown).to_string()
}

pub fn text_response(status: StatusCode, text: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(text))
        .expect("static response")
}

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}
