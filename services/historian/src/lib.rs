//! lentera-historian: MQTT → PostgreSQL, acknowledging only after commit.
//!
//! It subscribes (persistent session, manual acknowledgements, QoS 1) to telemetry, lamp
//! commands, lamp states, lamp modes, device status and the broker's refusal reports,
//! writes them in batches through `lentera_db::write::store`, and acknowledges each
//! message only once its batch has committed. A database outage therefore stalls the
//! stream instead of losing it; a message that can never be stored becomes a dead letter
//! (`rejected_readings`) and is reported on the device's error topic, so it stalls nothing.
//!
//! Layout:
//! - [`settings`]: `[historian]` and the shared sections.
//! - [`startup`]: admin port, ready file, migration with retry, MQTT session, shutdown.
//! - [`consume`]: the loop — classify, batch, write with retry, acknowledge; metrics.
//! - [`isolate`]: a batch PostgreSQL refuses is split until the refused rows are found.
//! - [`record`]: pure classification of one delivery into a `Record` or an error code.
//! - [`batch`]: pure "flush now?" decision by size and age, and the watch for batches
//!   capped by the broker's in-flight window.
//! - [`maintenance`]: month partitions created ahead; retention drops old months.

pub mod batch;
pub mod consume;
pub mod isolate;
pub mod maintenance;
pub mod record;
pub mod settings;
pub mod startup;

pub use settings::Settings;
