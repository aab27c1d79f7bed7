//! The error a connection handler can end a connection with.

use crate::topic_filter::TopicError;

/// Ends the connection it occurs on (MQTT 3.1.1 has no other way to refuse a packet).
#[derive(Debug)]
pub enum BrokerError {
    /// A PUBLISH topic name that is not valid.
    Topic(TopicError),
    /// The payload stream broke off before it was complete.
    Payload,
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerError::Topic(e) => write!(f, "invalid topic name: {}", e.code()),
            BrokerError::Payload => f.write_str("incomplete payload"),
        }
    }
}

impl std::error::Error for BrokerError {}

/// ntex-mqtt's default services produce `()` errors.
impl From<()> for BrokerError {
    fn from((): ()) -> Self {
        BrokerError::Payload
    }
}

/// MQTT 5 turns publish errors into a PUBACK when possible; ours all close the connection.
impl TryFrom<BrokerError> for ntex_mqtt::v5::PublishAck {
    type Error = BrokerError;

    fn try_from(err: BrokerError) -> Result<Self, Self::Error> {
        Err(err)
    }
}
