//! A WebSocket after its policed handshake: frames relayed both ways, each data message
//! scanned whole once its fragments are in. Client-to-server messages are scanned for
//! secrets under the route's policy (`redact` rewrites a text message; `block` and
//! `supervise` close, since a frame cannot wait for an operator; approved values pass).
//! Server-to-client messages are scanned for prompt injection, and a credential the
//! gateway injected is redacted. A block closes both sides with 1008.
use std::sync::Arc;

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    sync::Mutex,
};

use super::ws_frame::{self, Event, FrameError, Message, Opcode, Reassembler};
use crate::{
    app::BottleState,
    dlp::{self, InjectionVerdict, Location, Severity, stream::InjectionStream},
    policy::OnMatch,
};

/// Close code for a policy violation (RFC 6455 §7.4.1).
const POLICY_VIOLATION: u16 = 1008;

/// What the relay scans with, and names in its logs.
pub struct Scanning {
    pub engine: Arc<dlp::Engine>,
    pub selection: dlp::Selection,
    pub on_match: OnMatch,
    /// `naive_injection_detection` runs on server messages.
    pub inbound: bool,
    pub bottle: Arc<BottleState>,
    pub host: String,
    pub path: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to server: frames are masked.
    Up,
    Down,
}

/// How one direction ended.
enum End {
    Eof,
    /// Close both sides with this code and reason.
    Close(u16, String),
}

/// What to do with one message.
enum Verdict {
    Pass,
    Replace(Vec<u8>),
    Close(String),
}

pub async fn relay<C, U>(client: C, upstream: U, scanning: Scanning)
where
    C: AsyncRead + AsyncWrite + Send,
    U: AsyncRead + AsyncWrite + Send,
{
    let (client_rx, client_tx) = tokio::io::split(client);
    let (upstream_rx, upstream_tx) = tokio::io::split(upstream);
    let (client_tx, upstream_tx) = (Mutex::new(client_tx), Mutex::new(upstream_tx));
    let up = pump(client_rx, &upstream_tx, Direction::Up, &scanning);
    let down = pump(upstream_rx, &client_tx, Direction::Down, &scanning);
    tokio::pin!(up, down);
    let end = tokio::select! {
        end = &mut up => match end { End::Eof => down.await, close => close },
        end = &mut down => match end { End::Eof => up.await, close => close },
    };
    if let End::Close(code, reason) = end {
        tracing::warn!(
            bottle = %scanning.bottle.config.name,
            host = %scanning.host,
            path = %scanning.path,
            code,
            decision = "deny",
            reason = %reason,
            "egress_websocket_closed"
        );
        let _ = upstream_tx.lock().await.write_all(&ws_frame::close(code, &reason, Some(rand::random()))).await;
        let _ = client_tx.lock().await.write_all(&ws_frame::close(code, &reason, None)).await;
    }
    let _ = upstream_tx.lock().await.shutdown().await;
    let _ = client_tx.lock().await.shutdown().await;
}

async fn pump<R, W>(mut from: R, to: &Mutex<W>, dir: Direction, scanning: &Scanning) -> End
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut reassembler = Reassembler::default();
    let mut injection = InjectionStream::default();
    loop {
        let mut chunk = [0u8; 16 * 1024];
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                let _ = to.lock().await.shutdown().await;
                return End::Eof;
            }
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        loop {
            let frame = match ws_frame::parse(&buf[used..], dir == Direction::Up) {
                Ok(Some((frame, len))) => {
                    used += len;
                    frame
                }
                Ok(None) => break,
                Err(e) => return protocol_close(e),
            };
            let out = match reassembler.push(frame) {
                Ok(Event::Control(frame)) => frame.raw,
                Ok(Event::Pending) => continue,
                Ok(Event::Message(message)) => match scan(&message, dir, scanning, &mut injection) {
                    Verdict::Pass => message.raw,
                    Verdict::Replace(bytes) => bytes,
                    Verdict::Close(reason) => return End::Close(POLICY_VIOLATION, reason),
                },
                Err(e) => return protocol_close(e),
            };
            if to.lock().await.write_all(&out).await.is_err() {
                return End::Eof;
            }
        }
        buf.drain(..used);
    }
}

fn protocol_close(e: FrameError) -> End {
    End::Close(e.close_code(), format!("egress: {e}"))
}

fn scan(message: &Message, dir: Direction, scanning: &Scanning, injection: &mut InjectionStream) -> Verdict {
    let text = String::from_utf8_lossy(&message.payload);
    match dir {
        Direction::Up => scan_outbound(message, &text, scanning),
        Direction::Down => scan_inbound(message, &text, scanning, injection),
    }
}

fn scan_outbound(message: &Message, text: &str, scanning: &Scanning) -> Verdict {
    let empty = dlp::NoneSafe;
    let safe: &dyn dlp::SafeSet = match &scanning.bottle.supervisor {
        Some(s) => s.safe_set(),
        None => &empty,
    };
    let mut findings = Vec::new();
    scanning.engine.scan_surface(text, Location::WebSocket, scanning.selection, safe, &mut findings);
    let (blocking, warnings): (Vec<_>, Vec<_>) = findings.into_iter().partition(|f| f.severity == Severity::Block);
    for w in warnings {
        tracing::warn!(bottle = %scanning.bottle.config.name, host = %scanning.host, path = %scanning.path, reason = %format!("{} in {}", w.reason, w.location), "egress_dlp_warn");
    }
    let Some(first) = blocking.first() else { return Verdict::Pass };
    let redactable = message.text && blocking.iter().all(|f| f.redactable);
    if scanning.on_match == OnMatch::Redact && redactable {
        let values: Vec<&str> = blocking.iter().filter_map(|f| text.get(f.span.0..f.span.1)).collect();
        tracing::warn!(bottle = %scanning.bottle.config.name, host = %scanning.host, path = %scanning.path, reason = %format!("{} in {}", first.reason, first.location), "egress_websocket_redacted");
        let redacted = dlp::redact_text(text, &values);
        return Verdict::Replace(ws_frame::encode(Opcode::Text, redacted.as_bytes(), Some(rand::random())));
    }
    Verdict::Close(format!("egress: websocket message blocked: {} ({})", first.reason, first.context))
}

fn scan_inbound(message: &Message, text: &str, scanning: &Scanning, injection: &mut InjectionStream) -> Verdict {
    if scanning.inbound {
        match injection.feed(text) {
            InjectionVerdict::Block(reason) => {
                return Verdict::Close(format!("egress: websocket message blocked: {reason}"));
            }
            InjectionVerdict::Warn(reason) => {
                tracing::warn!(bottle = %scanning.bottle.config.name, host = %scanning.host, path = %scanning.path, reason = %reason, "egress_inbound_warn");
            }
            InjectionVerdict::Clean => {}
        }
    }
    let hits = scanning.engine.known_secrets().find(text);
    if hits.is_empty() {
        return Verdict::Pass;
    }
    if !message.text {
        return Verdict::Close("egress: websocket message blocked: a gateway credential in a binary message".into());
    }
    let values: Vec<&str> = hits.iter().filter_map(|h| text.get(h.start..h.end)).collect();
    tracing::warn!(bottle = %scanning.bottle.config.name, host = %scanning.host, path = %scanning.path, reason = "known secret in a websocket message", "egress_response_redacted");
    Verdict::Replace(ws_frame::encode(Opcode::Text, dlp::redact_text(text, &values).as_bytes(), None))
}
