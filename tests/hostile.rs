//! A hostile agent inside a bottle, attacking the gateway and the other bottles: each
//! test reproduces one attack (issue 11) and shows it now fails.
#![cfg(feature = "root-tests")]

use egress_e2e::{EnvSpec, TestEnv, stderr, stdout, upstream::TcpUpstream};

/// Tries to bind each port given, TCP and UDP, on 127.0.0.1 and on every address; prints
/// one line per attempt.
const SQUAT: &str = r#"
import socket, sys
for port in map(int, sys.argv[1:]):
    for kind, name in ((socket.SOCK_STREAM, 'tcp'), (socket.SOCK_DGRAM, 'udp')):
        for fam, addr in ((socket.AF_INET, '127.0.0.1'), (socket.AF_INET, '0.0.0.0'), (socket.AF_INET6, '::')):
            s = socket.socket(fam, kind)
            try:
                s.bind((addr, port))
                print(name, addr, port, 'bound')
            except OSError as e:
                print(name, addr, port, 'refused', e.errno)
            s.close()
"#;

/// Attack 5: with the gateway down, a bottle binds the gateway's ports to squat them
/// (the gateway could not restart; the squatter would get other bottles' connections).
#[test]
fn a_bottle_cannot_bind_the_gateways_listener_ports() {
    for netns in [false, true] {
        let mut env = TestEnv::new("squat", EnvSpec { routes: "routes: []\n", netns, ..Default::default() });
        env.start_gateway();
        env.kill_gateway();
        let (listen, dns) = (env.listen_port.to_string(), env.dns_port.to_string());
        let free = egress_e2e::free_port().to_string();
        let out = env.exec(&["python3", "-c", SQUAT, &listen, &dns, &free]);
        let text = stdout(&out);
        assert!(out.status.success(), "{}", stderr(&out));
        for port in [&listen, &dns] {
            let bound: Vec<&str> = text.lines().filter(|l| l.contains(&format!(" {port} bound"))).collect();
            assert!(bound.is_empty(), "netns {netns}: the bottle bound a gateway port: {bound:?}\n{text}");
        }
        assert_eq!(
            text.lines().filter(|l| l.contains(&format!(" {free} bound"))).count(),
            6,
            "netns {netns}: other ports stay bindable, TCP and UDP, v4 and v6:\n{text}"
        );
        // The gateway comes back on its ports.
        env.start_gateway();
    }
}

/// Attack 1: a socket opened outside the bottle (connected to a forbidden address) is
/// inherited by the command: `exec` passes no descriptor above 2.
#[test]
fn a_socket_inherited_from_outside_the_bottle_is_not_passed_in() {
    use std::os::fd::AsRawFd;
    let forbidden = TcpUpstream::start("127.0.0.3");
    let mut env = TestEnv::new("inherit", EnvSpec { routes: "routes: []\n", ..Default::default() });
    env.start_gateway();
    let outside = std::net::TcpStream::connect(("127.0.0.3", forbidden.port())).unwrap();
    let fd = outside.as_raw_fd();
    // Inheritable, as a careless launcher would leave it.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let script = format!(
        "import socket\ntry:\n    s = socket.socket(fileno={fd})\n    s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n    \
         print('sent', s.recv(100))\nexcept OSError as e:\n    print('refused', e.errno)\n"
    );
    let out = env.exec(&["python3", "-c", &script]);
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    assert_eq!(stdout(&out).trim(), "refused 9", "the inherited socket reached the command: {}", stderr(&out));
    // Had the command sent its request, the upstream would have answered on this socket.
    let mut outside = outside;
    outside.set_read_timeout(Some(std::time::Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 64];
    let read = std::io::Read::read(&mut outside, &mut buf);
    assert!(read.is_err(), "the upstream answered a request sent over the inherited socket: {read:?}");
}

/// Attacks 2 and 3: the command sees no process outside the bottle (PID namespace), has
/// no capability, cannot gain any, cannot move itself out of the bottle's cgroup even as
/// root, and root in a bottle that shares the host's namespace needs `--allow-root`.
#[test]
fn exec_confines_the_command_pid_namespace_no_capabilities_no_cgroup_escape() {
    let mut env = TestEnv::new("confine", EnvSpec { routes: "routes: []\n", ..Default::default() });
    env.start_gateway();
    let outsider = env.spawn_in_cgroup("sleep 600"); // a process the command must not see
    let _ = outsider;
    let bystander = std::process::Command::new("sleep").arg("600").spawn().unwrap();
    let script = format!(
        r#"
import os, ctypes
print('pid', os.getpid())
try:
    os.kill({pid}, 0); print('kill visible')
except ProcessLookupError:
    print('kill invisible')
print('proc', 'visible' if os.path.exists('/proc/{pid}') else 'invisible', len([p for p in os.listdir('/proc') if p.isdigit()]))
libc = ctypes.CDLL(None, use_errno=True)
r = libc.ptrace(16, {pid}, 0, 0)  # PTRACE_ATTACH
print('ptrace', r, ctypes.get_errno())
status = dict(l.split(':\t') for l in open('/proc/self/status').read().splitlines() if ':\t' in l)
print('caps', status['CapEff'].strip(), status['CapBnd'].strip(), 'nnp', status['NoNewPrivs'].strip())
root = '{root}'
for target in (root + '/cgroup.procs', root + '/egress-e2e/cgroup.procs'):
    try:
        open(target, 'w').write(str(os.getpid())); print('moved to', target)
    except OSError as e:
        print('move refused', e.errno)
print('cgroup', open('/proc/self/cgroup').read().strip())
"#,
        pid = bystander.id(),
        root = egress_e2e::cgroup2_mount().unwrap().display()
    );
    let out = env.exec(&["python3", "-c", &script]);
    let mut bystander = bystander;
    let _ = bystander.kill();
    let _ = bystander.wait();
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    for expected in [
        "pid 1\n",
        "kill invisible",
        "proc invisible 1\n",
        "ptrace -1 3", // ESRCH
        "caps 0000000000000000 0000000000000000 nnp 1",
        // Still at the root of its cgroup namespace, which is the bottle's cgroup: the
        // hierarchy it sees is the bottle's subtree, so its writes to `cgroup.procs`
        // stay inside (an escape reads `0::/..`).
        "\n0::/\n",
        "move refused 2",
    ] {
        assert!(text.contains(expected), "expected {expected:?}:\n{text}");
    }
    assert!(!text.contains("0::/.."), "root moved itself out of the bottle:\n{text}");

    // Root in a bottle that shares the host's network namespace: refused without the flag.
    let out = env.exec_with_flags(env.bottle(), &[], &["true"], &[]);
    assert!(!out.status.success(), "root ran without --allow-root");
    assert!(stderr(&out).contains("--allow-root"), "{}", stderr(&out));
    // Another user is fine.
    let out = env.exec_with_flags(env.bottle(), &["--user", "nobody"], &["id", "-u"], &[]);
    assert_eq!(stdout(&out).trim(), "65534", "{}", stderr(&out));
}

/// Attack 4: the bottle's cgroup changes in the configuration after it was attached;
/// `exec` would join the new, unfiltered cgroup. It checks the programs are on the very
/// cgroup it joins, and refuses.
#[test]
fn exec_refuses_a_cgroup_the_bottles_programs_are_not_attached_to() {
    let mut env = TestEnv::new("drift", EnvSpec { routes: "routes: []\n", ..Default::default() });
    env.start_gateway();
    assert!(env.exec(&["true"]).status.success());
    let config = std::fs::read_to_string(&env.config_path).unwrap();
    let moved = format!("{}-moved", env.cgroup_rel);
    std::fs::write(&env.config_path, config.replace(&env.cgroup_rel, &moved)).unwrap();
    let moved_dir = env.cgroup_dir().with_file_name(std::path::Path::new(&moved).file_name().unwrap());
    std::fs::create_dir_all(&moved_dir).unwrap();
    let out = env.exec(&["true"]);
    let _ = std::fs::remove_dir(&moved_dir);
    assert!(!out.status.success(), "exec joined a cgroup without the bottle's programs");
    assert!(stderr(&out).contains("attached to another cgroup"), "{}", stderr(&out));
}

/// Attack 9: a route added by a reload injects a credential from a variable that was
/// not a known secret at start; reflected by the upstream, it used to reach the agent.
/// A reload rebuilds the bottle's known secrets.
#[test]
fn a_credential_of_a_route_added_by_reload_is_redacted_when_reflected() {
    const VALUE: &str = "late-credential-5e0c9a1b77d2";
    let hosts = ["api.upstream.test", "late.upstream.test"];
    let before = "log: 1\nroutes:\n  - host: api.upstream.test\n";
    let w = egress_e2e::world::World::start("reload-known", &hosts, before, &[("LATE_API_KEY", VALUE)]);
    let (code, _) = w.curl(&[&w.url("late.upstream.test", "/whoami")]);
    assert_eq!(code, "403", "the route is not there yet");
    w.env.write_routes(&format!(
        "{before}  - host: late.upstream.test\n    auth_scheme: Bearer\n    token_env: LATE_API_KEY\n"
    ));
    w.env.signal_gateway(egress_e2e::SIGHUP);
    w.env.wait_for_log("routes and credentials reloaded");
    let (code, body) = w.curl(&[&w.url("late.upstream.test", "/whoami")]);
    assert_eq!(code, "200", "{body}");
    let seen = w.up.requests().last().unwrap().headers["authorization"].clone();
    assert_eq!(seen, format!("Bearer {VALUE}"), "the new route's credential was injected");
    assert!(!body.contains(VALUE), "the agent saw the credential a reloaded route injected: {body}");
    assert!(!w.env.gateway_log().contains(VALUE), "the credential was logged");
}

/// Attack 3, root with its capabilities kept: in a bottle with a namespace of its own,
/// packet sockets see only that namespace's `lo`, so there is no interface to send on.
#[test]
fn root_with_packet_sockets_in_a_namespaced_bottle_sees_only_lo() {
    let mut env = TestEnv::new("packet", EnvSpec { routes: "routes: []\n", netns: true, ..Default::default() });
    env.start_gateway();
    let host_ifaces: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|s| s.trim().to_string()))
        .filter(|n| n != "lo")
        .collect();
    let script = r#"
import socket, sys
print('ifaces', sorted(n for _, n in socket.if_nameindex()))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
for name in sys.argv[1:]:
    try:
        s.bind((name, 0)); print('bound', name)
    except OSError as e:
        print('no', name, e.errno)
"#;
    let mut argv = vec!["python3", "-c", script];
    argv.extend(host_ifaces.iter().map(String::as_str));
    let out = env.exec_with_flags(env.bottle(), &["--keep-caps"], &argv, &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}\n{text}", stderr(&out));
    assert!(text.contains("ifaces ['lo']"), "{text}");
    assert!(!text.contains("bound"), "a packet socket reached a host interface:\n{text}");
}
