//! The PostgreSQL engine (`--database-url postgres://...`): a shared database server several
//! portal processes can use.
//!
//! tokio-postgres connections in two deadpool pools, driven by the store's own small tokio
//! runtime so the synchronous [`Store`] calls work from any thread (a call hands its future
//! to that runtime and waits for the answer). Every write is its own transaction; a
//! disclose-with-audit holds a per-requester advisory lock from before its decision's reads
//! until its commit. Key IDs are 16-byte big-endian BYTEA values, times TEXT (RFC 3339) plus
//! microseconds since the epoch where the portal compares them.

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{NoTls, Row};

use crate::crypto::Sealed;
use crate::fp;
use crate::index::IndexEntry;
use crate::store::{
    journal_failed, now_rfc3339, time_us_of, Account, Assoc, AuditFilter, AuditRow, AuditedWork,
    CommitDone, Device, EscrowResult, ImportRow, JournalEntry, KeyChanges, KeyRecord, NewKey, Role,
    SignInKind, Store, StoreError, StoredSession, TpmRecord, FAILED_LOOKUP_OUTCOMES,
};

mod import;
mod migrations;

/// Connections for ordinary reads and writes.
const POOL_SIZE: usize = 16;
/// Connections for disclose-with-audit transactions. Separate from `POOL_SIZE` so a
/// decision's reads (on the main pool) never wait for a connection held by a decision.
const AUDITED_POOL_SIZE: usize = 16;

/// The channel the `portal_notify_change` trigger notifies on (migration 4).
const CHANGES_CHANNEL: &str = "portal_changes";
/// The change listener's wait before reconnecting after its connection failed.
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

/// Counts notifications on [`CHANGES_CHANNEL`] (and reconnects of the listening connection,
/// after which some may have been missed), for [`Store::wait_for_change`].
#[derive(Default)]
struct ChangeSignal {
    count: Mutex<u64>,
    changed: Condvar,
}

impl ChangeSignal {
    fn bump(&self) {
        *self.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.changed.notify_all();
    }

    fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let count = self.count.lock().unwrap_or_else(|e| e.into_inner());
        let (count, _) = self
            .changed
            .wait_timeout_while(count, timeout, |c| *c == seen)
            .unwrap_or_else(|e| e.into_inner());
        *count
    }
}

/// Keeps one connection LISTENing on [`CHANGES_CHANNEL`], reconnecting by itself whenever
/// it fails (a database restart); every notification, and every (re)connect, bumps `signal`.
async fn listen_for_changes(config: tokio_postgres::Config, signal: Arc<ChangeSignal>) {
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let driver_signal = signal.clone();
                let driver = tokio::spawn(async move {
                    while let Some(message) =
                        std::future::poll_fn(|cx| connection.poll_message(cx)).await
                    {
                        match message {
                            Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                                driver_signal.bump()
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, "change listener: connection lost");
                                break;
                            }
                        }
                    }
                });
                match client
                    .batch_execute(&format!("LISTEN {CHANGES_CHANNEL}"))
                    .await
                {
                    Ok(()) => {
                        // Changes made while no connection listened are caught up on now.
                        signal.bump();
                        drop(driver.await);
                    }
                    Err(e) => tracing::warn!(error = %e, "change listener: LISTEN failed"),
                }
            }
            Err(e) => tracing::debug!(error = %e, "change listener: cannot connect"),
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

pub struct PgStore {
    pool: Pool,
    audited: Pool,
    changes: Arc<ChangeSignal>,
    /// Runs the connections and every query; shut down (without blocking) on drop.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn pool(config: &tokio_postgres::Config, size: usize) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Postgres(format!("building the connection pool: {e}")))
}

impl PgStore {
    /// Connects to `url` (a `postgres://` URL or key=value string) and applies any missing
    /// migrations.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Postgres(format!("database URL: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pg-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Postgres(format!("starting the client runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let (pool, audited) = {
            let _in_runtime = handle.enter();
            (pool(&config, POOL_SIZE)?, pool(&config, AUDITED_POOL_SIZE)?)
        };
        let changes = Arc::new(ChangeSignal::default());
        let store = PgStore {
            pool,
            audited,
            changes: changes.clone(),
            runtime: Some(runtime),
            handle,
        };
        let p = store.pool.clone();
        store.run(async move { migrate(&p).await })?;
        store.handle.spawn(listen_for_changes(config, changes));
        Ok(store)
    }

    /// Runs `fut` on the store's runtime and waits for it (from any thread, async or not).
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            drop(tx.send(fut.await));
        });
        rx.recv()
            .map_err(|_| StoreError::Postgres("the client runtime stopped".into()))?
    }

    /// Runs one query function on a pooled connection.
    fn with<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send,
    {
        let pool = self.pool.clone();
        self.run(async move { f(pool.get().await?).await })
    }
}

async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut c = pool.get().await?;
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
    )
    .await?;
    for (version, sql) in migrations::MIGRATIONS {
        let tx = c.transaction().await?;
        // One migrating process at a time (several portals may start together).
        tx.execute("SELECT pg_advisory_xact_lock(7478112)", &[])
            .await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if !done {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations(version, applied_at) VALUES ($1, $2)",
                &[version, &now_rfc3339().0],
            )
            .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

fn blob_to_u128(b: &[u8]) -> Result<u128, StoreError> {
    let arr: [u8; 16] = b
        .try_into()
        .map_err(|_| StoreError::Corrupt("key ID blob is not 16 bytes".into()))?;
    Ok(u128::from_be_bytes(arr))
}

fn account_of(r: &Row) -> Result<Account, StoreError> {
    let role: String = r.try_get(3)?;
    Ok(Account {
        id: r.try_get(0)?,
        username: r.try_get(1)?,
        password_hash: r.try_get(2)?,
        role: Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role}")))?,
    })
}

fn device_of(r: &Row) -> Result<Device, StoreError> {
    Ok(Device {
        row: r.try_get(0)?,
        device_id: r.try_get(1)?,
        name: r.try_get(2)?,
    })
}

fn session_of(r: &Row) -> Result<StoredSession, StoreError> {
    let username: Option<String> = r.try_get(2)?;
    let role: Option<String> = r.try_get(3)?;
    let user = match (username, role) {
        (Some(u), Some(role)) => Some((
            u,
            Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role {role}")))?,
        )),
        _ => None,
    };
    Ok(StoredSession {
        id: r.try_get(0)?,
        csrf: r.try_get(1)?,
        user,
        notice_accepted: r.try_get(4)?,
        last_seen_us: r.try_get(5)?,
    })
}

/// Writes audit rows and disclosure marks on `c` (inside the caller's transaction).
async fn write_entries(c: &impl GenericClient, entries: &[JournalEntry]) -> Result<(), StoreError> {
    let (now, _) = now_rfc3339();
    for e in entries {
        match e {
            JournalEntry::Audit(row) => {
                if fp::active(fp::FAIL_AUDIT_WRITE) {
                    return Err(StoreError::Corrupt(
                        "audit insert failed (fault point fail_audit_write)".into(),
                    ));
                }
                c.execute(
                    "INSERT INTO audit(time, time_us, source, requester, requester_lc, end_user, device, key_id, key_type, reason, outcome)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    &[
                        &row.time,
                        &time_us_of(&row.time),
                        &row.source,
                        &row.requester,
                        &row.requester.to_lowercase(),
                        &row.end_user,
                        &row.device,
                        &row.key_id,
                        &row.key_type,
                        &row.reason,
                        &row.outcome,
                    ],
                )
                .await?;
            }
            JournalEntry::KeyDisclosed { key_row } => {
                c.execute(
                    "UPDATE keys SET disclosed_at = $2 WHERE id = $1 AND disclosed_at IS NULL",
                    &[key_row, &now],
                )
                .await?;
            }
            JournalEntry::TpmDisclosed { row } => {
                c.execute(
                    "UPDATE tpm_lockout SET disclosed_at = $2 WHERE id = $1 AND disclosed_at IS NULL",
                    &[row, &now],
                )
                .await?;
            }
        }
    }
    Ok(())
}

async fn insert_key(
    c: &impl GenericClient,
    device_row: i64,
    k: &NewKey,
    now: &str,
    index: usize,
) -> Result<EscrowResult, StoreError> {
    let kid = k.key_id.to_be_bytes();
    let inserted = c
        .query_opt(
            "INSERT INTO keys(key_id, device_id, volume_id, protector_type, nonce, ciphertext, fingerprint, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (key_id) DO NOTHING RETURNING id",
            &[
                &&kid[..],
                &device_row,
                &&k.volume_id.to_be_bytes()[..],
                &k.protector_type,
                &k.sealed.nonce,
                &k.sealed.ciphertext,
                &&k.fingerprint[..],
                &now,
            ],
        )
        .await?;
    if let Some(r) = inserted {
        return Ok(EscrowResult::Created(IndexEntry {
            key_id: k.key_id,
            key_row: r.try_get(0)?,
            device_row,
        }));
    }
    let r = c
        .query_one(
            "SELECT device_id, fingerprint FROM keys WHERE key_id = $1",
            &[&&kid[..]],
        )
        .await?;
    let dev: i64 = r.try_get(0)?;
    let fp: Vec<u8> = r.try_get(1)?;
    crate::store::escrow_of_known_key(index, device_row, (dev, &fp), &k.fingerprint)
}

async fn upsert_assoc(
    c: &impl GenericClient,
    device_row: i64,
    user: &str,
    kind: &str,
) -> Result<(), StoreError> {
    let (l, r, i) = match kind {
        "local" => (true, false, false),
        "remote" => (false, true, false),
        _ => (false, false, true),
    };
    c.execute(
        "INSERT INTO associations(device_id, user_lc, user_name, local, remote, imported) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (device_id, user_lc) DO UPDATE SET local = associations.local OR $4,
           remote = associations.remote OR $5, imported = associations.imported OR $6",
        &[&device_row, &user.to_lowercase(), &user, &l, &r, &i],
    )
    .await?;
    Ok(())
}

async fn key_record(c: &impl GenericClient, key_row: i64) -> Result<Option<KeyRecord>, StoreError> {
    let Some(r) = c
        .query_opt(
            "SELECT k.id, k.key_id, k.device_id, d.name, k.nonce, k.ciphertext,
               k.superseded_at IS NOT NULL, k.disclosed_at IS NOT NULL
             FROM keys k JOIN devices d ON d.id = k.device_id WHERE k.id = $1",
            &[&key_row],
        )
        .await?
    else {
        return Ok(None);
    };
    let kid: Vec<u8> = r.try_get(1)?;
    Ok(Some(KeyRecord {
        row: r.try_get(0)?,
        key_id: blob_to_u128(&kid)?,
        device_row: r.try_get(2)?,
        device_name: r.try_get(3)?,
        sealed: Sealed {
            nonce: r.try_get(4)?,
            ciphertext: r.try_get(5)?,
        },
        superseded: r.try_get(6)?,
        disclosed: r.try_get(7)?,
    }))
}

/// Runs `work` (one disclose-with-audit) and commits its entries, holding the requester's
/// advisory lock (if the limit applies to it) from before the decision until the commit.
async fn audited_decision(pool: Pool, requester_lc: Option<String>, work: AuditedWork) {
    let res = match pool.get().await {
        Ok(mut c) => decide_locked(&mut c, requester_lc.as_deref(), work).await,
        Err(e) => run_decision(work)
            .await
            .map(|(_, done)| (done, Err(StoreError::from(e)))),
    };
    // None: `work` panicked, and its caller sees "the store stopped".
    if let Some((done, res)) = res {
        done(res.map_err(|e| e.to_string()));
    }
}

/// The decision's reads block on this store's calls: a blocking thread, not a worker.
async fn run_decision(work: AuditedWork) -> Option<(Vec<JournalEntry>, CommitDone)> {
    tokio::task::spawn_blocking(work).await.ok()
}

async fn decide_locked(
    c: &mut deadpool_postgres::Client,
    requester_lc: Option<&str>,
    work: AuditedWork,
) -> Option<(CommitDone, Result<(), StoreError>)> {
    let locked = async {
        let tx = c.transaction().await?;
        if let Some(r) = requester_lc {
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&r],
            )
            .await?;
        }
        Ok::<_, StoreError>(tx)
    }
    .await;
    let (entries, done) = run_decision(work).await?;
    let res = match locked {
        Ok(tx) => {
            async {
                write_entries(&tx, &entries).await?;
                Ok(tx.commit().await?)
            }
            .await
        }
        Err(e) => Err(e),
    };
    Some((done, res))
}

impl Store for PgStore {
    fn create_account(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
    ) -> Result<Account, StoreError> {
        let (username, password_hash) = (username.to_string(), password_hash.to_string());
        self.with(move |c| async move {
            let (now, _) = now_rfc3339();
            let r = c
                .query_opt(
                    "INSERT INTO accounts(username, username_lc, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (username_lc) DO NOTHING RETURNING id",
                    &[&username, &username.to_lowercase(), &password_hash, &role.as_str(), &now],
                )
                .await?;
            let Some(r) = r else {
                return Err(StoreError::Conflict {
                    index: 0,
                    message: format!("account {username} already exists"),
                });
            };
            Ok(Account {
                id: r.try_get(0)?,
                username,
                password_hash,
                role,
            })
        })
    }

    fn account_by_name(&self, username: &str) -> Result<Option<Account>, StoreError> {
        let lc = username.to_lowercase();
        self.with(move |c| async move {
            c.query_opt(
                "SELECT id, username, password_hash, role FROM accounts WHERE username_lc = $1",
                &[&lc],
            )
            .await?
            .as_ref()
            .map(account_of)
            .transpose()
        })
    }

    fn first_admin(&self) -> Result<Option<Account>, StoreError> {
        self.with(move |c| async move {
            c.query_opt(
                "SELECT id, username, password_hash, role FROM accounts WHERE role = 'admin' ORDER BY id LIMIT 1",
                &[],
            )
            .await?
            .as_ref()
            .map(account_of)
            .transpose()
        })
    }

    fn add_api_token(&self, account_id: i64, hash: &[u8; 32]) -> Result<(), StoreError> {
        let hash = *hash;
        self.with(move |c| async move {
            let (now, _) = now_rfc3339();
            c.execute(
                "INSERT INTO api_tokens(token_hash, account_id, created_at) VALUES ($1, $2, $3)",
                &[&&hash[..], &account_id, &now],
            )
            .await?;
            Ok(())
        })
    }

    fn account_by_api_token(&self, hash: &[u8; 32]) -> Result<Option<Account>, StoreError> {
        let hash = *hash;
        self.with(move |c| async move {
            c.query_opt(
                "SELECT a.id, a.username, a.password_hash, a.role FROM api_tokens t JOIN accounts a ON a.id = t.account_id WHERE t.token_hash = $1",
                &[&&hash[..]],
            )
            .await?
            .as_ref()
            .map(account_of)
            .transpose()
        })
    }

    fn add_enrollment_token(&self, hash: &[u8; 32]) -> Result<(), StoreError> {
        let hash = *hash;
        self.with(move |c| async move {
            let (now, _) = now_rfc3339();
            c.execute(
                "INSERT INTO enrollment_tokens(token_hash, created_at) VALUES ($1, $2)",
                &[&&hash[..], &now],
            )
            .await?;
            Ok(())
        })
    }

    fn use_enrollment_token(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        let hash = *hash;
        self.with(move |c| async move {
            let (now, _) = now_rfc3339();
            let n = c
                .execute(
                    "UPDATE enrollment_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL",
                    &[&&hash[..], &now],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn enroll_device(&self, name: &str, credential_hash: &[u8; 32]) -> Result<Device, StoreError> {
        let (name, cred) = (name.to_string(), *credential_hash);
        self.with(move |mut c| async move {
            let tx = c.transaction().await?;
            let (now, _) = now_rfc3339();
            let uuid = uuid::Uuid::new_v4().to_string();
            // Create, or attach the new credential to the existing device of that name.
            let r = tx
                .query_one(
                    "INSERT INTO devices(device_uuid, name, name_lc, credential_hash, created_at) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (name_lc) DO UPDATE SET credential_hash = EXCLUDED.credential_hash
                     RETURNING id, device_uuid, name",
                    &[&uuid, &name, &name.to_lowercase(), &&cred[..], &now],
                )
                .await?;
            let d = device_of(&r)?;
            tx.commit().await?;
            Ok(d)
        })
    }

    fn device_by_credential(&self, hash: &[u8; 32]) -> Result<Option<Device>, StoreError> {
        let hash = *hash;
        self.with(move |c| async move {
            c.query_opt(
                "SELECT id, device_uuid, name FROM devices WHERE credential_hash = $1",
                &[&&hash[..]],
            )
            .await?
            .as_ref()
            .map(device_of)
            .transpose()
        })
    }

    fn device_by_name(&self, name: &str) -> Result<Option<Device>, StoreError> {
        let lc = name.to_lowercase();
        self.with(move |c| async move {
            c.query_opt(
                "SELECT id, device_uuid, name FROM devices WHERE name_lc = $1",
                &[&lc],
            )
            .await?
            .as_ref()
            .map(device_of)
            .transpose()
        })
    }

    fn escrow_keys(
        &self,
        device_row: i64,
        keys: &[NewKey],
    ) -> Result<Vec<EscrowResult>, StoreError> {
        let keys = keys.to_vec();
        self.with(move |mut c| async move {
            let tx = c.transaction().await?;
            let (now, _) = now_rfc3339();
            let mut out = vec![EscrowResult::Existing; keys.len()];
            // Key-ID order: two concurrent batches lock the same rows in the same order.
            let mut order: Vec<usize> = (0..keys.len()).collect();
            order.sort_unstable_by_key(|&i| keys[i].key_id);
            for i in order {
                out[i] = insert_key(&tx, device_row, &keys[i], &now, i).await?;
            }
            tx.commit().await?;
            Ok(out)
        })
    }

    fn key_by_row(&self, key_row: i64) -> Result<Option<KeyRecord>, StoreError> {
        self.with(move |c| async move { key_record(&c, key_row).await })
    }

    fn key_by_id(&self, key_id: u128) -> Result<Option<KeyRecord>, StoreError> {
        self.with(move |c| async move {
            let row = c
                .query_opt(
                    "SELECT id FROM keys WHERE key_id = $1",
                    &[&&key_id.to_be_bytes()[..]],
                )
                .await?;
            match row {
                Some(r) => key_record(&c, r.try_get(0)?).await,
                None => Ok(None),
            }
        })
    }

    fn current_keys(&self) -> Result<Vec<IndexEntry>, StoreError> {
        self.with(move |c| async move {
            let rows = c
                .query(
                    "SELECT id, key_id, device_id FROM keys WHERE superseded_at IS NULL",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let kid: Vec<u8> = r.try_get(1)?;
                    Ok(IndexEntry {
                        key_id: blob_to_u128(&kid)?,
                        key_row: r.try_get(0)?,
                        device_row: r.try_get(2)?,
                    })
                })
                .collect()
        })
    }

    fn keys_to_rotate(&self, device_row: i64) -> Result<Vec<u128>, StoreError> {
        self.with(move |c| async move {
            let rows = c
                .query(
                    "SELECT key_id FROM keys WHERE device_id = $1 AND disclosed_at IS NOT NULL AND superseded_at IS NULL ORDER BY id",
                    &[&device_row],
                )
                .await?;
            rows.iter()
                .map(|r| blob_to_u128(&r.try_get::<_, Vec<u8>>(0)?))
                .collect()
        })
    }

    fn supersede(&self, device_row: i64, old: u128, new: u128) -> Result<(), StoreError> {
        self.with(move |mut c| async move {
            let tx = c.transaction().await?;
            let mut state = Vec::with_capacity(2);
            for k in [old, new] {
                let r = tx
                    .query_opt(
                        "SELECT device_id, superseded_at IS NOT NULL FROM keys WHERE key_id = $1 FOR UPDATE",
                        &[&&k.to_be_bytes()[..]],
                    )
                    .await?;
                state.push(match r {
                    Some(r) => Some((r.try_get::<_, i64>(0)?, r.try_get::<_, bool>(1)?)),
                    None => None,
                });
            }
            match state[0] {
                Some((d, false)) if d == device_row => {}
                Some((d, true)) if d == device_row => {
                    return Err(StoreError::Superseded("old key is already superseded".into()))
                }
                _ => {
                    return Err(StoreError::NotFound {
                        field: "old_key_protector_id",
                        message: "no such key on this device".into(),
                    })
                }
            }
            match state[1] {
                Some((d, false)) if d == device_row => {}
                Some((d, true)) if d == device_row => {
                    return Err(StoreError::Superseded("new key is itself superseded".into()))
                }
                _ => {
                    return Err(StoreError::NotFound {
                        field: "new_key_protector_id",
                        message: "the new key must be escrowed for this device first".into(),
                    })
                }
            }
            if old == new {
                return Err(StoreError::Superseded("old and new key are the same".into()));
            }
            let (now, _) = now_rfc3339();
            tx.execute(
                "UPDATE keys SET superseded_at = $2, superseded_by = $3, changed_xid = pg_current_xact_id()
                 WHERE key_id = $1",
                &[&&old.to_be_bytes()[..], &now, &&new.to_be_bytes()[..]],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn record_sign_in(
        &self,
        device_row: i64,
        user: &str,
        kind: SignInKind,
    ) -> Result<(), StoreError> {
        let user = user.to_string();
        self.with(move |mut c| async move {
            let tx = c.transaction().await?;
            let (now, _) = now_rfc3339();
            let k = match kind {
                SignInKind::Local => "local",
                SignInKind::Remote => "remote",
            };
            tx.execute(
                "INSERT INTO sign_ins(device_id, user_name, kind, time) VALUES ($1, $2, $3, $4)",
                &[&device_row, &user, &k, &now],
            )
            .await?;
            upsert_assoc(&tx, device_row, &user, k).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn associations_of_user(&self, user: &str) -> Result<Vec<(i64, Assoc)>, StoreError> {
        let lc = user.to_lowercase();
        self.with(move |c| async move {
            let rows = c
                .query(
                    // An imported user is on the device row or in an association (schema 5).
                    "SELECT device_id, bool_or(local), bool_or(remote), bool_or(imported) FROM (
                       SELECT device_id, local, remote, imported FROM associations WHERE user_lc = $1
                       UNION ALL
                       SELECT id, false, false, true FROM devices WHERE imported_user_lc = $1) a
                     GROUP BY device_id",
                    &[&lc],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get(0)?,
                        Assoc {
                            local: r.try_get(1)?,
                            remote: r.try_get(2)?,
                            imported: r.try_get(3)?,
                        },
                    ))
                })
                .collect()
        })
    }

    fn users_of_device(&self, device_row: i64) -> Result<Vec<String>, StoreError> {
        self.with(move |c| async move {
            let rows = c
                .query(
                    "SELECT min(user_name) FROM (
                       SELECT user_lc, user_name FROM associations WHERE device_id = $1
                       UNION ALL
                       SELECT imported_user_lc, imported_user FROM devices
                       WHERE id = $1 AND imported_user_lc IS NOT NULL) u
                     GROUP BY user_lc ORDER BY user_lc",
                    &[&device_row],
                )
                .await?;
            rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
        })
    }

    fn device_name(&self, device_row: i64) -> Result<Option<String>, StoreError> {
        self.with(move |c| async move {
            Ok(
                c.query_opt("SELECT name FROM devices WHERE id = $1", &[&device_row])
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?,
            )
        })
    }

    /// One transaction, rows sent with binary COPY (see `import.rs`).
    fn import(&self, rows: &[ImportRow]) -> Result<Vec<IndexEntry>, StoreError> {
        // On a thread of its own, blocking on the store's runtime: the import borrows the
        // rows (no copy of a 10M-row file) and works whatever thread calls it.
        let (pool, handle) = (self.pool.clone(), self.handle.clone());
        std::thread::scope(|s| {
            s.spawn(|| {
                handle.block_on(async {
                    let mut c = pool.get().await?;
                    let tx = c.transaction().await?;
                    let created = import::import_rows(&tx, rows).await?;
                    let t = std::time::Instant::now();
                    tx.commit().await?;
                    tracing::info!(commit_secs = t.elapsed().as_secs_f64(), "import committed");
                    Ok(created)
                })
            })
            .join()
            .unwrap_or_else(|_| Err(StoreError::Postgres("the import thread failed".into())))
        })
    }

    fn put_tpm_lockout(&self, device_row: i64, sealed: &Sealed) -> Result<(), StoreError> {
        let sealed = sealed.clone();
        self.with(move |mut c| async move {
            let tx = c.transaction().await?;
            let (now, _) = now_rfc3339();
            tx.execute(
                "UPDATE tpm_lockout SET superseded_at = $2 WHERE device_id = $1 AND superseded_at IS NULL",
                &[&device_row, &now],
            )
            .await?;
            tx.execute(
                "INSERT INTO tpm_lockout(device_id, nonce, ciphertext, created_at) VALUES ($1, $2, $3, $4)",
                &[&device_row, &sealed.nonce, &sealed.ciphertext, &now],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn current_tpm_lockout(&self, device_row: i64) -> Result<Option<TpmRecord>, StoreError> {
        self.with(move |c| async move {
            let Some(r) = c
                .query_opt(
                    "SELECT id, nonce, ciphertext FROM tpm_lockout WHERE device_id = $1 AND superseded_at IS NULL ORDER BY id DESC LIMIT 1",
                    &[&device_row],
                )
                .await?
            else {
                return Ok(None);
            };
            Ok(Some(TpmRecord {
                row: r.try_get(0)?,
                sealed: Sealed {
                    nonce: r.try_get(1)?,
                    ciphertext: r.try_get(2)?,
                },
            }))
        })
    }

    fn tpm_rotation_pending(&self, device_row: i64) -> Result<bool, StoreError> {
        self.with(move |c| async move {
            let r = c
                .query_one(
                    "SELECT EXISTS(SELECT 1 FROM tpm_lockout WHERE device_id = $1 AND superseded_at IS NULL AND disclosed_at IS NOT NULL)",
                    &[&device_row],
                )
                .await?;
            Ok(r.try_get(0)?)
        })
    }

    fn load_settings(&self) -> Result<Option<String>, StoreError> {
        self.with(move |c| async move {
            Ok(c.query_opt("SELECT json FROM settings WHERE id = 1", &[])
                .await?
                .map(|r| r.try_get(0))
                .transpose()?)
        })
    }

    fn save_settings(&self, json: &str) -> Result<(), StoreError> {
        let json = json.to_string();
        self.with(move |c| async move {
            c.execute(
                "INSERT INTO settings(id, json) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET json = EXCLUDED.json",
                &[&json],
            )
            .await?;
            Ok(())
        })
    }

    fn commit_journal(&self, entries: Vec<JournalEntry>) -> Result<(), StoreError> {
        self.with(move |mut c| async move {
            let tx = c.transaction().await?;
            write_entries(&tx, &entries).await?;
            tx.commit().await?;
            Ok(())
        })
        .map_err(|e| journal_failed(e.to_string()))
    }

    fn disclose_with_audit(&self, limited_requester: Option<&str>, work: AuditedWork) {
        self.handle.spawn(audited_decision(
            self.audited.clone(),
            limited_requester.map(str::to_lowercase),
            work,
        ));
    }

    fn query_audit(&self, f: &AuditFilter) -> Result<Vec<AuditRow>, StoreError> {
        let f = f.clone();
        self.with(move |c| async move {
            let user = f.user.as_ref().map(|u| u.to_lowercase());
            let device = f.device.as_ref().map(|d| d.to_lowercase());
            let rows = c
                .query(
                    "SELECT id, time, source, requester, end_user, device, key_id, key_type, reason, outcome FROM audit
                     WHERE ($1::BIGINT IS NULL OR time_us >= $1) AND ($2::TEXT IS NULL OR source = $2)
                       AND ($3::TEXT IS NULL OR outcome = $3)
                       AND ($4::TEXT IS NULL OR requester_lc = $4 OR lower(end_user) = $4)
                       AND ($5::TEXT IS NULL OR lower(device) = $5)
                     ORDER BY id",
                    &[&f.since_us, &f.source, &f.outcome, &user, &device],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(AuditRow {
                        id: r.try_get(0)?,
                        time: r.try_get(1)?,
                        source: r.try_get(2)?,
                        requester: r.try_get(3)?,
                        end_user: r.try_get(4)?,
                        device: r.try_get(5)?,
                        key_id: r.try_get(6)?,
                        key_type: r.try_get(7)?,
                        reason: r.try_get(8)?,
                        outcome: r.try_get(9)?,
                    })
                })
                .collect()
        })
    }

    fn count_failures(&self, requester: &str, since_us: i64) -> Result<u64, StoreError> {
        let lc = requester.to_lowercase();
        self.with(move |c| async move {
            let outcomes: Vec<&str> = FAILED_LOOKUP_OUTCOMES.to_vec();
            let r = c
                .query_one(
                    "SELECT count(*) FROM audit WHERE requester_lc = $1 AND time_us >= $2 AND outcome = ANY($3)",
                    &[&lc, &since_us, &outcomes],
                )
                .await?;
            let n: i64 = r.try_get(0)?;
            Ok(n.max(0) as u64)
        })
    }

    fn put_session(&self, s: &StoredSession) -> Result<(), StoreError> {
        let s = s.clone();
        self.with(move |c| async move {
            let (user, role) = match &s.user {
                Some((u, r)) => (Some(u.clone()), Some(r.as_str())),
                None => (None, None),
            };
            c.execute(
                "INSERT INTO sessions(id, csrf, username, role, notice_accepted, last_seen_us) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET csrf = EXCLUDED.csrf, username = EXCLUDED.username, role = EXCLUDED.role,
                   notice_accepted = EXCLUDED.notice_accepted, last_seen_us = EXCLUDED.last_seen_us",
                &[&s.id, &s.csrf, &user, &role, &s.notice_accepted, &s.last_seen_us],
            )
            .await?;
            Ok(())
        })
    }

    fn session(&self, id: &str) -> Result<Option<StoredSession>, StoreError> {
        let id = id.to_string();
        self.with(move |c| async move {
            c.query_opt(
                "SELECT id, csrf, username, role, notice_accepted, last_seen_us FROM sessions WHERE id = $1",
                &[&id],
            )
            .await?
            .as_ref()
            .map(session_of)
            .transpose()
        })
    }

    fn delete_session(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        self.with(move |c| async move {
            c.execute("DELETE FROM sessions WHERE id = $1", &[&id])
                .await?;
            Ok(())
        })
    }

    fn sweep_sessions(
        &self,
        signed_in_seen_before_us: i64,
        anonymous_seen_before_us: i64,
    ) -> Result<(), StoreError> {
        self.with(move |c| async move {
            c.execute(
                "DELETE FROM sessions WHERE (username IS NOT NULL AND last_seen_us < $1)
                   OR (username IS NULL AND last_seen_us < $2)",
                &[&signed_in_seen_before_us, &anonymous_seen_before_us],
            )
            .await?;
            Ok(())
        })
    }

    /// The `xmin` of a snapshot: every transaction below it had ended when it was taken.
    fn change_position(&self) -> Result<Option<i64>, StoreError> {
        self.with(move |c| async move {
            let r = c
                .query_one(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
                    &[],
                )
                .await?;
            Ok(Some(r.try_get(0)?))
        })
    }

    /// Every key whose `changed_xid` is at or above `position`, read in one statement (one
    /// snapshot) with that snapshot's `xmin` as the next position. Exact: a change not yet
    /// visible belongs to a transaction still running, whose xid is at or above `xmin`, so
    /// the next call reads it. A change may be read again (the caller applies it again:
    /// idempotent); a long-running transaction holds `xmin` back and makes reads longer.
    fn key_changes_since(&self, position: i64) -> Result<KeyChanges, StoreError> {
        self.with(move |c| async move {
            let rows = c
                .query(
                    "WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS h)
                     SELECT s.h::text::bigint, k.key_id, k.id, k.device_id, k.superseded_at IS NOT NULL
                     FROM s LEFT JOIN keys k ON k.changed_xid >= ($1::bigint)::text::xid8",
                    &[&position],
                )
                .await?;
            let mut changes = KeyChanges {
                next: position,
                ..KeyChanges::default()
            };
            for r in &rows {
                changes.next = r.try_get(0)?;
                let Some(kid) = r.try_get::<_, Option<Vec<u8>>>(1)? else {
                    continue;
                };
                let key_id = blob_to_u128(&kid)?;
                if r.try_get(4)? {
                    changes.superseded.push(key_id);
                } else {
                    changes.current.push(IndexEntry {
                        key_id,
                        key_row: r.try_get(2)?,
                        device_row: r.try_get(3)?,
                    });
                }
            }
            Ok(changes)
        })
    }

    fn wait_for_change(&self, seen: u64, timeout: Duration) -> u64 {
        self.changes.wait(seen, timeout)
    }

    fn shares_sign_in_failures(&self) -> bool {
        true
    }

    fn sign_in_failures(&self, subjects: &[String]) -> Result<Vec<(String, u32, i64)>, StoreError> {
        let subjects = subjects.to_vec();
        self.with(move |c| async move {
            let rows = c
                .query(
                    "SELECT subject, count, last_us FROM sign_in_failures WHERE subject = ANY($1)",
                    &[&subjects],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let count: i32 = r.try_get(1)?;
                    Ok((r.try_get(0)?, count.max(0) as u32, r.try_get(2)?))
                })
                .collect()
        })
    }

    fn add_sign_in_failure(
        &self,
        subjects: &[String],
        now_us: i64,
        forget_before_us: i64,
    ) -> Result<(), StoreError> {
        let subjects = subjects.to_vec();
        self.with(move |c| async move {
            // One statement a subject: concurrent failures on several replicas all count.
            for subject in &subjects {
                c.execute(
                    "INSERT INTO sign_in_failures(subject, count, last_us) VALUES ($1, 1, $2)
                     ON CONFLICT (subject) DO UPDATE SET
                       count = CASE WHEN sign_in_failures.last_us < $3 THEN 1
                                    ELSE sign_in_failures.count + 1 END,
                       last_us = GREATEST(sign_in_failures.last_us, $2)",
                    &[subject, &now_us, &forget_before_us],
                )
                .await?;
            }
            Ok(())
        })
    }

    fn clear_sign_in_failures(&self, subject: &str) -> Result<(), StoreError> {
        let subject = subject.to_string();
        self.with(move |c| async move {
            c.execute(
                "DELETE FROM sign_in_failures WHERE subject = $1",
                &[&subject],
            )
            .await?;
            Ok(())
        })
    }
}
