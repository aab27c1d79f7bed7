//! Start-up without PostgreSQL: the historian stays up, reports not-ready, and still
//! stops promptly on shutdown.

mod common;

use std::time::{Duration, Instant};

use common::RunningApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_postgres_it_is_alive_but_not_ready_and_stops_promptly() {
    // Nothing listens on this port: PostgreSQL is "down".
    let dead = format!(
        "postgres://postgres:postgres@127.0.0.1:{}/x",
        common::free_port()
    );
    let dir = std::env::temp_dir().join(common::unique("hist_ready"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut settings = common::settings(&dead, common::free_port());
    settings.ready_file = Some(dir.join("ready.json"));
    let app = RunningApp::spawn(settings);

    let ready: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("ready.json")).unwrap()).unwrap();
    assert_eq!(ready["admin"], app.admin.to_string());
    assert_eq!(app.get("/healthz").await.0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["checks"]["database"], false);

    let started = Instant::now();
    app.stop();
    assert!(started.elapsed() < Duration::from_secs(5), "shutdown hung");
    let _ = std::fs::remove_dir_all(dir);
}
