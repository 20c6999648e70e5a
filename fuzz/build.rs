//! Copies the DNS wire parser out of the gateway's `dns.rs`, where it is an inline
//! module (`pub mod wire`), with the constants it takes from there, so the `dns_wire`
//! target compiles the gateway's own code without building the gateway.
use std::{env, fs, path::Path};

const DNS: &str = "../egress-gateway/src/dns.rs";

fn main() {
    println!("cargo:rerun-if-changed={DNS}");
    let text = fs::read_to_string(DNS).unwrap_or_else(|e| panic!("reading {DNS}: {e}"));
    let start = text.find("\npub mod wire {\n").unwrap_or_else(|| panic!("{DNS} has no `pub mod wire {{`")) + 1;
    let len = text[start..].find("\n}\n").unwrap_or_else(|| panic!("{DNS}: `mod wire` does not end")) + 3;
    let wire = &text[start..start + len];
    // `use super::{A, B};`: the constants of dns.rs that the module reads.
    let uses = wire
        .lines()
        .find_map(|l| l.trim().strip_prefix("use super::{")?.strip_suffix("};"))
        .unwrap_or_else(|| panic!("{DNS}: `mod wire` has no `use super::{{..}};` line"));
    let mut out = String::new();
    for name in uses.split(',').map(str::trim) {
        let line = text
            .lines()
            .find(|l| l.trim_start_matches("pub ").starts_with(&format!("const {name}:")))
            .unwrap_or_else(|| panic!("{DNS}: no one-line `const {name}`"));
        // Public here, for the target's own checks (`MAX_DATAGRAM`).
        out.push_str("pub ");
        out.push_str(line.trim_start_matches("pub "));
        out.push('\n');
    }
    out.push_str(wire);
    let dest = Path::new(&env::var("OUT_DIR").expect("OUT_DIR")).join("dns_wire.rs");
    fs::write(&dest, out).unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
}
