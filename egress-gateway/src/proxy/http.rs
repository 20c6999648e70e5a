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
    Flow, ProxyContext,
    limits::{InFlight, Reservation, Spent, Stamp, Tracked},
    scan, serve_stream,
    upstream::{Body, BoxError},
};
use crate::policy::{Decision, LogLevel, RequestHead, Route};
use crate::{dlp::InjectionVerdict, supervise::HoldOutcome};

/// The host the bottle asks to learn its own policy.
const INTROSPECTION_HOST: &str = "_egress.local";

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

/// HTTP/2 flow control offered to clients: what one stream, and one connection, may
/// send before the gateway reads it. Bodies are read whole into the budget anyway; these
/// bound what sits unread in the HTTP/2 layer.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
const H2_MAX_FRAME: u32 = 16 * 1024;
const H2_MAX_HEADER_LIST: u32 = 64 * 1024;
/// A silent HTTP/2 peer is pinged this often, and dropped if it does not answer in time.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an idle connection told to close (HTTP/2 GOAWAY) may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

pub async fn serve<I>(io: I, flow: Arc<Flow>, ctx: Arc<ProxyContext>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = ctx.limits.config.clone();
    let in_flight = Arc::new(InFlight::default());
    let service = {
        let (flow, ctx, in_flight) = (flow.clone(), ctx.clone(), in_flight.clone());
        service_fn(move |req| {
            let (flow, ctx) = (flow.clone(), ctx.clone());
            // In flight until the response body is sent: the connection is not idle.
            let guard = in_flight.start();
            async move {
                let resp = handle(req, flow, ctx).await;
                Ok::<_, std::convert::Infallible>(resp.map(|body| {
                    body.map_frame(move |frame| {
                        let _in_flight = &guard;
                        frame
                    })
                    .boxed()
                }))
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .adaptive_window(false)
        .max_frame_size(H2_MAX_FRAME)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "client connection ended with an error");
            }
        }
        _ = in_flight.idle(limits.idle_timeout) => {
            tracing::info!(reason = %format!("no request for {:?}", limits.idle_timeout), "idle connection closed");
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
        }
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
    // The path and method as logs and refusals show them: a secret in either never
    // reaches a log line.
    let path = dlp.scrub(req.uri().path(), crate::dlp::Location::Path).into_owned();
    let shown_method = dlp.scrub(method.as_str(), crate::dlp::Location::Method).into_owned();

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
    // A path an upstream could read differently from how the routes match it is refused
    // before the routes are asked.
    if let Err(why) = crate::policy::target::check_path(req.uri().path()) {
        let reason = format!("egress: request path refused: {why}");
        return deny(&flow, log_level, StatusCode::BAD_REQUEST, &host, &method, &path, &reason);
    }

    // === authorize ===
    // The routes decide before anything resolves the name: a name they do not allow is
    // never sent to a resolver (it could carry data to the name's DNS server).
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
    if !ctx.resolver.is_address_of(&host, flow.dst.ip()).await {
        let reason = format!("egress: {} is not an address of {host}", flow.dst.ip());
        return deny(&flow, log_level, StatusCode::FORBIDDEN, &host, &method, &path, &reason);
    }

    // === scan ===
    let is_websocket = is_websocket_upgrade(&req);
    let (mut parts, body) = req.into_parts();
    // The whole body is read (bounded) before anything goes upstream: the outbound scan
    // must see all of it, and a known length lets the upstream send it in one go.
    // Held until the request is done: the body's bytes count against the bottle's and
    // the gateway's budgets while they are in memory.
    let mut reservation = Reservation::new(ctx.limits.buffered.clone(), flow.conn.bottle.usage.buffered.clone());
    let body = match read_body(body, &parts.headers, &mut reservation, ctx.limits.config.body_timeout).await {
        Ok(b) => b,
        Err((status, reason)) => {
            if status == StatusCode::SERVICE_UNAVAILABLE {
                flow.conn.bottle.usage.refused_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            return deny(&flow, log_level, status, &host, &method, &path, &reason);
        }
    };
    let supervisor = flow.conn.bottle.supervisor.clone();
    // The bottle's approved values, plus those approved `once` for this request.
    let mut safe = crate::supervise::RequestSafe::new(supervisor.as_deref(), &host);
    let (path_and_query, client_headers, body_data, trailers) = loop {
        let outgoing = scan::Outgoing {
            host: &host,
            method: method.as_str(),
            path_and_query: &path_and_query,
            headers: &parts.headers,
            body: body.data.clone(),
            trailers: body.trailers.as_ref(),
        };
        match scan::outbound(dlp, &route, outgoing, &safe, supervisor.is_some()) {
            scan::Outbound::Forward { path_and_query, headers, body, trailers, warnings } => {
                for w in warnings {
                    tracing::warn!(bottle = %flow.conn.bottle.config.name, host = %host, method = %shown_method, path = %path, reason = %w, "egress_dlp_warn");
                }
                break (path_and_query, headers, body, trailers);
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
                    HoldOutcome::TooMany(why) => {
                        let reason = format!("egress: request refused: {why}");
                        return deny(&flow, log_level, StatusCode::TOO_MANY_REQUESTS, &host, &method, &path, &reason);
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
    let uri = match upstream_uri(scheme, &host, port, &path_and_query) {
        Ok(u) => u,
        Err(e) => {
            let reason = format!("egress: cannot form the upstream URI: {e}");
            return deny(&flow, log_level, StatusCode::BAD_REQUEST, &host, &method, &path, &reason);
        }
    };
    if log_level >= LogLevel::Full {
        tracing::info!(host = %host, method = %shown_method, path = %path, headers = ?header_names(dlp, &headers), "egress_request");
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
    let upstream_req = Request::from_parts(parts, BufferedBody { data: body_data, trailers }.into_body());
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
        tracing::info!(host = %host, method = %shown_method, path = %path, status = parts.status.as_u16(), "egress_response");
    }
    match scan::inbound_mode(&route, &parts.headers) {
        scan::InboundMode::Skip => return Response::from_parts(parts, body.map_err(Into::into).boxed()),
        scan::InboundMode::Stream { sse } => return stream_response(dlp, &flow, &host, &path, parts, body, sse),
        scan::InboundMode::Buffer => {}
    }
    // A response read whole for the scan (its length is known and bounded) counts
    // against the same budgets as the request body.
    let length = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    if reservation.grow(length.unwrap_or(scan::MAX_BUFFERED_RESPONSE)).is_err() {
        flow.conn.bottle.usage.refused_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reason = "egress: response refused: the budget for buffered bodies is spent; retry later";
        return deny(&flow, log_level, StatusCode::SERVICE_UNAVAILABLE, &host, &method, &path, reason);
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
            tracing::warn!(bottle = %flow.conn.bottle.config.name, host = %host, method = %shown_method, path = %path, status = parts.status.as_u16(), reason = %reason, "egress_inbound_warn");
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
/// Slowest average a request body may arrive at, after its first `body_timeout`.
const MIN_BODY_RATE: u64 = 16 * 1024;

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

/// Reads the body whole (at most `MAX_REQUEST_BODY`), reserving its memory from the
/// budgets before it is allocated: a spent budget refuses the request (503), it is never
/// forwarded unscanned. A body that makes no progress for `timeout` is cut (408).
async fn read_body(
    mut body: Incoming,
    headers: &HeaderMap,
    reservation: &mut Reservation,
    timeout: Duration,
) -> Result<BufferedBody, (StatusCode, String)> {
    let too_large = || (StatusCode::PAYLOAD_TOO_LARGE, format!("egress: request body over {MAX_REQUEST_BODY} bytes"));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BODY as u64) {
        return Err(too_large());
    }
    let spent = |which: Spent| {
        let whose = match which {
            Spent::Bottle => "this bottle's",
            Spent::Gateway => "the gateway's",
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("egress: request refused: {whose} budget for buffered request bodies is spent; retry later"),
        )
    };
    // Grown to the declared length at the first bytes, else doubling from 64 KiB.
    let target = declared.map(|n| n as usize);
    let mut data: Vec<u8> = Vec::new();
    let mut trailers = None;
    let start = tokio::time::Instant::now();
    loop {
        // No gap longer than `timeout`, and on average at least `MIN_BODY_RATE` after
        // the first `timeout`: a trickle cannot hold the connection and its budget.
        let deadline = start + timeout + Duration::from_secs_f64(data.len() as f64 / MIN_BODY_RATE as f64);
        let wait = deadline.min(tokio::time::Instant::now() + timeout);
        let frame = match tokio::time::timeout_at(wait, body.frame()).await {
            Err(_) => {
                return Err((
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "egress: the request body was too slow (a gap over {timeout:?}, or under {MIN_BODY_RATE} bytes/s)"
                    ),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err((StatusCode::BAD_REQUEST, format!("egress: reading the request body: {e}")));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let chunk = match frame.into_data() {
            Ok(chunk) => chunk,
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
                continue;
            }
        };
        let need = data.len() + chunk.len();
        if need > MAX_REQUEST_BODY {
            return Err(too_large());
        }
        if need > data.capacity() {
            let grown = target.unwrap_or_else(|| (data.capacity() * 2).max(64 * 1024)).clamp(need, MAX_REQUEST_BODY);
            reservation.grow((grown - data.capacity()) as u64).map_err(spent)?;
            data.reserve_exact(grown - data.len());
        }
        data.extend_from_slice(&chunk);
    }
    Ok(BufferedBody { data: Bytes::from(data), trailers })
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
    // Parsed as an authority, and the host a plain name or IP literal: `a.test/.b.test`
    // or `x@a.test` must never reach the routes or an upstream URI.
    if http::uri::Authority::try_from(authority.as_str()).is_err() || !crate::policy::target::is_valid_host(&host) {
        return Err((StatusCode::BAD_REQUEST, "egress: the Host is not a valid host name".into()));
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

/// The upstream URI, built from its parts (never by formatting the agent's Host into a
/// string to parse): `host` must already be a valid name or IP literal.
fn upstream_uri(scheme: &str, host: &str, port: u16, path_and_query: &str) -> Result<Uri, String> {
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
    if !crate::policy::target::is_valid_host(&host) {
        let reason = "egress: the CONNECT target is not a valid host name";
        return deny(&flow, log_level, StatusCode::BAD_REQUEST, "-", &Method::CONNECT, "-", reason);
    }
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
        safe: super::websocket::bottle_safe_set(&flow.conn.bottle, host),
        bottle: flow.conn.bottle.config.name.clone(),
        host: host.to_string(),
        path: path.clone(),
    };
    let idle = ctx.limits.config.idle_timeout;
    tokio::spawn(async move {
        let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) else {
            tracing::debug!("websocket upgrade did not complete");
            return;
        };
        // Closed when no byte moves either way for the idle timeout.
        let stamp = Arc::new(Stamp::default());
        let client = Tracked::stamped(TokioIo::new(client), stamp.clone());
        let upstream = Tracked::stamped(TokioIo::new(upstream), stamp.clone());
        tokio::select! {
            _ = super::websocket::relay(client, upstream, scanning) => {}
            _ = stamp.idle(idle) => {
                tracing::info!(reason = %format!("idle for {idle:?}"), "websocket closed");
            }
        }
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

/// The header names as a log shows them: scrubbed, since a name can carry a secret.
fn header_names(dlp: &crate::dlp::Engine, headers: &HeaderMap) -> Vec<String> {
    headers
        .keys()
        .map(|n| {
            if dlp.known_secrets().find_folded(n.as_str()).is_empty() {
                dlp.scrub(n.as_str(), crate::dlp::Location::HeaderName).into_owned()
            } else {
                "(withheld: a known secret)".to_string()
            }
        })
        .collect()
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
        // An extension method can carry a secret: it is logged scrubbed.
        let method = flow.conn.bottle.dlp().scrub(method.as_str(), crate::dlp::Location::Method).into_owned();
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
