//! Phase **identify**: which host the request is for. `Host` / `:authority` must be a
//! plain host name or IP literal (400) and agree with each other, with the TLS server
//! name and with a CONNECT target (421); a name that looks like it carries data is
//! refused before anything resolves it (403); the path must pass
//! `policy::target::check_path` (400).
use http::{Request, StatusCode, header};

use super::{
    Flow,
    request::{Refusal, RequestCtx},
};

/// The host the bottle asks to learn its own policy.
pub const INTROSPECTION_HOST: &str = "_egress.local";

/// What identify found.
#[derive(Debug, PartialEq, Eq)]
pub enum Identified {
    /// `http://_egress.local/...`: the gateway answers it itself.
    Introspection,
    /// A host to authorize (lower-case, no port, no trailing dot).
    Host(String),
}

/// Identifies the request's host and records it in `rq` (as logs may show it).
pub fn identify<B>(req: &Request<B>, rq: &mut RequestCtx) -> Result<Identified, Refusal> {
    let host = host_of_request(req, &rq.flow)?;
    if host == INTROSPECTION_HOST && !rq.flow.tls {
        rq.set_host(host);
        return Ok(Identified::Introspection);
    }
    if crate::dlp::hostname::carries_data(&rq.live.dlp, &host) {
        // Refused before any resolution (which would carry the name out), never logged.
        rq.set_host(crate::dlp::hostname::loggable(&rq.live.dlp, &host));
        return Err(Refusal::dlp(
            "egress DLP: the host name looks like it carries data (a secret or an encoded label)",
        ));
    }
    rq.set_host(host.clone());
    // A path an upstream could read differently from how the routes match it is refused
    // before the routes are asked.
    if let Err(why) = crate::policy::target::check_path(req.uri().path()) {
        return Err(Refusal::client(StatusCode::BAD_REQUEST, format!("egress: request path refused: {why}")));
    }
    Ok(Identified::Host(host))
}

/// The request's host, checked against SNI and a CONNECT target.
pub fn host_of_request<B>(req: &Request<B>, flow: &Flow) -> Result<String, Refusal> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .ok_or_else(|| Refusal::client(StatusCode::BAD_REQUEST, "egress: request has no Host"))?;
    // With both an authority and a Host header (HTTP/1 absolute form), they must agree.
    if let (Some(a), Some(h)) = (req.uri().authority(), req.headers().get(header::HOST))
        && !h.to_str().is_ok_and(|h| host_of(h) == host_of(a.as_str()))
    {
        return Err(Refusal::client(StatusCode::MISDIRECTED_REQUEST, "egress: Host and :authority disagree"));
    }
    let host = host_of(&authority);
    if host.is_empty() {
        return Err(Refusal::client(StatusCode::BAD_REQUEST, "egress: request has an empty Host"));
    }
    // Parsed as an authority, and the host a plain name or IP literal: `a.test/.b.test`
    // or `x@a.test` must never reach the routes or an upstream URI.
    if http::uri::Authority::try_from(authority.as_str()).is_err() || !crate::policy::target::is_valid_host(&host) {
        return Err(Refusal::client(StatusCode::BAD_REQUEST, "egress: the Host is not a valid host name"));
    }
    if let Some(sni) = flow.sni.as_ref().filter(|sni| **sni != host) {
        return Err(Refusal::client(
            StatusCode::MISDIRECTED_REQUEST,
            format!("egress: Host does not match the TLS server name {sni}"),
        ));
    }
    if let Some(target) = flow.connect_host.as_ref().filter(|t| **t != host) {
        return Err(Refusal::client(
            StatusCode::MISDIRECTED_REQUEST,
            format!("egress: Host does not match the CONNECT target {target}"),
        ));
    }
    Ok(host)
}

/// `Host`/`:authority` without port and brackets, lower-case, no trailing dot.
pub fn host_of(authority: &str) -> String {
    let without_port = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => authority,
    };
    without_port.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_port_brackets_case_and_dot() {
        assert_eq!(host_of("API.Example.test:8443"), "api.example.test");
        assert_eq!(host_of("api.example.test."), "api.example.test");
        assert_eq!(host_of("[::1]:443"), "::1");
        assert_eq!(host_of("127.0.0.2"), "127.0.0.2");
    }
}
