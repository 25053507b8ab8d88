//! In-memory prefix index over all *current* (not superseded) key IDs.
//!
//! Users type the first 8 hex digits of a key ID; those are the top 32 bits of the `u128`
//! display-order GUID, so the index maps `u32 -> candidates`. It is built from the store at
//! start and kept current on escrow and supersession. A `RwLock` keeps concurrent readers
//! correct; it is deliberately simple so it can be tuned later behind the same API.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::keyid::prefix_of;

/// One current key: its ID and where it lives in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IndexEntry {
    pub key_id: u128,
    /// Row id of the key record.
    pub key_row: i64,
    /// Row id of the device the key belongs to.
    pub device_row: i64,
}

#[derive(Debug, Default)]
pub struct PrefixIndex {
    inner: RwLock<HashMap<u32, Vec<IndexEntry>>>,
}

impl PrefixIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds an index from a list of current keys.
    pub fn from_entries(entries: impl IntoIterator<Item = IndexEntry>) -> Self {
        let mut map: HashMap<u32, Vec<IndexEntry>> = HashMap::new();
        for e in entries {
            let v = map.entry(prefix_of(e.key_id)).or_default();
            if !v.iter().any(|x| x.key_id == e.key_id) {
                v.push(e);
            }
        }
        PrefixIndex {
            inner: RwLock::new(map),
        }
    }

    // A poisoned lock only means another thread panicked mid-update of a Vec push/remove;
    // the map itself stays structurally valid, so keep serving.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u32, Vec<IndexEntry>>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u32, Vec<IndexEntry>>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a current key; a key ID already present is left as is.
    pub fn insert(&self, entry: IndexEntry) {
        let mut map = self.write();
        let v = map.entry(prefix_of(entry.key_id)).or_default();
        if !v.iter().any(|x| x.key_id == entry.key_id) {
            v.push(entry);
        }
    }

    /// Removes a key that was superseded; returns whether it was present.
    pub fn supersede(&self, key_id: u128) -> bool {
        let mut map = self.write();
        let p = prefix_of(key_id);
        let Some(v) = map.get_mut(&p) else {
            return false;
        };
        let before = v.len();
        v.retain(|x| x.key_id != key_id);
        let removed = v.len() != before;
        if v.is_empty() {
            map.remove(&p);
        }
        removed
    }

    /// All current keys whose first 8 digits are `prefix`, in key-ID order.
    pub fn lookup_prefix(&self, prefix: u32) -> Vec<IndexEntry> {
        let mut v = self.read().get(&prefix).cloned().unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// The current key with exactly this ID.
    pub fn lookup_full(&self, key_id: u128) -> Option<IndexEntry> {
        self.read()
            .get(&prefix_of(key_id))
            .and_then(|v| v.iter().find(|x| x.key_id == key_id).copied())
    }

    /// Number of current keys.
    pub fn len(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u128),
        Supersede(u128),
    }

    /// Key IDs from a small prefix space so collisions are common.
    fn key_id() -> impl Strategy<Value = u128> {
        (0u32..8, 0u128..16).prop_map(|(p, low)| ((p as u128) << 96) | low)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => key_id().prop_map(Op::Insert),
            1 => key_id().prop_map(Op::Supersede),
        ]
    }

    proptest! {
        #[test]
        fn agrees_with_brute_force(ops in proptest::collection::vec(op(), 0..200), probes in proptest::collection::vec(key_id(), 1..20)) {
            let index = PrefixIndex::new();
            // Brute-force model: every key ever inserted, with its superseded flag.
            let mut model: BTreeMap<u128, (IndexEntry, bool)> = BTreeMap::new();
            for (row, op) in ops.iter().enumerate() {
                match op {
                    Op::Insert(k) => {
                        let e = IndexEntry { key_id: *k, key_row: row as i64, device_row: (*k % 3) as i64 };
                        // A superseded key ID is never re-escrowed (the store refuses it).
                        if !model.contains_key(k) {
                            model.insert(*k, (e, false));
                            index.insert(e);
                        }
                    }
                    Op::Supersede(k) => {
                        let was_current = matches!(model.get(k), Some((_, false)));
                        prop_assert_eq!(index.supersede(*k), was_current);
                        if let Some(m) = model.get_mut(k) { m.1 = true; }
                    }
                }
            }
            for probe in probes {
                let p = prefix_of(probe);
                let expected: Vec<IndexEntry> = model.values()
                    .filter(|(e, sup)| !sup && prefix_of(e.key_id) == p)
                    .map(|(e, _)| *e).collect();
                prop_assert_eq!(index.lookup_prefix(p), expected);
                let full = model.get(&probe).filter(|(_, sup)| !sup).map(|(e, _)| *e);
                prop_assert_eq!(index.lookup_full(probe), full);
            }
            prop_assert_eq!(index.len(), model.values().filter(|(_, s)| !s).count());
            // Rebuilding from the current entries gives the same answers.
            let rebuilt = PrefixIndex::from_entries(model.values().filter(|(_, s)| !s).map(|(e, _)| *e));
            for p in 0u32..8 {
                prop_assert_eq!(rebuilt.lookup_prefix(p), index.lookup_prefix(p));
            }
        }
    }

    #[test]
    fn concurrent_readers_see_consistent_entries() {
        let index = std::sync::Arc::new(PrefixIndex::new());
        let writer = {
            let index = index.clone();
            std::thread::spawn(move || {
                for i in 0..2000u128 {
                    index.insert(IndexEntry {
                        key_id: (7u128 << 96) | i,
                        key_row: i as i64,
                        device_row: 1,
                    });
                }
            })
        };
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let index = index.clone();
                std::thread::spawn(move || {
                    let mut last = 0;
                    for _ in 0..500 {
                        let v = index.lookup_prefix(7);
                        assert!(v.len() >= last, "entries never disappear without supersede");
                        assert!(v.windows(2).all(|w| w[0].key_id < w[1].key_id));
                        last = v.len();
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
