//! Known secrets: values the gateway knows are secret (the credentials it injects, every
//! `EGRESS_TOKEN_*` variable, variables with configured prefixes), found raw, in common
//! encodings, with separators inserted between characters, and as long fragments.
use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;

use super::Secret;

/// Shortest value treated as a secret (shorter ones would match everywhere).
const MIN_SECRET_LEN: usize = 8;
/// Default fragment length for partial matches.
pub const DEFAULT_PARTIAL_MIN_LEN: usize = 12;

/// One place a known secret was found.
pub struct KnownHit {
    pub name: String,
    pub secret: Secret,
    pub form: &'static str,
    pub start: usize,
    pub end: usize,
    /// False when found only by projection (separators inserted): evasion.
    pub redactable: bool,
}

#[derive(Default)]
pub struct KnownSecrets {
    names: Vec<String>,
    values: Vec<Secret>,
    /// Every encoded form of every value; `variant[i]` says whose and which form.
    matcher: Option<AhoCorasick>,
    variant: Vec<(usize, &'static str)>,
    /// Letters and digits only, for the separator-insertion pass.
    projections: Option<AhoCorasick>,
    projection_owner: Vec<usize>,
    /// Length of the longest encoded form: how much of a stream must be held back so no
    /// occurrence is cut in two.
    longest_form: usize,
}

impl std::fmt::Debug for KnownSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownSecrets").field("names", &self.names).finish()
    }
}

impl KnownSecrets {
    /// From an environment (name, value): every `EGRESS_TOKEN_*` variable, and every one
    /// whose name starts with one of `prefixes`.
    pub fn from_env(
        env: impl IntoIterator<Item = (String, String)>,
        prefixes: &[String],
        partial_min_len: usize,
    ) -> Self {
        let selected = env.into_iter().filter(|(name, _)| {
            name.starts_with("EGRESS_TOKEN_") || prefixes.iter().any(|p| !p.is_empty() && name.starts_with(p.as_str()))
        });
        Self::new(selected, partial_min_len)
    }

    pub fn new(secrets: impl IntoIterator<Item = (String, String)>, partial_min_len: usize) -> Self {
        let mut names = Vec::new();
        let mut values = Vec::new();
        let mut patterns: Vec<String> = Vec::new();
        let mut variant = Vec::new();
        let mut projections = Vec::new();
        let mut projection_owner = Vec::new();
        for (name, value) in secrets {
            if value.len() < MIN_SECRET_LEN || values.iter().any(|v: &Secret| v.expose() == value) {
                continue;
            }
            let idx = values.len();
            for (form, text) in encodings(&value) {
                if !patterns.contains(&text) {
                    patterns.push(text);
                    variant.push((idx, form));
                }
            }
            let min = partial_min_len.max(MIN_SECRET_LEN);
            if value.len() > min {
                for start in 0..=value.len() - min {
                    if let Some(fragment) = value.get(start..start + min)
                        && !patterns.iter().any(|p| p == fragment)
                    {
                        patterns.push(fragment.to_string());
                        variant.push((idx, "fragment"));
                    }
                }
            }
            let projected: String = value.chars().filter(char::is_ascii_alphanumeric).collect();
            if projected.len() >= min {
                projections.push(projected);
                projection_owner.push(idx);
            }
            names.push(name);
            values.push(Secret::new(&value));
        }
        let build = |p: &[String]| {
            (!p.is_empty()).then(|| {
                AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(p).expect("literal patterns")
            })
        };
        KnownSecrets {
            longest_form: patterns.iter().map(String::len).max().unwrap_or(0),
            matcher: build(&patterns),
            projections: build(&projections),
            names,
            values,
            variant,
            projection_owner,
        }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    pub fn longest_form(&self) -> usize {
        self.longest_form
    }

    /// Every occurrence in `text`.
    pub fn find(&self, text: &str) -> Vec<KnownHit> {
        let mut hits = Vec::new();
        if let Some(m) = &self.matcher {
            for found in m.find_iter(text) {
                let (idx, form) = self.variant[found.pattern().as_usize()];
                hits.push(KnownHit {
                    name: self.names[idx].clone(),
                    secret: self.values[idx].clone(),
                    form,
                    start: found.start(),
                    end: found.end(),
                    redactable: true,
                });
            }
        }
        if let Some(p) = &self.projections {
            // Letters and digits of the text; hits are rare, so positions in the
            // original text are recovered only for them.
            let projected = alphanumeric_bytes(text);
            for found in p.find_iter(&projected) {
                let (start, end) = original_span(text, found.start(), found.end());
                if hits.iter().any(|h| h.start < end && start < h.end) {
                    continue;
                }
                let idx = self.projection_owner[found.pattern().as_usize()];
                hits.push(KnownHit {
                    name: self.names[idx].clone(),
                    secret: self.values[idx].clone(),
                    form: "with separators inserted",
                    start,
                    end,
                    redactable: false,
                });
            }
        }
        hits
    }
}

/// The ASCII letters and digits of `text` (each is one byte), copied without a branch
/// per byte: this runs over every request, and a filtering iterator is several times
/// slower.
fn alphanumeric_bytes(text: &str) -> Vec<u8> {
    let mut out = vec![0u8; text.len() + 1];
    let mut n = 0;
    for &b in text.as_bytes() {
        out[n] = b;
        n += usize::from(b.is_ascii_alphanumeric());
    }
    out.truncate(n);
    out
}

/// Byte span in `text` of the `start..end` range of its letters-and-digits projection.
fn original_span(text: &str, start: usize, end: usize) -> (usize, usize) {
    let mut n = 0;
    let (mut first, mut last) = (0, text.len());
    for (i, c) in text.char_indices() {
        if c.is_ascii_alphanumeric() {
            if n == start {
                first = i;
            }
            if n == end - 1 {
                last = i + 1;
                break;
            }
            n += 1;
        }
    }
    (first, last)
}

/// The value and its common encodings, labelled.
fn encodings(value: &str) -> Vec<(&'static str, String)> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let bytes = value.as_bytes();
    let mut out = vec![
        ("raw", value.to_string()),
        ("base64", STANDARD.encode(bytes)),
        ("base64", STANDARD_NO_PAD.encode(bytes)),
        ("base64url", URL_SAFE.encode(bytes)),
        ("base64url", URL_SAFE_NO_PAD.encode(bytes)),
        ("hex", hex::encode(bytes)),
        ("hex", hex::encode_upper(bytes)),
    ];
    let percent_all: String = bytes.iter().map(|b| format!("%{b:02X}")).collect();
    let percent_lower: String = bytes.iter().map(|b| format!("%{b:02x}")).collect();
    let percent_reserved: String = bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    out.push(("percent-encoded", percent_all));
    out.push(("percent-encoded", percent_lower));
    out.push(("percent-encoded", percent_reserved));
    let json = serde_json::to_string(value).unwrap_or_default();
    out.push(("JSON-escaped", json.trim_matches('"').replace('/', "\\/")));
    out.push(("JSON-escaped", json.trim_matches('"').to_string()));
    out.retain(|(form, v)| *form == "raw" || v != value);
    out
}
