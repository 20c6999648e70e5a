//! Data-loss prevention: the `egress-dlp` crate (detectors, scan, redact), re-exported so
//! the gateway names it `crate::dlp`, plus the `dlp scan` command line.
pub mod cli;

pub use egress_dlp::*;
