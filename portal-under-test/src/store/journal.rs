//! The writes a disclosure must make durable before its answer leaves the portal (audit rows
//! and disclosure marks), and the typed helpers over [`Store::disclose_with_audit`] and
//! [`Store::commit_journal`].

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

/// One audited decision (a key lookup): returns the audit rows and disclosure marks to commit
/// and the continuation that receives the commit's result. See
/// [`Store::disclose_with_audit`].
pub type AuditedWork = Box<dyn FnOnce() -> (Vec<JournalEntry>, CommitDone) + Send>;
/// Receives the result of the transaction that held a decision's entries.
pub type CommitDone = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Disclose-with-audit, typed: runs `f` (reads only: it must not write or wait for a commit)
/// as an audited decision (serialised per `limited_requester`, see
/// [`Store::disclose_with_audit`]), commits the entries it returns in one transaction and
/// yields its value only after the commit (nothing if `f` fails or the commit fails).
pub async fn stage_and_commit<T, E>(
    store: &dyn Store,
    limited_requester: Option<&str>,
    f: impl FnOnce() -> Result<(T, Vec<JournalEntry>), E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel::<Result<T, E>>();
    store.disclose_with_audit(
        limited_requester,
        Box::new(move || match f() {
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
        }),
    );
    match rx.await {
        Ok(r) => r,
        Err(_) => Err(journal_failed("the store stopped".into()).into()),
    }
}

/// Commits `entries` in one transaction; returns after the commit (blocks).
pub fn commit_journal_blocking(
    store: &dyn Store,
    entries: Vec<JournalEntry>,
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    store.commit_journal(entries)
}

/// The error of a failed journal commit, as callers see it.
pub(crate) fn journal_failed(m: String) -> StoreError {
    StoreError::Corrupt(format!("audit write failed: {m}"))
}
