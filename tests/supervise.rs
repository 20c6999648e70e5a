//! Supervise end to end: a request carrying a token waits for the operator; approve
//! releases it and remembers the value (scope `gateway`), or releases only that request
//! (`once`), or remembers it across a restart (`persist`, opt-in); reject, timeout, a
//! malformed response and a broken queue each give 403; other requests keep flowing
//! meanwhile; SQLite is the default store and `supervise history` shows every decision;
//! no raw value is written to the store, the state directory or the logs.
#![cfg(feature = "root-tests")]

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use egress_e2e::{
    stderr, stdout,
    world::{World, curl_result},
};

const ROUTES: &str = "log: 1\nroutes:\n  - host: api.upstream.test\n    dlp:\n      outbound_on_match: supervise\n";

fn token(tag: char) -> String {
    format!("ghp_{}", tag.to_string().repeat(36))
}

/// The world's queue directory is outside the test's directory: that one is under /tmp,
/// and the gateway refuses a queue below a directory others can write (sticky or not).
fn world(test: &str, timeout_seconds: u64) -> (World, PathBuf) {
    let queue = egress_e2e::private_base(std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))).join(format!(
        "supervise-queue-{test}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let w = world_with(test, &format!("queue_dir: {}\n      timeout_seconds: {timeout_seconds}", queue.display()));
    (w, queue)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A world whose bottle's `supervise:` block has `fields` (indented for inside it).
fn world_with(test: &str, fields: &str) -> World {
    World::start_with(test, &["api.upstream.test"], ROUTES, &[], &format!("    supervise:\n      {fields}\n"))
}

fn history(w: &World) -> Vec<serde_json::Value> {
    let out = w.env.cli(&["supervise", "history", "--json"]);
    assert!(out.status.success(), "supervise history: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("history --json is a JSON array")
}

fn id_of(p: &serde_json::Value) -> String {
    p["id"].as_str().expect("a proposal has an id").to_string()
}

fn pending(w: &World) -> Vec<serde_json::Value> {
    let out = w.env.cli(&["supervise", "list", "--json"]);
    assert!(out.status.success(), "supervise list: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("list --json is a JSON array")
}

/// Waits for `n` pending proposals and returns them.
fn wait_pending(w: &World, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = pending(w);
        if list.len() >= n {
            return list;
        }
        assert!(Instant::now() < deadline, "expected {n} pending proposals, have {}", list.len());
        thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a curl in the bottle; `finish` waits for it and gives (code, body).
fn held_curl(w: &World, body: String) -> std::process::Child {
    w.spawn_curl(&["-d", &body, &w.url("api.upstream.test", "/v1/send")])
}

fn finish(child: std::process::Child) -> (String, String) {
    curl_result(&child.wait_with_output().expect("curl"))
}

fn assert_no_raw_value(dir: &Path, w: &World, values: &[&str]) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    assert!(!files.is_empty(), "the queue directory is empty");
    for f in files {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        for v in values {
            assert!(!text.contains(v), "raw value in {}", f.display());
        }
    }
    let log = w.env.gateway_log();
    for v in values {
        assert!(!log.contains(v), "raw value in the gateway log");
    }
}

#[test]
fn approve_releases_the_request_and_the_value_stays_approved() {
    let (w, queue) = world("sup-approve", 60);
    let first = token('A');
    let held = held_curl(&w, format!("key={first}"));
    let list = wait_pending(&w, 1);
    let p = &list[0];
    assert_eq!(p["bottle"], "e2e");
    assert_eq!(p["tool"], "egress-token-allow");
    assert_eq!(p["payload"]["host"], "api.upstream.test");
    assert!(p["payload"]["reason"].as_str().unwrap().contains("GitHub personal access token"));
    assert!(w.up.requests().is_empty(), "the held request reached the upstream");
    let id = p["id"].as_str().unwrap().to_string();

    // A reason is required.
    let out = w.env.cli(&["supervise", "approve", &id, "--reason", " "]);
    assert!(!out.status.success());
    let out = w.env.cli(&["supervise", "approve", &id, "--reason", "deploy key for this service"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, body) = finish(held);
    assert_eq!(code, "200", "{body}");
    assert!(String::from_utf8_lossy(&w.up.requests()[0].body).contains(&first));

    // The same value again: no new proposal.
    let (code, _) = w.curl(&["-d", &format!("again={first}"), &w.url("api.upstream.test", "/v1/send")]);
    assert_eq!(code, "200");
    assert!(pending(&w).is_empty());

    // That value plus a second token: held again, for the second one; reject it.
    let second = token('B');
    let held = held_curl(&w, format!("a={first}&b={second}"));
    let list = wait_pending(&w, 1);
    let id = list[0]["id"].as_str().unwrap().to_string();
    let out = w.env.cli(&["supervise", "reject", &id, "--reason", "not this one"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, body) = finish(held);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("not this one"), "{body}");
    // Deciding twice, or an unknown id, is an error that changes nothing.
    let out = w.env.cli(&["supervise", "approve", &id, "--reason", "late"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already decided"), "{}", stderr(&out));
    let out = w.env.cli(&["supervise", "reject", "no-such-proposal"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("unknown id"), "{}", stderr(&out));

    // The history, derived from processed/: both decisions, with their reasons.
    let h = history(&w);
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!((h[0]["status"].as_str(), h[0]["scope"].as_str()), (Some("approved"), Some("gateway")));
    assert_eq!(h[0]["reason"], "deploy key for this service");
    assert_eq!((h[1]["status"].as_str(), h[1]["reason"].as_str()), (Some("rejected"), Some("not this one")));
    assert_no_raw_value(&queue, &w, &[&first, &second]);
}

#[test]
fn approve_once_releases_only_the_held_request() {
    let (w, queue) = world("sup-once", 60);
    let value = token('G');
    let held = held_curl(&w, format!("key={value}"));
    let id = id_of(&wait_pending(&w, 1)[0]);
    let out = w.env.cli(&["supervise", "approve", &id, "--reason", "this upload only", "--scope", "once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, body) = finish(held);
    assert_eq!(code, "200", "{body}");
    assert!(String::from_utf8_lossy(&w.up.requests()[0].body).contains(&value));

    // The same value again: held again, with a new proposal.
    let again = held_curl(&w, format!("key={value}"));
    let next = id_of(&wait_pending(&w, 1)[0]);
    assert_ne!(next, id);
    assert_eq!(w.up.requests().len(), 1, "the second request went through without a decision");
    assert!(w.env.cli(&["supervise", "reject", &next]).status.success());
    assert_eq!(finish(again).0, "403");
    let h = history(&w);
    assert_eq!(h[0]["scope"], "once", "{h:?}");
    assert_no_raw_value(&queue, &w, &[&value]);
}

#[test]
fn sqlite_is_the_default_store_with_an_audit_history() {
    // No queue_dir and no db: SQLite in the state directory.
    let w = world_with("sup-sqlite", "timeout_seconds: 60");
    let state = w.env.dir.join("state");
    let db = state.join("supervise.db");
    assert!(db.exists(), "no database at {}", db.display());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&db).unwrap().mode() & 0o777, 0o600);
    assert!(!w.env.dir.join("queue").exists());

    let value = token('H');
    let held = held_curl(&w, format!("key={value}"));
    let list = wait_pending(&w, 1);
    assert_eq!((list[0]["bottle"].as_str(), list[0]["tool"].as_str()), (Some("e2e"), Some("egress-token-allow")));
    let id = id_of(&list[0]);
    let out = w.env.cli(&["supervise", "show", &id]);
    assert!(out.status.success() && stdout(&out).contains("api.upstream.test"), "{}", stderr(&out));
    let out = w.env.cli(&["supervise", "approve", &id, "--reason", "service credential"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(finish(held).0, "200");
    // Remembered for the gateway's life.
    let (code, _) = w.curl(&["-d", &format!("again={value}"), &w.url("api.upstream.test", "/v1/send")]);
    assert_eq!(code, "200");
    assert!(pending(&w).is_empty());

    let h = history(&w);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["proposal_id"].as_str(), Some(id.as_str()));
    assert_eq!((h[0]["status"].as_str(), h[0]["scope"].as_str()), (Some("approved"), Some("gateway")));
    assert_eq!(h[0]["reason"], "service credential");
    assert_eq!(h[0]["host"], "api.upstream.test");
    assert!(h[0]["decided_by"].is_string() && h[0]["decided_at"].is_u64(), "{h:?}");
    let out = w.env.cli(&["supervise", "history"]);
    assert!(stdout(&out).contains("service credential"), "{}", stdout(&out));
    assert!(!w.env.cli(&["supervise", "approve", &id, "--reason", "again"]).status.success());
    assert_no_raw_value(&state, &w, &[&value]);
}

#[test]
fn a_persisted_approval_survives_a_restart() {
    let mut w = world_with("sup-persist", "allow_persist: true\n      timeout_seconds: 60");
    let value = token('J');
    let held = held_curl(&w, format!("key={value}"));
    let id = id_of(&wait_pending(&w, 1)[0]);
    let out = w.env.cli(&["supervise", "approve", &id, "--reason", "long-lived key", "--scope", "persist"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(finish(held).0, "200");

    w.env.stop_gateway();
    w.env.start_gateway();
    let (code, body) = w.curl(&["-d", &format!("key={value}"), &w.url("api.upstream.test", "/v1/send")]);
    assert_eq!(code, "200", "re-prompted after a restart: {body}");
    assert!(pending(&w).is_empty());
    assert_no_raw_value(&w.env.dir.join("state"), &w, &[&value]);
}

#[test]
fn persist_needs_opt_in() {
    let (w, _queue) = world("sup-no-persist", 60);
    let held = held_curl(&w, token('K'));
    let id = id_of(&wait_pending(&w, 1)[0]);
    let out = w.env.cli(&["supervise", "approve", &id, "--reason", "keep", "--scope", "persist"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("allow_persist"), "{}", stderr(&out));
    assert_eq!(pending(&w).len(), 1, "the refused approval changed something");
    assert!(w.env.cli(&["supervise", "reject", &id]).status.success());
    assert_eq!(finish(held).0, "403");
}

#[test]
fn timeout_malformed_response_and_broken_queue_fail_closed() {
    let (w, queue) = world("sup-fail", 2);
    let (code, body) = w.curl(&["-m", "30", "-d", &token('C'), &w.url("api.upstream.test", "/v1/send")]);
    assert_eq!(code, "403", "timeout: {body}");
    assert!(body.contains("no operator decision"), "{body}");

    // A malformed response is read again until the deadline (it may be half-written),
    // then refused, naming it.
    let (w2, queue2) = world("sup-malformed", 3);
    let held = held_curl(&w2, token('D'));
    let id = wait_pending(&w2, 1)[0]["id"].as_str().unwrap().to_string();
    std::fs::write(queue2.join(format!("{id}.response.json")), b"{\"status\": \"sure, why not\"}").unwrap();
    let (code, body) = finish(held);
    assert_eq!(code, "403", "malformed response: {body}");
    assert!(body.contains("malformed response"), "{body}");

    // The queue disappears under the gateway: writing the proposal fails.
    std::fs::remove_dir_all(&queue).unwrap();
    let (code, body) = w.curl(&["-m", "30", "-d", &token('E'), &w.url("api.upstream.test", "/v1/send")]);
    assert_eq!(code, "403", "broken queue: {body}");
    assert!(body.contains("queue"), "{body}");
    assert!(w.up.requests().is_empty() && w2.up.requests().is_empty());
}

#[test]
fn a_hundred_requests_complete_while_one_is_held() {
    let (w, _queue) = world("sup-flow", 60);
    let held = held_curl(&w, token('F'));
    let id = wait_pending(&w, 1)[0]["id"].as_str().unwrap().to_string();
    let script = format!(
        "import urllib.request\nok = 0\nfor i in range(100):\n    r = urllib.request.urlopen('{}', timeout=10)\n    ok += r.status == 200\nprint(ok)\n",
        w.url("api.upstream.test", "/v1/other")
    );
    let out = w.run(&["python3", "-c", &script]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "100");
    let mut held = held;
    assert!(held.try_wait().unwrap().is_none(), "the held request finished early");
    assert!(w.env.cli(&["supervise", "approve", &id, "--reason", "fine"]).status.success());
    assert_eq!(finish(held).0, "200");
}

#[test]
fn an_approval_is_for_its_host_and_another_host_is_held_again() {
    let routes = format!("{ROUTES}  - host: other.upstream.test\n    dlp:\n      outbound_on_match: supervise\n");
    let queue = egress_e2e::private_base(std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))).join(format!(
        "supervise-queue-sup-host-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let block = format!("    supervise:\n      queue_dir: {}\n      timeout_seconds: 60\n", queue.display());
    let w = World::start_with("sup-host", &["api.upstream.test", "other.upstream.test"], &routes, &[], &block);
    let value = token('K');
    let held = held_curl(&w, format!("key={value}"));
    let p = wait_pending(&w, 1).remove(0);
    let text = p["justification"].as_str().unwrap();
    assert!(text.contains("for api.upstream.test only"), "the proposal says the approval is for its host: {text}");
    let out = w.env.cli(&["supervise", "approve", &id_of(&p), "--reason", "this service's key"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(finish(held).0, "200");
    // The same host again: released by the approval, no proposal.
    assert_eq!(finish(held_curl(&w, format!("key={value}"))).0, "200");
    assert!(pending(&w).is_empty());
    // Another host: held again, with a proposal of its own.
    let other = w.spawn_curl(&["-d", &format!("key={value}"), &w.url("other.upstream.test", "/v1/send")]);
    let p = wait_pending(&w, 1).remove(0);
    assert_eq!(p["payload"]["host"], "other.upstream.test");
    assert_eq!(w.up.requests().len(), 2, "the request to the other host went through without a decision");
    assert!(w.env.cli(&["supervise", "reject", &id_of(&p)]).status.success());
    assert_eq!(finish(other).0, "403");
    let hosts: Vec<_> = history(&w).iter().map(|e| (e["host"].clone(), e["status"].clone())).collect();
    assert_eq!(
        hosts,
        [("api.upstream.test".into(), "approved".into()), ("other.upstream.test".into(), "rejected".into())],
        "every decision is in the history with its host"
    );
    assert_no_raw_value(&queue, &w, &[&value]);
}

/// Waits until `cond` holds for the pending list (20 s at most).
fn wait_until(w: &World, what: &str, cond: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = pending(w);
        if cond(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "{what}: pending is {list:?}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn status(w: &World) -> serde_json::Value {
    let out = w.env.cli(&["supervise", "status", "--json"]);
    assert!(out.status.success(), "supervise status: {}", stderr(&out));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("status --json is an array");
    all.into_iter().find(|b| b["bottle"] == "e2e").expect("the test's bottle")
}

#[test]
fn a_client_that_goes_away_abandons_its_proposal_and_the_cap_refuses_with_429() {
    let (w, queue) = world("sup-ghost", 60);
    let value = token('L');
    // The client gives up after 2 s: the hold is dropped with its request.
    let ghost = w.spawn_curl(&["-m", "2", "-d", &format!("key={value}"), &w.url("api.upstream.test", "/v1/send")]);
    let id = id_of(&wait_pending(&w, 1)[0]);
    let _ = ghost.wait_with_output();
    wait_until(&w, "the abandoned proposal is closed", |l| l.is_empty());
    w.env.wait_for_log("proposal closed as abandoned");
    // Approving it now says it would release nothing, and writes nothing.
    let out = w.env.cli(&["supervise", "approve", &id, "--reason", "looks fine"]);
    assert!(!out.status.success(), "approving an abandoned proposal succeeded");
    let err = stderr(&out);
    assert!(err.contains("abandoned") && err.contains("release nothing"), "{err}");
    assert!(!queue.join("processed").join(format!("{id}.response.json")).exists());
    let note: serde_json::Value =
        serde_json::from_slice(&std::fs::read(queue.join("processed").join(format!("{id}.closed"))).unwrap()).unwrap();
    assert_eq!(note["closed"], "abandoned", "the queue says how the hold ended: {note}");
    assert!(queue.join("processed").join(format!("{id}.json")).exists(), "the proposal is archived beside it");

    // A flood of clients that give up: every proposal closes; none stays pending.
    let ghosts: Vec<_> = (0..12)
        .map(|i| {
            let body = format!("n={i}&key={value}");
            w.spawn_curl(&["-m", "8", "-d", &body, &w.url("api.upstream.test", "/v1/send")])
        })
        .collect();
    for g in ghosts {
        let _ = g.wait_with_output();
    }
    wait_until(&w, "every ghost is closed", |l| l.is_empty());
    // Every proposal the flood made (a client slow to start may give up before it is
    // held) is closed as abandoned, and counted.
    let abandoned = std::fs::read_dir(queue.join("processed"))
        .unwrap()
        .flatten()
        .filter(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            text.contains("\"closed\": \"abandoned\"")
        })
        .count() as u64;
    assert!(abandoned >= 6, "only {abandoned} of 13 requests were held");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&w)["counters"]["abandoned"].as_u64() != Some(abandoned) {
        assert!(Instant::now() < deadline, "abandoned counter: {}", status(&w));
        thread::sleep(Duration::from_millis(100));
    }
    assert!(w.up.requests().is_empty(), "an abandoned request reached the upstream");
    assert_no_raw_value(&queue, &w, &[&value]);
}

#[test]
fn over_max_pending_requests_get_429_counted_in_the_log_and_status() {
    let queue = egress_e2e::private_base(std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))).join(format!(
        "supervise-queue-sup-cap-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let w = world_with(
        "sup-cap",
        &format!("queue_dir: {}\n      timeout_seconds: 60\n      max_pending: 2", queue.display()),
    );
    let value = token('M');
    let held: Vec<_> = (0..2).map(|i| held_curl(&w, format!("n={i}&key={value}"))).collect();
    wait_pending(&w, 2);
    let (code, body) = w.curl(&["-d", &format!("n=3&key={value}"), &w.url("api.upstream.test", "/v1/send")]);
    assert_eq!(code, "429", "{body}");
    assert!(body.contains("max_pending"), "{body}");
    assert_eq!(pending(&w).len(), 2, "the refused request wrote a proposal");
    w.env.wait_for_log("held-request cap reached");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(&w);
        if s["counters"]["refused_over_cap"].as_u64() == Some(1) {
            assert_eq!((s["pending"].as_u64(), s["max_pending"].as_u64()), (Some(2), Some(2)), "{s}");
            break;
        }
        assert!(Instant::now() < deadline, "refused counter: {s}");
        thread::sleep(Duration::from_millis(100));
    }
    let text = w.env.cli(&["supervise", "status"]);
    assert!(stdout(&text).contains("refused over the cap (429) 1"), "{}", stdout(&text));
    for p in pending(&w) {
        assert!(w.env.cli(&["supervise", "reject", &id_of(&p)]).status.success());
    }
    for h in held {
        assert_eq!(finish(h).0, "403");
    }
    assert_no_raw_value(&queue, &w, &[&value]);
}

#[test]
fn a_proposal_left_open_by_a_stopped_gateway_is_closed_at_start() {
    let (mut w, queue) = world("sup-stale", 60);
    let value = token('N');
    let held = held_curl(&w, format!("key={value}"));
    let id = id_of(&wait_pending(&w, 1)[0]);
    // The gateway dies with the request held (no chance to close anything).
    w.env.signal_gateway(9);
    let _ = finish(held);
    w.env.stop_gateway();
    assert!(queue.join(format!("{id}.json")).exists(), "the proposal was closed before the restart");
    w.env.start_gateway();
    assert!(pending(&w).is_empty(), "a proposal of the previous run is still pending");
    let out = w.env.cli(&["supervise", "approve", &id, "--reason", "late"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("release nothing"), "{}", stderr(&out));
    w.env.wait_for_log("closed as abandoned");
}

#[test]
fn requests_with_the_same_value_host_and_path_are_held_separately() {
    let (w, queue) = world("sup-separate", 60);
    let value = token('P');
    let one = w.spawn_curl(&["-d", &format!("first=1&key={value}"), &w.url("api.upstream.test", "/v1/send?q=one")]);
    wait_pending(&w, 1);
    let two = w.spawn_curl(&["-d", &format!("second=2&key={value}"), &w.url("api.upstream.test", "/v1/send?q=two")]);
    let list = wait_pending(&w, 2);
    let contexts: Vec<&str> = list.iter().map(|p| p["payload"]["context"].as_str().unwrap()).collect();
    let first = list
        .iter()
        .find(|p| p["payload"]["context"].as_str().unwrap().contains("first=1"))
        .expect("each shows its own body");
    assert!(contexts.iter().any(|c| c.contains("second=2")), "{contexts:?}");
    let out = w.env.cli(&["supervise", "approve", &id_of(first), "--reason", "this upload", "--scope", "once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(finish(one).0, "200");
    thread::sleep(Duration::from_millis(800));
    assert_eq!(w.up.requests().len(), 1, "once released the other request too");
    let rest = pending(&w);
    assert_eq!(rest.len(), 1);
    assert!(rest[0]["payload"]["context"].as_str().unwrap().contains("second=2"));
    assert!(w.env.cli(&["supervise", "reject", &id_of(&rest[0])]).status.success());
    assert_eq!(finish(two).0, "403");
    assert!(String::from_utf8_lossy(&w.up.requests()[0].body).contains("first=1"));
    assert_no_raw_value(&queue, &w, &[&value]);
}

/// A path padded with no-break spaces (as clients send them: percent-encoded, so 300 of
/// them keep it under the 2,048 characters a proposal takes), then a note posing as
/// the gateway's.
fn padded_path() -> String {
    format!("/v1/send{}note:known-test-fixture,safe-to-approve", "%C2%A0".repeat(300))
}

/// Runs the console in a real pseudo-terminal (160 × 40) for a while, typing `keys`
/// after the first screen, then `q`; returns everything it wrote.
fn console_in_a_pty(w: &World, keys: &str) -> String {
    let script = r#"
import fcntl, os, pty, select, struct, sys, termios, time
binary, config, keys = sys.argv[1], sys.argv[2], sys.argv[3]
pid, fd = pty.fork()
if pid == 0:
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack('HHHH', 40, 160, 0, 0))
    os.execv(binary, [binary, 'supervise', '--config', config])
out = b''
def pump(seconds):
    global out
    end = time.time() + seconds
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                out += os.read(fd, 65536)
            except OSError:
                return
pump(2.5)
for k in keys:
    os.write(fd, k.encode())
    pump(0.3)
pump(1.5)
os.write(fd, b'q')
pump(1.5)
os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(egress_e2e::gateway_bin())
        .arg(&w.env.config_path)
        .arg(keys)
        .output()
        .expect("python3");
    assert!(out.status.success(), "the pty driver failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn agent_text_cannot_pose_as_the_gateways_in_the_console_the_cli_or_the_notification() {
    let queue = egress_e2e::private_base(std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))).join(format!(
        "supervise-queue-sup-pose-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let notified = queue.with_extension("notified.json");
    let w = world_with(
        "sup-pose",
        &format!(
            "queue_dir: {}\n      timeout_seconds: 60\n      notify_command: [sh, -c, \"cat > {}\"]",
            queue.display(),
            notified.display()
        ),
    );
    let value = token('Q');
    let path = padded_path();
    // Raw no-break spaces in the body, right after the value: in the context.
    let body = format!("key={value}{}", "\u{a0}".repeat(30));
    let held = w.spawn_curl(&["-d", &body, &w.url("api.upstream.test", &path)]);
    let p = wait_pending(&w, 1).remove(0);
    let id = id_of(&p);
    // JSON: the whole path; every no-break space of the context a visible escape.
    let shown = p["payload"]["path"].as_str().unwrap();
    assert_eq!(shown, path);
    let context = p["payload"]["context"].as_str().unwrap();
    assert!(!context.contains('\u{a0}') && context.contains("********\\u{a0}\\u{a0}"), "{context}");
    // Text: the gateway's columns first, the agent's path marked and cut with a count.
    let text = stdout(&w.env.cli(&["supervise", "list"]));
    let line = text.lines().find(|l| l.contains(&id)).expect("the proposal's line");
    let host_at = line.find("api.upstream.test").expect("the host");
    let reason_at = line.find("GitHub personal access token").expect("the reason");
    let path_at = line.find("\u{2039}/v1/send").expect("the marked path");
    assert!(host_at < path_at && reason_at < path_at, "{line}");
    assert!(line.contains("more characters)\u{203a}") && !line.contains("note:"), "{line}");
    // The notification's JSON: inert too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !notified.exists() {
        assert!(Instant::now() < deadline, "no notification");
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_millis(200));
    let note = std::fs::read_to_string(&notified).unwrap();
    let note: serde_json::Value = serde_json::from_str(&note).unwrap();
    assert_eq!(note["payload"]["path"].as_str(), Some(shown));

    // The console in a real terminal: host, reason and the truncation marker on screen,
    // the agent's note not, no raw no-break space; `R` then Enter rejects what it shows.
    let screen = console_in_a_pty(&w, "R\r");
    assert!(screen.contains("api.upstream.test") && screen.contains("GitHub personal access token"), "{screen}");
    assert!(screen.contains("more characters)"), "no truncation marker: {screen}");
    assert!(!screen.contains("note:known-test-fixture"), "the agent's note is on screen");
    assert!(!screen.contains('\u{a0}'), "a raw no-break space reached the terminal");
    // (A terminal backend moves the cursor over unchanged blanks: words, not phrases.)
    assert!(screen.contains("reject ALL 1") && screen.contains("proposals"), "{screen}");
    let h = history(&w);
    assert_eq!((h.len(), h[0]["status"].as_str()), (1, Some("rejected")), "{h:?}");
    let (code, body) = finish(held);
    assert_eq!(code, "403", "{body}");

    // A path too long to show whole is refused without a proposal.
    let long = format!("/v1/{}", "a".repeat(60_000));
    let (code, body) = w.curl(&["-d", &format!("key={value}"), &w.url("api.upstream.test", &long)]);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("refused without asking"), "{body}");
    assert!(pending(&w).is_empty());
    assert!(w.up.requests().is_empty());
    let _ = std::fs::remove_file(&notified);
    assert_no_raw_value(&queue, &w, &[&value]);
}
