//! Phases **prepare** and **forward**: the agent's `Authorization` and hop-by-hop
//! headers dropped, the route's credential injected, the upstream URI built from the
//! checked target, then the request sent through the gateway's pooled upstream client
//! (HTTP/1.1 for HTTP/1 clients, h2 offered for h2 clients).
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, header};
use hyper::body::Incoming;

use super::{
    ProxyContext,
    authorize::Target,
    body::BufferedBody,
    request::{Refusal, RequestCtx},
};
use crate::policy::Route;

/// Headers that belong to one hop and are never forwarded (RFC 9110 §7.6.1), plus the
/// proxy credentials a client may send.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The headers to send upstream: the client's, minus what never leaves the gateway,
/// plus the route's credential. A credential the gateway does not have refuses (502).
pub fn prepare(
    rq: &RequestCtx,
    route: &Route,
    client_headers: &HeaderMap,
    websocket: bool,
) -> Result<HeaderMap, Refusal> {
    let mut headers = forwardable_headers(client_headers, websocket);
    if let Some(auth) = &route.auth {
        let Some(secret) = rq.live.credential(&auth.token_env) else {
            return Err(Refusal::gateway(
                StatusCode::BAD_GATEWAY,
                format!(
                    "egress: credential {} for {} is not configured on the gateway (bottle credentials file or environment)",
                    auth.token_env, rq.host
                ),
            ));
        };
        let mut value =
            HeaderValue::from_str(&auth.scheme.header_value(&secret)).unwrap_or_else(|_| HeaderValue::from_static(""));
        value.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, value);
    }
    Ok(headers)
}

/// The URI the request is sent to: the checked target's host and port.
pub fn target_uri(target: &Target, path_and_query: &str) -> Result<Uri, Refusal> {
    let scheme = if target.tls { "https" } else { "http" };
    upstream_uri(scheme, &target.host, target.addr.port(), path_and_query)
        .map_err(|e| Refusal::client(StatusCode::BAD_REQUEST, format!("egress: cannot form the upstream URI: {e}")))
}

/// Sends the request upstream; a failure is the upstream's (502).
pub async fn forward(
    ctx: &ProxyContext,
    rq: &RequestCtx,
    mut parts: http::request::Parts,
    target: &Target,
    uri: Uri,
    headers: HeaderMap,
    body: BufferedBody,
) -> Result<Response<Incoming>, Refusal> {
    let client_h2 = parts.version == http::Version::HTTP_2;
    parts.uri = uri;
    parts.headers = headers;
    parts.version = http::Version::HTTP_11;
    let upstream_req = Request::from_parts(parts, body.into_body());
    ctx.upstream
        .send(upstream_req, client_h2, &target.host, target.addr)
        .await
        .map_err(|e| Refusal::upstream(format!("egress: upstream {} failed: {e}", rq.host)))
}

/// The upstream URI, built from its parts (never by formatting the agent's Host into a
/// string to parse): `host` must already be a valid name or IP literal.
pub fn upstream_uri(scheme: &str, host: &str, port: u16, path_and_query: &str) -> Result<Uri, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let shown = match bare.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => bare.to_string(),
    };
    let authority =
        http::uri::Authority::from_maybe_shared(Bytes::from(format!("{shown}:{port}"))).map_err(|e| e.to_string())?;
    // The authority must be exactly the host and port given: nothing in `host` may have
    // been read as userinfo, a path or another port.
    if authority.host() != shown || authority.port_u16() != Some(port) {
        return Err(format!("{host} is not a plain host name"));
    }
    let path_and_query = http::uri::PathAndQuery::from_maybe_shared(Bytes::from(path_and_query.to_string()))
        .map_err(|e| e.to_string())?;
    Uri::builder().scheme(scheme).authority(authority).path_and_query(path_and_query).build().map_err(|e| e.to_string())
}

pub fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == http::Version::HTTP_11
        && req
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The client's headers minus hop-by-hop ones, `Host` (set from the URI), the agent's
/// own `Authorization` (always stripped) and, for WebSocket, the extensions offer
/// (permessage-deflate would make frames unscannable).
pub fn forwardable_headers(headers: &HeaderMap, websocket: bool) -> HeaderMap {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let n = name.as_str();
        let drop = HOP_BY_HOP.contains(&n)
            || listed.contains(name)
            || name == header::HOST
            || name == header::AUTHORIZATION
            || (websocket && name == header::SEC_WEBSOCKET_EXTENSIONS);
        // `te: trailers` is the one TE value that must pass (gRPC).
        let te_trailers = name == header::TE && value.as_bytes().eq_ignore_ascii_case(b"trailers");
        if te_trailers || !drop {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_uri_is_built_from_a_validated_authority() {
        let u = upstream_uri("https", "api.example.test", 443, "/v1/x?y=z").unwrap();
        assert_eq!(u.to_string(), "https://api.example.test:443/v1/x?y=z");
        assert_eq!(upstream_uri("http", "::1", 80, "/").unwrap().to_string(), "http://[::1]:80/");
        // A Host that would move the authority is refused, never re-parsed.
        for bad in ["evil.test/.allowed.test", "x@evil.test", "evil.test:1", "evil.test?.allowed", "a b"] {
            assert!(upstream_uri("https", bad, 443, "/").is_err(), "{bad}");
        }
    }

    #[test]
    fn forwardable_headers_drop_hop_by_hop_host_auth_and_ws_extensions() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("host", "a.test".parse().unwrap());
        h.insert("authorization", "Bearer agent".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("sec-websocket-extensions", "permessage-deflate".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        let out = forwardable_headers(&h, true);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["te", "content-type"]);
        assert!(forwardable_headers(&h, false).contains_key("sec-websocket-extensions"));
    }
}
