//! One spawned service binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running service process; killed when dropped.
pub struct Service {
    pub name: &'static str,
    child: Child,
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
    /// Starts `lentera-{name}` with `env` and waits until it has written its ready file.
    pub fn spawn(
        name: &'static str,
        dir: &Path,
        env: &[(String, String)],
    ) -> anyhow::Result<Service> {
        let bin = bin_path(name);
        if !bin.exists() {
            bail!(
                "{} is missing: run `cargo build --workspace --bins` first",
                bin.display()
            );
        }
        let ready_file = dir.join(format!("{name}.json"));
        let _ = std::fs::remove_file(&ready_file);
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(&bin)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("LENTERA_READY_FILE", &ready_file)
            .env_remove("DATABASE_URL")
            .env_remove("RUST_LOG")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut s = Service {
            name,
            child,
            ready_file,
            log,
            addrs: serde_json::Value::Null,
        };
        s.wait_for_ready_file(Duration::from_secs(30))?;
        Ok(s)
    }

    fn wait_for_ready_file(&mut self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(bytes) = std::fs::read(&self.ready_file) {
                self.addrs = serde_json::from_slice(&bytes)?;
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

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
