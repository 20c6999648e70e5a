//! Reading the pinned maps the kernel programs fill.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    path::Path,
    sync::Mutex,
};

use anyhow::Context;
use aya::maps::{HashMap, Map, MapData, PerCpuHashMap};
use egress_common::{AF_INET, ClientKey, Counters, DnsClientKey, OrigDst, maps as names};

/// The original destination of a redirected connection, and the bottle that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirected {
    pub bottle_id: u32,
    pub orig_dst: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum OrigDstError {
    #[error("client {0} is not IPv4: the redirect target is an IPv4 listener")]
    NotIpv4(SocketAddr),
    #[error("no original destination recorded for client {0} (not from a bottle?)")]
    Missing(SocketAddr),
}

pub struct KernelMaps {
    orig_dst: Mutex<HashMap<MapData, ClientKey, OrigDst>>,
    dns_clients: HashMap<MapData, DnsClientKey, u32>,
    counters: PerCpuHashMap<MapData, u32, Counters>,
}

impl KernelMaps {
    /// Opens the maps pinned in `maps_dir` (created by the first `attach_bottle`).
    pub fn open(maps_dir: &Path) -> anyhow::Result<KernelMaps> {
        let open = |name: &str| -> anyhow::Result<Map> {
            let path = maps_dir.join(name);
            let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
            Map::from_map_data(data).with_context(|| format!("reading map {}", path.display()))
        };
        Ok(KernelMaps {
            orig_dst: Mutex::new(HashMap::try_from(open(names::ORIG_DST)?)?),
            dns_clients: HashMap::try_from(open(names::DNS_CLIENTS)?)?,
            counters: PerCpuHashMap::try_from(open(names::COUNTERS)?)?,
        })
    }

    /// Looks up (and removes: each entry is read once) the original destination of the
    /// connection accepted from `client` on a listener in the network namespace `netns`
    /// (its cookie).
    pub fn take_orig_dst(&self, netns: u64, client: SocketAddr) -> Result<Redirected, OrigDstError> {
        let ip4 = match client.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(ip) => ip.to_ipv4_mapped().ok_or(OrigDstError::NotIpv4(client))?,
        };
        let key = ClientKey { netns, ip4: u32::from_ne_bytes(ip4.octets()), port: client.port(), _pad: 0 };
        let mut map = self.orig_dst.lock().unwrap_or_else(|e| e.into_inner());
        let value = map.get(&key, 0).map_err(|_| OrigDstError::Missing(client))?;
        let _ = map.remove(&key);
        Ok(Redirected { bottle_id: value.bottle_id, orig_dst: decode(&value) })
    }

    /// The bottle that sent a DNS query from `client` to the shared listener, if the
    /// backstop saw it.
    pub fn dns_client_bottle(&self, client: SocketAddr) -> Option<u32> {
        let ip4 = match client.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(ip) => ip.to_ipv4_mapped()?,
        };
        let key = DnsClientKey { ip4: u32::from_ne_bytes(ip4.octets()), port: client.port(), _pad: 0 };
        self.dns_clients.get(&key, 0).ok()
    }

    /// A bottle's counters summed over CPUs (zero when it never counted anything).
    pub fn counters(&self, bottle_id: u32) -> Counters {
        let mut sum = Counters::default();
        if let Ok(per_cpu) = self.counters.get(&bottle_id, 0) {
            for c in per_cpu.iter() {
                sum.tcp_redirected += c.tcp_redirected;
                sum.dns_redirected += c.dns_redirected;
                sum.refused += c.refused;
                sum.dropped += c.dropped;
            }
        }
        sum
    }
}

fn decode(v: &OrigDst) -> SocketAddr {
    let port = u16::from_be(v.port);
    if v.family == AF_INET {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(v.addr[0].to_ne_bytes()), port))
    } else {
        let mut bytes = [0u8; 16];
        for (i, word) in v.addr.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(bytes)), port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egress_common::AF_INET6;

    #[test]
    fn decodes_both_families_from_wire_order() {
        let v4 = OrigDst {
            addr: [u32::from_ne_bytes([127, 0, 0, 2]), 0, 0, 0],
            port: 18080u16.to_be(),
            family: AF_INET,
            bottle_id: 1,
        };
        assert_eq!(decode(&v4), "127.0.0.2:18080".parse().unwrap());
        let v6 = OrigDst {
            addr: [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])],
            port: 443u16.to_be(),
            family: AF_INET6,
            bottle_id: 1,
        };
        assert_eq!(decode(&v6), "[::1]:443".parse().unwrap());
    }
}
