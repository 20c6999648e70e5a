//! The kernel side of the gateway: cgroup hooks that send every socket of a bottle to the
//! gateway's listeners and drop whatever else tries to leave. Each hook is a thin entry
//! point; the shared logic lives in `redirect`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod redirect;
#[cfg(target_arch = "bpf")]
mod unix;

#[cfg(target_arch = "bpf")]
mod hooks {
    use aya_ebpf::{
        macros::{cgroup_skb, cgroup_sock_addr, sock_ops},
        programs::{SkBuffContext, SockAddrContext, SockOpsContext},
    };

    use crate::redirect;

    // Verdicts of cgroup programs: 1 lets the call (or packet) proceed, 0 refuses it
    // (the socket call fails with EPERM, the packet is dropped).

    #[cgroup_sock_addr(connect4)]
    pub fn egress_connect4(ctx: SockAddrContext) -> i32 {
        redirect::connect4(&ctx)
    }

    #[cgroup_sock_addr(connect6)]
    pub fn egress_connect6(ctx: SockAddrContext) -> i32 {
        redirect::connect6(&ctx)
    }

    #[cgroup_sock_addr(sendmsg4)]
    pub fn egress_sendmsg4(ctx: SockAddrContext) -> i32 {
        redirect::sendmsg4(&ctx)
    }

    #[cgroup_sock_addr(sendmsg6)]
    pub fn egress_sendmsg6(ctx: SockAddrContext) -> i32 {
        redirect::sendmsg6(&ctx)
    }

    #[cgroup_sock_addr(recvmsg4)]
    pub fn egress_recvmsg4(ctx: SockAddrContext) -> i32 {
        redirect::recvmsg4(&ctx)
    }

    #[cgroup_sock_addr(recvmsg6)]
    pub fn egress_recvmsg6(ctx: SockAddrContext) -> i32 {
        redirect::recvmsg6(&ctx)
    }

    #[cgroup_sock_addr(bind4)]
    pub fn egress_bind4(ctx: SockAddrContext) -> i32 {
        redirect::bind4(&ctx)
    }

    #[cgroup_sock_addr(bind6)]
    pub fn egress_bind6(ctx: SockAddrContext) -> i32 {
        redirect::bind6(&ctx)
    }

    #[cgroup_sock_addr(getpeername4)]
    pub fn egress_getpeername4(ctx: SockAddrContext) -> i32 {
        redirect::getpeername4(&ctx)
    }

    #[cgroup_sock_addr(getpeername6)]
    pub fn egress_getpeername6(ctx: SockAddrContext) -> i32 {
        redirect::getpeername6(&ctx)
    }

    #[sock_ops]
    pub fn egress_sockops(ctx: SockOpsContext) -> u32 {
        redirect::sock_ops(&ctx)
    }

    #[cgroup_skb]
    pub fn egress_backstop(ctx: SkBuffContext) -> i32 {
        redirect::backstop(&ctx)
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// The crate only means something for the BPF target; on the host it is an empty binary so
/// that workspace-wide commands (`cargo metadata`, `cargo fmt`) work.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
