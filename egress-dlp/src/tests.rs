use std::collections::HashSet;

use base64::Engine as _;

use super::*;

/// Generated values in real formats, one per provider format (none is a real secret).
pub(super) fn samples() -> Vec<(&'static str, String)> {
    let a = |n: usize| {
        "aB3dE5fG7hJ9kL2mN4pQ6rS8tU1vW3xY5zA7bC9dE2fG4hJ6kL8mN1pQ3rS5tU7vW9xY2zA4bC6dE8fG1hJ3kL5mN7pQ9rS2tU4vW6xY8zA1bC3dE5fG7hJ9kL2mN4pQ6rS8tU1vW3xY5zA7bC9dE2fG4hJ6kL8mN1pQ3rS5tU7vW9xY2zA4bC6dE8f"[..n].to_string()
    };
    let h = |n: usize| {
        "3f9a1c7e5b2d8f0a4c6e9b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f1a3c5e7b9d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f1a3c5e7b9d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f1a3c5e7b"[..n].to_string()
    };
    let up = |n: usize| "QWERTYUIOPASDFGHJKLZXCVBNM234567QWERTYUIOP"[..n].to_string();
    vec![
        ("aws-access-key-id", format!("AKIA{}", up(16))),
        ("gcp-api-key", format!("AIza{}", a(35))),
        ("gcp-oauth-client-secret", format!("GOCSPX-{}", a(28))),
        (
            "azure-storage-connection-string",
            format!("DefaultEndpointsProtocol=https;AccountName=x;AccountKey={}==", a(86)),
        ),
        ("alibaba-access-key-id", format!("LTAI{}", a(20))),
        ("digitalocean-token", format!("dop_v1_{}", h(64))),
        ("heroku-api-key", format!("HRKU-{}", a(60))),
        ("flyio-token", format!("fm2_{}", a(120))),
        ("cloudflare-origin-ca-key", format!("v1.0-{}-{}", h(24), h(146))),
        ("vault-token", format!("hvs.{}", a(95))),
        ("terraform-cloud-token", format!("{}.atlasv1.{}", a(14), a(64))),
        ("pulumi-token", format!("pul-{}", h(40))),
        ("doppler-token", format!("dp.pt.{}", a(43))),
        ("github-pat", format!("ghp_{}", a(36))),
        ("github-oauth", format!("gho_{}", a(36))),
        ("github-app-token", format!("ghs_{}", a(36))),
        ("github-refresh-token", format!("ghr_{}", a(76))),
        ("github-fine-grained-pat", format!("github_pat_{}", a(82))),
        ("gitlab-pat", format!("glpat-{}", a(20))),
        ("gitlab-runner-token", format!("glrt-{}", a(24))),
        ("gitlab-deploy-token", format!("gldt-{}", a(24))),
        ("atlassian-api-token", format!("ATATT3{}", a(186))),
        ("slack-token", format!("xoxb-123456789012-{}", a(24))),
        ("slack-webhook", format!("https://hooks.slack.com/services/T{}/B{}/{}", up(8), up(9), a(24))),
        // The first part is a numeric id in base64 ("123456789012345678").
        ("discord-bot-token", format!("MTIzNDU2Nzg5MDEyMzQ1Njc4.{}.{}", a(6), a(27))),
        ("discord-webhook", format!("https://discord.com/api/webhooks/123456789012345678/{}", a(68))),
        ("telegram-bot-token", format!("123456789:AA{}", a(33))),
        ("linear-api-key", format!("lin_api_{}", a(40))),
        ("notion-token", format!("ntn_12345678901{}", a(35))),
        ("postman-api-key", format!("PMAK-{}-{}", h(24), h(34))),
        ("stripe-secret-key", format!("sk_live_{}", a(24))),
        ("stripe-test-key", format!("rk_test_{}", a(30))),
        ("square-token", format!("EAAA{}", a(60))),
        ("shopify-token", format!("shpat_{}", h(32))),
        ("braintree-token", format!("access_token$production${}${}", &h(40)[24..40], h(32))),
        ("sendgrid-api-key", format!("SG.{}.{}", a(22), a(43))),
        ("mailgun-api-key", format!("key-{}", h(32))),
        ("mailchimp-api-key", format!("{}-us21", h(32))),
        ("twilio-api-key", format!("SK{}", h(32))),
        ("anthropic-api-key", format!("sk-ant-api03-{}AA", a(93))),
        ("openai-project-key", format!("sk-proj-{}", a(120))),
        ("openai-api-key", format!("sk-{}T3BlbkFJ{}", a(20), a(20))),
        ("huggingface-token", format!("hf_{}", a(34))),
        ("groq-api-key", format!("gsk_{}", a(52))),
        ("xai-api-key", format!("xai-{}", a(80))),
        ("replicate-token", format!("r8_{}", a(37))),
        ("perplexity-api-key", format!("pplx-{}", a(48))),
        ("databricks-token", format!("dapi{}", h(32))),
        ("npm-token", format!("npm_{}", a(36))),
        ("pypi-token", format!("pypi-AgEIcHlwaS5vcmc{}", a(70))),
        ("dockerhub-pat", format!("dckr_pat_{}", a(27))),
        ("rubygems-api-key", format!("rubygems_{}", h(48))),
        ("grafana-token", format!("glsa_{}_{}", a(32), h(8))),
        ("newrelic-api-key", format!("NRAK-{}", up(27))),
        ("sentry-token", format!("sntrys_{}", a(80))),
        ("private-key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n".to_string()),
        (
            "age-secret-key",
            "AGE-SECRET-KEY-1QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7LQPZRY9X8GF2TVDW0S3JN54KHCE6MUA7LQPZ".to_string(),
        ),
        ("jwt", format!("eyJ{}.eyJ{}.{}", a(20), a(40), a(43))),
        ("connection-string-password", "postgres://app:S3cr3tPassw0rd@db.internal:5432/app".to_string()),
        ("url-basic-credentials", "https://deploy:hunter2hunter2@git.example.test/repo.git".to_string()),
    ]
}

/// Token-shaped text that is not a secret.
fn benign() -> Vec<String> {
    vec![
        "commit 3f9a1c7e5b2d8f0a4c6e9b1d3f5a7c9e2b4d6f8a".into(),
        "id: 550e8400-e29b-41d4-a716-446655440000".into(),
        "\"integrity\": \"sha512-3f9a1c7e5b2d8f0a4c6e9b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9aQWERTYUIOPASDFGHJKL==\"".into(),
        format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode([7u8; 3000])),
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE".into(),
        "See https://docs.example.test/v1/keys?page=2 for your sk- prefix keys".into(),
        "{\"role\": \"user\", \"content\": \"How do I rotate my GitHub token (ghp_...)?\"}".into(),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
        "The key-value store keeps key-value pairs in memory.".into(),
        "Basic usage: run `cargo build` then deploy.".into(),
        "bearer token goes in the header".into(),
        "postgres://localhost/app".into(),
    ]
}

fn engine_with(secrets: &[(&str, &str)]) -> Engine {
    let known = KnownSecrets::new(secrets.iter().map(|(n, v)| (n.to_string(), v.to_string())), 12);
    Engine::new(known, Vec::new()).unwrap()
}

fn scan_body(engine: &Engine, body: &str, safe: &HashSet<String>) -> Vec<Finding> {
    let sel = Selection::from_names(None);
    engine.scan_request(
        &Request { host: "api.test", path: "/", query: "", headers: &[], body: body.as_bytes() },
        sel,
        safe,
    )
}

#[test]
fn every_provider_format_is_detected_in_a_json_body() {
    let engine = engine_with(&[]);
    let samples = samples();
    assert!(samples.len() >= 40, "{} formats", samples.len());
    let mut missed = Vec::new();
    for (id, value) in &samples {
        let body =
            serde_json::json!({"messages": [{"role": "user", "content": format!("here: {value} thanks")}]}).to_string();
        let found = scan_body(&engine, &body, &HashSet::new());
        if !found.iter().any(|f| f.rule_id == *id) {
            missed.push(format!("{id}: {:?}", found.iter().map(|f| &f.rule_id).collect::<Vec<_>>()));
        }
    }
    assert!(missed.is_empty(), "missed: {missed:#?}");
}

#[test]
fn benign_token_shaped_text_is_not_flagged() {
    let engine = engine_with(&[]);
    for text in benign() {
        let found = scan_body(&engine, &text, &HashSet::new());
        assert!(found.is_empty(), "{text:?} flagged: {:?}", found.iter().map(|f| &f.rule_id).collect::<Vec<_>>());
    }
}

#[test]
fn known_secrets_are_found_in_every_encoding() {
    let secret = "s3cr3t-Value/with+chars_0123456789";
    let engine = engine_with(&[("EGRESS_TOKEN_0", secret)]);
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let forms = [
        secret.to_string(),
        STANDARD.encode(secret),
        STANDARD_NO_PAD.encode(secret),
        URL_SAFE_NO_PAD.encode(secret),
        hex::encode(secret),
        secret.bytes().map(|b| format!("%{b:02X}")).collect(),
        serde_json::to_string(secret).unwrap().trim_matches('"').replace('/', "\\/"),
        secret.chars().flat_map(|c| [c, '-']).collect(),
        secret[5..25].to_string(),
    ];
    for form in forms {
        let found = scan_body(&engine, &format!("x={form}&y=1"), &HashSet::new());
        assert!(found.iter().any(|f| f.rule_id == "known-secret"), "not found: {form}");
        assert!(found.iter().all(|f| !f.reason.contains(secret) && !f.context.contains(secret)));
    }
    assert!(scan_body(&engine, "nothing here", &HashSet::new()).is_empty());
}

#[test]
fn from_env_takes_egress_tokens_and_configured_prefixes() {
    let env = vec![
        ("EGRESS_TOKEN_7".to_string(), "value-of-token-seven".to_string()),
        ("MY_APP_SECRET".to_string(), "value-of-app-secret".to_string()),
        ("HOME".to_string(), "/root/home/dir".to_string()),
    ];
    let known = KnownSecrets::from_env(env, &["MY_APP_".to_string()], 12);
    assert_eq!(known.len(), 2);
    assert!(known.find("/root/home/dir").is_empty());
}

#[test]
fn safe_tokens_are_skipped_and_scanning_continues_past_them() {
    let engine = engine_with(&[]);
    let first = format!("ghp_{}", "A".repeat(36));
    let second = format!("glpat-{}", "b".repeat(20));
    let body = format!("{first} and {second}");
    let safe: HashSet<String> = [first.clone()].into_iter().collect();
    let found = scan_body(&engine, &body, &safe);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].rule_id, "gitlab-pat");
}

#[test]
fn crlf_is_checked_in_the_head_only() {
    let engine = engine_with(&[]);
    let sel = Selection::from_names(None);
    let safe = HashSet::new();
    let headers = vec![
        ("x-note".to_string(), "a%0d%0aInjected: 1".to_string()),
        ("x-text".to_string(), "line%0Anext".to_string()),
    ];
    let found = engine.scan_request(
        &Request { host: "a.test", path: "/x%0D%0A", query: "text=a%0Ab", headers: &headers, body: b"line1\r\nline2" },
        sel,
        &safe,
    );
    let crlf: Vec<_> = found.iter().filter(|f| f.rule_id == "crlf-injection").collect();
    assert_eq!(crlf.len(), 2, "the path and x-note only: {found:?}");
    // Never approvable (no value); `redact` strips it.
    assert!(crlf.iter().all(|f| f.redactable && f.matched.is_none()));
}

#[test]
fn evasion_and_host_findings_are_unredactable() {
    let engine = engine_with(&[]);
    let token = format!("ghp_{}", "Z".repeat(36));
    let hidden = format!("{}\u{200B}{}", &token[..10], &token[10..]);
    let found = scan_body(&engine, &hidden, &HashSet::new());
    assert_eq!(found.len(), 1);
    assert!(!found[0].redactable);
    let mut out = Vec::new();
    engine.scan_surface(
        &format!("{}.evil.test", token.to_lowercase()),
        Location::Host,
        Selection::from_names(None),
        &HashSet::new(),
        &mut out,
    );
    assert!(out.iter().all(|f| !f.redactable));
}

#[test]
fn redaction_removes_every_value_and_keeps_json_valid() {
    let engine = engine_with(&[("EGRESS_TOKEN_0", "known-secret-value-123")]);
    let token = format!("ghp_{}", "Q".repeat(36));
    let body = serde_json::json!({"a": format!("use {token}"), "b": ["known-secret-value-123", token]}).to_string();
    let found = scan_body(&engine, &body, &HashSet::new());
    let values: Vec<&str> = found.iter().map(|f| &body[f.span.0..f.span.1]).collect();
    let out = redact_text(&body, &values);
    assert!(!out.contains(&token) && !out.contains("known-secret-value-123"));
    let parsed: serde_json::Value = serde_json::from_str(&out).expect("still JSON");
    assert_eq!(parsed["b"][0], REDACTED);
}

#[test]
fn secret_never_prints() {
    let s = Secret::new("ghp_supersecretvalue");
    assert!(!format!("{s:?} {s}").contains("supersecret"));
    let engine = engine_with(&[]);
    let found = scan_body(&engine, &format!("ghp_{}", "W".repeat(36)), &HashSet::new());
    assert!(!format!("{found:?}").contains(&"W".repeat(36)));
}

#[test]
fn selection_follows_route_names() {
    let none = Selection::from_names(Some(&[]));
    assert!(!none.token_patterns && !none.known_secrets && !none.entropy);
    let engine = engine_with(&[]);
    let found = engine.scan_request(
        &Request { host: "a", path: "/", query: "", headers: &[], body: format!("ghp_{}", "A".repeat(36)).as_bytes() },
        none,
        &HashSet::new(),
    );
    assert!(found.is_empty());
}

/// An LLM chat body: `turns` earlier messages, each long enough to be cached, then `last`.
fn conversation(turns: usize, last: &str) -> String {
    let mut messages: Vec<serde_json::Value> = (0..turns)
        .map(|i| serde_json::json!({"role": "user", "content": format!("turn {i}: {}", "lorem ipsum ".repeat(30))}))
        .collect();
    messages.push(serde_json::json!({"role": "user", "content": last}));
    serde_json::json!({"model": "m", "messages": messages}).to_string()
}

#[test]
fn conversation_messages_seen_clean_are_skipped_but_new_secrets_are_caught() {
    let engine = engine_with(&[]);
    let none = HashSet::new();
    assert!(scan_body(&engine, &conversation(5, "hello"), &none).is_empty());
    // The same history plus a secret in the new message: caught, at the right offset.
    let token = format!("ghp_{}", "aB3dE5fG7hJ9kL2mN4pQ6rS8tU1vW3xY5zA7");
    let body = conversation(5, &format!("here {token}"));
    let found = scan_body(&engine, &body, &none);
    assert_eq!(found.len(), 1);
    assert_eq!(&body[found[0].span.0..found[0].span.1], token);
    // A secret inside an old, cached-looking message is still caught: a changed message
    // is a different text.
    let mut body: serde_json::Value = serde_json::from_str(&conversation(5, "hi")).unwrap();
    body["messages"][2]["content"] = serde_json::Value::String(format!("{} {token}", "lorem ipsum ".repeat(30)));
    assert_eq!(scan_body(&engine, &body.to_string(), &none).len(), 1);
}

#[test]
fn a_message_clean_only_thanks_to_the_safe_set_is_not_cached() {
    let engine = engine_with(&[]);
    let token = format!("ghp_{}", "aB3dE5fG7hJ9kL2mN4pQ6rS8tU1vW3xY5zA7");
    let body = conversation(0, &format!("{} {token}", "lorem ipsum ".repeat(30)));
    let approved: HashSet<String> = [token.clone()].into();
    assert!(scan_body(&engine, &body, &approved).is_empty());
    // The approval was for that scan only (a `once` approval, say): without it the
    // same message is caught again.
    assert_eq!(scan_body(&engine, &body, &HashSet::new()).len(), 1);
}

#[test]
fn a_password_field_counts_only_inside_a_connection_string() {
    let engine = engine_with(&[]);
    let rule = |body: &str| {
        scan_body(&engine, body, &HashSet::new())
            .iter()
            .filter(|f| f.rule_id == "connection-string-password-field")
            .filter_map(|f| f.matched.as_ref().map(|m| m.expose().to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(rule("Server=db.internal;Database=app;User Id=app;Password=Zq8s7Lw2x;"), ["Zq8s7Lw2x"]);
    assert_eq!(rule("Provider=SQLOLEDB.1;User ID=u; \" & \"Password =Zq8s7Lw2x;Data Source=db"), ["Zq8s7Lw2x"]);
    // No server or user field before it: a form field, not a connection string.
    assert!(rule("login?user=a&password=Zq8s7Lw2x").is_empty());
    assert!(rule("Password=Zq8s7Lw2x; Server=db;").is_empty());
}

#[test]
fn a_context_shows_no_other_secret_nor_an_approved_value() {
    let engine = engine_with(&[]);
    let a = format!("ghp_{}", "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8");
    let b = format!("ghp_{}", "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2");
    let body = format!("{{\"a\":\"{a}\",\"b\":\"{b}\",\"c\":\"{a}\"}}");
    let safe: HashSet<String> = [a.clone()].into();
    for safe in [HashSet::new(), safe] {
        let found = scan_body(&engine, &body, &safe);
        assert!(!found.is_empty());
        for f in &found {
            for value in [&a, &b] {
                assert!(!f.context.contains(&value[..12]), "{} shows part of a value", f.context);
            }
        }
    }
}

#[test]
fn a_second_encoded_copy_of_a_value_is_hidden_and_cannot_be_redacted() {
    let engine = engine_with(&[]);
    let token = format!("ghp_{}", "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8");
    let encoded = token.replacen('h', "\\u0068", 1);
    let body = format!(
        "{{\"messages\":[{{\"role\":\"user\",\"content\":\"{token}\"}},\
         {{\"role\":\"user\",\"content\":\"and again, spelled differently: {encoded}\"}}]}}"
    );
    let found = scan_body(&engine, &body, &HashSet::new());
    assert!(found.iter().any(|f| f.redactable), "the raw copy");
    assert!(found.iter().any(|f| !f.redactable), "the encoded copy: {found:?}");
    // Nor is the message with the encoded copy cached as clean.
    let alone =
        format!("{{\"messages\":[{{\"role\":\"user\",\"content\":\"and again, spelled differently: {encoded}\"}}]}}");
    assert!(!scan_body(&engine, &alone, &HashSet::new()).is_empty());
}

#[test]
fn per_bottle_engines_share_rules_but_not_known_secrets_or_clean_caches() {
    let base = engine_with(&[("EGRESS_TOKEN_GW", "gateway-wide-secret-0001")]);
    let a_secret = "alpha-secret-value-4242";
    let a = base.with_known_secrets(base.known_secrets().extended([("EGRESS_TOKEN_0".into(), a_secret.into())]));
    let b = base.with_known_secrets(
        base.known_secrets().extended([("EGRESS_TOKEN_0".into(), "zulu-private-token-7373".into())]),
    );
    assert!(Arc::ptr_eq(&a.rules, &b.rules), "the compiled rules are shared");
    let none = HashSet::new();
    // Token rules and gateway-wide secrets apply to both.
    let token = format!("ghp_{}", "aB3dE5fG7hJ9kL2mN4pQ6rS8tU1vW3xY5zA7");
    for e in [&a, &b] {
        assert_eq!(scan_body(e, &format!("x {token}"), &none).len(), 1);
        assert_eq!(scan_body(e, "x gateway-wide-secret-0001", &none).len(), 1);
    }
    // A's credential is A's known secret only.
    let body = conversation(0, &format!("{} {a_secret}", "lorem ipsum ".repeat(30)));
    assert!(scan_body(&b, &body, &none).is_empty(), "B does not know A's value");
    // B has now cached that message as clean; A's own cache has not seen it.
    assert_eq!(scan_body(&a, &body, &none).len(), 1);
    assert!(scan_body(&base, &body, &none).is_empty());
}

#[test]
fn a_context_shows_no_fragment_of_a_percent_encoded_token() {
    let engine = engine_with(&[]);
    let fill =
        "aB3dE5fG7hJ9kL2mN4pQ6rS8tU1vW3xY5zA7bC9dE2fG4hJ6kL8mN1pQ3rS5tU7vW9xY2zA4bC6dE8fG1hJ3kL5mN7pQ9rS2tU4vW6xY8zA1";
    // The tails after the first escape: what the context showed before.
    let (fly_tail, sentry_tail) = (["CZkDDqaDsrx", "daT9wtJ"], ["Qm9vWk0xNTI", "Hk7sLp2Rt"]);
    let fly = format!("FlyV1+fm2_{fill}%2F{}%2B{}", fly_tail[0], fly_tail[1]);
    let sentry = format!("sntrys_eyJ{}%2B{}%3D%3D_{}", &fill[..70], sentry_tail[0], sentry_tail[1]);
    for (token, tails) in [(&fly, fly_tail), (&sentry, sentry_tail)] {
        let form = format!("user=alice&token={token}&next=%2Fhome");
        let sel = Selection::from_names(None);
        let query = engine.scan_request(
            &Request { host: "api.test", path: "/send", query: &form, headers: &[], body: b"" },
            sel,
            &HashSet::new(),
        );
        let body = scan_body(&engine, &form, &HashSet::new());
        assert!(!query.is_empty() && !body.is_empty(), "the token is found in the query and in the body");
        for f in query.iter().chain(&body) {
            for tail in tails {
                assert!(!f.context.contains(tail), "a context of {} shows the token's tail", f.reason);
            }
            assert!(!f.context.contains(&fill[..16]), "a context of {} shows the token", f.reason);
        }
        // What follows the token is still shown.
        assert!(body.iter().any(|f| f.context.contains("&next=%2Fhome")), "context after the token is kept");
    }
}

#[test]
fn a_context_is_inert_for_a_terminal() {
    let engine = engine_with(&[]);
    let token = format!("ghp_{}", "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8");
    let body = format!("\x1b]0;t\x07\u{202e}k={token}\x1b[2J\u{200b}\u{9b}");
    let found = scan_body(&engine, &body, &HashSet::new());
    assert!(!found.is_empty());
    for f in &found {
        assert!(!f.context.contains(crate::inert::is_unsafe), "{:?}", f.context);
    }
    let shown = found.iter().map(|f| f.context.as_str()).collect::<Vec<_>>();
    assert!(shown.iter().any(|c| c.contains("\\x1b]0;t\\x07\\u{202e}k=********\\x1b[2J")), "{shown:?}");
}
