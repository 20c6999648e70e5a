//! CONNECT, from a client with a proxy variable: policed like a direct connection. The
//! target host must be routed; the gateway picks the address itself; the tunnel's
//! content is then classified and intercepted like any other stream, with the CONNECT
//! target as the only host its requests may name.
use std::{net::SocketAddr, sync::Arc};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use super::{
    Flow, ProxyContext,
    identify::host_of,
    request::{Refusal, RequestCtx, empty},
    serve_stream,
    upstream::Body,
};

/// A CONNECT from a client with a proxy variable: policed like a direct connection. The
/// target host must be routed; the gateway picks the address itself; the tunnel's
/// content is then intercepted like any other stream.
pub async fn connect(req: Request<Incoming>, flow: Arc<Flow>, ctx: Arc<ProxyContext>) -> Response<Body> {
    let target = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
    // Logged as the CONNECT target (the request has no path).
    let mut rq = RequestCtx::new(flow, &Method::CONNECT, "-");
    let (span, conn_span) = (rq.span.clone(), tracing::Span::current());
    async move {
        match open_tunnel(req, &target, &mut rq, ctx, conn_span).await {
            Ok(resp) => resp,
            Err(refusal) => rq.refuse(refusal),
        }
    }
    .instrument(span)
    .await
}

/// Checks the CONNECT target, picks the address, and serves the tunnel's content in a
/// task of its own (under the connection's span) once the client has its 200.
async fn open_tunnel(
    req: Request<Incoming>,
    target: &str,
    rq: &mut RequestCtx,
    ctx: Arc<ProxyContext>,
    conn_span: tracing::Span,
) -> Result<Response<Body>, Refusal> {
    let (flow, dlp) = (rq.flow.clone(), rq.live.dlp.clone());
    let host = host_of(target);
    let port = req.uri().port_u16().unwrap_or(443);
    if !crate::policy::target::is_valid_host(&host) {
        return Err(Refusal::client(StatusCode::BAD_REQUEST, "egress: the CONNECT target is not a valid host name"));
    }
    if crate::dlp::hostname::carries_data(&dlp, &host) {
        rq.set_host(crate::dlp::hostname::loggable(&dlp, &host));
        return Err(Refusal::dlp(
            "egress DLP: CONNECT blocked: the host name looks like it carries data (a secret or an encoded label)",
        ));
    }
    rq.set_host(host.clone());
    rq.path = target.to_string();
    if flow.connect_host.is_some() || flow.tls {
        return Err(Refusal::policy("egress: nested CONNECT is not supported"));
    }
    if !rq.live.routes.host_allowed(&host) {
        return Err(Refusal::policy(format!("egress: host {host} is not in the allowlist")));
    }
    let addr = match ctx.resolver.lookup_for(rq.bottle(), &host).await {
        Ok(addrs) if !addrs.is_empty() => SocketAddr::new(addrs[0], port),
        _ => return Err(Refusal::upstream(format!("egress: cannot resolve {host}"))),
    };
    let conn = super::Connection {
        id: flow.conn.id,
        client: flow.conn.client,
        orig_dst: flow.conn.orig_dst,
        bottle: flow.conn.bottle.clone(),
    };
    let inner = Flow { conn, dst: addr, sni: None, connect_host: Some(host), tls: false };
    // The tunnel's requests get spans of their own under the connection's, not this one.
    let tunnel = async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => serve_stream(TokioIo::new(upgraded), inner, ctx).await,
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    };
    tokio::spawn(tunnel.instrument(conn_span));
    Ok(Response::new(empty()))
}
