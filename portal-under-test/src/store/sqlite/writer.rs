//! The group-commit writer thread: audit rows and disclosure marks of many requests in one
//! transaction.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use rusqlite::{params, Connection};

use super::read_pool::lock;
use crate::fp;
use crate::store::{
    now_rfc3339, time_us_of, AuditedWork, JournalEntry, StoreError, FAILED_LOOKUP_OUTCOMES,
};

/// One submission to the group-commit writer.
pub(super) type JournalJob = AuditedWork;

thread_local! {
    /// Set on the group-commit writer thread: its reads use the writer connection.
    pub(super) static ON_JOURNAL_WRITER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// On the writer thread: (requester, time in microseconds) of the failed lookups decided
    /// in the current batch and not yet committed.
    static PENDING_FAILURES: std::cell::RefCell<Vec<(String, i64)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Failed lookups by `requester_lc` at or after `since_us` decided earlier in the writer's
/// current batch (0 off the writer thread): with them, a decision's failure count is exact.
pub(super) fn pending_failures(requester_lc: &str, since_us: i64) -> u64 {
    PENDING_FAILURES.with(|p| {
        p.borrow()
            .iter()
            .filter(|(r, t)| r == requester_lc && *t >= since_us)
            .count() as u64
    })
}

fn note_pending_failures(entries: &[JournalEntry]) {
    PENDING_FAILURES.with(|p| {
        let mut p = p.borrow_mut();
        for e in entries {
            if let JournalEntry::Audit(row) = e {
                if FAILED_LOOKUP_OUTCOMES.contains(&row.outcome.as_str()) {
                    p.push((row.requester.to_lowercase(), time_us_of(&row.time)));
                }
            }
        }
    });
}

/// Most submissions committed in one transaction.
const JOURNAL_BATCH: usize = 4096;

/// Above this size the group-commit writer truncates the WAL itself ([`bound_wal`]).
pub(super) const WAL_TRUNCATE_ABOVE: u64 = 64 * 1024 * 1024;

/// Keeps the write-ahead log bounded under sustained load. The background checkpointer
/// copies the WAL into the database but cannot restart it while commits keep coming (a log
/// restarts only at a write that finds it wholly checkpointed, and under load the next
/// batch has always been appended first), so alone it lets the file grow for ever. The
/// writer thread is the only one appending under lookup load: when the file is over `limit`
/// it runs a TRUNCATE checkpoint between two batches, when no commit of its own can
/// interleave. That copies what the background checkpointer has not yet copied, waits (the
/// connection's busy timeout) for readers still on older snapshots — lookups' reads are
/// short — and empties the file. Busy (another checkpoint running, a reader in the way): the
/// file stays as it is and the next batch tries again. `turn` is the background
/// checkpointer's: SQLite answers a second checkpointer "busy" at once, so without it a
/// long background checkpoint on a loaded machine would let the WAL grow meanwhile.
fn bound_wal(c: &Connection, wal: &Path, limit: u64, turn: &Mutex<()>) {
    match std::fs::metadata(wal) {
        Ok(m) if m.len() > limit => {}
        // Under the limit, or no WAL (an import has left WAL mode for a while).
        _ => return,
    }
    let _turn = lock(turn);
    let t0 = std::time::Instant::now();
    let res = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
    });
    match res {
        Ok((0, frames)) => {
            tracing::debug!(frames, took = ?t0.elapsed(), "WAL checkpointed and truncated")
        }
        Ok((_, frames)) => {
            tracing::debug!(frames, "WAL truncation busy: retried after the next batch")
        }
        Err(e) => tracing::warn!(error = %e, "WAL truncation failed"),
    }
}

/// The group-commit writer: waits for a submission, takes everything else queued, writes it
/// all in one transaction on the writer connection, and reports the result to every
/// submitter only after the commit.
/// Each submission's work runs first (its reads on the writer connection, not holding its
/// lock), then everything it returned is written in the one transaction.
/// After each batch the WAL is kept under `wal_limit` bytes ([`bound_wal`]).
pub(super) fn journal_writer(
    writer: Arc<Mutex<Connection>>,
    rx: mpsc::Receiver<JournalJob>,
    wal: PathBuf,
    wal_limit: u64,
    checkpoint_turn: Arc<Mutex<()>>,
) {
    ON_JOURNAL_WRITER.with(|w| w.set(true));
    let mut entries = Vec::new();
    let mut done = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(work) = next.take() {
            // A panicking submission loses only its own answer (its caller sees "the
            // writer stopped"); the rest of the batch goes on.
            if let Ok((e, d)) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
                note_pending_failures(&e);
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
            let mut c = lock(&writer);
            let res = write_journal(&mut c, &entries).map_err(|e| e.to_string());
            bound_wal(&c, &wal, wal_limit, &checkpoint_turn);
            res
        };
        entries.clear();
        PENDING_FAILURES.with(|p| p.borrow_mut().clear());
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
                if fp::active(fp::FAIL_AUDIT_WRITE) {
                    return Err(StoreError::Corrupt(
                        "audit insert failed (fault point fail_audit_write)".into(),
                    ));
                }
                let us = time_us_of(&row.time);
                let unix = us.div_euclid(1_000_000);
                tx.prepare_cached(
                    "INSERT INTO audit(time, time_unix, time_us, source, requester, requester_lc, end_user, device, key_id, key_type, reason, outcome)
                     VALUES (?1, ?2, ?12, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
                    row.outcome,
                    us
                ])?;
            }
            JournalEntry::KeyDisclosed { key_row } => {
                tx.prepare_cached(
                    "UPDATE keys SET disclosed_at = ?2 WHERE id = ?1 AND disclosed_at IS NULL",
                )?
                .execute(params![key_row, now])?;
            }
            JournalEntry::TpmDisclosed { row } => {
                tx.prepare_cached(
                    "UPDATE tpm_lockout SET disclosed_at = ?2 WHERE id = ?1 AND disclosed_at IS NULL",
                )?
                .execute(params![row, now])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}
