//! Group commit of audit rows and disclosure marks: many requests' writes in one
//! transaction, led by the submitters themselves.
//!
//! A submission joins the queue. If no batch is being committed and requests have not been
//! arriving together (`Queue::crowded`), its submitter becomes the leader: on its own thread it runs the queued decisions, commits everything they returned
//! in one transaction and answers each submitter. A submitter that finds a leader at work
//! only queues (the leader answers it). So a lone request is decided and committed on the
//! thread that made it, with no hand-off to another thread and back. A submitter (which may
//! be an async worker) leads one batch only and never waits: whatever queued meanwhile, a
//! writer connection held by another write, and a WAL to truncate ([`bound_wal`]) go to the
//! audit-writer thread, handed the leadership (with the decided batch, if any); it leads
//! until the queue is empty.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, TryLockError};

use rusqlite::{params, Connection};

use super::read_pool::lock;
use crate::fp;
use crate::store::{
    now_rfc3339, time_us_of, AuditedWork, CommitDone, JournalEntry, StoreError,
    FAILED_LOOKUP_OUTCOMES,
};

/// One submission to the group commit.
pub(super) type JournalJob = AuditedWork;

thread_local! {
    /// Set on a thread while it runs the group commit's decisions: their reads use the
    /// writer connection when it is free. Its page cache stays warm, as only it writes;
    /// a pooled reader's cache is emptied by every commit of another connection.
    pub(super) static DECIDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// On the leader's thread: (requester, time in microseconds) of the failed lookups
    /// decided in the current batch and not yet committed.
    static PENDING_FAILURES: std::cell::RefCell<Vec<(String, i64)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Failed lookups by `requester_lc` at or after `since_us` decided earlier in the current
/// leader's batch (0 on any other thread): with them, a decision's failure count is exact.
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

fn clear_pending_failures() {
    PENDING_FAILURES.with(|p| p.borrow_mut().clear());
}

/// Most submissions committed in one transaction.
const JOURNAL_BATCH: usize = 4096;

/// Above this size the WAL is truncated between two batches ([`bound_wal`]).
pub(super) const WAL_TRUNCATE_ABOVE: u64 = 64 * 1024 * 1024;

/// Whether the WAL is over `limit` bytes (no WAL: an import has left WAL mode for a while).
fn wal_over(wal: &Path, limit: u64) -> bool {
    std::fs::metadata(wal).is_ok_and(|m| m.len() > limit)
}

/// Keeps the write-ahead log bounded under sustained load. The background checkpointer
/// copies the WAL into the database but cannot restart it while commits keep coming (a log
/// restarts only at a write that finds it wholly checkpointed, and under load the next
/// batch has always been appended first), so alone it lets the file grow for ever. The
/// group commit is the only one appending under lookup load: when the file is over `limit`
/// the audit-writer thread runs a TRUNCATE checkpoint between two batches, when no commit of its own can
/// interleave. That copies what the background checkpointer has not yet copied, waits (the
/// connection's busy timeout) for readers still on older snapshots — lookups' reads are
/// short — and empties the file. Busy (another checkpoint running, a reader in the way): the
/// file stays as it is and the next batch tries again. `turn` is the background
/// checkpointer's: SQLite answers a second checkpointer "busy" at once, so without it a
/// long background checkpoint on a loaded machine would let the WAL grow meanwhile.
fn bound_wal(c: &Connection, wal: &Path, limit: u64, turn: &Mutex<()>) {
    if !wal_over(wal, limit) {
        return;
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

/// The decided submissions of one batch: the entries to commit and whom to answer after.
#[derive(Default)]
pub(super) struct Batch {
    entries: Vec<JournalEntry>,
    done: Vec<CommitDone>,
}

/// The queue and the writer connection, shared by the submitters and the audit-writer
/// thread.
pub(super) struct Shared {
    /// Queued submissions, and whether a leader is at work (it will take them).
    queue: Mutex<Queue>,
    writer: Arc<Mutex<Connection>>,
    wal: PathBuf,
    wal_limit: u64,
    checkpoint_turn: Arc<Mutex<()>>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<JournalJob>,
    leading: bool,
    /// Requests arrive together: the last batch taken held several, or a submitter's batch
    /// left more queued. Then, and for [`CROWDED_FOR`] after, a new leader is the
    /// audit-writer thread, not a submitter: it batches while the async workers go on
    /// serving (measured, BENCHMARKS.md: submitters leading under 64 connections cost a
    /// fifth to a third of the lookups per second).
    crowded: bool,
    /// When a submitter last found `crowded`.
    crowded_at: Option<std::time::Instant>,
}

/// How long requests arriving together keep new leaders on the audit-writer thread.
const CROWDED_FOR: std::time::Duration = std::time::Duration::from_millis(1);

/// The submitters' side of the group commit; dropping it stops the audit-writer thread.
pub(super) struct GroupCommit {
    shared: Arc<Shared>,
    /// Hands leadership (with a decided batch, if any) to the audit-writer thread.
    handoff: Mutex<mpsc::Sender<Option<Batch>>>,
}

impl GroupCommit {
    /// Starts the audit-writer thread (it leads only when handed the leadership).
    pub(super) fn start(
        writer: Arc<Mutex<Connection>>,
        wal: PathBuf,
        wal_limit: u64,
        checkpoint_turn: Arc<Mutex<()>>,
    ) -> std::io::Result<GroupCommit> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            writer,
            wal,
            wal_limit,
            checkpoint_turn,
        });
        let (handoff, rx) = mpsc::channel::<Option<Batch>>();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                while let Ok(carried) = rx.recv() {
                    // Handed over for a WAL over its limit, or for a busy writer connection.
                    bound_wal(&lock(&s.writer), &s.wal, s.wal_limit, &s.checkpoint_turn);
                    s.lead(carried, None);
                }
            })?;
        Ok(GroupCommit {
            shared,
            handoff: Mutex::new(handoff),
        })
    }

    /// Queues `work`; if no leader is at work and requests are not crowding in, leads on
    /// this thread (see the module doc): then `work` is decided and committed, and its
    /// submitter answered, before this returns.
    pub(super) fn submit(&self, work: JournalJob) {
        let crowded = {
            let mut q = lock(&self.shared.queue);
            q.jobs.push_back(work);
            if q.leading {
                return;
            }
            q.leading = true;
            if q.crowded {
                q.crowded_at = Some(std::time::Instant::now());
            }
            q.crowded || q.crowded_at.is_some_and(|t| t.elapsed() < CROWDED_FOR)
        };
        if crowded {
            hand_off(&self.handoff, None, &self.shared);
        } else {
            self.shared.lead(None, Some(&self.handoff));
        }
    }
}

impl Shared {
    /// Leads until the queue is empty: commits `carried` (decided by the leader that handed
    /// over), then batch after batch of queued submissions. With `handoff` (a submitter's
    /// thread), hands leadership to the audit-writer thread instead of waiting for the
    /// writer connection or truncating the WAL; without (that thread), does both itself.
    fn lead(
        &self,
        mut carried: Option<Batch>,
        handoff: Option<&Mutex<mpsc::Sender<Option<Batch>>>>,
    ) {
        loop {
            let batch = match carried.take() {
                Some(b) => b,
                None => match self.decide_next() {
                    Some(b) => b,
                    None => return,
                },
            };
            let res = if batch.entries.is_empty() {
                Ok(())
            } else {
                let mut c = match (handoff, self.writer.try_lock()) {
                    (_, Ok(c)) => c,
                    (_, Err(TryLockError::Poisoned(e))) => e.into_inner(),
                    (Some(h), Err(TryLockError::WouldBlock)) => {
                        clear_pending_failures();
                        return hand_off(h, Some(batch), self);
                    }
                    (None, Err(TryLockError::WouldBlock)) => lock(&self.writer),
                };
                let res = write_journal(&mut c, &batch.entries).map_err(|e| e.to_string());
                clear_pending_failures();
                if handoff.is_none() {
                    bound_wal(&c, &self.wal, self.wal_limit, &self.checkpoint_turn);
                }
                res
            };
            for d in batch.done {
                d(res.clone());
            }
            // A submitter leads one batch: what queued meanwhile (many requests at once)
            // goes to the audit-writer thread, so no async worker is kept from its other
            // requests for more than one batch.
            if let Some(h) = handoff {
                if wal_over(&self.wal, self.wal_limit) || !self.give_up_if_idle() {
                    return hand_off(h, None, self);
                }
                return;
            }
        }
    }

    /// Gives up leadership if nothing is queued; false (still leading, and crowded)
    /// otherwise.
    fn give_up_if_idle(&self) -> bool {
        let mut q = lock(&self.queue);
        if q.jobs.is_empty() {
            q.leading = false;
        } else {
            q.crowded = true;
        }
        !q.leading
    }

    /// Takes up to [`JOURNAL_BATCH`] queued submissions and runs their decisions; `None`
    /// (and leadership given up) if the queue is empty.
    fn decide_next(&self) -> Option<Batch> {
        let jobs: Vec<JournalJob> = {
            let mut q = lock(&self.queue);
            if q.jobs.is_empty() {
                q.leading = false;
                return None;
            }
            let n = q.jobs.len().min(JOURNAL_BATCH);
            q.crowded = n > 1;
            q.jobs.drain(..n).collect()
        };
        let mut batch = Batch::default();
        DECIDING.with(|d| d.set(true));
        for work in jobs {
            // A panicking submission loses only its own answer (its caller sees "the
            // store stopped"); the rest of the batch goes on.
            if let Ok((e, d)) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
                note_pending_failures(&e);
                batch.entries.extend(e);
                batch.done.push(d);
            }
        }
        DECIDING.with(|d| d.set(false));
        Some(batch)
    }
}

/// Gives leadership (and `batch`, decided but not committed) to the audit-writer thread. If
/// that thread is gone (the store is being dropped), leads here, waiting as it would.
fn hand_off(h: &Mutex<mpsc::Sender<Option<Batch>>>, batch: Option<Batch>, shared: &Shared) {
    if let Err(mpsc::SendError(batch)) = lock(h).send(batch) {
        shared.lead(batch, None);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::mpsc;
    use std::time::Duration;

    use super::super::SqliteStore;
    use super::lock;
    use crate::store::{now_rfc3339, AuditFilter, AuditRow, CommitDone, JournalEntry, Store};

    fn row(key_id: &str) -> JournalEntry {
        let (time, _) = now_rfc3339();
        JournalEntry::Audit(Box::new(AuditRow {
            id: 0,
            time,
            source: "api".into(),
            requester: "helpdesk".into(),
            end_user: None,
            device: None,
            key_id: Some(key_id.into()),
            key_type: None,
            reason: Some("Lost PIN".into()),
            outcome: "shown".into(),
        }))
    }

    /// Submits one decision that writes `row(key_id)`; returns the thread it ran on and
    /// the commit's result, both sent when they happen.
    fn submit(
        store: &SqliteStore,
        key_id: &'static str,
    ) -> (
        mpsc::Receiver<std::thread::ThreadId>,
        mpsc::Receiver<Result<(), String>>,
    ) {
        let (ran_tx, ran) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        store.disclose_with_audit(
            None,
            Box::new(move || {
                ran_tx.send(std::thread::current().id()).unwrap();
                let d: CommitDone = Box::new(move |res| done_tx.send(res).unwrap());
                (vec![row(key_id)], d)
            }),
        );
        (ran, done)
    }

    fn audited(store: &SqliteStore) -> Vec<Option<String>> {
        let rows = store.query_audit(&AuditFilter::default()).unwrap();
        rows.into_iter().map(|r| r.key_id).collect()
    }

    /// A lone request is decided and committed on its own thread, and answered before
    /// `disclose_with_audit` returns: no hand-off to another thread and back.
    #[test]
    fn a_lone_submission_is_decided_and_committed_on_the_submitters_thread() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("portal.sqlite3")).unwrap();
        let (ran, done) = submit(&store, "lone");
        assert_eq!(ran.try_recv().unwrap(), std::thread::current().id());
        assert_eq!(done.try_recv().unwrap(), Ok(()));
        assert_eq!(audited(&store), [Some("lone".to_string())]);
    }

    /// While another write holds the writer connection, a submitter does not wait for it
    /// (it may be an async worker): the audit-writer thread commits its decided batch once
    /// the connection is free, and only then is it answered.
    #[test]
    fn a_busy_writer_connection_hands_the_batch_to_the_audit_writer_thread() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("portal.sqlite3")).unwrap();
        let held = lock(&store.writer);
        let (ran, done) = submit(&store, "handed-over");
        // Decided here (reads need no writer connection), not yet committed nor answered.
        assert_eq!(ran.try_recv().unwrap(), std::thread::current().id());
        assert!(done.recv_timeout(Duration::from_millis(200)).is_err());
        // A second submission queues behind the batch handed over.
        let (ran2, done2) = submit(&store, "queued");
        assert!(ran2.try_recv().is_err());
        drop(held);
        assert_eq!(done.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(()));
        assert_eq!(done2.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(()));
        assert_ne!(ran2.recv().unwrap(), std::thread::current().id());
        assert_eq!(
            audited(&store),
            [Some("handed-over".to_string()), Some("queued".to_string())]
        );
    }
}
