//! Agent-controlled text made inert for a human's terminal: applied to every finding's
//! context and reason, which logs, proposals and the supervise console show. Every
//! control character (C0, DEL, C1), every format character (Unicode category Cf: bidi
//! embeddings, overrides and isolates, zero-width characters, tags, ...) and the
//! line/paragraph separators are shown as a visible escape (`\x1b`, `\u{202e}`; `\t`,
//! `\n`, `\r` for those three). Nothing else changes, so what is drawn is what is
//! measured.
//!
//! The gateway's `supervise::render` re-exports these: one rule for every place a human
//! reads agent text.
//!
//! A backslash is kept as is, so `inert` is idempotent (applying it twice, as the
//! proposal and the console both do, changes nothing the second time). A literal `\x1b`
//! typed by the agent therefore reads the same as an escaped ESC: both are inert.
use std::{borrow::Cow, fmt::Write};

/// Control, format (Cf) and separator characters, and every space but the ASCII one:
/// the ones `inert` escapes.
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || is_format(c) || matches!(c, '\u{2028}' | '\u{2029}') || is_unusual_space(c)
}

/// White space other than the ASCII space (and the controls): the no-break spaces
/// (U+00A0, U+202F), the Ogham, en/em and other typographic spaces (U+1680,
/// U+2000 to U+200A), the mathematical and ideographic spaces (U+205F, U+3000), and
/// the Braille blank and Hangul fillers that render as blanks. Shown escaped so that
/// agent text cannot pass as blank room or pad a field to push the gateway's text away.
fn is_unusual_space(c: char) -> bool {
    matches!(
        c,
        '\u{00A0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200A}'
                | '\u{202F}'
                | '\u{205F}'
                | '\u{3000}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{FFA0}'
                | '\u{115F}'
                | '\u{1160}'
    )
}

/// Unicode general category Cf (format), Unicode 15.1.
fn is_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}'
        | '\u{0600}'..='\u{0605}'
        | '\u{061C}'
        | '\u{06DD}'
        | '\u{070F}'
        | '\u{0890}'..='\u{0891}'
        | '\u{08E2}'
        | '\u{180E}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}'
        | '\u{FFF9}'..='\u{FFFB}'
        | '\u{110BD}'
        | '\u{110CD}'
        | '\u{13430}'..='\u{1343F}'
        | '\u{1BCA0}'..='\u{1BCA3}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0001}'
        | '\u{E0020}'..='\u{E007F}')
}

/// `text` with every control, format and bidi character shown as a visible escape.
/// Borrowed when there is none (the common case).
pub fn inert(text: &str) -> Cow<'_, str> {
    let Some(first) = text.find(is_unsafe) else { return Cow::Borrowed(text) };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && is_unsafe(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `inert`, as an owned string (for struct fields).
pub fn inert_string(text: &str) -> String {
    inert(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_is_escaped_visibly() {
        // C0 (ESC, BEL, BS, NUL), DEL, tab and line breaks.
        assert_eq!(inert("a\x1b[2Jb\x07\x08\0\x7f"), "a\\x1b[2Jb\\x07\\x08\\x00\\x7f");
        assert_eq!(inert("x\ty\r\nz"), "x\\ty\\r\\nz");
        // C1 controls: CSI (U+009B), OSC (U+009D), NEL (U+0085).
        assert_eq!(inert("\u{9b}2J\u{9d}52;c;\u{85}"), "\\u{9b}2J\\u{9d}52;c;\\u{85}");
        // Bidi embeddings, overrides, isolates, marks.
        for c in ['\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}']
            .into_iter()
            .chain(['\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}'])
        {
            let got = inert(&format!("a{c}b")).into_owned();
            assert_eq!(got, format!("a\\u{{{:x}}}b", c as u32));
        }
        // No-break and other unusual spaces.
        for c in ['\u{A0}', '\u{202F}', '\u{2003}', '\u{3000}', '\u{2800}', '\u{3164}'] {
            assert_eq!(inert(&format!("a{c}b")), format!("a\\u{{{:x}}}b", c as u32));
        }
        assert_eq!(inert("a b"), "a b", "the ASCII space stays");
        // Zero-width and other format characters, tags, separators.
        for c in ['\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}', '\u{AD}', '\u{E0041}', '\u{2028}'] {
            let got = inert(&format!("a{c}b")).into_owned();
            assert!(got.starts_with("a\\u{") && got.ends_with("}b") && got.is_ascii(), "{got:?}");
        }
    }

    #[test]
    fn a_result_has_nothing_unsafe_left_and_a_second_pass_changes_nothing() {
        let hostile =
            "POST trusted.example/v1/send\r\x1b[1A\x1b[2K\x1b]0;title\x07\x1b]52;c;aGk=\x1b\\\u{202e}txt.exe\u{9b}";
        let once = inert(hostile);
        assert!(!once.contains(is_unsafe), "{once:?}");
        assert!(once.contains("\\x1b[1A") && once.contains("\\u{202e}"), "{once:?}");
        assert_eq!(inert(&once), once);
    }

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        for plain in ["api.example.test/v1/send?q=1", "déjà vu 😀 — ok", "key=******** \\x1b literal", ""] {
            assert!(matches!(inert(plain), Cow::Borrowed(p) if p == plain));
        }
    }
}
