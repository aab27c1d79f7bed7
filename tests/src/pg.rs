//! A private PostgreSQL cluster that a test may stop and start again.
//!
//! The shared test cluster (`DATABASE_URL`) serves every test at once, so it must never be
//! stopped; a test that takes PostgreSQL away gets its own: `initdb` into a temporary
//! directory, `pg_ctl start` on a free port with its socket in that directory — the same
//! way `scripts/lib/deps.sh` starts the suite's throw-away cluster. PostgreSQL refuses to
//! run as root, so as root (CI) every command runs as `postgres` through `runuser`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::tempdir;

/// Set (to anything but empty or `0`) to turn missing PostgreSQL server binaries into a
/// failure instead of a skip; `scripts/test` sets it whenever it has them.
pub const REQUIRE_PG_CTL: &str = "LENTERA_REQUIRE_PG_CTL";

/// A stoppable cluster on `127.0.0.1:port()`, removed on drop (its directory is kept,
/// and printed, when the test is panicking).
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
}

impl PrivatePostgres {
    /// Creates and starts a cluster. `Ok(None)`, after saying so loudly, when the server
    /// binaries are not installed — unless [`REQUIRE_PG_CTL`] is set.
    pub fn start() -> anyhow::Result<Option<PrivatePostgres>> {
        let test = std::thread::current()
            .name()
            .unwrap_or("this test")
            .to_owned();
        let Some(bin) = pg_bindir() else {
            if std::env::var_os(REQUIRE_PG_CTL).is_some_and(|v| !v.is_empty() && v != "0") {
                bail!(
                    "{test} needs PostgreSQL's initdb/pg_ctl and {REQUIRE_PG_CTL} is set, but \
                     there is no /usr/lib/postgresql/*/bin (apt-get install -y postgresql)"
                );
            }
            eprintln!(
                "\n*** SKIPPING {test}: PostgreSQL's server binaries (initdb, pg_ctl) are not \
                 installed (apt-get install -y postgresql); this test did NOT run. Set \
                 {REQUIRE_PG_CTL}=1 to make this a failure. ***\n"
            );
            return Ok(None);
        };
        let dir = tempdir("pg")?;
        let as_postgres = is_root();
        let mut pg = PrivatePostgres {
            bin,
            dir,
            port: 0,
            as_postgres,
            running: false,
        };
        if as_postgres {
            pg.run(Command::new("chown").args(["postgres:postgres", &pg.dir_str()]))?;
        }
        let data = pg.data_dir();
        pg.run(pg.command("initdb").arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ]))
        .context("initdb")?;
        // A free port can be taken between our probe and the server's bind: retry.
        let mut last = None;
        for _ in 0..3 {
            pg.port = free_port();
            match pg.start_again() {
                Ok(()) => return Ok(Some(pg)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("three attempts"))
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`: a superuser on the maintenance
    /// database, for [`crate::TestDb::create_on`].
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server the hard way (`pg_ctl stop -m immediate`: every backend is
    /// killed, open transactions are lost and crash recovery runs on the next start), as
    /// when the database host fails. Returns once the port is closed.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.run(self.command("pg_ctl").arg("-D").arg(self.data_dir()).args([
            "-m",
            "immediate",
            "-w",
            "stop",
        ]))
        .context("pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    /// Starts the stopped server again, on the same port; returns once it accepts
    /// connections (`pg_ctl -w`).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.dir_str()
        );
        let log = self.dir.join("server.log");
        let started = self.run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "30", "-o", &opts, "start"]),
        );
        if let Err(e) = started {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(e).with_context(|| format!("pg_ctl start; server log:\n{log}"));
        }
        self.running = true;
        Ok(())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn dir_str(&self) -> String {
        self.dir.display().to_string()
    }

    /// `bin/<tool>`, through `runuser -u postgres --` when we are root.
    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// Runs `cmd` to completion; its output goes into the error when it fails.
    fn run(&self, cmd: &mut Command) -> anyhow::Result<()> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} exited with {}:\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let _ = self.stop();
        }
        if std::thread::panicking() {
            eprintln!(
                "private PostgreSQL kept in {} (server.log)",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The newest `/usr/lib/postgresql/*/bin` with `initdb`, else the directory of an
/// `initdb` on PATH (as `pg_bindir` in `scripts/lib/deps.sh`).
fn pg_bindir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("initdb").is_file())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(Path::file_name)
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(d) = dirs.pop() {
        return Some(d);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).find(|d| d.join("initdb").is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A port nothing listens on: bound by the OS, then released.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}
