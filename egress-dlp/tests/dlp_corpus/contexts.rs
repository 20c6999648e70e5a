//! Traffic-shaped surroundings for a value: whole HTTP/1.1 requests as an agent sends
//! them (LLM-conversation JSON, tool-call arguments, pasted .env and YAML, query strings,
//! headers, cookies, forms, paths, multipart uploads), with no helpful context words
//! ("key", "token", "secret", "password") near the value.
use serde_json::json;

use super::rng::Rng;

pub struct Context {
    pub id: &'static str,
    /// The request, or `None` when the value cannot stand there (a multi-line key in a
    /// header, a URL in a path segment).
    pub make: fn(&str, &mut Rng) -> Option<String>,
}

pub fn all() -> Vec<Context> {
    vec![
        Context { id: "chat-json", make: chat_json },
        Context { id: "tool-call-json", make: tool_call_json },
        Context { id: "env-paste", make: env_paste },
        Context { id: "yaml-paste", make: yaml_paste },
        Context { id: "query", make: query },
        Context { id: "header", make: header },
        Context { id: "cookie", make: cookie },
        Context { id: "form", make: form },
        Context { id: "path", make: path },
        Context { id: "multipart", make: multipart },
    ]
}

/// Neutral sentences that surround a pasted value.
pub const PROSE: &[&str] = &[
    "Can you tell me why the build breaks after this change?",
    "Here is what the service printed right before it exited.",
    "Please summarise this and suggest a fix.",
    "It worked yesterday and nothing changed on our side.",
    "The deploy job fails on the second step, output below.",
    "Could you rewrite this so it reads from the config file instead?",
    "What does this line do?",
    "I copied this from the staging box, can you check it?",
    "Thanks, that helped. One more thing:",
    "Convert this to the format the new loader expects.",
    "The integration test is flaky, here is the fixture it uses.",
    "Why is the response empty when I send this?",
];

/// A complete request: request line, headers (with Host and Content-Length), body.
pub fn request(method: &str, host: &str, target: &str, headers: &[(&str, String)], body: &str) -> String {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out
}

/// A POST of `body` with its content type.
pub fn post(host: &str, target: &str, content_type: &str, body: &str) -> String {
    request("POST", host, target, &[("Content-Type", content_type.to_string())], body)
}

pub fn json_post(host: &str, target: &str, body: &serde_json::Value) -> String {
    post(host, target, "application/json", &serde_json::to_string(body).expect("JSON"))
}

/// An Anthropic Messages API body whose last user turn is `content`.
pub fn anthropic_body(r: &mut Rng, content: &str) -> serde_json::Value {
    json!({
        "model": r.pick(&["claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5"]),
        "max_tokens": 4096,
        "messages": [
            {"role": "user", "content": r.pick(PROSE)},
            {"role": "assistant", "content": "Sure. Paste what you have and I will look at it."},
            {"role": "user", "content": content},
        ],
    })
}

fn single_line(v: &str) -> bool {
    !v.contains('\n')
}

/// Percent-encoding as a browser or HTTP client does for a query or form value.
pub fn form_encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => (b as char).to_string(),
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn chat_json(v: &str, r: &mut Rng) -> Option<String> {
    let content = format!("{}\n\n{v}\n\n{}", r.pick(PROSE), r.pick(PROSE));
    Some(json_post("api.anthropic.com", "/v1/messages", &anthropic_body(r, &content)))
}

pub fn tool_call_json(v: &str, r: &mut Rng) -> Option<String> {
    // Tool arguments are a JSON document inside a JSON string: escaped twice.
    let arguments = serde_json::to_string(&json!({
        "path": format!("config/{}.txt", r.pick(&["upstream", "settings", "runtime"])),
        "content": format!("{v}\n"),
    }))
    .expect("JSON");
    let body = json!({
        "model": "gpt-5",
        "messages": [
            {"role": "user", "content": r.pick(PROSE)},
            {"role": "assistant", "content": null, "tool_calls": [{
                "id": format!("call_{}", r.alnum(24)),
                "type": "function",
                "function": {"name": "write_file", "arguments": arguments},
            }]},
            {"role": "tool", "tool_call_id": "call_0", "content": "ok"},
        ],
    });
    Some(json_post("api.openai.com", "/v1/chat/completions", &body))
}

fn env_paste(v: &str, r: &mut Rng) -> Option<String> {
    let line = if single_line(v) { format!("APP_UPSTREAM={v}") } else { format!("APP_BLOB=\"{v}\"") };
    let content = format!(
        "{}\n```\nAPP_ENV=production\nAPP_PORT={}\n{line}\nAPP_LOG_LEVEL=debug\n```",
        r.pick(PROSE),
        r.range(3000, 9000)
    );
    Some(json_post("api.anthropic.com", "/v1/messages", &anthropic_body(r, &content)))
}

fn yaml_paste(v: &str, r: &mut Rng) -> Option<String> {
    let entry = if single_line(v) {
        format!("      upstream: {v}")
    } else {
        let indented: Vec<String> = v.lines().map(|l| format!("        {l}")).collect();
        format!("      upstream: |\n{}", indented.join("\n"))
    };
    let content = format!(
        "{}\n```yaml\nservices:\n  web:\n    image: ghcr.io/acme/web:{}\n    settings:\n{entry}\n      replicas: 2\n```",
        r.pick(PROSE),
        r.hex(7)
    );
    let body = json!({"model": "gpt-5", "input": content, "stream": true});
    Some(json_post("api.openai.com", "/v1/responses", &body))
}

fn query(v: &str, r: &mut Rng) -> Option<String> {
    let target = format!("/v2/search?q={}&page={}&lang=en", form_encode(v), r.range(1, 9));
    Some(request("GET", "search.data-hub.net", &target, &[("Accept", "application/json".into())], ""))
}

fn header(v: &str, r: &mut Rng) -> Option<String> {
    if !single_line(v) {
        return None;
    }
    let name = *r.pick(&["X-Upstream-Ref", "X-Client-Context", "X-Forwarded-Id"]);
    Some(request("GET", "hooks.acme-systems.dev", "/v1/status", &[(name, v.to_string()), ("Accept", "*/*".into())], ""))
}

fn cookie(v: &str, _r: &mut Rng) -> Option<String> {
    if !single_line(v) || v.contains([' ', ';', ',', '"']) {
        return None;
    }
    let cookie = format!("theme=dark; sid={v}; lang=en");
    Some(request("GET", "app.acme-systems.dev", "/dashboard", &[("Cookie", cookie)], ""))
}

fn form(v: &str, r: &mut Rng) -> Option<String> {
    let body = format!("title=Weekly+notes&body={}&draft={}", form_encode(v), r.range(0, 1));
    Some(post("forms.data-hub.net", "/submit", "application/x-www-form-urlencoded", &body))
}

fn path(v: &str, _r: &mut Rng) -> Option<String> {
    if !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
        return None;
    }
    Some(request("GET", "objects.data-hub.net", &format!("/v1/objects/{v}/status"), &[], ""))
}

fn multipart(v: &str, r: &mut Rng) -> Option<String> {
    let boundary = format!("----formdata-{}", r.alnum(16));
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nassistants\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"notes.txt\"\r\n\
         Content-Type: text/plain\r\n\r\n{}\n{v}\n\r\n--{boundary}--\r\n",
        r.pick(PROSE)
    );
    Some(post("api.openai.com", "/v1/files", &format!("multipart/form-data; boundary={boundary}"), &body))
}
