//! TLS interception and the HTTP policy engine, end to end: real clients in a bottle,
//! local TLS upstreams with their own CA, the gateway in between.
#![cfg(feature = "root-tests")]

use egress_e2e::{stderr, stdout, upstream::TcpUpstream, world::World};

/// The example routes, verbatim.
const ROUTES: &str = include_str!("../egress-gateway/testdata/demo-routes.yaml");

const CDN_TOKEN: &str = "cdn-secret-4f1d9c2a7b";

fn world(test: &str) -> World {
    let hosts = ["api.upstream.test", "git.upstream.test", "x.cdn.upstream.test", "other.upstream.test"];
    World::start(test, &hosts, ROUTES, &[("EGRESS_TOKEN_CDN", CDN_TOKEN)])
}

#[test]
fn curl_allowed_route_passes_and_unmatched_host_path_method_get_403() {
    let w = world("routes");
    let (code, body) = w.curl(&[&w.url("api.upstream.test", "/v1/models")]);
    assert_eq!(code, "200", "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["path"], "/v1/models");

    let (code, body) = w.curl(&[&w.url("api.upstream.test", "/v2/models")]);
    assert_eq!(code, "403", "unmatched path: {body}");
    let (code, _) = w.curl(&["-X", "DELETE", &w.url("api.upstream.test", "/v1/models")]);
    assert_eq!(code, "403", "unmatched method");
    let before = w.up.requests().len();
    let (code, _) = w.curl(&[&w.url("other.upstream.test", "/v1/models")]);
    assert_ne!(code, "200", "host not in routes");
    assert_eq!(w.up.requests().len(), before, "a denied request reached the upstream");
    assert_eq!(w.up.requests().len(), 1);
}

#[test]
fn python_and_node_clients_pass_through_interception() {
    let w = world("clients");
    let url = w.url("api.upstream.test", "/v1/python");
    let py = format!(
        "import json, urllib.request\n\
         r = urllib.request.urlopen(urllib.request.Request('{url}', data=b'{{\"a\":1}}', method='POST'), timeout=10)\n\
         print(r.status, json.load(r)['body'])\n"
    );
    let out = w.run(&["python3", "-c", &py]);
    assert!(out.status.success(), "python: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "200 {\"a\":1}");

    let py_requests = format!(
        "import requests\nr = requests.get('{}', timeout=10)\nprint(r.status_code)\n",
        w.url("api.upstream.test", "/v1/requests")
    );
    let out = w.run(&["python3", "-c", &py_requests]);
    assert!(out.status.success(), "python requests: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "200");

    let js = format!(
        "fetch('{}').then(async r => console.log(r.status, (await r.json()).path)).catch(e => {{ console.error(e); process.exit(1) }})",
        w.url("api.upstream.test", "/v1/node")
    );
    let out = w.run(&["node", "-e", &js]);
    assert!(out.status.success(), "node: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "200 /v1/node");
}

#[test]
fn injected_credential_reaches_upstream_and_the_agents_own_never_does() {
    let w = world("inject");
    let (code, body) =
        w.curl(&["-H", "Authorization: Bearer agent-own-token", &w.url("x.cdn.upstream.test", "/asset.js")]);
    assert_eq!(code, "200", "{body}");
    let reqs = w.up.requests();
    let last = reqs.last().unwrap();
    assert_eq!(last.headers.get("authorization").map(String::as_str), Some(&*format!("Bearer {CDN_TOKEN}")));
    for r in &reqs {
        assert!(!format!("{:?}", r.headers).contains("agent-own-token"), "the agent's credential leaked");
    }
    // The agent never sees the injected value, even when the upstream reflects it.
    assert!(!body.contains(CDN_TOKEN), "the injected credential reached the agent: {body}");
    assert!(!w.env.gateway_log().contains(CDN_TOKEN), "the credential appears in the gateway's log");
}

#[test]
fn git_clone_works_and_git_push_is_refused() {
    let w = world("git");
    let clone_dir = w.env.dir.join("clone");
    let out = w.run(&["git", "clone", "-q", &w.url("git.upstream.test", "/git/repo.git"), clone_dir.to_str().unwrap()]);
    assert!(out.status.success(), "git clone: {}", stderr(&out));
    assert!(clone_dir.join("README").exists());

    std::fs::write(clone_dir.join("NEW"), "pushed\n").unwrap();
    let git = |args: &[&str]| {
        let mut cmd = vec![
            "git",
            "-C",
            clone_dir.to_str().unwrap(),
            "-c",
            "user.name=e2e",
            "-c",
            "user.email=e2e@example.invalid",
        ];
        cmd.extend_from_slice(args);
        w.run(&cmd)
    };
    assert!(git(&["add", "NEW"]).status.success());
    assert!(git(&["commit", "-q", "-m", "second"]).status.success());
    let out = git(&["push", "-q", "origin", "main"]);
    assert!(!out.status.success(), "git push succeeded");
    assert!(!w.up.requests().iter().any(|r| r.path_and_query.contains("git-receive-pack")), "push reached the server");
}

#[test]
fn http2_is_spoken_on_both_sides() {
    let w = world("h2");
    let (code, body) = w.curl(&["--http2", &w.url("api.upstream.test", "/v1/h2")]);
    assert_eq!(code, "200", "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["version"], "HTTP/2.0", "upstream side");
    let version = |flag: &str, path: &str| {
        let url = w.url("api.upstream.test", path);
        let out = w.run(&["curl", "-sS", "-m", "10", flag, "-o", "/dev/null", "-w", "%{http_version}", &url]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    assert_eq!(version("--http2", "/v1/h2"), "2", "client side speaks h2");
    assert_eq!(version("--http1.1", "/v1/h1"), "1.1", "h2 is offered only to clients that offer it");
}

#[test]
fn websocket_echo_both_directions() {
    let w = world("ws");
    let js = format!(
        "const ws = new WebSocket('wss://x.cdn.upstream.test:{port}/ws');\n\
         ws.onopen = () => ws.send('ping from the bottle');\n\
         ws.onmessage = (m) => {{ console.log(m.data); ws.close(); }};\n\
         ws.onerror = (e) => {{ console.error('ws error', e.message); process.exit(1); }};\n",
        port = w.up.port()
    );
    let out = w.run(&["node", "--experimental-websocket", "-e", &js]);
    assert!(out.status.success(), "node ws: {} {}", stdout(&out), stderr(&out));
    assert_eq!(stdout(&out).trim(), "ping from the bottle");
}

#[test]
fn sni_and_host_must_agree() {
    let w = world("sni");
    let before = w.up.requests().len();
    let (code, _) = w.curl(&["-H", "Host: git.upstream.test", &w.url("api.upstream.test", "/v1/x")]);
    assert!(code == "421" || code == "403", "mismatched Host was not refused: {code}");
    assert_eq!(w.up.requests().len(), before);
}

#[test]
fn plain_http_with_an_allowed_host_never_reaches_another_address() {
    let w = world("plainhost");
    let decoy = TcpUpstream::start("127.0.0.3");
    let (code, _) = w.curl(&["-H", "Host: api.upstream.test", &format!("http://127.0.0.3:{}/v1/x", decoy.port())]);
    assert_ne!(code, "200");
    assert_eq!(decoy.hits(), 0, "data for api.upstream.test was delivered to 127.0.0.3");
}

#[test]
fn connect_requests_are_policed_like_direct_ones() {
    let w = world("connect");
    // A proxy variable pointing at an address nobody listens on: the connection is
    // redirected to the gateway, which sees the CONNECT.
    let (code, body) = w.curl(&["-x", "http://127.0.0.9:3128", &w.url("api.upstream.test", "/v1/via-connect")]);
    assert_eq!(code, "200", "allowed CONNECT: {body}");
    let before = w.up.requests().len();
    let (code, _) = w.curl(&["-x", "http://127.0.0.9:3128", &w.url("api.upstream.test", "/v2/denied")]);
    assert_eq!(code, "403");
    let (code, _) = w.curl(&["-x", "http://127.0.0.9:3128", &w.url("other.upstream.test", "/v1/x")]);
    assert_ne!(code, "200");
    assert_eq!(w.up.requests().len(), before);
}

#[test]
fn allowlist_answers_the_bottle_with_its_routes() {
    let w = world("allowlist");
    let (code, body) = w.curl(&["http://_egress.local/allowlist"]);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("api.upstream.test"), "{body}");
    assert!(!body.contains(CDN_TOKEN), "the allowlist leaks a secret");
}

/// `exec --trust-env` alone makes the usual clients trust the gateway (no bundle exported
/// by hand), and without it they refuse the intercepted certificate.
#[test]
fn exec_trust_env_makes_curl_python_and_node_trust_the_gateway() {
    let w = world("trust-env");
    let bottle = w.env.bottle().to_string();
    let url = w.url("api.upstream.test", "/v1/trust");
    let with = |cmd: &[&str]| w.env.exec_with_flags(&bottle, &["--allow-root", "--trust-env"], cmd, &[]);

    let out = w.env.exec_with_flags(&bottle, &["--allow-root"], &["curl", "-sS", "-o", "/dev/null", &url], &[]);
    assert_eq!(out.status.code(), Some(60), "without --trust-env curl must refuse the gateway's certificate");

    let out = with(&["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", &url]);
    assert_eq!(stdout(&out), "200", "curl: {}", stderr(&out));
    let py = format!("import requests\nprint(requests.get('{url}', timeout=10).status_code)\n");
    let out = with(&["python3", "-c", &py]);
    assert_eq!(stdout(&out).trim(), "200", "python requests: {}", stderr(&out));
    let js =
        format!("fetch('{url}').then(r => console.log(r.status)).catch(e => {{ console.error(e); process.exit(1) }})");
    let out = with(&["node", "-e", &js]);
    assert_eq!(stdout(&out).trim(), "200", "node: {}", stderr(&out));
}
