//! A throw-away MQTT broker for the services' integration tests.
//!
//! [`TestBroker::start`] runs our own `lentera-broker` binary on OS-chosen ports, so the
//! tests exercise the broker that ships. [`TestBroker::mosquitto`] runs Debian's
//! Mosquitto instead, for the tests that prove the services work unchanged on another
//! broker (and for behaviour ours did not have yet; each such test says why).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{Service, tempdir};

/// Set (to anything but empty or `0`) to turn a missing `mosquitto` into a failure
/// instead of a skip; `scripts/test` sets it after installing Mosquitto.
pub const REQUIRE_MOSQUITTO: &str = "LENTERA_REQUIRE_MOSQUITTO";

/// A broker process on `127.0.0.1`, killed on drop. Its logs live in a temporary
/// directory that is removed on drop unless the test is panicking (then its path is
/// printed).
pub struct TestBroker {
    port: u16,
    kind: Kind,
    dir: PathBuf,
    /// How our broker decides who may connect (kept across restarts).
    identity: Vec<(String, String)>,
    process: Option<Process>,
}

#[derive(Clone, Copy)]
enum Kind {
    Ours,
    Mosquitto,
}

enum Process {
    Ours(Service),
    Mosquitto(Mosquitto),
}

impl Process {
    fn log(&self) -> &Path {
        match self {
            Process::Ours(s) => &s.log,
            Process::Mosquitto(m) => &m.log,
        }
    }
}

impl TestBroker {
    /// Our `lentera-broker` on port 0, returned once its ready file is written. Panics
    /// (with the broker's log) if it cannot start, e.g. when the binaries are not built.
    ///
    /// It runs open, explicitly: the services' own tests are about MQTT, not identity.
    /// The end-to-end stack uses [`TestBroker::start_closed`].
    pub fn start() -> TestBroker {
        Self::start_ours(vec![("LENTERA_AUTH__OPEN".into(), "true".into())])
    }

    /// Our broker as a deployment runs it: closed, services from `auth_file`, devices
    /// from the registry in `database_url`.
    /// `extra` settings come last (e.g. quotas).
    pub fn start_closed(
        database_url: &str,
        auth_file: &Path,
        extra: &[(String, String)],
    ) -> TestBroker {
        let mut env = vec![
            ("LENTERA_DATABASE__URL".into(), database_url.to_owned()),
            (
                "LENTERA_BROKER__AUTH_FILE".into(),
                auth_file.display().to_string(),
            ),
        ];
        env.extend_from_slice(extra);
        Self::start_ours(env)
    }

    fn start_ours(identity: Vec<(String, String)>) -> TestBroker {
        let dir = tempdir("broker").expect("a temporary directory for the broker");
        let service = spawn_ours(&dir, 0, &identity).unwrap_or_else(|e| panic!("{e:#}"));
        let port = service.addr("mqtt").expect("mqtt in ready file").port();
        TestBroker {
            port,
            kind: Kind::Ours,
            dir,
            identity,
            process: Some(Process::Ours(service)),
        }
    }

    /// Mosquitto on a free port, for tests that need what our broker lacks. `None`, after
    /// saying so loudly, when it is not installed — unless `LENTERA_REQUIRE_MOSQUITTO` is
    /// set, in which case a missing Mosquitto fails the test.
    pub fn mosquitto() -> Option<TestBroker> {
        let test = std::thread::current()
            .name()
            .unwrap_or("this test")
            .to_owned();
        let Some(bin) = mosquitto_binary() else {
            if mosquitto_required() {
                panic!(
                    "{test} needs `mosquitto` and {REQUIRE_MOSQUITTO} is set, but it is neither \
                     on PATH nor in /usr/sbin (apt-get install -y mosquitto)"
                );
            }
            eprintln!(
                "\n*** SKIPPING {test}: `mosquitto` is not installed (apt-get install -y \
                 mosquitto); this test did NOT run. Set {REQUIRE_MOSQUITTO}=1 to make this \
                 a failure. ***\n"
            );
            return None;
        };
        let dir = tempdir("mosquitto").expect("a temporary directory for mosquitto");
        let m = Mosquitto::spawn(&bin, &dir, None).unwrap_or_else(|e| panic!("{e:#}"));
        Some(TestBroker {
            port: m.port,
            kind: Kind::Mosquitto,
            dir,
            identity: Vec::new(),
            process: Some(Process::Mosquitto(m)),
        })
    }

    /// The MQTT port; stays the same across [`TestBroker::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port()`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// True for our `lentera-broker`, false for Mosquitto.
    pub fn is_ours(&self) -> bool {
        matches!(self.kind, Kind::Ours)
    }

    /// Our broker's process (its admin address, log), `None` for Mosquitto or while stopped.
    pub fn service(&self) -> Option<&Service> {
        match &self.process {
            Some(Process::Ours(s)) => Some(s),
            _ => None,
        }
    }

    /// The current process's log.
    pub fn log_text(&self) -> String {
        self.process
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p.log()).ok())
            .unwrap_or_default()
    }

    /// Kills the broker and starts a fresh one on the same MQTT port, so connected
    /// clients see the connection drop and must reconnect. Our broker keeps its store
    /// (persistent sessions, their queued messages, retained messages) in this broker's
    /// directory, so those survive; Mosquitto runs without persistence and forgets all.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// SIGKILL, as in a crash: nothing is flushed, no Last Will is withheld. No-op when
    /// already stopped.
    pub fn kill(&mut self) {
        self.process = None; // drop kills and reaps, which frees the port
    }

    /// SIGTERM, then waits (up to 20 s) for the broker to exit; returns its exit status.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        // The exited process is kept (until the next start) so its log can still be read.
        match self.process.as_mut().context("the broker is not running")? {
            Process::Ours(s) => s.terminate(),
            Process::Mosquitto(m) => m.terminate(),
        }
    }

    /// Starts the stopped broker again on the same MQTT port and data directory (killing
    /// it first if it still runs).
    pub fn start_again(&mut self) {
        self.process = None;
        let process = match self.kind {
            Kind::Ours => spawn_ours(&self.dir, self.port, &self.identity).map(Process::Ours),
            Kind::Mosquitto => mosquitto_binary()
                .context("mosquitto disappeared")
                .and_then(|bin| Mosquitto::spawn(&bin, &self.dir, Some(self.port)))
                .map(Process::Mosquitto),
        };
        self.process = Some(process.unwrap_or_else(|e| panic!("restarting the broker: {e:#}")));
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let log = self.process.take().map(|p| p.log().to_owned());
        if std::thread::panicking() {
            if let Some(log) = log {
                eprintln!("broker log kept: {}", log.display());
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn spawn_ours(
    dir: &Path,
    mqtt_port: u16,
    identity: &[(String, String)],
) -> anyhow::Result<Service> {
    let env = [
        (
            "LENTERA_BROKER__MQTT_ADDR",
            format!("127.0.0.1:{mqtt_port}"),
        ),
        ("LENTERA_BROKER__ADMIN_ADDR", "127.0.0.1:0".to_owned()),
        // With a fixed MQTT port (a restart) the WebSocket listener would default to
        // 8083, which two restarted brokers cannot both have.
        ("LENTERA_BROKER__WS_ADDR", "127.0.0.1:0".to_owned()),
        // Spelled out (it is also the default, relative to the working directory `dir`)
        // because restarts rely on finding the same store.
        (
            "LENTERA_BROKER__DATA_DIR",
            dir.join("data").display().to_string(),
        ),
        (
            "LENTERA_TELEMETRY__LOG",
            std::env::var("LENTERA_TEST_BROKER_LOG").unwrap_or_else(|_| "info".to_owned()),
        ),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    let mut env = env.to_vec();
    env.extend_from_slice(identity);
    Service::spawn("broker", dir, &env)
}

fn mosquitto_required() -> bool {
    std::env::var_os(REQUIRE_MOSQUITTO).is_some_and(|v| !v.is_empty() && v != "0")
}

fn mosquitto_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file())
}

/// A `mosquitto -p PORT -v` child, killed on drop.
struct Mosquitto {
    port: u16,
    child: Child,
    log: PathBuf,
}

impl Mosquitto {
    /// Starts on `port`, or on a free one (which another process may grab between our
    /// probe and Mosquitto's bind, hence the retries), and waits until it accepts TCP.
    fn spawn(bin: &Path, dir: &Path, port: Option<u16>) -> anyhow::Result<Mosquitto> {
        let log = dir.join("mosquitto.log");
        let mut last_error = None;
        for _ in 0..3 {
            let port = port.unwrap_or_else(free_port);
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)?;
            let child = Command::new(bin)
                .args(["-p", &port.to_string(), "-v"])
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| format!("spawning {}", bin.display()))?;
            let mut m = Mosquitto {
                port,
                child,
                log: log.clone(),
            };
            match m.wait_listening() {
                Ok(()) => return Ok(m),
                Err(e) => last_error = Some(e),
            }
        }
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        Err(last_error.expect("three attempts")).with_context(|| format!("log:\n{log}"))
    }

    fn wait_listening(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("mosquitto on port {} exited with {status}", self.port);
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("mosquitto did not listen on port {} in 10 s", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Mosquitto {
    fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("mosquitto did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on: bound by the OS, then released.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts_mqtt_connect(addr: SocketAddr) -> bool {
        use std::io::{Read, Write};
        // CONNECT, MQTT 3.1.1, clean session, keep-alive 5 s, client id "t".
        let connect = [
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 5, 0, 1, b't',
        ];
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut connack = [0u8; 4];
        s.write_all(&connect).is_ok()
            && s.read_exact(&mut connack).is_ok()
            && connack == [0x20, 2, 0, 0]
    }

    #[test]
    fn our_broker_serves_mqtt_and_restarts_on_the_same_port() {
        let mut broker = TestBroker::start();
        let addr = broker.addr();
        assert_ne!(addr.port(), 0);
        assert!(accepts_mqtt_connect(addr));
        // A client connected across the restart must not keep the port from rebinding.
        let _held = std::net::TcpStream::connect(addr).unwrap();
        broker.restart();
        assert_eq!(broker.addr(), addr);
        assert!(accepts_mqtt_connect(addr));
        let dir = broker.dir.clone();
        drop(broker);
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "killed on drop"
        );
        assert!(!dir.exists(), "logs removed after a passing test");
    }

    #[test]
    fn mosquitto_runs_when_installed_or_required() {
        let Some(broker) = TestBroker::mosquitto() else {
            assert!(!mosquitto_required());
            return;
        };
        assert!(accepts_mqtt_connect(broker.addr()));
    }
}
