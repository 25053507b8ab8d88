//! In-memory prefix index over all *current* (not superseded) key IDs.
//!
//! Users type the first 8 hex digits of a key ID; those are the top 32 bits of the `u128`
//! display-order GUID (`keyid::prefix_of`). The index answers two questions: every current key
//! with a given 8-digit prefix, and the current key with a given full ID.
//!
//! # Layout
//! A *base* is one array of 32-byte entries (key ID, key row, device row) in key order: the
//! key and its payload share half a cache line, and all keys with one prefix are a contiguous
//! run. It has no bucket table: each key sits at or a few slots after its *home* slot,
//! computed from the key ID alone (`home = top 64 bits * homes / 2^64`, with `homes` = keys /
//! 0.84), and the slots between keys repeat the entry before them so the array stays sorted.
//! A lookup computes `home(prefix << 96)` and scans forward from there: with random key IDs
//! that is a few slots (the longest 33 in a 10M-key replica), one or two adjacent cache lines
//! whose misses overlap, so a lookup is one dependent memory access, as the memory floor is.
//! (The earlier layout read a 4 MiB bucket table first: a second dependent miss whenever the
//! table had fallen out of the shared L3, measured ~90 ns of a ~420 ns lookup at 10M.)
//! Crowded or sparse key ranges (never random IDs at this load) fall back to a binary search
//! after `SCAN_LIMIT` (64) slots, so adversarial IDs cost `O(log n)`, not a long scan. Memory:
//! 32 / 0.84 = 38.1 bytes a key. Build is two counting sorts (by the top 10 bits into 1024
//! runs, then each run, cache-sized, by the next bits), tiny per-bucket sorts, then the keys
//! are laid out in the sort's own buffer (a backward pass; fresh memory, which the kernel
//! zeroes page by page, was most of a large build): O(n), no full comparison sort, no
//! scatter across the whole array. That buffer (the slot array) asks for transparent huge
//! pages ([`huge_page_vec`]): fewer page faults while building, fewer TLB misses per lookup.
//!
//! # Concurrency
//! Readers load an immutable [`Snapshot`] through `arc-swap` (no lock, no shared counter
//! bounce) and never wait. A snapshot is the base plus a small sorted *delta* of keys added
//! since the base was built and a sorted set of base keys superseded since. Writers (escrow,
//! supersession) are serialised by a mutex; each copies the small delta, edits it and
//! publishes a new snapshot.
//!
//! Merges do not block writers. When the delta (plus superseded set) outgrows
//! [`delta_limit`], the writer *freezes* it: the next snapshot is the base, the frozen delta
//! and superseded set, and a fresh empty delta and superseded set on top; a background thread
//! (`index-merge`) builds the new base from the base and the frozen layer (O(n): 0.6-2 s at
//! 10M keys, 9 s at 100M) while writers keep landing in the fresh layer. A key is then current
//! if it is in the base and in neither superseded set, in the frozen delta and not in the top
//! superseded set, or in the top delta; the three runs are disjoint and readers merge them in
//! key order. When the build is done the thread takes the writer lock for a moment and
//! publishes the new base with the top delta and superseded set as they are then (every key
//! superseded meanwhile was a key of the base or the frozen delta, so it is in the new base and
//! stays hidden); a write then waits at most for that swap. While one merge runs no other
//! starts: the top delta grows past its limit, and only if it reaches twice the limit (writes
//! outrunning an O(n) build, never at 1000 escrows/s) does a writer wait for the running merge
//! (outside the writer lock). [`PrefixIndex::compact`] waits for it and merges the rest on the
//! calling thread. A merge thread that fails (it should not) is logged and its merge redone
//! by the next writer that waits or compacts. The merge thread also frees the base it
//! replaced ([`retire`]): whichever thread drops the last reference frees it, and unmapping a
//! 10M-key base takes milliseconds a lookup must not pay.
//!
//! # Batch lookups
//! [`PrefixIndex::lookup_prefix_batch`] (many queries in flight) prefetches the home lines of
//! the query [`PREFETCH_DISTANCE`] ahead while it scans the current one, so about that many
//! lookups' memory accesses overlap. A prefetch hint is the one instruction for this (a plain
//! load would hold the CPU's reorder window until its line came back); `_mm_prefetch` is an
//! `unsafe` intrinsic, the index's second `unsafe` after `madvise`.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

/// One current key: its ID and where it lives in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(C, align(32))]
pub struct IndexEntry {
    pub key_id: u128,
    /// Row id of the key record.
    pub key_row: i64,
    /// Row id of the device the key belongs to.
    pub device_row: i64,
}

impl IndexEntry {
    /// What a build's sort buffer starts as (every slot is written before it is read).
    const ZERO: IndexEntry = IndexEntry {
        key_id: 0,
        key_row: 0,
        device_row: 0,
    };
}

/// Formerly the bucket occupancy of a bucket-table layout; the base no longer has a bucket
/// table (see the module docs), so this only remains for [`PrefixIndex::with_keys_per_bucket`]
/// callers. The sort run while building still buckets by top bits at this occupancy.
pub const KEYS_PER_BUCKET: usize = 8;

/// Keys per 100 home slots: 100 / 84 slots a key, 38.1 bytes a key (the goal is 40). In a
/// standalone 10M-key replica at 82 the longest displacement was 33 slots; a lower load
/// costs memory (0.80 is exactly 40 B/key), a higher one longer scans.
const LOAD_PERCENT: u128 = 84;

/// Displacements up to this are scanned from a key's home slot; beyond it (crowded key
/// ranges, never random key IDs at this load) the first slot is binary-searched.
const SCAN_LIMIT: usize = 64;

/// An immutable array of slots with key IDs in non-decreasing order, each key at or after its
/// *home* slot, computed from the key ID alone (`home = top 64 bits * homes / 2^64`), so a
/// lookup needs no table: its first memory access is the slot range holding the answer.
#[derive(Debug)]
struct Base {
    /// Entries in key order; a slot between two keys (a gap) repeats the entry before it (a
    /// gap before the first key repeats the first key), so the array stays sorted and a
    /// forward scan skips repeats.
    slots: Vec<IndexEntry>,
    /// Distinct keys in `slots`.
    keys: usize,
    /// Number of home slots (`keys * 100 / LOAD_PERCENT`); `slots` may run past it.
    homes: u64,
    /// The largest `slot - home` of any key.
    max_displacement: usize,
}

/// Bucket bits for `n` keys at `per_bucket` or more keys per bucket (1 to 32 bits).
fn bucket_bits(n: usize, per_bucket: usize) -> u32 {
    let buckets = (n / per_bucket.max(1)).max(2);
    // Round down to a power of two: between `per_bucket` and `2 * per_bucket` keys a bucket.
    let bits = usize::BITS - 1 - buckets.leading_zeros();
    bits.clamp(1, 32)
}

/// Bits of [`Base::build`]'s first counting sort: 1024 runs, so its scatter writes 1024
/// sequential streams (their current cache lines and pages stay cached).
const TOP_BUCKET_BITS: u32 = 10;

/// Stable counting sort of `src` into `dst` (same length) by the `bits` key ID bits after
/// the top `skip` bits. Returns the bucket boundaries in `dst` (`2^bits + 1` offsets).
fn scatter(src: &[IndexEntry], dst: &mut [IndexEntry], skip: u32, bits: u32) -> Vec<usize> {
    let shift = 128 - skip - bits;
    let mask = (1usize << bits) - 1;
    let bucket = |e: &IndexEntry| (e.key_id >> shift) as usize & mask;
    let mut bounds = vec![0usize; mask + 2];
    for e in src {
        bounds[bucket(e) + 1] += 1;
    }
    for b in 0..=mask {
        bounds[b + 1] += bounds[b];
    }
    let mut next = bounds.clone();
    for e in src {
        let b = bucket(e);
        dst[next[b]] = *e;
        next[b] += 1;
    }
    bounds
}

/// Stable sort of a few entries by key ID; true if a key ID occurs twice.
fn sort_small(s: &mut [IndexEntry]) -> bool {
    if s.len() < 2 {
        return false;
    }
    s.sort_by_key(|e| e.key_id);
    s.windows(2).any(|w| w[0].key_id == w[1].key_id)
}

/// An empty `Vec` with room for `n` entries whose memory the kernel may back with
/// transparent huge pages (`madvise(MADV_HUGEPAGE)`; this machine's THP mode is `madvise`).
/// For a 10M-key base that is ~190 2 MiB faults instead of ~93,000 4 KiB ones (each a
/// costly exit in a VM), and fewer TLB misses per lookup. Advisory: where THP is off, or
/// for less than 2 MiB, it is an ordinary `Vec`. Public so the lookup benchmark gives its
/// memory floor the same pages.
pub fn huge_page_vec<T>(n: usize) -> Vec<T> {
    const HUGE: usize = 2 << 20;
    let v: Vec<T> = Vec::with_capacity(n);
    let bytes = n * std::mem::size_of::<T>();
    if bytes >= 2 * HUGE {
        let start = v.as_ptr() as usize;
        let aligned = start.next_multiple_of(HUGE);
        let len = (start + bytes - aligned) / HUGE * HUGE;
        #[allow(unsafe_code)]
        // SAFETY: `aligned..aligned + len` lies inside `v`'s allocation (rounded inwards to
        // whole huge pages), which nothing has touched yet; MADV_HUGEPAGE only changes how
        // the kernel backs it, never its contents, and a failure leaves it as it was.
        unsafe {
            libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
    }
    v
}

/// Slots a base of `keys` random keys needs, with a margin: the capacity to give the buffer
/// a base is laid out in, so it is not reallocated (copied) on the way.
fn slot_capacity(keys: usize) -> usize {
    (keys as u128 * 100).div_ceil(LOAD_PERCENT) as usize + 2 * SCAN_LIMIT
}

/// [`Base::build`]'s sort: the entries sorted by key ID, the first of each key ID kept.
/// Public only so the lookup benchmark can time it apart from the layout.
pub fn sorted_unique(input: Vec<IndexEntry>, per_bucket: usize) -> Vec<IndexEntry> {
    let per_bucket = per_bucket.max(1);
    let n = input.len();
    let top_bits = bucket_bits(n, per_bucket).min(TOP_BUCKET_BITS);
    // Room for the layout's gap slots too (pages not touched until the layout writes them).
    let mut sorted = huge_page_vec(slot_capacity(n));
    sorted.resize(n, IndexEntry::ZERO);
    let runs = scatter(&input, &mut sorted, 0, top_bits);
    drop(input);
    let mut scratch = Vec::new();
    let mut dups = false;
    for run in runs.windows(2) {
        let run = &mut sorted[run[0]..run[1]];
        if run.len() <= 2 * per_bucket {
            dups |= sort_small(run);
            continue;
        }
        scratch.clear();
        scratch.extend_from_slice(run);
        let buckets = scatter(&scratch, run, top_bits, bucket_bits(run.len(), per_bucket));
        for b in buckets.windows(2) {
            dups |= sort_small(&mut run[b[0]..b[1]]);
        }
    }
    if dups {
        sorted.dedup_by_key(|e| e.key_id);
    }
    sorted
}

/// Queries a [`PrefixIndex::lookup_prefix_batch`] prefetches ahead: enough to keep the
/// CPU's ~10-20 outstanding misses busy while each lookup's scan takes ~10-20 ns.
pub const PREFETCH_DISTANCE: usize = 16;

/// A prefetch hint for the cache line holding `p` (any address: a prefetch never faults).
#[inline(always)]
fn prefetch_line(p: *const i8) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: `_mm_prefetch` only hints the cache; it reads nothing into a register and
    // never faults, whatever the address. It is `unsafe` only as an SSE `target_feature`
    // intrinsic, and SSE is part of every x86_64 CPU.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Distinct entries of a slot run (gaps repeat the entry before them).
#[derive(Clone)]
struct Distinct<'a> {
    slots: std::slice::Iter<'a, IndexEntry>,
    last: Option<u128>,
}

impl<'a> Iterator for Distinct<'a> {
    type Item = &'a IndexEntry;

    #[inline]
    fn next(&mut self) -> Option<&'a IndexEntry> {
        for e in self.slots.by_ref() {
            if self.last != Some(e.key_id) {
                self.last = Some(e.key_id);
                return Some(e);
            }
        }
        None
    }
}

impl Base {
    fn empty() -> Self {
        Base::from_sorted_unique(Vec::new())
    }

    #[inline]
    fn home(&self, key_id: u128) -> usize {
        (((key_id >> 64) * u128::from(self.homes)) >> 64) as usize
    }

    /// `entries` must be sorted by key ID with no duplicate key IDs. Lays them out in their
    /// own buffer (grown to the slot count), not in a fresh array: first touch of fresh
    /// memory (the kernel zeroing each page) was most of a large build's time. A forward
    /// pass finds each key's slot, a backward pass moves each key to it and fills the gap
    /// after it; a key's slot is at or after its index, so the backward pass never
    /// overwrites a key it has yet to move.
    fn from_sorted_unique(mut entries: Vec<IndexEntry>) -> Self {
        let keys = entries.len();
        let homes = (keys as u128 * 100).div_ceil(LOAD_PERCENT) as u64;
        let mut base = Base {
            slots: Vec::new(),
            keys,
            homes,
            max_displacement: 0,
        };
        let mut slot_of = Vec::with_capacity(keys);
        let mut len = 0usize;
        for e in &entries {
            let home = base.home(e.key_id);
            let slot = len.max(home);
            base.max_displacement = base.max_displacement.max(slot - home);
            slot_of.push(slot);
            len = slot + 1;
        }
        entries.resize(len, IndexEntry::ZERO);
        let mut end = len;
        for (i, &slot) in slot_of.iter().enumerate().rev() {
            let e = entries[i];
            entries[slot..end].fill(e);
            end = slot;
        }
        // Slots before the first key repeat it.
        if let Some(&first) = entries.get(end) {
            entries[..end].fill(first);
        }
        // No `shrink_to_fit`: for 32-byte-aligned entries the system allocator cannot
        // `realloc` in place, it copies into fresh memory (what this layout avoids). The
        // buffers given here have `slot_capacity` room: a few slots to spare.
        base.slots = entries;
        base
    }

    /// Sorts and de-duplicates (keeping the first entry of a key ID), then lays the keys out.
    /// Two stable counting sorts: first by the top [`TOP_BUCKET_BITS`] bits into that many
    /// contiguous runs (a few sequential write streams), then each run on its own by the next
    /// bits, at about `per_bucket` keys a bucket, and tiny stable sorts of those buckets. One
    /// scatter by all the bits at once writes every key to a random place in the whole
    /// array: a cache and TLB miss per key, which grew faster than the key count (100M keys:
    /// a 3.2 GB target, page walks missing the cache too). Here the second scatter stays
    /// within one run (100M keys: ~3 MB).
    fn build(input: Vec<IndexEntry>, per_bucket: usize) -> Self {
        Base::from_sorted_unique(sorted_unique(input, per_bucket))
    }

    /// Asks the CPU to fetch the lines a lookup of `lo` reads first: those of its home slot
    /// and the 3 slots after it (32 bytes each: 2 or 3 lines; a lookup reads 2.7 lines on
    /// average at this load, measured by the lookup bench's `LOOKUP_RATIOS`).
    #[inline]
    fn prefetch(&self, lo: u128) {
        if let Some(slot) = self.slots.get(self.home(lo)) {
            let p = (slot as *const IndexEntry).cast::<i8>();
            prefetch_line(p);
            prefetch_line(p.wrapping_add(64));
            prefetch_line(p.wrapping_add(96));
        }
    }

    /// The slot index of the first key ID `>= lo`, or `slots.len()`.
    #[inline]
    fn first_at_least(&self, lo: u128) -> usize {
        // Every key `>= lo` has its home at or after `lo`'s, so the answer is at or after it;
        // the slots before it are keys displaced from earlier homes and gap repeats. With
        // random key IDs that is a few slots: read in one go (contiguous, the misses overlap).
        let start = self.home(lo).min(self.slots.len());
        let rest = self.slots.get(start..).unwrap_or(&[]);
        let near = rest.get(..SCAN_LIMIT).unwrap_or(rest);
        match near.iter().position(|e| e.key_id >= lo) {
            Some(p) => start + p,
            // Crowded or sparse key ranges: binary search.
            None => start + rest.partition_point(|e| e.key_id < lo),
        }
    }

    /// The distinct entries with key IDs in `lo..=hi`, in key order.
    #[inline]
    fn range(&self, lo: u128, hi: u128) -> Distinct<'_> {
        let start = self.first_at_least(lo);
        let rest = self.slots.get(start..).unwrap_or(&[]);
        let near = rest.get(..SCAN_LIMIT).unwrap_or(rest);
        let len = match near.iter().position(|e| e.key_id > hi) {
            Some(l) => l,
            // Many matches (or a long run of repeats): binary search for the end.
            None => rest.partition_point(|e| e.key_id <= hi),
        };
        Distinct {
            slots: rest.get(..len).unwrap_or(&[]).iter(),
            last: None,
        }
    }

    /// Calls `f` for the distinct entries with key IDs in `lo..=hi`, in key order; returns
    /// how many. The same answer as [`Base::range`] in one forward pass from the home slot
    /// (no second scan for the end, no `Option` per slot): the base-only lookups' path.
    #[inline]
    fn for_each_in(&self, lo: u128, hi: u128, mut f: impl FnMut(&IndexEntry)) -> usize {
        let start = self.home(lo).min(self.slots.len());
        let rest = self.slots.get(start..).unwrap_or(&[]);
        // A gap repeats the entry before it: skip a key equal to the last one seen. `lo - 1`
        // (or, for `lo == 0`, `u128::MAX`, which is above any `hi` here) matches no key.
        let mut last = lo.wrapping_sub(1);
        let mut n = 0;
        for (i, e) in rest.iter().enumerate() {
            if e.key_id > hi {
                return n;
            }
            if i >= SCAN_LIMIT {
                // Crowded or sparse key ranges (long runs of displaced keys or of gap
                // repeats): the rest by binary search, as `range` does.
                let from = if n == 0 {
                    lo
                } else if last == hi {
                    return n;
                } else {
                    last + 1
                };
                for e in self.range(from, hi) {
                    f(e);
                    n += 1;
                }
                return n;
            }
            if e.key_id >= lo && e.key_id != last {
                f(e);
                n += 1;
                last = e.key_id;
            }
        }
        n
    }

    #[inline]
    fn find(&self, key_id: u128) -> Option<&IndexEntry> {
        let i = self.first_at_least(key_id);
        self.slots.get(i).filter(|e| e.key_id == key_id)
    }

    /// All distinct entries in key order.
    fn entries(&self) -> Distinct<'_> {
        Distinct {
            slots: self.slots.iter(),
            last: None,
        }
    }

    fn bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<IndexEntry>()
    }
}

/// A delta and superseded set frozen when a background merge started: the merge folds them
/// into a new base while writers land in a fresh delta on top.
#[derive(Debug)]
struct Frozen {
    /// Keys added to the base, sorted; none of them is current in the base.
    delta: Vec<IndexEntry>,
    /// Base key IDs superseded, sorted.
    dead: Vec<u128>,
}

/// What readers see: a base plus the changes since it was built, in up to two layers.
#[derive(Debug)]
struct Snapshot {
    base: Arc<Base>,
    /// While a background merge runs: the delta and superseded set it is folding into the
    /// next base (current keys: base minus `frozen.dead`, plus `frozen.delta`).
    frozen: Option<Arc<Frozen>>,
    /// Keys added since the base (and the frozen layer), sorted by key ID; none of them is
    /// current in the layers below.
    delta: Vec<IndexEntry>,
    /// Key IDs of the layers below (base or frozen delta) superseded since, sorted.
    dead: Vec<u128>,
}

/// The keys of `sorted` with key IDs in `lo..=hi`.
#[inline]
fn sorted_range(sorted: &[IndexEntry], lo: u128, hi: u128) -> &[IndexEntry] {
    let start = sorted.partition_point(|e| e.key_id < lo);
    let after = sorted.get(start..).unwrap_or(&[]);
    // One binary search; the matches (rarely more than one) follow it.
    after
        .get(..after.iter().take_while(|e| e.key_id <= hi).count())
        .unwrap_or(&[])
}

impl Snapshot {
    /// Superseded since the frozen layer (applies to base and frozen delta keys).
    fn is_dead(&self, key_id: u128) -> bool {
        !self.dead.is_empty() && self.dead.binary_search(&key_id).is_ok()
    }

    /// A base key superseded in either layer.
    fn base_dead(&self, key_id: u128) -> bool {
        self.is_dead(key_id)
            || self
                .frozen
                .as_ref()
                .is_some_and(|f| !f.dead.is_empty() && f.dead.binary_search(&key_id).is_ok())
    }

    /// The current entry of this key ID in the base or the frozen delta (not the delta).
    fn below(&self, key_id: u128) -> Option<&IndexEntry> {
        if let Some(e) = self.base.find(key_id) {
            if !self.base_dead(key_id) {
                return Some(e);
            }
        }
        let f = self.frozen.as_ref()?;
        let i = f.delta.binary_search_by_key(&key_id, |e| e.key_id).ok()?;
        f.delta.get(i).filter(|_| !self.is_dead(key_id))
    }

    fn delta_pos(&self, key_id: u128) -> Result<usize, usize> {
        self.delta.binary_search_by_key(&key_id, |e| e.key_id)
    }

    /// Nothing on top of the base: lookups read the base alone.
    fn base_only(&self) -> bool {
        self.delta.is_empty() && self.dead.is_empty() && self.frozen.is_none()
    }

    fn len(&self) -> usize {
        let (fdelta, fdead) = self
            .frozen
            .as_ref()
            .map_or((0, 0), |f| (f.delta.len(), f.dead.len()));
        (self.base.keys + fdelta + self.delta.len()).saturating_sub(fdead + self.dead.len())
    }
}

/// The delta size at which a writer starts a merge into a new base: large enough that merges
/// are rare (amortised O(1) per insert), small enough that copying it per write stays cheap.
pub fn delta_limit(base_len: usize, min: usize) -> usize {
    // sqrt(n) * 8: 25k at 10M keys (a 0.8 MB copy per single escrow, a merge per 25k escrows).
    let root = (base_len as f64).sqrt() as usize;
    (root * 8).max(min)
}

/// The smallest merge threshold of a normal index.
pub const DELTA_MIN: usize = 1024;

/// While a merge runs, a writer waits for it once the new delta reaches this many times
/// [`delta_limit`] (writes outrunning an O(n) merge; never at 1000 escrows/s).
const OVERLAP_FACTOR: usize = 2;

/// What the background merge thread shares with the index.
#[derive(Debug)]
struct Shared {
    current: ArcSwap<Snapshot>,
    writer: Mutex<()>,
}

impl Shared {
    // A poisoned writer lock only means another writer panicked before publishing; the
    // published snapshot is always complete, so keep going.
    fn write_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Under the writer lock: replaces the base with `base` (built from `snap`'s base and
    /// `frozen`) if `frozen` is still the snapshot's frozen layer, keeping the delta and the
    /// supersessions landed since (all of them keys of the new base or of the delta).
    /// Returns the old base, to be freed off the readers' path ([`retire`]).
    fn install(&self, frozen: &Arc<Frozen>, base: Base) -> Option<Arc<Base>> {
        let snap = self.current.load_full();
        if !snap.frozen.as_ref().is_some_and(|f| Arc::ptr_eq(f, frozen)) {
            return None;
        }
        self.current.store(Arc::new(Snapshot {
            base: Arc::new(base),
            frozen: None,
            delta: snap.delta.clone(),
            dead: snap.dead.clone(),
        }));
        Some(snap.base.clone())
    }
}

/// Frees a replaced base on the calling thread (the merge thread), not on whichever reader
/// happens to drop the last reference: unmapping a 10M-key base (380 MB) takes milliseconds,
/// which a lookup must not pay. Waits for readers still holding it (a lookup holds its
/// snapshot for well under a microsecond), at most a second, then lets the last holder free it.
fn retire(base: Arc<Base>) {
    let mut base = base;
    for _ in 0..1000 {
        match Arc::try_unwrap(base) {
            Ok(b) => {
                drop(b);
                return;
            }
            Err(still_shared) => base = still_shared,
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Test hook: while closed, a background merge waits before building (a lookup can then be
/// checked against the frozen state deterministically).
#[cfg(test)]
#[derive(Debug, Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: std::sync::Condvar,
}

#[cfg(test)]
impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = closed;
        self.opened.notify_all();
    }

    fn wait(&self) {
        let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        while *closed {
            closed = self.opened.wait(closed).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// The prefix index. Cheap, lock-free reads; serialised writes that never wait for a merge
/// (but see [`OVERLAP_FACTOR`]).
#[derive(Debug)]
pub struct PrefixIndex {
    shared: Arc<Shared>,
    /// The background merge thread, if one was started (it may have finished).
    merging: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Lower bound of [`delta_limit`] (tests lower it to exercise merges).
    delta_min: usize,
    #[cfg(test)]
    gate: Arc<Gate>,
}

impl Default for PrefixIndex {
    fn default() -> Self {
        Self::new()
    }
}

/// Memory the index holds, for reports and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexStats {
    /// Current keys.
    pub keys: usize,
    /// Keys in the sorted base array.
    pub base_keys: usize,
    /// Keys in the delta (not yet merged; including a delta being merged).
    pub delta_keys: usize,
    /// Superseded base keys not yet merged away (including those being merged).
    pub dead_keys: usize,
    /// Always 0: the base has had no bucket table since the home-slot layout (kept so
    /// callers keep compiling).
    pub bucket_bits: u32,
    /// Heap bytes held by the current snapshot (entries, delta, dead set, frozen layer).
    pub heap_bytes: usize,
    /// A background merge is running (a frozen layer is being folded into a new base).
    pub merging: bool,
}

impl PrefixIndex {
    pub fn new() -> Self {
        Self::with_keys_per_bucket(Vec::new(), KEYS_PER_BUCKET)
    }

    /// Builds an index from a list of current keys (a key ID given twice keeps its first
    /// entry).
    pub fn from_entries(entries: impl IntoIterator<Item = IndexEntry>) -> Self {
        Self::with_keys_per_bucket(entries.into_iter().collect(), KEYS_PER_BUCKET)
    }

    /// As [`PrefixIndex::from_entries`] with another bucket occupancy (for benchmarks).
    pub fn with_keys_per_bucket(entries: Vec<IndexEntry>, per_bucket: usize) -> Self {
        let per_bucket = per_bucket.max(1);
        let base = if entries.is_empty() {
            Base::empty()
        } else {
            Base::build(entries, per_bucket)
        };
        PrefixIndex {
            shared: Arc::new(Shared {
                current: ArcSwap::from_pointee(Snapshot {
                    base: Arc::new(base),
                    frozen: None,
                    delta: Vec::new(),
                    dead: Vec::new(),
                }),
                writer: Mutex::new(()),
            }),
            merging: Mutex::new(None),
            delta_min: DELTA_MIN,
            #[cfg(test)]
            gate: Arc::default(),
        }
    }

    fn write_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.shared.write_lock()
    }

    fn merging(&self) -> std::sync::MutexGuard<'_, Option<std::thread::JoinHandle<()>>> {
        self.merging.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Before taking the writer lock: if a merge is running and the delta on top of it has
    /// outgrown [`OVERLAP_FACTOR`] limits, wait for the merge (the only time a writer waits
    /// for one).
    fn wait_if_overlapping(&self) {
        let snap = self.shared.current.load();
        if snap.frozen.is_some()
            && snap.delta.len() + snap.dead.len()
                > OVERLAP_FACTOR * delta_limit(snap.base.keys, self.delta_min)
        {
            drop(snap);
            self.finish_merge();
        }
    }

    /// Waits for a running background merge and makes sure its base is published (building
    /// it here if the thread could not).
    fn finish_merge(&self) {
        #[cfg(test)]
        self.gate.set(false);
        let handle = self.merging().take();
        if let Some(h) = handle {
            if h.join().is_err() {
                tracing::warn!("prefix index: the merge thread failed; merging inline");
            }
        }
        let _w = self.write_lock();
        let snap = self.shared.current.load_full();
        if let Some(f) = &snap.frozen {
            self.shared.install(f, merge(&snap.base, &f.delta, &f.dead));
        }
    }

    /// Publishes `delta`/`dead` on top of `snap`'s base (and frozen layer). When no merge is
    /// running and the delta is large, freezes it and starts a merge in the background.
    /// Called with the writer lock held.
    fn publish(&self, snap: &Snapshot, delta: Vec<IndexEntry>, dead: Vec<u128>) {
        let over = delta.len() + dead.len() > delta_limit(snap.base.keys, self.delta_min);
        if snap.frozen.is_some() || !over {
            self.shared.current.store(Arc::new(Snapshot {
                base: snap.base.clone(),
                frozen: snap.frozen.clone(),
                delta,
                dead,
            }));
            return;
        }
        let frozen = Arc::new(Frozen { delta, dead });
        self.shared.current.store(Arc::new(Snapshot {
            base: snap.base.clone(),
            frozen: Some(frozen.clone()),
            delta: Vec::new(),
            dead: Vec::new(),
        }));
        let (shared, base, job) = (self.shared.clone(), snap.base.clone(), frozen.clone());
        #[cfg(test)]
        let gate = self.gate.clone();
        let spawned = std::thread::Builder::new()
            .name("index-merge".into())
            .spawn(move || {
                #[cfg(test)]
                gate.wait();
                let new = merge(&base, &job.delta, &job.dead);
                drop(base);
                let old = {
                    let _w = shared.write_lock();
                    shared.install(&job, new)
                };
                drop(job);
                if let Some(old) = old {
                    retire(old);
                }
            });
        match spawned {
            // A previous merge thread has published (the frozen layer was empty) or been
            // superseded: detaching it is fine.
            Ok(h) => *self.merging() = Some(h),
            Err(e) => {
                tracing::warn!(error = %e, "prefix index: no merge thread; merging inline");
                self.shared
                    .install(&frozen, merge(&snap.base, &frozen.delta, &frozen.dead));
            }
        }
    }

    /// Adds a current key; a key ID already current is left as is.
    pub fn insert(&self, entry: IndexEntry) {
        self.insert_many(std::iter::once(entry));
    }

    /// Adds many current keys with one publication (bulk escrow). O(k log k + delta): the
    /// new keys are sorted once and merged into the delta (not inserted one by one).
    pub fn insert_many(&self, entries: impl IntoIterator<Item = IndexEntry>) {
        self.wait_if_overlapping();
        let _w = self.write_lock();
        let snap = self.shared.current.load_full();
        let mut new: Vec<IndexEntry> = entries
            .into_iter()
            .filter(|e| snap.below(e.key_id).is_none())
            .collect();
        // Stable: of a key ID given twice, the first entry wins.
        new.sort_by_key(|e| e.key_id);
        new.dedup_by_key(|e| e.key_id);
        if new.is_empty() {
            return;
        }
        let mut delta = Vec::with_capacity(snap.delta.len() + new.len());
        let (mut old, mut add) = (snap.delta.iter().peekable(), new.iter().peekable());
        let mut added = false;
        loop {
            match (old.peek(), add.peek()) {
                (Some(o), Some(a)) if o.key_id < a.key_id => delta.extend(old.next()),
                // A key ID already in the delta stays as it is.
                (Some(o), Some(a)) if o.key_id == a.key_id => {
                    delta.extend(old.next());
                    add.next();
                }
                (_, Some(_)) => {
                    delta.extend(add.next());
                    added = true;
                }
                (Some(_), None) => delta.extend(old.next()),
                (None, None) => break,
            }
        }
        if added {
            self.publish(&snap, delta, snap.dead.clone());
        }
    }

    /// Removes a key that was superseded; returns whether it was present.
    pub fn supersede(&self, key_id: u128) -> bool {
        self.wait_if_overlapping();
        let _w = self.write_lock();
        let snap = self.shared.current.load_full();
        if let Ok(pos) = snap.delta_pos(key_id) {
            let mut delta = snap.delta.clone();
            delta.remove(pos);
            self.publish(&snap, delta, snap.dead.clone());
            return true;
        }
        if snap.below(key_id).is_none() {
            return false;
        }
        let mut dead = snap.dead.clone();
        if let Err(pos) = dead.binary_search(&key_id) {
            dead.insert(pos, key_id);
        }
        self.publish(&snap, snap.delta.clone(), dead);
        true
    }

    /// All current keys whose first 8 digits are `prefix`, in key-ID order.
    pub fn lookup_prefix(&self, prefix: u32) -> Vec<IndexEntry> {
        let mut out = Vec::new();
        self.for_each_prefix(prefix, |e| out.push(*e));
        out
    }

    /// Calls `f` for every current key with this prefix, in key-ID order; returns how many.
    /// No allocation: the form a server loop or a benchmark uses.
    pub fn for_each_prefix(&self, prefix: u32, mut f: impl FnMut(&IndexEntry)) -> usize {
        let snap = self.shared.current.load();
        let lo = u128::from(prefix) << 96;
        let hi = lo | ((1u128 << 96) - 1);
        if snap.base_only() {
            return snap.base.for_each_in(lo, hi, f);
        }
        let base = snap.base.range(lo, hi);
        let frozen = snap
            .frozen
            .as_ref()
            .map_or(&[][..], |fr| sorted_range(&fr.delta, lo, hi));
        // Merge the three sorted runs (their current key IDs are disjoint), skipping
        // superseded keys of the lower two.
        let mut base = base.filter(|e| !snap.base_dead(e.key_id)).peekable();
        let mut frozen = frozen.iter().filter(|e| !snap.is_dead(e.key_id)).peekable();
        let mut delta = sorted_range(&snap.delta, lo, hi).iter().peekable();
        let mut n = 0;
        loop {
            let k = |e: Option<&&IndexEntry>| e.map_or(u128::MAX, |e| e.key_id);
            let (kb, kf, kd) = (k(base.peek()), k(frozen.peek()), k(delta.peek()));
            // The upper layer wins a tie (there is none while the layers stay disjoint).
            let e = if delta.peek().is_some() && kd <= kf && kd <= kb {
                base.next_if(|e| e.key_id == kd);
                frozen.next_if(|e| e.key_id == kd);
                delta.next()
            } else if frozen.peek().is_some() && kf <= kb {
                base.next_if(|e| e.key_id == kf);
                frozen.next()
            } else {
                base.next()
            };
            match e {
                Some(e) => {
                    f(e);
                    n += 1;
                }
                None => break,
            }
        }
        n
    }

    /// The current key with exactly this ID.
    pub fn lookup_full(&self, key_id: u128) -> Option<IndexEntry> {
        let snap = self.shared.current.load();
        if let Some(e) = snap.below(key_id) {
            return Some(*e);
        }
        if snap.delta.is_empty() {
            return None;
        }
        snap.delta_pos(key_id)
            .ok()
            .and_then(|i| snap.delta.get(i).copied())
    }

    /// Independent prefix lookups as a server sees many queries in flight. While query `q`
    /// is scanned, the lines holding the home slot of query `q + PREFETCH_DISTANCE` are
    /// prefetched, so up to that many lookups' memory accesses overlap (a prefetch retires
    /// at once; a plain load would hold the CPU's reorder window until its line came back).
    /// Calls `f(query_index, entry)` for every match, in query order; returns the number of
    /// matches.
    pub fn lookup_prefix_batch(
        &self,
        prefixes: &[u32],
        f: impl FnMut(usize, &IndexEntry),
    ) -> usize {
        self.lookup_prefix_batch_at(prefixes, PREFETCH_DISTANCE, f)
    }

    /// As [`PrefixIndex::lookup_prefix_batch`] with another prefetch distance (0: none), for
    /// benchmarks.
    pub fn lookup_prefix_batch_at(
        &self,
        prefixes: &[u32],
        distance: usize,
        mut f: impl FnMut(usize, &IndexEntry),
    ) -> usize {
        let snap = self.shared.current.load();
        if !snap.base_only() {
            let mut n = 0;
            for (q, &p) in prefixes.iter().enumerate() {
                n += self.for_each_prefix(p, |e| f(q, e));
            }
            return n;
        }
        let base = &snap.base;
        for &p in prefixes.iter().take(distance) {
            base.prefetch(u128::from(p) << 96);
        }
        let mut n = 0;
        for (q, &p) in prefixes.iter().enumerate() {
            if let Some(&ahead) = prefixes.get(q + distance).filter(|_| distance > 0) {
                base.prefetch(u128::from(ahead) << 96);
            }
            let lo = u128::from(p) << 96;
            n += base.for_each_in(lo, lo | ((1u128 << 96) - 1), |e| f(q, e));
        }
        n
    }

    /// Cache lines of the base a lookup of `prefix` reads: from its home slot's line to the
    /// line of the first slot past the prefix (the scan's last read), for benchmarks (this
    /// VM has no hardware cache counters).
    pub fn lines_read(&self, prefix: u32) -> usize {
        let snap = self.shared.current.load();
        let base = &snap.base;
        let lo = u128::from(prefix) << 96;
        let last = base.slots.len().saturating_sub(1);
        let start = base.home(lo).min(last);
        // The first slot past the prefix: the first key ID >= the next prefix's first.
        let end = (u128::from(prefix) + 1)
            .checked_shl(96)
            .filter(|_| prefix < u32::MAX)
            .map_or(last, |next| base.first_at_least(next).min(last));
        let line = |slot: usize| {
            (base.slots.as_ptr() as usize + slot * std::mem::size_of::<IndexEntry>()) / 64
        };
        line(end.max(start)) - line(start) + 1
    }

    /// Number of current keys.
    pub fn len(&self) -> usize {
        self.shared.current.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sizes and memory of the current snapshot.
    pub fn stats(&self) -> IndexStats {
        let snap = self.shared.current.load();
        let (fdelta, fdead) = snap
            .frozen
            .as_ref()
            .map_or((0, 0), |f| (f.delta.len(), f.dead.len()));
        let (fdelta_cap, fdead_cap) = snap
            .frozen
            .as_ref()
            .map_or((0, 0), |f| (f.delta.capacity(), f.dead.capacity()));
        IndexStats {
            keys: snap.len(),
            base_keys: snap.base.keys,
            delta_keys: snap.delta.len() + fdelta,
            dead_keys: snap.dead.len() + fdead,
            bucket_bits: 0,
            heap_bytes: snap.base.bytes()
                + (snap.delta.capacity() + fdelta_cap) * std::mem::size_of::<IndexEntry>()
                + (snap.dead.capacity() + fdead_cap) * std::mem::size_of::<u128>(),
            merging: snap.frozen.is_some(),
        }
    }

    /// Merges everything into a new base now (start-up after bulk loads, benchmarks): waits
    /// for a running background merge, then merges the delta on this thread.
    pub fn compact(&self) {
        loop {
            self.finish_merge();
            let _w = self.write_lock();
            let snap = self.shared.current.load_full();
            if snap.frozen.is_some() {
                // Another writer started a merge in between: wait for that one too.
                continue;
            }
            if snap.delta.is_empty() && snap.dead.is_empty() {
                return;
            }
            let base = merge(&snap.base, &snap.delta, &snap.dead);
            self.shared.current.store(Arc::new(Snapshot {
                base: Arc::new(base),
                frozen: None,
                delta: Vec::new(),
                dead: Vec::new(),
            }));
            return;
        }
    }
}

/// A new base: `base` minus `dead`, plus `delta` (both sorted, key IDs disjoint from the
/// current base keys).
fn merge(base: &Base, delta: &[IndexEntry], dead: &[u128]) -> Base {
    let mut out = huge_page_vec(slot_capacity(
        base.keys + delta.len() - dead.len().min(base.keys),
    ));
    // `dead` is sorted and the base is walked in order: one cursor, not a binary search per
    // base key (that was O(n log d): 28 s of a merge at 100M keys).
    let mut dead = dead.iter().peekable();
    let mut live = |e: &IndexEntry| {
        while dead.next_if(|&&d| d < e.key_id).is_some() {}
        dead.next_if(|&&d| d == e.key_id).is_none()
    };
    let (mut old, mut new) = (base.entries().peekable(), delta.iter().peekable());
    loop {
        match (old.peek(), new.peek()) {
            (Some(b), Some(d)) if b.key_id < d.key_id => {
                if live(b) {
                    out.push(**b);
                }
                old.next();
            }
            (Some(b), Some(d)) if b.key_id == d.key_id => {
                // A superseded base key escrowed again: the delta entry is current.
                out.push(**d);
                old.next();
                new.next();
            }
            (_, Some(d)) => {
                out.push(**d);
                new.next();
            }
            (Some(b), None) => {
                if live(b) {
                    out.push(**b);
                }
                old.next();
            }
            (None, None) => break,
        }
    }
    Base::from_sorted_unique(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::keyid::prefix_of;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u128),
        Supersede(u128),
        /// Supersedes the n-th key ever added (modulo their count): usually a current one.
        SupersedeNth(usize),
        Compact,
        /// Background merges started from now on wait (the frozen state stays visible).
        Hold,
        /// Lets a held merge run and waits until its base is published.
        Release,
    }

    /// Key IDs from a small prefix space so collisions (many matches) are common; a few
    /// prefixes are crowded enough to take the binary-search path, and the low bits vary in
    /// the bucket bits too.
    fn key_id() -> impl Strategy<Value = u128> {
        prop_oneof![
            (0u32..8, 0u128..64).prop_map(|(p, low)| ((p as u128) << 96) | low),
            (0u32..8, any::<u32>(), 0u128..4)
                .prop_map(|(p, mid, low)| ((p as u128) << 96) | ((mid as u128) << 64) | low),
            any::<u128>(),
            Just(u128::MAX),
            Just(0u128),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => key_id().prop_map(Op::Insert),
            1 => key_id().prop_map(Op::Supersede),
            2 => any::<usize>().prop_map(Op::SupersedeNth),
            1 => Just(Op::Compact),
            1 => Just(Op::Hold),
            1 => Just(Op::Release),
        ]
    }

    fn entry(k: u128, row: usize) -> IndexEntry {
        IndexEntry {
            key_id: k,
            key_row: row as i64,
            device_row: (k % 3) as i64,
        }
    }

    type Model = BTreeMap<u128, (IndexEntry, bool)>;

    fn check(index: &PrefixIndex, model: &Model, probes: &[u128]) -> Result<(), TestCaseError> {
        let current: Vec<IndexEntry> = model
            .values()
            .filter(|(_, s)| !s)
            .map(|(e, _)| *e)
            .collect();
        let mut prefixes: Vec<u32> = probes.iter().map(|k| prefix_of(*k)).collect();
        prefixes.extend(current.iter().map(|e| prefix_of(e.key_id)).take(20));
        for &p in &prefixes {
            let expected: Vec<IndexEntry> = current
                .iter()
                .filter(|e| prefix_of(e.key_id) == p)
                .copied()
                .collect();
            prop_assert_eq!(index.lookup_prefix(p), expected.clone());
            let mut seen = 0;
            prop_assert_eq!(index.for_each_prefix(p, |_| seen += 1), expected.len());
            prop_assert_eq!(seen, expected.len());
        }
        // The batch form agrees with single lookups, at any prefetch distance.
        let singles: Vec<(usize, IndexEntry)> = prefixes
            .iter()
            .enumerate()
            .flat_map(|(q, &p)| index.lookup_prefix(p).into_iter().map(move |e| (q, e)))
            .collect();
        for distance in [PREFETCH_DISTANCE, 0, 1, 3] {
            let mut batch: Vec<(usize, IndexEntry)> = Vec::new();
            let n = index.lookup_prefix_batch_at(&prefixes, distance, |q, e| batch.push((q, *e)));
            prop_assert_eq!(n, singles.len());
            prop_assert_eq!(&batch, &singles);
        }
        for probe in probes.iter().chain(model.keys()) {
            let full = model.get(probe).filter(|(_, sup)| !sup).map(|(e, _)| *e);
            prop_assert_eq!(index.lookup_full(*probe), full);
        }
        prop_assert_eq!(index.len(), current.len());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn agrees_with_brute_force(
            initial in proptest::collection::vec(key_id(), 0..40),
            ops in proptest::collection::vec(op(), 0..200),
            probes in proptest::collection::vec(key_id(), 1..20),
            per_bucket in 1usize..6,
            delta_min in prop_oneof![Just(1usize), Just(4), Just(1024)],
            held in any::<bool>(),
        ) {
            // Built from a list (with duplicates: the first entry of a key ID wins).
            let mut model: Model = BTreeMap::new();
            let mut init = Vec::new();
            for (row, k) in initial.iter().enumerate() {
                init.push(entry(*k, row));
                model.entry(*k).or_insert((entry(*k, row), false));
            }
            let mut index = PrefixIndex::with_keys_per_bucket(init, per_bucket);
            index.delta_min = delta_min;
            index.gate.set(held);
            check(&index, &model, &probes)?;
            for (row, op) in ops.iter().enumerate() {
                let row = row + 1000;
                match op {
                    Op::Insert(k) => {
                        // A superseded key ID is never re-escrowed (the store refuses it).
                        if !model.contains_key(k) {
                            model.insert(*k, (entry(*k, row), false));
                            index.insert(entry(*k, row));
                        } else if !model[k].1 {
                            // Inserting a current key again leaves it as is.
                            index.insert(entry(*k, row));
                        }
                    }
                    Op::SupersedeNth(i) => {
                        let n = model.len().max(1);
                        if let Some((&k, (_, sup))) = model.iter_mut().nth(i % n) {
                            prop_assert_eq!(index.supersede(k), !*sup);
                            *sup = true;
                        }
                    }
                    Op::Supersede(k) => {
                        let was_current = matches!(model.get(k), Some((_, false)));
                        prop_assert_eq!(index.supersede(*k), was_current);
                        if let Some(m) = model.get_mut(k) { m.1 = true; }
                    }
                    Op::Compact => index.compact(),
                    Op::Hold => index.gate.set(true),
                    Op::Release => {
                        index.finish_merge();
                        prop_assert!(index.shared.current.load().frozen.is_none());
                    }
                }
                // Every state, including a merge in the background or held frozen.
                check(&index, &model, &probes)?;
            }
            check(&index, &model, &probes)?;
            // Rebuilding from the current entries gives the same answers.
            let rebuilt = PrefixIndex::from_entries(
                model.values().filter(|(_, s)| !s).map(|(e, _)| *e),
            );
            check(&rebuilt, &model, &probes)?;
            index.compact();
            check(&index, &model, &probes)?;
        }
    }

    /// Random key IDs at full size take the scan-from-home path (the proptest's crowded
    /// keys mostly take the binary-search one): both agree with a sorted brute force.
    #[test]
    fn random_keys_agree_with_sorted_scan() {
        let mut rng = proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        );
        let mut next = || (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
        let keys: Vec<u128> = (0..200_000).map(|_| next()).collect();
        let index = PrefixIndex::from_entries(keys.iter().enumerate().map(|(i, &k)| entry(k, i)));
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        let probes: Vec<u128> = keys
            .iter()
            .step_by(97)
            .copied()
            .chain((0..2000).map(|_| next()))
            .collect();
        for k in probes {
            let p = prefix_of(k);
            let lo = sorted.partition_point(|&x| prefix_of(x) < p);
            let hi = sorted.partition_point(|&x| prefix_of(x) <= p);
            let got: Vec<u128> = index.lookup_prefix(p).iter().map(|e| e.key_id).collect();
            assert_eq!(got, sorted[lo..hi].to_vec(), "prefix {p:08x}");
            assert_eq!(
                index.lookup_full(k).map(|e| e.key_id),
                sorted.binary_search(&k).ok().map(|_| k)
            );
        }
        assert!(index.stats().heap_bytes as f64 / keys.len() as f64 <= 40.0);
    }

    #[test]
    fn many_matches_of_one_prefix() {
        let entries: Vec<IndexEntry> = (0..5000u128)
            .map(|i| entry((0xABCD_EF01u128 << 96) | (i * 7919), i as usize))
            .chain(
                (0..5000u128)
                    .map(|i| entry(i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835), 0)),
            )
            .collect();
        let index = PrefixIndex::from_entries(entries);
        let v = index.lookup_prefix(0xABCD_EF01);
        assert!(v.len() >= 5000);
        assert!(v.windows(2).all(|w| w[0].key_id < w[1].key_id));
        assert!(index.lookup_full((0xABCD_EF01u128 << 96) | 7919).is_some());
        assert!(index.lookup_full((0xABCD_EF01u128 << 96) | 7920).is_none());
        assert!(index.lookup_prefix(0xABCD_EF02).len() <= 1);
    }

    #[test]
    fn memory_per_key_is_small() {
        let n = 1 << 16;
        let entries: Vec<IndexEntry> = (0..n as u128)
            .map(|i| {
                entry(
                    i.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
                    i as usize,
                )
            })
            .collect();
        let index = PrefixIndex::from_entries(entries);
        let s = index.stats();
        assert_eq!(s.keys, n);
        assert!(s.heap_bytes as f64 / n as f64 <= 40.0, "{s:?}");
    }

    fn frozen(index: &PrefixIndex) -> bool {
        index.shared.current.load().frozen.is_some()
    }

    /// A lookup while a merge is held in the background sees every current key exactly
    /// once: keys of the base, of the frozen delta and of the new delta, with supersessions
    /// landed in the frozen layer and after it; and the published base keeps them.
    #[test]
    fn lookup_during_background_merge_sees_each_key_once() {
        let k = |i: u128| (7u128 << 96) | (i * 16);
        let mut model: Model = BTreeMap::new();
        let base: Vec<IndexEntry> = (0..4).map(|i| entry(k(i), i as usize)).collect();
        for e in &base {
            model.insert(e.key_id, (*e, false));
        }
        let mut index = PrefixIndex::from_entries(base);
        index.delta_min = 1;
        index.gate.set(true);
        let limit = delta_limit(4, 1);
        // Fill the delta past its limit; one supersession of a base key lands in it too.
        assert!(index.supersede(k(1)));
        model.get_mut(&k(1)).unwrap().1 = true;
        let mut i = 100;
        while !frozen(&index) {
            index.insert(entry(k(i), i as usize));
            model.insert(k(i), (entry(k(i), i as usize), false));
            i += 1;
        }
        assert_eq!(index.stats().delta_keys, limit);
        let probes = [k(0), k(1), k(100), k(101), k(500)];
        check(&index, &model, &probes).unwrap();
        // Writers go on without waiting: supersede a base key and a frozen delta key, add
        // new keys and supersede one of them.
        assert!(index.supersede(k(2)));
        assert!(index.supersede(k(101)));
        assert!(!index.supersede(k(1)));
        for (j, e) in [k(500), k(501), k(3) + 1].into_iter().enumerate() {
            index.insert(entry(e, 900 + j));
            model.insert(e, (entry(e, 900 + j), false));
        }
        assert!(index.supersede(k(501)));
        for key in [k(2), k(101), k(501)] {
            model.get_mut(&key).unwrap().1 = true;
        }
        // A key current in the frozen layer is not added again.
        index.insert(entry(k(100), 0));
        assert!(frozen(&index));
        check(&index, &model, &probes).unwrap();
        let v = index.lookup_prefix(7);
        assert!(v.windows(2).all(|w| w[0].key_id < w[1].key_id));
        assert_eq!(v.len(), model.values().filter(|(_, s)| !s).count());
        // Readers on other threads during the held merge.
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..100 {
                        assert_eq!(index.lookup_prefix(7), v);
                    }
                });
            }
        });
        // Let it run: the new base holds the frozen layer; later writes stay on top.
        index.finish_merge();
        assert!(!frozen(&index));
        let s = index.stats();
        assert_eq!(s.base_keys, 4 - 1 + limit);
        assert_eq!((s.delta_keys, s.dead_keys), (2, 2));
        check(&index, &model, &probes).unwrap();
        index.compact();
        assert_eq!((index.stats().delta_keys, index.stats().dead_keys), (0, 0));
        check(&index, &model, &probes).unwrap();
    }

    /// With the merge held and writes outrunning it, a writer waits for the merge (and does
    /// not deadlock) once the new delta passes OVERLAP_FACTOR limits.
    #[test]
    fn writer_waits_only_for_an_overlapping_merge() {
        let mut index = PrefixIndex::new();
        index.delta_min = 4;
        index.gate.set(true);
        for i in 0..100u128 {
            index.insert(entry(i << 64, i as usize));
            let s = index.shared.current.load();
            assert!(s.delta.len() <= OVERLAP_FACTOR * delta_limit(s.base.keys, 4) + 1);
        }
        assert_eq!(index.len(), 100);
        index.compact();
        assert_eq!(index.stats().base_keys, 100);
    }

    #[test]
    fn concurrent_readers_see_consistent_entries() {
        let index = std::sync::Arc::new(PrefixIndex::new());
        let writer = {
            let index = index.clone();
            std::thread::spawn(move || {
                for i in 0..3000u128 {
                    index.insert(IndexEntry {
                        key_id: (7u128 << 96) | i,
                        key_row: i as i64,
                        device_row: 1,
                    });
                    if i % 3 == 2 {
                        // Supersede an older one: readers must never see a torn state.
                        assert!(index.supersede((7u128 << 96) | (i - 2)));
                    }
                }
            })
        };
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let index = index.clone();
                std::thread::spawn(move || {
                    let mut last_max = 0u128;
                    for _ in 0..500 {
                        let v = index.lookup_prefix(7);
                        assert!(v.windows(2).all(|w| w[0].key_id < w[1].key_id));
                        // Keys are added in increasing order: the newest never goes back.
                        let max = v.last().map(|e| e.key_id).unwrap_or(0);
                        assert!(max >= last_max);
                        last_max = max;
                    }
                })
            })
            .collect();
        writer.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(index.lookup_prefix(7).len(), 2000);
    }
}
