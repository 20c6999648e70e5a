//! Arbitrary request paths and host names to the target checks (`policy/target.rs`): no
//! panic, and what is accepted means the same to every upstream: decoding it a second
//! time changes nothing, no segment is `.` or `..` (with `;` parameters removed), and
//! nothing decodes to a backslash, a control character or an encoded `/`. An accepted
//! host is a DNS name or an IP literal, with nothing that could end an authority.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use target::{check_path, is_valid_host};

/// The gateway's file, compiled here (the gateway's build needs the eBPF toolchain).
#[allow(dead_code)]
#[path = "../../egress-gateway/src/policy/target.rs"]
mod target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    path: &'a str,
    host: &'a str,
}

/// Percent-decodes the valid `%XX` escapes and leaves everything else as it is.
fn decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && let (Some(h), Some(l)) = (s.get(i + 1).and_then(|&b| hex(b)), s.get(i + 2).and_then(|&b| hex(b)))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

fuzz_target!(|input: Input<'_>| {
    if check_path(input.path).is_ok() && input.path != "*" {
        assert!(input.path.starts_with('/'));
        let once = decode(input.path.as_bytes());
        assert_eq!(decode(&once), once, "a second decoding changes {:?}", input.path);
        // An encoded `/` is data since issue 13 (npm's `@scope%2fname`): routes match on a
        // canonical form that keeps it; only dot segments after decoding are refused.
        let text = std::str::from_utf8(&once).expect("decodes to UTF-8");
        assert!(!text.contains('\\') && !text.chars().any(char::is_control), "{:?}", input.path);
        for segment in text.split('/') {
            let base = segment.split(';').next().unwrap_or("");
            assert!(base != "." && base != "..", "dot segment in {:?}", input.path);
        }
    }
    if is_valid_host(input.host) && input.host.parse::<std::net::IpAddr>().is_err() {
        assert!(!input.host.is_empty() && input.host.len() <= 253);
        assert!(!input.host.contains(['/', '@', ':', '?', '#', ' ', '%', '[', ']']), "{:?}", input.host);
    }
});
