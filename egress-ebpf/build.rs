//! Rebuild the programs when the linker changes, and say how to get one when it is missing.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => panic!("bpf-linker not found on PATH: run `cargo xtask bootstrap` (installs LLVM 22 and bpf-linker)"),
    }
}
