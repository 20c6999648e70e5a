//! The kernel programs from userspace: load them with a bottle's settings, attach them to
//! its cgroup, pin links and maps so they outlive the gateway (fail closed), and read the
//! maps the programs fill (original destinations, DNS clients, counters).
pub mod doctor;
mod links;
mod maps;
pub mod unix;

use std::{
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use aya::{
    Btf, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SockOps,
        links::{FdLink, PinnedLink},
    },
};
use egress_common::{globals, maps as names};

pub use maps::{KernelMaps, OrigDstError};

use crate::{cgroup, config};

/// The compiled eBPF object, built from `egress-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress-ebpf"));

/// Socket-address hooks, by program name (their attach type is in the ELF section).
const SOCK_ADDR_PROGRAMS: [&str; 10] = [
    "egress_connect4",
    "egress_connect6",
    "egress_sendmsg4",
    "egress_sendmsg6",
    "egress_recvmsg4",
    "egress_recvmsg6",
    "egress_getpeername4",
    "egress_getpeername6",
    "egress_bind4",
    "egress_bind6",
];
const SOCK_OPS_PROGRAM: &str = "egress_sockops";
const BACKSTOP_PROGRAM: &str = "egress_backstop";
/// Maps of earlier versions: those all bottles shared before each got its own (0010),
/// original destinations and DNS clients, and the counters before `unix_refused`.
const RETIRED_SHARED_MAPS: [&str; 3] = ["EGRESS_DST_V2", "EGRESS_DNS_V2", "EGRESS_COUNTERS"];
/// The maps each bottle has its own of, pinned in its pin directory.
const PER_BOTTLE_MAPS: [&str; 2] = [names::ORIG_DST, names::DNS_CLIENTS];

/// Where one gateway instance keeps its pins.
#[derive(Debug, Clone)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(config: &config::Config) -> Self {
        PinLayout { root: config.bpffs_dir.clone() }
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn bottle_dir(&self, bottle: &str) -> PathBuf {
        self.root.join("bottles").join(bottle)
    }

    /// Names of bottles that have pinned links (attached now, or left by a previous run).
    pub fn pinned_bottles(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.root.join("bottles")) else {
            return Vec::new();
        };
        let mut names: Vec<String> =
            entries.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect();
        names.sort();
        names
    }
}

/// Makes sure bpffs is mounted at the parent of the pin directory's mount point
/// (`/sys/fs/bpf`), mounting it when absent.
pub fn ensure_bpffs(config: &config::Config) -> anyhow::Result<()> {
    let mount_point = bpffs_mount_point(&config.bpffs_dir);
    if is_bpffs(&mount_point) {
        return Ok(());
    }
    fs::create_dir_all(&mount_point).with_context(|| format!("creating {}", mount_point.display()))?;
    nix::mount::mount(Some("bpf"), &mount_point, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
        .with_context(|| format!("mounting bpffs at {} (are you root?)", mount_point.display()))?;
    tracing::info!(path = %mount_point.display(), "mounted bpffs");
    Ok(())
}

/// The bpffs mount that holds `dir`: the nearest ancestor that is one, else `/sys/fs/bpf`.
fn bpffs_mount_point(dir: &Path) -> PathBuf {
    dir.ancestors().find(|p| is_bpffs(p)).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/sys/fs/bpf"))
}

pub fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    nix::sys::statfs::statfs(path).map(|s| s.filesystem_type().0 == BPF_FS_MAGIC).unwrap_or(false)
}

/// Loads the programs for `bottle`, attaches them to its cgroup (created if missing) and
/// pins the links, replacing any links a previous run pinned. The new links are attached
/// before the old ones are released, so the cgroup is never without a redirect.
pub fn attach_bottle(config: &config::Config, bottle: &config::Bottle) -> anyhow::Result<()> {
    let police_unix = match bottle.unix_sockets {
        config::UnixSockets::Policed(_) => {
            if let Err(why) = unix::hooks_available() {
                bail!(unix::missing_hooks_message(&bottle.name, &why));
            }
            true
        }
        config::UnixSockets::Unpoliced => {
            tracing::warn!(
                bottle = %bottle.name,
                "unix_sockets: unpoliced: the bottle's unix sockets (abstract and path) are not policed"
            );
            false
        }
    };
    let layout = PinLayout::new(config);
    let cgroup_dir = cgroup::bottle_path(config, bottle)?;
    fs::create_dir_all(&cgroup_dir).with_context(|| format!("creating cgroup {}", cgroup_dir.display()))?;
    let cgroup_file =
        fs::File::open(&cgroup_dir).with_context(|| format!("opening cgroup {}", cgroup_dir.display()))?;
    let maps_dir = layout.maps_dir();
    fs::create_dir_all(&maps_dir).with_context(|| format!("creating {}", maps_dir.display()))?;
    let bottle_dir = layout.bottle_dir(&bottle.name);
    fs::create_dir_all(&bottle_dir).with_context(|| format!("creating {}", bottle_dir.display()))?;

    // A bottle in its own network namespace is sent to the listeners the gateway opened
    // on that namespace's loopback; the others share the gateway's listeners.
    let (listen, dns_listen) = crate::netns::listen_addrs(config, bottle);
    let proxy_ip4 = u32::from_ne_bytes(listen.ip().octets());
    let proxy_port = listen.port();
    let dns_ip4 = u32::from_ne_bytes(dns_listen.ip().octets());
    let dns_port = dns_listen.port();
    let dns_by_port: u32 = bottle.netns.is_none().into();
    let btf = Btf::from_sys_fs().ok();
    let mut loader = EbpfLoader::new();
    loader.btf(btf.as_ref()).default_map_pin_directory(&maps_dir);
    // The bottle's own maps: reused when pinned (a re-attach), so the gateway reads one
    // map whichever of the bottle's programs wrote the entry.
    for name in PER_BOTTLE_MAPS {
        loader.map_pin_path(name, bottle_dir.join(name));
    }
    let mut ebpf = loader
        .override_global(globals::PROXY_IP4, &proxy_ip4, true)
        .override_global(globals::PROXY_PORT, &proxy_port, true)
        .override_global(globals::DNS_IP4, &dns_ip4, true)
        .override_global(globals::DNS_PORT, &dns_port, true)
        .override_global(globals::BOTTLE_ID, &bottle.id, true)
        .override_global(globals::DNS_BY_PORT, &dns_by_port, true)
        .load(EBPF_OBJECT)
        .context("loading the eBPF object (is this kernel >= 5.8 with BTF and cgroup BPF?)")?;

    let mut links: Vec<(&str, FdLink)> = Vec::new();
    for name in SOCK_ADDR_PROGRAMS {
        let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?.try_into()?;
        prog.load().with_context(|| format!("verifying {name}"))?;
        let id = prog
            .attach(cgroup_file.as_fd(), CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to {}", cgroup_dir.display()))?;
        links.push((name, prog.take_link(id)?.try_into()?));
    }
    {
        let prog: &mut SockOps = program(&mut ebpf, SOCK_OPS_PROGRAM)?.try_into()?;
        prog.load().with_context(|| format!("verifying {SOCK_OPS_PROGRAM}"))?;
        let id = prog
            .attach(cgroup_file.as_fd(), CgroupAttachMode::Single)
            .with_context(|| format!("attaching {SOCK_OPS_PROGRAM}"))?;
        links.push((SOCK_OPS_PROGRAM, prog.take_link(id)?.try_into()?));
    }
    {
        let prog: &mut CgroupSkb = program(&mut ebpf, BACKSTOP_PROGRAM)?.try_into()?;
        prog.load().with_context(|| format!("verifying {BACKSTOP_PROGRAM}"))?;
        let id = prog
            .attach(cgroup_file.as_fd(), CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {BACKSTOP_PROGRAM}"))?;
        links.push((BACKSTOP_PROGRAM, prog.take_link(id)?.try_into()?));
    }
    let mut unix_links = Vec::new();
    if police_unix {
        // The allowlist first, so a listed socket works from the moment the programs do.
        let map = ebpf
            .map_mut(egress_common::maps::UNIX_SOCKETS)
            .context("map EGRESS_UNIX_V1 missing from the embedded object")?;
        let mut trie = aya::maps::LpmTrie::try_from(map)?;
        unix::sync_rules(&mut trie, bottle.id, &bottle.unix_sockets)?;
        let map_fd = trie_fd(&ebpf)?;
        let counters_fd = counters_fd(&ebpf)?;
        unix_links = unix::attach(bottle.id, map_fd, counters_fd, cgroup_file.as_fd())
            .with_context(|| format!("attaching the unix-socket programs to {}", cgroup_dir.display()))?;
    }

    // Every new link is attached: now swap the pins. Releasing an old pin detaches the
    // old program; the new one is already in place.
    for (name, link) in links {
        let pin = bottle_dir.join(name);
        if pin.exists() {
            let old = PinnedLink::from_pin(&pin).with_context(|| format!("opening pinned link {}", pin.display()))?;
            old.unpin().with_context(|| format!("unpinning {}", pin.display()))?;
        }
        link.pin(&pin).with_context(|| format!("pinning {}", pin.display()))?;
    }
    for (name, _) in unix::PROGRAMS {
        let pin = bottle_dir.join(name);
        if pin.exists() {
            let old = PinnedLink::from_pin(&pin).with_context(|| format!("opening pinned link {}", pin.display()))?;
            old.unpin().with_context(|| format!("unpinning {}", pin.display()))?;
        }
    }
    for link in &unix_links {
        link.pin(&bottle_dir.join(link.name))?;
    }
    if !police_unix {
        unix::clear_pinned(&maps_dir, bottle.id)?;
    }
    tracing::info!(
        bottle = %bottle.name,
        cgroup = %cgroup_dir.display(),
        pins = %bottle_dir.display(),
        "bottle attached"
    );
    Ok(())
}

/// The descriptor of the unix-socket allowlist map of a loaded object.
fn trie_fd(ebpf: &aya::Ebpf) -> anyhow::Result<std::os::fd::BorrowedFd<'_>> {
    match ebpf.map(egress_common::maps::UNIX_SOCKETS) {
        Some(aya::maps::Map::LpmTrie(data)) => Ok(data.fd().as_fd()),
        _ => bail!("map EGRESS_UNIX_V1 missing from the embedded object, or not an LPM trie"),
    }
}

/// The descriptor of the counters map of a loaded object (the unix programs count their
/// refusals in it too).
fn counters_fd(ebpf: &aya::Ebpf) -> anyhow::Result<std::os::fd::BorrowedFd<'_>> {
    match ebpf.map(names::COUNTERS) {
        Some(aya::maps::Map::PerCpuHashMap(data)) => Ok(data.fd().as_fd()),
        _ => bail!("map {} missing from the embedded object, or not a per-CPU hash", names::COUNTERS),
    }
}

fn program<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).with_context(|| format!("program {name} missing from the embedded object"))
}

/// Checks that every program of `bottle` is pinned and attached to exactly `cgroup_dir`:
/// joining a cgroup its programs are not on would give direct egress (the configuration's
/// cgroup path may have changed since the gateway attached the bottle).
pub fn verify_attached(config: &config::Config, bottle: &config::Bottle, cgroup_dir: &Path) -> anyhow::Result<()> {
    let pins = PinLayout::new(config).bottle_dir(&bottle.name);
    let mut programs: Vec<&str> =
        SOCK_ADDR_PROGRAMS.iter().copied().chain([SOCK_OPS_PROGRAM, BACKSTOP_PROGRAM]).collect();
    if matches!(bottle.unix_sockets, config::UnixSockets::Policed(_)) {
        programs.extend(unix::PROGRAMS.iter().map(|(name, _)| *name));
    }
    if let Some(missing) = programs.iter().find(|name| !pins.join(name).exists()) {
        bail!(
            "bottle {} is not attached (no pinned program {missing} in {}): start `egress-gateway run` with this \
             configuration, or attach it, first",
            bottle.name,
            pins.display()
        );
    }
    let want = links::cgroup_id(cgroup_dir).with_context(|| format!("reading cgroup {}", cgroup_dir.display()))?;
    for name in &programs {
        let pin = pins.join(name);
        let got =
            links::pinned_link_cgroup_id(&pin).with_context(|| format!("reading pinned link {}", pin.display()))?;
        if got != want {
            bail!(
                "bottle {}'s programs are attached to another cgroup (id {got}) than {} (id {want}): the \
                 configuration changed since the gateway attached it; restart or re-attach the bottle first",
                bottle.name,
                cgroup_dir.display()
            );
        }
    }
    Ok(())
}

/// One bottle's state as the kernel sees it.
#[derive(Debug, serde::Serialize)]
pub struct BottleStatus {
    pub bottle: String,
    pub attached: bool,
    pub processes: usize,
    /// `None` when the counters map cannot be read (`unreadable` says why).
    pub counters: Option<CounterReport>,
    /// Each kernel map of the bottle that cannot be read: its path and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct CounterReport {
    pub tcp_redirected: u64,
    pub dns_redirected: u64,
    pub refused: u64,
    pub dropped: u64,
    pub unix_refused: u64,
}

/// Attachment, process count and counters of each of `bottles`, and which of their
/// kernel maps cannot be read: never zeros in place of counters it could not read.
pub fn status(config: &config::Config, bottles: &[config::Bottle]) -> Vec<BottleStatus> {
    let layout = PinLayout::new(config);
    let maps = KernelMaps::open(&layout).map_err(|e| {
        format!("{e:#} (the gateway pins it when it starts: has `egress-gateway run` run with this configuration?)")
    });
    let mut out = Vec::new();
    for b in bottles {
        let attached = layout.bottle_dir(&b.name).join("egress_connect4").exists();
        let mut unreadable = Vec::new();
        let counters = match &maps {
            Ok(maps) => match maps.counters(b.id) {
                Ok(c) => Some(CounterReport {
                    tcp_redirected: c.tcp_redirected,
                    dns_redirected: c.dns_redirected,
                    refused: c.refused,
                    dropped: c.dropped,
                    unix_refused: c.unix_refused,
                }),
                Err(e) => {
                    let path = layout.maps_dir().join(names::COUNTERS);
                    unreadable.push(format!("reading the counters in {}: {e}", path.display()));
                    None
                }
            },
            Err(why) => {
                unreadable.push(why.clone());
                None
            }
        };
        // An attached bottle's own maps: without them its connections and queries fail.
        if attached {
            unreadable.extend(PER_BOTTLE_MAPS.iter().filter_map(|name| maps::check_bottle_map(&layout, &b.name, name)));
        }
        out.push(BottleStatus {
            bottle: b.name.clone(),
            attached,
            processes: cgroup::bottle_path(config, b).map(|p| cgroup::processes(&p).len()).unwrap_or(0),
            counters,
            unreadable,
        });
    }
    out
}

/// Removes a bottle's pinned links, which detaches its programs. Refuses while processes
/// still run in the bottle unless `force`: they would get direct egress. `keep_maps` is
/// for a running gateway, which reads the shared maps: they stay even when no bottle does.
pub fn detach(config: &config::Config, bottle: &config::Bottle, force: bool, keep_maps: bool) -> anyhow::Result<()> {
    let layout = PinLayout::new(config);
    let bottle_dir = layout.bottle_dir(&bottle.name);
    if !bottle_dir.exists() {
        bail!("bottle {} has no pinned programs under {}", bottle.name, bottle_dir.display());
    }
    if let Ok(cgroup_dir) = cgroup::bottle_path(config, bottle) {
        let live = cgroup::processes(&cgroup_dir);
        if !live.is_empty() && !force {
            bail!(
                "bottle {} still has {} process(es) in {} ({:?}...): detaching would give them \
                 direct egress; stop them first or pass --force",
                bottle.name,
                live.len(),
                cgroup_dir.display(),
                &live[..live.len().min(5)]
            );
        }
    }
    remove_pins(&bottle_dir)?;
    unix::clear_pinned(&layout.maps_dir(), bottle.id)?;
    if keep_maps { Ok(()) } else { remove_maps_if_unused(&layout) }
}

/// Creates (or reuses) the shared pinned maps without attaching anything, so a gateway
/// can start with no bottle and attach them later.
pub fn ensure_maps(config: &config::Config) -> anyhow::Result<()> {
    let maps_dir = PinLayout::new(config).maps_dir();
    fs::create_dir_all(&maps_dir).with_context(|| format!("creating {}", maps_dir.display()))?;
    let btf = Btf::from_sys_fs().ok();
    // The per-bottle maps are pinned by each bottle's attach; this load makes ones it
    // does not keep (bpffs refuses names with a dot).
    let mut loader = EbpfLoader::new();
    loader.btf(btf.as_ref()).default_map_pin_directory(&maps_dir);
    let scratch: Vec<PathBuf> = PER_BOTTLE_MAPS.iter().map(|name| maps_dir.join(format!("{name}_UNUSED"))).collect();
    for (name, path) in PER_BOTTLE_MAPS.iter().zip(&scratch) {
        loader.map_pin_path(name, path);
    }
    let loaded = loader.load(EBPF_OBJECT);
    for path in &scratch {
        let _ = fs::remove_file(path);
    }
    // The shared maps of earlier versions: no program this gateway loads writes them,
    // and it never reads them; the programs still attached to them keep them alive until
    // their bottle is re-attached.
    for name in RETIRED_SHARED_MAPS {
        let _ = fs::remove_file(maps_dir.join(name));
    }
    loaded.context("loading the eBPF object to create its maps (is this kernel >= 5.8 with BTF and cgroup BPF?)")?;
    Ok(())
}

/// When no bottle is pinned any more, the shared maps and the pin root go too.
fn remove_maps_if_unused(layout: &PinLayout) -> anyhow::Result<()> {
    if !layout.pinned_bottles().is_empty() {
        return Ok(());
    }
    let maps = layout.maps_dir();
    if let Ok(entries) = fs::read_dir(&maps) {
        for entry in entries.flatten() {
            fs::remove_file(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
        }
        fs::remove_dir(&maps).with_context(|| format!("removing {}", maps.display()))?;
    }
    let _ = fs::remove_dir(layout.root.join("bottles"));
    let _ = fs::remove_dir(&layout.root);
    Ok(())
}

/// Unpins every link in a bottle's pin directory and removes the directory.
pub fn remove_pins(bottle_dir: &Path) -> anyhow::Result<()> {
    for entry in fs::read_dir(bottle_dir).with_context(|| format!("reading {}", bottle_dir.display()))? {
        let path = entry?.path();
        match PinnedLink::from_pin(&path) {
            Ok(link) => drop(link.unpin().with_context(|| format!("unpinning {}", path.display()))?),
            Err(_) => fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?,
        }
    }
    fs::remove_dir(bottle_dir).with_context(|| format!("removing {}", bottle_dir.display()))?;
    Ok(())
}
