//! Host names as an exfiltration channel: wildcard routes allow any subdomain, so
//! `<encoded secret>.cdn.example` would carry data out through DNS queries, SNI and Host.
//! A name that looks like encoded data is a block that redaction cannot fix, and a name
//! that may carry data is never logged as is.
//!
//! Three checks, every label whatever its length:
//! - **known secrets** in any common form (raw, hex, base32, base64/base64url, rot13,
//!   reversed), split over labels or not: the name's letters and digits are joined and
//!   lower-cased (DNS is case-insensitive, so base64's case is lost anyway) and searched
//!   for any window of a form that stands for `partial_min_len` bytes of a secret;
//! - **encoded-looking labels**: very long ones, long high-entropy ones, and names whose
//!   random-looking pieces (letters and digits interleaved, hex, long digit runs,
//!   consonant soup) add up to more than `MAX_RANDOM_CHARS`;
//! - token patterns (the engine's rules) anywhere in the name.
//!
//! The trade-off: real names carry random-looking ids too (CloudFront `d1a2b3c4e5f6g7`,
//! a 12-digit AWS account, a 16-character Azure Front Door suffix), so a name may carry up
//! to `MAX_RANDOM_CHARS` of them; a few real services with 32-character ids (Lambda
//! function URLs, R2 account endpoints) are refused and need an exact route. Unknown data
//! at fewer than `MAX_RANDOM_CHARS` per name is not caught by shape: the DNS listener's
//! per-bottle budget of new names per minute bounds that rate (`dns.new_names_per_minute`).
use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;

use super::{Engine, Location, NoneSafe, Selection, shannon};

/// Longest label a real host name in an allowed wildcard zone plausibly has; longer ones
/// are how DNS tunnels carry data.
const MAX_PLAIN_LABEL: usize = 40;
/// Shannon entropy (bits per character) above which a long label looks like encoded data.
const MAX_LABEL_ENTROPY: f64 = 4.0;
const ENTROPY_MIN_LEN: usize = 20;
/// Most random-looking characters a name may hold (summed over its labels).
pub const MAX_RANDOM_CHARS: usize = 24;

/// A label of `name` that looks like smuggled data (very long, or long and random), or
/// the whole name when its random-looking pieces add up to too much.
pub fn suspicious_label(name: &str) -> Option<&str> {
    // Entropy per piece between hyphens: `contoso-frontend-d8ajgbfyf2hkh0gh` is a real
    // (Azure Front Door) name whose random part alone is short; the pieces' random
    // characters are summed below.
    let single = name.split('.').find(|label| {
        label.len() > MAX_PLAIN_LABEL
            || label.split(['-', '_']).any(|p| p.len() >= ENTROPY_MIN_LEN && shannon(p) > MAX_LABEL_ENTROPY)
    });
    single.or_else(|| (random_chars(name) > MAX_RANDOM_CHARS).then_some(name))
}

/// How many characters of `name` look random: the pieces (labels split at `-` and `_`)
/// that interleave letters and digits, are hex with both, are long digit runs, or are
/// 8 or more characters with hardly a vowel among the letters.
pub fn random_chars(name: &str) -> usize {
    name.split(['.', '-', '_']).filter(|piece| looks_random(piece)).map(str::len).sum()
}

fn looks_random(piece: &str) -> bool {
    let b = piece.as_bytes();
    if b.len() < 6 || !b.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let letters = b.len() - digits;
    if letters == 0 {
        return b.len() >= 10;
    }
    let transitions = b.windows(2).filter(|w| w[0].is_ascii_digit() != w[1].is_ascii_digit()).count();
    if digits > 0 && transitions >= 3 {
        return true;
    }
    if digits > 0 && b.len() >= 8 && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    // Consonant soup (base32, base36 and the like): under a quarter of the letters are
    // vowels. A real word of that shape costs a name only its own length.
    let vowels = b.iter().filter(|c| b"aeiouyAEIOUY".contains(c)).count();
    b.len() >= 8 && vowels * 4 < letters
}

/// Whether `name` may carry data out: a known secret in any form across its labels, a
/// label that looks encoded, or a token anywhere in it. Such a name is refused (DNS, SNI,
/// Host, CONNECT).
pub fn carries_data(engine: &Engine, name: &str) -> bool {
    if suspicious_label(name).is_some() || engine.known_secrets().host_forms().found_in(name) {
        return true;
    }
    let mut findings = Vec::new();
    let all = Selection { token_patterns: true, known_secrets: true, entropy: false };
    engine.scan_surface(name, Location::Host, all, &NoneSafe, &mut findings);
    !findings.is_empty()
}

/// `name` as it may be logged: withheld when it may carry data.
pub fn loggable(engine: &Engine, name: &str) -> String {
    if suspicious_label(name).is_some() || engine.known_secrets().host_forms().found_in(name) {
        format!("(withheld: {} characters that may carry data)", name.len())
    } else {
        engine.scrub(name, Location::Host).into_owned()
    }
}

/// Every form of every known secret a host name could carry, as lower-case
/// letters-and-digits windows, each standing for `min_len` bytes of a secret.
pub struct HostForms {
    matcher: Option<AhoCorasick>,
}

impl std::fmt::Debug for HostForms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostForms")
    }
}

impl HostForms {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>, min_len: usize) -> HostForms {
        let mut windows: Vec<String> = Vec::new();
        for value in values {
            for (form, per_byte) in forms(value.as_bytes()) {
                let projected = project(&form);
                // A window of the form worth `min_len` bytes of the value; the whole form
                // when the value is shorter.
                let w = ((min_len as f64 * per_byte).ceil() as usize).min(projected.len());
                if w < 8 {
                    continue;
                }
                for start in 0..=projected.len() - w {
                    windows.push(projected[start..start + w].to_string());
                }
            }
        }
        windows.sort();
        windows.dedup();
        let matcher = (!windows.is_empty()).then(|| {
            AhoCorasick::builder().match_kind(MatchKind::LeftmostFirst).build(&windows).expect("literal patterns")
        });
        HostForms { matcher }
    }

    /// Whether the letters and digits of `name`, joined across labels, hold a window of
    /// any form of a known secret.
    pub fn found_in(&self, name: &str) -> bool {
        self.matcher.as_ref().is_some_and(|m| m.is_match(&project(name)))
    }
}

/// Lower-case letters and digits only: dots between labels, hyphens and base64's
/// `+/-_` are all dropped, so a form split over labels joins up again.
fn project(text: &str) -> String {
    text.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

/// The forms of `value` a name could carry, each with its characters per byte of value.
/// Block encodings are given at every alignment (data before the secret shifts it within
/// the 5- or 3-byte groups), with only their complete groups.
fn forms(value: &[u8]) -> Vec<(String, f64)> {
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    let raw = String::from_utf8_lossy(value).into_owned();
    let reversed: Vec<u8> = value.iter().rev().copied().collect();
    let mut out = vec![
        (raw.clone(), 1.0),
        (rot13(&raw), 1.0),
        (String::from_utf8_lossy(&reversed).into_owned(), 1.0),
        (hex::encode(value), 2.0),
        (hex::encode(&reversed), 2.0),
    ];
    for skip in 0..5.min(value.len()) {
        let rest = &value[skip..];
        out.push((base32(&rest[..rest.len() / 5 * 5]), 1.6));
    }
    for skip in 0..3.min(value.len()) {
        let rest = &value[skip..];
        out.push((STANDARD_NO_PAD.encode(&rest[..rest.len() / 3 * 3]), 4.0 / 3.0));
    }
    out
}

fn rot13(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' => (((c as u8 - b'a') + 13) % 26 + b'a') as char,
            'A'..='Z' => (((c as u8 - b'A') + 13) % 26 + b'A') as char,
            _ => c,
        })
        .collect()
}

/// RFC 4648 base32, lower case, no padding.
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(data.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in data {
        acc = (acc << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KnownSecrets;

    /// Ordinary names a bottle resolves: API, registry, git and CDN hosts, cloud
    /// endpoints with the random-looking ids real services use.
    const ORDINARY: &[&str] = &[
        "api.upstream.test",
        "x.cdn.upstream.test",
        "api.openai.com",
        "api.anthropic.com",
        "generativelanguage.googleapis.com",
        "registry.npmjs.org",
        "registry.yarnpkg.com",
        "pypi.org",
        "files.pythonhosted.org",
        "static.crates.io",
        "index.crates.io",
        "crates.io",
        "proxy.golang.org",
        "sum.golang.org",
        "storage.googleapis.com",
        "github.com",
        "api.github.com",
        "codeload.github.com",
        "objects.githubusercontent.com",
        "raw.githubusercontent.com",
        "pipelines.actions.githubusercontent.com",
        "productionresultssa0.blob.core.windows.net",
        "gitlab.com",
        "registry.gitlab.com",
        "bitbucket.org",
        "registry-1.docker.io",
        "auth.docker.io",
        "production.cloudflare.docker.com",
        "ghcr.io",
        "pkg-containers.githubusercontent.com",
        "us-docker.pkg.dev",
        "europe-west1-docker.pkg.dev",
        "d3bxy9euw4e147.cloudfront.net",
        "d1a2b3c4e5f6g7.cloudfront.net",
        "dnd7lpsd8vw9p.cloudfront.net",
        "us-east-1.s3.amazonaws.com",
        "my-bucket-2024.s3.us-west-2.amazonaws.com",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com",
        "ec2-54-123-45-67.compute-1.amazonaws.com",
        "a1b2c3d4e5.execute-api.eu-central-1.amazonaws.com",
        "sts.amazonaws.com",
        "bedrock-runtime.us-east-1.amazonaws.com",
        "myaccount.blob.core.windows.net",
        "contoso-frontend-d8ajgbfyf2hkh0gh.z01.azurefd.net",
        "my-app.azurewebsites.net",
        "login.microsoftonline.com",
        "management.azure.com",
        "r3---sn-ab5l6n67.googlevideo.com",
        "fonts.gstatic.com",
        "www.gstatic.com",
        "oauth2.googleapis.com",
        "e1234.a.akamaiedge.net",
        "a1234.dscb.akamai.net",
        "dualstack.n.sni.global.fastly.net",
        "cdn.jsdelivr.net",
        "cdnjs.cloudflare.com",
        "unpkg.com",
        "deb.debian.org",
        "security.ubuntu.com",
        "archive.ubuntu.com",
        "dl-cdn.alpinelinux.org",
        "mirrors.fedoraproject.org",
        "repo.maven.apache.org",
        "repo1.maven.org",
        "plugins.gradle.org",
        "services.gradle.org",
        "rubygems.org",
        "index.rubygems.org",
        "api.nuget.org",
        "hex.pm",
        "repo.hex.pm",
        "hackage.haskell.org",
        "cran.r-project.org",
        "conda.anaconda.org",
        "my-app-5f3a2b1c9-team.vercel.app",
        "deploy-preview-42--my-site.netlify.app",
        "app-name-1a2b3c4d5e6f.herokuapp.com",
        "service-abc123xyz-uc.a.run.app",
        "project-id.web.app",
        "sentry.io",
        "o123456.ingest.sentry.io",
        "api.segment.io",
        "http-intake.logs.datadoghq.com",
        "hooks.slack.com",
        "api.stripe.com",
        "xn--bcher-kva.example",
        "mirror.xtom.com.hk",
        "ftp.fau.de",
    ];

    #[test]
    fn ordinary_names_pass_and_data_labels_are_caught() {
        for ok in ORDINARY {
            assert_eq!(suspicious_label(ok), None, "{ok}: {} random characters", random_chars(ok));
        }
        let long = format!("{}.cdn.upstream.test", "a".repeat(45));
        assert!(suspicious_label(&long).is_some());
        // base32 of a secret, short enough to pass the length check.
        assert!(suspicious_label("mfrggzdfmztwq2lknnwg23tpobyxe43u.cdn.upstream.test").is_some());
        // Tunnels with short labels: hex, base32, base36 chunks of 8 to 16 characters.
        for tunnel in [
            "4a6f686e.20536d69.7468206b.6e6f7773.cdn.upstream.test",
            "0a1b2c3d4e5f6a7b.8c9d0e1f2a3b4c5d.cdn.upstream.test",
            "nbswy3dp.ebxw4zlt.mfrggzdf.mzxw6ytb.cdn.upstream.test",
            "k3j9x2m4q8.z7p1w5r6t0.h5n2c8v1b3.cdn.upstream.test",
        ] {
            assert!(suspicious_label(tunnel).is_some(), "{tunnel}: {} random characters", random_chars(tunnel));
        }
    }

    fn engine(secret: &str) -> Engine {
        Engine::new(KnownSecrets::new([("EGRESS_TOKEN_A".into(), secret.into())], 12), vec![]).unwrap()
    }

    #[test]
    fn names_carrying_data_are_never_logged() {
        let secret = "hunter2-but-longer-99";
        let engine = engine(secret);
        assert_eq!(loggable(&engine, "api.upstream.test"), "api.upstream.test");
        assert!(!loggable(&engine, &format!("{secret}.evil.test")).contains("hunter2"));
        assert_eq!(engine.scrub("/repos/x", Location::Path), "/repos/x");
        assert_eq!(engine.scrub(&format!("/repos/{secret}/x"), Location::Path), "/repos/********/x");
        assert!(loggable(&engine, "mfrggzdfmztwq2lknnwg23tpobyxe43u.evil.test").starts_with("(withheld"));
        assert!(carries_data(&engine, &format!("{secret}.cdn.upstream.test")), "a known secret, low entropy");
        assert!(!carries_data(&engine, "x.cdn.upstream.test"));
    }

    /// Splits `text` into labels of `n` characters under the wildcard zone.
    fn labels(text: &str, n: usize) -> String {
        let chunks: Vec<String> = text.as_bytes().chunks(n).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        format!("{}.cdn.upstream.test", chunks.join("."))
    }

    #[test]
    fn known_secret_forms_split_over_short_labels_are_caught() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let secret = "Sk-Live-4f9QzT7pL2mX8vB1";
        let engine = engine(secret);
        let known = engine.known_secrets().host_forms();
        let rev: String = secret.chars().rev().collect();
        let junk_then = |s: &[u8]| [b"xy".as_slice(), s].concat();
        for (what, text) in [
            ("raw", secret.to_lowercase()),
            ("hex", hex::encode(secret)),
            ("hex of a fragment", hex::encode(&secret[3..17])),
            ("base32", base32(secret.as_bytes())),
            ("base32 after junk", base32(&junk_then(secret.as_bytes()))),
            ("base64url", URL_SAFE_NO_PAD.encode(secret).to_lowercase()),
            ("base64url after junk", URL_SAFE_NO_PAD.encode(junk_then(secret.as_bytes())).to_lowercase()),
            ("rot13", rot13(secret).to_lowercase()),
            ("reversed", rev.to_lowercase()),
        ] {
            for n in [4, 6, 8, 63] {
                let name = labels(&text, n);
                assert!(known.found_in(&name), "{what} in labels of {n}: {name}");
                assert!(carries_data(&engine, &name), "{what} in labels of {n}");
                assert!(!loggable(&engine, &name).contains(&text[..8]), "{what} is never logged");
            }
        }
        for ok in ORDINARY {
            assert!(!known.found_in(ok), "{ok}");
        }
        // A short fragment (under partial_min_len bytes) is not a leak by itself.
        assert!(!known.found_in(&labels(&hex::encode(&secret[..6]), 8)));
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b"foobar"), "mzxw6ytboi");
        assert_eq!(base32(b"fooba"), "mzxw6ytb");
        assert_eq!(rot13("Hello-1"), "Uryyb-1");
    }
}
