//! Persistence: the [`Store`] trait and its embedded SQLite implementation.
//!
//! Records are never deleted: superseded keys and used tokens stay for audit, and the audit
//! table refuses UPDATE and DELETE at the SQL level. Key IDs are 16-byte big-endian BLOBs of
//! the display-order GUID. Every statement is parameterised.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, RwLock};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::crypto::Sealed;
use crate::index::IndexEntry;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Helpdesk,
    AdvancedHelpdesk,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Helpdesk => "helpdesk",
            Role::AdvancedHelpdesk => "advanced_helpdesk",
            Role::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "helpdesk" => Some(Role::Helpdesk),
            "advanced_helpdesk" => Some(Role::AdvancedHelpdesk),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    /// May use the help desk site / lookup API.
    pub fn is_helpdesk(self) -> bool {
        !matches!(self, Role::User)
    }
    /// Needs only the key ID (no end user) at the help desk.
    pub fn is_advanced(self) -> bool {
        matches!(self, Role::AdvancedHelpdesk | Role::Admin)
    }
}

#[derive(Debug, Clone)]
pub struct Account {
    pub id: i64,
    pub username: String,
    pub password_hash: String,
    pub role: Role,
}

#[derive(Debug, Clone)]
pub struct Device {
    pub row: i64,
    pub device_id: String,
    pub name: String,
}

/// A key ready to store (already sealed).
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key_id: u128,
    pub volume_id: u128,
    pub protector_type: String,
    pub sealed: Sealed,
    pub fingerprint: [u8; 32],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscrowResult {
    Created(IndexEntry),
    Existing,
}

#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub row: i64,
    pub key_id: u128,
    pub device_row: i64,
    pub device_name: String,
    pub sealed: Sealed,
    pub superseded: bool,
    /// Already shown once (the device must rotate it).
    pub disclosed: bool,
}

/// How a user is associated with a device.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Assoc {
    pub local: bool,
    pub remote: bool,
    pub imported: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInKind {
    Local,
    Remote,
}

#[derive(Debug, Clone)]
pub struct ImportRow {
    pub device: String,
    pub user: Option<String>,
    pub key: NewKey,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRow {
    pub id: i64,
    pub time: String,
    pub source: String,
    pub requester: String,
    pub end_user: Option<String>,
    pub device: Option<String>,
    pub key_id: Option<String>,
    pub key_type: Option<String>,
    pub reason: Option<String>,
    pub outcome: String,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since_unix: Option<i64>,
    pub source: Option<String>,
    pub outcome: Option<String>,
    pub user: Option<String>,
    pub device: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TpmRecord {
    pub row: i64,
    pub sealed: Sealed,
}

/// A write that a disclosure must make durable before its answer leaves the portal.
#[derive(Debug, Clone)]
pub enum JournalEntry {
    Audit(Box<AuditRow>),
    /// Marks a key disclosed (its device must rotate it); a no-op if it already is.
    KeyDisclosed {
        key_row: i64,
    },
}

fn journal_failed(m: String) -> StoreError {
    StoreError::Corrupt(format!("audit write failed: {m}"))
}

/// What runs on the group-commit writer thread before its batch's transaction: returns the
/// entries to write and the continuation that receives the commit's result.
pub type StagedWork = Box<dyn FnOnce() -> (Vec<JournalEntry>, CommitDone) + Send>;
/// Receives the result of the transaction that held a submission's entries.
pub type CommitDone = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Runs `f` on the group-commit writer thread, commits the entries it returns in that
/// batch's transaction, and yields its value only after the commit (nothing if `f` fails).
/// One hand-off each way instead of a blocking thread and then the writer. `f`'s store reads
/// run on the writer connection (whose page cache survives the commits); `f` must not write
/// or wait for a commit itself, and it delays the whole batch, so keep it short.
pub async fn stage_and_commit<T, E>(
    store: &dyn Store,
    f: impl FnOnce() -> Result<(T, Vec<JournalEntry>), E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<T, E>>();
    store.submit_staged(Box::new(move || match f() {
        Ok((value, entries)) => {
            let done: CommitDone = Box::new(move |res| {
                drop(tx.send(res.map(|()| value).map_err(|m| journal_failed(m).into())));
            });
            (entries, done)
        }
        Err(e) => {
            let done: CommitDone = Box::new(move |_| drop(tx.send(Err(e))));
            (Vec::new(), done)
        }
    }));
    match rx.await {
        Ok(r) => r,
        Err(_) => Err(journal_failed("the writer stopped".into()).into()),
    }
}

/// Submits `entries` and blocks until the transaction holding them has committed.
pub fn commit_journal_blocking(
    store: &dyn Store,
    entries: Vec<JournalEntry>,
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let (tx, rx) = mpsc::sync_channel(1);
    // A caller that went away no longer needs the answer: a failed send is fine.
    let done: CommitDone = Box::new(move |res| drop(tx.send(res)));
    store.submit_staged(Box::new(move || (entries, done)));
    match rx.recv() {
        Ok(r) => r.map_err(journal_failed),
        Err(_) => Err(journal_failed("the writer stopped".into())),
    }
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
    fn mark_tpm_disclosed(&self, row: i64) -> Result<(), StoreError>;
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

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS accounts(
  id INTEGER PRIMARY KEY, username TEXT NOT NULL, username_lc TEXT NOT NULL UNIQUE,
  password_hash TEXT NOT NULL, role TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_tokens(
  token_hash BLOB PRIMARY KEY, account_id INTEGER NOT NULL REFERENCES accounts(id),
  created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS enrollment_tokens(
  token_hash BLOB PRIMARY KEY, created_at TEXT NOT NULL, used_at TEXT);
CREATE TABLE IF NOT EXISTS devices(
  id INTEGER PRIMARY KEY, device_uuid TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
  name_lc TEXT NOT NULL UNIQUE, credential_hash BLOB UNIQUE, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys(
  id INTEGER PRIMARY KEY, key_id BLOB NOT NULL UNIQUE, device_id INTEGER NOT NULL REFERENCES devices(id),
  volume_id BLOB NOT NULL, protector_type TEXT NOT NULL, nonce BLOB NOT NULL,
  ciphertext BLOB NOT NULL, fingerprint BLOB NOT NULL, created_at TEXT NOT NULL,
  disclosed_at TEXT, superseded_at TEXT, superseded_by BLOB);
-- Only keys waiting for rotation are indexed by device: bulk escrow stays cheap.
CREATE INDEX IF NOT EXISTS keys_to_rotate ON keys(device_id)
  WHERE disclosed_at IS NOT NULL AND superseded_at IS NULL;
CREATE TABLE IF NOT EXISTS associations(
  device_id INTEGER NOT NULL, user_lc TEXT NOT NULL, user TEXT NOT NULL,
  local INTEGER NOT NULL DEFAULT 0, remote INTEGER NOT NULL DEFAULT 0,
  imported INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(device_id, user_lc));
CREATE INDEX IF NOT EXISTS assoc_user ON associations(user_lc);
CREATE TABLE IF NOT EXISTS sign_ins(
  id INTEGER PRIMARY KEY, device_id INTEGER NOT NULL, user TEXT NOT NULL, kind TEXT NOT NULL,
  time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tpm_lockout(
  id INTEGER PRIMARY KEY, device_id INTEGER NOT NULL, nonce BLOB NOT NULL,
  ciphertext BLOB NOT NULL, created_at TEXT NOT NULL, disclosed_at TEXT, superseded_at TEXT);
CREATE TABLE IF NOT EXISTS settings(id INTEGER PRIMARY KEY CHECK(id = 1), json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit(
  id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, time_unix INTEGER NOT NULL,
  source TEXT NOT NULL, requester TEXT NOT NULL, requester_lc TEXT NOT NULL, end_user TEXT,
  device TEXT, key_id TEXT, key_type TEXT, reason TEXT, outcome TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_requester ON audit(requester_lc, time_unix);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
  BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
  BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TRIGGER IF NOT EXISTS keys_no_delete BEFORE DELETE ON keys
  BEGIN SELECT RAISE(ABORT, 'key records are never deleted'); END;
PRAGMA user_version = 1;
"#;

pub fn now_rfc3339() -> (String, i64) {
    let now = time::OffsetDateTime::now_utc();
    let s = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string());
    (s, now.unix_timestamp())
}

fn blob_to_u128(b: &[u8]) -> Result<u128, StoreError> {
    let arr: [u8; 16] = b
        .try_into()
        .map_err(|_| StoreError::Corrupt("key ID blob is not 16 bytes".into()))?;
    Ok(u128::from_be_bytes(arr))
}

/// id, key_id, device_id, device name, nonce, ciphertext, superseded, disclosed.
type KeyRow = (i64, Vec<u8>, i64, String, Vec<u8>, Vec<u8>, bool, bool);

/// SQLite in WAL mode: one writer connection (behind a mutex) for every write, a pool of
/// read-only connections for reads (WAL readers never wait for the writer), API tokens held
/// in memory, and a group-commit writer thread for audit rows and disclosure marks.
pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    readers: ReadPool,
    /// API token hash -> account, loaded at open and updated by `add_api_token` after its
    /// commit, so a bearer token costs a hash and a map lookup instead of a query.
    tokens: RwLock<HashMap<TokenHash, Account>>,
    /// Feeds the group-commit writer thread; it stops when this is dropped.
    journal: Mutex<mpsc::Sender<JournalJob>>,
    /// Dropping it stops the checkpoint thread.
    _checkpointer: mpsc::Sender<()>,
}

/// A token hash whose equality is constant-time (the map's final comparison of a candidate
/// does not reveal how many leading bytes matched).
#[derive(Clone, Copy)]
struct TokenHash([u8; 32]);

impl std::hash::Hash for TokenHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for TokenHash {
    fn eq(&self, other: &Self) -> bool {
        bool::from(subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]))
    }
}
impl Eq for TokenHash {}

/// One submission to the group-commit writer.
type JournalJob = StagedWork;

thread_local! {
    /// Set on the group-commit writer thread: its reads use the writer connection.
    static ON_JOURNAL_WRITER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Read-only connections, opened on demand and reused; a connection is taken for one call
/// only, so the pool never holds more than the number of concurrent readers.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

// A panic while holding one of these locks cannot leave SQLite inconsistent (transactions
// roll back on drop), so a poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ReadPool {
    /// Runs `f` on an idle reader (opening one if none is idle) and returns it to the pool.
    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = lock(&self.idle).pop();
        let conn = match pooled {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(5))?;
                c.pragma_update(None, "cache_size", -16384)?;
                c
            }
        };
        let res = f(&conn);
        lock(&self.idle).push(conn);
        res
    }

    /// Closes the idle readers (leaving WAL mode needs the only connection).
    fn close_idle(&self) {
        lock(&self.idle).clear();
    }
}

/// Most submissions committed in one transaction.
const JOURNAL_BATCH: usize = 4096;

/// The group-commit writer: waits for a submission, takes everything else queued, writes it
/// all in one transaction on the writer connection, and reports the result to every
/// submitter only after the commit.
/// Each submission's work runs first (its reads on the writer connection, not holding its
/// lock), then everything it returned is written in the one transaction.
fn journal_writer(writer: Arc<Mutex<Connection>>, rx: mpsc::Receiver<JournalJob>) {
    ON_JOURNAL_WRITER.with(|w| w.set(true));
    let mut entries = Vec::new();
    let mut done = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(work) = next.take() {
            // A panicking submission loses only its own answer (its caller sees "the
            // writer stopped"); the rest of the batch goes on.
            if let Ok((e, d)) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
                entries.extend(e);
                done.push(d);
            }
            if done.len() < JOURNAL_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let res = if entries.is_empty() {
            Ok(())
        } else {
            write_journal(&mut lock(&writer), &entries).map_err(|e| e.to_string())
        };
        entries.clear();
        for d in done.drain(..) {
            d(res.clone());
        }
    }
}

fn write_journal(c: &mut Connection, entries: &[JournalEntry]) -> Result<(), StoreError> {
    let tx = c.transaction()?;
    let (now, _) = now_rfc3339();
    for e in entries {
        match e {
            JournalEntry::Audit(row) => {
                let unix = time::OffsetDateTime::parse(
                    &row.time,
                    &time::format_description::well_known::Rfc3339,
                )
                .map(|t| t.unix_timestamp())
                .unwrap_or(0);
                tx.prepare_cached(
                    "INSERT INTO audit(time, time_unix, source, requester, requester_lc, end_user, device, key_id, key_type, reason, outcome)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?
                .execute(params![
                    row.time,
                    unix,
                    row.source,
                    row.requester,
                    row.requester.to_lowercase(),
                    row.end_user,
                    row.device,
                    row.key_id,
                    row.key_type,
                    row.reason,
                    row.outcome
                ])?;
            }
            JournalEntry::KeyDisclosed { key_row } => {
                tx.prepare_cached(
                    "UPDATE keys SET disclosed_at = ?2 WHERE id = ?1 AND disclosed_at IS NULL",
                )?
                .execute(params![key_row, now])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// How often the background thread copies the WAL back into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs passive WAL checkpoints until `stop` is dropped, so no commit on the request path
/// pays for a checkpoint (and its fsync). Passive checkpoints never wait for readers or the
/// writer. The connection is opened per tick and closed again: a held connection would keep
/// the import from leaving WAL mode. Errors are logged and retried at the next tick.
fn checkpointer(path: PathBuf, stop: mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        let res = Connection::open(&path)
            .and_then(|c| c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())));
        match res {
            Ok(()) => {}
            // Busy while an import holds the file (it leaves WAL mode): retried next tick.
            Err(rusqlite::Error::SqliteFailure(f, _))
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                tracing::debug!("WAL checkpoint skipped: store busy");
            }
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) the store file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // 64 MiB page cache: bulk escrow touches the key-ID index all over.
        conn.pragma_update(None, "cache_size", -65536)?;
        conn.execute_batch(SCHEMA)?;
        let tokens = load_tokens(&conn)?;
        // Commits never checkpoint: the checkpoint thread does (see `checkpointer`).
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let (stop_checkpoints, stop) = mpsc::channel();
        let p = path.to_path_buf();
        std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || checkpointer(p, stop))
            .map_err(|e| StoreError::Corrupt(format!("starting the WAL checkpointer: {e}")))?;
        let writer = Arc::new(Mutex::new(conn));
        let (tx, rx) = mpsc::channel();
        let w = writer.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || journal_writer(w, rx))
            .map_err(|e| StoreError::Corrupt(format!("starting the audit writer: {e}")))?;
        Ok(SqliteStore {
            writer,
            readers: ReadPool {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
            },
            tokens: RwLock::new(tokens),
            journal: Mutex::new(tx),
            _checkpointer: stop_checkpoints,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        lock(&self.writer)
    }

    /// Runs a read on a pooled read-only connection, or on the group-commit writer thread on
    /// the writer connection (not used by that thread while its submissions run).
    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if ON_JOURNAL_WRITER.with(|w| w.get()) {
            return f(&self.conn());
        }
        self.readers.with(f)
    }
}

fn load_tokens(c: &Connection) -> Result<HashMap<TokenHash, Account>, StoreError> {
    let mut st = c.prepare(
        "SELECT t.token_hash, a.id, a.username, a.password_hash, a.role FROM api_tokens t JOIN accounts a ON a.id = t.account_id",
    )?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
        ))
    })?;
    let mut out = HashMap::new();
    for r in rows {
        let (h, a) = r?;
        let h: [u8; 32] = h
            .try_into()
            .map_err(|_| StoreError::Corrupt("API token hash is not 32 bytes".into()))?;
        out.insert(TokenHash(h), to_account(a)?);
    }
    Ok(out)
}

fn row_account(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, String, String, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn to_account(t: (i64, String, String, String)) -> Result<Account, StoreError> {
    let role = Role::parse(&t.3).ok_or_else(|| StoreError::Corrupt(format!("role {}", t.3)))?;
    Ok(Account {
        id: t.0,
        username: t.1,
        password_hash: t.2,
        role,
    })
}

fn insert_key(
    tx: &rusqlite::Transaction<'_>,
    device_row: i64,
    k: &NewKey,
    now: &str,
    index: usize,
) -> Result<EscrowResult, StoreError> {
    let kid = k.key_id.to_be_bytes();
    let n = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO keys(key_id, device_id, volume_id, protector_type, nonce, ciphertext, fingerprint, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            &kid[..],
            device_row,
            &k.volume_id.to_be_bytes()[..],
            k.protector_type,
            k.sealed.nonce,
            k.sealed.ciphertext,
            &k.fingerprint[..],
            now
        ])?;
    if n == 1 {
        return Ok(EscrowResult::Created(IndexEntry {
            key_id: k.key_id,
            key_row: tx.last_insert_rowid(),
            device_row,
        }));
    }
    let (dev, fp): (i64, Vec<u8>) = tx
        .prepare_cached("SELECT device_id, fingerprint FROM keys WHERE key_id = ?1")?
        .query_row(params![&kid[..]], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if dev != device_row {
        return Err(StoreError::Conflict {
            index,
            message: "key protector ID is already escrowed for another device".into(),
        });
    }
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        fp.as_slice(),
        &k.fingerprint[..],
    )) {
        return Err(StoreError::Conflict {
            index,
            message: "key protector ID is already escrowed with a different recovery password"
                .into(),
        });
    }
    Ok(EscrowResult::Existing)
}

fn upsert_assoc(
    tx: &Connection,
    device_row: i64,
    user: &str,
    kind: &str,
) -> Result<(), StoreError> {
    let (l, r, i) = match kind {
        "local" => (1, 0, 0),
        "remote" => (0, 1, 0),
        _ => (0, 0, 1),
    };
    tx.prepare_cached(
        "INSERT INTO associations(device_id, user_lc, user, local, remote, imported) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(device_id, user_lc) DO UPDATE SET local = max(local, ?4), remote = max(remote, ?5), imported = max(imported, ?6)",
    )?
    .execute(params![device_row, user.to_lowercase(), user, l, r, i])?;
    Ok(())
}

/// Rows per multi-row INSERT in the import: one statement step per 64 rows instead of one per
/// row (the per-statement cost dominated the import).
const IMPORT_BATCH: usize = 64;

/// Runs `head VALUES (?, ..), (?, ..) .. tail` over `items`, `IMPORT_BATCH` rows a statement;
/// `bind(statement, first_parameter, item)` binds one row's `ncols` values.
fn insert_batched<T>(
    tx: &rusqlite::Transaction<'_>,
    head: &str,
    tail: &str,
    ncols: usize,
    items: &[T],
    mut bind: impl FnMut(&mut rusqlite::Statement<'_>, usize, &T) -> rusqlite::Result<()>,
) -> Result<(), StoreError> {
    for chunk in items.chunks(IMPORT_BATCH) {
        let one = format!("({})", vec!["?"; ncols].join(","));
        let sql = format!("{head} VALUES {} {tail}", vec![one; chunk.len()].join(","));
        let mut st = tx.prepare_cached(&sql)?;
        for (r, item) in chunk.iter().enumerate() {
            bind(&mut st, r * ncols + 1, item)?;
        }
        st.raw_execute()?;
    }
    Ok(())
}

/// The next free row id of a table (ids are assigned by the import so multi-row inserts
/// can report them).
fn next_id(tx: &rusqlite::Transaction<'_>, table: &str) -> Result<i64, StoreError> {
    let sql = format!("SELECT coalesce(max(id), 0) + 1 FROM {table}");
    Ok(tx.query_row(&sql, [], |r| r.get(0))?)
}

/// A `Device` from a row of `SELECT id, device_uuid, name FROM devices ...`.
fn device_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        row: r.get(0)?,
        device_id: r.get(1)?,
        name: r.get(2)?,
    })
}

/// The import proper, in one transaction. Every B-tree is written in key order: keys by key
/// ID, devices by name with their random UUIDs sorted before assignment, associations by
/// device row, so each unique index grows by appends instead of random inserts. Rows go in
/// multi-row INSERTs with ids assigned here.
fn import_rows(c: &mut Connection, rows: &[ImportRow]) -> Result<Vec<IndexEntry>, StoreError> {
    use rand::Rng;
    let t0 = std::time::Instant::now();
    let tx = c.transaction()?;
    let (now, _) = now_rfc3339();

    // Devices: group rows by lower-case name, in name order.
    let lc: Vec<String> = rows.iter().map(|r| r.device.to_lowercase()).collect();
    let mut by_name: Vec<usize> = (0..rows.len()).collect();
    by_name.sort_by(|&a, &b| lc[a].cmp(&lc[b]).then(a.cmp(&b)));
    let mut dev_of = vec![0i64; rows.len()];
    let any_device: bool =
        tx.query_row("SELECT EXISTS(SELECT 1 FROM devices)", [], |r| r.get(0))?;
    // (first row index, id) of each device to create, in name order.
    let mut new_devices: Vec<(usize, i64)> = Vec::new();
    let mut next_device = next_id(&tx, "devices")?;
    let mut i = 0;
    while i < by_name.len() {
        let name = &lc[by_name[i]];
        let mut j = i + 1;
        while j < by_name.len() && lc[by_name[j]] == *name {
            j += 1;
        }
        let found: Option<i64> = if any_device {
            tx.prepare_cached("SELECT id FROM devices WHERE name_lc = ?1")?
                .query_row(params![name], |r| r.get(0))
                .optional()?
        } else {
            None
        };
        let d = match found {
            Some(d) => d,
            None => {
                new_devices.push((by_name[i], next_device));
                next_device += 1;
                next_device - 1
            }
        };
        by_name[i..j].iter().for_each(|&k| dev_of[k] = d);
        i = j;
    }
    drop(by_name);
    // Random (v4) UUIDs, sorted so the unique index on them grows by appends.
    let mut rng = rand::rng();
    let mut uuids: Vec<[u8; uuid::fmt::Hyphenated::LENGTH]> = (0..new_devices.len())
        .map(|_| {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            uuid::Builder::from_random_bytes(rng.random())
                .into_uuid()
                .hyphenated()
                .encode_lower(&mut buf);
            buf
        })
        .collect();
    uuids.sort_unstable();
    let devs: Vec<(usize, i64, &[u8])> = new_devices
        .iter()
        .zip(&uuids)
        .map(|(&(first, id), u)| (first, id, &u[..]))
        .collect();
    insert_batched(
        &tx,
        "INSERT INTO devices(id, device_uuid, name, name_lc, created_at)",
        "",
        5,
        &devs,
        |st, p, &(first, id, u)| {
            st.raw_bind_parameter(p, id)?;
            st.raw_bind_parameter(p + 1, std::str::from_utf8(u).unwrap_or_default())?;
            st.raw_bind_parameter(p + 2, rows.get(first).map_or("", |r| r.device.as_str()))?;
            st.raw_bind_parameter(p + 3, lc.get(first).map_or("", |s| s.as_str()))?;
            st.raw_bind_parameter(p + 4, now.as_str())
        },
    )?;
    drop(devs);
    drop(lc);
    let t_dev = t0.elapsed();

    // Keys, in key-ID order. Errors still name the caller's index.
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_unstable_by_key(|&i| rows[i].key.key_id);
    let any_key: bool = tx.query_row("SELECT EXISTS(SELECT 1 FROM keys)", [], |r| r.get(0))?;
    let mut created = Vec::with_capacity(rows.len());
    let mut next_key = next_id(&tx, "keys")?;
    let mut new_keys: Vec<usize> = Vec::with_capacity(rows.len());
    let dup_in_file = order
        .windows(2)
        .any(|w| rows[w[0]].key.key_id == rows[w[1]].key.key_id);
    if any_key || dup_in_file {
        // Keys already stored (or repeated): row by row, with the conflict checks.
        for &i in &order {
            if let EscrowResult::Created(e) = insert_key(&tx, dev_of[i], &rows[i].key, &now, i)? {
                created.push(e);
            }
        }
    } else {
        for &i in &order {
            created.push(IndexEntry {
                key_id: rows[i].key.key_id,
                key_row: next_key,
                device_row: dev_of[i],
            });
            next_key += 1;
            new_keys.push(i);
        }
        let items: Vec<(usize, &IndexEntry)> =
            new_keys.iter().copied().zip(created.iter()).collect();
        insert_batched(
            &tx,
            "INSERT INTO keys(id, key_id, device_id, volume_id, protector_type, nonce, ciphertext, fingerprint, created_at)",
            "",
            9,
            &items,
            |st, p, &(i, e)| {
                let k = &rows[i].key;
                st.raw_bind_parameter(p, e.key_row)?;
                st.raw_bind_parameter(p + 1, &k.key_id.to_be_bytes()[..])?;
                st.raw_bind_parameter(p + 2, e.device_row)?;
                st.raw_bind_parameter(p + 3, &k.volume_id.to_be_bytes()[..])?;
                st.raw_bind_parameter(p + 4, k.protector_type.as_str())?;
                st.raw_bind_parameter(p + 5, &k.sealed.nonce[..])?;
                st.raw_bind_parameter(p + 6, &k.sealed.ciphertext[..])?;
                st.raw_bind_parameter(p + 7, &k.fingerprint[..])?;
                st.raw_bind_parameter(p + 8, now.as_str())
            },
        )?;
    }
    let t_keys = t0.elapsed();

    // Associations, in device-row order, each (device, user) once.
    let mut assoc: Vec<(i64, String, usize)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.user.as_ref().map(|u| (dev_of[i], u.to_lowercase(), i)))
        .collect();
    assoc.sort_unstable();
    assoc.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    // Into an empty table, the by-user index is built after the load (one sort, dense
    // pages) instead of taking each row at one of the users' insertion points.
    let empty_assoc: bool = !assoc.is_empty()
        && !tx.query_row("SELECT EXISTS(SELECT 1 FROM associations)", [], |r| {
            r.get::<_, bool>(0)
        })?;
    if empty_assoc {
        tx.execute_batch("DROP INDEX IF EXISTS assoc_user")?;
    }
    insert_batched(
        &tx,
        "INSERT INTO associations(device_id, user_lc, user, local, remote, imported)",
        "ON CONFLICT(device_id, user_lc) DO UPDATE SET imported = 1",
        6,
        &assoc,
        |st, p, (dev, user_lc, i)| {
            st.raw_bind_parameter(p, *dev)?;
            st.raw_bind_parameter(p + 1, user_lc.as_str())?;
            st.raw_bind_parameter(
                p + 2,
                rows.get(*i)
                    .and_then(|r| r.user.as_deref())
                    .unwrap_or_default(),
            )?;
            st.raw_bind_parameter(p + 3, 0)?;
            st.raw_bind_parameter(p + 4, 0)?;
            st.raw_bind_parameter(p + 5, 1)
        },
    )?;
    if empty_assoc {
        tx.execute_batch("CREATE INDEX IF NOT EXISTS assoc_user ON associations(user_lc)")?;
    }
    let t_assoc = t0.elapsed();
    tx.commit()?;
    tracing::debug!(
        devices_secs = t_dev.as_secs_f64(),
        keys_secs = (t_keys - t_dev).as_secs_f64(),
        associations_secs = (t_assoc - t_keys).as_secs_f64(),
        commit_secs = (t0.elapsed() - t_assoc).as_secs_f64(),
        "import store phases"
    );
    Ok(created)
}

impl Store for SqliteStore {
    fn create_account(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
    ) -> Result<Account, StoreError> {
        let c = self.conn();
        let (now, _) = now_rfc3339();
        let n = c.execute(
            "INSERT OR IGNORE INTO accounts(username, username_lc, password_hash, role, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![username, username.to_lowercase(), password_hash, role.as_str(), now],
        )?;
        if n == 0 {
            return Err(StoreError::Conflict {
                index: 0,
                message: format!("account {username} already exists"),
            });
        }
        Ok(Account {
            id: c.last_insert_rowid(),
            username: username.to_string(),
            password_hash: password_hash.to_string(),
            role,
        })
    }

    fn account_by_name(&self, username: &str) -> Result<Option<Account>, StoreError> {
        self.read(|c| {
            let t = c
                .prepare_cached(
                    "SELECT id, username, password_hash, role FROM accounts WHERE username_lc = ?1",
                )?
                .query_row(params![username.to_lowercase()], row_account)
                .optional()?;
            t.map(to_account).transpose()
        })
    }

    fn first_admin(&self) -> Result<Option<Account>, StoreError> {
        self.read(|c| {

        let t = c
            .prepare_cached("SELECT id, username, password_hash, role FROM accounts WHERE role = 'admin' ORDER BY id LIMIT 1")?
            .query_row([], row_account)
            .optional()?;
        t.map(to_account).transpose()
        })
    }

    fn add_api_token(&self, account_id: i64, hash: &[u8; 32]) -> Result<(), StoreError> {
        let (now, _) = now_rfc3339();
        let c = self.conn();
        c.execute(
            "INSERT INTO api_tokens(token_hash, account_id, created_at) VALUES (?1, ?2, ?3)",
            params![&hash[..], account_id, now],
        )?;
        let t = c
            .prepare_cached("SELECT id, username, password_hash, role FROM accounts WHERE id = ?1")?
            .query_row(params![account_id], row_account)?;
        // Updated while the writer lock is held: the map never lags behind a committed token.
        self.tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(TokenHash(*hash), to_account(t)?);
        Ok(())
    }

    fn account_by_api_token(&self, hash: &[u8; 32]) -> Result<Option<Account>, StoreError> {
        let key = TokenHash(*hash);
        if let Some(a) = self
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(Some(a.clone()));
        }
        // Not in memory: a token written by another process (`admin bootstrap` next to a
        // running portal) is still honoured, and remembered.
        let t = self.read(|c| {
            Ok(c.prepare_cached(
                "SELECT a.id, a.username, a.password_hash, a.role FROM api_tokens t JOIN accounts a ON a.id = t.account_id WHERE t.token_hash = ?1",
            )?
            .query_row(params![&hash[..]], row_account)
            .optional()?)
        })?;
        let Some(account) = t.map(to_account).transpose()? else {
            return Ok(None);
        };
        self.tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, account.clone());
        Ok(Some(account))
    }

    fn add_enrollment_token(&self, hash: &[u8; 32]) -> Result<(), StoreError> {
        let (now, _) = now_rfc3339();
        self.conn().execute(
            "INSERT INTO enrollment_tokens(token_hash, created_at) VALUES (?1, ?2)",
            params![&hash[..], now],
        )?;
        Ok(())
    }

    fn use_enrollment_token(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        let (now, _) = now_rfc3339();
        let n = self.conn().execute(
            "UPDATE enrollment_tokens SET used_at = ?2 WHERE token_hash = ?1 AND used_at IS NULL",
            params![&hash[..], now],
        )?;
        Ok(n == 1)
    }

    fn enroll_device(&self, name: &str, credential_hash: &[u8; 32]) -> Result<Device, StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let (now, _) = now_rfc3339();
        let existing: Option<(i64, String, String)> = tx
            .query_row(
                "SELECT id, device_uuid, name FROM devices WHERE name_lc = ?1",
                params![name.to_lowercase()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let dev = match existing {
            Some((row, uuid, name)) => {
                tx.execute(
                    "UPDATE devices SET credential_hash = ?2 WHERE id = ?1",
                    params![row, &credential_hash[..]],
                )?;
                Device {
                    row,
                    device_id: uuid,
                    name,
                }
            }
            None => {
                let uuid = uuid::Uuid::new_v4().to_string();
                tx.execute(
                    "INSERT INTO devices(device_uuid, name, name_lc, credential_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![uuid, name, name.to_lowercase(), &credential_hash[..], now],
                )?;
                Device {
                    row: tx.last_insert_rowid(),
                    device_id: uuid,
                    name: name.to_string(),
                }
            }
        };
        tx.commit()?;
        Ok(dev)
    }

    fn device_by_credential(&self, hash: &[u8; 32]) -> Result<Option<Device>, StoreError> {
        self.read(|c| {
            let d = c
                .prepare_cached(
                    "SELECT id, device_uuid, name FROM devices WHERE credential_hash = ?1",
                )?
                .query_row(params![&hash[..]], device_from_row)
                .optional()?;
            Ok(d)
        })
    }

    fn device_by_name(&self, name: &str) -> Result<Option<Device>, StoreError> {
        self.read(|c| {
            let d = c
                .prepare_cached("SELECT id, device_uuid, name FROM devices WHERE name_lc = ?1")?
                .query_row(params![name.to_lowercase()], device_from_row)
                .optional()?;
            Ok(d)
        })
    }

    fn escrow_keys(
        &self,
        device_row: i64,
        keys: &[NewKey],
    ) -> Result<Vec<EscrowResult>, StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let (now, _) = now_rfc3339();
        let mut out = vec![EscrowResult::Existing; keys.len()];
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_unstable_by_key(|&i| keys[i].key_id);
        for i in order {
            out[i] = insert_key(&tx, device_row, &keys[i], &now, i)?;
        }
        tx.commit()?;
        Ok(out)
    }

    fn key_by_row(&self, key_row: i64) -> Result<Option<KeyRecord>, StoreError> {
        self.read(|c| {

        let t: Option<KeyRow> = c
            .prepare_cached(
                "SELECT k.id, k.key_id, k.device_id, d.name, k.nonce, k.ciphertext, k.superseded_at IS NOT NULL,
                   k.disclosed_at IS NOT NULL
                 FROM keys k JOIN devices d ON d.id = k.device_id WHERE k.id = ?1",
            )?
            .query_row(params![key_row], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
            })
            .optional()?;
        t.map(|t| {
            Ok(KeyRecord {
                row: t.0,
                key_id: blob_to_u128(&t.1)?,
                device_row: t.2,
                device_name: t.3,
                sealed: Sealed {
                    nonce: t.4,
                    ciphertext: t.5,
                },
                superseded: t.6,
                disclosed: t.7,
            })
        })
        .transpose()
        })
    }

    fn key_by_id(&self, key_id: u128) -> Result<Option<KeyRecord>, StoreError> {
        let row: Option<i64> = self.read(|c| {
            Ok(c.prepare_cached("SELECT id FROM keys WHERE key_id = ?1")?
                .query_row(params![&key_id.to_be_bytes()[..]], |r| r.get(0))
                .optional()?)
        })?;
        match row {
            Some(r) => self.key_by_row(r),
            None => Ok(None),
        }
    }

    fn current_keys(&self) -> Result<Vec<IndexEntry>, StoreError> {
        self.read(|c| {
            let mut st =
                c.prepare("SELECT id, key_id, device_id FROM keys WHERE superseded_at IS NULL")?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for r in rows {
                let (row, kid, dev) = r?;
                out.push(IndexEntry {
                    key_id: blob_to_u128(&kid)?,
                    key_row: row,
                    device_row: dev,
                });
            }
            Ok(out)
        })
    }

    fn mark_disclosed(&self, key_row: i64) -> Result<(), StoreError> {
        commit_journal_blocking(self, vec![JournalEntry::KeyDisclosed { key_row }])
    }

    fn keys_to_rotate(&self, device_row: i64) -> Result<Vec<u128>, StoreError> {
        self.read(|c| {

        let mut st = c.prepare_cached(
            "SELECT key_id FROM keys WHERE device_id = ?1 AND disclosed_at IS NOT NULL AND superseded_at IS NULL ORDER BY id",
        )?;
        let rows = st.query_map(params![device_row], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(blob_to_u128(&r?)?);
        }
        Ok(out)
        })
    }

    fn supersede(&self, device_row: i64, old: u128, new: u128) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let get = |k: u128| -> Result<Option<(i64, bool)>, StoreError> {
            Ok(tx
                .query_row(
                    "SELECT device_id, superseded_at IS NOT NULL FROM keys WHERE key_id = ?1",
                    params![&k.to_be_bytes()[..]],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?)
        };
        match get(old)? {
            Some((d, false)) if d == device_row => {}
            Some((d, true)) if d == device_row => {
                return Err(StoreError::Superseded(
                    "old key is already superseded".into(),
                ))
            }
            _ => {
                return Err(StoreError::NotFound {
                    field: "old_key_protector_id",
                    message: "no such key on this device".into(),
                })
            }
        }
        match get(new)? {
            Some((d, false)) if d == device_row => {}
            Some((d, true)) if d == device_row => {
                return Err(StoreError::Superseded(
                    "new key is itself superseded".into(),
                ))
            }
            _ => {
                return Err(StoreError::NotFound {
                    field: "new_key_protector_id",
                    message: "the new key must be escrowed for this device first".into(),
                })
            }
        }
        if old == new {
            return Err(StoreError::Superseded(
                "old and new key are the same".into(),
            ));
        }
        let (now, _) = now_rfc3339();
        tx.execute(
            "UPDATE keys SET superseded_at = ?2, superseded_by = ?3 WHERE key_id = ?1",
            params![&old.to_be_bytes()[..], now, &new.to_be_bytes()[..]],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn record_sign_in(
        &self,
        device_row: i64,
        user: &str,
        kind: SignInKind,
    ) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let (now, _) = now_rfc3339();
        let k = match kind {
            SignInKind::Local => "local",
            SignInKind::Remote => "remote",
        };
        tx.execute(
            "INSERT INTO sign_ins(device_id, user, kind, time) VALUES (?1, ?2, ?3, ?4)",
            params![device_row, user, k, now],
        )?;
        upsert_assoc(&tx, device_row, user, k)?;
        tx.commit()?;
        Ok(())
    }

    fn associations_of_user(&self, user: &str) -> Result<Vec<(i64, Assoc)>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT device_id, local, remote, imported FROM associations WHERE user_lc = ?1",
            )?;
            let rows = st.query_map(params![user.to_lowercase()], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    Assoc {
                        local: r.get(1)?,
                        remote: r.get(2)?,
                        imported: r.get(3)?,
                    },
                ))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn users_of_device(&self, device_row: i64) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT user FROM associations WHERE device_id = ?1 ORDER BY user_lc",
            )?;
            let rows = st.query_map(params![device_row], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn device_name(&self, device_row: i64) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT name FROM devices WHERE id = ?1")?
                .query_row(params![device_row], |r| r.get(0))
                .optional()?)
        })
    }

    fn import(&self, rows: &[ImportRow]) -> Result<Vec<IndexEntry>, StoreError> {
        // Leaving WAL mode needs the only open connection.
        self.readers.close_idle();
        let mut c = self.conn();
        // Bulk mode for the stopped portal (see API.md, "import FILE"): the rollback journal
        // lives in memory and nothing is synced until the end. Errors in the data still roll
        // the whole import back; a crash or power loss mid-import may leave the file damaged.
        let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        c.pragma_update(None, "journal_mode", "MEMORY")?;
        c.pragma_update(None, "synchronous", "OFF")?;
        c.pragma_update(None, "cache_size", -(512 * 1024))?;
        // Device rows are created by the import itself: the per-key parent check is redundant.
        c.pragma_update(None, "foreign_keys", "OFF")?;
        let res = import_rows(&mut c, rows);
        let restore = (|| -> Result<(), StoreError> {
            c.pragma_update(None, "foreign_keys", "ON")?;
            c.pragma_update(None, "cache_size", -65536)?;
            c.pragma_update(None, "synchronous", "NORMAL")?;
            c.pragma_update(None, "journal_mode", mode.as_str())?;
            Ok(())
        })();
        let created = res?;
        restore?;
        Ok(created)
    }

    fn put_tpm_lockout(&self, device_row: i64, sealed: &Sealed) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c.transaction()?;
        let (now, _) = now_rfc3339();
        tx.execute(
            "UPDATE tpm_lockout SET superseded_at = ?2 WHERE device_id = ?1 AND superseded_at IS NULL",
            params![device_row, now],
        )?;
        tx.execute(
            "INSERT INTO tpm_lockout(device_id, nonce, ciphertext, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![device_row, sealed.nonce, sealed.ciphertext, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn current_tpm_lockout(&self, device_row: i64) -> Result<Option<TpmRecord>, StoreError> {
        self.read(|c| {
        Ok(c
            .prepare_cached(
                "SELECT id, nonce, ciphertext FROM tpm_lockout WHERE device_id = ?1 AND superseded_at IS NULL ORDER BY id DESC LIMIT 1",
            )?
            .query_row(params![device_row], |r| {
                Ok(TpmRecord {
                    row: r.get(0)?,
                    sealed: Sealed {
                        nonce: r.get(1)?,
                        ciphertext: r.get(2)?,
                    },
                })
            })
            .optional()?)
        })
    }

    fn mark_tpm_disclosed(&self, row: i64) -> Result<(), StoreError> {
        let (now, _) = now_rfc3339();
        self.conn().execute(
            "UPDATE tpm_lockout SET disclosed_at = ?2 WHERE id = ?1 AND disclosed_at IS NULL",
            params![row, now],
        )?;
        Ok(())
    }

    fn tpm_rotation_pending(&self, device_row: i64) -> Result<bool, StoreError> {
        self.read(|c| {
        let n: i64 = c.query_row(
            "SELECT count(*) FROM tpm_lockout WHERE device_id = ?1 AND superseded_at IS NULL AND disclosed_at IS NOT NULL",
            params![device_row],
            |r| r.get(0),
        )?;
        Ok(n > 0)
        })
    }

    fn load_settings(&self) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            Ok(
                c.query_row("SELECT json FROM settings WHERE id = 1", [], |r| r.get(0))
                    .optional()?,
            )
        })
    }

    fn save_settings(&self, json: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO settings(id, json) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET json = ?1",
            params![json],
        )?;
        Ok(())
    }

    fn append_audit(&self, row: &AuditRow) -> Result<(), StoreError> {
        commit_journal_blocking(self, vec![JournalEntry::Audit(Box::new(row.clone()))])
    }

    fn submit_staged(&self, work: StagedWork) {
        // A stopped writer drops `work` unrun: its caller sees "the writer stopped".
        drop(lock(&self.journal).send(work));
    }

    fn query_audit(&self, f: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        self.read(|c| {

        let mut st = c.prepare_cached(
            "SELECT id, time, source, requester, end_user, device, key_id, key_type, reason, outcome FROM audit
             WHERE (?1 IS NULL OR time_unix >= ?1) AND (?2 IS NULL OR source = ?2) AND (?3 IS NULL OR outcome = ?3)
               AND (?4 IS NULL OR requester_lc = ?4 OR lower(end_user) = ?4) AND (?5 IS NULL OR lower(device) = ?5)
             ORDER BY id",
        )?;
        let rows = st.query_map(
            params![
                f.since_unix,
                f.source,
                f.outcome,
                f.user.as_ref().map(|u| u.to_lowercase()),
                f.device.as_ref().map(|d| d.to_lowercase())
            ],
            |r| {
                Ok(AuditRow {
                    id: r.get(0)?,
                    time: r.get(1)?,
                    source: r.get(2)?,
                    requester: r.get(3)?,
                    end_user: r.get(4)?,
                    device: r.get(5)?,
                    key_id: r.get(6)?,
                    key_type: r.get(7)?,
                    reason: r.get(8)?,
                    outcome: r.get(9)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    fn count_failures(&self, requester: &str, since_unix: i64) -> Result<u64, StoreError> {
        self.read(|c| {
        let n: i64 = c
            .prepare_cached(
                "SELECT count(*) FROM audit WHERE requester_lc = ?1 AND time_unix >= ?2 AND outcome IN ('not_found', 'denied', 'not_eligible')",
            )?
            .query_row(params![requester.to_lowercase(), since_unix], |r| r.get(0))?;
        Ok(n.max(0) as u64)
        })
    }
}
