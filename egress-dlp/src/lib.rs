//! Data-loss prevention: find secrets in outbound requests (token patterns, known secret
//! values in their common encodings, CRLF injection, Unicode evasion), redact them, and
//! find prompt-injection text in responses. Pure: no I/O, no async.
//!
//! Its own crate so it builds, benchmarks and fuzzes with the stable toolchain alone
//! (no eBPF build); the gateway re-exports it as `egress_gateway::dlp` and keeps the
//! `dlp scan` CLI.
mod alnum;
pub mod crlf;
pub mod decode;
pub mod gitleaks;
pub mod hostname;
mod inbound;
pub mod inert;
pub mod known;
mod literals;
mod normalize;
// Built for the cargo-fuzz targets (`fuzz/`) with feature `fuzzing`, and for unit tests.
#[cfg(any(test, feature = "fuzzing"))]
pub mod properties;
mod rules;
mod segments;
pub mod stream;

use std::{collections::HashSet, fmt, sync::Arc};

use regex::Regex;

pub use inbound::{InjectionVerdict, scan_inbound};
pub use known::KnownSecrets;

/// What replaces a matched value (bot-bottle's marker).
pub const REDACTED: &str = "********";
/// Characters of context on each side of a match in a finding.
const CONTEXT_CHARS: usize = 24;
/// Shannon entropy (bits/char) above which the opt-in `entropy` detector warns.
const ENTROPY_WARN_BITS: f64 = 4.5;
const ENTROPY_MIN_LEN: usize = 24;

/// A raw matched value. It never leaves the process: `Debug` and `Display` print a
/// marker; only `expose` gives the bytes (for the safe set and redaction).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: &str) -> Self {
        Secret(Arc::from(value))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED}, {} chars)", self.0.chars().count())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Refused (or redacted, or supervised) per the route's policy.
    Block,
    /// Logged and forwarded.
    Warn,
}

/// Where in the request a finding is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Host,
    Path,
    Query,
    Header(String),
    Body,
    /// A client-to-server WebSocket message.
    WebSocket,
    /// The request method (an extension method is any token).
    Method,
    /// A header's name. It is never shown: it may be the secret.
    HeaderName,
    /// A trailer's value (chunked HTTP/1.1 or HTTP/2 trailers), by its name.
    Trailer(String),
    /// A trailer's name, never shown.
    TrailerName,
    /// The payload of a client-to-server WebSocket ping, pong or close frame.
    WebSocketControl,
}

impl Location {
    /// Whether a match here can be cut out of the text and the rest forwarded: not in a
    /// host name, a method or a header or trailer name (the request would change meaning).
    pub fn redactable(&self) -> bool {
        !matches!(self, Location::Host | Location::Method | Location::HeaderName | Location::TrailerName)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Host => f.write_str("host"),
            Location::Path => f.write_str("path"),
            Location::Query => f.write_str("query"),
            Location::Header(h) => write!(f, "header {h}"),
            Location::Body => f.write_str("body"),
            Location::WebSocket => f.write_str("websocket message"),
            Location::Method => f.write_str("method"),
            Location::HeaderName => f.write_str("a header name"),
            Location::Trailer(t) => write!(f, "trailer {t}"),
            Location::TrailerName => f.write_str("a trailer name"),
            Location::WebSocketControl => f.write_str("websocket control frame"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub rule_id: String,
    /// Detector and secret type, e.g. `token_patterns: GitHub personal access token`.
    pub reason: String,
    pub location: Location,
    /// Byte range of the match in the scanned surface (the decoded body for bodies).
    pub span: (usize, usize),
    /// The surroundings with the match replaced by `********`.
    pub context: String,
    pub severity: Severity,
    /// False for matches redaction cannot fix (host names, Unicode evasion).
    pub redactable: bool,
    /// `None` for structural findings (CRLF), which have no value to approve.
    pub matched: Option<Secret>,
}

/// Which outbound detectors a route runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection {
    pub token_patterns: bool,
    pub known_secrets: bool,
    pub entropy: bool,
}

impl Selection {
    /// From a route's `outbound_detectors` (`None`: the defaults).
    pub fn from_names(names: Option<&[String]>) -> Selection {
        match names {
            None => Selection { token_patterns: true, known_secrets: true, entropy: false },
            Some(list) => Selection {
                token_patterns: list.iter().any(|n| n == "token_patterns"),
                known_secrets: list.iter().any(|n| n == "known_secrets"),
                entropy: list.iter().any(|n| n == "entropy"),
            },
        }
    }

    /// A compact key for caches of per-selection verdicts.
    fn bits(self) -> u8 {
        self.token_patterns as u8 | (self.known_secrets as u8) << 1 | (self.entropy as u8) << 2
    }
}

/// Values an operator approved; matches of them are skipped.
pub trait SafeSet {
    fn contains(&self, value: &str) -> bool;
}

/// The empty safe set.
pub struct NoneSafe;

impl SafeSet for NoneSafe {
    fn contains(&self, _: &str) -> bool {
        false
    }
}

impl SafeSet for HashSet<String> {
    fn contains(&self, value: &str) -> bool {
        HashSet::contains(self, value)
    }
}

/// The parts of a request the scanner reads.
pub struct Request<'a> {
    pub host: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    /// Name and value; `Authorization` injected by the gateway is not among them.
    pub headers: &'a [(String, String)],
    /// Decoded (decompressed) body.
    pub body: &'a [u8],
}

struct Rule {
    id: &'static str,
    name: &'static str,
    regex: Regex,
    /// For user rules: gitleaks' `secretGroup`, `entropy` and allowlists.
    secret_group: Option<usize>,
    min_entropy: Option<f64>,
    allowlists: Vec<gitleaks::Allowlist>,
    /// Must match in the text just before the match (`rules::required_context`).
    context: Option<Regex>,
    /// For a built-in rule whose every match contains one of its keywords: the longest
    /// match in bytes, so the regex need only run around keyword hits. `None`: over the
    /// whole text.
    window: Option<usize>,
}

/// Bytes of text kept on each side of a window so the regex's edge assertions (`\b`,
/// `$`, a following non-token character) see the real neighbours of a match.
const LOOKAROUND: usize = 8;
/// Rules whose matches may be longer than this run over the whole text.
const MAX_WINDOW: usize = 16 * 1024;

/// The longest text `pattern` can match, in bytes, when it is bounded and not huge.
fn longest_match(pattern: &str) -> Option<usize> {
    let hir = regex_syntax::parse(pattern).ok()?;
    hir.properties().maximum_len().filter(|&n| n <= MAX_WINDOW)
}

impl Rule {
    /// Every match in `text`. With keyword hits at `starts` (sorted) and a window, only
    /// the text around the hits is searched: a match holds one of its keyword's
    /// occurrences and is at most `window` long, so it lies within `window` bytes of a
    /// hit. A body that mentions a keyword then costs one short search per mention
    /// instead of a search of the whole body per rule.
    fn matches<'t>(&self, text: &'t str, starts: &[usize]) -> Vec<regex::Captures<'t>> {
        let Some(window) = self.window.filter(|_| !starts.is_empty()) else {
            return self.regex.captures_iter(text).collect();
        };
        let mut out = Vec::new();
        let mut i = 0;
        while i < starts.len() {
            // Hits whose windows overlap are searched together.
            let first = starts[i];
            let mut last = first;
            while i < starts.len() && starts[i].saturating_sub(window) <= last + window + 2 * LOOKAROUND {
                last = starts[i];
                i += 1;
            }
            let from = floor_char_boundary(text, first.saturating_sub(window + LOOKAROUND));
            let to = ceil_char_boundary(text, last + window + LOOKAROUND);
            // A match ending later holds none of these hits; near a cut-off end it could
            // be an artefact of the cut.
            let limit = if to == text.len() { to } else { last + window };
            let haystack = &text[..to];
            let mut at = from;
            while at <= limit {
                let Some(caps) = self.regex.captures_at(haystack, at) else { break };
                let whole = caps.get(0).expect("group 0 always matches");
                if whole.end() > limit {
                    break;
                }
                at =
                    if whole.end() > whole.start() { whole.end() } else { ceil_char_boundary(text, whole.start() + 1) };
                out.push(caps);
            }
        }
        out
    }

    /// Whether the text before a match has what `rules::required_context` asks for
    /// (checked last: it is the costly filter).
    fn in_context(&self, caps: &regex::Captures<'_>, text: &str) -> bool {
        let Some(context) = &self.context else { return true };
        let whole_start = caps.get(0).map_or(0, |w| w.start());
        let from = ceil_char_boundary(text, whole_start.saturating_sub(rules::CONTEXT_BEFORE));
        context.is_match(&text[from..whole_start])
    }

    /// The secret in one match, unless the rule's own filters let it through.
    fn secret<'t>(&self, caps: &regex::Captures<'t>, text: &'t str) -> Option<regex::Match<'t>> {
        let m = match self.secret_group {
            Some(g) => caps.get(g)?,
            None => caps.get(1).or_else(|| caps.get(0))?,
        };
        if self.min_entropy.is_some_and(|min| shannon(m.as_str()) < min) {
            return None;
        }
        if !self.allowlists.is_empty() {
            let whole = caps.get(0).map_or("", |w| w.as_str());
            let line_start = text[..m.start()].rfind('\n').map_or(0, |i| i + 1);
            let line_end = text[m.end()..].find('\n').map_or(text.len(), |i| m.end() + i);
            if self.allowlists.iter().any(|a| a.allows(m.as_str(), whole, &text[line_start..line_end])) {
                return None;
            }
        }
        Some(m)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("rule {id}: {reason}")]
    Rule { id: String, reason: String },
}

/// The compiled token rules: built once per gateway and shared by every bottle's engine
/// (compiling them is the costly part of an engine).
struct RuleSet {
    rules: Vec<Rule>,
    /// Keyword prefilter: which rules can match a text (tags are rule indices).
    keywords: literals::LiteralSet,
    /// Rules without keywords, tried on every text.
    always: Vec<usize>,
}

/// The scanner: the shared rules, plus what is particular to one bottle (its known
/// secrets, and the messages already seen clean under them).
pub struct Engine {
    rules: Arc<RuleSet>,
    known: KnownSecrets,
    /// Conversation messages already seen clean. Never shared between engines: a message
    /// clean for one bottle may hold another bottle's known secret.
    clean: segments::CleanCache,
}

impl Engine {
    /// The built-in rules plus `extra` (user rules), and the known secrets.
    pub fn new(known: KnownSecrets, extra: Vec<gitleaks::UserRule>) -> Result<Engine, EngineError> {
        let mut rules = Vec::new();
        let mut keywords: Vec<(Vec<u8>, usize)> = Vec::new();
        let mut always = Vec::new();
        for def in rules::BUILTIN {
            let pattern = rules::expand(def.regex);
            let regex =
                Regex::new(&pattern).map_err(|e| EngineError::Rule { id: def.id.into(), reason: e.to_string() })?;
            let idx = rules.len();
            rules.push(Rule {
                id: def.id,
                name: def.name,
                regex,
                secret_group: None,
                min_entropy: None,
                allowlists: Vec::new(),
                context: rules::required_context(def.id)
                    .map(Regex::new)
                    .transpose()
                    .map_err(|e| EngineError::Rule { id: def.id.into(), reason: e.to_string() })?,
                window: longest_match(&pattern),
            });
            if def.keywords.is_empty() {
                always.push(idx);
            }
            // A built-in keyword is matched in the case its regex demands.
            let any_case = def.regex.contains("(?i");
            for kw in def.keywords {
                keywords.extend(keyword_patterns(kw, any_case).into_iter().map(|p| (p, idx)));
            }
        }
        for user in extra {
            let idx = rules.len();
            let id: &'static str = Box::leak(user.id.into_boxed_str());
            rules.push(Rule {
                id,
                name: id,
                regex: user.regex,
                secret_group: user.secret_group,
                min_entropy: user.min_entropy,
                allowlists: user.allowlists,
                context: None,
                // A gitleaks keyword may be anywhere in the text, not in the match.
                window: None,
            });
            if user.keywords.is_empty() {
                always.push(idx);
            }
            // gitleaks matches keywords in any case.
            for kw in &user.keywords {
                keywords.extend(keyword_patterns(kw, true).into_iter().map(|p| (p, idx)));
            }
        }
        let keywords = literals::LiteralSet::new(keywords);
        let rules = Arc::new(RuleSet { rules, keywords, always });
        Ok(Engine { rules, known, clean: segments::CleanCache::default() })
    }

    /// An engine with the same (shared, not recompiled) rules and other known secrets,
    /// with a clean-message cache of its own: one per bottle.
    pub fn with_known_secrets(&self, known: KnownSecrets) -> Engine {
        Engine { rules: self.rules.clone(), known, clean: self.clean.empty_like() }
    }

    /// The same engine with a per-message cache that never remembers: every scan pays
    /// the price of a body seen for the first time (benchmarks of the worst case).
    pub fn without_message_cache(mut self) -> Engine {
        self.clean = segments::CleanCache::disabled();
        self
    }

    /// The same engine with every rule run over the whole text, never only around its
    /// keyword hits: the reference the windowed search is tested against.
    #[doc(hidden)]
    pub fn without_windows(mut self) -> Engine {
        let rules = Arc::get_mut(&mut self.rules).expect("called on a fresh engine, before its rules are shared");
        rules.rules.iter_mut().for_each(|r| r.window = None);
        self
    }

    pub fn known_secrets(&self) -> &KnownSecrets {
        &self.known
    }

    /// `text` as it may be logged or shown to an operator: every token and known secret
    /// replaced by `********`, or the whole text withheld when a match cannot be cut out
    /// (found only after normalisation).
    pub fn scrub<'t>(&self, text: &'t str, loc: Location) -> std::borrow::Cow<'t, str> {
        let mut findings = Vec::new();
        let all = Selection { token_patterns: true, known_secrets: true, entropy: false };
        self.scan_surface(text, loc, all, &NoneSafe, &mut findings);
        if findings.is_empty() {
            return std::borrow::Cow::Borrowed(text);
        }
        if findings.iter().any(|f| !f.redactable) {
            return format!("(withheld: {} characters that may carry data)", text.len()).into();
        }
        let values: Vec<&str> = findings.iter().filter_map(|f| text.get(f.span.0..f.span.1)).collect();
        redact_text(text, &values).into()
    }

    /// Every finding in `req`, structural checks included; approved values are skipped
    /// and scanning goes on past them.
    pub fn scan_request(&self, req: &Request<'_>, sel: Selection, safe: &dyn SafeSet) -> Vec<Finding> {
        let mut out = Vec::new();
        // CRLF: in the request line and headers only (a body is length-delimited); a
        // lone encoded newline in a query or header value is data (see `crlf`).
        for (loc, text, surface) in
            [(Location::Path, req.path, crlf::Surface::Path), (Location::Query, req.query, crlf::Surface::Value)]
        {
            if crlf::found(text, surface) {
                out.push(structural(loc, "CRLF injection in the request line"));
            }
        }
        for (name, value) in req.headers {
            if crlf::found(value, crlf::Surface::Value) {
                out.push(structural(Location::Header(name.clone()), "CRLF injection in a header"));
            }
        }
        self.scan_surface(req.host, Location::Host, sel, safe, &mut out);
        self.scan_surface(req.path, Location::Path, sel, safe, &mut out);
        self.scan_surface(req.query, Location::Query, sel, safe, &mut out);
        for (name, value) in req.headers {
            self.scan_surface(value, Location::Header(name.clone()), sel, safe, &mut out);
        }
        // `from_utf8` first: on valid text it is several times faster than the lossy walk.
        let body = match std::str::from_utf8(req.body) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(req.body),
        };
        self.scan_body(&body, sel, safe, &mut out);
        out
    }

    /// Scans a body; a conversation body message by message, skipping the messages an
    /// earlier request already showed to be clean (see `segments`).
    fn scan_body(&self, body: &str, sel: Selection, safe: &dyn SafeSet, out: &mut Vec<Finding>) {
        let Some(messages) = segments::conversation_messages(body) else {
            self.scan_surface(body, Location::Body, sel, safe, out);
            return;
        };
        // Each message's cache key (`None`: too short to be worth one), and whether it is
        // known clean.
        let keys: Vec<Option<segments::Key>> = messages
            .iter()
            .map(|r| {
                let text = &body[r.clone()];
                segments::CleanCache::cacheable(text).then(|| self.clean.key(text, sel.bits()))
            })
            .collect();
        let cached: Vec<bool> = keys.iter().map(|k| k.is_some_and(|k| self.clean.is_clean(k))).collect();
        let skipped = messages.iter().zip(&cached).filter(|(_, c)| **c).map(|(r, _)| r.clone());
        for run in segments::runs_without(body.len(), skipped) {
            // Scanned without the safe set, so only a message with no match at all is
            // cached (an approval never leaks into the cache).
            let mut found = Vec::new();
            self.scan_surface(&body[run.clone()], Location::Body, sel, &NoneSafe, &mut found);
            for f in &mut found {
                f.span = (f.span.0 + run.start, f.span.1 + run.start);
            }
            // A finding from the normalised text has no span in this text: then no
            // message of the run can be called clean.
            if found.iter().all(|f| f.redactable) {
                // Messages are sorted: those of this run start at the first at or after it.
                let first = messages.partition_point(|m| m.start < run.start);
                for ((m, was_cached), key) in messages[first..].iter().zip(&cached[first..]).zip(&keys[first..]) {
                    if m.start >= run.end {
                        break;
                    }
                    let overlaps = found.iter().any(|f| f.span.0 < m.end && m.start < f.span.1);
                    if let Some(key) = key.filter(|_| !was_cached && !overlaps) {
                        self.clean.mark_clean(key);
                    }
                }
            }
            out.extend(found.into_iter().filter(|f| !f.matched.as_ref().is_some_and(|m| safe.contains(m.expose()))));
        }
    }

    /// Scans one text surface: as written, and normalised (Unicode evasion and encodings
    /// undone). A value found only after normalisation cannot be redacted.
    pub fn scan_surface(&self, text: &str, loc: Location, sel: Selection, safe: &dyn SafeSet, out: &mut Vec<Finding>) {
        let redactable_surface = loc.redactable();
        // Every match first, approved values included, so that each context can mask all
        // of them (a context shows the text around one match, where another may sit).
        let mut found = Vec::new();
        self.scan_text(text, &loc, sel, redactable_surface, &mut found);
        let spans: Vec<(usize, usize)> = found.iter().map(|f| f.span).collect();
        for f in &mut found {
            f.context = masked_context(text, f.span, &spans);
        }
        if !normalize::is_plain(text) {
            let normalized = normalize::normalize(text);
            if normalized != text {
                let mut extra = Vec::new();
                self.scan_text(&normalized, &loc, sel, false, &mut extra);
                // A value found as written is found again here; each raw finding accounts
                // for one normalised one. Any more (a second, encoded copy of the value)
                // were hidden, and cannot be redacted.
                let mut unaccounted: Vec<&Finding> = found.iter().collect();
                let mut hidden = Vec::new();
                for f in extra {
                    match unaccounted.iter().position(|o| o.matched == f.matched && o.rule_id == f.rule_id) {
                        Some(i) => {
                            unaccounted.swap_remove(i);
                        }
                        None => hidden.push(f),
                    }
                }
                for mut f in hidden {
                    f.reason = format!("{} (hidden by Unicode evasion or encoding)", f.reason);
                    f.redactable = false;
                    f.context = REDACTED.to_string();
                    found.push(f);
                }
            }
        }
        out.extend(found.into_iter().filter(|f| !f.matched.as_ref().is_some_and(|m| safe.contains(m.expose()))));
    }

    fn scan_text(&self, text: &str, loc: &Location, sel: Selection, redactable: bool, out: &mut Vec<Finding>) {
        if sel.token_patterns {
            // Keyword hits, bucketed per rule (a rule's keywords may sit in several
            // searches, each reporting its hits in order). Buckets are made only when
            // something was hit: a conversation seen before is scanned as thousands of
            // short runs, nearly all without a hit.
            let mut found: Vec<(usize, usize)> = Vec::new();
            let set = &*self.rules;
            set.keywords.for_each_hit(text.as_bytes(), |idx, at| found.push((idx, at)));
            let candidates: Vec<(usize, Vec<usize>)> = if found.is_empty() {
                set.always.iter().map(|&idx| (idx, Vec::new())).collect()
            } else {
                let mut per_rule: Vec<Vec<usize>> = vec![Vec::new(); set.rules.len()];
                for (idx, at) in found {
                    per_rule[idx].push(at);
                }
                per_rule
                    .into_iter()
                    .enumerate()
                    .filter(|(idx, starts)| !starts.is_empty() || set.always.binary_search(idx).is_ok())
                    .collect()
            };
            for (idx, mut starts) in candidates {
                let rule = &set.rules[idx];
                starts.sort_unstable();
                starts.dedup();
                if rules::required_literal(rule.id).is_some_and(|lit| !text.contains(lit)) {
                    continue;
                }
                for caps in rule.matches(text, &starts) {
                    let Some(m) = rule.secret(&caps, text) else { continue };
                    let value = m.as_str();
                    if rules::rejected(rule.id, value) || !rule.in_context(&caps, text) {
                        continue;
                    }
                    out.push(Finding {
                        rule_id: rule.id.to_string(),
                        reason: format!("token_patterns: {}", rule.name),
                        location: loc.clone(),
                        span: (m.start(), m.end()),
                        context: String::new(),
                        severity: Severity::Block,
                        redactable,
                        matched: Some(Secret::new(value)),
                    });
                }
            }
        }
        if sel.known_secrets {
            for hit in self.known.find(text) {
                out.push(Finding {
                    rule_id: "known-secret".into(),
                    reason: format!("known_secrets: value of {} ({})", hit.name, hit.form),
                    location: loc.clone(),
                    span: (hit.start, hit.end),
                    context: String::new(),
                    severity: Severity::Block,
                    redactable: redactable && hit.redactable,
                    matched: Some(hit.secret),
                });
            }
        }
        if sel.entropy {
            for (start, end) in high_entropy_runs(text) {
                if out.iter().any(|f| f.location == *loc && f.span.0 < end && start < f.span.1) {
                    continue; // already a finding of a precise detector
                }
                let value = &text[start..end];
                out.push(Finding {
                    rule_id: "entropy".into(),
                    reason: "entropy: high-entropy string".into(),
                    location: loc.clone(),
                    span: (start, end),
                    context: String::new(),
                    severity: Severity::Warn,
                    redactable,
                    matched: Some(Secret::new(value)),
                });
            }
        }
    }
}

/// The literals the keyword prefilter looks for: `keyword` itself, or, when it may appear
/// in any case, every case variant of its last few letters.
fn keyword_patterns(keyword: &str, any_case: bool) -> Vec<Vec<u8>> {
    if any_case {
        literals::case_variants(literals::case_insensitive_tail(keyword.as_bytes()))
    } else {
        vec![keyword.as_bytes().to_vec()]
    }
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn ceil_char_boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at += 1;
    }
    at
}

/// The rule id of a CRLF finding: `redact` strips it (`crlf::strip`) rather than
/// masking a span.
pub const CRLF_RULE: &str = "crlf-injection";

/// A CRLF finding: no value to approve (never held), but `redact` can scrub it.
fn structural(loc: Location, reason: &str) -> Finding {
    Finding {
        rule_id: CRLF_RULE.into(),
        reason: reason.into(),
        location: loc,
        span: (0, 0),
        context: String::new(),
        severity: Severity::Block,
        redactable: true,
        matched: None,
    }
}

/// `CONTEXT_CHARS` characters each side of `start..end`, the match itself replaced.
/// The text around `span`, `CONTEXT_CHARS` characters each side, with every span of
/// `masked` (all the matches in the text, `span` included) replaced by `********`: a
/// second secret next to the first must not show either.
///
/// Each masked span is first extended over the token characters and percent-escapes that
/// follow it (`token_end`): in a percent-encoded query or form body a match stops at the
/// first `%XX` inside the token, and the rest of the token must not show either.
fn masked_context(text: &str, span: (usize, usize), masked: &[(usize, usize)]) -> String {
    let span = (span.0, token_end(text, span.1));
    let masked: Vec<(usize, usize)> = masked.iter().map(|&(s, e)| (s, token_end(text, e))).collect();
    let from = text[..span.0].char_indices().rev().nth(CONTEXT_CHARS - 1).map_or(0, |(i, _)| i);
    let to = text[span.1..].char_indices().nth(CONTEXT_CHARS).map_or(text.len(), |(i, _)| span.1 + i);
    let mut inside: Vec<(usize, usize)> =
        masked.iter().filter(|&&(s, e)| s < to && from < e).map(|&(s, e)| (s.max(from), e.min(to))).collect();
    inside.sort_unstable();
    let mut out = String::new();
    let mut at = from;
    for (s, e) in inside {
        if s > at {
            out.push_str(&text[at..s]);
        }
        if e > at {
            out.push_str(REDACTED);
            at = e;
        }
    }
    out.push_str(&text[at..to]);
    // Agent-controlled bytes, read by humans (logs, proposals, the console): inert.
    crate::inert::inert_string(&out)
}

/// Where the token that a match ending at `end` belongs to ends, as written: over the
/// characters a URL or form encoding leaves as they are (`A-Za-z0-9-._~`, `+`) and over
/// `%XX` escapes. A match that stopped at an escape (`fm2_…%2F…`) is thus masked whole.
fn token_end(text: &str, end: usize) -> usize {
    let b = text.as_bytes();
    let mut i = end.min(b.len());
    while i < b.len() {
        if b[i].is_ascii_alphanumeric() || b"-._~+".contains(&b[i]) {
            i += 1;
        } else if b[i] == b'%' && i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit() {
            i += 3;
        } else {
            break;
        }
    }
    i
}

/// Runs of token characters long and random enough to look like a key.
fn high_entropy_runs(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let is_token = |b: u8| b.is_ascii_alphanumeric() || b"+/_-=".contains(&b);
    let mut i = 0;
    while i < bytes.len() {
        if !is_token(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_token(bytes[i]) {
            i += 1;
        }
        let run = &text[start..i];
        if (ENTROPY_MIN_LEN..=256).contains(&run.len()) && shannon(run) > ENTROPY_WARN_BITS {
            out.push((start, i));
        }
    }
    out
}

pub fn shannon(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let len = s.len() as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| (c as f64 / len) * -(c as f64 / len).log2()).sum()
}

/// Replaces every value of `findings` in `text` by `********`. Returns `None` when a
/// finding cannot be redacted (the caller refuses the request).
pub fn redact_text(text: &str, values: &[&str]) -> String {
    let mut out = text.to_string();
    // Longest first, so a value containing another is replaced whole.
    let mut values: Vec<&str> = values.iter().copied().filter(|v| !v.is_empty()).collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for v in values {
        out = out.replace(v, REDACTED);
    }
    out
}

#[cfg(test)]
mod tests;
