//! The real lamp controller against our broker (a real process) and real MQTT clients
//! playing boards.

mod common;

use std::time::Duration;

use common::{Board, RunningApp};
use lentera_tests::TestBroker;

/// Publishes a lux reading for `device` until a command arrives (the controller may not
/// have subscribed yet when the first one is sent), and returns that command.
async fn lux_until_command(board: &mut Board, device: &str, lux: f64) -> (String, String) {
    for _ in 0..50 {
        board
            .publish(
                &format!("lentera/{device}/telemetry"),
                &format!(r#"{{"lux":{lux}}}"#),
                false,
            )
            .await;
        if let Ok(Some(c)) =
            tokio::time::timeout(Duration::from_millis(200), board.commands.recv()).await
        {
            return c;
        }
    }
    panic!("no command for {device}");
}

fn lamp<'a>(view: &'a serde_json::Value, device: &str) -> &'a serde_json::Value {
    view["lamps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["device"] == device)
        .unwrap_or_else(|| panic!("{device} not in {view}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lux_hysteresis_override_and_resend_drive_the_lamp_set_topic() {
    let broker = TestBroker::start();
    let mut board = Board::connect(broker.port()).await;
    let app = RunningApp::spawn(common::settings(broker.port()));
    app.wait_ready().await;

    // Dark → on.
    assert_eq!(
        lux_until_command(&mut board, "lamp-1", 2.0).await,
        ("lamp-1".into(), "on".into())
    );
    // Between the thresholds → no change; a non-lamp device's darkness is ignored.
    board
        .publish("lentera/lamp-1/telemetry", r#"{"lux":20}"#, false)
        .await;
    board
        .publish("lentera/gh-1/telemetry", r#"{"lux":1}"#, false)
        .await;
    board.publish("lentera/lamp-1/lamp/state", "on", true).await;
    assert!(board.quiet_for(1500).await, "nothing to command");
    // Bright → off.
    board
        .publish("lentera/lamp-1/telemetry", r#"{"lux":50}"#, false)
        .await;
    assert_eq!(board.next_command(5).await, ("lamp-1".into(), "off".into()));
    board
        .publish("lentera/lamp-1/lamp/state", "off", true)
        .await;

    // An operator override wins over the bright reading.
    board
        .publish("lentera/lamp-1/lamp/mode", r#"{"mode":"on"}"#, true)
        .await;
    assert_eq!(board.next_command(5).await, ("lamp-1".into(), "on".into()));
    // The board still reports off: the command is re-sent after resend_secs (1 s).
    assert_eq!(board.next_command(5).await, ("lamp-1".into(), "on".into()));

    let (status, body) = app.get("/lamps").await;
    assert_eq!(status, 200);
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    let l = lamp(&view, "lamp-1");
    assert_eq!(l["desired"], "on");
    assert_eq!(l["reported"], "off");
    assert_eq!(l["reason"], "override");
    assert_eq!(l["mode"]["mode"], "on");
    assert_eq!(l["last_lux"], 50.0);
    assert!(
        view["lamps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["device"] != "gh-1"),
        "gh-1 is not a lamp"
    );

    // Board confirms: no more re-sends.
    board.publish("lentera/lamp-1/lamp/state", "on", true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    while board.commands.try_recv().is_ok() {}
    assert!(
        board.quiet_for(2500).await,
        "confirmed state is not re-sent"
    );

    let (_, metrics) = app.get("/metrics").await;
    assert!(metrics.contains("lentera_lamp_resends_total "), "{metrics}");
    assert!(
        !metrics.contains("lentera_lamp_resends_total 0\n"),
        "{metrics}"
    );
    app.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_override_is_respected_from_the_first_command_after_restart() {
    let broker = TestBroker::start();
    let mut board = Board::connect(broker.port()).await;
    // Set while the controller is not running; the broker keeps it (retained).
    board
        .publish("lentera/lamp-2/lamp/mode", r#"{"mode":"off"}"#, true)
        .await;
    board.publish("lentera/lamp-2/lamp/state", "on", true).await;
    let app = RunningApp::spawn(common::settings(broker.port()));
    app.wait_ready().await;

    // Dark, but the operator said off: the very first command must be off.
    assert_eq!(
        lux_until_command(&mut board, "lamp-2", 1.0).await,
        ("lamp-2".into(), "off".into())
    );

    // The board obeys; drain any re-send that raced with its report.
    board
        .publish("lentera/lamp-2/lamp/state", "off", true)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    while board.commands.try_recv().is_ok() {}

    // Back to auto: the dark reading now decides.
    board
        .publish("lentera/lamp-2/lamp/mode", r#"{"mode":"auto"}"#, true)
        .await;
    assert_eq!(board.next_command(5).await, ("lamp-2".into(), "on".into()));
    app.stop();
}
