//! systemd's notify protocol: one datagram per state change to `$NOTIFY_SOCKET`
//! (`READY=1`, `RELOADING=1`, `STOPPING=1`, `WATCHDOG=1`). Without the variable (not
//! started by systemd as `Type=notify`) every call does nothing.
use std::{
    ffi::OsString,
    io,
    os::{
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram},
    },
    time::Duration,
};

/// The socket systemd listens on (`$NOTIFY_SOCKET`), if any. A name starting with `@`
/// is in the abstract namespace.
fn socket_addr(value: Option<OsString>) -> io::Result<Option<SocketAddr>> {
    let Some(path) = value else { return Ok(None) };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(&path)?,
    };
    Ok(Some(addr))
}

/// Sends `state` (newline-separated `KEY=value` lines). `Ok(false)`: no socket to tell.
pub fn notify(state: &str) -> io::Result<bool> {
    send(std::env::var_os("NOTIFY_SOCKET"), state)
}

fn send(socket: Option<OsString>, state: &str) -> io::Result<bool> {
    let Some(addr) = socket_addr(socket)? else { return Ok(false) };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// Like `notify`, logging instead of failing: a lost notification must not stop the
/// gateway (systemd then times the start out, which is what an operator sees).
pub fn tell(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(error = %e, state = %state.replace('\n', " "), "cannot notify systemd");
    }
}

/// `RELOADING=1` with the monotonic timestamp systemd asks for alongside it.
pub fn reloading() {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0);
    tell(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, when the watchdog is on
/// and meant for this process (`$WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    interval(std::env::var("WATCHDOG_USEC").ok(), std::env::var("WATCHDOG_PID").ok(), std::process::id())
}

fn interval(usec: Option<String>, pid: Option<String>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.parse().ok()?;
    if pid.is_some_and(|pid| pid.parse::<u32>().ok() != Some(me)) {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_reach_path_and_abstract_sockets_and_nothing_happens_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        assert!(!send(None, "READY=1").unwrap(), "no socket, nothing sent");
        assert!(send(Some(path.clone().into()), "READY=1\nSTATUS=serving").unwrap());
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");

        let name = format!("egress-notify-test-{}", std::process::id());
        let abstract_listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        assert!(send(Some(format!("@{name}").into()), "STOPPING=1").unwrap());
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn the_watchdog_pings_at_half_its_interval_and_only_for_this_process() {
        let some = |s: &str| Some(s.to_string());
        assert_eq!(interval(some("10000000"), None, 7), Some(Duration::from_secs(5)));
        assert_eq!(interval(some("10000000"), some("7"), 7), Some(Duration::from_secs(5)));
        assert_eq!(interval(some("10000000"), some("8"), 7), None);
        assert_eq!(interval(some("0"), None, 7), None);
        assert_eq!(interval(some("x"), None, 7), None);
        assert_eq!(interval(None, None, 7), None);
    }
}
