//! Binary encoding of the crypto-agile log (see the module docs of [`super`]).

use super::{Digests, Event, EventLog, EventType, HashAlg, PCR_COUNT};

pub(super) const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
/// Largest event data we accept; far above anything firmware logs, it stops a corrupt size
/// field from asking for gigabytes (sizes are also checked against the bytes left).
pub(super) const MAX_EVENT_SIZE: usize = 16 << 20;

/// Where and why a log does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event log: {kind} (record {record}, byte offset {offset})")]
pub struct ParseError {
    /// Byte offset of the field that failed.
    pub offset: usize,
    /// Record number: 0 is the Spec ID header, 1 the first TCG_PCR_EVENT2.
    pub record: usize,
    /// What is wrong.
    pub kind: ParseErrorKind,
}

/// What is wrong with a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// The log ends inside a field.
    #[error("truncated: {field} needs {needed} bytes, {left} left")]
    Truncated {
        field: &'static str,
        needed: usize,
        left: usize,
    },
    /// The first record is not a Spec ID header.
    #[error("not a crypto-agile log header: {0}")]
    BadHeader(String),
    /// The header's banks are not exactly SHA-1 and SHA-256.
    #[error("unsupported banks: {0}")]
    UnsupportedBanks(String),
    /// A record's digest list does not match the header's banks.
    #[error("digest list: {0}")]
    BadDigests(String),
    /// A PCR index past 23.
    #[error("PCR index {0} out of range 0-23")]
    BadPcr(u32),
    /// An event size beyond the limit.
    #[error("event size {0} is implausibly large")]
    EventTooLarge(u32),
    /// A TPM_ALG_ID this reader does not know (in a header) or that the header does not
    /// list (in a record).
    #[error("unknown algorithm {id:#06x}: {context}")]
    UnknownAlgorithm { id: u16, context: &'static str },
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_data(out: &mut Vec<u8>, data: &[u8]) {
    // Event data beyond 4 GiB cannot be logged; the model never builds such events.
    put_u32(out, u32::try_from(data.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(data);
}

/// The TCG_EfiSpecIDEvent for banks SHA-1 and SHA-256.
fn spec_id_event() -> Vec<u8> {
    let mut d = Vec::with_capacity(37);
    d.extend_from_slice(SPEC_ID_SIGNATURE);
    put_u32(&mut d, 0); // platformClass: client
    d.extend_from_slice(&[0, 2, 0, 2]); // specVersionMinor, Major, errata, uintnSize (UINT64)
    put_u32(&mut d, HashAlg::ALL.len() as u32);
    for alg in HashAlg::ALL {
        d.extend_from_slice(&alg.id().to_le_bytes());
        d.extend_from_slice(&(alg.size() as u16).to_le_bytes());
    }
    d.push(0); // vendorInfoSize
    d
}

pub(super) fn write(log: &EventLog) -> Vec<u8> {
    let mut out = Vec::new();
    put_u32(&mut out, 0);
    put_u32(&mut out, EventType::EV_NO_ACTION.0);
    out.extend_from_slice(&[0; 20]);
    put_data(&mut out, &spec_id_event());
    for e in &log.events {
        put_u32(&mut out, e.pcr);
        put_u32(&mut out, e.event_type.0);
        put_u32(&mut out, HashAlg::ALL.len() as u32);
        for alg in HashAlg::ALL {
            out.extend_from_slice(&alg.id().to_le_bytes());
            out.extend_from_slice(e.digests.get(alg));
        }
        put_data(&mut out, &e.data);
    }
    out
}

pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
    pub(super) record: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn err(&self, kind: ParseErrorKind) -> ParseError {
        ParseError {
            offset: self.pos,
            record: self.record,
            kind,
        }
    }

    pub(super) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ParseError> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            return Err(self.err(ParseErrorKind::Truncated {
                field,
                needed: n,
                left,
            }));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(super) fn u32(&mut self, field: &'static str) -> Result<u32, ParseError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn u16(&mut self, field: &'static str) -> Result<u16, ParseError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(super) fn data(&mut self) -> Result<&'a [u8], ParseError> {
        let at = self.pos;
        let size = self.u32("EventSize")?;
        let n = usize::try_from(size)
            .ok()
            .filter(|&n| n <= MAX_EVENT_SIZE)
            .ok_or(ParseError {
                offset: at,
                record: self.record,
                kind: ParseErrorKind::EventTooLarge(size),
            })?;
        self.take(n, "event data")
    }
}

fn parse_header(r: &mut Reader<'_>) -> Result<(), ParseError> {
    let pcr = r.u32("PCRIndex")?;
    let ty = r.u32("EventType")?;
    if pcr != 0 || ty != EventType::EV_NO_ACTION.0 {
        r.pos -= 8;
        return Err(r.err(ParseErrorKind::BadHeader(format!(
            "first record is PCR {pcr} type {ty:#x}, expected PCR 0 EV_NO_ACTION"
        ))));
    }
    r.take(20, "header SHA-1 digest")?;
    let at = r.pos + 4;
    let d = r.data()?;
    let bad = |msg: String| ParseError {
        offset: at,
        record: 0,
        kind: ParseErrorKind::BadHeader(msg),
    };
    // signature[16], platformClass u32, 4 version bytes, numberOfAlgorithms u32, then
    // (algorithmId u16, digestSize u16) x n, vendorInfoSize u8.
    if d.len() < 28 || &d[..16] != SPEC_ID_SIGNATURE {
        return Err(bad("no \"Spec ID Event03\" signature".into()));
    }
    let n = u32::from_le_bytes([d[24], d[25], d[26], d[27]]) as usize;
    let algs_end = 28usize.saturating_add(n.saturating_mul(4));
    if d.len() < algs_end.saturating_add(1) {
        return Err(bad(format!(
            "{} bytes cannot hold {n} algorithms and vendorInfoSize",
            d.len()
        )));
    }
    let mut algs = Vec::with_capacity(n);
    for c in d[28..algs_end].chunks_exact(4) {
        algs.push((
            u16::from_le_bytes([c[0], c[1]]),
            u16::from_le_bytes([c[2], c[3]]),
        ));
    }
    let want: Vec<(u16, u16)> = HashAlg::ALL
        .iter()
        .map(|a| (a.id(), a.size() as u16))
        .collect();
    if algs != want {
        return Err(ParseError {
            offset: at + 28,
            record: 0,
            kind: ParseErrorKind::UnsupportedBanks(format!(
                "header lists (alg, size) {algs:04x?}, this reader handles exactly SHA-1 and SHA-256"
            )),
        });
    }
    Ok(())
}

pub(super) fn parse(bytes: &[u8]) -> Result<EventLog, ParseError> {
    let mut r = Reader {
        bytes,
        pos: 0,
        record: 0,
    };
    parse_header(&mut r)?;
    let mut events = Vec::new();
    while r.pos < bytes.len() {
        r.record += 1;
        let pcr_at = r.pos;
        let pcr = r.u32("PCRIndex")?;
        if pcr as usize >= PCR_COUNT {
            r.pos = pcr_at;
            return Err(r.err(ParseErrorKind::BadPcr(pcr)));
        }
        let event_type = EventType(r.u32("EventType")?);
        let count_at = r.pos;
        let count = r.u32("DigestCount")?;
        if count as usize != HashAlg::ALL.len() {
            r.pos = count_at;
            return Err(r.err(ParseErrorKind::BadDigests(format!(
                "DigestCount {count}, the header has {} banks",
                HashAlg::ALL.len()
            ))));
        }
        let mut digests = Digests::ZERO;
        for alg in HashAlg::ALL {
            let alg_at = r.pos;
            let id = r.u16("AlgorithmId")?;
            if id != alg.id() {
                r.pos = alg_at;
                return Err(r.err(ParseErrorKind::BadDigests(format!(
                    "algorithm {id:#06x} where the header order expects {:#06x}",
                    alg.id()
                ))));
            }
            let d = r.take(alg.size(), "digest")?;
            match alg {
                HashAlg::Sha1 => digests.sha1.copy_from_slice(d),
                HashAlg::Sha256 => digests.sha256.copy_from_slice(d),
                // Not in `HashAlg::ALL`: our own logs carry SHA-1 and SHA-256 only.
                HashAlg::Sha384 | HashAlg::Sha512 => {}
            }
        }
        let data = r.data()?.to_vec();
        events.push(Event {
            pcr,
            event_type,
            data,
            digests,
        });
    }
    Ok(EventLog { events })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    fn sample() -> EventLog {
        EventLog::new(vec![
            Event::of_data(0, EventType::EV_S_CRTM_VERSION, b"1\0".to_vec()),
            Event::separator(7),
            Event::measured(4, EventType::EV_EFI_ACTION, b"x".to_vec(), b"y"),
        ])
    }

    #[test]
    fn round_trip_and_header_layout() {
        let log = sample();
        let bytes = log.to_bytes();
        // Header: 32 bytes of fixed fields + 37 of Spec ID event.
        assert_eq!(&bytes[32..48], SPEC_ID_SIGNATURE);
        assert_eq!(u32::from_le_bytes(bytes[28..32].try_into().unwrap()), 37);
        assert_eq!(EventLog::parse(&bytes).unwrap(), log);
    }

    #[test]
    fn errors_carry_offset_and_record() {
        let bytes = sample().to_bytes();
        let header_len = 32 + 37;
        let e = EventLog::parse(&bytes[..header_len + 6]).unwrap_err();
        assert_eq!(e.record, 1);
        assert_eq!(e.offset, header_len + 4);
        assert!(matches!(
            e.kind,
            ParseErrorKind::Truncated {
                field: "EventType",
                ..
            }
        ));
        let mut bad = bytes.clone();
        bad[header_len] = 40; // PCR 40
        let e = EventLog::parse(&bad).unwrap_err();
        assert_eq!(
            (e.record, e.offset, e.kind),
            (1, header_len, ParseErrorKind::BadPcr(40))
        );
        assert!(EventLog::parse(&[]).is_err());
        let mut sig = bytes.clone();
        sig[33] = b'X';
        assert!(matches!(
            EventLog::parse(&sig).unwrap_err().kind,
            ParseErrorKind::BadHeader(_)
        ));
    }

    /// The malformed logs of eventlog-notes.md (where tpm2_eventlog exits 1, and a few it
    /// accepts): each is refused with the record and offset of the fault.
    #[test]
    fn malformed_logs_from_the_notes_are_refused_precisely() {
        let good = sample().to_bytes();
        let h = 32 + 37; // header length
        let first = EventLog::parse(&good).unwrap().events[0].data.len();
        let rec1_len = 12 + 2 + 20 + 2 + 32 + 4 + first;
        let check = |bytes: &[u8], record: usize, offset: usize, what: &str| {
            let e = EventLog::parse(bytes).unwrap_err();
            assert_eq!((e.record, e.offset), (record, offset), "{what}: {e}");
        };
        // Empty file; truncated header.
        check(&[], 0, 0, "empty");
        check(&good[..40], 0, 32, "truncated header");
        // Three trailing bytes after the last record.
        let mut t = good.clone();
        t.extend_from_slice(&[1, 2, 3]);
        check(&t, 4, good.len(), "3 trailing bytes");
        // 0xFF padding: PCR index 0xFFFFFFFF.
        let mut t = good.clone();
        t.extend_from_slice(&[0xff; 64]);
        check(&t, 4, good.len(), "0xff padding");
        // DigestCount +1 / -1 / 0.
        for dc in [3u32, 1, 0] {
            let mut t = good.clone();
            t[h + 8..h + 12].copy_from_slice(&dc.to_le_bytes());
            check(&t, 1, h + 8, "DigestCount");
        }
        // Unknown algorithm in a record.
        let mut t = good.clone();
        t[h + 12] = 0x0c; // sha384's id where sha1 belongs
        check(&t, 1, h + 12, "unknown alg");
        // EventSize larger than what is left.
        let mut t = good.clone();
        let size_at = h + 12 + 2 + 20 + 2 + 32;
        t[size_at..size_at + 4].copy_from_slice(&1000u32.to_le_bytes());
        check(&t, 1, size_at + 4, "EventSize too big");
        // numberOfAlgorithms 0.
        let mut t = good.clone();
        t[32 + 24..32 + 28].copy_from_slice(&0u32.to_le_bytes());
        check(&t, 0, 32 + 24 + 4, "numberOfAlgorithms 0");
        // PCR 40 in the second record.
        let mut t = good.clone();
        t[h + rec1_len] = 40;
        check(&t, 2, h + rec1_len, "PCR 40");
        // tpm2_eventlog accepts these; we refuse a bad signature too.
        let mut t = good.clone();
        t[32] = b's';
        check(&t, 0, 32, "bad Spec ID signature");
    }

    proptest! {
        #[test]
        fn never_panics_on_mutated_logs(pos in 0usize..400, byte in any::<u8>(), cut in 0usize..400) {
            let mut bytes = sample().to_bytes();
            let p = pos % bytes.len();
            bytes[p] = byte;
            bytes.truncate(cut.max(1));
            let _ = EventLog::parse(&bytes);
        }

        #[test]
        fn never_panics_on_garbage_after_a_valid_header(
            garbage in proptest::collection::vec(any::<u8>(), 0..300)
        ) {
            let mut bytes = EventLog::default().to_bytes();
            bytes.extend_from_slice(&garbage);
            let _ = EventLog::parse(&bytes);
            let _ = EventLog::parse(&garbage);
        }
    }
}
