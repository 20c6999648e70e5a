//! `egress-gateway exec`: start a command inside a bottle so that nothing it does can
//! escape the bottle's programs. Before the command runs, in this order: the bottle's
//! programs are checked to be on the very cgroup it joins; the child joins the cgroup
//! (in a cgroup namespace rooted there, so it cannot move out) and the bottle's network
//! namespace, is the first process of a PID namespace of its own (it cannot see, so
//! cannot ptrace, anything outside), inherits no descriptor above 2, and drops every
//! capability, with no_new_privs, unless asked to keep them.
use std::{
    fs,
    io::Write as _,
    os::{
        fd::AsFd,
        unix::process::{CommandExt, ExitStatusExt},
    },
    process::Command,
};

use anyhow::{Context, bail};
use nix::{
    mount::{MntFlags, MsFlags},
    sched::CloneFlags,
    unistd::{Gid, Uid, User},
};

use crate::{bpf, cgroup, config, netns};

/// How to run the command.
#[derive(Debug, Default, Clone)]
pub struct ExecOptions {
    /// Run as this user (name or uid), with its primary group and no supplementary ones.
    pub user: Option<String>,
    /// Keep capabilities (and allow gaining privileges through set-uid files).
    pub keep_caps: bool,
    /// Allow a root command in a bottle that shares the gateway's network namespace.
    pub allow_root: bool,
}

/// The user a command runs as.
struct Identity {
    uid: Uid,
    gid: Gid,
}

fn identity(user: Option<&str>) -> anyhow::Result<Option<Identity>> {
    let Some(user) = user else { return Ok(None) };
    let found = match user.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid))?,
        Err(_) => User::from_name(user)?,
    };
    let u = found.with_context(|| format!("--user {user:?}: no such user"))?;
    Ok(Some(Identity { uid: u.uid, gid: u.gid }))
}

/// Runs `command` inside `bottle` and returns its exit status (128 + signal when killed).
/// Refuses when the bottle's programs are not attached to its cgroup: an agent must never
/// start with direct egress.
pub fn run(
    config: &config::Config,
    bottle: &config::Bottle,
    command: &[String],
    opts: &ExecOptions,
) -> anyhow::Result<u8> {
    let dir = cgroup::bottle_path(config, bottle)?;
    bpf::verify_attached(config, bottle, &dir)?;
    let who = identity(opts.user.as_deref())?;
    let runs_as_root = who.as_ref().map_or(Uid::effective().is_root(), |w| w.uid.is_root());
    if runs_as_root && bottle.netns.is_none() && !opts.allow_root {
        bail!(
            "bottle {} shares the gateway's network namespace, where root can open packet sockets on the \
             host's interfaces and move itself out of the cgroup: run the command as another user (--user), \
             give the bottle a namespace of its own (netns), or pass --allow-root",
            bottle.name
        );
    }
    let procs = dir.join("cgroup.procs");
    let cgroup2 = cgroup::root(config)?;
    let (program, args) = command.split_first().context("no command given")?;
    // Opened before the fork: the child only has to enter it.
    let netns_fd = netns::open_for_join(bottle)?;
    // A new PID namespace for the children of this process: the command is its first
    // process. This process stays outside, to wait for it and report its status.
    nix::sched::unshare(CloneFlags::CLONE_NEWPID).context("unshare(CLONE_NEWPID) (are you root?)")?;

    let mut cmd = Command::new(program);
    cmd.args(args);
    let keep_caps = opts.keep_caps;
    // SAFETY: between fork and exec the child makes plain system calls and writes one
    // file; this process is single-threaded, so no lock can be held by another thread.
    unsafe {
        cmd.pre_exec(move || {
            // "0" moves the writing process itself: every socket it creates from here on
            // belongs to the bottle.
            fs::OpenOptions::new().write(true).open(&procs)?.write_all(b"0")?;
            // A cgroup namespace rooted at the bottle's cgroup, and a mount namespace whose
            // cgroup2 hierarchy is mounted anew from inside it: the command sees only the
            // bottle's subtree, so even as root (without CAP_SYS_ADMIN to mount the whole
            // hierarchy again) it has no cgroup.procs outside the bottle to move into.
            nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP | CloneFlags::CLONE_NEWNS).map_err(std::io::Error::from)?;
            let none = None::<&str>;
            nix::mount::mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
                .map_err(std::io::Error::from)?;
            nix::mount::umount2(&cgroup2, MntFlags::MNT_DETACH).map_err(std::io::Error::from)?;
            nix::mount::mount(Some("cgroup2"), &cgroup2, Some("cgroup2"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, none)
                .map_err(std::io::Error::from)?;
            // This child is the first process of the new PID namespace: a /proc of that
            // namespace hides every process outside the bottle's command tree.
            let proc_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            nix::mount::mount(Some("proc"), "/proc", Some("proc"), proc_flags, none).map_err(std::io::Error::from)?;
            if let Some(ns) = &netns_fd {
                netns::join(ns.as_fd())?;
            }
            // No descriptor opened outside the bottle reaches the command (a socket
            // connected elsewhere would bypass the programs). Close-on-exec rather than
            // close: the standard library still reports exec errors through a pipe.
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if !keep_caps {
                drop_bounding_set()?;
            }
            if let Some(w) = &who {
                nix::unistd::setgroups(&[]).map_err(std::io::Error::from)?;
                nix::unistd::setgid(w.gid).map_err(std::io::Error::from)?;
                nix::unistd::setuid(w.uid).map_err(std::io::Error::from)?;
            }
            if !keep_caps {
                drop_capabilities()?;
            }
            Ok(())
        });
    }
    let status = cmd.status().with_context(|| format!("starting {program:?} in {}", dir.display()))?;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => 1,
    })
}

/// Empties the capability bounding set (needs CAP_SETPCAP, so before any setuid): after
/// exec, even a root command then has no capability, whatever its files say.
fn drop_bounding_set() -> std::io::Result<()> {
    for cap in 0..=63 {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            // EINVAL: past the last capability this kernel knows.
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Clears the ambient, effective, permitted and inheritable sets and sets no_new_privs.
fn drop_capabilities() -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: prctl with integer arguments; capset with the v3 header and two data words.
    unsafe {
        if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
