//! Which PCRs differ between two real logs, and the records behind each difference.

use std::fmt;

use serde::Serialize;

use super::describe::describe;
use super::tcg::{PcrBanks, Record, TcgLog};
use super::{EventType, HashAlg};

/// A record, named for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedRecord {
    /// Record number in its log (0 for a record added by an edit).
    pub number: usize,
    /// PCR index.
    pub pcr: u32,
    /// Event type.
    pub event_type: EventType,
    /// [`describe`] of the record.
    pub description: String,
}

impl From<&Record> for NamedRecord {
    fn from(r: &Record) -> Self {
        Self {
            number: r.number,
            pcr: r.pcr,
            event_type: r.event_type,
            description: describe(r),
        }
    }
}

/// One PCR that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PcrDiff {
    /// PCR index.
    pub pcr: u32,
    /// Value from the first log in [`LogDiff::bank`], lowercase hex.
    pub before: String,
    /// Value from the second log.
    pub after: String,
    /// Extended records of this PCR only in the first log.
    pub removed: Vec<NamedRecord>,
    /// Extended records of this PCR only in the second log.
    pub added: Vec<NamedRecord>,
}

/// The differences between two logs' replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogDiff {
    /// The bank whose values are shown (SHA-256 when both logs have it).
    pub bank: HashAlg,
    /// PCRs that differ in any bank both logs have, ascending.
    pub pcrs: Vec<PcrDiff>,
}

impl LogDiff {
    /// Compares the full replays of `a` and `b`.
    pub fn new(a: &TcgLog, b: &TcgLog) -> Self {
        Self::between(a, &a.replay(), &a.records, b, &b.replay(), &b.records)
    }

    /// Compares two replays (`pa` of `ra`, `pb` of `rb`, e.g. log prefixes up to the unseal
    /// point).
    pub fn between(
        a: &TcgLog,
        pa: &PcrBanks,
        ra: &[Record],
        b: &TcgLog,
        pb: &PcrBanks,
        rb: &[Record],
    ) -> Self {
        let bank = if b.banks.contains(&a.policy_bank()) {
            a.policy_bank()
        } else {
            a.banks
                .iter()
                .copied()
                .find(|x| b.banks.contains(x))
                .unwrap_or(a.policy_bank())
        };
        let pcrs = pa
            .differing(pb)
            .into_iter()
            .map(|pcr| {
                let ea: Vec<&Record> = ra
                    .iter()
                    .filter(|e| e.pcr == pcr && e.is_extended())
                    .collect();
                let eb: Vec<&Record> = rb
                    .iter()
                    .filter(|e| e.pcr == pcr && e.is_extended())
                    .collect();
                PcrDiff {
                    pcr,
                    before: hex::encode(pa.get(bank, pcr).unwrap_or_default()),
                    after: hex::encode(pb.get(bank, pcr).unwrap_or_default()),
                    removed: unmatched(&ea, &eb, bank),
                    added: unmatched(&eb, &ea, bank),
                }
            })
            .collect();
        Self { bank, pcrs }
    }

    /// The differing PCR indices.
    pub fn pcr_indices(&self) -> Vec<u32> {
        self.pcrs.iter().map(|d| d.pcr).collect()
    }
}

fn same(x: &Record, y: &Record, bank: HashAlg) -> bool {
    x.event_type == y.event_type && x.data == y.data && x.digest(bank) == y.digest(bank)
}

/// Records of `a` not matched one-for-one in `b`, in `a`'s order.
fn unmatched(a: &[&Record], b: &[&Record], bank: HashAlg) -> Vec<NamedRecord> {
    let mut used = vec![false; b.len()];
    let mut out = Vec::new();
    for e in a {
        match (0..b.len()).find(|&i| !used[i] && same(e, b[i], bank)) {
            Some(i) => used[i] = true,
            None => out.push(NamedRecord::from(*e)),
        }
    }
    out
}

impl fmt::Display for LogDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pcrs.is_empty() {
            return writeln!(f, "no PCR differs");
        }
        for d in &self.pcrs {
            writeln!(
                f,
                "PCR {} ({}): {} -> {}",
                d.pcr, self.bank, d.before, d.after
            )?;
            for r in &d.removed {
                writeln!(f, "  - #{} {}", r.number, r.description)?;
            }
            for r in &d.added {
                writeln!(f, "  + #{} {}", r.number, r.description)?;
            }
        }
        Ok(())
    }
}
