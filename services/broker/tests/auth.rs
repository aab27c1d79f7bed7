//! Authentication and authorization end to end: the real broker with an auth file
//! (`tests/auth_common`), rumqttc MQTT 3.1.1 and 5 clients, and Mosquitto's
//! `mosquitto_pub` / `mosquitto_sub` as independent clients.

mod auth_common;
mod common;

use std::time::Duration;

use auth_common::*;
use common::{Broker, Client, WAIT};
use rumqttc::ConnectReturnCode as V3Code;
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5Code;

const QUIET: Duration = Duration::from_millis(700);

#[tokio::test]
async fn right_credentials_connect_and_wrong_password_or_unknown_user_are_refused() {
    let b = broker_with_auth(false).await;
    // MQTT 3.1.1: CONNACK 0, then 4 "bad user name or password" (MQTT 3.1.1 §3.2.2.3).
    let ok = v3_opts(&b, "gh-1", Some(("gh-1", GH1_PASSWORD)));
    assert_eq!(v3_connect_result(ok).await, Ok(()));
    let wrong = v3_opts(&b, "gh-1", Some(("gh-1", "not it")));
    assert_eq!(
        v3_connect_result(wrong).await,
        Err(V3Code::BadUserNamePassword)
    );
    let unknown = v3_opts(&b, "ghost", Some(("ghost", GH1_PASSWORD)));
    assert_eq!(
        v3_connect_result(unknown).await,
        Err(V3Code::BadUserNamePassword),
        "an unknown user gets the same answer as a wrong password"
    );
    // MQTT 5: 0x86 Bad User Name or Password.
    let ok = v5_opts(&b, "lamp-svc", Some(("lamp", LAMP_PASSWORD)));
    assert_eq!(v5_connect_result(ok).await, Ok(()));
    let wrong = v5_opts(&b, "lamp-svc", Some(("lamp", GH1_PASSWORD)));
    assert_eq!(
        v5_connect_result(wrong).await,
        Err(V5Code::BadUserNamePassword)
    );
    let unknown = v5_opts(&b, "x", Some(("nobody", "x")));
    assert_eq!(
        v5_connect_result(unknown).await,
        Err(V5Code::BadUserNamePassword)
    );
    let m = b.metrics().await;
    assert_eq!(
        metric(
            &m,
            "lentera_broker_connections_refused_total{reason=\"bad_credentials\"}"
        ),
        4,
        "{m}"
    );
    b.stop().await;
}

#[tokio::test]
async fn anonymous_clients_are_refused_unless_allowed() {
    // No user name [MQTT-3.1.2-19] with allow_anonymous = false: CONNACK 5 / 0x87.
    let b = broker_with_auth(false).await;
    assert_eq!(
        v3_connect_result(v3_opts(&b, "anon", None)).await,
        Err(V3Code::NotAuthorized)
    );
    assert_eq!(
        v5_connect_result(v5_opts(&b, "anon", None)).await,
        Err(V5Code::NotAuthorized)
    );
    let m = b.metrics().await;
    assert_eq!(
        metric(
            &m,
            "lentera_broker_connections_refused_total{reason=\"not_authorized\"}"
        ),
        2,
        "{m}"
    );
    b.stop().await;

    // Allowed: they connect, with the file's [anonymous] rules only.
    let b = broker_with_auth(true).await;
    let mut anon = V5::connect(v5_opts(&b, "anon", None)).await;
    assert_eq!(anon.subscribe("public/#").await, 1);
    assert_eq!(anon.subscribe("lentera/#").await, 0x87);
    assert_eq!(anon.publish_qos1("public/hello", b"hi").await.0, 0x00);
    assert_eq!(
        anon.publish_qos1("lentera/anon/telemetry", b"{\"lux\":1}")
            .await
            .0,
        0x87
    );
    b.stop().await;
}

#[tokio::test]
async fn client_id_substitution_lets_a_board_publish_to_its_own_topics_only() {
    let b = broker_with_auth(false).await;
    let mut lamp = Client::connect_v3(v3_opts(&b, "lamp-svc", Some(("lamp", LAMP_PASSWORD)))).await;
    assert_eq!(lamp.subscribe("lentera/+/telemetry", 1).await, 1);

    // MQTT 3.1.1: `lentera/%c/#` lets client `gh-1` publish under lentera/gh-1/…
    let mut gh1 = Client::connect_v3(v3_opts(&b, "gh-1", Some(("gh-1", GH1_PASSWORD)))).await;
    gh1.publish("lentera/gh-1/telemetry", b"{\"lux\":1}", 1, false)
        .await;
    gh1.expect_puback().await;
    let got = lamp.next_publish().await;
    assert_eq!(got.topic, "lentera/gh-1/telemetry");

    // …and not as another board. 3.1.1 has no negative PUBACK: the PUBACK comes as
    // usual and the message is dropped, counted as not_authorized.
    gh1.publish("lentera/gh-2/telemetry", b"{\"lux\":2}", 1, false)
        .await;
    gh1.expect_puback().await;
    assert!(
        lamp.try_next_publish(QUIET).await.is_none(),
        "a board must not publish as another"
    );

    // MQTT 5: the refusal is a PUBACK 0x87 with a reason string.
    let mut gh1_v5 = V5::connect(v5_opts(&b, "gh-1", Some(("gh-1", GH1_PASSWORD)))).await;
    let (code, why) = gh1_v5
        .publish_qos1("lentera/gh-2/telemetry", b"{\"lux\":1}")
        .await;
    assert_eq!(code, 0x87);
    assert!(why.unwrap_or_default().contains("not authorized"));
    assert_eq!(
        gh1_v5
            .publish_qos1("lentera/gh-1/status", b"online")
            .await
            .0,
        0x00
    );
    assert_eq!(
        lamp.try_next_publish(QUIET).await,
        None,
        "status is not telemetry"
    );

    // The same user under another client id gets that id's topics, not gh-1's.
    let mut other = V5::connect(v5_opts(&b, "gh-9", Some(("gh-1", GH1_PASSWORD)))).await;
    assert_eq!(
        other
            .publish_qos1("lentera/gh-1/telemetry", b"{\"lux\":1}")
            .await
            .0,
        0x87
    );
    assert_eq!(
        other
            .publish_qos1("lentera/gh-9/telemetry", b"{\"lux\":1}")
            .await
            .0,
        0x00
    );
    assert_eq!(lamp.next_publish().await.topic, "lentera/gh-9/telemetry");

    let m = b.metrics().await;
    assert_eq!(
        metric(
            &m,
            "lentera_broker_messages_dropped_total{reason=\"not_authorized\"}"
        ),
        3,
        "{m}"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_client_id_with_wildcards_gains_nothing_from_substitution() {
    // `lentera/%c/#` with client id `+` would read `lentera/+/#`: the rule is void instead.
    let b = broker_with_auth(false).await;
    let mut evil = V5::connect(v5_opts(&b, "+", Some(("gh-1", GH1_PASSWORD)))).await;
    assert_eq!(
        evil.publish_qos1("lentera/gh-2/telemetry", b"{\"lux\":1}")
            .await
            .0,
        0x87
    );
    assert_eq!(evil.subscribe("lentera/+/lamp/set").await, 0x87);
    b.stop().await;
}

#[tokio::test]
async fn subscriptions_outside_the_acl_are_refused_0x80_v3_and_0x87_v5() {
    let b = broker_with_auth(false).await;
    let mut gh1 = Client::connect_v3(v3_opts(&b, "gh-1", Some(("gh-1", GH1_PASSWORD)))).await;
    assert_eq!(gh1.subscribe("lentera/gh-1/lamp/set", 1).await, 1);
    // 0x80 is MQTT 3.1.1's only failure return code [MQTT-3.9.3-2].
    assert_eq!(gh1.subscribe("lentera/gh-2/lamp/set", 1).await, 0x80);
    assert_eq!(
        gh1.subscribe("lentera/+/lamp/set", 1).await,
        0x80,
        "wider than allowed"
    );
    assert_eq!(gh1.subscribe("#", 0).await, 0x80);

    // %u: ops may use users/ops/…, not users/other/….
    let mut ops = V5::connect(v5_opts(&b, "console", Some(("ops", OPS_PASSWORD)))).await;
    assert_eq!(ops.subscribe("users/ops/#").await, 1);
    assert_eq!(ops.subscribe("users/other/#").await, 0x87);
    assert_eq!(ops.subscribe("$share/g/users/ops/inbox").await, 1);
    assert_eq!(ops.subscribe("$share/g/users/other/inbox").await, 0x87);

    // A refused subscription delivers nothing.
    let mut lamp = V5::connect(v5_opts(&b, "lamp-svc", Some(("lamp", LAMP_PASSWORD)))).await;
    assert_eq!(lamp.publish_qos1("lentera/gh-2/lamp/set", b"on").await.0, 0);
    assert_eq!(lamp.publish_qos1("lentera/gh-1/lamp/set", b"on").await.0, 0);
    let got = gh1.next_publish().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("lentera/gh-1/lamp/set", &b"on"[..])
    );
    assert!(gh1.try_next_publish(QUIET).await.is_none());

    let m = b.metrics().await;
    assert_eq!(
        metric(
            &m,
            "lentera_broker_subscriptions_refused_total{reason=\"not_authorized\"}"
        ),
        5,
        "{m}"
    );
    b.stop().await;
}

#[tokio::test]
async fn a_refused_connect_does_not_take_over_the_session_of_its_client_id() {
    let b = broker_with_auth(false).await;
    let mut gh1 = Client::connect_v3(v3_opts(&b, "gh-1", Some(("gh-1", GH1_PASSWORD)))).await;
    assert_eq!(gh1.subscribe("lentera/gh-1/lamp/set", 1).await, 1);
    let impostor = v3_opts(&b, "gh-1", Some(("gh-1", "guess")));
    assert_eq!(
        v3_connect_result(impostor).await,
        Err(V3Code::BadUserNamePassword)
    );
    let mut lamp = V5::connect(v5_opts(&b, "lamp-svc", Some(("lamp", LAMP_PASSWORD)))).await;
    assert_eq!(
        lamp.publish_qos1("lentera/gh-1/lamp/set", b"off").await.0,
        0
    );
    assert_eq!(gh1.next_publish().await.payload, b"off", "still connected");
    b.stop().await;
}

#[tokio::test]
async fn a_will_on_a_topic_the_client_may_not_publish_to_refuses_the_connect() {
    let b = broker_with_auth(false).await;
    let mut o = v3_opts(&b, "gh-1", Some(("gh-1", GH1_PASSWORD)));
    o.set_last_will(rumqttc::LastWill::new(
        "lentera/gh-2/status",
        "offline",
        rumqttc::QoS::AtLeastOnce,
        true,
    ));
    assert_eq!(v3_connect_result(o).await, Err(V3Code::NotAuthorized));
    let mut o = v3_opts(&b, "gh-1", Some(("gh-1", GH1_PASSWORD)));
    o.set_last_will(rumqttc::LastWill::new(
        "lentera/gh-1/status",
        "offline",
        rumqttc::QoS::AtLeastOnce,
        true,
    ));
    assert_eq!(v3_connect_result(o).await, Ok(()), "its own status topic");
    b.stop().await;
}

#[tokio::test]
async fn nobody_publishes_into_sys_even_without_authentication() {
    // No auth file, anonymous allowed: everything goes, except `$SYS/`.
    let b = Broker::start().await;
    let mut c = V5::connect(v5_opts(&b, "anyone", None)).await;
    assert_eq!(
        c.publish_qos1("$SYS/broker/uptime", b"forged").await.0,
        0x87
    );
    assert_eq!(
        c.publish_qos1("lentera/x/telemetry", b"{\"lux\":1}")
            .await
            .0,
        0
    );
    // The retained value is the broker's (published at start), not the client's.
    assert_eq!(c.subscribe("$SYS/broker/uptime").await, 1);
    let (_, payload) = c.try_publish(WAIT).await.expect("the broker's uptime");
    let text = String::from_utf8(payload).unwrap();
    assert!(text.parse::<u64>().is_ok(), "{text:?}");
    b.stop().await;
}

#[tokio::test]
async fn mosquitto_clients_authenticate_and_are_held_to_the_acl() {
    const TEST: &str = "mosquitto_clients_authenticate_and_are_held_to_the_acl";
    let (Some(publ), Some(sub)) = (
        mosquitto_tool("mosquitto_pub", TEST),
        mosquitto_tool("mosquitto_sub", TEST),
    ) else {
        return;
    };
    let b = broker_with_auth(false).await;
    for version in ["mqttv311", "mqttv5"] {
        // The lamp service listens; gh-1 publishes its own telemetry and gh-2's.
        let listen = spawn_tool(
            &sub,
            args(
                &b,
                &[
                    "-V",
                    version,
                    "-i",
                    "lamp-svc",
                    "-u",
                    "lamp",
                    "-P",
                    LAMP_PASSWORD,
                    "-t",
                    "lentera/+/telemetry",
                    "-C",
                    "1",
                    "-W",
                    "5",
                    "-v",
                ],
            ),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        // A reading with its own ts: the broker's telemetry check passes it byte for byte.
        let reading = |device: &str| format!(r#"{{"{device}":1,"ts":"2026-11-22T01:00:00Z"}}"#);
        for device in ["gh-2", "gh-1"] {
            let topic = format!("lentera/{device}/telemetry");
            let payload = reading(device);
            let out = run_tool(
                &publ,
                args(
                    &b,
                    &[
                        "-V",
                        version,
                        "-i",
                        "gh-1",
                        "-u",
                        "gh-1",
                        "-P",
                        GH1_PASSWORD,
                        "-q",
                        "1",
                        "-t",
                        &topic,
                        "-m",
                        &payload,
                    ],
                ),
            )
            .await;
            // mosquitto_pub reports a v5 PUBACK 0x87 as a warning only; v3 cannot tell.
            let _ = out;
        }
        let out = listen.await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("lentera/gh-1/telemetry {}", reading("gh-1")),
            "{version}: only gh-1's own topic passes; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // A wrong password is refused, and mosquitto_pub says why.
        let out = run_tool(
            &publ,
            args(
                &b,
                &[
                    "-V",
                    version,
                    "-i",
                    "gh-1",
                    "-u",
                    "gh-1",
                    "-P",
                    "wrong",
                    "-t",
                    "lentera/gh-1/telemetry",
                    "-m",
                    "x",
                ],
            ),
        )
        .await;
        assert!(!out.status.success(), "{version}: wrong password accepted");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(
            err.contains("bad user name or password") || err.contains("not authori"),
            "{version}: {err}"
        );

        // Anonymous is refused (allow_anonymous = false).
        let out = run_tool(
            &publ,
            args(&b, &["-V", version, "-t", "public/x", "-m", "x"]),
        )
        .await;
        assert!(!out.status.success(), "{version}: anonymous accepted");
    }
    b.stop().await;
}

#[tokio::test]
async fn a_password_hashed_by_mosquitto_passwd_is_accepted() {
    const TEST: &str = "a_password_hashed_by_mosquitto_passwd_is_accepted";
    let Some(passwd) = mosquitto_tool("mosquitto_passwd", TEST) else {
        return;
    };
    let dir = temp_dir("passwd");
    let pw_file = dir.join("passwd");
    let out = run_tool(
        &passwd,
        vec![
            "-c".into(),
            "-b".into(),
            pw_file.display().to_string(),
            "board".into(),
            "from mosquitto".into(),
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let line = std::fs::read_to_string(&pw_file).unwrap();
    let hash = line.trim().strip_prefix("board:").unwrap().to_owned();
    let auth = dir.join("auth.toml");
    std::fs::write(
        &auth,
        format!("[[users]]\nusername = \"board\"\npassword = \"{hash}\"\n"),
    )
    .unwrap();
    let b = Broker::start_with(settings_with_auth(&auth, false)).await;
    let ok = v5_opts(&b, "b1", Some(("board", "from mosquitto")));
    assert_eq!(v5_connect_result(ok).await, Ok(()));
    let wrong = v5_opts(&b, "b1", Some(("board", "From mosquitto")));
    assert_eq!(
        v5_connect_result(wrong).await,
        Err(V5Code::BadUserNamePassword)
    );
    b.stop().await;
}

#[tokio::test]
async fn an_enhanced_authentication_method_is_refused_with_0x8c() {
    // Enhanced authentication is not offered [MQTT-4.12.0-1].
    let b = Broker::start().await;
    let mut o = v5_opts(&b, "scram", None);
    o.set_authentication_method(Some("SCRAM-SHA-1".into()));
    assert_eq!(
        v5_connect_result(o).await,
        Err(V5Code::BadAuthenticationMethod)
    );
    b.stop().await;
}

#[tokio::test]
async fn the_shipped_example_users_file_loads_once_hashes_are_filled_in() {
    use lentera_broker::auth::{Credentials, file::FileAuth, password};
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/broker-auth.example.toml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        FileAuth::from_toml(&text, false).is_err(),
        "placeholders must stop the broker"
    );
    let filled = text.replace("REPLACE_WITH_HASH", &password::hash_with(b"pw", 100));
    let auth = FileAuth::from_toml(&filled, false).unwrap();
    let login = async |client_id, user| {
        let creds = Credentials {
            client_id,
            username: Some(user),
            password: Some(b"pw".as_slice()),
        };
        lentera_broker::auth::Authenticator::authenticate(&auth, creds)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e:?}"))
    };
    // Boards are not in the file (they log in with device tokens), and no rule lets a
    // service speak as a board by picking its client id.
    let rules: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(
        !rules
            .iter()
            .any(|l| l.contains("[all_users]") || l.contains("%c"))
    );
    let historian = login("gh-1", "historian").await;
    assert!(historian.may_subscribe("lentera/+/telemetry"));
    assert!(historian.may_subscribe("lentera/+/error"));
    assert!(
        !historian.may_publish("lentera/gh-1/telemetry"),
        "least privilege"
    );
    let lamp = login("lentera-lamp", "lamp").await;
    assert!(lamp.may_publish("lentera/lamp-1/lamp/set"));
    assert!(!lamp.may_publish("lentera/lamp-1/lamp/mode"));
    let web = login("lentera-web", "web").await;
    assert!(web.may_publish("lentera/lamp-1/lamp/mode"));
    assert!(!web.may_publish("lentera/lamp-1/lamp/set"));
    let ingest = login("lentera-ingest", "ingest").await;
    assert!(ingest.may_publish("lentera/gh-1/telemetry"));
    assert!(ingest.may_subscribe("lentera/+/lamp/set"));
    assert!(!ingest.may_subscribe("lentera/#"));
    let ops = login("ops-1", "ops").await;
    assert!(ops.may_subscribe("$SYS/#"));
    assert!(!ops.may_publish("lentera/gh-1/lamp/set"), "read-only");
}

/// `auth_file_text()` plus one more user.
fn with_user(name: &str, pw: &str) -> String {
    format!(
        "{}\n[[users]]\nusername = \"{name}\"\npassword = \"{}\"\n",
        auth_file_text(),
        lentera_broker::auth::password::hash_with(pw.as_bytes(), 1000)
    )
}

#[tokio::test]
async fn reload_reads_the_auth_file_again_and_keeps_the_old_rules_when_it_is_broken() {
    let dir = temp_dir("reload");
    let file = dir.join("auth.toml");
    std::fs::write(&file, auth_file_text()).unwrap();
    let app = lentera_broker::startup::Application::build(settings_with_auth(&file, false))
        .await
        .unwrap();
    let auth = app.authenticator();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mqtt = app.mqtt_addr();
    let task = tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let opts = |user: &str, pw: &str| {
        let mut o = rumqttc::v5::MqttOptions::new(user, "127.0.0.1", mqtt.port());
        o.set_credentials(user, pw);
        o
    };
    let connected = V5::connect(opts("gh-1", GH1_PASSWORD)).await;
    assert_eq!(
        v5_connect_result(opts("gh-7", "seven")).await,
        Err(V5Code::BadUserNamePassword)
    );

    std::fs::write(&file, with_user("gh-7", "seven")).unwrap();
    auth.reload().unwrap();
    assert_eq!(v5_connect_result(opts("gh-7", "seven")).await, Ok(()));

    // A broken file is refused and the rules in force stay.
    std::fs::write(&file, "[[users]]\nusername = \"x\"\npassword = \"plain\"\n").unwrap();
    assert!(auth.reload().is_err());
    assert_eq!(v5_connect_result(opts("gh-7", "seven")).await, Ok(()));
    drop(connected);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_binary_rereads_the_auth_file_on_sighup() {
    use std::process::{Command, Stdio};
    let dir = temp_dir("sighup");
    let (file, ready) = (dir.join("auth.toml"), dir.join("ready.json"));
    std::fs::write(&file, auth_file_text()).unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(
        Command::new(env!("CARGO_BIN_EXE_lentera-broker"))
            .env("LENTERA_BROKER__MQTT_ADDR", "127.0.0.1:0")
            .env("LENTERA_AUTH__OPEN", "true")
            .env("LENTERA_BROKER__ADMIN_ADDR", "127.0.0.1:0")
            .env("LENTERA_BROKER__WS_ADDR", "")
            .env("LENTERA_BROKER__DATA_DIR", "")
            .env("LENTERA_BROKER__AUTH_FILE", &file)
            .env("LENTERA_BROKER__ALLOW_ANONYMOUS", "false")
            .env("LENTERA_READY_FILE", &ready)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let addrs: serde_json::Value = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            break serde_json::from_str(&text).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no ready file");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let port: u16 = addrs["mqtt"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    let opts = || {
        let mut o = rumqttc::MqttOptions::new("gh-7", "127.0.0.1", port);
        o.set_credentials("gh-7", "seven");
        o
    };
    assert_eq!(
        v3_connect_result(opts()).await,
        Err(V3Code::BadUserNamePassword)
    );
    std::fs::write(&file, with_user("gh-7", "seven")).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    // The reload happens on the broker's own time: poll briefly.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match v3_connect_result(opts()).await {
            Ok(()) => break,
            Err(code) if std::time::Instant::now() > deadline => {
                panic!("still refused after SIGHUP: {code:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn the_platform_services_client_connects_with_the_credentials_from_its_settings() {
    // What deploy/docker-compose.auth.yml sets: LENTERA_MQTT__USERNAME / __PASSWORD.
    let dir = temp_dir("services");
    let file = dir.join("auth.toml");
    let text = format!(
        "{}\npublish = [\"lentera/#\"]\nsubscribe = [\"lentera/#\"]\n",
        with_user("ingest", "ingest secret")
    );
    std::fs::write(&file, text).unwrap();
    let b = Broker::start_with(settings_with_auth(&file, false)).await;
    let mut lamp = V5::connect(v5_opts(&b, "lamp-svc", Some(("lamp", LAMP_PASSWORD)))).await;
    assert_eq!(lamp.subscribe("lentera/+/telemetry").await, 1);

    let service = |password: &str| {
        let settings = lentera_mqtt::MqttSettings {
            port: b.mqtt.port(),
            username: Some("ingest".into()),
            password: Some(password.into()),
            ..Default::default()
        };
        let ready = lentera_bootstrap::Observability::new("test").check("mqtt");
        let (client, _rx) = lentera_mqtt::Client::start(
            &settings,
            "lentera-ingest",
            true,
            false,
            vec![],
            Some(ready.clone()),
        );
        (client, ready)
    };
    let (client, ready) = service("ingest secret");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ready.get() {
        assert!(tokio::time::Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .publish_acked("lentera/gh-1/telemetry", false, b"{\"lux\":1}".to_vec())
        .await
        .expect("acknowledged");
    let (topic, _) = lamp.try_publish(WAIT).await.expect("delivered");
    assert_eq!(topic, "lentera/gh-1/telemetry");

    let (_wrong, ready) = service("not the secret");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !ready.get(),
        "a wrong password never makes the service ready"
    );
    b.stop().await;
}

#[tokio::test]
async fn deny_rules_refuse_one_topic_inside_an_allowed_wildcard() {
    // The operators' console may do anything under lentera/ except switch lamps (the
    // lamp service's job) and read the boards' tokens topic.
    let h = |pw: &str| lentera_broker::auth::password::hash_with(pw.as_bytes(), 1000);
    let dir = temp_dir("deny");
    let file = dir.join("auth.toml");
    let text = format!(
        r#"
[[users]]
username = "ops"
password = "{}"
publish = ["lentera/#"]
subscribe = ["lentera/#"]
deny_publish = ["lentera/+/lamp/set"]
deny_subscribe = ["lentera/+/secret"]
"#,
        h(OPS_PASSWORD)
    );
    std::fs::write(&file, text).unwrap();
    let b = Broker::start_with(settings_with_auth(&file, false)).await;
    let mut ops = V5::connect(v5_opts(&b, "console", Some(("ops", OPS_PASSWORD)))).await;
    assert_eq!(ops.subscribe("lentera/+/telemetry").await, 1);
    assert_eq!(ops.subscribe("lentera/gh-1/secret").await, 0x87);
    // Wide enough to receive the denied topic: refused whole, not granted with a hole.
    assert_eq!(ops.subscribe("lentera/#").await, 0x87);
    let (code, _) = ops.publish_qos1("lentera/lamp-1/lamp/set", b"on").await;
    assert_eq!(code, 0x87, "a denied publish is refused");
    let (code, _) = ops
        .publish_qos1("lentera/gh-1/telemetry", b"{\"t\":1}")
        .await;
    assert_eq!(code, 0, "the rest of the wildcard is still allowed");
    assert_eq!(
        ops.try_publish(WAIT).await.map(|p| p.0).as_deref(),
        Some("lentera/gh-1/telemetry")
    );
    // A malformed deny rule is an error at load, like any rule.
    let bad = format!(
        "[[users]]\nusername = \"x\"\npassword = \"{}\"\ndeny_publish = [\"a/#/b\"]\n",
        h("x")
    );
    assert!(lentera_broker::auth::file::FileAuth::from_toml(&bad, false).is_err());
    b.stop().await;
}
