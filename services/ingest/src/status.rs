//! Retained `online` / `offline` for boards bound over TCP, published until acknowledged,
//! and kept true across a crash of ingest itself.
//!
//! # Statuses
//! A `HELLO` must be answered at once, even while the broker is away, so a status change
//! is recorded here and published by one background task: QoS 1, retained, and kept
//! until the broker's PUBACK. A publish that fails (broker down, connection lost before
//! the PUBACK) is retried with backoff, so the retained value catches up once the broker
//! is back. Only the newest status per device matters — it is what a late subscriber
//! must see — so a change replaces one not yet published, and a device never has two
//! publishes in flight (an older `online` can never land after a newer `offline`).
//!
//! # The bound set: statuses after a crash
//! A SIGKILLed ingest cannot say `offline` for its boards, and MQTT has one Last Will per
//! client connection, not one per board. So each instance keeps, retained on
//! `{prefix}/.ingest/{instance}/bound` ([`bound_topic`]), a JSON array of every device it
//! may have left `online`: the devices bound to it, those whose status is not yet
//! acknowledged, and (until they are dealt with) its predecessor's. The rule that makes
//! it enough: **an `online` is published only after a set holding the device has been
//! acknowledged**, and a device leaves the set only after its `offline` was. Whatever
//! moment ingest dies at, every device it left `online` is in its retained set.
//!
//! On start-up ingest reads that set — its previous run's — and, once
//! `ingest.rebind_grace_secs` have passed, publishes `offline` for every device in it
//! that has neither said HELLO to this run nor is in another instance's set (a board
//! that moved to another instance behind the load balancer while this one was down).
//! Until it knows the previous set it publishes no set of its own (that would overwrite
//! it) and holds back `online`s. To know that it has seen any retained set there is, it
//! publishes a probe (not retained, a nonce) on its own topic after subscribing: the
//! broker sends the retained message to the new subscription before it forwards the
//! probe, so when the probe comes back, whatever was retained has arrived. After five
//! acknowledged probes without an echo (a broker that refuses the subscription) it goes
//! on with what it has and says so in the log.
//!
//! A graceful shutdown publishes `offline` for the boards it closes, then clears the
//! set (an empty retained message) — unless some status could not be published, in
//! which case the set stays for the next run. Only retained messages and an ordinary
//! subscription are used, so this works on any MQTT 3.1.1/5 broker.
//!
//! `.ingest` is not a device id (`[A-Za-z0-9_-]`), so `Topics::parse` never takes
//! `{prefix}/.ingest/…` for a device's topic, and no device authenticated as itself can
//! publish there under the usual `lentera/%c/#` rule (`_ingest` would have been both a
//! valid device id and a board's client id). See the tests.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::join_all;
use lentera_mqtt::Client;
use lentera_protocol::{DeviceId, DeviceStatus, Topics};
use tokio::sync::Notify;
use tokio::time::Instant;

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Acknowledged probes without an echo before ingest stops waiting for its previous set.
const PROBE_ATTEMPTS: u32 = 5;
/// Pause between probes while no echo has arrived.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// `{prefix}/.ingest/{instance}/bound`: the retained set of one instance's devices.
pub fn bound_topic(topics: &Topics, instance: u32) -> String {
    format!("{}/.ingest/{instance}/bound", topics.prefix())
}

/// The filter matching every instance's [`bound_topic`].
pub fn bound_filter(topics: &Topics) -> String {
    format!("{}/.ingest/+/bound", topics.prefix())
}

/// The instance whose [`bound_topic`] `topic` is, if it is one.
pub fn bound_instance(topics: &Topics, topic: &str) -> Option<u32> {
    topic
        .strip_prefix(topics.prefix())?
        .strip_prefix("/.ingest/")?
        .strip_suffix("/bound")?
        .parse()
        .ok()
}

/// A set's payload: a JSON array of device ids, sorted.
fn encode(set: &BTreeSet<DeviceId>) -> Vec<u8> {
    let ids: Vec<&str> = set.iter().map(DeviceId::as_str).collect();
    serde_json::to_vec(&ids).expect("strings always serialise")
}

/// A set from a payload; an empty payload (a cleared set) is the empty set, anything
/// that is not an array of strings (a probe) is `None`. Invalid ids are skipped.
fn decode(payload: &[u8]) -> Option<BTreeSet<DeviceId>> {
    if payload.is_empty() {
        return Some(BTreeSet::new());
    }
    let ids: Vec<String> = serde_json::from_slice(payload).ok()?;
    Some(
        ids.iter()
            .filter_map(|id| DeviceId::parse(id).ok())
            .collect(),
    )
}

/// Who this instance is, for its bound set.
#[derive(Debug, Clone)]
pub struct Handover {
    pub instance: u32,
    /// How long the previous run's boards have to say HELLO again.
    pub grace: Duration,
}

/// The statuses not yet acknowledged, the bound set, and the tasks that publish them.
#[derive(Clone)]
pub struct StatusBoard {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    next_version: AtomicU64,
    /// Wakes the publishing task.
    wake: Notify,
    /// Wakes the handover task (the probe came back).
    probe_back: Notify,
    client: Client,
    topics: Topics,
    instance: u32,
    own_topic: String,
    /// This run's probe payload.
    probe: Vec<u8>,
}

struct State {
    /// Device → (newest status, its version). The version tells the task whether the
    /// status it just published is still the newest, or changed meanwhile.
    pending: HashMap<DeviceId, (DeviceStatus, u64)>,
    /// Devices whose newest status from this run is `online`: bound here.
    online: BTreeSet<DeviceId>,
    phase: Phase,
    /// Other instances' newest sets.
    others: HashMap<u32, BTreeSet<DeviceId>>,
    /// The last set of ours the broker acknowledged.
    acked: Option<BTreeSet<DeviceId>>,
    /// Set once the shutdown cleared the set: nothing more is published.
    closed: bool,
}

enum Phase {
    /// The previous run's set is not known yet; every set seen on our topic so far.
    Reading(BTreeSet<DeviceId>),
    /// Known: the previous run's devices, waiting for the grace period to end.
    Grace(BTreeSet<DeviceId>),
    /// The previous run's devices have been dealt with.
    Settled,
}

impl State {
    /// The set to have retained, once the previous one is known: everything this run
    /// may have left `online`, and the previous run's devices not yet dealt with.
    fn desired(&self) -> Option<BTreeSet<DeviceId>> {
        let predecessor = match &self.phase {
            Phase::Reading(_) => return None,
            Phase::Grace(p) => Some(p),
            Phase::Settled => None,
        };
        let mut set = self.online.clone();
        set.extend(self.pending.keys().cloned());
        set.extend(predecessor.into_iter().flatten().cloned());
        Some(set)
    }
}

/// What the publishing task does next.
enum Step {
    Idle,
    Set(BTreeSet<DeviceId>),
    Statuses(Vec<(DeviceId, DeviceStatus, u64)>),
}

impl StatusBoard {
    /// Starts the publishing and handover tasks on the current tokio runtime. The MQTT
    /// client must subscribe to [`bound_filter`] and hand those deliveries to
    /// [`StatusBoard::on_bound_message`].
    pub fn start(client: Client, topics: Topics, handover: Handover) -> StatusBoard {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let probe = format!("probe {}-{nanos}", std::process::id()).into_bytes();
        let board = StatusBoard {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    pending: HashMap::new(),
                    online: BTreeSet::new(),
                    phase: Phase::Reading(BTreeSet::new()),
                    others: HashMap::new(),
                    acked: None,
                    closed: false,
                }),
                next_version: AtomicU64::new(0),
                wake: Notify::new(),
                probe_back: Notify::new(),
                own_topic: bound_topic(&topics, handover.instance),
                instance: handover.instance,
                client,
                topics,
                probe,
            }),
        };
        tokio::spawn(board.clone().run());
        tokio::spawn(board.clone().handover(Instant::now() + handover.grace));
        board
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `status` as the device's newest; returns at once.
    pub fn set(&self, device: &DeviceId, status: DeviceStatus) {
        let version = self.inner.next_version.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state();
        match status {
            DeviceStatus::Online => st.online.insert(device.clone()),
            DeviceStatus::Offline => st.online.remove(device),
        };
        st.pending.insert(device.clone(), (status, version));
        drop(st);
        self.inner.wake.notify_one();
    }

    /// Statuses not yet acknowledged by the broker.
    pub fn pending(&self) -> usize {
        self.state().pending.len()
    }

    /// A message on some instance's [`bound_topic`] (`instance` from [`bound_instance`]).
    pub fn on_bound_message(&self, instance: u32, payload: &[u8]) {
        let mut st = self.state();
        if instance != self.inner.instance {
            match decode(payload) {
                Some(set) if set.is_empty() => {
                    st.others.remove(&instance);
                }
                Some(set) => {
                    st.others.insert(instance, set);
                }
                None => {} // another instance's probe
            }
            return;
        }
        let Phase::Reading(seen) = &mut st.phase else {
            return; // our own sets coming back, or an old probe
        };
        if payload == self.inner.probe.as_slice() {
            let previous = std::mem::take(seen);
            tracing::info!(
                devices = previous.len(),
                "read the bound set of ingest's previous run"
            );
            st.phase = Phase::Grace(previous);
            drop(st);
            self.inner.probe_back.notify_one();
            self.inner.wake.notify_one();
        } else if let Some(set) = decode(payload) {
            // The retained set, or one the previous run's session had still queued: all
            // of them are the previous run's (this one publishes none before the probe).
            seen.extend(set);
        }
    }

    /// True once the previous run's set has been read (or given up on).
    pub fn handover_known(&self) -> bool {
        !matches!(self.state().phase, Phase::Reading(_))
    }

    /// Publishes `offline` for the previous run's devices that did not come back here
    /// and are not another instance's; called when the grace period ends (and at
    /// shutdown, which ends it early).
    fn settle(&self) {
        let mut st = self.state();
        let Phase::Grace(previous) = std::mem::replace(&mut st.phase, Phase::Settled) else {
            return;
        };
        let mut gone = Vec::new();
        for device in previous {
            let elsewhere = st.others.values().any(|s| s.contains(&device));
            if !st.online.contains(&device) && !elsewhere {
                let version = self.inner.next_version.fetch_add(1, Ordering::Relaxed);
                st.pending
                    .insert(device.clone(), (DeviceStatus::Offline, version));
                gone.push(device);
            }
        }
        drop(st);
        if !gone.is_empty() {
            tracing::info!(
                devices = ?gone,
                "boards of ingest's previous run did not come back: announcing them offline"
            );
        }
        self.inner.wake.notify_one();
    }

    /// At shutdown, after the TCP connections closed: ends the grace period, waits (at
    /// most `limit`) until every status is acknowledged, then clears the bound set if
    /// nothing is left in it. True when nothing is left unpublished.
    pub async fn finish(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        self.settle();
        loop {
            let (settled, desired) = {
                let st = self.state();
                let desired = st.desired();
                let settled = st.pending.is_empty() && (desired.is_none() || desired == st.acked);
                (settled, desired)
            };
            if settled {
                match desired {
                    // The previous run's set was never read: leave it for the next run.
                    None => return true,
                    // Still holding devices (a connection outlived the drain): keep it.
                    Some(set) if !set.is_empty() => return true,
                    Some(_) => break,
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.state().closed = true;
        let clear = self
            .inner
            .client
            .publish_acked(self.inner.own_topic.clone(), true, Vec::new());
        matches!(
            tokio::time::timeout_at(deadline.max(Instant::now() + RETRY_MIN), clear).await,
            Ok(Ok(()))
        )
    }

    /// Reads the previous run's set (probing until the probe comes back), then settles
    /// its devices at `grace_end`.
    async fn handover(self, grace_end: Instant) {
        let mut unanswered = 0;
        while !self.handover_known() {
            let client = &self.inner.client;
            if client.is_connected()
                && client
                    .publish_acked(
                        self.inner.own_topic.clone(),
                        false,
                        self.inner.probe.clone(),
                    )
                    .await
                    .is_ok()
            {
                unanswered += 1;
            }
            let _ = tokio::time::timeout(PROBE_INTERVAL, self.inner.probe_back.notified()).await;
            if unanswered >= PROBE_ATTEMPTS && !self.handover_known() {
                let mut st = self.state();
                if let Phase::Reading(seen) = &mut st.phase {
                    tracing::warn!(
                        topic = %self.inner.own_topic,
                        devices = seen.len(),
                        "the probe on ingest's bound-set topic never came back (does the \
                         broker let ingest subscribe to it?); going on with the sets seen"
                    );
                    st.phase = Phase::Grace(std::mem::take(seen));
                }
                drop(st);
                self.inner.wake.notify_one();
            }
        }
        tokio::time::sleep_until(grace_end).await;
        self.settle();
    }

    fn next_step(&self) -> Step {
        let st = self.state();
        if !st.closed
            && let Some(desired) = st.desired()
            && Some(&desired) != st.acked.as_ref()
        {
            return Step::Set(desired);
        }
        // An `online` waits until an acknowledged set holds its device.
        let round: Vec<_> = st
            .pending
            .iter()
            .filter(|(d, (s, _))| {
                *s == DeviceStatus::Offline || st.acked.as_ref().is_some_and(|a| a.contains(*d))
            })
            .map(|(d, (s, v))| (d.clone(), *s, *v))
            .collect();
        if round.is_empty() {
            Step::Idle
        } else {
            Step::Statuses(round)
        }
    }

    async fn run(self) {
        let client = self.inner.client.clone();
        let topics = self.inner.topics.clone();
        let mut backoff = RETRY_MIN;
        loop {
            let failed = match self.next_step() {
                Step::Idle => {
                    // `notify_one` leaves a permit when nobody waits, so a change between
                    // the snapshot and this wait is not missed.
                    self.inner.wake.notified().await;
                    continue;
                }
                Step::Set(set) => {
                    let payload = encode(&set);
                    match client
                        .publish_acked(self.inner.own_topic.clone(), true, payload)
                        .await
                    {
                        Ok(()) => {
                            self.state().acked = Some(set);
                            0
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "bound set not acknowledged; will retry");
                            1
                        }
                    }
                }
                Step::Statuses(round) => {
                    let results = join_all(round.iter().map(|(device, status, _)| {
                        client.publish_acked(topics.status(device), true, status.as_str())
                    }))
                    .await;
                    let mut failed = 0;
                    let mut st = self.state();
                    for ((device, status, version), result) in round.iter().zip(results) {
                        match result {
                            Ok(()) => {
                                if st.pending.get(device).is_some_and(|(_, v)| v == version) {
                                    st.pending.remove(device);
                                }
                            }
                            Err(e) => {
                                failed += 1;
                                tracing::debug!(device = ?device.as_str(), status = status.as_str(), error = %e, "status not acknowledged; will retry");
                            }
                        }
                    }
                    failed
                }
            };
            if failed == 0 {
                backoff = RETRY_MIN;
                continue;
            }
            tracing::warn!(failed, retry_in = ?backoff, "device status not published; retrying");
            // A new status does not cut the pause short: the broker is the problem.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(list: &[&str]) -> BTreeSet<DeviceId> {
        list.iter().map(|d| DeviceId::parse(d).unwrap()).collect()
    }

    #[test]
    fn the_bound_topic_is_never_a_device_topic() {
        let topics = Topics::default();
        let topic = bound_topic(&topics, 3);
        assert_eq!(topic, "lentera/.ingest/3/bound");
        assert_eq!(topics.parse(&topic), None);
        assert_eq!(bound_instance(&topics, &topic), Some(3));
        assert_eq!(bound_filter(&topics), "lentera/.ingest/+/bound");
        // Not a device id, so not a device topic whatever follows it.
        assert!(DeviceId::parse(".ingest").is_err());
        assert_eq!(topics.parse("lentera/.ingest/status"), None);
        assert_eq!(topics.parse("lentera/.ingest/telemetry"), None);
        assert_eq!(bound_instance(&topics, "lentera/.ingest/status"), None);
        assert_eq!(bound_instance(&topics, "lentera/_ingest/0/bound"), None);
        assert_eq!(bound_instance(&topics, "lentera/.ingest/x/bound"), None);
        assert_eq!(bound_instance(&topics, "other/.ingest/0/bound"), None);
        let village = Topics::new("village/lentera");
        assert_eq!(bound_instance(&village, &bound_topic(&village, 0)), Some(0));
    }

    #[test]
    fn sets_round_trip_and_probes_are_not_sets() {
        let set = ids(&["gh-2", "gh-1"]);
        assert_eq!(encode(&set), br#"["gh-1","gh-2"]"#);
        assert_eq!(decode(&encode(&set)), Some(set));
        assert_eq!(decode(b""), Some(BTreeSet::new()));
        assert_eq!(decode(b"[]"), Some(BTreeSet::new()));
        assert_eq!(decode(br#"["ok","a/b"]"#), Some(ids(&["ok"])));
        assert_eq!(decode(b"probe 12-34"), None);
    }

    #[test]
    fn the_desired_set_holds_what_may_be_online() {
        let mut st = State {
            pending: HashMap::new(),
            online: ids(&["a"]),
            phase: Phase::Reading(ids(&["old"])),
            others: HashMap::new(),
            acked: None,
            closed: false,
        };
        assert_eq!(
            st.desired(),
            None,
            "nothing before the previous set is known"
        );
        st.phase = Phase::Grace(ids(&["old"]));
        st.pending
            .insert(DeviceId::parse("b").unwrap(), (DeviceStatus::Offline, 1));
        assert_eq!(st.desired(), Some(ids(&["a", "b", "old"])));
        st.phase = Phase::Settled;
        assert_eq!(st.desired(), Some(ids(&["a", "b"])));
    }
}
