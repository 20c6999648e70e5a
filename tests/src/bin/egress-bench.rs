//! `cargo xtask bench proxy`: measures the gateway against going direct, side by side, on
//! loopback: keep-alive HTTPS requests per second with 16 KiB JSON bodies and the added
//! latency, new intercepted TLS connections per second, and the gateway's RSS idle and
//! per idle connection. Needs root (a real bottle). `egress-bench client ...` is the load
//! generator, run inside the bottle by the orchestrator.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use egress_e2e::{
    EnvSpec, MoreBottle, TestEnv,
    https::{HttpsUpstream, TestCa},
    stderr, stdout,
};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

const HOST: &str = "api.bench.test";
const ROUTES: &str = "log: 0\nroutes:\n  - host: api.bench.test\n";
const BODY_BYTES: usize = 16 * 1024;
const RUN: Duration = Duration::from_secs(5);
const CONCURRENCY: usize = 16;
const IDLE_CONNECTIONS: usize = 200;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("client") {
        client_main(&args[2..]);
        return;
    }
    orchestrate();
}

// === orchestrator ===

fn orchestrate() {
    let ca = TestCa::new();
    let mut env = TestEnv::new(
        "bench",
        EnvSpec {
            hosts: &[(HOST, "127.0.0.2")],
            routes: ROUTES,
            extra_config: "upstream_ca_files: [test-ca.pem]",
            // The same policy for a bottle in a network namespace of its own.
            more_bottles: &[MoreBottle { suffix: "ns", routes: ROUTES, netns: true, extra: "" }],
            ..Default::default()
        },
    );
    let ns_bottle = env.more_bottle("ns");
    let ca_path = env.write_file("test-ca.pem", &ca.pem);
    let upstream = HttpsUpstream::start("127.0.0.2", &[HOST], &ca, None);
    let target = upstream.addr;
    env.start_gateway();
    let bundle = env.trust_env().remove(0).1;
    let me = std::env::current_exe().unwrap();
    let me = me.to_str().unwrap();
    let pid = env.gateway_pid().expect("gateway running");
    let rss_idle = rss_kib(pid);

    println!("egress-gateway proxy benchmark: loopback, 2 cores shared by client, gateway and upstream");
    println!("keep-alive HTTPS POST, {BODY_BYTES} B JSON body, {CONCURRENCY} connections, {RUN:?} per run\n");
    let direct = run_client(None, &[me, "client", "keepalive", &target.to_string(), ca_path.to_str().unwrap()]);
    let through = run_client(Some((&env, env.bottle())), &[me, "client", "keepalive", &target.to_string(), &bundle]);
    let through_ns = run_client(Some((&env, &ns_bottle)), &[me, "client", "keepalive", &target.to_string(), &bundle]);
    print_row("direct", &direct);
    print_row("through gateway", &through);
    print_row("namespaced bottle", &through_ns);
    print_added("host-namespace bottle", &direct, &through);
    print_added("namespaced bottle", &direct, &through_ns);
    println!();

    println!("one connection, one request at a time (latency without queueing):");
    let direct = run_client(None, &[me, "client", "sequential", &target.to_string(), ca_path.to_str().unwrap()]);
    let through = run_client(Some((&env, env.bottle())), &[me, "client", "sequential", &target.to_string(), &bundle]);
    let through_ns = run_client(Some((&env, &ns_bottle)), &[me, "client", "sequential", &target.to_string(), &bundle]);
    print_row("direct", &direct);
    print_row("through gateway", &through);
    print_row("namespaced bottle", &through_ns);
    print_added("host-namespace bottle", &direct, &through);
    print_added("namespaced bottle", &direct, &through_ns);
    println!();

    let direct = run_client(None, &[me, "client", "newconn", &target.to_string(), ca_path.to_str().unwrap()]);
    let through = run_client(Some((&env, env.bottle())), &[me, "client", "newconn", &target.to_string(), &bundle]);
    let through_ns = run_client(Some((&env, &ns_bottle)), &[me, "client", "newconn", &target.to_string(), &bundle]);
    println!("new TLS connection per request (one request each):");
    print_row("direct", &direct);
    print_row("through gateway", &through);
    print_row("namespaced bottle", &through_ns);
    println!(
        "  namespaced / host-namespace bottle: {:.1}% of the new connections per second",
        100.0 * rate(&through_ns) / rate(&through)
    );

    // Idle connections held open through the gateway.
    let n = IDLE_CONNECTIONS.to_string();
    let script = format!("{me} client idle {target} {bundle} {n}");
    let child = env.spawn_in_cgroup(&script);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rss_busy = 0;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        if upstream.connections() >= IDLE_CONNECTIONS {
            std::thread::sleep(Duration::from_millis(500));
            rss_busy = rss_kib(pid);
            break;
        }
    }
    let _ = std::process::Command::new("kill").arg(child.to_string()).status();
    println!();
    println!("gateway RSS idle: {:.1} MiB", rss_idle as f64 / 1024.0);
    println!(
        "gateway RSS with {IDLE_CONNECTIONS} idle intercepted connections: {:.1} MiB ({:.1} KiB per connection)",
        rss_busy as f64 / 1024.0,
        rss_busy.saturating_sub(rss_idle) as f64 / IDLE_CONNECTIONS as f64
    );
}

#[derive(Debug, Default, Clone, serde::Deserialize, serde::Serialize)]
struct Report {
    requests: u64,
    errors: u64,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
}

fn print_row(label: &str, r: &Report) {
    println!(
        "  {label:<16} {:>8.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  ({} requests, {} errors)",
        r.requests as f64 / r.secs,
        r.p50_us as f64 / 1000.0,
        r.p99_us as f64 / 1000.0,
        r.requests,
        r.errors
    );
}

fn rate(r: &Report) -> f64 {
    r.requests as f64 / r.secs
}

fn print_added(label: &str, direct: &Report, through: &Report) {
    let p50_added = through.p50_us.saturating_sub(direct.p50_us);
    let p99_added = through.p99_us.saturating_sub(direct.p99_us);
    println!(
        "added latency, {label}: p50 {:.3} ms, p99 {:.3} ms",
        p50_added as f64 / 1000.0,
        p99_added as f64 / 1000.0
    );
}

/// Runs the load generator directly, or in a bottle of `env`.
fn run_client(bottle: Option<(&TestEnv, &str)>, argv: &[&str]) -> Report {
    let out = match bottle {
        Some((env, name)) => env.exec_in(name, argv, &[]),
        None => std::process::Command::new(argv[0]).args(&argv[1..]).output().unwrap(),
    };
    assert!(out.status.success(), "client failed: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|e| panic!("client output {e}: {}", stdout(&out)))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

// === client ===

fn client_main(args: &[String]) {
    let mode = args[0].as_str();
    let target: SocketAddr = args[1].parse().expect("target address");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let tls = egress_e2e::https::client_config(&std::fs::read(&args[2]).expect("roots file"), &[]);
    match mode {
        "keepalive" => {
            println!("{}", serde_json::to_string(&rt.block_on(load(tls, target, true, CONCURRENCY))).unwrap())
        }
        "sequential" => println!("{}", serde_json::to_string(&rt.block_on(load(tls, target, true, 1))).unwrap()),
        "newconn" => {
            println!("{}", serde_json::to_string(&rt.block_on(load(tls, target, false, CONCURRENCY))).unwrap())
        }
        "idle" => {
            let n: usize = args[3].parse().unwrap();
            rt.block_on(async {
                let mut held = Vec::new();
                for _ in 0..n {
                    if let Ok(mut s) = connect(&tls, target).await {
                        let _ = request(&mut s).await;
                        held.push(s);
                    }
                }
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(held);
            });
        }
        other => panic!("unknown client mode {other}"),
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(tls: &Arc<rustls::ClientConfig>, target: SocketAddr) -> Result<Sender, String> {
    let tcp = tokio::net::TcpStream::connect(target).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}

async fn request(send: &mut Sender) -> Result<(), String> {
    let body = format!("{{\"data\":\"{}\"}}", "x".repeat(BODY_BYTES - 11));
    let req = http::Request::post("/v1/bench")
        .header("host", HOST)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    resp.into_body().collect().await.map_err(|e| e.to_string())?;
    Ok(())
}

async fn load(tls: Arc<rustls::ClientConfig>, target: SocketAddr, keepalive: bool, concurrency: usize) -> Report {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let tls = tls.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut conn = None;
            while start.elapsed() < RUN {
                let t = Instant::now();
                if conn.is_none() || !keepalive {
                    conn = connect(&tls, target).await.ok();
                }
                let ok = match conn.as_mut() {
                    Some(s) => request(s).await.is_ok(),
                    None => false,
                };
                if ok {
                    lat.push(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                    conn = None;
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.unwrap();
        all.extend(lat);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct =
        |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0);
    Report { requests: all.len() as u64, errors, secs, p50_us: pct(0.5), p99_us: pct(0.99) }
}
