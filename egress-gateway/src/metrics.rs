//! Prometheus metrics (`GET /metrics` on the admin socket and on `admin_listen`), in the
//! OpenMetrics text format. Events are counted where they happen, through `global()`;
//! state (open connections, buffered bytes, attachment, the kernel's per-bottle counters)
//! is read when scraped, from a `Snapshot` the caller builds, so it can never drift.
//!
//! Labels are bounded: bottle names come from the configuration, sources, outcomes and
//! detector names from the code. Nothing an agent sends becomes a label.
use std::{sync::LazyLock, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, text},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

/// The OpenMetrics content type of `render`'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BottleLabel {
    pub bottle: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub bottle: String,
    /// `allowed` or `refused`.
    pub decision: &'static str,
    /// Where a refusal came from (`policy`, `dlp`, `supervise`, `client`, `upstream`,
    /// `gateway`); `none` for an allowed request.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    pub bottle: String,
    /// The detector (`token_patterns`, `known_secrets`, `entropy`, ...).
    pub detector: String,
    /// What the route did with it: `block`, `redact`, `supervise`, `warn`.
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HoldLabels {
    pub bottle: String,
    /// `approved`, `rejected`, `failed` (timed out, or the store failed),
    /// `over_max_pending` (refused with 429 before any proposal), `abandoned` (the client
    /// went away).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsLabels {
    /// `client` (a bottle's handshake with the gateway) or `upstream`.
    pub side: &'static str,
    /// `ok` or `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    pub bottle: String,
    /// `answered`, `refused` (NXDOMAIN for a name no route allows), `carries_data` (a
    /// name shaped like tunnelled data), `budget` (the wildcard budget spent), `failed`
    /// (no upstream answer).
    pub answer: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request and upstream latency: 1 ms to about 65 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Time held for an operator: 1 s to about 68 min.
fn hold_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

/// Every metric counted as it happens.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Histograms<BottleLabel>,
    pub upstream_seconds: Histograms<BottleLabel>,
    pub gateway_seconds: Histograms<BottleLabel>,
    pub dlp_findings: Family<FindingLabels, Counter>,
    pub holds_pending: Family<BottleLabel, Gauge>,
    pub holds_decided: Family<HoldLabels, Counter>,
    pub hold_seconds: Histograms<BottleLabel>,
    pub tls_handshakes: Family<TlsLabels, Counter>,
    pub leaf_cache: Family<ResultLabel, Counter>,
    pub dns_queries: Family<DnsLabels, Counter>,
    pub reloads: Family<ResultLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("egress");
        let requests = Family::default();
        registry.register("requests", "HTTP requests answered, by decision and refusal source", requests.clone());
        let request_seconds: Histograms<BottleLabel> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time from a request's head to its response's head (gateway and upstream)",
            Unit::Seconds,
            request_seconds.clone(),
        );
        let upstream_seconds: Histograms<BottleLabel> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "upstream_duration",
            "Time the upstream took to send its response head",
            Unit::Seconds,
            upstream_seconds.clone(),
        );
        let gateway_seconds: Histograms<BottleLabel> = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "gateway_added_duration",
            "Time the gateway added to a forwarded request (its duration minus the upstream's; holds included)",
            Unit::Seconds,
            gateway_seconds.clone(),
        );
        let dlp_findings = Family::default();
        registry.register("dlp_findings", "DLP findings in requests, by detector and action", dlp_findings.clone());
        let holds_pending = Family::default();
        registry.register("holds_pending", "Requests held for an operator now", holds_pending.clone());
        let holds_decided = Family::default();
        registry.register("holds_decided", "Held requests ended, by outcome", holds_decided.clone());
        let hold_seconds: Histograms<BottleLabel> = Family::new_with_constructor(hold_histogram);
        registry.register_with_unit(
            "hold_wait",
            "Time a held request waited for its decision",
            Unit::Seconds,
            hold_seconds.clone(),
        );
        let tls_handshakes = Family::default();
        registry.register("tls_handshakes", "TLS handshakes, with bottles and with upstreams", tls_handshakes.clone());
        let leaf_cache = Family::default();
        registry.register("tls_leaf_cache", "Leaf certificate lookups: hit or miss (minted)", leaf_cache.clone());
        let dns_queries = Family::default();
        registry.register("dns_queries", "Bottles' DNS queries, by answer", dns_queries.clone());
        let reloads = Family::default();
        registry.register("reloads", "Reloads (SIGHUP or the admin socket), by result", reloads.clone());
        Metrics {
            registry,
            requests,
            request_seconds,
            upstream_seconds,
            gateway_seconds,
            dlp_findings,
            holds_pending,
            holds_decided,
            hold_seconds,
            tls_handshakes,
            leaf_cache,
            dns_queries,
            reloads,
        }
    }

    /// One answered request: `refused_by` is the refusal's source, `None` when it went
    /// through. `upstream` is the upstream's share of `total`, when it was asked.
    pub fn request(&self, bottle: &str, refused_by: Option<&'static str>, total: Duration, upstream: Option<Duration>) {
        let decision = if refused_by.is_some() { "refused" } else { "allowed" };
        let labels = RequestLabels { bottle: bottle.to_string(), decision, source: refused_by.unwrap_or("none") };
        self.requests.get_or_create(&labels).inc();
        let bottle = BottleLabel { bottle: bottle.to_string() };
        self.request_seconds.get_or_create(&bottle).observe(total.as_secs_f64());
        if let Some(up) = upstream {
            self.upstream_seconds.get_or_create(&bottle).observe(up.as_secs_f64());
            self.gateway_seconds.get_or_create(&bottle).observe(total.saturating_sub(up).as_secs_f64());
        }
    }

    pub fn finding(&self, bottle: &str, detector: &str, action: &'static str) {
        let labels = FindingLabels { bottle: bottle.to_string(), detector: detector.to_string(), action };
        self.dlp_findings.get_or_create(&labels).inc();
    }

    pub fn tls_handshake(&self, side: &'static str, ok: bool) {
        self.tls_handshakes.get_or_create(&TlsLabels { side, result: if ok { "ok" } else { "failed" } }).inc();
    }

    pub fn leaf_lookup(&self, hit: bool) {
        self.leaf_cache.get_or_create(&ResultLabel { result: if hit { "hit" } else { "miss" } }).inc();
    }

    pub fn dns_query(&self, bottle: &str, answer: &'static str) {
        self.dns_queries.get_or_create(&DnsLabels { bottle: bottle.to_string(), answer }).inc();
    }

    pub fn reload(&self, ok: bool) {
        self.reloads.get_or_create(&ResultLabel { result: if ok { "ok" } else { "failed" } }).inc();
    }

    /// A request starts waiting for an operator; the guard ends the wait (with its
    /// outcome, `abandoned` if it is dropped without one).
    pub fn hold_started(&'static self, bottle: &str) -> HoldTimer {
        let label = BottleLabel { bottle: bottle.to_string() };
        self.holds_pending.get_or_create(&label).inc();
        HoldTimer { metrics: self, label, started: std::time::Instant::now(), outcome: None }
    }

    /// The exposition: every counted metric, then the state in `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = text::encode_registry(&mut out, &self.registry);
        let _ = text::encode_registry(&mut out, &snapshot.registry());
        let _ = text::encode_eof(&mut out);
        out
    }
}

/// The gateway's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// A held request's wait, counted when it ends.
pub struct HoldTimer {
    metrics: &'static Metrics,
    label: BottleLabel,
    started: std::time::Instant,
    outcome: Option<&'static str>,
}

impl HoldTimer {
    pub fn finish(mut self, outcome: &'static str) {
        self.outcome = Some(outcome);
    }
}

impl Drop for HoldTimer {
    fn drop(&mut self) {
        let m = self.metrics;
        m.holds_pending.get_or_create(&self.label).dec();
        let outcome = self.outcome.unwrap_or("abandoned");
        m.holds_decided.get_or_create(&HoldLabels { bottle: self.label.bottle.clone(), outcome }).inc();
        m.hold_seconds.get_or_create(&self.label).observe(self.started.elapsed().as_secs_f64());
    }
}

/// What is read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub version: &'static str,
    pub commit: &'static str,
    pub bottles: Vec<BottleSnapshot>,
}

#[derive(Debug, Default, Clone)]
pub struct BottleSnapshot {
    pub name: String,
    /// Its programs are pinned on its cgroup.
    pub attached: bool,
    pub open_connections: u64,
    pub buffered_bytes: u64,
    /// Connections closed at accept: the bottle was at its connection cap.
    pub refused_connections: u64,
    /// Requests refused with 503: a buffering budget was spent.
    pub refused_budget: u64,
    /// The kernel programs' counters for the bottle, by name (`tcp_redirected`, ...);
    /// `None` when the maps could not be read (then `egress_kernel_maps_readable` is 0).
    pub kernel: Option<Vec<(String, u64)>>,
}

impl Snapshot {
    fn registry(&self) -> Registry {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct BuildLabels {
            version: &'static str,
            commit: &'static str,
        }
        let mut reg = Registry::with_prefix("egress");
        let build = Family::<BuildLabels, Gauge>::default();
        build.get_or_create(&BuildLabels { version: self.version, commit: self.commit }).set(1);
        reg.register("build_info", "The running build (always 1)", build);

        let gauges = [
            ("bottle_attached", "1 when the bottle's programs are pinned on its cgroup, else 0"),
            ("open_connections", "Client connections the bottle holds open"),
            ("buffered_bytes", "Request and response bytes held in memory for the bottle"),
            ("kernel_maps_readable", "1 when the bottle's kernel counters could be read, else 0"),
        ];
        let gauge_families: Vec<Family<BottleLabel, Gauge>> = gauges.iter().map(|_| Family::default()).collect();
        let refused_conns = Family::<BottleLabel, Counter>::default();
        let refused_budget = Family::<BottleLabel, Counter>::default();
        let mut kernel: Vec<(String, Family<BottleLabel, Counter>)> = Vec::new();
        for b in &self.bottles {
            let label = BottleLabel { bottle: b.name.clone() };
            let values =
                [b.attached as i64, b.open_connections as i64, b.buffered_bytes as i64, b.kernel.is_some() as i64];
            for (family, value) in gauge_families.iter().zip(values) {
                family.get_or_create(&label).set(value);
            }
            refused_conns.get_or_create(&label).inc_by(b.refused_connections);
            refused_budget.get_or_create(&label).inc_by(b.refused_budget);
            for (name, value) in b.kernel.iter().flatten() {
                let family = match kernel.iter().position(|(n, _)| n == name) {
                    Some(i) => &kernel[i].1,
                    None => {
                        kernel.push((name.clone(), Family::default()));
                        &kernel.last().expect("just pushed").1
                    }
                };
                family.get_or_create(&label).inc_by(*value);
            }
        }
        for ((name, help), family) in gauges.iter().zip(gauge_families) {
            reg.register(*name, *help, family);
        }
        reg.register("refused_connections", "Connections closed at accept: the bottle's connection cap", refused_conns);
        reg.register("refused_budget", "Requests refused with 503: a buffering budget was spent", refused_budget);
        for (name, family) in kernel {
            reg.register(format!("kernel_{name}"), format!("The bottle's kernel counter {name}"), family);
        }
        reg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            (metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
                .then(|| value.parse().ok())?
        })
    }

    #[test]
    fn counted_events_and_scraped_state_are_exposed_under_standard_names() {
        let m = Metrics::new();
        m.request("demo", None, Duration::from_millis(30), Some(Duration::from_millis(20)));
        m.request("demo", Some("dlp"), Duration::from_millis(1), None);
        m.request("demo", Some("dlp"), Duration::from_millis(1), None);
        m.finding("demo", "token_patterns", "block");
        m.reload(false);
        let snapshot = Snapshot {
            version: "1.2.3",
            commit: "abc",
            bottles: vec![BottleSnapshot {
                name: "demo".into(),
                attached: true,
                open_connections: 4,
                kernel: Some(vec![("tcp_redirected".into(), 7), ("refused".into(), 2)]),
                ..Default::default()
            }],
        };
        let text = m.render(&snapshot);
        assert!(text.ends_with("# EOF\n"), "{text}");
        let v = |name, labels: &[(&str, &str)]| sample_value(&text, name, labels);
        assert_eq!(v("egress_requests_total", &[("decision", "allowed"), ("source", "none")]), Some(1.0));
        assert_eq!(v("egress_requests_total", &[("decision", "refused"), ("source", "dlp")]), Some(2.0));
        assert_eq!(v("egress_request_duration_seconds_count", &[("bottle", "demo")]), Some(3.0));
        assert_eq!(v("egress_upstream_duration_seconds_count", &[("bottle", "demo")]), Some(1.0));
        assert_eq!(v("egress_dlp_findings_total", &[("detector", "token_patterns"), ("action", "block")]), Some(1.0));
        assert_eq!(v("egress_reloads_total", &[("result", "failed")]), Some(1.0));
        assert_eq!(v("egress_open_connections", &[("bottle", "demo")]), Some(4.0));
        assert_eq!(v("egress_bottle_attached", &[("bottle", "demo")]), Some(1.0));
        assert_eq!(v("egress_kernel_tcp_redirected_total", &[("bottle", "demo")]), Some(7.0));
        assert_eq!(v("egress_kernel_refused_total", &[("bottle", "demo")]), Some(2.0));
        assert_eq!(v("egress_build_info", &[("version", "1.2.3"), ("commit", "abc")]), Some(1.0));
    }

    #[test]
    fn a_hold_dropped_without_an_outcome_is_abandoned() {
        let m: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let timer = m.hold_started("demo");
        let text = m.render(&Snapshot::default());
        assert_eq!(sample_value(&text, "egress_holds_pending", &[("bottle", "demo")]), Some(1.0));
        drop(timer);
        m.hold_started("demo").finish("approved");
        let text = m.render(&Snapshot::default());
        assert_eq!(sample_value(&text, "egress_holds_pending", &[("bottle", "demo")]), Some(0.0));
        assert_eq!(sample_value(&text, "egress_holds_decided_total", &[("outcome", "abandoned")]), Some(1.0));
        assert_eq!(sample_value(&text, "egress_holds_decided_total", &[("outcome", "approved")]), Some(1.0));
        assert_eq!(sample_value(&text, "egress_hold_wait_seconds_count", &[("bottle", "demo")]), Some(2.0));
    }
}
