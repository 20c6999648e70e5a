//! Phases **scan** and **hold**: the outbound DLP scan of everything the agent sends,
//! under the route's `block | redact | supervise` policy; a value held for the operator
//! waits here (other requests keep flowing), and an approval scans the request again so
//! a second secret in it is held on its own.
use bytes::Bytes;
use http::HeaderMap;

use super::{
    body::BufferedBody,
    request::{Refusal, RequestCtx},
    scan,
};
use crate::{policy::Route, supervise::HoldOutcome};

/// The request as it may be forwarded: possibly rewritten by `redact`.
pub struct Scanned {
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

/// Scans the request, holding it for the operator as long as the policy says so.
pub async fn scan_and_hold(
    rq: &RequestCtx,
    route: &Route,
    path_and_query: &str,
    headers: &HeaderMap,
    body: BufferedBody,
) -> Result<Scanned, Refusal> {
    let supervisor = rq.flow.conn.bottle.supervisor.clone();
    // The bottle's approved values, plus those approved `once` for this request.
    let mut safe = crate::supervise::RequestSafe::new(supervisor.as_deref(), &rq.host);
    loop {
        let outgoing = scan::Outgoing {
            bottle: rq.bottle(),
            host: &rq.host,
            method: rq.method.as_str(),
            path_and_query,
            headers,
            body: body.data.clone(),
            trailers: body.trailers.as_ref(),
        };
        match scan::outbound_off_workers(&rq.live.dlp, route, outgoing, &safe, supervisor.is_some()) {
            scan::Outbound::Forward { path_and_query, headers, body, trailers, warnings } => {
                for w in warnings {
                    rq.warn("outbound", &w);
                }
                return Ok(Scanned { path_and_query, headers, body, trailers });
            }
            scan::Outbound::Refuse { reason, context } => return Err(Refusal::dlp(reason).with_context(context)),
            scan::Outbound::Hold { payload, value } => {
                let supervisor = supervisor.as_ref().expect("holds only when supervised");
                let (reason, context) = (format!("egress DLP: {}", payload.reason), payload.context.clone());
                rq.note("egress_token_supervise", &reason, Some(&context));
                // Dropped unfinished (the client went away) it counts as abandoned.
                let timer = crate::metrics::global().hold_started(rq.bottle());
                let outcome = supervisor.hold(payload, &value).await;
                timer.finish(match &outcome {
                    HoldOutcome::Approved { .. } => "approved",
                    HoldOutcome::Rejected(_) => "rejected",
                    HoldOutcome::Failed(_) => "failed",
                    HoldOutcome::TooMany(_) => "over_max_pending",
                });
                safe.note(&outcome, &value);
                let refused =
                    |why: String| Refusal::supervise(format!("{reason}; {why}")).with_context(Some(context.clone()));
                match outcome {
                    // Approved: the value is in the safe set now; scan again.
                    HoldOutcome::Approved { .. } => {
                        rq.allowed(&reason, &context);
                        continue;
                    }
                    HoldOutcome::Rejected(notes) => {
                        return Err(refused(format!("supervisor rejected the request: {notes}")));
                    }
                    HoldOutcome::Failed(why) => return Err(refused(why)),
                    HoldOutcome::TooMany(why) => {
                        return Err(refused(why).with_status(http::StatusCode::TOO_MANY_REQUESTS));
                    }
                }
            }
        }
    }
}
