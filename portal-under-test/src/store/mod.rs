//! Persistence: the [`Store`] trait the portal uses, its domain types ([`model`]) and the
//! engines behind it ([`sqlite`]).
//!
//! Records are never deleted: superseded keys and used tokens stay for audit, and the audit
//! table refuses UPDATE and DELETE at the SQL level. Every statement is parameterised.

use thiserror::Error;

use crate::crypto::Sealed;
use crate::index::IndexEntry;

mod import_plan;
mod journal;
mod model;
pub mod postgres;
pub mod sqlite;

pub(crate) use journal::journal_failed;
pub use journal::{
    commit_journal_blocking, stage_and_commit, AuditedWork, CommitDone, JournalEntry,
};
pub use model::*;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The server's own message (`db error: ERROR: ...`), not only the error kind.
        match e.as_db_error() {
            // Class 08 (connection exception) and 57P (the server shutting down or starting
            // up): the database is away, not the request wrong.
            Some(db)
                if db.code().code().starts_with("08") || db.code().code().starts_with("57P") =>
            {
                StoreError::Unavailable(db.to_string())
            }
            Some(db) => StoreError::Postgres(db.to_string()),
            // No server answer: the connection closed or could not be made.
            None if e.is_closed()
                || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) =>
            {
                StoreError::Unavailable(e.to_string())
            }
            None => StoreError::Postgres(e.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            deadpool_postgres::PoolError::Timeout(_) => {
                StoreError::Unavailable(format!("connection pool: {e}"))
            }
            e => StoreError::Postgres(format!("connection pool: {e}")),
        }
    }
}

/// Opens the store the portal is configured for: PostgreSQL when `database_url` is a
/// `postgres://` (or `postgresql://`) URL, else the SQLite file `portal.sqlite3` in `dir`.
/// The SQLite store's file name in the data dir.
pub const SQLITE_FILE: &str = "portal.sqlite3";

pub fn open(
    database_url: Option<&str>,
    dir: &std::path::Path,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    match database_url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(std::sync::Arc::new(PgStore::open(url)?))
        }
        Some(url) => Err(StoreError::Postgres(format!(
            "database URL {url:?}: only postgres:// URLs are supported (SQLite needs none: it lives in the data dir)"
        ))),
        None => Ok(std::sync::Arc::new(SqliteStore::open(&dir.join(SQLITE_FILE))?)),
    }
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgresql: {0}")]
    Postgres(String),
    /// The database cannot be reached (down, restarting, connection lost): the request may
    /// succeed if retried (HTTP 503 with `Retry-After`).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("record {index}: {message}")]
    Conflict { index: usize, message: String },
    #[error("{field}: {message}")]
    NotFound {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    Superseded(String),
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
}

/// Everything the portal persists, in terms of what the portal does (escrow, sign-in,
/// disclose-with-audit, ...). Implementations must be safe to call from many threads; calls
/// are synchronous (run them on blocking threads). How an engine batches its commits is its
/// own business (SQLite: a group-commit writer thread; PostgreSQL: one transaction each).
pub trait Store: Send + Sync + 'static {
    fn create_account(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
    ) -> Result<Account, StoreError>;
    fn account_by_name(&self, username: &str) -> Result<Option<Account>, StoreError>;
    fn first_admin(&self) -> Result<Option<Account>, StoreError>;
    fn add_api_token(&self, account_id: i64, hash: &[u8; 32]) -> Result<(), StoreError>;
    fn account_by_api_token(&self, hash: &[u8; 32]) -> Result<Option<Account>, StoreError>;

    fn add_enrollment_token(&self, hash: &[u8; 32]) -> Result<(), StoreError>;
    /// Marks the token used; false if unknown or already used.
    fn use_enrollment_token(&self, hash: &[u8; 32]) -> Result<bool, StoreError>;
    /// Creates the device, or attaches a new credential to the existing one of that name.
    fn enroll_device(&self, name: &str, credential_hash: &[u8; 32]) -> Result<Device, StoreError>;
    fn device_by_credential(&self, hash: &[u8; 32]) -> Result<Option<Device>, StoreError>;
    fn device_by_name(&self, name: &str) -> Result<Option<Device>, StoreError>;

    /// All or nothing: a conflicting key aborts the batch with `Conflict { index }`.
    fn escrow_keys(
        &self,
        device_row: i64,
        keys: &[NewKey],
    ) -> Result<Vec<EscrowResult>, StoreError>;
    fn key_by_row(&self, key_row: i64) -> Result<Option<KeyRecord>, StoreError>;
    fn key_by_id(&self, key_id: u128) -> Result<Option<KeyRecord>, StoreError>;
    fn current_keys(&self) -> Result<Vec<IndexEntry>, StoreError>;
    fn mark_disclosed(&self, key_row: i64) -> Result<(), StoreError> {
        self.commit_journal(vec![JournalEntry::KeyDisclosed { key_row }])
    }
    /// Disclosed, not yet superseded keys of a device.
    fn keys_to_rotate(&self, device_row: i64) -> Result<Vec<u128>, StoreError>;
    fn supersede(&self, device_row: i64, old: u128, new: u128) -> Result<(), StoreError>;

    fn record_sign_in(
        &self,
        device_row: i64,
        user: &str,
        kind: SignInKind,
    ) -> Result<(), StoreError>;
    /// Every device the user is associated with (user compared case-insensitively).
    fn associations_of_user(&self, user: &str) -> Result<Vec<(i64, Assoc)>, StoreError>;
    fn users_of_device(&self, device_row: i64) -> Result<Vec<String>, StoreError>;
    fn device_name(&self, device_row: i64) -> Result<Option<String>, StoreError>;

    /// Loads import rows in one transaction; returns the entries newly created.
    fn import(&self, rows: &[ImportRow]) -> Result<Vec<IndexEntry>, StoreError>;

    fn put_tpm_lockout(&self, device_row: i64, sealed: &Sealed) -> Result<(), StoreError>;
    fn current_tpm_lockout(&self, device_row: i64) -> Result<Option<TpmRecord>, StoreError>;
    fn tpm_rotation_pending(&self, device_row: i64) -> Result<bool, StoreError>;

    fn load_settings(&self) -> Result<Option<String>, StoreError>;
    fn save_settings(&self, json: &str) -> Result<(), StoreError>;

    /// Commits audit rows and disclosure marks in one transaction; returns only after the
    /// commit. All or nothing.
    fn commit_journal(&self, entries: Vec<JournalEntry>) -> Result<(), StoreError>;
    /// Disclose-with-audit, as one atomic operation: runs `work` (a decision that only reads),
    /// commits the audit rows and disclosure marks it returns in one transaction and only
    /// then reports to the `CommitDone` it returned (with the commit's error if it failed).
    /// With `limited_requester` (an account the failed-lookup limit applies to), that
    /// account's decisions are serialised: a decision's [`Store::count_failures`] sees every
    /// earlier decision's failures, so a limit checked inside `work` holds exactly. Returns
    /// at once; `work` runs elsewhere.
    fn disclose_with_audit(&self, limited_requester: Option<&str>, work: AuditedWork);
    /// Blocks until the row is committed.
    fn append_audit(&self, row: &AuditRow) -> Result<(), StoreError> {
        self.commit_journal(vec![JournalEntry::Audit(Box::new(row.clone()))])
    }
    fn query_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, StoreError>;
    /// Failed lookups ([`FAILED_LOOKUP_OUTCOMES`]) by this requester at or after `since_us`
    /// (microseconds since the Unix epoch).
    fn count_failures(&self, requester: &str, since_us: i64) -> Result<u64, StoreError>;

    /// Creates or replaces a web session.
    fn put_session(&self, session: &StoredSession) -> Result<(), StoreError>;
    fn session(&self, id: &str) -> Result<Option<StoredSession>, StoreError>;
    fn delete_session(&self, id: &str) -> Result<(), StoreError>;
    /// Deletes signed-in sessions last seen before the first time and anonymous ones last
    /// seen before the second (microseconds since the Unix epoch).
    fn sweep_sessions(
        &self,
        signed_in_seen_before_us: i64,
        anonymous_seen_before_us: i64,
    ) -> Result<(), StoreError>;

    // Several portal processes on one database (PostgreSQL replicas). The defaults are a
    // store only one process serves (SQLite): nothing changes behind the portal's back.

    /// A position in the store's change sequence, taken *before* the caller reads the
    /// current keys: [`Store::key_changes_since`] from it reports every key change committed
    /// after that read. None: no other process writes this store.
    fn change_position(&self) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }
    /// Keys added or superseded at or after `position` (a change may be reported twice), and
    /// the position to ask from next.
    fn key_changes_since(&self, position: i64) -> Result<KeyChanges, StoreError> {
        Ok(KeyChanges {
            next: position,
            ..KeyChanges::default()
        })
    }
    /// Waits until another process may have changed the store (a notification, or a
    /// reconnect after which notifications may have been missed) or `timeout`; `seen` is
    /// the count this returned last time, and the new count is returned.
    fn wait_for_change(&self, seen: u64, timeout: std::time::Duration) -> u64 {
        std::thread::sleep(timeout);
        seen
    }

    /// Whether sign-in failures are kept in the store ([`Store::sign_in_failures`]), shared
    /// by every process on it; if not, the throttle keeps them in its own memory.
    fn shares_sign_in_failures(&self) -> bool {
        false
    }
    /// `(count, last failure in µs since the epoch)` of each subject that has failures.
    fn sign_in_failures(
        &self,
        _subjects: &[String],
    ) -> Result<Vec<(String, u32, i64)>, StoreError> {
        Ok(Vec::new())
    }
    /// One more failure for each subject at `now_us`; a subject whose last failure was
    /// before `forget_before_us` starts again at one.
    fn add_sign_in_failure(
        &self,
        _subjects: &[String],
        _now_us: i64,
        _forget_before_us: i64,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    fn clear_sign_in_failures(&self, _subject: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

/// What [`Store::key_changes_since`] reports.
#[derive(Debug, Default)]
pub struct KeyChanges {
    /// Keys that are current (added since, or reported again).
    pub current: Vec<IndexEntry>,
    /// Key IDs superseded since.
    pub superseded: Vec<u128>,
    /// The position to ask from next.
    pub next: i64,
}

/// Microseconds since the Unix epoch of an RFC 3339 time (0 if it does not parse: the
/// portal writes every time it stores).
pub fn time_us_of(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .map(unix_us)
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch.
pub fn unix_us(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// The earliest whole microsecond at or after `t` (so "at or after `t`" compares exactly
/// against times the store keeps in microseconds).
pub fn unix_us_ceil(t: time::OffsetDateTime) -> i64 {
    let ns = t.unix_timestamp_nanos();
    i64::try_from(ns.div_euclid(1000) + i128::from(ns.rem_euclid(1000) != 0)).unwrap_or(i64::MAX)
}

/// Now, as RFC 3339 (to the microsecond, the precision the store keeps and compares) and as
/// whole seconds since the epoch.
pub fn now_rfc3339() -> (String, i64) {
    let now = time::OffsetDateTime::now_utc();
    let now = now
        .replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now);
    let s = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string());
    (s, now.unix_timestamp())
}
