//! MQTT 5.0 connection handling: CONNECT, PUBLISH, and the protocol packets
//! (SUBSCRIBE, UNSUBSCRIBE, DISCONNECT, AUTH, PINGREQ, PUBREL) ntex-mqtt hands to
//! `.protocol(…)`. Differences from 3.1.1 that matter here: reason codes instead of
//! closing the connection, subscription options, forwarded PUBLISH properties, and a
//! DISCONNECT that may ask for the will to be published.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ntex_bytes::ByteString;
use ntex_mqtt::{QoS, v5};
use v5::codec::{
    DisconnectReasonCode, PublishAckReason, RetainHandling, SubscribeAckReason,
    UnsubscribeAckReason,
};

use crate::auth::{self, Credentials, Refusal};
use crate::error::BrokerError;
use crate::router::{Message, Properties, SendRetained, Subscription, WillTiming};
use crate::session::{ConnState, Connection, Shared, Sink};
use crate::topic_filter::{Filter, validate_name};

pub async fn connect(
    shared: &Shared,
    c: v5::Connect,
) -> Result<v5::ConnectAck<ConnState>, BrokerError> {
    if shared.at_connection_limit() {
        // `max_connections`: CONNACK 0x97 Quota exceeded (MQTT 5 §3.2.2.2).
        shared.router.metrics().refused_connection_limit.inc();
        return Ok(c.failed(v5::codec::ConnectAckReason::QuotaExceeded));
    }
    let pkt = c.packet();
    let mut assigned = None;
    let client_id = if pkt.client_id.is_empty() {
        // MQTT 5 lets the server assign an id and tell the client [MQTT-3.1.3-7].
        let id = shared.generated_client_id();
        assigned = Some(ByteString::from(id.clone()));
        id
    } else {
        pkt.client_id.to_string()
    };
    let keep_alive = pkt.keep_alive;
    let will = pkt.last_will.as_ref().map(|w| Message {
        topic: w.topic.clone(),
        payload: w.message.clone(),
        qos: w.qos,
        retain: w.retain,
        properties: Some(Arc::new(Properties {
            user_properties: w.user_properties.clone(),
            content_type: w.content_type.clone(),
            response_topic: w.response_topic.clone(),
            correlation_data: w.correlation_data.clone(),
            is_utf8_payload: w.is_utf8_payload.unwrap_or(false),
            ..Properties::default()
        })),
    });
    // Applied when the will is published (see `Router::disconnect`).
    let will_timing = pkt.last_will.as_ref().map(|w| WillTiming {
        delay: w.will_delay_interval_sec.unwrap_or(0),
        expiry: w.message_expiry_interval.map(NonZeroU32::get),
        on_takeover: true,
    });
    if let Some(w) = &will
        && validate_name(&w.topic).is_err()
    {
        return Ok(c.fail_with(v5::codec::ConnectAck {
            reason_code: v5::codec::ConnectAckReason::TopicNameInvalid,
            reason_string: Some(ByteString::from_static("will topic name invalid")),
            ..Default::default()
        }));
    }
    tracing::debug!(%client_id, clean_start = pkt.clean_start, keep_alive, "v5 connect");
    if let Some(method) = &pkt.auth_method {
        // Enhanced authentication (MQTT 5 §4.12) is not offered: refuse and close
        // [MQTT-4.12.0-1] rather than pretend the exchange happened.
        shared.router.metrics().refused_not_authorized.inc();
        let why = format!("authentication method {method:?} is not supported");
        return Ok(c.fail_with(v5::codec::ConnectAck {
            reason_code: v5::codec::ConnectAckReason::BadAuthenticationMethod,
            reason_string: Some(ByteString::from(why)),
            ..Default::default()
        }));
    }
    // Before `register`: a refused client must not take over anyone's session.
    let creds = Credentials {
        client_id: &client_id,
        username: pkt.username.as_deref(),
        password: pkt.password.as_deref(),
    };
    let will_topic = will.as_ref().map(|w| &*w.topic);
    let acl = match auth::connect(&*shared.auth, shared.router.metrics(), creds, will_topic).await {
        Ok(acl) => acl,
        Err(why) => return Ok(refuse_connect(c, why)),
    };

    // Session Expiry Interval absent = 0: the session ends with the connection
    // [MQTT-3.1.2-23 context]; clean start discards an existing one first.
    let expiry = pkt.session_expiry_interval_secs;
    let conn = Connection {
        client_id,
        will,
        clean_start: pkt.clean_start,
        expiry,
        acl,
    };
    let (mut state, present) = shared.register(conn, Sink::V5(c.sink()), c.io().on_disconnect());
    state.problem_info = pkt.request_problem_info;
    if let Some(t) = will_timing {
        shared.router.set_will_timing(state.id, t);
    }
    let max_expiry = shared.max_session_expiry;
    let mut ack = c.ack(state).with(|a| {
        // Session Present is 0 after clean start [MQTT-3.2.2-2], else whether one resumed.
        a.session_present = present;
        if expiry > max_expiry {
            // The server's cap applies and must be announced (MQTT 5 §3.2.2.3.2).
            a.session_expiry_interval_secs = Some(max_expiry);
        }
        a.assigned_client_id = assigned;
        a.retain_available = true;
        a.wildcard_subscription_available = true;
        a.shared_subscription_available = true;
        a.subscription_identifiers_available = true;
        // Topic Alias Maximum is announced by ntex-mqtt (`max_topic_alias`), which also
        // resolves inbound aliases before `publish` sees the packet. Outbound aliases
        // are not used: every PUBLISH to a client carries its topic name.
    });
    // Otherwise ntex-mqtt closes the connection (DISCONNECT 0x8D) after 1.5× the
    // client's keep-alive without a packet [MQTT-3.1.2-22] (tests/keep_alive.rs).
    if keep_alive == 0 {
        // Keep-alive 0 turns the mechanism off [MQTT-3.1.2-21]. ntex-mqtt defaults to a
        // 30 s idle timeout and refuses 0 here, so use the largest value (~18 h), which
        // is never announced to the client because it exceeds the client's own value.
        ack = ack.keep_alive(u16::MAX);
    }
    Ok(ack)
}

pub async fn publish(
    s: &v5::Session<ConnState>,
    p: v5::Publish,
) -> Result<v5::PublishAck, BrokerError> {
    let pkt = p.packet();
    if let Err(e) = validate_name(&pkt.topic) {
        tracing::debug!(topic = %pkt.topic, code = e.code(), "publish refused");
        let why = format!("topic name invalid: {}", e.code());
        return Ok(refuse(s, p, PublishAckReason::TopicNameInvalid, why));
    }
    if !auth::may_publish(&*s.acl, &pkt.topic) {
        // PUBACK / PUBREC 0x87; a QoS 0 message is just dropped. Counted either way.
        auth::publish_refused(s.router.metrics(), &s.client_id, &pkt.topic);
        let why = format!("not authorized to publish to {}", pkt.topic);
        return Ok(refuse(s, p, PublishAckReason::NotAuthorized, why));
    }
    let props = &pkt.properties;
    let properties = Properties {
        user_properties: props.user_properties.clone(),
        content_type: props.content_type.clone(),
        response_topic: props.response_topic.clone(),
        correlation_data: props.correlation_data.clone(),
        is_utf8_payload: props.is_utf8_payload,
        // The clock starts now: the interval forwarded is what remains [MQTT-3.3.2-6].
        expires_at: props
            .message_expiry_interval
            .map(|secs| Instant::now() + Duration::from_secs(secs.get().into())),
        subscription_ids: Vec::new(),
    };
    let (topic, qos, retain) = (pkt.topic.clone(), p.qos(), p.retain());
    let payload = p.read_all().await.map_err(|_| BrokerError::Payload)?;
    // A payload that says it is UTF-8 and is not may be refused (MQTT 5 §3.3.2.3.2).
    if properties.is_utf8_payload && std::str::from_utf8(&payload).is_err() {
        let why = "payload format indicator says UTF-8, payload is not".to_owned();
        return Ok(refuse(s, p, PublishAckReason::PayloadFormatInvalid, why));
    }
    let msg = Message {
        topic,
        payload,
        qos,
        retain,
        properties: Some(Arc::new(properties)),
    };
    if p.qos() == QoS::ExactlyOnce
        && let Some(id) = p.id()
        && !s.router.qos2_received(s.id, id.get())
    {
        // A resend of a QoS 2 message not yet released: PUBREC again, route once.
        return Ok(p.ack());
    }
    if p.qos() != QoS::AtMostOnce {
        // Broker overloaded: hold this publisher back rather than drop later (outbox.rs).
        s.router.admit_publish().await;
    }
    let lsn = s.router.publish(Some(s.id), msg);
    // The PUBACK/PUBREC goes out when this returns: the message must be on disk first.
    s.router.store().durable(lsn).await;
    Ok(p.ack())
}

/// A negative PUBACK / PUBREC with a reason string saying why (MQTT 5 §3.4.2.2.2).
/// Without one when the client asked for no problem information [MQTT-3.1.2-29].
fn refuse(
    s: &v5::Session<ConnState>,
    p: v5::Publish,
    code: PublishAckReason,
    why: String,
) -> v5::PublishAck {
    let ack = p.ack().reason_code(code);
    if s.problem_info {
        ack.reason(ByteString::from(why))
    } else {
        ack
    }
}

pub async fn protocol(
    s: &v5::Session<ConnState>,
    msg: v5::ProtocolMessage,
) -> Result<v5::ProtocolMessageAck, BrokerError> {
    match msg {
        v5::ProtocolMessage::Subscribe(mut sub) => {
            s.ensure_delivery();
            // One Subscription Identifier for every filter of this SUBSCRIBE (MQTT 5 §3.8.2.1.2).
            let id = sub.packet().id.map(NonZeroU32::get);
            let mut refused = Vec::new();
            let mut lsn = 0;
            for mut item in sub.iter_mut() {
                let raw = item.topic().clone();
                let opts = *item.options();
                let filter = match Filter::parse(&raw) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::debug!(filter = %raw, code = e.code(), "subscription refused");
                        item.fail(SubscribeAckReason::TopicFilterInvalid);
                        refused.push(format!("{raw}: {}", e.code()));
                        continue;
                    }
                };
                // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4];
                // refusing just that filter is gentler than closing the connection.
                if filter.group.is_some() && opts.no_local {
                    item.fail(SubscribeAckReason::TopicFilterInvalid);
                    refused.push(format!("{raw}: no_local_on_shared_subscription"));
                    continue;
                }
                if !s.acl.may_subscribe(&filter.pattern) {
                    auth::subscribe_refused(s.router.metrics(), &s.client_id, &raw);
                    item.fail(SubscribeAckReason::NotAuthorized);
                    refused.push(format!("{raw}: not_authorized"));
                    continue;
                }
                // Granted as requested; delivery uses min(published, granted).
                let qos = opts.qos;
                let send = match opts.retain_handling {
                    RetainHandling::AtSubscribe => SendRetained::Always,
                    RetainHandling::AtSubscribeNew => SendRetained::IfNewSubscription,
                    RetainHandling::NoAtSubscribe => SendRetained::Never,
                };
                let entry = Subscription {
                    filter,
                    qos,
                    no_local: opts.no_local,
                    retain_as_published: opts.retain_as_published,
                    id,
                };
                lsn = lsn.max(s.router.subscribe(s.id, &raw, entry, send));
                item.confirm(qos);
            }
            // A persistent session's subscription is on disk before the SUBACK.
            s.router.store().durable(lsn).await;
            if refused.is_empty() || !s.problem_info {
                Ok(sub.ack())
            } else {
                // The reason string covers the whole SUBACK: name each refused filter.
                let why = format!("refused {}", refused.join(", "));
                Ok(sub.ack_reason(ByteString::from(why)).ack())
            }
        }
        v5::ProtocolMessage::Unsubscribe(mut unsub) => {
            for mut item in unsub.iter_mut() {
                if s.router.unsubscribe(s.id, item.topic()) {
                    item.success();
                } else {
                    item.fail(UnsubscribeAckReason::NoSubscriptionExisted);
                }
            }
            Ok(unsub.ack())
        }
        v5::ProtocolMessage::Disconnect(d) => {
            // Reason 0x04 asks the server to publish the will anyway (MQTT 5 §3.14.2.1).
            if d.packet().reason_code != DisconnectReasonCode::DisconnectWithWillMessage {
                s.router.clear_will(s.id);
            }
            // The client may change the session expiry on its way out; a session that
            // ended at disconnect (0) cannot be made persistent here [MQTT-3.14.2-2].
            if let Some(expiry) = d.packet().session_expiry_interval_secs {
                s.router.set_expiry(s.id, expiry);
            }
            Ok(d.ack())
        }
        v5::ProtocolMessage::PublishRelease(r) => {
            // QoS 2 messages were routed at PUBLISH; the id may now be reused.
            s.router.qos2_released(s.id, r.packet().packet_id.get());
            Ok(r.ack())
        }
        // Enhanced authentication is not offered; PINGREQ → PINGRESP.
        other => Ok(other.ack()),
    }
}

/// The PUBLISH properties a subscriber gets: the publisher's, passed through unchanged
/// [MQTT-3.3.2-15/-16/-17/-18/-19/-20], the expiry interval that is left
/// [MQTT-3.3.2-6], and this subscriber's subscription identifiers [MQTT-3.3.4-3].
pub fn outgoing_properties(props: &Properties, p: &mut v5::codec::PublishProperties) {
    p.user_properties.clone_from(&props.user_properties);
    p.content_type.clone_from(&props.content_type);
    p.response_topic.clone_from(&props.response_topic);
    p.correlation_data.clone_from(&props.correlation_data);
    p.is_utf8_payload = props.is_utf8_payload;
    p.message_expiry_interval = props
        .remaining_expiry(Instant::now())
        .and_then(NonZeroU32::new);
    p.subscription_ids = props
        .subscription_ids
        .iter()
        .filter_map(|&id| NonZeroU32::new(id))
        .collect();
}

/// CONNACK 0x86 (bad user name or password) or 0x87 (not authorized) with a reason
/// string; the connection then closes [MQTT-3.2.2-7].
fn refuse_connect(c: v5::Connect, why: Refusal) -> v5::ConnectAck<ConnState> {
    use v5::codec::ConnectAckReason;
    let (reason_code, text) = match why {
        Refusal::BadCredentials => (
            ConnectAckReason::BadUserNameOrPassword,
            "bad user name or password",
        ),
        Refusal::NotAuthorized => (ConnectAckReason::NotAuthorized, "not authorized"),
    };
    c.fail_with(v5::codec::ConnectAck {
        reason_code,
        reason_string: Some(ByteString::from_static(text)),
        ..Default::default()
    })
}

/// What ends a v5 connection from our side: a protocol error (including the keep-alive
/// timeout) or a handler error. ntex-mqtt picks the DISCONNECT reason code; this adds a
/// reason string saying what happened (allowed on DISCONNECT even without Request
/// Problem Information, [MQTT-3.1.2-29]) and uses 0x94 Topic Alias invalid for an alias
/// above the announced maximum (MQTT 5 §3.3.2.3.4).
pub async fn control(
    _: &v5::Session<ConnState>,
    ctl: ntex_mqtt::Control<BrokerError>,
) -> Result<Option<v5::codec::Encoded>, BrokerError> {
    use ntex_mqtt::{Control, MqttProtocolError, Reason};
    use v5::codec::{Disconnect, Packet};
    let disconnect = match &ctl {
        Control::Stop(Reason::Protocol(e)) => {
            let err = e.get_ref();
            let mut d = Disconnect::from_proto_error(err);
            if let MqttProtocolError::ProtocolViolation(v) = err
                && v.message().contains("Topic alias")
            {
                d.reason_code = DisconnectReasonCode::TopicAliasInvalid;
            }
            d.reason_string(Some(ByteString::from(err.to_string())))
        }
        Control::Stop(Reason::Error(e)) => {
            Disconnect::new(DisconnectReasonCode::ImplementationSpecificError)
                .reason_string(Some(ByteString::from(e.get_ref().to_string())))
        }
        _ => return Ok(None),
    };
    tracing::debug!(reason = ?disconnect.reason_code, why = ?disconnect.reason_string, "server DISCONNECT");
    Ok(Some(Packet::from(disconnect).into()))
}
