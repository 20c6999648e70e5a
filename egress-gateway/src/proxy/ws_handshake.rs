//! The WebSocket handshake: after identify, authorize, scan and prepare, the upgrade is
//! sent over a dedicated HTTP/1.1 connection to the checked target address, with
//! extension offers removed; once both sides have switched, `websocket::relay` scans
//! the frames in a task of its own that carries the request's span.
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use super::{
    ProxyContext,
    authorize::Target,
    forward,
    inbound::Inbound,
    limits::{Stamp, Tracked},
    request::{Refusal, RequestCtx, empty},
    upstream::Body,
    websocket,
};
use crate::policy::Route;

/// Relays a WebSocket upgrade over a dedicated HTTP/1.1 upstream connection, then the
/// frames in both directions.
pub async fn websocket(
    ctx: &ProxyContext,
    rq: &RequestCtx,
    route: &Route,
    target: &Target,
    uri: Uri,
    mut headers: HeaderMap,
    client_upgrade: hyper::upgrade::OnUpgrade,
) -> Result<Response<Body>, Refusal> {
    let (flow, dlp) = (&rq.flow, &rq.live.dlp);
    // Logged for the life of the socket: scrubbed like every logged path.
    let path = dlp.scrub(uri.path(), crate::dlp::Location::Path).into_owned();
    let host = uri.host().unwrap_or_default();
    // Ask for the upgrade explicitly: the hop-by-hop copies were dropped above.
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(h) = HeaderValue::from_str(uri.authority().map(|a| a.as_str()).unwrap_or(host)) {
        headers.insert(header::HOST, h);
    }
    // The address authorize checked, never a second resolution.
    let mut sender = ctx
        .upstream
        .dial_http1(host, target.addr, target.tls)
        .await
        .map_err(|e| Refusal::upstream(format!("egress: upstream {host} failed: {e}")))?;
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .body(empty())
        .expect("valid request");
    *req.headers_mut() = headers;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| Refusal::upstream(format!("egress: upstream {host} failed: {e}")))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = resp.into_parts();
        forward::strip_hop_by_hop(&mut parts.headers);
        return Ok(Response::from_parts(parts, body.map_err(Into::into).boxed()));
    }
    let mut client_resp = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (name, value) in resp.headers() {
        // Extensions were not offered upstream, so none may be accepted.
        if name != header::SEC_WEBSOCKET_EXTENSIONS {
            client_resp = client_resp.header(name, value);
        }
    }
    let upstream_upgrade = hyper::upgrade::on(resp);
    let scanning = websocket::Scanning {
        engine: dlp.clone(),
        selection: crate::dlp::Selection::from_names(route.dlp.outbound_detectors.as_deref()),
        on_match: route.dlp.on_match,
        supervised: flow.conn.bottle.supervisor.is_some(),
        inbound: Inbound::for_route(dlp.clone(), route),
        safe: websocket::bottle_safe_set(&flow.conn.bottle, host),
        log: rq.log_level(),
        bottle: flow.conn.bottle.config.name.clone(),
        host: host.to_string(),
        path: path.clone(),
    };
    let idle = ctx.limits.config.idle_timeout;
    let relay = async move {
        let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) else {
            tracing::debug!("websocket upgrade did not complete");
            return;
        };
        // Closed when no byte moves either way for the idle timeout.
        let stamp = Arc::new(Stamp::default());
        let client = Tracked::stamped(TokioIo::new(client), stamp.clone());
        let upstream = Tracked::stamped(TokioIo::new(upstream), stamp.clone());
        tokio::select! {
            _ = websocket::relay(client, upstream, scanning) => {}
            _ = stamp.idle(idle) => {
                tracing::info!(reason = %format!("idle for {idle:?}"), "websocket closed");
            }
        }
    };
    // The socket's frames are logged under the request that opened it.
    tokio::spawn(relay.in_current_span());
    tracing::info!(host = %host, path = %path, decision = "allow", "websocket upgraded");
    Ok(client_resp.body(empty()).expect("valid response"))
}
