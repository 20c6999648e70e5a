//! The command line as a user meets it, without privileges: configuration errors say
//! what and where, and nothing is applied.
use std::process::Command;

use egress_e2e::{gateway_bin, stderr, stdout};

static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn check(files: &[(&str, &str)]) -> std::process::Output {
    // One directory per call: tests run in parallel.
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("egress-cli-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let out = Command::new(gateway_bin()).args(["check", "--config"]).arg(dir.join(files[0].0)).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    out
}

const GATEWAY: &str = "listen: 127.0.0.1:15001\ndns_listen: 127.0.0.1:15053\nstate_dir: /var/lib/egress-gateway\n\
hosts:\n  upstream.test: 127.0.0.2\nbottles:\n  - name: demo\n    cgroup: egress/demo\n    routes: demo-routes.yaml\n";

#[test]
fn check_accepts_the_documented_example() {
    let out = check(&[("gateway.yaml", GATEWAY), ("demo-routes.yaml", "tcp:\n  - upstream.test:18080\n")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("bottle demo"), "{}", stdout(&out));
}

#[test]
fn check_names_file_line_and_field_of_a_gateway_error() {
    let bad = GATEWAY.replace("    cgroup: egress/demo\n", "    cgroup: egress/demo\n    colour: blue\n");
    let out = check(&[("gateway.yaml", &bad), ("demo-routes.yaml", "")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("gateway.yaml: line 9"), "{err}");
    assert!(err.contains("bottles[0]"), "{err}");
    assert!(err.contains("colour"), "{err}");
}

#[test]
fn check_reports_a_broken_routes_file() {
    let out = check(&[("gateway.yaml", GATEWAY), ("demo-routes.yaml", "tcp:\n  - upstream.test:http\n")]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("demo-routes.yaml"), "{err}");
    assert!(err.contains("tcp[0]"), "{err}");
}

#[test]
fn unknown_bottle_and_missing_command_are_clear_errors() {
    let out = Command::new(gateway_bin()).args(["exec", "--bottle", "nope", "--", "true"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no bottle named \"nope\""), "{}", stderr(&out));
    let out = Command::new(gateway_bin()).args(["exec", "--bottle", "default"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error");
}
