//! The gateway's own client to upstreams: every connection goes to the address the
//! request was authorized for (`authorize::Target`), never to a second lookup of the
//! name; TLS verified against webpki and system roots plus the
//! configured extra CAs, HTTP/1.1 and HTTP/2 negotiated independently of the client,
//! connections pooled.
use std::{
    future::Future,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{HttpConnector, dns::Name},
    },
    rt::{TokioExecutor, TokioIo},
};

use crate::resolve::ResolveError;

pub type Body = BoxBody<Bytes, BoxError>;
/// A body error: the upstream's, or the gateway cutting a stream it refused.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("reading upstream CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
    #[error("TLS with {0}: {1}")]
    Tls(String, String),
    #[error("HTTP with {0}: {1}")]
    Http(String, String),
}

tokio::task_local! {
    /// The host and address the request being sent was authorized for.
    static CHECKED: (String, SocketAddr);
}

/// hyper's connector "resolves" a name to the address checked for the request it is
/// connecting for (set around `send`): the name is resolved once, by authorize. Without
/// one, or for another name, it fails: nothing is dialled that was not checked.
#[derive(Clone)]
struct CheckedAddress;

impl tower_service::Service<Name> for CheckedAddress {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ResolveError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ResolveError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        // Read now: `call` runs while the request's future is polled, inside the scope.
        let checked = CHECKED.try_with(|(host, addr)| (host.clone(), *addr));
        let found = match checked {
            Ok((host, addr)) if host.eq_ignore_ascii_case(name.as_str()) => Ok(vec![addr].into_iter()),
            Ok((host, _)) => Err(ResolveError {
                host: name.as_str().into(),
                reason: format!("the request was authorized for {host}, not this name"),
            }),
            Err(_) => Err(ResolveError {
                host: name.as_str().into(),
                reason: "no authorized address for this connection".into(),
            }),
        };
        Box::pin(std::future::ready(found))
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector<CheckedAddress>>;

pub struct Upstream {
    /// Offers h2 and HTTP/1.1 upstream: for requests that arrived over h2 (gRPC needs it).
    client_h2: Client<Connector, Body>,
    /// HTTP/1.1 only: for requests that arrived over HTTP/1.x. Measured: an HTTP/1.1
    /// request relayed over a pooled h2 connection stalled ~40 ms (see docs/decisions).
    client_h1: Client<Connector, Body>,
    tls: Arc<rustls::ClientConfig>,
}

impl Upstream {
    pub fn new(extra_ca_files: &[impl AsRef<Path>]) -> Result<Upstream, UpstreamError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        for file in extra_ca_files {
            let path = file.as_ref();
            let err = |reason: String| UpstreamError::CaFile { path: path.display().to_string(), reason };
            let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            let mut found = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(cert.map_err(|e| err(e.to_string()))?).map_err(|e| err(e.to_string()))?;
                found += 1;
            }
            if found == 0 {
                return Err(err("no PEM certificate in the file".into()));
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("the default provider supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tls = Arc::new(tls);
        let http = || {
            let mut http = HttpConnector::new_with_resolver(CheckedAddress);
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(Some(CONNECT_TIMEOUT));
            http
        };
        let builder = || hyper_rustls::HttpsConnectorBuilder::new().with_tls_config((*tls).clone()).https_or_http();
        let h2 = builder().enable_all_versions().wrap_connector(http());
        let h1 = builder().enable_http1().wrap_connector(http());
        let pool = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(POOL_IDLE_TIMEOUT);
            b
        };
        Ok(Upstream { client_h2: pool().build(h2), client_h1: pool().build(h1), tls })
    }

    /// Sends a request (absolute URI naming `host`) through the pool; a new connection
    /// goes to `addr`, the address authorize checked. `client_h2` says whether the
    /// client spoke HTTP/2, in which case h2 is offered upstream too. A pooled connection
    /// for the same host and port may be reused: it was made to a checked address of it.
    pub async fn send(
        &self,
        req: http::Request<Body>,
        client_h2: bool,
        host: &str,
        addr: SocketAddr,
    ) -> Result<http::Response<hyper::body::Incoming>, UpstreamError> {
        let authority = req.uri().authority().map(|a| a.to_string()).unwrap_or_default();
        let client = if client_h2 { &self.client_h2 } else { &self.client_h1 };
        CHECKED
            .scope((host.to_string(), addr), client.request(req))
            .await
            .map_err(|e| UpstreamError::Http(authority, error_chain(&e)))
    }

    /// A dedicated HTTP/1.1 connection (for upgrades such as WebSocket, which a pooled
    /// h2 connection cannot carry) to `host` at `addr`, TLS when `tls`.
    pub async fn dial_http1(
        &self,
        host: &str,
        addr: SocketAddr,
        tls: bool,
    ) -> Result<hyper::client::conn::http1::SendRequest<Body>, UpstreamError> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| UpstreamError::Connect(addr.to_string(), "timed out".into()))?
            .map_err(|e| UpstreamError::Connect(addr.to_string(), e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        if tls {
            let mut config = (*self.tls).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| UpstreamError::Tls(host.into(), e.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| UpstreamError::Tls(host.into(), e.to_string()))?;
            handshake(host, TokioIo::new(stream)).await
        } else {
            handshake(host, TokioIo::new(tcp)).await
        }
    }
}

async fn handshake<I>(host: &str, io: I) -> Result<hyper::client::conn::http1::SendRequest<Body>, UpstreamError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (send, conn) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| UpstreamError::Http(host.into(), e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(send)
}

/// An error and its causes on one line (hyper-util's errors hide the useful part).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
