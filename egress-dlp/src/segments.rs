//! LLM API bodies resend the whole conversation every turn. Scanning all of it every time
//! makes the cost grow with the square of the conversation, so a JSON body is split into
//! its conversation messages (complete JSON values, so no token can straddle a cut) and
//! each message already seen clean is skipped. Only "no match at all" verdicts are
//! cached: a message with a match, even an approved one, is scanned every time, so an
//! approval for one request never leaks into the cache.
use std::{
    hash::{BuildHasher, RandomState},
    ops::Range,
};

/// Messages shorter than this are scanned rather than looked up (a lookup costs about
/// as much as scanning a few dozen bytes).
const MIN_CACHED_LEN: usize = 64;
/// Clean messages remembered (a key is 16 bytes).
const CACHE_ENTRIES: u64 = 200_000;
/// The top-level fields of the LLM APIs that carry the conversation: OpenAI chat
/// (`messages`), Responses (`input`), Gemini (`contents`).
const CONVERSATION_FIELDS: [&[u8]; 3] = [b"messages", b"contents", b"input"];

/// Byte ranges of the conversation messages in `body` (the objects of a top-level
/// conversation array), in order; `None` when the body is not a JSON object with such a
/// field, or is not well formed (it is then scanned whole). A structural walk, not a
/// parse: strings are skipped with `memchr`, so this costs a fraction of a scan.
pub fn conversation_messages(body: &str) -> Option<Vec<Range<usize>>> {
    let mut w = Walker { b: body.as_bytes(), i: 0 };
    let mut out = Vec::new();
    w.ws();
    w.eat(b'{')?;
    w.ws();
    if w.peek()? == b'}' {
        return None;
    }
    loop {
        w.ws();
        let key = w.string()?;
        w.ws();
        w.eat(b':')?;
        w.ws();
        if CONVERSATION_FIELDS.contains(&&w.b[key]) && w.peek()? == b'[' {
            w.i += 1;
            w.ws();
            if w.peek()? == b']' {
                w.i += 1;
            } else {
                loop {
                    w.ws();
                    let start = w.i;
                    if w.peek()? != b'{' {
                        return None;
                    }
                    w.value()?;
                    out.push(start..w.i);
                    w.ws();
                    match w.next()? {
                        b',' => {}
                        b']' => break,
                        _ => return None,
                    }
                }
            }
        } else {
            w.value()?;
        }
        w.ws();
        match w.next()? {
            b',' => {}
            b'}' => break,
            _ => return None,
        }
    }
    w.ws();
    (w.i == w.b.len() && !out.is_empty()).then_some(out)
}

/// A cursor over JSON bytes that skips values without building them.
struct Walker<'a> {
    b: &'a [u8],
    i: usize,
}

impl Walker<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// A string; returns the range of its contents.
    fn string(&mut self) -> Option<Range<usize>> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            let at = self.i + memchr::memchr2(b'"', b'\\', self.b.get(self.i..)?)?;
            if self.b[at] == b'\\' {
                self.i = at + 2;
            } else {
                self.i = at + 1;
                return Some(start..at);
            }
        }
    }

    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => self.container(),
            _ => {
                let start = self.i;
                while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.')) {
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }

    /// An object or array, its brackets matched.
    fn container(&mut self) -> Option<()> {
        let mut closers = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.string()?;
                    continue;
                }
                b'{' => closers.push(b'}'),
                b'[' => closers.push(b']'),
                c @ (b'}' | b']') => {
                    if closers.pop()? != c {
                        return None;
                    }
                    if closers.is_empty() {
                        self.i += 1;
                        return Some(());
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
    }
}

/// The parts of `body` to scan: everything but the messages in `skipped`, as maximal
/// runs (so a cold body is one scan, not one per message).
pub fn runs_without(len: usize, skipped: impl IntoIterator<Item = Range<usize>>) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut at = 0;
    for r in skipped {
        if r.start > at {
            out.push(at..r.start);
        }
        at = at.max(r.end);
    }
    if at < len {
        out.push(at..len);
    }
    out
}

/// Messages that had no match at all, keyed by a per-process keyed hash and the length
/// (a second preimage would need the key).
pub struct CleanCache {
    hasher: RandomState,
    seen: moka::sync::Cache<Key, ()>,
    /// Off: every lookup misses (the cold path, for benchmarks).
    enabled: bool,
}

impl Default for CleanCache {
    fn default() -> Self {
        CleanCache { hasher: RandomState::new(), seen: moka::sync::Cache::new(CACHE_ENTRIES), enabled: true }
    }
}

/// A message's identity in the cache.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(u64, usize, u8);

impl CleanCache {
    /// A cache that never remembers: the cost of a body seen for the first time.
    pub fn disabled() -> Self {
        CleanCache { enabled: false, ..Default::default() }
    }

    /// A new, empty cache, enabled or not like this one.
    pub fn empty_like(&self) -> Self {
        if self.enabled { CleanCache::default() } else { CleanCache::disabled() }
    }

    /// Whether `text` is worth a lookup at all.
    pub fn cacheable(text: &str) -> bool {
        text.len() >= MIN_CACHED_LEN
    }

    pub fn key(&self, text: &str, selection: u8) -> Key {
        Key(self.hasher.hash_one(text), text.len(), selection)
    }

    pub fn is_clean(&self, key: Key) -> bool {
        self.enabled && self.seen.contains_key(&key)
    }

    pub fn mark_clean(&self, key: Key) {
        if self.enabled {
            self.seen.insert(key, ());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_each_message_of_the_known_shapes() {
        let body =
            r#"{"model":"m","messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}],"x":1}"#;
        let ranges = conversation_messages(body).unwrap();
        let parts: Vec<&str> = ranges.iter().map(|r| &body[r.clone()]).collect();
        assert_eq!(parts, [r#"{"role":"user","content":"a"}"#, r#"{"role":"assistant","content":"b"}"#]);
        let g: Vec<&str> = runs_without(body.len(), ranges.clone()).into_iter().map(|r| &body[r]).collect();
        assert_eq!(g, [r#"{"model":"m","messages":["#, ",", r#"],"x":1}"#]);
        let g: Vec<&str> = runs_without(body.len(), ranges[..1].to_vec()).into_iter().map(|r| &body[r]).collect();
        assert_eq!(g, [r#"{"model":"m","messages":["#, r#",{"role":"assistant","content":"b"}],"x":1}"#]);
        // Escapes and brackets inside strings do not end a message.
        let tricky = r#"{"messages":[{"c":"a \"}] ,{\\"},{"c":"b"}]}"#;
        let parts: Vec<&str> = conversation_messages(tricky).unwrap().into_iter().map(|r| &tricky[r]).collect();
        assert_eq!(parts, [r#"{"c":"a \"}] ,{\\"}"#, r#"{"c":"b"}"#]);

        let gemini = r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#;
        assert_eq!(conversation_messages(gemini).unwrap().len(), 1);
        let responses = r#"{"input":[{"role":"user","content":"hi"}], "model":"m"}"#;
        assert_eq!(conversation_messages(responses).unwrap().len(), 1);
    }

    #[test]
    fn other_bodies_are_scanned_whole() {
        for body in [
            r#"{"input":"just a string"}"#,
            r#"["a"]"#,
            "not json",
            r#"{"messages":[}"#,
            r#"{"a":1}"#,
            r#"{"messages":[{"a":1]}]}"#,
            r#"{"messages":[{"a":1}]} trailing"#,
            r#"{"messages":["text"]}"#,
            r#"{"messages":[{"a":"unterminated}]}"#,
            // A backslash as the last byte: the escape runs past the end.
            r#"{"\"#,
            r#"{"messages":[{"a":"x\"#,
        ] {
            assert!(conversation_messages(body).is_none(), "{body}");
        }
    }

    #[test]
    fn a_clean_verdict_is_per_text_and_selection() {
        let cache = CleanCache::default();
        let text = "x".repeat(100);
        assert!(!cache.is_clean(cache.key(&text, 3)));
        cache.mark_clean(cache.key(&text, 3));
        assert!(cache.is_clean(cache.key(&text, 3)));
        assert!(!cache.is_clean(cache.key(&text, 1)));
        assert!(!cache.is_clean(cache.key(&"y".repeat(100), 3)));
        let off = CleanCache::disabled();
        off.mark_clean(off.key(&text, 3));
        assert!(!off.is_clean(off.key(&text, 3)));
    }
}
