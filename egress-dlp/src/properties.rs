//! Properties the scanner and the redactor keep for any input, shared by the cargo-fuzz
//! targets (`fuzz/`) and a deterministic smoke test that runs them in plain `cargo test`:
//! scanning never panics, and redacting what a scan found leaves none of it behind.
use std::{collections::HashSet, sync::LazyLock};

use super::{Engine, KnownSecrets, Location, Request, Selection, decode, redact_text, scan_inbound};

/// The known secret planted by `redaction_removes_every_match`.
pub const KNOWN: &str = "fuzz-Known-Secret/value+0123456789";

static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    let known = KnownSecrets::new([("EGRESS_TOKEN_FUZZ".to_string(), KNOWN.to_string())], 12);
    Engine::new(known, Vec::new()).expect("built-in rules compile")
});

const ENCODINGS: &[&str] = &["", "gzip", "deflate", "br", "zstd", "gzip, br", "identity", "x-unknown"];

/// Runs every outbound detector, the body decoder and the inbound scanner over arbitrary
/// parts of a request. Panics (the property) only if one of them does, or if a finding's
/// span does not lie on the surface it names.
pub fn scan_never_panics(host: &str, path: &str, query: &str, headers: &[(String, String)], body: &[u8], encoding: u8) {
    let sel = Selection { token_patterns: true, known_secrets: true, entropy: true };
    let decoded = decode::decode_body(ENCODINGS[encoding as usize % ENCODINGS.len()], body);
    let body = decoded.as_deref().unwrap_or(body);
    let findings = ENGINE.scan_request(&Request { host, path, query, headers, body }, sel, &HashSet::new());
    let body_text = String::from_utf8_lossy(body);
    for f in findings.iter().filter(|f| f.redactable) {
        // A header name may repeat; the span lies in one of the values under that name.
        let surfaces: Vec<&str> = match &f.location {
            Location::Host => vec![host],
            Location::Path => vec![path],
            Location::Query => vec![query],
            Location::Header(name) => headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect(),
            Location::Body => vec![&body_text],
            // Not a request surface: such a finding fails the assertion below.
            Location::WebSocket
            | Location::Method
            | Location::HeaderName
            | Location::Trailer(_)
            | Location::TrailerName
            | Location::WebSocketControl => vec![],
        };
        assert!(
            surfaces.iter().any(|s| s.get(f.span.0..f.span.1).is_some()),
            "redactable finding {} has span {:?} outside its {} surface",
            f.rule_id,
            f.span,
            f.location
        );
    }
    let _ = scan_inbound(&body_text);
}

/// A token-shaped value built from arbitrary bytes: a GitHub token's shape.
pub fn token_from(seed: &[u8]) -> String {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut token = String::from("ghp_");
    for i in 0..36 {
        let b = seed.get(i).copied().unwrap_or(i as u8 * 7 + 3);
        token.push(ALNUM[b as usize % ALNUM.len()] as char);
    }
    token
}

/// The known secret as an agent might send it: raw, base64, hex, percent- or
/// JSON-escaped.
fn planted_known(form: u8) -> String {
    use base64::Engine as _;
    match form % 5 {
        0 => KNOWN.to_string(),
        1 => base64::engine::general_purpose::STANDARD.encode(KNOWN),
        2 => hex::encode(KNOWN),
        3 => KNOWN.bytes().map(|b| format!("%{b:02X}")).collect(),
        _ => KNOWN.replace('/', "\\/"),
    }
}

/// Plants the known secret (in one of its encodings) and a token-shaped value in
/// arbitrary text, scans it as a body, redacts the way the proxy does (the text at each
/// finding's span) and checks that the output holds no matched value, and neither the
/// planted secret nor the token when they were found. When a finding cannot be redacted
/// the proxy refuses the request, so there is nothing to check.
pub fn redaction_removes_every_match(
    prefix: &str,
    middle: &str,
    suffix: &str,
    token_seed: &[u8],
    form: u8,
) -> Result<(), String> {
    let token = token_from(token_seed);
    let known = planted_known(form);
    let text = format!("{prefix}{known}{middle}{token}{suffix}");
    let mut findings = Vec::new();
    ENGINE.scan_surface(&text, Location::Body, Selection::from_names(None), &HashSet::new(), &mut findings);
    if findings.iter().any(|f| !f.redactable) {
        return Ok(());
    }
    let values: Vec<&str> = findings.iter().filter_map(|f| text.get(f.span.0..f.span.1)).collect();
    if values.len() != findings.len() {
        return Err("a finding's span is outside the text".into());
    }
    let out = redact_text(&text, &values);
    if let Some(v) = values.iter().find(|v| out.contains(**v)) {
        return Err(format!("a matched value ({} chars) survives redaction", v.len()));
    }
    let found_raw = |needle: &str| findings.iter().any(|f| f.matched.as_ref().is_some_and(|m| m.expose() == needle));
    if found_raw(&token) && out.contains(&token) {
        return Err("the planted token survives redaction".into());
    }
    if form.is_multiple_of(5) && out.contains(KNOWN) {
        return Err("the planted known secret survives redaction".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: a fixed stream, so the smoke test is the same on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        /// Text biased towards what trips scanners: token prefixes, escapes, percent
        /// signs, invisible and fullwidth characters, separators.
        fn text(&mut self, max: usize) -> String {
            const PIECES: &[&str] = &[
                "a",
                "Z",
                "0",
                "9",
                "_",
                "-",
                ".",
                "/",
                "+",
                "=",
                ":",
                "@",
                "%",
                "%2",
                "%0A",
                "\\",
                "\\n",
                "\\u00",
                "\\u0067",
                "\\ud83d",
                "\"",
                " ",
                "\n",
                "\r\n",
                "ghp_",
                "sk-ant-",
                "AKIA",
                "eyJ",
                "xoxb-",
                "Basic ",
                "Bearer ",
                "://",
                "postgres://u:",
                "-----BEGIN PRIVATE KEY-----",
                "-----END PRIVATE KEY-----",
                "\u{200B}",
                "\u{202E}",
                "\u{FEFF}",
                "\u{E0041}",
                "ｇｈｐ＿",
                "é",
                "😀",
                "fuzz-Known",
                "Secret/value",
                "0123456789",
                "ZnV6ei1",
                "66757a7a",
            ];
            let n = self.below(max + 1);
            (0..n).map(|_| PIECES[self.below(PIECES.len())]).collect()
        }

        fn bytes(&mut self, max: usize) -> Vec<u8> {
            let n = self.below(max + 1);
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn fuzz_smoke_scan_never_panics() {
        let mut r = Rng(0x5EED_0001);
        for _ in 0..2_000 {
            let headers = vec![(r.text(3), r.text(12)), ("authorization".to_string(), r.text(20))];
            let body = if r.below(4) == 0 { r.bytes(200) } else { r.text(60).into_bytes() };
            let encoding = r.next() as u8;
            scan_never_panics(&r.text(8), &r.text(16), &r.text(16), &headers, &body, encoding);
        }
    }

    #[test]
    fn fuzz_smoke_redaction_removes_every_match() {
        let mut r = Rng(0x5EED_0002);
        for i in 0..3_000 {
            let (prefix, middle, suffix) = (r.text(12), r.text(12), r.text(12));
            let seed = r.bytes(36);
            let form = r.next() as u8;
            if let Err(e) = redaction_removes_every_match(&prefix, &middle, &suffix, &seed, form) {
                panic!("case {i}: {e}");
            }
        }
    }

    /// Fuzz crasher (scan_request): a finding in the second of two headers with the same
    /// name was checked against the first one's value.
    #[test]
    fn repeated_header_names_keep_spans_on_their_value() {
        let headers = vec![(String::new(), String::new()), (String::new(), format!("x}}SK{}", "0".repeat(32)))];
        scan_never_panics("h", "", "", &headers, b"", 0);
    }

    #[test]
    fn planted_values_are_found_and_removed_in_plain_text() {
        for form in 0..5 {
            let seed: Vec<u8> = (0..36).collect();
            redaction_removes_every_match("say ", " and ", " end", &seed, form).unwrap();
        }
    }
}
