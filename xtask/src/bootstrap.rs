//! Installs, idempotently, what building the eBPF programs needs on a fresh Debian
//! machine: the nightly toolchain's `rust-src`, LLVM 22 (the nightly's LLVM) and
//! bpf-linker built against it. Each step checks first and does nothing when satisfied.
//! `cargo xtask test` also installs what the end-to-end tests run ([`run_test_deps`]).
use std::{path::Path, process::Command};

use anyhow::{Context, bail};

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_PACKAGES: [&str; 4] = ["llvm-22-dev", "libpolly-22-dev", "libzstd-dev", "zlib1g-dev"];
/// What the end-to-end tests run, as (Debian package, a file it installs). Podman with
/// runc runs the container tests (crun refuses hybrid cgroup hosts); busybox-static is
/// their image's only content; the rest are the clients and tools the tests drive.
const TEST_PACKAGES: [(&str, &str); 7] = [
    ("podman", "/usr/bin/podman"),
    ("runc", "/usr/sbin/runc"),
    ("busybox-static", "/bin/busybox"),
    ("iproute2", "/usr/sbin/ip"),
    ("curl", "/usr/bin/curl"),
    ("python3", "/usr/bin/python3"),
    ("git", "/usr/bin/git"),
];

pub fn run() -> anyhow::Result<()> {
    ensure_nightly_rust_src()?;
    ensure_llvm()?;
    ensure_bpf_linker()?;
    Ok(())
}

/// What only the tests need (run by `cargo xtask test`, not by `run`).
pub fn run_test_deps() -> anyhow::Result<()> {
    ensure_test_packages()
}

/// `cargo install` puts binaries in ~/.cargo/bin; make sure children find them.
pub fn ensure_cargo_bin_on_path() {
    let Some(home) = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
    else {
        return;
    };
    let bin = home.join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    if !std::env::split_paths(&path).any(|p| p == bin) {
        let joined = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))
            .expect("PATH entries are joinable");
        // SAFETY: xtask is single-threaded when it adjusts its environment.
        unsafe { std::env::set_var("PATH", joined) };
    }
}

fn ensure_nightly_rust_src() -> anyhow::Result<()> {
    let installed = output("rustup", &["component", "list", "--toolchain", "nightly", "--installed"]);
    match installed {
        Some(list) if list.lines().any(|l| l.starts_with("rust-src")) => Ok(()),
        Some(_) => run_cmd("rustup", &["component", "add", "rust-src", "--toolchain", "nightly"]),
        None => {
            run_cmd("rustup", &["toolchain", "install", "nightly", "--profile", "minimal", "--component", "rust-src"])
                .context("the eBPF programs need a nightly toolchain with rust-src")
        }
    }
}

fn ensure_llvm() -> anyhow::Result<()> {
    if Path::new(LLVM_PREFIX).join("bin/llvm-config").exists()
        && Path::new("/usr/include/zstd.h").exists()
        && Path::new("/usr/include/zlib.h").exists()
    {
        return Ok(());
    }
    eprintln!("xtask: installing LLVM 22 development packages (apt-get)");
    run_cmd("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(LLVM_PACKAGES);
    run_cmd("apt-get", &args).context("installing LLVM 22 (needs root and Debian's package archive)")
}

/// Installs the missing test packages, with their recommends (the set verified to run
/// Podman here). A package counts as present when dpkg says so or its file is there at
/// that path (the container tests bind-mount the host's /usr, so a python3 elsewhere on
/// PATH would not do); a satisfied machine costs no apt-get at all.
fn ensure_test_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .filter(|(package, file)| !test_package_present(package, file))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing test dependencies (apt-get): {}", missing.join(" "));
    run_cmd("apt-get", &["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq"];
    args.extend(&missing);
    run_cmd("apt-get", &args).context("installing the end-to-end tests' packages (needs root and Debian's archive)")
}

fn test_package_present(package: &str, file: &str) -> bool {
    // The dynamic busybox package also installs /bin/busybox, and the test image needs
    // the static one: for it only dpkg's answer counts.
    dpkg_installed(package) || (package != "busybox-static" && Path::new(file).exists())
}

fn dpkg_installed(package: &str) -> bool {
    output("dpkg-query", &["-W", "-f", "${Status}", package]).is_some_and(|s| s.ends_with(" installed"))
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    if output("bpf-linker", &["--version"]).is_some_and(|v| v.contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "install",
            "--locked",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!("cargo install bpf-linker failed ({status})");
    }
    Ok(())
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_cmd(program: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("xtask: {program} {}", args.join(" "));
    let status = Command::new(program).args(args).status().with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}
