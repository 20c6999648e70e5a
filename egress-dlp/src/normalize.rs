//! Undoing the tricks that hide a token from a pattern: invisible and bidi characters,
//! fullwidth forms, JSON `\u` escapes and percent-encoding.

/// Characters removed before matching: zero-width, word joiners, BOM, soft hyphen, bidi
/// controls and Unicode tag characters.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' |
        '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{E0000}'..='\u{E007F}')
}

/// Fullwidth ASCII forms (U+FF01..U+FF5E) to ASCII.
fn fold_fullwidth(c: char) -> char {
    match c {
        '\u{FF01}'..='\u{FF5E}' => char::from_u32(c as u32 - 0xFF01 + 0x21).unwrap_or(c),
        '\u{3000}' => ' ',
        _ => c,
    }
}

/// True when `normalize` would return the text unchanged (the common case), checked
/// without allocating.
pub fn is_plain(text: &str) -> bool {
    !text.contains('%') && !text.contains("\\u") && (text.is_ascii() || !has_evasion_chars(text))
}

/// Whether `text` has a character `normalize` removes or folds. Only characters whose
/// UTF-8 starts with one of a few lead bytes can be one (U+00AD, U+180E, U+20xx, U+3000,
/// U+FExx/FFxx, tags): the rest of the text, accented letters and emoji included, is
/// skipped byte by byte without decoding.
fn has_evasion_chars(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(offset) = bytes[i..].iter().position(|b| matches!(b, 0xC2 | 0xE1 | 0xE2 | 0xE3 | 0xEF | 0xF3)) {
        let at = i + offset;
        // A lead byte is never a continuation byte, so `at` starts a character.
        let c = text[at..].chars().next().expect("a lead byte starts a character");
        if is_invisible(c) || fold_fullwidth(c) != c {
            return true;
        }
        i = at + 1;
    }
    false
}

/// The text as a pattern should see it.
pub fn normalize(text: &str) -> String {
    // Plain ASCII without escapes is already what a pattern should see.
    if is_plain(text) {
        return text.to_string();
    }
    let unescaped = json_unescape(text);
    let decoded = percent_decode(&unescaped);
    decoded.chars().filter(|c| !is_invisible(*c)).map(fold_fullwidth).collect()
}

/// Decodes `%XX` sequences (invalid ones stay as they are).
pub fn percent_decode(text: &str) -> String {
    if !text.contains('%') {
        return text.to_string();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes JSON `\uXXXX` escapes (surrogate pairs included) and leaves the rest.
fn json_unescape(text: &str) -> String {
    if !text.contains("\\u") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("\\u") {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let unit = after.get(..4).and_then(|h| u16::from_str_radix(h, 16).ok());
        match unit {
            Some(hi @ 0xD800..=0xDBFF) => {
                let lo = after
                    .get(4..6)
                    .filter(|s| *s == "\\u")
                    .and_then(|_| after.get(6..10))
                    .and_then(|h| u16::from_str_radix(h, 16).ok());
                match lo.and_then(|lo| char::decode_utf16([hi, lo]).next()).and_then(Result::ok) {
                    Some(c) => {
                        out.push(c);
                        rest = &after[10..];
                    }
                    None => {
                        out.push_str("\\u");
                        rest = after;
                    }
                }
            }
            Some(u) => {
                out.push(char::from_u32(u as u32).unwrap_or('\u{FFFD}'));
                rest = &after[4..];
            }
            None => {
                out.push_str("\\u");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_invisible_and_folds_fullwidth() {
        assert_eq!(normalize("gh\u{200B}p_ab\u{202E}c"), "ghp_abc");
        assert_eq!(normalize("ｇｈｐ＿"), "ghp_");
        assert_eq!(normalize("a\u{E0041}b"), "ab");
    }

    #[test]
    fn the_lead_byte_shortcut_agrees_with_the_definition_for_every_character() {
        for c in (0x80..=0x10FFFFu32).filter_map(char::from_u32) {
            let changed = is_invisible(c) || fold_fullwidth(c) != c;
            assert_eq!(has_evasion_chars(&format!("é{c}x")), changed, "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn non_ascii_text_without_evasion_is_plain() {
        assert!(is_plain("déjà vu 😀 — ok"));
        assert!(!is_plain("gh\u{200B}p_"));
        assert!(!is_plain("ｇｈｐ"));
        assert!(!is_plain("a\u{3000}b"));
    }

    #[test]
    fn decodes_json_and_percent_escapes() {
        assert_eq!(normalize("\\u0067hp_x"), "ghp_x");
        assert_eq!(normalize("\\ud83d\\ude00"), "😀");
        assert_eq!(normalize("gh%70_x%zz%4"), "ghp_x%zz%4");
        assert_eq!(percent_decode("a%0D%0Ab"), "a\r\nb");
    }
}
