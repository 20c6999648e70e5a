//! Data-loss prevention: the `egress-dlp` crate (detectors, scan, redact), re-exported so
//! the gateway names it `crate::dlp`, plus the `dlp scan` command line.
pub mod cli;

pub use egress_dlp::*;

#[cfg(test)]
mod tests {
    /// The scanner's copy of the inert rules must match the one supervise renders with:
    /// a finding's context is shown by both.
    #[test]
    fn inert_agrees_with_supervise_render_on_every_character() {
        for c in (0..=char::MAX as u32).filter_map(char::from_u32) {
            assert_eq!(super::inert::is_unsafe(c), crate::supervise::render::is_unsafe(c), "U+{:04X}", c as u32);
        }
        let hostile = "a\x1b[2J\u{202e}b\\x1b\t\r\n\u{9b}\u{E0041}c";
        assert_eq!(super::inert::inert(hostile), crate::supervise::render::inert(hostile));
    }
}
