//! Why a connection ends, and what the client is told.

use ntex_mqtt::v5::codec::DisconnectReasonCode;

/// Why the broker ends a connection. MQTT 5 clients get a DISCONNECT with the reason
/// code and a reason string first (allowed even without Request Problem Information,
/// [MQTT-3.1.2-29]); MQTT 3.1.1 has no server DISCONNECT, so its clients see the socket
/// close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// The client closed the socket, or it failed: an abnormal end, the will goes out.
    Gone,
    /// The client sent DISCONNECT: a normal end (the will was dealt with then).
    Disconnected,
    /// A refused CONNECT: the CONNACK already said why [MQTT-3.2.2-5].
    Refused,
    /// The client broke the protocol.
    Protocol {
        code: DisconnectReasonCode,
        why: String,
    },
    /// Nothing from the client for 1.5× its keep-alive [MQTT-3.1.2-22].
    KeepAlive,
    /// A packet begun and not finished within `packet_timeout_secs` (seconds).
    PacketTimeout(u16),
    /// Another connection took over the client id [MQTT-3.1.4-2].
    TakenOver,
    /// The device was disabled or removed, or its token rotated: its credentials no
    /// longer admit it (MQTT 5 0x87 Not authorized: retrying with them is pointless).
    Revoked,
    /// The device published faster than `[quota]` allows (MQTT 5 0x96).
    RateLimited,
    /// The broker is stopping.
    Shutdown,
}

impl Close {
    pub fn protocol(code: DisconnectReasonCode, why: impl Into<String>) -> Self {
        Close::Protocol {
            code,
            why: why.into(),
        }
    }

    /// The DISCONNECT an MQTT 5 client gets, if any: (reason code, reason string).
    pub fn v5_disconnect(&self) -> Option<(DisconnectReasonCode, String)> {
        Some(match self {
            Close::Gone | Close::Disconnected | Close::Refused => return None,
            Close::Protocol { code, why } => (*code, why.clone()),
            Close::KeepAlive => (
                DisconnectReasonCode::KeepAliveTimeout,
                "Keep Alive timeout: no packet within 1.5 times the keep-alive".into(),
            ),
            // MQTT 5 has no code of its own for this; Keep Alive timeout is the
            // nearest ("nothing usable received in time"), the string says which.
            Close::PacketTimeout(secs) => (
                DisconnectReasonCode::KeepAliveTimeout,
                format!("packet not complete within {secs} s (packet_timeout_secs)"),
            ),
            Close::Revoked => (
                DisconnectReasonCode::NotAuthorized,
                "not authorized any more: device disabled or removed, or its token rotated".into(),
            ),
            Close::RateLimited => (
                DisconnectReasonCode::MessageRateTooHigh,
                "message rate too high (quota.device_rate_per_sec / device_burst)".into(),
            ),
            Close::TakenOver => (
                DisconnectReasonCode::SessionTakenOver,
                "another connection took over this client id".into(),
            ),
            Close::Shutdown => (
                DisconnectReasonCode::ServerShuttingDown,
                "the broker is shutting down".into(),
            ),
        })
    }

    /// For the log.
    pub fn label(&self) -> &'static str {
        match self {
            Close::Gone => "gone",
            Close::Disconnected => "disconnected",
            Close::Refused => "refused",
            Close::Protocol { .. } => "protocol_error",
            Close::KeepAlive => "keep_alive_timeout",
            Close::PacketTimeout(_) => "packet_timeout",
            Close::TakenOver => "taken_over",
            Close::Revoked => "revoked",
            Close::RateLimited => "rate_limited",
            Close::Shutdown => "shutdown",
        }
    }
}
