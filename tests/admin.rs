//! Bottles attached and detached at run time through the admin socket, while other
//! bottles' traffic runs; kept across restarts; and the socket itself, attacked with bad
//! requests and from inside a bottle.
#![cfg(feature = "root-tests")]

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Output, Stdio},
};

use egress_e2e::{
    gateway_bin, remove_netns, stderr, stdout,
    world::{World, WorldSpec},
};

const HOSTS: [&str; 2] = ["a.upstream.test", "b.upstream.test"];

fn routes(host: &str) -> String {
    format!("log: 1\nroutes:\n  - host: {host}\n")
}

/// `curl --unix-socket` against the admin API: (status, body).
fn api(socket: &std::path::Path, method: &str, path: &str, body: Option<&str>) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-m", "30", "-w", "\n%{http_code}", "-X", method, "--unix-socket"])
        .arg(socket)
        .arg(format!("http://admin{path}"))
        .stdin(Stdio::null());
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "--data-binary", b]);
    }
    let out = cmd.output().expect("curl");
    let text = stdout(&out);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_string(), body.to_string())
}

/// Names of the bottles the gateway serves, from `egress-gateway bottles --json`.
fn bottle_names(w: &World) -> Vec<String> {
    let out = w.env.cli(&["bottles", "--json"]);
    assert!(out.status.success(), "bottles --json: {}", stderr(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bottles --json is JSON");
    let mut names: Vec<String> =
        list.as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap().to_string()).collect();
    names.sort();
    names
}

/// A bottle attached with `egress-gateway attach`, its namespace removed at the end.
struct Attached {
    name: String,
    cgroup_dir: std::path::PathBuf,
}

impl Drop for Attached {
    fn drop(&mut self) {
        remove_netns(&std::path::PathBuf::from(format!("/run/netns/egress-{}", self.name)));
        let _ = std::fs::remove_dir(&self.cgroup_dir);
    }
}

/// `egress-gateway attach` of bottle `<first>-<suffix>` in namespace `netns` (`new` or a path).
fn attach(w: &World, suffix: &str, routes_file: &str, netns: &str) -> (Attached, Output) {
    let name = w.env.more_bottle(suffix);
    let cgroup = format!("{}-{suffix}", w.env.cgroup_rel);
    let routes = w.env.write_file(&format!("routes-{suffix}.yaml"), routes_file);
    let out = w.env.cli(&[
        "attach",
        "--bottle",
        &name,
        "--cgroup",
        &cgroup,
        "--netns",
        netns,
        "--routes",
        routes.to_str().unwrap(),
    ]);
    let cgroup_dir = egress_e2e::cgroup2_mount().unwrap().join(&cgroup);
    (Attached { name, cgroup_dir }, out)
}

/// Fresh HTTPS connections to `host` for `secs` seconds; prints the status counts.
const STEADY: &str = r#"
import http.client, ssl, sys, time, collections
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ctx = ssl.create_default_context()
seen = collections.Counter()
end = time.time() + secs
while time.time() < end:
    try:
        c = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
        c.request('GET', '/steady')
        r = c.getresponse(); r.read(); c.close()
        seen[r.status] += 1
    except Exception as e:
        seen[type(e).__name__] += 1
import json
print(json.dumps({str(k): v for k, v in seen.items()}))
"#;

#[test]
fn attach_traffic_detach_at_run_time_while_another_bottle_runs_and_a_restart_keeps_it() {
    let spec = WorldSpec { hosts: &HOSTS, routes: &routes(HOSTS[0]), netns: true, ..Default::default() };
    let mut w = World::start_spec("admin-runtime", &spec);
    let port = w.up.port().to_string();
    let steady = w.env.spawn_exec(&["python3", "-c", STEADY, HOSTS[0], &port, "8"], &w.trust_vars());

    let (b, out) = attach(&w, "b", &routes(HOSTS[1]), "new");
    assert!(out.status.success(), "attach: {}{}", stdout(&out), stderr(&out));
    assert_eq!(bottle_names(&w), [w.env.bottle().to_string(), b.name.clone()]);
    let (code, body) = w.curl_in(&b.name, &[&w.url(HOSTS[1], "/b")]);
    assert_eq!(code, "200", "run-time bottle, allowed host: {body}");
    let (code, _) = w.curl_in(&b.name, &[&w.url(HOSTS[0], "/b")]);
    assert_eq!(code, "403", "run-time bottle, the other bottle's host");
    let (c, out) = attach(&w, "c", &routes(HOSTS[1]), "new");
    assert!(out.status.success(), "attach: {}{}", stdout(&out), stderr(&out));

    let out = w.env.cli(&["detach", "--bottle", &b.name]);
    assert!(out.status.success(), "detach: {}{}", stdout(&out), stderr(&out));
    assert_eq!(bottle_names(&w), [w.env.bottle().to_string(), c.name.clone()]);
    let out = w.run_in(&b.name, &["true"]);
    assert!(!out.status.success(), "exec in a detached bottle ran");
    assert!(!std::path::Path::new(&format!("/run/netns/egress-{}", b.name)).exists(), "namespace left behind");

    // Bottle a's traffic went on, every request answered, through both attaches and the
    // detach.
    let out = steady.wait_with_output().unwrap();
    let text = stdout(&out);
    let counts: std::collections::BTreeMap<String, u64> =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}{}", stderr(&out)));
    assert!(counts.get("200").copied().unwrap_or(0) > 10, "steady traffic of the other bottle: {text}");
    assert_eq!(counts.len(), 1, "the other bottle's traffic was interrupted: {text}");

    // A restart attaches the run-time bottle again, from the state directory.
    w.env.stop_gateway();
    w.env.start_gateway();
    assert_eq!(bottle_names(&w), [w.env.bottle().to_string(), c.name.clone()]);
    let (code, body) = w.curl_in(&c.name, &[&w.url(HOSTS[1], "/after-restart")]);
    assert_eq!(code, "200", "run-time bottle after a restart: {body}");
    let out = w.env.cli(&["detach", "--bottle", &c.name]);
    assert!(out.status.success(), "detach: {}{}", stdout(&out), stderr(&out));
}

#[test]
fn the_admin_socket_refuses_bad_requests_and_bottles_and_changes_nothing() {
    // The admin socket is under /tmp/ (listed), so the checks below are the socket's own (its mode,
    // the gateway's peer check), not the kernel's unix policing (tests/hostile_unix.rs).
    let spec = WorldSpec {
        hosts: &HOSTS,
        routes: &routes(HOSTS[0]),
        netns: true,
        bottle: "    unix_sockets: [\"/tmp/\"]",
        ..Default::default()
    };
    let w = World::start_spec("admin-socket", &spec);
    let socket = w.env.dir.join("admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin socket mode");
    let before = bottle_names(&w);
    let cgroup = format!("/{}-x", w.env.cgroup_rel.trim_start_matches('/'));

    let cases: Vec<(&str, String, String, &str)> = vec![
        ("PUT", "/v1/bottles/x1".into(), "{not json".into(), "400"),
        ("PUT", "/v1/bottles/x1".into(), format!(r#"{{"cgroup":"{cgroup}","rotues":"/r.yaml"}}"#), "400"),
        ("PUT", format!("/v1/bottles/{}", w.env.bottle()), format!(r#"{{"cgroup":"{cgroup}"}}"#), "409"),
        ("PUT", "/v1/bottles/..%2f..%2fetc".into(), format!(r#"{{"cgroup":"{cgroup}"}}"#), "400"),
        ("PUT", "/v1/bottles/%2e%2e".into(), format!(r#"{{"cgroup":"{cgroup}"}}"#), "400"),
        ("PUT", "/v1/bottles/Upper".into(), format!(r#"{{"cgroup":"{cgroup}"}}"#), "400"),
        ("PUT", "/v1/bottles/x1".into(), r#"{"cgroup":"../escape"}"#.into(), "400"),
        ("PUT", "/v1/bottles/x1".into(), format!(r#"{{"cgroup":"{cgroup}","routes":"relative.yaml"}}"#), "400"),
        ("DELETE", "/v1/bottles/nope".into(), String::new(), "404"),
        ("PATCH", "/v1/bottles".into(), String::new(), "405"),
    ];
    for (method, path, body, want) in &cases {
        let body = (!body.is_empty()).then_some(body.as_str());
        let (code, text) = api(&socket, method, path, body);
        assert_eq!(code, *want, "{method} {path} {body:?}: {text}");
        let error: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        assert!(error["error"].as_str().is_some_and(|e| !e.is_empty()), "{method} {path}: no clear error: {text}");
        assert_eq!(bottle_names(&w), before, "{method} {path} changed the bottles");
    }
    assert!(!egress_e2e::cgroup2_mount().unwrap().join(cgroup.trim_start_matches('/')).exists(), "a cgroup was made");

    // From inside a bottle: an unprivileged agent cannot open it, and root inside a
    // namespaced bottle is refused by the gateway (the request never reaches the API).
    let probe = format!(
        "import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect('{}')\n    \
         s.sendall(b'GET /v1/bottles HTTP/1.1\\r\\nHost: a\\r\\nConnection: close\\r\\n\\r\\n')\n    \
         print(s.recv(200).split(b'\\r\\n')[0].decode())\nexcept OSError as e:\n    print('refused', e.errno)\n",
        socket.display()
    );
    let out = w.env.exec_with_flags(w.env.bottle(), &["--user", "nobody"], &["python3", "-c", &probe], &[]);
    assert_eq!(stdout(&out).trim(), "refused 13", "unprivileged agent and the admin socket: {}", stderr(&out));
    let out = w.run(&["python3", "-c", &probe]);
    assert_eq!(stdout(&out).trim(), "HTTP/1.1 403 Forbidden", "root inside a bottle: {}", stderr(&out));
}

#[test]
fn cli_commands_say_plainly_when_the_gateway_is_not_running() {
    let dir = std::env::temp_dir().join(format!("egress-e2e-admin-down-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.yaml");
    std::fs::write(
        &config,
        format!("admin_socket: {}/admin.sock\nstate_dir: {}/state\n", dir.display(), dir.display()),
    )
    .unwrap();
    for args in [vec!["bottles"], vec!["attach", "--bottle", "x", "--cgroup", "egress/x"], vec!["reload"]] {
        let out = Command::new(gateway_bin()).args(&args).arg("--config").arg(&config).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded with no gateway");
        assert!(stderr(&out).contains("not running"), "{args:?}: {}", stderr(&out));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A namespace the gateway did not make (a container runtime's, named with `ip netns`):
/// attached at run time with `--netns PATH`, served there, and left in place on detach.
#[test]
fn a_bottle_attached_to_an_existing_namespace_is_served_there_and_the_namespace_kept() {
    let spec = WorldSpec { hosts: &HOSTS, routes: &routes(HOSTS[0]), ..Default::default() };
    let w = World::start_spec("admin-netns-path", &spec);
    let ns = egress_e2e::podman::Netns::new(&format!("egress-e2e-path-{}", std::process::id()));
    let (attached, out) = attach(&w, "p", &routes(HOSTS[1]), ns.path().to_str().unwrap());
    let name = attached.name.clone();
    assert!(out.status.success(), "attach: {}{}", stdout(&out), stderr(&out));
    let out = w.run_in(&name, &["sh", "-c", "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '"]);
    assert_eq!(stdout(&out).trim(), "lo", "the command runs in the given namespace: {}", stderr(&out));
    let (code, body) = w.curl_in(&name, &[&w.url(HOSTS[1], "/p")]);
    assert_eq!(code, "200", "{body}");
    let (code, _) = w.curl_in(&name, &[&w.url(HOSTS[0], "/p")]);
    assert_eq!(code, "403");
    let out = w.env.cli(&["detach", "--bottle", &name]);
    assert!(out.status.success(), "detach: {}", stderr(&out));
    assert!(ns.path().exists(), "the gateway removed a namespace it did not make");
}

/// Issue 14: systemd's notify protocol (a fake `NOTIFY_SOCKET`) and `/readyz`, which
/// turns 503 when a bottle's programs are gone.
#[test]
fn readiness_is_told_to_systemd_and_answered_on_the_admin_socket() {
    use std::os::unix::net::UnixDatagram;
    let notify_path = std::env::temp_dir().join(format!("egress-e2e-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let next = || {
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let spec = WorldSpec {
        hosts: &HOSTS,
        routes: &routes(HOSTS[0]),
        gateway_env: &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
        ..Default::default()
    };
    let mut w = World::start_spec("readyz", &spec);
    let ready = next();
    assert!(ready.starts_with("READY=1\nSTATUS=serving 1 bottle(s)"), "{ready}");
    let socket = w.env.dir.join("admin.sock");
    let (code, body) = api(&socket, "GET", "/healthz", None);
    assert_eq!((code.as_str(), body.trim()), ("200", r#"{"alive":true}"#));
    let (code, body) = api(&socket, "GET", "/readyz", None);
    assert_eq!(code, "200", "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((ready["ready"].as_bool(), ready["bottles"].as_u64()), (Some(true), Some(1)));

    // A reload is bracketed by RELOADING=1 and READY=1.
    w.env.signal_gateway(libc::SIGHUP);
    let reloading = next();
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading}");
    assert!(next().starts_with("READY=1"));

    // A bottle whose pinned programs were removed (by hand, or another tool) is not ready.
    let pin = w.env.bpffs_dir.join("bottles").join(w.env.bottle()).join("egress_connect4");
    std::fs::remove_file(&pin).unwrap();
    let (code, body) = api(&socket, "GET", "/readyz", None);
    assert_eq!(code, "503", "{body}");
    assert!(body.contains(w.env.bottle()) && body.contains("egress_connect4"), "{body}");

    w.env.stop_gateway();
    let stopping = next();
    let _ = std::fs::remove_file(&notify_path);
    assert_eq!(stopping, "STOPPING=1");
}

/// Issue 14: `/metrics` (admin socket and `admin_listen`) parses as Prometheus text and its
/// counters match the traffic sent; `admin_listen` serves nothing but the probes and
/// metrics, and a bottle cannot reach it.
#[test]
fn metrics_parse_and_count_the_traffic_sent() {
    let port = egress_e2e::free_port();
    let config = format!("admin_listen: 127.0.0.1:{port}\n");
    let routes = format!(
        "log: 1\nroutes:\n  - host: {h}\n    matches:\n      - paths: [{{type: prefix, value: /v1/}}]\n    \
         dlp:\n      outbound_on_match: block\n",
        h = HOSTS[0]
    );
    let spec = WorldSpec { hosts: &HOSTS, routes: &routes, config: &config, ..Default::default() };
    let w = World::start_spec("metrics", &spec);
    let token = format!("ghp_{}", &"Kq7Zr2Xw9Lm4Np6Ts8Vb1Yc3Hd5Fg0Jk2Lm4Np"[..36]);
    for i in 0..3 {
        let (code, body) = w.curl(&[&w.url(HOSTS[0], &format!("/v1/ok{i}"))]);
        assert_eq!(code, "200", "{body}");
    }
    for _ in 0..2 {
        let (code, _) = w.curl(&[&w.url(HOSTS[0], "/v2/not-routed")]);
        assert_eq!(code, "403");
    }
    let (code, _) = w.curl(&["--data-binary", &format!("key={token}"), &w.url(HOSTS[0], "/v1/leak")]);
    assert_eq!(code, "403", "the DLP block");
    w.env.signal_gateway(libc::SIGHUP);
    w.env.wait_for_log("routes and credentials reloaded");

    let scrape = |text: &str| {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        prometheus_parse::Scrape::parse(lines).unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{text}"))
    };
    let value = |s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]| -> f64 {
        s.samples
            .iter()
            .filter(|m| m.metric == name && labels.iter().all(|(k, v)| m.labels.get(k) == Some(*v)))
            .map(|m| match m.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    let socket = w.env.dir.join("admin.sock");
    let (code, body) = api(&socket, "GET", "/metrics", None);
    assert_eq!(code, "200", "{body}");
    let tcp = Command::new("curl")
        .args(["-sS", "-m", "10", &format!("http://127.0.0.1:{port}/metrics")])
        .output()
        .expect("curl admin_listen");
    assert!(tcp.status.success(), "admin_listen: {}", stderr(&tcp));
    for text in [body, stdout(&tcp)] {
        let s = scrape(&text);
        let bottle = ("bottle", w.env.bottle());
        assert_eq!(value(&s, "egress_requests_total", &[bottle, ("decision", "allowed")]), 3.0, "{text}");
        assert_eq!(value(&s, "egress_requests_total", &[bottle, ("source", "policy")]), 2.0, "{text}");
        assert_eq!(value(&s, "egress_requests_total", &[bottle, ("source", "dlp")]), 1.0, "{text}");
        let finding = [bottle, ("detector", "token_patterns"), ("action", "block")];
        assert_eq!(value(&s, "egress_dlp_findings_total", &finding), 1.0, "{text}");
        assert_eq!(value(&s, "egress_reloads_total", &[("result", "ok")]), 1.0, "{text}");
        assert_eq!(value(&s, "egress_bottle_attached", &[bottle]), 1.0, "{text}");
        assert_eq!(value(&s, "egress_tls_handshakes_total", &[("side", "client"), ("result", "ok")]), 6.0, "{text}");
        assert!(value(&s, "egress_kernel_tcp_redirected_total", &[bottle]) >= 6.0, "{text}");
        assert_eq!(value(&s, "egress_build_info", &[]), 1.0, "{text}");
        assert!(!text.contains(&token), "a secret reached the metrics");
    }

    // Read-only over TCP: attach, detach and reload are for the admin socket.
    let post = Command::new("curl")
        .args(["-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
        .arg(format!("http://127.0.0.1:{port}/v1/reload"))
        .output()
        .unwrap();
    assert_eq!(stdout(&post), "403");
    // From a bottle, the address is redirected to the proxy like any other: no metrics.
    let out = w.run(&["curl", "-sS", "-m", "10", &format!("http://127.0.0.1:{port}/metrics")]);
    assert!(!stdout(&out).contains("egress_requests_total"), "a bottle reached admin_listen: {}", stdout(&out));
}
