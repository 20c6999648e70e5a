//! The gateway's lifecycle (issue 14): a SIGTERM drains (no new connection, requests in
//! flight finish, held requests get 403 and their proposals close as `stopped`) and the
//! process exits within `drain_seconds`, its bottles still attached (fail closed).
#![cfg(feature = "root-tests")]

use std::{
    thread,
    time::{Duration, Instant},
};

use egress_e2e::{
    stderr,
    world::{World, WorldSpec, curl_result},
};

const HOST: &str = "api.upstream.test";
const ROUTES: &str = "log: 1\nroutes:\n  - host: api.upstream.test\n    dlp:\n      outbound_on_match: supervise\n";
const DRAIN_SECONDS: u64 = 20;

/// Whether process `pid` has exited (gone, or a zombie its parent has not reaped).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) == Some("Z"),
        Err(_) => true,
    }
}

fn wait_for(what: &str, within: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_drains_in_flight_requests_answers_held_ones_and_exits() {
    let queue = egress_e2e::private_base(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")))
        .join(format!("lifecycle-queue-{}", std::process::id()));
    let bottle = format!("    supervise:\n      queue_dir: {}\n      timeout_seconds: 120\n", queue.display());
    let config = format!("drain_seconds: {DRAIN_SECONDS}\n");
    let w = World::start_spec(
        "drain",
        &WorldSpec { hosts: &[HOST], routes: ROUTES, bottle: &bottle, config: &config, ..Default::default() },
    );
    let pid = w.env.gateway_pid().expect("gateway running");
    // A response streamed over about three seconds (100 events, 30 ms apart).
    let pieces: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
    let streaming = w.spawn_curl(&["-N", "-d", &pieces.join("|"), &w.url(HOST, "/sse")]);
    // A request held for an operator (it carries a token under `supervise`).
    let held = w.spawn_curl(&["-d", &format!("key=ghp_{}", "Q".repeat(36)), &w.url(HOST, "/v1/send")]);
    wait_for("the request is held", Duration::from_secs(20), || {
        std::fs::read_dir(&queue)
            .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".json")))
            .unwrap_or(false)
    });
    wait_for("the stream reached the upstream", Duration::from_secs(20), || {
        w.up.requests().iter().any(|r| r.path_and_query == "/sse")
    });

    w.env.signal_gateway(libc::SIGTERM);
    w.env.wait_for_log("stopping: no new connections");
    // A new connection is not served by the stopping gateway.
    let (code, _) = w.curl(&["-m", "5", &w.url(HOST, "/after")]);
    assert_ne!(code, "200", "a connection made after SIGTERM was served");

    let (code, body) = curl_result(&held.wait_with_output().unwrap());
    assert_eq!(code, "403", "the held request: {body}");
    assert!(body.contains("stopping"), "{body}");
    let (code, body) = curl_result(&streaming.wait_with_output().unwrap());
    assert_eq!(code, "200", "the stream in flight: {body}");
    assert!(body.contains("\"text\":\"p99\"") && body.contains("message_stop"), "the stream was cut: {body}");

    wait_for("the gateway exits within drain_seconds", Duration::from_secs(DRAIN_SECONDS + 5), || exited(pid));
    let log = w.env.gateway_log();
    assert!(log.contains("stopped; bottles stay attached"), "{log}");
    assert!(!log.contains("drain time over"), "{log}");
    assert!(!w.up.requests().iter().any(|r| r.path_and_query == "/after"), "the upstream saw a request after SIGTERM");
    // Its proposal is closed as `stopped`, not left pending for an operator.
    let processed: Vec<String> = std::fs::read_dir(queue.join("processed"))
        .map(|d| d.flatten().filter_map(|e| std::fs::read_to_string(e.path()).ok()).collect())
        .unwrap_or_default();
    assert!(processed.iter().any(|t| t.contains("\"closed\": \"stopped\"")), "{processed:?}");
    // The bottle stays attached: its connections are refused, never sent direct.
    let out = w.env.cli(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(status[0]["attached"], true, "{status} {}", stderr(&out));
    let _ = std::fs::remove_dir_all(&queue);
}

/// A connection still open at the end of `drain_seconds` is cut, and the process exits.
#[test]
fn the_drain_ends_at_drain_seconds() {
    let w = World::start_spec(
        "draincut",
        &WorldSpec {
            hosts: &[HOST],
            routes: "routes:\n  - host: api.upstream.test\n",
            config: "drain_seconds: 2\n",
            ..Default::default()
        },
    );
    let pid = w.env.gateway_pid().expect("gateway running");
    // About 30 s of events.
    let pieces: Vec<String> = (0..1000).map(|i| format!("p{i}")).collect();
    let streaming = w.spawn_curl(&["-N", "-d", &pieces.join("|"), &w.url(HOST, "/sse")]);
    wait_for("the stream reached the upstream", Duration::from_secs(20), || {
        w.up.requests().iter().any(|r| r.path_and_query == "/sse")
    });
    w.env.signal_gateway(libc::SIGTERM);
    wait_for("the gateway exits after drain_seconds", Duration::from_secs(2 + 10), || exited(pid));
    w.env.wait_for_log("drain time over");
    let (_, body) = curl_result(&streaming.wait_with_output().unwrap());
    assert!(!body.contains("message_stop"), "the stream outlived the drain: {body}");
}

/// Two clients in the bottle, each making one HTTPS request (a new connection) after
/// another until the file argv[2] exists; prints how many succeeded and each failure.
const LOAD_PY: &str = r#"
import os, ssl, sys, threading, urllib.request
url, stop = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=os.environ['SSL_CERT_FILE'])
lock, ok, failed = threading.Lock(), [0], []
def client():
    while not os.path.exists(stop):
        try:
            with urllib.request.urlopen(url, timeout=30, context=ctx) as r:
                r.read()
                with lock:
                    ok[0] += 1
        except Exception as e:
            with lock:
                failed.append(repr(e))
threads = [threading.Thread(target=client) for _ in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print('ok', ok[0])
for f in failed:
    print('failed', f)
"#;

/// Socket activation: a restart that hands the listeners over refuses no connection.
/// The test holds the TCP and DNS listeners (as systemd's socket unit does) and passes
/// them to gateway A; under load, and with a response streaming, A gets SIGTERM and B
/// starts with the same listeners. Every request succeeds (those made while neither
/// accepts wait in the backlog or the socket's queue), the stream finishes on A, and A
/// exits.
#[test]
fn a_restart_with_passed_listeners_refuses_no_connection() {
    use std::os::fd::AsRawFd;
    let mut w = World::start_spec(
        "handover",
        &WorldSpec {
            hosts: &[HOST],
            routes: "routes:\n  - host: api.upstream.test\n",
            config: &format!("drain_seconds: {DRAIN_SECONDS}\n"),
            ..Default::default()
        },
    );
    // The harness's gateway bound its own listeners: from now on the test holds them.
    w.env.stop_gateway();
    let tcp = std::net::TcpListener::bind(("127.0.0.1", w.env.listen_port)).expect("bind the TCP listener");
    let udp = std::net::UdpSocket::bind(("127.0.0.1", w.env.dns_port)).expect("bind the DNS socket");
    let fds = [tcp.as_raw_fd(), udp.as_raw_fd()];
    assert!(w.env.start_gateway_passing(&fds).is_none());
    let a_pid = w.env.gateway_pid().unwrap();
    w.env.wait_for_log("using the TCP listener passed by the service manager");
    w.env.wait_for_log("using the DNS socket passed by the service manager");

    let during = |w: &World| w.up.requests().iter().filter(|r| r.path_and_query == "/during").count();
    let pieces: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
    let streaming = w.spawn_curl(&["-N", "-d", &pieces.join("|"), &w.url(HOST, "/sse")]);
    let stop = w.env.dir.join("stop-load");
    let load = w
        .env
        .spawn_exec(&["python3", "-c", LOAD_PY, &w.url(HOST, "/during"), &stop.display().to_string()], &w.trust_vars());
    wait_for("requests flow through A", Duration::from_secs(30), || during(&w) >= 3);

    // A stops accepting (and gives up the admin socket); B takes the same listeners.
    w.env.signal_gateway(libc::SIGTERM);
    w.env.wait_for_log("stopping: no new connections");
    let a = w.env.start_gateway_passing(&fds).expect("A handed back");
    let through_a = during(&w);
    wait_for("requests flow through B", Duration::from_secs(30), || during(&w) >= through_a + 3);
    std::fs::write(&stop, "").unwrap();
    let out = load.wait_with_output().unwrap();
    let report = egress_e2e::stdout(&out);
    assert!(out.status.success(), "load: {report}{}", stderr(&out));
    let failures: Vec<&str> = report.lines().filter(|l| l.starts_with("failed")).collect();
    if !failures.is_empty() {
        let log = w.env.gateway_log();
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
        panic!("requests failed across the handover:\n{report}\ngateway warnings:\n{}", warnings.join("\n"));
    }
    let (code, body) = curl_result(&streaming.wait_with_output().unwrap());
    assert_eq!(code, "200", "the stream in flight on A: {body}");
    assert!(body.contains("message_stop"), "the stream was cut: {body}");
    let a = a.wait_with_output().unwrap();
    assert!(exited(a_pid) && a.status.success(), "A exited with {}", a.status);
    let log = w.env.gateway_log();
    assert!(!log.contains("drain time over"), "{log}");
    drop((tcp, udp));
}

/// A reload that fails is reported: `egress-gateway reload` (the unit's `ExecReload=`, so
/// `systemctl reload` fails too) exits 1 naming the bottle and the field, and a SIGHUP
/// logs it at error level with the reason; the previous routes stay.
#[test]
fn a_failed_reload_is_reported_by_the_cli_and_logged_at_error_on_sighup() {
    let mut w = World::start_spec(
        "reloadfail",
        &WorldSpec { hosts: &[HOST], routes: "routes:\n  - host: api.upstream.test\n", ..Default::default() },
    );
    w.env.write_routes("routes:\n  - host: api.upstream.test\n    colour: blue\n");
    let out = w.env.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}{}", egress_e2e::stdout(&out), stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("bottle {}", w.env.bottle())) && err.contains("colour"), "{err}");

    w.env.signal_gateway(egress_e2e::SIGHUP);
    let line =
        wait_for_line(&w, |l| l.contains("\"level\":\"ERROR\"") && l.contains("reload failed") && l.contains("colour"));
    assert!(line.contains(&format!("\"bottle\":\"{}\"", w.env.bottle())), "{line}");
    let (code, _) = w.curl(&["-m", "10", &w.url(HOST, "/still")]);
    assert_eq!(code, "200", "the previous routes were lost");
    w.env.stop_gateway();
}

/// Waits for a line of the gateway log that `pred` accepts.
fn wait_for_line(w: &World, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = w.env.gateway_log().lines().find(|l| pred(l)) {
            return l.to_string();
        }
        assert!(Instant::now() < deadline, "no such log line:\n{}", w.env.gateway_log());
        thread::sleep(Duration::from_millis(50));
    }
}
