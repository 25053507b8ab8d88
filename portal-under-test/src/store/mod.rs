//! Persistence: the [`Store`] trait the portal uses, its domain types ([`model`]) and the
//! engines behind it ([`sqlite`]).
//!
//! Records are never deleted: superseded keys and used tokens stay for audit, and the audit
//! table refuses UPDATE and DELETE at the SQL level. Every statement is parameterised.

use thiserror::Error;

use crate::crypto::Sealed;
use crate::index::IndexEntry;

mod journal;
mod model;
pub mod sqlite;

pub use journal::{
    commit_journal_blocking, stage_and_commit, CommitDone, JournalEntry, StagedWork,
};
pub use model::*;
pub use sqlite::SqliteStore;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
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

/// Everything the portal persists. Implementations must be safe to call from many threads;
/// calls are synchronous (run them on blocking threads).
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
    fn mark_disclosed(&self, key_row: i64) -> Result<(), StoreError>;
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

    /// Blocks until the row is committed (through the group-commit writer).
    fn append_audit(&self, row: &AuditRow) -> Result<(), StoreError>;
    /// Queues work for the group-commit writer, which runs it, commits every queued job's
    /// audit rows and disclosure marks in one transaction and then reports to each job's
    /// `CommitDone` (see [`stage_and_commit`], [`commit_journal_blocking`]). All entries of
    /// one job land in the same transaction.
    fn submit_staged(&self, work: StagedWork);
    fn query_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>, StoreError>;
    /// Failed lookups (not_found, denied, not_eligible) by this requester since a time.
    fn count_failures(&self, requester: &str, since_unix: i64) -> Result<u64, StoreError>;
}

pub fn now_rfc3339() -> (String, i64) {
    let now = time::OffsetDateTime::now_utc();
    let s = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string());
    (s, now.unix_timestamp())
}
