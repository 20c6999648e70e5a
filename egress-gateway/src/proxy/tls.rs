//! TLS termination: read the ClientHello, mint a leaf for its SNI (or for the destination
//! address when there is none), offer h2 only to a client that offered it, then hand the
//! decrypted stream to the HTTP layer.
use std::sync::Arc;

use rustls::{
    server::{Acceptor, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;

use super::{Flow, HANDSHAKE_TIMEOUT, ProxyContext, http};

/// Serves one certificate, chosen before the handshake.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Leaves in use at once, and so configurations kept.
const CACHED_CONFIGS: u64 = 4096;

/// One `ServerConfig` per (leaf name, h2 offered), rebuilt only when the CA hands out a
/// new leaf for the name (the old one expired).
pub struct ConfigCache {
    configs: moka::sync::Cache<(String, bool), (Arc<CertifiedKey>, Arc<rustls::ServerConfig>)>,
}

impl Default for ConfigCache {
    fn default() -> Self {
        ConfigCache { configs: moka::sync::Cache::new(CACHED_CONFIGS) }
    }
}

impl ConfigCache {
    pub fn get(&self, name: &str, leaf: Arc<CertifiedKey>, offers_h2: bool) -> Arc<rustls::ServerConfig> {
        let key = (name.to_string(), offers_h2);
        if let Some((cached_leaf, config)) = self.configs.get(&key)
            && Arc::ptr_eq(&cached_leaf, &leaf)
        {
            return config;
        }
        let config = Arc::new(server_config(leaf.clone(), offers_h2));
        self.configs.insert(key, (leaf, config.clone()));
        config
    }
}

fn server_config(leaf: Arc<CertifiedKey>, offers_h2: bool) -> rustls::ServerConfig {
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("the default provider supports the default versions")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(leaf)));
    config.alpn_protocols =
        if offers_h2 { vec![b"h2".to_vec(), b"http/1.1".to_vec()] } else { vec![b"http/1.1".to_vec()] };
    // No resumption, as when each handshake had a configuration of its own: every
    // connection is shown the leaf (and its SNI checked) afresh.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config
}

pub async fn serve<I>(io: I, mut flow: Flow, ctx: Arc<ProxyContext>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = async {
        let start = LazyConfigAcceptor::new(Acceptor::default(), io).await?;
        let hello = start.client_hello();
        let sni = hello.server_name().map(|s| s.trim_end_matches('.').to_ascii_lowercase());
        let offers_h2 = hello.alpn().is_some_and(|mut protos| protos.any(|p| p == b"h2"));
        Ok::<_, std::io::Error>((start, sni, offers_h2))
    };
    let (start, sni, offers_h2) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::info!(decision = "deny", reason = %format!("bad TLS ClientHello: {e}"), "connection closed");
            return;
        }
        Err(_) => {
            tracing::info!(decision = "deny", reason = "TLS ClientHello timed out", "connection closed");
            return;
        }
    };
    if sni.as_deref().is_some_and(|name| crate::dlp::hostname::carries_data(&flow.conn.bottle.dlp(), name)) {
        let reason = "the TLS server name looks like it carries data (a secret or an encoded label)";
        tracing::warn!(decision = "deny", reason, "connection closed");
        return;
    }
    if let (Some(connect_host), Some(sni)) = (&flow.connect_host, &sni)
        && connect_host != sni
    {
        tracing::info!(
            decision = "deny",
            sni = %sni,
            reason = %format!("SNI {sni} does not match the CONNECT target {connect_host}"),
            "connection closed"
        );
        return;
    }
    // Without SNI the client connected by address: the leaf names the address.
    let cert_name = sni.clone().unwrap_or_else(|| flow.dst.ip().to_string());
    let leaf = match ctx.ca.leaf(&cert_name) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(decision = "deny", reason = %e, "connection closed");
            return;
        }
    };
    let config = ctx.tls_configs.get(&cert_name, leaf, offers_h2);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(config)).await {
        Ok(Ok(s)) => {
            crate::metrics::global().tls_handshake("client", true);
            s
        }
        Ok(Err(e)) => {
            crate::metrics::global().tls_handshake("client", false);
            // Usually the client does not trust the gateway's CA.
            tracing::info!(decision = "deny", reason = %format!("TLS handshake failed: {e}"), "connection closed");
            return;
        }
        Err(_) => {
            crate::metrics::global().tls_handshake("client", false);
            tracing::info!(decision = "deny", reason = "TLS handshake timed out", "connection closed");
            return;
        }
    };
    flow.sni = sni;
    flow.tls = true;
    http::serve(tls, Arc::new(flow), ctx).await;
}
