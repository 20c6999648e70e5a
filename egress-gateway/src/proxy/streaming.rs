//! Phase **respond**, streamed: a response too long or open-ended to buffer
//! (server-sent events, chunked, large) is decoded and scanned as it passes, in a task
//! of its own that carries the request's span.
use bytes::Bytes;
use http::{Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::Instrument;

use super::{
    inbound::Inbound,
    request::{Refusal, RequestCtx},
    upstream::{Body, BoxError},
};

/// A response too long or open-ended to buffer (server-sent events, chunked, large):
/// decoded and scanned as it passes (its headers were scanned already). A block cuts
/// the stream and is logged: an SSE client gets a last `egress-blocked` event saying
/// why, other bodies end with an error.
pub fn stream_response(
    rq: &RequestCtx,
    scanner: &Inbound,
    mut parts: http::response::Parts,
    mut body: Incoming,
    sse: bool,
    injection: bool,
) -> Response<Body> {
    let encoding = parts.headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut decoder = match crate::dlp::decode::StreamDecoder::new(encoding) {
        Ok(d) => d,
        Err(e) => {
            let refusal = Refusal::upstream(format!("egress DLP: the response cannot be scanned: {e}"));
            return rq.refuse(refusal);
        }
    };
    // Sent decoded, and chunked: redaction may change the length.
    parts.headers.remove(header::CONTENT_ENCODING);
    parts.headers.remove(header::CONTENT_LENGTH);
    let mut scanner = scanner.stream(sse, injection);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, BoxError>>(8);
    let rq = rq.clone();
    let status = parts.status;
    let task = async move {
        // The head is gone already: the log line carries the status the agent got.
        let cut = |reason: String| {
            rq.log_refusal(&Refusal::dlp(reason.clone()).with_status(status));
            reason
        };
        let mut trailers = None;
        let verdict = loop {
            let data = match body.frame().await {
                None => break scanner.finish(),
                Some(Err(e)) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        continue;
                    }
                },
            };
            let decoded = match decoder.as_mut().map(|d| d.push(&data)) {
                None => data.to_vec(),
                Some(Ok(d)) => d,
                Some(Err(e)) => break Err(crate::dlp::stream::Blocked(format!("response cannot be scanned: {e}"))),
            };
            match scanner.push(&decoded) {
                Ok(out) if out.is_empty() => {}
                Ok(out) => {
                    if tx.send(Ok(hyper::body::Frame::data(Bytes::from(out)))).await.is_err() {
                        return;
                    }
                }
                Err(blocked) => break Err(blocked),
            }
            for w in scanner.warnings.drain(..) {
                if w.starts_with("known secret") {
                    rq.note("egress_response_redacted", &w, None);
                } else {
                    rq.warn("inbound", &w);
                }
            }
        };
        match verdict {
            Ok(rest) => {
                let _ = tx.send(Ok(hyper::body::Frame::data(Bytes::from(rest)))).await;
                if let Some(t) = trailers {
                    let _ = tx.send(Ok(hyper::body::Frame::trailers(t))).await;
                }
            }
            Err(crate::dlp::stream::Blocked(reason)) => {
                let reason = cut(format!("egress DLP: {reason}"));
                if sse {
                    // The event is the last thing the client gets; the stream then ends
                    // (an error right after it could drop it unflushed).
                    let event = format!("event: egress-blocked\ndata: {reason}\n\n");
                    let _ = tx.send(Ok(hyper::body::Frame::data(Bytes::from(event)))).await;
                } else {
                    let _ = tx.send(Err(reason.into())).await;
                }
            }
        }
    };
    tokio::spawn(task.in_current_span());
    let frames = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Response::from_parts(parts, http_body_util::StreamBody::new(frames).boxed())
}
