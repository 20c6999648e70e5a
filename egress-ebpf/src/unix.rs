//! The unix-socket allowlist. The programs that read it (`cgroup/connect_unix` and
//! `cgroup/sendmsg_unix`) are assembled and loaded by the gateway itself
//! (`egress-gateway/src/bpf/unix.rs`): the aya line pinned here cannot load those
//! attach types. The map is declared here so that it is created and pinned with the
//! others.

use aya_ebpf::{macros::map, maps::LpmTrie};
use egress_common::{UNIX_ENTRIES, UnixKey};

/// The unix sockets each bottle may reach (see `UnixKey`); shared by all bottles, pinned.
#[map(name = "EGRESS_UNIX_V1")]
pub static UNIX_SOCKETS: LpmTrie<UnixKey, u8> = LpmTrie::pinned(UNIX_ENTRIES, 0);
