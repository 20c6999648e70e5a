//! Redirect decisions shared by the hooks: where a bottle's socket may go, what it asked
//! for, and the backstop that drops everything not addressed to the gateway.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_SOCK_OPS_TCP_CONNECT_CB, bpf_sock_addr},
    btf_maps::SkStorage,
    helpers::generated::{bpf_get_netns_cookie, bpf_ktime_get_ns, bpf_sk_storage_get},
    macros::{btf_map, map},
    maps::{LruHashMap, PerCpuHashMap},
    programs::{SkBuffContext, SockAddrContext, SockOpsContext},
};
use egress_common::{
    AF_INET, AF_INET6, ClientKey, Counters, DNS_CLIENT_ENTRIES, DnsClient, DnsClientKey, MAX_BOTTLES, ORIG_DST_ENTRIES,
    OrigDst, RecordedDst,
};

const PASS: i32 = 1;
const REFUSE: i32 = 0;

const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const DNS_PORT_WIRE: u16 = 53;

// Load-time configuration (`EbpfLoader::override_global`). Read through `read_volatile`
// so the compiler does not fold the zero initialisers into the code.
#[unsafe(no_mangle)]
static PROXY_IP4: u32 = 0;
#[unsafe(no_mangle)]
static PROXY_PORT: u16 = 0;
#[unsafe(no_mangle)]
static DNS_IP4: u32 = 0;
#[unsafe(no_mangle)]
static DNS_PORT: u16 = 0;
#[unsafe(no_mangle)]
static BOTTLE_ID: u32 = 0;
#[unsafe(no_mangle)]
static DNS_BY_PORT: u32 = 0;

#[inline(always)]
fn global<T: Copy>(v: &'static T) -> T {
    unsafe { core::ptr::read_volatile(v) }
}

/// Original destination of each socket, recorded at connect/sendmsg time.
#[btf_map]
static SOCK_ORIG: SkStorage<OrigDst> = SkStorage::new();

/// Original destination by client address, for the gateway's `accept()`. One per bottle
/// (the loader pins it in the bottle's pin directory), so a bottle that floods it evicts
/// only its own entries; pinned so a restarted gateway, and the programs of a re-attach,
/// use the map the running programs write.
#[map(name = "EGRESS_DST_V3")]
static ORIG_DST: LruHashMap<ClientKey, RecordedDst> = LruHashMap::pinned(ORIG_DST_ENTRIES, 0);

/// The bottle's DNS client ports, so the shared DNS listener knows whose policy applies.
/// One per bottle (pinned in the bottle's pin directory, like `ORIG_DST`), so a bottle
/// that sends from many ports evicts only its own entries.
#[map(name = "EGRESS_DNS_V3")]
static DNS_CLIENTS: LruHashMap<DnsClientKey, DnsClient> = LruHashMap::pinned(DNS_CLIENT_ENTRIES, 0);

#[map(name = "EGRESS_COUNTERS_V2")]
static COUNTERS: PerCpuHashMap<u32, Counters> = PerCpuHashMap::pinned(MAX_BOTTLES, 0);

#[derive(Clone, Copy)]
enum Counter {
    TcpRedirected,
    DnsRedirected,
    Refused,
    Dropped,
}

#[inline(always)]
fn count(kind: Counter) {
    let id = global(&BOTTLE_ID);
    let mut slot = COUNTERS.get_ptr_mut(&id);
    if slot.is_none() {
        let _ = COUNTERS.insert(&id, &Counters::default(), 0);
        slot = COUNTERS.get_ptr_mut(&id);
    }
    if let Some(c) = slot {
        let c = unsafe { &mut *c };
        match kind {
            Counter::TcpRedirected => c.tcp_redirected += 1,
            Counter::DnsRedirected => c.dns_redirected += 1,
            Counter::Refused => c.refused += 1,
            Counter::Dropped => c.dropped += 1,
        }
    }
}

#[inline(always)]
fn refuse() -> i32 {
    count(Counter::Refused);
    REFUSE
}

/// Wire-order port of a sock_addr context (the kernel keeps it in the low 16 bits).
#[inline(always)]
fn user_port(sa: &bpf_sock_addr) -> u16 {
    u16::from_be(sa.user_port as u16)
}

#[inline(always)]
fn set_user_port(sa: &mut bpf_sock_addr, port: u16) {
    sa.user_port = port.to_be() as u32;
}

#[inline(always)]
fn store_orig(ctx: &SockAddrContext, orig: OrigDst) -> bool {
    let slot = unsafe { SOCK_ORIG.get_or_insert_ptr_mut(ctx, None) };
    if slot.is_null() {
        return false;
    }
    unsafe { *slot = orig };
    true
}

#[inline(always)]
fn orig4(ip4: u32, port_wire: u32) -> OrigDst {
    OrigDst { addr: [ip4, 0, 0, 0], port: port_wire as u16, family: AF_INET, bottle_id: global(&BOTTLE_ID) }
}

/// `::ffff:a.b.c.d` as four network-order words.
#[inline(always)]
fn mapped(ip4: u32) -> [u32; 4] {
    [0, 0, 0xffffu32.to_be(), ip4]
}

#[inline(always)]
fn v4_in_v6(ip6: &[u32; 4]) -> Option<u32> {
    if ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0xffffu32.to_be() { Some(ip6[3]) } else { None }
}

// === connect ===

pub fn connect4(ctx: &SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    match sa.protocol {
        IPPROTO_TCP => {
            if !store_orig(ctx, orig4(sa.user_ip4, sa.user_port)) {
                return refuse();
            }
            sa.user_ip4 = global(&PROXY_IP4);
            set_user_port(sa, global(&PROXY_PORT));
            count(Counter::TcpRedirected);
            PASS
        }
        IPPROTO_UDP if user_port(sa) == DNS_PORT_WIRE => {
            if !store_orig(ctx, orig4(sa.user_ip4, sa.user_port)) {
                return refuse();
            }
            sa.user_ip4 = global(&DNS_IP4);
            set_user_port(sa, global(&DNS_PORT));
            count(Counter::DnsRedirected);
            PASS
        }
        // Other UDP (QUIC included: clients fall back to TCP), ping sockets, anything else.
        _ => refuse(),
    }
}

pub fn connect6(ctx: &SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let orig = match v4_in_v6(&sa.user_ip6) {
        Some(ip4) => orig4(ip4, sa.user_port),
        None => {
            OrigDst { addr: sa.user_ip6, port: sa.user_port as u16, family: AF_INET6, bottle_id: global(&BOTTLE_ID) }
        }
    };
    let (target_ip4, target_port, kind) = match sa.protocol {
        IPPROTO_TCP => (global(&PROXY_IP4), global(&PROXY_PORT), Counter::TcpRedirected),
        // DNS over an IPv4-mapped address can be served; native IPv6 DNS is refused so the
        // resolver falls back to an IPv4 server.
        IPPROTO_UDP if user_port(sa) == DNS_PORT_WIRE && orig.family == AF_INET => {
            (global(&DNS_IP4), global(&DNS_PORT), Counter::DnsRedirected)
        }
        _ => return refuse(),
    };
    if !store_orig(ctx, orig) {
        return refuse();
    }
    // The listeners are IPv4; a dual-stack socket reaches them through the mapped
    // address (a V6ONLY socket then fails to connect, which is the safe outcome).
    sa.user_ip6 = mapped(target_ip4);
    set_user_port(sa, target_port);
    count(kind);
    PASS
}

// === bind ===

/// A bottle may not bind the gateway's listener ports, on any address: a squatter would
/// stop a restarting gateway from binding, and (in the gateway's namespace) receive other
/// bottles' redirected connections.
#[inline(always)]
fn bind_allowed(sa: &bpf_sock_addr) -> bool {
    let port = user_port(sa);
    port != global(&PROXY_PORT) && port != global(&DNS_PORT)
}

pub fn bind4(ctx: &SockAddrContext) -> i32 {
    if bind_allowed(unsafe { &*ctx.sock_addr }) { PASS } else { refuse() }
}

pub fn bind6(ctx: &SockAddrContext) -> i32 {
    if bind_allowed(unsafe { &*ctx.sock_addr }) { PASS } else { refuse() }
}

// === unconnected UDP ===

pub fn sendmsg4(ctx: &SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.protocol != IPPROTO_UDP || user_port(sa) != DNS_PORT_WIRE {
        return refuse();
    }
    if !store_orig(ctx, orig4(sa.user_ip4, sa.user_port)) {
        return refuse();
    }
    sa.user_ip4 = global(&DNS_IP4);
    set_user_port(sa, global(&DNS_PORT));
    count(Counter::DnsRedirected);
    PASS
}

pub fn sendmsg6(ctx: &SockAddrContext) -> i32 {
    // IPv4-mapped destinations are handed to sendmsg4 by the kernel; whatever reaches this
    // hook is native IPv6, which no gateway listener serves.
    let _ = ctx;
    refuse()
}

/// Restores the source of a DNS reply to the address the query was sent to (resolvers
/// drop replies from an unexpected source).
pub fn recvmsg4(ctx: &SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let slot = unsafe { SOCK_ORIG.get_ptr_mut(ctx) };
    if slot.is_null() {
        return PASS;
    }
    let orig = unsafe { *slot };
    if orig.family == AF_INET && sa.user_ip4 == global(&DNS_IP4) && user_port(sa) == global(&DNS_PORT) {
        sa.user_ip4 = orig.addr[0];
        sa.user_port = orig.port as u32;
    }
    PASS
}

pub fn recvmsg6(ctx: &SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let slot = unsafe { SOCK_ORIG.get_ptr_mut(ctx) };
    if slot.is_null() {
        return PASS;
    }
    let orig = unsafe { *slot };
    if orig.family == AF_INET && v4_in_v6(&sa.user_ip6) == Some(global(&DNS_IP4)) && user_port(sa) == global(&DNS_PORT)
    {
        sa.user_ip6 = mapped(orig.addr[0]);
        sa.user_port = orig.port as u32;
    }
    PASS
}

// === getpeername ===

pub fn getpeername4(ctx: &SockAddrContext) -> i32 {
    let slot = unsafe { SOCK_ORIG.get_ptr_mut(ctx) };
    if !slot.is_null() {
        let orig = unsafe { *slot };
        if orig.family == AF_INET {
            let sa = unsafe { &mut *ctx.sock_addr };
            sa.user_ip4 = orig.addr[0];
            sa.user_port = orig.port as u32;
        }
    }
    PASS
}

pub fn getpeername6(ctx: &SockAddrContext) -> i32 {
    let slot = unsafe { SOCK_ORIG.get_ptr_mut(ctx) };
    if !slot.is_null() {
        let orig = unsafe { *slot };
        let sa = unsafe { &mut *ctx.sock_addr };
        sa.user_ip6 = if orig.family == AF_INET { mapped(orig.addr[0]) } else { orig.addr };
        sa.user_port = orig.port as u32;
    }
    PASS
}

// === sock_ops ===

/// At `TCP_CONNECT_CB` (before the SYN leaves) the client port is bound: publish the
/// socket's original destination under the address the gateway will see in `accept()`.
pub fn sock_ops(ctx: &SockOpsContext) -> u32 {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return 1;
    }
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return 1;
    }
    let orig = unsafe {
        bpf_sk_storage_get(core::ptr::addr_of!(SOCK_ORIG) as *mut c_void, sk as *mut _, core::ptr::null_mut(), 0)
    } as *const OrigDst;
    if orig.is_null() {
        return 1;
    }
    // The namespace the connection lives in: the gateway's listener there reports the
    // same cookie, so clients with equal addresses in two namespaces never collide.
    let netns = unsafe { bpf_get_netns_cookie(ctx.ops as *mut c_void) };
    let key = ClientKey { netns, ip4: ctx.local_ip4(), port: ctx.local_port() as u16, _pad: 0 };
    // If the insert fails the gateway finds no entry and refuses the connection.
    let recorded = RecordedDst { dst: unsafe { *orig }, recorded_ns: unsafe { bpf_ktime_get_ns() } };
    let _ = ORIG_DST.insert(&key, &recorded, 0);
    1
}

// === backstop ===

const ETH_P_IP: u16 = 0x0800;

/// Drops every packet the bottle sends that is not for the gateway's TCP or DNS listener:
/// raw and ICMP sockets, native IPv6, anything the socket hooks did not rewrite.
pub fn backstop(ctx: &SkBuffContext) -> i32 {
    match try_backstop(ctx) {
        Some(PASS) => PASS,
        _ => {
            count(Counter::Dropped);
            REFUSE
        }
    }
}

#[inline(always)]
fn try_backstop(ctx: &SkBuffContext) -> Option<i32> {
    // `protocol` holds the big-endian EtherType in its low 16 bits.
    if u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16) != ETH_P_IP {
        return None;
    }
    // cgroup_skb sees the packet from its IP header on.
    let ver_ihl: u8 = ctx.load(0).ok()?;
    if ver_ihl >> 4 != 4 {
        return None;
    }
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return None;
    }
    let proto: u8 = ctx.load(9).ok()?;
    let saddr: u32 = ctx.load(12).ok()?; // stays in network order
    let daddr: u32 = ctx.load(16).ok()?;
    let sport: u16 = u16::from_be(ctx.load(ihl).ok()?);
    let dport: u16 = u16::from_be(ctx.load(ihl + 2).ok()?);
    match proto as u32 {
        IPPROTO_TCP if daddr == global(&PROXY_IP4) && dport == global(&PROXY_PORT) => Some(PASS),
        IPPROTO_UDP if daddr == global(&DNS_IP4) && dport == global(&DNS_PORT) => {
            if global(&DNS_BY_PORT) != 0 {
                let key = DnsClientKey { ip4: saddr, port: sport, _pad: 0 };
                let value =
                    DnsClient { bottle_id: global(&BOTTLE_ID), _pad: 0, recorded_ns: unsafe { bpf_ktime_get_ns() } };
                // Without this entry the gateway cannot tell whose query it is and refuses it.
                let _ = DNS_CLIENTS.insert(&key, &value, 0);
            }
            Some(PASS)
        }
        _ => None,
    }
}
