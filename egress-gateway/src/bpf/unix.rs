//! Unix sockets of a bottle: `connect()` and `sendmsg()`/`sendto()` with an address are
//! allowed only to the sockets in the bottle's `unix_sockets:`. Two cgroup programs,
//! `cgroup/connect_unix` and `cgroup/sendmsg_unix` (Linux 6.7), attached to the bottle's
//! cgroup like the others (so they run for the sockets created in it and its descendants)
//! and pinned with them.
//!
//! aya 0.14 cannot load these attach types (its object parser knows no such section), so
//! the program is assembled here and loaded with `bpf(2)`. It reads the address the
//! kernel copied (`struct bpf_sock_addr_kern`: `uaddr`, `uaddrlen`) with
//! `bpf_probe_read_kernel` from the context pointer, which a loader with CAP_PERFMON may
//! do, so no kfunc is needed. See docs/decisions/0009-unix-sockets-cgroup-hooks.md.
use std::{
    borrow::BorrowMut,
    collections::HashSet,
    ffi::CString,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

use anyhow::{Context, bail};
use aya::maps::{
    MapData,
    lpm_trie::{Key, LpmTrie},
};
use egress_common::{Counters, UNIX_KEY_BYTES, UnixKey};

use crate::config::{UnixRule, UnixSockets};

/// The programs, by pin name, and their attach types (`enum bpf_attach_type`).
pub const PROGRAMS: [(&str, u32); 2] =
    [("egress_unix_connect", BPF_CGROUP_UNIX_CONNECT), ("egress_unix_sendmsg", BPF_CGROUP_UNIX_SENDMSG)];

const BPF_CGROUP_UNIX_CONNECT: u32 = 49;
const BPF_CGROUP_UNIX_SENDMSG: u32 = 50;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;

/// Layout of `struct bpf_sock_addr_kern` (Linux 6.7 on): `sk`, `uaddr` at 8, `tmp_reg`,
/// `t_ctx`, `uaddrlen` (u32) at 32.
const KERN_CTX_LEN: i32 = 40;
const KERN_UADDR: i16 = 8;
const KERN_UADDRLEN: i16 = 32;

/// `sizeof(sun_path)`.
const SUN_PATH: i32 = 108;

/// The allowlist key of one entry (see `egress_common::UnixKey`).
pub fn rule_key(bottle_id: u32, rule: &UnixRule) -> Key<UnixKey> {
    let mut data = UnixKey { bottle: bottle_id.to_be_bytes(), ..Default::default() };
    let bytes = match rule {
        UnixRule::Path(p) => {
            data.path[..p.len()].copy_from_slice(p);
            // The NUL after the path is part of an exact entry.
            p.len() + 1
        }
        UnixRule::Dir(p) => {
            data.path[..p.len()].copy_from_slice(p);
            p.len()
        }
        UnixRule::Abstract(n) => {
            data.path[1] = n.len() as u8;
            data.path[2..2 + n.len()].copy_from_slice(n);
            2 + n.len()
        }
    };
    debug_assert!(bytes <= UNIX_KEY_BYTES);
    Key::new(((4 + bytes) * 8) as u32, data)
}

/// Makes the bottle's entries in the allowlist exactly `policy`'s (none when unpoliced):
/// the new entries are added before stale ones are removed.
pub fn sync_rules<T: BorrowMut<MapData>>(
    map: &mut LpmTrie<T, UnixKey, u8>,
    bottle_id: u32,
    policy: &UnixSockets,
) -> anyhow::Result<()> {
    let rules: &[UnixRule] = match policy {
        UnixSockets::Policed(r) => r,
        UnixSockets::Unpoliced => &[],
    };
    let mut wanted = HashSet::new();
    for rule in rules {
        let key = rule_key(bottle_id, rule);
        map.insert(&key, 1, 0).with_context(|| format!("adding unix socket {rule} to the allowlist map"))?;
        wanted.insert((key.prefix_len(), key.data().path));
    }
    let prefix = bottle_id.to_be_bytes();
    let stale: Vec<Key<UnixKey>> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.data().bottle == prefix && !wanted.contains(&(k.prefix_len(), k.data().path)))
        .collect();
    for key in stale {
        map.remove(&key).context("removing a stale unix socket entry")?;
    }
    Ok(())
}

/// Removes the bottle's entries from the pinned allowlist (when the map exists).
pub fn clear_pinned(maps_dir: &Path, bottle_id: u32) -> anyhow::Result<()> {
    let path = maps_dir.join(egress_common::maps::UNIX_SOCKETS);
    if !path.exists() {
        return Ok(());
    }
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    let mut map: LpmTrie<MapData, UnixKey, u8> = LpmTrie::try_from(aya::maps::Map::from_map_data(data)?)
        .with_context(|| format!("reading map {}", path.display()))?;
    sync_rules(&mut map, bottle_id, &UnixSockets::Unpoliced)
}

/// A loaded program attached to a cgroup: the link, to pin.
pub struct UnixLink {
    pub name: &'static str,
    link: OwnedFd,
}

impl UnixLink {
    /// Pins the link at `pin` (the caller removed any older pin there).
    pub fn pin(&self, pin: &Path) -> anyhow::Result<()> {
        let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
        let mut attr =
            ObjPinAttr { pathname: path.as_ptr() as u64, bpf_fd: self.link.as_raw_fd() as u32, ..Default::default() };
        sys_bpf(BPF_OBJ_PIN, &mut attr).with_context(|| format!("pinning {}", pin.display()))?;
        Ok(())
    }
}

/// Loads both programs for `bottle_id` against `allowlist` (and `counters`, where they
/// count refusals) and attaches them to `cgroup`.
pub fn attach(
    bottle_id: u32,
    allowlist: BorrowedFd<'_>,
    counters: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
) -> anyhow::Result<Vec<UnixLink>> {
    let mut out = Vec::new();
    for (name, attach_type) in PROGRAMS {
        let code = program(bottle_id, allowlist.as_raw_fd(), counters.as_raw_fd());
        let prog = load_insns(&code, attach_type).with_context(|| format!("loading {name}"))?;
        let mut attr = LinkCreateAttr {
            prog_fd: prog.as_raw_fd() as u32,
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type,
            ..Default::default()
        };
        let fd = sys_bpf(BPF_LINK_CREATE, &mut attr).with_context(|| format!("attaching {name} to the cgroup"))?;
        // SAFETY: BPF_LINK_CREATE returned a new descriptor we now own.
        out.push(UnixLink { name, link: unsafe { OwnedFd::from_raw_fd(fd as i32) } });
    }
    Ok(out)
}

/// Whether this kernel loads a `cgroup/connect_unix` program (Linux 6.7 and later).
pub fn hooks_available() -> Result<(), String> {
    let code = [Insn::mov64_imm(0, 1), Insn::exit()];
    load_insns(&code, BPF_CGROUP_UNIX_CONNECT).map(drop).map_err(|e| format!("{e:#}"))
}

/// Why a bottle whose unix sockets are policed cannot be attached on this kernel.
pub fn missing_hooks_message(bottle: &str, why: &str) -> String {
    format!(
        "bottle {bottle}: its unix sockets are policed by cgroup/connect_unix and cgroup/sendmsg_unix programs, \
         which this kernel does not load ({why}): they need Linux 6.7 or later with CONFIG_CGROUP_BPF, and \
         CAP_PERFMON for the gateway; or set `unix_sockets: unpoliced` on the bottle to run it without (abstract \
         and path unix sockets then reach the host's)"
    )
}

fn load_insns(insns: &[Insn], attach_type: u32) -> anyhow::Result<OwnedFd> {
    let license = c"Dual MIT/GPL";
    let mut log = vec![0u8; 1 << 20];
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        expected_attach_type: attach_type,
        ..Default::default()
    };
    match sys_bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: BPF_PROG_LOAD returned a new descriptor we now own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let tail: String =
                text.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            bail!("BPF_PROG_LOAD: {e}; verifier: {tail}")
        }
    }
}

// === the program ===

/// One `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn { code, regs: dst | (src << 4), off, imm }
    }
    const fn mov64_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0xb7, dst, 0, 0, imm)
    }
    const fn mov64_reg(dst: u8, src: u8) -> Insn {
        Insn::new(0xbf, dst, src, 0, 0)
    }
    const fn add64_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0x07, dst, 0, 0, imm)
    }
    const fn ldx(size: Size, dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(0x61 | size as u8, dst, src, off, 0)
    }
    const fn stx(size: Size, dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(0x63 | size as u8, dst, src, off, 0)
    }
    const fn st(size: Size, dst: u8, off: i16, imm: i32) -> Insn {
        Insn::new(0x62 | size as u8, dst, 0, off, imm)
    }
    const fn call(helper: i32) -> Insn {
        Insn::new(0x85, 0, 0, 0, helper)
    }
    const fn exit() -> Insn {
        Insn::new(0x95, 0, 0, 0, 0)
    }
}

/// `BPF_W`, `BPF_B`, `BPF_DW` size bits of a load or store.
#[derive(Clone, Copy)]
enum Size {
    W = 0x00,
    B = 0x10,
    DW = 0x18,
}

/// Conditional jumps (`BPF_JMP | op | BPF_K`), against an immediate.
#[derive(Clone, Copy)]
enum Cond {
    Eq = 0x15,
    Ne = 0x55,
    Sle = 0xd5,
    Slt = 0xc5,
    Always = 0x05,
}

/// A few instructions with labels; jumps are resolved at the end.
#[derive(Default)]
struct Asm {
    code: Vec<Insn>,
    labels: std::collections::HashMap<String, usize>,
    fixups: Vec<(usize, String)>,
}

impl Asm {
    fn push(&mut self, i: Insn) {
        self.code.push(i);
    }
    fn label(&mut self, name: impl Into<String>) {
        self.labels.insert(name.into(), self.code.len());
    }
    fn jump(&mut self, cond: Cond, reg: u8, imm: i32, to: impl Into<String>) {
        self.fixups.push((self.code.len(), to.into()));
        self.push(Insn::new(cond as u8, reg, 0, 0, imm));
    }
    fn finish(mut self) -> Vec<Insn> {
        for (at, label) in &self.fixups {
            let target = self.labels[label];
            self.code[*at].off = (target as i64 - *at as i64 - 1) as i16;
        }
        self.code
    }
}

const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_MAP_UPDATE_ELEM: i32 = 2;
const BPF_NOEXIST: i32 = 1;
const HELPER_PROBE_READ_KERNEL: i32 = 113;
const HELPER_PROBE_READ_KERNEL_STR: i32 = 115;

// Stack layout (offsets from r10): the kernel context copy at -40..0, the LPM key
// (prefix length, bottle id, 112 path bytes) at -160..-40, the counters key (the
// bottle id) at -168 and a fresh `Counters` value at -208..-168.
const CTX: i16 = -KERN_CTX_LEN as i16;
const KEY: i16 = -160;
const KEY_PATH: i16 = KEY + 8;
const COUNTERS_KEY: i16 = -168;
const COUNTERS_VALUE: i16 = COUNTERS_KEY - std::mem::size_of::<Counters>() as i16;
const UNIX_REFUSED: i16 = std::mem::offset_of!(Counters, unix_refused) as i16;

/// `BPF_LD_IMM64` of a map descriptor (`BPF_PSEUDO_MAP_FD`) into `dst`: two instructions.
fn load_map_fd(a: &mut Asm, dst: u8, fd: i32) {
    a.push(Insn::new(0x18, dst, 1, 0, fd));
    a.push(Insn::new(0, 0, 0, 0, 0));
}

/// The program: 1 lets the call proceed, 0 fails it with EPERM.
///
/// ```text
/// copy the context; n = uaddrlen - 2 (bytes of sun_path), at most 108; none: allow
/// key = {928 bits, bottle id, zeros}
/// abstract (sun_path[0] == 0): path = 0, n-1, the n-1 name bytes
/// pathname: path = sun_path up to its first NUL or n bytes, then NUL; a `..`
///           component refuses
/// allow when the key matches an entry of the allowlist
/// refused: add one to the bottle's `unix_refused` counter (this CPU's slot)
/// ```
fn program(bottle_id: u32, map_fd: i32, counters_fd: i32) -> Vec<Insn> {
    use Size::*;
    let mut a = Asm::default();
    a.push(Insn::mov64_reg(6, 1));
    // bpf_probe_read_kernel(&ctx_copy, 40, ctx)
    a.push(Insn::mov64_reg(1, 10));
    a.push(Insn::add64_imm(1, CTX as i32));
    a.push(Insn::mov64_imm(2, KERN_CTX_LEN));
    a.push(Insn::mov64_reg(3, 6));
    a.push(Insn::call(HELPER_PROBE_READ_KERNEL));
    a.jump(Cond::Ne, 0, 0, "deny");
    a.push(Insn::ldx(DW, 7, 10, CTX + KERN_UADDR));
    a.push(Insn::ldx(W, 8, 10, CTX + KERN_UADDRLEN));
    // The key: zeros, then its prefix length and the bottle.
    for off in (KEY..CTX).step_by(8) {
        a.push(Insn::st(DW, 10, off, 0));
    }
    a.push(Insn::st(W, 10, KEY, ((4 + UNIX_KEY_BYTES) * 8) as i32));
    a.push(Insn::st(W, 10, KEY + 4, u32::from_le_bytes(bottle_id.to_be_bytes()) as i32));
    // n = uaddrlen - 2: none means no address, which the kernel refuses by itself.
    a.push(Insn::add64_imm(8, -2));
    a.jump(Cond::Sle, 8, 0, "allow");
    a.jump(Cond::Sle, 8, SUN_PATH, "n_ok");
    a.push(Insn::mov64_imm(8, SUN_PATH));
    a.label("n_ok");
    // sun_path[0], into path[0] (zero again below for an abstract name).
    a.push(Insn::mov64_reg(1, 10));
    a.push(Insn::add64_imm(1, KEY_PATH as i32));
    a.push(Insn::mov64_imm(2, 1));
    a.push(Insn::mov64_reg(3, 7));
    a.push(Insn::add64_imm(3, 2));
    a.push(Insn::call(HELPER_PROBE_READ_KERNEL));
    a.jump(Cond::Ne, 0, 0, "deny");
    a.push(Insn::ldx(B, 1, 10, KEY_PATH));
    a.jump(Cond::Ne, 1, 0, "pathname");
    // Abstract: 0, the name's length, the name (it may hold NULs).
    a.push(Insn::mov64_reg(2, 8));
    a.push(Insn::add64_imm(2, -1));
    a.push(Insn::stx(B, 10, 2, KEY_PATH + 1));
    a.jump(Cond::Eq, 2, 0, "lookup");
    a.push(Insn::mov64_reg(1, 10));
    a.push(Insn::add64_imm(1, (KEY_PATH + 2) as i32));
    a.push(Insn::mov64_reg(3, 7));
    a.push(Insn::add64_imm(3, 3));
    a.push(Insn::call(HELPER_PROBE_READ_KERNEL));
    a.jump(Cond::Ne, 0, 0, "deny");
    a.jump(Cond::Always, 0, 0, "lookup");
    // Pathname: up to the first NUL or n bytes, then a NUL (the rest stays zero).
    a.label("pathname");
    a.push(Insn::mov64_reg(1, 10));
    a.push(Insn::add64_imm(1, KEY_PATH as i32));
    a.push(Insn::mov64_reg(2, 8));
    a.push(Insn::add64_imm(2, 1));
    a.push(Insn::mov64_reg(3, 7));
    a.push(Insn::add64_imm(3, 2));
    a.push(Insn::call(HELPER_PROBE_READ_KERNEL_STR));
    a.jump(Cond::Slt, 0, 0, "deny");
    // A `..` component leads out of a listed directory: r2 is 0 at a component's start,
    // 1 after `.`, 2 after `..`, 3 after anything else.
    a.push(Insn::mov64_imm(2, 0));
    for i in 0..UNIX_KEY_BYTES as i16 {
        let (dot, slash, end, next) = (format!("dot{i}"), format!("slash{i}"), format!("end{i}"), format!("next{i}"));
        a.push(Insn::ldx(B, 1, 10, KEY_PATH + i));
        a.jump(Cond::Eq, 1, b'/' as i32, slash.clone());
        a.jump(Cond::Eq, 1, 0, end.clone());
        a.jump(Cond::Eq, 1, b'.' as i32, dot.clone());
        a.push(Insn::mov64_imm(2, 3));
        a.jump(Cond::Always, 0, 0, next.clone());
        a.label(dot);
        a.jump(Cond::Eq, 2, 3, next.clone());
        a.push(Insn::add64_imm(2, 1));
        a.jump(Cond::Always, 0, 0, next.clone());
        a.label(slash);
        a.jump(Cond::Eq, 2, 2, "deny");
        a.push(Insn::mov64_imm(2, 0));
        a.jump(Cond::Always, 0, 0, next.clone());
        a.label(end);
        a.jump(Cond::Eq, 2, 2, "deny");
        a.jump(Cond::Always, 0, 0, "lookup");
        a.label(next);
    }
    // bpf_map_lookup_elem(allowlist, &key)
    a.label("lookup");
    load_map_fd(&mut a, 1, map_fd);
    a.push(Insn::mov64_reg(2, 10));
    a.push(Insn::add64_imm(2, KEY as i32));
    a.push(Insn::call(HELPER_MAP_LOOKUP_ELEM));
    a.jump(Cond::Eq, 0, 0, "deny");
    a.label("allow");
    a.push(Insn::mov64_imm(0, 1));
    a.push(Insn::exit());
    // Refused: counted like the redirect programs' refusals, so `status` shows them.
    a.label("deny");
    a.push(Insn::st(W, 10, COUNTERS_KEY, bottle_id as i32));
    load_map_fd(&mut a, 1, counters_fd);
    a.push(Insn::mov64_reg(2, 10));
    a.push(Insn::add64_imm(2, COUNTERS_KEY as i32));
    a.push(Insn::call(HELPER_MAP_LOOKUP_ELEM));
    a.jump(Cond::Eq, 0, 0, "first");
    a.push(Insn::ldx(DW, 1, 0, UNIX_REFUSED));
    a.push(Insn::add64_imm(1, 1));
    a.push(Insn::stx(DW, 0, 1, UNIX_REFUSED));
    a.jump(Cond::Always, 0, 0, "refuse");
    // The bottle's first count: a value of zeros but this one (the other CPUs' slots
    // start at zero).
    a.label("first");
    for off in (COUNTERS_VALUE..COUNTERS_KEY).step_by(8) {
        a.push(Insn::st(DW, 10, off, 0));
    }
    a.push(Insn::st(DW, 10, COUNTERS_VALUE + UNIX_REFUSED, 1));
    load_map_fd(&mut a, 1, counters_fd);
    a.push(Insn::mov64_reg(2, 10));
    a.push(Insn::add64_imm(2, COUNTERS_KEY as i32));
    a.push(Insn::mov64_reg(3, 10));
    a.push(Insn::add64_imm(3, COUNTERS_VALUE as i32));
    a.push(Insn::mov64_imm(4, BPF_NOEXIST));
    a.push(Insn::call(HELPER_MAP_UPDATE_ELEM));
    a.label("refuse");
    a.push(Insn::mov64_imm(0, 0));
    a.push(Insn::exit());
    a.finish()
}

// === bpf(2) ===

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 12],
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 6],
}

#[repr(C)]
#[derive(Default)]
struct ObjPinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: [u32; 3],
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a zero-initialised bpf_attr prefix of the size we pass.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_encode_exact_directory_and_abstract_entries() {
        let k = rule_key(0x01020304, &UnixRule::Path(b"/run/a".to_vec()));
        assert_eq!(k.prefix_len(), (4 + 7) * 8);
        assert_eq!(k.data().bottle, [1, 2, 3, 4]);
        assert_eq!(&k.data().path[..8], b"/run/a\0\0");
        let k = rule_key(1, &UnixRule::Dir(b"/tmp/ipc/".to_vec()));
        assert_eq!(k.prefix_len(), (4 + 9) * 8);
        let k = rule_key(1, &UnixRule::Abstract(b"bus".to_vec()));
        assert_eq!(k.prefix_len(), (4 + 5) * 8);
        assert_eq!(&k.data().path[..6], b"\0\x03bus\0");
        let longest = rule_key(1, &UnixRule::Abstract(vec![b'a'; egress_common::UNIX_PATH_MAX]));
        assert!(longest.prefix_len() as usize <= (4 + UNIX_KEY_BYTES) * 8);
    }

    #[test]
    fn every_jump_lands_inside_the_program() {
        let code = program(7, 3, 4);
        for (i, insn) in code.iter().enumerate() {
            if insn.code & 0x07 == 0x05 && insn.code != 0x85 && insn.code != 0x95 {
                let target = i as i64 + 1 + insn.off as i64;
                assert!((0..code.len() as i64).contains(&target), "insn {i} jumps to {target}");
            }
        }
        assert_eq!(code.last(), Some(&Insn::exit()));
    }
}
