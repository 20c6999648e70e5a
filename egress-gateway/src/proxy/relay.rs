//! Raw TCP relay for the exact destinations a bottle's `tcp:` list allows.
use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::Connection;
use crate::{policy::TcpAllow, resolve::Resolver};

/// The `tcp:` entry that allows this connection's original destination: same port, and
/// a host whose addresses (from the gateway's resolver) include the destination.
pub async fn allowed_by(conn: &Connection, resolver: &Resolver) -> Option<TcpAllow> {
    let routes = conn.bottle.routes().clone();
    let dst = conn.orig_dst;
    for entry in routes.tcp().iter().filter(|t| t.port == dst.port()) {
        if resolver.is_address_of(&entry.host, dst.ip()).await {
            return Some(entry.clone());
        }
    }
    None
}

pub async fn relay(mut stream: TcpStream, dst: SocketAddr, rule: &TcpAllow) {
    let mut upstream = match TcpStream::connect(dst).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(decision = "allow", error = %e, "upstream connect failed");
            return;
        }
    };
    tracing::info!(decision = "allow", rule = %format!("{}:{}", rule.host, rule.port), "tcp relay");
    match tokio::io::copy_bidirectional(&mut stream, &mut upstream).await {
        Ok((up, down)) => tracing::info!(bytes_up = up, bytes_down = down, "tcp relay closed"),
        Err(e) => tracing::debug!(error = %e, "tcp relay ended with an error"),
    }
}
