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
    /// Point the usual TLS trust variables at the gateway's CA files.
    pub trust_env: bool,
}

/// Which of the published files a trust variable names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrustFile {
    /// System roots followed by the CA: for variables that replace the roots.
    Bundle,
    /// The CA alone: for variables that add to the roots.
    Ca,
}

/// The variables `--trust-env` sets, and what each client does with them.
const TRUST_VARIABLES: &[(&str, TrustFile)] = &[
    ("SSL_CERT_FILE", TrustFile::Bundle), // OpenSSL, curl, Go, Python's ssl, httpx, Ruby
    ("CURL_CA_BUNDLE", TrustFile::Bundle), // curl
    ("REQUESTS_CA_BUNDLE", TrustFile::Bundle), // Python requests (its own certifi otherwise)
    ("PIP_CERT", TrustFile::Bundle),      // pip
    ("GIT_SSL_CAINFO", TrustFile::Bundle), // git over HTTPS
    ("CARGO_HTTP_CAINFO", TrustFile::Bundle), // cargo
    ("AWS_CA_BUNDLE", TrustFile::Bundle), // AWS SDKs and CLI
    ("DENO_CERT", TrustFile::Bundle),     // Deno
    ("NODE_EXTRA_CA_CERTS", TrustFile::Ca), // Node.js adds it to its built-in roots
];

/// The variables and values `--trust-env` gives the command.
fn trust_environment(files: &crate::ca::TrustFiles) -> Vec<(&'static str, std::path::PathBuf)> {
    TRUST_VARIABLES
        .iter()
        .map(|(name, file)| {
            let path = match file {
                TrustFile::Bundle => files.bundle.clone(),
                TrustFile::Ca => files.ca.clone(),
            };
            (*name, path)
        })
        .collect()
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
    // Landlock scopes (defence in depth; the cgroup programs are the control): created
    // here, applied in the child before it gives up root.
    let ruleset = landlock_ruleset(bottle)?;
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
    if opts.trust_env {
        // Written now, from the CA the running gateway uses, so the command never finds a
        // stale or missing bundle.
        let files = crate::ca::publish(&config.state_dir)
            .context("--trust-env: the gateway's CA is not there yet (start the gateway, or `ca init`)")?;
        cmd.envs(trust_environment(&files));
    }
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
            // Needs CAP_SYS_ADMIN or no_new_privs: still root here, before any setuid.
            if let Some(fd) = &ruleset {
                landlock::restrict_self(fd.as_fd())?;
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

/// The Landlock ruleset the command is confined with, when the kernel has Landlock ABI 6
/// (Linux 6.12): no file system or network rule, only scopes: the command cannot connect
/// to abstract unix sockets created outside it (unless the bottle lists an abstract name
/// in `unix_sockets:`) nor signal processes outside it. Without ABI 6 it says so and goes
/// on: the bottle's cgroup programs police unix sockets anyway.
fn landlock_ruleset(bottle: &config::Bottle) -> anyhow::Result<Option<std::os::fd::OwnedFd>> {
    let abi = landlock::abi();
    if abi < 6 {
        tracing::warn!(
            abi,
            "Landlock ABI 6 (Linux 6.12) unavailable: the command is not scoped against abstract unix sockets and \
             signals outside it (the bottle's cgroup programs still police its unix sockets)"
        );
        return Ok(None);
    }
    let lists_abstract = match &bottle.unix_sockets {
        config::UnixSockets::Policed(rules) => rules.iter().any(|r| matches!(r, config::UnixRule::Abstract(_))),
        config::UnixSockets::Unpoliced => false,
    };
    let mut scoped = landlock::SCOPE_SIGNAL;
    if !lists_abstract {
        scoped |= landlock::SCOPE_ABSTRACT_UNIX_SOCKET;
    }
    Ok(Some(landlock::create_ruleset(scoped).context("landlock_create_ruleset")?))
}

/// The three Landlock system calls, for scopes only.
mod landlock {
    use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

    pub const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
    pub const SCOPE_SIGNAL: u64 = 1 << 1;
    const CREATE_RULESET_VERSION: u32 = 1 << 0;

    #[repr(C)]
    struct RulesetAttr {
        handled_access_fs: u64,
        handled_access_net: u64,
        scoped: u64,
    }

    /// The kernel's Landlock ABI version; 0 or less without Landlock.
    pub fn abi() -> i64 {
        // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns a number.
        unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<RulesetAttr>(),
                0usize,
                CREATE_RULESET_VERSION,
            )
        }
    }

    pub fn create_ruleset(scoped: u64) -> std::io::Result<OwnedFd> {
        let attr = RulesetAttr { handled_access_fs: 0, handled_access_net: 0, scoped };
        // SAFETY: a valid attribute of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &attr as *const RulesetAttr,
                std::mem::size_of::<RulesetAttr>(),
                0u32,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Confines the calling thread (and what it execs) to the ruleset.
    pub fn restrict_self(fd: BorrowedFd<'_>) -> std::io::Result<()> {
        // SAFETY: landlock_restrict_self with a ruleset descriptor and no flags.
        if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_variables_that_replace_the_roots_get_the_bundle_and_node_gets_the_ca() {
        let files = crate::ca::TrustFiles::in_state_dir(std::path::Path::new("/state"));
        let env: std::collections::HashMap<_, _> = trust_environment(&files).into_iter().collect();
        assert_eq!(env["SSL_CERT_FILE"], files.bundle);
        assert_eq!(env["REQUESTS_CA_BUNDLE"], files.bundle);
        assert_eq!(env["GIT_SSL_CAINFO"], files.bundle);
        assert_eq!(env["NODE_EXTRA_CA_CERTS"], files.ca);
        assert_eq!(env.len(), TRUST_VARIABLES.len(), "no variable twice");
    }
}
