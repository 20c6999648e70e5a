//! Bottles with a network namespace of their own (containers, `netns: new`): create a
//! namespace that holds only `lo`, open the gateway's listeners *inside* a bottle's
//! namespace (a dedicated thread enters it, binds, and leaves: the sockets keep working
//! from the gateway's namespace, as in ztunnel's in-pod mode), and join one (`exec`).
//!
//! Upstream connections are made by the gateway's own threads, so they leave from the
//! gateway's namespace; the bottle's namespace needs no route anywhere.
use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use nix::{
    mount::{MntFlags, MsFlags},
    sched::CloneFlags,
};

use crate::config::{self, NETNS_RUN_DIR, Netns};

/// `statfs` magic of nsfs, the file system behind `/proc/PID/ns/*` and their bind mounts.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Where a bottle's programs send its sockets: the gateway's shared listeners, or for a
/// bottle in its own namespace, the listeners on that namespace's loopback (same ports).
pub fn listen_addrs(config: &config::Config, bottle: &config::Bottle) -> (SocketAddrV4, SocketAddrV4) {
    match bottle.netns {
        None => (config.listen, config.dns_listen),
        Some(_) => (
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, config.listen.port()),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, config.dns_listen.port()),
        ),
    }
}

/// Makes sure the bottle's namespace exists and returns its path: `netns: new` creates
/// `/run/netns/egress-<bottle>` when missing (kept across gateway restarts: its mount
/// holds it); a given path must already be a network namespace other than the gateway's.
pub fn ensure(bottle: &config::Bottle) -> anyhow::Result<Option<PathBuf>> {
    let Some(netns) = &bottle.netns else { return Ok(None) };
    let path = netns.path(&bottle.name);
    if *netns == Netns::New && !is_nsfs(&path) {
        create(&path)
            .with_context(|| format!("bottle {}: creating network namespace {}", bottle.name, path.display()))?;
        tracing::info!(bottle = %bottle.name, netns = %path.display(), "created network namespace (lo only)");
    }
    check_usable(&path).with_context(|| format!("bottle {}: netns {}", bottle.name, path.display()))?;
    Ok(Some(path))
}

/// A namespace file the gateway can serve: nsfs, and not the gateway's own namespace
/// (its listeners there would clash with the shared ones, and the bottle would have the
/// host's routes).
fn check_usable(path: &Path) -> anyhow::Result<()> {
    if !is_nsfs(path) {
        bail!("is not a network namespace (expected a file like /run/netns/NAME or /proc/PID/ns/net)");
    }
    let theirs = fs::metadata(path).context("reading the namespace")?;
    let ours = fs::metadata("/proc/self/ns/net").context("reading the gateway's namespace")?;
    use std::os::unix::fs::MetadataExt;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        bail!("is the gateway's own network namespace: leave `netns` out for such a bottle");
    }
    Ok(())
}

fn is_nsfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).map(|s| s.filesystem_type().0 == NSFS_MAGIC).unwrap_or(false)
}

/// Creates a persistent network namespace at `path` with `lo` up, as `ip netns add` does:
/// a thread unshares its network namespace and bind-mounts it onto the file.
fn create(path: &Path) -> anyhow::Result<()> {
    let run_dir = path.parent().context("namespace path has no parent")?;
    fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    if run_dir == Path::new(NETNS_RUN_DIR) {
        make_shared(run_dir)?;
    }
    fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let target = path.to_path_buf();
    let made = std::thread::spawn(move || -> anyhow::Result<()> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET) (are you root?)")?;
        bring_lo_up()?;
        let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
        nix::mount::mount(Some(own.as_str()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("bind-mounting the new namespace onto {}", target.display()))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?;
    if let Err(e) = made {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

/// Makes `/run/netns` a shared mount (binding it onto itself first if it is not a mount),
/// so namespaces mounted later are seen by tools in other mount namespaces (`ip netns`,
/// container runtimes), as iproute2 does.
fn make_shared(dir: &Path) -> anyhow::Result<()> {
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if nix::mount::mount(None::<&str>, dir, None::<&str>, shared, None::<&str>).is_ok() {
        return Ok(());
    }
    nix::mount::mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .with_context(|| format!("bind-mounting {} onto itself", dir.display()))?;
    nix::mount::mount(None::<&str>, dir, None::<&str>, shared, None::<&str>)
        .with_context(|| format!("making {} a shared mount", dir.display()))
}

/// Removes a namespace the gateway created (`netns: new`); processes still inside keep
/// it alive, without any route, until they exit.
pub fn remove_created(bottle: &config::Bottle) -> anyhow::Result<()> {
    if bottle.netns != Some(Netns::New) {
        return Ok(());
    }
    let path = Netns::New.path(&bottle.name);
    if !path.exists() {
        return Ok(());
    }
    if is_nsfs(&path) {
        nix::mount::umount2(&path, MntFlags::MNT_DETACH).with_context(|| format!("unmounting {}", path.display()))?;
    }
    fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
}

/// Sets `lo` up in the calling thread's network namespace.
fn bring_lo_up() -> anyhow::Result<()> {
    // SAFETY: plain socket and ioctl calls on a zeroed, NUL-terminated ifreq we own.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket for the loopback ioctl");
        }
        let fd = <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(std::io::Error::last_os_error()).context("reading lo's flags");
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(std::io::Error::last_os_error()).context("setting lo up");
        }
    }
    Ok(())
}

/// The gateway's listeners for one bottle, opened inside its namespace.
pub struct NsListeners {
    pub tcp: TcpListener,
    pub udp: UdpSocket,
}

/// Opens the TCP and DNS listeners inside the namespace at `path`, from a thread that
/// enters it and exits after binding (the gateway's other threads never change
/// namespace). `lo` is brought up there if a runtime left it down.
pub fn bind_in(path: &Path, tcp: SocketAddrV4, udp: SocketAddrV4) -> anyhow::Result<NsListeners> {
    let ns = fs::File::open(path).with_context(|| format!("opening network namespace {}", path.display()))?;
    std::thread::spawn(move || -> anyhow::Result<NsListeners> {
        nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).context("entering the bottle's network namespace")?;
        bring_lo_up()?;
        let tcp_listener =
            TcpListener::bind(tcp).with_context(|| format!("binding {tcp} in the bottle's namespace"))?;
        let udp_socket = UdpSocket::bind(udp).with_context(|| format!("binding {udp} in the bottle's namespace"))?;
        tcp_listener.set_nonblocking(true)?;
        udp_socket.set_nonblocking(true)?;
        Ok(NsListeners { tcp: tcp_listener, udp: udp_socket })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

/// The network namespace cookie of a socket's namespace (`SO_NETNS_COOKIE`, Linux 5.14):
/// what the kernel programs put in the original-destination key.
pub fn socket_netns_cookie(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(cookie) }
}

/// Opens a bottle's namespace for `exec` to join (before it forks); `None` for a bottle
/// in the gateway's namespace.
pub fn open_for_join(bottle: &config::Bottle) -> anyhow::Result<Option<OwnedFd>> {
    let Some(netns) = &bottle.netns else { return Ok(None) };
    let path = netns.path(&bottle.name);
    check_usable(&path).with_context(|| format!("bottle {}: netns {}", bottle.name, path.display()))?;
    let file = fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Some(file.into()))
}

/// Enters the namespace `fd` (in `exec`'s child, before it execs).
pub fn join(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    nix::sched::setns(fd, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_bottles_are_sent_to_loopback_on_the_gateway_ports() {
        let text = "listen: 127.0.0.9:16001\ndns_listen: 127.0.0.9:16053\nbottles:\n  - {name: a, cgroup: e/a}\n  \
                    - {name: b, cgroup: e/b, netns: new}\n  - {name: c, cgroup: e/c, netns: /run/netns/pod}\n";
        let c = config::Config::parse(Path::new("/etc/g.yaml"), text).unwrap();
        let addrs: Vec<_> = c.bottles.iter().map(|b| listen_addrs(&c, b)).collect();
        assert_eq!(addrs[0], ("127.0.0.9:16001".parse().unwrap(), "127.0.0.9:16053".parse().unwrap()));
        for a in &addrs[1..] {
            assert_eq!(*a, ("127.0.0.1:16001".parse().unwrap(), "127.0.0.1:16053".parse().unwrap()));
        }
        assert_eq!(c.bottles[1].netns.as_ref().unwrap().path("b"), Path::new("/run/netns/egress-b"));
        let bad = "bottles:\n  - {name: a, cgroup: e/a, netns: pod}\n";
        let err = config::Config::parse(Path::new("g.yaml"), bad).unwrap_err();
        assert_eq!(err.problems[0].field, "bottles[0].netns");
    }
}
