//! The DNS listener: bottles' UDP port 53 traffic lands here. A name the bottle's policy
//! allows is answered from the gateway's resolver; every other name gets NXDOMAIN.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::net::UdpSocket;

use crate::app::{Gateway, ListenerScope};

/// TTL of answers: short, so policy and override changes take effect quickly.
const ANSWER_TTL_SECS: u32 = 30;
const MAX_DATAGRAM: usize = 1232;
/// The name bottles ask the gateway about themselves (`http://_egress.local/allowlist`).
const INTROSPECTION_NAME: &str = "_egress.local";
const INTROSPECTION_ADDR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Answers the queries that reach one DNS listener; `scope` says whose they can be.
pub async fn serve(socket: UdpSocket, scope: ListenerScope, gw: Arc<Gateway>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
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

async fn answer(packet: &[u8], peer: SocketAddr, scope: ListenerScope, gw: &Gateway) -> Option<Vec<u8>> {
    let query = match wire::parse_query(packet) {
        Ok(q) => q,
        Err(wire::ParseError::NotAQuery) => return None,
        Err(wire::ParseError::Malformed) => return wire::error_reply(packet, wire::Rcode::FormErr),
    };
    // A namespaced bottle's listener is its own; the shared one asks the map which bottle
    // sent from this address and port.
    let recorded = match scope {
        ListenerScope::Shared => gw.maps.dns_client_bottle(peer),
        ListenerScope::Bottle(_) => None,
    };
    let bottle = match (scope, recorded) {
        (ListenerScope::Shared, None) => None,
        _ => gw.bottle_for(scope, recorded),
    };
    let Some(bottle) = bottle else {
        // No bottle to scope it to: withheld if it may carry any bottle's secret.
        let mut name = crate::dlp::hostname::loggable(&gw.proxy.dlp, &query.name);
        if name == query.name && gw.bottles().iter().any(|b| crate::dlp::hostname::carries_data(&b.dlp(), &query.name))
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
        return Some(wire::reply(&query, wire::Rcode::NxDomain, &[]));
    }
    // A new name under a wildcard spends the bottle's budget: whatever the shape checks
    // miss, a tunnel gets only so many names a minute.
    if let Some(route) = live.routes.route_for(&query.name).filter(|r| r.host.starts_with("*."))
        && let Err(refused) = gw.dns_budgets.admit(&bottle.config.name, &query.name, Instant::now())
    {
        // Never the name: under a wildcard its labels are the bottle's to choose.
        tracing::warn!(
            bottle = %bottle.config.name,
            wildcard = %route.host,
            name_len = query.name.len(),
            limit_per_minute = gw.dns_budgets.limit(),
            refused_total = refused,
            decision = "nxdomain",
            reason = "budget of new names under a wildcard spent",
            "dns query denied"
        );
        return Some(wire::reply(&query, wire::Rcode::NxDomain, &[]));
    }
    let addrs = match gw.resolver.lookup_for(&bottle.config.name, &query.name).await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(bottle = %bottle.config.name, name = %query.name, error = %e, "dns resolution failed");
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
    Some(wire::reply(&query, wire::Rcode::NoError, &wanted))
}

/// How long a name stays "seen" for a bottle's budget.
const BUDGET_WINDOW: Duration = Duration::from_secs(60);

/// Per bottle, the distinct names under wildcard routes it resolved in the last minute;
/// a name beyond `dns.new_names_per_minute` is refused. Names already seen in the
/// window are free, so a client asking again is never refused.
pub struct NameBudgets {
    limit: u32,
    seen: Mutex<HashMap<String, HashMap<String, Instant>>>,
    refused: AtomicU64,
}

impl NameBudgets {
    /// `limit` new names per minute and bottle; 0: no limit.
    pub fn new(limit: u32) -> Self {
        NameBudgets { limit, seen: Mutex::default(), refused: AtomicU64::new(0) }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Names refused so far, every bottle.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Admits `name` for `bottle` at `now`, or says how many have been refused in all.
    pub fn admit(&self, bottle: &str, name: &str, now: Instant) -> Result<(), u64> {
        if self.limit == 0 {
            return Ok(());
        }
        let mut all = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let seen = all.entry(bottle.to_string()).or_default();
        if seen.get(name).is_some_and(|t| now.duration_since(*t) < BUDGET_WINDOW) {
            return Ok(());
        }
        seen.retain(|_, t| now.duration_since(*t) < BUDGET_WINDOW);
        if seen.len() < self.limit as usize {
            seen.insert(name.to_string(), now);
            return Ok(());
        }
        Err(self.refused.fetch_add(1, Ordering::Relaxed) + 1)
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
    mod tests {
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

        fn query(name: &str, qtype: u16) -> Vec<u8> {
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
