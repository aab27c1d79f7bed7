//! The live hub: MQTT in, JSON messages out to every WebSocket client.
//!
//! One task ([`run`]) owns the MQTT delivery stream, turns each platform topic into a
//! [`LiveMessage`] (pure: [`message_from`]) and queues it in every viewer's mailbox.
//! Each message is serialised once, not once per client. A mailbox keeps one queue per
//! device and hands them out in turn, so a viewer that falls behind a flooding device
//! loses that device's oldest messages, not everyone's (issue 13). The hub also remembers the last
//! state-like message per device (status, lamp state/command/mode, latest reading) so a
//! client that connects late sees the current picture at once, the way a retained MQTT
//! message would show it to a new subscriber.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use lentera_bootstrap::{Counter, Gauge};
use lentera_mqtt::Delivery;
use lentera_protocol::reading::format_ts;
use lentera_protocol::{
    DeviceId, DeviceStatus, LampCommand, LampMode, ModeKind, Reading, TopicKind, Topics,
};
use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};

/// Distinct (device, kind) entries the late-joiner snapshot keeps; a bound against a flood
/// of made-up device ids, far above any village.
const MAX_SNAPSHOT_ENTRIES: usize = 20_000;

/// One message on `/ws`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum LiveMessage {
    /// `{"type":"reading","device":"gh-1","ts":"…","metrics":{"temperature":27.3}}`
    Reading {
        device: DeviceId,
        ts: String,
        metrics: BTreeMap<String, f64>,
    },
    /// `{"type":"lamp","device":"lamp-1","state":"on"}` (board report), `"command":"on"`
    /// (controller's order) or `"mode":"on","until":"…"` (operator override).
    Lamp {
        device: DeviceId,
        #[serde(skip_serializing_if = "Option::is_none")]
        state: Option<LampCommand>,
        #[serde(skip_serializing_if = "Option::is_none")]
        command: Option<LampCommand>,
        #[serde(skip_serializing_if = "Option::is_none")]
        mode: Option<ModeKind>,
        #[serde(skip_serializing_if = "Option::is_none")]
        until: Option<String>,
    },
    /// `{"type":"status","device":"gh-1","status":"online"}`
    Status {
        device: DeviceId,
        status: DeviceStatus,
    },
}

impl LiveMessage {
    pub fn device(&self) -> &DeviceId {
        match self {
            LiveMessage::Reading { device, .. }
            | LiveMessage::Lamp { device, .. }
            | LiveMessage::Status { device, .. } => device,
        }
    }

    fn lamp(device: DeviceId) -> Self {
        LiveMessage::Lamp {
            device,
            state: None,
            command: None,
            mode: None,
            until: None,
        }
    }
}

/// Builds the live message for one MQTT publish. `None` for topics that are not the
/// platform's and for payloads that break the contract: a bad board must not reach browsers.
/// `now` stamps readings that carry no `ts`, as the historian does.
pub fn message_from(
    topics: &Topics,
    topic: &str,
    payload: &[u8],
    now: DateTime<Utc>,
) -> Option<LiveMessage> {
    let (device, kind) = topics.parse(topic)?;
    Some(match kind {
        TopicKind::Telemetry => {
            let r = Reading::from_payload(payload, &device, now).ok()?;
            LiveMessage::Reading {
                device,
                ts: format_ts(r.ts),
                metrics: r.metrics,
            }
        }
        TopicKind::LampState => {
            let mut m = LiveMessage::lamp(device);
            if let LiveMessage::Lamp { state, .. } = &mut m {
                *state = Some(LampCommand::from_payload(payload)?);
            }
            m
        }
        TopicKind::LampSet => {
            let mut m = LiveMessage::lamp(device);
            if let LiveMessage::Lamp { command, .. } = &mut m {
                *command = Some(LampCommand::from_payload(payload)?);
            }
            m
        }
        TopicKind::LampMode => {
            let parsed = LampMode::from_payload(payload).ok()?;
            let mut m = LiveMessage::lamp(device);
            if let LiveMessage::Lamp { mode, until, .. } = &mut m {
                *mode = Some(parsed.mode);
                *until = parsed.until.map(format_ts);
            }
            m
        }
        TopicKind::Status => LiveMessage::Status {
            device,
            status: DeviceStatus::from_payload(payload)?,
        },
    })
}

/// A message ready to send: serialised once, tagged with its device for filtering.
#[derive(Debug)]
pub struct LiveEvent {
    pub device: DeviceId,
    pub json: String,
}

impl LiveEvent {
    pub fn new(msg: &LiveMessage) -> Self {
        Self {
            device: msg.device().clone(),
            json: serde_json::to_string(msg).expect("live messages always serialise"),
        }
    }
}

/// Which snapshot slot a message replaces: lamp state, command and mode are separate facts.
fn slot(msg: &LiveMessage) -> &'static str {
    match msg {
        LiveMessage::Reading { .. } => "reading",
        LiveMessage::Status { .. } => "status",
        LiveMessage::Lamp { state: Some(_), .. } => "lamp-state",
        LiveMessage::Lamp {
            command: Some(_), ..
        } => "lamp-command",
        LiveMessage::Lamp { .. } => "lamp-mode",
    }
}

/// The latest message per (device, slot), replayed to a client when it connects.
type Snapshot = HashMap<(DeviceId, &'static str), Arc<LiveEvent>>;

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
}

/// What a viewer takes from its mailbox next.
#[derive(Debug)]
pub enum Received {
    Event(Arc<LiveEvent>),
    /// Messages dropped for this viewer since the last notice (it was too slow).
    Lagged(u64),
}

/// One WebSocket client's queue: a FIFO per device, drained one device at a time in
/// turn. A device that floods fills only its own FIFO and loses its own oldest messages
/// (`per_device`), so a slow viewer still gets every other device's readings; `total`
/// bounds the viewer's memory whatever the number of devices.
#[derive(Debug)]
struct Mailbox {
    filter: Filter,
    queues: HashMap<DeviceId, VecDeque<Arc<LiveEvent>>>,
    /// Devices with queued messages, in the order they get their next turn.
    turns: VecDeque<DeviceId>,
    len: usize,
    missed: u64,
    per_device: usize,
    total: usize,
}

impl Mailbox {
    fn new(filter: Filter, per_device: usize, total: usize) -> Self {
        Self {
            filter,
            queues: HashMap::new(),
            turns: VecDeque::new(),
            len: 0,
            missed: 0,
            per_device: per_device.max(1),
            total: total.max(1),
        }
    }

    /// Queues `event` if the filter wants it; false when it was filtered out.
    fn push(&mut self, event: &Arc<LiveEvent>) -> bool {
        if !self.filter.allows(&event.device) {
            return false;
        }
        let q = match self.queues.get_mut(&event.device) {
            Some(q) => q,
            None => {
                self.turns.push_back(event.device.clone());
                self.queues.entry(event.device.clone()).or_default()
            }
        };
        if q.len() >= self.per_device {
            q.pop_front();
            self.missed += 1;
            self.len -= 1;
        }
        q.push_back(event.clone());
        self.len += 1;
        if self.len > self.total {
            // Many devices at once: the longest queue (the noisiest device) pays.
            if let Some((device, q)) = self.queues.iter_mut().max_by_key(|(_, q)| q.len()) {
                q.pop_front();
                self.len -= 1;
                self.missed += 1;
                if q.is_empty() {
                    let device = device.clone();
                    self.queues.remove(&device);
                    self.turns.retain(|d| d != &device);
                }
            }
        }
        true
    }

    fn take(&mut self) -> Option<Received> {
        if self.missed > 0 {
            return Some(Received::Lagged(std::mem::take(&mut self.missed)));
        }
        let device = self.turns.pop_front()?;
        let q = self.queues.get_mut(&device)?;
        let event = q.pop_front()?;
        self.len -= 1;
        if q.is_empty() {
            self.queues.remove(&device);
        } else {
            self.turns.push_back(device);
        }
        Some(Received::Event(event))
    }

    fn set_filter(&mut self, filter: Filter) {
        self.queues.retain(|d, _| filter.allows(d));
        self.turns.retain(|d| filter.allows(d));
        self.len = self.queues.values().map(VecDeque::len).sum();
        self.filter = filter;
    }
}

#[derive(Debug)]
struct ViewerInner {
    mailbox: Mutex<Mailbox>,
    wake: Notify,
}

/// A connected viewer's end of the hub; unregisters itself when dropped.
pub struct Viewer {
    id: u64,
    inner: Arc<ViewerInner>,
    viewers: Arc<Mutex<HashMap<u64, Arc<ViewerInner>>>>,
}

impl Viewer {
    /// The next message or lag notice; waits while the mailbox is empty. Cancel-safe.
    pub async fn recv(&self) -> Received {
        loop {
            if let Some(r) = self.inner.mailbox.lock().unwrap().take() {
                return r;
            }
            // A push between the take above and this await left a permit: no lost wake-up.
            self.inner.wake.notified().await;
        }
    }

    /// Narrows (or widens) what this viewer receives from now on.
    pub fn set_filter(&self, filter: Filter) {
        self.inner.mailbox.lock().unwrap().set_filter(filter);
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.viewers.lock().unwrap().remove(&self.id);
    }
}

/// Cloneable handle to the fan-out; every clone is the same hub.
#[derive(Clone)]
pub struct Hub {
    viewers: Arc<Mutex<HashMap<u64, Arc<ViewerInner>>>>,
    next_id: Arc<AtomicU64>,
    per_device: usize,
    total: usize,
    snapshot: Arc<Mutex<Snapshot>>,
    /// Flips to true on shutdown so WebSocket tasks close with "going away" instead of
    /// holding the server's graceful stop open until its timeout.
    closing: watch::Receiver<bool>,
    /// Connected WebSocket clients (`lentera_web_ws_clients`).
    pub clients: Gauge,
    /// Lag notices sent (`lentera_web_ws_lagged_total`).
    pub lagged: Counter,
}

impl Hub {
    /// `capacity`: messages queued per viewer in all; `per_device`: per device of those.
    pub fn new(
        capacity: usize,
        per_device: usize,
        closing: watch::Receiver<bool>,
        clients: Gauge,
        lagged: Counter,
    ) -> Self {
        Self {
            viewers: Arc::default(),
            next_id: Arc::default(),
            per_device: per_device.max(1),
            total: capacity.max(16),
            snapshot: Arc::default(),
            closing,
            clients,
            lagged,
        }
    }

    /// Records `msg` in the snapshot and queues it for every viewer that wants it.
    pub fn publish(&self, msg: &LiveMessage) {
        let event = Arc::new(LiveEvent::new(msg));
        {
            let mut snap = self.snapshot.lock().unwrap();
            let key = (event.device.clone(), slot(msg));
            if snap.len() < MAX_SNAPSHOT_ENTRIES || snap.contains_key(&key) {
                snap.insert(key, event.clone());
            }
        }
        // No viewers is the normal state with no browser open.
        for v in self.viewers.lock().unwrap().values() {
            if v.mailbox.lock().unwrap().push(&event) {
                v.wake.notify_one();
            }
        }
    }

    /// A viewer for new messages plus the current snapshot (filtered). The viewer is
    /// registered first, so a message published meanwhile is seen twice rather than
    /// never; all of them are states, so a repeat is harmless.
    pub fn subscribe(&self, filter: Filter) -> (Viewer, Vec<Arc<LiveEvent>>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let inner = Arc::new(ViewerInner {
            mailbox: Mutex::new(Mailbox::new(filter.clone(), self.per_device, self.total)),
            wake: Notify::new(),
        });
        self.viewers.lock().unwrap().insert(id, inner.clone());
        let viewer = Viewer {
            id,
            inner,
            viewers: self.viewers.clone(),
        };
        let snap = self
            .snapshot
            .lock()
            .unwrap()
            .values()
            .filter(|e| filter.allows(&e.device))
            .cloned()
            .collect();
        (viewer, snap)
    }

    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.clone()
    }
}

/// The subscription task: runs until the MQTT client's delivery channel closes.
pub async fn run(
    hub: Hub,
    topics: Topics,
    mut deliveries: mpsc::Receiver<Delivery>,
    ignored: Counter,
) {
    while let Some(d) = deliveries.recv().await {
        let p = &d.publish;
        match message_from(&topics, &p.topic, &p.payload, Utc::now()) {
            Some(msg) => hub.publish(&msg),
            None => {
                ignored.inc();
                tracing::debug!(topic = ?p.topic, "ignored a message that is not a valid platform message");
            }
        }
    }
}

/// The subscriptions the hub needs, under the configured prefix.
pub fn subscriptions(topics: &Topics) -> Vec<String> {
    [
        TopicKind::Telemetry,
        TopicKind::LampState,
        TopicKind::LampSet,
        TopicKind::LampMode,
        TopicKind::Status,
    ]
    .into_iter()
    .map(|k| topics.filter(k))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::{Value, json};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 22, 1, 0, 0).unwrap()
    }

    fn json_of(topic: &str, payload: &[u8]) -> Option<Value> {
        let m = message_from(&Topics::default(), topic, payload, now())?;
        Some(serde_json::from_str(&LiveEvent::new(&m).json).unwrap())
    }

    #[test]
    fn telemetry_becomes_a_reading_with_canonical_ts() {
        assert_eq!(
            json_of(
                "lentera/gh-1/telemetry",
                br#"{"temperature":27.3,"ts":"2026-11-22T08:00:00+07:00"}"#
            ),
            Some(
                json!({"type":"reading","device":"gh-1","ts":"2026-11-22T01:00:00.000000Z",
                        "metrics":{"temperature":27.3}})
            )
        );
        // No ts: stamped with the receive time.
        assert_eq!(
            json_of("lentera/gh-1/telemetry", br#"{"lux":3}"#).unwrap()["ts"],
            "2026-11-22T01:00:00.000000Z"
        );
    }

    #[test]
    fn lamp_topics_become_lamp_messages() {
        assert_eq!(
            json_of("lentera/lamp-1/lamp/state", b"ON\r\n"),
            Some(json!({"type":"lamp","device":"lamp-1","state":"on"}))
        );
        assert_eq!(
            json_of("lentera/lamp-1/lamp/set", b"off"),
            Some(json!({"type":"lamp","device":"lamp-1","command":"off"}))
        );
        assert_eq!(
            json_of(
                "lentera/lamp-1/lamp/mode",
                br#"{"mode":"on","until":"2026-11-22T05:00:00Z"}"#
            ),
            Some(json!({"type":"lamp","device":"lamp-1","mode":"on",
                        "until":"2026-11-22T05:00:00.000000Z"}))
        );
    }

    #[test]
    fn status_becomes_a_status_message() {
        assert_eq!(
            json_of("lentera/gh-1/status", b"offline"),
            Some(json!({"type":"status","device":"gh-1","status":"offline"}))
        );
    }

    #[test]
    fn foreign_topics_and_bad_payloads_are_dropped() {
        for (topic, payload) in [
            ("other/gh-1/telemetry", &br#"{"t":1}"#[..]),
            ("lentera/gh-1/unknown", b"x"),
            ("lentera/gh-1/telemetry", b"not json"),
            ("lentera/gh-1/telemetry", br#"{"device":"gh-2","t":1}"#),
            ("lentera/gh-1/telemetry", br#"{"t":"hot"}"#),
            ("lentera/lamp-1/lamp/state", b"dim"),
            ("lentera/lamp-1/lamp/mode", br#"{"mode":"blink"}"#),
            ("lentera/gh-1/status", b"sleeping"),
        ] {
            assert_eq!(json_of(topic, payload), None, "{topic} {payload:?}");
        }
    }

    #[test]
    fn subscriptions_follow_the_prefix() {
        let subs = subscriptions(&Topics::new("v/lentera"));
        assert!(subs.contains(&"v/lentera/+/telemetry".to_owned()));
        assert!(subs.contains(&"v/lentera/+/lamp/set".to_owned()));
        assert_eq!(subs.len(), 5);
    }

    #[tokio::test]
    async fn late_subscribers_get_the_latest_state_per_slot() {
        let (_tx, closing) = watch::channel(false);
        let obs = lentera_bootstrap::Observability::new("test");
        let hub = Hub::new(
            16,
            4,
            closing,
            obs.gauge("c", "c"),
            obs.counter("l", "l", &[]),
        );
        let t = Topics::default();
        for (topic, payload) in [
            ("lentera/lamp-1/lamp/state", &b"on"[..]),
            ("lentera/lamp-1/lamp/state", b"off"),
            ("lentera/lamp-1/lamp/set", b"off"),
            ("lentera/lamp-1/status", b"online"),
        ] {
            hub.publish(&message_from(&t, topic, payload, now()).unwrap());
        }
        let (viewer, snap) = hub.subscribe(Filter::All);
        let mut jsons: Vec<&str> = snap.iter().map(|e| e.json.as_str()).collect();
        jsons.sort();
        assert_eq!(
            jsons,
            [
                r#"{"type":"lamp","device":"lamp-1","command":"off"}"#,
                r#"{"type":"lamp","device":"lamp-1","state":"off"}"#,
                r#"{"type":"status","device":"lamp-1","status":"online"}"#,
            ]
        );
        hub.publish(&message_from(&t, "lentera/gh-1/status", b"offline", now()).unwrap());
        match viewer.recv().await {
            Received::Event(e) => assert_eq!(e.device.as_str(), "gh-1"),
            other => panic!("{other:?}"),
        }
    }

    fn event(device: &str, n: u32) -> Arc<LiveEvent> {
        Arc::new(LiveEvent {
            device: DeviceId::parse(device).unwrap(),
            json: n.to_string(),
        })
    }

    fn drain(m: &mut Mailbox) -> Vec<String> {
        std::iter::from_fn(|| m.take())
            .map(|r| match r {
                Received::Event(e) => format!("{}:{}", e.device.as_str(), e.json),
                Received::Lagged(n) => format!("lagged:{n}"),
            })
            .collect()
    }

    #[test]
    fn a_flooding_device_loses_its_own_oldest_messages_only() {
        let mut m = Mailbox::new(Filter::All, 4, 100);
        for n in 0..1000 {
            m.push(&event("flood", n));
            if n % 250 == 0 {
                m.push(&event("quiet", n));
            }
        }
        // The quiet device keeps all four readings, interleaved with the flooder's newest.
        assert_eq!(
            drain(&mut m),
            [
                "lagged:996",
                "flood:996",
                "quiet:0",
                "flood:997",
                "quiet:250",
                "flood:998",
                "quiet:500",
                "flood:999",
                "quiet:750"
            ]
        );
        assert_eq!((m.len, m.queues.len(), m.turns.len()), (0, 0, 0));
    }

    #[test]
    fn the_total_bound_takes_from_the_longest_queue_and_filters_apply() {
        let mut m = Mailbox::new(Filter::All, 10, 4);
        for n in 0..4 {
            m.push(&event("a", n));
        }
        m.push(&event("b", 0));
        assert_eq!(m.len, 4);
        assert_eq!(drain(&mut m), ["lagged:1", "a:1", "b:0", "a:2", "a:3"]);
        m.set_filter(Filter::Devices([DeviceId::parse("b").unwrap()].into()));
        assert!(!m.push(&event("a", 9)));
        assert!(m.push(&event("b", 1)));
        assert_eq!(drain(&mut m), ["b:1"]);
    }
}
