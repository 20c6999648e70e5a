//! The DNS listener: bottles' UDP port 53 traffic lands here. A name the bottle's policy
//! allows is answered from the gateway's resolver; every other name gets NXDOMAIN.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::net::UdpSocket;

use crate::{
    bottle::{ListenerScope, Registry},
    resolve::Resolver,
};

/// TTL of answers: short, so policy and override changes take effect quickly.
const ANSWER_TTL_SECS: u32 = 30;
const MAX_DATAGRAM: usize = 1232;
/// The name bottles ask the gateway about themselves (`http://_egress.local/allowlist`).
const INTROSPECTION_NAME: &str = "_egress.local";
const INTROSPECTION_ADDR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Which of `bottles` (by name: those the shared listener serves) sent a query from a
/// client address to the shared listener (the kernel programs record it in each bottle's
/// map; tests give a table).
pub trait ClientBottles: Send + Sync {
    fn bottle_of(&self, client: SocketAddr, bottles: &[&str]) -> Option<u32>;
}

impl ClientBottles for crate::bpf::KernelMaps {
    fn bottle_of(&self, client: SocketAddr, bottles: &[&str]) -> Option<u32> {
        self.dns_client_bottle(client, bottles.iter().copied())
    }
}

impl ClientBottles for HashMap<SocketAddr, u32> {
    fn bottle_of(&self, client: SocketAddr, _bottles: &[&str]) -> Option<u32> {
        self.get(&client).copied()
    }
}

/// What the DNS answerer needs, and nothing else: the gateway's resolver, its DLP engine
/// (for names that belong to no bottle), the bottles, their name budgets, and who sent a
/// query.
pub struct DnsContext {
    pub resolver: Resolver,
    pub dlp: Arc<crate::dlp::Engine>,
    pub bottles: Arc<Registry>,
    pub budgets: NameBudgets,
    pub clients: Arc<dyn ClientBottles>,
}

impl DnsContext {
    /// The `dns:` settings of a reloaded gateway.yaml: the new-names budget and the
    /// per-bottle concurrent lookups take effect for the next query.
    pub fn apply(&self, dns: &crate::config::DnsConfig) {
        if self.budgets.limit() != dns.new_names_per_minute {
            tracing::info!(
                before = self.budgets.limit(),
                after = dns.new_names_per_minute,
                "dns budget of new names per minute changed"
            );
            self.budgets.set_limit(dns.new_names_per_minute);
        }
        self.resolver.set_concurrent_lookups(dns.concurrent_lookups);
    }
}

impl DnsContext {
    /// `dns:` read again from gateway.yaml (SIGHUP, `POST /v1/reload`); a file that does
    /// not load leaves the settings as they were, and says why.
    pub fn reload_from(&self, path: &std::path::Path) {
        match crate::config::Config::load(path) {
            Ok(fresh) => self.apply(&fresh.dns),
            Err(e) => tracing::error!(error = %e, "reload of gateway.yaml failed; keeping the previous dns settings"),
        }
    }
}

/// Answers the queries that reach one DNS listener; `scope` says whose they can be.
pub async fn serve(socket: UdpSocket, scope: ListenerScope, gw: Arc<DnsContext>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let received = tokio::select! {
            received = socket.recv_from(&mut buf) => received,
            _ = crate::lifecycle::stopped() => return,
        };
        let (len, peer) = match received {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "dns receive failed");
                continue;
            }
        };
        let packet = buf[..len].to_vec();
        let (socket, gw) = (socket.clone(), gw.clone());
        tokio::spawn(async move {
            if let Some(reply) = answer(&packet, peer, scope, &gw).await {
                let _ = socket.send_to(&reply, peer).await;
            }
        });
    }
}

/// The reply to one datagram from `peer` on a listener of `scope`; `None`: no reply.
pub async fn answer(packet: &[u8], peer: SocketAddr, scope: ListenerScope, gw: &DnsContext) -> Option<Vec<u8>> {
    let query = match wire::parse_query(packet) {
        Ok(q) => q,
        Err(wire::ParseError::NotAQuery) => return None,
        Err(wire::ParseError::Malformed) => return wire::error_reply(packet, wire::Rcode::FormErr),
    };
    // A namespaced bottle's listener is its own; the shared one asks the map which bottle
    // sent from this address and port.
    let recorded = match scope {
        ListenerScope::Shared => {
            // Only the bottles in the gateway's namespace send their queries here.
            let shared: Vec<_> = gw.bottles.bottles().into_iter().filter(|b| b.config.netns.is_none()).collect();
            let names: Vec<&str> = shared.iter().map(|b| b.config.name.as_str()).collect();
            gw.clients.bottle_of(peer, &names)
        }
        ListenerScope::Bottle(_) => None,
    };
    let bottle = match (scope, recorded) {
        (ListenerScope::Shared, None) => None,
        _ => gw.bottles.bottle_for(scope, recorded),
    };
    let Some(bottle) = bottle else {
        // No bottle to scope it to: withheld if it may carry any bottle's secret.
        let mut name = crate::dlp::hostname::loggable(&gw.dlp, &query.name);
        if name == query.name
            && gw.bottles.bottles().iter().any(|b| crate::dlp::hostname::carries_data(&b.dlp(), &query.name))
        {
            name = format!("(withheld: {} characters that may carry data)", query.name.len());
        }
        tracing::warn!(client = %peer, name = %name, "dns query from an unknown client refused");
        return Some(wire::reply(&query, wire::Rcode::Refused, &[]));
    };
    if query.name == INTROSPECTION_NAME {
        // Any address will do: the bottle's connection to it is redirected to the gateway.
        let addrs: &[IpAddr] = if query.qtype == wire::QTYPE_A { &[INTROSPECTION_ADDR] } else { &[] };
        return Some(wire::reply(&query, wire::Rcode::NoError, addrs));
    }
    // One snapshot: the names this bottle may resolve, and the secrets it knows.
    let live = bottle.live();
    let allowed = live.routes.dns_name_allowed(&query.name);
    if !allowed {
        let name = crate::dlp::hostname::loggable(&live.dlp, &query.name);
        tracing::info!(bottle = %bottle.config.name, name = %name, decision = "nxdomain", "dns query denied");
        crate::metrics::global().dns_query(&bottle.config.name, "refused");
        return Some(wire::reply(&query, wire::Rcode::NxDomain, &[]));
    }
    if crate::dlp::hostname::carries_data(&live.dlp, &query.name) {
        // The name is not logged: its labels may be the data being smuggled out.
        tracing::warn!(
            bottle = %bottle.config.name,
            name_len = query.name.len(),
            decision = "nxdomain",
            reason = "name looks like it carries data (DNS tunnelling or a secret)",
            "dns query denied"
        );
        crate::metrics::global().dns_query(&bottle.config.name, "carries_data");
        return Some(wire::reply(&query, wire::Rcode::NxDomain, &[]));
    }
    // A new name under a wildcard spends the bottle's budget: whatever the shape checks
    // miss, a tunnel gets only so many names a minute.
    if let Some(route) = live.routes.route_for(&query.name).filter(|r| r.host.starts_with("*."))
        && let Err(refused) = gw.budgets.admit(&bottle.config.name, &query.name, Instant::now())
    {
        // Never the name: under a wildcard its labels are the bottle's to choose.
        tracing::warn!(
            bottle = %bottle.config.name,
            wildcard = %route.host,
            name_len = query.name.len(),
            limit_per_minute = gw.budgets.limit(),
            refused_total = refused,
            decision = "nxdomain",
            reason = "budget of new names under a wildcard spent",
            "dns query denied"
        );
        crate::metrics::global().dns_query(&bottle.config.name, "budget");
        return Some(wire::reply(&query, wire::Rcode::NxDomain, &[]));
    }
    let addrs = match gw.resolver.lookup_for(&bottle.config.name, &query.name).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(bottle = %bottle.config.name, name = %query.name, error = %e, "dns resolution failed");
            crate::metrics::global().dns_query(&bottle.config.name, "failed");
            return Some(wire::reply(&query, wire::Rcode::ServFail, &[]));
        }
    };
    let wanted: Vec<IpAddr> = addrs
        .into_iter()
        .filter(|a| match query.qtype {
            wire::QTYPE_A => a.is_ipv4(),
            wire::QTYPE_AAAA => a.is_ipv6(),
            _ => false,
        })
        .collect();
    tracing::debug!(bottle = %bottle.config.name, name = %query.name, answers = wanted.len(), "dns query answered");
    crate::metrics::global().dns_query(&bottle.config.name, "answered");
    Some(wire::reply(&query, wire::Rcode::NoError, &wanted))
}

/// How long a name stays "seen" for a bottle's budget.
const BUDGET_WINDOW: Duration = Duration::from_secs(60);

/// Per bottle, the distinct names under wildcard routes it resolved in the last minute;
/// a name beyond `dns.new_names_per_minute` is refused. Names already seen in the
/// window are free, so a client asking again is never refused.
pub struct NameBudgets {
    /// Changed by a reload of gateway.yaml.
    limit: AtomicU32,
    seen: Mutex<HashMap<String, HashMap<String, Instant>>>,
    refused: AtomicU64,
}

impl NameBudgets {
    /// `limit` new names per minute and bottle; 0: no limit.
    pub fn new(limit: u32) -> Self {
        NameBudgets { limit: AtomicU32::new(limit), seen: Mutex::default(), refused: AtomicU64::new(0) }
    }

    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    /// A new limit for the names admitted from now on (names already seen stay seen).
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Names refused so far, every bottle.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Admits `name` for `bottle` at `now`, or says how many have been refused in all.
    pub fn admit(&self, bottle: &str, name: &str, now: Instant) -> Result<(), u64> {
        let limit = self.limit();
        if limit == 0 {
            return Ok(());
        }
        let mut all = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let seen = all.entry(bottle.to_string()).or_default();
        if seen.get(name).is_some_and(|t| now.duration_since(*t) < BUDGET_WINDOW) {
            return Ok(());
        }
        seen.retain(|_, t| now.duration_since(*t) < BUDGET_WINDOW);
        if seen.len() < limit as usize {
            seen.insert(name.to_string(), now);
            return Ok(());
        }
        Err(self.refused.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{wire::*, *};
    use crate::{
        bottle::{BottleLive, BottleState, Served},
        config, dlp, policy,
    };

    const CLIENT: &str = "127.0.0.1:40000";

    /// A context with one bottle (id 7) in the gateway's namespace whose client is
    /// `CLIENT`, and `a.test` resolving to 127.0.0.9.
    fn context(routes: &str, budget: u32) -> DnsContext {
        let engine = Arc::new(dlp::Engine::new(dlp::KnownSecrets::default(), Vec::new()).unwrap());
        let routes = Arc::new(policy::Routes::parse(std::path::Path::new("r.yaml"), routes).unwrap());
        let bottle = config::Bottle {
            name: "b".into(),
            id: 7,
            cgroup: "egress/b".into(),
            netns: None,
            routes: None,
            credentials_file: None,
            supervise: None,
            mounts: Vec::new(),
            unix_sockets: Default::default(),
        };
        let live = BottleLive {
            routes: routes.clone(),
            credentials: Arc::new(crate::credentials::Credentials::empty()),
            dlp: engine.clone(),
        };
        let state = BottleState::new(bottle, live, engine.clone(), Some(routes), None, &config::Limits::default());
        let bottles = Arc::new(Registry::new());
        bottles.insert(Arc::new(Served::new(Arc::new(state), crate::admin::BottleSource::Config, Vec::new())));
        let hosts: BTreeMap<String, Vec<IpAddr>> = ["a.test", "x.w.test", "y.w.test", "z.w.test"]
            .iter()
            .map(|h| (h.to_string(), vec!["127.0.0.9".parse().unwrap()]))
            .collect();
        let clients: HashMap<SocketAddr, u32> = [(CLIENT.parse().unwrap(), 7)].into();
        DnsContext {
            resolver: Resolver::new(hosts),
            dlp: engine,
            bottles,
            budgets: NameBudgets::new(budget),
            clients: Arc::new(clients),
        }
    }

    fn query(name: &str) -> Vec<u8> {
        super::wire::tests::query(name, QTYPE_A)
    }

    async fn rcode(ctx: &DnsContext, from: &str, name: &str) -> u8 {
        let reply = answer(&query(name), from.parse().unwrap(), ListenerScope::Shared, ctx).await.unwrap();
        reply[3] & 0x0f
    }

    const ROUTES: &str = "routes:\n  - host: a.test\n  - host: \"*.w.test\"\n";

    #[tokio::test]
    async fn answers_allowed_names_and_refuses_the_rest() {
        let ctx = context(ROUTES, 0);
        let reply = answer(&query("a.test"), CLIENT.parse().unwrap(), ListenerScope::Shared, &ctx).await.unwrap();
        assert_eq!(reply[3] & 0x0f, Rcode::NoError as u8);
        assert_eq!(&reply[reply.len() - 4..], &[127, 0, 0, 9]);
        assert_eq!(rcode(&ctx, CLIENT, "b.test").await, Rcode::NxDomain as u8, "not in the routes");
        assert_eq!(rcode(&ctx, "127.0.0.1:40001", "a.test").await, Rcode::Refused as u8, "no bottle sent it");
        let scoped = answer(&query("a.test"), CLIENT.parse().unwrap(), ListenerScope::Bottle(8), &ctx).await.unwrap();
        assert_eq!(scoped[3] & 0x0f, Rcode::Refused as u8, "another bottle's listener");
    }

    #[tokio::test]
    async fn the_new_names_budget_follows_the_reloaded_gateway_yaml() {
        let ctx = context(ROUTES, 2);
        assert_eq!(rcode(&ctx, CLIENT, "x.w.test").await, Rcode::NoError as u8);
        assert_eq!(rcode(&ctx, CLIENT, "y.w.test").await, Rcode::NoError as u8);
        assert_eq!(rcode(&ctx, CLIENT, "z.w.test").await, Rcode::NxDomain as u8, "budget of 2 spent");
        assert_eq!(rcode(&ctx, CLIENT, "a.test").await, Rcode::NoError as u8, "exact names spend nothing");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.yaml");
        let yaml = |n: u32| {
            format!(
                "listen: 127.0.0.1:15001\ndns_listen: 127.0.0.1:15053\nstate_dir: {}\nbottles: []\n\
                 dns: {{new_names_per_minute: {n}, concurrent_lookups: 3}}\n",
                dir.path().join("state").display()
            )
        };
        std::fs::write(&path, yaml(3)).unwrap();
        ctx.reload_from(&path);
        assert_eq!(ctx.budgets.limit(), 3);
        assert_eq!(ctx.resolver.concurrent_lookups(), 3);
        assert_eq!(rcode(&ctx, CLIENT, "z.w.test").await, Rcode::NoError as u8, "the new budget admits it");

        // A file that does not load changes nothing.
        std::fs::write(&path, "listen: [nonsense\n").unwrap();
        ctx.reload_from(&path);
        assert_eq!(ctx.budgets.limit(), 3);
    }
}

/// DNS message encoding, just enough for single-question queries. Pure.
pub mod wire {
    use std::net::IpAddr;

    use super::{ANSWER_TTL_SECS, MAX_DATAGRAM};

    pub const QTYPE_A: u16 = 1;
    pub const QTYPE_AAAA: u16 = 28;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Query {
        pub id: u16,
        /// Lower-case, without the trailing dot.
        pub name: String,
        pub qtype: u16,
        pub qclass: u16,
        /// The question section as received, echoed in the reply.
        question: Vec<u8>,
        recursion_desired: bool,
    }

    #[derive(Debug, PartialEq, Eq)]
    pub enum ParseError {
        /// A response or something that is not a standard query: dropped silently.
        NotAQuery,
        Malformed,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Rcode {
        NoError = 0,
        FormErr = 1,
        ServFail = 2,
        NxDomain = 3,
        Refused = 5,
    }

    pub fn parse_query(p: &[u8]) -> Result<Query, ParseError> {
        if p.len() < 12 {
            return Err(ParseError::Malformed);
        }
        let id = u16::from_be_bytes([p[0], p[1]]);
        let flags = u16::from_be_bytes([p[2], p[3]]);
        let is_response = flags & 0x8000 != 0;
        let opcode = (flags >> 11) & 0xf;
        if is_response || opcode != 0 {
            return Err(ParseError::NotAQuery);
        }
        let qdcount = u16::from_be_bytes([p[4], p[5]]);
        if qdcount != 1 {
            return Err(ParseError::Malformed);
        }
        let mut i = 12;
        let mut labels: Vec<String> = Vec::new();
        loop {
            let len = *p.get(i).ok_or(ParseError::Malformed)? as usize;
            i += 1;
            if len == 0 {
                break;
            }
            // Compression pointers are not valid in a question we parse first.
            if len > 63 {
                return Err(ParseError::Malformed);
            }
            let label = p.get(i..i + len).ok_or(ParseError::Malformed)?;
            if !label.iter().all(|c| c.is_ascii_graphic()) {
                return Err(ParseError::Malformed);
            }
            labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
            i += len;
        }
        let qtype =
            u16::from_be_bytes([*p.get(i).ok_or(ParseError::Malformed)?, *p.get(i + 1).ok_or(ParseError::Malformed)?]);
        let qclass = u16::from_be_bytes([
            *p.get(i + 2).ok_or(ParseError::Malformed)?,
            *p.get(i + 3).ok_or(ParseError::Malformed)?,
        ]);
        let name = labels.join(".");
        if name.len() > 253 {
            return Err(ParseError::Malformed);
        }
        Ok(Query { id, name, qtype, qclass, question: p[12..i + 4].to_vec(), recursion_desired: flags & 0x0100 != 0 })
    }

    /// A reply to `q` with `rcode` and one answer per address (A or AAAA by family).
    pub fn reply(q: &Query, rcode: Rcode, answers: &[IpAddr]) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&q.id.to_be_bytes());
        // QR=1, AA=1, RD copied, RA=1.
        let flags: u16 = 0x8000 | 0x0400 | if q.recursion_desired { 0x0100 } else { 0 } | 0x0080 | rcode as u16;
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        let max_answers = (MAX_DATAGRAM - 12 - q.question.len()) / 28;
        let answers = &answers[..answers.len().min(max_answers)];
        out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&q.question);
        for addr in answers {
            out.extend_from_slice(&0xc00cu16.to_be_bytes()); // pointer to the question name
            let (rtype, rdata): (u16, Vec<u8>) = match addr {
                IpAddr::V4(a) => (QTYPE_A, a.octets().to_vec()),
                IpAddr::V6(a) => (QTYPE_AAAA, a.octets().to_vec()),
            };
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&1u16.to_be_bytes());
            out.extend_from_slice(&ANSWER_TTL_SECS.to_be_bytes());
            out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            out.extend_from_slice(&rdata);
        }
        out
    }

    /// An error reply that only echoes the header (for queries we could not parse).
    pub fn error_reply(p: &[u8], rcode: Rcode) -> Option<Vec<u8>> {
        if p.len() < 12 {
            return None;
        }
        let mut out = p[..12].to_vec();
        out[2] = 0x80 | (p[2] & 0x01);
        out[3] = 0x80 | rcode as u8;
        out[4..12].fill(0);
        Some(out)
    }

    #[cfg(test)]
    pub(super) mod tests {
        use super::*;

        #[test]
        fn budget_refuses_new_names_beyond_the_limit_and_frees_them_after_a_minute() {
            let b = crate::dns::NameBudgets::new(3);
            let t0 = std::time::Instant::now();
            for n in ["a", "b", "c"] {
                assert_eq!(b.admit("one", n, t0), Ok(()));
            }
            assert_eq!(b.admit("one", "d", t0), Err(1));
            assert_eq!(b.admit("one", "a", t0), Ok(()), "a name seen in the window is free");
            assert_eq!(b.admit("two", "d", t0), Ok(()), "budgets are per bottle");
            assert_eq!(b.admit("one", "e", t0 + std::time::Duration::from_secs(30)), Err(2));
            assert_eq!(b.admit("one", "e", t0 + std::time::Duration::from_secs(61)), Ok(()));
            assert_eq!(b.refused(), 2);
            assert_eq!(crate::dns::NameBudgets::new(0).admit("one", "x", t0), Ok(()), "0: no limit");
        }

        /// A one-question query for `name`, as a stub resolver sends it.
        pub(crate) fn query(name: &str, qtype: u16) -> Vec<u8> {
            let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            for label in name.split('.') {
                p.push(label.len() as u8);
                p.extend_from_slice(label.as_bytes());
            }
            p.push(0);
            p.extend_from_slice(&qtype.to_be_bytes());
            p.extend_from_slice(&1u16.to_be_bytes());
            p
        }

        #[test]
        fn parses_and_answers_an_a_query() {
            let q = parse_query(&query("Upstream.TEST", QTYPE_A)).unwrap();
            assert_eq!(q.name, "upstream.test");
            assert_eq!(q.qtype, QTYPE_A);
            let r = reply(&q, Rcode::NoError, &["127.0.0.2".parse().unwrap()]);
            assert_eq!(&r[0..2], &[0x12, 0x34]);
            assert_eq!(r[3] & 0x0f, 0);
            assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1);
            assert_eq!(&r[r.len() - 4..], &[127, 0, 0, 2]);
        }

        #[test]
        fn nxdomain_has_no_answers() {
            let q = parse_query(&query("evil.example", QTYPE_A)).unwrap();
            let r = reply(&q, Rcode::NxDomain, &[]);
            assert_eq!(r[3] & 0x0f, 3);
            assert_eq!(u16::from_be_bytes([r[6], r[7]]), 0);
        }

        #[test]
        fn rejects_truncated_and_response_packets() {
            let p = query("a.b", QTYPE_A);
            for cut in 0..p.len() {
                assert!(parse_query(&p[..cut]).is_err(), "prefix of {cut} bytes parsed");
            }
            let mut resp = p.clone();
            resp[2] |= 0x80;
            assert_eq!(parse_query(&resp), Err(ParseError::NotAQuery));
        }
    }
}
