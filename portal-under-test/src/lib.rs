//! portal-under-test: a BitLocker self-service recovery portal, MBAM-style help desk site and
//! device escrow API — the system the harness tests over HTTP. See `API.md` for the contract.
//!
//! [`app`] builds the whole axum application from an [`AppState`], so tests can drive it
//! without a socket (`tower::ServiceExt::oneshot`) and `main` only binds and serves.

use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, RwLock};

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
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
pub mod serve;
pub mod session;
pub mod store;
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
    #[error("data dir {path}: {source}")]
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
}

/// Everything a request handler needs.
pub struct Inner {
    pub store: Arc<dyn Store>,
    pub index: PrefixIndex,
    pub sealer: Sealer,
    pub hasher: PasswordHashing,
    pub sessions: Sessions,
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
        Ok(AppState(Arc::new(Inner {
            store,
            index,
            sealer,
            hasher,
            sessions,
            config,
            settings: RwLock::new(settings),
            dummy_sealed,
        })))
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
    std::fs::create_dir_all(dir).map_err(|source| InitError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(store::open(database_url, dir)?)
}

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

/// The whole application.
pub fn app(state: AppState) -> Router {
    let body_cap = state.config.max_body_bytes;
    let bulk_cap = state.config.max_bulk_body_bytes;
    let bulk = Router::new()
        .route("/api/agent/keys/bulk", post(api::escrow_bulk))
        .layer(DefaultBodyLimit::max(bulk_cap));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/openapi.json", get(openapi))
        // Device agent.
        .route("/api/agent/enroll", post(api::enroll))
        .route("/api/agent/keys", post(api::escrow_one))
        .route("/api/agent/sign-ins", post(api::sign_in))
        .route("/api/agent/check-in", post(api::check_in))
        .route("/api/agent/rotations", post(api::rotation))
        .route("/api/agent/tpm-lockout", post(api::tpm_lockout))
        .route("/api/agent/tpm-lockout/rotated", post(api::tpm_lockout))
        // Admin.
        .route("/api/admin/accounts", post(api::create_account))
        .route(
            "/api/admin/accounts/{username}/api-tokens",
            post(api::create_api_token),
        )
        .route(
            "/api/admin/enrollment-tokens",
            post(api::create_enrollment_token),
        )
        .route(
            "/api/admin/settings",
            get(api::get_settings).put(api::put_settings),
        )
        .route("/api/admin/audit", get(api::get_audit))
        // Help desk automation.
        .route("/api/helpdesk/lookup", post(api::helpdesk_lookup))
        // HTML.
        .merge(web::routes())
        .merge(bench_routes())
        .layer(DefaultBodyLimit::max(body_cap))
        .merge(bulk)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
