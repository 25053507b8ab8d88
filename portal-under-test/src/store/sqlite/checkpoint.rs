//! The background WAL checkpointer.

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};

use rusqlite::Connection;

use super::read_pool::lock;

/// How often the background thread copies the WAL back into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Runs passive WAL checkpoints until `stop` is dropped, so no commit on the request path
/// pays for a checkpoint (and its fsync). Passive checkpoints never wait for readers or the
/// writer. The connection is opened per tick and closed again: a held connection would keep
/// the import from leaving WAL mode. Errors are logged and retried at the next tick.
/// `turn` is held during each checkpoint: the group-commit writer takes it too before it
/// truncates the WAL (SQLite refuses a second checkpointer at once without waiting).
pub(super) fn checkpointer(path: PathBuf, stop: mpsc::Receiver<()>, turn: Arc<Mutex<()>>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        let _turn = lock(&turn);
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
