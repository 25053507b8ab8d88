//! The harness gating a portal of several replicas on one PostgreSQL database (the tests'
//! server from `scripts/with-postgres.sh`; `make test` runs these in its PostgreSQL run):
//! replicas given by repeated `--portal-url`, and replicas the harness starts itself
//! (`--embedded-replicas N --database-url`).

use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::common::{harness, portal_bin, ready_line};

/// Scenarios that escrow (device agent), then recover through self-service (and have the
/// agent check in for rotation) and through the help desk.
const SCENARIOS: [&str; 4] = [
    "--filter",
    "name:key-kept-until-rotated",
    "--filter",
    "name:help-desk-with-end-user",
];

/// A fresh database on the tests' PostgreSQL server; its URL.
fn fresh_database() -> String {
    let server = std::env::var("PORTAL_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "the replica tests need PORTAL_TEST_PG_URL (run them under scripts/with-postgres.sh)"
        )
    });
    let name = format!("harness_replicas_{}_{}", std::process::id(), rand_suffix());
    let out = Command::new("psql")
        .arg(&server)
        .args([
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (base, _) = server.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// `psql -tAc SQL` on `db`: the trimmed output.
fn psql(db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(db)
        .args(["-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

struct Replica {
    child: Child,
    url: String,
    ca: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `serve` on `data` and `db`, logging every request (tower_http at debug) to `log`.
fn replica(data: &Path, db: &str, config: &Path, log: &Path) -> Replica {
    let mut child = Command::new(portal_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(["--database-url", db, "--config"])
        .arg(config)
        .env("RUST_LOG", "warn,tower_http=debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let ready = ready_line(&mut child, "replica");
    Replica {
        child,
        url: ready["url"].as_str().unwrap().to_string(),
        ca: ready["ca_cert"].as_str().unwrap().to_string(),
    }
}

#[test]
fn a_scenario_escrows_through_one_replica_and_recovers_through_another() {
    let dir = tempfile::tempdir().unwrap();
    let (data, db) = (dir.path().join("data"), fresh_database());
    let out = Command::new(portal_bin())
        .args(["admin", "bootstrap", "--data-dir"])
        .arg(&data)
        .args(["--database-url", &db])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"argon2":{"m_cost_kib":64,"t_cost":1,"p_cost":1}}"#,
    )
    .unwrap();
    let logs = [dir.path().join("a.log"), dir.path().join("b.log")];
    let a = replica(&data, &db, &config, &logs[0]);
    // Started after A: the TLS material A generated in the shared data dir is reused.
    let b = replica(&data, &db, &config, &logs[1]);
    assert_eq!(a.ca, b.ca);
    let out = harness()
        .args(["run", "-j", "2"])
        .args(SCENARIOS)
        .args(["--portal-url", &a.url, "--portal-url", &b.url])
        .args(["--portal-ca", &a.ca, "--admin-token", &token])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let [log_a, log_b] = logs.map(|l| without_colours(&std::fs::read_to_string(l).unwrap()));
    // The agent escrowed and checked in only through A; the user and the help desk
    // recovered only through B.
    for path in ["uri=/api/agent/keys", "uri=/api/agent/check-in"] {
        assert!(log_a.contains(path) && !log_b.contains(path), "{path}");
    }
    for path in ["uri=/SelfService/key", "uri=/HelpDesk/key"] {
        assert!(log_b.contains(path) && !log_a.contains(path), "{path}");
    }
}

/// `text` without ANSI colour sequences (`ESC [ ... m`), as the portal's log writes them.
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn harness_run_starts_embedded_replicas_on_a_database() {
    let db = fresh_database();
    let out = harness()
        .args(["run", "-j", "2"])
        .args(SCENARIOS)
        .args(["--embedded-replicas", "2", "--database-url", &db])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The run's keys are in that database, and one was shown and then rotated.
    let keys: u64 = psql(&db, "SELECT count(*) FROM keys").parse().unwrap();
    assert!(keys >= 2, "{keys} keys in the database");
    let superseded: u64 = psql(
        &db,
        "SELECT count(*) FROM keys WHERE superseded_at IS NOT NULL",
    )
    .parse()
    .unwrap();
    assert!(superseded >= 1);
    // Several replicas on SQLite are refused: one process per file.
    let out = harness()
        .args([
            "run",
            "--filter",
            "name:control-reboot",
            "--embedded-replicas",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--database-url"));
}
