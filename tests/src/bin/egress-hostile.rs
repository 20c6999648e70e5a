//! Hostile HTTP/2 clients for `tests/hostile_limits.rs`, run inside a bottle:
//!
//! - `flood <addr> <roots.pem> <host> <streams> <bytes>`: one TLS h2 connection, `streams`
//!   concurrent POSTs of `bytes` each to `/discard`; prints a JSON object of status
//!   counts (`"error"` for a stream that ended without a status).
//! - `idle <addr> <roots.pem> <host> <max_secs>`: one h2 request, then waits (at most
//!   `max_secs`) for the gateway to close the idle connection; prints JSON with the
//!   status and whether the connection was closed.
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr: SocketAddr = args[1].parse().expect("address");
    let tls = tls_config(&args[2]);
    let host = args[3].clone();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let out = match args[0].as_str() {
        "flood" => {
            let (streams, bytes) = (args[4].parse().unwrap(), args[5].parse().unwrap());
            rt.block_on(flood(tls, addr, host, streams, bytes))
        }
        "idle" => rt.block_on(idle(tls, addr, host, Duration::from_secs(args[4].parse().unwrap()))),
        other => panic!("unknown mode {other}"),
    };
    println!("{out}");
}

fn tls_config(roots_path: &str) -> Arc<rustls::ClientConfig> {
    egress_e2e::https::client_config(&std::fs::read(roots_path).expect("roots file"), &[b"h2"])
}

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn connect(
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    host: &str,
) -> (Sender, tokio::task::JoinHandle<Result<(), hyper::Error>>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.expect("TLS handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "the gateway did not offer h2");
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .expect("h2 handshake");
    (send, tokio::spawn(conn))
}

async fn flood(tls: Arc<rustls::ClientConfig>, addr: SocketAddr, host: String, streams: usize, bytes: usize) -> String {
    let (send, _conn) = connect(tls, addr, &host).await;
    let body = Bytes::from(vec![b'x'; bytes]);
    let mut tasks = Vec::new();
    for i in 0..streams {
        let (mut send, body, host) = (send.clone(), body.clone(), host.clone());
        tasks.push(tokio::spawn(async move {
            let req = http::Request::post(format!("https://{host}/discard?stream={i}"))
                .header("content-type", "application/octet-stream")
                .header("content-length", body.len())
                .body(Full::new(body))
                .unwrap();
            let attempt = async {
                send.ready().await?;
                let resp = send.send_request(req).await?;
                let status = resp.status().as_u16().to_string();
                let _ = resp.into_body().collect().await;
                Ok::<_, hyper::Error>(status)
            };
            match tokio::time::timeout(Duration::from_secs(180), attempt).await {
                Ok(Ok(status)) => status,
                Ok(Err(_)) => "error".to_string(),
                Err(_) => "timeout".to_string(),
            }
        }));
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        *counts.entry(t.await.unwrap_or_else(|_| "panic".into())).or_default() += 1;
    }
    serde_json::to_string(&counts).unwrap()
}

async fn idle(tls: Arc<rustls::ClientConfig>, addr: SocketAddr, host: String, max: Duration) -> String {
    let (mut send, conn) = connect(tls, addr, &host).await;
    let req = http::Request::get(format!("https://{host}/idle")).body(Full::new(Bytes::new())).unwrap();
    let status = match send.send_request(req).await {
        Ok(resp) => {
            let s = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            s
        }
        Err(_) => 0,
    };
    // Hold the sender (a client that keeps the connection) and wait for the gateway.
    let closed = tokio::time::timeout(max, conn).await.is_ok();
    drop(send);
    serde_json::json!({ "status": status, "closed": closed }).to_string()
}
