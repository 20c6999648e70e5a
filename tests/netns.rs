//! Bottles in their own network namespace (`netns: new`): the gateway's listeners live on
//! the namespace's loopback, the namespace holds only `lo`, and the kernel's records are
//! never attributed across bottles whose clients have the same addresses.
#![cfg(feature = "root-tests")]

use egress_e2e::{
    MoreBottle, stderr, stdout,
    world::{World, WorldSpec},
};

const HOSTS: [&str; 2] = ["a.upstream.test", "b.upstream.test"];

fn routes(host: &str) -> String {
    format!("log: 1\nroutes:\n  - host: {host}\n    matches:\n      - paths: [{{type: prefix, value: /}}]\n")
}

/// Attempts that must all fail from inside the namespace: prints one line each.
const ESCAPES: &str = r#"
import socket, sys
listen = int(sys.argv[1])
def attempt(name, fn):
    try:
        print(name, 'ok', fn())
    except Exception as e:
        print(name, 'refused', type(e).__name__)
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    return s.sendto(b'x', ('127.0.0.2', 9999))
def icmp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    s.settimeout(2)
    s.sendto(b'\x08\x00\xf7\xff\x00\x00\x00\x00', ('127.0.0.2', 0))
    return s.recv(64)
def direct():
    s = socket.create_connection(('127.0.0.1', listen), timeout=5)
    s.sendall(b'GET / HTTP/1.1\r\nHost: a.upstream.test\r\n\r\n')
    data = s.recv(100)
    if not data:
        raise ConnectionResetError('closed')
    return data
attempt('udp', udp)
attempt('icmp', icmp)
attempt('direct', direct)
print('interfaces', sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))
"#;

#[test]
fn a_bottle_in_its_own_namespace_reaches_allowed_hosts_and_nothing_else() {
    let spec = WorldSpec { hosts: &HOSTS, routes: &routes("a.upstream.test"), netns: true, ..Default::default() };
    let mut w = World::start_spec("netns-basic", &spec);
    let ns = w.env.netns_path(w.env.bottle());
    assert!(ns.exists(), "netns: new did not create {}", ns.display());

    let (code, body) = w.curl(&[&w.url("a.upstream.test", "/v1/ok")]);
    assert_eq!(code, "200", "allowed host from the namespace: {body}");
    let (code, body) = w.curl(&[&w.url("b.upstream.test", "/v1/no")]);
    assert_eq!(code, "403", "forbidden host from the namespace: {body}");

    let py =
        format!("import urllib.request\nprint(urllib.request.urlopen('{}').status)", w.url("a.upstream.test", "/py"));
    let out = w.run(&["python3", "-c", &py]);
    assert_eq!(stdout(&out).trim(), "200", "python: {}", stderr(&out));

    let out = w.run(&["python3", "-c", egress_e2e::DNS_QUERY_PY, "a.upstream.test", "b.upstream.test"]);
    let text = stdout(&out);
    assert!(text.contains("a.upstream.test 0 127.0.0.2\n"), "allowed name answered: {text}{}", stderr(&out));
    assert!(text.contains("b.upstream.test 3 -"), "other name is NXDOMAIN: {text}");

    let out = w.run(&["python3", "-c", ESCAPES, &w.env.listen_port.to_string()]);
    let text = stdout(&out);
    for line in ["udp refused", "icmp refused", "direct refused", "interfaces ['lo']"] {
        assert!(text.contains(line), "expected {line:?} from inside the namespace:\n{text}{}", stderr(&out));
    }
    assert_eq!(w.up.requests().len(), 2, "only the two allowed requests reached the upstream");

    // Gateway killed: the namespace's listeners are gone with it, the programs stay, so
    // connections are refused; a restart opens them again.
    w.env.kill_gateway();
    let out = w.run(&["curl", "-sS", "-m", "5", &w.url("a.upstream.test", "/down")]);
    assert!(!out.status.success(), "a request went through with the gateway down: {}", stdout(&out));
    w.env.start_gateway();
    let (code, body) = w.curl(&[&w.url("a.upstream.test", "/v1/back")]);
    assert_eq!(code, "200", "after restart: {body}");
    assert_eq!(w.up.requests().len(), 3);
}

/// Each script makes `n` fresh HTTPS connections, alternating between its own host and
/// the other bottle's, and prints the status codes it got for each.
const INTERLEAVED: &str = r#"
import http.client, ssl, sys, collections
own, other, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ctx = ssl.create_default_context()
seen = collections.Counter()
for i in range(n):
    host = own if i % 2 == 0 else other
    c = http.client.HTTPSConnection(host, port, context=ctx, timeout=30)
    c.request('GET', '/i/%d' % i)
    r = c.getresponse()
    r.read()
    seen[(host == own, r.status)] += 1
    c.close()
print(dict(seen))
"#;

/// Routes to `host` with the bottle's own `EGRESS_TOKEN_0` injected.
fn routes_with_token(host: &str) -> String {
    format!("{}    auth_scheme: Bearer\n    token_env: EGRESS_TOKEN_0\n", routes(host))
}

const TOKEN_A: &str = "bottle-a-token-0-3f9e1c";
const TOKEN_B: &str = "bottle-b-token-0-84d2aa";

#[test]
fn two_namespaced_bottles_with_the_same_client_addresses_are_never_confused() {
    let b_routes = routes_with_token("b.upstream.test");
    let more =
        [MoreBottle { suffix: "b", routes: &b_routes, netns: true, extra: "    credentials_file: creds-b.env\n" }];
    let (creds_a, creds_b) = (format!("EGRESS_TOKEN_0={TOKEN_A}\n"), format!("EGRESS_TOKEN_0={TOKEN_B}\n"));
    let spec = WorldSpec {
        hosts: &HOSTS,
        routes: &routes_with_token("a.upstream.test"),
        bottle: "    credentials_file: creds-a.env\n",
        private_files: &[("creds-a.env", &creds_a), ("creds-b.env", &creds_b)],
        netns: true,
        more_bottles: &more,
        ..Default::default()
    };
    let w = World::start_spec("netns-two", &spec);
    let (a, b) = (w.env.bottle().to_string(), w.env.more_bottle("b"));
    let port = w.up.port().to_string();
    let n = "200";
    let vars = w.trust_vars();
    let run_a = w.env.spawn_exec_in(&a, &["python3", "-c", INTERLEAVED, HOSTS[0], HOSTS[1], &port, n], &vars);
    let run_b = w.env.spawn_exec_in(&b, &["python3", "-c", INTERLEAVED, HOSTS[1], HOSTS[0], &port, n], &vars);
    for (name, child) in [("a", run_a), ("b", run_b)] {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            stdout(&out).trim(),
            "{(True, 200): 100, (False, 403): 100}",
            "bottle {name}: own host always allowed, the other's always refused; {}",
            stderr(&out)
        );
    }
    let requests = w.up.requests();
    let of_host = |h: &str| {
        requests.iter().filter(|r| r.headers.get("host").is_some_and(|v| v.starts_with(h))).collect::<Vec<_>>()
    };
    let (to_a, to_b) = (of_host(HOSTS[0]), of_host(HOSTS[1]));
    assert_eq!((to_a.len(), to_b.len()), (100, 100), "only allowed requests reached the upstream");
    // Each upstream saw only its own bottle's token: no cross-talk in 400 connections.
    for (reqs, token) in [(&to_a, TOKEN_A), (&to_b, TOKEN_B)] {
        for r in reqs {
            assert_eq!(r.headers.get("authorization").map(String::as_str), Some(format!("Bearer {token}").as_str()));
        }
    }
    let log = w.env.gateway_log();
    assert!(!log.contains(TOKEN_A) && !log.contains(TOKEN_B), "a token was logged");
}
