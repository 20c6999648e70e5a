//! The admin socket's server: bind safely, check who connects, serve HTTP/1.1.
//!
//! Three locks on the door: the socket's directory is 0700 and not writable by others,
//! the socket file is 0600 before the socket listens (nothing can connect to a socket
//! that does not listen yet, so there is no window), and every connection's peer uid
//! (SO_PEERCRED) must be root or the gateway's own.
use std::{
    fs::{DirBuilder, File, OpenOptions},
    future::Future,
    io,
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::fcntl::{Flock, FlockArg};
use tokio::net::{UnixListener, UnixStream};

use super::{
    BottleControl,
    api::{self, AdminRequest, ApiError},
};

/// A client has this long to send its request head, and again its body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("admin socket {}: {what}: {source}", path.display())]
    Io { path: PathBuf, what: &'static str, source: io::Error },
    #[error(
        "admin socket {}: another gateway is serving it (stop it first, or give this one its own admin_socket)",
        .0.display()
    )]
    InUse(PathBuf),
    #[error("admin socket {}: {reason}", path.display())]
    Unsafe { path: PathBuf, reason: String },
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> ServerError + 'a {
    move |source| ServerError::Io { path: path.to_path_buf(), what, source }
}

/// A bound, listening admin socket. Dropping it removes the socket file (if it is still
/// the one this gateway bound) and releases the lock.
pub struct AdminListener {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's (device, inode): only that file is removed on drop.
    inode: (u64, u64),
    /// Held for the gateway's life: a second gateway on the same path stops at bind.
    _lock: Flock<File>,
}

impl AdminListener {
    /// Creates the directory (0700) if needed, takes `<path>.lock`, removes a stale socket
    /// file (one nothing answers on) and binds. Must run inside a tokio runtime.
    pub fn bind(path: &Path) -> Result<AdminListener, ServerError> {
        let unsafe_path = |reason: String| ServerError::Unsafe { path: path.to_path_buf(), reason };
        if !path.is_absolute() {
            return Err(unsafe_path("must be an absolute path".into()));
        }
        let dir = path.parent().ok_or_else(|| unsafe_path("has no parent directory".into()))?;
        DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir, "creating its directory"))?;
        check_dir(dir).map_err(unsafe_path)?;

        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&lock_path)
            .map_err(io_err(&lock_path, "opening the lock file"))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                ServerError::InUse(path.to_path_buf())
            } else {
                ServerError::Io { path: lock_path.clone(), what: "locking", source: errno.into() }
            }
        })?;

        remove_stale(path)?;

        let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
            .map_err(io_err(path, "creating the socket"))?;
        // The file bind() creates takes the socket inode's mode (less the umask), so it
        // is 0600 from its first moment; the chmod after bind is for kernels that differ.
        nix::sys::stat::fchmod(&socket, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| ServerError::Io { path: path.to_path_buf(), what: "fchmod", source: e.into() })?;
        let addr = socket2::SockAddr::unix(path).map_err(io_err(path, "socket address"))?;
        socket.bind(&addr).map_err(io_err(path, "binding"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io_err(path, "chmod 0600"))?;
        let meta = std::fs::symlink_metadata(path).map_err(io_err(path, "stat after bind"))?;
        if !meta.file_type().is_socket()
            || meta.mode() & 0o777 != 0o600
            || meta.uid() != nix::unistd::geteuid().as_raw()
        {
            let _ = std::fs::remove_file(path);
            return Err(unsafe_path(format!(
                "is mode {:o} owned by uid {} after bind",
                meta.mode() & 0o777,
                meta.uid()
            )));
        }
        // Only now can anyone connect.
        socket.listen(64).map_err(io_err(path, "listening"))?;
        socket.set_nonblocking(true).map_err(io_err(path, "set_nonblocking"))?;
        let std_listener: std::os::unix::net::UnixListener = socket.into();
        let listener = UnixListener::from_std(std_listener).map_err(io_err(path, "registering with the runtime"))?;
        Ok(AdminListener { listener, path: path.to_path_buf(), inode: (meta.dev(), meta.ino()), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` completes, then removes the socket. A request already
    /// handed to `control` runs to its end even if its client goes away: an attach is
    /// never left half done.
    pub async fn serve<C: BottleControl>(self, control: Arc<C>, shutdown: impl Future<Output = ()>) {
        tracing::info!(path = %self.path.display(), "admin socket listening");
        let euid = nix::unistd::geteuid().as_raw();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(connection(stream, control.clone(), euid));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        tracing::info!(path = %self.path.display(), "admin socket closed");
    }
}

impl Drop for AdminListener {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.inode
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds `path` and serves it until `shutdown`.
pub async fn serve<C: BottleControl>(
    path: &Path,
    control: Arc<C>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    AdminListener::bind(path)?.serve(control, shutdown).await;
    Ok(())
}

/// The socket's directory must be ours (or root's) and writable by nobody else: whoever
/// can write it could replace the socket.
fn check_dir(dir: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(dir).map_err(|e| format!("its directory {}: {e}", dir.display()))?;
    let euid = nix::unistd::geteuid().as_raw();
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(format!("its directory {} is owned by uid {}", dir.display(), meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "its directory {} is writable by group or others (mode {:o}): use a directory only root can write",
            dir.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// A socket file left by a gateway that is gone is removed; one that answers means
/// another gateway is running; anything else is left alone and refused.
fn remove_stale(path: &Path) -> Result<(), ServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path, "stat")(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::Unsafe {
            path: path.to_path_buf(),
            reason: "exists and is not a socket: not removing it".into(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServerError::InUse(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing the stale admin socket");
            std::fs::remove_file(path).map_err(io_err(path, "removing the stale socket"))
        }
        Err(e) => Err(io_err(path, "probing the existing socket")(e)),
    }
}

/// Who may talk to the gateway: root, or the gateway's own user.
pub fn peer_allowed(uid: u32, euid: u32) -> bool {
    uid == 0 || uid == euid
}

async fn connection<C: BottleControl>(stream: UnixStream, control: Arc<C>, euid: u32) {
    // Defence in depth behind the file mode: the kernel's word on who is connected.
    let peer = stream.peer_cred().ok();
    let uid = peer.map(|p| p.uid());
    let pid = peer.and_then(|p| p.pid()).and_then(|p| u32::try_from(p).ok());
    // Root inside a bottle passes the file mode and the uid check: the peer's cgroup says
    // where it runs. A peer whose pid is unknown is refused too.
    let bottled = pid.map_or(Some("(unknown pid)".to_string()), |p| control.peer_bottle(p));
    let allowed = uid.is_some_and(|u| peer_allowed(u, euid)) && bottled.is_none();
    if !allowed {
        tracing::warn!(uid = ?uid, pid = ?pid, bottle = ?bottled, "admin socket: connection refused");
    }
    serve_connection(stream, control, if allowed { Access::Full } else { Access::Refused }, uid).await;
}

/// One HTTP/1.1 request on `stream`, then the connection closes.
async fn serve_connection<C, S>(stream: S, control: Arc<C>, access: Access, uid: Option<u32>)
where
    C: BottleControl,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let control = control.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(req, control, access, uid).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        // One request per connection: the CLI makes one, and idle connections cost nothing then.
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "admin socket: connection ended with an error");
    }
}

/// Who may ask what on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Root (or the gateway's user) outside every bottle, on the unix socket.
    Full,
    /// `admin_listen`: the probes and metrics only.
    ReadOnly,
    Refused,
}

async fn handle<C: BottleControl>(
    req: Request<Incoming>,
    control: Arc<C>,
    access: Access,
    uid: Option<u32>,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let target = req.uri().path_and_query().map(|pq| pq.as_str().to_string()).unwrap_or_else(|| "/".into());
    let request = match access {
        Access::Refused => {
            Err(ApiError::new(StatusCode::FORBIDDEN, "the admin socket is for root outside every bottle only"))
        }
        Access::Full | Access::ReadOnly => {
            read_body(req).await.and_then(|body| api::parse(&method, &target, &body)).and_then(|r| {
                if access == Access::ReadOnly && !r.is_read_only_probe() {
                    Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "admin_listen serves GET /healthz, /readyz and /metrics only: use the admin socket",
                    ))
                } else {
                    Ok(r)
                }
            })
        }
    };
    let response = match request {
        Ok(request) => {
            // Every answer is JSON but the metrics, which are Prometheus text.
            let content_type =
                if matches!(request, AdminRequest::Metrics) { crate::metrics::CONTENT_TYPE } else { JSON };
            dispatch(request, control).await.map(|(status, body)| (status, body, content_type))
        }
        Err(e) => Err(e),
    };
    let (status, response) = match response {
        Ok((status, body, content_type)) => (status, body_response(status, body, content_type)),
        Err(e) => {
            let mut r = body_response(e.status, e.body(), JSON);
            if let Some(allow) = e.allow {
                r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
            }
            (e.status, r)
        }
    };
    // The path holds a bottle name at most; bodies (paths, routes) are not logged.
    // Probes and scrapes come every few seconds: they are not worth a line each.
    if matches!(target.as_str(), "/healthz" | "/readyz" | "/metrics") && status.is_success() {
        tracing::debug!(uid = ?uid, method = %method, path = %target, status = status.as_u16(), "admin request");
    } else {
        tracing::info!(uid = ?uid, method = %method, path = %target, status = status.as_u16(), "admin request");
    }
    response
}

/// The body, at most `api::MAX_BODY` bytes, within `READ_TIMEOUT`.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let too_large =
        || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {} KiB", api::MAX_BODY / 1024));
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > api::MAX_BODY as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(READ_TIMEOUT, Limited::new(req.into_body(), api::MAX_BODY).collect()).await {
        Err(_) => Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time")),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::new(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

async fn dispatch<C: BottleControl>(request: AdminRequest, control: Arc<C>) -> Answer {
    match request {
        AdminRequest::List => Ok((StatusCode::OK, api::json(&control.list()))),
        AdminRequest::Get(name) => match control.list().into_iter().find(|b| b.name == name) {
            Some(info) => Ok((StatusCode::OK, api::json(&info))),
            None => Err(super::ControlError::NotFound(name).into()),
        },
        AdminRequest::Attach { bottle, spec } => {
            let name = bottle.name.clone();
            let result = spawned(async move {
                let info = control.attach(*bottle, spec).await?;
                Ok::<_, ApiError>((StatusCode::CREATED, api::json(&info)))
            })
            .await;
            match &result {
                Ok(_) => tracing::info!(bottle = %name, "bottle attached through the admin socket"),
                Err(e) => tracing::warn!(bottle = %name, error = %e, "admin attach refused"),
            }
            result
        }
        AdminRequest::Detach { name, force } => {
            let n = name.clone();
            let result = spawned(async move {
                control.detach(&n, force).await?;
                Ok::<_, ApiError>((StatusCode::OK, api::json(&serde_json::json!({ "detached": n }))))
            })
            .await;
            match &result {
                Ok(_) => tracing::info!(bottle = %name, force, "bottle detached through the admin socket"),
                Err(e) => tracing::warn!(bottle = %name, error = %e, "admin detach refused"),
            }
            result
        }
        AdminRequest::Reload => {
            spawned(async move { Ok::<_, ApiError>((StatusCode::OK, api::json(&control.reload().await?))) }).await
        }
        AdminRequest::Health => Ok((StatusCode::OK, api::json(&serde_json::json!({ "alive": true })))),
        AdminRequest::Metrics => Ok((StatusCode::OK, control.metrics().into_bytes())),
        AdminRequest::Ready => {
            let readiness = control.readiness().await;
            let status = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            Ok((status, api::json(&readiness)))
        }
    }
}

type Answer = Result<(StatusCode, Vec<u8>), ApiError>;

/// Runs an operation in its own task: if the client disconnects, the operation still
/// completes (or fails) whole instead of being dropped half way.
async fn spawned(f: impl Future<Output = Answer> + Send + 'static) -> Answer {
    tokio::spawn(f)
        .await
        .unwrap_or_else(|_| Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the operation failed (panic)")))
}

const JSON: &str = "application/json";

fn body_response(status: StatusCode, body: Vec<u8>, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

/// `admin_listen`: health, readiness and metrics over TCP for a monitoring system, until
/// `shutdown`. Read-only, so it needs no peer check; bottles cannot reach it anyway
/// (their connections are redirected to the proxy, and `check` refuses a `tcp:` route to
/// it).
pub async fn serve_tcp<C: BottleControl>(
    listener: tokio::net::TcpListener,
    control: Arc<C>,
    shutdown: impl Future<Output = ()>,
) {
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "admin_listen serving /healthz, /readyz and /metrics");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, control.clone(), Access::ReadOnly, None));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin_listen: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use http::Method;

    use super::*;
    use crate::admin::{
        AdminClient, AttachSpec, BottleInfo, BottleSource, ClientError, ControlError, ReloadReport, api::BottleRequest,
    };

    /// A registry in memory: bottles named `busy*` have a process running.
    #[derive(Default)]
    struct Fake {
        bottles: Mutex<Vec<BottleInfo>>,
    }

    impl BottleControl for Fake {
        fn list(&self) -> Vec<BottleInfo> {
            self.bottles.lock().unwrap().clone()
        }

        async fn attach(&self, bottle: crate::config::Bottle, spec: AttachSpec) -> Result<BottleInfo, ControlError> {
            let mut list = self.bottles.lock().unwrap();
            if list.iter().any(|b| b.name == bottle.name) {
                return Err(ControlError::Conflict(format!("a bottle named {:?} is already attached", bottle.name)));
            }
            let mut info = BottleInfo::new(&bottle, BottleSource::Runtime, spec.inline_routes.is_some());
            info.attached = true;
            info.processes = usize::from(bottle.name.starts_with("busy"));
            list.push(info.clone());
            Ok(info)
        }

        async fn detach(&self, name: &str, force: bool) -> Result<(), ControlError> {
            let mut list = self.bottles.lock().unwrap();
            let i = list.iter().position(|b| b.name == name).ok_or_else(|| ControlError::NotFound(name.into()))?;
            if list[i].processes > 0 && !force {
                return Err(ControlError::Conflict("processes still run in it".into()));
            }
            list.remove(i);
            Ok(())
        }

        async fn reload(&self) -> Result<ReloadReport, ControlError> {
            Ok(ReloadReport { reloaded: self.list().into_iter().map(|b| b.name).collect(), failed: vec![] })
        }

        /// Bottles named `broken*` have lost their programs.
        async fn readiness(&self) -> crate::admin::Readiness {
            let list = self.list();
            let problems = list.iter().filter(|b| b.name.starts_with("broken")).map(|b| format!("{} detached", b.name));
            crate::admin::Readiness::from_problems(list.len(), problems.collect())
        }
    }

    struct Running {
        _dir: tempfile::TempDir,
        path: PathBuf,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Running {
        async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            self.task.await.unwrap();
        }
    }

    fn start() -> Running {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/egress-gateway/admin.sock");
        let listener = AdminListener::bind(&path).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(listener.serve(Arc::new(Fake::default()), async move {
            let _ = rx.await;
        }));
        Running { _dir: dir, path, stop: Some(tx), task }
    }

    fn api_status(e: ClientError) -> StatusCode {
        e.status().unwrap_or_else(|| panic!("not an API error: {e}"))
    }

    #[tokio::test]
    async fn socket_and_directory_modes() {
        let server = start();
        let meta = std::fs::symlink_metadata(&server.path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        let dir = std::fs::metadata(server.path.parent().unwrap()).unwrap();
        assert_eq!(dir.mode() & 0o777, 0o700);
        server.stop().await;
    }

    #[tokio::test]
    async fn requests_end_to_end() {
        let server = start();
        let client = AdminClient::new(&server.path);
        assert_eq!(client.list().await.unwrap(), vec![]);

        let request = BottleRequest {
            cgroup: "egress/job".into(),
            netns: Some("new".into()),
            routes: Some("/etc/eg/routes.yaml".into()),
            ..Default::default()
        };
        let info = client.attach("job", &request).await.unwrap();
        assert_eq!((info.name.as_str(), info.source, info.attached), ("job", BottleSource::Runtime, true));
        assert_eq!(info.netns.as_deref(), Some("new"));
        assert_eq!(api_status(client.attach("job", &request).await.unwrap_err()), StatusCode::CONFLICT);
        assert_eq!(client.get("job").await.unwrap(), info);
        assert_eq!(api_status(client.get("nope").await.unwrap_err()), StatusCode::NOT_FOUND);

        // Invalid requests are refused with the field, and change nothing.
        let relative = BottleRequest { routes: Some("routes.yaml".into()), ..request.clone() };
        let err = client.attach("other", &relative).await.unwrap_err();
        let ClientError::Api(api) = &err else { panic!("{err}") };
        assert_eq!((api.status, api.problems[0].field.as_str()), (StatusCode::BAD_REQUEST, "routes"));
        assert!(err.to_string().contains("\n  routes: "), "{err}");
        let e = client.call(Method::PUT, "/v1/bottles/%2e%2e", Some(b"{\"cgroup\":\"x\"}".to_vec())).await;
        assert_eq!(api_status(e.unwrap_err()), StatusCode::BAD_REQUEST);
        let e = client.call(Method::PUT, "/v1/bottles/x", Some(b"{\"cgroup\":\"x\",\"extra\":1}".to_vec())).await;
        assert_eq!(api_status(e.unwrap_err()), StatusCode::BAD_REQUEST);
        let e = client.call(Method::POST, "/v1/bottles", None).await;
        assert_eq!(api_status(e.unwrap_err()), StatusCode::METHOD_NOT_ALLOWED);
        let big = vec![b' '; api::MAX_BODY + 1];
        let e = client.call(Method::PUT, "/v1/bottles/x", Some(big)).await;
        assert_eq!(api_status(e.unwrap_err()), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(client.list().await.unwrap().len(), 1);

        client.attach("busy", &BottleRequest { cgroup: "egress/busy".into(), ..Default::default() }).await.unwrap();
        assert_eq!(api_status(client.detach("busy", false).await.unwrap_err()), StatusCode::CONFLICT);
        client.detach("busy", true).await.unwrap();
        client.detach("job", false).await.unwrap();
        assert_eq!(api_status(client.detach("job", false).await.unwrap_err()), StatusCode::NOT_FOUND);
        assert_eq!(client.reload().await.unwrap(), ReloadReport::default());

        // Health and readiness: 200 while every bottle is as it should be, 503 with the
        // problem otherwise.
        let alive = client.call(Method::GET, "/healthz", None).await.unwrap();
        assert_eq!(&alive[..], b"{\"alive\":true}\n");
        let ready: serde_json::Value =
            serde_json::from_slice(&client.call(Method::GET, "/readyz", None).await.unwrap()).unwrap();
        assert_eq!(ready["ready"], true);
        client.attach("broken", &BottleRequest { cgroup: "egress/broken".into(), ..Default::default() }).await.unwrap();
        let err = client.call(Method::GET, "/readyz", None).await.unwrap_err();
        assert_eq!(api_status(err), StatusCode::SERVICE_UNAVAILABLE);
        let e = client.call(Method::POST, "/readyz", None).await;
        assert_eq!(api_status(e.unwrap_err()), StatusCode::METHOD_NOT_ALLOWED);
        client.detach("broken", false).await.unwrap();

        let path = server.path.clone();
        server.stop().await;
        assert!(!path.exists(), "the socket file is removed at shutdown");
        let err = client.list().await.unwrap_err();
        assert!(err.is_not_running(), "{err}");
        assert!(err.to_string().starts_with("the gateway is not running: no admin socket at"), "{err}");
    }

    #[tokio::test]
    async fn a_second_gateway_is_refused_and_a_stale_socket_replaced() {
        let server = start();
        assert!(matches!(AdminListener::bind(&server.path), Err(ServerError::InUse(_))));
        server.stop().await;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let err = AdminClient::new(&path).list().await.unwrap_err();
        assert!(err.to_string().contains("nothing answers on the admin socket"), "{err}");
        let listener = AdminListener::bind(&path).expect("a stale socket is replaced");
        drop(listener);
        assert!(!path.exists());

        // Something that is not a socket is never removed.
        std::fs::write(&path, "data").unwrap();
        assert!(matches!(AdminListener::bind(&path), Err(ServerError::Unsafe { .. })));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    }

    #[tokio::test]
    async fn a_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = AdminListener::bind(&dir.path().join("admin.sock")).err().unwrap();
        assert!(err.to_string().contains("writable by group or others"), "{err}");
        assert!(AdminListener::bind(Path::new("relative.sock")).is_err());
    }

    #[test]
    fn peer_check() {
        assert!(peer_allowed(0, 0));
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(1000, 1000));
        assert!(!peer_allowed(65534, 0));
        assert!(!peer_allowed(1001, 1000));
    }

    /// A process of another user that gets past the file mode is still refused (403),
    /// by SO_PEERCRED. Root only: it forks a child that setuid()s to nobody.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_user_is_refused_by_peer_credentials() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let server = start();
        let client = AdminClient::new(&server.path);
        // Open the file-mode door on purpose, to reach the peer check behind it.
        let mut dir = server.path.parent().unwrap().to_path_buf();
        loop {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            if dir == server._dir.path() {
                break;
            }
            dir.pop();
        }
        std::fs::set_permissions(&server.path, std::fs::Permissions::from_mode(0o666)).unwrap();

        let status = tokio::task::spawn_blocking({
            let path = server.path.clone();
            move || child_request_as_nobody(&path)
        })
        .await
        .unwrap();
        assert_eq!(status, 0, "the child expected a 403 (exit 2: connect failed, 3: no 403)");
        // Root still gets in.
        assert!(client.list().await.is_ok());
        server.stop().await;
    }

    /// Forks; the child becomes nobody, sends a request and exits 0 on `HTTP/1.1 403`.
    fn child_request_as_nobody(path: &Path) -> i32 {
        use std::os::unix::ffi::OsStrExt;
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
            *d = *s as libc::c_char;
        }
        let request = b"GET /v1/bottles HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let expected = b"HTTP/1.1 403";
        // SAFETY: the child calls only async-signal-safe functions, on memory prepared above.
        match unsafe { libc::fork() } {
            0 => unsafe {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    libc::_exit(4);
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                if libc::connect(fd, &addr as *const _ as *const libc::sockaddr, len) != 0 {
                    libc::_exit(2);
                }
                libc::write(fd, request.as_ptr().cast(), request.len());
                let mut buf = [0u8; 64];
                let mut got = 0usize;
                while got < expected.len() {
                    let n = libc::read(fd, buf.as_mut_ptr().add(got).cast(), buf.len() - got);
                    if n <= 0 {
                        break;
                    }
                    got += n as usize;
                }
                libc::_exit(if got >= expected.len() && buf[..expected.len()] == expected[..] { 0 } else { 3 });
            },
            pid if pid > 0 => {
                let mut status = 0;
                unsafe { libc::waitpid(pid, &mut status, 0) };
                if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { -1 }
            }
            _ => panic!("fork failed"),
        }
    }
}
