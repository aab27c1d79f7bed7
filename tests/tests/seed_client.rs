//! The course's own HTTP client (`tests/seed/client.py`, copied unchanged from the seed)
//! runs against ingest's `POST /sensor`, and its five temperatures are stored.
//!
//! The seed's client sends no token, so this runs ingest the way the demo does: open,
//! through the explicit `auth.open` setting, which ingest announces with a warning.
//! Closed (the default), `/sensor` answers it 401 — checked here too.
//!
//! Needs `python3` with `requests`; `scripts/test` installs them and sets
//! `LENTERA_REQUIRE_PYTHON`, under which their absence fails the test instead of
//! skipping it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lentera_tests::Stack;

const REQUIRE_PYTHON: &str = "LENTERA_REQUIRE_PYTHON";
/// The one literal rewritten in the copy that runs (see tests/seed/README.md).
const SEED_URL: &str = "'http://localhost:5000/sensor'";
const DEVICE: &str = "seed-board";

/// True when `python3` can import `requests`; otherwise skips loudly, or panics when
/// `LENTERA_REQUIRE_PYTHON` is set.
fn python_with_requests() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import requests"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let required = std::env::var_os(REQUIRE_PYTHON).is_some_and(|v| !v.is_empty() && v != "0");
        assert!(
            !required,
            "python3 with `requests` is missing (apt-get install -y python3-requests, or \
             pip install requests) and {REQUIRE_PYTHON} is set"
        );
        eprintln!(
            "\n*** SKIPPING the seed client.py test: python3 with `requests` is not installed; \
             this test did NOT run. Set {REQUIRE_PYTHON}=1 to make this a failure. ***\n"
        );
    }
    ok
}

/// Runs `python3 script` in `dir`, killing it after `limit`; returns its stdout.
fn run_python(dir: &Path, script: &str, limit: Duration) -> String {
    let mut child = Command::new("python3")
        .arg(script)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 starts");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("client.py did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "client.py exited with {}:\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_client_py_runs_unchanged_and_its_temperatures_are_stored() {
    if !python_with_requests() {
        return;
    }
    let stack = Stack::builder()
        .readings_only()
        .env("ingest", "LENTERA_INGEST__SEED_DEVICE", DEVICE)
        .env("ingest", "LENTERA_AUTH__OPEN", "true")
        .start()
        .await
        .expect("stack starts");

    let original =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("seed/client.py"))
            .unwrap();
    assert_eq!(
        original.matches(SEED_URL).count(),
        1,
        "client.py no longer holds the seed's URL literal {SEED_URL}"
    );
    let port = stack.ingest.addr("http").unwrap().port();
    let run_dir = lentera_tests::tempdir("seed-client").unwrap();
    std::fs::write(
        run_dir.join("client.py"),
        original.replace(SEED_URL, &format!("'http://127.0.0.1:{port}/sensor'")),
    )
    .unwrap();

    let stdout = tokio::task::spawn_blocking({
        let dir = run_dir.clone();
        move || run_python(&dir, "client.py", Duration::from_secs(30))
    })
    .await
    .unwrap();
    // As Python printed them ("32.0", not "32"): the answer echoes the same text.
    let printed: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("[Client] Mengirim suhu: "))
        .map(|rest| rest.split_whitespace().next().unwrap())
        .collect();
    let sent: Vec<f64> = printed.iter().map(|t| t.parse().unwrap()).collect();
    assert_eq!(sent.len(), 5, "five temperatures sent:\n{stdout}");
    // Each answer as the seed's own Flask server gave it (key order aside).
    let answers: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("[Server] Respon: "))
        .collect();
    assert_eq!(answers.len(), 5, "five answers:\n{stdout}");
    for (suhu, answer) in printed.iter().zip(&answers) {
        assert!(
            answer.contains("'status': 'success'")
                && answer.contains(&format!("'message': 'Suhu {suhu} diterima'")),
            "the seed server's answer for {suhu}, got {answer}"
        );
    }

    // Stored as `temperature` of the seed device, each once.
    let pool = stack.db.connect().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let stored = loop {
        let values: Vec<f64> = sqlx::query_scalar(
            "SELECT value FROM readings WHERE device = $1 AND metric = 'temperature' ORDER BY ts",
        )
        .bind(DEVICE)
        .fetch_all(&pool)
        .await
        .unwrap();
        if values.len() >= sent.len() || Instant::now() > deadline {
            break values;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(stored, sent, "stored temperatures, in order");
    // Open only because it was asked to, and it says so.
    let log = stack.ingest.log_text();
    assert!(
        log.contains("WARN") && log.contains("auth.open = true"),
        "an open ingest warns at start:\n{log}"
    );
    let _ = std::fs::remove_dir_all(run_dir);
}

/// Closed, as every service is by default, the same request the seed's client makes
/// is refused: `/sensor` needs the board's token like every other door.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_sensor_needs_a_token() {
    let stack = Stack::builder()
        .readings_only()
        .env("ingest", "LENTERA_INGEST__SEED_DEVICE", DEVICE)
        .start()
        .await
        .expect("stack starts");
    let url = format!("{}/sensor", stack.url(&stack.ingest, "http"));
    let http = reqwest::Client::new();
    let body = serde_json::json!({"suhu": 27.5});
    let r = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let token = stack.provision(DEVICE, "greenhouse").await.unwrap();
    let r = http
        .post(&url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}
