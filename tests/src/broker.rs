//! A throw-away MQTT broker for the services' integration tests.
//!
//! [`TestBroker::start`] runs our own `lentera-broker` binary on OS-chosen ports, so the
//! tests exercise the broker that ships. [`TestBroker::mosquitto`] runs Debian's
//! Mosquitto instead, and [`TestBroker::rumqttd`] rumqttd 0.20.0 (a Rust broker from
//! crates.io, built by `scripts/test`): two independent implementations, for the tests
//! that prove the services work unchanged on another broker (and for behaviour ours did
//! not have yet; each such test says why). [`BrokerKind`] names the three, so one test
//! body can run on each.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{Service, tempdir};

/// Set (to anything but empty or `0`) to turn a missing `mosquitto` into a failure
/// instead of a skip; `scripts/test` sets it after installing Mosquitto.
pub const REQUIRE_MOSQUITTO: &str = "LENTERA_REQUIRE_MOSQUITTO";

/// Set (to anything but empty or `0`) to turn a missing `rumqttd` into a failure instead
/// of a skip; `scripts/test` sets it after building rumqttd (`ensure_rumqttd`).
pub const REQUIRE_RUMQTTD: &str = "LENTERA_REQUIRE_RUMQTTD";

/// The path of the `rumqttd` binary to run, when it is not where `scripts/test` puts it.
pub const RUMQTTD_BIN: &str = "LENTERA_RUMQTTD";

/// The rumqttd release the tests are written against (`scripts/lib/deps.sh` builds it).
pub const RUMQTTD_VERSION: &str = "0.20.0";

/// Which broker a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Our `lentera-broker`, closed, as deployed.
    Ours,
    /// Debian's Mosquitto (C), no authentication, no persistence.
    Mosquitto,
    /// rumqttd 0.20.0 (Rust, crates.io), no authentication, sessions in memory only.
    Rumqttd,
}

/// A broker process on `127.0.0.1`, killed on drop. Its logs live in a temporary
/// directory that is removed on drop unless the test is panicking (then its path is
/// printed).
pub struct TestBroker {
    port: u16,
    kind: BrokerKind,
    dir: PathBuf,
    /// How our broker decides who may connect (kept across restarts).
    identity: Vec<(String, String)>,
    process: Option<Process>,
}

enum Process {
    Ours(Service),
    /// Mosquitto or rumqttd.
    Foreign(Foreign),
}

impl Process {
    fn log(&self) -> &Path {
        match self {
            Process::Ours(s) => &s.log,
            Process::Foreign(m) => &m.log,
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Process::Ours(s) => s.pid(),
            Process::Foreign(m) => m.child.id(),
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
        Self::start_with(&[])
    }

    /// [`TestBroker::start`] with more settings (`LENTERA_BROKER__MAX_INFLIGHT`, …).
    pub fn start_with(extra: &[(String, String)]) -> TestBroker {
        let mut env = vec![("LENTERA_AUTH__OPEN".into(), "true".into())];
        env.extend_from_slice(extra);
        Self::start_ours(env)
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
            kind: BrokerKind::Ours,
            dir,
            identity,
            process: Some(Process::Ours(service)),
        }
    }

    /// Mosquitto on a free port, for tests that need what our broker lacks. `None`, after
    /// saying so loudly, when it is not installed — unless `LENTERA_REQUIRE_MOSQUITTO` is
    /// set, in which case a missing Mosquitto fails the test.
    pub fn mosquitto() -> Option<TestBroker> {
        Self::foreign(BrokerKind::Mosquitto)
    }

    /// rumqttd 0.20.0 on a free port (MQTT 3.1.1 listener, no authentication: it takes
    /// any user name and password, like [`TestBroker::mosquitto`]). `None`, after saying
    /// so loudly, when it is not built — unless `LENTERA_REQUIRE_RUMQTTD` is set, in which
    /// case a missing rumqttd fails the test. It is looked for at `$LENTERA_RUMQTTD`, then
    /// where `scripts/test` builds it from `tests/brokers/rumqttd`
    /// (`target/brokers/debug/rumqttd`), then on `PATH`.
    pub fn rumqttd() -> Option<TestBroker> {
        Self::foreign(BrokerKind::Rumqttd)
    }

    /// A broker of `kind`: ours open (as [`TestBroker::start`]), or a third-party one as
    /// [`TestBroker::mosquitto`] / [`TestBroker::rumqttd`] (`None` when skipped).
    pub fn of(kind: BrokerKind) -> Option<TestBroker> {
        match kind {
            BrokerKind::Ours => Some(Self::start()),
            _ => Self::foreign(kind),
        }
    }

    fn foreign(kind: BrokerKind) -> Option<TestBroker> {
        let test = std::thread::current()
            .name()
            .unwrap_or("this test")
            .to_owned();
        let Some(bin) = foreign_binary(kind) else {
            let (name, var, how) = match kind {
                BrokerKind::Rumqttd => (
                    "rumqttd",
                    REQUIRE_RUMQTTD,
                    "scripts/test builds it; by hand: cargo build --locked --manifest-path \
                     tests/brokers/rumqttd/Cargo.toml --target-dir target/brokers",
                ),
                _ => (
                    "mosquitto",
                    REQUIRE_MOSQUITTO,
                    "apt-get install -y mosquitto",
                ),
            };
            if required(var) {
                panic!("{test} needs `{name}` and {var} is set, but it was not found ({how})");
            }
            eprintln!(
                "\n*** SKIPPING {test}: `{name}` is not installed ({how}); this test did NOT \
                 run. Set {var}=1 to make this a failure. ***\n"
            );
            return None;
        };
        let dir = tempdir(foreign_name(kind)).expect("a temporary directory for the broker");
        let m = Foreign::spawn(kind, &bin, &dir, None).unwrap_or_else(|e| panic!("{e:#}"));
        Some(TestBroker {
            port: m.port,
            kind,
            dir,
            identity: Vec::new(),
            process: Some(Process::Foreign(m)),
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

    /// True for our `lentera-broker`, false for Mosquitto and rumqttd.
    pub fn is_ours(&self) -> bool {
        matches!(self.kind, BrokerKind::Ours)
    }

    /// Which broker this is.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// Sends the running broker a signal by name (`STOP`, `CONT`, …), whichever it is.
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let pid = self
            .process
            .as_ref()
            .context("the broker is not running")?
            .pid();
        let status = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} {pid}: {status}");
        Ok(())
    }

    /// Whether `status`, what [`TestBroker::terminate`] returned, is this broker's clean
    /// stop: exit 0 for ours and Mosquitto. rumqttd 0.20.0's binary installs no signal
    /// handler (its `main` runs the broker until the process ends), so SIGTERM's default
    /// action, death by that signal, is its only way to stop; with no store it has
    /// nothing to flush.
    pub fn stopped_cleanly(&self, status: std::process::ExitStatus) -> bool {
        use std::os::unix::process::ExitStatusExt;
        const SIGTERM: i32 = 15;
        status.success() || (self.kind == BrokerKind::Rumqttd && status.signal() == Some(SIGTERM))
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
    /// directory, so those survive; Mosquitto runs without persistence and rumqttd has
    /// none (sessions, queues and retained messages live in its memory): both forget all.
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
            Process::Foreign(m) => m.terminate(),
        }
    }

    /// Starts the stopped broker again on the same MQTT port and data directory (killing
    /// it first if it still runs).
    pub fn start_again(&mut self) {
        self.process = None;
        let process = match self.kind {
            BrokerKind::Ours => spawn_ours(&self.dir, self.port, &self.identity).map(Process::Ours),
            kind => foreign_binary(kind)
                .with_context(|| format!("{} disappeared", foreign_name(kind)))
                .and_then(|bin| Foreign::spawn(kind, &bin, &self.dir, Some(self.port)))
                .map(Process::Foreign),
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

fn required(var: &str) -> bool {
    std::env::var_os(var).is_some_and(|v| !v.is_empty() && v != "0")
}

fn foreign_name(kind: BrokerKind) -> &'static str {
    match kind {
        BrokerKind::Ours => "broker",
        BrokerKind::Mosquitto => "mosquitto",
        BrokerKind::Rumqttd => "rumqttd",
    }
}

fn on_path(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn foreign_binary(kind: BrokerKind) -> Option<PathBuf> {
    match kind {
        BrokerKind::Ours => None,
        BrokerKind::Mosquitto => on_path("mosquitto", &[PathBuf::from("/usr/sbin")]),
        BrokerKind::Rumqttd => {
            if let Some(bin) = std::env::var_os(RUMQTTD_BIN).filter(|v| !v.is_empty()) {
                return Some(PathBuf::from(bin)).filter(|p| p.is_file());
            }
            // target/<profile>/deps/<test> → target/brokers/debug/rumqttd
            let exe = std::env::current_exe().ok()?;
            let target = exe.parent()?.parent()?.parent()?;
            Some(target.join("brokers").join("debug").join("rumqttd"))
                .filter(|p| p.is_file())
                .or_else(|| on_path("rumqttd", &[]))
        }
    }
}

/// rumqttd's configuration: one MQTT 3.1.1 listener (the services speak 3.1.1) on
/// `port` (0: the OS chooses), no console, no Prometheus, no WebSocket, no authentication. Payloads up to
/// 256 KiB, like the services' `mqtt.max_packet_bytes` (rumqttd's sample has 20 KiB).
fn rumqttd_config(port: u16) -> String {
    format!(
        r#"id = 0

[router]
max_connections = 1000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1

[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 262144
max_inflight_count = 100
dynamic_filters = true
"#
    )
}

/// A Mosquitto (`mosquitto -p PORT -v`) or rumqttd (`rumqttd -c rumqttd.toml -v`)
/// child, killed on drop.
struct Foreign {
    kind: BrokerKind,
    port: u16,
    child: Child,
    log: PathBuf,
}

impl Foreign {
    /// Starts on `port`, or on one the OS chooses: rumqttd binds port 0 and the port is
    /// read back from `/proc`; Mosquitto needs a number, so a probed free one (which
    /// another process may grab before Mosquitto binds it, hence the retries). Returns
    /// once the child itself listens on the port — not merely once something accepts
    /// there: rumqttd logs a failed bind and keeps running.
    fn spawn(
        kind: BrokerKind,
        bin: &Path,
        dir: &Path,
        port: Option<u16>,
    ) -> anyhow::Result<Foreign> {
        let name = foreign_name(kind);
        let log = dir.join(format!("{name}.log"));
        let mut last_error = None;
        for _ in 0..3 {
            let want = match (kind, port) {
                (_, Some(p)) => p,
                (BrokerKind::Rumqttd, None) => 0,
                (_, None) => free_port(),
            };
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)?;
            let log_start = out.metadata()?.len() as usize;
            let mut command = Command::new(bin);
            match kind {
                BrokerKind::Rumqttd => {
                    let config = dir.join("rumqttd.toml");
                    std::fs::write(&config, rumqttd_config(want))?;
                    command.arg("-c").arg(&config).arg("-v");
                }
                _ => {
                    command.args(["-p", &want.to_string(), "-v"]);
                }
            }
            let child = command
                .current_dir(dir)
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| format!("spawning {}", bin.display()))?;
            let mut m = Foreign {
                kind,
                port: want,
                child,
                log: log.clone(),
            };
            match m.wait_listening(want, log_start) {
                Ok(port) => {
                    m.port = port;
                    return Ok(m);
                }
                Err(e) => last_error = Some(e),
            }
        }
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        Err(last_error.expect("three attempts")).with_context(|| format!("log:\n{log}"))
    }

    /// Waits until the child listens on `want` (any port when 0) and returns the port;
    /// the child's own lines of the log start at byte `log_start`.
    fn wait_listening(&mut self, want: u16, log_start: usize) -> anyhow::Result<u16> {
        let name = foreign_name(self.kind);
        let start = Instant::now();
        loop {
            let ports = listening_ports(self.child.id());
            if let Some(&port) = ports.iter().find(|p| want == 0 || **p == want)
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                return Ok(port);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{name} (port {want}) exited with {status}");
            }
            // This run's part of the log (it is appended to across restarts).
            let log = std::fs::read(&self.log).unwrap_or_default();
            let log = String::from_utf8_lossy(log.get(log_start..).unwrap_or_default());
            if log.contains("AddrInUse") || log.contains("Address already in use") {
                // rumqttd does not exit when its listener cannot bind.
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{name}: port {want} is taken");
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("{name} did not listen on port {want} in 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

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
                bail!(
                    "{} did not stop within 20 s of SIGTERM",
                    foreign_name(self.kind)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TCP ports process `pid` listens on, from `/proc` (its socket inodes, matched
/// against the listening entries of `/proc/net/tcp` and `tcp6`).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() > 9
                && f[3] == "0A"
                && inodes.iter().any(|i| i == f[9])
                && let Some(port) = f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|h| u16::from_str_radix(h, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    ports
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
            assert!(!required(REQUIRE_MOSQUITTO));
            return;
        };
        assert!(accepts_mqtt_connect(broker.addr()));
    }

    #[test]
    fn rumqttd_runs_restarts_on_the_same_port_and_stops_on_sigterm() {
        let Some(mut broker) = TestBroker::rumqttd() else {
            assert!(!required(REQUIRE_RUMQTTD));
            return;
        };
        let addr = broker.addr();
        assert!(accepts_mqtt_connect(addr), "{}", broker.log_text());
        broker.restart();
        assert_eq!(broker.addr(), addr);
        assert!(accepts_mqtt_connect(addr), "{}", broker.log_text());
        let status = broker.terminate().unwrap();
        assert!(broker.stopped_cleanly(status), "{status}");
        assert!(!accepts_mqtt_connect(addr), "stopped");
    }
}
