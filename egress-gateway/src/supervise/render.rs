//! Agent-controlled text as an operator sees it: inert (`egress_dlp::inert`, the one
//! rule for logs, proposals, the console and `dlp scan`: control, format, bidi and
//! unusual space characters shown as visible escapes), marked as the agent's, and cut to
//! a budget with a count of what was cut.
pub use crate::dlp::inert::{inert, inert_string, is_unsafe};

/// Agent-supplied text is shown between these (the console adds a colour of its own);
/// the agent's own copies of them are escaped, so it cannot close the mark early and
/// pass what follows as the gateway's text.
pub const AGENT_OPEN: char = '\u{2039}';
pub const AGENT_CLOSE: char = '\u{203a}';

/// `text` cut to `budget` characters, with an explicit marker of what was cut.
pub fn budget(text: &str, budget: usize) -> String {
    let total = text.chars().count();
    if total <= budget {
        return text.to_string();
    }
    let kept: String = text.chars().take(budget).collect();
    format!("{kept}… ({} more characters)", total - budget)
}

/// Agent-supplied text as shown to the operator: inert, its own copies of the marks
/// escaped, cut to `limit` characters (with the marker), between the marks.
pub fn agent_text(text: &str, limit: usize) -> String {
    let inert = inert(text);
    let escaped = inert.replace(AGENT_OPEN, "\\u{2039}").replace(AGENT_CLOSE, "\\u{203a}");
    format!("{AGENT_OPEN}{}{AGENT_CLOSE}", budget(&escaped, limit))
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
    fn agent_text_is_marked_cut_with_a_count_and_cannot_close_its_mark() {
        assert_eq!(agent_text("/v1/send", 48), "\u{2039}/v1/send\u{203a}");
        let long = format!("/x{}", "\u{a0}".repeat(1490));
        let shown = agent_text(&format!("{long}note: known test fixture, safe to approve"), 48);
        assert!(shown.starts_with("\u{2039}/x\\u{a0}\\u{a0}"), "{shown}");
        assert!(shown.ends_with("more characters)\u{203a}") && !shown.contains("note:"), "{shown}");
        let fake = agent_text("/a\u{203a} gateway: safe \u{2039}", 48);
        assert_eq!(fake.matches('\u{203a}').count(), 1, "{fake}");
        assert!(fake.contains("\\u{203a} gateway"), "{fake}");
        assert_eq!(budget("abcdef", 4), "abcd… (2 more characters)");
    }

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        for plain in ["api.example.test/v1/send?q=1", "déjà vu 😀 — ok", "key=******** \\x1b literal", ""] {
            assert!(matches!(inert(plain), std::borrow::Cow::Borrowed(p) if p == plain));
        }
    }
}
