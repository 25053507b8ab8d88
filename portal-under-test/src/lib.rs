//! portal-under-test: a BitLocker self-service recovery portal, MBAM-style help desk site and
//! device escrow API — the system the harness tests over HTTP. See `API.md` for the contract.
//!
//! [`app`] builds the whole axum application from an [`AppState`], so tests can drive it
//! without a socket (`tower::ServiceExt::oneshot`) and `main` only binds and serves.

use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, RwLock};

use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::response::Response;
use axum::routing::{get, post, put, MethodRouter};
use axum::Router;
use thiserror::Error;
use tower_http::trace::TraceLayer;

pub mod api;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod error;
pub mod fp;
pub mod i18n;
pub mod import;
pub mod index;
pub mod keyid;
pub mod lookup;
pub mod replica;
pub mod serve;
pub mod session;
pub mod store;
pub mod throttle;
pub mod web;

use config::{Config, Settings};
use crypto::{PasswordHashing, Sealed, Sealer};
use error::AppError;
use index::PrefixIndex;
use session::Sessions;
use store::Store;

/// The committed OpenAPI document, served at `/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

#[derive(Debug, Error)]
pub enum InitError {
    // The source is printed by the error chain (`{e:#}`), so not here as well.
    #[error("data dir {path}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    #[error("stored settings are damaged: {0}")]
    Settings(String),
    #[error("starting the replica follower thread: {0}")]
    Follower(#[source] std::io::Error),
}

/// Everything a request handler needs.
pub struct Inner {
    pub store: Arc<dyn Store>,
    pub index: PrefixIndex,
    pub sealer: Sealer,
    pub hasher: PasswordHashing,
    pub sessions: Sessions,
    pub sign_in_throttle: throttle::SignInThrottle,
    pub config: Config,
    settings: RwLock<Settings>,
    /// Decrypted on paths that show nothing, so they cost the same as paths that do.
    dummy_sealed: Sealed,
}

impl Inner {
    pub fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// The failed-lookup limit `(window_secs, limit)` that applies to `requester`, or None
    /// for an exempt account (read without cloning the settings: it runs on every lookup).
    pub fn failure_limit_for(&self, requester: &str) -> Option<(u64, u64)> {
        let s = self.settings.read().unwrap_or_else(|e| e.into_inner());
        if s.lookup_rate_limit_exempt
            .iter()
            .any(|a| a.eq_ignore_ascii_case(requester))
        {
            return None;
        }
        Some((s.lookup_failure_window_secs, s.lookup_failure_limit))
    }
    pub fn set_settings(&self, s: Settings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = s;
    }
}

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Builds the state: loads settings (config values override stored ones) and the prefix
    /// index from the store.
    pub fn new(config: Config, store: Arc<dyn Store>, sealer: Sealer) -> Result<Self, InitError> {
        let stored = match store.load_settings()? {
            Some(j) => serde_json::from_str::<Settings>(&j)
                .map_err(|e| InitError::Settings(e.to_string()))?,
            None => Settings::default(),
        };
        let settings = stored
            .apply(&config.settings)
            .map_err(|(f, m)| InitError::Settings(format!("{f}: {m}")))?;
        let json =
            serde_json::to_string(&settings).map_err(|e| InitError::Settings(e.to_string()))?;
        store.save_settings(&json)?;
        // Taken before the keys are read: following from here misses no change after it.
        let followed_from = store.change_position()?;
        // Both halves of the start-up cost at scale, logged (BENCHMARKS.md quotes them).
        let t = std::time::Instant::now();
        let entries = store.current_keys()?;
        let read = t.elapsed();
        let keys = entries.len();
        let index = PrefixIndex::from_entries(entries);
        tracing::info!(
            keys,
            read_secs = read.as_secs_f64(),
            build_secs = (t.elapsed() - read).as_secs_f64(),
            "key-ID index loaded from the store"
        );
        let hasher = PasswordHashing::new(config.argon2)?;
        let dummy_sealed = sealer.seal(
            &[0u8; 16],
            b"000000-000000-000000-000000-000000-000000-000000-000000",
        )?;
        let sessions = Sessions::new(store.clone(), config.clock.clone());
        let sign_in_throttle = throttle::SignInThrottle::new(store.clone());
        let state = AppState(Arc::new(Inner {
            store,
            index,
            sealer,
            hasher,
            sessions,
            sign_in_throttle,
            config,
            settings: RwLock::new(settings),
            dummy_sealed,
        }));
        if let Some(position) = followed_from {
            replica::follow(&state, position, json)?;
        }
        Ok(state)
    }

    /// Opens (creating if needed) a data directory (the key file, and `portal.sqlite3` unless
    /// `config.database_url` names a PostgreSQL database).
    pub fn open_data_dir(dir: &Path, config: Config) -> Result<Self, InitError> {
        let store = open_store(dir, config.database_url.as_deref())?;
        let sealer = Sealer::load_or_create(&dir.join("portal.key"))?;
        Self::new(config, store, sealer)
    }

    /// Runs `f` as an audited decision (serialised per `limited_requester`, an account the
    /// failed-lookup limit applies to) and commits the audit entries it returns in one
    /// transaction; the value comes back only after the commit (`store::stage_and_commit`).
    /// `f` reads only: no writes, no waiting for a commit.
    pub async fn run_staged<T, F>(
        &self,
        limited_requester: Option<&str>,
        f: F,
    ) -> Result<T, AppError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<(T, Vec<store::JournalEntry>), AppError> + Send + 'static,
    {
        let inner = self.0.clone();
        let store = inner.store.clone();
        store::stage_and_commit(store.as_ref(), limited_requester, move || f(&inner)).await
    }

    /// Runs store work on a blocking thread.
    pub async fn run<T, F>(&self, f: F) -> Result<T, AppError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, AppError> + Send + 'static,
    {
        let inner = self.0.clone();
        tokio::task::spawn_blocking(move || f(&inner)).await?
    }
}

/// Creates the data dir if missing and opens/migrates the store: the PostgreSQL database at
/// `database_url`, or else the SQLite file in `dir`.
pub fn open_store(dir: &Path, database_url: Option<&str>) -> Result<Arc<dyn Store>, InitError> {
    let data_dir_err = |source| InitError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    create_private_dir(dir).map_err(data_dir_err)?;
    if database_url.is_none() {
        // SQLite gives its -wal and -shm files the mode of the database file.
        make_private_file(&dir.join(store::SQLITE_FILE)).map_err(data_dir_err)?;
    }
    Ok(store::open(database_url, dir)?)
}

/// Creates `dir` (and missing parents) with mode 0700 whatever the umask: it holds the key
/// file and the store. An existing directory keeps its mode.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let existed = dir.is_dir();
        b.mode(0o700).create(dir)?;
        if !existed {
            // `mode` is filtered by the umask; set it exactly.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    b.create(dir)
}

/// Creates `path` empty if missing, and makes it mode 0600 (owner read/write only).
fn make_private_file(path: &Path) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        o.mode(0o600).open(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
    }
    #[cfg(not(unix))]
    o.open(path).map(|_| ())
}

/// Headers on every answer: `nosniff`; on HTML pages a Content-Security-Policy without inline
/// code (scripts and styles are files under `/static/`), no framing, no referrer; on JSON and
/// CSV answers (recovery passwords, lockout authorizations, tokens, audit) `no-store` unless
/// the handler chose; HSTS when the portal serves TLS.
async fn security_headers(tls: bool, mut resp: Response) -> Response {
    use axum::http::header::{self, HeaderValue};
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if content_type.starts_with("text/html") {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    if (content_type.starts_with("application/json") || content_type.starts_with("text/csv"))
        && !h.contains_key(header::CACHE_CONTROL)
    {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if tls {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    resp
}

/// The pages' Content-Security-Policy: only the portal's own script, style and forms;
/// `connect-src` for the idle warning's keepalive.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; \
    frame-ancestors 'none'";

async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI_JSON,
    )
}

/// Routes only for benchmarks (`--features bench-routes`, never in a default build): a
/// trivial JSON handler that shares the server, router and layers with the real routes, so
/// an HTTP benchmark can compare a route against it in the same process.
#[cfg(feature = "bench-routes")]
fn bench_routes() -> Router<AppState> {
    Router::new().route(
        "/bench/trivial",
        post(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                "{\"outcome\":\"ok\"}",
            )
        }),
    )
}

#[cfg(not(feature = "bench-routes"))]
fn bench_routes() -> Router<AppState> {
    Router::new()
}

/// No route: under `/api/` the JSON error shape, elsewhere a plain 404.
async fn not_found(uri: axum::http::Uri) -> Response {
    use axum::response::IntoResponse;
    if uri.path().starts_with("/api/") {
        AppError::NotFound {
            field: None,
            message: "no such API path".into(),
        }
        .into_response()
    } else {
        (axum::http::StatusCode::NOT_FOUND, "not found").into_response()
    }
}

/// The JSON API, one (path, method, handler) a row: [`app`] serves exactly these, and the
/// contract test checks them against `openapi.json` both ways ([`api_routes`]).
fn api_table(bulk_cap: usize) -> Vec<(&'static str, Method, MethodRouter<AppState>)> {
    vec![
        ("/healthz", Method::GET, get(|| async { "ok" })),
        ("/openapi.json", Method::GET, get(openapi)),
        // Device agent.
        ("/api/agent/enroll", Method::POST, post(api::enroll)),
        ("/api/agent/keys", Method::POST, post(api::escrow_one)),
        (
            "/api/agent/keys/bulk",
            Method::POST,
            post(api::escrow_bulk).layer(DefaultBodyLimit::max(bulk_cap)),
        ),
        ("/api/agent/sign-ins", Method::POST, post(api::sign_in)),
        ("/api/agent/check-in", Method::POST, post(api::check_in)),
        ("/api/agent/rotations", Method::POST, post(api::rotation)),
        (
            "/api/agent/tpm-lockout",
            Method::POST,
            post(api::tpm_lockout),
        ),
        (
            "/api/agent/tpm-lockout/rotated",
            Method::POST,
            post(api::tpm_lockout),
        ),
        // Admin.
        (
            "/api/admin/accounts",
            Method::POST,
            post(api::create_account),
        ),
        (
            "/api/admin/accounts/{username}/api-tokens",
            Method::POST,
            post(api::create_api_token),
        ),
        (
            "/api/admin/enrollment-tokens",
            Method::POST,
            post(api::create_enrollment_token),
        ),
        ("/api/admin/settings", Method::GET, get(api::get_settings)),
        ("/api/admin/settings", Method::PUT, put(api::put_settings)),
        ("/api/admin/audit", Method::GET, get(api::get_audit)),
        // Help desk automation.
        (
            "/api/helpdesk/lookup",
            Method::POST,
            post(api::helpdesk_lookup),
        ),
    ]
}

/// The JSON API's routes as (path, method): what `openapi.json` must document, no more.
pub fn api_routes() -> Vec<(&'static str, Method)> {
    api_table(0).into_iter().map(|(p, m, _)| (p, m)).collect()
}

/// The whole application.
pub fn app(state: AppState) -> Router {
    let body_cap = state.config.max_body_bytes;
    let bulk_cap = state.config.max_bulk_body_bytes;
    let mut api = Router::new();
    for (path, _, handler) in api_table(bulk_cap) {
        // Two rows on one path merge into one method router (GET + PUT settings).
        api = api.route(path, handler);
    }
    let tls = state.config.secure_cookies;
    let skip = BenchSkip::from_env();
    let mut router = api
        .merge(web::routes())
        .merge(bench_routes())
        // After every route: an unsupported method answers the JSON error shape.
        .method_not_allowed_fallback(|method: Method| async move {
            AppError::MethodNotAllowed(method.to_string())
        })
        .fallback(not_found);
    if !skip.body_limit {
        router = router.layer(DefaultBodyLimit::max(body_cap));
    }
    if !skip.headers {
        router = router.layer(axum::middleware::map_response(move |r: Response| {
            security_headers(tls, r)
        }));
    }
    if !skip.trace {
        router = router.layer(TraceLayer::new_for_http());
    }
    router.with_state(state)
}

/// Which of [`app`]'s layers a benchmark build leaves out, to measure what each costs every
/// route (`PORTAL_BENCH_SKIP_LAYERS=trace,body_limit,headers`; benches/http/run.sh). Only
/// with `--features bench-routes`: a default build always has every layer.
#[derive(Debug, Default, Clone, Copy)]
struct BenchSkip {
    trace: bool,
    body_limit: bool,
    headers: bool,
}

impl BenchSkip {
    #[cfg(feature = "bench-routes")]
    fn from_env() -> Self {
        let list = std::env::var("PORTAL_BENCH_SKIP_LAYERS").unwrap_or_default();
        let has = |name: &str| list.split(',').any(|l| l.trim() == name);
        BenchSkip {
            trace: has("trace"),
            body_limit: has("body_limit"),
            headers: has("headers"),
        }
    }

    #[cfg(not(feature = "bench-routes"))]
    fn from_env() -> Self {
        BenchSkip::default()
    }
}
