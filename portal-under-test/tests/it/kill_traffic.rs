//! SIGKILL of the real portal process in the middle of escrow and help desk lookup traffic,
//! on the engine under test (`PORTAL_TEST_ENGINE`). After every kill the portal restarts on
//! the same store; at the end the store itself is opened and must hold every escrow the
//! portal acknowledged (201), and for every key the lookup API showed, its audit row and its
//! rotation mark. Nothing half-written: every `shown` audit row's key is marked for
//! rotation, and every stored key opens with the data dir's key.
//!
//! CI size: 3 kills. The full run (`make faults`: 20 kills) sets `PORTAL_KILLS`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portal_under_test::crypto::Sealer;
use portal_under_test::keyid::format_guid;
use portal_under_test::store::AuditFilter;
use rand::Rng;
use serde_json::{json, Value};

use crate::common::{ready_line, Key, PASSWORD};

const BIN: &str = env!("CARGO_BIN_EXE_portal-under-test");

fn kills() -> usize {
    std::env::var("PORTAL_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// One portal process on the data dir, and its URL.
pub(crate) struct Portal {
    pub child: Child,
    pub url: String,
}

/// A test that fails half-way must not leave its portal running.
impl Drop for Portal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn db_args(url: &Option<String>) -> Vec<String> {
    url.iter()
        .flat_map(|u| ["--database-url".to_string(), u.clone()])
        .collect()
}

pub(crate) fn start(data: &Path, config: &Path, db: &Option<String>, log: &Path) -> Portal {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--insecure-http",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .args(db_args(db))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let ready = ready_line(&mut child, &format!("the portal (log {})", log.display()));
    Portal {
        child,
        url: ready["url"].as_str().unwrap().to_string(),
    }
}

pub(crate) async fn post(
    c: &reqwest::Client,
    url: &str,
    token: &str,
    body: Value,
) -> reqwest::Result<reqwest::Response> {
    c.post(url).bearer_auth(token).json(&body).send().await
}

/// A bootstrapped data dir under `root`: its admin token, a config with cheap hashing, and
/// the file the portal logs to.
pub(crate) struct Bootstrapped {
    pub data: PathBuf,
    pub log: PathBuf,
    pub config: PathBuf,
    pub admin: String,
}

pub(crate) fn bootstrap(root: &Path, db: &Option<String>) -> Bootstrapped {
    let data = root.join("data");
    let out = Command::new(BIN)
        .args(["admin", "bootstrap", "--data-dir"])
        .arg(&data)
        .args(db_args(db))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let config = root.join("config.json");
    std::fs::write(
        &config,
        r#"{"argon2":{"m_cost_kib":64,"t_cost":1,"p_cost":1}}"#,
    )
    .unwrap();
    Bootstrapped {
        data,
        log: root.join("portal.log"),
        config,
        admin,
    }
}

/// Enrolls a device named `name` through the admin API; returns its credential.
pub(crate) async fn enrolled_device(
    c: &reqwest::Client,
    url: &str,
    admin: &str,
    name: &str,
) -> String {
    let enr: Value = post(
        c,
        &format!("{url}/api/admin/enrollment-tokens"),
        admin,
        json!({}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let dev: Value = post(
        c,
        &format!("{url}/api/agent/enroll"),
        "",
        json!({"enrollment_token": enr["token"], "device_name": name}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    dev["credential"].as_str().unwrap().to_string()
}

/// One escrow body for `key`.
pub(crate) fn escrow_body(key: &Key) -> Value {
    json!({
        "volume_id": "{11111111-2222-3333-4444-555555555555}",
        "key_protector_id": key.guid(),
        "recovery_password": key.password,
        "protector_type": "recovery_password",
    })
}

/// What the clients were told: keys acknowledged by a 201, keys shown by a 200 `shown`.
#[derive(Default)]
struct Told {
    acknowledged: Vec<Key>,
    shown: HashSet<u128>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_portal_keeps_every_acknowledged_key_and_every_shown_keys_audit_row() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::common::engine_url();
    let Bootstrapped {
        data,
        log,
        config,
        admin,
    } = bootstrap(dir.path(), &db);
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Accounts and a device, on a first portal.
    let mut portal = start(&data, &config, &db, &log);
    let url = portal.url.clone();
    let r = post(
        &c,
        &format!("{url}/api/admin/accounts"),
        &admin,
        json!({"username": "hd", "password": PASSWORD, "role": "advanced_helpdesk"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let hd: Value = post(
        &c,
        &format!("{url}/api/admin/accounts/hd/api-tokens"),
        &admin,
        json!({}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let hd = hd["token"].as_str().unwrap().to_string();
    let cred = enrolled_device(&c, &url, &admin, "PC-KILL").await;

    let told = Arc::new(Mutex::new(Told::default()));
    let rounds = kills();
    for round in 0..rounds {
        if round > 0 {
            portal = start(&data, &config, &db, &log);
        }
        let url = portal.url.clone();
        let mut workers = Vec::new();
        // Escrow: each worker escrows fresh keys until the portal is gone.
        for _ in 0..3 {
            let (c, url, cred, told) = (c.clone(), url.clone(), cred.clone(), told.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let key = Key::random();
                    let body = escrow_body(&key);
                    match post(&c, &format!("{url}/api/agent/keys"), &cred, body).await {
                        Ok(r) if r.status() == 201 => told.lock().unwrap().acknowledged.push(key),
                        Ok(r) => panic!("escrow answered {}", r.status()),
                        Err(_) => return,
                    }
                }
            }));
        }
        // Help desk lookups of keys acknowledged so far.
        for _ in 0..2 {
            let (c, url, hd, told) = (c.clone(), url.clone(), hd.clone(), told.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let pick = {
                        let t = told.lock().unwrap();
                        (!t.acknowledged.is_empty()).then(|| {
                            let k =
                                &t.acknowledged[rand::rng().random_range(0..t.acknowledged.len())];
                            (k.id, k.password.clone())
                        })
                    };
                    let Some((id, password)) = pick else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    let body = json!({"key_id": format_guid(id), "reason": "BIOS changed"});
                    let answer =
                        match post(&c, &format!("{url}/api/helpdesk/lookup"), &hd, body).await {
                            Ok(r) => r,
                            Err(_) => return,
                        };
                    assert_eq!(answer.status(), 200);
                    let Ok(v) = answer.json::<Value>().await else {
                        return; // killed while the body was on its way: not shown
                    };
                    assert_eq!(v["outcome"], "shown", "{v}");
                    assert_eq!(v["recovery_password"], password.as_str());
                    told.lock().unwrap().shown.insert(id);
                }
            }));
        }
        let delay = rand::rng().random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        portal.child.kill().unwrap(); // SIGKILL
        portal.child.wait().unwrap();
        for w in workers {
            w.await.unwrap();
        }
    }

    // The store, opened as a restarted portal opens it.
    let store = portal_under_test::open_store(&data, db.as_deref()).unwrap();
    let sealer = Sealer::load_or_create(&data.join("portal.key")).unwrap();
    let told = told.lock().unwrap();
    let mut lost = 0;
    for key in &told.acknowledged {
        match store.key_by_id(key.id).unwrap() {
            Some(rec) => {
                let pw = sealer.open(&key.id.to_be_bytes(), &rec.sealed).unwrap();
                assert_eq!(
                    pw,
                    key.password.as_bytes(),
                    "{}: another password",
                    key.guid()
                );
            }
            None => lost += 1,
        }
    }
    let audit = store.query_audit(&AuditFilter::default()).unwrap();
    let audited_shown: HashSet<String> = audit
        .iter()
        .filter(|a| a.outcome == "shown")
        .filter_map(|a| a.key_id.clone())
        .collect();
    let device = store.device_by_name("PC-KILL").unwrap().unwrap();
    let to_rotate: HashSet<u128> = store
        .keys_to_rotate(device.row)
        .unwrap()
        .into_iter()
        .collect();
    for id in &told.shown {
        assert!(
            audited_shown.contains(&format_guid(*id)),
            "{}: shown, no audit row",
            format_guid(*id)
        );
        assert!(
            to_rotate.contains(id),
            "{}: shown, no rotation mark",
            format_guid(*id)
        );
    }
    // Nothing half-written: an audited disclosure has its mark; every key opens.
    for kid in &audited_shown {
        let id = portal_under_test::keyid::parse_guid(kid).unwrap();
        assert!(
            to_rotate.contains(&id),
            "{kid}: audit row without rotation mark"
        );
    }
    for e in store.current_keys().unwrap() {
        let rec = store.key_by_id(e.key_id).unwrap().unwrap();
        sealer.open(&e.key_id.to_be_bytes(), &rec.sealed).unwrap();
    }
    eprintln!(
        "kills survived: {rounds}; acknowledged keys: {}, lost: {lost}; shown keys: {}, without audit row or rotation mark: 0",
        told.acknowledged.len(),
        told.shown.len()
    );
    assert_eq!(lost, 0, "acknowledged keys lost");
    assert!(
        told.acknowledged.len() > rounds,
        "too little traffic to prove anything"
    );
    assert!(
        !told.shown.is_empty(),
        "no key was shown: the lookups proved nothing"
    );
}
