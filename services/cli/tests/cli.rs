//! The built `lentera` binary against a real PostgreSQL (a fresh database per test).

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use lentera_auth::admin;
use lentera_auth::token;
use sqlx::{Connection, PgConnection, PgPool};

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

struct Db {
    name: String,
    url: String,
    pool: PgPool,
}

impl Db {
    async fn create() -> Db {
        let name = format!(
            "lentera_cli_test_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let admin = admin_url();
        let mut c = PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').unwrap().0;
        let url = format!("{base}/{name}");
        let pool = PgPool::connect(&url).await.unwrap();
        Db { name, url, pool }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, "")
    }

    fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Output {
        run(args, stdin, Some(&self.url))
    }

    async fn drop_db(self) {
        self.pool.close().await;
        let mut c = PgConnection::connect(&admin_url()).await.unwrap();
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut c)
        .await;
    }
}

fn run(args: &[&str], stdin: &str, url: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lentera"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match url {
        Some(u) => cmd.env("DATABASE_URL", u),
        None => cmd.env_remove("DATABASE_URL"),
    };
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Exit status 1, and stderr.
fn fails(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn last_word(out: &str) -> String {
    out.lines()
        .last()
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_owned()
}

async fn hash_of(pool: &PgPool, t: &str) -> Option<String> {
    lentera_db::registry::find_by_hash(pool, &token::hash(t))
        .await
        .unwrap()
        .map(|p| p.id)
}

#[tokio::test]
async fn device_lifecycle() {
    let db = Db::create().await;
    ok(&db.run(&["migrate"]));
    ok(&db.run(&["migrate"]));
    let out = ok(&db.run(&[
        "devices",
        "add",
        "gh-1",
        "--kind",
        "greenhouse",
        "--name",
        "North",
        "--location",
        "Plot 3",
    ]));
    let t = last_word(&out);
    assert!(token::looks_like_token(&t), "{out}");
    assert_eq!(out.matches(&t).count(), 1, "printed once: {out}");
    assert_eq!(hash_of(&db.pool, &t).await.as_deref(), Some("gh-1"));

    let e = fails(&db.run(&["devices", "add", "gh-1", "--kind", "lamp"]));
    assert!(e.contains("already provisioned"), "{e}");
    let e = fails(&db.run(&["devices", "add", "bad/id", "--kind", "lamp"]));
    assert!(e.contains("device id"), "{e}");
    let e = fails(&db.run(&["devices", "add", "x", "--kind", "tractor"]));
    assert!(e.contains("tractor"), "{e}");

    let list = ok(&db.run(&["devices", "list"]));
    assert!(
        list.contains("gh-1") && list.contains("North / Plot 3"),
        "{list}"
    );
    assert!(!list.contains(&t));
    let json: serde_json::Value =
        serde_json::from_str(&ok(&db.run(&["devices", "list", "--json"]))).unwrap();
    assert_eq!(json[0]["id"], "gh-1");
    assert_eq!(json[0]["provisioned"], true);
    assert_eq!(json[0]["last_seen"], serde_json::Value::Null);
    assert!(json[0].get("token_hash").is_none());

    let t2 = last_word(&ok(&db.run(&["devices", "rotate", "gh-1"])));
    assert_ne!(t, t2);
    assert_eq!(hash_of(&db.pool, &t).await, None);
    assert_eq!(hash_of(&db.pool, &t2).await.as_deref(), Some("gh-1"));

    ok(&db.run(&["devices", "disable", "gh-1"]));
    assert_eq!(hash_of(&db.pool, &t2).await, None);
    assert!(ok(&db.run(&["devices", "list"])).contains("disabled"));
    ok(&db.run(&["devices", "enable", "gh-1"]));
    assert_eq!(hash_of(&db.pool, &t2).await.as_deref(), Some("gh-1"));
    ok(&db.run(&["devices", "update", "gh-1", "--kind", "lamp"]));
    assert_eq!(admin::get(&db.pool, "gh-1").await.unwrap().kind, "lamp");
    ok(&db.run(&["devices", "remove", "gh-1"]));
    assert_eq!(hash_of(&db.pool, &t2).await, None);
    for sub in ["rotate", "disable", "remove"] {
        let e = fails(&db.run(&["devices", sub, "gh-1"]));
        assert!(e.contains("no device"), "{sub}: {e}");
    }
    db.drop_db().await;
}

#[tokio::test]
async fn csv_import_is_all_or_nothing() {
    let db = Db::create().await;
    ok(&db.run(&["migrate"]));
    let dir = std::env::temp_dir().join(&db.name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("devices.csv");
    std::fs::write(
        &file,
        "id,kind,name,location\nl-1,lamp,\"Lamp, east\",Gate\ngh-1,greenhouse,,\n",
    )
    .unwrap();
    let out = ok(&db.run(&["devices", "add", "--csv", file.to_str().unwrap()]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "id,token");
    assert_eq!(lines.len(), 3, "{out}");
    for line in &lines[1..] {
        let (id, t) = line.split_once(',').unwrap();
        assert_eq!(hash_of(&db.pool, t).await.as_deref(), Some(id));
    }
    assert_eq!(
        admin::get(&db.pool, "l-1").await.unwrap().name.as_deref(),
        Some("Lamp, east")
    );

    // Line 3 names an existing device: nothing at all is imported.
    let e = fails(&db.run_with_stdin(
        &["devices", "add", "--csv", "-"],
        "id,kind\nnew-1,sensor\nl-1,lamp\n",
    ));
    assert!(e.contains("line 3"), "{e}");
    // A bad kind: the parse error names the line before anything is written.
    let e = fails(&db.run_with_stdin(
        &["devices", "add", "--csv", "-"],
        "id,kind\nnew-2,sensor\nnew-3,tractor\n",
    ));
    assert!(e.contains("line 3"), "{e}");
    let e = fails(&db.run_with_stdin(
        &["devices", "add", "--csv", "-"],
        "id,kind\nnew-4,sensor\nnew-4,sensor\n",
    ));
    assert!(e.contains("line 3"), "{e}");
    assert_eq!(admin::list(&db.pool).await.unwrap().len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
    db.drop_db().await;
}

#[tokio::test]
async fn operators_and_api_tokens() {
    let db = Db::create().await;
    ok(&db.run(&["migrate"]));
    ok(&db.run_with_stdin(
        &["operators", "add", "alice", "--role", "operator"],
        "correct horse battery\n",
    ));
    assert_eq!(
        admin::login(&db.pool, "alice", "correct horse battery")
            .await
            .unwrap(),
        Some(("alice".into(), admin::Role::Operator))
    );
    assert_eq!(
        admin::login(&db.pool, "alice", "wrong").await.unwrap(),
        None
    );
    // Empty stdin: a generated password, the last word.
    let out = ok(&db.run(&["operators", "add", "bob", "--role", "viewer"]));
    let pw = last_word(&out);
    assert!(pw.len() >= 32, "{out}");
    assert_eq!(
        admin::login(&db.pool, "bob", &pw).await.unwrap(),
        Some(("bob".into(), admin::Role::Viewer))
    );
    let e = fails(&db.run_with_stdin(
        &["operators", "add", "bob", "--role", "viewer"],
        "pw123456\n",
    ));
    assert!(e.contains("already exists"), "{e}");
    let e = fails(&db.run(&["operators", "add", "carol", "--role", "king"]));
    assert!(e.contains("role"), "{e}");
    let list = ok(&db.run(&["operators", "list"]));
    assert!(list.contains("alice") && list.contains("viewer"), "{list}");
    assert!(!list.contains("$7$"));

    ok(&db.run_with_stdin(&["operators", "passwd", "alice"], "new password 1\n"));
    assert!(
        admin::login(&db.pool, "alice", "new password 1")
            .await
            .unwrap()
            .is_some()
    );
    ok(&db.run(&["operators", "role", "bob", "operator"]));

    let t = last_word(&ok(&db.run(&["tokens", "add", "alice", "--label", "ci"])));
    let owner = admin::find_token(&db.pool, &t).await.unwrap().unwrap();
    assert_eq!(
        (owner.operator.as_str(), owner.kind.as_str()),
        ("alice", "api")
    );
    let t2 = last_word(&ok(&db.run(&["tokens", "add", "alice"])));
    let list = ok(&db.run(&["tokens", "list", "alice"]));
    assert!(list.contains("ci") && !list.contains(&t), "{list}");
    fails(&db.run(&["tokens", "add", "nobody"]));

    ok(&db.run(&["tokens", "revoke", "alice", "--label", "ci"]));
    assert!(admin::find_token(&db.pool, &t).await.unwrap().is_none());
    assert!(admin::find_token(&db.pool, &t2).await.unwrap().is_some());
    // A disabled operator's tokens stop working, and they cannot log in.
    ok(&db.run(&["operators", "disable", "alice"]));
    assert!(admin::find_token(&db.pool, &t2).await.unwrap().is_none());
    assert!(
        admin::login(&db.pool, "alice", "new password 1")
            .await
            .unwrap()
            .is_none()
    );
    ok(&db.run(&["operators", "enable", "alice"]));
    assert!(admin::find_token(&db.pool, &t2).await.unwrap().is_some());
    ok(&db.run(&["operators", "remove", "alice"]));
    assert!(admin::find_token(&db.pool, &t2).await.unwrap().is_none());
    fails(&db.run(&["operators", "remove", "alice"]));
    db.drop_db().await;
}

#[tokio::test]
async fn usage_and_errors() {
    let help = run(&["--help"], "", None);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("devices add ID --kind"));
    let e = fails(&run(&["devices", "list"], "", None));
    assert!(e.contains("DATABASE_URL"), "{e}");
    let e = fails(&run(&["frobnicate"], "", Some("postgres://127.0.0.1:1/x")));
    assert!(e.contains("unknown command"), "{e}");
    let e = fails(&run(
        &["devices", "list", "--colour=red"],
        "",
        Some("postgres://127.0.0.1:1/x"),
    ));
    assert!(e.contains("unknown option"), "{e}");
    let e = fails(&run(
        &["devices", "add", "x"],
        "",
        Some("postgres://127.0.0.1:1/x"),
    ));
    assert!(e.contains("--kind"), "{e}");
    // Not migrated: the error says what to do.
    let db = Db::create().await;
    let e = fails(&db.run(&["devices", "list"]));
    assert!(e.contains("lentera migrate"), "{e}");
    db.drop_db().await;
}
