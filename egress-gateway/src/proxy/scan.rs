//! The outbound scan of everything the agent sends (before credentials are injected),
//! its findings turned into an action by `action::decide` under the route's
//! `block | redact | supervise` policy, and `redact`'s rewrite. Responses are
//! `inbound.rs`'s.
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};

use super::action::{self, Action};
use crate::{
    dlp::{self, Finding, Location, Severity, crlf},
    policy::Route,
};

/// What the outbound phase decided.
pub enum Outbound {
    /// Forward, possibly rewritten (redacted).
    Forward {
        path_and_query: String,
        headers: HeaderMap,
        body: Bytes,
        trailers: Option<HeaderMap>,
        warnings: Vec<String>,
    },
    /// Refuse (403): `reason` for the agent and the log, `context` for the log only.
    Refuse { reason: String, context: Option<String> },
    /// Hold for the operator's decision on this value (shown as `payload`).
    Hold { payload: crate::supervise::Payload, value: dlp::Secret },
}

impl Outbound {
    fn refuse(reason: String, context: impl Into<Option<String>>) -> Outbound {
        Outbound::Refuse { reason: format!("egress DLP: {reason}"), context: context.into().filter(|c| !c.is_empty()) }
    }
}

/// The request as the agent sent it.
pub struct Outgoing<'a> {
    /// The bottle it came from (for the findings metric).
    pub bottle: &'a str,
    pub host: &'a str,
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    /// Chunked HTTP/1.1 or HTTP/2 trailers, sent after the body.
    pub trailers: Option<&'a HeaderMap>,
}

/// Scans the request and applies the route's policy (`action::decide`). Under
/// `supervise`, a finding with a value is held when the bottle has a supervise queue;
/// without one it is a block (fail closed).
pub fn outbound(
    engine: &dlp::Engine,
    route: &Route,
    req: Outgoing<'_>,
    safe: &dyn dlp::SafeSet,
    supervised: bool,
) -> Outbound {
    let encoding = req.headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let decoded = match dlp::decode::decode_body(&encoding, &req.body) {
        Ok(d) => d,
        Err(e) => return Outbound::refuse(format!("the request body cannot be scanned: {e}"), None),
    };
    let (path, query) = req.path_and_query.split_once('?').unwrap_or((req.path_and_query, ""));
    // The agent's own `Authorization` is never forwarded (the route's credential, or
    // nothing, replaces it), so it is not scanned: it can neither leak nor be held.
    let header_pairs: Vec<(String, String)> = req
        .headers
        .iter()
        .filter(|(name, _)| *name != header::HOST && *name != header::AUTHORIZATION)
        .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let selection = dlp::Selection::from_names(route.dlp.outbound_detectors.as_deref());
    let request = dlp::Request { host: req.host, path, query, headers: &header_pairs, body: &decoded };
    let mut findings = engine.scan_request(&request, selection, safe);
    // Surfaces no redaction can rewrite (the method, header and trailer names): a finding
    // there is unredactable, so it refuses under every policy.
    engine.scan_surface(req.method, Location::Method, selection, safe, &mut findings);
    let header_names = req.headers.keys().map(|n| (n, Location::HeaderName));
    let trailer_names = req.trailers.into_iter().flat_map(HeaderMap::keys).map(|n| (n, Location::TrailerName));
    for (name, loc) in header_names.chain(trailer_names) {
        engine.scan_surface(name.as_str(), loc.clone(), selection, safe, &mut findings);
        if selection.known_secrets {
            findings.extend(folded_known_secrets(engine, name.as_str(), loc, safe));
        }
    }
    let trailer_pairs: Vec<(String, String)> = req
        .trailers
        .into_iter()
        .flat_map(HeaderMap::iter)
        .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    for (name, value) in &trailer_pairs {
        engine.scan_surface(value, Location::Trailer(name.clone()), selection, safe, &mut findings);
    }
    let warnings: Vec<String> =
        findings.iter().filter(|f| f.severity == Severity::Warn).map(action::describe).collect();
    let policy = action::Policy { on_match: route.dlp.on_match, supervised, can_hold: true, can_rewrite: true };
    let decided = action::decide(&findings, policy);
    action::count(req.bottle, &findings, &decided);
    match decided {
        Action::Forward => Outbound::Forward {
            path_and_query: req.path_and_query.to_string(),
            headers: req.headers.clone(),
            body: req.body,
            trailers: req.trailers.cloned(),
            warnings,
        },
        Action::Refuse { reason, context } => Outbound::refuse(reason, context),
        Action::Hold(first) => Outbound::Hold {
            payload: crate::supervise::Payload {
                host: req.host.to_string(),
                method: req.method.to_string(),
                // The held value may be in the path: the proposal never carries it.
                path: engine.scrub(path, Location::Path).into_owned(),
                reason: action::describe(first),
                context: first.context.clone(),
            },
            value: first.matched.clone().expect("only a finding with a value is held"),
        },
        Action::Redact(blocking) => {
            let rescan = |text: &str, loc: Location| {
                let mut found = Vec::new();
                engine.scan_surface(text, loc, selection, safe, &mut found);
                found.retain(|f| f.severity == Severity::Block);
                found
            };
            let (headers, trailers) = ((req.headers, &header_pairs[..]), req.trailers.map(|t| (t, &trailer_pairs[..])));
            redact(req.path_and_query, headers, trailers, (&req.body, &decoded), &blocking, rescan, warnings)
        }
    }
}

/// Bodies larger than this are scanned off the async workers: a scan of several MiB
/// would otherwise stall every other connection on the worker thread.
pub const OFF_WORKER_SCAN: usize = 64 * 1024;

/// `outbound`, run where it does not stall other connections: inline for small bodies;
/// for larger ones the worker hands its other tasks over first (`block_in_place`), on a
/// multi-threaded runtime (a single-threaded one, as in tests, scans inline).
pub fn outbound_off_workers(
    engine: &dlp::Engine,
    route: &Route,
    req: Outgoing<'_>,
    safe: &dyn dlp::SafeSet,
    supervised: bool,
) -> Outbound {
    let big = req.body.len() > OFF_WORKER_SCAN;
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if big && multi_thread {
        tokio::task::block_in_place(|| outbound(engine, route, req, safe, supervised))
    } else {
        outbound(engine, route, req, safe, supervised)
    }
}

/// Known secrets found lower-cased in a header or trailer name (names are folded, so the
/// exact match misses a value with upper-case letters).
pub fn folded_known_secrets(engine: &dlp::Engine, name: &str, loc: Location, safe: &dyn dlp::SafeSet) -> Vec<Finding> {
    engine
        .known_secrets()
        .find_folded(name)
        .into_iter()
        .filter(|(_, value)| !safe.contains(value.expose()))
        .map(|(var, value)| Finding {
            rule_id: "known-secret".into(),
            reason: format!("known_secrets: value of {var} (lower-cased)"),
            location: loc.clone(),
            span: (0, name.len()),
            context: "********".into(),
            severity: Severity::Block,
            redactable: false,
            matched: Some(value),
        })
        .collect()
}

/// Rewrites every surface with a finding. A body with a finding is sent redacted and
/// decoded (identity); a body without one is sent exactly as it came, bytes and
/// encoding (a binary upload must not pass through a text rewrite).
fn redact(
    path_and_query: &str,
    (headers, header_pairs): (&HeaderMap, &[(String, String)]),
    trailers: Option<(&HeaderMap, &[(String, String)])>,
    (original_body, body): (&Bytes, &[u8]),
    findings: &[&Finding],
    rescan: impl Fn(&str, Location) -> Vec<Finding>,
    warnings: Vec<String>,
) -> Outbound {
    let (path, query) = path_and_query.split_once('?').map(|(p, q)| (p, Some(q))).unwrap_or((path_and_query, None));
    let values_in = |loc: &Location, text: &str| -> Vec<String> {
        findings
            .iter()
            .filter(|f| &f.location == loc)
            .filter_map(|f| text.get(f.span.0..f.span.1).map(str::to_string))
            .collect()
    };
    let redact_surface = |loc: Location, text: &str, surface: crlf::Surface| {
        let values = values_in(&loc, text);
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        // CRLF is scrubbed, not refused, under `redact` (as the seed's sidecar does).
        crlf::strip(&dlp::redact_text(text, &refs), surface).into_owned()
    };
    let new_path = redact_surface(Location::Path, path, crlf::Surface::Path);
    let new_query = query.map(|q| redact_surface(Location::Query, q, crlf::Surface::Value));
    let body_found = findings.iter().any(|f| f.location == Location::Body);
    let new_body = if body_found {
        let text = String::from_utf8_lossy(body);
        let values = values_in(&Location::Body, &text);
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        Bytes::from(dlp::redact_text(&text, &refs).into_bytes())
    } else {
        original_body.clone()
    };
    let Some(mut new_headers) = redact_fields(headers, header_pairs, findings, &rescan, |loc| match loc {
        Location::Header(name) => Some(name.as_str()),
        _ => None,
    }) else {
        return Outbound::refuse("a header cannot be redacted".into(), None);
    };
    let trailers = match trailers {
        Some((map, pairs)) => match redact_fields(map, pairs, findings, &rescan, |loc| match loc {
            Location::Trailer(name) => Some(name.as_str()),
            _ => None,
        }) {
            Some(t) => Some(t),
            None => return Outbound::refuse("a trailer cannot be redacted".into(), None),
        },
        None => None,
    };
    if body_found {
        new_headers.remove(header::CONTENT_ENCODING);
        new_headers.remove(header::CONTENT_LENGTH);
    }
    let path_and_query = match new_query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    Outbound::Forward { path_and_query, headers: new_headers, body: new_body, trailers, warnings }
}

/// `fields` (headers or trailers) with every value of each field `named` by a finding
/// scanned again on its own and redacted; all values are kept, in order. `None` when a
/// redacted value is not a valid field value.
fn redact_fields(
    fields: &HeaderMap,
    pairs: &[(String, String)],
    findings: &[&Finding],
    rescan: &impl Fn(&str, Location) -> Vec<Finding>,
    named: impl Fn(&Location) -> Option<&str>,
) -> Option<HeaderMap> {
    // A finding names its field, not which value of a repeated one.
    let mut out = fields.clone();
    let mut names: Vec<&str> = findings.iter().filter_map(|f| named(&f.location)).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let field = http::HeaderName::from_bytes(name.as_bytes()).ok()?;
        out.remove(&field);
        for (_, value) in pairs.iter().filter(|(n, _)| n == name) {
            let loc = findings.iter().map(|f| &f.location).find(|l| named(l) == Some(name)).cloned()?;
            let own = rescan(value, loc);
            let spans: Vec<&str> = own.iter().filter_map(|f| value.get(f.span.0..f.span.1)).collect();
            let redacted = dlp::redact_text(value, &spans);
            out.append(&field, HeaderValue::from_str(&crlf::strip(&redacted, crlf::Surface::Value)).ok()?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap())).collect()
    }

    #[test]
    fn redaction_keeps_every_value_of_a_repeated_header() {
        let routes = crate::policy::Routes::parse(
            std::path::Path::new("r.yaml"),
            "routes:\n  - host: a.test\n    dlp: {outbound_on_match: redact}\n",
        )
        .unwrap();
        let engine = dlp::Engine::new(dlp::KnownSecrets::default(), Vec::new()).unwrap();
        let token = "ghp_aB3dE5fG7hJ9kL2mN4pQ6rS8tU1vW3xY5zA7";
        for order in [["plain-value", token], [token, "plain-value"]] {
            let h = headers(&[("x-key", order[0]), ("x-key", order[1]), ("x-other", "kept")]);
            let req = Outgoing {
                bottle: "t",
                host: "a.test",
                method: "GET",
                path_and_query: "/",
                headers: &h,
                body: Bytes::new(),
                trailers: None,
            };
            let Outbound::Forward { headers: out, .. } =
                outbound(&engine, &routes.routes()[0], req, &dlp::NoneSafe, false)
            else {
                panic!("not forwarded")
            };
            let values: Vec<&str> = out.get_all("x-key").iter().map(|v| v.to_str().unwrap()).collect();
            let want: Vec<&str> = order.iter().map(|v| if *v == token { "********" } else { *v }).collect();
            assert_eq!(values, want);
            assert_eq!(out["x-other"], "kept");
        }
    }

    /// Issue 13 item 5: CRLF as the seed has it: smuggling-shaped CRLF refused under
    /// `block` and `supervise` (never held), scrubbed under `redact`; an encoded newline
    /// inside a query value is data.
    #[test]
    fn crlf_is_refused_or_scrubbed_and_a_query_newline_is_data() {
        let text = "routes:\n  - host: a.test\n    dlp: {outbound_on_match: redact}\n  - host: b.test\n    dlp: {outbound_on_match: block}\n  - host: c.test\n    dlp: {outbound_on_match: supervise}\n";
        let routes = crate::policy::Routes::parse(std::path::Path::new("r.yaml"), text).unwrap();
        let engine = dlp::Engine::new(dlp::KnownSecrets::default(), Vec::new()).unwrap();
        let plain = headers(&[("x-ok", "1")]);
        let smuggling = headers(&[("x-note", "a%0d%0aSet-Cookie: x=1")]);
        let run = |route: usize, path_and_query: &str, headers: &HeaderMap| {
            let req = Outgoing {
                bottle: "t",
                host: "a.test",
                method: "GET",
                path_and_query,
                headers,
                body: Bytes::new(),
                trailers: None,
            };
            outbound(&engine, &routes.routes()[route], req, &dlp::NoneSafe, true)
        };
        for route in 0..3 {
            match run(route, "/search?text=a%0Ab&q=%0a", &plain) {
                Outbound::Forward { path_and_query, .. } => assert_eq!(path_and_query, "/search?text=a%0Ab&q=%0a"),
                _ => panic!("route {route}: an encoded newline in a query value was not forwarded as data"),
            }
        }
        for route in [1, 2] {
            for (pq, h) in [("/r?next=%0d%0aSet-Cookie:x", &plain), ("/a%0Ab", &plain), ("/", &smuggling)] {
                match run(route, pq, h) {
                    Outbound::Refuse { reason, .. } => {
                        assert!(reason.starts_with("egress DLP: CRLF injection"), "{reason}")
                    }
                    _ => panic!("route {route}: {pq} not refused"),
                }
            }
        }
        let Outbound::Forward { path_and_query, headers: out, .. } =
            run(0, "/a%0Ab?next=%0D%0ASet-Cookie:x&t=a%0Ab", &smuggling)
        else {
            panic!("redact: CRLF not scrubbed")
        };
        assert_eq!(path_and_query, "/ab?next=Set-Cookie:x&t=a%0Ab");
        assert_eq!(out["x-note"], "aSet-Cookie: x=1");
    }

    #[test]
    fn method_and_names_refuse_under_every_policy_and_trailer_values_are_redacted() {
        let text = "routes:\n  - host: a.test\n    dlp: {outbound_on_match: redact}\n  - host: b.test\n    dlp: {outbound_on_match: block}\n";
        let routes = crate::policy::Routes::parse(std::path::Path::new("r.yaml"), text).unwrap();
        let engine = dlp::Engine::new(dlp::KnownSecrets::default(), Vec::new()).unwrap();
        let token = "ghp_aB3dE5fG7hJ9kL2mN4pQ6rS8tU1vW3xY5zA7";
        let lower = token.to_ascii_lowercase();
        let plain = headers(&[("x-ok", "1")]);
        let named = headers(&[(lower.as_str(), "1")]);
        let trailer_named = headers(&[(lower.as_str(), "1")]);
        let trailer_valued = headers(&[("x-checksum", token), ("x-other", "kept")]);
        for route in routes.routes() {
            let cases: [(&str, &HeaderMap, Option<&HeaderMap>, &str); 3] = [
                (token, &plain, None, "in method"),
                ("GET", &named, None, "in a header name"),
                ("POST", &plain, Some(&trailer_named), "in a trailer name"),
            ];
            for (method, h, trailers, want) in cases {
                let req = Outgoing {
                    bottle: "t",
                    host: "a.test",
                    method,
                    path_and_query: "/",
                    headers: h,
                    body: Bytes::new(),
                    trailers,
                };
                match outbound(&engine, route, req, &dlp::NoneSafe, true) {
                    Outbound::Refuse { reason, .. } => {
                        assert!(reason.contains(want) && !reason.contains(&lower[4..]), "{reason}");
                    }
                    _ => panic!("{want}: not refused on {}", route.host),
                }
            }
        }
        let req = Outgoing {
            bottle: "t",
            host: "a.test",
            method: "POST",
            path_and_query: "/",
            headers: &plain,
            body: Bytes::from_static(b"x"),
            trailers: Some(&trailer_valued),
        };
        let Outbound::Forward { trailers: Some(t), .. } =
            outbound(&engine, &routes.routes()[0], req, &dlp::NoneSafe, false)
        else {
            panic!("redact route: trailer not redacted and forwarded")
        };
        assert_eq!(t["x-checksum"], "********");
        assert_eq!(t["x-other"], "kept");
        let req = Outgoing {
            bottle: "t",
            host: "b.test",
            method: "POST",
            path_and_query: "/",
            headers: &plain,
            body: Bytes::new(),
            trailers: Some(&trailer_valued),
        };
        assert!(matches!(outbound(&engine, &routes.routes()[1], req, &dlp::NoneSafe, false), Outbound::Refuse { .. }));

        // A known secret with upper-case letters, folded into a header name.
        let known = dlp::KnownSecrets::new([("EGRESS_TOKEN_X".to_string(), "MixedCaseSecretValue99".to_string())], 12);
        let engine = dlp::Engine::new(known, Vec::new()).unwrap();
        let h = headers(&[("x-mixedcasesecretvalue99", "1")]);
        let req = Outgoing {
            bottle: "t",
            host: "b.test",
            method: "GET",
            path_and_query: "/",
            headers: &h,
            body: Bytes::new(),
            trailers: None,
        };
        match outbound(&engine, &routes.routes()[1], req, &dlp::NoneSafe, false) {
            Outbound::Refuse { reason, .. } => {
                assert!(reason.contains("EGRESS_TOKEN_X") && !reason.contains("mixedcase"), "{reason}")
            }
            _ => panic!("a folded known secret in a header name passed"),
        }
    }
}
