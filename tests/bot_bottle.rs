//! A bot-bottle user switching from the mitmproxy sidecar, end to end: bot-bottle's own
//! supervisor (here a small reader written from the seed's field list) reads the
//! gateway's proposals in a queue directory named by `SUPERVISE_QUEUE_DIR` and answers
//! them as its TUI does; supervise is on without a `supervise:` block; a broken routes
//! file at start leaves only its bottle denying everything; `_egress.local` answers
//! `/allowlist` in the seed's shape and 404 elsewhere.
#![cfg(feature = "root-tests")]

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use egress_e2e::{
    MoreBottle, stderr, stdout,
    world::{World, WorldSpec, curl_result},
};

const HOST: &str = "api.upstream.test";
/// The default policy of a route (the seed's manifest routes): `supervise`.
const ROUTES: &str = "log: 1\nroutes:\n  - host: api.upstream.test\n";
const SLUG: &str = "bottle-7f3a";

fn token(tag: char) -> String {
    format!("ghp_{}", tag.to_string().repeat(36))
}

/// A queue directory outside /tmp (the gateway refuses one under a directory others can
/// write), removed when the test ends, passed or not.
struct Queue(PathBuf);

impl Queue {
    fn new(test: &str) -> Queue {
        let base = egress_e2e::private_base(Path::new(env!("CARGO_TARGET_TMPDIR")));
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        Queue(base.join(format!("bb-queue-{test}-{}-{nanos}", std::process::id())))
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// bot-bottle's supervisor, as far as the seeds show it: it lists `<id>.json` proposals
/// (not responses), reads the record's keys (`id`, `bottle_slug`, `tool`,
/// `proposed_file`, `justification`, `current_file_hash`, a creation time), checks the
/// hash of the text payload, and answers `<id>.response.json` with `status` and `notes`
/// (written to a temporary file, then renamed), as its TUI does. Prints what it checked.
const READER: &str = r#"
import hashlib, json, os, sys
queue, answer = sys.argv[1], json.loads(sys.argv[2])
names = sorted(n for n in os.listdir(queue)
               if n.endswith('.json') and not n.endswith('.response.json') and not n.startswith('.'))
pending = [n for n in names if not os.path.exists(os.path.join(queue, n[:-5] + '.response.json'))]
if len(pending) != 1:
    sys.exit('expected one pending proposal, found %r' % pending)
with open(os.path.join(queue, pending[0])) as f:
    p = json.load(f)
expected = {'id', 'bottle_slug', 'tool', 'proposed_file', 'justification', 'current_file_hash', 'created_at'}
if set(p) != expected:
    sys.exit('keys %r, expected %r' % (sorted(p), sorted(expected)))
assert pending[0] == p['id'] + '.json', 'file name and id differ'
assert p['tool'] == 'egress-token-allow', p['tool']
assert hashlib.sha256(p['proposed_file'].encode()).hexdigest() == p['current_file_hash'], 'hash'
lines = p['proposed_file'].splitlines()
assert lines[0] == 'egress blocked an outbound request carrying a detected token', lines[0]
fields = dict(l.split(': ', 1) for l in lines[1:])
assert list(fields) == ['host', 'method', 'path', 'detector', 'context'], list(fields)
assert '********' in fields['context'], fields['context']
tmp = os.path.join(queue, '.' + p['id'] + '.tmp')
with open(tmp, 'w') as f:
    json.dump(answer, f)
os.rename(tmp, os.path.join(queue, p['id'] + '.response.json'))
print(json.dumps({'bottle_slug': p['bottle_slug'], 'created_at': p['created_at'], **fields}))
"#;

/// Waits for the held proposal, answers it with `answer` as bot-bottle's supervisor
/// does, and returns what the reader saw.
fn answer_as_bot_bottle(queue: &Path, answer: serde_json::Value) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("python3").arg("-c").arg(READER).arg(queue).arg(answer.to_string()).output().unwrap();
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).expect("the reader prints JSON");
        }
        let err = stderr(&out);
        assert!(err.contains("expected one pending proposal"), "bot-bottle's reader refused the proposal: {err}");
        assert!(Instant::now() < deadline, "no proposal appeared: {err}");
        thread::sleep(Duration::from_millis(100));
    }
}

fn held(w: &World, body: &str) -> std::process::Child {
    w.spawn_curl(&["-d", body, &w.url(HOST, "/v1/send?x=1")])
}

fn finish(child: std::process::Child) -> (String, String) {
    curl_result(&child.wait_with_output().expect("curl"))
}

#[test]
fn bot_bottles_supervisor_reads_our_proposals_and_its_answers_release_or_refuse() {
    let queue = Queue::new("reader");
    let dir = queue.0.display().to_string();
    // No `supervise:` block: the seed's environment names the queue and the slug.
    let env = [("SUPERVISE_QUEUE_DIR", dir.as_str()), ("SUPERVISE_BOTTLE_SLUG", SLUG)];
    let w = World::start("bb-reader", &[HOST], ROUTES, &env);

    // Approved with a reason (the TUI requires one for this tool): released.
    let first = token('A');
    let child = held(&w, &format!("key={first}"));
    let seen = answer_as_bot_bottle(&queue.0, serde_json::json!({"status": "approved", "notes": "false positive"}));
    assert_eq!(seen["bottle_slug"], SLUG);
    assert_eq!((seen["host"].as_str(), seen["method"].as_str()), (Some(HOST), Some("POST")));
    assert_eq!(seen["path"], "/v1/send");
    assert!(seen["detector"].as_str().unwrap().contains("GitHub personal access token"), "{seen}");
    assert!(seen["created_at"].as_str().is_some_and(|t| t.ends_with('Z')), "an RFC 3339 UTC time: {seen}");
    let (code, body) = finish(child);
    assert_eq!(code, "200", "{body}");
    assert!(String::from_utf8_lossy(&w.up.requests()[0].body).contains(&first));

    // Rejected, `notes: null`: refused.
    let child = held(&w, &format!("key={}", token('B')));
    answer_as_bot_bottle(&queue.0, serde_json::json!({"status": "rejected", "notes": null}));
    let (code, body) = finish(child);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("supervisor rejected the request"), "the seed's text: {body}");

    // `modified`, with a final file and no notes at all: released, end to end.
    let third = token('C');
    let child = held(&w, &format!("key={third}"));
    answer_as_bot_bottle(&queue.0, serde_json::json!({"status": "modified", "final_file": "edited by the operator\n"}));
    let (code, body) = finish(child);
    assert_eq!(code, "200", "a modified response did not release the request: {body}");
    assert!(String::from_utf8_lossy(&w.up.requests()[1].body).contains(&third));

    // The gateway archived every one (it owns archiving); no raw value anywhere.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&queue.0).unwrap().flatten().any(|e| e.file_name().to_string_lossy().ends_with(".json")) {
        assert!(Instant::now() < deadline, "proposals left in the queue");
        thread::sleep(Duration::from_millis(50));
    }
    for e in std::fs::read_dir(queue.0.join("processed")).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        for v in [&first, &third] {
            assert!(!text.contains(v.as_str()), "raw value in {}", e.path().display());
        }
    }
    let log = w.env.gateway_log();
    assert!(!log.contains(&first) && !log.contains(&third), "raw value in the gateway log");
}

#[test]
fn a_fractional_token_allow_timeout_is_honoured() {
    let w = World::start("bb-float", &[HOST], ROUTES, &[("EGRESS_TOKEN_ALLOW_TIMEOUT_SECONDS", "0.5")]);
    let (code, body) = w.curl(&["-d", &format!("key={}", token('D')), &w.url(HOST, "/v1/send")]);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("no operator decision within 0.5 s"), "{body}");
    assert!(w.up.requests().is_empty());
}

#[test]
fn without_a_supervise_block_a_token_is_held_and_supervise_approve_releases_it() {
    let w = World::start("bb-default", &[HOST], ROUTES, &[]);
    let value = token('E');
    let child = held(&w, &format!("key={value}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let list = loop {
        let out = w.env.cli(&["supervise", "list", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        if !list.is_empty() {
            break list;
        }
        assert!(Instant::now() < deadline, "the request was not held");
        thread::sleep(Duration::from_millis(100));
    };
    assert!(w.env.dir.join("state/supervise.db").exists(), "SQLite in the state directory is the default");
    let id = list[0]["id"].as_str().unwrap();
    let out = w.env.cli(&["supervise", "approve", id, "--reason", "expected"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, body) = finish(child);
    assert_eq!(code, "200", "{body}");

    // Turned off explicitly: `supervise` acts as `block`, and says why.
    let off = World::start_with("bb-off", &[HOST], ROUTES, &[], "    supervise: {enabled: false}\n");
    let (code, body) = off.curl(&["-d", &format!("key={value}"), &off.url(HOST, "/v1/send")]);
    assert_eq!(code, "403", "{body}");
    assert!(body.contains("supervise is off for this bottle"), "{body}");
    assert!(!off.env.dir.join("state/supervise.db").exists());
}

#[test]
fn a_broken_routes_file_at_start_denies_only_its_bottle() {
    let spec = WorldSpec {
        hosts: &[HOST],
        routes: "routes:\n  - host: api.upstream.test\n    dlp: {outbound_on_match: sometimes}\n",
        more_bottles: &[MoreBottle { suffix: "ok", routes: ROUTES, ..Default::default() }],
        ..Default::default()
    };
    let w = World::start_spec("bb-broken", &spec);
    w.env.wait_for_log("routes did not load");
    let log = w.env.gateway_log();
    assert!(log.contains("routes.yaml"), "the log names the file: {log}");
    let (code, body) = w.curl(&[&w.url(HOST, "/v1/x")]);
    assert_eq!(code, "403", "the broken bottle is not deny-all: {body}");
    let (code, body) = w.curl_in(&w.env.more_bottle("ok"), &[&w.url(HOST, "/v1/x")]);
    assert_eq!(code, "200", "the other bottle is affected: {body}");
    // `check` still reports it as an error.
    let out = w.env.cli(&["check"]);
    assert!(!out.status.success(), "check passed a broken routes file: {}", stdout(&out));
    assert!(stderr(&out).contains("outbound_on_match"), "{}", stderr(&out));
    // Fixed and reloaded: the bottle gets its routes.
    w.env.write_routes(ROUTES);
    let out = w.env.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, body) = w.curl(&[&w.url(HOST, "/v1/x")]);
    assert_eq!(code, "200", "{body}");
}

#[test]
fn egress_local_answers_the_allowlist_in_the_seeds_shape_and_404_elsewhere() {
    let w = World::start("bb-introspect", &[HOST], ROUTES, &[]);
    let (code, body) = w.curl(&["http://_egress.local/allowlist"]);
    assert_eq!(code, "200", "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json, serde_json::json!({"routes": [{"host": HOST, "dlp": {"outbound_on_match": "supervise"}}]}));
    for path in ["/", "/allowlist/x", "/routes", "/allowlistx"] {
        let (code, body) = w.curl(&[&format!("http://_egress.local{path}")]);
        assert_eq!(code, "404", "{path}: {body}");
        assert!(body.contains("no such endpoint"), "{body}");
    }
}
