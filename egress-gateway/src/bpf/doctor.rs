//! `egress-gateway doctor`: what this machine gives the gateway, and what to do about
//! what is missing.
use std::process::ExitCode;

use crate::{bpf, cgroup, config};

/// The oldest kernel with cgroup bpf_link (5.7) and getpeername hooks (5.8).
const MIN_KERNEL: (u32, u32) = (5, 8);

pub fn run(config: &config::Config) -> ExitCode {
    let mut failed = false;
    let mut report = |ok: bool, what: &str, detail: String| {
        println!("[{}] {what}: {detail}", if ok { " ok " } else { "FAIL" });
        failed |= !ok;
    };

    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let version = parse_kernel(&release);
    report(
        version.is_some_and(|v| v >= MIN_KERNEL),
        "kernel",
        format!("{release} (need >= {}.{} for cgroup bpf links and getpeername hooks)", MIN_KERNEL.0, MIN_KERNEL.1),
    );
    report(
        std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        "BTF",
        "/sys/kernel/btf/vmlinux (needed for socket storage maps)".into(),
    );
    // Capabilities, not the uid: root in a user namespace or a unit with a bounded set may
    // lack them, and a non-root service may be given them.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    match effective_capabilities(&status) {
        Some(caps) => {
            let missing: Vec<&str> =
                REQUIRED_CAPS.iter().filter(|(bit, _)| caps & (1 << bit) == 0).map(|(_, name)| *name).collect();
            report(
                missing.is_empty(),
                "capabilities",
                if missing.is_empty() {
                    "effective CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN".into()
                } else {
                    format!("missing {} (run as root, or grant them to the service)", missing.join(", "))
                },
            )
        }
        None => report(false, "capabilities", "cannot read CapEff from /proc/self/status".into()),
    }
    match cgroup::find_cgroup2_mount() {
        Some(p) => report(true, "cgroup v2", format!("mounted at {}", p.display())),
        None => report(
            config.cgroup_root.is_some(),
            "cgroup v2",
            "not mounted; `run` mounts a private hierarchy at /run/egress-gateway/cgroup2".into(),
        ),
    }
    let bpffs = bpf::is_bpffs(std::path::Path::new("/sys/fs/bpf"));
    report(
        true,
        "bpffs",
        if bpffs {
            "mounted at /sys/fs/bpf".into()
        } else {
            "not mounted at /sys/fs/bpf; `run` mounts it (mount -t bpf bpf /sys/fs/bpf)".into()
        },
    );
    // A same-uid process outside the bottle can be traced (and made to connect anywhere)
    // unless Yama restricts ptrace; `exec` also gives the command a PID namespace.
    let yama = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok().map(|s| s.trim().to_string());
    match yama.as_deref() {
        Some("0") | None => println!(
            "[warn] ptrace: kernel.yama.ptrace_scope is {}: a bottle process can trace same-uid processes outside \
             the bottle that it can see; run agents under their own uid (`exec --user`), or set it to 1 or more",
            yama.as_deref().map_or("absent (no Yama)".to_string(), |v| v.to_string())
        ),
        Some(v) => println!("[ ok ] ptrace: kernel.yama.ptrace_scope is {v}"),
    }
    // Unix sockets are policed by cgroup/connect_unix and sendmsg_unix programs: a bottle
    // that does not opt out (`unix_sockets: unpoliced`) cannot be attached without them.
    let policed: Vec<&str> = config
        .bottles
        .iter()
        .filter(|b| matches!(b.unix_sockets, config::UnixSockets::Policed(_)))
        .map(|b| b.name.as_str())
        .collect();
    match bpf::unix::hooks_available() {
        Ok(()) => report(true, "unix sockets", "cgroup/connect_unix and cgroup/sendmsg_unix programs load".into()),
        Err(why) if policed.is_empty() => println!(
            "[warn] unix sockets: cgroup/connect_unix programs do not load ({why}); every bottle here is \
             `unix_sockets: unpoliced`, so their unix sockets reach the host's"
        ),
        Err(why) => report(
            false,
            "unix sockets",
            format!(
                "cgroup/connect_unix programs do not load ({why}): need Linux >= 6.7 and CAP_PERFMON; bottles {} \
                 cannot be attached unless they set `unix_sockets: unpoliced`",
                policed.join(", ")
            ),
        ),
    }
    let layout = bpf::PinLayout::new(config);
    for b in &config.bottles {
        let attached = layout.bottle_dir(&b.name).join("egress_connect4").exists();
        println!("[info] bottle {}: {}", b.name, if attached { "attached (pinned)" } else { "not attached" });
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// What loading, attaching and pinning the programs and serving bottles needs: bpf(2)
/// (CAP_BPF), programs that read kernel memory (CAP_PERFMON), cgroup attachment and
/// socket marks (CAP_NET_ADMIN), mounts and namespaces (CAP_SYS_ADMIN).
const REQUIRED_CAPS: &[(u32, &str)] =
    &[(39, "CAP_BPF"), (38, "CAP_PERFMON"), (12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN")];

/// The effective set from `/proc/self/status` (`CapEff:\t<hex>`).
fn effective_capabilities(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn parse_kernel(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_kernel_release() {
        assert_eq!(super::parse_kernel("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(super::parse_kernel("5.4.0"), Some((5, 4)));
        assert_eq!(super::parse_kernel("x"), None);
    }

    #[test]
    fn reads_the_effective_capability_set() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n";
        let caps = super::effective_capabilities(status).unwrap();
        assert!(super::REQUIRED_CAPS.iter().all(|(bit, _)| caps & (1 << bit) != 0));
        let without_bpf = super::effective_capabilities("CapEff:\t0000007fffffffff").unwrap();
        assert_eq!(without_bpf & (1 << 39), 0);
        assert_eq!(super::effective_capabilities("Name: x"), None);
    }
}
