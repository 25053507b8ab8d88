//! Test helpers: a portal on a temp-dir SQLite store driven through `app()` with `oneshot`,
//! an agent, and a cookie-keeping "browser" that plays the forms.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use portal_under_test::clock::{Clock, ManualClock};
use portal_under_test::config::{Config, SettingsPatch};
use portal_under_test::crypto::{random_token, token_hash, Argon2Config, Sealer};
use portal_under_test::store::{Role, SqliteStore};
use portal_under_test::{app, AppState};
use rand::Rng;
use serde_json::{json, Value};
use tower::ServiceExt;

pub const FAST_ARGON: Argon2Config = Argon2Config {
    m_cost_kib: 64,
    t_cost: 1,
    p_cost: 1,
};

pub const PASSWORD: &str = "correct horse battery";

pub struct Portal {
    pub dir: tempfile::TempDir,
    /// The PostgreSQL database of this portal (None: SQLite in `dir`).
    pub database_url: Option<String>,
    pub state: AppState,
    pub router: Router,
    pub admin_token: String,
    /// Set by [`Portal::with_manual_clock`]: the sessions' clock, moved by [`Portal::advance`].
    pub clock: Option<ManualClock>,
}

/// A config with cheap password hashing, on the engine under test (a fresh database each
/// call on PostgreSQL).
pub fn fast_config(settings: SettingsPatch) -> Config {
    Config {
        settings,
        argon2: FAST_ARGON,
        database_url: engine_url(),
        ..Config::default()
    }
}

/// The engine the suite runs on, from `PORTAL_TEST_ENGINE`: `sqlite` (the default) or
/// `postgres`, which needs `PORTAL_TEST_PG_URL` (a server the tests may create databases on;
/// `scripts/with-postgres.sh` starts one and sets both). On PostgreSQL each call creates a
/// fresh database and returns its URL; on SQLite it returns None (the store is a file in the
/// data dir).
pub fn engine_url() -> Option<String> {
    match std::env::var("PORTAL_TEST_ENGINE").as_deref() {
        Err(_) | Ok("sqlite") => None,
        Ok("postgres") => {
            let server = std::env::var("PORTAL_TEST_PG_URL").unwrap_or_else(|_| {
                panic!(
                    "PORTAL_TEST_ENGINE=postgres needs PORTAL_TEST_PG_URL (a PostgreSQL server; \
                     scripts/with-postgres.sh starts a private one)"
                )
            });
            Some(fresh_database(&server))
        }
        Ok(other) => panic!("PORTAL_TEST_ENGINE={other}: expected sqlite or postgres"),
    }
}

/// Creates an empty database on the server at `server_url` (`postgres://.../DB`) and returns
/// the URL of the new one. Runs on its own thread and runtime: callers may be async or not.
pub fn fresh_database(server_url: &str) -> String {
    let name = format!("portal_test_{:016x}", rand::rng().random::<u64>());
    let (base, _) = server_url
        .rsplit_once('/')
        .unwrap_or_else(|| panic!("PORTAL_TEST_PG_URL {server_url}: expected postgres://.../DB"));
    let server = server_url.to_string();
    let create = format!("CREATE DATABASE {name}");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&server, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connecting to PORTAL_TEST_PG_URL {server}: {e}"));
            tokio::spawn(conn);
            client.batch_execute(&create).await.unwrap();
        });
    })
    .join()
    .unwrap();
    format!("{base}/{name}")
}

/// Every table's rows as text (BYTEA as hex): what a PostgreSQL store holds at rest.
pub fn postgres_text(url: &str) -> String {
    let url = url.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let tables = client
                .query(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                    &[],
                )
                .await
                .unwrap();
            let mut out = String::new();
            for t in tables {
                let name: String = t.get(0);
                for r in client
                    .query(&format!("SELECT t::text FROM {name} t"), &[])
                    .await
                    .unwrap()
                {
                    out.push_str(r.get::<_, &str>(0));
                    out.push('\n');
                }
            }
            out
        })
    })
    .join()
    .unwrap()
}

impl Portal {
    pub fn new() -> Portal {
        Self::with(SettingsPatch::default())
    }

    pub fn with(settings: SettingsPatch) -> Portal {
        Self::with_config(fast_config(settings), None)
    }

    /// A portal whose sessions see time pass only through [`Portal::advance`].
    pub fn with_manual_clock() -> Portal {
        let clock = ManualClock::starting_now();
        let config = Config {
            clock: Clock::Manual(clock.clone()),
            ..fast_config(SettingsPatch::default())
        };
        Self::with_config(config, Some(clock))
    }

    /// Moves the manual clock forward (the portal must come from `with_manual_clock`).
    pub fn advance(&self, by: std::time::Duration) {
        self.clock
            .as_ref()
            .expect("Portal::advance needs Portal::with_manual_clock")
            .advance(by);
    }

    fn with_config(config: Config, clock: Option<ManualClock>) -> Portal {
        let dir = tempfile::tempdir().unwrap();
        let database_url = config.database_url.clone();
        let state = AppState::open_data_dir(dir.path(), config).unwrap();
        Self::with_state(dir, database_url, state, clock)
    }

    /// A portal on SQLite (whatever the engine under test: the WAL is SQLite's) whose writer
    /// truncates the WAL above `limit` bytes.
    pub fn with_wal_limit(limit: u64) -> Portal {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open_with_wal_limit(&dir.path().join("portal.sqlite3"), limit);
        let sealer = Sealer::load_or_create(&dir.path().join("portal.key")).unwrap();
        let config = Config {
            argon2: FAST_ARGON,
            ..Config::default()
        };
        let state = AppState::new(config, Arc::new(store.unwrap()), sealer).unwrap();
        Self::with_state(dir, None, state, None)
    }

    fn with_state(
        dir: tempfile::TempDir,
        database_url: Option<String>,
        state: AppState,
        clock: Option<ManualClock>,
    ) -> Portal {
        let hash = state.hasher.hash(PASSWORD).unwrap();
        let admin = state
            .store
            .create_account("admin", &hash, Role::Admin)
            .unwrap();
        let admin_token = random_token("api");
        state
            .store
            .add_api_token(admin.id, &token_hash(&admin_token))
            .unwrap();
        let router = app(state.clone());
        Portal {
            dir,
            database_url,
            state,
            router,
            admin_token,
            clock,
        }
    }

    /// Re-opens the same data dir (a restart): index rebuilt from the store.
    pub fn restart(self) -> Portal {
        let config = Config {
            database_url: self.database_url.clone(),
            ..fast_config(SettingsPatch::default())
        };
        let state = AppState::open_data_dir(self.dir.path(), config).unwrap();
        let router = app(state.clone());
        Portal {
            dir: self.dir,
            database_url: self.database_url,
            state,
            router,
            admin_token: self.admin_token,
            clock: None,
        }
    }

    pub async fn raw(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    pub async fn json(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => b
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        let (status, _, text) = self.raw(req).await;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    pub async fn create_account(&self, username: &str, role: &str) {
        let (s, v) = self
            .json(
                Method::POST,
                "/api/admin/accounts",
                Some(&self.admin_token),
                Some(json!({"username": username, "password": PASSWORD, "role": role})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    pub async fn api_token(&self, username: &str) -> String {
        let path = format!("/api/admin/accounts/{}/api-tokens", urlencode(username));
        let (s, v) = self
            .json(Method::POST, &path, Some(&self.admin_token), None)
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["token"].as_str().unwrap().to_string()
    }

    /// Enrolls a device; returns its agent credential.
    pub async fn enroll(&self, name: &str) -> String {
        let (s, v) = self
            .json(
                Method::POST,
                "/api/admin/enrollment-tokens",
                Some(&self.admin_token),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let tok = v["token"].as_str().unwrap().to_string();
        let (s, v) = self
            .json(
                Method::POST,
                "/api/agent/enroll",
                None,
                Some(json!({"enrollment_token": tok, "device_name": name})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["credential"].as_str().unwrap().to_string()
    }

    pub async fn escrow(&self, cred: &str, key: &Key) {
        let (s, v) = self
            .json(
                Method::POST,
                "/api/agent/keys",
                Some(cred),
                Some(key.json()),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    pub async fn sign_in(&self, cred: &str, user: &str, kind: &str) {
        let (s, v) = self
            .json(
                Method::POST,
                "/api/agent/sign-ins",
                Some(cred),
                Some(json!({"user": user, "kind": kind})),
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    }

    pub async fn check_in(&self, cred: &str) -> Value {
        let (s, v) = self
            .json(Method::POST, "/api/agent/check-in", Some(cred), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    pub async fn audit(&self, query: &str) -> Vec<Value> {
        let (s, v) = self
            .json(
                Method::GET,
                &format!("/api/admin/audit?{query}"),
                Some(&self.admin_token),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["rows"].as_array().unwrap().clone()
    }

    pub async fn settings(&self, patch: Value) {
        let (s, v) = self
            .json(
                Method::PUT,
                "/api/admin/settings",
                Some(&self.admin_token),
                Some(patch),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    pub fn browser(&self) -> Browser {
        Browser {
            router: self.router.clone(),
            cookie: None,
            csrf: None,
        }
    }
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A recovery key pair as a device would escrow it.
#[derive(Debug, Clone)]
pub struct Key {
    pub id: u128,
    pub password: String,
}

impl Key {
    pub fn random() -> Key {
        Key::with_prefix(rand::rng().random())
    }

    /// A key whose first 8 digits are `prefix`.
    pub fn with_prefix(prefix: u32) -> Key {
        let mut rng = rand::rng();
        let low: u128 = rng.random::<u128>() & ((1u128 << 96) - 1);
        let blocks: Vec<String> = (0..8)
            .map(|_| format!("{:06}", rng.random_range(0..65536u32) * 11))
            .collect();
        Key {
            id: ((prefix as u128) << 96) | low,
            password: blocks.join("-"),
        }
    }

    pub fn guid(&self) -> String {
        portal_under_test::keyid::format_guid(self.id)
    }

    pub fn prefix8(&self) -> String {
        format!("{:08X}", self.id >> 96)
    }

    pub fn json(&self) -> Value {
        json!({
            "volume_id": "{11111111-2222-3333-4444-555555555555}",
            "key_protector_id": self.guid(),
            "recovery_password": self.password,
            "protector_type": "recovery_password",
        })
    }
}

pub struct Browser {
    router: Router,
    pub cookie: Option<String>,
    pub csrf: Option<String>,
}

pub struct Page {
    pub status: StatusCode,
    pub location: Option<String>,
    pub body: String,
}

impl Page {
    /// Text content of the element with this id (first match; no nested tags expected).
    pub fn text_of(&self, id: &str) -> Option<String> {
        element_text(&self.body, id)
    }
    pub fn has(&self, id: &str) -> bool {
        self.body.contains(&format!("id=\"{id}\""))
    }
}

pub fn element_text(body: &str, id: &str) -> Option<String> {
    let at = body.find(&format!("id=\"{id}\""))?;
    let start = at + body[at..].find('>')? + 1;
    let end = start + body[start..].find('<')?;
    Some(body[start..end].to_string())
}

pub fn csrf_of(body: &str) -> Option<String> {
    let marker = "name=\"csrf_token\" value=\"";
    let at = body.find(marker)? + marker.len();
    let end = at + body[at..].find('"')?;
    Some(body[at..end].to_string())
}

impl Browser {
    async fn send(&mut self, req: Request<Body>) -> Page {
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        if let Some(c) = resp.headers().get(header::SET_COOKIE) {
            let c = c.to_str().unwrap();
            assert!(
                c.contains("HttpOnly") && c.contains("SameSite=Strict"),
                "cookie flags: {c}"
            );
            self.cookie = Some(c.split(';').next().unwrap().to_string());
        }
        let location = resp
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&bytes).into_owned();
        if let Some(t) = csrf_of(&body) {
            self.csrf = Some(t);
        }
        Page {
            status,
            location,
            body,
        }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let mut b = Request::builder().method(Method::GET).uri(path);
        if let Some(c) = &self.cookie {
            b = b.header(header::COOKIE, c);
        }
        self.send(b.body(Body::empty()).unwrap()).await
    }

    /// Posts a form; adds the page's CSRF token unless `fields` already has one.
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let mut pairs: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if !fields.iter().any(|(k, _)| *k == "csrf_token") {
            if let Some(t) = &self.csrf {
                pairs.push(("csrf_token".into(), t.clone()));
            }
        }
        self.post_raw(path, &pairs).await
    }

    pub async fn post_raw(&mut self, path: &str, pairs: &[(String, String)]) -> Page {
        let body: Vec<String> = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
            .collect();
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(c) = &self.cookie {
            b = b.header(header::COOKIE, c);
        }
        self.send(b.body(Body::from(body.join("&"))).unwrap()).await
    }

    /// Signs in on a site (`SelfService`, `HelpDesk`, `Admin`).
    pub async fn login(&mut self, site: &str, user: &str) -> Page {
        let p = self.get(&format!("/{site}/login")).await;
        assert_eq!(p.status, StatusCode::OK);
        assert!(p.has("username") && p.has("password") && p.has("sign-in"));
        self.post(
            &format!("/{site}/login"),
            &[("username", user), ("password", PASSWORD)],
        )
        .await
    }

    /// Self-service sign-in + notice; ends on the key form.
    pub async fn self_service(&mut self, user: &str) {
        let p = self.login("SelfService", user).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
        assert_eq!(p.location.as_deref(), Some("/SelfService/notice"));
        let n = self.get("/SelfService/notice").await;
        assert!(n.has("accept-notice"));
        let a = self.post("/SelfService/notice", &[]).await;
        assert_eq!(a.location.as_deref(), Some("/SelfService"));
        let f = self.get("/SelfService").await;
        assert_eq!(f.status, StatusCode::OK);
        assert!(f.has("key-id") && f.has("reason") && f.has("get-key"));
    }

    pub async fn get_key(&mut self, key_id: &str, reason: &str) -> Page {
        self.post(
            "/SelfService/key",
            &[("key_id", key_id), ("reason", reason)],
        )
        .await
    }
}

pub fn arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}

/// Starts `serve` with TLS (generated certificate) on a real port.
pub async fn tls_portal(
    dir: &std::path::Path,
) -> (
    portal_under_test::serve::Ready,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), portal_under_test::serve::ServeError>>,
) {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let opts = portal_under_test::serve::ServeOptions {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        config: fast_config(Default::default()),
        insecure_http: false,
        tls_cert: None,
        tls_key: None,
    };
    let server = tokio::spawn(async move {
        portal_under_test::serve::serve(
            opts,
            move |r| {
                let _ = ready_tx.send(r.clone());
            },
            async move {
                let _ = stop_rx.await;
            },
        )
        .await
    });
    let ready = tokio::time::timeout(std::time::Duration::from_secs(20), ready_rx)
        .await
        .unwrap()
        .unwrap();
    (ready, stop_tx, server)
}

/// Waits for the `PORTAL-READY {json}` line a `portal-under-test serve` child prints once it
/// listens, and returns the JSON (`url`, `ca_cert`, ...). Panics with what the child printed
/// instead, naming `what` (e.g. "replica 1").
pub fn ready_line(child: &mut std::process::Child, what: &str) -> serde_json::Value {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("serve's stdout is piped");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read serve's stdout");
    let json = line
        .trim()
        .strip_prefix("PORTAL-READY ")
        .unwrap_or_else(|| panic!("{what} did not start: {line:?}"));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{what}'s ready line {line:?}: {e}"))
}
