//! Arbitrary bytes as a request's host, path, query, headers and (possibly compressed)
//! body: the outbound detectors, the body decoder and the inbound scanner never panic.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    host: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    encoding: u8,
}

fuzz_target!(|input: Input| {
    egress_dlp::properties::scan_never_panics(
        &input.host,
        &input.path,
        &input.query,
        &input.headers,
        &input.body,
        input.encoding,
    );
});
