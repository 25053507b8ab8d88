//! The group-commit writer thread: audit rows and disclosure marks of many requests in one
//! transaction.

use std::sync::{mpsc, Arc, Mutex};

use rusqlite::{params, Connection};

use super::read_pool::lock;
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

/// The group-commit writer: waits for a submission, takes everything else queued, writes it
/// all in one transaction on the writer connection, and reports the result to every
/// submitter only after the commit.
/// Each submission's work runs first (its reads on the writer connection, not holding its
/// lock), then everything it returned is written in the one transaction.
pub(super) fn journal_writer(writer: Arc<Mutex<Connection>>, rx: mpsc::Receiver<JournalJob>) {
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
            write_journal(&mut lock(&writer), &entries).map_err(|e| e.to_string())
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
        }
    }
    tx.commit()?;
    Ok(())
}
