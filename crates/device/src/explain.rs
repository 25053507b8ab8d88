//! Why a boot would enter recovery: which profile PCRs differ between two logs and the
//! events that made the difference.

use std::fmt;

use eventlog::diff::LogDiff;
use eventlog::{Event, EventLog, EventType, HashAlg};

use super::{MeasuredBoot, Profile};

/// One differing PCR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrDifference {
    /// PCR index.
    pub pcr: u32,
    /// Value replayed from the first log, in [`Explanation::bank`].
    pub before: Vec<u8>,
    /// Value replayed from the second log.
    pub after: Vec<u8>,
    /// Events of this PCR only in the first log, described.
    pub removed: Vec<String>,
    /// Events of this PCR only in the second log, described.
    pub added: Vec<String>,
}

/// The result of [`explain`] or [`explain_boots`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The profile compared.
    pub profile: Profile,
    /// The bank the values are from (the one sealed to).
    pub bank: HashAlg,
    /// Profile PCRs that differ, ascending. Empty: the TPM would unseal.
    pub differences: Vec<PcrDifference>,
}

impl Explanation {
    /// Whether the TPM protector would fail (some profile PCR differs).
    pub fn triggers_recovery(&self) -> bool {
        !self.differences.is_empty()
    }

    /// The differing PCR indices.
    pub fn pcrs(&self) -> Vec<u32> {
        self.differences.iter().map(|d| d.pcr).collect()
    }
}

/// Events in `a` not matched one-for-one in `b`, in `a`'s order, described.
fn unmatched(a: &[&Event], b: &[&Event]) -> Vec<String> {
    let mut used = vec![false; b.len()];
    let mut out = Vec::new();
    for e in a {
        match b.iter().enumerate().position(|(i, x)| !used[i] && x == e) {
            Some(i) => used[i] = true,
            None => out.push(describe_event(e)),
        }
    }
    out
}

/// Compares two boots at their unseal points under `profile` (what the TPM compares), in
/// the bank the first one seals in. Works for any log, SHA-1-only ones included.
pub fn explain_boots(before: &MeasuredBoot, after: &MeasuredBoot, profile: Profile) -> Explanation {
    let (b, a) = (&before.log, &after.log);
    let diff = LogDiff::between(
        b,
        &before.at_unseal(),
        &b.records[..before.unseal_index.min(b.records.len())],
        a,
        &after.at_unseal(),
        &a.records[..after.unseal_index.min(a.records.len())],
    );
    let describe = |r: &eventlog::diff::NamedRecord| {
        if r.number == 0 {
            format!("(new) {}", r.description)
        } else {
            format!("#{} {}", r.number, r.description)
        }
    };
    let differences = diff
        .pcrs
        .iter()
        .filter(|d| profile.pcrs().contains(&d.pcr))
        .map(|d| PcrDifference {
            pcr: d.pcr,
            before: hex::decode(&d.before).unwrap_or_default(),
            after: hex::decode(&d.after).unwrap_or_default(),
            removed: d.removed.iter().map(describe).collect(),
            added: d.added.iter().map(describe).collect(),
        })
        .collect();
    Explanation {
        profile,
        bank: diff.bank,
        differences,
    }
}

/// Compares two boots' logs under `profile`.
pub fn explain(before: &EventLog, after: &EventLog, profile: Profile) -> Explanation {
    let (pb, pa) = (before.replay(), after.replay());
    let differences = profile
        .pcrs()
        .iter()
        .filter_map(|&pcr| {
            let (b, a) = (pb.sha256(pcr)?, pa.sha256(pcr)?);
            if a == b {
                return None;
            }
            let eb: Vec<&Event> = before.events_for(pcr).filter(|e| e.is_extended()).collect();
            let ea: Vec<&Event> = after.events_for(pcr).filter(|e| e.is_extended()).collect();
            Some(PcrDifference {
                pcr,
                before: b.to_vec(),
                after: a.to_vec(),
                removed: unmatched(&eb, &ea),
                added: unmatched(&ea, &eb),
            })
        })
        .collect();
    Explanation {
        profile,
        bank: HashAlg::Sha256,
        differences,
    }
}

fn utf16_name(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// A one-line human description of an event.
pub fn describe_event(e: &Event) -> String {
    let digest = hex::encode(&e.digests.sha256[..8]);
    let detail = match e.event_type {
        EventType::EV_EFI_VARIABLE_DRIVER_CONFIG
        | EventType::EV_EFI_VARIABLE_BOOT
        | EventType::EV_EFI_VARIABLE_AUTHORITY => {
            // UEFI_VARIABLE_DATA: GUID, name length (u64, UTF-16 units), data length, name.
            e.data.get(16..24).and_then(|n| {
                let n = usize::try_from(u64::from_le_bytes(n.try_into().ok()?)).ok()?;
                let name = e.data.get(32..32usize.checked_add(n.checked_mul(2)?)?)?;
                Some(utf16_name(name))
            })
        }
        EventType::EV_EFI_ACTION | EventType::EV_IPL | EventType::EV_POST_CODE => {
            std::str::from_utf8(&e.data).ok().map(str::to_owned)
        }
        EventType::EV_S_CRTM_VERSION => Some(utf16_name(&e.data)),
        EventType::EV_EVENT_TAG => e
            .data
            .get(8..)
            .and_then(|d| std::str::from_utf8(d).ok())
            .map(str::to_owned),
        _ => None,
    };
    match detail {
        Some(d) if !d.is_empty() && d.chars().all(|c| !c.is_control()) => {
            format!("{} {d:?} (sha256 {digest}..)", e.event_type)
        }
        _ => format!("{} (sha256 {digest}..)", e.event_type),
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.differences.is_empty() {
            return writeln!(
                f,
                "{}: no PCR of the profile changed; the TPM would unseal",
                self.profile
            );
        }
        writeln!(
            f,
            "{}: {} PCR(s) changed; the TPM would refuse to unseal (recovery)",
            self.profile,
            self.differences.len()
        )?;
        for d in &self.differences {
            if self.bank == HashAlg::Sha256 {
                writeln!(f, "PCR {}:", d.pcr)?;
            } else {
                writeln!(f, "PCR {} ({} bank):", d.pcr, self.bank)?;
            }
            writeln!(f, "  before 0x{}", hex::encode(&d.before))?;
            writeln!(f, "  after  0x{}", hex::encode(&d.after))?;
            if d.removed.is_empty() && d.added.is_empty() {
                writeln!(f, "  same events in a different order")?;
            }
            for e in &d.removed {
                writeln!(f, "  - {e}")?;
            }
            for e in &d.added {
                writeln!(f, "  + {e}")?;
            }
        }
        Ok(())
    }
}
