//! Host names as an exfiltration channel: wildcard routes allow any subdomain, so
//! `<encoded secret>.cdn.example` would carry data out through DNS queries, SNI and Host.
//! A label that looks like encoded data is a block that redaction cannot fix, and a name
//! that may carry data is never logged as is.
use super::{Engine, Location, NoneSafe, Selection, shannon};

/// Longest label a real host name in an allowed wildcard zone plausibly has; longer ones
/// are how DNS tunnels carry data.
const MAX_PLAIN_LABEL: usize = 40;
/// Shannon entropy (bits per character) above which a long label looks like encoded data.
const MAX_LABEL_ENTROPY: f64 = 4.0;
const ENTROPY_MIN_LEN: usize = 20;

/// A label of `name` that looks like smuggled data (very long, or long and random).
pub fn suspicious_label(name: &str) -> Option<&str> {
    name.split('.').find(|label| {
        label.len() > MAX_PLAIN_LABEL || (label.len() >= ENTROPY_MIN_LEN && shannon(label) > MAX_LABEL_ENTROPY)
    })
}

/// Whether `name` may carry data out: a label that looks encoded, or a token or known
/// secret anywhere in it. Such a name is refused (DNS, SNI, Host, CONNECT).
pub fn carries_data(engine: &Engine, name: &str) -> bool {
    let mut findings = Vec::new();
    let all = Selection { token_patterns: true, known_secrets: true, entropy: false };
    engine.scan_surface(name, Location::Host, all, &NoneSafe, &mut findings);
    suspicious_label(name).is_some() || !findings.is_empty()
}

/// `name` as it may be logged: withheld when it may carry data.
pub fn loggable(engine: &Engine, name: &str) -> String {
    if suspicious_label(name).is_some() {
        format!("(withheld: {} characters that may carry data)", name.len())
    } else {
        engine.scrub(name, Location::Host).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlp::KnownSecrets;

    #[test]
    fn ordinary_names_pass_and_data_labels_are_caught() {
        for ok in ["api.upstream.test", "files.pythonhosted.org", "us-east-1.s3.amazonaws.com", "x.cdn.upstream.test"] {
            assert_eq!(suspicious_label(ok), None, "{ok}");
        }
        let long = format!("{}.cdn.upstream.test", "a".repeat(45));
        assert!(suspicious_label(&long).is_some());
        // base32 of a secret, short enough to pass the length check.
        assert!(suspicious_label("mfrggzdfmztwq2lknnwg23tpobyxe43u.cdn.upstream.test").is_some());
    }

    #[test]
    fn names_carrying_data_are_never_logged() {
        let secret = "hunter2-but-longer-99";
        let engine = Engine::new(KnownSecrets::new([("EGRESS_TOKEN_A".into(), secret.into())], 12), vec![]).unwrap();
        assert_eq!(loggable(&engine, "api.upstream.test"), "api.upstream.test");
        assert!(!loggable(&engine, &format!("{secret}.evil.test")).contains("hunter2"));
        assert_eq!(engine.scrub("/repos/x", Location::Path), "/repos/x");
        assert_eq!(engine.scrub(&format!("/repos/{secret}/x"), Location::Path), "/repos/********/x");
        assert!(loggable(&engine, "mfrggzdfmztwq2lknnwg23tpobyxe43u.evil.test").starts_with("(withheld"));
        assert!(carries_data(&engine, &format!("{secret}.cdn.upstream.test")), "a known secret, low entropy");
        assert!(!carries_data(&engine, "x.cdn.upstream.test"));
    }
}
