//! The supervise protocol's records, shared by every store: a proposal (what the
//! operator sees, never the raw value), a response (the decision, with its scope) and an
//! audit entry (a decision as `supervise history` prints it). Pure: no I/O.
use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::render::{self, inert_string};

pub const TOOL: &str = "egress-token-allow";
/// The first line of bot-bottle's `egress-token-allow` payload (PRD 0062).
pub const PAYLOAD_HEADER: &str = "egress blocked an outbound request carrying a detected token";
/// What the operator reads with every proposal: an approval is for the proposal's host.
fn justification(host: &str) -> String {
    format!(
        "The agent's request contains a value that looks like a secret. Approve only if sending this value to \
         {host} is intended (for example a credential meant for this service). An approval is for {host} only: \
         the same value sent to any other host is held again. Scope `gateway` (the default) allows it to {host} \
         for the rest of the gateway's life, `once` releases only the held request, `persist` remembers it for \
         {host} across restarts, `any-host` allows it to every host of this bottle. Reject if unsure."
    )
}

/// What the operator sees: never the raw value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub host: String,
    pub method: String,
    pub path: String,
    pub reason: String,
    /// The surroundings of the match, the match replaced by `********`.
    pub context: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub id: String,
    pub bottle: String,
    pub tool: String,
    pub payload: Payload,
    pub justification: String,
    /// SHA-256 of the payload's text (`Payload::text`, bot-bottle's `current_file_hash`),
    /// so a response can be tied to what was shown.
    pub payload_hash: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

impl Payload {
    /// bot-bottle's text payload (its `proposed_file`), as PRD 0062 shows it: a header
    /// line, then `host:`, `method:`, `path:`, `detector:` and `context:` lines. Every
    /// field is made inert first, so none can hold a line break of its own.
    pub fn text(&self) -> String {
        let p = self.inert();
        format!(
            "{PAYLOAD_HEADER}\nhost: {}\nmethod: {}\npath: {}\ndetector: {}\ncontext: {}\n",
            p.host, p.method, p.path, p.reason, p.context
        )
    }

    /// Reads back `text`'s form (what a queue directory stores).
    pub fn from_text(text: &str) -> Result<Payload, String> {
        let mut lines = text.lines();
        if lines.next() != Some(PAYLOAD_HEADER) {
            return Err(format!("the payload does not start with {PAYLOAD_HEADER:?}"));
        }
        let mut field = |key: &str| {
            lines
                .next()
                .and_then(|l| l.strip_prefix(key)?.strip_prefix(": "))
                .map(str::to_string)
                .ok_or_else(|| format!("the payload has no {key:?} line where expected"))
        };
        Ok(Payload {
            host: field("host")?,
            method: field("method")?,
            path: field("path")?,
            reason: field("detector")?,
            context: field("context")?,
        })
    }

    /// Every agent-controlled field made inert for a terminal (`render::inert`).
    pub fn inert(&self) -> Payload {
        Payload {
            host: inert_string(&self.host),
            method: inert_string(&self.method),
            path: inert_string(&self.path),
            reason: inert_string(&self.reason),
            context: inert_string(&self.context),
        }
    }
}

impl Proposal {
    /// The proposal as shown: every text field made inert (`render::inert`). The stores
    /// hold proposals written this way already; this also covers one that is not.
    pub fn inert(&self) -> Proposal {
        Proposal {
            id: inert_string(&self.id),
            bottle: inert_string(&self.bottle),
            tool: inert_string(&self.tool),
            payload: self.payload.inert(),
            justification: inert_string(&self.justification),
            payload_hash: inert_string(&self.payload_hash),
            created_at: self.created_at,
        }
    }

    /// A new proposal; the payload's agent-controlled text is stored inert, so no store,
    /// notification or log line ever carries a terminal control sequence.
    pub fn new(bottle: &str, payload: Payload) -> Proposal {
        let payload = payload.inert();
        let justification = justification(&payload.host);
        let hash = hex::encode(Sha256::digest(payload.text()));
        Proposal {
            id: uuid::Uuid::new_v4().to_string(),
            bottle: bottle.to_string(),
            tool: TOOL.to_string(),
            payload,
            justification,
            payload_hash: hash,
            created_at: now(),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Approved,
    Modified,
    Rejected,
}

/// How long, and for which hosts, an approval lasts. Every scope but `any-host` is for
/// the proposal's host only: the same value sent to another host is held again. Absent
/// from a response means `gateway`, so tools that predate scopes keep working.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Only the held request(s) of this proposal; the next request with the value is held again.
    Once,
    /// The value, sent to this proposal's host, is allowed for the gateway's life (in memory).
    #[default]
    Gateway,
    /// As `gateway` (this host only), and a keyed hash is persisted so a restart does not re-prompt.
    Persist,
    /// Explicit: the value is allowed to every host of this bottle, for the gateway's life.
    #[serde(rename = "any-host")]
    AnyHost,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Gateway, Scope::Once, Scope::Persist, Scope::AnyHost];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Once => "once",
            Scope::Gateway => "gateway",
            Scope::Persist => "persist",
            Scope::AnyHost => "any-host",
        }
    }

    /// What the scope allows, for the console and messages.
    pub fn meaning(self) -> &'static str {
        match self {
            Scope::Once => "the held request only",
            Scope::Gateway => "this host only, until the gateway stops",
            Scope::Persist => "this host only, across restarts",
            Scope::AnyHost => "ANY host of this bottle, until the gateway stops",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Scope::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| format!("unknown scope {s:?}"))
    }
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Approved => "approved",
            Status::Modified => "modified",
            Status::Rejected => "rejected",
        }
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Status::Approved, Status::Modified, Status::Rejected]
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown status {s:?} (approved|modified|rejected)"))
    }
}

/// Why a proposal is no longer pending although nobody may have decided it: how its hold
/// ended. Recorded by the gateway (SQLite `proposals.closed_reason`; in a queue
/// directory, `closed` and `closed_at` keys added to the proposal moved to
/// `processed/`), never a response: a reader that knows only approved, modified and
/// rejected sees an archived proposal, as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Closed {
    /// A response was read and acted on.
    Decided,
    /// No decision within the timeout: the request got 403.
    Timeout,
    /// The held request went away before a decision (its client disconnected, or the
    /// gateway stopped and this proposal was closed at the next start): nothing waits
    /// on it, so approving it would release nothing.
    Abandoned,
    /// Released by another proposal's approval that covers it (the same value, approved
    /// for this host or for any host, while this one was held).
    Covered,
    /// The store failed while the request was held: the request got 403.
    Failed,
    /// The gateway stopped (SIGTERM) while the request was held: the request got 403.
    Stopped,
}

impl Closed {
    pub fn as_str(self) -> &'static str {
        match self {
            Closed::Decided => "decided",
            Closed::Timeout => "timeout",
            Closed::Abandoned => "abandoned",
            Closed::Covered => "covered",
            Closed::Failed => "failed",
            Closed::Stopped => "stopped",
        }
    }

    /// Why deciding it now does nothing, for the operator.
    pub fn explain(self) -> &'static str {
        match self {
            Closed::Decided => "it was already decided and its request released or refused",
            Closed::Timeout => "its hold timed out and the request already got 403",
            Closed::Abandoned => {
                "it was abandoned: its request went away (the client disconnected, or the gateway restarted), so \
                 approving it would release nothing"
            }
            Closed::Covered => "its request was already released by an approval of the same value for its host",
            Closed::Failed => "its hold failed on a store error and the request already got 403",
            Closed::Stopped => "the gateway stopped while it was held and the request already got 403",
        }
    }
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Closed {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Closed::Decided, Closed::Timeout, Closed::Abandoned, Closed::Covered, Closed::Failed, Closed::Stopped]
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown closing reason {s:?}"))
    }
}

/// A decision. Read tolerantly, as other tools write it (bot-bottle's supervisor writes
/// `status` and `notes`, `notes` possibly `null`, and for `modified` a final file, which
/// is ignored): only `status` is required and must be known, and `scope`, when present,
/// must be known; every other key is optional and unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub status: Status,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub notes: String,
    /// Absent: `gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    #[serde(default, deserialize_with = "text_or_none")]
    pub decided_by: Option<String>,
    /// Epoch seconds; a number (fractions dropped) or an RFC 3339 time when read.
    #[serde(default, deserialize_with = "epoch_or_none")]
    pub decided_at: Option<u64>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// A string, else nothing (a number or `null` where a name was expected is no reason to
/// refuse a decision).
fn text_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

fn epoch_or_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        serde_json::Value::String(s) => parse_time(&s),
        _ => None,
    })
}

/// Epoch seconds of an RFC 3339 time (`2026-06-24T20:12:50Z`, `...+00:00`, fractions).
pub fn parse_time(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

impl Response {
    /// A decision by the current operator, now.
    pub fn by_operator(status: Status, notes: &str, scope: Option<Scope>) -> Response {
        Response { status, notes: notes.to_string(), scope, decided_by: Some(operator_name()), decided_at: Some(now()) }
    }

    pub fn scope(&self) -> Scope {
        self.scope.unwrap_or_default()
    }
}

/// Who is deciding: the sudo user behind root, else the login name.
pub fn operator_name() -> String {
    std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "operator".into())
}

/// Parses a response's JSON; anything but a known status (and scope) is an error.
pub fn parse_response(bytes: &[u8]) -> Result<Response, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// One decision, as `supervise history` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub proposal_id: String,
    pub bottle: String,
    pub host: String,
    pub method: String,
    pub path: String,
    pub status: Status,
    pub scope: Scope,
    /// The operator's reason (the response's notes).
    pub reason: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<u64>,
}

impl Proposal {
    /// One line: the gateway's columns first (age, bottle, destination host, detector
    /// reason), then the agent's method and path, marked and cut to a budget (inert).
    pub fn summary(&self, now: u64) -> String {
        let s = self.inert();
        format!(
            "{:>4}  {:<12} {}  {}  {} {}",
            format_age(now, s.created_at),
            s.bottle,
            render::budget(&s.payload.host, 64),
            render::budget(&s.payload.reason, 96),
            render::agent_text(&s.payload.method, 16),
            render::agent_text(&s.payload.path, 64)
        )
    }
}

impl AuditEntry {
    /// One line: when, bottle, status, scope, who, request, reason (inert).
    pub fn summary(&self) -> String {
        let s = self.inert();
        format!(
            "{}  {:<12} {:<8} {:<7} by {:<10} {} {} {}  {}",
            s.decided_at.map(format_time).unwrap_or_else(|| "-".into()),
            s.bottle,
            s.status.as_str(),
            s.scope.as_str(),
            s.decided_by.as_deref().unwrap_or("-"),
            render::agent_text(&s.method, 16),
            render::budget(&s.host, 64),
            render::agent_text(&s.path, 64),
            if s.reason.is_empty() { "(no reason given)" } else { &s.reason }
        )
    }

    /// Every text field made inert for a terminal (`render::inert`).
    pub fn inert(&self) -> AuditEntry {
        AuditEntry {
            proposal_id: inert_string(&self.proposal_id),
            bottle: inert_string(&self.bottle),
            host: inert_string(&self.host),
            method: inert_string(&self.method),
            path: inert_string(&self.path),
            status: self.status,
            scope: self.scope,
            reason: inert_string(&self.reason),
            decided_by: self.decided_by.as_deref().map(inert_string),
            decided_at: self.decided_at,
        }
    }

    pub fn new(p: &Proposal, r: &Response) -> AuditEntry {
        AuditEntry {
            proposal_id: p.id.clone(),
            bottle: p.bottle.clone(),
            host: p.payload.host.clone(),
            method: p.payload.method.clone(),
            path: p.payload.path.clone(),
            status: r.status,
            scope: r.scope(),
            reason: r.notes.clone(),
            decided_by: r.decided_by.clone(),
            decided_at: r.decided_at,
        }
    }
}

/// `2026-01-02T03:04:05Z` for an epoch time.
pub fn format_time(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// `42s`, `5m`, `3h`, `2d`: how long ago.
pub fn format_age(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_and_unknown_status_responses_are_errors() {
        for bad in [
            &b"not json"[..],
            br#"{"status": "maybe"}"#,
            br#"{"notes": "x"}"#,
            br#"{"status":"approved","scope":"forever"}"#,
        ] {
            assert!(parse_response(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_response(br#"{"status":"modified"}"#).unwrap().status, Status::Modified);
    }

    #[test]
    fn an_absent_scope_means_gateway_and_is_not_written() {
        let r = parse_response(br#"{"status":"approved","notes":"ok"}"#).unwrap();
        assert_eq!(r.scope(), Scope::Gateway);
        let r = Response { scope: None, ..r };
        assert!(!serde_json::to_string(&r).unwrap().contains("scope"));
        let once = parse_response(br#"{"status":"approved","scope":"once"}"#).unwrap();
        assert_eq!(once.scope(), Scope::Once);
    }

    #[test]
    fn the_text_payload_is_bot_bottles_and_reads_back() {
        let p = Payload {
            host: "api.example.com".into(),
            method: "POST".into(),
            path: "/v1/ingest".into(),
            reason: "token_patterns: OpenAI API key in body".into(),
            context: "...before ******** after...".into(),
        };
        assert_eq!(
            p.text(),
            "egress blocked an outbound request carrying a detected token\nhost: api.example.com\nmethod: POST\npath: \
             /v1/ingest\ndetector: token_patterns: OpenAI API key in body\ncontext: ...before ******** after...\n"
        );
        assert_eq!(Payload::from_text(&p.text()).unwrap(), p);
        // An agent's line break cannot add or reorder a line: it is shown escaped.
        let forged = Payload { path: "/x\nhost: trusted.test\r\n".into(), ..p };
        let text = forged.text();
        assert_eq!(text.lines().count(), 6, "{text}");
        assert_eq!(Payload::from_text(&text).unwrap(), forged.inert());
        assert!(Payload::from_text("something else\nhost: a").is_err());
        assert!(Payload::from_text(&text.replace("method: ", "verb: ")).is_err());
    }

    #[test]
    fn responses_are_read_as_other_tools_write_them() {
        let r = parse_response(br#"{"status": "rejected", "notes": null}"#).unwrap();
        assert_eq!((r.status, r.notes.as_str(), r.scope()), (Status::Rejected, "", Scope::Gateway));
        let r = parse_response(
            br#"{"status": "modified", "final_file": "edited\n", "decided_at": "2026-06-24T20:12:50+00:00",
                 "decided_by": 7, "extra": {"any": "thing"}}"#,
        )
        .unwrap();
        assert_eq!((r.status, r.decided_at, r.decided_by), (Status::Modified, Some(1782331970), None));
        let r = parse_response(br#"{"status": "approved", "notes": "ok", "decided_at": 1795000000.75}"#).unwrap();
        assert_eq!(r.decided_at, Some(1795000000));
        assert_eq!(parse_response(br#"{"status": "approved", "decided_at": "yesterday"}"#).unwrap().decided_at, None);
    }

    #[test]
    fn status_and_scope_round_trip_as_text() {
        for s in Scope::ALL {
            assert_eq!(s.as_str().parse::<Scope>().unwrap(), s);
        }
        assert!("perhaps".parse::<Status>().is_err());
        assert_eq!(format_age(100, 40), "1m");
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
    }
}
