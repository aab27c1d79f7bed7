//! MQTT 3.1.1: what each packet means. Packets are decoded and encoded by
//! ntex-mqtt's v3 codec; the session state they act on is `session/`.
//!
//! MQTT 3.1.1 has no reason codes beyond CONNACK's and SUBACK's: a packet it cannot
//! accept otherwise closes the connection, the only answer the protocol has.

use std::num::NonZeroU16;
use std::sync::Arc;

use ntex_bytes::{BytePages, BytesMut};
use ntex_codec::{Decoder, Encoder};
use ntex_mqtt::QoS;
use ntex_mqtt::error::DecodeError;
use ntex_mqtt::v3::codec::{
    Codec, ConnectAck, ConnectAckReason, Decoded, Encoded, Packet, Publish, SubscribeReturnCode,
};
use ntex_mqtt::v5::codec::DisconnectReasonCode;

use crate::auth::{self, Authorizer, Refusal};
use crate::error::Close;
use crate::net::Cx;
use crate::net::conn::Output;
use crate::router::{Message, NEVER, SendRetained, Subscription};
use crate::session::{self, Active, Connection, Flow, Pending, PendingConnect, Proto, wire};
use crate::topic_filter::validate_name;

/// The MQTT 3.1.1 part of a connection: its codec.
pub struct State {
    codec: Codec,
}

fn write(codec: &Codec, dst: &mut BytePages, pkt: Packet) {
    if let Err(e) = codec.encodev(Encoded::Packet(pkt), dst) {
        tracing::warn!(error = %e, "MQTT 3.1.1 packet not encoded");
    }
}

fn connack(out: &mut Output, return_code: ConnectAckReason, session_present: bool) {
    let ack = ConnectAck {
        return_code,
        session_present,
    };
    write(&Codec::new(), out.pages(), Packet::ConnectAck(ack));
}

/// The first packet of an MQTT 3.1.1 connection: CONNECT, checked as far as it can be
/// before the authenticator is asked.
pub fn connect(mut frame: BytesMut, out: &mut Output, cx: &mut Cx<'_>) -> Result<Pending, Close> {
    // What the decoder does not check (`session/wire.rs`): a malformed CONNECT, and
    // MQTT 3.1.1 has no CONNACK code for that, so it is closed (Mosquitto does the same).
    if let Err(why) = wire::check_connect(&frame, false) {
        tracing::debug!(why, "malformed CONNECT");
        return Err(Close::Gone);
    }
    let c = match Codec::new().decode(&mut frame) {
        Ok(Some(Decoded::Packet(Packet::Connect(c), _))) => c,
        // A level other than 4 (3.1.1): CONNACK 1, then close [MQTT-3.1.2-2].
        Err(DecodeError::UnsupportedProtocolLevel | DecodeError::InvalidProtocol) => {
            connack(out, ConnectAckReason::UnacceptableProtocolVersion, false);
            return Err(Close::Refused);
        }
        // No client id without a clean session [MQTT-3.1.3-8].
        Err(DecodeError::InvalidClientId) => {
            connack(out, ConnectAckReason::IdentifierRejected, false);
            return Err(Close::Refused);
        }
        other => {
            tracing::debug!(result = ?other.map(|_| ()), "malformed CONNECT");
            return Err(Close::Gone);
        }
    };
    if cx.shared.at_connection_limit() {
        // `max_connections`: CONNACK 3 Server unavailable (MQTT 3.1.1 §3.2.2.3).
        cx.shared.router.metrics().refused_connection_limit.inc();
        connack(out, ConnectAckReason::ServiceUnavailable, false);
        return Err(Close::Refused);
    }
    if !cx.shared.client_id_ok(&c.client_id) {
        // CONNACK 2 Identifier rejected (MQTT 3.1.1 §3.2.2.3).
        connack(out, ConnectAckReason::IdentifierRejected, false);
        return Err(Close::Refused);
    }
    if !session::user_name_ok(c.username.as_deref()) {
        return Err(Close::Gone);
    }
    let client_id = if c.client_id.is_empty() {
        // A client without an id asked for a clean session (the codec checks it); it
        // gets one we make up [MQTT-3.1.3-6].
        cx.shared.generated_client_id()
    } else {
        c.client_id.to_string()
    };
    let will = c.last_will.as_ref().map(|w| Message {
        topic: w.topic.clone(),
        payload: w.message.clone(),
        qos: w.qos,
        retain: w.retain,
        properties: None,
    });
    if let Some(w) = &will
        && validate_name(&w.topic).is_err()
    {
        connack(out, ConnectAckReason::IdentifierRejected, false);
        return Err(Close::Refused);
    }
    let cap = cx.shared.max_keep_alive;
    if cap > 0 && (c.keep_alive == 0 || c.keep_alive > cap) {
        // MQTT 3.1.1 cannot tell the client a shorter interval (Mosquitto refuses alike).
        tracing::info!(%client_id, keep_alive = c.keep_alive, max = cap,
            "keep-alive above broker.max_keep_alive_secs: refused");
        connack(out, ConnectAckReason::IdentifierRejected, false);
        return Err(Close::Refused);
    }
    tracing::debug!(%client_id, clean_session = c.clean_session, keep_alive = c.keep_alive, "v3 connect");
    Ok(Pending {
        client_id,
        will,
        connect: PendingConnect::V3(c),
    })
}

/// CONNACK 4 / 5 / 3 (MQTT 3.1.1 §3.2.2.3); the connection then closes [MQTT-3.2.2-5].
pub fn refuse(out: &mut Output, why: Refusal) {
    let code = match why {
        Refusal::BadCredentials => ConnectAckReason::BadUserNameOrPassword,
        Refusal::NotAuthorized | Refusal::ClientIdMismatch => ConnectAckReason::NotAuthorized,
        // CONNACK 3 Server unavailable: the device registry is not loaded yet.
        Refusal::Unavailable => ConnectAckReason::ServiceUnavailable,
    };
    connack(out, code, false);
}

/// The authenticator said yes: register the session and answer CONNACK.
pub fn accept(
    c: ntex_mqtt::v3::codec::Connect,
    client_id: String,
    will: Option<Message>,
    acl: Arc<dyn Authorizer>,
    out: &mut Output,
    cx: &mut Cx<'_>,
) -> Box<Active> {
    let (id, present, inbox) = session::register(
        Connection {
            client_id: client_id.clone(),
            will,
            // clean_session=1 discards any session and ends the new one at disconnect
            // [MQTT-3.1.2-6]; 0 resumes or creates a persistent one [MQTT-3.1.2-4]. 3.1.1
            // has no expiry interval: the configured maximum applies (the router caps
            // NEVER).
            clean_start: c.clean_session,
            expiry: if c.clean_session { 0 } else { NEVER },
            device: acl.device().is_some(),
        },
        cx,
    );
    let state = State {
        codec: Codec::new(),
    };
    let mut a = Active::new(
        id,
        client_id,
        acl,
        Proto::V3(state),
        c.keep_alive,
        cx.shared,
    );
    if let Some(inbox) = inbox {
        a.start_delivery(inbox);
    }
    // session_present=1 only when a session was resumed [MQTT-3.2.2-1/-2].
    connack(out, ConnectAckReason::ConnectionAccepted, present);
    Box::new(a)
}

fn state(a: &Active) -> &State {
    match &a.proto {
        Proto::V3(s) => s,
        Proto::V5(_) => unreachable!("an MQTT 3.1.1 handler on an MQTT 5 connection"),
    }
}

fn reply(a: &mut Active, out: &mut Output, cx: &mut Cx<'_>, lsn: u64, pkt: Packet) {
    a.reply(out, cx, lsn, false, |proto, dst| {
        if let Proto::V3(s) = proto {
            write(&s.codec, dst, pkt);
        }
    });
}

/// The first byte of every SUBSCRIBE (type 8, flags 0010 [MQTT-3.8.1-1]).
const SUBSCRIBE: u8 = 0x82;

fn protocol_error(why: impl Into<String>) -> Close {
    Close::protocol(DisconnectReasonCode::ProtocolError, why)
}

/// Every packet after CONNECT.
pub fn packet(
    a: &mut Active,
    out: &mut Output,
    mut frame: BytesMut,
    cx: &mut Cx<'_>,
) -> Result<Flow, Close> {
    if frame.first() == Some(&SUBSCRIBE)
        && let Err(why) = wire::check_subscribe(&frame, false)
    {
        return Err(Close::protocol(DisconnectReasonCode::MalformedPacket, why));
    }
    let decoded = state(a).codec.decode(&mut frame).map_err(|e| {
        tracing::debug!(error = %e, "malformed packet");
        Close::protocol(DisconnectReasonCode::MalformedPacket, e.to_string())
    })?;
    let pkt = match decoded {
        Some(Decoded::Publish(p, payload, _)) => return publish(a, out, cx, p, payload),
        Some(Decoded::Packet(pkt, _)) => pkt,
        _ => return Err(protocol_error("incomplete packet")),
    };
    match pkt {
        Packet::PublishAck { packet_id } => a.puback(packet_id.get(), out, cx),
        Packet::PublishReceived { packet_id } => {
            if a.pubrec(packet_id.get(), false, out, cx) {
                encode_pubrel(state(a), out.pages(), packet_id.get());
            }
        }
        Packet::PublishComplete { packet_id } => a.pubcomp(packet_id.get(), out, cx),
        Packet::PublishRelease { packet_id } => {
            // QoS 2 messages were routed at PUBLISH; the id may now be reused.
            cx.shared.router.qos2_released(a.id, packet_id.get());
            reply(a, out, cx, 0, Packet::PublishComplete { packet_id });
        }
        Packet::Subscribe {
            packet_id,
            topic_filters,
        } => {
            session::check_filters("SUBSCRIBE", topic_filters.iter().map(|(f, _)| &**f))?;
            subscribe(a, out, cx, packet_id, topic_filters);
        }
        Packet::Unsubscribe {
            packet_id,
            topic_filters,
        } => {
            session::check_filters("UNSUBSCRIBE", topic_filters.iter().map(|f| &**f))?;
            for raw in &topic_filters {
                cx.shared.router.unsubscribe(a.id, raw);
            }
            reply(a, out, cx, 0, Packet::UnsubscribeAck { packet_id });
        }
        Packet::PingRequest => reply(a, out, cx, 0, Packet::PingResponse),
        Packet::Disconnect => {
            // A normal end: the will is discarded [MQTT-3.14.4-3].
            cx.shared.router.clear_will(a.id);
            return Err(Close::Disconnected);
        }
        // A second CONNECT [MQTT-3.1.0-2], or a packet only a server sends.
        other => {
            return Err(protocol_error(format!(
                "unexpected packet type {}",
                other.packet_type() >> 4
            )));
        }
    }
    Ok(Flow::Continue)
}

fn publish(
    a: &mut Active,
    out: &mut Output,
    cx: &mut Cx<'_>,
    p: Publish,
    payload: ntex_bytes::Bytes,
) -> Result<Flow, Close> {
    // The codec already refuses wildcards [MQTT-3.3.2-2]; an empty name closes the
    // connection, the only answer MQTT 3.1.1 has.
    if let Err(e) = validate_name(&p.topic) {
        return Err(Close::protocol(
            DisconnectReasonCode::TopicNameInvalid,
            format!("invalid topic name: {}", e.code()),
        ));
    }
    // Its last message landed in a backed-up queue: wait rather than drop later
    // (outbox.rs).
    if a.hold_publish(cx) {
        return Ok(Flow::Pause);
    }
    // A device above its rate: the only answer 3.1.1 has is closing.
    cx.shared.rate_check(&*a.acl)?;
    let qos = p.qos;
    let ack = |packet_id: Option<NonZeroU16>| match (qos, packet_id) {
        (QoS::AtLeastOnce, Some(packet_id)) => Some(Packet::PublishAck { packet_id }),
        (QoS::ExactlyOnce, Some(packet_id)) => Some(Packet::PublishReceived { packet_id }),
        _ => None,
    };
    if !auth::may_publish(&*a.acl, &p.topic) {
        // MQTT 3.1.1 has no negative PUBACK: the message is acknowledged as usual and
        // dropped (Mosquitto does the same), counted as not_authorized.
        auth::publish_refused(cx.shared.router.metrics(), &a.client_id, &p.topic);
        if let Some(pkt) = ack(p.packet_id) {
            reply(a, out, cx, 0, pkt);
        }
        return Ok(Flow::Continue);
    }
    if p.qos == QoS::ExactlyOnce
        && let Some(id) = p.packet_id
        && !cx.shared.router.qos2_received(a.id, id.get())
    {
        // A resend of a QoS 2 message not yet released: PUBREC again, route once.
        reply(a, out, cx, 0, Packet::PublishReceived { packet_id: id });
        return Ok(Flow::Continue);
    }
    // A board's reading: checked, and stamped when it has no `ts` (`telemetry.rs`).
    // MQTT 3.1.1 cannot refuse in a PUBACK: a refused one is acknowledged once its
    // report is durable, and only the report is routed.
    // A resend of one already stamped (same packet id and bytes) is stamped as before.
    let packet = p.packet_id.map(|id| (id, p.dup));
    let payload = match cx
        .shared
        .router
        .inspect_publish(a.id, &p.topic, &payload, p.retain, packet)
    {
        Ok(stamped) => stamped.unwrap_or(payload),
        Err(refused) => {
            let lsn = cx.shared.router.report_refused(*refused);
            if let Some(pkt) = ack(p.packet_id) {
                reply(a, out, cx, lsn, pkt);
            }
            return Ok(Flow::Continue);
        }
    };
    // MQTT 3.1.1 cannot say "quota exceeded" in a PUBACK: a message the byte budget
    // kept from some session is counted and logged there (`quota.rs`).
    let (lsn, _) = a.route(
        cx,
        Message {
            topic: p.topic,
            payload,
            qos: p.qos,
            retain: p.retain,
            properties: None,
        },
    );
    // The PUBACK/PUBREC leaves once the message is on disk.
    if let Some(pkt) = ack(p.packet_id) {
        reply(a, out, cx, lsn, pkt);
    }
    Ok(Flow::Continue)
}

fn subscribe(
    a: &mut Active,
    out: &mut Output,
    cx: &mut Cx<'_>,
    packet_id: NonZeroU16,
    filters: Vec<(ntex_bytes::ByteString, QoS)>,
) {
    a.ensure_delivery(cx);
    let router = &cx.shared.router;
    let mut lsn = 0;
    let status = filters
        .into_iter()
        .map(
            |(raw, qos)| match session::subscription_filter(a, cx, &raw, false) {
                Ok(filter) => {
                    // Every QoS is granted as requested; delivery uses min(published,
                    // granted) [MQTT-3.8.4-8].
                    let sub = Subscription {
                        filter,
                        qos,
                        no_local: false,
                        retain_as_published: false,
                        id: None,
                    };
                    lsn = lsn.max(router.subscribe(a.id, &raw, sub, SendRetained::Always));
                    SubscribeReturnCode::Success(qos)
                }
                // 0x80 is the only refusal MQTT 3.1.1 has [MQTT-3.9.3-2].
                Err(_) => SubscribeReturnCode::Failure,
            },
        )
        .collect();
    // A persistent session's subscription is on disk before the SUBACK.
    reply(a, out, cx, lsn, Packet::SubscribeAck { packet_id, status });
}

/// PUBREL for an outbound QoS 2 message.
pub fn encode_pubrel(s: &State, dst: &mut BytePages, pid: u16) {
    if let Some(packet_id) = NonZeroU16::new(pid) {
        write(&s.codec, dst, Packet::PublishRelease { packet_id });
    }
}

/// A PUBLISH to an MQTT 3.1.1 subscriber (no properties in 3.1.1).
pub fn encode_publish(
    s: &State,
    dst: &mut BytePages,
    msg: Message,
    pid: Option<u16>,
    dup: bool,
) -> Result<(), session::NotEncoded> {
    let pkt = Publish {
        dup,
        retain: msg.retain,
        qos: msg.qos,
        topic: msg.topic,
        packet_id: pid.and_then(NonZeroU16::new),
        payload_size: msg.payload.len() as u32,
    };
    s.codec
        .encodev(Encoded::Publish(pkt, Some(msg.payload)), dst)
        .map_err(|e| {
            tracing::debug!(error = %e, "publish to subscriber not encoded");
            session::NotEncoded
        })
}
