//! The MQTT 5 features again, from an independent client: Eclipse Paho (Python) runs
//! `tests/paho/v5_conformance.py` against the in-process broker — CONNACK properties,
//! subscription identifiers, Retain As Published, No Local, forwarded properties, message
//! expiry, inbound topic aliases, and the will on DISCONNECT 0x04. The script names the
//! spec statement of each check.
//!
//! Needs `python3` with paho-mqtt 2.x (`python3 -m pip install 'paho-mqtt>=2,<3'`).
//! Without it the test says SKIPPING and passes, unless `LENTERA_REQUIRE_PAHO=1`, which
//! makes a missing Paho a failure (CI sets it, see scripts/lib/deps.sh).

mod common;

use std::process::Command;

use common::Broker;

const REQUIRE_PAHO: &str = "LENTERA_REQUIRE_PAHO";

fn paho_available() -> bool {
    Command::new("python3")
        .args(["-c", "import paho.mqtt.client, paho.mqtt.properties"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn paho_required() -> bool {
    std::env::var_os(REQUIRE_PAHO).is_some_and(|v| !v.is_empty() && v != "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_client_sees_the_mqtt5_features() {
    if !paho_available() {
        let how = "python3 -m pip install 'paho-mqtt>=2,<3'";
        if paho_required() {
            panic!("this test needs python3 with paho-mqtt and {REQUIRE_PAHO} is set ({how})");
        }
        eprintln!(
            "\n*** SKIPPING paho_client_sees_the_mqtt5_features: python3 with paho-mqtt is not \
             installed ({how}); this test did NOT run. Set {REQUIRE_PAHO}=1 to make this a \
             failure. ***\n"
        );
        return;
    }
    let broker = Broker::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/paho/v5_conformance.py");
    let port = broker.mqtt.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, &port])
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "paho script failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    broker.stop().await;
}
