//! `web migrate` on a fresh PostgreSQL database (the test server `scripts/test.sh` starts): it
//! applies every migration and exits, a second run has nothing to do, and web configured not to
//! migrate on start refuses a database that was not migrated and starts on one that was.

use std::process::Command;

use backless_common::config::FromSettings;
use backless_web::{App, WebConfig};

fn migrate(db_url: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_web"))
        .arg("migrate")
        .env("BACKLESS_DATABASE_URL", db_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run web migrate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn config(db_url: &str) -> WebConfig {
    WebConfig::from_pairs([
        ("BACKLESS_DATABASE_URL", db_url),
        ("BACKLESS_STORAGE_URL", "memory://"),
        ("BACKLESS_WEB_ADDR", "127.0.0.1:0"),
        ("BACKLESS_MIGRATE_ON_START", "false"),
    ])
    .unwrap()
}

#[tokio::test]
async fn migrate_subcommand_prepares_the_database_before_rollout() {
    let db_url = backless_common::testing::postgres_database().await;

    let err = App::build(config(&db_url))
        .await
        .err()
        .expect("an unmigrated database must be refused");
    assert!(err.to_string().contains("web migrate"), "{err}");

    let (ok, stdout, stderr) = migrate(&db_url);
    assert!(ok, "web migrate failed: {stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("applied ")),
        "{stdout}"
    );
    let (ok, stdout, stderr) = migrate(&db_url);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "database is up to date");

    let app = App::build(config(&db_url)).await.unwrap();
    assert_eq!(app.shared().db.count().await.unwrap(), 0);

    // A database it cannot reach: a clear failure and a non-zero exit, not a hang.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (ok, _, stderr) = migrate(&format!("postgres://x:y@127.0.0.1:{port}/none"));
    assert!(!ok);
    assert!(stderr.contains("migrating the database"), "{stderr}");
    let (ok, _, stderr) = {
        let out = Command::new(env!("CARGO_BIN_EXE_web"))
            .arg("migrat")
            .output()
            .unwrap();
        (
            out.status.success(),
            (),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(!ok);
    assert!(stderr.contains("usage: web"), "{stderr}");
}
