//! One spawned service binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running service process; killed when dropped.
///
/// It remembers how it was started, so a fault test can stop it ([`Service::kill`],
/// [`Service::terminate`]) and bring it back ([`Service::restart`]) with the same
/// environment, after pinning its ports with [`Service::set_env`] where clients must find
/// it again at the same address.
pub struct Service {
    pub name: &'static str,
    child: Child,
    dir: PathBuf,
    env: Vec<(String, String)>,
    ready_file: PathBuf,
    pub log: PathBuf,
    addrs: serde_json::Value,
}

/// Path of a workspace binary, next to the test executable's `deps/` directory.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    dir.join(format!("lentera-{name}"))
}

impl Service {
    /// The process id (to read its memory from `/proc`, say).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `lentera-{name}` with `env` and waits until it has written its ready file.
    pub fn spawn(
        name: &'static str,
        dir: &Path,
        env: &[(String, String)],
    ) -> anyhow::Result<Service> {
        Self::spawn_as(name, name, dir, env)
    }

    /// Like [`Service::spawn`], for a second instance of the same binary: `instance`
    /// names its ready file and log (e.g. `historian-2`), so the two do not collide.
    pub fn spawn_as(
        name: &'static str,
        instance: &str,
        dir: &Path,
        env: &[(String, String)],
    ) -> anyhow::Result<Service> {
        let ready_file = dir.join(format!("{instance}.json"));
        let log = dir.join(format!("{instance}.log"));
        let child = start_process(name, dir, env, &ready_file, &log)?;
        let mut s = Service {
            name,
            child,
            dir: dir.to_owned(),
            env: env.to_vec(),
            ready_file,
            log,
            addrs: serde_json::Value::Null,
        };
        s.wait_for_ready_file(Duration::from_secs(30))?;
        Ok(s)
    }

    /// Sets (or replaces) one environment variable for the next [`Service::restart`],
    /// e.g. the listen address the first run was given by the OS.
    pub fn set_env(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.env.push((key.to_owned(), value)),
        }
    }

    /// Starts the binary again with the same environment (after [`Service::set_env`]) and
    /// waits for its new ready file; the log is appended to. A still-running process is
    /// killed first. Its addresses are re-read, so they change unless they were pinned.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        self.child = start_process(self.name, &self.dir, &self.env, &self.ready_file, &self.log)?;
        self.addrs = serde_json::Value::Null;
        self.wait_for_ready_file(Duration::from_secs(30))
    }

    /// SIGKILL, as in a crash or the OOM killer, and reap it. No-op once it has exited.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_none() {
            let _ = self.child.kill();
            self.child.wait()?;
        }
        Ok(())
    }

    /// Sends SIGTERM without waiting: the test goes on while the service drains. Pair it
    /// with [`Service::wait_exit`].
    pub fn signal_term(&self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", self.child.id());
        Ok(())
    }

    /// Sends signal `name` (`STOP`, `CONT`, …) without waiting: e.g. freezing a process
    /// leaves its sockets open but unanswered, as a hung or overloaded peer does.
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} {} failed", self.child.id());
        Ok(())
    }

    /// Waits (without blocking the runtime) for the process to exit, up to `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > limit {
                bail!("{} did not exit within {limit:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// True until the process has exited (it is not reaped by this call's answer).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn wait_for_ready_file(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            // A half-written file does not parse; the next round reads it whole.
            if let Ok(bytes) = std::fs::read(&self.ready_file)
                && let Ok(addrs) = serde_json::from_slice(&bytes)
            {
                self.addrs = addrs;
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited with {status}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if start.elapsed() > limit {
                bail!(
                    "{} wrote no ready file in {limit:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The bound address the service published under `key`.
    pub fn addr(&self, key: &str) -> anyhow::Result<SocketAddr> {
        self.addrs[key]
            .as_str()
            .with_context(|| format!("{} ready file has no {key:?}: {}", self.name, self.addrs))?
            .parse()
            .context("address in ready file")
    }

    /// Waits until `GET /readyz` on address `key` answers 200.
    pub async fn wait_ready(&self, key: &str) -> anyhow::Result<()> {
        let url = format!("http://{}/readyz", self.addr(key)?);
        let start = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "{} never became ready; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The status `GET /readyz` on address `key` answers now; `None` when nothing answers.
    pub async fn readyz(&self, key: &str) -> Option<u16> {
        let url = format!("http://{}/readyz", self.addr(key).ok()?);
        let r = reqwest::get(&url).await.ok()?;
        Some(r.status().as_u16())
    }

    /// Polls `/readyz` on `key` until it answers `status` (e.g. 503 while a dependency is
    /// down), up to `limit`.
    pub async fn wait_readyz(&self, key: &str, status: u16, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let now = self.readyz(key).await;
            if now == Some(status) {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!(
                    "{} /readyz answered {now:?}, not {status}, for {limit:?}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of the Prometheus series `series` (e.g.
    /// `lentera_historian_readings_stored_total`) on address `key`'s `/metrics`.
    pub async fn metric(&self, key: &str, series: &str) -> anyhow::Result<f64> {
        let url = format!("http://{}/metrics", self.addr(key)?);
        let text = reqwest::get(&url).await?.text().await?;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .with_context(|| format!("{} /metrics has no {series}:\n{text}", self.name))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("{} did not stop within 20 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Spawns `lentera-{name}` with `env`, its output appended to `log`, after removing a
/// stale `ready_file` so that only the new process's file counts.
fn start_process(
    name: &str,
    dir: &Path,
    env: &[(String, String)],
    ready_file: &Path,
    log: &Path,
) -> anyhow::Result<Child> {
    let bin = bin_path(name);
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo build --workspace --bins` first",
            bin.display()
        );
    }
    let _ = std::fs::remove_file(ready_file);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new(&bin)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("LENTERA_READY_FILE", ready_file)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
