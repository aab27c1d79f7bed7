//! What a TCP board's state looks like from outside, across disconnects and restarts, on
//! our broker over real sockets: the retained `status` (`online` after HELLO, `offline`
//! after the board leaves — also when the broker was away at that moment, and when
//! ingest itself shuts down), and the lamp command a board gets right after HELLO when
//! the command changed while it was away — also while ingest was down.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{Line, Mqtt, TestApp, WAIT, settings};
use lentera_tests::TestBroker;
use rumqttc::QoS;

/// What a client subscribing now learns of `device`'s status: the broker's retained copy
/// (payload, retain flag, QoS), or `None` if nothing is retained.
async fn retained_status(port: u16, device: &str) -> Option<(String, bool, QoS)> {
    let topic = format!("lentera/{device}/status");
    let mut late = Mqtt::connect(port, &topic).await;
    let p = late
        .next_publish_within(&topic, Duration::from_millis(500))
        .await?;
    Some((
        String::from_utf8(p.payload.to_vec()).unwrap(),
        p.retain,
        p.qos,
    ))
}

/// Polls [`retained_status`] until it is `want` (retained, QoS 1) or `limit` passes.
async fn wait_retained(port: u16, device: &str, want: &str, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let got = retained_status(port, device).await;
        if got == Some((want.to_owned(), true, QoS::AtLeastOnce)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retained status of {device} is {got:?}, not {want:?} (retained, QoS 1)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A lamp controller: publishes `lentera/{device}/lamp/set` at QoS 1.
struct Controller(Mqtt);

impl Controller {
    async fn connect(port: u16) -> Controller {
        Controller(Mqtt::connect(port, "unused/#").await)
    }

    async fn set(&self, device: &str, payload: &'static str) {
        self.0
            .client
            .publish(
                format!("lentera/{device}/lamp/set"),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .unwrap();
    }

    /// Publishes until `board` (bound to `device`) gets `line` — ingest's SUBSCRIBE may
    /// still be in flight right after it is ready — then swallows the repeats.
    async fn set_until_relayed(&self, device: &str, payload: &'static str, board: &mut Line) {
        let line = if payload == "on" { "led-on" } else { "led-off" };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.set(device, payload).await;
            match board.recv_within(Duration::from_millis(300)).await {
                Some(Some(got)) => {
                    assert_eq!(got, line);
                    break;
                }
                Some(None) => panic!("board connection closed"),
                None => assert!(
                    tokio::time::Instant::now() < deadline,
                    "{line} never relayed"
                ),
            }
        }
        while board
            .recv_within(Duration::from_millis(200))
            .await
            .is_some()
        {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_retained_online_after_hello_and_offline_after_disconnect() {
    let broker = TestBroker::start();
    let port = broker.port();
    let app = TestApp::spawn(settings(port)).await;
    app.wait_ready().await;
    let topic = "lentera/board-1/status";
    let mut live = Mqtt::connect(port, topic).await;
    assert_eq!(retained_status(port, "board-1").await, None, "fresh broker");

    let mut board = Line::connect(app.tcp).await;
    assert_eq!(board.request("HELLO board-1").await, "OK");
    let p = live.next_publish(topic).await;
    assert_eq!(
        (&p.payload[..], p.retain),
        (&b"online"[..], false),
        "live copy"
    );
    assert_eq!(
        retained_status(port, "board-1").await,
        Some(("online".into(), true, QoS::AtLeastOnce)),
        "a subscriber arriving after the HELLO sees it retained"
    );

    drop(board);
    assert_eq!(live.next_on(topic).await, b"offline");
    assert_eq!(
        retained_status(port, "board-1").await,
        Some(("offline".into(), true, QoS::AtLeastOnce)),
        "a subscriber arriving after the disconnect sees offline retained"
    );
    app.shutdown().await;
}

/// The board leaves while the broker is down: ingest keeps `offline` until the broker is
/// back and has acknowledged it, instead of dropping it (the retained `online` from
/// before would otherwise stay forever: our broker keeps retained messages across a
/// restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_is_published_once_the_broker_is_back() {
    let mut broker = TestBroker::start();
    let port = broker.port();
    let app = TestApp::spawn(settings(port)).await;
    app.wait_ready().await;
    let mut board = Line::connect(app.tcp).await;
    assert_eq!(board.request("HELLO board-2").await, "OK");
    wait_retained(port, "board-2", "online", WAIT).await;

    tokio::task::block_in_place(|| broker.kill());
    drop(board);
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| broker.start_again());
    // Ingest reconnects (backoff up to 5 s), then the status task retries (up to 5 s).
    wait_retained(port, "board-2", "offline", Duration::from_secs(20)).await;
    app.shutdown().await;
}

/// Ingest shutting down closes its boards' connections and announces them offline
/// before it leaves the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_shutdown_leaves_its_boards_offline() {
    let broker = TestBroker::start();
    let port = broker.port();
    let app = TestApp::spawn(settings(port)).await;
    app.wait_ready().await;
    let mut board = Line::connect(app.tcp).await;
    assert_eq!(board.request("HELLO board-3").await, "OK");
    wait_retained(port, "board-3", "online", WAIT).await;
    app.shutdown().await;
    assert_eq!(board.recv().await, None, "closed by the shutdown");
    assert_eq!(
        retained_status(port, "board-3").await,
        Some(("offline".into(), true, QoS::AtLeastOnce))
    );
}

/// A board bound with HELLO disconnects; while it is away the lamp command changes; on
/// reconnect its HELLO is answered `OK` and then, at once, the current command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_back_after_a_command_change_gets_the_current_command_after_hello() {
    let broker = TestBroker::start();
    let port = broker.port();
    let app = TestApp::spawn(settings(port)).await;
    app.wait_ready().await;
    let controller = Controller::connect(port).await;

    let mut board = Line::connect(app.tcp).await;
    assert_eq!(board.request("HELLO lamp-4").await, "OK");
    controller
        .set_until_relayed("lamp-4", "on", &mut board)
        .await;
    drop(board);

    // A second board on its own topic marks when ingest has read the change: the relay
    // handles its subscription's messages in the order the broker delivers them.
    let mut probe = Line::connect(app.tcp).await;
    assert_eq!(probe.request("HELLO probe-4").await, "OK");
    controller.set("lamp-4", "off").await;
    controller.set("probe-4", "on").await;
    assert_eq!(probe.recv().await.as_deref(), Some("led-on"));

    let mut board = Line::connect(app.tcp).await;
    assert_eq!(board.request("HELLO lamp-4").await, "OK");
    assert_eq!(
        board.recv_within(Duration::from_secs(1)).await,
        Some(Some("led-off".to_owned())),
        "the command that changed while the board was away, right after HELLO"
    );
    assert_eq!(
        board.recv_within(Duration::from_millis(300)).await,
        None,
        "and nothing else"
    );
    app.shutdown().await;
}

/// The same while ingest itself is down: its persistent MQTT session makes the broker
/// keep the `lamp/set` published meanwhile, so the restarted ingest (same client id)
/// still tells the returning board the current command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_published_while_ingest_was_down_reaches_the_board_after_hello() {
    let broker = TestBroker::start();
    let port = broker.port();
    let s = settings(port);
    let app = TestApp::spawn(s.clone()).await;
    app.wait_ready().await;
    let controller = Controller::connect(port).await;
    let mut board = Line::connect(app.tcp).await;
    assert_eq!(board.request("HELLO lamp-5").await, "OK");
    controller
        .set_until_relayed("lamp-5", "on", &mut board)
        .await;
    app.shutdown().await;
    assert_eq!(board.recv().await, None);

    controller.set("lamp-5", "off").await;
    // The PUBACK is the broker's promise to queue it for ingest's session.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let app = TestApp::spawn(s).await;
    app.wait_ready().await;
    let mut board = Line::connect(app.tcp).await;
    assert_eq!(board.request("HELLO lamp-5").await, "OK");
    // Right after HELLO if ingest has already read its queued messages, else as soon as
    // it does (the board is bound by then): either way the next line, and no led-on.
    assert_eq!(
        board.recv().await.as_deref(),
        Some("led-off"),
        "the command published while ingest was down"
    );
    app.shutdown().await;
}

/// What a client subscribing now gets retained on `topic`, if anything (live messages,
/// such as ingest's probes on its bound-set topic, are skipped).
async fn retained(port: u16, topic: &str) -> Option<Vec<u8>> {
    let mut late = Mqtt::connect(port, topic).await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let p = late.next_publish_within(topic, left).await?;
        if p.retain {
            return Some(p.payload.to_vec());
        }
    }
}

/// Polls [`retained`] on `topic` until it is `want` (`None`: nothing retained).
async fn wait_retained_payload(port: u16, topic: &str, want: Option<&str>, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let got = retained(port, topic).await;
        if got.as_deref() == want.map(str::as_bytes) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retained on {topic}: {:?}, not {want:?}",
            got.map(|g| String::from_utf8_lossy(&g).into_owned())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishes `payload` retained at QoS 1 and waits for the broker to have it.
async fn publish_retained(port: u16, topic: &str, payload: &str) {
    let m = Mqtt::connect(port, "unused/#").await;
    m.client
        .publish(topic, QoS::AtLeastOnce, true, payload.as_bytes().to_vec())
        .await
        .unwrap();
    wait_retained_payload(port, topic, Some(payload), WAIT).await;
}

/// The retained bound set follows the boards bound to this instance, and a graceful
/// shutdown clears it after announcing them offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_set_follows_the_boards_and_shutdown_clears_it() {
    let broker = TestBroker::start();
    let port = broker.port();
    let bound = "lentera/.ingest/0/bound";
    let app = TestApp::spawn(settings(port)).await;
    app.wait_ready().await;
    wait_retained_payload(port, bound, Some("[]"), WAIT).await;

    let mut a = Line::connect(app.tcp).await;
    assert_eq!(a.request("HELLO set-a").await, "OK");
    let mut b = Line::connect(app.tcp).await;
    assert_eq!(b.request("HELLO set-b").await, "OK");
    wait_retained(port, "set-b", "online", WAIT).await;
    // An `online` goes out only after a set holding its device was acknowledged.
    wait_retained_payload(port, bound, Some(r#"["set-a","set-b"]"#), WAIT).await;
    drop(a);
    wait_retained(port, "set-a", "offline", WAIT).await;
    wait_retained_payload(port, bound, Some(r#"["set-b"]"#), WAIT).await;

    app.shutdown().await;
    assert_eq!(b.recv().await, None, "closed by the shutdown");
    wait_retained(port, "set-b", "offline", WAIT).await;
    assert_eq!(retained(port, bound).await, None, "the set is cleared");
}

/// A run that died left its set and its boards' `online` retained (staged here by
/// hand). The next run announces `offline` the boards that do not come back within the
/// grace period, keeps the one that says HELLO again, and leaves alone the one that is
/// in another instance's set (it moved there behind the load balancer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boards_of_a_dead_run_that_do_not_come_back_are_announced_offline() {
    let broker = TestBroker::start();
    let port = broker.port();
    for d in ["dead-1", "dead-2", "back-1", "moved-1"] {
        publish_retained(port, &format!("lentera/{d}/status"), "online").await;
    }
    publish_retained(
        port,
        "lentera/.ingest/0/bound",
        r#"["back-1","dead-1","dead-2","moved-1"]"#,
    )
    .await;
    publish_retained(port, "lentera/.ingest/1/bound", r#"["moved-1"]"#).await;
    let mut live = Mqtt::connect(port, "lentera/+/status").await;

    let mut s = settings(port);
    s.ingest.instances = 2;
    s.ingest.rebind_grace_secs = 2;
    let started = tokio::time::Instant::now();
    let app = TestApp::spawn(s).await;
    app.wait_ready().await;
    let mut back = Line::connect(app.tcp).await;
    assert_eq!(back.request("HELLO back-1").await, "OK");
    // During the grace period the set still holds the previous run's boards.
    wait_retained_payload(
        port,
        "lentera/.ingest/0/bound",
        Some(r#"["back-1","dead-1","dead-2","moved-1"]"#),
        WAIT,
    )
    .await;

    let mut offline = HashSet::new();
    while offline.len() < 2 {
        let p = tokio::time::timeout(WAIT, live.rx.recv())
            .await
            .expect("the dead boards announced in time")
            .unwrap();
        if p.retain {
            continue; // the staged copies, sent to the new subscription
        }
        let device = p.topic.split('/').nth(1).unwrap().to_owned();
        match &p.payload[..] {
            b"offline" => {
                assert!(
                    started.elapsed() >= Duration::from_secs(2),
                    "not before the grace period ends"
                );
                assert!(device.starts_with("dead-"), "{device} announced offline");
                offline.insert(device);
            }
            b"online" => assert_eq!(device, "back-1"),
            other => panic!("{device}: {other:?}"),
        }
    }
    wait_retained_payload(port, "lentera/.ingest/0/bound", Some(r#"["back-1"]"#), WAIT).await;
    for (d, want) in [
        ("dead-1", "offline"),
        ("dead-2", "offline"),
        ("back-1", "online"),
        ("moved-1", "online"),
    ] {
        wait_retained(port, d, want, WAIT).await;
    }
    app.shutdown().await;
}
