//! The admin socket: bottles attached and detached while the gateway runs, listed, and
//! their routes reloaded, over HTTP/1.1 + JSON on a root-only unix socket.
//!
//! `api` turns a request (method, path, body) into an `AdminRequest` or an error, with
//! no I/O; `server` binds the socket and serves it; `client` is the CLI's side. The
//! gateway's bottle registry implements `BottleControl`; this module never touches the
//! kernel, the cgroups or a credentials file.
pub mod api;
pub mod client;
pub mod server;

use std::{future::Future, path::PathBuf};

use serde::{Deserialize, Serialize};

pub use api::{AdminRequest, ApiError, AttachSpec, InlineRoutes};
pub use client::{AdminClient, ClientError};
pub use server::{AdminListener, ServerError};

use crate::config::{self, Problem};

/// What the gateway's bottle registry does for the admin API. Each operation must be
/// atomic: on any error nothing is changed.
pub trait BottleControl: Send + Sync + 'static {
    /// Every bottle the gateway serves, from gateway.yaml and attached at run time.
    fn list(&self) -> Vec<BottleInfo>;

    /// Attaches a bottle already validated on its own (`Bottle::from_raw`). Under the
    /// registry's lock the implementation calls `check_attach` (name and id free, reach
    /// checks against the state directory and the other bottles), loads the routes file
    /// (or takes `spec.inline_routes`), then attaches.
    fn attach(
        &self,
        bottle: config::Bottle,
        spec: AttachSpec,
    ) -> impl Future<Output = Result<BottleInfo, ControlError>> + Send;

    /// Detaches a bottle: the gateway stops serving it and its pins are removed. Refuses
    /// (`Conflict`) while processes run in it unless `force`: they would get direct egress.
    fn detach(&self, name: &str, force: bool) -> impl Future<Output = Result<(), ControlError>> + Send;

    /// Re-reads every bottle's routes (as SIGHUP does).
    fn reload(&self) -> impl Future<Output = Result<ReloadReport, ControlError>> + Send;

    /// Whether the gateway can serve every bottle now (`GET /readyz`).
    fn readiness(&self) -> impl Future<Output = Readiness> + Send;

    /// What `GET /metrics` answers: the counted metrics and the state read now.
    fn metrics(&self) -> String {
        crate::metrics::global().render(&crate::metrics::Snapshot::default())
    }

    /// The bottle whose cgroup holds process `pid`, if any: nothing inside a bottle may
    /// use the admin socket, root included.
    fn peer_bottle(&self, pid: u32) -> Option<String> {
        let _ = pid;
        None
    }
}

/// The answer to `GET /readyz`: ready when nothing is wrong.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Bottles served.
    pub bottles: usize,
    /// One line per thing that is not as it should be (a bottle whose programs are not
    /// attached to its cgroup, a state directory that cannot be written).
    pub problems: Vec<String>,
}

impl Readiness {
    pub fn from_problems(bottles: usize, problems: Vec<String>) -> Self {
        Readiness { ready: problems.is_empty(), bottles, problems }
    }
}

/// Why an operation was refused; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// 404: no such bottle.
    #[error("no bottle named {0:?}")]
    NotFound(String),
    /// 409: the name (or its kernel id) is taken, processes still run in the bottle...
    #[error("{0}")]
    Conflict(String),
    /// 400: the bottle is invalid; `problems` name the fields.
    #[error("{message}")]
    Invalid { message: String, problems: Vec<Problem> },
    /// 500: attaching or detaching failed in the kernel or the file system.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ControlError {
    pub fn invalid(problems: Vec<Problem>) -> Self {
        ControlError::Invalid { message: "invalid bottle".into(), problems }
    }
}

/// A routes file that does not load: its problems, under `routes` (the file is named in
/// the message).
impl From<config::ConfigError> for ControlError {
    fn from(e: config::ConfigError) -> Self {
        let problems = e
            .problems
            .into_iter()
            .map(|p| Problem {
                field: if p.field.is_empty() { "routes".into() } else { format!("routes.{}", p.field) },
                position: p.position,
                message: p.message,
            })
            .collect();
        ControlError::Invalid { message: format!("routes file {} is invalid", e.file.display()), problems }
    }
}

/// The checks of a bottle against the ones the gateway already serves, to be run by
/// `BottleControl::attach` under the registry's lock: a duplicate name, an id that
/// collides, a cgroup another bottle has (`Conflict`), the bottle limit, and the reach
/// checks of gateway.yaml (`Invalid`).
pub fn check_attach(
    state_dir: &std::path::Path,
    existing: &[config::Bottle],
    new: &config::Bottle,
) -> Result<(), ControlError> {
    if existing.iter().any(|b| b.name == new.name) {
        return Err(ControlError::Conflict(format!("a bottle named {:?} is already attached", new.name)));
    }
    if let Some(other) = existing.iter().find(|b| b.id == new.id) {
        return Err(ControlError::Conflict(format!(
            "the kernel id of {:?} collides with bottle {:?}'s: choose another name",
            new.name, other.name
        )));
    }
    // Two bottles' programs on one cgroup would make attribution ambiguous.
    if let Some(other) = existing.iter().find(|b| b.cgroup == new.cgroup) {
        return Err(ControlError::Conflict(format!("cgroup {} is bottle {:?}'s", new.cgroup.display(), other.name)));
    }
    if existing.len() >= egress_common::MAX_BOTTLES as usize {
        return Err(ControlError::Conflict(format!("at most {} bottles", egress_common::MAX_BOTTLES)));
    }
    let problems = config::check_added_bottle(state_dir, existing, new);
    if problems.is_empty() { Ok(()) } else { Err(ControlError::invalid(problems)) }
}

/// Where a bottle comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BottleSource {
    /// gateway.yaml.
    Config,
    /// Attached through the admin socket.
    Runtime,
}

/// One bottle as `GET /v1/bottles` shows it. Paths only: never a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BottleInfo {
    pub name: String,
    pub source: BottleSource,
    pub cgroup: PathBuf,
    /// `new` or the namespace file; absent: the gateway's namespace.
    pub netns: Option<String>,
    /// The routes file; absent with `routes_inline` false: everything denied.
    pub routes: Option<PathBuf>,
    pub routes_inline: bool,
    pub credentials_file: Option<PathBuf>,
    pub supervise: bool,
    pub mounts: Vec<PathBuf>,
    /// The programs are attached (pinned) to the cgroup.
    pub attached: bool,
    /// Processes in the bottle's cgroup.
    pub processes: usize,
}

impl BottleInfo {
    /// The static part from the bottle's configuration; `attached` and `processes` are
    /// the registry's to fill in.
    pub fn new(bottle: &config::Bottle, source: BottleSource, routes_inline: bool) -> Self {
        BottleInfo {
            name: bottle.name.clone(),
            source,
            cgroup: bottle.cgroup.clone(),
            netns: bottle.netns.as_ref().map(|n| match n {
                config::Netns::New => "new".to_string(),
                config::Netns::Path(p) => p.display().to_string(),
            }),
            routes: bottle.routes.clone(),
            routes_inline,
            credentials_file: bottle.credentials_file.clone(),
            supervise: bottle.supervise.is_some(),
            mounts: bottle.mounts.clone(),
            attached: false,
            processes: 0,
        }
    }
}

/// What `POST /v1/reload` did, bottle by bottle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Bottles whose routes were reloaded.
    pub reloaded: Vec<String>,
    /// Bottles whose routes did not load: their previous policy stays.
    pub failed: Vec<ReloadFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadFailure {
    pub bottle: String,
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Bottle, PathBase, Problems, RawBottle};

    fn bottle(name: &str, cgroup: &str) -> Bottle {
        let raw = RawBottle {
            name: name.into(),
            cgroup: cgroup.into(),
            netns: None,
            routes: None,
            credentials_file: None,
            supervise: None,
            mounts: vec!["/home/x".into()],
            unix_sockets: Default::default(),
        };
        Bottle::from_raw(raw, "", PathBase::AbsoluteOnly, &mut Problems::new("t"))
    }

    #[test]
    fn check_attach_conflicts_and_reach() {
        let state = std::path::Path::new("/var/lib/eg");
        let a = bottle("a", "egress/a");
        assert!(check_attach(state, &[], &a).is_ok());
        let dup = check_attach(state, std::slice::from_ref(&a), &bottle("a", "egress/other"));
        assert!(matches!(dup, Err(ControlError::Conflict(m)) if m.contains("already attached")));
        let same_cgroup = check_attach(state, std::slice::from_ref(&a), &bottle("b", "egress/a"));
        assert!(matches!(same_cgroup, Err(ControlError::Conflict(m)) if m.contains("cgroup egress/a")));
        let mut reach = bottle("c", "egress/c");
        reach.mounts = vec!["/var".into()];
        match check_attach(state, std::slice::from_ref(&a), &reach) {
            Err(ControlError::Invalid { problems, .. }) => assert_eq!(problems[0].field, "mounts[0]"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn routes_errors_are_prefixed() {
        let e = crate::policy::Routes::parse(std::path::Path::new("/etc/r.yaml"), "routes: [{host: 'bad host'}]\n")
            .unwrap_err();
        match ControlError::from(e) {
            ControlError::Invalid { message, problems } => {
                assert!(message.contains("/etc/r.yaml"), "{message}");
                assert!(problems[0].field.starts_with("routes.routes[0]"), "{problems:?}");
            }
            other => panic!("{other:?}"),
        }
    }
}
