//! A killed import leaves the store openable with none or all of the file's keys, on the
//! engine under test (`PORTAL_TEST_ENGINE`): a real `portal-under-test import` process is
//! SIGKILLed at random moments of its write stage (after the parse and seal, which write
//! nothing), then the store is opened and its keys counted.
//!
//! CI size: 100k keys, 5 kills. The full run (`make import-crash`: 1M keys, 20 kills, the
//! release binary) sets `IMPORT_CRASH_KEYS`, `IMPORT_CRASH_KILLS` and `PORTAL_IMPORT_BIN`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use portal_under_test::store::{PgStore, SqliteStore, Store};
use rand::Rng;
use serde_json::Value;

use crate::common::Key;

/// What the import logs when the parse and seal stage is over and the write begins.
const WRITE_STARTS: &str = "import stage: parsed, validated and sealed";
/// What each engine logs when its rows are written and it is about to commit.
const COMMIT_STARTS: &str = "import store phases";

/// When the import logged the start of its write stage and of its commit.
struct Marks {
    write: mpsc::Receiver<Instant>,
    commit: mpsc::Receiver<Instant>,
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn binary() -> PathBuf {
    std::env::var_os("PORTAL_IMPORT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_portal-under-test")))
}

/// `n` records as the generator writes them: one device per key, 1,000 users.
fn write_keys(path: &Path, n: usize) {
    let mut text = String::with_capacity(n * 260);
    for i in 0..n {
        let mut v = Key::random().json();
        v["device"] = Value::from(format!("PC-{i:08}"));
        v["user"] = Value::from(format!("CONTOSO\\user{:04}", i % 1000));
        text.push_str(&v.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// The store of one trial: a data dir and, on PostgreSQL, a fresh database.
struct Target {
    data: PathBuf,
    url: Option<String>,
}

impl Target {
    fn new(root: &Path, name: &str) -> Target {
        Target {
            data: root.join(name),
            url: crate::common::engine_url(),
        }
    }

    fn start_import(&self, file: &Path) -> (Child, Marks) {
        let mut cmd = Command::new(binary());
        cmd.arg("import")
            .arg(file)
            .arg("--data-dir")
            .arg(&self.data)
            .env("RUST_LOG", "info")
            // A page cache far smaller than the store: SQLite writes pages to the file
            // mid-transaction, as a 10M-key import does with the default cache.
            .env("PORTAL_IMPORT_CACHE_MIB", "4")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(url) = &self.url {
            cmd.args(["--database-url", url]);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (write_tx, write) = mpsc::channel();
        let (commit_tx, commit) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(WRITE_STARTS) {
                    let _ = write_tx.send(Instant::now());
                }
                if line.contains(COMMIT_STARTS) {
                    let _ = commit_tx.send(Instant::now());
                }
            }
        });
        (child, Marks { write, commit })
    }

    /// Deletes the store (the full run makes twenty; disk is not endless).
    fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.data);
        let (Some(url), Ok(server)) = (self.url, std::env::var("PORTAL_TEST_PG_URL")) else {
            return;
        };
        let name = url.rsplit('/').next().unwrap_or_default().to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                // FORCE: the killed importer's server process may not have gone yet.
                client
                    .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
                    .await
                    .unwrap();
            });
        })
        .join()
        .unwrap();
    }

    /// Opens the store as the portal does and counts its keys (SQLite: after an integrity
    /// check of the file as the open left it).
    fn count_keys(&self) -> usize {
        match &self.url {
            Some(url) => PgStore::open(url).unwrap().current_keys().unwrap().len(),
            None => {
                let path = self.data.join("portal.sqlite3");
                let store = SqliteStore::open(&path).unwrap();
                let n = store.current_keys().unwrap().len();
                drop(store);
                let c = rusqlite::Connection::open(&path).unwrap();
                let check: String = c
                    .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                    .unwrap();
                assert_eq!(check, "ok", "integrity check of {}", path.display());
                n
            }
        }
    }
}

#[test]
fn a_killed_import_leaves_none_or_all_of_the_keys() {
    let keys = env_or("IMPORT_CRASH_KEYS", 100_000);
    let kills = env_or("IMPORT_CRASH_KILLS", 5);
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("keys.jsonl");
    write_keys(&file, keys);

    // Undisturbed: how long the write stage takes, and that it stores every key.
    let full = Target::new(root.path(), "full");
    let started = Instant::now();
    let (mut child, marks) = full.start_import(&file);
    let status = child.wait().unwrap();
    let ended = Instant::now();
    assert!(status.success(), "the undisturbed import failed");
    let write_began = marks
        .write
        .recv_timeout(Duration::from_secs(5))
        .expect("the import logs the start of its write stage");
    let commit_began = marks
        .commit
        .recv_timeout(Duration::from_secs(5))
        .expect("the store logs the start of its commit");
    let write_window = ended - write_began;
    let commit_window = ended - commit_began;
    assert_eq!(full.count_keys(), keys);
    full.remove();
    eprintln!(
        "import of {keys} keys: {:.2} s, of which write {:.2} s, commit and after {:.2} s",
        (ended - started).as_secs_f64(),
        write_window.as_secs_f64(),
        commit_window.as_secs_f64()
    );

    let (mut none, mut all) = (0, 0);
    let mut last = None;
    for k in 0..kills {
        let target = Target::new(root.path(), &format!("kill-{k}"));
        let (mut child, marks) = target.start_import(&file);
        // Every other kill lands in the commit (and what follows it), where an unjournaled
        // write would leave a half-written file; the others anywhere in the write stage.
        let (stage, mark, window) = if k % 2 == 1 {
            ("commit", &marks.commit, commit_window)
        } else {
            ("write", &marks.write, write_window)
        };
        let began = mark
            .recv_timeout(Duration::from_secs(600))
            .expect("the import reaches the stage");
        let delay = window.mul_f64(rand::rng().random_range(0.0..1.0));
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        child.kill().unwrap();
        child.wait().unwrap();
        let killed_at = began.elapsed();
        let n = target.count_keys();
        eprintln!(
            "kill {k}: {:.0} ms into the {stage} stage ({}): {n} keys",
            killed_at.as_secs_f64() * 1000.0,
            if finished {
                "had already exited"
            } else {
                "running"
            }
        );
        assert!(
            n == 0 || n == keys,
            "kill {k}: the store holds {n} of {keys} keys"
        );
        if n == 0 {
            none += 1;
        } else {
            all += 1;
        }
        if let Some(done) = last.replace(target) {
            done.remove();
        }
    }
    eprintln!("{kills} kills of an import of {keys} keys: {none} left none, {all} left all");

    // The killed store is usable: the same import then completes.
    if let Some(target) = last {
        let (mut child, _) = target.start_import(&file);
        assert!(child.wait().unwrap().success());
        assert_eq!(target.count_keys(), keys);
        target.remove();
    }
    // Leave a fresh root each run (the temp dir goes with `root`).
    let _ = std::fs::remove_file(&file);
}

/// The import's rules on the engine under test, against a store that already holds rows (so
/// the checks against stored devices, keys and associations run): a key repeated in the
/// file or already stored with the same device and password is skipped, with another
/// password or device it is refused naming its line and nothing is written; stored devices
/// are reused by name (case-insensitively); an imported user joins an existing association.
#[test]
fn the_import_rules_hold_against_a_store_with_rows() {
    use portal_under_test::crypto::Sealer;
    use portal_under_test::import::{import_jsonl, ImportError};

    let dir = tempfile::tempdir().unwrap();
    let store =
        portal_under_test::store::open(crate::common::engine_url().as_deref(), dir.path()).unwrap();
    let sealer = Sealer::from_key(&[7; 32]);
    let line = |dev: &str, user: &str, k: &Key| {
        let mut v = k.json();
        v["device"] = Value::from(dev);
        v["user"] = Value::from(user);
        v.to_string()
    };
    let (a, b, c, d) = (Key::random(), Key::random(), Key::random(), Key::random());
    let first = [
        line("PC-1", "CONTOSO\\alice", &a),
        line("PC-2", "CONTOSO\\bob", &b),
    ];
    assert_eq!(
        import_jsonl(&first.join("\n"), &sealer, store.as_ref())
            .unwrap()
            .len(),
        2
    );
    let pc1 = store.device_by_name("PC-1").unwrap().unwrap();
    store
        .record_sign_in(
            pc1.row,
            "CONTOSO\\alice",
            portal_under_test::store::SignInKind::Local,
        )
        .unwrap();

    // Stored key again (skipped), a new key twice in the file on a stored device named in
    // other case (stored once), a new device.
    let second = [
        line("PC-1", "CONTOSO\\alice", &a),
        line("pc-1", "CONTOSO\\Alice", &c),
        line("PC-1", "CONTOSO\\alice", &c),
        line("PC-3", "CONTOSO\\carol", &d),
    ];
    let created = import_jsonl(&second.join("\n"), &sealer, store.as_ref()).unwrap();
    assert_eq!(created.len(), 2);
    assert_eq!(store.key_by_id(c.id).unwrap().unwrap().device_row, pc1.row);
    assert!(store.key_by_id(d.id).unwrap().is_some());
    // The local sign-in stays; the association is now imported as well.
    let assocs = store.associations_of_user("contoso\\alice").unwrap();
    assert_eq!(assocs.len(), 1);
    assert!(assocs[0].1.local && assocs[0].1.imported);

    // Refused, naming the line, and nothing of the file is written: a stored key on another
    // device; a key repeated in the file with another password.
    let e = Key::random();
    let mut other_pw = Key::random();
    other_pw.id = e.id;
    let moved = [
        line("PC-9", "CONTOSO\\x", &e),
        line("PC-2", "CONTOSO\\bob", &a),
    ];
    let repeated = [
        line("PC-9", "CONTOSO\\x", &e),
        line("PC-9", "CONTOSO\\x", &Key::random()),
        line("PC-9", "CONTOSO\\x", &other_pw),
    ];
    for (file, bad_line) in [(&moved[..], 2), (&repeated[..], 3)] {
        match import_jsonl(&file.join("\n"), &sealer, store.as_ref()) {
            Err(ImportError::Line { line, field, .. }) => {
                assert_eq!((line, field.as_str()), (bad_line, "key_protector_id"))
            }
            other => panic!("expected a refusal naming line {bad_line}, got {other:?}"),
        }
        assert!(store.key_by_id(e.id).unwrap().is_none());
        assert!(store.device_by_name("PC-9").unwrap().is_none());
    }
    assert_eq!(store.current_keys().unwrap().len(), 4);
}

/// A new device keeps its first imported user on its row and its other users as
/// associations (schema 4 on SQLite, 5 on PostgreSQL): the help desk sees every user of the
/// device, each user sees the device, once, and a sign-in joins the imported user.
#[test]
fn every_imported_user_of_a_device_is_associated_wherever_it_is_kept() {
    use portal_under_test::crypto::Sealer;
    use portal_under_test::import::import_jsonl;
    use portal_under_test::store::SignInKind;

    let dir = tempfile::tempdir().unwrap();
    let store =
        portal_under_test::store::open(crate::common::engine_url().as_deref(), dir.path()).unwrap();
    let sealer = Sealer::from_key(&[7; 32]);
    let line = |dev: &str, user: Option<&str>| {
        let mut v = Key::random().json();
        v["device"] = Value::from(dev);
        v["user"] = user.map_or(Value::Null, Value::from);
        v.to_string()
    };
    let file = [
        line("PC-1", None),
        line("PC-1", Some("CONTOSO\\bob")),
        line("pc-1", Some("contoso\\BOB")),
        line("PC-1", Some("CONTOSO\\alice")),
        line("PC-2", Some("CONTOSO\\bob")),
    ];
    assert_eq!(
        import_jsonl(&file.join("\n"), &sealer, store.as_ref())
            .unwrap()
            .len(),
        5
    );
    let pc1 = store.device_by_name("PC-1").unwrap().unwrap();
    let pc2 = store.device_by_name("PC-2").unwrap().unwrap();
    assert_eq!(
        store.users_of_device(pc1.row).unwrap(),
        vec!["CONTOSO\\alice".to_string(), "CONTOSO\\bob".to_string()]
    );
    let mut bob = store.associations_of_user("contoso\\bob").unwrap();
    bob.sort_by_key(|(d, _)| *d);
    let rows: Vec<i64> = bob.iter().map(|(d, _)| *d).collect();
    let mut want = vec![pc1.row, pc2.row];
    want.sort();
    assert_eq!(rows, want);
    assert!(bob.iter().all(|(_, a)| a.imported && !a.local && !a.remote));
    // A sign-in of the user kept on the row: one association, both ways.
    store
        .record_sign_in(pc2.row, "CONTOSO\\Bob", SignInKind::Remote)
        .unwrap();
    let on_pc2: Vec<_> = store
        .associations_of_user("CONTOSO\\BOB")
        .unwrap()
        .into_iter()
        .filter(|(d, _)| *d == pc2.row)
        .collect();
    assert_eq!(on_pc2.len(), 1);
    assert!(on_pc2[0].1.imported && on_pc2[0].1.remote);
    assert_eq!(store.users_of_device(pc2.row).unwrap().len(), 1);
    // Importing the file again adds nothing, not even association rows for the users on
    // the device rows.
    assert!(import_jsonl(&file.join("\n"), &sealer, store.as_ref())
        .unwrap()
        .is_empty());
    assert_eq!(store.users_of_device(pc1.row).unwrap().len(), 2);
    assert_eq!(
        store.associations_of_user("contoso\\alice").unwrap().len(),
        1
    );
}
