//! The one shared routing table: who is connected, what they subscribed to, the retained
//! store and the Last Will of each connection.
//!
//! `MqttSink`s are `Rc`-based and live on their worker thread, so the table never holds
//! them: each connection registers a bounded `Send` channel and a takeover [`Notify`], and
//! its delivery task (see `session.rs`) drains the channel into the sink. Routing only does
//! `try_send` under the lock — it never waits on a slow subscriber; a full queue drops the
//! message and counts it (`messages_dropped_total{reason="queue_full"}`).
//!
//! A `std::sync::Mutex` suffices: every critical section is short and synchronous, and the
//! table is far too small in a village deployment for lock contention to matter.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use ntex_bytes::{ByteString, Bytes};
use ntex_mqtt::QoS;
use tokio::sync::{Notify, mpsc};

use crate::metrics::Metrics;
use crate::topic_filter::{Filter, matches};

/// Identifies one network connection (not a client id: a client id outlives connections).
pub type ConnId = u64;

/// An application message on its way to subscribers.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: ByteString,
    pub payload: Bytes,
    /// As published; lowered per subscriber to the granted QoS.
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 properties forwarded unchanged (user properties carry trace context).
    pub properties: Option<Arc<Properties>>,
}

/// The MQTT 5 PUBLISH properties a broker forwards to subscribers (MQTT 5 §3.3.2.3).
#[derive(Debug, Default)]
pub struct Properties {
    pub user_properties: Vec<(ByteString, ByteString)>,
    pub content_type: Option<ByteString>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    pub is_utf8_payload: bool,
}

/// One subscription of one connection.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub filter: Filter,
    /// Granted QoS, at most 1: delivery to subscribers is QoS 0 or 1 in this broker.
    pub qos: QoS,
    /// MQTT 5: do not send the connection its own publications.
    pub no_local: bool,
    /// MQTT 5: keep the publisher's RETAIN flag instead of clearing it [MQTT-3.3.1-12].
    pub retain_as_published: bool,
}

/// When retained messages are sent for a new subscription (MQTT 5 Retain Handling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendRetained {
    Always,
    IfNewSubscription,
    Never,
}

/// What a connection hands the router when it registers.
pub struct Registration {
    pub client_id: String,
    pub tx: mpsc::Sender<Message>,
    /// Signalled when another connection takes over the client id.
    pub kick: Arc<Notify>,
    pub will: Option<Message>,
}

#[derive(Clone)]
pub struct Router {
    state: Arc<Mutex<State>>,
    metrics: Metrics,
}

#[derive(Default)]
struct State {
    next_id: ConnId,
    conns: HashMap<ConnId, Conn>,
    by_client: HashMap<String, ConnId>,
    retained: BTreeMap<ByteString, Message>,
    /// Round-robin position for shared subscriptions.
    share_turn: usize,
}

struct Conn {
    client_id: String,
    tx: mpsc::Sender<Message>,
    kick: Arc<Notify>,
    will: Option<Message>,
    /// Keyed by the filter exactly as subscribed, so a repeat SUBSCRIBE replaces it
    /// [MQTT-3.8.4-3] and UNSUBSCRIBE finds it.
    subs: HashMap<String, Subscription>,
}

impl Router {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            state: Arc::default(),
            metrics,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind, still consistent enough
        // to keep routing; refusing every later connection would be worse.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection. An existing connection with the same client id is
    /// disconnected [MQTT-3.1.4-2]; its subscriptions and its will are discarded with it:
    /// the client is evidently alive, and a late "offline" will would overwrite the
    /// "online" status the new connection is about to publish.
    pub fn connect(&self, reg: Registration) -> ConnId {
        let mut st = self.lock();
        st.next_id += 1;
        let id = st.next_id;
        if let Some(old) = st.by_client.insert(reg.client_id.clone(), id)
            && let Some(old) = st.conns.remove(&old)
        {
            old.kick.notify_one();
            self.metrics.takeovers.inc();
        }
        st.conns.insert(
            id,
            Conn {
                client_id: reg.client_id,
                tx: reg.tx,
                kick: reg.kick,
                will: reg.will,
                subs: HashMap::new(),
            },
        );
        id
    }

    /// A DISCONNECT packet arrived: the will must not be published [MQTT-3.14.4-3].
    pub fn clear_will(&self, conn: ConnId) {
        if let Some(c) = self.lock().conns.get_mut(&conn) {
            c.will = None;
        }
    }

    /// The connection is gone; returns the will to publish, if it still has one.
    pub fn disconnect(&self, conn: ConnId) -> Option<Message> {
        let mut st = self.lock();
        let c = st.conns.remove(&conn)?;
        // Only forget the client id if it still points here, not at a newer connection.
        if st.by_client.get(&c.client_id) == Some(&conn) {
            st.by_client.remove(&c.client_id);
        }
        c.will
    }

    /// Adds or replaces a subscription and queues the matching retained messages.
    /// Returns false when the connection is no longer registered (taken over).
    pub fn subscribe(
        &self,
        conn: ConnId,
        raw: &str,
        sub: Subscription,
        send: SendRetained,
    ) -> bool {
        let mut st = self.lock();
        let State {
            conns, retained, ..
        } = &mut *st;
        let Some(c) = conns.get_mut(&conn) else {
            return false;
        };
        let is_new = c.subs.insert(raw.to_owned(), sub.clone()).is_none();
        // Retained messages are not sent for shared subscriptions (MQTT 5 §4.8.2).
        let send = match send {
            SendRetained::Always => true,
            SendRetained::IfNewSubscription => is_new,
            SendRetained::Never => false,
        } && sub.filter.group.is_none();
        if send {
            for (topic, msg) in retained.iter() {
                if matches(&sub.filter.pattern, topic) {
                    // A retained message sent because of a subscription carries RETAIN=1
                    // [MQTT-3.3.1-8].
                    let m = Message {
                        qos: msg.qos.min(sub.qos),
                        retain: true,
                        ..msg.clone()
                    };
                    self.enqueue(&c.tx, m);
                }
            }
        }
        true
    }

    /// Returns whether the subscription existed (MQTT 5 reports "no subscription existed").
    pub fn unsubscribe(&self, conn: ConnId, raw: &str) -> bool {
        self.lock()
            .conns
            .get_mut(&conn)
            .is_some_and(|c| c.subs.remove(raw).is_some())
    }

    /// Routes one message: updates the retained store, then queues a copy for every
    /// connection with a matching subscription (once per connection, at the highest
    /// matching QoS) and for one member of each matching shared-subscription group.
    pub fn publish(&self, from: Option<ConnId>, msg: Message) {
        self.metrics.received.inc();
        let mut st = self.lock();
        if msg.retain {
            // An empty retained payload deletes the topic's retained message
            // [MQTT-3.3.1-10]; it is still forwarded to current subscribers [MQTT-3.3.1-12].
            if msg.payload.is_empty() {
                st.retained.remove(&msg.topic);
            } else {
                st.retained.insert(msg.topic.clone(), msg.clone());
            }
            self.metrics.retained.set(st.retained.len() as i64);
        }

        let mut groups: HashMap<(&str, &str), Vec<(ConnId, QoS)>> = HashMap::new();
        for (&id, conn) in &st.conns {
            let mut best: Option<(QoS, bool)> = None;
            for sub in conn.subs.values() {
                if !matches(&sub.filter.pattern, &msg.topic) || (sub.no_local && from == Some(id)) {
                    continue;
                }
                if let Some(group) = &sub.filter.group {
                    groups
                        .entry((group, &sub.filter.pattern))
                        .or_default()
                        .push((id, sub.qos));
                    continue;
                }
                let qos = msg.qos.min(sub.qos);
                // Forwarded copies have RETAIN=0 unless the subscriber asked otherwise
                // [MQTT-3.3.1-9].
                let retain = msg.retain && sub.retain_as_published;
                best = Some(match best {
                    Some((q, r)) => (q.max(qos), r || retain),
                    None => (qos, retain),
                });
            }
            if let Some((qos, retain)) = best {
                self.enqueue(
                    &conn.tx,
                    Message {
                        qos,
                        retain,
                        ..msg.clone()
                    },
                );
            }
        }

        let picks: Vec<(ConnId, QoS)> = groups
            .into_values()
            .map(|members| members[st.share_turn % members.len()])
            .collect();
        st.share_turn = st.share_turn.wrapping_add(1);
        for (id, qos) in picks {
            if let Some(conn) = st.conns.get(&id) {
                let m = Message {
                    qos: msg.qos.min(qos),
                    retain: false,
                    ..msg.clone()
                };
                self.enqueue(&conn.tx, m);
            }
        }
    }

    fn enqueue(&self, tx: &mpsc::Sender<Message>, msg: Message) {
        match tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.metrics.dropped_queue_full.inc(),
            Err(mpsc::error::TrySendError::Closed(_)) => self.metrics.dropped_disconnected.inc(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lentera_bootstrap::Observability;

    fn router() -> Router {
        Router::new(Metrics::new(&Observability::new("broker_test")))
    }

    fn register(r: &Router, client: &str) -> (ConnId, mpsc::Receiver<Message>, Arc<Notify>) {
        let (tx, rx) = mpsc::channel(8);
        let kick = Arc::new(Notify::new());
        let id = r.connect(Registration {
            client_id: client.into(),
            tx,
            kick: kick.clone(),
            will: None,
        });
        (id, rx, kick)
    }

    fn msg(topic: &'static str, payload: &'static str, qos: QoS, retain: bool) -> Message {
        Message {
            topic: ByteString::from_static(topic),
            payload: Bytes::from_static(payload.as_bytes()),
            qos,
            retain,
            properties: None,
        }
    }

    fn sub(filter: &str, qos: QoS) -> Subscription {
        Subscription {
            filter: Filter::parse(filter).unwrap(),
            qos,
            no_local: false,
            retain_as_published: false,
        }
    }

    #[test]
    fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
        let r = router();
        let (id, mut rx, _) = register(&r, "a");
        r.subscribe(id, "x/#", sub("x/#", QoS::AtMostOnce), SendRetained::Always);
        r.subscribe(
            id,
            "x/+",
            sub("x/+", QoS::AtLeastOnce),
            SendRetained::Always,
        );
        r.publish(None, msg("x/y", "1", QoS::ExactlyOnce, false));
        let got = rx.try_recv().unwrap();
        assert_eq!(got.qos, QoS::AtLeastOnce);
        assert!(rx.try_recv().is_err(), "delivered twice");
    }

    #[test]
    fn retained_message_is_stored_replaced_and_deleted_by_empty_payload() {
        let r = router();
        r.publish(None, msg("s/1", "old", QoS::AtLeastOnce, true));
        r.publish(None, msg("s/1", "new", QoS::AtLeastOnce, true));
        let (id, mut rx, _) = register(&r, "late");
        r.subscribe(
            id,
            "s/+",
            sub("s/+", QoS::AtLeastOnce),
            SendRetained::Always,
        );
        let got = rx.try_recv().unwrap();
        assert_eq!(&got.payload[..], b"new");
        assert!(got.retain);
        assert!(rx.try_recv().is_err());

        r.publish(None, msg("s/1", "", QoS::AtMostOnce, true));
        let (id2, mut rx2, _) = register(&r, "later");
        r.subscribe(
            id2,
            "s/#",
            sub("s/#", QoS::AtLeastOnce),
            SendRetained::Always,
        );
        assert!(
            rx2.try_recv().is_err(),
            "deleted retained message was delivered"
        );
        assert_eq!(r.metrics().retained.get(), 0);
    }

    #[test]
    fn forwarded_copies_clear_the_retain_flag() {
        let r = router();
        let (id, mut rx, _) = register(&r, "a");
        r.subscribe(id, "s/1", sub("s/1", QoS::AtMostOnce), SendRetained::Always);
        r.publish(None, msg("s/1", "on", QoS::AtMostOnce, true));
        assert!(!rx.try_recv().unwrap().retain);
    }

    #[test]
    fn takeover_kicks_the_old_connection_and_discards_its_will() {
        let r = router();
        let (tx, _rx) = mpsc::channel(8);
        let kick = Arc::new(Notify::new());
        let old = r.connect(Registration {
            client_id: "board".into(),
            tx,
            kick: kick.clone(),
            will: Some(msg(
                "lentera/board/status",
                "offline",
                QoS::AtLeastOnce,
                true,
            )),
        });
        let (new, _rx2, _) = register(&r, "board");
        assert_ne!(old, new);
        assert!(
            r.disconnect(old).is_none(),
            "will of a taken-over connection survived"
        );
        assert_eq!(r.metrics().takeovers.get(), 1);
        // The kick permit is stored, so the old task sees it even if it polls later.
        let waited = std::pin::pin!(kick.notified());
        assert!(futures_ready(waited));
    }

    #[test]
    fn full_queue_drops_and_counts_instead_of_blocking() {
        let r = router();
        let (id, _rx, _) = register(&r, "slow");
        r.subscribe(id, "t", sub("t", QoS::AtMostOnce), SendRetained::Always);
        for _ in 0..10 {
            r.publish(None, msg("t", "x", QoS::AtMostOnce, false));
        }
        assert_eq!(r.metrics().dropped_queue_full.get(), 2);
    }

    #[test]
    fn shared_subscription_delivers_to_one_member_per_message() {
        let r = router();
        let (a, mut rx_a, _) = register(&r, "h1");
        let (b, mut rx_b, _) = register(&r, "h2");
        for id in [a, b] {
            let f = "$share/hist/d/+";
            r.subscribe(id, f, sub(f, QoS::AtLeastOnce), SendRetained::Always);
        }
        r.publish(None, msg("d/1", "1", QoS::AtLeastOnce, false));
        r.publish(None, msg("d/1", "2", QoS::AtLeastOnce, false));
        let count =
            |rx: &mut mpsc::Receiver<Message>| std::iter::from_fn(|| rx.try_recv().ok()).count();
        assert_eq!((count(&mut rx_a), count(&mut rx_b)), (1, 1));
    }

    /// Polls a future once with a no-op waker.
    fn futures_ready<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        f.poll(&mut cx).is_ready()
    }
}
