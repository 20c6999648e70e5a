//! A local HTTPS upstream with its own test CA: records every request it receives, echoes
//! WebSocket frames on `/ws`, drains and counts uploads to `/discard`, reflects the
//! `Authorization` it got on `/reflect`, and serves
//! git repositories over smart HTTP under `/git/` (through `git http-backend`). It speaks
//! HTTP/1.1 and HTTP/2 (ALPN).
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio::io::AsyncWriteExt;

/// A CA for the upstreams of one test (the gateway trusts it via `upstream_ca_files`).
pub struct TestCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, "egress e2e upstream CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A server config for `names` (ALPN h2 and http/1.1).
    fn server_config(&self, names: &[&str]) -> rustls::ServerConfig {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], key_der)
                .unwrap();
        config.alpn_protocols = if std::env::var_os("EGRESS_TEST_H1_ONLY").is_some() {
            vec![b"http/1.1".to_vec()]
        } else {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        };
        config
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// A TLS client configuration as an agent has it: trusting the CA certificates in
/// `pem` (the gateway's CA), offering `alpn` (none: no ALPN). One helper for the suites
/// and the tools, so they all build their clients the same way.
pub fn client_config(pem: &[u8], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem).filter_map(Result::ok) {
        let _ = roots.add(cert);
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("the default provider supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path_and_query: String,
    pub version: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<Recorded>>,
    /// Data messages received on `/ws`, as text.
    ws_messages: Mutex<Vec<String>>,
    connections: AtomicUsize,
}

pub struct HttpsUpstream {
    pub addr: SocketAddr,
    seen: Arc<Seen>,
    _runtime: tokio::runtime::Runtime,
}

impl HttpsUpstream {
    /// Starts an upstream on `ip` (port chosen by the kernel) with a certificate for
    /// `names`, serving git repositories from `git_root` if given.
    pub fn start(ip: &str, names: &[&str], ca: &TestCa, git_root: Option<PathBuf>) -> HttpsUpstream {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(ca.server_config(names)));
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind((ip, 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let seen2 = seen.clone();
        let git_root = git_root.map(Arc::new);
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                seen2.connections.fetch_add(1, Ordering::SeqCst);
                let (acceptor, seen, git_root) = (acceptor.clone(), seen2.clone(), git_root.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req| handle(req, seen.clone(), git_root.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        HttpsUpstream { addr, seen, _runtime: runtime }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// TCP connections accepted (whether or not TLS completed).
    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.seen.requests.lock().unwrap().clone()
    }

    /// WebSocket data messages received, as text.
    pub fn ws_messages(&self) -> Vec<String> {
        self.seen.ws_messages.lock().unwrap().clone()
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

async fn handle(
    req: Request<Incoming>,
    seen: Arc<Seen>,
    git_root: Option<Arc<PathBuf>>,
) -> Result<Response<Body>, hyper::Error> {
    let method = req.method().to_string();
    let path_and_query = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let version = format!("{:?}", req.version());
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();

    if req.uri().path() == "/ws" && headers.get("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
        seen.requests.lock().unwrap().push(Recorded { method, path_and_query, version, headers, body: Vec::new() });
        return Ok(websocket_echo(req, seen));
    }

    if req.uri().path() == "/discard" {
        // Large uploads (load tests): counted and dropped, never kept or echoed.
        let mut body = req.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                n += data.len() as u64;
            }
        }
        seen.requests.lock().unwrap().push(Recorded { method, path_and_query, version, headers, body: Vec::new() });
        return Ok(Response::new(full(n.to_string())));
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes().to_vec();
    seen.requests.lock().unwrap().push(Recorded {
        method: method.clone(),
        path_and_query: path_and_query.clone(),
        version: version.clone(),
        headers: headers.clone(),
        body: body.clone(),
    });

    if parts.uri.path() == "/reflect" {
        return Ok(reflect(&headers));
    }
    if parts.uri.path() == "/sse" {
        return Ok(event_stream(String::from_utf8_lossy(&body).into_owned()));
    }
    if let (Some(root), Some(rest)) = (git_root, parts.uri.path().strip_prefix("/git")) {
        return Ok(git_backend(&root, &parts, rest, body).await);
    }
    let echo = serde_json::json!({
        "method": method,
        "path": path_and_query,
        "version": version,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    Ok(Response::builder().header("content-type", "application/json").body(full(echo.to_string())).unwrap())
}

/// `/reflect`: the request's `Authorization` sent back in a response header and inside a
/// binary body (bytes that are not UTF-8 around it), as a careless upstream might.
fn reflect(headers: &BTreeMap<String, String>) -> Response<Body> {
    let auth = headers.get("authorization").cloned().unwrap_or_default();
    let body = [&REFLECT_PREFIX[..], auth.as_bytes(), &REFLECT_SUFFIX[..]].concat();
    Response::builder()
        .header("content-type", "application/octet-stream")
        .header("x-reflected", auth)
        .body(full(body))
        .unwrap()
}

/// The bytes `/reflect` puts around the reflected credential.
pub const REFLECT_PREFIX: [u8; 5] = [0x00, 0xff, 0xfe, 0xc3, 0x28];
pub const REFLECT_SUFFIX: [u8; 3] = [0x80, 0x00, 0xff];

fn websocket_echo(mut req: Request<Incoming>, seen: Arc<Seen>) -> Response<Body> {
    let key = req.headers().get("sec-websocket-key").cloned().unwrap_or_else(|| "".parse().unwrap());
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(&mut req).await else {
            return;
        };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        let (mut tx, mut rx) = ws.split();
        while let Some(Ok(msg)) = rx.next().await {
            if msg.is_text() || msg.is_binary() {
                seen.ws_messages.lock().unwrap().push(String::from_utf8_lossy(&msg.clone().into_data()).into_owned());
                if tx.send(msg).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                break;
            }
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(full(Bytes::new()))
        .unwrap()
}

/// `/sse`: the request body split at `|` and streamed back as LLM-style token deltas,
/// one server-sent event per piece, a little apart (so they cross chunk boundaries).
fn event_stream(text: String) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        for piece in text.split('|') {
            let data =
                serde_json::json!({"type": "content_block_delta", "delta": {"type": "text_delta", "text": piece}});
            if tx.send(Bytes::from(format!("event: content_block_delta\ndata: {data}\n\n"))).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        let _ = tx.send(Bytes::from_static(b"event: message_stop\ndata: {}\n\n")).await;
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b)), rx))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(http_body_util::StreamBody::new(frames)))
        .unwrap()
}

/// Runs `git http-backend` as a CGI for one request.
async fn git_backend(root: &Path, parts: &http::request::Parts, path_info: &str, body: Vec<u8>) -> Response<Body> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", path_info)
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", "e2e")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(ct) = parts.headers.get("content-type") {
        cmd.env("CONTENT_TYPE", ct.to_str().unwrap_or(""));
    }
    if let Some(proto) = parts.headers.get("git-protocol") {
        cmd.env("GIT_PROTOCOL", proto.to_str().unwrap_or(""));
    }
    let Ok(mut child) = cmd.spawn() else {
        return Response::builder().status(500).body(full("git http-backend failed")).unwrap();
    };
    let mut stdin = child.stdin.take().unwrap();
    tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.unwrap();
    // CGI output: headers, blank line, body.
    let raw = out.stdout;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    let split = split.or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, sep)) = split else {
        return Response::builder().status(500).body(full("bad CGI output")).unwrap();
    };
    let mut resp = Response::builder();
    for line in String::from_utf8_lossy(&raw[..end]).lines() {
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("status") {
                let code: u16 = v.split_whitespace().next().and_then(|c| c.parse().ok()).unwrap_or(500);
                resp = resp.status(code);
            } else {
                resp = resp.header(k.trim(), v.trim());
            }
        }
    }
    resp.body(full(Bytes::copy_from_slice(&raw[end + sep..]))).unwrap()
}

/// Creates a bare repository `name.git` under `root` with one commit, for clone tests.
pub fn make_git_repo(root: &Path, name: &str) {
    let work = root.join(format!("{name}-work"));
    let run = |args: &[&str], dir: &Path| {
        let st = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "e2e")
            .env("GIT_AUTHOR_EMAIL", "e2e@example.invalid")
            .env("GIT_COMMITTER_NAME", "e2e")
            .env("GIT_COMMITTER_EMAIL", "e2e@example.invalid")
            .output()
            .expect("git");
        assert!(st.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&st.stderr));
    };
    std::fs::create_dir_all(&work).unwrap();
    run(&["init", "-q", "-b", "main"], &work);
    std::fs::write(work.join("README"), "hello from the e2e repository\n").unwrap();
    run(&["add", "README"], &work);
    run(&["commit", "-q", "-m", "first"], &work);
    run(&["clone", "-q", "--bare", work.to_str().unwrap(), root.join(format!("{name}.git")).to_str().unwrap()], root);
    // Allow pushes over HTTP so a refused push is refused by the gateway, not the server.
    run(&["config", "http.receivepack", "true"], &root.join(format!("{name}.git")));
}
