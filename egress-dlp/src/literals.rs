//! Fast multi-literal search for the two prefilters that run over every byte of every
//! request: the rules' keywords and the known secrets' letters-and-digits forms.
//!
//! A byte-at-a-time Aho-Corasick DFA runs at about 600 MB/s whatever the text. Teddy
//! (the SIMD searcher inside `aho_corasick::packed`) runs at several GB/s, but only over
//! a few dozen patterns, and it reports one leftmost-longest match per position rather
//! than every overlapping one. So the patterns are split into groups of at most
//! `GROUP_SIZE`, each group searched on its own, and every search restarts one byte after
//! the start of its last match. At a position where several patterns of a group match,
//! they are all prefixes of the longest one, which is the one reported: each pattern
//! carries the tags of every pattern that is a prefix of it, so no occurrence is lost.
//! Where Teddy is not available (no SSSE3, or a non-x86/ARM CPU) one overlapping DFA
//! does the same job, slower.
use aho_corasick::{AhoCorasick, AhoCorasickKind, packed};

/// Patterns per Teddy group: beyond about 50, Teddy's buckets fill up and it spends its
/// time verifying false candidates (measured on conversation text: 3 to 4 groups of the
/// ~200 keyword patterns run at 1.4 GB/s in total; one DFA at 0.6 GB/s).
const GROUP_SIZE: usize = 48;

/// A set of byte literals, each with a tag (a rule index, a secret index).
pub struct LiteralSet {
    search: Search,
    /// Per pattern: the tags of every pattern that is a prefix of it, itself included.
    tags: Vec<Vec<usize>>,
}

enum Search {
    Empty,
    /// Each group with the index of its first pattern in `tags`.
    Packed(Vec<(packed::Searcher, usize)>),
    Dfa(AhoCorasick),
}

impl LiteralSet {
    /// `patterns` may repeat (same bytes, other tags); an empty pattern is ignored.
    pub fn new(patterns: Vec<(Vec<u8>, usize)>) -> LiteralSet {
        let mut merged: Vec<(Vec<u8>, Vec<usize>)> = Vec::new();
        let mut sorted = patterns;
        sorted.retain(|(p, _)| !p.is_empty());
        // Short patterns shrink Teddy's fingerprint for their whole group: keep them last,
        // to be grouped apart from the rest.
        sorted.sort_by(|a, b| (a.0.len() < 3, &a.0).cmp(&(b.0.len() < 3, &b.0)));
        for (bytes, tag) in sorted {
            match merged.last_mut() {
                Some((last, tags)) if *last == bytes => tags.push(tag),
                _ => merged.push((bytes, vec![tag])),
            }
        }
        let tags: Vec<Vec<usize>> = merged
            .iter()
            .map(|(p, _)| {
                let mut t: Vec<usize> = merged
                    .iter()
                    .filter(|(q, _)| p.starts_with(q))
                    .flat_map(|(_, tags)| tags.iter().copied())
                    .collect();
                t.sort_unstable();
                t.dedup();
                t
            })
            .collect();
        let search = if merged.is_empty() {
            Search::Empty
        } else {
            Self::packed(&merged).map(Search::Packed).unwrap_or_else(|| {
                let dfa = AhoCorasick::builder()
                    .kind(Some(AhoCorasickKind::DFA))
                    .build(merged.iter().map(|(p, _)| p))
                    .expect("literal patterns always build");
                Search::Dfa(dfa)
            })
        };
        LiteralSet { search, tags }
    }

    fn packed(merged: &[(Vec<u8>, Vec<usize>)]) -> Option<Vec<(packed::Searcher, usize)>> {
        // `merged` has the short patterns last: they get groups of their own.
        let short = merged.partition_point(|(p, _)| p.len() >= 3);
        let mut groups = Vec::new();
        for (offset, part) in [(0, &merged[..short]), (short, &merged[short..])] {
            for (i, chunk) in part.chunks(GROUP_SIZE).enumerate() {
                let searcher = packed::Config::new()
                    .match_kind(packed::MatchKind::LeftmostLongest)
                    .heuristic_pattern_limits(false)
                    .builder()
                    .extend(chunk.iter().map(|(p, _)| p))
                    .build()?;
                groups.push((searcher, offset + i * GROUP_SIZE));
            }
        }
        Some(groups)
    }

    /// Calls `found(tag, start)` for every literal occurring in `text`, with the tags of
    /// the literals that are prefixes of it at the same start (a tag may come more than
    /// once).
    pub fn for_each_hit(&self, text: &[u8], mut found: impl FnMut(usize, usize)) {
        let mut report = |pattern: usize, start: usize| self.tags[pattern].iter().for_each(|&t| found(t, start));
        match &self.search {
            Search::Empty => {}
            Search::Dfa(dfa) => {
                for m in dfa.find_overlapping_iter(text) {
                    report(m.pattern().as_usize(), m.start());
                }
            }
            Search::Packed(groups) => {
                for (searcher, first) in groups {
                    let mut at = 0;
                    while at < text.len() {
                        let Some(m) = searcher.find_in(text, aho_corasick::Span::from(at..text.len())) else {
                            break;
                        };
                        report(first + m.pattern().as_usize(), m.start());
                        at = m.start() + 1;
                    }
                }
            }
        }
    }

    /// Whether any literal occurs in `text`.
    pub fn is_match(&self, text: &[u8]) -> bool {
        match &self.search {
            Search::Empty => false,
            Search::Dfa(dfa) => dfa.is_match(text),
            Search::Packed(groups) => groups.iter().any(|(s, _)| s.find(text).is_some()),
        }
    }
}

/// Every ASCII-case variant of `word` (`asic` -> `asic`, `Asic`, ..., `ASIC`): Teddy has no
/// case-insensitive mode. Callers keep `word` to a few letters.
pub fn case_variants(word: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::with_capacity(word.len())];
    for &b in word {
        if b.is_ascii_alphabetic() {
            out = out
                .into_iter()
                .flat_map(|v| {
                    let mut upper = v.clone();
                    upper.push(b.to_ascii_uppercase());
                    let mut lower = v;
                    lower.push(b.to_ascii_lowercase());
                    [lower, upper]
                })
                .collect();
        } else {
            out.iter_mut().for_each(|v| v.push(b));
        }
    }
    out
}

/// The end of `keyword` holding at most four letters (at most 16 case variants): found in
/// a text whenever the whole keyword is, in any case.
pub fn case_insensitive_tail(keyword: &[u8]) -> &[u8] {
    let mut letters = 0;
    let mut start = keyword.len();
    while start > 0 {
        if keyword[start - 1].is_ascii_alphabetic() {
            if letters == 4 {
                break;
            }
            letters += 1;
        }
        start -= 1;
    }
    &keyword[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(set: &LiteralSet, text: &str) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        set.for_each_hit(text.as_bytes(), |t, at| out.push((t, at)));
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The reference: every occurrence of every pattern, by plain substring search.
    fn naive(patterns: &[(Vec<u8>, usize)], text: &str) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = patterns
            .iter()
            .filter(|(p, _)| !p.is_empty())
            .flat_map(|(p, t)| {
                let bytes = text.as_bytes();
                (0..bytes.len()).filter(move |&i| bytes[i..].starts_with(p)).map(move |i| (*t, i))
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    #[test]
    fn overlapping_and_nested_literals_are_all_found() {
        let words = ["sk-", "sk-ant-", "ant", "t-a", "ghp_", "hp_x", "=", "ab", "abc", "abcd", "bcd"];
        let patterns: Vec<(Vec<u8>, usize)> =
            words.iter().enumerate().map(|(i, w)| (w.as_bytes().to_vec(), i)).collect();
        let set = LiteralSet::new(patterns.clone());
        for text in ["", "sk-ant-api", "xxghp_xyz", "abcd", "a=b", "nothing here", "sk-ant-abcdghp_x"] {
            assert_eq!(tags(&set, text), naive(&patterns, text), "{text:?}");
        }
    }

    #[test]
    fn many_patterns_across_groups_match_the_naive_search() {
        // More than three groups, with prefixes of one another in different groups.
        let patterns: Vec<(Vec<u8>, usize)> = (0..200)
            .map(|i| (format!("k{}_{}", i % 37, i).into_bytes(), i % 50))
            .chain([(b"k1".to_vec(), 99)])
            .collect();
        let set = LiteralSet::new(patterns.clone());
        let mut text = String::from("prose ");
        for i in (0..200).step_by(7) {
            text.push_str(&format!("k{}_{} ", i % 37, i));
        }
        let long = text.repeat(20);
        for t in [text.as_str(), long.as_str(), "k1", "k1_1", "k36_36"] {
            assert_eq!(tags(&set, t), naive(&patterns, t), "{t:?}");
        }
        assert!(set.is_match(b"xx k5_5 yy"));
        assert!(!set.is_match(b"no literal in this text at all"));
    }

    #[test]
    fn case_variants_cover_every_spelling() {
        let v = case_variants(b"a-b");
        assert_eq!(v.len(), 4);
        assert!(v.contains(&b"A-b".to_vec()) && v.contains(&b"a-B".to_vec()));
    }

    #[test]
    fn the_tail_keeps_at_most_four_letters() {
        assert_eq!(case_insensitive_tail(b"password="), b"word=");
        assert_eq!(case_insensitive_tail(b"asic"), b"asic");
        assert_eq!(case_insensitive_tail(b"earer"), b"arer");
        assert_eq!(case_insensitive_tail(b"pwd="), b"pwd=");
        assert_eq!(case_insensitive_tail(b"--"), b"--");
    }
}
