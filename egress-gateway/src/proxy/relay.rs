//! Raw TCP relay for the exact destinations a bottle's `tcp:` list allows.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::{
    Connection,
    limits::{Stamp, Tracked},
};
use crate::{policy::TcpAllow, resolve::Resolver};

/// The `tcp:` entry that allows this connection's original destination: same port, and
/// a host whose addresses (from the gateway's resolver) include the destination.
pub async fn allowed_by(conn: &Connection, resolver: &Resolver) -> Option<TcpAllow> {
    let routes = conn.bottle.routes().clone();
    let dst = conn.orig_dst;
    for entry in routes.tcp().iter().filter(|t| t.port == dst.port()) {
        if resolver.is_address_of(&conn.bottle.config.name, &entry.host, dst.ip()).await {
            return Some(entry.clone());
        }
    }
    None
}

/// Relays until either side closes, or until no byte moved either way for `idle`.
pub async fn relay<I>(stream: I, dst: SocketAddr, rule: &TcpAllow, idle: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let upstream = match TcpStream::connect(dst).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(decision = "allow", error = %e, "upstream connect failed");
            return;
        }
    };
    tracing::info!(decision = "allow", rule = %format!("{}:{}", rule.host, rule.port), "tcp relay");
    let stamp = Arc::new(Stamp::default());
    let mut client = Tracked::stamped(stream, stamp.clone());
    let mut upstream = Tracked::stamped(upstream, stamp.clone());
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match r {
            Ok((up, down)) => tracing::info!(bytes_up = up, bytes_down = down, "tcp relay closed"),
            Err(e) => tracing::debug!(error = %e, "tcp relay ended with an error"),
        },
        _ = stamp.idle(idle) => tracing::info!(reason = %format!("idle for {idle:?}"), "tcp relay closed"),
    }
}
