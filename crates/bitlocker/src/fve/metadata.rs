//! The volume header (sector 0) and an FVE metadata block.
//!
//! ```text
//! volume header (512 bytes): eb 58 90 | "-FVE-FS-" | u16 bytes/sector @11 | ...
//!   @160 BitLocker GUID (normal or encrypt-on-write) | @176 3 x u64 metadata block offsets
//!   (BitLocker To Go: signature "MSWIN4.1", the GUID and offsets at 424) | 55 aa @510
//! metadata block (at each offset; 64 KiB reserved):
//!   block header (64): "-FVE-FS-" | u16 size/16 | u16 version=2 | u16 state | u16 next state
//!     | u64 encrypted volume size | u32 convert size | u32 volume header sectors
//!     | 3 x u64 block offsets | u64 volume header (relocated first sectors) offset
//!   metadata header (48): u32 size (incl. this header) | u32 version=1 | u32 48 | u32 size
//!     | volume GUID | u32 next nonce counter | u16 method | u16 | u64 creation FILETIME
//!   entries ... zero padding to size*16
//!   validation (at size*16): u16 (64 KiB - size*16) | u16 version=2 | u32 CRC-32 of the
//!     size*16 bytes | AES-CCM entry (0x50 bytes): under the VMK, a key entry with method
//!     0x2005 whose key is SHA-256 of the same size*16 bytes.
//! ```

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::entry::{self, parse_entries, Entry, Value};
use super::{FveError, ReadAt};
use crate::keywrap::{self, KeyEntry, Nonce, WrappedKey};

/// Bytes reserved for each metadata block (block, padding and validation).
pub const BLOCK_AREA: u64 = 64 * 1024;
const BLOCK_HEADER_LEN: usize = 64;
const META_HEADER_LEN: usize = 48;
const HEADERS_LEN: usize = BLOCK_HEADER_LEN + META_HEADER_LEN;
/// Validation: 8-byte header plus a 0x50-byte AES-CCM entry.
const VALIDATION_LEN: usize = 8 + 0x50;
/// Method code of the validation hash entry.
pub const METHOD_VALIDATION_HASH: u16 = 0x2005;
/// Boot entry point of Windows 7+ volumes.
pub const BOOT_CODE_V2: [u8; 3] = [0xeb, 0x58, 0x90];
/// Boot entry point of Windows Vista volumes.
pub const BOOT_CODE_V1: [u8; 3] = [0xeb, 0x52, 0x90];
/// The signature.
pub const SIGNATURE: &[u8; 8] = b"-FVE-FS-";
/// The BitLocker To Go signature.
pub const SIGNATURE_TOGO: &[u8; 8] = b"MSWIN4.1";
/// The "normal" BitLocker GUID at offset 160 (on-disk bytes; cryptsetup `BITLK_GUID_NORMAL`).
pub const GUID_NORMAL: [u8; 16] = [
    0x3b, 0xd6, 0x67, 0x49, 0x29, 0x2e, 0xd8, 0x4a, 0x83, 0x99, 0xf6, 0xa3, 0x39, 0xe3, 0xd0, 0x01,
];
/// The "encrypt on write" GUID.
pub const GUID_EOW: [u8; 16] = [
    0x3b, 0x4d, 0xa8, 0x92, 0x80, 0xdd, 0x0e, 0x4d, 0x9e, 0x4e, 0xb1, 0xe3, 0x28, 0x4e, 0xae, 0xd8,
];
/// State "fully encrypted" (cryptsetup `BITLK_STATE_NORMAL`).
pub const STATE_NORMAL: u16 = 4;

fn le16(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}
fn le32(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}
fn le64(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(a)
}

/// Kind of BitLocker volume, from the GUID in the volume header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeKind {
    /// A normal (fully encrypted or converting) volume.
    Normal,
    /// "Encrypt on write" (used-space-only encryption in progress).
    EncryptOnWrite,
    /// Another GUID.
    Unknown,
}

/// The parsed volume header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeHeader {
    /// Bytes per sector (512 or 4096).
    pub sector_size: u16,
    /// BitLocker To Go (FAT-looking header).
    pub togo: bool,
    /// Normal or encrypt-on-write.
    pub kind: VolumeKind,
    /// Offsets of the three metadata blocks.
    pub metadata_offsets: [u64; 3],
}

impl VolumeHeader {
    /// Reads and checks sector 0.
    pub fn read(src: &(impl ReadAt + ?Sized)) -> Result<Self, FveError> {
        const S: &str = "volume header";
        let mut b = [0u8; 512];
        src.read_at(S, 0, &mut b)?;
        let bad = |offset: u64, problem: String| FveError::Malformed {
            structure: S,
            offset,
            problem,
        };
        let togo = if &b[3..11] == SIGNATURE {
            false
        } else if &b[3..11] == SIGNATURE_TOGO {
            true
        } else {
            return Err(bad(
                3,
                format!(
                    "signature {:?} is neither \"-FVE-FS-\" nor \"MSWIN4.1\": not a BitLocker volume",
                    String::from_utf8_lossy(&b[3..11])
                ),
            ));
        };
        if b[..3] == BOOT_CODE_V1 {
            return Err(FveError::Unsupported(
                "BitLocker version 1 (Windows Vista) volumes (boot code eb 52 90)".into(),
            ));
        }
        if b[..3] != BOOT_CODE_V2 {
            return Err(bad(
                0,
                format!("boot entry point {} is not eb 58 90", hex::encode(&b[..3])),
            ));
        }
        let sector_size = match le16(&b, 11) {
            0 | 512 => 512,
            4096 => 4096,
            other => {
                return Err(bad(
                    11,
                    format!("sector size {other} (expected 512 or 4096)"),
                ))
            }
        };
        let at = if togo { 424 } else { 160 };
        let kind = if b[at..at + 16] == GUID_NORMAL {
            VolumeKind::Normal
        } else if b[at..at + 16] == GUID_EOW {
            VolumeKind::EncryptOnWrite
        } else {
            VolumeKind::Unknown
        };
        let metadata_offsets = [le64(&b, at + 16), le64(&b, at + 24), le64(&b, at + 32)];
        Ok(Self {
            sector_size,
            togo,
            kind,
            metadata_offsets,
        })
    }

    /// A Windows 7+ style header for a normal volume with 512-byte sectors.
    pub fn to_sector(&self, total_sectors: u64) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[..3].copy_from_slice(&BOOT_CODE_V2);
        b[3..11].copy_from_slice(SIGNATURE);
        b[11..13].copy_from_slice(&self.sector_size.to_le_bytes());
        b[13] = 8; // sectors per cluster
        b[21] = 0xf8; // media descriptor: fixed disk
        b[24] = 0x3f; // sectors per track
        b[26] = 0xff; // heads
        b[36..40].copy_from_slice(&0x1fe0u32.to_le_bytes());
        b[48..50].copy_from_slice(&1u16.to_le_bytes());
        b[50..52].copy_from_slice(&6u16.to_le_bytes());
        b[64] = 0x80;
        b[66] = 0x29;
        b[71..82].copy_from_slice(b"NO NAME    ");
        b[82..90].copy_from_slice(b"FAT32   ");
        b[160..176].copy_from_slice(&GUID_NORMAL);
        for (i, o) in self.metadata_offsets.iter().enumerate() {
            b[176 + 8 * i..184 + 8 * i].copy_from_slice(&o.to_le_bytes());
        }
        // Windows leaves the 32-bit total at 0; we keep the total in the unused 64-bit slot
        // of NTFS-style headers only for humans reading hex dumps.
        let _ = total_sectors;
        b[510] = 0x55;
        b[511] = 0xaa;
        b
    }
}

/// One FVE metadata block, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataBlock {
    /// Where it was read.
    pub offset: u64,
    /// Metadata version (2).
    pub version: u16,
    /// Current state (4 = encrypted).
    pub state: u16,
    /// Next state.
    pub next_state: u16,
    /// Bytes of the volume that are encrypted (from the start).
    pub encrypted_volume_size: u64,
    /// Convert size (unknown use; 0).
    pub convert_size: u32,
    /// Number of relocated first sectors.
    pub volume_header_sectors: u32,
    /// The three block offsets as this block records them.
    pub metadata_offsets: [u64; 3],
    /// Offset of the encrypted copy of the first sectors.
    pub volume_header_offset: u64,
    /// Volume GUID.
    pub volume_guid: Uuid,
    /// Next nonce counter.
    pub next_nonce: u32,
    /// Encryption method (0x8004 AES-XTS-128, ...).
    pub method: u16,
    /// The u16 after the method (Windows: a copy of it, or 0).
    pub method_hi: u16,
    /// Creation time, FILETIME.
    pub creation_time: u64,
    /// The entries.
    pub entries: Vec<Entry>,
    /// The validation's AES-CCM entry (SHA-256 under the VMK).
    pub validation: WrappedKey,
    /// SHA-256 of the block (header, entries, padding), to compare with the validation.
    pub sha256: [u8; 32],
}

impl MetadataBlock {
    /// Reads the block at `offset`, checking signature, version, sizes and CRC-32.
    pub fn read(src: &(impl ReadAt + ?Sized), offset: u64) -> Result<Self, FveError> {
        const S: &str = "FVE metadata block";
        let bad = |at: u64, problem: String| FveError::Malformed {
            structure: S,
            offset: at,
            problem,
        };
        if offset == 0 {
            return Err(bad(0, "offset 0 (overlaps the volume header)".into()));
        }
        let mut h = [0u8; HEADERS_LEN];
        src.read_at(S, offset, &mut h)?;
        if &h[..8] != SIGNATURE {
            return Err(bad(offset, "signature is not \"-FVE-FS-\"".into()));
        }
        let version = le16(&h, 10);
        if version == 1 {
            return Err(FveError::Unsupported(
                "FVE metadata version 1 (Windows Vista)".into(),
            ));
        }
        if version != 2 {
            return Err(bad(offset + 10, format!("version {version}, expected 2")));
        }
        let size = usize::from(le16(&h, 8)) << 4;
        if size < HEADERS_LEN || size as u64 + VALIDATION_LEN as u64 > BLOCK_AREA {
            return Err(bad(
                offset + 8,
                format!(
                    "block size {size} is outside {HEADERS_LEN}..{}",
                    BLOCK_AREA as usize - VALIDATION_LEN
                ),
            ));
        }
        let mut block = vec![0u8; size];
        src.read_at(S, offset, &mut block)?;
        let mut v = [0u8; VALIDATION_LEN];
        let voff = offset + size as u64;
        src.read_at("FVE metadata validation", voff, &mut v)?;
        let vbad = |at: u64, problem: String| FveError::Malformed {
            structure: "FVE metadata validation",
            offset: at,
            problem,
        };
        if le16(&v, 0) < 8 || le16(&v, 2) > 2 {
            return Err(vbad(
                voff,
                format!(
                    "size {} / version {} not plausible",
                    le16(&v, 0),
                    le16(&v, 2)
                ),
            ));
        }
        let crc = crc32fast::hash(&block);
        if crc != le32(&v, 4) {
            return Err(vbad(
                voff + 4,
                format!(
                    "CRC-32 {:#010x} does not match the block's {crc:#010x}",
                    le32(&v, 4)
                ),
            ));
        }
        let ventries = parse_entries(&v[8..], voff + 8, 0)?;
        let validation = match ventries.first() {
            Some(Entry {
                entry_type: 0,
                value: Value::AesCcm(w),
                ..
            }) if w.ciphertext.len() == 0x50 - 8 - 28 => w.clone(),
            _ => {
                return Err(vbad(
                    voff + 8,
                    "expected a 0x50-byte AES-CCM entry with the validation hash".into(),
                ))
            }
        };
        let meta_size = le32(&h, 64) as usize;
        if meta_size < META_HEADER_LEN || BLOCK_HEADER_LEN + meta_size > size {
            return Err(bad(
                offset + 64,
                format!(
                    "metadata size {meta_size} is outside {META_HEADER_LEN}..{}",
                    size - BLOCK_HEADER_LEN
                ),
            ));
        }
        if le32(&h, 68) != 1 || le32(&h, 72) != META_HEADER_LEN as u32 {
            return Err(bad(
                offset + 68,
                format!(
                    "metadata header version {} / size {} (expected 1 / 48)",
                    le32(&h, 68),
                    le32(&h, 72)
                ),
            ));
        }
        let entries = parse_entries(
            &block[HEADERS_LEN..BLOCK_HEADER_LEN + meta_size],
            offset + HEADERS_LEN as u64,
            0,
        )?;
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&h[80..96]);
        Ok(Self {
            offset,
            version,
            state: le16(&h, 12),
            next_state: le16(&h, 14),
            encrypted_volume_size: le64(&h, 16),
            convert_size: le32(&h, 24),
            volume_header_sectors: le32(&h, 28),
            metadata_offsets: [le64(&h, 32), le64(&h, 40), le64(&h, 48)],
            volume_header_offset: le64(&h, 56),
            volume_guid: entry::volume_guid(guid),
            next_nonce: le32(&h, 96),
            method: le16(&h, 100),
            method_hi: le16(&h, 102),
            creation_time: le64(&h, 104),
            entries,
            validation,
            sha256: Sha256::digest(&block).into(),
        })
    }

    /// The block bytes (headers, entries, zero padding to a multiple of 16) without the
    /// validation.
    fn block_bytes(&self) -> Result<Vec<u8>, FveError> {
        let entries = entry::entries_to_bytes(&self.entries)?;
        let meta_size = META_HEADER_LEN + entries.len();
        let size = (BLOCK_HEADER_LEN + meta_size).div_ceil(16) * 16;
        let limit = BLOCK_AREA as usize - VALIDATION_LEN;
        if size > limit {
            return Err(FveError::TooLarge {
                structure: "FVE metadata block",
                size: size as u64,
                limit: limit as u64,
            });
        }
        let mut b = Vec::with_capacity(size);
        b.extend_from_slice(SIGNATURE);
        b.extend_from_slice(&((size / 16) as u16).to_le_bytes());
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&self.state.to_le_bytes());
        b.extend_from_slice(&self.next_state.to_le_bytes());
        b.extend_from_slice(&self.encrypted_volume_size.to_le_bytes());
        b.extend_from_slice(&self.convert_size.to_le_bytes());
        b.extend_from_slice(&self.volume_header_sectors.to_le_bytes());
        for o in self.metadata_offsets {
            b.extend_from_slice(&o.to_le_bytes());
        }
        b.extend_from_slice(&self.volume_header_offset.to_le_bytes());
        let ms = meta_size as u32;
        for v in [ms, 1, META_HEADER_LEN as u32, ms] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.volume_guid.to_bytes_le());
        b.extend_from_slice(&self.next_nonce.to_le_bytes());
        b.extend_from_slice(&self.method.to_le_bytes());
        b.extend_from_slice(&self.method_hi.to_le_bytes());
        b.extend_from_slice(&self.creation_time.to_le_bytes());
        b.extend_from_slice(&entries);
        b.resize(size, 0);
        Ok(b)
    }

    /// Serialises the block with a fresh validation (CRC-32, and SHA-256 wrapped under
    /// `vmk` with `nonce`), padded to the 64 KiB area. Updates `sha256` and `validation`.
    pub fn seal(&mut self, vmk: &[u8; 32], nonce: Nonce) -> Result<Vec<u8>, FveError> {
        let block = self.block_bytes()?;
        self.sha256 = Sha256::digest(&block).into();
        let hash_entry = KeyEntry {
            entry_type: 0,
            version: 1,
            method: METHOD_VALIDATION_HASH,
            key: self.sha256.to_vec(),
        };
        self.validation =
            keywrap::wrap(vmk, nonce, &hash_entry).map_err(|source| FveError::Unwrap {
                context: "wrapping the validation hash".into(),
                source,
            })?;
        let mut out = block.clone();
        out.extend_from_slice(&((BLOCK_AREA as usize - block.len()) as u16).to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&block).to_le_bytes());
        out.extend_from_slice(&Entry::property(Value::AesCcm(self.validation.clone())).to_bytes()?);
        out.resize(BLOCK_AREA as usize, 0);
        Ok(out)
    }

    /// Checks the validation under the VMK: the MAC, then the SHA-256 of the block.
    pub fn verify(&self, vmk: &[u8; 32]) -> Result<(), FveError> {
        let e = keywrap::unwrap(vmk, &self.validation).map_err(|source| FveError::Unwrap {
            context: format!(
                "FVE metadata block at offset {:#x}: validation hash under the VMK",
                self.offset
            ),
            source,
        })?;
        if e.method != METHOD_VALIDATION_HASH || e.key.len() != 32 {
            return Err(FveError::Malformed {
                structure: "FVE metadata validation",
                offset: self.offset,
                problem: format!(
                    "decrypted validation has method {:#06x} and {} key bytes (expected 0x2005, 32)",
                    e.method,
                    e.key.len()
                ),
            });
        }
        if e.key != self.sha256 {
            return Err(FveError::ValidationMismatch {
                offset: self.offset,
            });
        }
        Ok(())
    }
}
