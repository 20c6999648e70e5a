//! The independent corpus (`testdata/dlp-independent/`): the examples other scanners
//! publish with their rules (Nosey Parker and Kingfisher, Apache-2.0; see its NOTICE),
//! scored by our default engine. The rules were first tuned on Nosey Parker's examples
//! only, with Kingfisher's examples that are not also Nosey Parker's held out (their blind
//! figure is kept in `HELD_OUT_BLIND`); then tuned on Kingfisher's too.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
};

use egress_dlp::{Engine, Finding, KnownSecrets};

use super::{
    Tally, contexts, files_under, findings,
    independent_extract::{self as extract, Extracted},
    pct,
    rng::Rng,
};

/// The source the rules were tuned on first, and the one held out until the second round.
const TUNED: &str = "noseyparker";
const HELD_OUT: &str = "kingfisher";
/// Recall on the held-out examples while they were held out (measured once, blind).
const HELD_OUT_BLIND: &str = "37.9% (207 of 546), 40 formats at >= 97%";
/// Measured floors after tuning on Kingfisher too: all its in-scope examples, and those
/// that were held out.
const FLOOR_ALL: f64 = 0.72;
const FLOOR_ALL_FORMATS: usize = 101;
const FLOOR_HELD_OUT: f64 = 0.60;
const FLOOR_HELD_OUT_FORMATS: usize = 63;

/// How an example travels: pasted as a plain-text body, in an LLM conversation (JSON,
/// escaped once), and as tool-call arguments (JSON inside JSON, escaped twice).
const CONTEXTS: &[&str] = &["body-text", "chat-json", "tool-call-json"];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/dlp-independent")
}

pub(crate) fn load() -> Vec<Extracted> {
    let dir = dir();
    let text = std::fs::read_to_string(dir.join("manifest.tsv")).expect("independent corpus manifest");
    text.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 9, "manifest line {line:?}");
            let text =
                std::fs::read_to_string(dir.join(f[0])).unwrap_or_else(|e| panic!("reading sample {}: {e}", f[0]));
            Extracted {
                path: f[0].into(),
                source: f[1].into(),
                rule_id: f[2].into(),
                family: f[3].into(),
                scope: f[4].into(),
                positive: f[5] == "positive",
                format: f[6].into(),
                needles: serde_json::from_str(f[7]).expect("needles are a JSON array"),
                rule_name: f[8].into(),
                text,
            }
        })
        .collect()
}

/// With the sources' git directories in `DLP_INDEPENDENT_NOSEYPARKER` and
/// `DLP_INDEPENDENT_KINGFISHER` (`cargo xtask dlp-independent`), rewrites the samples and
/// the manifest; always checks that the manifest and the files agree.
#[test]
fn independent_corpus_matches_its_manifest() {
    let dir = dir();
    let dirs: Vec<Option<PathBuf>> =
        extract::SOURCES.iter().map(|s| std::env::var_os(s.env).map(PathBuf::from)).collect();
    if dirs.iter().all(Option::is_some) {
        let (mut samples, mut rules) = (Vec::new(), Vec::new());
        for (source, git_dir) in extract::SOURCES.iter().zip(&dirs) {
            let (mut got, mut compiled, commit) = extract::extract(source, git_dir.as_deref().unwrap());
            println!("{}: {} samples from commit {commit}", source.id, got.len());
            samples.append(&mut got);
            rules.append(&mut compiled);
        }
        extract::mark_other_secrets(&mut samples, &rules);
        let _ = std::fs::remove_dir_all(dir.join("samples"));
        for s in &samples {
            let path = dir.join(&s.path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, &s.text).unwrap();
        }
        std::fs::write(dir.join("manifest.tsv"), extract::manifest(&samples)).unwrap();
    }
    let samples = load();
    let manifest = std::fs::read_to_string(dir.join("manifest.tsv")).unwrap();
    assert!(manifest.starts_with(extract::MANIFEST_HEADER), "manifest header");
    let mut files = Vec::new();
    files_under(&dir.join("samples"), "txt", &mut files);
    assert_eq!(files.len(), samples.len(), "files under samples/ that the manifest does not list");
}

/// The ways a needle can appear on the wire in each context: as is, or JSON-escaped once
/// or twice (a key block's newlines become `\n`).
fn wire_forms(needle: &str) -> [String; 3] {
    let once = serde_json::to_string(needle).unwrap();
    let once = once[1..once.len() - 1].to_string();
    let twice = serde_json::to_string(&once).unwrap();
    let twice = twice[1..twice.len() - 1].to_string();
    [needle.to_string(), once, twice]
}

fn embed(context: &str, text: &str) -> String {
    let mut r = Rng::new(0x1d1d);
    match context {
        "body-text" => contexts::post("notes.data-hub.net", "/v1/notes", "text/plain; charset=utf-8", text),
        "chat-json" => contexts::chat_json(text, &mut r).expect("chat context"),
        _ => contexts::tool_call_json(text, &mut r).expect("tool-call context"),
    }
}

/// A value documentation writes where the real one goes (`xxxx`, a run of zeros,
/// `EXAMPLE`, a template such as `${VAR}` or `#{var}`, or a word such as `password`): the source counts it as a positive, but we
/// leave such values alone on purpose (the generated corpus's `docs-placeholders`
/// category checks it), so it is reported apart from recall.
fn placeholder(needle: &str) -> bool {
    let lower = needle.to_ascii_lowercase();
    ["xxxx", "0000000000"].iter().any(|p| lower.contains(p))
        || needle.contains("EXAMPLE")
        || ["${", "#{", "{{", "<"].iter().any(|p| needle.contains(p))
        || ["secret", "password", "mypassword", "pass", "changeme"].contains(&lower.as_str())
}

/// Every needle is inside some finding's value, so redaction would remove it.
fn covered(found: &[Finding], needles: &[String]) -> bool {
    needles.iter().all(|n| {
        let forms = wire_forms(n);
        found.iter().any(|f| f.matched.as_ref().is_some_and(|m| forms.iter().any(|w| m.expose().contains(w.as_str()))))
    })
}

fn rule_ids(found: &[Finding]) -> String {
    let ids: BTreeSet<&str> = found.iter().map(|f| f.rule_id.as_str()).collect();
    ids.into_iter().collect::<Vec<_>>().join(",")
}

/// Recall over one set of positives, per format (source rule).
#[derive(Default)]
struct Recall {
    all: Tally,
    formats: BTreeMap<String, Tally>,
}

impl Recall {
    fn add(&mut self, rule_id: &str, hit: bool, note: impl FnOnce() -> String) {
        self.all.add(hit, String::new);
        self.formats.entry(rule_id.to_string()).or_default().add(hit, note);
    }

    fn on_target(&self) -> usize {
        self.formats.values().filter(|t| t.rate() >= super::MIN_RECALL).count()
    }

    fn row(&self, label: &str) -> String {
        format!(
            "| {label} | {} | {} | {} | {} | **{}** |",
            self.formats.len(),
            self.on_target(),
            self.all.total,
            self.all.hits,
            pct(self.all.rate())
        )
    }
}

pub struct Report {
    pub text: String,
    tuned: Recall,
    second: Recall,
    held_out: Recall,
    negatives: Tally,
}

fn report(samples: &[Extracted]) -> Report {
    let engine = Engine::new(KnownSecrets::default(), Vec::new()).expect("default rules");
    // Held out: Kingfisher samples that are not Nosey Parker examples (Kingfisher grew
    // out of Nosey Parker and kept many of its examples).
    let tuned_text: String = samples.iter().filter(|s| s.source == TUNED).map(|s| s.text.as_str()).collect();
    let seen = |s: &Extracted| s.source == TUNED || s.needles.iter().any(|n| tuned_text.contains(n.as_str()));

    let mut by_source: BTreeMap<&str, Recall> = BTreeMap::new();
    let (mut tuned, mut held_out) = (Recall::default(), Recall::default());
    let mut by_family: BTreeMap<(&str, &str), Tally> = BTreeMap::new();
    let mut by_context: BTreeMap<&str, Tally> = BTreeMap::new();
    let mut out_of_scope: BTreeMap<(&str, &str), (BTreeSet<&str>, Tally)> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut negatives: BTreeMap<String, Tally> = BTreeMap::new();
    // `DLP_INDEPENDENT_SHOW=<source rule id>` prints what was found in its samples.
    let show = std::env::var("DLP_INDEPENDENT_SHOW").ok();
    for s in samples {
        if !s.positive {
            let flagged: Vec<String> = CONTEXTS
                .iter()
                .map(|c| {
                    let found = findings(&engine, &embed(c, &s.text));
                    if show.as_deref() == Some(s.rule_id.as_str()) {
                        println!("{} {c}: {:?}", s.path, found.iter().map(|f| &f.context).collect::<Vec<_>>());
                    }
                    rule_ids(&found)
                })
                .filter(|ids| !ids.is_empty())
                .collect();
            let key =
                if s.needles.is_empty() { s.source.clone() } else { format!("{} (another format's secret)", s.source) };
            let tally = negatives.entry(key).or_default();
            tally.total += 1;
            if let Some(ids) = flagged.first() {
                tally.hits += 1;
                tally.notes.push(format!("{} ({ids})", s.path));
            }
            continue;
        }
        if s.needles.is_empty() {
            problems.push(format!("{} ({}): the source's own pattern does not match it", s.path, s.scope));
            continue;
        }
        if s.scope == "in" && s.needles.iter().any(|n| placeholder(n)) {
            problems.push(format!("{}: a documentation placeholder ({})", s.path, s.needles.join(" ")));
            continue;
        }
        for context in CONTEXTS {
            let found = findings(&engine, &embed(context, &s.text));
            if show.as_deref() == Some(s.rule_id.as_str()) {
                let values: Vec<String> = found
                    .iter()
                    .map(|f| format!("{}={:?}", f.rule_id, f.matched.as_ref().map(|m| m.expose())))
                    .collect();
                println!("{} {context}: needles {:?}, found {values:?}", s.path, s.needles);
            }
            let hit = covered(&found, &s.needles);
            let note = || match rule_ids(&found) {
                ids if ids.is_empty() => context.to_string(),
                ids => format!("{context} (found only: {ids})"),
            };
            if s.scope != "in" {
                let entry = out_of_scope.entry((&s.scope, &s.source)).or_default();
                entry.0.insert(&s.rule_id);
                entry.1.add(hit, String::new);
                continue;
            }
            let key = format!("{} {} ({})", s.rule_id, s.rule_name, s.family);
            by_source.entry(&s.source).or_default().add(&key, hit, note);
            by_family.entry((&s.family, &s.source)).or_default().add(hit, String::new);
            by_context.entry(context).or_default().add(hit, String::new);
            if s.source == TUNED {
                tuned.add(&s.rule_id, hit, String::new);
            } else if s.source == HELD_OUT && !seen(s) {
                held_out.add(&s.rule_id, hit, String::new);
            }
        }
    }

    let mut t = String::new();
    writeln!(t, "\nIndependent corpus: other scanners' rule examples, default rules, contexts {CONTEXTS:?}").unwrap();
    writeln!(
        t,
        "\n| positives (in scope) | formats | formats >= 97% | samples x contexts | detected | recall |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |"
    )
    .unwrap();
    for (source, recall) in &by_source {
        writeln!(t, "{}", recall.row(source)).unwrap();
    }
    writeln!(t, "{}", tuned.row(&format!("tuned on: {TUNED}"))).unwrap();
    writeln!(t, "{}", held_out.row(&format!("{HELD_OUT} examples not in {TUNED}, tuned on too"))).unwrap();
    writeln!(t, "\n(The {HELD_OUT} examples not in {TUNED}, while held out: {HELD_OUT_BLIND}.)").unwrap();

    let sources: Vec<&str> = by_source.keys().copied().collect();
    write!(t, "\n| family |").unwrap();
    for s in &sources {
        write!(t, " {s} samples | {s} recall |").unwrap();
    }
    writeln!(t, "\n| --- |{}", " ---: | ---: |".repeat(sources.len())).unwrap();
    let families: BTreeSet<&str> = by_family.keys().map(|(f, _)| *f).collect();
    for family in families {
        write!(t, "| {family} |").unwrap();
        for s in &sources {
            match by_family.get(&(family, s)) {
                Some(tally) => write!(t, " {} | {} |", tally.total, pct(tally.rate())).unwrap(),
                None => write!(t, " - | - |").unwrap(),
            }
        }
        writeln!(t).unwrap();
    }

    writeln!(t, "\n| context | samples | detected | recall |\n| --- | ---: | ---: | ---: |").unwrap();
    for (context, tally) in &by_context {
        writeln!(t, "| {context} | {} | {} | {} |", tally.total, tally.hits, pct(tally.rate())).unwrap();
    }

    writeln!(t, "\nFormats (source rules) in scope with misses:\n\n| source | format | detected | missed in |")
        .unwrap();
    writeln!(t, "| --- | --- | ---: | --- |").unwrap();
    for (source, recall) in &by_source {
        for (format, tally) in recall.formats.iter().filter(|(_, t)| t.hits < t.total) {
            let notes: BTreeSet<&str> = tally.notes.iter().map(String::as_str).collect();
            let notes = notes.into_iter().collect::<Vec<_>>().join("; ");
            writeln!(t, "| {source} | {format} | {} of {} | {notes} |", tally.hits, tally.total).unwrap();
        }
    }

    writeln!(
        t,
        "\nOut of scope (not counted above; detected for information):\n\n\
         | scope | source | rules | samples x contexts | detected | rule ids |\n| --- | --- | ---: | ---: | ---: | --- |"
    )
    .unwrap();
    for ((scope, source), (rules, tally)) in &out_of_scope {
        let ids = rules.iter().copied().collect::<Vec<_>>().join(" ");
        writeln!(t, "| {scope} | {source} | {} | {} | {} | {ids} |", rules.len(), tally.total, tally.hits).unwrap();
    }
    if !problems.is_empty() {
        writeln!(t, "\nSample problems (not counted):\n").unwrap();
        for p in &problems {
            writeln!(t, "- {p}").unwrap();
        }
    }

    writeln!(t, "\n| negative examples | files | flagged | rate | flagged files (rules) |").unwrap();
    writeln!(t, "| --- | ---: | ---: | ---: | --- |").unwrap();
    let mut all_negatives = Tally::default();
    for (source, tally) in &negatives {
        if !source.contains(' ') {
            all_negatives.total += tally.total;
            all_negatives.hits += tally.hits;
        }
        writeln!(
            t,
            "| {source} | {} | {} | {} | {} |",
            tally.total,
            tally.hits,
            pct(tally.rate()),
            tally.notes.join("; ")
        )
        .unwrap();
    }
    writeln!(
        t,
        "| **all, without those** | {} | {} | **{}** | |",
        all_negatives.total,
        all_negatives.hits,
        pct(all_negatives.rate())
    )
    .unwrap();
    let second = by_source.remove(HELD_OUT).unwrap_or_default();
    Report { text: t, tuned, second, held_out, negatives: all_negatives }
}

#[test]
fn independent_report() {
    let samples = load();
    let report = report(&samples);
    println!("{}", report.text);
    // The targets hold on the source the rules were tuned on.
    assert!(report.tuned.formats.len() >= super::MIN_FORMATS, "only {} tuned-on formats", report.tuned.formats.len());
    assert!(report.tuned.all.rate() >= super::MIN_RECALL, "tuned-on recall {}", pct(report.tuned.all.rate()));
    assert!(report.tuned.on_target() >= super::MIN_FORMATS, "{} tuned-on formats on target", report.tuned.on_target());
    // Kingfisher, tuned on in the second round: below the target overall (the misses
    // are malformed examples and formats without a rare literal; see docs/dlp.md); these
    // are the measured floors, so a regression fails.
    assert!(report.second.all.rate() >= FLOOR_ALL, "Kingfisher recall {}", pct(report.second.all.rate()));
    assert!(
        report.second.on_target() >= FLOOR_ALL_FORMATS,
        "{} Kingfisher formats on target",
        report.second.on_target()
    );
    assert!(report.held_out.all.rate() >= FLOOR_HELD_OUT, "once held-out recall {}", pct(report.held_out.all.rate()));
    assert!(
        report.held_out.on_target() >= FLOOR_HELD_OUT_FORMATS,
        "{} once held-out formats on target",
        report.held_out.on_target()
    );
    assert!(
        report.negatives.rate() <= super::MAX_BENIGN_FLAGGED,
        "negative examples flagged {}",
        pct(report.negatives.rate())
    );
}
