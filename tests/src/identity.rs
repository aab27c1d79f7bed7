//! Identity in the end-to-end stack: it runs closed, as a deployment does.
//!
//! - The services log in to the broker as their own users, from an auth file written
//!   here with freshly generated passwords ([`ServiceUsers`]), as `deploy/ec2-setup.sh`
//!   does for a real host.
//! - Boards are provisioned in the registry ([`crate::Stack::provision`]) and present
//!   their token at every door: the token in the path of
//!   `POST /api/v1/devices/{token}/readings` ([`crate::Stack::board_url`]), `HELLO
//!   <device> <token>` on TCP, user name and password on MQTT.
//! - People are operators: the stack creates one and hands tests its bearer API token
//!   ([`crate::Stack::operator_token`]).

use std::path::Path;

/// The services that log in to the broker, and the topics each one's rules allow. Each
/// service needs the platform's topics; none may touch `$SYS` or another prefix.
const SERVICES: [&str; 4] = ["ingest", "historian", "web", "lamp"];

/// A read-only broker user for tests that watch the platform's topics.
pub const OBSERVER: &str = "observer";

/// One broker user per service, with a random password.
pub struct ServiceUsers {
    users: Vec<(&'static str, String)>,
}

impl ServiceUsers {
    pub fn generate() -> ServiceUsers {
        ServiceUsers {
            users: SERVICES
                .iter()
                .chain(&[OBSERVER])
                .map(|s| (*s, lentera_auth::token::generate()))
                .collect(),
        }
    }

    /// User name and password of `user`.
    pub fn credentials(&self, user: &str) -> (String, String) {
        let (u, p) = self
            .users
            .iter()
            .find(|(u, _)| *u == user)
            .expect("a user of the harness");
        ((*u).to_owned(), p.clone())
    }

    /// Writes the broker's auth file: each service user with its password's hash.
    pub fn write_auth_file(&self, path: &Path) -> std::io::Result<()> {
        let mut text = String::from("# Written by the test harness (tests/src/identity.rs).\n");
        for (user, password) in &self.users {
            let publish = if *user == OBSERVER {
                ""
            } else {
                "\"lentera/#\""
            };
            text.push_str(&format!(
                "\n[[users]]\nusername = \"{user}\"\npassword = \"{}\"\n\
                 publish = [{publish}]\nsubscribe = [\"lentera/#\"]\n",
                lentera_auth::password::hash(password)
            ));
        }
        std::fs::write(path, text)
    }

    /// `LENTERA_MQTT__USERNAME` / `__PASSWORD` for `service` (none for others, e.g. the
    /// simulator, which is a board).
    pub fn env(&self, service: &str) -> Vec<(String, String)> {
        self.users
            .iter()
            .filter(|(user, _)| *user == service)
            .flat_map(|(user, password)| {
                [
                    ("LENTERA_MQTT__USERNAME".to_owned(), (*user).to_owned()),
                    ("LENTERA_MQTT__PASSWORD".to_owned(), password.clone()),
                ]
            })
            .collect()
    }
}

/// Runs the provisioning CLI `lentera` (the real binary, built beside the services) on
/// `database_url`, with `stdin` piped in; returns its standard output, or its error.
pub async fn cli(database_url: &str, args: &[&str], stdin: &str) -> anyhow::Result<String> {
    let (url, stdin) = (database_url.to_owned(), stdin.to_owned());
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || run_cli(&url, &args, &stdin)).await?
}

fn run_cli(database_url: &str, args: &[String], stdin: &str) -> anyhow::Result<String> {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use anyhow::Context;
    let bin = crate::bin_path("x").with_file_name("lentera");
    let mut child = Command::new(&bin)
        .args(args)
        .env("DATABASE_URL", database_url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} (cargo build --workspace --bins)", bin.display()))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "lentera {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The secret `lentera devices add` / `tokens add` print: the last word of the last line.
pub fn last_word(output: &str) -> anyhow::Result<String> {
    output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| l.split_whitespace().last())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no token in {output:?}"))
}
