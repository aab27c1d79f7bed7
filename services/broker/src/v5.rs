//! MQTT 5.0: what each packet means. Packets are decoded and encoded by ntex-mqtt's
//! v5 codec; the session state they act on is `session/`. Differences from 3.1.1
//! that matter here: reason codes (and reason strings) instead of closing the
//! connection, subscription options, forwarded PUBLISH properties, inbound topic
//! aliases, the client's limits (Receive Maximum, Maximum Packet Size), and a
//! DISCONNECT that may ask for the will to be published.

use std::num::{NonZeroU16, NonZeroU32};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ntex_bytes::{BytePages, ByteString, Bytes, BytesMut};
use ntex_codec::{Decoder, Encoder};
use ntex_mqtt::QoS;
use ntex_mqtt::error::DecodeError;
use ntex_mqtt::v5::codec::{
    Codec, Connect, ConnectAck, ConnectAckReason, Decoded, Disconnect, DisconnectReasonCode,
    Encoded, Packet, Publish, PublishAck, PublishAck2, PublishAck2Reason, PublishAckReason,
    PublishProperties, RetainHandling, Subscribe, SubscribeAck, SubscribeAckReason, Unsubscribe,
    UnsubscribeAck, UnsubscribeAckReason,
};

use crate::auth::{self, Authorizer, Refusal};
use crate::error::Close;
use crate::net::Cx;
use crate::net::conn::Output;
use crate::router::{Message, Properties, SendRetained, Subscription, WillTiming};
use crate::session::{
    self, Active, Connection, FilterRefused, Flow, Pending, PendingConnect, Proto, wire,
};
use crate::topic_filter::validate_name;

/// Topic aliases a client may use towards the broker (announced in CONNACK). None
/// are sent to clients: every PUBLISH to a subscriber carries its topic name.
pub const TOPIC_ALIAS_MAX: u16 = 32;

/// The MQTT 5 part of a connection.
pub struct State {
    codec: Codec,
    /// The client asked for reason strings and user properties on acknowledgements
    /// (Request Problem Information, default yes).
    problem_info: bool,
    /// Inbound topic aliases, created with the first one used.
    aliases: Option<Box<[Option<ByteString>]>>,
    /// The Session Expiry Interval of CONNECT: a session that ends with the connection
    /// cannot be made persistent by DISCONNECT [MQTT-3.14.2-2].
    connect_expiry: u32,
    /// Inbound QoS 2 publishes not yet released (PUBREL): with the PUBACKs still
    /// waiting, what MQTT 5's Receive Maximum counts.
    qos2_open: usize,
    /// The Receive Maximum announced in CONNACK.
    receive_maximum: usize,
}

/// What CONNECT decided before authentication that CONNACK needs after it.
pub struct ConnectExtra {
    /// The id the broker made up for a client that sent none [MQTT-3.1.3-7].
    assigned: Option<ByteString>,
    will_timing: Option<WillTiming>,
}

/// Whether the first packet is an MQTT 5 CONNECT (`None`: not a CONNECT at all).
pub fn is_v5_connect(frame: &[u8]) -> Option<bool> {
    if frame.first() != Some(&0x10) {
        return None;
    }
    let header = 1 + frame[1..].iter().take(4).position(|b| b & 0x80 == 0)? + 1;
    // Protocol name "MQTT" (length-prefixed), then the level: 5 for MQTT 5.0.
    let body = frame.get(header..)?;
    Some(body.get(..6) == Some(b"\x00\x04MQTT") && body.get(6) == Some(&5))
}

fn write(codec: &Codec, dst: &mut BytePages, pkt: Packet) {
    if let Err(e) = codec.encodev(Encoded::Packet(pkt), dst) {
        tracing::debug!(error = %e, "MQTT 5 packet not encoded");
    }
}

fn connack_fail(out: &mut Output, reason_code: ConnectAckReason, why: impl Into<String>) {
    let ack = ConnectAck {
        reason_code,
        reason_string: Some(ByteString::from(why.into())),
        ..Default::default()
    };
    write(
        &Codec::new(),
        out.pages(),
        Packet::ConnectAck(Box::new(ack)),
    );
}

/// The first packet of an MQTT 5 connection: CONNECT, checked as far as it can be
/// before the authenticator is asked.
pub fn connect(mut frame: BytesMut, out: &mut Output, cx: &mut Cx<'_>) -> Result<Pending, Close> {
    // A will's Message Expiry Interval 0 means no expiry; the decoder would refuse it
    // (`session/wire.rs`).
    if let Some(fixed) = wire::without_zero_expiry(&frame) {
        frame = fixed;
    }
    // What the decoder does not check: malformed, said like the decoder's refusals.
    if let Err(why) = wire::check_connect(&frame, true) {
        connack_fail(out, ConnectAckReason::MalformedPacket, why);
        return Err(Close::Refused);
    }
    let c = match Codec::new().decode(&mut frame) {
        Ok(Some(Decoded::Packet(Packet::Connect(c), _))) => c,
        Ok(_) => return Err(Close::Gone),
        Err(e) => {
            // A malformed CONNECT may get a CONNACK saying so (MQTT 5 §3.2.2.2).
            let code = match e {
                DecodeError::InvalidClientId => ConnectAckReason::ClientIdentifierNotValid,
                DecodeError::InvalidProtocol | DecodeError::UnsupportedProtocolLevel => {
                    ConnectAckReason::UnsupportedProtocolVersion
                }
                _ => ConnectAckReason::MalformedPacket,
            };
            connack_fail(out, code, e.to_string());
            return Err(Close::Refused);
        }
    };
    let metrics = cx.shared.router.metrics();
    if cx.shared.at_connection_limit() {
        // `max_connections`: CONNACK 0x97 Quota exceeded (MQTT 5 §3.2.2.2).
        metrics.refused_connection_limit.inc();
        connack_fail(out, ConnectAckReason::QuotaExceeded, "too many connections");
        return Err(Close::Refused);
    }
    if !cx.shared.client_id_ok(&c.client_id) {
        let why = format!(
            "client id must be UTF-8 without U+0000, at most {} bytes",
            cx.shared.max_client_id_bytes
        );
        connack_fail(out, ConnectAckReason::ClientIdentifierNotValid, why);
        return Err(Close::Refused);
    }
    if !session::user_name_ok(c.username.as_deref()) {
        let why = "U+0000 in the user name";
        connack_fail(out, ConnectAckReason::MalformedPacket, why);
        return Err(Close::Refused);
    }
    let mut assigned = None;
    let client_id = if c.client_id.is_empty() {
        // MQTT 5 lets the server assign an id and tell the client [MQTT-3.1.3-7].
        let id = cx.shared.generated_client_id();
        assigned = Some(ByteString::from(id.clone()));
        id
    } else {
        c.client_id.to_string()
    };
    let will = c.last_will.as_ref().map(|w| Message {
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
    let will_timing = c.last_will.as_ref().map(|w| WillTiming {
        delay: w.will_delay_interval_sec.unwrap_or(0),
        expiry: w.message_expiry_interval.map(NonZeroU32::get),
        on_takeover: true,
    });
    if let Some(w) = &will
        && validate_name(&w.topic).is_err()
    {
        connack_fail(
            out,
            ConnectAckReason::TopicNameInvalid,
            "will topic name invalid",
        );
        return Err(Close::Refused);
    }
    if let Some(method) = &c.auth_method {
        // Enhanced authentication (MQTT 5 §4.12) is not offered: refuse and close
        // [MQTT-4.12.0-1] rather than pretend the exchange happened.
        metrics.refused_not_authorized.inc();
        let why = format!("authentication method {method:?} is not supported");
        connack_fail(out, ConnectAckReason::BadAuthenticationMethod, why);
        return Err(Close::Refused);
    }
    if let Some(max) = c.max_packet_size {
        // Nothing larger than this may go to the client [MQTT-3.1.2-24], CONNACK
        // included: when even it does not fit there is no answer to give, and the
        // connection closes (Mosquitto does the same) rather than wait in silence.
        let probe = Codec::new();
        probe.set_max_outbound_size(max.get());
        let ack = accepting_connack(&c, cx, false, assigned.clone());
        let mut sink = BytePages::default();
        if probe
            .encodev(
                Encoded::Packet(Packet::ConnectAck(Box::new(ack))),
                &mut sink,
            )
            .is_err()
        {
            tracing::debug!(%client_id, max, "Maximum Packet Size too small for CONNACK");
            return Err(Close::Refused);
        }
    }
    tracing::debug!(%client_id, clean_start = c.clean_start, keep_alive = c.keep_alive, "v5 connect");
    Ok(Pending {
        client_id,
        will,
        connect: PendingConnect::V5(
            c,
            ConnectExtra {
                assigned,
                will_timing,
            },
        ),
    })
}

/// CONNACK 0x86 (bad user name or password) or 0x87 (not authorized) with a reason
/// string; the connection then closes [MQTT-3.2.2-7].
pub fn refuse(out: &mut Output, why: Refusal) {
    let (code, text) = match why {
        Refusal::BadCredentials => (
            ConnectAckReason::BadUserNameOrPassword,
            "bad user name or password",
        ),
        Refusal::NotAuthorized => (ConnectAckReason::NotAuthorized, "not authorized"),
        Refusal::ClientIdMismatch => (
            ConnectAckReason::NotAuthorized,
            "not authorized: a device's client id must be its user name (device id)",
        ),
        Refusal::Unavailable => (
            ConnectAckReason::ServerUnavailable,
            "device registry not loaded yet; try again later",
        ),
    };
    connack_fail(out, code, text);
}

/// The authenticator said yes: register the session and answer CONNACK with the
/// broker's limits and features.
pub fn accept(
    c: Connect,
    extra: ConnectExtra,
    client_id: String,
    will: Option<Message>,
    acl: Arc<dyn Authorizer>,
    out: &mut Output,
    cx: &mut Cx<'_>,
) -> Box<Active> {
    // Session Expiry Interval absent = 0: the session ends with the connection;
    // clean start discards an existing one first.
    let expiry = c.session_expiry_interval_secs;
    let (id, present, inbox) = session::register(
        Connection {
            client_id: client_id.clone(),
            will,
            clean_start: c.clean_start,
            expiry,
            device: acl.device().is_some(),
        },
        cx,
    );
    let router = &cx.shared.router;
    if let Some(t) = extra.will_timing {
        router.set_will_timing(id, t);
    }
    let codec = Codec::new();
    if let Some(max) = c.max_packet_size {
        // Nothing larger goes to this client [MQTT-3.1.2-24].
        codec.set_max_outbound_size(max.get());
    }
    let state = State {
        codec,
        problem_info: c.request_problem_info,
        aliases: None,
        connect_expiry: expiry,
        qos2_open: 0,
        receive_maximum: usize::from(cx.shared.receive_maximum),
    };
    let mut a = Active::new(
        id,
        client_id,
        acl,
        Proto::V5(Box::new(state)),
        keep_alive(c.keep_alive, cx.shared.max_keep_alive),
        cx.shared,
    );
    // The client's Receive Maximum bounds what is in flight to it [MQTT-3.3.4-9].
    if let Some(max) = c.receive_max {
        a.window = a.window.min(max.get());
    }
    if let Some(inbox) = inbox {
        a.start_delivery(inbox);
    }
    // Input never pauses for an MQTT 5 client: one that exceeds the Receive Maximum it
    // was given is told so (`publish`).
    a.max_waiting = u32::MAX;
    let ack = accepting_connack(&c, cx, present, extra.assigned);
    write(
        state_of(&a).codec_ref(),
        out.pages(),
        Packet::ConnectAck(Box::new(ack)),
    );
    Box::new(a)
}

/// The CONNACK accepting `c`: the broker's limits and features.
fn accepting_connack(
    c: &Connect,
    cx: &Cx<'_>,
    present: bool,
    assigned: Option<ByteString>,
) -> ConnectAck {
    let expiry = c.session_expiry_interval_secs;
    let max_expiry = cx.shared.max_session_expiry;
    ConnectAck {
        // Session Present is 0 after clean start [MQTT-3.2.2-2], else whether one resumed.
        session_present: present,
        // The server's cap applies and must be announced (MQTT 5 §3.2.2.3.2).
        session_expiry_interval_secs: (expiry > max_expiry).then_some(max_expiry),
        receive_max: NonZeroU16::new(cx.shared.receive_maximum).unwrap_or(NonZeroU16::MIN),
        max_qos: QoS::ExactlyOnce,
        max_packet_size: Some(cx.shared.max_packet_bytes as u32),
        assigned_client_id: assigned,
        topic_alias_max: TOPIC_ALIAS_MAX,
        retain_available: true,
        wildcard_subscription_available: true,
        subscription_identifiers_available: true,
        shared_subscription_available: true,
        // Announced only when it differs from what the client asked: the client must
        // then use it [MQTT-3.1.2-21].
        server_keepalive_sec: Some(keep_alive(c.keep_alive, cx.shared.max_keep_alive))
            .filter(|&ka| ka != c.keep_alive),
        ..Default::default()
    }
}

/// The keep-alive a client asking for `asked` seconds gets under the cap `max` (0: no
/// cap): at most the cap, and the cap for a client that asked for none (0).
fn keep_alive(asked: u16, max: u16) -> u16 {
    if max > 0 && (asked == 0 || asked > max) {
        max
    } else {
        asked
    }
}

impl State {
    fn codec_ref(&self) -> &Codec {
        &self.codec
    }

    /// The reason string for an acknowledgement, unless the client asked for none
    /// [MQTT-3.1.2-29].
    fn why(&self, why: impl Into<String>) -> Option<ByteString> {
        self.problem_info.then(|| ByteString::from(why.into()))
    }
}

fn state_of(a: &Active) -> &State {
    match &a.proto {
        Proto::V5(s) => s,
        Proto::V3(_) => unreachable!("an MQTT 5 handler on an MQTT 3.1.1 connection"),
    }
}

fn state_mut(a: &mut Active) -> &mut State {
    match &mut a.proto {
        Proto::V5(s) => s,
        Proto::V3(_) => unreachable!("an MQTT 5 handler on an MQTT 3.1.1 connection"),
    }
}

fn reply(a: &mut Active, out: &mut Output, cx: &mut Cx<'_>, lsn: u64, pkt: Packet) {
    let puback = matches!(pkt, Packet::PublishAck(_));
    a.reply(out, cx, lsn, puback, |proto, dst| {
        if let Proto::V5(s) = proto {
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
    // Message Expiry Interval 0 means no expiry; the decoder would refuse it.
    if let Some(fixed) = wire::without_zero_expiry(&frame) {
        frame = fixed;
    }
    if frame.first() == Some(&SUBSCRIBE)
        && let Err(why) = wire::check_subscribe(&frame, true)
    {
        return Err(Close::protocol(DisconnectReasonCode::MalformedPacket, why));
    }
    let decoded = state_of(a).codec.decode(&mut frame).map_err(|e| {
        let code = match e {
            DecodeError::MaxSizeExceeded { .. } => DisconnectReasonCode::PacketTooLarge,
            DecodeError::InvalidLength | DecodeError::MalformedPacket => {
                DisconnectReasonCode::MalformedPacket
            }
            _ => DisconnectReasonCode::ProtocolError,
        };
        Close::protocol(code, e.to_string())
    })?;
    let pkt = match decoded {
        Some(Decoded::Publish(p, payload, _)) => return publish(a, out, cx, p, payload),
        Some(Decoded::Packet(pkt, _)) => pkt,
        _ => return Err(protocol_error("incomplete packet")),
    };
    match pkt {
        Packet::PublishAck(ack) => a.puback(ack.packet_id.get(), out, cx),
        Packet::PublishReceived(ack) => {
            let refused = u8::from(ack.reason_code) >= 0x80;
            if a.pubrec(ack.packet_id.get(), refused, out, cx) {
                encode_pubrel(state_of(a), out.pages(), ack.packet_id.get());
            }
        }
        Packet::PublishComplete(ack) => a.pubcomp(ack.packet_id.get(), out, cx),
        Packet::PublishRelease(rel) => {
            // QoS 2 messages were routed at PUBLISH; the id may now be reused.
            let known = cx.shared.router.qos2_released(a.id, rel.packet_id.get());
            if known {
                let st = state_mut(a);
                st.qos2_open = st.qos2_open.saturating_sub(1);
            }
            let (reason_code, why) = if known {
                (PublishAck2Reason::Success, None)
            } else {
                let why = format!("no QoS 2 message with packet id {}", rel.packet_id);
                (PublishAck2Reason::PacketIdNotFound, state_of(a).why(why))
            };
            let comp = PublishAck2 {
                packet_id: rel.packet_id,
                reason_code,
                properties: Vec::new(),
                reason_string: why,
            };
            reply(a, out, cx, 0, Packet::PublishComplete(comp));
        }
        Packet::Subscribe(s) => {
            session::check_filters("SUBSCRIBE", s.topic_filters.iter().map(|(f, _)| &**f))?;
            subscribe(a, out, cx, s);
        }
        Packet::Unsubscribe(u) => {
            session::check_filters("UNSUBSCRIBE", u.topic_filters.iter().map(|f| &**f))?;
            unsubscribe(a, out, cx, u);
        }
        Packet::PingRequest => reply(a, out, cx, 0, Packet::PingResponse),
        Packet::Disconnect(d) => return Err(disconnect(a, cx, &d)),
        Packet::Auth(_) => {
            return Err(protocol_error("enhanced authentication is not supported"));
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

fn disconnect(a: &mut Active, cx: &mut Cx<'_>, d: &Disconnect) -> Close {
    let router = &cx.shared.router;
    // The client may change the session expiry on its way out, but a session that
    // ended at disconnect (0) cannot be made persistent here [MQTT-3.14.2-2]: that is
    // a protocol error, and the will goes out.
    if let Some(expiry) = d.session_expiry_interval_secs {
        if state_of(a).connect_expiry == 0 && expiry > 0 {
            return protocol_error("session expiry set on DISCONNECT after 0 at CONNECT");
        }
        router.set_expiry(a.id, expiry);
    }
    // Reason 0x04 asks the server to publish the will anyway (MQTT 5 §3.14.2.1).
    if d.reason_code != DisconnectReasonCode::DisconnectWithWillMessage {
        router.clear_will(a.id);
    }
    Close::Disconnected
}

/// Resolves an inbound topic alias (MQTT 5 §3.3.2.3.4): a topic with an alias sets
/// it, an empty topic uses it.
fn resolve_topic(state: &mut State, p: &mut Publish) -> Result<(), Close> {
    // No alias: an empty name is refused like any invalid one (DISCONNECT 0x90).
    let Some(alias) = p.properties.topic_alias else {
        return Ok(());
    };
    if alias.get() > TOPIC_ALIAS_MAX {
        return Err(Close::protocol(
            DisconnectReasonCode::TopicAliasInvalid,
            format!("topic alias {alias} above the maximum {TOPIC_ALIAS_MAX}"),
        ));
    }
    let table = state
        .aliases
        .get_or_insert_with(|| vec![None; usize::from(TOPIC_ALIAS_MAX)].into_boxed_slice());
    let slot = &mut table[usize::from(alias.get() - 1)];
    if p.topic.is_empty() {
        match slot {
            Some(topic) => p.topic = topic.clone(),
            None => return Err(protocol_error(format!("topic alias {alias} is not set"))),
        }
    } else {
        *slot = Some(p.topic.clone());
    }
    Ok(())
}

/// A negative (or positive) PUBACK / PUBREC for `p`; nothing for QoS 0.
fn ack(
    a: &mut Active,
    out: &mut Output,
    cx: &mut Cx<'_>,
    lsn: u64,
    p: &Publish,
    reason_code: PublishAckReason,
    why: Option<String>,
) {
    let Some(packet_id) = p.packet_id else {
        return;
    };
    let ack = PublishAck {
        packet_id,
        reason_code,
        properties: Vec::new(),
        reason_string: why.and_then(|w| state_of(a).why(w)),
    };
    match p.qos {
        QoS::AtLeastOnce => reply(a, out, cx, lsn, Packet::PublishAck(ack)),
        QoS::ExactlyOnce => reply(a, out, cx, lsn, Packet::PublishReceived(ack)),
        QoS::AtMostOnce => {}
    }
}

fn publish(
    a: &mut Active,
    out: &mut Output,
    cx: &mut Cx<'_>,
    mut p: Publish,
    payload: Bytes,
) -> Result<Flow, Close> {
    // Subscription Identifiers are the server's to send [MQTT-3.3.4-6].
    if !p.properties.subscription_ids.is_empty() {
        return Err(protocol_error(
            "a PUBLISH from a client must not carry a Subscription Identifier",
        ));
    }
    // A string with U+0000 is a malformed packet [MQTT-1.5.4-2]; at QoS 0 there is no
    // acknowledgement to refuse it in, so it is said the same way at every QoS.
    if p.topic.contains('\0') {
        return Err(Close::protocol(
            DisconnectReasonCode::MalformedPacket,
            "U+0000 in the topic name",
        ));
    }
    // Its last message landed in a backed-up queue: wait rather than drop later
    // (outbox.rs).
    if a.hold_publish(cx) {
        return Ok(Flow::Pause);
    }
    // A device above its rate: DISCONNECT 0x96 Message rate too high.
    cx.shared.rate_check(&*a.acl)?;
    if p.qos != QoS::AtMostOnce {
        // [MQTT-3.3.4-7] (the client's side) / §3.3.4: a client may not have more QoS 1
        // and QoS 2 publishes unacknowledged than the Receive Maximum it was given.
        let st = state_of(a);
        if a.waiting_pubacks() + st.qos2_open >= st.receive_maximum {
            return Err(Close::protocol(
                DisconnectReasonCode::ReceiveMaximumExceeded,
                format!(
                    "more than {} QoS 1 and 2 publishes unacknowledged",
                    st.receive_maximum
                ),
            ));
        }
    }
    resolve_topic(state_mut(a), &mut p)?;
    let metrics = cx.shared.router.metrics();
    // Empty without an alias, or with a wildcard [MQTT-3.3.2-2]: a PUBACK 0x90 would let
    // the client go on as if it were a refusal of this message only, and QoS 0 has none
    // at all; the topic name is the packet's, so the packet is wrong: DISCONNECT 0x90.
    if let Err(e) = validate_name(&p.topic) {
        return Err(Close::protocol(
            DisconnectReasonCode::TopicNameInvalid,
            format!("topic name invalid: {}", e.code()),
        ));
    }
    if !auth::may_publish(&*a.acl, &p.topic) {
        // PUBACK / PUBREC 0x87; a QoS 0 message is just dropped. Counted either way.
        auth::publish_refused(metrics, &a.client_id, &p.topic);
        let why = format!("not authorized to publish to {}", p.topic);
        ack(
            a,
            out,
            cx,
            0,
            &p,
            PublishAckReason::NotAuthorized,
            Some(why),
        );
        return Ok(Flow::Continue);
    }
    let props = &p.properties;
    // A payload that says it is UTF-8 and is not may be refused (MQTT 5 §3.3.2.3.2).
    if props.is_utf8_payload && std::str::from_utf8(&payload).is_err() {
        let why = "payload format indicator says UTF-8, payload is not".to_owned();
        ack(
            a,
            out,
            cx,
            0,
            &p,
            PublishAckReason::PayloadFormatInvalid,
            Some(why),
        );
        return Ok(Flow::Continue);
    }
    if p.qos == QoS::ExactlyOnce
        && let Some(id) = p.packet_id
        && !cx.shared.router.qos2_received(a.id, id.get())
    {
        // A resend of a QoS 2 message not yet released: PUBREC again, route once.
        ack(a, out, cx, 0, &p, PublishAckReason::Success, None);
        return Ok(Flow::Continue);
    }
    // A board's reading: checked, and stamped when it has no `ts` (`telemetry.rs`). A
    // refused one gets 0x99 and only its report is routed.
    // A resend of one already stamped (same packet id and bytes) is stamped as before.
    let packet = p.packet_id.map(|id| (id, p.dup));
    let payload = match cx
        .shared
        .router
        .inspect_publish(a.id, &p.topic, &payload, p.retain, packet)
    {
        Ok(stamped) => stamped.unwrap_or(payload),
        Err(refused) => {
            if let (QoS::ExactlyOnce, Some(id)) = (p.qos, p.packet_id) {
                // A negative PUBREC ends the flow: no PUBREL will free the id.
                cx.shared.router.qos2_released(a.id, id.get());
            }
            let why = refused.reason();
            let lsn = cx.shared.router.report_refused(*refused);
            let code = PublishAckReason::PayloadFormatInvalid;
            ack(a, out, cx, lsn, &p, code, Some(why));
            return Ok(Flow::Continue);
        }
    };
    let properties = Properties {
        user_properties: props.user_properties.clone(),
        content_type: props.content_type.clone(),
        response_topic: props.response_topic.clone(),
        correlation_data: props.correlation_data.clone(),
        is_utf8_payload: props.is_utf8_payload,
        // The clock starts now: the interval forwarded is what remains [MQTT-3.3.2-6].
        expires_at: props
            .message_expiry_interval
            .map(|secs| cx.now + Duration::from_secs(secs.get().into())),
        subscription_ids: Vec::new(),
    };
    let msg = Message {
        topic: p.topic.clone(),
        payload,
        qos: p.qos,
        retain: p.retain,
        properties: Some(Arc::new(properties)),
    };
    let (lsn, over_budget) = a.route(cx, msg);
    if over_budget && p.qos != QoS::AtMostOnce {
        // `queued_bytes_total`: some session could not queue it. Said so rather than
        // silently acknowledged; a refused QoS 2 id is released at once, as for 0x99.
        if let (QoS::ExactlyOnce, Some(id)) = (p.qos, p.packet_id) {
            cx.shared.router.qos2_released(a.id, id.get());
        }
        let why = "quota exceeded: the broker's queues are full (queued_bytes_total); \
                   not every subscriber got this message"
            .to_owned();
        ack(
            a,
            out,
            cx,
            lsn,
            &p,
            PublishAckReason::QuotaExceeded,
            Some(why),
        );
        return Ok(Flow::Continue);
    }
    if p.qos == QoS::ExactlyOnce {
        state_mut(a).qos2_open += 1;
    }
    // The PUBACK/PUBREC leaves once the message is on disk.
    ack(a, out, cx, lsn, &p, PublishAckReason::Success, None);
    Ok(Flow::Continue)
}

fn subscribe(a: &mut Active, out: &mut Output, cx: &mut Cx<'_>, s: Subscribe) {
    a.ensure_delivery(cx);
    let router = &cx.shared.router;
    // One Subscription Identifier for every filter of this SUBSCRIBE (MQTT 5 §3.8.2.1.2).
    let id = s.id.map(NonZeroU32::get);
    let mut refused = Vec::new();
    let mut lsn = 0;
    let mut status = Vec::with_capacity(s.topic_filters.len());
    for (raw, opts) in s.topic_filters {
        let (code, label) = match session::subscription_filter(a, cx, &raw, opts.no_local) {
            Ok(filter) => {
                // Granted as requested; delivery uses min(published, granted).
                let send = match opts.retain_handling {
                    RetainHandling::AtSubscribe => SendRetained::Always,
                    RetainHandling::AtSubscribeNew => SendRetained::IfNewSubscription,
                    RetainHandling::NoAtSubscribe => SendRetained::Never,
                };
                let entry = Subscription {
                    filter,
                    qos: opts.qos,
                    no_local: opts.no_local,
                    retain_as_published: opts.retain_as_published,
                    id,
                };
                lsn = lsn.max(router.subscribe(a.id, &raw, entry, send));
                status.push(match opts.qos {
                    QoS::AtMostOnce => SubscribeAckReason::GrantedQos0,
                    QoS::AtLeastOnce => SubscribeAckReason::GrantedQos1,
                    QoS::ExactlyOnce => SubscribeAckReason::GrantedQos2,
                });
                continue;
            }
            Err(FilterRefused::Invalid(e)) => (SubscribeAckReason::TopicFilterInvalid, e.code()),
            Err(FilterRefused::NoLocalOnShared) => (
                SubscribeAckReason::TopicFilterInvalid,
                "no_local_on_shared_subscription",
            ),
            Err(FilterRefused::NotAuthorized) => {
                (SubscribeAckReason::NotAuthorized, "not_authorized")
            }
        };
        status.push(code);
        refused.push(format!("{raw}: {label}"));
    }
    // The reason string covers the whole SUBACK: name each refused filter.
    let reason_string = if refused.is_empty() {
        None
    } else {
        state_of(a).why(format!("refused {}", refused.join(", ")))
    };
    let ack = SubscribeAck {
        packet_id: s.packet_id,
        properties: Vec::new(),
        reason_string,
        status,
    };
    // A persistent session's subscription is on disk before the SUBACK.
    reply(a, out, cx, lsn, Packet::SubscribeAck(ack));
}

fn unsubscribe(a: &mut Active, out: &mut Output, cx: &mut Cx<'_>, u: Unsubscribe) {
    let status = u
        .topic_filters
        .iter()
        .map(|raw| {
            if cx.shared.router.unsubscribe(a.id, raw) {
                UnsubscribeAckReason::Success
            } else {
                UnsubscribeAckReason::NoSubscriptionExisted
            }
        })
        .collect();
    let ack = UnsubscribeAck {
        packet_id: u.packet_id,
        properties: Vec::new(),
        reason_string: None,
        status,
    };
    reply(a, out, cx, 0, Packet::UnsubscribeAck(ack));
}

/// PUBREL for an outbound QoS 2 message.
pub fn encode_pubrel(s: &State, dst: &mut BytePages, pid: u16) {
    if let Some(packet_id) = NonZeroU16::new(pid) {
        let rel = PublishAck2 {
            packet_id,
            reason_code: PublishAck2Reason::Success,
            properties: Vec::new(),
            reason_string: None,
        };
        write(&s.codec, dst, Packet::PublishRelease(rel));
    }
}

/// A PUBLISH to an MQTT 5 subscriber. `Err` when it is larger than the client's
/// Maximum Packet Size.
pub fn encode_publish(
    s: &State,
    dst: &mut BytePages,
    msg: Message,
    pid: Option<u16>,
    dup: bool,
) -> Result<(), session::NotEncoded> {
    let mut properties = PublishProperties::default();
    if let Some(props) = &msg.properties {
        outgoing_properties(props, &mut properties);
    }
    let pkt = Publish {
        dup,
        retain: msg.retain,
        qos: msg.qos,
        packet_id: pid.and_then(NonZeroU16::new),
        topic: msg.topic,
        payload_size: msg.payload.len() as u32,
        properties,
    };
    s.codec
        .encodev(Encoded::Publish(pkt, Some(msg.payload)), dst)
        .map_err(|e| {
            tracing::debug!(error = %e, "publish to subscriber not encoded");
            session::NotEncoded
        })
}

/// A server DISCONNECT with a reason code and string (allowed even without Request
/// Problem Information, [MQTT-3.1.2-29]).
pub fn encode_disconnect(s: &State, dst: &mut BytePages, code: DisconnectReasonCode, why: String) {
    tracing::debug!(reason = ?code, why, "server DISCONNECT");
    let d = Disconnect {
        reason_code: code,
        reason_string: Some(ByteString::from(why)),
        ..Default::default()
    };
    write(&s.codec, dst, Packet::Disconnect(d));
}

/// The PUBLISH properties a subscriber gets: the publisher's, passed through unchanged
/// [MQTT-3.3.2-15/-16/-17/-18/-19/-20], the expiry interval that is left
/// [MQTT-3.3.2-6], and this subscriber's subscription identifiers [MQTT-3.3.4-3].
pub fn outgoing_properties(props: &Properties, p: &mut PublishProperties) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_level_of_connect_picks_the_version() {
        let v5 = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00\x00";
        let v3 = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00";
        assert_eq!(is_v5_connect(v5), Some(true));
        assert_eq!(is_v5_connect(v3), Some(false));
        assert_eq!(is_v5_connect(b"\x30\x02\x00\x00"), None, "not CONNECT");
        assert_eq!(is_v5_connect(b"\x10\x02\x00\x04"), Some(false), "too short");
    }
}
