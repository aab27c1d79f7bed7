//! lentera-historian: MQTT → PostgreSQL, acknowledging only after commit.
//!
//! It subscribes (persistent session, manual acknowledgements, QoS 1) to telemetry, lamp
//! commands, lamp states, lamp modes and device status, writes them in batches through
//! `lentera_db::write::store`, and acknowledges each message only once its batch has
//! committed. A database outage therefore stalls the stream instead of losing it.
//!
//! Layout:
//! - [`settings`]: `[historian]` and the shared sections.
//! - [`startup`]: admin port, ready file, migration with retry, MQTT session, shutdown.
//! - [`consume`]: the loop — classify, batch, write with retry, acknowledge; metrics.
//! - [`record`]: pure classification of one delivery into a `Record` or an error code.
//! - [`batch`]: pure "flush now?" decision by size and age, and the watch for batches
//!   capped by the broker's in-flight window.
//! - [`maintenance`]: month partitions created ahead; retention drops old months.

pub mod batch;
pub mod consume;
pub mod maintenance;
pub mod record;
pub mod settings;
pub mod startup;

pub use settings::Settings;
