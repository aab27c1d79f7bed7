//! Lamp commands from MQTT to boards connected over TCP.
//!
//! The ingest's MQTT client subscribes to `{prefix}/+/lamp/set`; every `on`/`off` payload
//! is remembered as that device's desired state and, if a connection said `HELLO <device>`,
//! handed to that connection's task, which writes `led-on` / `led-off`. The memory lets a
//! board that reconnects get the current state right after its HELLO instead of waiting
//! for the next change. It lives in this process only; after a restart it refills from
//! the commands the broker queued for ingest's persistent session while it was down, and
//! then from every new command (see the README's "what holds").

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use lentera_mqtt::{Client, Delivery};
use lentera_protocol::{DeviceId, LampCommand, TopicKind, Topics};
use tokio::sync::mpsc;

use crate::stats::Stats;
use crate::status::{StatusBoard, bound_instance};

/// Commands queued per connection before further ones are dropped; a board that cannot
/// read a few lines is not keeping up anyway, and its next HELLO gets the latest state.
pub const CONNECTION_QUEUE: usize = 16;

/// Identifies one TCP connection, so a closing connection can tell whether the binding
/// is still its own or was taken over by a newer HELLO.
pub type ConnId = u64;

/// Device → the connection currently bound to it, plus the last command per device.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    bound: HashMap<DeviceId, (ConnId, mpsc::Sender<LampCommand>)>,
    last: HashMap<DeviceId, LampCommand>,
}

impl Registry {
    /// Binds `device` to connection `conn`, replacing any older binding (a board that
    /// reconnects before its old socket timed out must win). Returns the last known
    /// command so the caller can send it right away.
    pub fn bind(
        &self,
        device: &DeviceId,
        conn: ConnId,
        tx: mpsc::Sender<LampCommand>,
    ) -> Option<LampCommand> {
        let mut inner = self.inner.lock().unwrap();
        inner.bound.insert(device.clone(), (conn, tx));
        inner.last.get(device).copied()
    }

    /// Removes the binding if it still belongs to `conn`; true when it did (the caller
    /// then owns announcing the device offline).
    pub fn unbind(&self, device: &DeviceId, conn: ConnId) -> bool {
        let mut inner = self.inner.lock().unwrap();
        match inner.bound.get(device) {
            Some((c, _)) if *c == conn => {
                inner.bound.remove(device);
                true
            }
            _ => false,
        }
    }

    /// Records the desired state and forwards it to the bound connection, if any.
    /// True when a connection took it.
    pub fn command(&self, device: &DeviceId, cmd: LampCommand) -> bool {
        let mut inner = self.inner.lock().unwrap();
        inner.last.insert(device.clone(), cmd);
        match inner.bound.get(device) {
            Some((_, tx)) => match tx.try_send(cmd) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(device = ?device.as_str(), error = %e, "lamp command not queued for TCP board");
                    false
                }
            },
            None => false,
        }
    }
}

/// Consumes ingest's MQTT deliveries until the client stops: `lamp/set` commands for
/// the boards, and the instances' bound sets for the status board.
///
/// Each delivery is acknowledged only once it has been handled, and none once
/// `accepting` is false (shutdown has begun): a command that arrives while ingest is
/// stopping is then redelivered by the broker to the next run's session instead of
/// being acknowledged and forgotten with this process's memory.
pub async fn run(
    mut deliveries: mpsc::Receiver<Delivery>,
    client: Client,
    accepting: Arc<AtomicBool>,
    topics: Topics,
    registry: Registry,
    statuses: StatusBoard,
    stats: Stats,
) {
    while let Some(d) = deliveries.recv().await {
        if !accepting.load(Ordering::SeqCst) {
            continue;
        }
        handle(&d, &topics, &registry, &statuses, &stats);
        client.ack(&d);
    }
}

fn handle(
    d: &Delivery,
    topics: &Topics,
    registry: &Registry,
    statuses: &StatusBoard,
    stats: &Stats,
) {
    {
        if let Some(instance) = bound_instance(topics, &d.publish.topic) {
            statuses.on_bound_message(instance, &d.publish.payload);
            return;
        }
        let Some((device, TopicKind::LampSet)) = topics.parse(&d.publish.topic) else {
            return;
        };
        match LampCommand::from_payload(&d.publish.payload) {
            Some(cmd) => {
                if registry.command(&device, cmd) {
                    stats.relayed.inc();
                }
            }
            None => {
                tracing::warn!(device = ?device.as_str(), "ignoring lamp/set payload that is not on/off")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_binding_wins_and_old_unbind_is_a_no_op() {
        let reg = Registry::default();
        let d = DeviceId::parse("lamp-1").unwrap();
        let (tx1, mut rx1) = mpsc::channel(4);
        let (tx2, mut rx2) = mpsc::channel(4);
        assert_eq!(reg.bind(&d, 1, tx1), None);
        assert!(reg.command(&d, LampCommand::On));
        assert_eq!(rx1.try_recv().ok(), Some(LampCommand::On));
        assert_eq!(reg.bind(&d, 2, tx2), Some(LampCommand::On));
        assert!(
            !reg.unbind(&d, 1),
            "the old connection no longer owns the device"
        );
        assert!(reg.command(&d, LampCommand::Off));
        assert_eq!(rx2.try_recv().ok(), Some(LampCommand::Off));
        assert!(rx1.try_recv().is_err());
        assert!(reg.unbind(&d, 2));
        assert!(!reg.command(&d, LampCommand::On), "nobody bound");
    }
}
