//! User rules in gitleaks' TOML format (`[[rules]]` with `id`, `regex`, `secretGroup`,
//! `keywords`, `entropy`, `allowlists`/`allowlist`; a top-level `[allowlist]` or
//! `[[allowlists]]` applies to every rule of the file). Path- and commit-based fields
//! have no meaning for traffic: a rule with only `path` is an error, allowlist `paths`
//! and `commits` are ignored. Pure: text in, compiled rules or an error naming the rule.
use regex::Regex;
use serde::Deserialize;

/// A user rule, compiled.
#[derive(Debug)]
pub struct UserRule {
    pub id: String,
    pub regex: Regex,
    pub keywords: Vec<String>,
    /// The capture group holding the secret; default: group 1 if any, else the match.
    pub secret_group: Option<usize>,
    /// Smallest Shannon entropy (bits/char) of the secret for it to count.
    pub min_entropy: Option<f64>,
    pub allowlists: Vec<Allowlist>,
}

/// Matches that are not secrets.
#[derive(Debug)]
pub struct Allowlist {
    pub regexes: Vec<Regex>,
    pub target: Target,
    pub stopwords: Vec<String>,
    /// `condition = "AND"`: every listed criterion must hold (default: any).
    pub all: bool,
}

/// What an allowlist regex is matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Secret,
    Match,
    Line,
}

impl Allowlist {
    /// Whether this allowlist lets `secret` (within `whole`, on `line`) through.
    pub fn allows(&self, secret: &str, whole: &str, line: &str) -> bool {
        let subject = match self.target {
            Target::Secret => secret,
            Target::Match => whole,
            Target::Line => line,
        };
        let lower = secret.to_ascii_lowercase();
        let mut checks = Vec::with_capacity(2);
        if !self.regexes.is_empty() {
            checks.push(self.regexes.iter().any(|r| r.is_match(subject)));
        }
        if !self.stopwords.is_empty() {
            checks.push(self.stopwords.iter().any(|w| lower.contains(&w.to_ascii_lowercase())));
        }
        if self.all { !checks.is_empty() && checks.iter().all(|c| *c) } else { checks.iter().any(|c| *c) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{source_name}: not a gitleaks rules file: {reason}")]
    Syntax { source_name: String, reason: String },
    #[error("{source_name}: rule {id}: {reason}")]
    Rule { source_name: String, id: String, reason: String },
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    rules: Vec<RawRule>,
    allowlist: Option<RawAllowlist>,
    #[serde(default)]
    allowlists: Vec<RawAllowlist>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRule {
    id: String,
    regex: Option<String>,
    #[serde(default)]
    keywords: Vec<String>,
    secret_group: Option<usize>,
    entropy: Option<f64>,
    allowlist: Option<RawAllowlist>,
    #[serde(default)]
    allowlists: Vec<RawAllowlist>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAllowlist {
    #[serde(default)]
    regexes: Vec<String>,
    regex_target: Option<String>,
    #[serde(default)]
    stopwords: Vec<String>,
    condition: Option<String>,
}

/// Parses and compiles a rules file; `source_name` (its path) prefixes every error.
pub fn parse(source_name: &str, text: &str) -> Result<Vec<UserRule>, RulesError> {
    let file: File = toml::from_str(text)
        .map_err(|e| RulesError::Syntax { source_name: source_name.into(), reason: e.message().to_string() })?;
    let global: Vec<RawAllowlist> = file.allowlist.into_iter().chain(file.allowlists).collect();
    let mut out = Vec::new();
    for raw in file.rules {
        let err = |reason: String| RulesError::Rule { source_name: source_name.into(), id: raw.id.clone(), reason };
        if out.iter().any(|r: &UserRule| r.id == raw.id) {
            return Err(err("duplicate rule id".into()));
        }
        let pattern =
            raw.regex.as_deref().ok_or_else(|| err("no regex (path-only rules do not apply to traffic)".into()))?;
        let regex = Regex::new(&ascii_word_boundaries(pattern)).map_err(|e| err(format!("invalid regex: {e}")))?;
        if let Some(g) = raw.secret_group
            && g >= regex.captures_len()
        {
            return Err(err(format!("secretGroup {g}, but the regex has {} groups", regex.captures_len() - 1)));
        }
        if raw.entropy.is_some_and(|e| !(0.0..=8.0).contains(&e)) {
            return Err(err("entropy must be between 0 and 8 bits per character".into()));
        }
        let allowlists = raw
            .allowlist
            .iter()
            .chain(&raw.allowlists)
            .chain(&global)
            .map(|a| compile_allowlist(a).map_err(&err))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(UserRule {
            id: raw.id.clone(),
            regex,
            keywords: raw.keywords.iter().map(|k| k.to_ascii_lowercase()).collect(),
            secret_group: raw.secret_group,
            min_entropy: raw.entropy,
            allowlists,
        });
    }
    Ok(out)
}

/// gitleaks runs Go's RE2, where `\b` is an ASCII word boundary; so it is here too. (A
/// Unicode `\b` also makes the regex crate's fast engine give up on non-ASCII text:
/// one pattern measured ten times slower on such a body.)
fn ascii_word_boundaries(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars();
    let mut class_depth = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(b @ ('b' | 'B')) if class_depth == 0 => out.push_str(&format!("(?-u:\\{b})")),
                Some(next) => {
                    out.push('\\');
                    out.push(next);
                }
                None => out.push('\\'),
            },
            '[' => {
                class_depth += 1;
                out.push(c);
            }
            ']' if class_depth > 0 => {
                class_depth -= 1;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

fn compile_allowlist(raw: &RawAllowlist) -> Result<Allowlist, String> {
    let regexes = raw
        .regexes
        .iter()
        .map(|r| Regex::new(r).map_err(|e| format!("invalid allowlist regex {r:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let target = match raw.regex_target.as_deref() {
        None | Some("secret") => Target::Secret,
        Some("match") => Target::Match,
        Some("line") => Target::Line,
        Some(other) => return Err(format!("unknown allowlist regexTarget {other:?} (secret, match or line)")),
    };
    let all = match raw.condition.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("OR") => false,
        Some("AND") => true,
        Some(other) => return Err(format!("unknown allowlist condition {other:?} (OR or AND)")),
    };
    Ok(Allowlist { regexes, target, stopwords: raw.stopwords.clone(), all })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[rules]]
id = "acme-key"
description = "ACME key"
regex = '''acme[_-]key\s*[:=]\s*"?([a-z0-9]{20})'''
secretGroup = 1
keywords = ["ACME"]
entropy = 3.0
  [[rules.allowlists]]
  regexes = ['''^0+$''']
  stopwords = ["example"]

[allowlist]
regexTarget = "line"
regexes = ['''# test fixture''']
"#;

    #[test]
    fn parses_every_supported_field() {
        let rules = parse("rules.toml", FILE).unwrap();
        let r = &rules[0];
        assert_eq!((r.id.as_str(), r.secret_group, r.min_entropy), ("acme-key", Some(1), Some(3.0)));
        assert_eq!(r.keywords, ["acme"]);
        assert_eq!(r.allowlists.len(), 2, "the rule's own and the file's");
        assert!(r.allowlists[0].allows("00000000000000000000", "", ""));
        assert!(r.allowlists[0].allows("abcexampledefghij123", "", ""));
        assert!(!r.allowlists[0].allows("k3j4h5g6f7d8s9a0q1w2", "", ""));
        assert!(r.allowlists[1].allows("k3j4h5g6f7d8s9a0q1w2", "", "acme_key = x # test fixture"));
    }

    #[test]
    fn word_boundaries_are_ascii_as_in_gitleaks() {
        assert_eq!(ascii_word_boundaries(r"\bkey_[a-z]{4}\b"), r"(?-u:\b)key_[a-z]{4}(?-u:\b)");
        assert_eq!(ascii_word_boundaries(r"a\\b[\b]\Bc"), r"a\\b[\b](?-u:\B)c", "escaped backslash, class");
        let rules = parse("r.toml", "[[rules]]\nid = \"k\"\nregex = '''\\bkey_[a-z]{4}\\b'''\n").unwrap();
        assert!(rules[0].regex.is_match("é key_abcd é"));
        assert!(!rules[0].regex.is_match("xkey_abcd"));
    }

    #[test]
    fn errors_name_the_rule_and_why() {
        let cases = [
            ("[[rules]]\nid = \"a\"\npath = '''x'''\n", "rule a: no regex"),
            ("[[rules]]\nid = \"b\"\nregex = '''(unclosed'''\n", "rule b: invalid regex"),
            (
                "[[rules]]\nid = \"c\"\nregex = '''x(y)'''\nsecretGroup = 2\n",
                "rule c: secretGroup 2, but the regex has 1 groups",
            ),
            (
                "[[rules]]\nid = \"d\"\nregex = 'x'\n[[rules.allowlists]]\nregexTarget = \"file\"\n",
                "rule d: unknown allowlist regexTarget",
            ),
            ("[[rules]]\nid = \"e\"\nregex = 'x'\n[[rules]]\nid = \"e\"\nregex = 'y'\n", "rule e: duplicate rule id"),
            ("rules = 3", "not a gitleaks rules file"),
        ];
        for (text, want) in cases {
            let e = parse("f.toml", text).unwrap_err().to_string();
            assert!(e.starts_with("f.toml: ") && e.contains(want), "{e:?} should contain {want:?}");
        }
    }
}
