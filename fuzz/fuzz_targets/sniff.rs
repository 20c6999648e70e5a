//! Arbitrary first bytes of a connection to the protocol sniffer (`proxy/sniff.rs`):
//! no panic; TLS means a handshake record header; and the verdict on a prefix agrees
//! with the verdict on the whole (the sniffer reads once, so it may see any prefix).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sniff::{Kind, kind_of};

// The gateway's files, compiled here (they are private to `proxy`); `sniff` reads
// `super::rewind`.
#[allow(dead_code)]
#[path = "../../egress-gateway/src/proxy/rewind.rs"]
mod rewind;
#[allow(dead_code)]
#[path = "../../egress-gateway/src/proxy/sniff.rs"]
mod sniff;

fuzz_target!(|data: &[u8]| {
    let kind = kind_of(data);
    if kind == Kind::Tls {
        assert!(data[0] == 0x16 && (data.len() == 1 || data[1] == 0x03), "{data:?}");
    }
    for k in 1..data.len().min(16) {
        let prefix = kind_of(&data[..k]);
        // A longer read can only rule a protocol out, never in.
        if kind != Kind::Other {
            assert_eq!(prefix, kind, "prefix of {k} bytes");
        }
    }
});
