//! Key-ID lookup at scale, side by side in one run: the portal's prefix index, the memory
//! floor (a dependent random pointer chase over an array the size of the index's entries),
//! a plain sorted `Vec` with binary search, SQLite with the portal's own schema (indexed
//! range query on 16-byte big-endian key IDs) and, when `LOOKUP_PG_URL` is set, PostgreSQL
//! with the same range query over loopback.
//!
//! Two kinds of figures:
//! - *dependent single lookups*: our own loop; each query is chosen from the previous one's
//!   result and each is timed on its own (the clock read is ordered), into an hdrhistogram:
//!   p50 / p99 per lookup. Criterion cannot give these (it reports per-sample statistics,
//!   and back-to-back independent lookups overlap in the CPU).
//! - *independent lookups* (a server with many queries in flight): criterion throughput.
//!
//! Sizes: `LOOKUP_SIZES` (default `1000000,10000000`); `LOOKUP_100M=1` adds 100M. Under
//! `cargo bench -- --test` (CI smoke) the size is 20000. Half the queries hit, half miss.
//! `LOOKUP_SKIP_DB=1` skips SQLite/PostgreSQL (also skipped, with a note, when the disk lacks
//! room: `LOOKUP_DISK_RESERVE_GB`); `LOOKUP_WRITE_RATE` sets the writer's rate for the
//! "under writes" row.
//! Data (SQLite files) is cached under `target/lookup-bench/`. Results: a Markdown table on
//! stdout, `target/lookup-bench/results.json` and `target/lookup-bench/lookup.svg`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use harness::keys::{KeyGenerator, KeySetSpec};
use hdrhistogram::Histogram;
use portal_under_test::index::{IndexEntry, PrefixIndex};
use rand::{Rng, SeedableRng};

/// Independent lookups per criterion iteration and per batch call.
const QUERIES: usize = 1 << 16;
const SEED: u64 = 42;

/// Distinct queries (and timed dependent lookups) per row: as many as are timed, so that no
/// query repeats and the index's lines are not kept warm in the cache by re-use (the floor's
/// chase never re-uses a line either).
fn timed_count() -> usize {
    if smoke() {
        20_000
    } else {
        2_000_000
    }
}

fn smoke() -> bool {
    std::env::args().any(|a| a == "--test")
}

fn sizes() -> Vec<usize> {
    if smoke() {
        return vec![20_000];
    }
    let mut v: Vec<usize> = std::env::var("LOOKUP_SIZES")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    if std::env::var("LOOKUP_100M").is_ok_and(|v| v == "1") {
        v.push(100_000_000);
    }
    v
}

fn out_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lookup-bench");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = s
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn prefix(k: u128) -> u32 {
    (k >> 96) as u32
}

/// The keys (seeded, the same generator as `harness keys generate`), device `i / 2`.
fn entries(n: usize) -> Vec<IndexEntry> {
    let spec = KeySetSpec {
        count: n as u64,
        seed: SEED,
        keys_per_device: 2,
        users: 0,
        ..KeySetSpec::default()
    };
    KeyGenerator::new(spec)
        .enumerate()
        .map(|(i, k)| IndexEntry {
            key_id: u128::from_be_bytes(k.key_protector_id),
            key_row: i as i64 + 1,
            device_row: (i / 2) as i64 + 1,
        })
        .collect()
}

struct Queries {
    /// Half present prefixes, half absent, shuffled.
    prefixes: Vec<u32>,
    /// Half present IDs, half absent, shuffled.
    fulls: Vec<u128>,
}

fn queries(sorted: &[IndexEntry], count: usize) -> Queries {
    let mut rng = rand_chacha_like(SEED + 1);
    let has_prefix = |p: u32| {
        let lo = u128::from(p) << 96;
        let i = sorted.partition_point(|e| e.key_id < lo);
        sorted.get(i).is_some_and(|e| prefix(e.key_id) == p)
    };
    let mut prefixes = Vec::with_capacity(count);
    let mut fulls = Vec::with_capacity(count);
    while prefixes.len() < count {
        let e = sorted[rng.random_range(0..sorted.len())];
        if prefixes.len() % 2 == 0 {
            prefixes.push(prefix(e.key_id));
            fulls.push(e.key_id);
        } else {
            let p: u32 = rng.random();
            let k: u128 = rng.random();
            if !has_prefix(p) && sorted.binary_search_by_key(&k, |e| e.key_id).is_err() {
                prefixes.push(p);
                fulls.push(k);
            }
        }
    }
    // Shuffle both the same way (Fisher-Yates).
    for i in (1..count).rev() {
        let j = rng.random_range(0..=i);
        prefixes.swap(i, j);
        fulls.swap(i, j);
    }
    Queries { prefixes, fulls }
}

fn rand_chacha_like(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// A random single cycle over `lines` cache lines (Sattolo), one `u64` next-pointer per
/// 64-byte line: `lines * 64` bytes.
struct Floor {
    chase: Vec<u64>,
    lines: usize,
}

impl Floor {
    fn new(bytes: usize) -> Self {
        let lines = (bytes / 64).max(2);
        let mut perm: Vec<u64> = (0..lines as u64).collect();
        let mut rng = rand_chacha_like(SEED + 2);
        for i in (1..lines).rev() {
            let j = rng.random_range(0..i);
            perm.swap(i, j);
        }
        // The same (transparent huge) pages as the index's arrays, so neither gets fewer TLB
        // misses than the other.
        let mut chase = portal_under_test::index::huge_page_vec(lines * 8);
        chase.resize(lines * 8, 0u64);
        // perm is a cyclic permutation: line perm[i] -> perm[i + 1].
        for (i, &p) in perm.iter().enumerate() {
            chase[p as usize * 8] = perm[(i + 1) % lines] * 8;
        }
        Floor { chase, lines }
    }
}

/// Dependent lookups: `f(query, carry) -> carry`; the next query index depends on the
/// previous result (it steps by 1 or 2 through `queries` distinct queries), and each call is
/// timed on its own.
fn dependent(iters: usize, queries: usize, mut f: impl FnMut(usize, u64) -> u64) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut carry = 0u64;
    let mut q = 0usize;
    for _ in 0..iters {
        let t = Instant::now();
        carry = f(q, carry);
        let ns = t.elapsed().as_nanos() as u64;
        h.record(ns.max(1)).unwrap();
        q = (q + 1 + (carry as usize & 1)) % queries;
    }
    h
}

/// One row of the results table.
#[derive(Debug, Clone)]
struct Row {
    size: usize,
    what: String,
    kind: &'static str,
    p50_ns: f64,
    p99_ns: f64,
    mean_ns: f64,
    /// Independent lookups per second on one core (our own loop; criterion repeats it).
    indep_per_s: Option<f64>,
}

fn row(size: usize, what: &str, kind: &'static str, h: &Histogram<u64>) -> Row {
    Row {
        size,
        what: what.into(),
        kind,
        p50_ns: h.value_at_quantile(0.5) as f64,
        p99_ns: h.value_at_quantile(0.99) as f64,
        mean_ns: h.mean(),
        indep_per_s: None,
    }
}

/// Independent lookups per second: the best of 3 passes, each over its own third of the
/// `n` queries (no query repeats, so no pass finds the previous one's lines in the cache).
fn independent(n: usize, mut f: impl FnMut(usize) -> u64) -> f64 {
    let mut acc = 0u64;
    let third = (n / 3).max(1);
    let mut best = Duration::MAX;
    for pass in 0..3 {
        let t = Instant::now();
        for q in pass * third..((pass + 1) * third).min(n) {
            acc = acc.wrapping_add(f(q));
        }
        best = best.min(t.elapsed());
    }
    std::hint::black_box(acc);
    third as f64 / best.as_secs_f64()
}

// ---------------------------------------------------------------------------------------
// SQLite with the portal's schema.

/// A portal store file holding `sorted` (one device per two keys), made once and cached.
fn sqlite_store(sorted: &[IndexEntry]) -> PathBuf {
    let n = sorted.len();
    let path = out_dir().join(format!("portal-{n}-{SEED}.sqlite3"));
    let done = out_dir().join(format!("portal-{n}-{SEED}.done"));
    if done.exists() {
        return path;
    }
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(path.with_extension("sqlite3-wal"));
    let _ = std::fs::remove_file(path.with_extension("sqlite3-shm"));
    // The portal creates its schema.
    drop(portal_under_test::store::SqliteStore::open(&path).unwrap());
    let t = Instant::now();
    let mut c = rusqlite::Connection::open(&path).unwrap();
    // The store's checkpoint thread may still hold its connection for a moment after the
    // drop; leaving WAL needs the database to itself, so wait for it rather than fail.
    c.busy_timeout(std::time::Duration::from_secs(30)).unwrap();
    c.pragma_update(None, "journal_mode", "OFF").unwrap();
    c.pragma_update(None, "synchronous", "OFF").unwrap();
    c.pragma_update(None, "cache_size", -(512 * 1024)).unwrap();
    let tx = c.transaction().unwrap();
    let now = "2026-01-01T00:00:00Z";
    {
        let devices = n.div_ceil(2);
        let mut st = tx
            .prepare("INSERT INTO devices(id, device_uuid, name, name_lc, created_at) VALUES (?1, ?2, ?3, ?4, ?5)")
            .unwrap();
        for d in 1..=devices {
            let name = format!("PC-{:08}", d - 1);
            st.execute(rusqlite::params![
                d as i64,
                format!("{d:036}"),
                name,
                name.to_lowercase(),
                now
            ])
            .unwrap();
        }
        // Insert in key order (appends), rows as big as the portal's (12-byte nonce, 71-byte
        // ciphertext of a 55-byte password + tag, 32-byte fingerprint).
        let mut st = tx
            .prepare(
                "INSERT INTO keys(id, key_id, device_id, volume_id, protector_type, nonce, ciphertext, fingerprint, created_at)
                 VALUES (?1, ?2, ?3, ?4, 'recovery_password', ?5, ?6, ?7, ?8)",
            )
            .unwrap();
        let mut rng = rand_chacha_like(SEED + 3);
        let mut ct = [0u8; 71];
        let mut fp = [0u8; 32];
        let mut nonce = [0u8; 12];
        for e in sorted {
            rng.fill(&mut ct[..]);
            rng.fill(&mut fp[..]);
            rng.fill(&mut nonce[..]);
            let vol: u128 = rng.random();
            st.execute(rusqlite::params![
                e.key_row,
                &e.key_id.to_be_bytes()[..],
                e.device_row,
                &vol.to_be_bytes()[..],
                &nonce[..],
                &ct[..],
                &fp[..],
                now
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    drop(c);
    eprintln!(
        "lookup bench: filled SQLite with {n} keys in {:.1?}",
        t.elapsed()
    );
    std::fs::write(&done, b"ok").unwrap();
    path
}

/// Bytes of disk a SQLite store of `n` keys takes, with margin (measured: 362 B/key at 10M).
fn sqlite_bytes_needed(n: usize) -> u64 {
    n as u64 * 400
}

/// Free bytes on the file system holding `dir` (`df`, so no FFI here).
fn free_disk_bytes(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// The SQLite store for `sorted`, or `None` (with a note saying why) when `LOOKUP_SKIP_DB=1`
/// or when filling it would leave less than `LOOKUP_DISK_RESERVE_GB` (default 12) free.
fn sqlite_store_if_room(sorted: &[IndexEntry], notes: &mut Vec<String>) -> Option<PathBuf> {
    let n = sorted.len();
    if std::env::var("LOOKUP_SKIP_DB").is_ok_and(|v| v == "1") {
        notes.push(format!(
            "{n}: SQLite and PostgreSQL skipped (LOOKUP_SKIP_DB=1)"
        ));
        return None;
    }
    let done = out_dir().join(format!("portal-{n}-{SEED}.done"));
    if !done.exists() {
        let reserve: u64 = std::env::var("LOOKUP_DISK_RESERVE_GB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(12)
            << 30;
        let need = sqlite_bytes_needed(n);
        let free = free_disk_bytes(&out_dir()).unwrap_or(0);
        // Small stores (the CI smoke test's) only need room for themselves.
        let reserve = if need < 1 << 30 { need } else { reserve };
        if free < need + reserve {
            let msg = format!(
                "{n}: SQLite (and PostgreSQL) skipped: the store needs ~{:.1} GB, {:.1} GB free, {:.1} GB kept in reserve (LOOKUP_DISK_RESERVE_GB)",
                need as f64 / 1e9,
                free as f64 / 1e9,
                reserve as f64 / 1e9
            );
            eprintln!("lookup bench: {msg}");
            notes.push(msg);
            return None;
        }
    }
    Some(sqlite_store(sorted))
}

/// A read connection configured as the portal's store opens it.
fn sqlite_conn(path: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    c.pragma_update(None, "cache_size", -65536).unwrap();
    c
}

const SQLITE_PREFIX: &str = "SELECT id, key_id, device_id FROM keys WHERE key_id >= ?1 AND key_id <= ?2 AND superseded_at IS NULL ORDER BY key_id";
const SQLITE_FULL: &str =
    "SELECT id, device_id FROM keys WHERE key_id = ?1 AND superseded_at IS NULL";

fn prefix_bounds(p: u32) -> ([u8; 16], [u8; 16]) {
    let lo = u128::from(p) << 96;
    let hi = lo | ((1u128 << 96) - 1);
    (lo.to_be_bytes(), hi.to_be_bytes())
}

fn sqlite_prefix(st: &mut rusqlite::CachedStatement<'_>, p: u32) -> u64 {
    let (lo, hi) = prefix_bounds(p);
    let mut rows = st.query(rusqlite::params![&lo[..], &hi[..]]).unwrap();
    let mut acc = 0u64;
    while let Some(r) = rows.next().unwrap() {
        acc = acc.wrapping_add(r.get::<_, i64>(0).unwrap() as u64 | 1);
    }
    acc
}

fn sqlite_full(st: &mut rusqlite::CachedStatement<'_>, k: u128) -> u64 {
    let mut rows = st.query(rusqlite::params![&k.to_be_bytes()[..]]).unwrap();
    let mut acc = 0u64;
    while let Some(r) = rows.next().unwrap() {
        acc = acc.wrapping_add(r.get::<_, i64>(0).unwrap() as u64 | 1);
    }
    acc
}

// ---------------------------------------------------------------------------------------
// PostgreSQL (optional).

fn pg_client(sorted: &[IndexEntry]) -> Option<(postgres::Client, String)> {
    let url = std::env::var("LOOKUP_PG_URL").ok()?;
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let n = sorted.len();
    let table = format!("lookup_keys_{n}_{SEED}");
    c.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {table}(
           id bigint PRIMARY KEY, key_id bytea NOT NULL UNIQUE, device_id bigint NOT NULL,
           volume_id bytea NOT NULL, protector_type text NOT NULL, nonce bytea NOT NULL,
           ciphertext bytea NOT NULL, fingerprint bytea NOT NULL, created_at text NOT NULL,
           disclosed_at text, superseded_at text, superseded_by bytea)"
    ))
    .unwrap();
    let have: i64 = c
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .unwrap()
        .get(0);
    if have as usize != n {
        let t = Instant::now();
        c.batch_execute(&format!("TRUNCATE {table}")).unwrap();
        let mut w = c
            .copy_in(&format!(
                "COPY {table}(id, key_id, device_id, volume_id, protector_type, nonce, ciphertext, fingerprint, created_at) FROM STDIN"
            ))
            .unwrap();
        use std::io::Write;
        let mut rng = rand_chacha_like(SEED + 3);
        let mut line = String::with_capacity(400);
        for e in sorted {
            let ct: [u8; 32] = rng.random();
            let fp: [u8; 32] = rng.random();
            let nonce: [u8; 12] = rng.random();
            let vol: u128 = rng.random();
            line.clear();
            line.push_str(&format!(
                "{}\t\\\\x{}\t{}\t\\\\x{}\trecovery_password\t\\\\x{}\t\\\\x{}{}\t\\\\x{}\t2026-01-01T00:00:00Z\n",
                e.key_row,
                hex_of(&e.key_id.to_be_bytes()),
                e.device_row,
                hex_of(&vol.to_be_bytes()),
                hex_of(&nonce),
                hex_of(&ct),
                hex_of(&ct[..7]),
                hex_of(&fp),
            ));
            w.write_all(line.as_bytes()).unwrap();
        }
        w.finish().unwrap();
        c.batch_execute(&format!("ANALYZE {table}")).unwrap();
        eprintln!(
            "lookup bench: filled PostgreSQL with {n} keys in {:.1?}",
            t.elapsed()
        );
    }
    Some((c, table))
}

fn hex_of(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[usize::from(x >> 4)] as char);
        s.push(H[usize::from(x & 15)] as char);
    }
    s
}

// ---------------------------------------------------------------------------------------

fn sorted_vec_prefix(v: &[IndexEntry], p: u32) -> u64 {
    let lo = u128::from(p) << 96;
    let i = v.partition_point(|e| e.key_id < lo);
    let mut acc = 0u64;
    for e in &v[i..] {
        if prefix(e.key_id) != p {
            break;
        }
        acc = acc.wrapping_add(e.key_row as u64 | 1);
    }
    acc
}

fn sorted_vec_full(v: &[IndexEntry], k: u128) -> u64 {
    v.binary_search_by_key(&k, |e| e.key_id)
        .map(|i| v[i].key_row as u64 | 1)
        .unwrap_or(0)
}

fn index_prefix(ix: &PrefixIndex, p: u32) -> u64 {
    let mut acc = 0u64;
    ix.for_each_prefix(p, |e| acc = acc.wrapping_add(e.key_row as u64 | 1));
    acc
}

fn run_size(c: &mut Criterion, n: usize, rows: &mut Vec<Row>, notes: &mut Vec<String>) {
    eprintln!("lookup bench: {n} keys");
    let mut sorted = entries(n);
    // Index build from keys already in memory (the clone is not timed).
    // RSS is taken before the input copy exists: the build consumes (and frees) it, so the
    // growth afterwards is the index alone.
    let rss0 = rss_bytes();
    let input = sorted.clone();
    let t = Instant::now();
    let index = PrefixIndex::with_keys_per_bucket(input, portal_under_test::index::KEYS_PER_BUCKET);
    let build = t.elapsed();
    let rss = rss_bytes().saturating_sub(rss0);
    let stats = index.stats();
    notes.push(format!(
        "{n}: index build {:.3} s; heap {:.1} B/key, RSS growth {:.1} B/key",
        build.as_secs_f64(),
        stats.heap_bytes as f64 / n as f64,
        rss as f64 / n as f64,
    ));
    sorted.sort_unstable_by_key(|e| e.key_id);
    let timed = timed_count();
    let qs = queries(&sorted, timed);
    let floor = Floor::new(n * std::mem::size_of::<IndexEntry>());
    let db_timed = if smoke() { 2_000 } else { 200_000 };

    // Timer overhead: an empty timed call.
    let h = dependent(timed, timed, |_, c| c.wrapping_add(1));
    rows.push(row(n, "(timer overhead: empty call)", "-", &h));

    // 1. Memory floor: one dependent load per timed step.
    {
        let chase = &floor.chase;
        let mut cur = 0u64;
        let h = dependent(timed, timed, |_, _| {
            cur = chase[cur as usize];
            cur
        });
        let mut r = row(n, "memory floor (dependent chase)", "-", &h);
        let mut rng = rand_chacha_like(SEED + 5);
        let idx: Vec<usize> = (0..timed)
            .map(|_| rng.random_range(0..floor.lines) * 8)
            .collect();
        r.indep_per_s = Some(independent(timed, |q| chase[idx[q]]));
        rows.push(r);
    }
    // 2. The portal's index.
    {
        let h = dependent(timed, timed, |q, _| index_prefix(&index, qs.prefixes[q]));
        let mut r = row(n, "portal index", "8 digits", &h);
        r.indep_per_s = Some(independent(timed, |q| index_prefix(&index, qs.prefixes[q])));
        rows.push(r);
        let h = dependent(timed, timed, |q, _| {
            index.lookup_prefix(qs.prefixes[q]).len() as u64
        });
        rows.push(row(n, "portal index, lookup_prefix (Vec)", "8 digits", &h));
        // Where the 8-digit lookup's time goes: its parts timed alone, same loop.
        let h = dependent(timed, timed, |_, c| c.wrapping_add(index.len() as u64));
        rows.push(row(n, "part: snapshot load only (`len`)", "-", &h));
        let h = dependent(timed, timed, |q, _| {
            index
                .lookup_full(qs.fulls[q])
                .map_or(0, |e| e.key_row as u64 | 1)
        });
        let mut r = row(n, "portal index", "32 digits", &h);
        r.indep_per_s = Some(independent(timed, |q| {
            index
                .lookup_full(qs.fulls[q])
                .map_or(0, |e| e.key_row as u64)
        }));
        rows.push(r);
        let mut r = row(
            n,
            "portal index, batch (prefetching 16 queries ahead)",
            "8 digits",
            &h,
        );
        r.p50_ns = f64::NAN;
        r.p99_ns = f64::NAN;
        r.mean_ns = f64::NAN;
        // Windows of up to 65,536 distinct queries; at least 3, one per pass.
        let w = QUERIES.min(timed / 3);
        r.indep_per_s = Some(
            independent(timed / w, |pass| {
                let mut acc = 0u64;
                index.lookup_prefix_batch(&qs.prefixes[pass * w..(pass + 1) * w], |_, e| {
                    acc = acc.wrapping_add(e.key_row as u64)
                });
                acc
            }) * w as f64,
        );
        rows.push(r);
    }
    // 5. Sorted Vec + binary search.
    {
        let h = dependent(timed, timed, |q, _| {
            sorted_vec_prefix(&sorted, qs.prefixes[q])
        });
        let mut r = row(n, "sorted Vec + binary search", "8 digits", &h);
        r.indep_per_s = Some(independent(timed, |q| {
            sorted_vec_prefix(&sorted, qs.prefixes[q])
        }));
        rows.push(r);
        let h = dependent(timed, timed, |q, _| sorted_vec_full(&sorted, qs.fulls[q]));
        let mut r = row(n, "sorted Vec + binary search", "32 digits", &h);
        r.indep_per_s = Some(independent(timed, |q| {
            sorted_vec_full(&sorted, qs.fulls[q])
        }));
        rows.push(r);
    }
    drop(floor);
    // The index while a writer lands escrows and supersessions (changes the index: last).
    under_writes(&index, &sorted, &qs, rows, notes);

    // 3. SQLite (when asked for and when the disk has room for its file).
    let Some(db) = sqlite_store_if_room(&sorted, notes) else {
        criterion_rows(c, n, &index, &sorted, &qs, None);
        return;
    };
    {
        let conn = sqlite_conn(&db);
        let mut st = conn.prepare_cached(SQLITE_PREFIX).unwrap();
        // Warm SQLite's cache with other queries than the timed ones.
        for q in db_timed..(2 * db_timed).min(timed) {
            sqlite_prefix(&mut st, qs.prefixes[q]);
        }
        let h = dependent(db_timed, db_timed, |q, _| {
            sqlite_prefix(&mut st, qs.prefixes[q])
        });
        let mut r = row(n, "SQLite, portal schema, range query", "8 digits", &h);
        r.indep_per_s = Some(independent(db_timed, |q| {
            sqlite_prefix(&mut st, qs.prefixes[q])
        }));
        rows.push(r);
        let mut st = conn.prepare_cached(SQLITE_FULL).unwrap();
        let h = dependent(db_timed, db_timed, |q, _| sqlite_full(&mut st, qs.fulls[q]));
        rows.push(row(n, "SQLite, portal schema, = query", "32 digits", &h));
    }
    // Start-up: the portal loading its index from this SQLite store.
    if !smoke() || n <= 20_000 {
        let t = Instant::now();
        let store = portal_under_test::store::SqliteStore::open(&db).unwrap();
        let keys = portal_under_test::store::Store::current_keys(&store).unwrap();
        let read = t.elapsed();
        let ix = PrefixIndex::from_entries(keys);
        notes.push(format!(
            "{n}: portal start-up load from SQLite: read {:.2} s + build {:.2} s ({} keys)",
            read.as_secs_f64(),
            (t.elapsed() - read).as_secs_f64(),
            ix.len()
        ));
    }
    // 4. PostgreSQL.
    if let Some((mut pg, table)) = pg_client(&sorted) {
        let st = pg
            .prepare(&format!(
                "SELECT id, key_id, device_id FROM {table} WHERE key_id >= $1 AND key_id <= $2 AND superseded_at IS NULL ORDER BY key_id"
            ))
            .unwrap();
        let pg_timed = if smoke() { 200 } else { 20_000 };
        let mut pq = |q: usize| -> u64 {
            let (lo, hi) = prefix_bounds(qs.prefixes[q]);
            let rs = pg.query(&st, &[&&lo[..], &&hi[..]]).unwrap();
            rs.iter().map(|r| r.get::<_, i64>(0) as u64 | 1).sum()
        };
        for q in pg_timed..pg_timed + 1000 {
            pq(q);
        }
        let h = dependent(pg_timed, pg_timed, |q, _| pq(q));
        let mut r = row(n, "PostgreSQL 15, loopback, range query", "8 digits", &h);
        r.indep_per_s = Some(independent(pg_timed, &mut pq));
        rows.push(r);
    }

    criterion_rows(c, n, &index, &sorted, &qs, Some(&db));
}

/// Criterion: throughput of independent lookups (means with confidence intervals). Each
/// iteration takes the next window of `QUERIES` distinct queries.
fn criterion_rows(
    c: &mut Criterion,
    n: usize,
    index: &PrefixIndex,
    sorted: &[IndexEntry],
    qs: &Queries,
    db: Option<&Path>,
) {
    let windows = (qs.prefixes.len() / QUERIES).max(1);
    let w = QUERIES.min(qs.prefixes.len());
    let mut next = 0usize;
    let mut window = move || {
        next = (next + 1) % windows;
        next * w..(next + 1) * w
    };
    let mut g = c.benchmark_group(format!("lookup {n} keys"));
    g.throughput(Throughput::Elements(w as u64));
    g.sample_size(10);
    g.bench_function(BenchmarkId::new("portal index, 8 digits", n), |b| {
        b.iter(|| {
            qs.prefixes[window()]
                .iter()
                .map(|&p| index_prefix(index, p))
                .fold(0u64, u64::wrapping_add)
        })
    });
    g.bench_function(BenchmarkId::new("portal index batch, 8 digits", n), |b| {
        b.iter(|| {
            let mut acc = 0u64;
            index.lookup_prefix_batch(&qs.prefixes[window()], |_, e| {
                acc = acc.wrapping_add(e.key_row as u64)
            });
            acc
        })
    });
    g.bench_function(BenchmarkId::new("portal index, 32 digits", n), |b| {
        b.iter(|| {
            qs.fulls[window()]
                .iter()
                .map(|&k| index.lookup_full(k).map_or(0, |e| e.key_row as u64))
                .fold(0u64, u64::wrapping_add)
        })
    });
    g.bench_function(BenchmarkId::new("sorted Vec, 8 digits", n), |b| {
        b.iter(|| {
            qs.prefixes[window()]
                .iter()
                .map(|&p| sorted_vec_prefix(sorted, p))
                .fold(0u64, u64::wrapping_add)
        })
    });
    g.finish();
    let mut g = c.benchmark_group(format!("lookup {n} keys, SQLite"));
    g.throughput(Throughput::Elements(1024));
    g.sample_size(10);
    if let Some(db) = db {
        let conn = sqlite_conn(db);
        let mut st = conn.prepare_cached(SQLITE_PREFIX).unwrap();
        let mut start = 0usize;
        g.bench_function(BenchmarkId::new("SQLite range query, 8 digits", n), |b| {
            b.iter(|| {
                start = (start + 1024) % (qs.prefixes.len() - 1024).max(1);
                (start..start + 1024)
                    .map(|q| sqlite_prefix(&mut st, qs.prefixes[q]))
                    .fold(0u64, u64::wrapping_add)
            })
        });
    }
    g.finish();
}

/// Dependent 8-digit lookups while a writer thread lands escrows (`insert`) and
/// supersessions at `LOOKUP_WRITE_RATE` operations/s (default 1000: 3 escrows to 1
/// supersession). The delta is first filled to a third of the run's writes short of its
/// merge threshold, so a merge into a new base happens during the run; the reader runs until
/// the writer has done 3 s of writes (0.2 s in the smoke test) and seen a merge end (at most
/// 15 s). Lookups over 100 µs are kept with the time this thread waited for a CPU meanwhile,
/// and the merge's start and end times, to tell the scheduler's pauses from the index's.
fn under_writes(
    index: &PrefixIndex,
    sorted: &[IndexEntry],
    qs: &Queries,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let n = sorted.len();
    let rate: u64 = std::env::var("LOOKUP_WRITE_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
        .max(1);
    let run = if smoke() {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(3)
    };
    let limit = portal_under_test::index::delta_limit(n, portal_under_test::index::DELTA_MIN);
    let mut rng = rand_chacha_like(SEED + 7);
    let mut fresh = move || IndexEntry {
        key_id: rng.random(),
        key_row: -1,
        device_row: -1,
    };
    // A third of the run's writes short of the threshold: the merge comes a third of the way in.
    let prefill = limit.saturating_sub((rate as f64 * run.as_secs_f64() / 3.0) as usize);
    let t = Instant::now();
    index.insert_many((0..prefill).map(|_| fresh()));
    let prefill_time = t.elapsed();
    let done = AtomicBool::new(false);
    let steal0 = steal_ms();
    let t0 = Instant::now();
    let (h, writer) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut rng = rand_chacha_like(SEED + 8);
            let start = Instant::now();
            let (mut ops, mut merges, mut slowest) = (0u64, 0u32, Duration::ZERO);
            // The merge runs in the background and its base lands between writes: count
            // base changes seen by the writer across the run, and note when each merge
            // started and ended (seconds since the start).
            let mut base = index.stats().base_keys;
            let mut merging = index.stats().merging;
            let mut phases: Vec<(&str, f64)> = Vec::new();
            // Past `run`, keep writing until a merge has ended (at most 5 runs' time): on a
            // loaded machine the 10M merge can take longer than the run.
            while start.elapsed() < run || (merges == 0 && start.elapsed() < run * 5) {
                let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                if ops >= due {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                let t = Instant::now();
                if ops % 4 == 3 {
                    index.supersede(sorted[rng.random_range(0..n)].key_id);
                } else {
                    index.insert(fresh());
                }
                slowest = slowest.max(t.elapsed());
                let stats = index.stats();
                if stats.base_keys != base {
                    merges += 1;
                    base = stats.base_keys;
                }
                if stats.merging != merging {
                    merging = stats.merging;
                    let at = t0.elapsed().as_secs_f64();
                    phases.push((if merging { "merge start" } else { "merge end" }, at));
                }
                ops += 1;
            }
            done.store(true, Ordering::Relaxed);
            (ops, merges, slowest, start.elapsed(), phases)
        });
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        let mut q = 0usize;
        // Lookups over 100 µs: when (s since the start), how long, and how long this thread
        // waited for a CPU (run queue, /proc/thread-self/schedstat) since the last mark,
        // taken every 1024 lookups and after each slow one: a lookup that waited about as
        // long as it took was preempted, not slow in the index.
        let mut slow: Vec<(f64, u64, u64)> = Vec::new();
        let mut mark = run_queue_wait_ns();
        let mut i = 0u64;
        while !done.load(Ordering::Relaxed) {
            if i % 1024 == 0 {
                mark = run_queue_wait_ns();
            }
            i += 1;
            let t = Instant::now();
            let carry = index_prefix(index, qs.prefixes[q]);
            let ns = (t.elapsed().as_nanos() as u64).max(1);
            hist.record(ns).unwrap();
            if ns > 100_000 {
                let waited = run_queue_wait_ns().saturating_sub(mark);
                slow.push(((t - t0).as_secs_f64(), ns, waited));
                mark = run_queue_wait_ns();
            }
            q = (q + 1 + (carry as usize & 1)) % qs.prefixes.len();
        }
        (hist, (writer.join().unwrap(), slow))
    });
    let ((ops, merges, slowest, took, phases), slow) = writer;
    let stolen = steal_ms().saturating_sub(steal0);
    let r = row(
        n,
        &format!("portal index under writes ({rate}/s escrow+supersede, {merges} merge)"),
        "8 digits",
        &h,
    );
    rows.push(r);
    notes.push(format!(
        "{n}: under writes: {ops} writes in {:.1} s ({:.0}/s, 3 escrows : 1 supersession) on a delta pre-filled to {prefill} of {limit} (pre-fill {:.2} s); {merges} merge(s) into a new base; slowest write {:.4} s; reader max {:.1} µs over {} lookups",
        took.as_secs_f64(),
        ops as f64 / took.as_secs_f64(),
        prefill_time.as_secs_f64(),
        slowest.as_secs_f64(),
        h.max() as f64 / 1e3,
        h.len()
    ));
    let preempted = slow.iter().filter(|s| s.2 * 2 >= s.1).count();
    let own = slow
        .iter()
        .filter(|s| s.2 * 2 < s.1)
        .max_by_key(|s| s.1)
        .map_or("none".to_string(), |(at, ns, waited)| {
            format!(
                "{:.1} µs at {at:.3} s (waited {:.1} µs)",
                *ns as f64 / 1e3,
                *waited as f64 / 1e3
            )
        });
    let mut worst = slow.clone();
    worst.sort_by_key(|s| std::cmp::Reverse(s.1));
    let mut worst: Vec<String> = worst
        .iter()
        .take(5)
        .map(|(at, ns, waited)| {
            format!(
                "{:.1} µs at {at:.3} s (waited for a CPU {:.1} µs)",
                *ns as f64 / 1e3,
                *waited as f64 / 1e3
            )
        })
        .collect();
    if worst.is_empty() {
        worst.push("none".into());
    }
    let phases: Vec<String> = phases
        .iter()
        .map(|(p, at)| format!("{p} {at:.3} s"))
        .collect();
    notes.push(format!(
        "{n}: under writes: reader p99 {} ns, p99.9 {} ns, max {:.1} µs; {} lookups over 100 µs, {preempted} of them waited for a CPU at least half their time (slowest of the others: {own}); slowest: {}; {}; the hypervisor ran other guests on this VM's CPUs for {stolen} ms of the {:.1} s (steal time, invisible to the guest's scheduler)",
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max() as f64 / 1e3,
        slow.len(),
        worst.join(", "),
        phases.join(", "),
        t0.elapsed().as_secs_f64(),
    ));
    eprintln!("{}", notes.last().unwrap());
}

/// Milliseconds of steal time (the hypervisor running something else on this VM's CPUs),
/// summed over CPUs: the `steal` column of `/proc/stat`, in USER_HZ (100 a second) ticks.
fn steal_ms() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let cpu = s
                .lines()
                .next()?
                .split_whitespace()
                .nth(8)?
                .parse::<u64>()
                .ok()?;
            Some(cpu * 10)
        })
        .unwrap_or(0)
}

/// Nanoseconds this thread has waited on a run queue (the second field of
/// `/proc/thread-self/schedstat`; 0 where the kernel has none).
fn run_queue_wait_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|w| w.parse().ok()))
        .unwrap_or(0)
}

/// `1000000` -> `1m`, `100000000` -> `100m`, `20000` -> `20k`.
fn short_size(n: usize) -> String {
    if n % 1_000_000 == 0 {
        format!("{}m", n / 1_000_000)
    } else if n % 1000 == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn write_results(rows: &[Row], notes: &[String]) {
    let mut md = String::from(
        "| keys | structure | query | p50 ns | p99 ns | mean ns | independent lookups/s (1 core) |\n|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let f = |x: f64| {
            if x.is_nan() {
                "-".to_string()
            } else {
                format!("{x:.0}")
            }
        };
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.size,
            r.what,
            r.kind,
            f(r.p50_ns),
            f(r.p99_ns),
            f(r.mean_ns),
            r.indep_per_s
                .map_or("-".into(), |v| format!("{:.2} M", v / 1e6))
        ));
    }
    for nt in notes {
        md.push_str(&format!("\n- {nt}"));
    }
    md.push('\n');
    println!("\n{md}");
    let d = out_dir();
    std::fs::write(d.join("results.md"), &md).unwrap();
    // Also under a name per size set, so the 1M+10M and the 100M runs do not overwrite each
    // other.
    let sizes: Vec<String> = sizes().iter().map(|n| short_size(*n)).collect();
    std::fs::write(d.join(format!("lookup-{}.md", sizes.join("-"))), &md).unwrap();
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({"keys": r.size, "structure": r.what, "query": r.kind,
                "p50_ns": r.p50_ns, "p99_ns": r.p99_ns, "mean_ns": r.mean_ns,
                "independent_per_s": r.indep_per_s})
        })
        .collect();
    std::fs::write(
        d.join("results.json"),
        serde_json::to_string_pretty(&serde_json::json!({"rows": json, "notes": notes})).unwrap(),
    )
    .unwrap();
    std::fs::write(d.join("lookup.svg"), svg(rows)).unwrap();
}

/// A log-scale horizontal bar chart of the 8-digit p50 (bar) and p99 (tick) per structure
/// and size.
fn svg(rows: &[Row]) -> String {
    let bars: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            !r.p50_ns.is_nan() && (r.kind == "8 digits" || r.what.starts_with("memory floor"))
        })
        .collect();
    let (w, lh, left) = (900.0, 22.0, 380.0);
    let h = 60.0 + lh * bars.len() as f64;
    let x = |ns: f64| left + (ns.max(10.0).log10() - 1.0) / 5.0 * (w - left - 20.0);
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n<text x='10' y='18' font-size='14'>Key-ID lookup, 8 hex digits, one dependent lookup: p50 (bar) and p99 (tick), ns, log scale</text>\n"
    );
    for (k, ns) in [10.0, 100.0, 1e3, 1e4, 1e5, 1e6].iter().enumerate() {
        let xx = x(*ns);
        s.push_str(&format!(
            "<line x1='{xx}' y1='30' x2='{xx}' y2='{}' stroke='#ddd'/><text x='{xx}' y='{}' text-anchor='middle'>{}</text>\n",
            h - 20.0,
            h - 6.0,
            ["10", "100", "1µs", "10µs", "100µs", "1ms"][k]
        ));
    }
    for (i, r) in bars.iter().enumerate() {
        let y = 34.0 + lh * i as f64;
        let color = if r.what.starts_with("portal") {
            "#2b6cb0"
        } else if r.what.starts_with("memory") {
            "#718096"
        } else {
            "#dd6b20"
        };
        s.push_str(&format!(
            "<text x='{}' y='{}' text-anchor='end'>{} keys: {}</text><rect x='{left}' y='{}' width='{}' height='{}' fill='{color}'/><line x1='{p99}' y1='{}' x2='{p99}' y2='{}' stroke='black' stroke-width='2'/><text x='{}' y='{}'>{:.0}</text>\n",
            left - 6.0,
            y + 13.0,
            r.size,
            r.what,
            y + 2.0,
            (x(r.p50_ns) - left).max(1.0),
            lh - 6.0,
            y,
            y + lh - 4.0,
            x(r.p99_ns) + 4.0,
            y + 13.0,
            r.p50_ns,
            p99 = x(r.p99_ns),
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// `LOOKUP_BUILD_ONLY=1`: how the index build scales with the key count (issue 28), nothing
/// else. At each size, `LOOKUP_ROUNDS` (default 5) alternating rounds of: the portal's build (from keys in memory, as
/// `run_size` times it), its sort alone (`index::sorted_unique`), the one-scatter sort the
/// build used before (`one_scatter_sort`), and a floor no build beats: one sequential copy
/// of the input.
/// Medians, in ns a key: a linear build keeps its ns/key as the size grows.
fn build_scaling(n: usize, notes: &mut Vec<String>) {
    eprintln!("lookup bench: build scaling, {n} keys");
    let keys = entries(n);
    let (mut build, mut new_sort, mut old_sort, mut copy) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let per_key = |d: std::time::Duration| d.as_secs_f64() * 1e9 / n as f64;
    let rounds = rounds();
    for _ in 0..rounds {
        let input = keys.clone();
        let t = Instant::now();
        let index =
            PrefixIndex::with_keys_per_bucket(input, portal_under_test::index::KEYS_PER_BUCKET);
        build.push(per_key(t.elapsed()));
        assert_eq!(index.len(), n);
        drop(index);
        let input = keys.clone();
        let t = Instant::now();
        let sorted = portal_under_test::index::sorted_unique(
            input,
            portal_under_test::index::KEYS_PER_BUCKET,
        );
        new_sort.push(per_key(t.elapsed()));
        assert!(sorted.windows(2).all(|w| w[0].key_id < w[1].key_id));
        drop(sorted);
        let input = keys.clone();
        let t = Instant::now();
        let sorted = one_scatter_sort(input, portal_under_test::index::KEYS_PER_BUCKET);
        old_sort.push(per_key(t.elapsed()));
        assert!(sorted.windows(2).all(|w| w[0].key_id <= w[1].key_id));
        drop(sorted);
        let t = Instant::now();
        let copied = keys.clone();
        copy.push(per_key(t.elapsed()));
        drop(copied);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    notes.push(format!(
        "{n}: build scaling (median of {rounds}, ns/key): index build {:.1} ({:.2} s), of which its sort alone {:.1}; one-scatter sort (the build's sort before) {:.1}; sequential copy (floor) {:.1}; load {}",
        median(&mut build),
        median(&mut build) * n as f64 / 1e9,
        median(&mut new_sort),
        median(&mut old_sort),
        median(&mut copy),
        load.split_whitespace().next().unwrap_or("?"),
    ));
    eprintln!("{}", notes.last().unwrap());
}

/// Alternating rounds of the build-only and ratios modes: `LOOKUP_ROUNDS`, default 5.
fn rounds() -> usize {
    std::env::var("LOOKUP_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1)
}

/// `LOOKUP_RATIOS=1`: issue 28's ratios against the memory floor, nothing else. At each size,
/// `LOOKUP_ROUNDS` (default 5) alternating rounds of: the floor's dependent chase, the
/// index's 8- and 32-digit dependent lookups, the floor's independent loads ("parallel
/// chases"), single independent index lookups and the batch API at several prefetch
/// distances. Each figure and each ratio is the median over the rounds (a ratio is taken
/// within its round, then the median). Also the cache lines a lookup reads, from the layout.
fn ratios(n: usize, notes: &mut Vec<String>) {
    eprintln!("lookup bench: ratios, {n} keys");
    let rounds = rounds();
    let mut sorted = entries(n);
    let index = PrefixIndex::from_entries(sorted.clone());
    sorted.sort_unstable_by_key(|e| e.key_id);
    let timed = timed_count();
    let qs = queries(&sorted, timed);
    drop(sorted);
    let floor = Floor::new(n * std::mem::size_of::<IndexEntry>());
    let mut rng = rand_chacha_like(SEED + 5);
    let idx: Vec<usize> = (0..timed)
        .map(|_| rng.random_range(0..floor.lines) * 8)
        .collect();
    // Lines a lookup reads (the floor reads one), over the first 200,000 queries.
    let probe = &qs.prefixes[..timed.min(200_000)];
    let mut lines = [0usize; 5];
    for &p in probe {
        lines[index.lines_read(p).min(4)] += 1;
    }
    let mean_lines =
        probe.iter().map(|&p| index.lines_read(p)).sum::<usize>() as f64 / probe.len() as f64;
    const DISTANCES: [usize; 6] = [0, 4, 8, 12, 16, 24];
    // Per round: floor p50, p99; 8-digit p50, p99; 32-digit p50, p99; floor independent/s,
    // single independent/s, then batch/s per distance.
    let mut figures: Vec<Vec<f64>> = Vec::new();
    let w = QUERIES.min(timed / 3);
    for round in 0..rounds {
        let mut f = Vec::new();
        let chase = &floor.chase;
        let mut cur = (round * 8) as u64;
        let h = dependent(timed, timed, |_, _| {
            cur = chase[cur as usize];
            cur
        });
        f.extend([h.value_at_quantile(0.5), h.value_at_quantile(0.99)].map(|v| v as f64));
        let h = dependent(timed, timed, |q, _| index_prefix(&index, qs.prefixes[q]));
        f.extend([h.value_at_quantile(0.5), h.value_at_quantile(0.99)].map(|v| v as f64));
        let h = dependent(timed, timed, |q, _| {
            index
                .lookup_full(qs.fulls[q])
                .map_or(0, |e| e.key_row as u64 | 1)
        });
        f.extend([h.value_at_quantile(0.5), h.value_at_quantile(0.99)].map(|v| v as f64));
        f.push(independent(timed, |q| chase[idx[q]]));
        f.push(independent(timed, |q| index_prefix(&index, qs.prefixes[q])));
        for d in DISTANCES {
            f.push(
                independent(timed / w, |pass| {
                    let mut acc = 0u64;
                    index.lookup_prefix_batch_at(
                        &qs.prefixes[pass * w..(pass + 1) * w],
                        d,
                        |_, e| acc = acc.wrapping_add(e.key_row as u64),
                    );
                    acc
                }) * w as f64,
            );
        }
        figures.push(f);
    }
    let median = |col: &dyn Fn(&[f64]) -> f64| {
        let mut v: Vec<f64> = figures.iter().map(|f| col(f)).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?").to_string();
    notes.push(format!(
        "{n}: ratios, median of {rounds} alternating rounds (load {load} at the end): floor p50 {:.0} ns p99 {:.0} ns; 8 digits p50 {:.0} ns ({:.2}x) p99 {:.0} ns ({:.2}x); 32 digits p50 {:.0} ns ({:.2}x) p99 {:.0} ns ({:.2}x)",
        median(&|f| f[0]),
        median(&|f| f[1]),
        median(&|f| f[2]),
        median(&|f| f[2] / f[0]),
        median(&|f| f[3]),
        median(&|f| f[3] / f[1]),
        median(&|f| f[4]),
        median(&|f| f[4] / f[0]),
        median(&|f| f[5]),
        median(&|f| f[5] / f[1]),
    ));
    eprintln!("{}", notes.last().unwrap());
    let batch: Vec<String> = DISTANCES
        .iter()
        .enumerate()
        .map(|(i, d)| {
            format!(
                "distance {d}: {:.1} M/s ({:.0}%)",
                median(&|f| f[8 + i]) / 1e6,
                median(&|f| f[8 + i] / f[6]) * 100.0
            )
        })
        .collect();
    notes.push(format!(
        "{n}: throughput on one core, median of {rounds} rounds: floor's parallel chases {:.1} M/s; single independent lookups {:.1} M/s ({:.0}%); batch API {}",
        median(&|f| f[6]) / 1e6,
        median(&|f| f[7]) / 1e6,
        median(&|f| f[7] / f[6]) * 100.0,
        batch.join(", ")
    ));
    eprintln!("{}", notes.last().unwrap());
    notes.push(format!(
        "{n}: cache lines read per 8-digit lookup (from the layout, {} queries): mean {mean_lines:.2}; 1 line {:.1}%, 2 lines {:.1}%, 3 lines {:.1}%, 4+ {:.1}% (the floor: 1)",
        probe.len(),
        lines[1] as f64 * 100.0 / probe.len() as f64,
        lines[2] as f64 * 100.0 / probe.len() as f64,
        lines[3] as f64 * 100.0 / probe.len() as f64,
        lines[4] as f64 * 100.0 / probe.len() as f64,
    ));
    eprintln!("{}", notes.last().unwrap());
}

/// The index build's sort before issue 28: one stable counting sort by the top
/// `log2(n / per_bucket)` bits (a scatter to a random place in the whole array per key),
/// then per-bucket sorts. Kept here only to measure the build against it.
fn one_scatter_sort(input: Vec<IndexEntry>, per_bucket: usize) -> Vec<IndexEntry> {
    let n = input.len();
    let bits = (usize::BITS - 1 - (n / per_bucket).max(2).leading_zeros()).clamp(1, 32);
    let shift = 128 - bits;
    let nb = 1usize << bits;
    let mut counts = vec![0u32; nb + 1];
    for e in &input {
        counts[(e.key_id >> shift) as usize + 1] += 1;
    }
    for b in 0..nb {
        counts[b + 1] += counts[b];
    }
    let offsets = counts.clone();
    let mut sorted = vec![input[0]; n];
    for e in &input {
        let b = (e.key_id >> shift) as usize;
        sorted[counts[b] as usize] = *e;
        counts[b] += 1;
    }
    for b in 0..nb {
        sorted[offsets[b] as usize..offsets[b + 1] as usize].sort_by_key(|e| e.key_id);
    }
    sorted
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    notes.push(format!("load average at start: {}", load.trim()));
    let build_only = std::env::var("LOOKUP_BUILD_ONLY").is_ok_and(|v| v == "1");
    let ratios_only = std::env::var("LOOKUP_RATIOS").is_ok_and(|v| v == "1");
    // `LOOKUP_WRITES_ONLY=1`: only the "under writes" row (p99.9, max, the slow lookups).
    let writes_only = std::env::var("LOOKUP_WRITES_ONLY").is_ok_and(|v| v == "1");
    for n in sizes() {
        if build_only {
            build_scaling(n, &mut notes);
        } else if ratios_only {
            ratios(n, &mut notes);
        } else if writes_only {
            let mut sorted = entries(n);
            let index = PrefixIndex::from_entries(sorted.clone());
            sorted.sort_unstable_by_key(|e| e.key_id);
            let qs = queries(&sorted, timed_count());
            under_writes(&index, &sorted, &qs, &mut rows, &mut notes);
        } else {
            run_size(&mut c, n, &mut rows, &mut notes);
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    notes.push(format!("load average at end: {}", load.trim()));
    write_results(&rows, &notes);
    c.final_summary();
}
