//! `GET /ws`: one task per client that only moves messages and runs the heartbeat
//! (the actix/examples chat-actorless shape); the hub owns everything shared.
//!
//! A client is never disconnected for what it says: bad JSON gets an error message back.
//! It is closed when silent past the timeout (no pong, no message), on a protocol error,
//! or when the server shuts down (close code 1001, "going away").

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use lentera_protocol::DeviceId;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::hub::Hub;

/// Longest subscribe list accepted; a dashboard names a handful of devices.
const MAX_SUBSCRIBE: usize = 1_000;
/// Largest client frame; subscribe messages are tiny.
const MAX_FRAME: usize = 64 * 1024;

/// Heartbeat timing, from `[web]` settings.
#[derive(Debug, Clone, Copy)]
pub struct WsConfig {
    pub heartbeat: Duration,
    pub client_timeout: Duration,
}

/// Which devices a client wants to hear about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Filter {
    #[default]
    All,
    Devices(BTreeSet<DeviceId>),
}

impl Filter {
    pub fn allows(&self, device: &DeviceId) -> bool {
        match self {
            Filter::All => true,
            Filter::Devices(set) => set.contains(device),
        }
    }

    /// The acknowledgement sent after a subscribe: what the client will now receive.
    fn ack(&self) -> Value {
        match self {
            Filter::All => json!({"type": "subscribed", "devices": "*"}),
            Filter::Devices(set) => json!({"type": "subscribed", "devices": set}),
        }
    }
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

/// The upgrade handler: hands the connection to its own task and returns the 101 response.
pub async fn ws(
    req: HttpRequest,
    body: web::Payload,
    hub: web::Data<Hub>,
    cfg: web::Data<WsConfig>,
) -> actix_web::Result<HttpResponse> {
    let (response, session, stream) = actix_ws::handle(&req, body)?;
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
) {
    hub.clients.inc();
    let _connected = Connected(hub.clients.clone());
    let mut closing = hub.closing();
    let (mut rx, snapshot) = hub.subscribe();
    let mut filter = Filter::All;
    for event in snapshot {
        if session.text(event.json.clone()).await.is_err() {
            return;
        }
    }
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();

    let reason: Option<CloseReason> = loop {
        // Sends inside the arms may wait on a slow client; that only delays this client,
        // whose broadcast receiver then lags and gets a notice, never anyone else.
        let sent = tokio::select! {
            msg = stream.recv() => {
                last_heard = Instant::now();
                match msg {
                    Some(Ok(AggregatedMessage::Text(text))) => {
                        let reply = match parse_client_message(&text) {
                            Ok(f) => {
                                filter = f;
                                filter.ack()
                            }
                            Err(e) => json!({"type": "error", "error": e}),
                        };
                        session.text(reply.to_string()).await
                    }
                    Some(Ok(AggregatedMessage::Binary(_))) => {
                        let e = json!({"type": "error", "error": "binary frames are not supported; send JSON text"});
                        session.text(e.to_string()).await
                    }
                    Some(Ok(AggregatedMessage::Ping(bytes))) => session.pong(&bytes).await,
                    Some(Ok(AggregatedMessage::Pong(_))) => Ok(()),
                    Some(Ok(AggregatedMessage::Close(reason))) => break reason,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "WebSocket protocol error");
                        break Some(CloseCode::Protocol.into());
                    }
                    None => break None,
                }
            }
            event = rx.recv() => match event {
                Ok(event) if filter.allows(&event.device) => session.text(event.json.clone()).await,
                Ok(_) => Ok(()),
                Err(RecvError::Lagged(missed)) => {
                    hub.lagged.inc();
                    session.text(json!({"type": "lagged", "missed": missed}).to_string()).await
                }
                Err(RecvError::Closed) => break Some(CloseCode::Away.into()),
            },
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > cfg.client_timeout {
                    tracing::debug!("closing a silent WebSocket client");
                    break Some(CloseReason { code: CloseCode::Policy, description: Some("no pong".into()) });
                }
                session.ping(b"").await
            }
            _ = closing.changed() => break Some(CloseReason {
                code: CloseCode::Away,
                description: Some("server shutting down".into()),
            }),
        };
        if sent.is_err() {
            // The client is gone; nothing left to close.
            return;
        }
    };
    let _ = session.close(reason).await;
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
    fn filter_allows_only_named_devices() {
        let f = ids(&["gh-1"]);
        assert!(f.allows(&DeviceId::parse("gh-1").unwrap()));
        assert!(!f.allows(&DeviceId::parse("gh-2").unwrap()));
        assert!(Filter::All.allows(&DeviceId::parse("gh-2").unwrap()));
    }
}
