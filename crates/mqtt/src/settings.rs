//! `[mqtt]` settings, shared by every service.

use std::time::Duration;

use lentera_protocol::Topics;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MqttSettings {
    /// Broker host name or address.
    pub host: String,
    /// Broker MQTT/TCP port.
    pub port: u16,
    /// Client id; each service defaults to `lentera-{service}`. Two processes must not share one.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Keep-alive interval in seconds.
    pub keep_alive_secs: u64,
    /// Topic prefix of the platform's topics.
    pub topic_prefix: String,
    /// Most QoS 1 publishes awaiting PUBACK at once; callers beyond it wait or are refused.
    pub max_inflight: u16,
    /// How long a QoS 1 publish may wait for its PUBACK before the caller is told it failed.
    pub ack_timeout_ms: u64,
    /// Largest packet accepted or sent, in bytes.
    pub max_packet_bytes: usize,
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: None,
            username: None,
            password: None,
            keep_alive_secs: 30,
            topic_prefix: lentera_protocol::topic::DEFAULT_PREFIX.into(),
            max_inflight: 1024,
            ack_timeout_ms: 5_000,
            max_packet_bytes: 256 * 1024,
        }
    }
}

impl MqttSettings {
    pub fn topics(&self) -> Topics {
        Topics::new(&self.topic_prefix)
    }

    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }

    /// rumqttc options for a client whose default id is `default_client_id`.
    pub(crate) fn options(
        &self,
        default_client_id: &str,
        clean_session: bool,
    ) -> rumqttc::MqttOptions {
        let id = self
            .client_id
            .clone()
            .unwrap_or_else(|| default_client_id.to_owned());
        let mut o = rumqttc::MqttOptions::new(id, self.host.clone(), self.port);
        o.set_keep_alive(Duration::from_secs(self.keep_alive_secs.max(5)))
            .set_clean_session(clean_session)
            .set_inflight(self.max_inflight.max(1))
            .set_max_packet_size(self.max_packet_bytes, self.max_packet_bytes)
            .set_request_channel_capacity(self.max_inflight as usize * 2);
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            o.set_credentials(u.clone(), p.clone());
        }
        o
    }
}
