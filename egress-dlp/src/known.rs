//! Known secrets: values the gateway knows are secret (the credentials it injects, every
//! `EGRESS_TOKEN_*` variable, variables with configured prefixes), found raw, in common
//! encodings, with separators inserted between characters, and as long fragments.
use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;

use super::{Secret, alnum, literals::LiteralSet};

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

pub struct KnownSecrets {
    names: Vec<String>,
    values: Vec<Secret>,
    /// Kept so `extended` builds its fragments the same way.
    partial_min_len: usize,
    /// Every encoded form of every value; `variant[i]` says whose and which form.
    matcher: Option<AhoCorasick>,
    variant: Vec<(usize, &'static str)>,
    /// Letters and digits only, for the separator-insertion pass.
    projections: Option<AhoCorasick>,
    projection_owner: Vec<usize>,
    /// Length of the longest encoded form: how much of a stream must be held back so no
    /// occurrence is cut in two.
    longest_form: usize,
    /// Prefilter over a text's letters and digits (see `Gate`); `None`: always search.
    gate: Option<Gate>,
    /// The forms a host name could carry, built on first use (`hostname`).
    host_forms: std::sync::OnceLock<super::hostname::HostForms>,
}

/// Every form of every value, and every separator-inserted spelling, leaves the letters
/// and digits of some piece of the value in the letters-and-digits projection of the
/// text. So one search of that projection says whether the two precise searches can
/// find anything: on a clean text (nearly every text) they are skipped. A value with too
/// few ASCII letters and digits for that (mostly symbols or non-ASCII) turns the gate off.
struct Gate {
    literals: LiteralSet,
    /// Projected bytes carried from one chunk to the next: longest pattern - 1.
    carry: usize,
}

/// Gate patterns shorter than this would fire on ordinary text.
const GATE_MIN_LEN: usize = 8;
/// Projection chunk: small enough to stay in cache.
const GATE_CHUNK: usize = 16 * 1024;

impl Gate {
    /// `forms[i]`: the whole-value forms of value `i` and its fragments.
    fn new(forms: &[(Vec<String>, Vec<String>)]) -> Option<Gate> {
        let mut patterns = Vec::new();
        for (idx, (whole, fragments)) in forms.iter().enumerate() {
            for form in whole {
                patterns.push((alphanumeric_bytes(form), idx));
            }
            // Each fragment's projection is a window of the value's projection at least
            // `shortest` long: it contains one of the value's projected windows of
            // `GATE_MIN_LEN` taken every `shortest - GATE_MIN_LEN + 1` bytes.
            let Some(shortest) = fragments.iter().map(|f| alphanumeric_bytes(f).len()).min() else { continue };
            if shortest < GATE_MIN_LEN {
                return None;
            }
            let projected = alphanumeric_bytes(whole.first()?);
            for start in (0..=projected.len() - GATE_MIN_LEN).step_by(shortest - GATE_MIN_LEN + 1) {
                patterns.push((projected[start..start + GATE_MIN_LEN].to_vec(), idx));
            }
        }
        if patterns.iter().any(|(p, _)| p.len() < GATE_MIN_LEN) {
            return None;
        }
        let carry = patterns.iter().map(|(p, _)| p.len()).max()? - 1;
        Some(Gate { literals: LiteralSet::new(patterns), carry })
    }

    /// Whether `text` may hold a known secret; false means it certainly does not.
    fn may_match(&self, text: &str) -> bool {
        let mut buf = Vec::with_capacity(text.len().min(GATE_CHUNK) + self.carry + 8);
        for chunk in text.as_bytes().chunks(GATE_CHUNK) {
            alnum::project_into(chunk, &mut buf);
            if self.literals.is_match(&buf) {
                return true;
            }
            let kept = self.carry.min(buf.len());
            buf.drain(..buf.len() - kept);
        }
        false
    }
}

impl std::fmt::Debug for KnownSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnownSecrets").field("names", &self.names).finish()
    }
}

impl Default for KnownSecrets {
    fn default() -> Self {
        KnownSecrets::new(std::iter::empty(), DEFAULT_PARTIAL_MIN_LEN)
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
        let mut gate_forms = Vec::new();
        for (name, value) in secrets {
            if value.len() < MIN_SECRET_LEN || values.iter().any(|v: &Secret| v.expose() == value) {
                continue;
            }
            let idx = values.len();
            let (mut whole, mut fragments) = (Vec::new(), Vec::new());
            for (form, text) in encodings(&value) {
                whole.push(text.clone());
                if !patterns.contains(&text) {
                    patterns.push(text);
                    variant.push((idx, form));
                }
            }
            let min = partial_min_len.max(MIN_SECRET_LEN);
            if value.len() > min {
                for start in 0..=value.len() - min {
                    let Some(fragment) = value.get(start..start + min) else { continue };
                    fragments.push(fragment.to_string());
                    if !patterns.iter().any(|p| p == fragment) {
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
            gate_forms.push((whole, fragments));
        }
        let build = |p: &[String]| {
            (!p.is_empty()).then(|| {
                AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(p).expect("literal patterns")
            })
        };
        KnownSecrets {
            partial_min_len,
            longest_form: patterns.iter().map(String::len).max().unwrap_or(0),
            matcher: build(&patterns),
            projections: build(&projections),
            names,
            values,
            variant,
            projection_owner,
            gate: Gate::new(&gate_forms),
            host_forms: std::sync::OnceLock::new(),
        }
    }

    /// Every known secret's forms as a host name could carry them, split over labels.
    pub fn host_forms(&self) -> &super::hostname::HostForms {
        self.host_forms.get_or_init(|| {
            super::hostname::HostForms::new(
                self.values.iter().map(|v| v.expose()),
                self.partial_min_len.max(MIN_SECRET_LEN),
            )
        })
    }

    /// `more` (first: a value in both keeps its name from `more`) and these secrets,
    /// with the same fragment length: a bottle's own secrets on top of the gateway's.
    pub fn extended(&self, more: impl IntoIterator<Item = (String, String)>) -> Self {
        let own = self.names.iter().cloned().zip(self.values.iter().map(|v| v.expose().to_string()));
        Self::new(more.into_iter().chain(own), self.partial_min_len)
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

    /// Values with upper-case letters found lower-cased in `text`: for header and trailer
    /// names, which the protocols fold to lower case. (variable name, value).
    pub fn find_folded(&self, text: &str) -> Vec<(String, Secret)> {
        self.names
            .iter()
            .zip(&self.values)
            .filter(|(_, v)| v.expose().bytes().any(|b| b.is_ascii_uppercase()))
            .filter(|(_, v)| text.contains(&v.expose().to_ascii_lowercase()))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    /// Every occurrence in `text`.
    pub fn find(&self, text: &str) -> Vec<KnownHit> {
        let mut hits = Vec::new();
        if self.gate.as_ref().is_some_and(|g| !g.may_match(text)) {
            return hits;
        }
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
                let (start, end) = alnum::original_span(text, found.start(), found.end());
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

/// The letters-and-digits projection of `text`.
fn alphanumeric_bytes(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    alnum::project_into(text.as_bytes(), &mut out);
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(known: &KnownSecrets, text: &str) -> Vec<(usize, usize, &'static str)> {
        known.find(text).into_iter().map(|h| (h.start, h.end, h.form)).collect()
    }

    /// The gate only skips work: with and without it, `find` gives the same hits, for
    /// every form, fragment and separated spelling, wherever a chunk boundary falls.
    #[test]
    fn the_gate_never_hides_a_hit() {
        let secrets = [
            ("EGRESS_TOKEN_A", "gate-test-secret-0123456789abcdef"),
            ("EGRESS_TOKEN_B", "s3cr3t/with+symbols=and_more!!xyz"),
            ("EGRESS_TOKEN_C", "pa55-w0rd_with.SOME~ascii-0123456789"),
        ];
        let gated = KnownSecrets::new(secrets.iter().map(|(n, v)| (n.to_string(), v.to_string())), 12);
        assert!(gated.gate.is_some(), "these values have a gate");
        let mut ungated = KnownSecrets::new(secrets.iter().map(|(n, v)| (n.to_string(), v.to_string())), 12);
        ungated.gate = None;
        let mut needles: Vec<String> = Vec::new();
        for (_, value) in secrets {
            needles.extend(encodings(value).into_iter().map(|(_, text)| text));
            // Every fragment of the shortest length found: the tightest case for the gate.
            needles.extend((0..=value.len() - 12).filter_map(|i| value.get(i..i + 12)).map(str::to_string));
            needles.push(value.chars().map(|c| format!("{c}-")).collect());
        }
        let filler = "prose, code and JSON {\"k\": [1, 2]} ".repeat(GATE_CHUNK / 8);
        for needle in &needles {
            for offset in [0, 1, GATE_CHUNK - 20, GATE_CHUNK - 3, GATE_CHUNK, GATE_CHUNK + 5, 3 * GATE_CHUNK - 7] {
                let mut at = offset.min(filler.len());
                while !filler.is_char_boundary(at) {
                    at -= 1;
                }
                let text = format!("{}{needle}{}", &filler[..at], &filler[at..]);
                let expected = spans(&ungated, &text);
                assert!(!expected.is_empty(), "{needle:?} is found at all");
                assert_eq!(spans(&gated, &text), expected, "{needle:?} at {offset}");
            }
        }
        assert!(gated.find(&filler).is_empty());
    }

    #[test]
    fn extended_adds_values_and_keeps_the_fragment_length() {
        let base = KnownSecrets::new([("EGRESS_TOKEN_G".to_string(), "gateway-wide-value-000".to_string())], 16);
        let bottle = base.extended([("EGRESS_TOKEN_0".to_string(), "bottle-only-value-111".to_string())]);
        assert_eq!((base.len(), bottle.len()), (1, 2));
        assert_eq!(bottle.find("x gateway-wide-value-000 y").len(), 1);
        assert_eq!(bottle.find("x bottle-only-value-111 y")[0].name, "EGRESS_TOKEN_0");
        assert!(base.find("x bottle-only-value-111 y").is_empty(), "the base is unchanged");
        // A 16-byte fragment is a leak, a 12-byte one is not (the base's length, not the default).
        assert_eq!(bottle.find("bottle-only-valu").len(), 1);
        assert!(bottle.find("bottle-only-").is_empty());
    }

    #[test]
    fn values_of_few_ascii_letters_have_no_gate_and_are_still_found() {
        for value in ["!!--__a1--__!!%%", "ünïcödé-sécret-välue"] {
            let known = KnownSecrets::new([("EGRESS_TOKEN_S".to_string(), value.to_string())], 12);
            assert!(known.gate.is_none(), "{value}");
            assert_eq!(known.find(&format!("x {value} y")).len(), 1, "{value}");
        }
    }
}
