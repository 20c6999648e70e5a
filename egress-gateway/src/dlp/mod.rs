//! Data-loss prevention: detectors, scanning, redaction. Pure (no I/O).
pub mod cli;
