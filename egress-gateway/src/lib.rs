//! The egress gateway: eBPF capture of a bottle's sockets and the policy proxy behind it.
//!
//! Layers, outside in: `bpf` and `cgroup` put a bottle's sockets in front of the gateway;
//! `app` runs the listeners; `proxy` speaks TLS/HTTP; `policy`, `dlp` and `supervise`
//! decide; `config` and `resolve` feed them. Pure modules (`policy`, `dlp`, most of
//! `supervise`, `config`) do no I/O.

pub mod activation;
pub mod admin;
pub mod app;
pub mod bottle;
pub mod bpf;
pub mod ca;
pub mod cgroup;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod credentials;
pub mod dlp;
pub mod dns;
pub mod exec;
pub mod lifecycle;
pub mod metrics;
pub mod netns;
pub mod policy;
pub mod proxy;
pub mod resolve;
pub mod sd_notify;
pub mod supervise;
pub mod telemetry;
