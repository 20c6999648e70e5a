//! What a request targets, checked before any route is matched or any name resolved:
//! the host must be a plain DNS name or IP literal, and the path must mean the same to
//! every upstream, however many times it decodes it and whatever it makes of `;`.
//!
//! The path rule (see docs/security.md):
//! - it starts with `/` (or is `*`); no raw backslash (clients encode it);
//! - every `%` starts a two-hex-digit escape (no `%u002e`, no bare `%`);
//! - no `%25` that would form a new escape once decoded (`%252e`): a second decoding
//!   finds nothing new;
//! - decoded once, it is valid UTF-8 (overlong forms like `%c0%ae` are not) without
//!   control characters or look-alike dots and slashes (U+FF0E, U+2215, ...);
//! - no segment is `.` or `..` once decoded, with `/`, `\` *and* their escapes (`%2F`,
//!   `%5C`) taken as separators and `;` parameters removed (so `/..;/`, `/.%2e/`,
//!   `/a%2F..%2Fb` and `/..%5Cx` are all refused, whatever an upstream decodes).
//!
//! Encoded slashes and backslashes are otherwise data: npm's `/@scope%2fname` and
//! GitLab's `/projects/group%2Fproject` pass. Routes match the [`canonical_path`], in
//! which escapes of unreserved characters are decoded and other escapes upper-cased, so
//! `%2f` and `%2F` (or `%76` and `v`) cannot be used to slip past a route's prefix.

/// Why a path was refused: one line for the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRefusal(pub &'static str);

impl std::fmt::Display for PathRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Characters some servers fold into `.`, `/` or `\`.
const LOOKALIKES: &[char] = &['\u{FF0E}', '\u{FF0F}', '\u{FF3C}', '\u{2215}', '\u{2216}', '\u{2024}', '\u{2044}'];

/// Checks a request path (without the query) against the rule above.
pub fn check_path(path: &str) -> Result<(), PathRefusal> {
    if path == "*" {
        return Ok(());
    }
    if !path.starts_with('/') {
        return Err(PathRefusal("the path does not start with /"));
    }
    if path.contains('\\') {
        return Err(PathRefusal("the path contains a raw backslash (encode it as %5C)"));
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            decoded.push(bytes[i]);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (bytes.get(i + 1).and_then(hex), bytes.get(i + 2).and_then(hex)) else {
            return Err(PathRefusal("the path has a % that is not a two-digit escape (%u or a bare %)"));
        };
        decoded.push(h << 4 | l);
        i += 3;
    }
    // Encoded twice: a second decoding would change it. Checked on the decoded bytes, so
    // `%25` followed by an escape that decodes to a hex digit (`%250%66`) counts too.
    if decoded.windows(3).any(|w| w[0] == b'%' && hex(&w[1]).is_some() && hex(&w[2]).is_some()) {
        return Err(PathRefusal("the path is encoded twice (%25 followed by an escape)"));
    }
    let Ok(text) = std::str::from_utf8(&decoded) else {
        return Err(PathRefusal("the path does not decode to valid UTF-8 (overlong or broken escapes)"));
    };
    if text.chars().any(|c| c.is_control()) {
        return Err(PathRefusal("the path decodes to control characters"));
    }
    if text.chars().any(|c| LOOKALIKES.contains(&c)) {
        return Err(PathRefusal("the path has a character servers may read as . or /"));
    }
    for segment in text.split(['/', '\\']) {
        let base = segment.split(';').next().unwrap_or("");
        if base == "." || base == ".." {
            return Err(PathRefusal("the path has a dot segment (., .., or one hidden by ; or an escape)"));
        }
    }
    Ok(())
}

/// The form routes are matched on (`path` has passed [`check_path`]): escapes of
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded, every other escape in
/// upper-case hex. Equivalent for any upstream (RFC 3986 §6.2.2), and one spelling each.
pub fn canonical_path(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains('%') {
        return std::borrow::Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%').then(|| Some((hex(bytes.get(i + 1)?)?, hex(bytes.get(i + 2)?)?))).flatten();
        match escape {
            Some((h, l)) => {
                let byte = h << 4 | l;
                if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                    out.push(byte as char);
                } else {
                    out.push('%');
                    out.push(char::from(bytes[i + 1]).to_ascii_uppercase());
                    out.push(char::from(bytes[i + 2]).to_ascii_uppercase());
                }
                i += 3;
            }
            None => {
                // Not an escape (cannot happen after check_path): copy the character.
                let c = path[i..].chars().next().unwrap_or('%');
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

fn hex(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).map(|d| d as u8)
}

/// Whether `host` (lower-case, no port or brackets) is a DNS name made of letters,
/// digits, `-` and `_` labels, or an IP literal: anything else (`/`, `@`, spaces, empty
/// labels) could change what an upstream URI or a resolver makes of it.
pub fn is_valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_pass() {
        for p in [
            "/",
            "*",
            "/v1/chat/completions",
            "/a%20b/c%41",
            "/files/report.v2.txt",
            "/a;v=1/b",
            "/api;jsessionid=abc/x",
            "/v1/a%2ex",
            "/search/100%25",
            "/x/%25zz",
            "/caf%C3%A9",
            "/..foo/.bar/...",
            // npm scoped packages, GitLab project ids, GitHub refs with slashes.
            "/@types%2fnode",
            "/@babel%2Fcore/-/core-7.24.0.tgz",
            "/api/v4/projects/group%2Fsubgroup%2Fproject/repository/files/src%2Fmain.rs/raw",
            "/repos/octo/hello/git/ref/heads%2Ffeature%2Fx",
            "/a%5Cb",
        ] {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn paths_an_upstream_could_read_differently_are_refused() {
        for p in [
            "v1/x",
            "/v1/../admin",
            "/v1/./admin",
            "/v1/..",
            "/v1/..;/admin",
            "/v1/..;x=1/admin",
            "/v1/.;/admin",
            "/v1/%2e%2e/admin",
            "/v1/.%2E/admin",
            "/v1/..%3b/admin",
            "/v1/%252e%252e/admin",
            "/v1/%252fadmin",
            // Found by the path_check fuzz target: `%25`, `0`, `%66` decode to `%0f`.
            "/a/%250%66A66",
            "/a/%25%32%65",
            "/v1/%c0%ae%c0%ae/admin",
            "/v1/%u002e%u002e/admin",
            "/v1/%",
            "/v1/%2",
            "/v1/%zz",
            "/v1\\..\\admin",
            "/v1/%5c../admin",
            "/v1/..%5cadmin",
            "/v1%2f..%2fadmin",
            "/v1/%2e%2e%2Fadmin",
            "/v1/x%2F.%2Fy",
            "/v1/%00",
            "/v1/%0d%0a",
            "/v1/%ef%bc%8e%ef%bc%8e/admin",
            "/v1/%e2%88%95admin",
        ] {
            assert!(check_path(p).is_err(), "{p}");
        }
    }

    #[test]
    fn canonical_paths_decode_unreserved_escapes_and_upper_case_the_rest() {
        assert_eq!(canonical_path("/v1/models"), "/v1/models");
        assert_eq!(canonical_path("/%761/a%2ex%7e"), "/v1/a.x~");
        assert_eq!(canonical_path("/@types%2fnode"), "/@types%2Fnode");
        assert_eq!(canonical_path("/a%20b/caf%c3%a9"), "/a%20b/caf%C3%A9");
        assert_eq!(canonical_path("/search/100%25"), "/search/100%25");
    }

    #[test]
    fn hosts_are_plain_names_or_ip_literals() {
        for h in ["api.example.test", "a-b_c.test", "_egress.local", "127.0.0.2", "::1", "localhost"] {
            assert!(is_valid_host(h), "{h}");
        }
        for h in ["", "a..b", "evil.test/.allowed.test", "a@b.test", "a b.test", "a.test:x", ".a.test", "a%2e.test"] {
            assert!(!is_valid_host(h), "{h}");
        }
    }
}
