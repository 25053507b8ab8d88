//! The background WAL checkpointer.

use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::Connection;

use super::read_pool::lock;

/// How often the background thread copies the WAL back into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The running checkpoint thread. Dropping it stops the thread and waits for it, so once
/// the store is gone no connection of its own is left on the file (another open may
/// change its journal mode straight away).
pub(super) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread on the file at `path`.
    pub(super) fn start(path: PathBuf, turn: Arc<Mutex<()>>) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || checkpointer(path, stopped, turn))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Closing the channel wakes the thread at once (it waits on it between ticks); a
        // checkpoint under way finishes first.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // A panicked thread has nothing left to close.
            drop(t.join());
        }
    }
}

/// Runs passive WAL checkpoints until `stop` is dropped, so no commit on the request path
/// pays for a checkpoint (and its fsync). Passive checkpoints never wait for readers or the
/// writer. The connection is opened per tick and closed again: a held connection would keep
/// the import from leaving WAL mode. Errors are logged and retried at the next tick.
/// `turn` is held during each checkpoint: the group-commit writer takes it too before it
/// truncates the WAL (SQLite refuses a second checkpointer at once without waiting).
fn checkpointer(path: PathBuf, stop: mpsc::Receiver<()>, turn: Arc<Mutex<()>>) {
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
