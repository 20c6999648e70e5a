//! Harness for the privileged end-to-end tests: a gateway process on its own ports, a
//! bottle (cgroup + bpffs pins) named after the test, local upstreams on 127.0.0.x, and a
//! guard that removes all of it, even when the test fails.
//!
//! Every test builds a [`TestEnv`] first; its `Drop` kills what the test started (by pid),
//! removes the pins (which detaches the programs) and the cgroup.
pub mod https;
pub mod podman;
pub mod upstream;
pub mod world;

use std::{
    fs,
    io::Read,
    net::{Ipv4Addr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

/// Default time to wait for a gateway to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway binary under test: `EGRESS_GATEWAY_BIN`, or the one cargo built next to
/// this test executable.
pub fn gateway_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("EGRESS_GATEWAY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/egress-gateway
    let bin = exe.parent().and_then(Path::parent).map(|d| d.join("egress-gateway"));
    match bin {
        Some(b) if b.exists() => b,
        _ => panic!(
            "egress-gateway binary not found next to {}: build it first (`cargo xtask test` does) \
             or set EGRESS_GATEWAY_BIN",
            exe.display()
        ),
    }
}

/// Fails the test (never skips it) when the machine cannot run privileged tests.
pub fn require_privileges() {
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "end-to-end tests need root (cgroup v2, bpffs, CAP_BPF): run them as root");
    assert!(
        Path::new("/sys/kernel/btf/vmlinux").exists(),
        "the kernel has no BTF (/sys/kernel/btf/vmlinux): the eBPF programs need it"
    );
    assert!(
        cgroup2_mount().is_some(),
        "no cgroup v2 hierarchy is mounted: mount one (mount -t cgroup2 none /sys/fs/cgroup/unified)"
    );
}

/// The cgroup v2 mount point from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(pre.split_whitespace().nth(4)?))
    })
}

/// A free TCP port on 127.0.0.1 (and free for UDP too, for the DNS listener).
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port");
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One test's world: directory, config, bottle, gateway process.
pub struct TestEnv {
    pub name: String,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub listen_port: u16,
    pub dns_port: u16,
    pub bpffs_dir: PathBuf,
    pub cgroup_rel: String,
    /// The bottle's name: `e2e`, or unique per test when bottles live in their own
    /// network namespaces (`/run/netns/egress-<name>` is machine-wide).
    bottle_name: String,
    /// Further bottles: (name, cgroup relative to the cgroup2 mount).
    more_bottles: Vec<(String, String)>,
    /// Names of the bottles that have a namespace of their own (removed on drop).
    netns_bottles: Vec<String>,
    gateway: Option<Child>,
    /// A resolv.conf the gateway sees instead of the machine's (`EnvSpec::gateway_nameserver`).
    gateway_resolv_conf: Option<PathBuf>,
    log_path: PathBuf,
    log_generation: u32,
    children: Vec<Child>,
}

/// What a test puts in its gateway.yaml and routes file.
#[derive(Default)]
pub struct EnvSpec<'a> {
    /// Lines under `hosts:`, e.g. `("upstream.test", "127.0.0.2")`.
    pub hosts: &'a [(&'a str, &'a str)],
    /// The routes file's contents.
    pub routes: &'a str,
    /// Extra top-level gateway.yaml lines (already indented for the top level).
    pub extra_config: &'a str,
    /// Extra lines in the bottle entry (indented by four spaces).
    pub extra_bottle: &'a str,
    /// The first bottle gets `netns: new` (a namespace holding only `lo`).
    pub netns: bool,
    /// Further bottles, each with its own cgroup and routes file.
    pub more_bottles: &'a [MoreBottle<'a>],
    /// The gateway runs in a mount namespace of its own whose /etc/resolv.conf names only
    /// this (loopback) nameserver, so a test can see every name the gateway resolves.
    pub gateway_nameserver: Option<&'a str>,
}

/// A further bottle of a test: `<first bottle's name>-<suffix>`, routes in
/// `routes-<suffix>.yaml`.
#[derive(Clone, Copy, Default)]
pub struct MoreBottle<'a> {
    pub suffix: &'a str,
    pub routes: &'a str,
    /// `netns: new` for this bottle.
    pub netns: bool,
    /// Extra lines in its entry (indented by four spaces).
    pub extra: &'a str,
}

impl TestEnv {
    /// Creates the directory and config; does not start the gateway.
    pub fn new(test: &str, spec: EnvSpec<'_>) -> TestEnv {
        require_privileges();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let unique = format!("{test}-{}-{seq}", std::process::id());
        let dir = std::env::temp_dir().join(format!("egress-e2e-{unique}"));
        let any_netns = spec.netns || spec.more_bottles.iter().any(|b| b.netns);
        let bottle_name = if any_netns { format!("e2e{}x{seq}", std::process::id()) } else { "e2e".to_string() };
        let more_bottles: Vec<(String, String)> = spec
            .more_bottles
            .iter()
            .map(|b| (format!("{bottle_name}-{}", b.suffix), format!("egress-e2e/{unique}-{}", b.suffix)))
            .collect();
        let netns_bottles = std::iter::once((&bottle_name, spec.netns))
            .chain(more_bottles.iter().map(|(n, _)| n).zip(spec.more_bottles.iter().map(|b| b.netns)))
            .filter(|(_, ns)| *ns)
            .map(|(n, _)| n.clone())
            .collect();
        // Each probe frees its port before returning, so two may return the same one.
        let listen_port = free_port();
        let dns_port = std::iter::repeat_with(free_port).find(|&p| p != listen_port).unwrap();
        let env = TestEnv {
            bottle_name,
            more_bottles,
            netns_bottles,
            name: test.to_string(),
            config_path: dir.join("gateway.yaml"),
            listen_port,
            dns_port,
            bpffs_dir: PathBuf::from(format!("/sys/fs/bpf/egress-e2e-{unique}")),
            cgroup_rel: format!("egress-e2e/{unique}"),
            log_path: dir.join("gateway.log"),
            log_generation: 0,
            gateway: None,
            gateway_resolv_conf: spec.gateway_nameserver.map(|_| dir.join("gateway-resolv.conf")),
            children: Vec::new(),
            dir,
        };
        // The guard exists from here on: anything below that fails is cleaned up.
        fs::create_dir_all(&env.dir).expect("create test dir");
        let mut hosts = String::new();
        for (name, addr) in spec.hosts {
            hosts.push_str(&format!("  {name}: {addr}\n"));
        }
        let netns_line = |on: bool| if on { "    netns: new\n" } else { "" };
        let mut more = String::new();
        for ((name, cgroup), b) in env.more_bottles.iter().zip(spec.more_bottles) {
            more.push_str(&format!(
                "  - name: {name}\n    cgroup: {cgroup}\n    routes: routes-{suffix}.yaml\n{ns}{extra}",
                suffix = b.suffix,
                ns = netns_line(b.netns),
                extra = b.extra,
            ));
            fs::write(env.dir.join(format!("routes-{}.yaml", b.suffix)), b.routes).expect("write routes");
        }
        let netns_line = netns_line(spec.netns);
        // The gateway's resolver never asks the machine's name servers (they may be real
        // addresses): a loopback port where nothing answers, unless the test sets its own.
        // A test's own counting name server (`gateway_nameserver`) is the only one.
        let resolvers = match spec.gateway_nameserver {
            _ if spec.extra_config.contains("resolvers:") => String::new(),
            Some(ns) => format!("resolvers: [\"{ns}:53\"]\n"),
            None => "resolvers: [127.0.0.1:9]\n".to_string(),
        };
        let config = format!(
            "listen: 127.0.0.1:{listen}\n\
             dns_listen: 127.0.0.1:{dns}\n\
             state_dir: {dir}/state\n\
             bpffs_dir: {bpffs}\n\
             admin_socket: {dir}/admin.sock\n\
             hosts:\n{hosts}\
             {resolvers}\
             {extra_config}\n\
             bottles:\n  \
               - name: {name}\n    \
                 cgroup: {cgroup}\n    \
                 routes: routes.yaml\n\
             {netns_line}\
             {extra_bottle}\n\
             {more}",
            listen = env.listen_port,
            dns = env.dns_port,
            dir = env.dir.display(),
            bpffs = env.bpffs_dir.display(),
            extra_config = spec.extra_config,
            name = env.bottle(),
            cgroup = env.cgroup_rel,
            extra_bottle = spec.extra_bottle,
        );
        fs::write(&env.config_path, config).expect("write gateway.yaml");
        // What the bottle's resolver sees: the test's names, and a loopback nameserver (the
        // machine's own may be a real address, which tests must never send to).
        let mut etc_hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (name, addr) in spec.hosts {
            etc_hosts.push_str(&format!("{addr} {name}\n"));
        }
        fs::write(env.dir.join("hosts"), etc_hosts).expect("write hosts");
        fs::write(env.dir.join("resolv.conf"), "nameserver 127.0.0.53\n").expect("write resolv.conf");
        fs::write(env.dir.join("routes.yaml"), spec.routes).expect("write routes.yaml");
        if let (Some(path), Some(ns)) = (&env.gateway_resolv_conf, spec.gateway_nameserver) {
            fs::write(path, format!("nameserver {ns}\noptions timeout:1 attempts:1\n")).expect("write resolv.conf");
        }
        env
    }

    /// The bottle's name (the test's first bottle).
    pub fn bottle(&self) -> &str {
        &self.bottle_name
    }

    /// The name of a bottle from `EnvSpec::more_bottles`, by its suffix.
    pub fn more_bottle(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.bottle_name)
    }

    /// The namespace file of a bottle of a `netns: true` test.
    pub fn netns_path(&self, bottle: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/egress-{bottle}"))
    }

    pub fn cgroup_dir(&self) -> PathBuf {
        cgroup2_mount().expect("cgroup2").join(&self.cgroup_rel)
    }

    pub fn write_routes(&self, text: &str) {
        fs::write(self.dir.join("routes.yaml"), text).expect("write routes.yaml");
    }

    /// Starts `egress-gateway run` and waits until it logs `ready`.
    pub fn start_gateway(&mut self) {
        self.start_gateway_with_env(&[]);
    }

    pub fn start_gateway_with_env(&mut self, vars: &[(&str, &str)]) {
        assert!(self.gateway.is_none(), "gateway already running");
        self.spawn_gateway(vars, &[]);
    }

    /// Starts a gateway with `fds` passed as systemd's socket activation does (from
    /// descriptor 3, `LISTEN_FDS`, `LISTEN_PID` its pid), and hands back the gateway that
    /// ran until now (it may still be draining): the caller waits for it.
    pub fn start_gateway_passing(&mut self, fds: &[std::os::fd::RawFd]) -> Option<Child> {
        let previous = self.gateway.take();
        self.spawn_gateway(&[], fds);
        previous
    }

    fn spawn_gateway(&mut self, vars: &[(&str, &str)], fds: &[std::os::fd::RawFd]) {
        self.log_generation += 1;
        let log = fs::File::create(self.current_log()).expect("create gateway log");
        let mut command = match &self.gateway_resolv_conf {
            Some(_) if !fds.is_empty() => panic!("passing descriptors to a gateway with its own resolv.conf"),
            // The shell's pid is the gateway's (it execs it): that is the LISTEN_PID.
            None if !fds.is_empty() => {
                use std::os::unix::process::CommandExt;
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("export LISTEN_PID=$$ LISTEN_FDS={}; exec \"$0\" \"$@\"", fds.len()))
                    .arg(gateway_bin());
                let fds = fds.to_vec();
                // SAFETY: dup2 and fcntl only, between fork and exec.
                unsafe {
                    c.pre_exec(move || {
                        for (i, fd) in fds.iter().enumerate() {
                            let target = 3 + i as i32;
                            if libc::dup2(*fd, target) < 0 || libc::fcntl(target, libc::F_SETFD, 0) < 0 {
                                return Err(std::io::Error::last_os_error());
                            }
                        }
                        Ok(())
                    });
                }
                c
            }
            // `unshare` execs the shell, which execs the gateway: the pid stays the gateway's.
            Some(resolv) => {
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg("mount --bind \"$1\" /etc/resolv.conf && shift && exec \"$@\"")
                    .arg("sh")
                    .arg(resolv)
                    .arg(gateway_bin());
                c
            }
            None => Command::new(gateway_bin()),
        };
        let child = command
            .args(["run", "--config"])
            .arg(&self.config_path)
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn egress-gateway run");
        self.gateway = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // Only this process's log: an earlier generation's `ready` says nothing.
            let log = fs::read_to_string(self.current_log()).unwrap_or_default();
            if log.contains("\"message\":\"ready\"") {
                return;
            }
            if let Some(status) = self.gateway.as_mut().unwrap().try_wait().unwrap() {
                self.gateway = None;
                panic!("gateway exited with {status} before it was ready; its log:\n{log}");
            }
            assert!(Instant::now() < deadline, "gateway not ready after {READY_TIMEOUT:?}; log:\n{log}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn current_log(&self) -> PathBuf {
        self.log_path.with_extension(format!("{}.log", self.log_generation))
    }

    /// Everything every gateway process of this test wrote so far.
    pub fn gateway_log(&self) -> String {
        let mut all = String::new();
        for g in 1..=self.log_generation {
            let path = self.log_path.with_extension(format!("{g}.log"));
            if let Ok(mut f) = fs::File::open(path) {
                let _ = f.read_to_string(&mut all);
            }
        }
        all
    }

    /// Waits until the gateway log contains `needle` (logs are written asynchronously).
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.gateway_log();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "gateway log never contained {needle:?}; log:\n{log}");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The running gateway's pid.
    pub fn gateway_pid(&self) -> Option<u32> {
        self.gateway.as_ref().map(Child::id)
    }

    /// SIGKILL, as a crash would.
    pub fn kill_gateway(&mut self) {
        if let Some(mut g) = self.gateway.take() {
            let _ = g.kill();
            let _ = g.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop_gateway(&mut self) {
        if let Some(mut g) = self.gateway.take() {
            signal(g.id(), libc::SIGTERM);
            let _ = g.wait();
        }
    }

    pub fn signal_gateway(&self, sig: i32) {
        if let Some(g) = &self.gateway {
            signal(g.id(), sig);
        }
    }

    /// Runs `egress-gateway <args> --config <this test's config>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(gateway_bin())
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .output()
            .expect("run egress-gateway")
    }

    /// Runs a command in the bottle through `egress-gateway exec`.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        self.exec_with_env(cmd, &[])
    }

    /// The command runs in a private mount namespace whose /etc/hosts maps the test's
    /// names and whose /etc/resolv.conf names a loopback server, so no client ever looks
    /// a name up at a real address.
    pub fn exec_with_env(&self, cmd: &[&str], vars: &[(&str, &str)]) -> Output {
        self.exec_command(cmd, vars).output().expect("run egress-gateway exec")
    }

    /// Starts a command in the bottle without waiting for it (stdout and stderr piped).
    pub fn spawn_exec(&self, cmd: &[&str], vars: &[(&str, &str)]) -> Child {
        self.exec_command(cmd, vars)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn egress-gateway exec")
    }

    /// As `exec_with_env`, in another bottle of the test.
    pub fn exec_in(&self, bottle: &str, cmd: &[&str], vars: &[(&str, &str)]) -> Output {
        self.exec_command_in(bottle, cmd, vars).output().expect("run egress-gateway exec")
    }

    /// As `spawn_exec`, in another bottle of the test.
    pub fn spawn_exec_in(&self, bottle: &str, cmd: &[&str], vars: &[(&str, &str)]) -> Child {
        self.exec_command_in(bottle, cmd, vars)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn egress-gateway exec")
    }

    fn exec_command(&self, cmd: &[&str], vars: &[(&str, &str)]) -> Command {
        self.exec_command_in(self.bottle(), cmd, vars)
    }

    fn exec_command_in(&self, bottle: &str, cmd: &[&str], vars: &[(&str, &str)]) -> Command {
        self.exec_command_with(bottle, &["--allow-root"], cmd, vars)
    }

    /// Runs `egress-gateway exec <flags>` in a bottle (no `--allow-root` unless given):
    /// for tests of what `exec` allows.
    pub fn exec_with_flags(&self, bottle: &str, flags: &[&str], cmd: &[&str], vars: &[(&str, &str)]) -> Output {
        self.exec_command_with(bottle, flags, cmd, vars).output().expect("run egress-gateway exec")
    }

    /// The command runs in a private mount namespace (made before `exec`, which drops the
    /// capabilities a mount would need) whose /etc/hosts maps the test's names and whose
    /// /etc/resolv.conf names a loopback server.
    fn exec_command_with(&self, bottle: &str, flags: &[&str], cmd: &[&str], vars: &[(&str, &str)]) -> Command {
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--", "sh", "-c"])
            .arg("mount --bind \"$1\" /etc/hosts && mount --bind \"$2\" /etc/resolv.conf && shift 2 && exec \"$@\"")
            .arg("sh")
            .arg(self.dir.join("hosts"))
            .arg(self.dir.join("resolv.conf"))
            .arg(gateway_bin())
            .args(["exec", "--config"])
            .arg(&self.config_path)
            .args(["--bottle", bottle])
            .args(flags)
            .arg("--")
            .args(cmd)
            .envs(vars.iter().copied())
            .current_dir(&self.dir)
            .stdin(Stdio::null());
        command
    }

    /// Starts a process that joins the bottle's cgroup by itself (no `exec`, so no check
    /// that the bottle is attached): for processes that predate the gateway.
    pub fn spawn_in_cgroup(&mut self, script: &str) -> u32 {
        fs::create_dir_all(self.cgroup_dir()).expect("create cgroup");
        let procs = self.cgroup_dir().join("cgroup.procs");
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {} && exec {script}", procs.display()))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn in cgroup");
        let pid = child.id();
        self.children.push(child);
        // The child moves itself; wait until it is there so the test's next step sees it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !fs::read_to_string(&procs).unwrap_or_default().lines().any(|l| l.trim() == pid.to_string()) {
            assert!(Instant::now() < deadline, "process {pid} never joined {}", procs.display());
            thread::sleep(Duration::from_millis(10));
        }
        pid
    }

    /// Writes the gateway's trust bundle (system roots + the gateway CA, from
    /// `egress-gateway ca export --bundle`) and returns the variables that make common
    /// clients (curl, Python, Node, git, Go) trust it.
    pub fn trust_env(&self) -> Vec<(String, String)> {
        let out = self.cli(&["ca", "export", "--bundle"]);
        assert!(out.status.success(), "ca export --bundle failed: {}", stderr(&out));
        let path = self.dir.join("trust-bundle.pem");
        fs::write(&path, &out.stdout).expect("write trust bundle");
        let path = path.display().to_string();
        ["SSL_CERT_FILE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO"]
            .iter()
            .map(|k| (k.to_string(), path.clone()))
            .collect()
    }

    /// Writes the upstreams' test CA next to the config (for `upstream_ca_files`).
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, contents).expect("write test file");
        path
    }

    /// Writes a file only its owner may read (mode 0600), as credentials files must be.
    pub fn write_private_file(&self, name: &str, contents: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.write_file(name, contents);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
        path
    }

    /// Every file under the test's state directory (CA, queues, databases): with the
    /// log, everything the gateway wrote.
    pub fn state_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = entry.path();
                if p.is_dir() { walk(&p, out) } else { out.push(p) }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.join("state"), &mut out);
        out
    }

    /// Waits for a child started with `spawn_in_cgroup` and returns its output.
    pub fn wait_child(&mut self, pid: u32) -> Output {
        let idx = self.children.iter().position(|c| c.id() == pid).expect("unknown child");
        self.children.remove(idx).wait_with_output().expect("wait child")
    }
}

/// A Python script run inside a bottle: queries each name (A) at 127.0.0.53:53 (any
/// address: the bottle's port 53 goes to the gateway) and prints `name rcode answer`
/// (`-` for no answer, `timeout` for none at all).
pub const DNS_QUERY_PY: &str = r#"
import socket, struct, sys
def query(name):
    q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0)
    for label in name.split('.'):
        q += bytes([len(label)]) + label.encode()
    q += b'\x00' + struct.pack('>HH', 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(q, ('127.0.0.53', 53))
    r = s.recv(512)
    an = struct.unpack('>H', r[6:8])[0]
    return r[3] & 0x0f, '.'.join(str(b) for b in r[-4:]) if an else '-'
for name in sys.argv[1:]:
    try:
        print(name, *query(name))
    except socket.timeout:
        print(name, 'timeout', '-')
"#;

pub const SIGHUP: i32 = libc::SIGHUP;

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid this test started.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.kill_gateway();
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Removing the pinned links detaches the programs; then the maps.
        let _ = remove_bpffs_tree(&self.bpffs_dir);
        let cgroups: Vec<String> = std::iter::once(self.cgroup_rel.clone())
            .chain(self.more_bottles.iter().map(|(_, cg)| cg.clone()))
            .collect();
        for cgroup_rel in cgroups {
            let Some(root) = cgroup2_mount() else { break };
            let cg = root.join(&cgroup_rel);
            // Anything still in the bottle was started by this test (exec'd commands).
            for pid in fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<u32>() {
                    signal(pid, libc::SIGKILL);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while cg.exists() && fs::remove_dir(&cg).is_err() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            // The shared parent goes when the last test's bottle is gone (EBUSY otherwise).
            if let Some(parent) = cg.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
        for name in &self.netns_bottles {
            remove_netns(&self.netns_path(name));
        }
        if std::env::var_os("EGRESS_E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A directory for files the gateway checks for safe ancestors (supervise queues): `dir`
/// (the build's tmp directory) when no directory above it is writable by others, else a
/// root-only directory under /run (a clone under /tmp has a sticky, world-writable
/// ancestor, which the gateway rightly refuses).
pub fn private_base(dir: &Path) -> PathBuf {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let safe = dir.ancestors().skip(1).all(|a| fs::metadata(a).map(|m| m.mode() & 0o002 == 0).unwrap_or(true));
    if safe {
        return dir.to_path_buf();
    }
    let base = PathBuf::from("/run/egress-e2e-private");
    fs::create_dir_all(&base).expect("create /run/egress-e2e-private");
    fs::set_permissions(&base, fs::Permissions::from_mode(0o700)).expect("chmod 700");
    base
}

/// Unmounts and removes a namespace file the gateway made for this test's bottle.
pub fn remove_netns(path: &Path) {
    if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: umount2 with a NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = fs::remove_file(path);
}

/// bpffs has no recursive unlink: remove files, then directories, depth first.
fn remove_bpffs_tree(path: &Path) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(path)? {
        let p = entry?.path();
        if p.is_dir() {
            remove_bpffs_tree(&p)?;
        } else {
            fs::remove_file(&p)?;
        }
    }
    fs::remove_dir(path)
}

/// `stdout` of an output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
