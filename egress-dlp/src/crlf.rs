//! CRLF injection, as bot-bottle's sidecar saw it: a CR LF pair (literal or
//! percent-encoded, `%0d%0a` in any case) in the request line or a header value is
//! smuggling-shaped; an encoded newline alone inside a query value (`?text=a%0Ab`) is
//! data. A path is not data, so any CR or LF in it counts. A body is length-delimited
//! and never checked. `redact` scrubs what would be refused instead of refusing.

/// How strict a surface is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The path: any CR or LF, literal or encoded.
    Path,
    /// The query or a header value: a CR LF pair, or a literal CR or LF (which no
    /// parser lets through, so one that got here is an attack on a later parser).
    Value,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Unit {
    Cr,
    Lf,
}

/// The CR/LF unit at the start of `rest` and its length, literal or percent-encoded.
fn unit_at(rest: &[u8]) -> Option<(Unit, usize, bool)> {
    match rest {
        [b'\r', ..] => Some((Unit::Cr, 1, true)),
        [b'\n', ..] => Some((Unit::Lf, 1, true)),
        [b'%', b'0', c, ..] if c.eq_ignore_ascii_case(&b'd') => Some((Unit::Cr, 3, false)),
        [b'%', b'0', c, ..] if c.eq_ignore_ascii_case(&b'a') => Some((Unit::Lf, 3, false)),
        _ => None,
    }
}

/// One pass: the byte ranges to cut.
fn cuts(text: &[u8], surface: Surface) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let Some((unit, len, literal)) = unit_at(&text[i..]) else {
            i += 1;
            continue;
        };
        if unit == Unit::Cr
            && let Some((Unit::Lf, next, _)) = unit_at(&text[i + len..])
        {
            out.push((i, i + len + next));
            i += len + next;
            continue;
        }
        if surface == Surface::Path || literal {
            out.push((i, i + len));
        }
        i += len;
    }
    out
}

/// Whether `text` carries a CR/LF that `surface` refuses.
pub fn found(text: &str, surface: Surface) -> bool {
    !cuts(text.as_bytes(), surface).is_empty()
}

/// `text` without what `found` refuses, cut until none is left (cutting `%0d%0a` out
/// of `%0%0d%0ad%0a` makes a new one).
pub fn strip(text: &str, surface: Surface) -> std::borrow::Cow<'_, str> {
    let mut current = std::borrow::Cow::Borrowed(text);
    loop {
        let cut = cuts(current.as_bytes(), surface);
        if cut.is_empty() {
            return current;
        }
        let mut out = String::with_capacity(current.len());
        let mut at = 0;
        for (start, end) in cut {
            // Cuts are on ASCII bytes, so on character boundaries.
            out.push_str(&current[at..start]);
            at = end;
        }
        out.push_str(&current[at..]);
        current = std::borrow::Cow::Owned(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_smuggling_shaped_a_lone_encoded_newline_in_a_value_is_data() {
        for text in ["a%0d%0aSet-Cookie: x", "a%0D%0Ab", "a\r\nb", "a%0d\nb", "a\r%0Ab"] {
            assert!(found(text, Surface::Value), "{text:?}");
            assert!(found(text, Surface::Path), "{text:?}");
        }
        for text in ["text=a%0Ab", "a%0db", "x=%0a%0a", "a%0a%0db", "plain", "%0", "%0g"] {
            assert!(!found(text, Surface::Value), "{text:?}");
        }
        assert!(found("a\nb", Surface::Value), "a literal newline is never data");
        assert!(found("/a%0Ab", Surface::Path));
        assert!(found("/a%0db", Surface::Path));
        assert!(!found("/a/b%2Fc", Surface::Path));
    }

    #[test]
    fn strip_removes_what_found_refuses_and_nothing_else() {
        assert_eq!(strip("a%0d%0aSet-Cookie: x", Surface::Value), "aSet-Cookie: x");
        assert_eq!(strip("text=a%0Ab&x=%0d%0a1", Surface::Value), "text=a%0Ab&x=1");
        assert_eq!(strip("/a%0Ab%0dc", Surface::Path), "/abc");
        // A cut that makes a new pair is cut again.
        assert_eq!(strip("%0%0d%0ad%0a", Surface::Value), "");
        assert!(matches!(strip("plain", Surface::Value), std::borrow::Cow::Borrowed(_)));
        for text in ["%0%0d%0ad%0a", "x%0d%0a%0d%0ay", "/%0%0a%0aa"] {
            for surface in [Surface::Path, Surface::Value] {
                assert!(!found(&strip(text, surface), surface), "{text:?}");
            }
        }
    }
}
