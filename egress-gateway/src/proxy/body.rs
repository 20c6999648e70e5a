//! Phase **read**: the request body and trailers read whole (at most
//! `MAX_REQUEST_BODY`) before anything goes upstream, since the outbound scan must see all
//! of it; its memory is reserved from the bottle's and the gateway's budgets as it
//! arrives (503 when either is spent), and a trickle is cut (408).
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;

use super::{
    limits::{Reservation, Spent},
    request::Refusal,
    upstream::{Body, BoxError},
};

/// Largest request body the gateway buffers; larger ones are refused (413).
pub const MAX_REQUEST_BODY: usize = 8 * 1024 * 1024;
/// Slowest average a request body may arrive at, after its first `body_timeout`.
const MIN_BODY_RATE: u64 = 16 * 1024;

/// A request body read in full, with its trailers (gRPC).
pub struct BufferedBody {
    pub data: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl BufferedBody {
    pub fn into_body(self) -> Body {
        let frames = [Some(hyper::body::Frame::data(self.data)), self.trailers.map(hyper::body::Frame::trailers)];
        let stream = futures_util::stream::iter(frames.into_iter().flatten().map(Ok::<_, BoxError>));
        http_body_util::StreamBody::new(stream).boxed()
    }
}

/// Reads the body whole (at most `MAX_REQUEST_BODY`), reserving its memory from the
/// budgets before it is allocated: a spent budget refuses the request (503), it is never
/// forwarded unscanned. A body that makes no progress for `timeout` is cut (408).
pub async fn read_body(
    mut body: impl hyper::body::Body<Data = Bytes, Error = impl std::fmt::Display> + Unpin,
    headers: &HeaderMap,
    reservation: &mut Reservation,
    timeout: Duration,
) -> Result<BufferedBody, Refusal> {
    let too_large = || {
        Refusal::client(StatusCode::PAYLOAD_TOO_LARGE, format!("egress: request body over {MAX_REQUEST_BODY} bytes"))
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BODY as u64) {
        return Err(too_large());
    }
    let spent = |which: Spent| {
        let whose = match which {
            Spent::Bottle => "this bottle's",
            Spent::Gateway => "the gateway's",
        };
        Refusal::gateway(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("egress: request refused: {whose} budget for buffered request bodies is spent; retry later"),
        )
    };
    // Grown to the declared length at the first bytes, else doubling from 64 KiB.
    let target = declared.map(|n| n as usize);
    let mut data: Vec<u8> = Vec::new();
    let mut trailers = None;
    let start = tokio::time::Instant::now();
    loop {
        // No gap longer than `timeout`, and on average at least `MIN_BODY_RATE` after
        // the first `timeout`: a trickle cannot hold the connection and its budget.
        let deadline = start + timeout + Duration::from_secs_f64(data.len() as f64 / MIN_BODY_RATE as f64);
        let wait = deadline.min(tokio::time::Instant::now() + timeout);
        let frame = match tokio::time::timeout_at(wait, body.frame()).await {
            Err(_) => {
                return Err(Refusal::client(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "egress: the request body was too slow (a gap over {timeout:?}, or under {MIN_BODY_RATE} bytes/s)"
                    ),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(Refusal::client(StatusCode::BAD_REQUEST, format!("egress: reading the request body: {e}")));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let chunk = match frame.into_data() {
            Ok(chunk) => chunk,
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
                continue;
            }
        };
        let need = data.len() + chunk.len();
        if need > MAX_REQUEST_BODY {
            return Err(too_large());
        }
        if need > data.capacity() {
            let grown = target.unwrap_or_else(|| (data.capacity() * 2).max(64 * 1024)).clamp(need, MAX_REQUEST_BODY);
            reservation.grow((grown - data.capacity()) as u64).map_err(spent)?;
            data.reserve_exact(grown - data.len());
        }
        data.extend_from_slice(&chunk);
    }
    Ok(BufferedBody { data: Bytes::from(data), trailers })
}
