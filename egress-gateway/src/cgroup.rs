//! cgroup v2: find the hierarchy and place bottles in it.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context;

use crate::config;

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
