//! `GET /ws`: one task per client that only moves messages and runs the heartbeat
//! (the actix/examples chat-actorless shape); the hub owns everything shared.
//!
//! A client is never disconnected for what it says: bad JSON gets an error message back.
//! It is closed when silent past the timeout (no pong, no message), on a protocol error,
//! or when the server shuts down (close code 1001, "going away").

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use lentera_protocol::DeviceId;
use serde_json::{Value, json};

use crate::access::Need;
use crate::api::AppState;
use crate::api::error::ApiError;
use crate::frame_guard::FrameGuard;
pub use crate::hub::Filter;
use crate::hub::{Hub, Received};

/// Longest subscribe list accepted; a dashboard names a handful of devices.
const MAX_SUBSCRIBE: usize = 1_000;
/// Largest client frame, and largest message once continuations are joined: subscribe
/// messages are tiny. A frame announcing more (even 2^63 bytes) is a protocol error and
/// the connection is closed before any of it is read.
pub const MAX_FRAME: usize = 64 * 1024;

/// Heartbeat timing, from `[web]` settings.
#[derive(Debug, Clone, Copy)]
pub struct WsConfig {
    pub heartbeat: Duration,
    pub client_timeout: Duration,
}

/// The acknowledgement sent after a subscribe: what the client will now receive.
fn ack(filter: &Filter) -> Value {
    match filter {
        Filter::All => json!({"type": "subscribed", "devices": "*"}),
        Filter::Devices(set) => json!({"type": "subscribed", "devices": set}),
    }
}

/// The filter a client asks for in the URL: `/ws?device=gh-1&device=lamp-3` or
/// `/ws?device=gh-1,lamp-3`; none means all.
pub fn filter_from_query(query: &str) -> Result<Filter, String> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
        .map_err(|e| format!("bad query string: {e}"))?;
    let mut set = BTreeSet::new();
    for (k, v) in pairs.iter() {
        if k != "device" {
            return Err(format!("unknown parameter {k:?}; known: device"));
        }
        for id in v.split(',').filter(|s| !s.is_empty()) {
            set.insert(
                DeviceId::parse(id).map_err(|e| format!("{id:?} is not a valid device id: {e}"))?,
            );
        }
    }
    if set.len() > MAX_SUBSCRIBE {
        return Err(format!("at most {MAX_SUBSCRIBE} devices"));
    }
    Ok(if set.is_empty() {
        Filter::All
    } else {
        Filter::Devices(set)
    })
}

/// Parses a client message: `{"subscribe":["gh-1","lamp-3"]}`; `[]` or `"*"` means all.
/// The error text goes back to the client verbatim, so it says what to send instead.
pub fn parse_client_message(text: &str) -> Result<Filter, String> {
    const SHAPE: &str = r#"expected {"subscribe":["<device>",...]} or {"subscribe":"*"}"#;
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("message is not valid JSON: {e}"))?;
    let obj = value.as_object().ok_or_else(|| SHAPE.to_owned())?;
    if obj.len() != 1 {
        return Err(SHAPE.to_owned());
    }
    match obj.get("subscribe") {
        Some(Value::String(s)) if s == "*" => Ok(Filter::All),
        Some(Value::Array(items)) if items.is_empty() => Ok(Filter::All),
        Some(Value::Array(items)) if items.len() > MAX_SUBSCRIBE => {
            Err(format!("at most {MAX_SUBSCRIBE} devices per subscribe"))
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => {
                    DeviceId::parse(s).map_err(|e| format!("{s:?} is not a valid device id: {e}"))
                }
                other => Err(format!("{other} is not a device id string")),
            })
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Filter::Devices),
        _ => Err(SHAPE.to_owned()),
    }
}

/// The upgrade handler: checks the viewer, hands the connection to its own task and
/// returns the 101 response.
pub async fn ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    hub: web::Data<Hub>,
    cfg: web::Data<WsConfig>,
) -> actix_web::Result<HttpResponse> {
    state.access.require(&req, &state.pool, Need::Read).await?;
    let filter = filter_from_query(req.query_string())
        .map_err(|e| ApiError::bad_request("invalid_query", e))?;
    // The cap is enforced at the frame header (see frame_guard), not after the payload.
    let tripped = Arc::new(AtomicBool::new(false));
    let guard = FrameGuard::new(body.into_inner(), MAX_FRAME, tripped.clone());
    let boxed: Pin<Box<dyn futures_util::Stream<Item = _>>> = Box::pin(guard);
    let mut payload = actix_web::dev::Payload::from(boxed);
    let body = web::Payload::from_request(&req, &mut payload).await?;
    let (response, session, stream) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::bad_request("not_a_websocket", e.to_string()))?;
    let stream = stream
        .max_frame_size(MAX_FRAME)
        .aggregate_continuations()
        .max_continuation_size(MAX_FRAME);
    // The message stream is not Send: run on this worker's local set.
    actix_web::rt::spawn(serve(
        session,
        stream,
        hub.get_ref().clone(),
        *cfg.get_ref(),
        filter,
        tripped,
    ));
    Ok(response)
}

/// Decrements the client gauge however the connection task ends.
struct Connected(lentera_bootstrap::Gauge);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn serve(
    mut session: Session,
    mut stream: actix_ws::AggregatedMessageStream,
    hub: Hub,
    cfg: WsConfig,
    filter: Filter,
    tripped: Arc<AtomicBool>,
) {
    hub.clients.inc();
    let _connected = Connected(hub.clients.clone());
    let mut closing = hub.closing();
    let (viewer, snapshot) = hub.subscribe(filter);
    // A send that cannot complete within the timeout means a client that stopped
    // reading: it is as gone as a silent one (its TCP window is full).
    let limit = cfg.client_timeout;
    for event in snapshot {
        if !sent(limit, session.text(event.json.clone())).await {
            return;
        }
    }
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();

    let reason: Option<CloseReason> = loop {
        let ok = tokio::select! {
            msg = stream.recv() => {
                match msg {
                    Some(Ok(AggregatedMessage::Text(text))) => {
                        last_heard = Instant::now();
                        let reply = match parse_client_message(&text) {
                            Ok(f) => {
                                let reply = ack(&f);
                                viewer.set_filter(f);
                                reply
                            }
                            Err(e) => json!({"type": "error", "error": e}),
                        };
                        sent(limit, session.text(reply.to_string())).await
                    }
                    Some(Ok(AggregatedMessage::Binary(_))) => {
                        last_heard = Instant::now();
                        let e = json!({"type": "error", "error": "binary frames are not supported; send JSON text"});
                        sent(limit, session.text(e.to_string())).await
                    }
                    Some(Ok(AggregatedMessage::Ping(bytes))) => {
                        last_heard = Instant::now();
                        sent(limit, session.pong(&bytes)).await
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => {
                        last_heard = Instant::now();
                        true
                    }
                    Some(Ok(AggregatedMessage::Close(reason))) => break reason,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "WebSocket protocol error; closing");
                        // actix-ws reports an oversized joined message only as an I/O
                        // error with this text.
                        let too_big = tripped.load(Ordering::Relaxed)
                            || matches!(e, actix_ws::ProtocolError::Overflow)
                            || e.to_string().contains("maximum continuation size");
                        let code = if too_big {
                            CloseCode::Size
                        } else {
                            CloseCode::Protocol
                        };
                        break Some(CloseReason { code, description: Some(e.to_string()) });
                    }
                    None => break None,
                }
            }
            received = viewer.recv() => match received {
                Received::Event(event) => sent(limit, session.text(event.json.clone())).await,
                Received::Lagged(missed) => {
                    hub.lagged.inc();
                    sent(limit, session.text(json!({"type": "lagged", "missed": missed}).to_string())).await
                }
            },
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > cfg.client_timeout {
                    tracing::debug!("closing a silent WebSocket client");
                    break Some(CloseReason { code: CloseCode::Policy, description: Some("no pong".into()) });
                }
                sent(limit, session.ping(b"")).await
            }
            _ = closing.changed() => break Some(CloseReason {
                code: CloseCode::Away,
                description: Some("server shutting down".into()),
            }),
        };
        if !ok {
            // The client is gone or stopped reading; nothing left to say to it.
            return;
        }
    };
    let _ = tokio::time::timeout(limit, session.close(reason)).await;
}

/// True when the send completed in time.
async fn sent<E>(limit: Duration, send: impl std::future::Future<Output = Result<(), E>>) -> bool {
    matches!(tokio::time::timeout(limit, send).await, Ok(Ok(())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> Filter {
        Filter::Devices(list.iter().map(|s| DeviceId::parse(s).unwrap()).collect())
    }

    #[test]
    fn subscribe_list_narrows_and_empty_or_star_means_all() {
        assert_eq!(
            parse_client_message(r#"{"subscribe":["gh-1","lamp-3","gh-1"]}"#),
            Ok(ids(&["gh-1", "lamp-3"]))
        );
        assert_eq!(parse_client_message(r#"{"subscribe":[]}"#), Ok(Filter::All));
        assert_eq!(
            parse_client_message(r#"{"subscribe":"*"}"#),
            Ok(Filter::All)
        );
    }

    #[test]
    fn bad_messages_explain_themselves() {
        for (text, needle) in [
            ("nope", "not valid JSON"),
            ("[1]", "expected"),
            (r#"{"subscribe":"gh-1"}"#, "expected"),
            (r#"{"subscribe":["gh-1"],"x":1}"#, "expected"),
            (r#"{"unsubscribe":[]}"#, "expected"),
            (r#"{"subscribe":["a/b"]}"#, "not a valid device id"),
            (r#"{"subscribe":[7]}"#, "not a device id string"),
        ] {
            let err = parse_client_message(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
        let many: Vec<String> = (0..=MAX_SUBSCRIBE).map(|i| format!("d{i}")).collect();
        let text = serde_json::to_string(&json!({ "subscribe": many })).unwrap();
        assert!(parse_client_message(&text).unwrap_err().contains("at most"));
    }

    #[test]
    fn url_filter() {
        assert_eq!(filter_from_query(""), Ok(Filter::All));
        assert_eq!(
            filter_from_query("device=gh-1&device=lamp-3,gh-1"),
            Ok(ids(&["gh-1", "lamp-3"]))
        );
        assert!(filter_from_query("device=a%2Fb").is_err());
        assert!(filter_from_query("devices=gh-1").is_err());
    }

    #[test]
    fn filter_allows_only_named_devices() {
        let f = ids(&["gh-1"]);
        assert!(f.allows(&DeviceId::parse("gh-1").unwrap()));
        assert!(!f.allows(&DeviceId::parse("gh-2").unwrap()));
        assert!(Filter::All.allows(&DeviceId::parse("gh-2").unwrap()));
    }
}
