//! The commands: parse, connect, call `lentera_auth::admin` / `lentera_db`, print.

use std::io::{IsTerminal as _, Read as _, Write as _};
use std::time::Duration;

use anyhow::{Context, bail};
use lentera_auth::admin::{self, AdminError, DeviceChanges, NewDevice, Role};
use lentera_auth::{Kind, token};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::args::Args;
use crate::csv;

pub const USAGE: &str = "\
lentera — administer a Lentera installation

USAGE:
    lentera [--database-url URL] COMMAND ...
    (the database is DATABASE_URL unless --database-url is given)

COMMANDS:
    migrate                              apply pending schema migrations
    devices add ID --kind KIND [--name N] [--location L]
                                         provision a device; prints its token once
                                         (KIND: greenhouse, lamp or sensor)
    devices add --csv FILE|-             provision many (header id,kind,name,location);
                                         prints `id,token` CSV; all or nothing
    devices list [--json]
    devices update ID [--kind KIND] [--name N] [--location L]
    devices rotate ID                    a new token; the old one stops working
    devices disable ID | enable ID       disabling cuts the device's connections
    devices remove ID
    operators add NAME --role operator|viewer
                                         the password is the first line of stdin when it
                                         is not a terminal; otherwise (or when stdin is
                                         empty) one is generated and printed
    operators list [--json]
    operators passwd NAME                (password as for `add`)
    operators role NAME operator|viewer
    operators disable NAME | enable NAME | remove NAME
    tokens add OPERATOR [--label L]      a bearer API token; printed once
    tokens revoke OPERATOR [--label L]   revoke the operator's API tokens (with that label)
    tokens list OPERATOR [--json]

Tokens and generated passwords are the last word of the last line printed.
Exit status: 0 on success, 1 on any failure.";

pub async fn run(argv: impl IntoIterator<Item = String>) -> anyhow::Result<()> {
    let args = Args::parse(argv)?;
    if args.flag("help") || args.words.is_empty() || args.words[0] == "help" {
        // Not println!: `lentera --help | head` must not panic on a closed pipe.
        let _ = writeln!(std::io::stdout(), "{USAGE}");
        return Ok(());
    }
    let url = args.opt("database-url");
    let group = args.word(0, "command")?.to_owned();
    let sub = args.words.get(1).cloned().unwrap_or_default();
    // Check the whole command line before connecting: a typo should not wait for a
    // database timeout to be reported.
    let command = parse(&group, &sub, &args)?;
    let pool = connect(url).await?;
    let result = execute(&pool, command).await;
    pool.close().await;
    result
}

async fn connect(url: Option<String>) -> anyhow::Result<PgPool> {
    let url = match url {
        Some(u) => u,
        None => std::env::var("DATABASE_URL")
            .context("set DATABASE_URL (or pass --database-url) to the Lentera database")?,
    };
    // The URL holds a password: it is never printed.
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&url)
        .await
        .context("cannot connect to PostgreSQL (DATABASE_URL)")
}

enum Command {
    Migrate,
    DeviceAdd(NewDevice),
    DeviceImport(String),
    DeviceList { json: bool },
    DeviceUpdate(String, DeviceChanges),
    DeviceRotate(String),
    DeviceDisabled(String, bool),
    DeviceRemove(String),
    OperatorAdd(String, Role),
    OperatorList { json: bool },
    OperatorPasswd(String),
    OperatorRole(String, Role),
    OperatorDisabled(String, bool),
    OperatorRemove(String),
    TokenAdd(String, Option<String>),
    TokenRevoke(String, Option<String>),
    TokenList(String, bool),
}

fn kind(s: &str) -> anyhow::Result<Kind> {
    Ok(s.parse()?)
}

fn parse(group: &str, sub: &str, a: &Args) -> anyhow::Result<Command> {
    let id = |what: &str| a.word(2, what).map(str::to_owned);
    let (cmd, words) = match (group, sub) {
        ("migrate", _) => (Command::Migrate, 1),
        ("devices", "add") => match a.opt("csv") {
            Some(file) => (Command::DeviceImport(file), 2),
            None => {
                let k = a
                    .opt("kind")
                    .context("--kind greenhouse|lamp|sensor is required")?;
                (
                    Command::DeviceAdd(NewDevice {
                        id: id("device id")?,
                        kind: kind(&k)?,
                        name: a.opt("name"),
                        location: a.opt("location"),
                    }),
                    3,
                )
            }
        },
        ("devices", "list") => (
            Command::DeviceList {
                json: a.flag("json"),
            },
            2,
        ),
        ("devices", "update") => (
            Command::DeviceUpdate(
                id("device id")?,
                DeviceChanges {
                    kind: a.opt("kind").map(|k| kind(&k)).transpose()?,
                    name: a.opt("name"),
                    location: a.opt("location"),
                },
            ),
            3,
        ),
        ("devices", "rotate") => (Command::DeviceRotate(id("device id")?), 3),
        ("devices", "disable") => (Command::DeviceDisabled(id("device id")?, true), 3),
        ("devices", "enable") => (Command::DeviceDisabled(id("device id")?, false), 3),
        ("devices", "remove") => (Command::DeviceRemove(id("device id")?), 3),
        ("operators", "add") => {
            let role = a
                .opt("role")
                .context("--role operator|viewer is required")?;
            (Command::OperatorAdd(id("operator name")?, role.parse()?), 3)
        }
        ("operators", "list") => (
            Command::OperatorList {
                json: a.flag("json"),
            },
            2,
        ),
        ("operators", "passwd") => (Command::OperatorPasswd(id("operator name")?), 3),
        ("operators", "role") => (
            Command::OperatorRole(id("operator name")?, a.word(3, "role")?.parse()?),
            4,
        ),
        ("operators", "disable") => (Command::OperatorDisabled(id("operator name")?, true), 3),
        ("operators", "enable") => (Command::OperatorDisabled(id("operator name")?, false), 3),
        ("operators", "remove") => (Command::OperatorRemove(id("operator name")?), 3),
        ("tokens", "add") => (Command::TokenAdd(id("operator name")?, a.opt("label")), 3),
        ("tokens", "revoke") => (
            Command::TokenRevoke(id("operator name")?, a.opt("label")),
            3,
        ),
        ("tokens", "list") => (Command::TokenList(id("operator name")?, a.flag("json")), 3),
        ("devices" | "operators" | "tokens", "") => {
            bail!("{group} needs a subcommand (see --help)")
        }
        ("devices" | "operators" | "tokens", _) => {
            bail!("unknown command `{group} {sub}` (see --help)")
        }
        _ => bail!("unknown command {group:?} (see --help)"),
    };
    a.finish(words)?;
    Ok(cmd)
}

/// Says what went wrong in the words of the command.
fn explain(e: AdminError, what: &str) -> anyhow::Error {
    match e {
        AdminError::Exists => anyhow::anyhow!("{what} already exists"),
        AdminError::NotFound => anyhow::anyhow!("no {what}"),
        AdminError::Db(e) => db_error(e),
        e => anyhow::anyhow!("{e}"),
    }
}

fn db_error(e: sqlx::Error) -> anyhow::Error {
    let missing_schema = e
        .as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "42P01");
    if missing_schema {
        anyhow::anyhow!("{e} — is the database migrated? Run `lentera migrate`")
    } else {
        anyhow::anyhow!("database: {e}")
    }
}

async fn execute(pool: &PgPool, cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Migrate => {
            lentera_db::migrate(pool).await.context("migrating")?;
            println!("schema is up to date");
        }
        Command::DeviceAdd(d) => {
            let (id, kind) = (d.id.clone(), d.kind);
            let t = admin::add_device(pool, d).await.map_err(|e| match e {
                AdminError::Exists => anyhow::anyhow!(
                    "device {id:?} is already provisioned (`lentera devices rotate {id}` gives it a new token)"
                ),
                e => explain(e, &format!("device {id:?}")),
            })?;
            println!("provisioned {kind} {id}; its token is shown only now.");
            println!("token for {id}: {t}");
        }
        Command::DeviceImport(file) => import(pool, &file).await?,
        Command::DeviceList { json } => {
            let rows = admin::list(pool).await.map_err(|e| explain(e, "devices"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<24} {:<10} {:<13} {:<20} NAME / LOCATION",
                    "ID", "KIND", "STATE", "LAST SEEN"
                );
                for r in rows {
                    let state = match (r.provisioned, r.disabled) {
                        (_, true) => "disabled",
                        (false, _) => "unprovisioned",
                        (true, false) => "enabled",
                    };
                    let seen = r
                        .last_seen
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_else(|| "never".into());
                    let place = [r.name, r.location]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" / ");
                    println!("{:<24} {:<10} {state:<13} {seen:<20} {place}", r.id, r.kind);
                }
            }
        }
        Command::DeviceUpdate(id, c) => {
            admin::update(pool, &id, c)
                .await
                .map_err(|e| explain(e, &format!("device {id:?}")))?;
            println!("updated device {id}");
        }
        Command::DeviceRotate(id) => {
            let t = admin::rotate(pool, &id)
                .await
                .map_err(|e| explain(e, &format!("device {id:?}")))?;
            println!("rotated {id}: the old token no longer works; the new one is shown only now.");
            println!("token for {id}: {t}");
        }
        Command::DeviceDisabled(id, disabled) => {
            admin::set_disabled(pool, &id, disabled)
                .await
                .map_err(|e| explain(e, &format!("device {id:?}")))?;
            println!(
                "{} device {id}",
                if disabled { "disabled" } else { "enabled" }
            );
        }
        Command::DeviceRemove(id) => {
            admin::remove(pool, &id)
                .await
                .map_err(|e| explain(e, &format!("device {id:?}")))?;
            println!("removed device {id} (its readings are kept)");
        }
        Command::OperatorAdd(name, role) => {
            let (pw, generated) = password()?;
            admin::add_operator(pool, &name, role, &pw)
                .await
                .map_err(|e| explain(e, &format!("operator {name:?}")))?;
            println!("added {role} {name}");
            if generated {
                println!("password for {name}: {pw}");
            }
        }
        Command::OperatorList { json } => {
            let rows = lentera_db::operators::list(pool).await.map_err(db_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<32} {:<9} {:<9} CREATED", "NAME", "ROLE", "STATE");
                for r in rows {
                    let state = if r.disabled { "disabled" } else { "enabled" };
                    let created = r.created_at.format("%Y-%m-%d %H:%M:%S");
                    println!("{:<32} {:<9} {state:<9} {created}", r.name, r.role);
                }
            }
        }
        Command::OperatorPasswd(name) => {
            let (pw, generated) = password()?;
            admin::set_password(pool, &name, &pw)
                .await
                .map_err(|e| explain(e, &format!("operator {name:?}")))?;
            println!("changed the password of {name}");
            if generated {
                println!("password for {name}: {pw}");
            }
        }
        Command::OperatorRole(name, role) => {
            let ok = lentera_db::operators::set_role(pool, &name, role.as_str())
                .await
                .map_err(db_error)?;
            if !ok {
                bail!("no operator {name:?}");
            }
            println!("{name} is now a {role}");
        }
        Command::OperatorDisabled(name, disabled) => {
            let ok = lentera_db::operators::set_disabled(pool, &name, disabled)
                .await
                .map_err(db_error)?;
            if !ok {
                bail!("no operator {name:?}");
            }
            println!(
                "{} operator {name}",
                if disabled { "disabled" } else { "enabled" }
            );
        }
        Command::OperatorRemove(name) => {
            if !lentera_db::operators::remove(pool, &name)
                .await
                .map_err(db_error)?
            {
                bail!("no operator {name:?}");
            }
            println!("removed operator {name} and its tokens");
        }
        Command::TokenAdd(name, label) => {
            let t = admin::new_api_token(pool, &name, label.as_deref())
                .await
                .map_err(|e| explain(e, &format!("operator {name:?}")))?;
            println!(
                "API token for {name} (send it as `Authorization: Bearer …`); shown only now."
            );
            println!("token for {name}: {t}");
        }
        Command::TokenRevoke(name, label) => {
            let n = lentera_db::operators::delete_api_tokens(pool, &name, label.as_deref())
                .await
                .map_err(db_error)?;
            if n == 0 {
                bail!("no API token of {name:?}{}", label_suffix(&label));
            }
            println!("revoked {n} API token(s) of {name}");
        }
        Command::TokenList(name, json) => {
            let rows = lentera_db::operators::list_tokens(pool, &name)
                .await
                .map_err(db_error)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<8} {:<24} {:<20} {:<20} LAST USED",
                    "KIND", "LABEL", "CREATED", "EXPIRES"
                );
                let fmt = |t: Option<chrono::DateTime<chrono::Utc>>, none: &str| {
                    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_else(|| none.to_owned())
                };
                for r in rows {
                    println!(
                        "{:<8} {:<24} {:<20} {:<20} {}",
                        r.kind,
                        r.label.as_deref().unwrap_or("-"),
                        fmt(Some(r.created_at), ""),
                        fmt(r.expires_at, "never"),
                        fmt(r.last_used, "never")
                    );
                }
            }
        }
    }
    Ok(())
}

fn label_suffix(label: &Option<String>) -> String {
    label
        .as_ref()
        .map(|l| format!(" labelled {l:?}"))
        .unwrap_or_default()
}

/// The password from stdin when it is not a terminal (its first line), otherwise — or
/// when stdin is empty (`</dev/null`) — a generated one (`true`: the caller prints it).
fn password() -> anyhow::Result<(String, bool)> {
    let stdin = std::io::stdin();
    let mut s = String::new();
    if !stdin.is_terminal() {
        stdin
            .lock()
            .read_to_string(&mut s)
            .context("reading the password from stdin")?;
    }
    match s.lines().next() {
        Some(pw) if !pw.is_empty() => Ok((pw.to_owned(), false)),
        _ => {
            // 192 random bits, without the token prefix.
            let t = token::generate();
            Ok((t[token::PREFIX.len()..].to_owned(), true))
        }
    }
}

async fn import(pool: &PgPool, file: &str) -> anyhow::Result<()> {
    let text = if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the CSV from stdin")?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
    };
    let devices = csv::parse(&text)?;
    let lines: Vec<usize> = devices.iter().map(|(n, _)| *n).collect();
    let result = admin::add_devices(pool, devices.into_iter().map(|(_, d)| d).collect()).await;
    let tokens = match result {
        Ok(t) => t,
        Err(AdminError::AtEntry { index, error }) => {
            let line = lines[index];
            let e = match *error {
                AdminError::Exists => {
                    anyhow::anyhow!("the device is already provisioned (or listed twice)")
                }
                e => explain(e, "device"),
            };
            bail!("line {line}: {e:#}; nothing was imported");
        }
        Err(e) => return Err(explain(e, "device")),
    };
    println!("id,token");
    for (id, t) in tokens {
        println!("{id},{t}");
    }
    Ok(())
}
