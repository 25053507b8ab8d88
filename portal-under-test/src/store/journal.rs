//! The writes a disclosure must make durable before its answer leaves the portal, and the
//! helpers that hand them to a store's group-commit writer.

use std::sync::mpsc;

use super::{AuditRow, Store, StoreError};

/// A write that a disclosure must make durable before its answer leaves the portal.
#[derive(Debug, Clone)]
pub enum JournalEntry {
    Audit(Box<AuditRow>),
    /// Marks a key disclosed (its device must rotate it); a no-op if it already is.
    KeyDisclosed {
        key_row: i64,
    },
    /// Marks a TPM lockout authorization disclosed (the device must rotate it); a no-op if
    /// it already is.
    TpmDisclosed {
        row: i64,
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
