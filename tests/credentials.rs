//! Per-bottle credentials files end to end: two bottles in one gateway, each with its own
//! `EGRESS_TOKEN_0`; each upstream request carries its own bottle's value, each bottle's
//! DLP knows its own values (and not the other's), files open to others are refused, and
//! SIGHUP swaps in an edited file (or keeps the old one when the edit is broken). No value
//! is ever in anything the gateway writes.
#![cfg(feature = "root-tests")]

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use egress_e2e::{
    MoreBottle, SIGHUP, stderr, stdout,
    world::{World, WorldSpec},
};

const HOSTS: [&str; 3] = ["api.upstream.test", "env.upstream.test", "new.upstream.test"];

/// The same policy in both bottles: the credential comes from each bottle's own file.
const ROUTES: &str = r#"log: 1
routes:
  - host: api.upstream.test
    auth_scheme: Bearer
    token_env: EGRESS_TOKEN_0
    dlp: {outbound_on_match: block}
  - host: env.upstream.test
    auth_scheme: Bearer
    token_env: EGRESS_TOKEN_ENVONLY
    dlp: {outbound_on_match: block}
"#;

// Values that match no token pattern: only the known-secret detector can catch them, so
// what is caught shows whose known secret a value is. No two share 12 characters (a
// shared fragment would be a partial match).
const A_TOKEN: &str = "amber-falcon-31415926-quartz";
const B_TOKEN: &str = "violet-otter-27182818-basalt";
/// In the gateway's environment: shadowed by both files for `EGRESS_TOKEN_0`.
const GW_TOKEN0: &str = "gateway-env-token0-16180339";
/// Only in the gateway's environment: the fallback.
const ENV_ONLY: &str = "plain-fallback-14142135-onyx";

/// The second bottle: the harness names it `<first bottle>-<suffix>`.
const B: &str = "e2e-other";

fn world(test: &str, a_file: &str) -> World {
    let b_creds = format!("EGRESS_TOKEN_0={B_TOKEN}\n");
    World::start_spec(
        test,
        &WorldSpec {
            hosts: &HOSTS,
            routes: ROUTES,
            gateway_env: &[("EGRESS_TOKEN_0", GW_TOKEN0), ("EGRESS_TOKEN_ENVONLY", ENV_ONLY)],
            bottle: "    credentials_file: creds-a.env",
            private_files: &[("creds-a.env", a_file), ("creds-b.env", &b_creds)],
            more_bottles: &[MoreBottle {
                suffix: "other",
                routes: ROUTES,
                netns: false,
                extra: "    credentials_file: creds-b.env\n",
            }],
            ..Default::default()
        },
    )
}

fn a_file() -> String {
    format!("# bottle A\nexport EGRESS_TOKEN_0='{A_TOKEN}'\n")
}

/// No value in the gateway's log nor in any file under its state directory.
fn assert_never_written(w: &World, values: &[&str]) {
    let log = w.env.gateway_log();
    assert!(!log.is_empty());
    for v in values {
        assert!(!log.contains(v), "a credential value appears in the gateway log");
    }
    let files = w.env.state_files();
    assert!(!files.is_empty(), "the state directory holds the gateway's CA at least");
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for v in values {
            assert!(!text.contains(v), "a credential value appears in {}", f.display());
        }
    }
}

/// The Authorization each request reached the upstream with, in order.
fn authorizations(w: &World) -> Vec<String> {
    w.up.requests().iter().map(|r| r.headers.get("authorization").cloned().unwrap_or_default()).collect()
}

/// Waits until `needle` is in the log `n` times (reloads log the same line each time).
fn wait_for_count(w: &World, needle: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = w.env.gateway_log();
        if log.matches(needle).count() >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{needle:?} not logged {n} times; log:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn each_bottle_injects_its_own_credential_and_knows_only_its_own_values() {
    let w = world("creds-two-bottles", &a_file());
    let whoami = w.url("api.upstream.test", "/whoami");

    // Each bottle's request carries its own file's value, not the gateway's environment's.
    let (code, body) = w.curl(&[&whoami]);
    assert_eq!(code, "200", "{body}");
    let (code, body_b) = w.curl_in(B, &[&whoami]);
    assert_eq!(code, "200", "{body_b}");
    assert_eq!(authorizations(&w), [format!("Bearer {A_TOKEN}"), format!("Bearer {B_TOKEN}")]);
    // The echo reflects the credential: each bottle's is a known secret of that bottle,
    // so neither agent sees it.
    for b in [&body, &body_b] {
        assert!(b.contains("Bearer ********"), "{b}");
        assert!(!b.contains(A_TOKEN) && !b.contains(B_TOKEN), "an injected credential reached an agent: {b}");
    }

    // A variable in no file falls through to the gateway's environment, for both.
    let (code, _) = w.curl(&[&w.url("env.upstream.test", "/x")]);
    assert_eq!(code, "200");
    let (code, _) = w.curl_in(B, &[&w.url("env.upstream.test", "/x")]);
    assert_eq!(code, "200");
    assert_eq!(authorizations(&w)[2..], [format!("Bearer {ENV_ONLY}"), format!("Bearer {ENV_ONLY}")]);

    // A's value in A's body: A's known secret, blocked.
    let (code, reason) = w.curl(&["-d", &format!("note={A_TOKEN}"), &w.url("api.upstream.test", "/a")]);
    assert_eq!(code, "403", "{reason}");
    assert!(reason.contains("known_secrets: value of EGRESS_TOKEN_0"), "{reason}");
    let (code, _) = w.curl_in(B, &["-d", &format!("note={B_TOKEN}"), &w.url("api.upstream.test", "/b")]);
    assert_eq!(code, "403", "B's own value is B's known secret");
    // The gateway environment's values stay known secrets for every bottle.
    let (code, _) = w.curl_in(B, &["-d", &format!("note={GW_TOKEN0}"), &w.url("api.upstream.test", "/b")]);
    assert_eq!(code, "403", "EGRESS_TOKEN_* of the environment is gateway-wide");
    let before = w.up.requests().len();
    assert_eq!(before, 4, "a blocked request reached the upstream");

    // A's value is not a known secret of B (B was never given it); it matches no token
    // pattern, so B's request goes through. Scoping is per bottle by design.
    let (code, body) = w.curl_in(B, &["-d", &format!("note={A_TOKEN}"), &w.url("api.upstream.test", "/b")]);
    assert_eq!(code, "200", "{body}");
    let seen = w.up.requests();
    assert_eq!(String::from_utf8_lossy(&seen[before].body), format!("note={A_TOKEN}"));
    assert_eq!(seen[before].headers["authorization"], format!("Bearer {B_TOKEN}"));

    w.env.wait_for_log("egress_block");
    assert_never_written(&w, &[A_TOKEN, B_TOKEN, GW_TOKEN0, ENV_ONLY]);
}

#[test]
fn a_credentials_file_open_to_others_stops_check_and_run() {
    let w = world("creds-mode", &a_file());
    let path = w.env.dir.join("creds-b.env");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let expect = format!("credentials file {}: mode 0644 gives its group or others access", path.display());

    let out = w.env.cli(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(stderr(&out).contains(&expect), "{}", stderr(&out));
    assert!(stdout(&out).contains("creds-a.env: ok, 1 values"), "{}", stdout(&out));

    // A second gateway on the same config: it must refuse to start. It fails before it
    // binds or attaches anything, so the running one is untouched.
    let mut child = Command::new(egress_e2e::gateway_bin())
        .args(["run", "--config"])
        .arg(&w.env.config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("run started with a credentials file open to others");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains(&expect) && text.contains(&format!("bottle {B}")), "{text}");
    assert!(!text.contains(B_TOKEN) && !text.contains(A_TOKEN), "{text}");
    // The running gateway still serves both bottles.
    let (code, _) = w.curl_in(B, &[&w.url("api.upstream.test", "/x")]);
    assert_eq!(code, "200");
}

#[test]
fn sighup_swaps_in_an_edited_credentials_file_and_keeps_the_old_on_error() {
    let w = world("creds-reload", &a_file());
    let whoami = w.url("api.upstream.test", "/whoami");
    let (code, _) = w.curl(&[&whoami]);
    assert_eq!(code, "200");

    // Edited in place (mode kept), with a route added that needs a new variable.
    let a2 = "alpha-rotated-credential-66260701";
    let new_cred = "alpha-new-route-credential-60221408";
    std::fs::write(w.env.dir.join("creds-a.env"), format!("EGRESS_TOKEN_0={a2}\nEGRESS_TOKEN_NEW=\"{new_cred}\"\n"))
        .unwrap();
    let routes = format!(
        "{ROUTES}  - host: new.upstream.test\n    auth_scheme: Bearer\n    token_env: EGRESS_TOKEN_NEW\n    dlp: {{outbound_on_match: block}}\n"
    );
    w.env.write_routes(&routes);
    w.env.signal_gateway(SIGHUP);
    wait_for_count(&w, "\"message\":\"routes and credentials reloaded\"", 2);

    let (code, body) = w.curl(&[&whoami]);
    assert_eq!(code, "200", "{body}");
    let (code, body_new) = w.curl(&[&w.url("new.upstream.test", "/whoami")]);
    assert_eq!(code, "200", "{body_new}");
    assert_eq!(authorizations(&w)[1..], [format!("Bearer {a2}"), format!("Bearer {new_cred}")]);
    // Both new values are known secrets now: reflected ones are redacted, sent ones blocked.
    for b in [&body, &body_new] {
        assert!(b.contains("Bearer ********") && !b.contains(a2) && !b.contains(new_cred), "{b}");
    }
    let (code, _) = w.curl(&["-d", &format!("k={new_cred}"), &whoami]);
    assert_eq!(code, "403", "a credential of a route added by reload is a known secret");
    // B is untouched by A's reload.
    let (code, _) = w.curl_in(B, &[&whoami]);
    assert_eq!(code, "200");
    assert_eq!(authorizations(&w).last().unwrap(), &format!("Bearer {B_TOKEN}"));

    // A broken edit: the reload fails, naming the file and line, and A keeps its values.
    let broken = "alpha-broken-edit-value-57721566";
    std::fs::write(w.env.dir.join("creds-a.env"), format!("# rotated\nEGRESS_TOKEN_0 {broken}\n")).unwrap();
    w.env.signal_gateway(SIGHUP);
    let log = w.env.wait_for_log("reload failed; keeping the previous routes and credentials");
    assert!(log.contains("creds-a.env, line 2: expected KEY=VALUE"), "{log}");
    // Open to others: refused too.
    std::fs::write(w.env.dir.join("creds-a.env"), format!("EGRESS_TOKEN_0={broken}\n")).unwrap();
    std::fs::set_permissions(w.env.dir.join("creds-a.env"), std::fs::Permissions::from_mode(0o640)).unwrap();
    w.env.signal_gateway(SIGHUP);
    wait_for_count(&w, "reload failed; keeping the previous routes and credentials", 2);
    assert!(w.env.gateway_log().contains("mode 0640"));

    let before = w.up.requests().len();
    let (code, _) = w.curl(&[&whoami]);
    assert_eq!(code, "200");
    assert_eq!(w.up.requests()[before].headers["authorization"], format!("Bearer {a2}"));
    let (code, _) = w.curl(&["-d", &format!("k={a2}"), &whoami]);
    assert_eq!(code, "403", "the old known secrets stay with the old credentials");

    assert_never_written(&w, &[A_TOKEN, a2, new_cred, broken, B_TOKEN, GW_TOKEN0]);
}

/// Issue 14: a reload is all or nothing. With one bottle's routes broken, another
/// bottle's edited credential is not swapped in either: the gateway never runs half the
/// new policy. `reload` exits 1 and names both bottles' states.
#[test]
fn a_reload_with_one_broken_bottle_changes_no_bottle() {
    let w = world("reload-atomic", &a_file());
    let whoami = w.url("api.upstream.test", "/whoami");
    let rotated = "alpha-rotated-for-atomic-reload-4669201";
    std::fs::write(w.env.dir.join("creds-a.env"), format!("EGRESS_TOKEN_0={rotated}\n")).unwrap();
    std::fs::write(w.env.dir.join("routes-other.yaml"), "routes:\n  - host: [broken\n").unwrap();
    let out = w.env.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("bottle {B}")) && err.contains("routes-other.yaml"), "{err}");
    assert!(err.contains(&format!("bottle {}", w.env.bottle())) && err.contains("not applied"), "{err}");
    w.env.wait_for_log("reload abandoned: no bottle's policy changed");
    let (code, _) = w.curl(&[&whoami]);
    assert_eq!(code, "200");
    assert_eq!(authorizations(&w).last().unwrap(), &format!("Bearer {A_TOKEN}"), "A kept its credential");

    // B fixed: the next reload applies both.
    std::fs::write(w.env.dir.join("routes-other.yaml"), ROUTES).unwrap();
    let out = w.env.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, _) = w.curl(&[&whoami]);
    assert_eq!(code, "200");
    assert_eq!(authorizations(&w).last().unwrap(), &format!("Bearer {rotated}"));
}
