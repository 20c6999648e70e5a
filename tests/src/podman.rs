//! Containers for the end-to-end tests: Podman with runc, in a cgroup and a network
//! namespace the test chose, from a local image built here (never pulled).
//!
//! The image is a busybox-static rootfs imported once per machine; the host's /usr, /lib,
//! /lib64 and /etc/ssl are bind-mounted read-only so the real curl, Python and git run
//! inside. Every container is named, and removed by name when its guard drops. Anything
//! missing (podman, runc, busybox-static) or a runtime that cannot start fails the test
//! with the reason: these tests never skip.
//!
//! Flags verified on the hybrid-cgroup Debian 12 hosts these tests run on
//! (docs/containers.md): `--runtime runc` (crun refuses hybrid hosts), `--cgroup-manager
//! cgroupfs` with an absolute `--cgroup-parent` (a relative one is resolved against the
//! runtime's own cgroup, which differs per v1 controller), and explicit `nofile`/`nproc`
//! ulimits (Podman's defaults exceed the host's hard limits, so runc's setrlimit fails).
use std::{
    fs,
    os::unix::{fs::symlink, io::AsRawFd},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

use crate::cgroup2_mount;

/// The test image: busybox-static and nothing else.
pub const IMAGE: &str = "localhost/egress-e2e-base:1";

/// Where the image build lock lives (shared by every test process on the machine).
const IMAGE_LOCK: &str = "egress-e2e-podman-image.lock";

/// Read-only host directories that make the host's clients usable inside.
const HOST_RO_DIRS: [&str; 4] = ["/usr", "/lib", "/lib64", "/etc/ssl"];

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One container to run.
pub struct Spec<'a> {
    /// The cgroup the container goes under, relative to the cgroup v2 mount (e.g.
    /// `egress-e2e/foo`); the container gets `<this>/libpod-<id>` below it.
    pub cgroup_parent: &'a str,
    /// The network namespace file to join (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub netns: &'a Path,
    /// Extra environment variables.
    pub env: &'a [(&'a str, &'a str)],
    /// Extra read-only bind mounts: (host path, container path).
    pub ro_mounts: &'a [(&'a Path, &'a str)],
    /// The command; the image's default (`sh`) when empty.
    pub argv: &'a [&'a str],
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec { cgroup_parent: "", netns: Path::new(""), env: &[], ro_mounts: &[], argv: &[] }
    }
}

/// Fails the test unless podman and runc can be run.
pub fn require_podman() {
    for (tool, args) in [("podman", ["--version"]), ("runc", ["--version"])] {
        match Command::new(tool).args(args).stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("`{tool} --version` failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr)),
            Err(e) => panic!(
                "{tool} cannot be run ({e}): install podman, runc and busybox-static \
                 (`cargo xtask test` does, with apt-get)"
            ),
        }
    }
}

/// Makes sure [`IMAGE`] exists, building it at most once per machine; returns its name.
pub fn ensure_image() -> &'static str {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        require_podman();
        // Concurrent test processes (cargo runs test binaries in parallel) would each
        // import the image; an exclusive lock makes the second one find it instead.
        let lock_path = std::env::temp_dir().join(IMAGE_LOCK);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", lock_path.display()));
        // SAFETY: flock(2) on a descriptor we own; released when `lock` is closed.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock {}: {}", lock_path.display(), std::io::Error::last_os_error());
        if !image_exists() {
            build_image();
        }
        drop(lock);
    });
    IMAGE
}

fn image_exists() -> bool {
    Command::new("podman").args(["image", "exists", IMAGE]).stdin(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// `podman import` of a rootfs holding only a static busybox and its applet links.
fn build_image() {
    let busybox = Path::new("/bin/busybox");
    let elf = fs::read(busybox).unwrap_or_else(|e| {
        panic!("{} unreadable ({e}): install busybox-static (`cargo xtask test` does)", busybox.display())
    });
    // A dynamic busybox would need the host's loader in the image; the image must work
    // on its own (the host mounts are for the clients, not for the shell).
    assert!(!elf_has_interpreter(&elf), "{} is dynamically linked: install busybox-static", busybox.display());
    let dir = std::env::temp_dir().join(format!("egress-e2e-rootfs-{}", std::process::id()));
    let _cleanup = RemoveDir(dir.clone());
    let root = dir.join("rootfs");
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc/ssl", "root", "run", "usr", "lib", "lib64", "var/tmp"] {
        fs::create_dir_all(root.join(d)).expect("create rootfs dir");
    }
    fs::write(root.join("bin/busybox"), &elf).expect("copy busybox");
    set_mode(&root.join("bin/busybox"), 0o755);
    set_mode(&root.join("tmp"), 0o1777);
    set_mode(&root.join("var/tmp"), 0o1777);
    let list = Command::new(busybox).arg("--list").output().expect("busybox --list");
    assert!(list.status.success(), "busybox --list failed");
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| !a.is_empty() && *a != "busybox") {
        symlink("busybox", root.join("bin").join(applet)).expect("applet link");
    }
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
    let tarball = dir.join("rootfs.tar");
    let tar = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&root)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .output()
        .expect("run tar");
    assert!(tar.status.success(), "tar failed: {}", String::from_utf8_lossy(&tar.stderr));
    let import = Command::new("podman")
        .args(["import", "--quiet", "--change", "CMD [\"/bin/sh\"]", "--change"])
        .arg("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .arg(&tarball)
        .arg(IMAGE)
        .stdin(Stdio::null())
        .output()
        .expect("run podman import");
    assert!(import.status.success(), "podman import failed: {}", String::from_utf8_lossy(&import.stderr));
}

/// Whether an ELF64 file has a PT_INTERP program header (is dynamically linked).
fn elf_has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u64_at = |o: usize| elf.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
    let u32_at = |o: usize| elf.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    assert!(elf.starts_with(b"\x7fELF\x02\x01"), "busybox is not a little-endian ELF64 file");
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        panic!("busybox has a truncated ELF header");
    };
    (0..phnum).any(|i| u32_at(phoff + i * phentsize) == Some(PT_INTERP))
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A container started by [`Container::start`] or [`run`]; dropping it removes the
/// container (`podman rm -f`, by name) and the cgroup v1 directories runc made for it.
pub struct Container {
    pub name: String,
    /// cgroup v1 directories that did not exist before this container, deepest first:
    /// on a hybrid host runc creates the parent in every v1 controller and Podman puts
    /// conmon in `<parent>/conmon` there; nobody else removes them.
    v1_dirs: Vec<PathBuf>,
}

impl Container {
    /// Starts the container detached (`podman run -d`); panics if it does not start.
    pub fn start(spec: &Spec<'_>) -> Container {
        assert!(!spec.netns.as_os_str().is_empty(), "a container needs a network namespace file");
        let container = Container::prepare(spec);
        let out = container.podman_run(spec, true);
        fail_if_podman_error(&out, "podman run -d");
        assert!(
            out.status.success(),
            "podman run -d {} failed ({}): {}",
            container.name,
            out.status,
            text(&out.stderr)
        );
        container
    }

    fn prepare(spec: &Spec<'_>) -> Container {
        ensure_image();
        let leaf = spec.cgroup_parent.trim_matches('/');
        assert!(!leaf.is_empty(), "a container needs a cgroup parent below the cgroup v2 root");
        let name = format!("egress-e2e-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let v1_dirs = v1_roots()
            .into_iter()
            .flat_map(|root| {
                // The parent, each ancestor below the root, and conmon's directory.
                let mut dirs: Vec<PathBuf> = Path::new(leaf).ancestors().map(|a| root.join(a)).collect();
                dirs.pop(); // the root itself (`ancestors` ends with "")
                dirs.insert(0, root.join(leaf).join("conmon"));
                dirs
            })
            .filter(|d| !d.exists())
            .collect();
        Container { name, v1_dirs }
    }

    fn podman_run(&self, spec: &Spec<'_>, detach: bool) -> Output {
        let mut cmd = Command::new("podman");
        cmd.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs", "run", "--pull", "never", "--name"])
            .arg(&self.name)
            .arg("--cgroup-parent")
            .arg(format!("/{}", spec.cgroup_parent.trim_matches('/')))
            .arg("--network")
            .arg(format!("ns:{}", spec.netns.display()))
            .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]);
        if detach {
            cmd.arg("-d");
        }
        for dir in HOST_RO_DIRS.iter().filter(|d| Path::new(d).exists()) {
            cmd.arg("-v").arg(format!("{dir}:{dir}:ro"));
        }
        for (host, inside) in spec.ro_mounts {
            cmd.arg("-v").arg(format!("{}:{inside}:ro", host.display()));
        }
        for (k, v) in spec.env {
            cmd.arg("-e").arg(format!("{k}={v}"));
        }
        cmd.arg(IMAGE).args(spec.argv).stdin(Stdio::null());
        cmd.output().expect("run podman")
    }

    /// The container's init process as the host sees it.
    pub fn pid(&self) -> u32 {
        let out = self.podman(&["inspect", "--format", "{{.State.Pid}}", &self.name]);
        assert!(out.status.success(), "podman inspect {}: {}", self.name, text(&out.stderr));
        let pid = text(&out.stdout).trim().parse().expect("pid from podman inspect");
        assert_ne!(pid, 0, "container {} is not running; its log:\n{}", self.name, self.logs());
        pid
    }

    /// Runs a command in the running container (`podman exec`).
    pub fn exec(&self, argv: &[&str]) -> Output {
        let mut args = vec!["exec", self.name.as_str()];
        args.extend_from_slice(argv);
        let out = self.podman(&args);
        fail_if_podman_error(&out, "podman exec");
        out
    }

    /// What the container wrote so far (stdout and stderr).
    pub fn logs(&self) -> String {
        let out = self.podman(&["logs", &self.name]);
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    }

    fn podman(&self, args: &[&str]) -> Output {
        Command::new("podman").args(args).stdin(Stdio::null()).output().expect("run podman")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // `-t 0`: the test is over, and PID 1 in a container ignores SIGTERM by default,
        // which would cost Podman's 10-second stop timeout.
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // rmdir refuses a cgroup that is not empty (EBUSY), so a directory another
        // container still uses stays. Our conmon can outlive `podman rm` by a moment,
        // hence the short retry on its directory (and only there: a shared parent may be
        // busy for the whole of another test).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        for dir in &self.v1_dirs {
            while let Err(e) = fs::remove_dir(dir) {
                let conmon = dir.file_name().is_some_and(|n| n == "conmon");
                if !conmon || e.raw_os_error() != Some(libc::EBUSY) || std::time::Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// Runs a container to completion and returns its output (the container's own exit
/// status; Podman's failures panic). The container is removed before this returns.
pub fn run(spec: &Spec<'_>) -> Output {
    assert!(!spec.netns.as_os_str().is_empty(), "a container needs a network namespace file");
    let container = Container::prepare(spec);
    let out = container.podman_run(spec, false);
    fail_if_podman_error(&out, "podman run");
    out
}

/// Podman exits 125 for its own errors and 126/127 when the runtime cannot start the
/// command; it prefixes its messages with `Error:`. Those are broken machines, not test
/// results.
fn fail_if_podman_error(out: &Output, what: &str) {
    let code = out.status.code();
    let stderr = text(&out.stderr);
    if code == Some(125) || (matches!(code, Some(126 | 127)) && stderr.contains("Error:")) {
        panic!("{what} failed ({}): {stderr}", out.status);
    }
}

/// Every cgroup v1 hierarchy mounted (for a hybrid host's leftovers).
fn v1_roots() -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            if post.split_whitespace().next()? != "cgroup" {
                return None;
            }
            Some(PathBuf::from(pre.split_whitespace().nth(4)?))
        })
        .collect()
}

/// The cgroup v2 path of a process, relative to the v2 root (`0::` line, no leading `/`).
pub fn cgroup_of(pid: u32) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/PID/cgroup");
    let line = text.lines().find_map(|l| l.strip_prefix("0::")).expect("no cgroup v2 line in /proc/PID/cgroup");
    line.trim_start_matches('/').to_string()
}

/// A network namespace with only `lo` up (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        let netns = Netns { name: name.to_string() };
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        netns
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A command that runs inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).stderr(Stdio::null()).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().expect("run ip (iproute2)");
    assert!(out.status.success(), "ip {} failed: {}", args.join(" "), text(&out.stderr));
}

/// A cgroup v2 directory (relative to the mount) created for a test, removed on drop
/// after killing whatever is left in it.
pub struct Cgroup {
    pub rel: String,
}

impl Cgroup {
    pub fn new(rel: &str) -> Cgroup {
        let cg = Cgroup { rel: rel.trim_matches('/').to_string() };
        fs::create_dir_all(cg.path()).unwrap_or_else(|e| panic!("create cgroup {}: {e}", cg.path().display()));
        cg
    }

    pub fn path(&self) -> PathBuf {
        cgroup2_mount().expect("cgroup v2 mount").join(&self.rel)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let path = self.path();
        // Depth first: containers' own cgroups are removed by Podman, but a failed
        // test may leave one behind.
        let _ = remove_cgroup_tree(&path);
        // The shared parent, if this was its last child (EBUSY otherwise).
        if let Some(parent) = Path::new(&self.rel).parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = fs::remove_dir(cgroup2_mount().expect("cgroup v2 mount").join(parent));
        }
    }
}

fn remove_cgroup_tree(path: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    if let Ok(procs) = fs::read_to_string(path.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) on processes inside a cgroup this test created.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(50)),
            Err(e) => return Err(e),
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
