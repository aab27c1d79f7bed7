//! The simulated boards.

use std::f64::consts::TAU;
use std::time::Duration;

use lentera_mqtt::{Client, MqttSettings, QoS};
use lentera_protocol::{DeviceId, LampCommand, TopicKind, Topics};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SimSettings {
    /// Ingest's TCP line-protocol address, for the first greenhouse.
    pub ingest_tcp: String,
    pub greenhouses: Vec<String>,
    pub lamps: Vec<String>,
    /// Time between readings of one board.
    pub interval_ms: u64,
    /// Length of a simulated day, so dusk and dawn come every few minutes in a demo.
    pub day_secs: u64,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            ingest_tcp: "127.0.0.1:2004".into(),
            greenhouses: vec!["gh-1".into(), "gh-2".into()],
            lamps: vec!["lamp-1".into(), "lamp-2".into(), "lamp-3".into()],
            interval_ms: 2_000,
            day_secs: 300,
        }
    }
}

/// Where in the simulated day we are, 0.0 (midnight) to 1.0.
fn day_phase(day_secs: u64) -> f64 {
    let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    (now % day_secs.max(1) as f64) / day_secs.max(1) as f64
}

/// Daylight from 0 (night) to 1 (noon).
fn daylight(phase: f64) -> f64 {
    (-(phase * TAU).cos()).max(0.0)
}

fn parse_ids(ids: &[String]) -> anyhow::Result<Vec<DeviceId>> {
    ids.iter()
        .map(|s| DeviceId::parse(s).map_err(|e| anyhow::anyhow!("{s}: {e}")))
        .collect()
}

pub async fn run(mqtt: MqttSettings, s: SimSettings) -> anyhow::Result<()> {
    let topics = mqtt.topics();
    let greenhouses = parse_ids(&s.greenhouses)?;
    let lamps = parse_ids(&s.lamps)?;
    let (client, mut deliveries) = Client::start(
        &mqtt,
        "lentera-simulator",
        true,
        false,
        vec![(topics.filter(TopicKind::LampSet), QoS::AtLeastOnce)],
        None,
    );
    // Retained status messages published before the connection is up would be refused.
    while !client.is_connected() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some((first, rest)) = greenhouses.split_first() {
        tokio::spawn(tcp_greenhouse(s.clone(), first.clone()));
        for gh in rest {
            tokio::spawn(mqtt_greenhouse(
                client.clone(),
                topics.clone(),
                s.clone(),
                gh.clone(),
            ));
        }
    }
    for lamp in &lamps {
        tokio::spawn(lamp_light(
            client.clone(),
            topics.clone(),
            s.clone(),
            lamp.clone(),
        ));
    }
    // Lamp boards obey commands and report what they now drive.
    while let Some(d) = deliveries.recv().await {
        let Some((device, TopicKind::LampSet)) = topics.parse(&d.publish.topic) else {
            continue;
        };
        if !lamps.contains(&device) {
            continue;
        }
        if let Some(cmd) = LampCommand::from_payload(&d.publish.payload) {
            tracing::info!(%device, %cmd, "lamp switched");
            let _ = client.publish(
                topics.lamp_state(&device),
                QoS::AtLeastOnce,
                true,
                cmd.as_str(),
            );
        }
    }
    Ok(())
}

fn greenhouse_values(s: &SimSettings, seed: f64) -> (f64, f64) {
    let light = daylight(day_phase(s.day_secs));
    let jitter = ((chrono::Utc::now().timestamp_millis() as f64 / 997.0 + seed).sin()) * 0.3;
    let temperature = 22.0 + 10.0 * light + jitter + seed;
    let humidity = 80.0 - 25.0 * light - jitter * 2.0;
    (
        (temperature * 10.0).round() / 10.0,
        (humidity * 10.0).round() / 10.0,
    )
}

/// A greenhouse board on the raw TCP line protocol, reconnecting as a flaky board would.
async fn tcp_greenhouse(s: SimSettings, device: DeviceId) {
    loop {
        if let Err(e) = tcp_session(&s, &device).await {
            tracing::warn!(%device, error = %e, "TCP board disconnected; retrying");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn tcp_session(s: &SimSettings, device: &DeviceId) -> anyhow::Result<()> {
    let stream = TcpStream::connect(&s.ingest_tcp).await?;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    w.write_all(format!("HELLO {device}\n").as_bytes()).await?;
    lines.next_line().await?;
    loop {
        let (t, h) = greenhouse_values(s, 0.0);
        w.write_all(format!("{device} temperature={t} humidity={h}\n").as_bytes())
            .await?;
        match lines.next_line().await? {
            Some(reply) if reply == "OK" => {}
            Some(reply) => tracing::warn!(%device, %reply, "ingest refused a reading"),
            None => anyhow::bail!("connection closed"),
        }
        tokio::time::sleep(Duration::from_millis(s.interval_ms)).await;
    }
}

async fn mqtt_greenhouse(client: Client, topics: Topics, s: SimSettings, device: DeviceId) {
    let seed = device.as_str().len() as f64 * 0.7;
    let _ = client.publish(topics.status(&device), QoS::AtLeastOnce, true, "online");
    loop {
        let (t, h) = greenhouse_values(&s, seed);
        let payload = format!(r#"{{"temperature":{t},"humidity":{h}}}"#);
        let _ = client.publish(topics.telemetry(&device), QoS::AtLeastOnce, false, payload);
        tokio::time::sleep(Duration::from_millis(s.interval_ms)).await;
    }
}

/// A lamp's light sensor over the simulated day.
async fn lamp_light(client: Client, topics: Topics, s: SimSettings, device: DeviceId) {
    let _ = client.publish(topics.status(&device), QoS::AtLeastOnce, true, "online");
    loop {
        let lux = (daylight(day_phase(s.day_secs)) * 800.0 * 10.0).round() / 10.0;
        let payload = format!(r#"{{"lux":{lux}}}"#);
        let _ = client.publish(topics.telemetry(&device), QoS::AtLeastOnce, false, payload);
        tokio::time::sleep(Duration::from_millis(s.interval_ms)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulated_day_is_dark_at_midnight_and_bright_at_noon() {
        assert_eq!(daylight(0.0), 0.0);
        assert_eq!(daylight(0.1), 0.0);
        assert!((daylight(0.5) - 1.0).abs() < 1e-9);
    }
}
