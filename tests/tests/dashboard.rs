//! The dashboard in a real browser: headless Chromium, driven over the DevTools protocol,
//! shows what a board sends, live over `/ws`, without reloading the page.
//!
//! Needs Debian's `chromium`; `scripts/test` installs it and sets `LENTERA_REQUIRE_CHROMIUM`,
//! under which a missing browser fails the test instead of skipping it.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lentera_tests::Stack;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);

fn chromium() -> Option<&'static str> {
    let found = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    if found.is_none() {
        assert!(
            std::env::var_os("LENTERA_REQUIRE_CHROMIUM").is_none(),
            "chromium is not installed (apt-get install chromium) and LENTERA_REQUIRE_CHROMIUM is set"
        );
        eprintln!("!!! SKIPPING the dashboard browser test: chromium is not installed");
    }
    found
}

/// A headless browser page, driven over the Chrome DevTools Protocol.
struct Page {
    _browser: Browser,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

/// The browser process, killed on drop.
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Page {
    async fn open(bin: &str) -> Page {
        let profile = lentera_tests::tempdir("chromium").unwrap();
        let mut child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        // Chromium announces its DevTools endpoint on stderr; keep draining it afterwards.
        let stderr = child.stderr.take().unwrap();
        let browser = Browser(child);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(url) = line.strip_prefix("DevTools listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let endpoint = tokio::time::timeout(WAIT, rx)
            .await
            .expect("DevTools endpoint in time")
            .expect("chromium exited without a DevTools endpoint");
        let host = endpoint
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        let targets: Value = reqwest::get(format!("http://{host}/json/list"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page_url = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("a page target")
            .to_owned();
        let (ws, _) = tokio_tungstenite::connect_async(&page_url).await.unwrap();
        Page {
            _browser: browser,
            ws,
            next_id: 1,
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let frame = self.ws.next().await.expect("devtools open").unwrap();
            if let Message::Text(t) = frame {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["id"] == id {
                    return v["result"].clone();
                }
            }
        }
    }

    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Waits until `expression` evaluates to `true` in the page.
    async fn wait_for(&mut self, expression: &str) {
        let start = std::time::Instant::now();
        while self.eval(expression).await != Value::Bool(true) {
            let text = self.eval("document.body.innerText").await;
            assert!(
                start.elapsed() < WAIT,
                "page never satisfied {expression}; it shows:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_new_reading_live_in_a_real_browser() {
    let Some(bin) = chromium() else { return };
    let stack = Stack::start().await.expect("stack starts");
    let http = reqwest::Client::new();
    let ingest = stack.url(&stack.ingest, "http");
    let gh1 = stack.provision("gh-1", "greenhouse").await.unwrap();
    let gh7 = stack.provision("gh-7", "greenhouse").await.unwrap();
    let post = |device: &'static str, token: &str, t: f64| {
        http.post(format!("{ingest}/api/v1/readings"))
            .bearer_auth(token)
            .json(&json!({"device": device, "temperature": t, "humidity": 64.0}))
            .send()
    };
    assert_eq!(post("gh-1", &gh1, 24.25).await.unwrap().status(), 202);

    let mut page = Page::open(bin).await;
    page.call("Page.enable", json!({})).await;
    page.call(
        "Page.navigate",
        json!({"url": stack.url(stack.web(), "http")}),
    )
    .await;
    // Closed (the default): the page asks who you are. The stack's operator logs in
    // with the form, as a person would; the session cookie then carries REST and /ws.
    page.wait_for("document.querySelector('#login-name') !== null")
        .await;
    page.eval(
        "document.querySelector('#login-name').value = 'tester';
         document.querySelector('#login-password').value = \"tester's password\";
         document.querySelector('#login-submit').click(); true",
    )
    .await;
    page.wait_for("document.querySelector('#user').textContent.includes('tester')")
        .await;
    // Initial state from REST, then the live stream connects.
    page.wait_for(
        "document.body.innerText.includes('gh-1') && document.body.innerText.includes('24.3')",
    )
    .await;
    page.wait_for("document.querySelector('#conn').textContent.trim() === 'live'")
        .await;

    // A new device and a new value arrive over /ws, with no reload.
    assert_eq!(post("gh-7", &gh7, 31.75).await.unwrap().status(), 202);
    page.wait_for(
        "document.body.innerText.includes('gh-7') && document.body.innerText.includes('31.8')",
    )
    .await;
    assert_eq!(
        page.eval("performance.getEntriesByType('navigation').length")
            .await,
        1
    );
}
