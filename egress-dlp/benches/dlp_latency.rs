//! Latency distribution of one DLP scan of a clean 100 KB conversation body seen for the
//! first time (the budget: p99 under 0.5 ms). Criterion reports means; this
//! reports percentiles. `cargo xtask bench dlp`.
use std::{collections::HashSet, hint::black_box, time::Instant};

use egress_dlp::{Engine, KnownSecrets, Request, Selection};

#[path = "bodies.rs"]
mod bodies;

const RUNS: usize = 5_000;

fn main() {
    let known =
        KnownSecrets::new([("EGRESS_TOKEN_0".to_string(), "bench-known-secret-value-0123456789".to_string())], 12);
    let engine = Engine::new(known, Vec::new()).unwrap().without_message_cache();
    let safe = HashSet::<String>::new();
    let sel = Selection::from_names(None);
    for (name, body) in
        [("conversation_100KB", bodies::conversation(100 * 1024)), ("auth_talk_100KB", bodies::auth_talk(100 * 1024))]
    {
        let req = Request { host: "api.test", path: "/v1/messages", query: "", headers: &[], body: body.as_bytes() };
        for _ in 0..200 {
            assert!(engine.scan_request(&req, sel, &safe).is_empty(), "{name} is clean");
        }
        let mut times: Vec<f64> = (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                black_box(engine.scan_request(black_box(&req), sel, &safe));
                start.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let at = |q: f64| times[((RUNS as f64 * q) as usize).min(RUNS - 1)];
        println!(
            "dlp_latency/{name} ({} bytes, {RUNS} scans): p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs",
            body.len(),
            at(0.50),
            at(0.90),
            at(0.99),
            at(0.999),
            times[RUNS - 1]
        );
    }
}
