//! The one place where outbound findings and the route's `outbound_on_match` become what
//! happens to the request or WebSocket message that carried them. Pure.
use crate::{
    dlp::{Finding, Severity},
    policy::OnMatch,
};

/// What the message that was scanned can do, besides the route's policy.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub on_match: OnMatch,
    /// The bottle has a supervise queue.
    pub supervised: bool,
    /// It can wait for an operator: a request can, a WebSocket frame cannot.
    pub can_hold: bool,
    /// It can be rewritten: a binary WebSocket message cannot.
    pub can_rewrite: bool,
}

/// What to do with the scanned message.
#[derive(Debug)]
pub enum Action<'f> {
    /// Nothing blocking was found: send it as it is.
    Forward,
    /// Send it with these findings cut out (masked, or CRLF stripped).
    Redact(Vec<&'f Finding>),
    /// Ask the operator about this finding's value; scan again after an approval.
    Hold(&'f Finding),
    /// Refuse it: `reason` goes to the agent (after `egress DLP: `), `context` (the
    /// surroundings, the match masked) only to the log.
    Refuse { reason: String, context: String },
}

/// Blocking findings under the policy. A finding with no value (CRLF) or one redaction
/// cannot fix is never held; `redact` refuses what it cannot rewrite; `supervise` without
/// a queue, or on a message that cannot wait, acts as `block` (fail closed).
pub fn decide<'f>(findings: &'f [Finding], policy: Policy) -> Action<'f> {
    let blocking: Vec<&Finding> = findings.iter().filter(|f| f.severity == Severity::Block).collect();
    let Some(&first) = blocking.first() else { return Action::Forward };
    let refuse =
        |f: &Finding, why: &str| Action::Refuse { reason: format!("{}{why}", describe(f)), context: f.context.clone() };
    match policy.on_match {
        OnMatch::Block => refuse(first, ""),
        OnMatch::Supervise if !policy.supervised => {
            refuse(first, "; supervise is off for this bottle (supervise: {enabled: false}), so it acts as block")
        }
        OnMatch::Supervise if !policy.can_hold => refuse(first, "; a WebSocket message cannot wait for an operator"),
        OnMatch::Supervise => match blocking.iter().find(|f| f.matched.is_none() || !f.redactable) {
            Some(f) => refuse(f, "; not approvable"),
            None => Action::Hold(first),
        },
        OnMatch::Redact => match blocking.iter().find(|f| !f.redactable || !policy.can_rewrite) {
            Some(f) => refuse(f, "; cannot be redacted"),
            None => Action::Redact(blocking),
        },
    }
}

/// Counts each finding under what was done with the message (`egress_dlp_findings_total`):
/// `warn` for a warning, else `forward`, `redact`, `supervise` or `block`.
pub fn count(bottle: &str, findings: &[Finding], action: &Action<'_>) {
    let taken = match action {
        Action::Forward => "forward",
        Action::Redact(_) => "redact",
        Action::Hold(_) => "supervise",
        Action::Refuse { .. } => "block",
    };
    for f in findings {
        let act = if f.severity == Severity::Warn { "warn" } else { taken };
        crate::metrics::global().finding(bottle, detector(f), act);
    }
}

/// The detector's name: the reason's prefix (`token_patterns: GitHub ...`). Anything not
/// shaped like one is `other`, so no text of a message can become a metric label.
fn detector(f: &Finding) -> &str {
    if f.rule_id == crate::dlp::CRLF_RULE {
        return "crlf";
    }
    match f.reason.split_once(':') {
        Some((name, _))
            if !name.is_empty() && name.len() <= 32 && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') =>
        {
            name
        }
        _ => "other",
    }
}

/// `<detector reason> in <location>`: what the agent and the operator are told.
pub fn describe(f: &Finding) -> String {
    format!("{} in {}", f.reason, f.location)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlp::{Location, Secret};

    fn finding(location: Location, redactable: bool, value: Option<&str>, severity: Severity) -> Finding {
        Finding {
            rule_id: "r".into(),
            reason: "token_patterns: T".into(),
            location,
            span: (0, 1),
            context: "a ******** b".into(),
            severity,
            redactable,
            matched: value.map(Secret::new),
        }
    }

    fn policy(on_match: OnMatch) -> Policy {
        Policy { on_match, supervised: true, can_hold: true, can_rewrite: true }
    }

    fn reason(action: Action<'_>) -> String {
        match action {
            Action::Refuse { reason, context } => {
                assert_eq!(context, "a ******** b");
                reason
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn the_detector_label_is_the_reasons_prefix_or_other() {
        let mut f = finding(Location::Body, true, Some("v"), Severity::Block);
        assert_eq!(detector(&f), "token_patterns");
        f.reason = "known_secrets: value of X (raw)".into();
        assert_eq!(detector(&f), "known_secrets");
        f.reason = "Something the agent wrote: x".into();
        assert_eq!(detector(&f), "other");
        f.reason = "no colon at all".into();
        assert_eq!(detector(&f), "other");
        f.rule_id = crate::dlp::CRLF_RULE.into();
        assert_eq!(detector(&f), "crlf");
    }

    #[test]
    fn nothing_blocking_forwards_under_every_policy() {
        let warn = [finding(Location::Body, true, Some("v"), Severity::Warn)];
        for on_match in [OnMatch::Block, OnMatch::Redact, OnMatch::Supervise] {
            assert!(matches!(decide(&[], policy(on_match)), Action::Forward));
            assert!(matches!(decide(&warn, policy(on_match)), Action::Forward));
        }
    }

    #[test]
    fn each_policy_maps_a_value_finding() {
        let f = [finding(Location::Body, true, Some("v"), Severity::Block)];
        assert_eq!(reason(decide(&f, policy(OnMatch::Block))), "token_patterns: T in body");
        assert!(matches!(decide(&f, policy(OnMatch::Redact)), Action::Redact(v) if v.len() == 1));
        assert!(matches!(decide(&f, policy(OnMatch::Supervise)), Action::Hold(_)));
        let unsupervised = Policy { supervised: false, ..policy(OnMatch::Supervise) };
        assert!(reason(decide(&f, unsupervised)).contains("acts as block"));
        let frame = Policy { can_hold: false, ..policy(OnMatch::Supervise) };
        assert!(reason(decide(&f, frame)).contains("cannot wait"));
        let binary = Policy { can_rewrite: false, ..policy(OnMatch::Redact) };
        assert!(reason(decide(&f, binary)).contains("cannot be redacted"));
    }

    #[test]
    fn a_finding_without_a_value_or_unredactable_is_never_held() {
        // CRLF: no value, but strippable.
        let crlf = [finding(Location::Path, true, None, Severity::Block)];
        assert!(reason(decide(&crlf, policy(OnMatch::Supervise))).ends_with("not approvable"));
        assert!(matches!(decide(&crlf, policy(OnMatch::Redact)), Action::Redact(_)));
        // A value behind Unicode evasion, next to a plain one.
        let mixed = [
            finding(Location::Body, true, Some("v"), Severity::Block),
            finding(Location::HeaderName, false, Some("w"), Severity::Block),
        ];
        assert!(reason(decide(&mixed, policy(OnMatch::Supervise))).contains("in a header name; not approvable"));
        assert!(reason(decide(&mixed, policy(OnMatch::Redact))).contains("in a header name; cannot be redacted"));
        assert!(reason(decide(&mixed, policy(OnMatch::Block))).contains("in body"));
    }
}
