//! The Lentera wire contract, in one place.
//!
//! Every service and test that builds or reads an MQTT topic, a reading payload or a
//! lamp message goes through this crate, so the contract in `docs/architecture.md`
//! has exactly one implementation:
//!
//! - [`device`]: the device id rule (`[A-Za-z0-9_-]{1,64}`).
//! - [`topic`]: building and parsing `lentera/{device}/…` topics under a configurable prefix.
//! - [`reading`]: the telemetry payload — parsing, validation with stable error codes,
//!   and the canonical JSON the platform publishes.
//! - [`limits`]: plausibility limits (physical ranges, clock skew), configurable.
//! - [`rejection`]: how a refused message is reported after its sender was answered.
//! - [`stamp`]: microsecond receive times, unique per device, for readings without `ts`.
//! - [`senml`]: SenML (RFC 8428) packs resolved into readings.
//! - [`lamp`]: lamp commands (`on`/`off`), lamp modes and device status.
//!
//! Nothing here does I/O; it is all unit-tested pure code.

pub mod device;
pub mod lamp;
pub mod limits;
pub mod reading;
pub mod rejection;
pub mod senml;
pub mod stamp;
pub mod topic;

pub use device::{DeviceId, InvalidDeviceId};
pub use lamp::{DeviceStatus, LampCommand, LampMode, ModeKind};
pub use limits::{Limits, Range};
pub use reading::{Reading, ReadingError};
pub use rejection::Rejection;
pub use stamp::Stamper;
pub use topic::{TopicKind, Topics};
