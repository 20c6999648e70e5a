//! Reading the pinned maps the kernel programs fill.
use std::{
    collections::HashMap as StdHashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    path::Path,
    sync::Mutex,
};

use anyhow::Context;
use aya::{
    Pod,
    maps::{HashMap, Map, MapData, PerCpuHashMap},
};
use egress_common::{AF_INET, ClientKey, Counters, DnsClient, DnsClientKey, OrigDst, RecordedDst, maps as names};

use super::PinLayout;

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

/// Entries that say when the kernel recorded them, so that of the maps of several
/// bottles the newest entry under a key wins.
trait Recorded: Pod {
    fn recorded_ns(&self) -> u64;
}

impl Recorded for RecordedDst {
    fn recorded_ns(&self) -> u64 {
        self.recorded_ns
    }
}

impl Recorded for DnsClient {
    fn recorded_ns(&self) -> u64 {
        self.recorded_ns
    }
}

/// What to do with the entry found: the original destination is read once per
/// connection; a DNS client sends many queries from one port.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Take {
    Remove,
    Keep,
}

/// One map of each bottle, pinned as `name` in the bottle's pin directory and opened on
/// first use (decision 0010).
struct PerBottle<K, V> {
    name: &'static str,
    maps: Mutex<StdHashMap<String, HashMap<MapData, K, V>>>,
}

impl<K: Pod, V: Recorded> PerBottle<K, V> {
    fn new(name: &'static str) -> Self {
        PerBottle { name, maps: Mutex::new(StdHashMap::new()) }
    }

    /// The newest entry under `key` in the maps of `bottles`. The older ones, left by
    /// sockets gone before the newest was recorded (a key is held by one socket at a
    /// time), are removed; the newest too with `Take::Remove`.
    fn newest<'a>(
        &self,
        layout: &PinLayout,
        key: &K,
        bottles: impl IntoIterator<Item = &'a str> + Clone,
        take: Take,
    ) -> Option<V> {
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        // A miss in the maps already open may be a bottle re-attached after a detach (a
        // new map under the same pin): reopen them once before giving up.
        for reopen in [false, true] {
            let mut found: Vec<(&str, V)> = Vec::new();
            for bottle in bottles.clone() {
                if reopen {
                    maps.remove(bottle);
                }
                if !maps.contains_key(bottle) {
                    let pin = layout.bottle_dir(bottle).join(self.name);
                    match open_pinned(&pin).and_then(|m| Ok(HashMap::try_from(m)?)) {
                        Ok(map) => drop(maps.insert(bottle.to_string(), map)),
                        Err(e) => {
                            tracing::debug!(bottle, map = self.name, error = %e, "no pinned map for the bottle");
                            continue;
                        }
                    }
                }
                if let Some(value) = maps.get(bottle).and_then(|m| m.get(key, 0).ok()) {
                    found.push((bottle, value));
                }
            }
            let Some(newest) = found.iter().map(|(_, v)| v.recorded_ns()).max() else { continue };
            let mut winner = None;
            for (bottle, value) in found {
                let keep = winner.is_none() && value.recorded_ns() == newest;
                if keep {
                    winner = Some(value);
                }
                if (!keep || take == Take::Remove)
                    && let Some(map) = maps.get_mut(bottle)
                {
                    let _ = map.remove(key);
                }
            }
            return winner;
        }
        None
    }
}

pub struct KernelMaps {
    layout: PinLayout,
    /// Each bottle's original-destination map, by bottle name.
    orig_dst: PerBottle<ClientKey, RecordedDst>,
    /// Each bottle's DNS-client map, by bottle name.
    dns_clients: PerBottle<DnsClientKey, DnsClient>,
    counters: PerCpuHashMap<MapData, u32, Counters>,
}

fn open_pinned(path: &Path) -> anyhow::Result<Map> {
    let data = MapData::from_pin(path).with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("reading map {}", path.display()))
}

impl KernelMaps {
    /// Opens the shared maps pinned in the layout's maps directory (`ensure_maps`); each
    /// bottle's own maps are opened when first needed.
    pub fn open(layout: &PinLayout) -> anyhow::Result<KernelMaps> {
        let maps_dir = layout.maps_dir();
        Ok(KernelMaps {
            layout: layout.clone(),
            orig_dst: PerBottle::new(names::ORIG_DST),
            dns_clients: PerBottle::new(names::DNS_CLIENTS),
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
        let value =
            self.orig_dst.newest(&self.layout, &key, bottles, Take::Remove).ok_or(OrigDstError::Missing(client))?;
        Ok(Redirected { bottle_id: value.dst.bottle_id, orig_dst: decode(&value.dst) })
    }

    /// The bottle that sent a DNS query from `client` to the shared listener, looked up
    /// in the maps of `bottles` (those in the gateway's namespace, the only ones whose
    /// backstop records queries): the newest entry, as for `take_orig_dst`.
    pub fn dns_client_bottle<'a>(
        &self,
        client: SocketAddr,
        bottles: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Option<u32> {
        let ip4 = match client.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(ip) => ip.to_ipv4_mapped()?,
        };
        let key = DnsClientKey { ip4: u32::from_ne_bytes(ip4.octets()), port: client.port(), _pad: 0 };
        self.dns_clients.newest(&self.layout, &key, bottles, Take::Keep).map(|v| v.bottle_id)
    }

    /// A bottle's counters summed over CPUs (zero when it never counted anything).
    pub fn counters(&self, bottle_id: u32) -> Result<Counters, aya::maps::MapError> {
        let per_cpu = match self.counters.get(&bottle_id, 0) {
            Ok(v) => v,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(Counters::default()),
            Err(e) => return Err(e),
        };
        let mut sum = Counters::default();
        for c in per_cpu.iter() {
            sum.tcp_redirected += c.tcp_redirected;
            sum.dns_redirected += c.dns_redirected;
            sum.refused += c.refused;
            sum.dropped += c.dropped;
            sum.unix_refused += c.unix_refused;
        }
        Ok(sum)
    }
}

/// Why the pinned map `name` of a bottle cannot be read, if it cannot (`status`).
pub fn check_bottle_map(layout: &PinLayout, bottle: &str, name: &str) -> Option<String> {
    open_pinned(&layout.bottle_dir(bottle).join(name)).err().map(|e| format!("{e:#}"))
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
