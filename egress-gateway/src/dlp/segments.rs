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

use serde::Deserialize;
use serde_json::value::RawValue;

/// Messages shorter than this are scanned rather than looked up.
const MIN_CACHED_LEN: usize = 256;
/// Clean messages remembered (a key is 16 bytes).
const CACHE_ENTRIES: u64 = 200_000;

/// The top-level fields of the LLM APIs that carry the conversation: OpenAI chat
/// (`messages`), Responses (`input`), Gemini (`contents`).
#[derive(Deserialize)]
struct Conversation<'a> {
    #[serde(borrow, default)]
    messages: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    contents: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    input: Option<Vec<&'a RawValue>>,
}

/// Byte ranges of the conversation messages in `body`, in order; `None` when the body is
/// not a JSON object with such a field (it is then scanned whole).
pub fn conversation_messages(body: &str) -> Option<Vec<Range<usize>>> {
    let trimmed = body.trim_start();
    if !trimmed.starts_with('{') || !body.contains("\"") {
        return None;
    }
    let conv: Conversation<'_> = serde_json::from_str(body).ok()?;
    let base = body.as_ptr() as usize;
    let mut out: Vec<Range<usize>> = [conv.messages, conv.contents, conv.input]
        .into_iter()
        .flatten()
        .flatten()
        .map(|raw| {
            let start = raw.get().as_ptr() as usize - base;
            start..start + raw.get().len()
        })
        .collect();
    if out.is_empty() {
        return None;
    }
    out.sort_by_key(|r| r.start);
    Some(out)
}

/// The parts of `body` between `messages` (the envelope: model, tools, system prompt).
pub fn gaps(len: usize, messages: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(messages.len() + 1);
    let mut at = 0;
    for m in messages {
        if m.start > at {
            out.push(at..m.start);
        }
        at = at.max(m.end);
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
    seen: moka::sync::Cache<(u64, usize, u8), ()>,
}

impl Default for CleanCache {
    fn default() -> Self {
        CleanCache { hasher: RandomState::new(), seen: moka::sync::Cache::new(CACHE_ENTRIES) }
    }
}

impl CleanCache {
    fn key(&self, text: &str, selection: u8) -> (u64, usize, u8) {
        (self.hasher.hash_one(text), text.len(), selection)
    }

    /// Whether `text` is worth a lookup at all.
    pub fn cacheable(text: &str) -> bool {
        text.len() >= MIN_CACHED_LEN
    }

    pub fn is_clean(&self, text: &str, selection: u8) -> bool {
        self.seen.contains_key(&self.key(text, selection))
    }

    pub fn mark_clean(&self, text: &str, selection: u8) {
        self.seen.insert(self.key(text, selection), ());
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
        let g: Vec<&str> = gaps(body.len(), &ranges).into_iter().map(|r| &body[r]).collect();
        assert_eq!(g, [r#"{"model":"m","messages":["#, ",", r#"],"x":1}"#]);

        let gemini = r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#;
        assert_eq!(conversation_messages(gemini).unwrap().len(), 1);
        let responses = r#"{"input":[{"role":"user","content":"hi"}], "model":"m"}"#;
        assert_eq!(conversation_messages(responses).unwrap().len(), 1);
    }

    #[test]
    fn other_bodies_are_scanned_whole() {
        for body in [r#"{"input":"just a string"}"#, r#"["a"]"#, "not json", r#"{"messages":[}"#, r#"{"a":1}"#] {
            assert!(conversation_messages(body).is_none(), "{body}");
        }
    }

    #[test]
    fn a_clean_verdict_is_per_text_and_selection() {
        let cache = CleanCache::default();
        let text = "x".repeat(300);
        assert!(!cache.is_clean(&text, 3));
        cache.mark_clean(&text, 3);
        assert!(cache.is_clean(&text, 3));
        assert!(!cache.is_clean(&text, 1));
        assert!(!cache.is_clean(&"y".repeat(300), 3));
    }
}
