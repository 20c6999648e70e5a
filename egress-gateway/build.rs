//! Builds the eBPF programs (egress-ebpf, nightly + bpf-linker) so the binary can embed them.
fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../egress-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package { name: "egress-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
