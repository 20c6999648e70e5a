//! Transparent capture, end to end: real cgroups, real eBPF programs, real clients.
#![cfg(feature = "root-tests")]

use std::{thread, time::Duration};

use egress_e2e::{
    EnvSpec, TestEnv, stderr, stdout,
    upstream::{TcpUpstream, UPSTREAM_BODY, UdpReceiver},
};

fn raw_tcp_env(test: &str, upstream: &TcpUpstream) -> TestEnv {
    let routes = format!("log: 1\ntcp:\n  - upstream.test:{}\n", upstream.port());
    TestEnv::new(test, EnvSpec { hosts: &[("upstream.test", "127.0.0.2")], routes: &routes, ..Default::default() })
}

#[test]
fn curl_and_python_are_delivered_through_the_gateway_with_original_destination() {
    let upstream = TcpUpstream::start("127.0.0.2");
    let mut env = raw_tcp_env("deliver", &upstream);
    env.start_gateway();

    let url = format!("http://127.0.0.2:{}/", upstream.port());
    let out = env.exec(&["curl", "-fsS", "-m", "5", &url]);
    assert!(out.status.success(), "curl failed: {}", stderr(&out));
    assert_eq!(stdout(&out), UPSTREAM_BODY);
    env.wait_for_log(&format!("\"orig_dst\":\"127.0.0.2:{}\"", upstream.port()));

    let script = format!(
        "import socket\n\
         s = socket.create_connection(('127.0.0.2', {port}), timeout=5)\n\
         print(s.getpeername())\n\
         s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n\
         print(s.recv(4096).decode().split('\\r\\n\\r\\n', 1)[1], end='')\n",
        port = upstream.port()
    );
    let out = env.exec(&["python3", "-c", &script]);
    assert!(out.status.success(), "python failed: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with(&format!("('127.0.0.2', {})", upstream.port())), "getpeername: {text}");
    assert!(text.ends_with(UPSTREAM_BODY), "{text}");
    assert_eq!(upstream.hits(), 2, "both clients reached the upstream through the gateway");
}

#[test]
fn a_destination_not_allowed_gets_nothing() {
    let allowed = TcpUpstream::start("127.0.0.2");
    let other = TcpUpstream::start("127.0.0.3");
    let mut env = raw_tcp_env("deny", &allowed);
    env.start_gateway();
    // HTTP is intercepted and refused by the routes; anything else is closed.
    let url = format!("http://127.0.0.3:{}/", other.port());
    let out = env.exec(&["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", &url]);
    assert_eq!(stdout(&out), "403", "curl to a destination not allowed: {}", stderr(&out));
    env.wait_for_log("is not in the allowlist");
    let script = format!(
        "import socket\ns = socket.create_connection(('127.0.0.3', {}), timeout=5)\n\
         s.sendall(b'SSH-2.0-OpenSSH_9.2\\r\\n')\nprint(repr(s.recv(100)))\n",
        other.port()
    );
    let out = env.exec(&["python3", "-c", &script]);
    assert_eq!(stdout(&out).trim(), "b''", "a non-HTTP stream was not closed: {}", stderr(&out));
    env.wait_for_log("not TLS or HTTP, and the destination is not in the bottle's tcp allow list");
    assert_eq!(other.hits(), 0);
}

#[test]
fn ipv6_mapped_udp_quic_and_raw_icmp_get_nothing_out() {
    let v4 = TcpUpstream::start("127.0.0.2");
    let v6 = TcpUpstream::start("::1");
    let udp = UdpReceiver::start("127.0.0.2:0");
    let quic = UdpReceiver::start("127.0.0.4:443");
    // Only the IPv4 upstream's port is allowed, and only for IPv4 name resolution.
    let mut env = raw_tcp_env("leaks", &v4);
    env.start_gateway();

    let script = format!(
        r#"
import socket
results = {{}}
def attempt(name, fn):
    try:
        fn()
        results[name] = 'ok'
    except OSError as e:
        results[name] = 'refused: %s' % e.strerror

def v6():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.settimeout(3)
    s.connect(('::1', {v6port})); s.sendall(b'GET / HTTP/1.0\r\n\r\n')
    if b'hello from upstream' not in s.recv(4096): raise OSError(0, 'refused by gateway')
attempt('ipv6', v6)

def mapped():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.settimeout(3)
    s.connect(('::ffff:127.0.0.3', {v4port})); s.sendall(b'GET / HTTP/1.0\r\n\r\n')
    if b'hello from upstream' not in s.recv(4096): raise OSError(0, 'refused by gateway')
attempt('mapped', mapped)

def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b'leak', ('127.0.0.2', {udpport}))
attempt('udp', udp)

def udp_connected():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(('127.0.0.2', {udpport})); u.send(b'leak')
attempt('udp_connected', udp_connected)

def quic():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(('127.0.0.4', 443)); u.send(b'quic')
attempt('quic', quic)

def udp6():
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.sendto(b'leak', ('::1', {udpport}))
attempt('udp6', udp6)

def icmp():
    r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    r.sendto(b'\x08\x00\xf7\xff\x00\x00\x00\x00', ('127.0.0.2', 0))
attempt('icmp', icmp)
for k in sorted(results): print(k, results[k])
"#,
        v6port = v6.port(),
        v4port = v4.port(),
        udpport = udp.addr.port()
    );
    // Capabilities kept: the raw ICMP socket must be opened, so that the backstop is what
    // stops it.
    let out = env.exec_with_flags(env.bottle(), &["--allow-root", "--keep-caps"], &["python3", "-c", &script], &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "script failed: {}\n{text}", stderr(&out));
    for line in text.lines() {
        assert!(line.contains("refused"), "egress was not refused: {line}\n{text}");
    }
    assert_eq!(text.lines().count(), 7, "{text}");
    // Give anything that did leak time to arrive before checking the receivers.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(v6.hits(), 0, "IPv6 upstream was reached");
    assert_eq!(v4.hits(), 0, "IPv4-mapped connect to another address reached the upstream");
    assert_eq!(udp.hits(), 0, "UDP datagram was delivered");
    assert_eq!(quic.hits(), 0, "UDP/443 datagram was delivered");

    // The kernel counted what it refused and dropped.
    let out = env.cli(&["status", "--json"]);
    assert!(out.status.success(), "status: {}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let counters = &status[0]["counters"];
    assert!(counters["tcp_redirected"].as_u64().unwrap() >= 2, "{status}");
    assert!(counters["refused"].as_u64().unwrap() >= 4, "{status}");
    assert!(counters["dropped"].as_u64().unwrap() >= 1, "{status}");
}

const DNS_CLIENT: &str = r#"
import socket, struct, sys
def query(name, connected):
    p = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0)
    for label in name.split('.'):
        p += bytes([len(label)]) + label.encode()
    p += b'\0' + struct.pack('>HH', 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
    if connected:
        s.connect(('127.0.0.53', 53)); s.send(p); data = s.recv(512); src = s.getpeername()
    else:
        s.sendto(p, ('127.0.0.53', 53)); data, src = s.recvfrom(512)
    answers = struct.unpack('>H', data[6:8])[0]
    ip = socket.inet_ntoa(data[-4:]) if answers else '-'
    print(name, 'rcode=%d' % (data[3] & 0xf), ip, '%s:%d' % src)
for name in sys.argv[1:]:
    query(name, False)
    query(name, True)
"#;

#[test]
fn dns_answers_allowed_names_and_nxdomains_the_rest() {
    let upstream = TcpUpstream::start("127.0.0.2");
    let routes = format!("routes:\n  - host: \"*.cdn.upstream.test\"\ntcp:\n  - upstream.test:{}\n", upstream.port());
    let mut env = TestEnv::new(
        "dns",
        EnvSpec {
            hosts: &[("upstream.test", "127.0.0.2"), ("x.cdn.upstream.test", "127.0.0.5")],
            routes: &routes,
            ..Default::default()
        },
    );
    env.start_gateway();
    let tunnel = "mfrggzdfmztwq2lknnwg23tpobyxe43u.cdn.upstream.test";
    let out =
        env.exec(&["python3", "-c", DNS_CLIENT, "upstream.test", "exfil.evil.example", "x.cdn.upstream.test", tunnel]);
    let text = stdout(&out);
    assert!(out.status.success(), "dns client failed: {}", stderr(&out));
    let lines: Vec<&str> = text.lines().collect();
    let tunnel_line = format!("{tunnel} rcode=3 - 127.0.0.53:53");
    assert_eq!(
        lines,
        [
            "upstream.test rcode=0 127.0.0.2 127.0.0.53:53",
            "upstream.test rcode=0 127.0.0.2 127.0.0.53:53",
            "exfil.evil.example rcode=3 - 127.0.0.53:53",
            "exfil.evil.example rcode=3 - 127.0.0.53:53",
            "x.cdn.upstream.test rcode=0 127.0.0.5 127.0.0.53:53",
            "x.cdn.upstream.test rcode=0 127.0.0.5 127.0.0.53:53",
            &tunnel_line,
            &tunnel_line,
        ],
        "{text}"
    );
    let log = env.wait_for_log("DNS tunnelling");
    assert!(log.contains("\"name\":\"exfil.evil.example\""), "denied names are logged");
    assert!(!log.contains(tunnel), "the tunnel label (possibly a secret) was logged");
}

#[test]
fn killed_gateway_fails_closed_and_restart_resumes_without_reattaching_the_bottle() {
    let upstream = TcpUpstream::start("127.0.0.2");
    let mut env = raw_tcp_env("sigkill", &upstream);
    env.start_gateway();
    let url = format!("http://127.0.0.2:{}/", upstream.port());
    assert!(env.exec(&["curl", "-fsS", "-m", "5", &url]).status.success());
    assert_eq!(upstream.hits(), 1);

    env.kill_gateway();
    let out = env.exec(&["curl", "-fsS", "-m", "5", &url]);
    assert!(!out.status.success(), "a connection succeeded while the gateway was dead");
    assert!(stderr(&out).contains("Couldn't connect"), "expected a refused connection: {}", stderr(&out));
    let dns = env.exec(&["python3", "-c", DNS_CLIENT, "upstream.test"]);
    assert!(!dns.status.success(), "DNS answered while the gateway was dead: {}", stdout(&dns));
    assert_eq!(upstream.hits(), 1, "the upstream saw traffic while the gateway was dead");

    // A process that started while the gateway was down is still in the bottle.
    env.start_gateway();
    let out = env.exec(&["curl", "-fsS", "-m", "5", &url]);
    assert!(out.status.success(), "after restart: {}", stderr(&out));
    assert_eq!(upstream.hits(), 2);
}

#[test]
fn a_process_already_in_the_bottle_is_captured_when_the_gateway_starts() {
    let upstream = TcpUpstream::start("127.0.0.2");
    let mut env = raw_tcp_env("preexisting", &upstream);
    let trigger = env.dir.join("go");
    // The process joins the cgroup before any program is attached and waits for the
    // trigger, so its socket is created only after the gateway is up.
    let script = format!(
        "python3 -c \"import os, socket, time\n\
         while not os.path.exists('{trigger}'): time.sleep(0.05)\n\
         s = socket.create_connection(('127.0.0.2', {port}), timeout=5)\n\
         s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print(s.getpeername(), s.recv(4096).decode().endswith('{body}'))\"",
        trigger = trigger.display(),
        port = upstream.port(),
        body = UPSTREAM_BODY.trim_end().to_string() + "\\n",
    );
    let pid = env.spawn_in_cgroup(&script);
    env.start_gateway();
    std::fs::write(&trigger, b"").unwrap();
    let out = env.wait_child(pid);
    assert!(out.status.success(), "pre-existing process failed: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("('127.0.0.2', {}) True", upstream.port()));
    env.wait_for_log(&format!("\"orig_dst\":\"127.0.0.2:{}\"", upstream.port()));
    assert_eq!(upstream.hits(), 1);
}

#[test]
fn exec_refuses_a_bottle_that_is_not_attached() {
    let upstream = TcpUpstream::start("127.0.0.2");
    let env = raw_tcp_env("unattached", &upstream);
    let out = env.exec(&["true"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not attached"), "{}", stderr(&out));
}

#[test]
fn exec_returns_the_commands_exit_status() {
    let upstream = TcpUpstream::start("127.0.0.2");
    let mut env = raw_tcp_env("status", &upstream);
    env.start_gateway();
    assert_eq!(env.exec(&["sh", "-c", "exit 7"]).status.code(), Some(7));
    // Seen from outside: the command is in the bottle's cgroup (from inside, its cgroup
    // namespace shows that cgroup as `/`).
    let mut child = env.spawn_exec(&["sleep", "30"], &[]);
    let procs = env.cgroup_dir().join("cgroup.procs");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let found = loop {
        let pids = std::fs::read_to_string(&procs).unwrap_or_default();
        let sleeping = pids
            .lines()
            .any(|p| std::fs::read_to_string(format!("/proc/{}/comm", p.trim())).is_ok_and(|c| c.trim() == "sleep"));
        if sleeping || std::time::Instant::now() > deadline {
            break sleeping;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "the command never appeared in {}", procs.display());
    let out = env.exec(&["cat", "/proc/self/cgroup"]);
    assert!(stdout(&out).ends_with("0::/\n"), "not at the root of its cgroup namespace: {}", stdout(&out));
}

#[test]
fn detach_refuses_while_processes_live_and_removes_pins_after() {
    let upstream = TcpUpstream::start("127.0.0.2");
    let mut env = raw_tcp_env("detach", &upstream);
    env.start_gateway();
    env.stop_gateway();
    let pid = env.spawn_in_cgroup("sleep 30");
    let out = env.cli(&["detach", "--bottle", "e2e"]);
    assert!(!out.status.success(), "detach with a live process succeeded");
    assert!(stderr(&out).contains("direct egress"), "{}", stderr(&out));
    assert!(env.bpffs_dir.join("bottles/e2e/egress_connect4").exists());
    let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
    let _ = env.wait_child(pid);
    let out = env.cli(&["detach", "--bottle", "e2e"]);
    assert!(out.status.success(), "detach failed: {}", stderr(&out));
    assert!(!env.bpffs_dir.exists(), "pins left behind in {}", env.bpffs_dir.display());
}

#[test]
fn guard_cleans_up_cgroup_and_pins_when_a_test_fails() {
    let upstream = TcpUpstream::start("127.0.0.2");
    let (cgroup, pins) = {
        let mut env = raw_tcp_env("cleanup", &upstream);
        env.start_gateway();
        let _ = env.exec(&["true"]);
        let paths = (env.cgroup_dir(), env.bpffs_dir.clone());
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _env = env;
            panic!("simulated test failure");
        }));
        assert!(failed.is_err());
        paths
    };
    assert!(!cgroup.exists(), "cgroup {} left behind", cgroup.display());
    assert!(!pins.exists(), "pins {} left behind", pins.display());
}

#[test]
fn sighup_applies_a_valid_routes_file_and_keeps_the_old_policy_on_a_broken_one() {
    let a = TcpUpstream::start("127.0.0.2");
    let b = TcpUpstream::start("127.0.0.2");
    let mut env = raw_tcp_env("reload", &a);
    env.start_gateway();
    let curl = |env: &TestEnv, up: &TcpUpstream| {
        env.exec(&["curl", "-fsS", "-m", "5", &format!("http://127.0.0.2:{}/", up.port())]).status.success()
    };
    assert!(curl(&env, &a));
    assert!(!curl(&env, &b));

    // Rewritten in place (same inode), as bind-mounted routes files are.
    env.write_routes("tcp:\n  - upstream.test:not-a-port\n");
    env.signal_gateway(egress_e2e::SIGHUP);
    env.wait_for_log("reload failed; keeping the previous routes and credentials");
    assert!(env.gateway_log().contains("tcp[0]"), "the reload error names the field");
    assert!(curl(&env, &a), "old policy lost after a broken reload");
    assert!(!curl(&env, &b));

    env.write_routes(&format!("tcp:\n  - upstream.test:{}\n", b.port()));
    env.signal_gateway(egress_e2e::SIGHUP);
    env.wait_for_log("\"message\":\"routes and credentials reloaded\"");
    assert!(curl(&env, &b), "new policy not applied");
    assert!(!curl(&env, &a), "old policy still applied");
}

/// `status` never shows zeros for counters it could not read: with the counters map's pin
/// and the bottle's DNS-client map's pin removed (a bpffs cleaned under a running
/// gateway), it names each map and why, and exits non-zero; with --json too.
#[test]
fn status_says_which_kernel_maps_are_unreadable() {
    let upstream = TcpUpstream::start("127.0.0.2");
    let mut env = raw_tcp_env("statusmaps", &upstream);
    env.start_gateway();
    let out = env.cli(&["status"]);
    assert!(out.status.success(), "status of a healthy gateway: {}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("unix_refused 0"), "{}", stdout(&out));

    let counters = env.bpffs_dir.join("maps/EGRESS_COUNTERS_V2");
    let dns = env.bpffs_dir.join(format!("bottles/{}/EGRESS_DNS_V3", env.bottle()));
    for pin in [&counters, &dns] {
        std::fs::remove_file(pin).unwrap_or_else(|e| panic!("removing {}: {e}", pin.display()));
    }
    let out = env.cli(&["status"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(text.contains("counters unreadable"), "{text}");
    assert!(!text.contains("tcp_redirected 0"), "zeros shown for unread counters: {text}");
    for pin in [&counters, &dns] {
        let line = text.lines().find(|l| l.contains(&pin.display().to_string())).unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains("No such file or directory"), "{line}");
    }
    assert!(stderr(&out).contains("2 kernel map(s) unreadable"), "{}", stderr(&out));

    let out = env.cli(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status[0]["counters"].is_null(), "{status}");
    assert_eq!(status[0]["unreadable"].as_array().map(Vec::len), Some(2), "{status}");
}
