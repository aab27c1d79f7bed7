//! The connection task and the publish/ack handle.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lentera_bootstrap::Check;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, Publish, QoS};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::MqttSettings;

/// Why a publish was not confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to the MQTT broker")]
    NotConnected,
    #[error("too many publishes awaiting acknowledgement")]
    Overloaded,
    #[error("the MQTT broker did not acknowledge in time")]
    Timeout,
    #[error("the MQTT connection was lost before the broker acknowledged")]
    ConnectionLost,
}

/// Who waits for a publish: nobody (QoS 0 or fire-and-forget) or a group of QoS 1
/// publishes (one for [`Client::publish_acked`]).
type Waiter = Option<Arc<Group>>;

/// Publishes still unacknowledged and the caller waiting for all of them: one counter
/// and one wake-up for a whole batch instead of a channel and two timers per message
/// (which, at a hundred readings per HTTP request, was most of ingest's cost).
struct Group(Mutex<GroupState>);

struct GroupState {
    left: usize,
    /// The most actionable failure so far (see [`PublishError::worse`]).
    failed: Option<PublishError>,
    tx: Option<oneshot::Sender<Result<(), PublishError>>>,
}

impl Group {
    fn new(n: usize) -> (Arc<Group>, oneshot::Receiver<Result<(), PublishError>>) {
        let (tx, rx) = oneshot::channel();
        let state = GroupState {
            left: n,
            failed: None,
            tx: Some(tx),
        };
        (Arc::new(Group(Mutex::new(state))), rx)
    }

    /// The outcome of one of the group's publishes.
    fn done(&self, result: Result<(), PublishError>) {
        let mut s = self.0.lock().unwrap();
        if let Err(e) = result {
            s.failed = Some(PublishError::worse(s.failed.take(), e));
        }
        s.left -= 1;
        if s.left == 0 {
            let result = s.failed.take().map_or(Ok(()), Err);
            if let Some(tx) = s.tx.take() {
                let _ = tx.send(result);
            }
        }
    }
}

impl PublishError {
    /// Of two failures, the one a caller should act on: `Overloaded` ("slow down") only
    /// when nothing worse happened, because "broker gone" needs a different reaction.
    pub fn worse(a: Option<PublishError>, b: PublishError) -> PublishError {
        match a {
            None | Some(PublishError::Overloaded) => b,
            Some(a) => a,
        }
    }
}

/// State of the current connection. A new rumqttc `EventLoop` (and request channel) is
/// made for every connection attempt, so requests queued on a dead connection can never be
/// mistaken for ones on the next: their waiters are failed and the channel is dropped.
struct Link {
    client: AsyncClient,
    generation: u64,
    connected: bool,
    /// Set by [`Client::disconnect`]: the connection task ends instead of reconnecting.
    stopping: bool,
    /// Publishes handed to rumqttc, in order, not yet given a packet id.
    sent: VecDeque<Waiter>,
    /// QoS 1 publishes on the wire, by packet id, awaiting PUBACK.
    inflight: HashMap<u16, Arc<Group>>,
    /// Acknowledgements that did not fit in rumqttc's request queue, in delivery order.
    /// They must never be dropped: an unacknowledged delivery holds a slot of the broker's
    /// in-flight window until the next connection, and enough of them stall the stream.
    /// The queue overflows while rumqttc hands out a long run of buffered deliveries
    /// without reading requests; the connection task moves these across as room appears.
    acks: VecDeque<Publish>,
}

impl Link {
    /// Hands one publish to rumqttc. Called under the lock, which keeps `sent` in the
    /// order rumqttc assigns packet ids.
    fn enqueue(
        &mut self,
        topic: String,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
        waiter: Waiter,
    ) -> Result<(), PublishError> {
        if !self.connected {
            return Err(PublishError::NotConnected);
        }
        self.client
            .try_publish(topic, qos, retain, payload)
            .map_err(|_| PublishError::Overloaded)?;
        self.sent.push_back(waiter);
        Ok(())
    }

    /// Moves waiting acknowledgements into rumqttc's queue while it has room.
    fn flush_acks(&mut self) {
        while let Some(p) = self.acks.front() {
            if self.client.try_ack(p).is_err() {
                return;
            }
            self.acks.pop_front();
        }
    }

    fn fail_all(&mut self) {
        for w in self.sent.drain(..).flatten() {
            w.done(Err(PublishError::ConnectionLost));
        }
        for (_, w) in self.inflight.drain() {
            w.done(Err(PublishError::ConnectionLost));
        }
    }
}

/// A cloneable handle for publishing and acknowledging.
#[derive(Clone)]
pub struct Client {
    link: Arc<Mutex<Link>>,
    permits: Arc<Semaphore>,
    /// The permits there are: a batch takes at most this many at once.
    window: usize,
    ack_timeout: Duration,
}

/// A received PUBLISH, tagged with the connection it arrived on so a late
/// acknowledgement can never acknowledge a different message on a newer connection.
#[derive(Debug)]
pub struct Delivery {
    pub publish: Publish,
    generation: u64,
}

impl Client {
    /// Starts the connection task. `subscriptions` are (re)made on every CONNACK; received
    /// PUBLISH packets go to the returned channel. With `manual_acks`, QoS 1 deliveries are
    /// acknowledged only through [`Client::ack`].
    pub fn start(
        settings: &MqttSettings,
        default_client_id: &str,
        clean_session: bool,
        manual_acks: bool,
        subscriptions: Vec<(String, QoS)>,
        ready: Option<Check>,
    ) -> (Client, mpsc::Receiver<Delivery>) {
        let mut options = settings.options(default_client_id, clean_session);
        options.set_manual_acks(manual_acks);
        let capacity = settings.max_inflight as usize * 2;
        let (client, eventloop) = AsyncClient::new(options.clone(), capacity);
        let link = Arc::new(Mutex::new(Link {
            client,
            generation: 0,
            connected: false,
            stopping: false,
            sent: VecDeque::new(),
            inflight: HashMap::new(),
            acks: VecDeque::new(),
        }));
        // One permit fewer than rumqttc's inflight window, so its packet ids never collide.
        let window = settings.max_inflight.saturating_sub(1).max(1) as usize;
        let permits = Arc::new(Semaphore::new(window));
        let (tx, rx) = mpsc::channel(capacity.max(16));
        let handle = Client {
            link: link.clone(),
            permits,
            window,
            ack_timeout: settings.ack_timeout(),
        };
        tokio::spawn(run(
            link,
            eventloop,
            options,
            capacity,
            subscriptions,
            tx,
            ready,
        ));
        (handle, rx)
    }

    /// Publishes with QoS 1 and resolves when the broker has acknowledged (PUBACK).
    pub async fn publish_acked(
        &self,
        topic: impl Into<String>,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), PublishError> {
        self.publish_group(vec![(topic.into(), payload.into())], retain)
            .await
    }

    /// Publishes every (topic, payload) with QoS 1 and resolves when the broker has
    /// acknowledged all of them, or with the most actionable failure (some may have been
    /// delivered: a retry re-sends them). In-flight permits are taken for the whole batch
    /// at once, in chunks of the window when it is larger; each chunk may wait
    /// `ack_timeout` for its permits and again for its acknowledgements.
    pub async fn publish_batch_acked(
        &self,
        items: Vec<(String, Vec<u8>)>,
    ) -> Result<(), PublishError> {
        let mut items = items.into_iter().peekable();
        let mut worst = None;
        while items.peek().is_some() {
            let chunk: Vec<_> = items.by_ref().take(self.window).collect();
            if let Err(e) = self.publish_group(chunk, false).await {
                worst = Some(PublishError::worse(worst, e));
            }
        }
        worst.map_or(Ok(()), Err)
    }

    /// At most `window` QoS 1 publishes, awaited together.
    async fn publish_group(
        &self,
        items: Vec<(String, Vec<u8>)>,
        retain: bool,
    ) -> Result<(), PublishError> {
        let n = items.len();
        let _permits = tokio::time::timeout(self.ack_timeout, self.permits.acquire_many(n as u32))
            .await
            .map_err(|_| PublishError::Overloaded)?
            .expect("the semaphore is never closed");
        let (group, rx) = Group::new(n);
        {
            let mut link = self.link.lock().unwrap();
            if !link.connected {
                return Err(PublishError::NotConnected);
            }
            let mut items = items.into_iter();
            for (topic, payload) in items.by_ref() {
                let waiter = Some(group.clone());
                if let Err(e) = link.enqueue(topic, QoS::AtLeastOnce, retain, payload, waiter) {
                    group.done(Err(e));
                    break;
                }
            }
            // What rumqttc had no room for.
            for _ in items {
                group.done(Err(PublishError::Overloaded));
            }
        }
        match tokio::time::timeout(self.ack_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(PublishError::ConnectionLost),
            Err(_) => Err(PublishError::Timeout),
        }
    }

    /// Publishes without waiting for any acknowledgement.
    pub fn publish(
        &self,
        topic: impl Into<String>,
        qos: QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), PublishError> {
        self.link
            .lock()
            .unwrap()
            .enqueue(topic.into(), qos, retain, payload.into(), None)
    }

    /// Acknowledges a QoS 1 delivery (manual-ack mode) without waiting: when rumqttc's
    /// request queue is full the acknowledgement waits, in order, in the client (waiting
    /// here instead could deadlock: the connection task may itself be waiting for the
    /// caller to take a delivery). A delivery from an earlier connection is skipped: the
    /// broker will deliver it again.
    pub fn ack(&self, delivery: &Delivery) {
        let mut link = self.link.lock().unwrap();
        if link.generation != delivery.generation {
            return;
        }
        if link.acks.is_empty() && link.client.try_ack(&delivery.publish).is_ok() {
            return;
        }
        link.acks.push_back(delivery.publish.clone());
    }

    /// True while a broker connection is up.
    pub fn is_connected(&self) -> bool {
        self.link.lock().unwrap().connected
    }

    /// Sends DISCONNECT, so the broker does not publish a Last Will and the session ends
    /// cleanly, and ends the connection task: the client does not reconnect afterwards.
    pub async fn disconnect(&self) {
        let client = {
            let mut l = self.link.lock().unwrap();
            l.stopping = true;
            l.client.clone()
        };
        if client.disconnect().await.is_err() {
            // The event loop is already gone or stuck reconnecting; it sees `stopping`.
        }
    }
}

async fn run(
    link: Arc<Mutex<Link>>,
    mut eventloop: EventLoop,
    options: rumqttc::MqttOptions,
    capacity: usize,
    subscriptions: Vec<(String, QoS)>,
    deliveries: mpsc::Sender<Delivery>,
    ready: Option<Check>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        {
            let mut l = link.lock().unwrap();
            if !l.acks.is_empty() {
                l.flush_acks();
            }
        }
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the MQTT broker"
                );
                backoff = Duration::from_millis(100);
                let mut l = link.lock().unwrap();
                for (filter, qos) in &subscriptions {
                    let _ = l.client.try_subscribe(filter.clone(), *qos);
                }
                l.connected = true;
                if let Some(c) = &ready {
                    c.set(true);
                }
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                let generation = link.lock().unwrap().generation;
                if deliveries
                    .send(Delivery {
                        publish,
                        generation,
                    })
                    .await
                    .is_err()
                {
                    // Nobody consumes deliveries any more; keep serving publishes.
                }
            }
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                if let Some(w) = link.lock().unwrap().inflight.remove(&ack.pkid) {
                    w.done(Ok(()));
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut l = link.lock().unwrap();
                match l.sent.pop_front() {
                    Some(Some(w)) if pkid != 0 => {
                        l.inflight.insert(pkid, w);
                    }
                    Some(Some(w)) => w.done(Ok(())),
                    _ => {}
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                tracing::info!("disconnected from the MQTT broker");
                let mut l = link.lock().unwrap();
                if l.stopping {
                    l.connected = false;
                    l.fail_all();
                    return;
                }
            }
            Ok(_) => {}
            Err(_) if link.lock().unwrap().stopping => {
                let mut l = link.lock().unwrap();
                l.connected = false;
                l.fail_all();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "MQTT connection failed");
                if let Some(c) = &ready {
                    c.set(false);
                }
                let (client, fresh) = AsyncClient::new(options.clone(), capacity);
                {
                    let mut l = link.lock().unwrap();
                    l.connected = false;
                    l.fail_all();
                    // The broker redelivers what these would have acknowledged.
                    l.acks.clear();
                    l.client = client;
                    l.generation += 1;
                }
                eventloop = fresh;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
