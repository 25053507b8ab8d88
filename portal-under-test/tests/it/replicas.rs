//! Several real `portal-under-test serve` processes on one real PostgreSQL database (the
//! tests' server from `scripts/with-postgres.sh`), sharing one data directory (the key
//! file), driven over real loopback HTTP: what one replica does, the other sees (API.md
//! "Replicas"). The `pg_restart_` test restarts that server, so `make test` runs it alone on
//! a cluster of its own; the others share the suite's server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{fresh_database, ready_line, Key, PASSWORD};

const BIN: &str = env!("CARGO_BIN_EXE_portal-under-test");
/// How fast a key escrowed on one replica must be found on another (issue 21).
const REPLICA_LAG_BOUND: Duration = Duration::from_secs(1);

/// The PostgreSQL server of the tests (never a skip: without it the test fails, saying why).
fn pg_server() -> String {
    std::env::var("PORTAL_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "the replica tests need PORTAL_TEST_PG_URL (run them under scripts/with-postgres.sh)"
        )
    })
}

pub struct Replica {
    child: Child,
    pub url: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

/// N replicas on one fresh database, one data dir, one admin token, one HTTP client
/// (cookies for 127.0.0.1 go to every replica, as behind a load balancer).
pub struct Replicas {
    pub dir: tempfile::TempDir,
    pub db: String,
    pub admin: String,
    pub replicas: Vec<Replica>,
    pub http: reqwest::Client,
}

fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

impl Replicas {
    pub fn start(n: usize) -> Replicas {
        let dir = tempfile::tempdir().unwrap();
        let db = fresh_database(&pg_server());
        let out = Command::new(BIN)
            .args(["admin", "bootstrap", "--data-dir"])
            .arg(data_dir(dir.path()))
            .args(["--database-url", &db])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let admin = String::from_utf8(out.stdout).unwrap().trim().to_string();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"argon2":{"m_cost_kib":64,"t_cost":1,"p_cost":1}}"#,
        )
        .unwrap();
        let mut r = Replicas {
            dir,
            db,
            admin,
            replicas: Vec::new(),
            http: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        };
        for _ in 0..n {
            let replica = r.spawn();
            r.replicas.push(replica);
        }
        r
    }

    /// Starts one more `serve` process on the database; returns when it is ready.
    pub fn spawn(&self) -> Replica {
        let i = self.replicas.len();
        let log = std::fs::File::create(self.dir.path().join(format!("replica-{i}.log"))).unwrap();
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--insecure-http",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir(self.dir.path()))
            .args(["--database-url", &self.db])
            .arg("--config")
            .arg(self.dir.path().join("config.json"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let ready = ready_line(&mut child, &format!("replica {i}"));
        Replica {
            child,
            url: ready["url"].as_str().unwrap().to_string(),
        }
    }

    pub fn url(&self, i: usize) -> &str {
        &self.replicas[i].url
    }

    /// SIGKILL, no shutdown.
    pub fn kill(&mut self, i: usize) {
        self.replicas[i].child.kill().unwrap();
        self.replicas[i].child.wait().unwrap();
    }

    /// POSTs JSON to replica `i`: (status, body, Retry-After). A connection error is Err.
    pub async fn try_post(
        &self,
        i: usize,
        path: &str,
        token: &str,
        body: Value,
    ) -> Result<(StatusCode, Value, Option<String>), reqwest::Error> {
        let r = self
            .http
            .post(format!("{}{path}", self.url(i)))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let body = r.json().await.unwrap_or(Value::Null);
        Ok((status, body, retry))
    }

    pub async fn post(
        &self,
        i: usize,
        path: &str,
        token: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let (s, b, _) = self.try_post(i, path, token, body).await.unwrap();
        (s, b)
    }

    /// A help desk account (advanced, exempt from the failed-lookup limit unless
    /// `limited`) made on replica `i`; its API token.
    pub async fn helpdesk(&self, i: usize, name: &str) -> String {
        let (s, b) = self
            .post(
                i,
                "/api/admin/accounts",
                &self.admin,
                json!({"username": name, "password": PASSWORD, "role": "advanced_helpdesk"}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        let (s, b) = self
            .post(
                i,
                &format!("/api/admin/accounts/{name}/api-tokens"),
                &self.admin,
                json!({}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        b["token"].as_str().unwrap().to_string()
    }

    /// A device enrolled on replica `i` with an enrollment token made on replica `token_on`.
    pub async fn enroll(&self, token_on: usize, i: usize, name: &str) -> String {
        let (s, b) = self
            .post(
                token_on,
                "/api/admin/enrollment-tokens",
                &self.admin,
                json!({}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
        let (s, b) = self
            .post(
                i,
                "/api/agent/enroll",
                "",
                json!({"enrollment_token": b["token"], "device_name": name}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        b["credential"].as_str().unwrap().to_string()
    }

    pub async fn lookup(&self, i: usize, token: &str, key_id: &str) -> (StatusCode, Value) {
        self.post(
            i,
            "/api/helpdesk/lookup",
            token,
            json!({"key_id": key_id, "reason": "Other"}),
        )
        .await
    }

    /// Waits until replica `i` shows `key` (polling); how long it took.
    pub async fn wait_until_found(&self, i: usize, token: &str, key: &Key) -> Duration {
        let t = Instant::now();
        loop {
            let (s, b) = self.lookup(i, token, &key.guid()).await;
            if s == 200 {
                assert_eq!(b["recovery_password"], key.password.as_str());
                return t.elapsed();
            }
            assert_eq!(s, 404, "{b}");
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "replica {i} never found {}",
                key.guid()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Exempts the named help desk accounts from the failed-lookup limit (set on replica 0).
    pub async fn exempt(&self, names: &[&str]) {
        let (s, b) = self
            .put_settings(0, json!({"lookup_rate_limit_exempt": names}))
            .await;
        assert_eq!(s, 200, "{b}");
    }

    pub async fn put_settings(&self, i: usize, patch: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .put(format!("{}/api/admin/settings", self.url(i)))
            .bearer_auth(&self.admin)
            .json(&patch)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    pub async fn get_settings(&self, i: usize) -> Value {
        let r = self
            .http
            .get(format!("{}/api/admin/settings", self.url(i)))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        r.json().await.unwrap()
    }

    /// How many of `keys` the database holds (read directly, not through a replica).
    pub fn stored_count(&self, keys: &[u128]) -> usize {
        let ids: Vec<Vec<u8>> = keys.iter().map(|k| k.to_be_bytes().to_vec()).collect();
        self.query_i64_with("SELECT count(*) FROM keys WHERE key_id = ANY($1)", ids) as usize
    }

    /// The one BIGINT/INTEGER an SQL query returns, read directly from the database.
    pub fn query_i64(&self, sql: &str) -> i64 {
        self.query_i64_with(
            &format!("SELECT ({sql})::BIGINT WHERE $1::BYTEA[] IS NOT NULL"),
            Vec::new(),
        )
    }

    fn query_i64_with(&self, sql: &str, ids: Vec<Vec<u8>>) -> i64 {
        let (db, sql) = (self.db.clone(), sql.to_string());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let r = client.query_one(&sql, &[&ids]).await.unwrap();
                r.get::<_, i64>(0)
            })
        })
        .join()
        .unwrap()
    }
}

/// Escrows `key` through replica `i`; true if acknowledged (201).
async fn escrow(r: &Replicas, i: usize, cred: &str, key: &Key) -> bool {
    matches!(
        r.try_post(i, "/api/agent/keys", cred, key.json()).await,
        Ok((StatusCode::CREATED, _, _))
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_escrowed_on_one_replica_is_found_on_the_other_within_a_second() {
    let r = Replicas::start(2);
    // Made on A, used on B at once: account, API token, enrollment token.
    let hd = r.helpdesk(0, "hd").await;
    r.exempt(&["hd"]).await;
    let cred = r.enroll(0, 1, "PC-REPL").await;
    for round in 0..5 {
        let (from, to) = (round % 2, 1 - round % 2);
        let key = Key::random();
        let (s, b) = r.post(from, "/api/agent/keys", &cred, key.json()).await;
        assert_eq!(s, 201, "{b}");
        let lag = r.wait_until_found(to, &hd, &key).await;
        assert!(
            lag < REPLICA_LAG_BOUND,
            "round {round}: found on {to} after {lag:?}"
        );
        // Shown on `to`: on the rotation list when the agent checks in on `from`.
        let (s, b) = r.post(from, "/api/agent/check-in", &cred, json!({})).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["rotate_keys"], json!([key.guid()]), "round {round}");
        // Rotated on `from`: `to` stops offering the old key within the bound.
        let new = Key::random();
        assert_eq!(
            r.post(from, "/api/agent/keys", &cred, new.json()).await.0,
            201
        );
        let (s, b) = r
            .post(
                from,
                "/api/agent/rotations",
                &cred,
                json!({"old_key_protector_id": key.guid(), "new_key_protector_id": new.guid()}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        let t = Instant::now();
        loop {
            let (s, _) = r.lookup(to, &hd, &key.prefix8()).await;
            if s == 404 {
                break;
            }
            assert!(
                t.elapsed() < REPLICA_LAG_BOUND,
                "round {round}: old key still offered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (s, b) = r.post(to, "/api/agent/check-in", &cred, json!({})).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["rotate_keys"], json!([]), "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_settings_and_idle_expiry_hold_across_replicas() {
    let r = Replicas::start(2);
    r.helpdesk(0, "hd").await;
    // Sign in on A (the form's CSRF token from A), then use the session on B.
    let form = r
        .http
        .get(format!("{}/HelpDesk/login", r.url(0)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = crate::common::csrf_of(&form).unwrap();
    let resp = r
        .http
        .post(format!("{}/HelpDesk/login", r.url(0)))
        .form(&[
            ("username", "hd"),
            ("password", PASSWORD),
            ("csrf_token", &csrf),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let page = r
        .http
        .get(format!("{}/HelpDesk", r.url(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.status(),
        200,
        "the session made on A is not valid on B"
    );
    assert!(page.text().await.unwrap().contains("id=\"key-id\""));
    // Settings saved on B are in force on A within the bound.
    let (s, b) = r.put_settings(1, json!({"company_name": "Fabrikam"})).await;
    assert_eq!(s, 200, "{b}");
    let t = Instant::now();
    while r.get_settings(0).await["company_name"] != "Fabrikam" {
        assert!(
            t.elapsed() < REPLICA_LAG_BOUND,
            "settings saved on B not seen on A"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Idle expiry holds on every replica: with a 1 s timeout saved on A, the session last
    // used on A and then left idle is expired on B (401, the expiry page), and gone on A.
    let (s, b) = r
        .put_settings(0, json!({"idle_timeout_secs": 1, "warning_secs": 0}))
        .await;
    assert_eq!(s, 200, "{b}");
    let t = Instant::now();
    while r.get_settings(1).await["idle_timeout_secs"] != 1 {
        assert!(
            t.elapsed() < REPLICA_LAG_BOUND,
            "the timeout saved on A not seen on B"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let page = r
        .http
        .get(format!("{}/HelpDesk", r.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "the session must still be live on A");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let page = r
        .http
        .get(format!("{}/HelpDesk", r.url(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 401, "the idle session must be expired on B");
    let page = r
        .http
        .get(format!("{}/HelpDesk", r.url(0)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        page.status(),
        303,
        "the expired session must be gone on A too"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_failed_lookup_limit_and_the_sign_in_throttle_hold_across_replicas() {
    let r = Replicas::start(2);
    let hd = r.helpdesk(0, "hd").await;
    let (s, b) = r.put_settings(0, json!({"lookup_failure_limit": 5})).await;
    assert_eq!(s, 200, "{b}");
    let t = Instant::now();
    while r.get_settings(1).await["lookup_failure_limit"] != 5 {
        assert!(
            t.elapsed() < REPLICA_LAG_BOUND,
            "the limit set on A not seen on B"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // 24 failing lookups at once, half on each replica: exactly 5 get through.
    let lookups = (0..24).map(|i| {
        let (r, hd) = (&r, &hd);
        async move { r.lookup(i % 2, hd, &Key::random().guid()).await.0 }
    });
    let statuses = futures_join_all(lookups).await;
    let failures = statuses.iter().filter(|s| **s == 404).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((failures, limited), (5, 19), "{statuses:?}");

    // Sign-in throttle: 5 wrong passwords spread over both (3 on A, 2 on B), counted once in
    // the database; then the right password is refused on both while the 1 s back-off runs
    // (neither replica alone has 5 failures).
    for i in 0..5 {
        let status = sign_in(&r, i % 2, "hd", "wrong password").await;
        assert_eq!(status, 401, "attempt {i}");
    }
    let last_failure = Instant::now();
    assert_eq!(
        r.query_i64("SELECT count FROM sign_in_failures WHERE subject = 'account:hd'"),
        5
    );
    let statuses = [
        sign_in(&r, 0, "hd", PASSWORD).await,
        sign_in(&r, 1, "hd", PASSWORD).await,
    ];
    // Only while the back-off surely runs (a loaded machine may take longer than 1 s).
    if last_failure.elapsed() < Duration::from_millis(900) {
        assert_eq!(
            statuses,
            [StatusCode::TOO_MANY_REQUESTS; 2],
            "a replica missed failures"
        );
    }
}

/// Signs in on the help desk site of replica `i` (a fresh client: its own form); the status.
async fn sign_in(r: &Replicas, i: usize, user: &str, password: &str) -> StatusCode {
    let c = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = c
        .get(format!("{}/HelpDesk/login", r.url(i)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = crate::common::csrf_of(&form).unwrap();
    c.post(format!("{}/HelpDesk/login", r.url(i)))
        .form(&[
            ("username", user),
            ("password", password),
            ("csrf_token", &csrf),
        ])
        .send()
        .await
        .unwrap()
        .status()
}

/// Runs the futures concurrently (on this task), results in order.
async fn futures_join_all<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in fs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in set.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

/// Escrows random keys on replica `i` until `stop`; the acknowledged ones, and every
/// refusal's (status, Retry-After) (None: the connection failed).
async fn escrow_traffic(
    r: &Replicas,
    i: usize,
    cred: &str,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> (Vec<u128>, Vec<Option<(StatusCode, Option<String>)>>) {
    let (mut acked, mut refused) = (Vec::new(), Vec::new());
    while !*stop.borrow() {
        let key = Key::random();
        match r.try_post(i, "/api/agent/keys", cred, key.json()).await {
            Ok((StatusCode::CREATED, _, _)) => acked.push(key.id),
            Ok((s, _, retry)) => refused.push(Some((s, retry))),
            Err(_) => {
                refused.push(None);
                // A dead replica refuses at once: do not spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    (acked, refused)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_mid_traffic_loses_nothing_acknowledged_and_the_other_serves_on() {
    let mut r = Replicas::start(2);
    let hd = r.helpdesk(0, "hd").await;
    r.exempt(&["hd"]).await;
    let creds = [r.enroll(0, 0, "PC-A").await, r.enroll(1, 1, "PC-B").await];
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let rr = &r;
    let traffic = async {
        let (a, b) = tokio::join!(
            escrow_traffic(rr, 0, &creds[0], &stop),
            escrow_traffic(rr, 1, &creds[1], &stop)
        );
        (a, b)
    };
    let killer = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let pid = rr.replicas[0].child.id();
        let status = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::sleep(Duration::from_millis(700)).await;
        stop_tx.send(true).unwrap();
    };
    let (((acked_a, refused_a), (acked_b, refused_b)), ()) = tokio::join!(traffic, killer);
    r.kill(0); // reaps the killed process
    assert!(!acked_a.is_empty() && !acked_b.is_empty());
    // B never refused while A died.
    assert!(refused_b.is_empty(), "B refused: {refused_b:?}");
    // A's refusals are only the dead connection, never an error answer.
    assert!(
        refused_a.iter().all(Option::is_none),
        "A answered: {refused_a:?}"
    );
    let all: Vec<u128> = acked_a.iter().chain(&acked_b).copied().collect();
    assert_eq!(r.stored_count(&all), all.len(), "acknowledged escrows lost");
    // Everything A acknowledged is found through B.
    for id in &acked_a {
        let guid = portal_under_test::keyid::format_guid(*id);
        let (s, b) = r.lookup(1, &hd, &guid).await;
        assert_eq!(s, 200, "{guid} escrowed on A not found on B: {b}");
    }
    // A replacement replica starts on the same database and data dir and serves.
    let replacement = r.spawn();
    r.replicas[0] = replacement;
    let key = Key::random();
    assert!(escrow(&r, 0, &creds[1], &key).await);
    r.wait_until_found(1, &hd, &key).await;
}

/// Runs `pg_ctl` (as `scripts/with-postgres.sh` exports it) with `args`.
fn pg_ctl(args: &[&str]) {
    let ctl = std::env::var("PORTAL_TEST_PG_CTL").unwrap_or_else(|_| {
        panic!("the restart test needs PORTAL_TEST_PG_CTL (run it under scripts/with-postgres.sh)")
    });
    let mut words = ctl.split_whitespace();
    let status = Command::new(words.next().unwrap())
        .args(words)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctl {args:?} failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn pg_restart_during_escrow_gives_503_then_replicas_reconnect_and_nothing_acknowledged_is_lost(
) {
    let r = Replicas::start(2);
    let hd = r.helpdesk(0, "hd").await;
    r.exempt(&["hd"]).await;
    let creds = [r.enroll(0, 0, "PC-A").await, r.enroll(1, 1, "PC-B").await];
    let opts = std::env::var("PORTAL_TEST_PG_OPTS").unwrap_or_default();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let rr = &r;
    let traffic = async {
        tokio::join!(
            escrow_traffic(rr, 0, &creds[0], &stop),
            escrow_traffic(rr, 1, &creds[1], &stop)
        )
    };
    let restarter = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::spawn_blocking(|| pg_ctl(&["-m", "fast", "-w", "stop"]))
            .await
            .unwrap();
        // Down for a while: every request in this time must be a 503 with Retry-After.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::spawn_blocking(move || pg_ctl(&["-w", "-t", "60", "-o", &opts, "start"]))
            .await
            .unwrap();
        let restarted = Instant::now();
        // Traffic goes on after the restart: both replicas must acknowledge again.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop_tx.send(true).unwrap();
        restarted
    };
    let (((acked_a, refused_a), (acked_b, refused_b)), _) = tokio::join!(traffic, restarter);
    let refused: Vec<_> = refused_a.iter().chain(&refused_b).collect();
    assert!(!refused.is_empty(), "no request saw the database down");
    for x in &refused {
        assert_eq!(
            **x,
            Some((StatusCode::SERVICE_UNAVAILABLE, Some("1".to_string()))),
            "a refusal that is not 503 + Retry-After"
        );
    }
    let all: Vec<u128> = acked_a.iter().chain(&acked_b).copied().collect();
    assert_eq!(r.stored_count(&all), all.len(), "acknowledged escrows lost");
    // Both reconnected by themselves: each escrows again, and each finds the other's key
    // (its change listener reconnected too).
    let (ka, kb) = (Key::random(), Key::random());
    assert!(escrow(&r, 0, &creds[0], &ka).await, "A did not reconnect");
    assert!(escrow(&r, 1, &creds[1], &kb).await, "B did not reconnect");
    assert!(r.wait_until_found(1, &hd, &ka).await < REPLICA_LAG_BOUND);
    assert!(r.wait_until_found(0, &hd, &kb).await < REPLICA_LAG_BOUND);
}
