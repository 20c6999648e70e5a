//! Arbitrary text around a planted known secret (raw or encoded) and a token-shaped
//! value: redacting what the scan found leaves no matched value in the output.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    prefix: String,
    middle: String,
    suffix: String,
    token_seed: Vec<u8>,
    form: u8,
}

fuzz_target!(|input: Input| {
    if let Err(e) = egress_dlp::properties::redaction_removes_every_match(
        &input.prefix,
        &input.middle,
        &input.suffix,
        &input.token_seed,
        input.form,
    ) {
        panic!("{e}");
    }
});
