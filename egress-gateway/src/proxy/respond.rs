//! Phase **respond**: the upstream's answer back to the agent, through the inbound
//! scanner (`inbound.rs`). Known secrets (a reflected credential) are cut out of every
//! response, headers and body, binary too; prompt injection is looked for where the route
//! runs it. Responses of known, bounded size are read whole (a block is a clean 403);
//! open-ended ones go to `streaming`; with nothing to look for, the body passes as is.
use http::{Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{
    forward,
    inbound::{self, Inbound, Mode},
    limits::Reservation,
    request::{Refusal, RequestCtx, full},
    streaming,
    upstream::Body,
};
use crate::policy::{LogLevel, Route};

pub async fn respond(
    rq: &RequestCtx,
    route: &Route,
    resp: Response<Incoming>,
    mut reservation: Reservation,
) -> Result<Response<Body>, Refusal> {
    let (mut parts, body) = resp.into_parts();
    forward::strip_hop_by_hop(&mut parts.headers);
    let scanner = Inbound::for_route(rq.live.dlp.clone(), route);
    let head = scanner.headers(&mut parts.headers);
    if head.redacted {
        rq.note("egress_response_redacted", "known secret in the response headers", None);
    }
    if let Some(reason) = head.block {
        return Err(Refusal::dlp(format!("egress DLP: {reason}")));
    }
    if let Some(reason) = head.warn {
        rq.warn("inbound", &reason);
    }
    let mode = scanner.mode(&parts.headers);
    let (sse, injection) = match mode {
        Mode::Pass => {
            log_response(rq, &parts, None);
            return Ok(Response::from_parts(parts, body.map_err(Into::into).boxed()));
        }
        Mode::Stream { sse, injection } => {
            log_response(rq, &parts, None);
            return Ok(streaming::stream_response(rq, &scanner, parts, body, sse, injection));
        }
        Mode::Buffer { injection } => (false, injection),
    };
    debug_assert!(!sse);
    // A response read whole for the scan (its length is known and bounded) counts
    // against the same budgets as the request body.
    let length = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    if reservation.grow(length.unwrap_or(inbound::MAX_BUFFERED_RESPONSE)).is_err() {
        rq.flow.conn.bottle.usage.refused_requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(Refusal::gateway(
            StatusCode::SERVICE_UNAVAILABLE,
            "egress: response refused: the budget for buffered bodies is spent; retry later",
        ));
    }
    let data = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => return Err(Refusal::upstream(format!("egress: reading the response from {}: {e}", rq.host))),
    };
    log_response(rq, &parts, Some(data.len()));
    let (verdict, redacted) = scanner.body_off_workers(&parts.headers, data.clone(), injection).await;
    if let Some(reason) = verdict.block {
        return Err(Refusal::dlp(format!("egress DLP: {reason}")));
    }
    if let Some(reason) = verdict.warn {
        rq.warn("inbound", &reason);
    }
    Ok(match redacted {
        Some(body) => {
            rq.note("egress_response_redacted", "known secret in the response body", None);
            parts.headers.remove(header::CONTENT_ENCODING);
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, full(body))
        }
        None => Response::from_parts(parts, full(data)),
    })
}

/// `egress_response` at `log: 2`: status, headers (masked) and the body's size when it
/// is known (`content-length`, or the bytes read).
fn log_response(rq: &RequestCtx, parts: &http::response::Parts, read: Option<usize>) {
    if rq.log_level() < LogLevel::Full {
        return;
    }
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    rq.full_log("egress_response", Some(parts.status.as_u16()), &parts.headers, read.or(declared));
}
