//! cgroup v2: find the hierarchy, place bottles in it, and start commands inside a bottle
//! so that no socket of theirs is ever created outside it.
use std::{
    fs,
    io::Write as _,
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::{bpf, config};

/// Where a private cgroup v2 hierarchy is mounted when the machine has none.
const PRIVATE_CGROUP2: &str = "/run/egress-gateway/cgroup2";

/// The mount point of the cgroup v2 hierarchy, from /proc/self/mountinfo.
pub fn find_cgroup2_mount() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_cgroup2_mount(&text)
}

/// Pure part of `find_cgroup2_mount`: the first mount whose type is `cgroup2`.
fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let fstype = post.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = pre.split_whitespace().nth(4)?;
        // mountinfo escapes spaces and the like as octal (\040).
        Some(PathBuf::from(mount_point.replace("\\040", " ")))
    })
}

/// The cgroup v2 root: the configured one, the mounted one, or a private mount.
pub fn root(config: &config::Config) -> anyhow::Result<PathBuf> {
    if let Some(root) = &config.cgroup_root {
        return Ok(root.clone());
    }
    if let Some(found) = find_cgroup2_mount() {
        return Ok(found);
    }
    let private = PathBuf::from(PRIVATE_CGROUP2);
    fs::create_dir_all(&private).with_context(|| format!("creating {}", private.display()))?;
    nix::mount::mount(Some("none"), &private, Some("cgroup2"), nix::mount::MsFlags::empty(), None::<&str>)
        .with_context(|| format!("no cgroup v2 mounted, and mounting one at {} failed", private.display()))?;
    tracing::info!(path = %private.display(), "mounted a private cgroup v2 hierarchy");
    Ok(private)
}

/// Absolute path of a bottle's cgroup directory.
pub fn bottle_path(config: &config::Config, bottle: &config::Bottle) -> anyhow::Result<PathBuf> {
    if bottle.cgroup.is_absolute() { Ok(bottle.cgroup.clone()) } else { Ok(root(config)?.join(&bottle.cgroup)) }
}

/// Pids in a cgroup (empty when it does not exist).
pub fn processes(cgroup_dir: &Path) -> Vec<u32> {
    fs::read_to_string(cgroup_dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Runs `command` inside `bottle_name`'s cgroup and returns its exit status (128 + signal
/// when killed). Refuses when the bottle's programs are not attached: an agent must never
/// start with direct egress.
pub fn exec_in_bottle(config: &config::Config, bottle_name: &str, command: &[String]) -> anyhow::Result<u8> {
    let bottle =
        config.bottle(bottle_name).with_context(|| format!("no bottle named {bottle_name:?} in the configuration"))?;
    let pins = bpf::PinLayout::new(config).bottle_dir(&bottle.name);
    if !pins.join("egress_connect4").exists() || !pins.join("egress_backstop").exists() {
        bail!(
            "bottle {} is not attached (no pinned programs in {}): start `egress-gateway run` with this \
             configuration first",
            bottle.name,
            pins.display()
        );
    }
    let dir = bottle_path(config, bottle)?;
    fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
    let procs = dir.join("cgroup.procs");
    let (program, args) = command.split_first().context("no command given")?;

    // Opened before the fork: the child only has to enter it.
    let netns = crate::netns::open_for_join(bottle)?;

    let mut cmd = Command::new(program);
    cmd.args(args);
    let procs_for_child = procs.clone();
    // SAFETY: between fork and exec the child only opens and writes a file, which is
    // async-signal-safe enough for this purpose (no locks held by other threads are taken:
    // this process is single-threaded here).
    unsafe {
        cmd.pre_exec(move || {
            // "0" moves the writing process itself.
            let mut f = fs::OpenOptions::new().write(true).open(&procs_for_child)?;
            f.write_all(b"0")?;
            // A bottle with its own network namespace: the command runs in it too, so
            // its only way out is the gateway's listeners there.
            if let Some(ns) = &netns {
                crate::netns::join(std::os::fd::AsFd::as_fd(ns))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_among_v1_mounts() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(parse_cgroup2_mount(text), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(parse_cgroup2_mount("1 2 0:1 / /x rw - tmpfs t rw\n"), None);
    }
}
