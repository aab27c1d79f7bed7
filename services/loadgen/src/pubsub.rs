//! The publish/subscribe engine behind the `throughput` and `latency` modes.
//!
//! N publishers and M subscribers, each its own MQTT connection (rumqttc on tokio).
//! Subscribers connect and subscribe first; publishers connect, then all start together.
//! Each payload carries (publisher, seq, send time), so every subscriber can count, per
//! publisher, what arrived, what arrived twice, and how long it took. After publishing
//! stops, each publisher waits for its acknowledgements and the run waits until every
//! expected delivery arrived or none arrived for `drain`: what is still missing at QoS ≥ 1
//! is *lost* (acknowledged to the publisher but never delivered); at QoS 0 it is *dropped*,
//! which MQTT allows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::payload;
use crate::stats::{Percentiles, SeqSet};

/// Latency samples kept per subscriber; beyond it later deliveries are counted but not
/// timed, so a long run cannot exhaust memory.
const MAX_SAMPLES: usize = 5_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topics {
    /// Every publisher publishes to one topic that every subscriber subscribes to: each
    /// message is delivered M times.
    Shared,
    /// Publisher i publishes to its own topic; subscriber j subscribes to the topics of
    /// the publishers i ≡ j (mod min(N, M)): N×N pairs, N→1 fan-in, 1→M fan-out.
    Distinct,
}

impl std::str::FromStr for Topics {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "shared" => Ok(Topics::Shared),
            "distinct" => Ok(Topics::Distinct),
            _ => Err("expected shared or distinct".into()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PubSubConfig {
    pub host: String,
    pub port: u16,
    pub publishers: usize,
    pub subscribers: usize,
    pub topics: Topics,
    pub qos: QoS,
    pub size: usize,
    /// Total messages per second over all publishers; `None` = as fast as possible.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Messages per publisher; stops earlier than `duration` when reached.
    pub count: Option<u64>,
    /// How long to wait without any delivery before declaring the rest missing.
    pub drain: Duration,
    /// Unacknowledged QoS ≥ 1 messages per publisher.
    pub inflight: u16,
    /// Username and password for brokers that require them.
    pub credentials: Option<(String, String)>,
}

impl PubSubConfig {
    pub fn new(host: &str, port: u16) -> Self {
        PubSubConfig {
            host: host.to_owned(),
            port,
            publishers: 4,
            subscribers: 4,
            topics: Topics::Shared,
            qos: QoS::AtMostOnce,
            size: 64,
            rate: None,
            duration: Duration::from_secs(10),
            count: None,
            drain: Duration::from_secs(3),
            inflight: 100,
            credentials: None,
        }
    }

    /// Publisher indices subscriber `j` receives from.
    fn sources(&self, j: usize) -> Vec<usize> {
        match self.topics {
            Topics::Shared => (0..self.publishers).collect(),
            Topics::Distinct => {
                let k = self.publishers.min(self.subscribers);
                (0..self.publishers).filter(|i| i % k == j % k).collect()
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct PubSubReport {
    pub config: PubSubConfig,
    /// Messages written to the publishers' sockets.
    pub sent: u64,
    /// Of those, acknowledged by the broker (QoS ≥ 1; equals `sent` at QoS 0).
    pub acked: u64,
    /// Deliveries the subscribers should have seen.
    pub expected: u64,
    /// Deliveries seen, duplicates included.
    pub delivered: u64,
    pub duplicates: u64,
    /// Expected deliveries that never arrived (lost at QoS ≥ 1, dropped at QoS 0).
    pub missing: u64,
    pub publish_secs: f64,
    pub delivery_secs: f64,
    pub latency: Percentiles,
}

impl PubSubReport {
    pub fn sent_rate(&self) -> f64 {
        self.sent as f64 / self.publish_secs.max(1e-9)
    }

    /// Distinct deliveries over the whole run: from the start until the last delivery
    /// or the end of publishing, whichever is later, so a broker that stops delivering
    /// early (or drops most of a QoS 0 stream) is not credited with its first burst.
    pub fn delivered_rate(&self) -> f64 {
        let secs = self.delivery_secs.max(self.publish_secs);
        (self.delivered - self.duplicates) as f64 / secs.max(1e-9)
    }

    /// Acknowledged messages that never reached a subscriber: must be 0 at QoS ≥ 1.
    pub fn lost(&self) -> u64 {
        if self.config.qos == QoS::AtMostOnce {
            0
        } else {
            self.missing
        }
    }

    pub fn human(&self, mode: &str) -> String {
        let c = &self.config;
        let mut s = format!(
            "{mode}: {}:{} {} pub x {} sub, {:?} topics, QoS {}, {} B, {}\n",
            c.host,
            c.port,
            c.publishers,
            c.subscribers,
            c.topics,
            c.qos as u8,
            c.size.max(payload::HEADER),
            c.rate
                .map_or("unthrottled".to_owned(), |r| format!("{r} msg/s in")),
        );
        s += &format!(
            "  sent       {:>10} msgs in {:.2}s = {:.0} msg/s (acked {})\n",
            self.sent,
            self.publish_secs,
            self.sent_rate(),
            self.acked
        );
        s += &format!(
            "  delivered  {:>10} of {} expected in {:.2}s = {:.0} msg/s (duplicates {})\n",
            self.delivered - self.duplicates,
            self.expected,
            self.delivery_secs.max(self.publish_secs),
            self.delivered_rate(),
            self.duplicates
        );
        if c.qos == QoS::AtMostOnce {
            s += &format!("  dropped    {:>10} (allowed at QoS 0)\n", self.missing);
        } else {
            s += &format!("  LOST       {:>10} (must be 0 at QoS >= 1)\n", self.lost());
        }
        s += &format!("  latency    {}", self.latency.human());
        s
    }

    pub fn json(&self, mode: &str) -> Value {
        let c = &self.config;
        json!({
            "mode": mode, "host": c.host, "port": c.port,
            "publishers": c.publishers, "subscribers": c.subscribers,
            "topics": format!("{:?}", c.topics).to_lowercase(), "qos": c.qos as u8,
            "size": c.size.max(payload::HEADER), "rate": c.rate,
            "sent": self.sent, "acked": self.acked, "expected": self.expected,
            "delivered": self.delivered - self.duplicates, "duplicates": self.duplicates,
            "dropped": if c.qos == QoS::AtMostOnce { self.missing } else { 0 },
            "lost": self.lost(),
            "publish_secs": self.publish_secs, "delivery_secs": self.delivery_secs,
            "sent_per_sec": self.sent_rate(), "delivered_per_sec": self.delivered_rate(),
            "latency": self.latency.json(),
        })
    }
}

/// Counters the subscribers update live, so the drain loop sees progress.
#[derive(Default)]
struct Progress {
    unique: AtomicU64,
    last_delivery_us: AtomicU64,
}

struct SubResult {
    seqs: Vec<SeqSet>,
    latencies: Vec<u64>,
}

struct PubResult {
    sent: u64,
    acked: u64,
    finished_us: u64,
}

pub async fn run(cfg: PubSubConfig) -> anyhow::Result<PubSubReport> {
    // No subscribers is allowed: publish only, to measure the publish rate with an
    // external subscriber (or none) that the report does not count.
    if cfg.publishers == 0 {
        bail!("need at least one publisher");
    }
    // Unique per run, so runs against the same broker never see each other's traffic.
    let run_id = format!("{}-{}", std::process::id(), payload::now_us());
    let prefix = format!("lentera-bench/{run_id}");
    let topic = |i: usize| match cfg.topics {
        Topics::Shared => format!("{prefix}/all"),
        Topics::Distinct => format!("{prefix}/{i}"),
    };
    let progress = Arc::new(Progress::default());
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut subs = Vec::new();
    for j in 0..cfg.subscribers {
        let mut topics: Vec<String> = cfg.sources(j).into_iter().map(topic).collect();
        topics.dedup();
        let opts = options(&cfg, format!("lg-{run_id}-s{j}"));
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(subscriber(
            opts,
            topics,
            cfg.clone(),
            progress.clone(),
            stop_rx.clone(),
            ready_tx,
        ));
        subs.push((task, ready_rx));
    }
    for (j, (_, ready)) in subs.iter_mut().enumerate() {
        ready
            .await
            .context("subscriber ended")?
            .with_context(|| format!("subscriber {j}"))?;
    }

    let mut pubs = Vec::new();
    for i in 0..cfg.publishers {
        let opts = options(&cfg, format!("lg-{run_id}-p{i}"));
        let (client, el) = AsyncClient::new(opts, 100);
        pubs.push(
            Driver::start(client, el)
                .await
                .with_context(|| format!("publisher {i}"))?,
        );
    }
    let start_us = payload::now_us();
    let start = Instant::now();
    let tasks: Vec<JoinHandle<anyhow::Result<PubResult>>> = pubs
        .into_iter()
        .enumerate()
        .map(|(i, d)| tokio::spawn(publish(d, i, topic(i), cfg.clone(), start)))
        .collect();
    let mut per_pub = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        per_pub.push(t.await?.with_context(|| format!("publisher {i}"))?);
    }

    let expect_from = |r: &PubResult| {
        if cfg.qos == QoS::AtMostOnce {
            r.sent
        } else {
            r.acked
        }
    };
    let expected: u64 = (0..cfg.subscribers)
        .flat_map(|j| cfg.sources(j))
        .map(|i| expect_from(&per_pub[i]))
        .sum();
    wait_for_deliveries(&progress, expected, cfg.drain).await;
    let _ = stop_tx.send(true);

    let (mut delivered, mut duplicates, mut missing, mut samples) = (0, 0, 0, Vec::new());
    for (j, (task, _)) in subs.into_iter().enumerate() {
        let r = task.await?.with_context(|| format!("subscriber {j}"))?;
        for i in cfg.sources(j) {
            let s = &r.seqs[i];
            delivered += s.unique + s.duplicates;
            duplicates += s.duplicates;
            missing += s.missing_below(expect_from(&per_pub[i]));
        }
        samples.extend(r.latencies);
    }
    let finished_us = per_pub
        .iter()
        .map(|r| r.finished_us)
        .max()
        .unwrap_or(start_us);
    let last_us = progress
        .last_delivery_us
        .load(Ordering::Relaxed)
        .max(start_us);
    Ok(PubSubReport {
        sent: per_pub.iter().map(|r| r.sent).sum(),
        acked: per_pub.iter().map(|r| r.acked).sum(),
        expected,
        delivered,
        duplicates,
        missing,
        publish_secs: (finished_us - start_us) as f64 / 1e6,
        delivery_secs: (last_us - start_us) as f64 / 1e6,
        latency: Percentiles::from_samples(samples),
        config: cfg,
    })
}

fn options(cfg: &PubSubConfig, id: String) -> MqttOptions {
    let mut o = MqttOptions::new(id, cfg.host.clone(), cfg.port);
    o.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(cfg.inflight.max(1))
        .set_max_packet_size(cfg.size + 1024, cfg.size + 1024);
    if let Some((user, password)) = &cfg.credentials {
        o.set_credentials(user, password);
    }
    o
}

async fn wait_for_deliveries(progress: &Progress, expected: u64, drain: Duration) {
    let mut seen = progress.unique.load(Ordering::Relaxed);
    let mut since = Instant::now();
    while seen < expected && since.elapsed() < drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = progress.unique.load(Ordering::Relaxed);
        if now != seen {
            (seen, since) = (now, Instant::now());
        }
    }
}

async fn subscriber(
    opts: MqttOptions,
    topics: Vec<String>,
    cfg: PubSubConfig,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
    ready: oneshot::Sender<anyhow::Result<()>>,
) -> anyhow::Result<SubResult> {
    let (client, mut el) = AsyncClient::new(opts, 16);
    let filters = topics.into_iter().map(|t| SubscribeFilter::new(t, cfg.qos));
    client.subscribe_many(filters).await?;
    let mut ready = Some(ready);
    let mut r = SubResult {
        seqs: vec![SeqSet::default(); cfg.publishers],
        latencies: Vec::new(),
    };
    loop {
        let event = tokio::select! {
            _ = stop.changed() => break,
            event = el.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack.return_codes.contains(&SubscribeReasonCode::Failure);
                if let Some(tx) = ready.take() {
                    let _ = tx.send(if refused {
                        Err(anyhow::anyhow!("subscription refused: {ack:?}"))
                    } else {
                        Ok(())
                    });
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some(stamp) = payload::decode(&p.payload) else {
                    continue;
                };
                let Some(seqs) = r.seqs.get_mut(stamp.publisher as usize) else {
                    continue;
                };
                let now = payload::now_us();
                let before = seqs.unique;
                seqs.insert(stamp.seq);
                if seqs.unique > before {
                    progress.unique.fetch_add(1, Ordering::Relaxed);
                }
                progress.last_delivery_us.fetch_max(now, Ordering::Relaxed);
                if r.latencies.len() < MAX_SAMPLES {
                    r.latencies.push(now.saturating_sub(stamp.sent_us));
                }
            }
            Ok(_) => {}
            Err(e) => {
                // A benchmark must not quietly reconnect and carry on: report and stop.
                let e = anyhow::anyhow!("connection error: {e}");
                match ready.take() {
                    Some(tx) => {
                        let _ = tx.send(Err(e));
                        bail!("not subscribed");
                    }
                    None => return Err(e),
                }
            }
        }
    }
    Ok(r)
}

/// A publisher's event loop on its own task, counting what it writes and what the
/// broker acknowledges.
struct Driver {
    client: AsyncClient,
    sent: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    error: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl Driver {
    /// Returns once the broker accepted the connection.
    async fn start(client: AsyncClient, mut el: EventLoop) -> anyhow::Result<Driver> {
        let (sent, acked) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let error = Arc::new(Mutex::new(None));
        let (conn_tx, conn_rx) = oneshot::channel();
        let (s, a, err) = (sent.clone(), acked.clone(), error.clone());
        let task = tokio::spawn(async move {
            let mut conn_tx = Some(conn_tx);
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = conn_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                        s.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => {
                        a.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let e = format!("connection error: {e}");
                        match conn_tx.take() {
                            Some(tx) => drop(tx.send(Err(e))),
                            None => *err.lock().unwrap() = Some(e),
                        }
                        return;
                    }
                }
            }
        });
        conn_rx
            .await
            .context("event loop ended")?
            .map_err(anyhow::Error::msg)?;
        Ok(Driver {
            client,
            sent,
            acked,
            error,
            task,
        })
    }

    fn check(&self) -> anyhow::Result<()> {
        match self.error.lock().unwrap().clone() {
            Some(e) => bail!(e),
            None => Ok(()),
        }
    }
}

async fn publish(
    d: Driver,
    idx: usize,
    topic: String,
    cfg: PubSubConfig,
    start: Instant,
) -> anyhow::Result<PubResult> {
    let per_pub_rate = cfg.rate.map(|r| r / cfg.publishers as f64);
    let limit = cfg.count.unwrap_or(u64::MAX);
    let mut seq = 0;
    while seq < limit && start.elapsed() < cfg.duration {
        if let Some(r) = per_pub_rate {
            // tokio's timer ticks in milliseconds: sleep until the next message is due,
            // then send everything due by now, each stamped with its real send time.
            let due = start + Duration::from_secs_f64(seq as f64 / r);
            tokio::time::sleep_until(due.into()).await;
        }
        let body = payload::encode(cfg.size, idx as u32, seq);
        d.client
            .publish(topic.as_str(), cfg.qos, false, body)
            .await?;
        seq += 1;
        if seq % 1024 == 0 {
            d.check()?;
        }
    }
    let finished_us = payload::now_us();
    // Let the event loop write the rest and collect the acknowledgements.
    let wait_until = Instant::now() + cfg.drain;
    let done = |d: &Driver| match cfg.qos {
        QoS::AtMostOnce => d.sent.load(Ordering::Relaxed) >= seq,
        _ => d.acked.load(Ordering::Relaxed) >= seq,
    };
    while !done(&d) && Instant::now() < wait_until {
        d.check()?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = d.client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    d.task.abort();
    Ok(PubResult {
        sent: d.sent.load(Ordering::Relaxed),
        acked: match cfg.qos {
            QoS::AtMostOnce => d.sent.load(Ordering::Relaxed),
            _ => d.acked.load(Ordering::Relaxed),
        },
        finished_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n: usize, m: usize) -> PubSubConfig {
        PubSubConfig {
            publishers: n,
            subscribers: m,
            topics: Topics::Distinct,
            ..PubSubConfig::new("h", 1)
        }
    }

    #[test]
    fn distinct_topics_pair_fan_in_and_fan_out() {
        let pairs = cfg(4, 4);
        assert_eq!(pairs.sources(2), vec![2]);
        let fan_in = cfg(16, 1);
        assert_eq!(fan_in.sources(0), (0..16).collect::<Vec<_>>());
        let fan_out = cfg(1, 16);
        assert!((0..16).all(|j| fan_out.sources(j) == vec![0]));
        let uneven = cfg(4, 2);
        assert_eq!(
            (uneven.sources(0), uneven.sources(1)),
            (vec![0, 2], vec![1, 3])
        );
    }
}
