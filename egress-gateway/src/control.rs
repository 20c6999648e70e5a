//! The gateway's side of the admin API: the bottles it serves listed, attached and
//! detached at run time, and reloaded. A bottle attached at run time is kept in
//! `<state_dir>/bottles/<name>.json` (the normalised request) and attached again at the
//! next start; in between its pinned programs refuse its connections.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use anyhow::Context;

use crate::{
    admin::{self, AttachSpec, BottleControl, BottleInfo, BottleSource, ControlError, ReloadFailure, ReloadReport},
    app::Gateway,
    bpf, cgroup, config,
};

/// Run-time bottles on disk: one JSON record each, written atomically, root-only.
pub struct RuntimeStore {
    dir: PathBuf,
}

impl RuntimeStore {
    pub fn new(state_dir: &Path) -> Self {
        RuntimeStore { dir: state_dir.join("bottles") }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    pub fn save(&self, name: &str, record: &[u8]) -> anyhow::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let tmp = self.dir.join(format!(".{name}.json.tmp"));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(record)?;
        f.sync_all()?;
        fs::rename(&tmp, self.path(name)).with_context(|| format!("writing {}", self.path(name).display()))
    }

    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        match fs::remove_file(self.path(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.path(name).display()))
            }
            _ => Ok(()),
        }
    }

    /// Every kept bottle, read back through the request's validation; a record that no
    /// longer validates is reported with its file, and skipped (its bottle stays pinned,
    /// so refused).
    pub fn load_all(&self) -> Vec<Result<(config::Bottle, AttachSpec), String>> {
        let Ok(entries) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        paths
            .into_iter()
            .map(|path| {
                let bytes = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                admin::api::parse_record(&bytes).map_err(|e| format!("{}: {}", path.display(), e.error))
            })
            .collect()
    }

    /// Every kept bottle that still validates (for `status`, which runs without the
    /// gateway).
    pub fn bottles(&self) -> Vec<config::Bottle> {
        self.load_all().into_iter().filter_map(|r| r.ok().map(|(b, _)| b)).collect()
    }

    /// The kept bottle named `name`, for commands that run without the gateway (`exec`).
    pub fn find(&self, name: &str) -> Option<config::Bottle> {
        let bytes = fs::read(self.path(name)).ok()?;
        admin::api::parse_record(&bytes).ok().map(|(b, _)| b)
    }
}

/// Creates and removes a file in `dir`: what the stores and the CA need of it.
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".readyz-{}", std::process::id()));
    fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&probe)?;
    fs::remove_file(&probe)
}

/// A bottle by name: from the configuration, else one attached at run time.
pub fn find_bottle(config: &config::Config, name: &str) -> anyhow::Result<config::Bottle> {
    if let Some(b) = config.bottle(name) {
        return Ok(b.clone());
    }
    RuntimeStore::new(&config.state_dir)
        .find(name)
        .with_context(|| format!("no bottle named {name:?} in the configuration or attached at run time"))
}

impl BottleControl for Gateway {
    fn list(&self) -> Vec<BottleInfo> {
        self.served()
            .into_iter()
            .map(|s| {
                let mut info = BottleInfo::new(&s.state.config, s.source, s.state.has_inline_routes());
                let pins = bpf::PinLayout::new(&self.config).bottle_dir(&s.state.config.name);
                info.attached = pins.join("egress_connect4").exists();
                info.processes = cgroup::bottle_path(&self.config, &s.state.config)
                    .map(|p| cgroup::processes(&p).len())
                    .unwrap_or(0);
                info
            })
            .collect()
    }

    async fn attach(&self, bottle: config::Bottle, spec: AttachSpec) -> Result<BottleInfo, ControlError> {
        let name = bottle.name.clone();
        let state = self.attach_runtime(bottle, spec).await?;
        tracing::info!(bottle = %name, "bottle attached at run time");
        let mut info = BottleInfo::new(&state.config, BottleSource::Runtime, state.has_inline_routes());
        info.attached = true;
        Ok(info)
    }

    async fn detach(&self, name: &str, force: bool) -> Result<(), ControlError> {
        self.detach_runtime(name, force).await
    }

    async fn readiness(&self) -> admin::Readiness {
        let served = self.served();
        let mut problems = Vec::new();
        for s in &served {
            let bottle = &s.state.config;
            let attached = cgroup::bottle_path(&self.config, bottle)
                .and_then(|dir| bpf::verify_attached(&self.config, bottle, &dir));
            if let Err(e) = attached {
                problems.push(format!("bottle {}: {e:#}", bottle.name));
            }
        }
        if let Err(e) = probe_writable(&self.config.state_dir) {
            problems.push(format!("state directory {}: {e}", self.config.state_dir.display()));
        }
        admin::Readiness::from_problems(served.len(), problems)
    }

    fn metrics(&self) -> String {
        let layout = bpf::PinLayout::new(&self.config);
        let bottles = self
            .bottles()
            .iter()
            .map(|b| {
                // Unreadable counters are exposed as such (egress_kernel_maps_readable 0),
                // never as zeros.
                let kernel = self.maps.counters(b.config.id).ok().map(|c| {
                    vec![
                        ("tcp_redirected".to_string(), c.tcp_redirected),
                        ("dns_redirected".to_string(), c.dns_redirected),
                        ("refused".to_string(), c.refused),
                        ("dropped".to_string(), c.dropped),
                        ("unix_refused".to_string(), c.unix_refused),
                    ]
                });
                crate::metrics::BottleSnapshot {
                    name: b.config.name.clone(),
                    attached: layout.bottle_dir(&b.config.name).join("egress_connect4").exists(),
                    open_connections: b.usage.open_connections() as u64,
                    buffered_bytes: b.usage.buffered.used(),
                    refused_connections: b.usage.refused_connections.load(std::sync::atomic::Ordering::Relaxed),
                    refused_budget: b.usage.refused_requests.load(std::sync::atomic::Ordering::Relaxed),
                    kernel,
                }
            })
            .collect();
        let snapshot =
            crate::metrics::Snapshot { version: env!("CARGO_PKG_VERSION"), commit: env!("EGRESS_GIT_COMMIT"), bottles };
        crate::metrics::global().render(&snapshot)
    }

    fn peer_bottle(&self, pid: u32) -> Option<String> {
        // The peer's cgroup v2 path as the gateway's cgroup namespace shows it; a peer
        // whose cgroup cannot be read is treated as bottled (fail closed).
        let unknown = || Some(format!("(cgroup of pid {pid} unreadable)"));
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return unknown() };
        let Some(own) = text.lines().find_map(|l| l.strip_prefix("0::")).map(|p| p.trim().to_string()) else {
            return unknown();
        };
        let Ok(root) = cgroup::root(&self.config) else { return unknown() };
        let peer = root.join(own.trim_start_matches('/'));
        self.bottles().into_iter().find_map(|b| {
            let dir = cgroup::bottle_path(&self.config, &b.config).ok()?;
            peer.starts_with(&dir).then(|| b.config.name.clone())
        })
    }

    async fn reload(&self) -> Result<ReloadReport, ControlError> {
        let mut report = ReloadReport::default();
        for (name, result) in self.reload_all() {
            match result {
                Ok(()) => report.reloaded.push(name),
                Err(error) => report.failed.push(ReloadFailure { bottle: name, error }),
            }
        }
        Ok(report)
    }
}
