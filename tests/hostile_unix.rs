//! Unix sockets of a hostile bottle (issue 11): a socket handed over SCM_RIGHTS by a
//! process outside the bottle, through an abstract unix socket that host-namespace bottles
//! share, would reach a forbidden address directly. The bottle's `cgroup/connect_unix` and
//! `cgroup/sendmsg_unix` programs allow only the unix sockets its `unix_sockets:` lists.
#![cfg(feature = "root-tests")]

use std::{
    io::{BufRead, BufReader, Read},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use egress_e2e::{EnvSpec, TestEnv, stderr, stdout};

/// Outside every bottle: an abstract socket that hands whoever connects a TCP socket
/// connected to the forbidden receiver (SCM_RIGHTS), stream sockets that answer `hi`, and
/// datagram sockets that print what they receive. Prints `ready` once all are bound.
const OUTSIDE_PY: &str = r#"
import array, os, socket, sys, threading
scm_name, receiver_port, sock_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def listen(addr):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(addr)
    s.listen(16)
    return s
def handover(s):
    while True:
        c, _ = s.accept()
        t = socket.create_connection(('127.0.0.3', receiver_port))
        c.sendmsg([b'fd'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [t.fileno()]))])
        t.close()
        c.close()
def answer(s):
    while True:
        c, _ = s.accept()
        c.sendall(b'hi')
        c.close()
def report(d, name):
    while True:
        data = d.recv(100)
        print('dgram', name, data.decode(), flush=True)
threading.Thread(target=handover, args=(listen('\0' + scm_name),), daemon=True).start()
for name in sys.argv[4:]:
    if name.startswith('@'):
        s = listen('\0' + name[1:])
    else:
        os.makedirs(os.path.dirname(os.path.join(sock_dir, name)), exist_ok=True)
        if name.endswith('.dgram'):
            d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            d.bind(os.path.join(sock_dir, name))
            threading.Thread(target=report, args=(d, name), daemon=True).start()
            continue
        s = listen(os.path.join(sock_dir, name))
    threading.Thread(target=answer, args=(s,), daemon=True).start()
print('ready', flush=True)
sys.stdin.read()
"#;

/// The attacker's side: each argument `kind:address` (`@name` is abstract); prints one
/// line per attempt: `<arg> ok ...` or `<arg> refused <errno>`.
const CLIENT_PY: &str = r#"
import array, socket, sys
def unix_addr(a):
    return '\0' + a[1:] if a.startswith('@') else a
for arg in sys.argv[1:]:
    kind, addr = arg.split(':', 1)
    try:
        if kind == 'scm':
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(unix_addr(addr))
            fds = array.array('i')
            msg, anc, _, _ = s.recvmsg(16, socket.CMSG_SPACE(4))
            fds.frombytes(anc[0][2][:4])
            t = socket.socket(fileno=fds[0])
            t.sendall(b'ESCAPED')
            t.close()
            print(arg, 'ok escaped')
        elif kind == 'stream':
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(unix_addr(addr))
            print(arg, 'ok', s.recv(10).decode())
        elif kind == 'dgram':
            d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            d.sendto(b'from-client', unix_addr(addr))
            print(arg, 'ok sent')
        elif kind == 'pair':
            a, b = socket.socketpair()
            a.sendall(b'x')
            print(arg, 'ok', b.recv(1).decode())
    except OSError as e:
        print(arg, 'refused', e.errno)
"#;

const EPERM: &str = "refused 1";

/// A TCP receiver on a forbidden loopback address: everything any connection sends.
fn forbidden_receiver() -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.3:0").expect("bind the forbidden receiver");
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = conn.read_to_end(&mut buf);
                sink.lock().unwrap().extend_from_slice(&buf);
            });
        }
    });
    (port, got)
}

/// The outside servers (killed, by pid, when dropped).
struct Outside {
    child: Child,
}

impl Outside {
    fn start(scm_name: &str, receiver_port: u16, dir: &Path, names: &[&str]) -> Outside {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(OUTSIDE_PY)
            .arg(scm_name)
            .arg(receiver_port.to_string())
            .arg(dir)
            .args(names)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the outside servers");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).expect("read ready");
        assert_eq!(line.trim(), "ready", "the outside servers did not start");
        Outside { child }
    }

    /// Stops the servers and returns what the datagram sockets received.
    fn finish(mut self) -> String {
        let _ = self.child.kill();
        let mut out = String::new();
        let _ = self.child.stdout.take().unwrap().read_to_string(&mut out);
        out
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(args: &[String]) -> Vec<String> {
    let mut argv = vec!["python3".to_string(), "-c".to_string(), CLIENT_PY.to_string()];
    argv.extend(args.iter().cloned());
    argv
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn run_outside(cwd: &Path, args: &[String]) -> String {
    let out =
        Command::new("python3").arg("-c").arg(CLIENT_PY).args(args).current_dir(cwd).output().expect("run the client");
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

fn line_of<'a>(text: &'a str, arg: &str) -> &'a str {
    text.lines().find(|l| l.starts_with(&format!("{arg} "))).unwrap_or_else(|| panic!("no line for {arg}:\n{text}"))
}

fn wait_for(got: &Arc<Mutex<Vec<u8>>>, want: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !got.lock().unwrap().windows(want.len()).any(|w| w == want) {
        assert!(Instant::now() < deadline, "the receiver never got {want:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process run in the bottle's cgroup without `exec` (so without its Landlock scopes):
/// only the kernel programs stand in its way.
fn run_in_cgroup(cgroup: &Path, args: &[String]) -> String {
    let argv = client(args);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {} && exec \"$@\"", cgroup.join("cgroup.procs").display()))
        .arg("sh")
        .args(&argv)
        .stdin(Stdio::null())
        .output()
        .expect("run in the cgroup");
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

/// The escape of issue 11: an abstract socket outside hands a TCP socket connected to a
/// forbidden address to whoever connects. From inside the bottle (unprivileged; root
/// with its capabilities; a process in the cgroup without exec's Landlock scopes) the
/// connect fails with EPERM and the receiver gets nothing; after the gateway is killed
/// (SIGKILL) the pinned programs still refuse. Outside any bottle the same socket works,
/// which shows the attack is real.
#[test]
fn a_socket_handed_over_an_abstract_unix_socket_never_reaches_the_bottle() {
    let (port, got) = forbidden_receiver();
    let scm = format!("egress-e2e-scm-{}", std::process::id());
    let mut env = TestEnv::new("unix-scm", EnvSpec { routes: "routes: []\n", ..Default::default() });
    env.start_gateway();
    let outside = Outside::start(&scm, port, &env.dir, &[]);
    let attack = vec![format!("scm:@{scm}")];

    assert_eq!(line_of(&run_outside(&env.dir, &attack), &attack[0]), format!("{} ok escaped", attack[0]));
    wait_for(&got, b"ESCAPED");
    got.lock().unwrap().clear();

    let bottle = env.bottle().to_string();
    for flags in [&["--user", "nobody"][..], &["--allow-root", "--keep-caps"][..]] {
        let out = env.exec_with_flags(&bottle, flags, &strs(&client(&attack)), &[]);
        assert!(out.status.success(), "{flags:?}: {}", stderr(&out));
        assert_eq!(line_of(&stdout(&out), &attack[0]), format!("{} {EPERM}", attack[0]), "{flags:?}");
    }
    let cgroup = env.cgroup_dir();
    assert_eq!(line_of(&run_in_cgroup(&cgroup, &attack), &attack[0]), format!("{} {EPERM}", attack[0]));

    env.kill_gateway();
    assert_eq!(line_of(&run_in_cgroup(&cgroup, &attack), &attack[0]), format!("{} {EPERM}", attack[0]));
    let out = env.exec_with_flags(&bottle, &["--user", "nobody"], &strs(&client(&attack)), &[]);
    assert_eq!(line_of(&stdout(&out), &attack[0]), format!("{} {EPERM}", attack[0]), "{}", stderr(&out));

    std::thread::sleep(Duration::from_millis(300));
    assert!(got.lock().unwrap().is_empty(), "the forbidden receiver got data from the bottle");
    drop(outside);
}

/// Only listed unix sockets: an exact path and one under a listed directory exchange
/// data, a listed abstract name connects; an unlisted path, a `..` way out of the listed
/// directory, a relative path, an unlisted abstract name and a datagram to an unlisted
/// path are refused (EPERM) while a datagram to a listed directory arrives; socketpair is
/// unaffected. Outside the bottle every one of them works.
#[test]
fn only_the_unix_sockets_a_bottle_lists_are_reachable() {
    let (port, _got) = forbidden_receiver();
    let tag = std::process::id();
    let listed_abstract = format!("egress-e2e-ok-{tag}");
    let other_abstract = format!("egress-e2e-no-{tag}");
    let mut env = TestEnv::new("unix-list", EnvSpec { routes: "routes: []\n", ..Default::default() });
    let dir = env.dir.join("s");
    let d = dir.display();
    let extra = format!("    unix_sockets: [{d}/listed.sock, {d}/ipc/, '@{listed_abstract}']\n");
    rewrite_bottle(&env, &extra);
    env.start_gateway();
    let outside = Outside::start(
        &format!("egress-e2e-scm2-{tag}"),
        port,
        &dir,
        &[
            "listed.sock",
            "unlisted.sock",
            "ipc/inner.sock",
            "ipc/in.dgram",
            "out.dgram",
            &format!("@{listed_abstract}"),
            &format!("@{other_abstract}"),
        ],
    );
    let args: Vec<String> = [
        format!("stream:{d}/listed.sock"),
        format!("stream:{d}/ipc/inner.sock"),
        format!("stream:@{listed_abstract}"),
        format!("dgram:{d}/ipc/in.dgram"),
        "pair:-".to_string(),
        format!("stream:{d}/unlisted.sock"),
        format!("stream:{d}/ipc/../unlisted.sock"),
        "stream:s/listed.sock".to_string(),
        format!("stream:@{other_abstract}"),
        format!("dgram:{d}/out.dgram"),
    ]
    .into();
    let (allowed, refused) = args.split_at(5);
    assert_eq!(unix_refused(&env), 0);

    let text = run_outside(&env.dir, &args);
    for a in &args {
        assert!(line_of(&text, a).contains(" ok"), "outside the bottle {a} must work:\n{text}");
    }
    let out = env.exec(&strs(&client(&args)));
    let inside = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    for a in allowed {
        assert!(line_of(&inside, a).contains(" ok"), "{a} is listed:\n{inside}");
    }
    for a in &allowed[..2] {
        assert_eq!(line_of(&inside, a), format!("{a} ok hi"), "real data from {a}");
    }
    for a in refused {
        assert_eq!(line_of(&inside, a), format!("{a} {EPERM}"), "{a} is not listed:\n{inside}");
    }
    // Each refusal is counted for the bottle (a client may try an address more than once).
    let counted = unix_refused(&env);
    assert!(counted >= refused.len() as u64, "{counted} unix refusals counted for {} refused", refused.len());
    let received = outside.finish();
    assert_eq!(received.matches("dgram ipc/in.dgram from-client").count(), 2, "{received}");
    assert_eq!(received.matches("dgram out.dgram").count(), 1, "only the outside datagram:\n{received}");
}

/// The bottle's `unix_refused` counter, from `status --json`.
fn unix_refused(env: &TestEnv) -> u64 {
    let out = env.cli(&["status", "--json"]);
    assert!(out.status.success(), "status: {}{}", stdout(&out), stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status[0]["counters"]["unix_refused"].as_u64().unwrap_or_else(|| panic!("{status}"))
}

/// A namespaced bottle and a child cgroup below a bottle (as a container runtime makes
/// with `--cgroup-parent`) are policed too.
#[test]
fn a_namespaced_bottle_and_a_child_cgroup_are_policed() {
    let (port, _got) = forbidden_receiver();
    let mut env = TestEnv::new("unix-ns", EnvSpec { routes: "routes: []\n", netns: true, ..Default::default() });
    let dir = env.dir.join("s");
    rewrite_bottle(&env, &format!("    unix_sockets: [{}/listed.sock]\n", dir.display()));
    env.start_gateway();
    let outside =
        Outside::start(&format!("egress-e2e-scm3-{}", std::process::id()), port, &dir, &["listed.sock", "other.sock"]);
    let args = vec![format!("stream:{}/listed.sock", dir.display()), format!("stream:{}/other.sock", dir.display())];
    let out = env.exec(&strs(&client(&args)));
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(line_of(&text, &args[0]), format!("{} ok hi", args[0]));
    assert_eq!(line_of(&text, &args[1]), format!("{} {EPERM}", args[1]));

    let child = ChildCgroup::create(env.cgroup_dir().join("container"));
    let text = run_in_cgroup(&child.0, &args);
    assert_eq!(line_of(&text, &args[0]), format!("{} ok hi", args[0]));
    assert_eq!(line_of(&text, &args[1]), format!("{} {EPERM}", args[1]));
    drop(child);
    drop(outside);
}

/// A cgroup below the bottle's, removed (its processes killed) when dropped.
struct ChildCgroup(PathBuf);

impl ChildCgroup {
    fn create(path: PathBuf) -> ChildCgroup {
        std::fs::create_dir_all(&path).expect("create the child cgroup");
        ChildCgroup(path)
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        for pid in std::fs::read_to_string(self.0.join("cgroup.procs")).unwrap_or_default().lines() {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: kill(2) of a process this test started in its own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.0.exists() && std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Replaces the test's bottle entry's extra lines (before the gateway starts).
fn rewrite_bottle(env: &TestEnv, extra: &str) {
    let text = std::fs::read_to_string(&env.config_path).expect("read gateway.yaml");
    let marker = "    routes: routes.yaml\n";
    let text = text.replacen(marker, &format!("{marker}{extra}"), 1);
    std::fs::write(&env.config_path, text).expect("write gateway.yaml");
}
