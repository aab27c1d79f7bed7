//! MQTT 3.1.1 connection handling: CONNECT, PUBLISH, and the protocol packets
//! (SUBSCRIBE, UNSUBSCRIBE, DISCONNECT, PINGREQ, PUBREL) ntex-mqtt hands to `.protocol(…)`.

use ntex_mqtt::{QoS, v3};
use ntex_util::time::Seconds;

use crate::auth::{self, Credentials, Refusal};
use crate::error::BrokerError;
use crate::router::NEVER;
use crate::router::{Message, SendRetained, Subscription};
use crate::session::{ConnState, Connection, Shared, Sink};
use crate::topic_filter::{Filter, validate_name};

pub async fn connect(
    shared: &Shared,
    c: v3::Connect,
) -> Result<v3::ConnectAck<ConnState>, BrokerError> {
    if shared.at_connection_limit() {
        // `max_connections`: CONNACK 3 Server unavailable (MQTT 3.1.1 §3.2.2.3).
        shared.router.metrics().refused_connection_limit.inc();
        return Ok(c.service_unavailable());
    }
    let pkt = c.packet();
    let mut client_id = pkt.client_id.to_string();
    if client_id.is_empty() {
        // A client without an id must ask for a clean session [MQTT-3.1.3-8]; it then gets
        // one we make up [MQTT-3.1.3-6].
        if !pkt.clean_session {
            return Ok(c.identifier_rejected());
        }
        client_id = shared.generated_client_id();
    }
    let keep_alive = pkt.keep_alive;
    let will = pkt.last_will.as_ref().map(|w| Message {
        topic: w.topic.clone(),
        payload: w.message.clone(),
        qos: w.qos,
        retain: w.retain,
        properties: None,
    });
    if let Some(w) = &will
        && validate_name(&w.topic).is_err()
    {
        return Ok(c.identifier_rejected());
    }
    tracing::debug!(%client_id, clean_session = pkt.clean_session, keep_alive, "v3 connect");
    // Before `register`: a refused client must not take over anyone's session.
    let creds = Credentials {
        client_id: &client_id,
        username: pkt.username.as_deref(),
        password: pkt.password.as_deref(),
    };
    let will_topic = will.as_ref().map(|w| &*w.topic);
    let acl = match auth::connect(&*shared.auth, shared.router.metrics(), creds, will_topic).await {
        Ok(acl) => acl,
        // CONNACK 4 / 5 (MQTT 3.1.1 §3.2.2.3), then the connection closes [MQTT-3.2.2-5].
        Err(Refusal::BadCredentials) => return Ok(c.bad_username_or_pwd()),
        Err(Refusal::NotAuthorized) => return Ok(c.not_authorized()),
    };

    let conn = Connection {
        client_id,
        will,
        // clean_session=1 discards any session and ends the new one at disconnect
        // [MQTT-3.1.2-6]; 0 resumes or creates a persistent one [MQTT-3.1.2-4]. 3.1.1 has
        // no expiry interval: the configured maximum applies (the router caps NEVER).
        clean_start: pkt.clean_session,
        expiry: if pkt.clean_session { 0 } else { NEVER },
        acl,
    };
    let (state, present) = shared.register(conn, Sink::V3(c.sink()), c.io().on_disconnect());
    // session_present=1 only when a session was resumed [MQTT-3.2.2-1/-2].
    let ack = c.ack(state, present);
    Ok(if keep_alive == 0 {
        // Keep-alive 0 turns the mechanism off [MQTT-3.1.2-24]; ntex-mqtt would otherwise
        // default to a 30 s idle timeout.
        ack.idle_timeout(Seconds::ZERO)
    } else {
        ack
    })
}

pub async fn publish(s: &v3::Session<ConnState>, p: v3::Publish) -> Result<(), BrokerError> {
    // The codec already refuses wildcards [MQTT-3.3.2-2]; an empty name closes the
    // connection, the only answer MQTT 3.1.1 has.
    validate_name(&p.packet().topic).map_err(BrokerError::Topic)?;
    let payload = p.read_all().await.map_err(|_| BrokerError::Payload)?;
    if !auth::may_publish(&*s.acl, &p.packet().topic) {
        // MQTT 3.1.1 has no negative PUBACK: the message is acknowledged as usual and
        // dropped (Mosquitto does the same), counted as not_authorized.
        auth::publish_refused(s.router.metrics(), &s.client_id, &p.packet().topic);
        return Ok(());
    }
    if p.qos() == QoS::ExactlyOnce
        && let Some(id) = p.id()
        && !s.router.qos2_received(s.id, id.get())
    {
        // A resend of a QoS 2 message not yet released: PUBREC again, route once.
        return Ok(());
    }
    if p.qos() != QoS::AtMostOnce {
        // Broker overloaded: hold this publisher back rather than drop later (outbox.rs).
        s.router.admit_publish().await;
    }
    let lsn = s.router.publish(
        Some(s.id),
        Message {
            topic: p.packet().topic.clone(),
            payload,
            qos: p.qos(),
            retain: p.retain(),
            properties: None,
        },
    );
    // The PUBACK/PUBREC goes out when this returns: the message must be on disk first.
    s.router.store().durable(lsn).await;
    Ok(())
}

pub async fn protocol(
    s: &v3::Session<ConnState>,
    msg: v3::ProtocolMessage,
) -> Result<v3::ProtocolMessageAck, BrokerError> {
    match msg {
        v3::ProtocolMessage::Subscribe(mut sub) => {
            s.ensure_delivery();
            let mut lsn = 0;
            for mut item in sub.iter_mut() {
                let raw = item.topic().clone();
                match Filter::parse(&raw) {
                    Ok(filter) if !s.acl.may_subscribe(&filter.pattern) => {
                        // 0x80 is the only refusal MQTT 3.1.1 has [MQTT-3.9.3-2].
                        auth::subscribe_refused(s.router.metrics(), &s.client_id, &raw);
                        item.fail();
                    }
                    Ok(filter) => {
                        // Every QoS is granted as requested; delivery uses
                        // min(published, granted) [MQTT-3.8.4-8].
                        let qos = item.qos();
                        let s2 = Subscription {
                            filter,
                            qos,
                            no_local: false,
                            retain_as_published: false,
                            id: None,
                        };
                        lsn = lsn.max(s.router.subscribe(s.id, &raw, s2, SendRetained::Always));
                        item.confirm(qos);
                    }
                    Err(e) => {
                        tracing::debug!(filter = %raw, code = e.code(), "subscription refused");
                        item.fail();
                    }
                }
            }
            // A persistent session's subscription is on disk before the SUBACK.
            s.router.store().durable(lsn).await;
            Ok(sub.ack())
        }
        v3::ProtocolMessage::Unsubscribe(unsub) => {
            for raw in unsub.iter() {
                s.router.unsubscribe(s.id, raw);
            }
            Ok(unsub.ack())
        }
        v3::ProtocolMessage::Disconnect(d) => {
            s.router.clear_will(s.id);
            Ok(d.ack())
        }
        v3::ProtocolMessage::PublishRelease(r) => {
            // QoS 2 messages were routed at PUBLISH; the id may now be reused.
            s.router.qos2_released(s.id, r.id().get());
            Ok(r.ack())
        }
        // PINGREQ → PINGRESP.
        other => Ok(other.ack()),
    }
}
