//! `flood`: does one flooding board hurt another? Over ingest's HTTP door, with tokens.
//!
//! Board B posts `--rate-b` readings a second throughout (a normal board, 10/s by
//! default) while board A goes through three phases of `--seconds` each:
//!
//! 1. `quiet`: A is silent — B's normal latency.
//! 2. `10x`: A posts at `--rate-a` (by default ten times the default quota of 10/s).
//! 3. `flat-out`: A posts as fast as `--connections-a` connections can.
//!
//! Per phase it reports B's latency percentiles and answers, A's answers (202, 429, …),
//! and — when `--web` and `--viewer-token` are given — how many of B's accepted readings
//! a `/ws` viewer of every device received, so a flood that starves the live view shows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::stats::Percentiles;

#[derive(Debug, Clone)]
pub struct FloodConfig {
    pub ingest: String,
    pub web: Option<String>,
    pub viewer_token: Option<String>,
    pub device_a: String,
    pub token_a: String,
    pub device_b: String,
    pub token_b: String,
    pub rate_a: f64,
    pub rate_b: f64,
    pub connections_a: usize,
    pub phase: Duration,
}

/// What one phase measured.
#[derive(Debug, Default)]
pub struct Phase {
    pub name: &'static str,
    pub b_latency_us: Vec<u64>,
    pub b_status: BTreeMap<u16, u64>,
    pub a_status: BTreeMap<u16, u64>,
    pub b_accepted_seqs: Vec<u64>,
    pub b_seen_on_ws: Option<u64>,
    /// The first answer to either board that was neither 202 nor 429.
    pub unexpected: Option<String>,
}

pub struct FloodReport {
    pub phases: Vec<Phase>,
}

/// Tallies an HTTP status; 0 stands for a transport error.
fn count(map: &mut BTreeMap<u16, u64>, status: u16) {
    *map.entry(status).or_default() += 1;
}

/// The answer's status, and its body when it is neither 202 nor 429 (to say what went
/// wrong in the report).
async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
) -> (u16, Option<String>) {
    match http.post(url).bearer_auth(token).json(body).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            (status, (status != 202 && status != 429).then_some(text))
        }
        Err(e) => (0, Some(e.to_string())),
    }
}

pub async fn run(cfg: FloodConfig) -> anyhow::Result<FloodReport> {
    let url = format!("{}/api/v1/readings", cfg.ingest.trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(cfg.connections_a + 4)
        .build()?;
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let _viewer = match (&cfg.web, &cfg.viewer_token) {
        (Some(web), Some(token)) => Some(viewer(web, token, &cfg.device_b, seen.clone()).await?),
        _ => None,
    };
    let mut phases = Vec::new();
    let mut seq_b = 0u64;
    for name in ["quiet", "10x", "flat-out"] {
        let stop = Arc::new(AtomicBool::new(false));
        let a_status: Arc<Mutex<BTreeMap<u16, u64>>> = Arc::default();
        let unexpected: Arc<Mutex<Option<String>>> = Arc::default();
        let mut flooders = Vec::new();
        let (workers, gap) = match name {
            "quiet" => (0, None),
            "10x" => (1, Some(Duration::from_secs_f64(1.0 / cfg.rate_a))),
            _ => (cfg.connections_a, None),
        };
        for w in 0..workers {
            let (http, url, stop, a_status, unexpected) = (
                http.clone(),
                url.clone(),
                stop.clone(),
                a_status.clone(),
                unexpected.clone(),
            );
            let (device, token) = (cfg.device_a.clone(), cfg.token_a.clone());
            flooders.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(gap) = gap {
                        tokio::time::sleep_until((t0 + gap * n as u32).into()).await;
                    }
                    let body = json!({"device": device, "seq": n * workers as u64 + w as u64});
                    let (status, text) = post(&http, &url, &token, &body).await;
                    count(&mut *a_status.lock().await, status);
                    if let Some(text) = text {
                        unexpected
                            .lock()
                            .await
                            .get_or_insert_with(|| format!("A: {status} {text}"));
                    }
                    n += 1;
                }
            }));
        }
        let mut phase = Phase {
            name,
            ..Phase::default()
        };
        let seen_before = seen.lock().await.len();
        let t0 = Instant::now();
        let gap = Duration::from_secs_f64(1.0 / cfg.rate_b);
        let mut i = 0u32;
        while t0.elapsed() < cfg.phase {
            tokio::time::sleep_until((t0 + gap * i).into()).await;
            i += 1;
            let body = json!({"device": cfg.device_b, "seq": seq_b});
            let started = Instant::now();
            let (status, text) = post(&http, &url, &cfg.token_b, &body).await;
            if let Some(text) = text {
                unexpected
                    .lock()
                    .await
                    .get_or_insert_with(|| format!("B: {status} {text}"));
            }
            phase
                .b_latency_us
                .push(started.elapsed().as_micros() as u64);
            count(&mut phase.b_status, status);
            if status == 202 {
                phase.b_accepted_seqs.push(seq_b);
            }
            seq_b += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for f in flooders {
            let _ = f.await;
        }
        if cfg.web.is_some() {
            // Live messages still on their way through broker and web.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let seen = seen.lock().await;
            let accepted: std::collections::HashSet<u64> =
                phase.b_accepted_seqs.iter().copied().collect();
            phase.b_seen_on_ws = Some(
                seen[seen_before.min(seen.len())..]
                    .iter()
                    .filter(|s| accepted.contains(s))
                    .count() as u64,
            );
        }
        phase.a_status = std::mem::take(&mut *a_status.lock().await);
        phase.unexpected = unexpected.lock().await.take();
        phases.push(phase);
    }
    Ok(FloodReport { phases })
}

/// A `/ws` viewer of every device; records the `seq` of each live reading of `device`.
async fn viewer(
    web: &str,
    token: &str,
    device: &str,
    seen: Arc<Mutex<Vec<u64>>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let ws_url = format!("{}/ws", web.trim_end_matches('/').replacen("http", "ws", 1));
    let mut request = ws_url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("connecting to {ws_url}"))?;
    let device = device.to_owned();
    Ok(tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            let Ok(text) = m.to_text() else { continue };
            let Ok(v) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            if v["type"] == "reading"
                && v["device"] == device.as_str()
                && let Some(seq) = v["metrics"]["seq"].as_f64()
            {
                seen.lock().await.push(seq as u64);
            }
        }
    }))
}

impl FloodReport {
    pub fn json(&self) -> Value {
        let phases: Vec<Value> = self
            .phases
            .iter()
            .map(|p| {
                json!({
                    "phase": p.name,
                    "b_latency_us": Percentiles::from_samples(p.b_latency_us.clone()).json(),
                    "b_status": p.b_status,
                    "a_status": p.a_status,
                    "b_accepted": p.b_accepted_seqs.len(),
                    "b_seen_on_ws": p.b_seen_on_ws,
                    "unexpected": p.unexpected,
                })
            })
            .collect();
        json!({ "mode": "flood", "phases": phases })
    }

    pub fn human(&self) -> String {
        let mut out = String::from("flood: board B at a steady rate while board A floods\n");
        let quiet_p99 = self
            .phases
            .first()
            .map(|p| Percentiles::from_samples(p.b_latency_us.clone()).p99)
            .unwrap_or(0);
        for p in &self.phases {
            let lat = Percentiles::from_samples(p.b_latency_us.clone());
            let ws = p
                .b_seen_on_ws
                .map(|n| format!(", /ws got {n} of {}", p.b_accepted_seqs.len()))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {:<9} B: {} ({:.2}x quiet p99), answers {:?}{ws}\n            A: answers {:?}\n",
                p.name,
                lat.human(),
                lat.p99 as f64 / quiet_p99.max(1) as f64,
                p.b_status,
                p.a_status,
            ));
            if let Some(u) = &p.unexpected {
                out.push_str(&format!("            first other answer: {u}\n"));
            }
        }
        out
    }
}
