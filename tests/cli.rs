//! The command line as a user meets it, without privileges: configuration errors say
//! what and where, and nothing is applied.
use std::process::Command;

use egress_e2e::{gateway_bin, stderr, stdout};

static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn check(files: &[(&str, &str)]) -> std::process::Output {
    check_with_env(files, &[])
}

/// A directory of its own holding `files` (tests run in parallel); the caller removes it.
fn config_dir(files: &[(&str, &str)]) -> std::path::PathBuf {
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("egress-cli-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    dir
}

fn check_with_env(files: &[(&str, &str)], vars: &[(&str, &str)]) -> std::process::Output {
    let dir = config_dir(files);
    let out = Command::new(gateway_bin())
        .args(["check", "--config"])
        .arg(dir.join(files[0].0))
        .envs(vars.iter().copied())
        .output()
        .unwrap();
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

/// The README's first example is what a new user copies: it must load as written.
#[test]
fn check_accepts_the_readme_example_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let block = |marker: &str| {
        let start = readme.find(marker).unwrap_or_else(|| panic!("README has no block starting {marker:?}"));
        let body = &readme[start..];
        body[..body.find("```").expect("the block ends")].to_string()
    };
    let files = [("gateway.yaml", block("# gateway.yaml")), ("demo-routes.yaml", block("# demo-routes.yaml"))];
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    // Without the credential its route names, the example does not pass: say which.
    let out = check(&files);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains("token_env EGRESS_TOKEN_API is not set"), "{}", stderr(&out));
    let out = check_with_env(&files, &[("EGRESS_TOKEN_API", "a-token-for-the-test")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let explained = stdout(&out);
    assert!(explained.contains("bottle demo"), "{explained}");
    assert!(explained.contains("api.upstream.test"), "the HTTP route is explained: {explained}");
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
fn unknown_bottle_missing_command_and_missing_configuration_are_clear_errors() {
    let dir = config_dir(&[("gateway.yaml", GATEWAY), ("demo-routes.yaml", "")]);
    let config = dir.join("gateway.yaml");
    let out = Command::new(gateway_bin())
        .args(["exec", "--bottle", "nope", "--config"])
        .arg(&config)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no bottle named \"nope\""), "{}", stderr(&out));
    let out = Command::new(gateway_bin()).args(["exec", "--bottle", "demo", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    let _ = std::fs::remove_dir_all(&dir);
    // Only `run` and `doctor` fall back to the embedded default; the others say what to do.
    assert!(!std::path::Path::new("/etc/egress-gateway/gateway.yaml").exists(), "this test needs a machine without it");
    let out = Command::new(gateway_bin()).args(["exec", "--bottle", "default", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("no configuration") && err.contains("/etc/egress-gateway/gateway.yaml"), "{err}");
}

/// The issue's supervise example (its queue directory moved into the test's directory)
/// with one pending proposal, as the gateway writes it.
fn supervise_dir() -> std::path::PathBuf {
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Not under /tmp: a queue below a directory others can write is refused.
    let dir = egress_e2e::private_base(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")))
        .join(format!("egress-cli-sup-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let queue = dir.join("queue/demo");
    std::fs::create_dir_all(&queue).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&queue, std::fs::Permissions::from_mode(0o700)).unwrap();
    let gateway = format!(
        "bottles:\n  - name: demo\n    cgroup: egress/demo\n    routes: demo-routes.yaml\n    supervise:\n      \
         queue_dir: {}\n      timeout_seconds: 300     # EGRESS_TOKEN_ALLOW_TIMEOUT_SECONDS when absent\n",
        queue.display()
    );
    std::fs::write(dir.join("gateway.yaml"), gateway).unwrap();
    let routes = "routes:\n  - host: api.upstream.test\n    dlp:\n      outbound_on_match: supervise\n";
    std::fs::write(dir.join("demo-routes.yaml"), routes).unwrap();
    let proposal = r#"{"id": "p-1", "bottle": "demo", "tool": "egress-token-allow",
        "payload": {"host": "api.upstream.test", "method": "POST", "path": "/v1/send",
                    "reason": "token_patterns: GitHub personal access token in body", "context": "key=********"},
        "justification": "approve if intended", "payload_hash": "00", "created_at": 1795000000}"#;
    std::fs::write(queue.join("p-1.json"), proposal).unwrap();
    dir
}

fn supervise(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(gateway_bin())
        .arg("supervise")
        .args(args)
        .arg("--config")
        .arg(dir.join("gateway.yaml"))
        .output()
        .unwrap()
}

#[test]
fn supervise_list_json_prints_the_pending_proposals() {
    let dir = supervise_dir();
    let out = supervise(&dir, &["list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON array");
    let p = &list.as_array().expect("an array")[0];
    assert_eq!((p["id"].as_str(), p["bottle"].as_str()), (Some("p-1"), Some("demo")));
    assert_eq!(p["tool"], "egress-token-allow");
    assert_eq!(p["payload"]["host"], "api.upstream.test");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn supervise_errors_are_clear_and_change_nothing() {
    let dir = supervise_dir();
    let queue = dir.join("queue/demo");
    let files = || std::fs::read_dir(&queue).unwrap().count();
    let before = files();
    for (args, says) in [
        (&["approve", "nope", "--reason", "x"][..], "unknown id"),
        (&["approve", "p-1", "--reason", "  "][..], "non-empty reason"),
        (&["approve", "p-1", "--reason", "x", "--scope", "persist"][..], "allow_persist"),
    ] {
        let out = supervise(&dir, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert_eq!(files(), before, "{args:?} changed the queue");
    }
    let out = supervise(&dir, &["reject", "p-1", "--reason", "not expected"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = supervise(&dir, &["approve", "p-1", "--reason", "late"]);
    assert!(stderr(&out).contains("already decided"), "{}", stderr(&out));
    assert!(stdout(&supervise(&dir, &["history"])).contains("not expected"));
    // A queue a bottle could write to is refused, not read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&queue, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = supervise(&dir, &["list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("group- or world-writable"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shipped systemd units (the service, and the optional socket for socket
/// activation) pass `systemd-analyze verify` (with the binary path pointed at the one
/// under test).
#[test]
fn the_systemd_unit_verifies() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../egress-gateway/dist/egress-gateway.service"))
            .expect("reading the unit");
    assert!(unit.contains("Type=notify"), "the gateway tells systemd when it is ready");
    let dir = std::env::temp_dir().join(format!("egress-e2e-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("egress-gateway.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/egress-gateway", gateway_bin().to_str().unwrap())).unwrap();
    // The optional socket unit (socket activation) beside it.
    let socket = dir.join("egress-gateway.socket");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/../egress-gateway/dist/egress-gateway.socket"), &socket)
        .expect("copying the socket unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .arg(&socket)
        .output()
        .expect("systemd-analyze (Debian's systemd package) is needed to check the unit");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success() && stderr(&out).trim().is_empty(), "{}{}", stdout(&out), stderr(&out));
}

/// The console is for a terminal; run from a script or a pipe it says so and exits,
/// instead of panicking in the terminal library.
#[test]
fn the_supervise_console_without_a_terminal_is_a_clear_error() {
    let dir = config_dir(&[("gateway.yaml", GATEWAY), ("demo-routes.yaml", "")]);
    let out = Command::new(gateway_bin())
        .args(["supervise", "--config"])
        .arg(dir.join("gateway.yaml"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("needs a terminal") && err.contains("supervise list"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
