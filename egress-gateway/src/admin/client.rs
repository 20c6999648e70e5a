//! The CLI's side of the admin socket: one HTTP/1.1 request per connection.
use std::{
    fmt, io,
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use super::{
    BottleInfo, ReloadReport,
    api::{ApiError, ApiProblem, BottleRequest, ErrorBody},
    server::peer_allowed,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An attach may create a namespace and open listeners in it: give it time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Answers are lists of bottles: a few KiB each.
const MAX_ANSWER: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens: no socket file, or a stale one.
    #[error("the gateway is not running: {} at {} (is `egress-gateway run` started?)", .reason, .path.display())]
    NotRunning { path: PathBuf, reason: &'static str },
    #[error("permission denied on the admin socket {}: it is for root only", .0.display())]
    PermissionDenied(PathBuf),
    #[error("the admin socket {} is served by uid {uid}, neither root nor us: not talking to it", .path.display())]
    UntrustedServer { path: PathBuf, uid: u32 },
    /// Refused here, before asking the gateway.
    #[error("bottle name {0}")]
    InvalidName(String),
    /// The gateway refused the request.
    #[error("{}", ApiDisplay(.0))]
    Api(ApiError),
    #[error("admin socket {}: {what}: {source}", .path.display())]
    Io { path: PathBuf, what: &'static str, source: io::Error },
    #[error("admin socket {}: {0}", .path.display())]
    Protocol { path: PathBuf, message: String },
}

impl ClientError {
    /// The gateway is not running (as opposed to running and refusing).
    pub fn is_not_running(&self) -> bool {
        matches!(self, ClientError::NotRunning { .. })
    }

    /// The HTTP status of a refused request.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api(e) => Some(e.status),
            _ => None,
        }
    }
}

/// `error` then one line per problem.
struct ApiDisplay<'a>(&'a ApiError);

impl fmt::Display for ApiDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the gateway refused: {}", self.0.error)?;
        for p in &self.0.problems {
            write!(f, "\n  {}: {}", p.field, p.message)?;
        }
        Ok(())
    }
}

/// A client of one admin socket.
#[derive(Debug, Clone)]
pub struct AdminClient {
    path: PathBuf,
}

impl AdminClient {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        AdminClient { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn list(&self) -> Result<Vec<BottleInfo>, ClientError> {
        self.call_json(Method::GET, "/v1/bottles", None).await
    }

    pub async fn get(&self, name: &str) -> Result<BottleInfo, ClientError> {
        self.call_json(Method::GET, &bottle_path(name)?, None).await
    }

    /// `request`'s paths must be absolute (the gateway refuses relative ones).
    pub async fn attach(&self, name: &str, request: &BottleRequest) -> Result<BottleInfo, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| self.protocol(e.to_string()))?;
        self.call_json(Method::PUT, &bottle_path(name)?, Some(body)).await
    }

    pub async fn detach(&self, name: &str, force: bool) -> Result<(), ClientError> {
        let mut target = bottle_path(name)?;
        if force {
            target.push_str("?force=true");
        }
        self.call(Method::DELETE, &target, None).await.map(drop)
    }

    pub async fn reload(&self) -> Result<ReloadReport, ClientError> {
        self.call_json(Method::POST, "/v1/reload", None).await
    }

    async fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        target: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let bytes = self.call(method, target, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| self.protocol(format!("unexpected answer: {e}")))
    }

    /// One request; a non-2xx answer is `ClientError::Api`.
    pub async fn call(&self, method: Method, target: &str, body: Option<Vec<u8>>) -> Result<Bytes, ClientError> {
        let stream = self.connect().await?;
        let exchange = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| self.protocol(e.to_string()))?;
            let conn = tokio::spawn(conn);
            let mut req = Request::builder().method(method).uri(target).header(header::HOST, "localhost");
            if body.is_some() {
                req = req.header(header::CONTENT_TYPE, "application/json");
            }
            let req =
                req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| self.protocol(e.to_string()))?;
            let resp = sender.send_request(req).await.map_err(|e| self.protocol(e.to_string()))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| self.protocol(format!("reading the answer: {e}")))?
                .to_bytes();
            conn.abort();
            if status.is_success() {
                return Ok(bytes);
            }
            let (error, problems) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => (b.error, b.problems),
                Err(_) => (format!("HTTP {status}"), Vec::<ApiProblem>::new()),
            };
            Err(ClientError::Api(ApiError { status, error, problems, allow: None }))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(self.protocol(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))))
    }

    async fn connect(&self) -> Result<UnixStream, ClientError> {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(&self.path)).await {
            Err(_) => return Err(self.protocol("connect timed out".into())),
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let path = self.path.clone();
                return Err(match e.kind() {
                    io::ErrorKind::NotFound => ClientError::NotRunning { path, reason: "no admin socket" },
                    io::ErrorKind::ConnectionRefused => {
                        ClientError::NotRunning { path, reason: "nothing answers on the admin socket" }
                    }
                    io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(path),
                    _ => ClientError::Io { path, what: "connecting", source: e },
                });
            }
        };
        // The gateway checks us; we check it, so a socket planted by another user is not
        // told which bottles to attach.
        let uid = stream
            .peer_cred()
            .map_err(|e| ClientError::Io { path: self.path.clone(), what: "SO_PEERCRED", source: e })?
            .uid();
        if !peer_allowed(uid, nix::unistd::geteuid().as_raw()) {
            return Err(ClientError::UntrustedServer { path: self.path.clone(), uid });
        }
        Ok(stream)
    }

    fn protocol(&self, message: String) -> ClientError {
        ClientError::Protocol { path: self.path.clone(), message }
    }
}

/// `/v1/bottles/NAME`, the name checked here first so the error is the CLI's own.
fn bottle_path(name: &str) -> Result<String, ClientError> {
    if let Some(msg) = crate::config::bottle_name_problem(name) {
        return Err(ClientError::InvalidName(msg));
    }
    // Valid names are [a-z0-9_-]: nothing to escape.
    Ok(format!("/v1/bottles/{name}"))
}
