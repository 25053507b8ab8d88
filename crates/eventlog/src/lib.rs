//! The TCG PC Client crypto-agile binary event log: writer, reader and replay.
//!
//! Layout (TCG PC Client Platform Firmware Profile 1.04 s9; `eventlog-notes.md`): one
//! SHA-1-format `TCG_PCR_EVENT` header carrying `TCG_EfiSpecIDEvent` (banks SHA-1 and
//! SHA-256), then `TCG_PCR_EVENT2` records to the end, every record with one digest per bank
//! of the header. All integers little-endian.
//!
//! [`EventLog::parse`] reads logs in that shape (ours, or any firmware log with exactly the
//! SHA-1 and SHA-256 banks); it never panics and its errors carry the byte offset and record
//! number. [`EventLog::replay`] recomputes the PCRs as a TPM would after the same extends.
//! Event-data builders for the structures the spec defines are in [`data`].
//!
//! **This crate knows no TPM and no BitLocker** (Cargo enforces it: the harness's
//! `workspace_edges` test). Replaying a log into a real TPM, and predicting recovery with
//! one, are the `device` crate's.

pub mod data;
pub mod describe;
pub mod diff;
pub mod sipa;
pub mod tcg;
mod wire;

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use wire::{ParseError, ParseErrorKind};

/// Number of PCRs of a PC Client TPM.
pub const PCR_COUNT: usize = 24;

/// A TCG event type (`UINT32`). Unknown codes are kept as they are.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EventType(pub u32);

impl EventType {
    pub const EV_POST_CODE: Self = Self(0x1);
    pub const EV_NO_ACTION: Self = Self(0x3);
    pub const EV_SEPARATOR: Self = Self(0x4);
    pub const EV_ACTION: Self = Self(0x5);
    pub const EV_EVENT_TAG: Self = Self(0x6);
    pub const EV_S_CRTM_VERSION: Self = Self(0x8);
    pub const EV_PLATFORM_CONFIG_FLAGS: Self = Self(0xA);
    pub const EV_COMPACT_HASH: Self = Self(0xC);
    pub const EV_IPL: Self = Self(0xD);
    pub const EV_IPL_PARTITION_DATA: Self = Self(0xE);
    pub const EV_EFI_VARIABLE_DRIVER_CONFIG: Self = Self(0x8000_0001);
    pub const EV_EFI_VARIABLE_BOOT: Self = Self(0x8000_0002);
    pub const EV_EFI_BOOT_SERVICES_APPLICATION: Self = Self(0x8000_0003);
    pub const EV_EFI_BOOT_SERVICES_DRIVER: Self = Self(0x8000_0004);
    pub const EV_EFI_GPT_EVENT: Self = Self(0x8000_0006);
    pub const EV_EFI_ACTION: Self = Self(0x8000_0007);
    pub const EV_EFI_PLATFORM_FIRMWARE_BLOB: Self = Self(0x8000_0008);
    pub const EV_EFI_PLATFORM_FIRMWARE_BLOB2: Self = Self(0x8000_000A);
    pub const EV_EFI_VARIABLE_AUTHORITY: Self = Self(0x8000_00E0);

    /// The spec's name, if this is a type we know.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::EV_POST_CODE => "EV_POST_CODE",
            Self::EV_NO_ACTION => "EV_NO_ACTION",
            Self::EV_SEPARATOR => "EV_SEPARATOR",
            Self::EV_ACTION => "EV_ACTION",
            Self::EV_EVENT_TAG => "EV_EVENT_TAG",
            Self::EV_S_CRTM_VERSION => "EV_S_CRTM_VERSION",
            Self::EV_PLATFORM_CONFIG_FLAGS => "EV_PLATFORM_CONFIG_FLAGS",
            Self::EV_COMPACT_HASH => "EV_COMPACT_HASH",
            Self::EV_IPL => "EV_IPL",
            Self::EV_IPL_PARTITION_DATA => "EV_IPL_PARTITION_DATA",
            Self::EV_EFI_VARIABLE_DRIVER_CONFIG => "EV_EFI_VARIABLE_DRIVER_CONFIG",
            Self::EV_EFI_VARIABLE_BOOT => "EV_EFI_VARIABLE_BOOT",
            Self::EV_EFI_BOOT_SERVICES_APPLICATION => "EV_EFI_BOOT_SERVICES_APPLICATION",
            Self::EV_EFI_BOOT_SERVICES_DRIVER => "EV_EFI_BOOT_SERVICES_DRIVER",
            Self::EV_EFI_GPT_EVENT => "EV_EFI_GPT_EVENT",
            Self::EV_EFI_ACTION => "EV_EFI_ACTION",
            Self::EV_EFI_PLATFORM_FIRMWARE_BLOB => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
            Self::EV_EFI_PLATFORM_FIRMWARE_BLOB2 => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
            Self::EV_EFI_VARIABLE_AUTHORITY => "EV_EFI_VARIABLE_AUTHORITY",
            _ => return None,
        })
    }
}

impl fmt::Debug for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "EventType({:#x})", self.0),
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A hash algorithm (TPM_ALG_ID) of a PCR bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlg {
    /// TPM_ALG_SHA1 (0x0004), 20 bytes.
    Sha1,
    /// TPM_ALG_SHA256 (0x000B), 32 bytes.
    Sha256,
    /// TPM_ALG_SHA384 (0x000C), 48 bytes. Read from real logs ([`tcg`]); our own logs
    /// ([`EventLog`]) carry SHA-1 and SHA-256 only.
    Sha384,
    /// TPM_ALG_SHA512 (0x000D), 64 bytes. As [`HashAlg::Sha384`].
    Sha512,
}

impl HashAlg {
    /// The banks of the logs this crate writes ([`EventLog`]), in header order.
    pub const ALL: [Self; 2] = [Self::Sha1, Self::Sha256];

    /// Every bank a real log may carry that [`tcg`] reads and replays.
    pub const KNOWN: [Self; 4] = [Self::Sha1, Self::Sha256, Self::Sha384, Self::Sha512];

    /// The TPM_ALG_ID.
    pub fn id(self) -> u16 {
        match self {
            Self::Sha1 => 0x0004,
            Self::Sha256 => 0x000B,
            Self::Sha384 => 0x000C,
            Self::Sha512 => 0x000D,
        }
    }

    /// The algorithm with this TPM_ALG_ID, if it is one of [`HashAlg::KNOWN`].
    pub fn from_id(id: u16) -> Option<Self> {
        Self::KNOWN.into_iter().find(|a| a.id() == id)
    }

    /// Digest size in bytes.
    pub fn size(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// The lowercase name used in JSON and by tpm2-tools (`sha256`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    /// The digest of `data` in this algorithm.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha1 => sha1(data).to_vec(),
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Self::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }

    /// `H(a || b)`: one PCR extend.
    pub fn extend(self, old: &[u8], digest: &[u8]) -> Vec<u8> {
        let mut buf = Vec::with_capacity(old.len() + digest.len());
        buf.extend_from_slice(old);
        buf.extend_from_slice(digest);
        self.digest(&buf)
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One digest per bank.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Digests {
    /// SHA-1 digest.
    #[serde(with = "hex::serde")]
    pub sha1: [u8; 20],
    /// SHA-256 digest.
    #[serde(with = "hex::serde")]
    pub sha256: [u8; 32],
}

impl Digests {
    /// The digests of `measured` in every bank.
    pub fn of(measured: &[u8]) -> Self {
        Self {
            sha1: sha1(measured),
            sha256: Sha256::digest(measured).into(),
        }
    }

    /// All-zero digests (what EV_NO_ACTION records carry).
    pub const ZERO: Self = Self {
        sha1: [0; 20],
        sha256: [0; 32],
    };

    /// The digest of one bank; empty for the banks our own logs do not carry (SHA-384/512).
    pub fn get(&self, alg: HashAlg) -> &[u8] {
        match alg {
            HashAlg::Sha1 => &self.sha1,
            HashAlg::Sha256 => &self.sha256,
            HashAlg::Sha384 | HashAlg::Sha512 => &[],
        }
    }
}

impl fmt::Debug for Digests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.sha256))
    }
}

/// One measurement: PCR, type, event data and the per-bank digests that were extended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// PCR index.
    pub pcr: u32,
    /// Event type.
    pub event_type: EventType,
    /// Event data as logged.
    #[serde(with = "hex::serde")]
    pub data: Vec<u8>,
    /// Digests extended into the PCR (zero for EV_NO_ACTION).
    pub digests: Digests,
}

impl Event {
    /// An event whose digests are the hashes of `measured` (which may differ from `data`:
    /// e.g. an image load event logs a UEFI_IMAGE_LOAD_EVENT but measures the image).
    pub fn measured(pcr: u32, event_type: EventType, data: Vec<u8>, measured: &[u8]) -> Self {
        Self {
            pcr,
            event_type,
            digests: Digests::of(measured),
            data,
        }
    }

    /// An event whose digests are the hashes of its own data.
    pub fn of_data(pcr: u32, event_type: EventType, data: Vec<u8>) -> Self {
        Self {
            pcr,
            event_type,
            digests: Digests::of(&data),
            data,
        }
    }

    /// An EV_SEPARATOR (data and measured bytes `00000000`).
    pub fn separator(pcr: u32) -> Self {
        Self::of_data(pcr, EventType::EV_SEPARATOR, vec![0; 4])
    }

    /// Whether replay extends this event (everything except EV_NO_ACTION).
    pub fn is_extended(&self) -> bool {
        self.event_type != EventType::EV_NO_ACTION
    }
}

/// PCR values of both banks.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pcrs {
    /// SHA-1 bank, PCR 0-23.
    pub sha1: Vec<[u8; 20]>,
    /// SHA-256 bank, PCR 0-23.
    pub sha256: Vec<[u8; 32]>,
}

impl Pcrs {
    /// The values at TPM2_Startup(CLEAR) from locality 0: zero, except PCR 17-22 all-ff.
    pub fn reset() -> Self {
        let mut p = Self {
            sha1: vec![[0; 20]; PCR_COUNT],
            sha256: vec![[0; 32]; PCR_COUNT],
        };
        for i in 17..=22 {
            p.sha1[i] = [0xff; 20];
            p.sha256[i] = [0xff; 32];
        }
        p
    }

    /// Extends one PCR in both banks: `new = H(old || digest)`. PCRs past 23 are ignored
    /// (the parser refuses them, so only hand-built events can carry them).
    pub fn extend(&mut self, pcr: u32, digests: &Digests) {
        let i = pcr as usize;
        if let (Some(s1), Some(s256)) = (self.sha1.get_mut(i), self.sha256.get_mut(i)) {
            let mut buf = [0u8; 40];
            buf[..20].copy_from_slice(s1);
            buf[20..].copy_from_slice(&digests.sha1);
            *s1 = sha1(&buf);
            let mut h = Sha256::new();
            h.update(*s256);
            h.update(digests.sha256);
            *s256 = h.finalize().into();
        }
    }

    /// The SHA-256 value of a PCR (None past 23).
    pub fn sha256(&self, pcr: u32) -> Option<&[u8; 32]> {
        self.sha256.get(pcr as usize)
    }

    /// The SHA-1 value of a PCR (None past 23).
    pub fn sha1(&self, pcr: u32) -> Option<&[u8; 20]> {
        self.sha1.get(pcr as usize)
    }

    /// The SHA-256 PCR composite of `pcrs` (ascending order, as a TPM2 PCR selection
    /// orders them): `SHA-256(PCR[a] || PCR[b] || ...)`, the `pcrDigest` that PolicyPCR
    /// takes. Indices past 23 are skipped.
    pub fn composite_sha256(&self, pcrs: &[u32]) -> [u8; 32] {
        let mut sorted = pcrs.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut h = Sha256::new();
        for v in sorted.iter().filter_map(|&i| self.sha256(i)) {
            h.update(v);
        }
        h.finalize().into()
    }

    /// PCRs whose value differs in either bank.
    pub fn differing(&self, other: &Self) -> Vec<u32> {
        (0..PCR_COUNT as u32)
            .filter(|&i| self.sha256(i) != other.sha256(i) || self.sha1(i) != other.sha1(i))
            .collect()
    }
}

impl fmt::Debug for Pcrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (i, v) in self.sha256.iter().enumerate() {
            m.entry(&i, &hex::encode(v));
        }
        m.finish()
    }
}

/// A crypto-agile event log: the Spec ID header (implicit: banks SHA-1 and SHA-256) and the
/// events after it, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLog {
    /// Events after the header.
    pub events: Vec<Event>,
}

impl EventLog {
    /// A log of these events.
    pub fn new(events: Vec<Event>) -> Self {
        Self { events }
    }

    /// The binary log.
    pub fn to_bytes(&self) -> Vec<u8> {
        wire::write(self)
    }

    /// Parses a binary log (see the module docs for what is accepted).
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        wire::parse(bytes)
    }

    /// Replays the log: PCR values after extending every event but EV_NO_ACTION into a TPM
    /// reset at locality 0 (see [`Pcrs::reset`]).
    pub fn replay(&self) -> Pcrs {
        let mut p = Pcrs::reset();
        for e in self.events.iter().filter(|e| e.is_extended()) {
            p.extend(e.pcr, &e.digests);
        }
        p
    }

    /// The events of one PCR, in order.
    pub fn events_for(&self, pcr: u32) -> impl Iterator<Item = &Event> {
        self.events.iter().filter(move |e| e.pcr == pcr)
    }
}

/// SHA-1 for the SHA-1 PCR bank (a TPM bank, not a security choice of ours). RustCrypto's
/// `sha1` is not a dependency, so this is the short FIPS 180-4 definition.
pub(crate) fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for chunk in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in chunk.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (chunk, v) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&v.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn sha1_known_answers() {
        assert_eq!(
            hex::encode(sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hex::encode(sha1(b"")),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
        let long = vec![b'a'; 1000];
        assert_eq!(
            hex::encode(sha1(&long)),
            "291e9a6c66994949b57ba5e650361e98fc36b1ba"
        );
    }

    #[test]
    fn separator_in_pcr0_replays_to_known_value() {
        // eventlog-notes.md: a separator extended into a zero PCR0 gives 3d458cfe... (SHA-256).
        let e = Event::separator(0);
        assert_eq!(hex::encode(&e.digests.sha1[..4]), "9069ca78");
        let p = EventLog::new(vec![e]).replay();
        assert_eq!(
            hex::encode(p.sha256(0).unwrap()),
            "3d458cfe55cc03ea1f443f1562beec8df51c75e14a9fcf9a7234a13f198e7969"
        );
        assert_eq!(p.sha256(17).unwrap(), &[0xff; 32]);
        assert_eq!(p.sha256(1).unwrap(), &[0; 32]);
        assert_eq!(p.differing(&Pcrs::reset()), vec![0]);
        // Composite over PCR 0 and 1: SHA-256(PCR0 || PCR1), order-insensitive input.
        let mut h = Sha256::new();
        h.update(p.sha256(0).unwrap());
        h.update([0u8; 32]);
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(p.composite_sha256(&[1, 0]), want);
    }
}
