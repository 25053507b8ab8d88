//! Read-only SQLite connections for reads (WAL readers never wait for the writer).

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags};

use crate::store::StoreError;

/// Read-only connections, opened on demand and reused; a connection is taken for one call
/// only, so the pool never holds more than the number of concurrent readers.
pub(super) struct ReadPool {
    pub(super) path: PathBuf,
    pub(super) idle: Mutex<Vec<Connection>>,
}

// A panic while holding one of these locks cannot leave SQLite inconsistent (transactions
// roll back on drop), so a poisoned lock is still usable.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ReadPool {
    /// Runs `f` on an idle reader (opening one if none is idle) and returns it to the pool.
    pub(super) fn with<T>(
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
    pub(super) fn close_idle(&self) {
        lock(&self.idle).clear();
    }
}
