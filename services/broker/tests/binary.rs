//! The built binary as deployed: port 0, the ready file, and SIGTERM with a client still
//! connected.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Client;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

fn wait_for_ready_file(path: &PathBuf) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text).expect("ready file is JSON");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("ready file {} never appeared", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_writes_ready_file_serves_mqtt_and_exits_on_sigterm() {
    let ready =
        std::env::temp_dir().join(format!("lentera-broker-ready-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&ready);
    let child = Command::new(env!("CARGO_BIN_EXE_lentera-broker"))
        .env("LENTERA_BROKER__MQTT_ADDR", "127.0.0.1:0")
        .env("LENTERA_BROKER__ADMIN_ADDR", "127.0.0.1:0")
        .env("LENTERA_READY_FILE", &ready)
        .env("LENTERA_BROKER__DATA_DIR", "")
        .env_remove("LENTERA_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let addrs = wait_for_ready_file(&ready);
    let mqtt: std::net::SocketAddr = addrs["mqtt"].as_str().unwrap().parse().unwrap();
    let admin = addrs["admin"].as_str().unwrap();
    assert_ne!(mqtt.port(), 0);

    let status = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);

    let mut opts = rumqttc::MqttOptions::new("bin-sub", "127.0.0.1", mqtt.port());
    opts.set_keep_alive(Duration::from_secs(10));
    let mut sub = Client::connect_v3(opts).await;
    sub.subscribe("lentera/#", 1).await;
    sub.publish("lentera/bin/status", b"online", 1, false).await;
    assert_eq!(sub.next_publish().await.payload, b"online");

    // SIGTERM with the subscriber still connected: the broker must still exit promptly
    // (docker stop gives 10 s before SIGKILL).
    let started = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &running.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = loop {
        if let Some(s) = running.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "broker did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit}");
    let _ = std::fs::remove_file(&ready);
}

#[test]
fn hash_password_prints_a_hash_the_broker_accepts() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_lentera-broker"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"open sesame\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    let parsed = lentera_broker::auth::password::PasswordHash::parse(hash.trim()).unwrap();
    assert!(
        parsed.verify(b"open sesame"),
        "the newline is not part of it"
    );
    assert!(!parsed.verify(b"open sesame\n"));
}
