//! The data path behind the listener: each redirected connection is classified and
//! either relayed (allowed raw TCP), intercepted (TLS/HTTP) or closed.
mod relay;

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;
use tracing::Instrument;

use crate::app::{BottleState, Gateway};

/// A connection accepted from a bottle, with what the kernel told us about it.
pub struct Connection {
    pub id: u64,
    pub client: SocketAddr,
    /// Where the bottle's process asked to connect.
    pub orig_dst: SocketAddr,
    pub bottle: Arc<BottleState>,
}

pub async fn handle(stream: TcpStream, conn: Connection, gw: Arc<Gateway>) {
    let span = tracing::info_span!(
        "conn",
        id = conn.id,
        bottle = %conn.bottle.config.name,
        client = %conn.client,
        orig_dst = %conn.orig_dst,
    );
    async move {
        tracing::info!("connection accepted");
        relay::relay_if_allowed(stream, &conn, &gw).await;
    }
    .instrument(span)
    .await
}
