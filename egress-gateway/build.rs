//! Builds the eBPF programs (egress-ebpf, nightly + bpf-linker) so the binary can embed them,
//! and stamps the commit the binary was built from (the first log line names it).
use std::process::Command;

fn main() -> anyhow::Result<()> {
    stamp_git_commit();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../egress-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package { name: "egress-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// `EGRESS_GIT_COMMIT`: the short commit, or "unknown" outside a git checkout (a source
/// tarball). Rebuilt when HEAD moves.
fn stamp_git_commit() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=EGRESS_GIT_COMMIT={commit}");
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["rev-parse", "--symbolic-full-name", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])),
    ]
    .into_iter()
    .flatten()
    {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
