//! Identity across the whole platform, tried from outside as a stranger would: every
//! door (ingest's HTTP and TCP, the broker's MQTT, web's REST) refuses a missing, wrong
//! or unknown credential with one answer, a device cannot speak for another, and one
//! `lentera devices disable` closes every door to that device at once — its live TCP and
//! MQTT connections included. No token or password appears in any service's log.

use std::time::{Duration, Instant};

use lentera_tests::{Stack, identity};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, Incoming, MqttOptions, QoS};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(15);
/// A token of the right shape that no device has.
const STRANGER: &str = "lt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// One TCP request line and the code of its answer (`OK`, `ERR unauthorized`, … without
/// the human text after it), `None` when the connection closed instead.
async fn say(conn: &mut BufReader<TcpStream>, line: &str) -> Option<String> {
    conn.get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await
        .ok()?;
    let mut reply = String::new();
    match tokio::time::timeout(WAIT, conn.read_line(&mut reply)).await {
        Ok(Ok(n)) if n > 0 => Some(
            reply
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    }
}

async fn tcp(stack: &Stack) -> BufReader<TcpStream> {
    BufReader::new(
        TcpStream::connect(stack.ingest.addr("tcp").unwrap())
            .await
            .unwrap(),
    )
}

/// The CONNACK an MQTT 3.1.1 client gets, and the client if it was accepted.
async fn mqtt_connect(
    stack: &Stack,
    client_id: &str,
    creds: Option<(&str, &str)>,
) -> (ConnectReturnCode, AsyncClient, rumqttc::EventLoop) {
    let addr = stack.mqtt_addr();
    let mut o = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    if let Some((u, p)) = creds {
        o.set_credentials(u, p);
    }
    let (client, mut el) = AsyncClient::new(o, 10);
    let code = tokio::time::timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) => return ack.code,
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return code,
                Err(e) => panic!("{client_id}: {e}"),
            }
        }
    })
    .await
    .expect("a CONNACK");
    (code, client, el)
}

/// True when the event loop sees its connection end within `limit`.
async fn connection_ends(el: &mut rumqttc::EventLoop, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        loop {
            if el.poll().await.is_err() {
                return;
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_refuses_strangers_and_one_disable_closes_them_all() {
    let mut stack = Stack::start().await.expect("stack starts");
    let http = reqwest::Client::new();
    let readings = stack.readings_url();
    let ingest = stack.url(&stack.ingest, "http");
    let web = stack.url(stack.web(), "http");
    let gh = stack.provision("id-gh", "greenhouse").await.unwrap();
    let other = stack.provision("id-other", "greenhouse").await.unwrap();
    let lamp = stack.provision("id-lamp", "lamp").await.unwrap();
    let body = json!({"device": "id-gh", "temperature": 25.0});

    // HTTP: no token, a stranger's, another device's body: refused; the device's own: 202.
    let no_token = http.post(&readings).json(&body).send().await.unwrap();
    assert_eq!(no_token.status(), 401);
    assert!(no_token.headers().contains_key("www-authenticate"));
    let wrong = http.post(&readings).bearer_auth(STRANGER).json(&body);
    assert_eq!(wrong.send().await.unwrap().status(), 401);
    let path = format!("{ingest}/api/v1/devices/{STRANGER}/readings");
    assert_eq!(
        http.post(&path).json(&body).send().await.unwrap().status(),
        401
    );
    let as_other = http.post(&readings).bearer_auth(&other).json(&body);
    assert_eq!(as_other.send().await.unwrap().status(), 403);
    let own = http.post(&readings).bearer_auth(&gh).json(&body);
    assert_eq!(own.send().await.unwrap().status(), 202);

    // TCP: nothing before authentication; a wrong token binds nothing; a HELLO cannot
    // take another device's binding without its token.
    let mut c = tcp(&stack).await;
    assert_eq!(
        say(&mut c, "temperature=20").await.as_deref(),
        Some("ERR unauthorized")
    );
    assert_eq!(
        say(&mut c, &format!("HELLO id-lamp {other}"))
            .await
            .as_deref(),
        Some("ERR unauthorized")
    );
    assert_eq!(
        say(&mut c, &format!("AUTH {STRANGER}")).await.as_deref(),
        Some("ERR unauthorized")
    );
    let mut lamp_conn = tcp(&stack).await;
    assert_eq!(
        say(&mut lamp_conn, &format!("HELLO id-lamp {lamp}"))
            .await
            .as_deref(),
        Some("OK")
    );
    let mut gh_tcp = tcp(&stack).await;
    assert_eq!(
        say(&mut gh_tcp, &format!("AUTH {gh}")).await.as_deref(),
        Some("OK")
    );
    assert_eq!(
        say(&mut gh_tcp, "temperature=21").await.as_deref(),
        Some("OK")
    );

    // MQTT: anonymous, a stranger, a client id that is not the user name: refused.
    let (code, ..) = mqtt_connect(&stack, "anon", None).await;
    assert_ne!(code, ConnectReturnCode::Success);
    let (code, ..) = mqtt_connect(&stack, "id-gh", Some(("id-gh", STRANGER))).await;
    assert_ne!(code, ConnectReturnCode::Success);
    let (code, ..) = mqtt_connect(&stack, "id-other", Some(("id-gh", &gh))).await;
    assert_ne!(code, ConnectReturnCode::Success);
    let (code, board, mut board_el) = mqtt_connect(&stack, "id-gh", Some(("id-gh", &gh))).await;
    assert_eq!(code, ConnectReturnCode::Success);
    // Another device's command topic: SUBACK refuses it.
    board
        .subscribe("lentera/id-lamp/lamp/set", QoS::AtLeastOnce)
        .await
        .unwrap();
    let suback = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(Event::Incoming(Incoming::SubAck(ack))) = board_el.poll().await {
                return ack.return_codes;
            }
        }
    })
    .await
    .expect("a SUBACK");
    assert_eq!(suback, vec![rumqttc::SubscribeReasonCode::Failure]);

    // Web: no operator, no reading history; a viewer may read but not switch lamps.
    let mode = json!({"mode": "on"});
    let url = format!("{web}/api/v1/lamps/id-lamp/mode");
    assert_eq!(
        http.put(&url).json(&mode).send().await.unwrap().status(),
        401
    );
    let history = format!("{web}/api/v1/devices/id-gh/readings");
    assert_eq!(http.get(&history).send().await.unwrap().status(), 401);
    identity::cli(
        &stack.db.url,
        &["operators", "add", "id-viewer", "--role", "viewer"],
        "a viewer's password\n",
    )
    .await
    .unwrap();
    let viewer = identity::last_word(
        &identity::cli(&stack.db.url, &["tokens", "add", "id-viewer"], "")
            .await
            .unwrap(),
    )
    .unwrap();
    let r = http
        .get(&history)
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .put(&url)
        .bearer_auth(&viewer)
        .json(&mode)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Lamp modes are for lamps.
    let r = http
        .put(format!("{web}/api/v1/lamps/id-gh/mode"))
        .bearer_auth(stack.operator_token())
        .json(&mode)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // One disable closes every door to the device: its live MQTT and TCP connections
    // end, and its token is refused everywhere from then on.
    identity::cli(&stack.db.url, &["devices", "disable", "id-gh"], "")
        .await
        .unwrap();
    let disabled_at = Instant::now();
    assert!(
        connection_ends(&mut board_el, WAIT).await,
        "the disabled device's MQTT connection stayed open"
    );
    // Ingest says why (`ERR unauthorized …`) and closes. Each door hears of the disable
    // on its own (PostgreSQL NOTIFY): a line that reaches ingest before the notice did
    // may still be answered OK, so the board keeps sending until it is cut.
    let mut last = Some("OK".to_owned());
    while last.as_deref() == Some("OK") && disabled_at.elapsed() < WAIT {
        last = say(&mut gh_tcp, "temperature=22").await;
    }
    assert!(
        last.is_none() || last.as_deref() == Some("ERR unauthorized"),
        "{last:?}"
    );
    assert_eq!(say(&mut gh_tcp, "temperature=23").await, None, "TCP cut");
    assert!(disabled_at.elapsed() < Duration::from_secs(5));
    let r = http
        .post(&readings)
        .bearer_auth(&gh)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (code, ..) = mqtt_connect(&stack, "id-gh", Some(("id-gh", &gh))).await;
    assert_ne!(code, ConnectReturnCode::Success);
    let mut again = tcp(&stack).await;
    assert_eq!(
        say(&mut again, &format!("AUTH {gh}")).await.as_deref(),
        Some("ERR unauthorized")
    );
    // The other devices never noticed.
    assert_eq!(say(&mut lamp_conn, "lux=3").await.as_deref(), Some("OK"));

    // Secrets never reach a log.
    stack.terminate_all().unwrap();
    let secrets = [gh, other, lamp, viewer, stack.operator_token().to_owned()];
    let broker_log = stack.broker.log_text();
    assert!(
        secrets.iter().all(|s| !broker_log.contains(s.as_str())),
        "a token in the broker log"
    );
    for entry in std::fs::read_dir(&stack.dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap();
            for secret in &secrets {
                assert!(
                    !text.contains(secret.as_str()),
                    "a token is in {}",
                    path.display()
                );
            }
        }
    }
}
