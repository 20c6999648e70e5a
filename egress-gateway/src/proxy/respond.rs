//! Phase **respond**: the upstream's answer back to the agent. Textual responses of
//! known, bounded size are read whole and scanned for prompt injection (a block is a
//! clean 403) and for known secrets (a reflected credential is redacted); open-ended
//! ones go to `streaming`; binary ones, and routes without inbound detection, pass.
use http::{Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{
    forward,
    limits::Reservation,
    request::{Refusal, RequestCtx, full},
    scan, streaming,
    upstream::Body,
};
use crate::{
    dlp::InjectionVerdict,
    policy::{LogLevel, Route},
};

pub async fn respond(
    rq: &RequestCtx,
    route: &Route,
    resp: Response<Incoming>,
    mut reservation: Reservation,
) -> Result<Response<Body>, Refusal> {
    let (mut parts, body) = resp.into_parts();
    forward::strip_hop_by_hop(&mut parts.headers);
    if rq.log_level() >= LogLevel::Full {
        tracing::info!(
            host = %rq.host,
            method = %rq.shown_method,
            path = %rq.path,
            status = parts.status.as_u16(),
            "egress_response"
        );
    }
    match scan::inbound_mode(route, &parts.headers) {
        scan::InboundMode::Skip => return Ok(Response::from_parts(parts, body.map_err(Into::into).boxed())),
        scan::InboundMode::Stream { sse } => return streaming::stream_response(rq, parts, body, sse),
        scan::InboundMode::Buffer => {}
    }
    // A response read whole for the scan (its length is known and bounded) counts
    // against the same budgets as the request body.
    let length = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    if reservation.grow(length.unwrap_or(scan::MAX_BUFFERED_RESPONSE)).is_err() {
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
    let inbound = scan::inbound_off_workers(&rq.live.dlp, &parts.headers, data.clone()).await;
    match inbound.verdict {
        InjectionVerdict::Block(reason) => {
            return Err(Refusal::dlp(format!("egress: response blocked: {reason}")));
        }
        InjectionVerdict::Warn(reason) => rq.note_status("egress_inbound_warn", &reason, parts.status.as_u16()),
        InjectionVerdict::Clean => {}
    }
    Ok(match inbound.redacted {
        Some(body) => {
            rq.note("egress_response_redacted", "known secret in the response");
            parts.headers.remove(header::CONTENT_ENCODING);
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, full(body))
        }
        None => Response::from_parts(parts, full(data)),
    })
}
