//! Passwords and tokens never reach the web log: everything web (and the libraries it
//! uses) logs at TRACE during logins, failed logins, API token use, device provisioning
//! and rotation is captured and searched for every secret involved.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use support::{PASSWORD, TestApp};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_password_or_token_appears_in_the_log() {
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let app = TestApp::spawn().await;
    let mut secrets = vec![PASSWORD.to_owned(), app.token.clone()];
    let post_login = |name: &str, password: &str| {
        app.anon
            .post(app.url("/api/v1/session"))
            .json(&json!({"name": name, "password": password}))
            .send()
    };
    // A password typed into the name field, and a wrong one.
    let typo = "hunter2-typed-in-the-name-field";
    secrets.push(typo.to_owned());
    assert_eq!(post_login(typo, PASSWORD).await.unwrap().status(), 401);
    let wrong = "my-wrong-password-9431";
    secrets.push(wrong.to_owned());
    assert_eq!(post_login("op", wrong).await.unwrap().status(), 401);
    let ok = post_login("op", PASSWORD).await.unwrap();
    assert_eq!(ok.status(), 200);
    let cookie = ok.headers()["set-cookie"].to_str().unwrap().to_owned();
    let session = cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("lentera_session=")
        .unwrap()
        .to_owned();
    secrets.push(session.clone());

    let r: Value = app
        .http
        .post(app.url("/api/v1/devices"))
        .json(&json!({"id": "gh-1", "kind": "greenhouse"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    secrets.push(r["token"].as_str().unwrap().to_owned());
    let r: Value = app
        .anon
        .post(app.url("/api/v1/devices/gh-1/token"))
        .header("cookie", format!("lentera_session={session}"))
        .header("x-requested-with", "test")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    secrets.push(r["token"].as_str().unwrap().to_owned());
    let r = app
        .anon
        .delete(app.url("/api/v1/session"))
        .header("cookie", format!("lentera_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    app.stop().await;

    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    assert!(text.contains("operator logged in"), "the log was captured");
    assert!(text.contains("device provisioned"), "the log was captured");
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "{s:?} is in the log");
        // Not even the random part of a token.
        if let Some(random) = s.strip_prefix("lt_") {
            assert!(
                !text.contains(&random[..12]),
                "part of a token is in the log"
            );
        }
    }
}
