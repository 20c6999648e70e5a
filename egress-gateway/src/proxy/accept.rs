//! Phase **accept**: a redirected connection taken from a listener; its original
//! destination and bottle found where the kernel programs recorded them (`OrigDst`: the
//! kernel maps in the gateway, a table in tests), a connection to the gateway's own
//! listeners refused, the bottle's connection cap applied; then `handle` in a task of
//! its own.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::net::TcpListener;

use super::{Connection, ProxyContext, handle, limits::Tracked};
use crate::bottle::{ListenerScope, Registry};

/// Where a redirected connection was going, and whose it is.
pub trait OrigDst: Send + Sync {
    /// Takes (and forgets) what was recorded for the connection from `client` to a
    /// listener in the namespace `netns`, looking only at the maps of `bottles`:
    /// the bottle's id and the original destination.
    fn take(&self, netns: u64, client: SocketAddr, bottles: &[&str]) -> Result<(u32, SocketAddr), String>;
}

impl OrigDst for crate::bpf::KernelMaps {
    fn take(&self, netns: u64, client: SocketAddr, bottles: &[&str]) -> Result<(u32, SocketAddr), String> {
        self.take_orig_dst(netns, client, bottles.iter().copied())
            .map(|r| (r.bottle_id, r.orig_dst))
            .map_err(|e| e.to_string())
    }
}

/// A table (tests): client address to (bottle id, original destination), each taken once.
impl OrigDst for Mutex<HashMap<SocketAddr, (u32, SocketAddr)>> {
    fn take(&self, _netns: u64, client: SocketAddr, _bottles: &[&str]) -> Result<(u32, SocketAddr), String> {
        let mut table = self.lock().unwrap_or_else(|e| e.into_inner());
        table.remove(&client).ok_or_else(|| format!("no original destination recorded for {client}"))
    }
}

/// The gateway's own listeners as a bottle reaches them: a connection redirected to one
/// of them is refused (it would loop).
#[derive(Debug, Clone, Copy)]
pub struct OwnListeners {
    /// TCP and DNS listeners in the gateway's namespace.
    pub shared: [SocketAddrV4; 2],
    /// Their ports on loopback, inside a bottle's own namespace.
    pub namespaced: [SocketAddrV4; 2],
}

impl OwnListeners {
    pub fn new(listen: SocketAddrV4, dns_listen: SocketAddrV4) -> Self {
        let loopback = |a: SocketAddrV4| SocketAddrV4::new(Ipv4Addr::LOCALHOST, a.port());
        OwnListeners { shared: [listen, dns_listen], namespaced: [loopback(listen), loopback(dns_listen)] }
    }

    pub fn is_own(&self, namespaced: bool, addr: SocketAddr) -> bool {
        let SocketAddr::V4(v4) = SocketAddr::new(crate::resolve::canonical(addr.ip()), addr.port()) else {
            return false;
        };
        let own = if namespaced { self.namespaced } else { self.shared };
        own.contains(&v4)
    }
}

/// What the accept loops share.
pub struct Acceptor {
    pub bottles: Arc<Registry>,
    pub orig_dst: Arc<dyn OrigDst>,
    pub proxy: Arc<ProxyContext>,
    pub own: OwnListeners,
    next_id: AtomicU64,
}

impl Acceptor {
    pub fn new(
        bottles: Arc<Registry>,
        orig_dst: Arc<dyn OrigDst>,
        proxy: Arc<ProxyContext>,
        own: OwnListeners,
    ) -> Self {
        Acceptor { bottles, orig_dst, proxy, own, next_id: AtomicU64::new(1) }
    }
}

/// Accepts redirected connections on one listener until the task is dropped. `netns` is
/// the cookie of the listener's namespace: with the client's address it finds what the
/// programs recorded.
pub async fn accept_loop(listener: TcpListener, netns: u64, scope: ListenerScope, acceptor: Arc<Acceptor>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Stopping: the listener closes (or, passed by systemd, stays open for the next
            // gateway); nothing more is accepted here.
            _ = crate::lifecycle::stopped() => return,
        };
        let (stream, client) = match accepted {
            Ok(v) => v,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small writes (TLS records, HTTP heads) must not wait for delayed ACKs.
        let _ = stream.set_nodelay(true);
        let id = acceptor.next_id.fetch_add(1, Ordering::Relaxed);
        // The maps of the bottles this listener serves: its own bottle's, or those of the
        // bottles in the gateway's namespace.
        let bottles = acceptor.bottles.bottles();
        let names: Vec<&str> = bottles
            .iter()
            .filter(|b| match scope {
                ListenerScope::Bottle(id) => b.config.id == id,
                ListenerScope::Shared => b.config.netns.is_none(),
            })
            .map(|b| b.config.name.as_str())
            .collect();
        let (bottle_id, orig_dst) = match acceptor.orig_dst.take(netns, client, &names) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(conn = id, client = %client, error = %e, "connection refused");
                continue;
            }
        };
        let Some(bottle) = acceptor.bottles.bottle_for(scope, Some(bottle_id)) else {
            tracing::warn!(
                conn = id,
                client = %client,
                orig_dst = %orig_dst,
                "connection from a bottle that is not configured refused"
            );
            continue;
        };
        if acceptor.own.is_own(bottle.config.netns.is_some(), orig_dst) {
            tracing::warn!(conn = id, bottle = %bottle.config.name, "connection to the gateway's own listener refused");
            continue;
        }
        let Some(permit) = bottle.usage.connect() else {
            // Dropping the stream closes it: the bottle holds its cap of connections.
            if bottle.usage.should_log_refusal() {
                tracing::warn!(
                    conn = id,
                    bottle = %bottle.config.name,
                    open = bottle.usage.open_connections(),
                    cap = bottle.usage.max_connections(),
                    refused_total = bottle.usage.refused_connections.load(Ordering::Relaxed),
                    "connection refused: the bottle is at its connection cap"
                );
            }
            continue;
        };
        let stream = Tracked::with_permit(stream, permit);
        let conn = Connection { id, client, orig_dst, bottle };
        tokio::spawn(handle(stream, conn, acceptor.proxy.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_listeners_are_recognised_per_namespace() {
        let own = OwnListeners::new("10.0.0.1:15001".parse().unwrap(), "10.0.0.1:15053".parse().unwrap());
        assert!(own.is_own(false, "10.0.0.1:15001".parse().unwrap()));
        assert!(own.is_own(false, "[::ffff:10.0.0.1]:15053".parse().unwrap()));
        assert!(!own.is_own(false, "127.0.0.1:15001".parse().unwrap()));
        assert!(own.is_own(true, "127.0.0.1:15001".parse().unwrap()));
        assert!(!own.is_own(true, "10.0.0.1:443".parse().unwrap()));
    }
}
