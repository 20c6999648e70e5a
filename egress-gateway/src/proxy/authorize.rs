//! Phase **authorize**: the bottle's routes decide (403 with a one-line reason); only
//! then is the name resolved (once per request: every forwarder uses this answer), and
//! the destination the bottle connected to must be an address of that host (403). A
//! name the routes do not allow is never sent to a resolver (it could carry data to the
//! name's DNS server). The answer is the request's `Target`: the one address the pooled
//! client, the WebSocket dial and a CONNECT tunnel's requests use.
use std::net::SocketAddr;

use http::Request;

use super::{
    ProxyContext,
    request::{Refusal, RequestCtx},
};
use crate::policy::{Decision, RequestHead, Route};

/// Where an authorized request may go: the host it named and the address it is sent to.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    /// An address of `host`, checked: the original destination (or a CONNECT target).
    pub addr: SocketAddr,
    pub tls: bool,
}

/// The route that allows the request, and where it goes.
pub async fn authorize<B>(
    req: &Request<B>,
    host: &str,
    rq: &RequestCtx,
    ctx: &ProxyContext,
) -> Result<(Route, Target), Refusal> {
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let route = match rq.live.routes.decide(&RequestHead {
        host,
        method: req.method().as_str(),
        path_and_query,
        headers: req.headers(),
    }) {
        Decision::Allow(route) => route.clone(),
        Decision::Deny(denial) => return Err(Refusal::policy(denial.reason)),
    };
    let addr = rq.flow.dst;
    // Inside a CONNECT tunnel the address is the gateway's own answer for the CONNECT
    // host, which identify made sure is this host: it is not resolved again.
    let resolved_by_connect = rq.flow.connect_host.as_deref() == Some(host);
    if !resolved_by_connect && !ctx.resolver.is_address_of(rq.bottle(), host, addr.ip()).await {
        return Err(Refusal::policy(format!("egress: {} is not an address of {host}", addr.ip())));
    }
    Ok((route, Target { host: host.to_string(), addr, tls: rq.flow.tls }))
}
