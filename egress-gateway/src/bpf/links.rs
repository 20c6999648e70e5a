//! What a pinned link is attached to: the cgroup id from `BPF_OBJ_GET_INFO_BY_FD`, which
//! aya does not expose. `exec` compares it with the cgroup it is about to join, so a
//! bottle whose cgroup path changed in the configuration is never joined unfiltered.
use std::{
    ffi::CString,
    os::fd::{FromRawFd, OwnedFd},
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_CGROUP: u32 = 3;

/// `union bpf_attr` for BPF_OBJ_GET (pathname, bpf_fd, file_flags).
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: [u32; 27],
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD (bpf_fd, info_len, info).
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
    _pad: [u64; 14],
}

/// The start of `struct bpf_link_info` as a cgroup link fills it: the union that holds
/// `cgroup_id` begins at offset 16 (8-byte aligned).
#[repr(C)]
#[derive(Default)]
struct LinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _align: u32,
    cgroup_id: u64,
    attach_type: u32,
    _rest: [u32; 17],
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i64> {
    // SAFETY: `attr` is a zero-initialised bpf_attr prefix of the size we pass.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

/// The cgroup id a pinned cgroup link is attached to.
pub fn pinned_link_cgroup_id(pin: &Path) -> std::io::Result<u64> {
    let path = CString::new(pin.as_os_str().as_encoded_bytes())?;
    let mut get = ObjGetAttr { pathname: path.as_ptr() as u64, ..Default::default() };
    let fd = sys_bpf(BPF_OBJ_GET, &mut get)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor we now own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = LinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: std::mem::size_of::<LinkInfo>() as u32,
        info: &mut info as *mut LinkInfo as u64,
        ..Default::default()
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    if info.link_type != BPF_LINK_TYPE_CGROUP {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a cgroup link"));
    }
    Ok(info.cgroup_id)
}

/// A cgroup v2 directory's id (its kernfs inode number, what links report).
pub fn cgroup_id(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(dir)?.ino())
}
