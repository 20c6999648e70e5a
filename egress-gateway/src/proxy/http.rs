//! Per-request policy and forwarding, in named phases:
//! `identify` (which host, and does it agree with SNI / CONNECT / the destination),
//! `authorize` (routes), `prepare` (strip and inject credentials, drop hop-by-hop
//! headers), `forward` (the gateway's upstream client), then the response back.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    Flow, ProxyContext, scan, serve_stream,
    upstream::{Body, BoxError},
};
use crate::policy::{Decision, LogLevel, RequestHead, Route};
use crate::{dlp::InjectionVerdict, supervise::HoldOutcome};

/// The host the bottle asks to learn its own policy.
const INTROSPECTION_HOST: &str = "_egress.local";
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers that belong to one hop and are never forwarded (RFC 9110 §7.6.1), plus the
/// proxy credentials a client may send.
const HOP_BY_HOP: [&str; 9] = [
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

pub async fn serve<I>(io: I, flow: Arc<Flow>, ctx: Arc<ProxyContext>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let (flow, ctx) = (flow.clone(), ctx.clone());
        service_fn(move |req| {
            let (flow, ctx) = (flow.clone(), ctx.clone());
            async move { Ok::<_, std::convert::Infallible>(handle(req, flow, ctx).await) }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(io), service).await {
        tracing::debug!(error = %e, "client connection ended with an error");
    }
}

/// The answer to one request; never an error, every failure is a response.
async fn handle(req: Request<Incoming>, flow: Arc<Flow>, ctx: Arc<ProxyContext>) -> Response<Body> {
    // One snapshot of the bottle for the whole request (a reload swaps all of it).
    let live = flow.conn.bottle.live();
    let routes = live.routes.clone();
    let dlp = &live.dlp;
    let method = req.method().clone();
    let log_level = routes.log_level();

    if method == Method::CONNECT {
        return connect(req, flow, ctx).await;
    }
    // The path as logs and refusals show it: a secret in it never reaches a log line.
    let path = dlp.scrub(req.uri().path(), crate::dlp::Location::Path).into_owned();

    // === identify ===
    let host = match identify(&req, &flow) {
        Ok(h) => h,
        Err((status, reason)) => {
            return deny(&flow, log_level, status, "-", &method, &path, &reason);
        }
    };
    if host == INTROSPECTION_HOST && !flow.tls {
        let body = serde_json::to_vec_pretty(&routes.allowlist_json()).unwrap_or_default();
        return Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(full(body))
            .expect("static response");
    }
    if crate::dlp::hostname::carries_data(dlp, &host) {
        // Refused before any resolution (which would carry the name out), never logged.
        let reason = "egress: request blocked: the host name looks like it carries data (a secret or an encoded label)";
        let shown = crate::dlp::hostname::loggable(dlp, &host);
        return deny(&flow, log_level, StatusCode::FORBIDDEN, &shown, &method, &path, reason);
    }
    if !ctx.resolver.is_address_of(&host, flow.dst.ip()).await {
        let reason = format!("egress: {} is not an address of {host}", flow.dst.ip());
        return deny(&flow, log_level, StatusCode::FORBIDDEN, &host, &method, &path, &reason);
    }

    // === authorize ===
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let route: Route = match routes.decide(&RequestHead {
        host: &host,
        method: method.as_str(),
        path_and_query: &path_and_query,
        headers: req.headers(),
    }) {
        Decision::Allow(route) => route.clone(),
        Decision::Deny(denial) => {
            return deny(&flow, log_level, StatusCode::FORBIDDEN, &host, &method, &path, &denial.reason);
        }
    };

    // === scan ===
    let is_websocket = is_websocket_upgrade(&req);
    let (mut parts, body) = req.into_parts();
    // The whole body is read (bounded) before anything goes upstream: the outbound scan
    // must see all of it, and a known length lets the upstream send it in one go.
    let body = match read_body(body, &parts.headers).await {
        Ok(b) => b,
        Err((status, reason)) => return deny(&flow, log_level, status, &host, &method, &path, &reason),
    };
    let supervisor = flow.conn.bottle.supervisor.clone();
    // The bottle's approved values, plus those approved `once` for this request.
    let mut safe = crate::supervise::RequestSafe::new(supervisor.as_deref(), &host);
    let (path_and_query, client_headers, body_data) = loop {
        let outgoing = scan::Outgoing {
            host: &host,
            method: method.as_str(),
            path_and_query: &path_and_query,
            headers: &parts.headers,
            body: body.data.clone(),
        };
        match scan::outbound(dlp, &route, outgoing, &safe, supervisor.is_some()) {
            scan::Outbound::Forward { path_and_query, headers, body, warnings } => {
                for w in warnings {
                    tracing::warn!(bottle = %flow.conn.bottle.config.name, host = %host, method = %method, path = %path, reason = %w, "egress_dlp_warn");
                }
                break (path_and_query, headers, body);
            }
            scan::Outbound::Refuse(status, reason) => {
                return deny(&flow, log_level, status, &host, &method, &path, &reason);
            }
            scan::Outbound::Hold { payload, value } => {
                let supervisor = supervisor.as_ref().expect("holds only when supervised");
                let outcome = supervisor.hold(payload, &value).await;
                safe.note(&outcome, &value);
                match outcome {
                    // Approved: the value is in the safe set now; scan again, so a second
                    // secret in the same request is held on its own.
                    HoldOutcome::Approved { .. } => continue,
                    HoldOutcome::Rejected(notes) => {
                        let reason = format!("egress: rejected by the operator: {notes}");
                        return deny(&flow, log_level, StatusCode::FORBIDDEN, &host, &method, &path, &reason);
                    }
                    HoldOutcome::Failed(why) => {
                        let reason = format!("egress: request blocked: {why}");
                        return deny(&flow, log_level, StatusCode::FORBIDDEN, &host, &method, &path, &reason);
                    }
                }
            }
        }
    };

    // === prepare ===
    let mut headers = forwardable_headers(&client_headers, is_websocket);
    if let Some(auth) = &route.auth {
        match live.credential(&auth.token_env) {
            Some(secret) => {
                let mut value = HeaderValue::from_str(&auth.scheme.header_value(&secret))
                    .unwrap_or_else(|_| HeaderValue::from_static(""));
                value.set_sensitive(true);
                headers.insert(header::AUTHORIZATION, value);
            }
            _ => {
                let reason = format!(
                    "egress: credential {} for {host} is not configured on the gateway (bottle credentials file or environment)",
                    auth.token_env
                );
                return deny(&flow, log_level, StatusCode::BAD_GATEWAY, &host, &method, &path, &reason);
            }
        }
    }
    let scheme = if flow.tls { "https" } else { "http" };
    let port = flow.dst.port();
    let uri: Uri = match format!("{scheme}://{host}:{port}{path_and_query}").parse() {
        Ok(u) => u,
        Err(e) => {
            let reason = format!("egress: cannot form the upstream URI: {e}");
            return deny(&flow, log_level, StatusCode::BAD_REQUEST, &host, &method, &path, &reason);
        }
    };
    if log_level >= LogLevel::Full {
        tracing::info!(host = %host, method = %method, path = %path, headers = ?header_names(&headers), "egress_request");
    }

    // === forward ===
    if is_websocket {
        let Some(client_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            let reason = "egress: this connection cannot be upgraded";
            return deny(&flow, log_level, StatusCode::BAD_REQUEST, &host, &method, &path, reason);
        };
        return websocket(&ctx, &flow, dlp, &route, uri, headers, client_upgrade, log_level).await;
    }
    let client_h2 = parts.version == http::Version::HTTP_2;
    parts.uri = uri;
    parts.headers = headers;
    parts.version = http::Version::HTTP_11;
    let upstream_req =
        Request::from_parts(parts, BufferedBody { data: body_data, trailers: body.trailers }.into_body());
    let resp = match ctx.upstream.send(upstream_req, client_h2).await {
        Ok(resp) => resp,
        Err(e) => {
            let reason = format!("egress: upstream {host} failed: {e}");
            return deny(&flow, log_level, StatusCode::BAD_GATEWAY, &host, &method, &path, &reason);
        }
    };

    // === response ===
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if log_level >= LogLevel::Full {
        tracing::info!(host = %host, method = %method, path = %path, status = parts.status.as_u16(), "egress_response");
    }
    match scan::inbound_mode(&route, &parts.headers) {
        scan::InboundMode::Skip => return Response::from_parts(parts, body.map_err(Into::into).boxed()),
        scan::InboundMode::Stream { sse } => return stream_response(dlp, &flow, &host, &path, parts, body, sse),
        scan::InboundMode::Buffer => {}
    }
    let data = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            let reason = format!("egress: reading the response from {host}: {e}");
            return deny(&flow, log_level, StatusCode::BAD_GATEWAY, &host, &method, &path, &reason);
        }
    };
    let inbound = scan::inbound(dlp, &parts.headers, &data);
    match inbound.verdict {
        InjectionVerdict::Block(reason) => {
            let reason = format!("egress: response blocked: {reason}");
            return deny(&flow, log_level, StatusCode::FORBIDDEN, &host, &method, &path, &reason);
        }
        InjectionVerdict::Warn(reason) => {
            tracing::warn!(bottle = %flow.conn.bottle.config.name, host = %host, method = %method, path = %path, status = parts.status.as_u16(), reason = %reason, "egress_inbound_warn");
        }
        InjectionVerdict::Clean => {}
    }
    match inbound.redacted {
        Some(body) => {
            tracing::warn!(bottle = %flow.conn.bottle.config.name, host = %host, path = %path, reason = "known secret in the response", "egress_response_redacted");
            parts.headers.remove(header::CONTENT_ENCODING);
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, full(body))
        }
        None => Response::from_parts(parts, full(data)),
    }
}

/// A response too long or open-ended to buffer (server-sent events, chunked, large):
/// decoded and scanned as it passes. A block cuts the stream and is logged: an SSE
/// client gets a last `egress-blocked` event saying why, other bodies end with an error.
fn stream_response(
    dlp: &Arc<crate::dlp::Engine>,
    flow: &Flow,
    host: &str,
    path: &str,
    mut parts: http::response::Parts,
    mut body: Incoming,
    sse: bool,
) -> Response<Body> {
    match scan::inbound_headers(&parts.headers) {
        InjectionVerdict::Block(reason) => {
            let reason = format!("egress: response blocked: {reason}");
            return deny(flow, LogLevel::Blocks, StatusCode::FORBIDDEN, host, &Method::GET, path, &reason);
        }
        InjectionVerdict::Warn(reason) => {
            tracing::warn!(bottle = %flow.conn.bottle.config.name, host = %host, path = %path, reason = %reason, "egress_inbound_warn");
        }
        InjectionVerdict::Clean => {}
    }
    let encoding = parts.headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut decoder = match crate::dlp::decode::StreamDecoder::new(encoding) {
        Ok(d) => d,
        Err(e) => {
            let reason = format!("egress: response cannot be scanned: {e}");
            return deny(flow, LogLevel::Blocks, StatusCode::BAD_GATEWAY, host, &Method::GET, path, &reason);
        }
    };
    // Sent decoded, and chunked: redaction may change the length.
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut scanner = crate::dlp::stream::ResponseStream::new(dlp.clone(), sse);
    let (bottle, host, path) = (flow.conn.bottle.config.name.clone(), host.to_string(), path.to_string());
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, BoxError>>(8);
    tokio::spawn(async move {
        let cut = |reason: String| {
            tracing::warn!(bottle = %bottle, host = %host, path = %path, decision = "deny", reason = %reason, "egress_block");
            reason
        };
        let mut trailers = None;
        let verdict = loop {
            let data = match body.frame().await {
                None => break scanner.finish(),
                Some(Err(e)) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        continue;
                    }
                },
            };
            let decoded = match decoder.as_mut().map(|d| d.push(&data)) {
                None => data.to_vec(),
                Some(Ok(d)) => d,
                Some(Err(e)) => break Err(crate::dlp::stream::Blocked(format!("response cannot be scanned: {e}"))),
            };
            match scanner.push(&decoded) {
                Ok(out) if out.is_empty() => {}
                Ok(out) => {
                    if tx.send(Ok(hyper::body::Frame::data(Bytes::from(out)))).await.is_err() {
                        return;
                    }
                }
                Err(blocked) => break Err(blocked),
            }
            for w in scanner.warnings.drain(..) {
                tracing::warn!(bottle = %bottle, host = %host, path = %path, reason = %w, "egress_inbound_warn");
            }
        };
        match verdict {
            Ok(rest) => {
                let _ = tx.send(Ok(hyper::body::Frame::data(Bytes::from(rest)))).await;
                if let Some(t) = trailers {
                    let _ = tx.send(Ok(hyper::body::Frame::trailers(t))).await;
                }
            }
            Err(crate::dlp::stream::Blocked(reason)) => {
                let reason = cut(format!("egress: response blocked: {reason}"));
                if sse {
                    // The event is the last thing the client gets; the stream then ends
                    // (an error right after it could drop it unflushed).
                    let event = format!("event: egress-blocked\ndata: {reason}\n\n");
                    let _ = tx.send(Ok(hyper::body::Frame::data(Bytes::from(event)))).await;
                } else {
                    let _ = tx.send(Err(reason.into())).await;
                }
            }
        }
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Response::from_parts(parts, http_body_util::StreamBody::new(frames).boxed())
}

/// Largest request body the gateway buffers; larger ones are refused (413).
pub const MAX_REQUEST_BODY: usize = 8 * 1024 * 1024;

/// A request body read in full, with its trailers (gRPC).
pub struct BufferedBody {
    pub data: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl BufferedBody {
    fn into_body(self) -> Body {
        let frames = [Some(hyper::body::Frame::data(self.data)), self.trailers.map(hyper::body::Frame::trailers)];
        let stream = futures_util::stream::iter(frames.into_iter().flatten().map(Ok::<_, BoxError>));
        http_body_util::StreamBody::new(stream).boxed()
    }
}

async fn read_body(body: Incoming, headers: &HeaderMap) -> Result<BufferedBody, (StatusCode, String)> {
    let too_large = || (StatusCode::PAYLOAD_TOO_LARGE, format!("egress: request body over {MAX_REQUEST_BODY} bytes"));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BODY as u64) {
        return Err(too_large());
    }
    let collected = http_body_util::Limited::new(body, MAX_REQUEST_BODY).collect().await.map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            too_large()
        } else {
            (StatusCode::BAD_REQUEST, format!("egress: reading the request body: {e}"))
        }
    })?;
    let trailers = collected.trailers().cloned();
    Ok(BufferedBody { data: collected.to_bytes(), trailers })
}

/// The request's host, checked against SNI and a CONNECT target.
fn identify(req: &Request<Incoming>, flow: &Flow) -> Result<String, (StatusCode, String)> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
        .ok_or((StatusCode::BAD_REQUEST, "egress: request has no Host".to_string()))?;
    // With both an authority and a Host header (HTTP/1 absolute form), they must agree.
    if let (Some(a), Some(h)) = (req.uri().authority(), req.headers().get(header::HOST))
        && !h.to_str().is_ok_and(|h| host_of(h) == host_of(a.as_str()))
    {
        return Err((StatusCode::MISDIRECTED_REQUEST, "egress: Host and :authority disagree".into()));
    }
    let host = host_of(&authority);
    if host.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "egress: request has an empty Host".into()));
    }
    if let Some(sni) = flow.sni.as_ref().filter(|sni| **sni != host) {
        return Err((
            StatusCode::MISDIRECTED_REQUEST,
            format!("egress: Host does not match the TLS server name {sni}"),
        ));
    }
    if let Some(target) = flow.connect_host.as_ref().filter(|t| **t != host) {
        return Err((
            StatusCode::MISDIRECTED_REQUEST,
            format!("egress: Host does not match the CONNECT target {target}"),
        ));
    }
    Ok(host)
}

/// `Host`/`:authority` without port and brackets, lower-case, no trailing dot.
fn host_of(authority: &str) -> String {
    let without_port = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => authority,
    };
    without_port.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase()
}

/// A CONNECT from a client with a proxy variable: policed like a direct connection. The
/// target host must be routed; the gateway picks the address itself; the tunnel's
/// content is then intercepted like any other stream.
async fn connect(req: Request<Incoming>, flow: Arc<Flow>, ctx: Arc<ProxyContext>) -> Response<Body> {
    let live = flow.conn.bottle.live();
    let (routes, dlp) = (&live.routes, &live.dlp);
    let log_level = routes.log_level();
    let target = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
    let host = host_of(&target);
    let port = req.uri().port_u16().unwrap_or(443);
    if crate::dlp::hostname::carries_data(dlp, &host) {
        let reason = "egress: CONNECT blocked: the host name looks like it carries data (a secret or an encoded label)";
        let shown = crate::dlp::hostname::loggable(dlp, &host);
        return deny(&flow, log_level, StatusCode::FORBIDDEN, &shown, &Method::CONNECT, "-", reason);
    }
    if flow.connect_host.is_some() || flow.tls {
        let reason = "egress: nested CONNECT is not supported";
        return deny(&flow, log_level, StatusCode::FORBIDDEN, &host, &Method::CONNECT, &target, reason);
    }
    if !routes.host_allowed(&host) {
        let reason = format!("egress: host {host} is not in the allowlist");
        return deny(&flow, log_level, StatusCode::FORBIDDEN, &host, &Method::CONNECT, &target, &reason);
    }
    let addr = match ctx.resolver.lookup(&host).await {
        Ok(addrs) if !addrs.is_empty() => SocketAddr::new(addrs[0], port),
        _ => {
            let reason = format!("egress: cannot resolve {host}");
            return deny(&flow, log_level, StatusCode::BAD_GATEWAY, &host, &Method::CONNECT, &target, &reason);
        }
    };
    let conn = super::Connection {
        id: flow.conn.id,
        client: flow.conn.client,
        orig_dst: flow.conn.orig_dst,
        bottle: flow.conn.bottle.clone(),
    };
    let inner = Flow { conn, dst: addr, sni: None, connect_host: Some(host), tls: false };
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => serve_stream(TokioIo::new(upgraded), inner, ctx).await,
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    Response::new(empty())
}

/// Relays a WebSocket upgrade over a dedicated HTTP/1.1 upstream connection, then the
/// frames in both directions.
#[allow(clippy::too_many_arguments)]
async fn websocket(
    ctx: &ProxyContext,
    flow: &Flow,
    dlp: &Arc<crate::dlp::Engine>,
    route: &Route,
    uri: Uri,
    mut headers: HeaderMap,
    client_upgrade: hyper::upgrade::OnUpgrade,
    log_level: LogLevel,
) -> Response<Body> {
    let method = Method::GET;
    // Logged for the life of the socket: scrubbed like every logged path.
    let path = dlp.scrub(uri.path(), crate::dlp::Location::Path).into_owned();
    let host = uri.host().unwrap_or_default();
    // Ask for the upgrade explicitly: the hop-by-hop copies were dropped above.
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(h) = HeaderValue::from_str(uri.authority().map(|a| a.as_str()).unwrap_or(host)) {
        headers.insert(header::HOST, h);
    }
    let mut sender = match ctx.upstream.dial_http1(host, flow.dst, flow.tls).await {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("egress: upstream {host} failed: {e}");
            return deny(flow, log_level, StatusCode::BAD_GATEWAY, host, &method, &path, &reason);
        }
    };
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .body(empty())
        .expect("valid request");
    *req.headers_mut() = headers;
    let resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            let reason = format!("egress: upstream {host} failed: {e}");
            return deny(flow, log_level, StatusCode::BAD_GATEWAY, host, &method, &path, &reason);
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        return Response::from_parts(parts, body.map_err(Into::into).boxed());
    }
    let mut client_resp = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (name, value) in resp.headers() {
        // Extensions were not offered upstream, so none may be accepted.
        if name != header::SEC_WEBSOCKET_EXTENSIONS {
            client_resp = client_resp.header(name, value);
        }
    }
    let upstream_upgrade = hyper::upgrade::on(resp);
    let scanning = super::websocket::Scanning {
        engine: dlp.clone(),
        selection: crate::dlp::Selection::from_names(route.dlp.outbound_detectors.as_deref()),
        on_match: route.dlp.on_match,
        inbound: scan::injection_detection_enabled(route),
        safe: super::websocket::bottle_safe_set(&flow.conn.bottle),
        bottle: flow.conn.bottle.config.name.clone(),
        host: host.to_string(),
        path: path.clone(),
    };
    tokio::spawn(async move {
        let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) else {
            tracing::debug!("websocket upgrade did not complete");
            return;
        };
        super::websocket::relay(TokioIo::new(client), TokioIo::new(upstream), scanning).await;
    });
    tracing::info!(host = %host, path = %path, decision = "allow", "websocket upgraded");
    client_resp.body(empty()).expect("valid response")
}

fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
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
fn forwardable_headers(headers: &HeaderMap, websocket: bool) -> HeaderMap {
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

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

fn header_names(headers: &HeaderMap) -> Vec<&str> {
    headers.keys().map(HeaderName::as_str).collect()
}

/// A refusal: logged (at `log: 1` and above) with bottle, host, method, path without the
/// query, and reason; answered with the reason as `text/plain`.
fn deny(
    flow: &Flow,
    log_level: LogLevel,
    status: StatusCode,
    host: &str,
    method: &Method,
    path: &str,
    reason: &str,
) -> Response<Body> {
    if log_level >= LogLevel::Blocks || status != StatusCode::FORBIDDEN {
        tracing::warn!(
            bottle = %flow.conn.bottle.config.name,
            host = %host,
            method = %method,
            path = %path,
            status = status.as_u16(),
            decision = "deny",
            reason = %reason,
            "egress_block"
        );
    }
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(format!("{reason}\n")))
        .expect("static response")
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never| match never {}).boxed()
}

fn empty() -> Body {
    full(Bytes::new())
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
