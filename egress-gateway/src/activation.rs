//! Listeners passed by a service manager (systemd socket activation: `LISTEN_FDS`
//! descriptors from 3, for the process `LISTEN_PID`). A gateway started with the host
//! listeners passed in uses them instead of binding, so a restart or an upgrade never
//! closes them: connections made while one process drains and the next starts wait in
//! the listener's backlog instead of being refused.
use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    os::fd::{FromRawFd, OwnedFd, RawFd},
};

use anyhow::{Context, bail};

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// How many descriptors were passed to the process `pid`, from the values of
/// `LISTEN_PID` and `LISTEN_FDS`: none when they are unset or name another process (a
/// child that inherited the variables).
pub fn passed_count(listen_pid: Option<&str>, listen_fds: Option<&str>, pid: u32) -> Result<usize, String> {
    let (Some(listen_pid), Some(listen_fds)) = (listen_pid, listen_fds) else { return Ok(0) };
    let for_pid: u32 =
        listen_pid.trim().parse().map_err(|_| format!("LISTEN_PID={listen_pid:?} is not a process id"))?;
    if for_pid != pid {
        return Ok(0);
    }
    let n: usize = listen_fds.trim().parse().map_err(|_| format!("LISTEN_FDS={listen_fds:?} is not a number"))?;
    if n > 64 {
        return Err(format!("LISTEN_FDS={n}: more descriptors than the gateway's two listeners could use"));
    }
    Ok(n)
}

/// The sockets passed to this process, by kind.
#[derive(Default)]
pub struct Passed {
    tcp: Vec<(SocketAddr, TcpListener)>,
    udp: Vec<(SocketAddr, UdpSocket)>,
}

impl Passed {
    /// Takes the passed descriptors (none when `LISTEN_PID` is not this process): each
    /// must be an IPv4 TCP socket that listens or an IPv4 UDP socket.
    pub fn take() -> anyhow::Result<Passed> {
        let count = passed_count(
            std::env::var("LISTEN_PID").ok().as_deref(),
            std::env::var("LISTEN_FDS").ok().as_deref(),
            std::process::id(),
        )
        .map_err(anyhow::Error::msg)?;
        let mut passed = Passed::default();
        for fd in FIRST_FD..FIRST_FD + count as RawFd {
            // Not for the children the gateway starts.
            // SAFETY: fcntl on a descriptor number; an invalid one only fails.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
                bail!("LISTEN_FDS: descriptor {fd} is not open: {}", std::io::Error::last_os_error());
            }
            let (kind, listening) = (sockopt(fd, libc::SO_TYPE)?, sockopt(fd, libc::SO_ACCEPTCONN)?);
            // SAFETY: the service manager passed this open descriptor to us alone.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            match kind {
                libc::SOCK_STREAM if listening == 1 => {
                    let l = TcpListener::from(owned);
                    let addr = l.local_addr().with_context(|| format!("LISTEN_FDS: descriptor {fd}"))?;
                    passed.tcp.push((addr, l));
                }
                libc::SOCK_DGRAM => {
                    let s = UdpSocket::from(owned);
                    let addr = s.local_addr().with_context(|| format!("LISTEN_FDS: descriptor {fd}"))?;
                    passed.udp.push((addr, s));
                }
                _ => bail!("LISTEN_FDS: descriptor {fd} is neither a listening TCP socket nor a UDP socket"),
            }
        }
        Ok(passed)
    }

    /// The passed TCP listener bound to `addr`, if any (non-blocking, for tokio).
    pub fn tcp(&mut self, addr: SocketAddr) -> anyhow::Result<Option<TcpListener>> {
        let Some(i) = self.tcp.iter().position(|(a, _)| *a == addr) else { return Ok(None) };
        let (_, l) = self.tcp.swap_remove(i);
        l.set_nonblocking(true).context("making the passed listener non-blocking")?;
        Ok(Some(l))
    }

    /// The passed UDP socket bound to `addr`, if any (non-blocking, for tokio).
    pub fn udp(&mut self, addr: SocketAddr) -> anyhow::Result<Option<UdpSocket>> {
        let Some(i) = self.udp.iter().position(|(a, _)| *a == addr) else { return Ok(None) };
        let (_, s) = self.udp.swap_remove(i);
        s.set_nonblocking(true).context("making the passed socket non-blocking")?;
        Ok(Some(s))
    }

    /// Fails on a passed socket no listener took: the service manager's sockets and
    /// gateway.yaml disagree, and a socket nobody serves would hang its clients.
    pub fn check_all_used(&self, listen: SocketAddr, dns_listen: SocketAddr) -> anyhow::Result<()> {
        let mut stray =
            self.tcp.iter().map(|(a, _)| format!("TCP {a}")).chain(self.udp.iter().map(|(a, _)| format!("UDP {a}")));
        if let Some(first) = stray.next() {
            bail!(
                "socket activation passed {first}, which is neither `listen` (TCP {listen}) nor `dns_listen` (UDP \
                 {dns_listen}) of gateway.yaml: make the socket unit's ListenStream=/ListenDatagram= match them"
            );
        }
        Ok(())
    }
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> anyhow::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt into a c_int of the size given.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&raw mut value).cast(), &mut len) };
    if rc < 0 {
        bail!("LISTEN_FDS: descriptor {fd} is not a socket: {}", std::io::Error::last_os_error());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_count_only_for_the_process_they_were_passed_to() {
        assert_eq!(passed_count(None, None, 42), Ok(0));
        assert_eq!(passed_count(Some("42"), None, 42), Ok(0));
        assert_eq!(passed_count(Some("42"), Some("2"), 42), Ok(2));
        // Inherited by a child: not its descriptors.
        assert_eq!(passed_count(Some("41"), Some("2"), 42), Ok(0));
        assert!(passed_count(Some("x"), Some("2"), 42).unwrap_err().contains("LISTEN_PID"));
        assert!(passed_count(Some("42"), Some("two"), 42).unwrap_err().contains("LISTEN_FDS"));
        assert!(passed_count(Some("42"), Some("1000"), 42).is_err());
    }
}
