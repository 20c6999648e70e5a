//! Containers joining a bottle-like cgroup and network namespace, without the gateway:
//! the self-test of the Podman helper (`egress_e2e::podman`), which the gateway-backed
//! container tests build on.
#![cfg(feature = "root-tests")]

use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
};

use egress_e2e::{
    podman::{self, Cgroup, Container, Netns, Spec},
    stderr, stdout,
    world::{World, WorldSpec},
};

/// A listener inside the namespace, standing in for the gateway's in-namespace one.
struct Listener(Child);

impl Listener {
    /// An HTTP server on 127.0.0.1:`port` in `netns` answering every GET with `body`.
    fn start(netns: &Netns, port: u16, body: &str) -> Listener {
        let script = format!(
            "import http.server, sys\n\
             class H(http.server.BaseHTTPRequestHandler):\n    \
                 def do_GET(self):\n        \
                     b = {body:?}.encode()\n        \
                     self.send_response(200); self.send_header('Content-Length', str(len(b))); self.end_headers()\n        \
                     self.wfile.write(b)\n    \
                 def log_message(self, *a): pass\n\
             s = http.server.HTTPServer(('127.0.0.1', {port}), H)\n\
             print('ready', flush=True)\n\
             s.serve_forever()\n"
        );
        let mut child = netns
            .command("python3")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the listener in the namespace");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).expect("read listener");
        let listener = Listener(child);
        assert_eq!(line.trim(), "ready", "the listener in {} did not start", netns.name);
        listener
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require_root() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "container tests need root: run them as root");
    assert!(egress_e2e::cgroup2_mount().is_some(), "no cgroup v2 hierarchy is mounted");
}

#[test]
fn a_container_runs_in_the_given_cgroup_and_namespace_and_reaches_only_its_listener() {
    require_root();
    let id = std::process::id();
    let netns = Netns::new(&format!("egress-e2e-ct-{id}"));
    let cgroup = Cgroup::new(&format!("egress-e2e/containers-{id}"));
    let port = egress_e2e::free_port();
    let _listener = Listener::start(&netns, port, "inside the namespace\n");
    let netns_path = netns.path();

    let container = Container::start(&Spec {
        cgroup_parent: &cgroup.rel,
        netns: &netns_path,
        env: &[("EGRESS_E2E_MARK", "from-the-test")],
        argv: &["sleep", "600"],
        ..Default::default()
    });
    // The container's cgroup, as the host sees it, is below the one we gave (so programs
    // attached there would apply to it).
    let cg = podman::cgroup_of(container.pid());
    assert!(cg.starts_with(&format!("{}/", cgroup.rel)), "container cgroup {cg} is not below {}", cgroup.rel);
    // The same network namespace as the file we gave.
    let theirs = std::fs::read_link(format!("/proc/{}/ns/net", container.pid())).unwrap();
    let ours = std::fs::metadata(&netns_path).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap();
    assert_eq!(theirs.to_string_lossy(), format!("net:[{ours}]"), "the container is in another network namespace");

    // Only lo, and the host's real curl reaches the listener on the namespace's loopback.
    let out = container.exec(&["cat", "/proc/net/dev"]);
    let ifaces: Vec<String> =
        stdout(&out).lines().skip(2).filter_map(|l| l.split(':').next()).map(|s| s.trim().to_string()).collect();
    assert_eq!(ifaces, ["lo"], "interfaces in the container: {}", stdout(&out));
    let url = format!("http://127.0.0.1:{port}/");
    let out = container.exec(&["curl", "-sS", "-m", "5", &url]);
    assert!(out.status.success(), "curl in the container failed: {}", stderr(&out));
    assert_eq!(stdout(&out), "inside the namespace\n");
    let out = container.exec(&["sh", "-c", "echo $EGRESS_E2E_MARK"]);
    assert_eq!(stdout(&out).trim(), "from-the-test");
    drop(container);

    // One-shot `run`: exit status and output come back; the container is gone after.
    let out = podman::run(&Spec {
        cgroup_parent: &cgroup.rel,
        netns: &netns_path,
        argv: &[
            "python3",
            "-c",
            &format!("import urllib.request as u; print(u.urlopen('{url}').read().decode(), end=''); exit(3)"),
        ],
        ..Default::default()
    });
    assert_eq!(out.status.code(), Some(3), "python in the container: {}", stderr(&out));
    assert_eq!(stdout(&out), "inside the namespace\n");
}

/// The documented recipe, with the gateway: the bottle is attached first (`netns: new`),
/// then the container starts with `--cgroup-parent` under the bottle's cgroup and the
/// bottle's namespace, so the programs are in force before its first instruction.
#[test]
fn a_podman_container_in_an_attached_bottle_reaches_only_what_its_routes_allow() {
    podman::require_podman();
    let hosts = ["a.upstream.test", "b.upstream.test"];
    let routes = "log: 1\nroutes:\n  - host: a.upstream.test\n";
    let spec = WorldSpec { hosts: &hosts, routes, netns: true, ..Default::default() };
    let w = World::start_spec("podman-bottle", &spec);
    let ns = w.env.netns_path(w.env.bottle());
    let bundle = w.env.dir.join("trust-bundle.pem");
    let etc_hosts = w.env.dir.join("hosts");
    let container = Container::start(&Spec {
        cgroup_parent: &w.env.cgroup_rel,
        netns: &ns,
        env: &[("SSL_CERT_FILE", "/egress/bundle.pem")],
        ro_mounts: &[(bundle.as_path(), "/egress/bundle.pem"), (etc_hosts.as_path(), "/etc/hosts")],
        argv: &["sleep", "600"],
    });
    let cg = podman::cgroup_of(container.pid());
    assert!(
        cg.starts_with(&format!("{}/", w.env.cgroup_rel)),
        "container cgroup {cg} is not below the bottle's {}",
        w.env.cgroup_rel
    );

    let curl = |host: &str| {
        let out =
            container.exec(&["curl", "-sS", "-m", "20", "-o", "/dev/null", "-w", "%{http_code}", &w.url(host, "/c")]);
        (stdout(&out), stderr(&out))
    };
    let (code, err) = curl("a.upstream.test");
    assert_eq!(code, "200", "allowed host from the container: {err}");
    let (code, err) = curl("b.upstream.test");
    assert_eq!(code, "403", "forbidden host from the container: {err}");
    let out = container.exec(&[
        "python3",
        "-c",
        "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.2', 9))",
    ]);
    assert!(!out.status.success(), "UDP left the container");
    assert!(stderr(&out).contains("PermissionError"), "UDP refused in the kernel: {}", stderr(&out));
    assert_eq!(w.up.requests().len(), 1, "only the allowed request reached the upstream");
}
