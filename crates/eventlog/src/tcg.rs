//! Real measured-boot logs as machines write them (Windows `C:\Windows\Logs\MeasuredBoot\*.log`,
//! Linux `/sys/kernel/security/tpm0/binary_bios_measurements`): read, replayed, edited.
//!
//! [`EventLog`] is the log *we* write (exactly SHA-1 + SHA-256, every record
//! complete). A [`TcgLog`] is whatever a firmware and an OS wrote:
//!
//! - **crypto-agile** (PFP 1.04 s9): a `Spec ID Event03` header naming any set of banks, then
//!   `TCG_PCR_EVENT2` records. Digests are matched to banks by their algorithm ID, not by
//!   position. A record whose DigestCount is *smaller* than the header's algorithm count
//!   (real Windows logs do this in PCR 11-14) is read with a [`Warning`]; its missing banks
//!   are not extended. Counts that would make the reader lose its place (larger than the
//!   header's, an algorithm the header does not list, the same algorithm twice) are errors.
//! - **SHA-1 only** (TCG 1.2 style, `TCG_PCR_EVENT` throughout), recognised by the first
//!   record not being a `Spec ID Event03` header.
//! - Windows' trailing **trust point** record (PCR index `0xFFFFFFFF`) is skipped with a
//!   warning: it is not a measurement.
//! - **StartupLocality** (EV_NO_ACTION in PCR 0, `StartupLocality\0` + u8): PCR 0 starts at
//!   `00..0L` instead of zero. PCR 17-22 start at all-ff.
//!
//! Errors are [`ParseError`]s with the byte offset and the record number; nothing here panics
//! on any input (fuzzed: `harness/fuzz`).

use std::collections::BTreeMap;
use std::fmt;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use super::wire::{Reader, SPEC_ID_SIGNATURE};
use super::{Event, EventLog, EventType, HashAlg, ParseError, ParseErrorKind, PCR_COUNT};

/// PCR index of Windows' trust point record at the end of a log.
pub const TRUST_POINT_PCR: u32 = 0xFFFF_FFFF;
/// Event data prefix of the StartupLocality EV_NO_ACTION event.
const STARTUP_LOCALITY_SIGNATURE: &[u8; 16] = b"StartupLocality\0";

/// How the records are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Spec ID Event03 header, then TCG_PCR_EVENT2 records.
    CryptoAgile,
    /// TCG_PCR_EVENT records throughout (SHA-1 bank only).
    Sha1,
}

/// One record of a real log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// Record number: 0 is the header (crypto-agile) or the first event (SHA-1 format).
    pub number: usize,
    /// Byte offset of the record in the file (0 for records we added when editing a log).
    pub offset: usize,
    /// PCR index (0-23).
    pub pcr: u32,
    /// Event type.
    pub event_type: EventType,
    /// Digests by bank, in the order the record lists them.
    #[serde(serialize_with = "ser_digests")]
    pub digests: Vec<(HashAlg, Vec<u8>)>,
    /// Event data as logged.
    #[serde(with = "hex::serde")]
    pub data: Vec<u8>,
}

impl Record {
    /// The digest of one bank, if the record has it.
    pub fn digest(&self, alg: HashAlg) -> Option<&[u8]> {
        self.digests
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, d)| d.as_slice())
    }

    /// Whether replay extends this record (everything but EV_NO_ACTION).
    pub fn is_extended(&self) -> bool {
        self.event_type != EventType::EV_NO_ACTION
    }
}

fn ser_digests<S: Serializer>(d: &[(HashAlg, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
    let mut m = s.serialize_map(Some(d.len()))?;
    for (alg, v) in d {
        m.serialize_entry(alg.name(), &hex::encode(v))?;
    }
    m.end()
}

/// Something a real log does that we read but that deserves a look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// Record number.
    pub record: usize,
    /// Byte offset of the record.
    pub offset: usize,
    /// What is unusual.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record {} (byte offset {}): {}",
            self.record, self.offset, self.message
        )
    }
}

/// A real measured-boot log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcgLog {
    /// Record layout.
    pub format: LogFormat,
    /// The banks of the log, in header order (`[Sha1]` for the SHA-1 format).
    pub banks: Vec<HashAlg>,
    /// Locality of TPM2_Startup from the StartupLocality event (0 when absent).
    pub startup_locality: u8,
    /// The records after the header (EV_NO_ACTION ones included), without the trust point.
    pub records: Vec<Record>,
    /// Things read but worth a warning, in file order.
    pub warnings: Vec<Warning>,
}

impl TcgLog {
    /// Parses a binary log in either format (see the module docs).
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let mut r = Reader {
            bytes,
            pos: 0,
            record: 0,
        };
        let pcr = r.u32("PCRIndex")?;
        let ty = r.u32("EventType")?;
        r.take(20, "SHA-1 digest")?;
        let data = r.data()?;
        let crypto_agile = pcr == 0
            && ty == EventType::EV_NO_ACTION.0
            && data.len() >= 16
            && &data[..16] == SPEC_ID_SIGNATURE;
        if crypto_agile {
            let banks = parse_spec_id(data, 32)?;
            let mut log = Self {
                format: LogFormat::CryptoAgile,
                banks,
                startup_locality: 0,
                records: Vec::new(),
                warnings: Vec::new(),
            };
            while r.pos < bytes.len() {
                r.record += 1;
                log.read_event2(&mut r)?;
            }
            log.find_startup_locality();
            Ok(log)
        } else {
            r.pos = 0;
            let mut log = Self {
                format: LogFormat::Sha1,
                banks: vec![HashAlg::Sha1],
                startup_locality: 0,
                records: Vec::new(),
                warnings: Vec::new(),
            };
            let mut first = true;
            while r.pos < bytes.len() {
                if !first {
                    r.record += 1;
                }
                first = false;
                log.read_event1(&mut r)?;
            }
            Ok(log)
        }
    }

    fn check_pcr(&mut self, r: &mut Reader<'_>, at: usize, pcr: u32) -> Result<bool, ParseError> {
        if pcr == TRUST_POINT_PCR {
            self.warnings.push(Warning {
                record: r.record,
                offset: at,
                message:
                    "Windows trust point record (PCR index 0xFFFFFFFF): not a measurement, skipped"
                        .into(),
            });
            return Ok(false);
        }
        if pcr as usize >= PCR_COUNT {
            r.pos = at;
            return Err(r.err(ParseErrorKind::BadPcr(pcr)));
        }
        Ok(true)
    }

    fn read_event1(&mut self, r: &mut Reader<'_>) -> Result<(), ParseError> {
        let at = r.pos;
        let pcr = r.u32("PCRIndex")?;
        let event_type = EventType(r.u32("EventType")?);
        let digest = r.take(20, "SHA-1 digest")?.to_vec();
        let data = r.data()?.to_vec();
        if self.check_pcr(r, at, pcr)? {
            self.records.push(Record {
                number: r.record,
                offset: at,
                pcr,
                event_type,
                digests: vec![(HashAlg::Sha1, digest)],
                data,
            });
        }
        Ok(())
    }

    fn read_event2(&mut self, r: &mut Reader<'_>) -> Result<(), ParseError> {
        let at = r.pos;
        let pcr = r.u32("PCRIndex")?;
        let event_type = EventType(r.u32("EventType")?);
        let count_at = r.pos;
        let count = r.u32("DigestCount")?;
        if count as usize > self.banks.len() {
            r.pos = count_at;
            return Err(r.err(ParseErrorKind::BadDigests(format!(
                "DigestCount {count}, more than the header's {} algorithms",
                self.banks.len()
            ))));
        }
        let mut digests: Vec<(HashAlg, Vec<u8>)> = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let alg_at = r.pos;
            let id = r.u16("AlgorithmId")?;
            let alg = match HashAlg::from_id(id).filter(|a| self.banks.contains(a)) {
                Some(a) => a,
                None => {
                    r.pos = alg_at;
                    return Err(r.err(ParseErrorKind::UnknownAlgorithm {
                        id,
                        context: "not one of the header's algorithms",
                    }));
                }
            };
            if digests.iter().any(|(a, _)| *a == alg) {
                r.pos = alg_at;
                return Err(r.err(ParseErrorKind::BadDigests(format!(
                    "{alg} listed twice in one record"
                ))));
            }
            digests.push((alg, r.take(alg.size(), "digest")?.to_vec()));
        }
        let data = r.data()?.to_vec();
        if !self.check_pcr(r, at, pcr)? {
            return Ok(());
        }
        if digests.len() < self.banks.len() && event_type != EventType::EV_NO_ACTION {
            let missing: Vec<&str> = self
                .banks
                .iter()
                .filter(|b| !digests.iter().any(|(a, _)| a == *b))
                .map(|b| b.name())
                .collect();
            self.warnings.push(Warning {
                record: r.record,
                offset: at,
                message: format!(
                    "DigestCount {count} < {} (PCR {pcr}, {event_type}): no {} digest; that bank is not extended by this record",
                    self.banks.len(),
                    missing.join(", ")
                ),
            });
        }
        self.records.push(Record {
            number: r.record,
            offset: at,
            pcr,
            event_type,
            digests,
            data,
        });
        Ok(())
    }

    fn find_startup_locality(&mut self) {
        let found = self.records.iter().find(|e| {
            e.pcr == 0
                && e.event_type == EventType::EV_NO_ACTION
                && e.data.len() == 17
                && e.data.starts_with(STARTUP_LOCALITY_SIGNATURE)
        });
        if let Some(e) = found {
            self.startup_locality = e.data[16];
        }
    }

    /// A crypto-agile log of the same records (for writing an edited log back).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let put = |out: &mut Vec<u8>, v: u32| out.extend_from_slice(&v.to_le_bytes());
        match self.format {
            LogFormat::Sha1 => {
                for e in &self.records {
                    put(&mut out, e.pcr);
                    put(&mut out, e.event_type.0);
                    let d = e.digest(HashAlg::Sha1).unwrap_or(&[0; 20]);
                    out.extend_from_slice(d);
                    put(&mut out, u32::try_from(e.data.len()).unwrap_or(u32::MAX));
                    out.extend_from_slice(&e.data);
                }
            }
            LogFormat::CryptoAgile => {
                let mut spec = SPEC_ID_SIGNATURE.to_vec();
                put(&mut spec, 0);
                spec.extend_from_slice(&[0, 2, 0, 2]);
                put(&mut spec, self.banks.len() as u32);
                for b in &self.banks {
                    spec.extend_from_slice(&b.id().to_le_bytes());
                    spec.extend_from_slice(&(b.size() as u16).to_le_bytes());
                }
                spec.push(0);
                put(&mut out, 0);
                put(&mut out, EventType::EV_NO_ACTION.0);
                out.extend_from_slice(&[0; 20]);
                put(&mut out, spec.len() as u32);
                out.extend_from_slice(&spec);
                for e in &self.records {
                    put(&mut out, e.pcr);
                    put(&mut out, e.event_type.0);
                    put(&mut out, e.digests.len() as u32);
                    for (alg, d) in &e.digests {
                        out.extend_from_slice(&alg.id().to_le_bytes());
                        out.extend_from_slice(d);
                    }
                    put(&mut out, u32::try_from(e.data.len()).unwrap_or(u32::MAX));
                    out.extend_from_slice(&e.data);
                }
            }
        }
        out
    }

    /// The PCR values of every bank of the log after all its records.
    pub fn replay(&self) -> PcrBanks {
        self.replay_prefix(self.records.len())
    }

    /// The PCR values after the first `n` records (e.g. at the unseal point).
    pub fn replay_prefix(&self, n: usize) -> PcrBanks {
        let mut p = PcrBanks::reset(&self.banks, self.startup_locality);
        for e in self.records.iter().take(n).filter(|e| e.is_extended()) {
            p.extend(e);
        }
        p
    }

    /// The records of one PCR, in order.
    pub fn records_for(&self, pcr: u32) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(move |e| e.pcr == pcr)
    }

    /// The bank a sealing policy would use: SHA-256 if the log has it (Windows seals to it
    /// on TPM 2.0), else the first bank.
    pub fn policy_bank(&self) -> HashAlg {
        if self.banks.contains(&HashAlg::Sha256) {
            HashAlg::Sha256
        } else {
            self.banks.first().copied().unwrap_or(HashAlg::Sha1)
        }
    }
}

impl From<&EventLog> for TcgLog {
    /// One of our own logs as a [`TcgLog`] (what parsing its bytes would give).
    fn from(log: &EventLog) -> Self {
        let records = log
            .events
            .iter()
            .enumerate()
            .map(|(i, e): (usize, &Event)| Record {
                number: i + 1,
                offset: 0,
                pcr: e.pcr,
                event_type: e.event_type,
                digests: HashAlg::ALL
                    .iter()
                    .map(|&a| (a, e.digests.get(a).to_vec()))
                    .collect(),
                data: e.data.clone(),
            })
            .collect();
        let mut t = Self {
            format: LogFormat::CryptoAgile,
            banks: HashAlg::ALL.to_vec(),
            startup_locality: 0,
            records,
            warnings: Vec::new(),
        };
        t.find_startup_locality();
        t
    }
}

impl TcgLog {
    /// One of our own logs in the SHA-1 format a BIOS writes (`TCG_PCR_EVENT` records, no
    /// Spec ID header): what parsing the bytes of such a log gives.
    pub fn sha1_format(log: &EventLog) -> Self {
        let records = log
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| Record {
                number: i,
                offset: 0,
                pcr: e.pcr,
                event_type: e.event_type,
                digests: vec![(HashAlg::Sha1, e.digests.sha1.to_vec())],
                data: e.data.clone(),
            })
            .collect();
        Self {
            format: LogFormat::Sha1,
            banks: vec![HashAlg::Sha1],
            startup_locality: 0,
            records,
            warnings: Vec::new(),
        }
    }
}

/// Reads a TCG_EfiSpecIDEvent's algorithm list. `base` is the data's offset in the file.
fn parse_spec_id(d: &[u8], base: usize) -> Result<Vec<HashAlg>, ParseError> {
    let bad = |at: usize, kind: ParseErrorKind| ParseError {
        offset: base + at,
        record: 0,
        kind,
    };
    // signature[16], platformClass u32, 4 version bytes, numberOfAlgorithms u32, then
    // (algorithmId u16, digestSize u16) x n, vendorInfoSize u8, vendorInfo.
    if d.len() < 28 {
        return Err(bad(
            0,
            ParseErrorKind::BadHeader(format!("Spec ID event of {} bytes", d.len())),
        ));
    }
    let n = u32::from_le_bytes([d[24], d[25], d[26], d[27]]) as usize;
    let algs_end = 28usize.saturating_add(n.saturating_mul(4));
    if n == 0 || d.len() < algs_end.saturating_add(1) {
        return Err(bad(
            24,
            ParseErrorKind::BadHeader(format!(
                "numberOfAlgorithms {n} does not fit the header's {} bytes",
                d.len()
            )),
        ));
    }
    let vendor = d[algs_end] as usize;
    if d.len() != algs_end + 1 + vendor {
        return Err(bad(
            algs_end,
            ParseErrorKind::BadHeader(format!(
                "vendorInfoSize {vendor} leaves {} bytes of the header unaccounted for",
                d.len() as isize - (algs_end + 1 + vendor) as isize
            )),
        ));
    }
    let mut banks = Vec::with_capacity(n);
    for (i, c) in d[28..algs_end].chunks_exact(4).enumerate() {
        let at = 28 + 4 * i;
        let id = u16::from_le_bytes([c[0], c[1]]);
        let size = u16::from_le_bytes([c[2], c[3]]) as usize;
        let alg = HashAlg::from_id(id).ok_or(bad(
            at,
            ParseErrorKind::UnknownAlgorithm {
                id,
                context: "the header lists a bank this reader cannot replay (known: sha1, sha256, sha384, sha512)",
            },
        ))?;
        if alg.size() != size {
            return Err(bad(
                at + 2,
                ParseErrorKind::BadHeader(format!("{alg} with digest size {size}")),
            ));
        }
        if banks.contains(&alg) {
            return Err(bad(
                at,
                ParseErrorKind::BadHeader(format!("{alg} listed twice")),
            ));
        }
        banks.push(alg);
    }
    Ok(banks)
}

/// PCR 0-23 of several banks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PcrBanks {
    /// Values by bank; each has [`PCR_COUNT`] entries.
    pub banks: BTreeMap<HashAlg, Vec<Vec<u8>>>,
}

impl PcrBanks {
    /// The values at TPM2_Startup(CLEAR) from `locality`: zero, PCR 0 ending in the locality
    /// byte, PCR 17-22 all-ff.
    pub fn reset(banks: &[HashAlg], locality: u8) -> Self {
        let mut out = BTreeMap::new();
        for &b in banks {
            let mut v = vec![vec![0u8; b.size()]; PCR_COUNT];
            if let Some(last) = v[0].last_mut() {
                *last = locality;
            }
            for pcr in v.iter_mut().take(23).skip(17) {
                pcr.fill(0xff);
            }
            out.insert(b, v);
        }
        Self { banks: out }
    }

    /// Extends a record's digests into the banks it has.
    pub fn extend(&mut self, e: &Record) {
        for (alg, d) in &e.digests {
            if let Some(v) = self
                .banks
                .get_mut(alg)
                .and_then(|b| b.get_mut(e.pcr as usize))
            {
                *v = alg.extend(v, d);
            }
        }
    }

    /// One value.
    pub fn get(&self, alg: HashAlg, pcr: u32) -> Option<&[u8]> {
        self.banks
            .get(&alg)
            .and_then(|b| b.get(pcr as usize))
            .map(Vec::as_slice)
    }

    /// PCRs that differ in any bank both have, ascending.
    pub fn differing(&self, other: &Self) -> Vec<u32> {
        (0..PCR_COUNT as u32)
            .filter(|&i| {
                self.banks
                    .keys()
                    .any(|&a| other.banks.contains_key(&a) && self.get(a, i) != other.get(a, i))
            })
            .collect()
    }
}

impl Serialize for PcrBanks {
    /// `{"sha256": {"0": "<hex>", ..., "23": ...}, ...}`, PCRs in numeric order.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Bank<'a>(&'a [Vec<u8>]);
        impl Serialize for Bank<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for (i, v) in self.0.iter().enumerate() {
                    m.serialize_entry(&i.to_string(), &hex::encode(v))?;
                }
                m.end()
            }
        }
        let mut m = s.serialize_map(Some(self.banks.len()))?;
        for (alg, v) in &self.banks {
            m.serialize_entry(alg.name(), &Bank(v))?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn ours() -> EventLog {
        EventLog::new(vec![
            Event::of_data(0, EventType::EV_S_CRTM_VERSION, b"1\0".to_vec()),
            Event::separator(7),
            Event::of_data(12, EventType::EV_EVENT_TAG, b"tag".to_vec()),
        ])
    }

    #[test]
    fn our_logs_read_and_replay_the_same() {
        let log = ours();
        let t = TcgLog::parse(&log.to_bytes()).unwrap();
        assert_eq!(t.format, LogFormat::CryptoAgile);
        assert_eq!(t.banks, vec![HashAlg::Sha1, HashAlg::Sha256]);
        assert!(t.warnings.is_empty());
        let want = log.replay();
        let got = t.replay();
        for i in 0..24u32 {
            assert_eq!(
                got.get(HashAlg::Sha256, i).unwrap(),
                want.sha256(i).unwrap()
            );
            assert_eq!(got.get(HashAlg::Sha1, i).unwrap(), want.sha1(i).unwrap());
        }
        assert_eq!(TcgLog::from(&log).replay(), got);
        assert_eq!(TcgLog::parse(&t.to_bytes()).unwrap().records, t.records);
    }

    #[test]
    fn short_digest_count_is_a_warning_and_skips_that_bank() {
        let mut t = TcgLog::from(&ours());
        t.records[2].digests.retain(|(a, _)| *a == HashAlg::Sha256);
        let back = TcgLog::parse(&t.to_bytes()).unwrap();
        assert_eq!(back.warnings.len(), 1, "{:?}", back.warnings);
        assert!(back.warnings[0].message.contains("no sha1 digest"));
        assert_eq!(back.warnings[0].record, 3);
        let p = back.replay();
        assert_eq!(p.get(HashAlg::Sha1, 12).unwrap(), &[0u8; 20][..]);
        assert_ne!(p.get(HashAlg::Sha256, 12).unwrap(), &[0u8; 32][..]);
    }

    #[test]
    fn startup_locality_and_trust_point() {
        let mut log = ours();
        let mut loc = STARTUP_LOCALITY_SIGNATURE.to_vec();
        loc.push(3);
        log.events.insert(
            0,
            Event {
                pcr: 0,
                event_type: EventType::EV_NO_ACTION,
                data: loc,
                digests: super::super::Digests::ZERO,
            },
        );
        let mut bytes = log.to_bytes();
        // A trust point record after the last event.
        bytes.extend_from_slice(&TRUST_POINT_PCR.to_le_bytes());
        bytes.extend_from_slice(&EventType::EV_NO_ACTION.0.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&4u32.to_le_bytes());
        bytes.extend_from_slice(b"TRPT");
        let t = TcgLog::parse(&bytes).unwrap();
        assert_eq!(t.startup_locality, 3);
        assert_eq!(t.records.len(), 4);
        assert_eq!(t.warnings.len(), 1);
        let mut start = [0u8; 32];
        start[31] = 3;
        let crtm = HashAlg::Sha256.digest(b"1\0");
        assert_eq!(
            t.replay().get(HashAlg::Sha256, 0).unwrap(),
            HashAlg::Sha256.extend(&start, &crtm).as_slice()
        );
    }

    #[test]
    fn bad_counts_and_algorithms_are_errors_with_positions() {
        let bytes = ours().to_bytes();
        let h = 32 + 37;
        let mut t = bytes.clone();
        t[h + 8..h + 12].copy_from_slice(&3u32.to_le_bytes());
        let e = TcgLog::parse(&t).unwrap_err();
        assert_eq!((e.record, e.offset), (1, h + 8));
        let mut t = bytes.clone();
        t[h + 12] = 0x12; // SM3's id
        let e = TcgLog::parse(&t).unwrap_err();
        assert_eq!((e.record, e.offset), (1, h + 12));
        assert!(matches!(
            e.kind,
            ParseErrorKind::UnknownAlgorithm { id: 0x12, .. }
        ));
        // Header with an unknown bank.
        let mut t = bytes.clone();
        t[32 + 28] = 0x12;
        let e = TcgLog::parse(&t).unwrap_err();
        assert_eq!((e.record, e.offset), (0, 32 + 28));
    }
}
