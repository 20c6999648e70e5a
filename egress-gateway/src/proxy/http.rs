//! One client connection's HTTP (1.1 or 2) and each request's path through the phases,
//! one file per phase:
//!
//! | phase | file | refuses with |
//! | --- | --- | --- |
//! | identify (Host, SNI, CONNECT target, path) | `identify.rs` | 400, 421, 403 |
//! | authorize (routes, destination address) | `authorize.rs` | 403 |
//! | read the body (budgets, timeouts) | `body.rs` | 413, 408, 503 |
//! | scan and hold (DLP, supervise) | `hold.rs` (`scan.rs`, `action.rs`) | 403 |
//! | prepare and forward (credentials, upstream) | `forward.rs` | 502 |
//! | respond (inbound scan) | `respond.rs`, `streaming.rs` | 403, 502, 503 |
//!
//! CONNECT is `connect.rs`, the WebSocket handshake `ws_handshake.rs`. Each phase
//! returns `Result<_, Refusal>`; `RequestCtx::refuse` (in `request.rs`) logs and answers
//! every refusal.
use std::{sync::Arc, time::Duration};

use http::{Method, Request, Response, header};
use http_body_util::BodyExt;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use super::{
    Flow, ProxyContext, authorize, body, connect, forward, hold,
    identify::{self, Identified},
    limits::{InFlight, Reservation},
    request::{Refusal, RequestCtx, full},
    respond,
    upstream::Body,
    ws_handshake,
};
use crate::policy::LogLevel;

/// Spawns hyper's tasks (HTTP/2 streams) under the span current when they are created:
/// the connection's.
#[derive(Clone, Copy)]
struct SpanExecutor;

impl<F> hyper::rt::Executor<F> for SpanExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut.in_current_span());
    }
}

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
    // HTTP/2 streams are spawned: each carries the connection's span.
    let mut builder = hyper_util::server::conn::auto::Builder::new(SpanExecutor);
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
        // The gateway is stopping: requests in flight finish (the drain's deadline bounds
        // them); a connection closes once it has had nothing in flight for a second, so
        // one accepted just before the stop still gets its first request served.
        _ = async {
            crate::lifecycle::stopped().await;
            in_flight.idle(STOP_IDLE).await;
        } => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended with an error while stopping");
            }
        }
    }
}

/// How long a stopping gateway keeps a connection with nothing in flight open.
const STOP_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// The answer to one request; never an error, every failure is a response.
async fn handle(req: Request<Incoming>, flow: Arc<Flow>, ctx: Arc<ProxyContext>) -> Response<Body> {
    if req.method() == Method::CONNECT {
        return connect::connect(req, flow, ctx).await;
    }
    let started = std::time::Instant::now();
    let mut rq = RequestCtx::new(flow, req.method(), req.uri().path());
    let span = rq.span.clone();
    async move {
        let outcome = phases(req, &mut rq, &ctx).await;
        let refused_by = outcome.as_ref().err().map(|r| r.source.as_str());
        crate::metrics::global().request(rq.bottle(), refused_by, started.elapsed(), rq.upstream_time);
        match outcome {
            Ok(resp) => resp,
            Err(refusal) => rq.refuse(refusal),
        }
    }
    .instrument(span)
    .await
}

/// identify, authorize, read, scan and hold, prepare, forward, respond.
async fn phases(req: Request<Incoming>, rq: &mut RequestCtx, ctx: &ProxyContext) -> Result<Response<Body>, Refusal> {
    let host = match identify::identify(&req, rq)? {
        Identified::Introspection => return Ok(introspection(rq, req.uri().path())),
        Identified::Host(host) => host,
    };
    let (route, target) = authorize::authorize(&req, &host, rq, ctx).await?;
    rq.set_route(&route.host);

    let is_websocket = forward::is_websocket_upgrade(&req);
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    let (mut parts, body) = req.into_parts();
    // Held until the request is done: the body's bytes count against the bottle's and
    // the gateway's budgets while they are in memory.
    let mut reservation = Reservation::new(ctx.limits.buffered.clone(), rq.flow.conn.bottle.usage.buffered.clone());
    let body = body::read_body(body, &parts.headers, &mut reservation, ctx.limits.config.body_timeout)
        .await
        .inspect_err(|r| {
            if r.status == http::StatusCode::SERVICE_UNAVAILABLE {
                rq.flow.conn.bottle.usage.refused_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })?;
    let scanned = hold::scan_and_hold(rq, &route, &path_and_query, &parts.headers, body).await?;

    let headers = forward::prepare(rq, &route, &scanned.headers, is_websocket)?;
    let uri = forward::target_uri(&target, &scanned.path_and_query)?;
    if rq.log_level() >= LogLevel::Full {
        rq.full_log("egress_request", None, &headers, Some(scanned.body.len()));
    }
    if is_websocket {
        let Some(client_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return Err(Refusal::client(http::StatusCode::BAD_REQUEST, "egress: this connection cannot be upgraded"));
        };
        return ws_handshake::websocket(ctx, rq, &route, &target, uri, headers, client_upgrade).await;
    }
    let body = body::BufferedBody { data: scanned.body, trailers: scanned.trailers };
    let asked = std::time::Instant::now();
    let resp = forward::forward(ctx, rq, parts, &target, uri, headers, body).await;
    rq.upstream_time = Some(asked.elapsed());
    let resp = resp?;
    respond::respond(rq, &route, resp, reservation).await
}

/// `http://_egress.local/allowlist`: the bottle's own routes; any other path there is 404,
/// as in the seed.
fn introspection(rq: &RequestCtx, path: &str) -> Response<Body> {
    if path != "/allowlist" {
        let body = format!("egress introspection: no such endpoint {:?}", crate::supervise::render::inert(path));
        return Response::builder()
            .status(http::StatusCode::NOT_FOUND)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(full(body.into_bytes()))
            .expect("static response");
    }
    let body = serde_json::to_vec_pretty(&rq.live.routes.allowlist_json()).unwrap_or_default();
    Response::builder().header(header::CONTENT_TYPE, "application/json").body(full(body)).expect("static response")
}
