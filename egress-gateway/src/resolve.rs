//! The gateway's own name resolution: the config's `hosts:` overrides first, then the
//! system resolver. Bottles never choose where a name points.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

#[derive(Debug, Clone, Default)]
pub struct Resolver {
    overrides: BTreeMap<String, Vec<IpAddr>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}: {reason}")]
pub struct ResolveError {
    pub host: String,
    pub reason: String,
}

impl Resolver {
    pub fn new(overrides: BTreeMap<String, Vec<IpAddr>>) -> Self {
        Resolver { overrides }
    }

    /// Every address of `host` (an IP literal resolves to itself).
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        if let Some(addrs) = self.overrides.get(&host) {
            return Ok(addrs.clone());
        }
        let addrs: Vec<IpAddr> = tokio::net::lookup_host((host.as_str(), 0))
            .await
            .map_err(|e| ResolveError { host: host.clone(), reason: e.to_string() })?
            .map(|sa: SocketAddr| sa.ip())
            .collect();
        if addrs.is_empty() {
            return Err(ResolveError { host, reason: "no addresses".into() });
        }
        Ok(addrs)
    }

    /// Whether `ip` is one of `host`'s addresses: the check that keeps data for a host
    /// from being delivered anywhere else.
    pub async fn is_address_of(&self, host: &str, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match self.lookup(host).await {
            Ok(addrs) => addrs.into_iter().any(|a| canonical(a) == ip),
            Err(_) => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses compare equal to their IPv4 form.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overrides_win_and_literals_resolve_to_themselves() {
        let mut m = BTreeMap::new();
        m.insert("upstream.test".to_string(), vec!["127.0.0.2".parse().unwrap()]);
        let r = Resolver::new(m);
        assert_eq!(r.lookup("Upstream.Test.").await.unwrap(), vec!["127.0.0.2".parse::<IpAddr>().unwrap()]);
        assert!(r.is_address_of("upstream.test", "::ffff:127.0.0.2".parse().unwrap()).await);
        assert!(!r.is_address_of("upstream.test", "127.0.0.3".parse().unwrap()).await);
        assert_eq!(r.lookup("127.0.0.9").await.unwrap(), vec!["127.0.0.9".parse::<IpAddr>().unwrap()]);
    }
}
