//! Extracts the independent corpus (`testdata/dlp-independent/`) from the rule files of
//! other scanners: each rule's published `examples` (positives) and `negative_examples`.
//!
//! Run with the sources' git directories (`cargo xtask dlp-independent --noseyparker DIR
//! --kingfisher DIR`); the samples are copied verbatim. For each positive the needle (what
//! a detector must report) is what the source's own pattern captures: the last group that
//! took part in each match (the secret of a user/password or id/secret pair), or the whole
//! match. Each source rule is also put in scope or out of it, mechanically, from its
//! pattern and name (see `scope`), before any of our results are looked at.
use std::{fmt::Write as _, path::Path, process::Command};

use regex_syntax::hir::{Class, Hir, HirKind};
use serde::Deserialize;

/// One rule source: where its YAML rules live in its repository.
pub struct Source {
    /// Short name, also the directory under `samples/`.
    pub id: &'static str,
    pub env: &'static str,
    pub rules_dir: &'static str,
}

pub const SOURCES: &[Source] = &[
    Source {
        id: "noseyparker",
        env: "DLP_INDEPENDENT_NOSEYPARKER",
        rules_dir: "crates/noseyparker/data/default/builtin/rules",
    },
    Source { id: "kingfisher", env: "DLP_INDEPENDENT_KINGFISHER", rules_dir: "data/rules" },
];

#[derive(Deserialize)]
struct RuleFile {
    #[serde(default)]
    rules: Vec<SourceRule>,
}

#[derive(Deserialize)]
struct SourceRule {
    name: String,
    id: String,
    pattern: String,
    #[serde(default)]
    examples: Vec<String>,
    #[serde(default)]
    negative_examples: Vec<String>,
}

/// One extracted sample, as a manifest line describes it.
pub struct Extracted {
    pub path: String,
    pub source: String,
    pub rule_id: String,
    pub family: String,
    pub scope: String,
    pub positive: bool,
    /// Our rule for the same format, or `-`.
    pub format: String,
    pub needles: Vec<String>,
    pub rule_name: String,
    pub text: String,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().expect("running git");
    assert!(out.status.success(), "git {args:?} in {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 from git")
}

/// A source rule as compiled: id, scope, pattern.
pub type Compiled = (String, String, regex::Regex);

/// Every sample of `source`, read from the commit `HEAD` of the repository at `dir`
/// (a work tree or a bare git directory). Returns the samples, the source's compiled
/// rules and the commit.
pub fn extract(source: &Source, dir: &Path) -> (Vec<Extracted>, Vec<Compiled>, String) {
    let commit = git(dir, &["rev-parse", "HEAD"]).trim().to_string();
    let mut out = Vec::new();
    let mut compiled = Vec::new();
    let comments = regex::Regex::new(r"\(\?#[^)]*\)").unwrap();
    let mut ids = std::collections::HashSet::new();
    let listing = git(dir, &["ls-tree", "-r", "--name-only", "HEAD", "--", source.rules_dir]);
    for file in listing.lines().filter(|f| f.ends_with(".yml") || f.ends_with(".yaml")) {
        let text = git(dir, &["show", &format!("HEAD:{file}")]);
        let parsed: RuleFile = serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let stem = Path::new(file).file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        for rule in parsed.rules {
            let family = family(stem);
            // Both sources write PCRE comments, `(?# ... )`, which they strip before
            // compiling with the regex crate; so do we.
            let source_pattern = comments.replace_all(&rule.pattern, "");
            let (scope, pattern) = match regex::RegexBuilder::new(&source_pattern).size_limit(1 << 28).build() {
                Ok(re) => (scope(&rule.name, &source_pattern), Some(re)),
                Err(_) => ("unparsed".to_string(), None),
            };
            if let Some(re) = &pattern {
                compiled.push((rule.id.clone(), scope.clone(), re.clone()));
            }
            // A few rule ids appear in two files; the file name tells their samples apart.
            let mut key = rule.id.clone();
            if !ids.insert(key.clone()) {
                key = format!("{}.{stem}", rule.id);
            }
            let kinds = [(true, &rule.examples), (false, &rule.negative_examples)];
            for (positive, examples) in kinds {
                for (n, example) in examples.iter().enumerate() {
                    let kind = if positive { "pos" } else { "neg" };
                    let needles = match (&pattern, positive) {
                        (Some(re), true) => needles(re, example),
                        _ => Vec::new(),
                    };
                    out.push(Extracted {
                        path: format!("samples/{}/{key}.{kind}{}.txt", source.id, n + 1),
                        source: source.id.into(),
                        rule_id: rule.id.clone(),
                        family: family.into(),
                        scope: scope.clone(),
                        positive,
                        format: our_format(&rule.id).into(),
                        needles,
                        rule_name: rule.name.clone(),
                        text: example.clone(),
                    });
                }
            }
        }
    }
    (out, compiled, commit)
}

/// A negative example is negative for its own rule only; some hold another format's
/// secret (a Slack user token among the bot-token rule's negatives). For each negative,
/// the needles become what any other in-scope rule of either source captures in it, so
/// the report can tell these apart from benign text.
pub fn mark_other_secrets(samples: &mut [Extracted], rules: &[Compiled]) {
    for s in samples.iter_mut().filter(|s| !s.positive) {
        let mut found = Vec::new();
        for (id, scope, re) in rules {
            if id != &s.rule_id && scope == "in" {
                found.extend(needles(re, &s.text).into_iter().map(|n| format!("{id}: {n}")));
            }
        }
        found.sort();
        found.dedup();
        s.needles = found;
    }
}

/// What the source's pattern captures in `example`: per match, the last group that took
/// part (or the whole match), deduplicated. Where the match holds a URL with a password
/// (`scheme://user:password@host`, whose last group is often the host) or the captured
/// value is a connection string with a `Password=` field, the needle is the password:
/// that is the secret, and what a detector must report.
fn needles(re: &regex::Regex, example: &str) -> Vec<String> {
    static URL_PASSWORD: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"://[^:@/\s]*:([^@\s/]+)@").unwrap());
    static FIELD_PASSWORD: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"(?i)(?:^|;)\s*(?:password|pwd)\s*=\s*([^;]+)").unwrap());
    let mut out: Vec<String> = Vec::new();
    for caps in re.captures_iter(example) {
        let whole = caps.get(0).map_or("", |m| m.as_str());
        let last = (1..caps.len()).rev().find_map(|i| caps.get(i)).or_else(|| caps.get(0)).map_or("", |m| m.as_str());
        let needle = if let Some(pw) = URL_PASSWORD.captures(whole) {
            pw.get(1).unwrap().as_str()
        } else if let Some(pw) = FIELD_PASSWORD.captures(last) {
            pw.get(1).unwrap().as_str().trim()
        } else {
            last
        };
        if !needle.is_empty() && !out.iter().any(|n| n == needle) {
            out.push(needle.to_string());
        }
    }
    out
}

/// `in` for a format a traffic scanner can find on its own; otherwise why not.
///
/// Decided from the source rule alone, in this order:
/// - `not-credential` when the name says it is an identifier, a public value or a hash
///   (client ids, bucket names, ARNs, domains, account ids, public keys, password hashes);
/// - `in` when the name says the secret sits in a structure (a connection string or URI,
///   a private key, HTTP Basic credentials);
/// - `in` when the captured secret holds a literal run of 3 or more characters (`ghp_`,
///   `xoxb-`, `.atlasv1.`, `AKIA`), or the pattern needs no literal outside the secret
///   (the secret's own shape is enough for the source);
/// - otherwise `generic` when the name is about passwords or generic secrets, and
///   `context` when the secret is random characters the source finds only through a
///   nearby word (a provider name, a variable name).
pub fn scope(name: &str, pattern: &str) -> String {
    let lower = format!(" {} ", name.to_ascii_lowercase().replace(|c: char| !c.is_ascii_alphanumeric(), " "));
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(&format!(" {w} ")));
    let identifier = has(&[
        "client id",
        "bucket",
        "resource name",
        "domain",
        "account id",
        "recipient",
        "public key",
        "public access token",
        "publishable",
        "password hash",
        "organization id",
        "application id",
        "app id",
        "project id",
    ]);
    if identifier || has(&["username"]) && !has(&["password", "secret"]) {
        return "not-credential".into();
    }
    if has(&["connection string", "connection uri", "private key", "basic auth", "basic authentication"]) {
        return "in".into();
    }
    let Ok(hir) = regex_syntax::ParserBuilder::new().build().parse(pattern) else { return "unparsed".into() };
    let secret = last_capture(&hir).unwrap_or(&hir);
    let outside = literal_run_outside(&hir, secret);
    if literal_run(secret) >= 3 || outside == 0 {
        return "in".into();
    }
    if has(&["generic", "password", "credentials", "netrc", "bearer"]) { "generic".into() } else { "context".into() }
}

/// The capture group with the highest index (the one the needle comes from).
fn last_capture(h: &Hir) -> Option<&Hir> {
    fn walk<'h>(h: &'h Hir, best: &mut Option<(u32, &'h Hir)>) {
        match h.kind() {
            HirKind::Capture(c) => {
                if best.is_none_or(|(i, _)| c.index > i) {
                    *best = Some((c.index, h));
                }
                walk(&c.sub, best);
            }
            HirKind::Repetition(r) => walk(&r.sub, best),
            HirKind::Concat(hs) | HirKind::Alternation(hs) => hs.iter().for_each(|h| walk(h, best)),
            _ => {}
        }
    }
    let mut best = None;
    walk(h, &mut best);
    best.map(|(_, h)| h)
}

/// True for a class that is one ASCII character, in either case when case-insensitive
/// (which also adds look-alikes such as U+017F for `s` and U+212A for `k`).
fn class_char(c: &Class) -> bool {
    let chars: Vec<u32> = match c {
        Class::Unicode(u) => u.ranges().iter().flat_map(|r| r.start() as u32..=r.end() as u32).take(5).collect(),
        Class::Bytes(b) => b.ranges().iter().flat_map(|r| r.start() as u32..=r.end() as u32).take(5).collect(),
    };
    let ascii: Vec<u8> = chars.iter().filter_map(|&c| u8::try_from(c).ok().filter(u8::is_ascii)).collect();
    chars.len() <= 4 && !ascii.is_empty() && ascii.len() <= 2 && ascii.iter().all(|a| a.eq_ignore_ascii_case(&ascii[0]))
}

/// The longest run of fixed characters every match of `h` contains (a character in
/// either case counts as fixed; an alternation counts its weakest branch).
fn literal_run(h: &Hir) -> usize {
    match h.kind() {
        HirKind::Literal(l) => l.0.len(),
        HirKind::Class(c) => usize::from(class_char(c)),
        HirKind::Capture(c) => literal_run(&c.sub),
        HirKind::Repetition(r) if r.min >= 1 => literal_run(&r.sub),
        HirKind::Alternation(hs) => hs.iter().map(literal_run).min().unwrap_or(0),
        HirKind::Concat(hs) => {
            let (mut best, mut run) = (0, 0);
            for h in hs {
                match h.kind() {
                    HirKind::Literal(l) => run += l.0.len(),
                    HirKind::Class(c) if class_char(c) => run += 1,
                    HirKind::Look(_) | HirKind::Empty => {}
                    _ => {
                        best = best.max(run).max(literal_run(h));
                        run = 0;
                    }
                }
            }
            best.max(run)
        }
        _ => 0,
    }
}

/// The longest literal run in `h` outside the sub-expression `secret`.
fn literal_run_outside(h: &Hir, secret: &Hir) -> usize {
    if std::ptr::eq(h, secret) {
        return 0;
    }
    match h.kind() {
        HirKind::Capture(c) => literal_run_outside(&c.sub, secret),
        HirKind::Repetition(r) if r.min >= 1 => literal_run_outside(&r.sub, secret),
        HirKind::Alternation(hs) => hs.iter().map(|h| literal_run_outside(h, secret)).min().unwrap_or(0),
        HirKind::Concat(hs) => hs.iter().map(|h| literal_run_outside(h, secret)).max().unwrap_or(0),
        _ => literal_run(h),
    }
}

/// Provider family, from the source's rule file name (`github.yml`); `saas` for the many
/// single-product API keys.
fn family(stem: &str) -> &'static str {
    const FAMILIES: &[(&str, &[&str])] = &[
        (
            "cloud",
            &[
                "aws",
                "azure",
                "azurestorage",
                "gcp",
                "google",
                "googleoauth2",
                "alibaba",
                "digitalocean",
                "heroku",
                "cloudflare",
                "hashicorp",
                "terraformcloud",
                "pulumi",
                "doppler",
                "tailscale",
                "supabasetoken",
                "planetscale",
                "vercel",
                "netlify",
                "fastly",
                "ibm",
                "scalewaykey",
                "vultrapikey",
                "snowflake",
                "confluent",
            ],
        ),
        (
            "source",
            &[
                "github",
                "gitlab",
                "bitbucket",
                "atlassian",
                "jira",
                "sourcegraph",
                "buildkite",
                "circleci",
                "travisci",
                "droneci",
                "codeclimate",
                "sonarqube",
                "sonarcloud",
                "snyk",
                "jenkins",
                "teamcity",
                "azuredevops",
                "codacy",
                "coveralls",
            ],
        ),
        (
            "chat",
            &[
                "slack",
                "discord",
                "microsoft_teams",
                "microsoftteamswebhook",
                "telegram",
                "telegrambottoken",
                "linear",
                "notion",
                "postman",
                "figma",
                "line",
                "linenotify",
                "gitter",
            ],
        ),
        (
            "payments",
            &[
                "stripe",
                "square",
                "squareup",
                "shopify",
                "paypal",
                "coinbase",
                "gocardless",
                "paystack",
                "lemonsqueezy",
            ],
        ),
        (
            "messaging",
            &[
                "sendgrid",
                "mailgun",
                "mailchimp",
                "twilio",
                "sendinblue",
                "postmark",
                "mandrill",
                "sparkpost",
                "messagebird",
                "telnyx",
            ],
        ),
        (
            "llm",
            &[
                "anthropic",
                "openai",
                "groq",
                "huggingface",
                "xai",
                "replicate",
                "nvapi",
                "tavily",
                "azureopenai",
                "assemblyai",
                "deepgram",
                "elevenlabs",
                "clarifai",
                "jina",
                "firecrawl",
                "databricks",
                "weightsandbiases",
            ],
        ),
        (
            "registries",
            &[
                "npm",
                "pypi",
                "rubygems",
                "crates.io",
                "nuget",
                "dockerhub",
                "artifactory",
                "packagecloud",
                "cloudsmith",
            ],
        ),
        (
            "observability",
            &["grafana", "newrelic", "sentrytoken", "dynatrace", "datadog", "honeycomb", "logzio", "splunk", "bugsnag"],
        ),
        ("private-keys", &["pem", "privkey", "age", "wireguard"]),
        ("jwt", &["jwt"]),
        ("connection-strings", &["postgres", "mongo", "mongodb", "odbc", "mysql.", "uri", "ftp"]),
        ("basic-credentials", &["http"]),
        ("generic", &["generic", "credentials", "netrc", "psexec", "react", "gradle", "phpmailer", "vmware", "django"]),
    ];
    FAMILIES.iter().find(|(_, stems)| stems.contains(&stem)).map_or("saas", |(f, _)| f)
}

/// Our built-in rule for the same format, where there is one (Nosey Parker ids).
fn our_format(rule_id: &str) -> &'static str {
    const MAP: &[(&str, &str)] = &[
        ("np.aws.1", "aws-access-key-id"),
        ("np.aws.6", "aws-access-key-id"),
        ("np.github.1", "github-pat"),
        ("np.github.2", "github-oauth"),
        ("np.github.3", "github-app-token"),
        ("np.github.4", "github-refresh-token"),
        ("np.github.7", "github-fine-grained-pat"),
        ("np.gitlab.2", "gitlab-pat"),
        ("np.google.2", "gcp-oauth-client-secret"),
        ("np.google.4", "google-oauth-access-token"),
        ("np.google.5", "gcp-api-key"),
        ("np.anthropic.1", "anthropic-api-key"),
        ("np.age.2", "age-secret-key"),
        ("np.atlassian.1", "atlassian-api-token"),
        ("np.bitbucket.1", "bitbucket-app-password"),
        ("np.cratesio.1", "crates-io-token"),
        ("np.databricks.1", "databricks-token"),
        ("np.digitalocean.1", "digitalocean-token"),
        ("np.digitalocean.2", "digitalocean-token"),
        ("np.digitalocean.3", "digitalocean-token"),
        ("np.dockerhub.1", "dockerhub-pat"),
        ("np.doppler.1", "doppler-token"),
        ("np.doppler.2", "doppler-token"),
        ("np.doppler.3", "doppler-token"),
        ("np.doppler.4", "doppler-token"),
        ("np.doppler.5", "doppler-token"),
        ("np.doppler.6", "doppler-token"),
        ("np.dynatrace.1", "dynatrace-token"),
        ("np.grafana.2", "grafana-token"),
        ("np.grafana.3", "grafana-token"),
        ("np.groq.1", "groq-api-key"),
        ("np.hashicorp.4", "vault-token"),
        ("np.hashicorp.5", "vault-token"),
        ("np.huggingface.1", "huggingface-token"),
        ("np.jwt.1", "jwt"),
        ("np.mailchimp.1", "mailchimp-api-key"),
        ("np.mailgun.1", "mailgun-api-key"),
        ("np.msteams.1", "teams-webhook"),
        ("np.mongodb.1", "connection-string-password"),
        ("np.postgres.1", "connection-string-password"),
        ("np.odbc.1", "connection-string-password-field"),
        ("np.newrelic.3", "newrelic-api-key"),
        ("np.npm.1", "npm-token"),
        ("np.nuget.1", "nuget-api-key"),
        ("np.openai.1", "openai-api-key"),
        ("np.pem.1", "private-key"),
        ("np.http.1", "authorization-basic"),
        ("np.http.2", "bearer-token"),
        ("np.postman.1", "postman-api-key"),
        ("np.pypi.1", "pypi-token"),
        ("np.rubygems.1", "rubygems-api-key"),
        ("np.sendgrid.1", "sendgrid-api-key"),
        ("np.shopify.2", "shopify-token"),
        ("np.shopify.3", "shopify-token"),
        ("np.shopify.4", "shopify-token"),
        ("np.shopify.5", "shopify-token"),
        ("np.slack.2", "slack-token"),
        ("np.slack.4", "slack-token"),
        ("np.slack.6", "slack-token"),
        ("np.slack.5", "slack-app-token"),
        ("np.slack.3", "slack-webhook"),
        ("np.sourcegraph.1", "sourcegraph-token"),
        ("np.square.1", "square-token"),
        ("np.square.2", "square-token"),
        ("np.stripe.1", "stripe-secret-key"),
        ("np.stripe.2", "stripe-test-key"),
        ("np.tavily.1", "tavily-api-key"),
        ("np.telegram.1", "telegram-bot-token"),
        ("np.twilio.1", "twilio-api-key"),
        ("np.artifactory.1", "artifactory-token"),
    ];
    MAP.iter().find(|(id, _)| *id == rule_id).map_or("-", |(_, ours)| ours)
}

pub const MANIFEST_HEADER: &str = "path\tsource\trule_id\tfamily\tscope\tkind\tformat\tneedles\trule_name";

pub fn manifest(samples: &[Extracted]) -> String {
    let mut out = format!("{MANIFEST_HEADER}\n");
    for s in samples {
        let kind = if s.positive { "positive" } else { "negative" };
        let needles = serde_json::to_string(&s.needles).expect("JSON");
        writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{kind}\t{}\t{needles}\t{}",
            s.path, s.source, s.rule_id, s.family, s.scope, s.format, s.rule_name
        )
        .unwrap();
    }
    out
}
