//! Notification: `notify_command` (an argv, run without a shell) is started for each new
//! proposal with the proposal's JSON (never the raw value) on its standard input. It is
//! killed after its timeout; a failure is logged and changes nothing about the hold. It
//! runs with a cleared environment (only `PATH`, `LANG` and `TZ` are kept): the gateway's
//! holds the credentials it injects (`EGRESS_TOKEN_*`), which no hook may see.
use std::{process::Stdio, time::Duration};

use tokio::{io::AsyncWriteExt, process::Command};

use super::protocol::Proposal;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the notification command inherits from the gateway's environment.
const KEPT_VARIABLES: &[&str] = &["PATH", "LANG", "TZ"];

#[derive(Debug, Clone)]
pub struct Notifier {
    pub argv: Vec<String>,
    pub timeout: Duration,
}

impl Notifier {
    /// Runs the command to completion (or its timeout); `Err` says what went wrong.
    pub async fn notify(&self, proposal: &Proposal) -> Result<(), String> {
        let (program, args) = self.argv.split_first().ok_or("notify_command is empty")?;
        // Inert text (no control, format or bidi character), not only JSON-escaped: the
        // receiver may well print a field to a terminal.
        let json = serde_json::to_vec(&proposal.inert()).map_err(|e| e.to_string())?;
        let mut child = Command::new(program)
            .args(args)
            .env_clear()
            .envs(std::env::vars_os().filter(|(k, _)| KEPT_VARIABLES.iter().any(|kept| k == kept)))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {program:?}: {e}"))?;
        let run = async {
            if let Some(mut stdin) = child.stdin.take() {
                // A command that does not read its input is not a failure.
                let _ = stdin.write_all(&json).await;
            }
            child.wait().await
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(format!("{program:?} exited with {status}")),
            Ok(Err(e)) => Err(format!("waiting for {program:?}: {e}")),
            Err(_) => Err(format!("{program:?} did not finish within {} s; killed", self.timeout.as_secs())),
        }
    }

    /// Starts the notification in the background; the hold does not wait for it.
    pub fn spawn(&self, proposal: &Proposal) {
        let (notifier, proposal) = (self.clone(), proposal.clone());
        tokio::spawn(async move {
            if let Err(e) = notifier.notify(&proposal).await {
                tracing::warn!(bottle = %proposal.bottle, proposal = %proposal.id, error = %e, "supervise notification failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::store::tests::{payload, temp_dir};

    fn notifier(argv: &[&str], timeout: Duration) -> Notifier {
        Notifier { argv: argv.iter().map(|s| s.to_string()).collect(), timeout }
    }

    #[tokio::test]
    async fn the_command_gets_the_proposal_json_on_stdin() {
        let out = temp_dir("notify").join("got.json");
        let p = super::super::protocol::Proposal::new("demo", payload("n.test"));
        let script = format!("cat > {}", out.display());
        notifier(&["sh", "-c", &script], DEFAULT_TIMEOUT).notify(&p).await.unwrap();
        let got: Proposal = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(got, p);
    }

    #[tokio::test]
    async fn the_notified_json_is_inert_not_only_escaped() {
        let out = temp_dir("notify-inert").join("got.json");
        let p = crate::supervise::store::tests::hostile_proposal("demo");
        let script = format!("cat > {}", out.display());
        notifier(&["sh", "-c", &script], DEFAULT_TIMEOUT).notify(&p).await.unwrap();
        let got: Proposal = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let has = crate::supervise::store::tests::has_unsafe;
        for field in
            [&got.payload.host, &got.payload.method, &got.payload.path, &got.payload.reason, &got.payload.context]
        {
            assert!(!has(field), "{field:?}");
        }
        assert!(got.payload.host.starts_with("trusted.example\\r\\x1b[1A"), "{}", got.payload.host);
    }

    #[tokio::test]
    async fn the_command_inherits_no_credential_or_other_variable() {
        let out = temp_dir("notify-env").join("env.txt");
        let p = super::super::protocol::Proposal::new("demo", payload("n.test"));
        let script = format!("env > {}", out.display());
        notifier(&["sh", "-c", &script], DEFAULT_TIMEOUT).notify(&p).await.unwrap();
        let env = std::fs::read_to_string(&out).unwrap();
        // The test runs under cargo, whose CARGO_* variables would show through.
        assert!(!env.contains("CARGO"), "{env}");
        let names: Vec<&str> = env.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
        assert!(names.iter().all(|n| KEPT_VARIABLES.contains(n) || ["PWD", "SHLVL", "_"].contains(n)), "{names:?}");
    }

    #[tokio::test]
    async fn failures_and_timeouts_are_reported() {
        let p = super::super::protocol::Proposal::new("demo", payload("n.test"));
        assert!(notifier(&["false"], DEFAULT_TIMEOUT).notify(&p).await.unwrap_err().contains("exited"));
        assert!(
            notifier(&["/nonexistent/notify"], DEFAULT_TIMEOUT).notify(&p).await.unwrap_err().contains("cannot start")
        );
        let slow = notifier(&["sleep", "30"], Duration::from_millis(200)).notify(&p).await.unwrap_err();
        assert!(slow.contains("killed"), "{slow}");
    }
}
