//! Reading the pinned maps the kernel programs fill.
use std::{
    collections::HashMap as StdHashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    path::Path,
    sync::Mutex,
};

use anyhow::Context;
use aya::maps::{HashMap, Map, MapData, PerCpuHashMap};
use egress_common::{AF_INET, ClientKey, Counters, DnsClientKey, OrigDst, RecordedDst, maps as names};

use super::PinLayout;

type OrigDstMap = HashMap<MapData, ClientKey, RecordedDst>;

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
    layout: PinLayout,
    /// Each bottle's original-destination map, by bottle name, opened from its pin on
    /// first use.
    orig_dst: Mutex<StdHashMap<String, OrigDstMap>>,
    dns_clients: HashMap<MapData, DnsClientKey, u32>,
    counters: PerCpuHashMap<MapData, u32, Counters>,
}

fn open_pinned(path: &Path) -> anyhow::Result<Map> {
    let data = MapData::from_pin(path).with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("reading map {}", path.display()))
}

impl KernelMaps {
    /// Opens the shared maps pinned in the layout's maps directory (`ensure_maps`); each
    /// bottle's original-destination map is opened when first needed.
    pub fn open(layout: &PinLayout) -> anyhow::Result<KernelMaps> {
        let maps_dir = layout.maps_dir();
        Ok(KernelMaps {
            layout: layout.clone(),
            orig_dst: Mutex::new(StdHashMap::new()),
            dns_clients: HashMap::try_from(open_pinned(&maps_dir.join(names::DNS_CLIENTS))?)?,
            counters: PerCpuHashMap::try_from(open_pinned(&maps_dir.join(names::COUNTERS))?)?,
        })
    }

    /// Looks up (and removes: each entry is read once) the original destination of the
    /// connection accepted from `client` on a listener in the network namespace `netns`
    /// (its cookie), in the maps of `bottles` (by name): the bottles that listener
    /// serves, the only ones whose programs send connections to it. When several maps
    /// have the key, the newest entry is this connection's (`RecordedDst`); the others,
    /// left by sockets gone before it was made, are removed too.
    pub fn take_orig_dst<'a>(
        &self,
        netns: u64,
        client: SocketAddr,
        bottles: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Result<Redirected, OrigDstError> {
        let ip4 = match client.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(ip) => ip.to_ipv4_mapped().ok_or(OrigDstError::NotIpv4(client))?,
        };
        let key = ClientKey { netns, ip4: u32::from_ne_bytes(ip4.octets()), port: client.port(), _pad: 0 };
        let mut maps = self.orig_dst.lock().unwrap_or_else(|e| e.into_inner());
        // A miss in the maps already open may be a bottle re-attached after a detach (a
        // new map under the same pin): reopen them once before refusing.
        let mut newest: Option<RecordedDst> = None;
        for reopen in [false, true] {
            for bottle in bottles.clone() {
                if reopen {
                    maps.remove(bottle);
                }
                if !maps.contains_key(bottle) {
                    let pin = self.layout.bottle_dir(bottle).join(names::ORIG_DST);
                    match open_pinned(&pin).and_then(|m| Ok(OrigDstMap::try_from(m)?)) {
                        Ok(map) => drop(maps.insert(bottle.to_string(), map)),
                        Err(e) => {
                            tracing::debug!(bottle, error = %e, "no original-destination map for the bottle");
                            continue;
                        }
                    }
                }
                let Some(map) = maps.get_mut(bottle) else { continue };
                if let Ok(value) = map.get(&key, 0) {
                    let _ = map.remove(&key);
                    if newest.is_none_or(|n| value.recorded_ns > n.recorded_ns) {
                        newest = Some(value);
                    }
                }
            }
            if let Some(value) = newest {
                return Ok(Redirected { bottle_id: value.dst.bottle_id, orig_dst: decode(&value.dst) });
            }
        }
        Err(OrigDstError::Missing(client))
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
