//! The embedded SQLite engine.
//!
//! Key IDs are 16-byte big-endian BLOBs of the display-order GUID.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, MutexGuard, RwLock};

use rusqlite::{params, Connection, OptionalExtension};

use crate::crypto::Sealed;
use crate::index::IndexEntry;
use crate::store::{
    journal_failed, now_rfc3339, Account, Assoc, AuditFilter, AuditRow, AuditedWork, CommitDone,
    Device, EscrowResult, ImportRow, JournalEntry, KeyRecord, NewKey, Role, SignInKind, Store,
    StoreError, StoredSession, TpmRecord, FAILED_LOOKUP_OUTCOMES,
};

mod checkpoint;
mod import;
mod read_pool;
mod schema;
#[cfg(test)]
mod wal_tests;
mod writer;

use read_pool::{lock, ReadPool};
use writer::{pending_failures, JournalJob, ON_JOURNAL_WRITER};

fn blob_to_u128(b: &[u8]) -> Result<u128, StoreError> {
    let arr: [u8; 16] = b
        .try_into()
        .map_err(|_| StoreError::Corrupt("key ID blob is not 16 bytes".into()))?;
    Ok(u128::from_be_bytes(arr))
}

/// id, csrf, username, role, notice accepted, last seen (microseconds).
type SessionRow = (String, String, Option<String>, Option<String>, bool, i64);

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
    /// Held by the checkpoint thread while its connection is open; the import holds it so
    /// no checkpoint connection is open when it leaves WAL mode.
    checkpoint_turn: Arc<Mutex<()>>,
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

impl SqliteStore {
    /// Opens (creating and migrating if needed) the store file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_wal_limit(path, writer::WAL_TRUNCATE_ABOVE)
    }

    /// [`SqliteStore::open`] with the size above which the group-commit writer truncates the
    /// WAL (64 MiB by default; tests use a small one to see it happen).
    pub fn open_with_wal_limit(path: &Path, wal_limit: u64) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // 64 MiB page cache: bulk escrow touches the key-ID index all over.
        conn.pragma_update(None, "cache_size", -65536)?;
        schema::migrate(&mut conn)?;
        let tokens = load_tokens(&conn)?;
        // Commits never checkpoint: the checkpoint thread does (see `checkpointer`).
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let (stop_checkpoints, stop) = mpsc::channel();
        let p = path.to_path_buf();
        let checkpoint_turn = Arc::new(Mutex::new(()));
        let turn = checkpoint_turn.clone();
        let import_turn = checkpoint_turn.clone();
        std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || checkpoint::checkpointer(p, stop, turn))
            .map_err(|e| StoreError::Corrupt(format!("starting the WAL checkpointer: {e}")))?;
        let writer = Arc::new(Mutex::new(conn));
        let (tx, rx) = mpsc::channel();
        let w = writer.clone();
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = std::path::PathBuf::from(wal);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer::journal_writer(w, rx, wal, wal_limit, checkpoint_turn))
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
            checkpoint_turn: import_turn,
        })
    }

    /// Queues work for the group-commit writer. A stopped writer drops it unrun: its caller
    /// sees "the writer stopped".
    fn submit(&self, work: JournalJob) {
        drop(lock(&self.journal).send(work));
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

/// The page cache of the import in KiB: 512 MiB, or `PORTAL_IMPORT_CACHE_MIB` MiB. Beyond
/// it SQLite writes pages to the file before the commit (the crash test sets it small so
/// that a 100k-key import does what a 10M-key one does with the default).
fn import_cache_kib() -> i64 {
    std::env::var("PORTAL_IMPORT_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|&mib| mib > 0)
        .map_or(512 * 1024, |mib| mib.saturating_mul(1024))
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

pub(super) fn insert_key(
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
    crate::store::escrow_of_known_key(index, device_row, (dev, &fp), &k.fingerprint)
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

/// A `Device` from a row of `SELECT id, device_uuid, name FROM devices ...`.
fn device_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        row: r.get(0)?,
        device_id: r.get(1)?,
        name: r.get(2)?,
    })
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
                // An imported user is on the device row or in an association (schema 4).
                "SELECT device_id, max(local), max(remote), max(imported) FROM (
                   SELECT device_id, local, remote, imported FROM associations WHERE user_lc = ?1
                   UNION ALL
                   SELECT id, 0, 0, 1 FROM devices WHERE imported_user_lc = ?1)
                 GROUP BY device_id",
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
                "SELECT min(user) FROM (
                   SELECT user_lc, user FROM associations WHERE device_id = ?1
                   UNION ALL
                   SELECT imported_user_lc, imported_user FROM devices
                   WHERE id = ?1 AND imported_user_lc IS NOT NULL)
                 GROUP BY user_lc ORDER BY user_lc",
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
        // After the writer connection, as the writer thread takes them (no lock-order cycle).
        // Without it a checkpoint tick's connection made leaving WAL "database is locked".
        let _no_checkpoint = lock(&self.checkpoint_turn);
        // One transaction with a rollback journal on disk (see API.md, "import FILE"): a
        // crash, kill or power loss mid-import leaves a hot journal that the next open rolls
        // back, so the store holds none or all of the file. The journal keeps only pages
        // that existed before the import (pages appended to the file need no undo), so
        // into an empty or small store it costs almost nothing, unlike WAL, which would
        // write every new page twice (log, then checkpoint). `synchronous=FULL`: the journal
        // is on disk before any page it protects is overwritten.
        let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        c.pragma_update(None, "journal_mode", "DELETE")?;
        c.pragma_update(None, "synchronous", "FULL")?;
        c.pragma_update(None, "cache_size", -import_cache_kib())?;
        // Device rows are created by the import itself: the per-key parent check is redundant.
        c.pragma_update(None, "foreign_keys", "OFF")?;
        let res = import::import_rows(&mut c, rows);
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

    fn commit_journal(&self, entries: Vec<JournalEntry>) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        // A caller that went away no longer needs the answer: a failed send is fine.
        let done: CommitDone = Box::new(move |res| drop(tx.send(res)));
        self.submit(Box::new(move || (entries, done)));
        match rx.recv() {
            Ok(r) => r.map_err(journal_failed),
            Err(_) => Err(journal_failed("the writer stopped".into())),
        }
    }

    /// Every decision runs on the one group-commit writer thread, so decisions are serial;
    /// its batch commits them together.
    fn disclose_with_audit(&self, _limited_requester: Option<&str>, work: AuditedWork) {
        self.submit(work);
    }

    fn query_audit(&self, f: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        self.read(|c| {

        let mut st = c.prepare_cached(
            "SELECT id, time, source, requester, end_user, device, key_id, key_type, reason, outcome FROM audit
             WHERE (?1 IS NULL OR time_us >= ?1) AND (?2 IS NULL OR source = ?2) AND (?3 IS NULL OR outcome = ?3)
               AND (?4 IS NULL OR requester_lc = ?4 OR lower(end_user) = ?4) AND (?5 IS NULL OR lower(device) = ?5)
             ORDER BY id",
        )?;
        let rows = st.query_map(
            params![
                f.since_us,
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

    /// On the writer thread (inside a disclose-with-audit), the failures of the decisions
    /// earlier in the same, not yet committed batch count too.
    fn count_failures(&self, requester: &str, since_us: i64) -> Result<u64, StoreError> {
        let lc = requester.to_lowercase();
        let committed = self.read(|c| {
            let n: i64 = c
                .prepare_cached(
                    "SELECT count(*) FROM audit WHERE requester_lc = ?1 AND time_us >= ?2 AND outcome IN (?3, ?4, ?5)",
                )?
                .query_row(
                    params![
                        lc,
                        since_us,
                        FAILED_LOOKUP_OUTCOMES[0],
                        FAILED_LOOKUP_OUTCOMES[1],
                        FAILED_LOOKUP_OUTCOMES[2]
                    ],
                    |r| r.get(0),
                )?;
            Ok(n.max(0) as u64)
        })?;
        Ok(committed + pending_failures(&lc, since_us))
    }

    fn put_session(&self, s: &StoredSession) -> Result<(), StoreError> {
        let (user, role) = match &s.user {
            Some((u, r)) => (Some(u.as_str()), Some(r.as_str())),
            None => (None, None),
        };
        self.conn()
            .prepare_cached(
                "INSERT INTO sessions(id, csrf, username, role, notice_accepted, last_seen_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(id) DO UPDATE SET csrf = ?2, username = ?3, role = ?4, notice_accepted = ?5, last_seen_us = ?6",
            )?
            .execute(params![s.id, s.csrf, user, role, s.notice_accepted, s.last_seen_us])?;
        Ok(())
    }

    fn session(&self, id: &str) -> Result<Option<StoredSession>, StoreError> {
        let row: Option<SessionRow> =
            self.read(|c| {
                Ok(c.prepare_cached(
                    "SELECT id, csrf, username, role, notice_accepted, last_seen_us FROM sessions WHERE id = ?1",
                )?
                .query_row(params![id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })
                .optional()?)
            })?;
        let Some((id, csrf, username, role, notice_accepted, last_seen_us)) = row else {
            return Ok(None);
        };
        let user = match (username, role) {
            (Some(u), Some(r)) => Some((
                u,
                Role::parse(&r).ok_or_else(|| StoreError::Corrupt(format!("role {r}")))?,
            )),
            _ => None,
        };
        Ok(Some(StoredSession {
            id,
            csrf,
            user,
            notice_accepted,
            last_seen_us,
        }))
    }

    fn delete_session(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .prepare_cached("DELETE FROM sessions WHERE id = ?1")?
            .execute(params![id])?;
        Ok(())
    }

    fn sweep_sessions(
        &self,
        signed_in_seen_before_us: i64,
        anonymous_seen_before_us: i64,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM sessions WHERE (username IS NOT NULL AND last_seen_us < ?1)
               OR (username IS NULL AND last_seen_us < ?2)",
            params![signed_in_seen_before_us, anonymous_seen_before_us],
        )?;
        Ok(())
    }
}
