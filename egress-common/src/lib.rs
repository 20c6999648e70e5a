//! Types shared by the kernel programs and the gateway: map keys and values, counter
//! indices and the names of load-time globals. Everything is `#[repr(C)]` and plain.
#![no_std]

/// Address family values as the kernel spells them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const AF_UNIX: u16 = 1;

/// The destination a bottle's socket asked for, before the redirect.
///
/// `addr` holds the IPv4 address in `addr[0]` (network byte order) for `AF_INET`, or the
/// 16 IPv6 bytes as four network-order words for `AF_INET6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    pub addr: [u32; 4],
    /// Network byte order.
    pub port: u16,
    pub family: u16,
    /// The bottle whose program recorded this entry.
    pub bottle_id: u32,
}

/// Value of a bottle's original-destination map: the destination, and when `sock_ops`
/// recorded it (`bpf_ktime_get_ns`). The shared listener looks a client up in the maps of
/// several bottles; a key is held by one socket at a time, so when two maps have it the
/// older entry is one left by a socket gone before this connection was made (its connect
/// was dropped), and the newer entry is this connection's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordedDst {
    pub dst: OrigDst,
    pub recorded_ns: u64,
}

/// Key of the original-destination map: the client end of a redirected TCP connection as
/// the gateway sees it in `peer_addr()`, in the network namespace it was made in. Two
/// bottles in their own namespaces can both have a client at 127.0.0.1:40000 at the same
/// moment; the namespace cookie keeps their entries apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// The client socket's network namespace cookie (`SO_NETNS_COOKIE` of the listener
    /// that accepts it: both ends of a loopback connection share the namespace).
    pub netns: u64,
    /// IPv4 address, network byte order.
    pub ip4: u32,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
}

/// Key of a bottle's DNS-client map: the UDP source address and port of a query that the
/// bottle sent to the shared DNS listener (only bottles in the gateway's namespace record
/// these). The address matters: two sockets may hold one port on different loopback
/// addresses, and a bottle must not take over another's port to borrow its policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DnsClientKey {
    /// IPv4 address, network byte order.
    pub ip4: u32,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
}

/// Value of a bottle's DNS-client map: the bottle, and when the backstop last saw a query
/// from the key (`bpf_ktime_get_ns`). The shared listener looks a client up in the maps of
/// every bottle in the gateway's namespace; a port is held by one socket at a time, so
/// when two maps have it the older entry was left by a socket since closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsClient {
    pub bottle_id: u32,
    pub _pad: u32,
    pub recorded_ns: u64,
}

/// Per-bottle counters (a per-CPU hash map keyed by bottle id); the gateway sums CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// TCP connects rewritten to the gateway's listener.
    pub tcp_redirected: u64,
    /// UDP port 53 traffic rewritten to the DNS listener.
    pub dns_redirected: u64,
    /// Socket calls refused (UDP to other ports, native IPv6 DNS, map failures).
    pub refused: u64,
    /// Packets dropped by the egress backstop.
    pub dropped: u64,
    /// Unix-socket connects and sends refused (an address not in `unix_sockets:`),
    /// counted by the programs the gateway assembles (`egress-gateway/src/bpf/unix.rs`).
    pub unix_refused: u64,
}

/// Bytes of a unix-socket key after the bottle id: a `sun_path` (108 bytes) plus its
/// terminator or length byte, rounded up.
pub const UNIX_KEY_BYTES: usize = 112;

/// Longest `sun_path` (its terminating NUL excluded) and longest abstract name.
pub const UNIX_PATH_MAX: usize = 107;

/// Key of the unix-socket allowlist, an LPM trie (`bpf_lpm_trie_key` prefix length in
/// front, added by the map). One encoding on both sides:
///
/// - pathname socket `/run/a.sock`: the path bytes then a NUL; an exact entry's prefix
///   covers the NUL (so `/run/a.sock2` does not match), a directory entry `/tmp/ipc/`
///   covers only its bytes (so every path under it matches);
/// - abstract socket `@name`: a 0 byte, the name's length, then the name (which may hold
///   NULs), always exact.
///
/// The kernel side builds the key of the address a socket names with every byte past its
/// length zeroed, and looks it up with the full prefix length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixKey {
    /// The bottle's id, big-endian (so the trie's leading bits are the bottle).
    pub bottle: [u8; 4],
    pub path: [u8; UNIX_KEY_BYTES],
}

impl Default for UnixKey {
    fn default() -> Self {
        UnixKey { bottle: [0; 4], path: [0; UNIX_KEY_BYTES] }
    }
}

/// Names of the globals set at load time with `EbpfLoader::override_global`.
pub mod globals {
    /// `u32`, network byte order: the IPv4 address of the gateway's TCP listener.
    pub const PROXY_IP4: &str = "PROXY_IP4";
    /// `u16`, host byte order.
    pub const PROXY_PORT: &str = "PROXY_PORT";
    /// `u32`, network byte order: the IPv4 address of the gateway's DNS listener.
    pub const DNS_IP4: &str = "DNS_IP4";
    /// `u16`, host byte order.
    pub const DNS_PORT: &str = "DNS_PORT";
    /// `u32`: the bottle this program instance belongs to.
    pub const BOTTLE_ID: &str = "BOTTLE_ID";
    /// `u32`, 1 or 0: record the DNS client port of each query for the shared DNS
    /// listener. A bottle in its own network namespace has a DNS listener of its own (0):
    /// its ports must not shadow those of the bottles that share the gateway's namespace.
    pub const DNS_BY_PORT: &str = "DNS_BY_PORT";
}

/// Names of the pinned maps: shared by all bottles in the gateway's maps directory,
/// except `ORIG_DST` and `DNS_CLIENTS`, of which each bottle has its own in its pin
/// directory.
pub mod maps {
    /// One per bottle (decision 0010): renamed from `EGRESS_DST_V2` (key with the
    /// namespace cookie, one map for all bottles) so a gateway upgraded in place never
    /// reads the old shared pin as a bottle's own.
    pub const ORIG_DST: &str = "EGRESS_DST_V3";
    /// One per bottle, like `ORIG_DST` (decision 0010): renamed from `EGRESS_DNS_V2`
    /// (one map for all bottles, the bottle id as value) so an upgraded gateway never
    /// reads the old shared pin as a bottle's own.
    pub const DNS_CLIENTS: &str = "EGRESS_DNS_V3";
    /// Renamed from `EGRESS_COUNTERS` when `Counters` gained `unix_refused` (its value
    /// size changed: the programs of this version cannot use the old pin).
    pub const COUNTERS: &str = "EGRESS_COUNTERS_V2";
    /// The unix sockets each bottle may connect or send to (`UnixKey` -> 1).
    pub const UNIX_SOCKETS: &str = "EGRESS_UNIX_V1";
}

/// Entries of the unix-socket allowlist, all bottles together.
pub const UNIX_ENTRIES: u32 = 16_384;

/// Capacity of each bottle's DNS-client LRU map: the source ports its resolvers sent
/// queries from lately. A bottle that uses more evicts only its own entries.
pub const DNS_CLIENT_ENTRIES: u32 = 16_384;

/// Capacity of each bottle's original-destination LRU map: its connections between
/// `connect()` and the gateway's `accept()` (the listener's backlog is 1024), with room
/// for the connects whose SYN a full backlog dropped. A bottle that makes more evicts
/// only its own entries.
pub const ORIG_DST_ENTRIES: u32 = 16_384;

/// Bottles one gateway can serve; bounds the counters map.
pub const MAX_BOTTLES: u32 = 1024;

/// A bottle's id: FNV-1a of its name. Stable across restarts and config edits, so an
/// entry written by a pinned program of a bottle that is no longer configured never
/// matches another bottle's policy.
pub const fn bottle_id(name: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < name.len() {
        hash ^= name[i] as u32;
        hash = hash.wrapping_mul(0x0100_0193);
        i += 1;
    }
    hash
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), Copy, and have no padding the kernel could leave
    // uninitialised (explicit `_pad` fields fill the gaps).
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::RecordedDst {}
    unsafe impl aya::Pod for super::ClientKey {}
    unsafe impl aya::Pod for super::DnsClientKey {}
    unsafe impl aya::Pod for super::DnsClient {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::UnixKey {}
}
