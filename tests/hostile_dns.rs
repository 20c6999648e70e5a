//! Hostile DNS: a bottle that tunnels data through names under an allowed wildcard, and a
//! bottle that floods names whose server never answers. The gateway's resolver asks only
//! a name server this test runs on loopback (`resolvers:`), never the machine's.
#![cfg(feature = "root-tests")]

use std::{
    io::{BufRead, BufReader},
    net::UdpSocket,
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use egress_e2e::{EnvSpec, MoreBottle, TestEnv, stderr, stdout};

/// Sends queries for distinct names under `slow.test` for argv[1] seconds, as fast as
/// it can, never waiting for answers.
const FLOOD: &str = r#"
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.time() + float(sys.argv[1])
i = 0
while time.time() < end:
    for _ in range(50):
        q = struct.pack('>HHHHHH', i & 0xffff, 0x0100, 1, 0, 0, 0)
        for label in ('n%d' % i, 'slow', 'test'):
            q += bytes([len(label)]) + label.encode()
        q += b'\x00' + struct.pack('>HH', 1, 1)
        s.sendto(q, ('127.0.0.53', 53))
        i += 1
    time.sleep(0.02)
print('sent', i)
"#;

/// A loopback name server: answers every name with 127.0.0.7, except names under
/// `slow.test`, which it never answers. Records every name it was asked.
struct TestDns {
    port: u16,
    asked: Arc<Mutex<Vec<String>>>,
}

impl TestDns {
    fn start() -> TestDns {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind the test name server");
        let port = sock.local_addr().unwrap().port();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = asked.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let Some((name, qend)) = parse_name(&buf[..n]) else { continue };
                seen.lock().unwrap().push(name.clone());
                if name == "slow.test" || name.ends_with(".slow.test") {
                    continue;
                }
                let qtype = u16::from_be_bytes([buf[qend], buf[qend + 1]]);
                let mut r = buf[..qend + 4].to_vec();
                r[2] = 0x81 | (buf[2] & 0x01);
                r[3] = 0x80;
                let answers: u16 = if qtype == 1 { 1 } else { 0 };
                r[6..8].copy_from_slice(&answers.to_be_bytes());
                r[8..12].fill(0);
                if qtype == 1 {
                    r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 127, 0, 0, 7]);
                }
                let _ = sock.send_to(&r, peer);
            }
        });
        TestDns { port, asked }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

/// The question's name (lower-case) and where its type starts.
fn parse_name(p: &[u8]) -> Option<(String, usize)> {
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *p.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(p.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    p.get(i + 3)?;
    Some((labels.join("."), i))
}

fn results(out: &std::process::Output) -> Vec<(String, String, String)> {
    assert!(out.status.success(), "dns client failed: {}", stderr(out));
    stdout(out)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

#[test]
fn a_bottle_flooding_names_that_never_answer_does_not_starve_another_bottles_dns() {
    let dns = TestDns::start();
    let extra = format!("resolvers: [127.0.0.1:{}]\ndns: {{new_names_per_minute: 0, concurrent_lookups: 8}}", dns.port);
    let mut env = TestEnv::new(
        "dns-starve",
        EnvSpec {
            routes: "routes:\n  - host: \"*.slow.test\"\n",
            extra_config: &extra,
            more_bottles: &[MoreBottle {
                suffix: "b",
                routes: "routes:\n  - host: \"*.fast.test\"\n",
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    env.start_gateway();
    let a = env.bottle().to_string();
    let b = env.more_bottle("b");
    let flood = env.spawn_exec_in(&a, &["python3", "-c", FLOOD, "6"], &[]);
    thread::sleep(Duration::from_secs(2));
    // While bottle a has thousands of lookups waiting on a server that never answers,
    // bottle b's answer comes within its client's 5 s timeout.
    let names = ["api.fast.test", "www.fast.test", "cdn.fast.test"];
    let mut args = vec!["python3", "-c", egress_e2e::DNS_QUERY_PY];
    args.extend(names);
    let got = results(&env.exec_in(&b, &args, &[]));
    for (name, (asked, rcode, ip)) in names.iter().zip(&got) {
        assert_eq!((asked.as_str(), rcode.as_str(), ip.as_str()), (*name, "0", "127.0.0.7"), "{got:?}");
    }
    let out = flood.wait_with_output().expect("flood");
    let sent: usize = stdout(&out).trim().trim_start_matches("sent ").parse().unwrap_or(0);
    assert!(sent > 1000, "the flood sent {sent} queries: {}", stderr(&out));
    let asked = dns.asked();
    assert!(asked.iter().any(|n| n.ends_with(".slow.test")), "the flood reached the test server");
    assert!(asked.iter().all(|n| n.ends_with(".slow.test") || n.ends_with(".fast.test")), "{asked:?}");
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let (mut out, mut acc, mut bits) = (String::new(), 0u32, 0u32);
    for &b in data {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn rot13(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' => (((c as u8 - b'a') + 13) % 26 + b'a') as char,
            'A'..='Z' => (((c as u8 - b'A') + 13) % 26 + b'A') as char,
            _ => c,
        })
        .collect()
}

/// `text` in labels of `n` characters under the allowed wildcard.
fn under_wildcard(text: &str, n: usize) -> String {
    let labels: Vec<String> = text.as_bytes().chunks(n).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    format!("{}.cdn.upstream.test", labels.join("."))
}

const SECRET: &str = "Sk-Live-4f9QzT7pL2mX8vB1";

#[test]
fn dns_tunnels_under_an_allowed_wildcard_get_nxdomain_and_a_budget_caps_new_names() {
    let dns = TestDns::start();
    let extra = format!("resolvers: [127.0.0.1:{}]\ndns: {{new_names_per_minute: 20}}", dns.port);
    let mut env = TestEnv::new(
        "dns-tunnel",
        EnvSpec { routes: "routes:\n  - host: \"*.cdn.upstream.test\"\n", extra_config: &extra, ..Default::default() },
    );
    env.start_gateway_with_env(&[("EGRESS_TOKEN_DNS_TEST", SECRET)]);

    let reversed: String = SECRET.chars().rev().collect();
    let tunnels = [
        ("hex in 8-character labels", under_wildcard(&hex(SECRET.as_bytes()), 8)),
        ("hex of a fragment in 6-character labels", under_wildcard(&hex(&SECRET.as_bytes()[2..16]), 6)),
        ("base32 in 8-character labels", under_wildcard(&base32(SECRET.as_bytes()), 8)),
        ("base32 after two bytes of junk", under_wildcard(&base32(format!("zz{SECRET}").as_bytes()), 10)),
        ("rot13 in 5-character labels", under_wildcard(&rot13(SECRET).replace('-', ""), 5)),
        ("reversed in 6-character labels", under_wildcard(&reversed.replace('-', ""), 6)),
    ];
    let ordinary = ["www.cdn.upstream.test", "d3bxy9euw4e147.cdn.upstream.test", "assets-eu-1.cdn.upstream.test"];
    let mut args = vec!["python3", "-c", egress_e2e::DNS_QUERY_PY];
    args.extend(ordinary);
    args.extend(tunnels.iter().map(|(_, n)| n.as_str()));
    let got = results(&env.exec(&args));
    assert_eq!(got.len(), ordinary.len() + tunnels.len(), "{got:?}");
    for (name, rcode, ip) in &got[..ordinary.len()] {
        assert_eq!((rcode.as_str(), ip.as_str()), ("0", "127.0.0.7"), "ordinary name {name} resolves");
    }
    for ((what, name), (_, rcode, _)) in tunnels.iter().zip(&got[ordinary.len()..]) {
        assert_eq!(rcode, "3", "{what} ({name}) gets NXDOMAIN");
    }

    // A burst of distinct names beyond the budget (20 a minute; 3 spent above).
    let burst: Vec<String> = (0..30).map(|i| format!("img{i}.cdn.upstream.test")).collect();
    let mut args = vec!["python3", "-c", egress_e2e::DNS_QUERY_PY];
    args.extend(burst.iter().map(String::as_str));
    // A name already seen in the window is still answered after the budget is spent.
    args.push("www.cdn.upstream.test");
    let got = results(&env.exec(&args));
    let answered = got[..30].iter().filter(|(_, rcode, _)| rcode == "0").count();
    let refused = got[..30].iter().filter(|(_, rcode, _)| rcode == "3").count();
    assert_eq!((answered, refused), (17, 13), "{got:?}");
    assert_eq!(got[30].1, "0", "a name seen in the window is free: {got:?}");
    let log = env.wait_for_log("budget of new names under a wildcard spent");
    assert!(log.contains("\"refused_total\":13"), "the refusal counter reached 13:\n{log}");

    // Nothing that carried the secret left the gateway, nor entered its log.
    let asked = dns.asked();
    for (what, name) in &tunnels {
        assert!(!asked.contains(name), "{what} reached the name server");
        assert!(!log.contains(name.as_str()), "{what} was logged");
    }
    for i in 17..30 {
        assert!(!asked.contains(&format!("img{i}.cdn.upstream.test")), "a refused name reached the server: {asked:?}");
    }
    for form in [SECRET.to_string(), hex(SECRET.as_bytes()), base32(SECRET.as_bytes())] {
        assert!(!log.contains(&form), "a form of the secret was logged");
    }
    assert!(asked.iter().all(|n| n.ends_with(".cdn.upstream.test")), "only the test's names: {asked:?}");
}

/// Sends argv[1] DNS responses (which the gateway drops unread) to the redirected DNS
/// port, each from a new socket on its own loopback address under 127.argv[2].0.0, so
/// each leaves a new entry in the sender's DNS-client map.
const PORT_FLOOD: &str = r#"
import socket, sys
total, base = int(sys.argv[1]), int(sys.argv[2])
reply = b'\x12\x34\x81\x80' + b'\x00' * 8
sent = 0
for n in range(total):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(('127.%d.%d.%d' % (base, (n // 250) % 250 + 1, n % 250 + 1), 0))
        s.sendto(reply, ('127.0.0.53', 53))
        sent += 1
    except OSError:
        pass
    s.close()
print('sent', sent)
"#;

/// Sends one query for each name (each from its own socket), says so, then waits for
/// the answers as long as it takes.
const SEND_THEN_WAIT_PY: &str = r#"
import socket, struct, sys
socks = []
for name in sys.argv[1:]:
    q = struct.pack('>HHHHHH', 0x1234, 0x0100, 1, 0, 0, 0)
    for label in name.split('.'):
        q += bytes([len(label)]) + label.encode()
    q += b'\x00' + struct.pack('>HH', 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(120)
    s.sendto(q, ('127.0.0.53', 53))
    socks.append((name, s))
print('sent', flush=True)
for name, s in socks:
    try:
        r = s.recv(512)
        an = struct.unpack('>H', r[6:8])[0]
        print(name, r[3] & 0x0f, '.'.join(str(b) for b in r[-4:]) if an else '-')
    except socket.timeout:
        print(name, 'timeout', '-')
"#;

/// Sends SIGCONT to the gateway when dropped, so a failing test never leaves it stopped.
struct Resume<'a>(&'a TestEnv);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.signal_gateway(libc::SIGCONT);
    }
}

/// Issue 11: the DNS listener shared by the bottles in the gateway's namespace tells whose
/// query it is from the bottles' DNS-client maps. Bottle b's queries wait in the
/// listener's queue (the gateway is stopped, as a busy gateway would be slow to read)
/// while bottle a sends from 140,000 source addresses and ports, more than the one map
/// all bottles shared held (65,536): b's entries are not evicted, so its queries are still
/// its own: its allowed name resolves, a's allowed name is NXDOMAIN, neither is refused as
/// from an unknown client (with the shared map both were refused).
#[test]
fn a_dns_port_flood_does_not_take_another_bottles_queries() {
    const PER_FLOODER: u64 = 70_000;
    let dns = TestDns::start();
    let extra = format!("resolvers: [127.0.0.1:{}]", dns.port);
    let mut env = TestEnv::new(
        "dns-portflood",
        EnvSpec {
            routes: "routes:\n  - host: api.flooder.test\n",
            extra_config: &extra,
            more_bottles: &[MoreBottle {
                suffix: "b",
                routes: "routes:\n  - host: api.mine.test\n",
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    env.start_gateway();
    let a = env.bottle().to_string();
    let b = env.more_bottle("b");
    let names = ["api.mine.test", "api.flooder.test"];
    let expected = [("api.mine.test", "0", "127.0.0.7"), ("api.flooder.test", "3", "-")];
    let check = |got: &[(String, String, String)], when: &str| {
        let got: Vec<(&str, &str, &str)> = got.iter().map(|(n, r, i)| (n.as_str(), r.as_str(), i.as_str())).collect();
        assert_eq!(got, expected, "{when}: the other bottle's queries were not its own");
    };
    let mut args = vec!["python3", "-c", egress_e2e::DNS_QUERY_PY];
    args.extend(names);
    check(&results(&env.exec_in(&b, &args, &[])), "before the flood");

    env.signal_gateway(libc::SIGSTOP);
    let resume = Resume(&env);
    let mut args = vec!["python3", "-c", SEND_THEN_WAIT_PY];
    args.extend(names);
    let mut waiting = env.spawn_exec_in(&b, &args, &[]);
    let mut line = String::new();
    BufReader::new(waiting.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "sent", "{}", stderr(&waiting.wait_with_output().unwrap()));
    let floods: Vec<_> = (0..2)
        .map(|i| {
            // Niced: tests running alongside must not miss their answers for want of CPU.
            let (total, base) = (PER_FLOODER.to_string(), (10 + i).to_string());
            env.spawn_exec_in(&a, &["nice", "-n", "19", "python3", "-c", PORT_FLOOD, &total, &base], &[])
        })
        .collect();
    let mut sent = 0;
    for flood in floods {
        let out = flood.wait_with_output().expect("flood");
        assert!(out.status.success(), "flood failed: {}", stderr(&out));
        sent += stdout(&out).trim().trim_start_matches("sent ").parse::<u64>().unwrap_or(0);
    }
    assert_eq!(sent, 2 * PER_FLOODER, "every datagram of the flood left from its own address and port");
    drop(resume);
    check(&results(&waiting.wait_with_output().unwrap()), "queued during the flood");

    let mut args = vec!["python3", "-c", egress_e2e::DNS_QUERY_PY];
    args.extend(names);
    check(&results(&env.exec_in(&b, &args, &[])), "after the flood");
    let log = env.gateway_log();
    let unknown: Vec<&str> = log.lines().filter(|l| l.contains("dns query from an unknown client refused")).collect();
    assert!(unknown.is_empty(), "queries refused as from no bottle: {unknown:?}");
}
