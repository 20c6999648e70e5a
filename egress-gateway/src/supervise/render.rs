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
}
