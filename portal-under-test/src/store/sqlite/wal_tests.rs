//! The write-ahead log stays bounded under sustained audited load, and a dropped store leaves
//! the file to others at once (a real SQLite file).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::SqliteStore;
use crate::store::{commit_journal_blocking, now_rfc3339, AuditRow, JournalEntry, Store};

/// The writer truncates the WAL above this in the test (64 MiB in a running portal).
const LIMIT: u64 = 256 * 1024;
/// What the test promises: the limit and a few batches (a truncation can be busy for a
/// few batches while the background checkpointer or a reader is in the way).
const BOUND: u64 = 2 << 20;
/// Audit rows written: the database grows by several times `BOUND` through the WAL
/// (~200 bytes a row). Without the writer's truncation the WAL of this run reaches ~40 MB
/// and is never emptied (measured; see BENCHMARKS.md).
const ROWS: usize = 40_000;

fn row(n: usize) -> JournalEntry {
    let (time, _) = now_rfc3339();
    JournalEntry::Audit(Box::new(AuditRow {
        id: 0,
        time,
        source: "api".into(),
        requester: "bench-helpdesk".into(),
        end_user: None,
        device: Some(format!("PC-{n:07}")),
        key_id: Some(format!("{{{n:08X}-0000-0000-0000-000000000000}}")),
        key_type: Some("recovery_password".into()),
        reason: Some("Lost PIN".into()),
        outcome: "shown".into(),
    }))
}

/// Group commits back to back from several submitters (as the help desk lookup under load)
/// while pooled readers keep taking snapshots: the WAL never exceeds `BOUND` and is emptied
/// again and again, while the database grows by far more than that. Stops by itself: after
/// `ROWS` rows or 120 s, whichever comes first (the time cap fails the test).
#[test]
fn the_wal_stays_bounded_under_sustained_commits_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("portal.sqlite3");
    let wal = dir.path().join("portal.sqlite3-wal");
    let store = Arc::new(SqliteStore::open_with_wal_limit(&db, LIMIT).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(120);

    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    // A short read, as a lookup's: each one takes a snapshot.
                    store.count_failures("someone-else", 0).unwrap();
                }
            })
        })
        .collect();
    const SUBMITTERS: usize = 4;
    const PER_COMMIT: usize = 16;
    let writers: Vec<_> = (0..SUBMITTERS)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut n = w;
                while n < ROWS && Instant::now() < deadline {
                    let rows = (0..PER_COMMIT).map(|i| row(n + i * SUBMITTERS)).collect();
                    commit_journal_blocking(store.as_ref(), rows).unwrap();
                    n += PER_COMMIT * SUBMITTERS;
                }
            })
        })
        .collect();

    let (mut largest, mut emptied, mut last) = (0u64, 0u32, 0u64);
    while writers.iter().any(|w| !w.is_finished()) {
        let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        largest = largest.max(size);
        if size < last / 2 {
            emptied += 1;
        }
        last = size;
        std::thread::sleep(Duration::from_millis(1));
    }
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(Instant::now() < deadline, "the load did not finish in time");
    let db_size = std::fs::metadata(&db).unwrap().len();
    let rows = store
        .query_audit(&crate::store::AuditFilter::default())
        .unwrap()
        .len();
    assert!(rows >= ROWS, "{rows} rows written");
    assert!(
        db_size > 3 * BOUND,
        "the load must push far more than the bound through the WAL: the database is {db_size} bytes"
    );
    assert!(
        largest <= BOUND,
        "the WAL reached {largest} bytes (bound {BOUND}); database {db_size} bytes"
    );
    assert!(emptied >= 3, "the WAL was emptied {emptied} times");
}

/// Right after the store is dropped no connection of its own is left on the file: another
/// connection leaves WAL mode at once, without waiting (a bench fills the store's file this
/// way). Each round drops the store at a different moment around the checkpoint thread's
/// first tick (500 ms after the open), with audit rows just committed by the group-commit
/// writer and in the WAL for the checkpoint to copy.
#[test]
fn a_dropped_store_leaves_the_file_to_another_connection_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("portal.sqlite3");
    for round in 0..12u64 {
        let store = SqliteStore::open(&db).unwrap();
        let rows = (0..200).map(|n| row(n + 200 * round as usize)).collect();
        commit_journal_blocking(&store, rows).unwrap();
        std::thread::sleep(Duration::from_millis(480 + 4 * round));
        drop(store);
        let c = rusqlite::Connection::open(&db).unwrap();
        c.busy_timeout(Duration::ZERO).unwrap();
        let mode: String = c
            .query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("round {round}: leaving WAL right after the drop: {e}"));
        assert_eq!(mode, "delete", "round {round}");
    }
}
