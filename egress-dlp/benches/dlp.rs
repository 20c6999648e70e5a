//! DLP throughput on LLM-conversation JSON bodies (100 KB, 1 MB, 8 MB) and a 1 MB base64
//! body, with the full default rule set and a few known secrets. `cargo xtask bench dlp`.
use std::{collections::HashSet, hint::black_box, time::Duration};

use base64::Engine as _;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use egress_dlp::{Engine, KnownSecrets, Request, Selection};

#[path = "bodies.rs"]
mod bodies;
use bodies::{auth_talk, conversation};

fn bench(c: &mut Criterion) {
    let known =
        KnownSecrets::new([("EGRESS_TOKEN_0".to_string(), "bench-known-secret-value-0123456789".to_string())], 12);
    // Worst case: every message scanned every time (no per-message verdict cache).
    let engine = Engine::new(known, Vec::new()).unwrap().without_message_cache();
    let safe = HashSet::<String>::new();
    let sel = Selection::from_names(None);
    let mut group = c.benchmark_group("dlp_scan");
    group.measurement_time(Duration::from_secs(5)).sample_size(10);
    let mut bodies: Vec<(String, String)> = [100 * 1024, 1024 * 1024, 8 * 1024 * 1024]
        .iter()
        .map(|&n| (format!("conversation_{}KB", n / 1024), conversation(n)))
        .collect();
    // Non-ASCII text (accents, emoji) is common in conversations; Unicode-aware regex
    // features can fall back to slower engines on it.
    let utf8 = conversation(100 * 1024).replace("empty object", "objet vide 😀 — déjà vu");
    bodies.push(("conversation_100KB_utf8".into(), utf8));
    // A clean conversation about authentication: many rules' keywords occur, so their
    // regexes run (the prefilter lets them through).
    bodies.push(("auth_talk_1024KB".into(), auth_talk(1024 * 1024)));
    let image: Vec<u8> = (0..768 * 1024).map(|i| (i * 7919 % 251) as u8).collect();
    bodies.push(("base64_1MB".into(), base64::engine::general_purpose::STANDARD.encode(image)));
    for (name, body) in &bodies {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), body, |b, body| {
            b.iter(|| {
                let req =
                    Request { host: "api.test", path: "/v1/messages", query: "", headers: &[], body: body.as_bytes() };
                black_box(engine.scan_request(&req, sel, &safe))
            })
        });
    }
    group.finish();

    // The realistic case: the next turn of a 1 MB conversation (its history seen clean
    // before) with the per-message cache on; a fresh new message every iteration.
    let cached = Engine::new(KnownSecrets::default(), Vec::new()).unwrap();
    let history = conversation(1024 * 1024);
    let prime = Request { host: "api.test", path: "/", query: "", headers: &[], body: history.as_bytes() };
    cached.scan_request(&prime, sel, &safe);
    let mut turn = 0u64;
    let mut group = c.benchmark_group("dlp_conversation_turn");
    group.measurement_time(Duration::from_secs(5)).sample_size(10);
    group.throughput(Throughput::Bytes(history.len() as u64));
    group.bench_function("next_turn_of_1MB", |b| {
        b.iter_batched(
            || {
                turn += 1;
                let new = format!(",{{\"role\":\"user\",\"content\":\"turn {turn}: what about the tests?\"}}]}}");
                format!("{}{new}", &history[..history.len() - 2])
            },
            |body| {
                let req = Request { host: "api.test", path: "/", query: "", headers: &[], body: body.as_bytes() };
                black_box(cached.scan_request(&req, sel, &safe))
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
