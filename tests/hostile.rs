//! A hostile agent inside a bottle, attacking the gateway and the other bottles: each
//! test reproduces one attack (issue 11) and shows it now fails.
#![cfg(feature = "root-tests")]

use egress_e2e::{EnvSpec, TestEnv, stderr, stdout};

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
