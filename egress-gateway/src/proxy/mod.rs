//! The data path behind the listener: each redirected connection is classified and
//! either relayed (an exact `tcp:` destination), intercepted (TLS or plain HTTP, every
//! request policed) or closed.
//!
//! Layers, outside in: `sniff` (what protocol), `tls` (terminate with a minted leaf),
//! `http` (the connection's HTTP, and each request through its phases: `identify`,
//! `authorize`, `body`, `hold` with `scan`, `forward`, `respond` / `streaming`; `connect`
//! and `ws_handshake` for tunnels and upgrades; `request` for the context and refusals
//! they share), `upstream` (the gateway's own client).
pub mod accept;
mod action;
mod authorize;
mod body;
mod connect;
mod forward;
mod hold;
mod http;
mod identify;
mod inbound;
pub mod limits;
mod relay;
mod request;
mod respond;
mod rewind;
mod scan;
mod sniff;
mod streaming;
mod tls;
pub mod upstream;
mod websocket;
mod ws_frame;
mod ws_handshake;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use crate::{app::BottleState, ca::CertificateAuthority, resolve::Resolver};

/// How long a client may take to send its first bytes (a ClientHello or request line).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake with the client may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection accepted from a bottle, with what the kernel told us about it.
pub struct Connection {
    pub id: u64,
    pub client: SocketAddr,
    /// Where the bottle's process asked to connect.
    pub orig_dst: SocketAddr,
    pub bottle: Arc<BottleState>,
}

/// What every connection handler shares: resolution, the CA, the upstream client.
pub struct ProxyContext {
    pub resolver: Resolver,
    /// The gateway-wide DLP engine (rules and the environment's known secrets), for what
    /// belongs to no bottle. A bottle's traffic is scanned with `BottleState::dlp`,
    /// which adds that bottle's own secrets.
    pub dlp: Arc<crate::dlp::Engine>,
    pub ca: Arc<CertificateAuthority>,
    pub upstream: upstream::Upstream,
    /// Budgets and timeouts (`limits:` of gateway.yaml) and the gateway-wide body budget.
    pub limits: Arc<limits::Shared>,
    /// TLS server configurations, one per leaf and ALPN offer: built once, not per
    /// handshake.
    tls_configs: tls::ConfigCache,
}

impl ProxyContext {
    pub fn new(
        resolver: Resolver,
        dlp: Arc<crate::dlp::Engine>,
        ca: Arc<CertificateAuthority>,
        upstream: upstream::Upstream,
        limits: Arc<limits::Shared>,
    ) -> Self {
        ProxyContext { resolver, dlp, ca, upstream, limits, tls_configs: tls::ConfigCache::default() }
    }
}

/// One intercepted stream's facts, shared by its requests.
struct Flow {
    conn: Connection,
    /// The destination data may be sent to (the original one, or the CONNECT target).
    dst: SocketAddr,
    /// SNI of the client's TLS, when the stream is TLS.
    sni: Option<String>,
    /// The host a CONNECT named; the inner stream's SNI/Host must agree with it, and
    /// `dst` is then the gateway's own answer for it (no second lookup in authorize).
    connect_host: Option<String>,
    tls: bool,
}

/// Serves one accepted connection: the gateway's accept loop passes a TCP stream that
/// carries the bottle's connection permit; tests pass any byte stream (an in-memory
/// pipe), with `conn` saying where the kernel would have said it was going.
pub async fn handle<S>(stream: S, conn: Connection, ctx: Arc<ProxyContext>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let span = tracing::info_span!(
        "conn",
        id = conn.id,
        bottle = %conn.bottle.config.name,
        client = %conn.client,
        orig_dst = %conn.orig_dst,
    );
    async move {
        tracing::debug!("connection accepted");
        // An exact raw-TCP destination is relayed uninspected, whatever it speaks.
        if let Some(rule) = relay::allowed_by(&conn, &ctx.resolver).await {
            relay::relay(stream, conn.orig_dst, &rule, ctx.limits.config.idle_timeout).await;
            return;
        }
        let dst = conn.orig_dst;
        serve_stream(stream, Flow { conn, dst, sni: None, connect_host: None, tls: false }, ctx).await;
    }
    .instrument(span)
    .await
}

/// Classifies a stream and serves it; boxed because CONNECT recurses into it.
fn serve_stream<I>(io: I, flow: Flow, ctx: Arc<ProxyContext>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Box::pin(async move {
        let (kind, io) = match sniff::classify(io, FIRST_BYTES_TIMEOUT).await {
            Ok(v) => v,
            Err(e) => {
                tracing::info!(decision = "deny", reason = %e, "connection closed");
                return;
            }
        };
        match kind {
            sniff::Kind::Tls => tls::serve(io, flow, ctx).await,
            sniff::Kind::Http => http::serve(io, Arc::new(flow), ctx).await,
            sniff::Kind::Other => {
                tracing::info!(
                    decision = "deny",
                    reason = "not TLS or HTTP, and the destination is not in the bottle's tcp allow list",
                    "connection closed"
                );
            }
        }
    })
}
