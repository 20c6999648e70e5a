//! Raw TCP relay for the destinations a bottle's `tcp:` list allows.
use tokio::net::TcpStream;

use super::Connection;
use crate::app::Gateway;

/// Relays `stream` to the original destination when an entry of the bottle's `tcp:` list
/// names that port and a host that resolves to that address; closes it otherwise.
pub async fn relay_if_allowed(mut stream: TcpStream, conn: &Connection, gw: &Gateway) {
    let routes = conn.bottle.routes().clone();
    let dst = conn.orig_dst;
    let mut allowed_by = None;
    for entry in routes.tcp().iter().filter(|t| t.port == dst.port()) {
        if gw.resolver.is_address_of(&entry.host, dst.ip()).await {
            allowed_by = Some(entry.clone());
            break;
        }
    }
    let Some(entry) = allowed_by else {
        tracing::info!(
            decision = "deny",
            reason = "destination not in the bottle's tcp allow list",
            "connection closed"
        );
        return;
    };
    let mut upstream = match TcpStream::connect(dst).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(decision = "allow", error = %e, "upstream connect failed");
            return;
        }
    };
    tracing::info!(decision = "allow", rule = %format!("{}:{}", entry.host, entry.port), "tcp relay");
    match tokio::io::copy_bidirectional(&mut stream, &mut upstream).await {
        Ok((up, down)) => tracing::info!(bytes_up = up, bytes_down = down, "tcp relay closed"),
        Err(e) => tracing::debug!(error = %e, "tcp relay ended with an error"),
    }
}
