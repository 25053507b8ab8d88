//! A whole BitLocker volume image: inspect its protectors, unlock it with a secret (every
//! AES-CCM MAC checked, and the metadata's SHA-256 validated under the VMK), decrypt it,
//! create one, and rewrite its metadata (add, remove, rotate protectors).
//!
//! Layout of the volumes we write (512-byte sectors, size `S`, a multiple of 64 KiB):
//!
//! ```text
//! 0                  volume header ("-FVE-FS-", GUID, 3 metadata offsets)
//! 16 sectors ..T     data, AES-XTS with the sector number as tweak (or AES-CBC + Elephant
//!                    keyed by the sector's byte offset)
//! T = S - 320 KiB    metadata block 1 (64 KiB area)
//! T + 64 KiB         the first 16 sectors' plaintext, encrypted with *their own* position
//!                    as tweak (cryptsetup's iv_offset; dislocker's fix_read_sector_seven)
//! T + 128 KiB        metadata block 2;  T + 192 KiB  metadata block 3
//! T + 256 KiB .. S   data
//! ```
//!
//! Readers show the metadata areas and the relocated header area as zeros, so the
//! decrypted volume is the plaintext with those areas zeroed (a `--from` plaintext must have
//! no data in `[T, T + 256 KiB)`). The blocks sit near the
//! end (Windows scatters them where NTFS reserves space) so that a file system image smaller
//! than `T` survives whole; a data range after the last block keeps cryptsetup's segment
//! computation away from a zero segment at the very end of the device.

use std::io::Write;

use aes::cipher::KeyInit;
use aes::{Aes128, Aes256};
use rand::{CryptoRng, Rng};
use uuid::Uuid;
use xts_mode::{get_tweak_default, Xts128};

use super::elephant::{cbc_decrypt, Elephant};
use super::entry::{entry_type, value_type, Entry, Value};
use super::metadata::{MetadataBlock, VolumeHeader, VolumeKind, BLOCK_AREA, STATE_NORMAL};
use super::{FveError, ReadAt};
use crate::keywrap::{self, KeyEntry, KeyWrapError, Nonce, WrappedKey};
use crate::{
    stretch_pin, stretch_recovery_password, KeyProtectorId, ProtectorType, RecoveryPassword, Vmk,
};

/// Sector size of the volumes we write.
pub const SECTOR: u64 = 512;
/// Sectors relocated from the start of the volume.
pub const HEADER_SECTORS: u64 = 16;
/// Smallest volume we write.
pub const MIN_SIZE: u64 = 1024 * 1024;
/// Stretch-key method of a recovery-password protector.
const STRETCH_RECOVERY: u32 = 0x1000;
/// Stretch-key method of a password (and, here, TPM+PIN) protector.
const STRETCH_PASSWORD: u32 = 0x1001;
/// Method of the external key in a .BEK file.
const METHOD_EXTERNAL_KEY: u32 = 0x2002;

/// Sector encryption methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cipher {
    /// AES-XTS with two AES-128 keys (Windows 10 1511+ default); code 0x8004.
    AesXts128,
    /// AES-XTS with two AES-256 keys; code 0x8005.
    AesXts256,
    /// AES-CBC-128, IV = AES(FVEK, byte offset) (Windows 8+ without diffuser); 0x8002.
    AesCbc128,
    /// AES-CBC-256, as above; 0x8003.
    AesCbc256,
    /// AES-CBC-128 with the Elephant diffuser (Windows Vista and 7 default); 0x8000.
    AesCbcElephant128,
    /// AES-CBC-256 with the Elephant diffuser; 0x8001.
    AesCbcElephant256,
}

impl Cipher {
    /// The on-disk code.
    pub fn code(self) -> u16 {
        match self {
            Self::AesCbcElephant128 => 0x8000,
            Self::AesCbcElephant256 => 0x8001,
            Self::AesCbc128 => 0x8002,
            Self::AesCbc256 => 0x8003,
            Self::AesXts128 => 0x8004,
            Self::AesXts256 => 0x8005,
        }
    }

    /// From an on-disk code; unknown codes are unsupported.
    pub fn from_code(code: u16) -> Result<Self, FveError> {
        match code {
            0x8000 => Ok(Self::AesCbcElephant128),
            0x8001 => Ok(Self::AesCbcElephant256),
            0x8002 => Ok(Self::AesCbc128),
            0x8003 => Ok(Self::AesCbc256),
            0x8004 => Ok(Self::AesXts128),
            0x8005 => Ok(Self::AesXts256),
            other => Err(FveError::Unsupported(format!(
                "unknown encryption method {other:#06x}"
            ))),
        }
    }

    /// The methods [`NewVolume`] writes, as `FromStr` spells them.
    pub const WRITABLE_NAMES: &'static str =
        "aes-xts-128, aes-xts-256, aes-cbc-elephant-128 or aes-cbc-elephant-256";

    /// Whether [`NewVolume`] writes this method (plain AES-CBC is read only).
    pub fn writable(self) -> bool {
        !matches!(self, Self::AesCbc128 | Self::AesCbc256)
    }

    /// The name cryptsetup and manage-bde users know.
    pub fn name(self) -> &'static str {
        match self {
            Self::AesCbc128 => "aes-cbc-128",
            Self::AesCbc256 => "aes-cbc-256",
            Self::AesCbcElephant128 => "aes-cbc-elephant-128",
            Self::AesCbcElephant256 => "aes-cbc-elephant-256",
            Self::AesXts128 => "aes-xts-128",
            Self::AesXts256 => "aes-xts-256",
        }
    }

    /// FVEK bytes (Elephant: the AES key at 0, the sector-key key at 32, each padded to
    /// 32 bytes, as Windows writes it).
    pub fn key_len(self) -> usize {
        match self {
            Self::AesCbc128 => 16,
            Self::AesCbc256 | Self::AesXts128 => 32,
            Self::AesXts256 | Self::AesCbcElephant128 | Self::AesCbcElephant256 => 64,
        }
    }

    /// Upper u16 of the metadata header's method field, as Windows writes it.
    fn method_hi(self) -> u16 {
        match self {
            Self::AesXts128 | Self::AesCbc128 => self.code(),
            // Windows 7 writes 0 after an Elephant method (its 128-bit image).
            Self::AesXts256
            | Self::AesCbc256
            | Self::AesCbcElephant128
            | Self::AesCbcElephant256 => 0,
        }
    }
}

impl std::str::FromStr for Cipher {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "aes-xts-128" => Ok(Self::AesXts128),
            "aes-xts-256" => Ok(Self::AesXts256),
            "aes-cbc-elephant-128" => Ok(Self::AesCbcElephant128),
            "aes-cbc-elephant-256" => Ok(Self::AesCbcElephant256),
            other => Err(format!(
                "{other:?}: volumes can be written with {}",
                Self::WRITABLE_NAMES
            )),
        }
    }
}

/// A sector cipher with its key (the FVEK): what a reader runs on every sector.
pub enum SectorCipher {
    Xts128(Box<Xts128<Aes128>>),
    Xts256(Box<Xts128<Aes256>>),
    Cbc128(Box<Aes128>),
    Cbc256(Box<Aes256>),
    Elephant128(Box<Elephant<Aes128>>),
    Elephant256(Box<Elephant<Aes256>>),
}

impl std::fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        let mode = match self {
            Self::Xts128(_) | Self::Xts256(_) => "AES-XTS",
            Self::Cbc128(_) | Self::Cbc256(_) => "AES-CBC",
            Self::Elephant128(_) | Self::Elephant256(_) => "AES-CBC + Elephant",
        };
        f.debug_tuple("SectorCipher").field(&mode).finish()
    }
}

impl SectorCipher {
    /// From the method and the FVEK (at least [`Cipher::key_len`] bytes).
    pub fn new(cipher: Cipher, key: &[u8]) -> Result<Self, FveError> {
        let short = || FveError::Malformed {
            structure: "FVEK",
            offset: 0,
            problem: format!(
                "{} needs {} key bytes, the FVEK has {}",
                cipher.name(),
                cipher.key_len(),
                key.len()
            ),
        };
        let k = key.get(..cipher.key_len()).ok_or_else(short)?;
        let bad = |_| short();
        Ok(match cipher {
            Cipher::AesXts128 => Self::Xts128(Box::new(Xts128::new(
                Aes128::new_from_slice(&k[..16]).map_err(bad)?,
                Aes128::new_from_slice(&k[16..]).map_err(bad)?,
            ))),
            Cipher::AesXts256 => Self::Xts256(Box::new(Xts128::new(
                Aes256::new_from_slice(&k[..32]).map_err(bad)?,
                Aes256::new_from_slice(&k[32..]).map_err(bad)?,
            ))),
            Cipher::AesCbc128 => Self::Cbc128(Box::new(Aes128::new_from_slice(k).map_err(bad)?)),
            Cipher::AesCbc256 => Self::Cbc256(Box::new(Aes256::new_from_slice(k).map_err(bad)?)),
            Cipher::AesCbcElephant128 => Self::Elephant128(Box::new(Elephant::new(
                Aes128::new_from_slice(&k[..16]).map_err(bad)?,
                Aes128::new_from_slice(&k[32..48]).map_err(bad)?,
            ))),
            Cipher::AesCbcElephant256 => Self::Elephant256(Box::new(Elephant::new(
                Aes256::new_from_slice(&k[..32]).map_err(bad)?,
                Aes256::new_from_slice(&k[32..]).map_err(bad)?,
            ))),
        })
    }

    /// Decrypts sector number `sector` (in units of `buf.len()`, the sector size) in place.
    pub fn decrypt(&self, sector: u64, buf: &mut [u8]) {
        match self {
            Self::Xts128(x) => x.decrypt_sector(buf, get_tweak_default(u128::from(sector))),
            Self::Xts256(x) => x.decrypt_sector(buf, get_tweak_default(u128::from(sector))),
            Self::Cbc128(c) => cbc_decrypt(c.as_ref(), sector * buf.len() as u64, buf),
            Self::Cbc256(c) => cbc_decrypt(c.as_ref(), sector * buf.len() as u64, buf),
            Self::Elephant128(e) => e.decrypt_sector(sector * buf.len() as u64, buf),
            Self::Elephant256(e) => e.decrypt_sector(sector * buf.len() as u64, buf),
        }
    }

    fn encrypt(&self, sector: u64, buf: &mut [u8]) -> Result<(), FveError> {
        match self {
            Self::Xts128(x) => x.encrypt_sector(buf, get_tweak_default(u128::from(sector))),
            Self::Xts256(x) => x.encrypt_sector(buf, get_tweak_default(u128::from(sector))),
            Self::Elephant128(e) => e.encrypt_sector(sector * buf.len() as u64, buf),
            Self::Elephant256(e) => e.encrypt_sector(sector * buf.len() as u64, buf),
            Self::Cbc128(_) | Self::Cbc256(_) => {
                return Err(FveError::Unsupported(
                    "writing AES-CBC volumes without the diffuser (read only)".into(),
                ))
            }
        }
        Ok(())
    }
}

/// A protector as `manage-bde -protectors -get` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProtectorInfo {
    /// Key protector ID.
    pub id: KeyProtectorId,
    /// On-disk protection code.
    pub protection: u16,
    /// Our type, if it is one of ours.
    #[serde(rename = "type")]
    pub protector_type: Option<ProtectorType>,
    /// Human-readable type (cryptsetup's wording).
    pub type_name: &'static str,
    /// Last modification (creation) time, FILETIME.
    pub modified_filetime: u64,
    /// The same as RFC 3339 UTC.
    pub modified: String,
    /// Description string (e.g. "ExternalKey", "DiskPassword"), if any.
    pub description: Option<String>,
    /// Stretch salt, hex, if any.
    pub salt: Option<String>,
    /// Offset of the VMK entry in the image.
    pub entry_offset: u64,
}

/// The name of a protection code (cryptsetup's wording).
pub fn protection_name(code: u16) -> &'static str {
    match code {
        0x0000 => "clear key",
        0x0100 => "TPM",
        0x0200 => "startup key",
        0x0500 => "TPM and PIN",
        0x0800 => "recovery password",
        0x1000 => "smart card",
        0x2000 => "password",
        _ => "unknown",
    }
}

/// FILETIME (100 ns since 1601) as RFC 3339 UTC.
pub fn filetime_rfc3339(ft: u64) -> String {
    const EPOCH_DIFF: i128 = 11_644_473_600;
    let secs = i128::from(ft / 10_000_000) - EPOCH_DIFF;
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("FILETIME {ft:#x}"))
}

fn now_filetime() -> u64 {
    u64::from_le_bytes(Nonce::now(0).0[..8].try_into().unwrap_or([0; 8]))
}

/// A startup key file (`{GUID}.BEK`).
#[derive(Clone, PartialEq, Eq)]
pub struct BekFile {
    /// The startup-key protector's ID (also the file name).
    pub id: KeyProtectorId,
    /// The 32-byte external key.
    pub key: [u8; 32],
    /// Creation time, FILETIME.
    pub created: u64,
}

impl std::fmt::Debug for BekFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BekFile")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl BekFile {
    /// The file name Windows gives it: the ID without braces, uppercase, `.BEK`.
    pub fn file_name(&self) -> String {
        format!(
            "{}.BEK",
            self.id.uuid().hyphenated().to_string().to_ascii_uppercase()
        )
    }

    /// Serialises: a 48-byte header like the metadata header (with the protector ID as its
    /// GUID), then an external-key entry holding "ExternalKey" and the key.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FveError> {
        let e = Entry::new(
            entry_type::STARTUP_KEY,
            Value::ExternalKey {
                id: self.id,
                modified: self.created,
                properties: vec![
                    Entry::property(Value::String("ExternalKey".into())),
                    Entry::property(Value::Key {
                        method: METHOD_EXTERNAL_KEY,
                        key: self.key.to_vec(),
                    }),
                ],
            },
        )
        .to_bytes()?;
        let size = (48 + e.len()) as u32;
        let mut out = Vec::with_capacity(size as usize);
        for v in [size, 1, 48, size] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.id.to_disk_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.created.to_le_bytes());
        out.extend_from_slice(&e);
        Ok(out)
    }

    /// Parses a .BEK file.
    pub fn parse(b: &[u8]) -> Result<Self, FveError> {
        let bad = |offset: u64, problem: &str| FveError::Malformed {
            structure: "BEK file",
            offset,
            problem: problem.into(),
        };
        if b.len() < 48 {
            return Err(bad(0, "shorter than its 48-byte header"));
        }
        if b[4..8] != 1u32.to_le_bytes() {
            return Err(bad(4, "header version is not 1"));
        }
        let entries = super::entry::parse_entries(&b[48..], 48, 0)?;
        for e in &entries {
            if let Value::ExternalKey {
                id,
                modified,
                properties,
            } = &e.value
            {
                for p in properties {
                    if let Value::Key { key, .. } = &p.value {
                        let key: [u8; 32] = key
                            .as_slice()
                            .try_into()
                            .map_err(|_| bad(p.offset, "external key is not 32 bytes"))?;
                        return Ok(Self {
                            id: *id,
                            key,
                            created: *modified,
                        });
                    }
                }
            }
        }
        Err(bad(48, "no external key entry with a key"))
    }
}

/// A secret that may unlock a volume.
#[derive(Debug, Clone, Copy)]
pub enum Secret<'a> {
    /// The 48-digit recovery password.
    RecoveryPassword(&'a RecoveryPassword),
    /// A password (data volumes).
    Password(&'a str),
    /// A startup key file.
    StartupKey(&'a BekFile),
    /// The clear key stored on a suspended volume.
    ClearKey,
    /// The VMK itself (e.g. unsealed from a TPM).
    Vmk(&'a Vmk),
}

impl Secret<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Self::RecoveryPassword(_) => "recovery password",
            Self::Password(_) => "password",
            Self::StartupKey(_) => "startup key",
            Self::ClearKey => "clear key",
            Self::Vmk(_) => "volume master key",
        }
    }
}

/// A parsed image: the volume header and the first valid metadata block.
#[derive(Debug, Clone)]
pub struct Image {
    /// The volume header.
    pub header: VolumeHeader,
    /// The metadata block in use.
    pub block: MetadataBlock,
    /// Problems with the metadata copies that were skipped.
    pub skipped: Vec<String>,
    /// Image length.
    pub len: u64,
}

/// A volume whose VMK and FVEK are known.
pub struct UnlockedImage {
    vmk: Vmk,
    cipher: Cipher,
    sectors: SectorCipher,
    via: Option<KeyProtectorId>,
}

impl std::fmt::Debug for UnlockedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnlockedImage")
            .field("cipher", &self.cipher)
            .field("via", &self.via)
            .finish_non_exhaustive()
    }
}

fn first_ccm(entries: &[Entry]) -> Option<&WrappedKey> {
    entries.iter().find_map(|p| match &p.value {
        Value::AesCcm(w) => Some(w),
        _ => None,
    })
}

fn stretch_salt(entries: &[Entry]) -> Option<[u8; 16]> {
    entries.iter().find_map(|p| match &p.value {
        Value::StretchKey { salt, .. } => Some(*salt),
        _ => None,
    })
}

impl Image {
    /// Reads the volume header and the first metadata block whose CRC-32 and structure are
    /// valid (as cryptsetup does); the block must record its own offset.
    pub fn open(src: &(impl ReadAt + ?Sized)) -> Result<Self, FveError> {
        let len = src.byte_len()?;
        let header = VolumeHeader::read(src)?;
        let mut skipped = Vec::new();
        for (i, &off) in header.metadata_offsets.iter().enumerate() {
            match MetadataBlock::read(src, off) {
                Ok(block) => {
                    if block.metadata_offsets[i] != off {
                        skipped.push(format!(
                            "block {} at {off:#x} records its offset as {:#x}",
                            i + 1,
                            block.metadata_offsets[i]
                        ));
                        continue;
                    }
                    return Ok(Self {
                        header,
                        block,
                        skipped,
                        len,
                    });
                }
                Err(e @ FveError::Unsupported(_)) => return Err(e),
                Err(e) => skipped.push(format!("block {} at {off:#x}: {e}", i + 1)),
            }
        }
        Err(FveError::NoValidMetadata(skipped))
    }

    /// The volume description (computer, drive, date), if any.
    pub fn description(&self) -> Option<&str> {
        self.block
            .entries
            .iter()
            .find_map(|e| match (&e.value, e.entry_type) {
                (Value::String(s), entry_type::DESCRIPTION) => Some(s.as_str()),
                _ => None,
            })
    }

    /// The encryption method.
    pub fn cipher(&self) -> Result<Cipher, FveError> {
        Cipher::from_code(self.block.method)
    }

    /// Offset and size of the relocated first sectors.
    pub fn volume_header_area(&self) -> (u64, u64) {
        let from_entry = self.block.entries.iter().find_map(|e| match &e.value {
            Value::OffsetSize { offset, size, .. } if e.entry_type == entry_type::VOLUME_HEADER => {
                Some((*offset, *size))
            }
            _ => None,
        });
        from_entry.unwrap_or((
            self.block.volume_header_offset,
            u64::from(self.block.volume_header_sectors) * u64::from(self.header.sector_size),
        ))
    }

    /// The protectors, in on-disk order.
    pub fn protectors(&self) -> Vec<ProtectorInfo> {
        self.block
            .entries
            .iter()
            .filter(|e| e.entry_type == entry_type::VMK)
            .filter_map(|e| match &e.value {
                Value::Vmk {
                    id,
                    modified,
                    protection,
                    properties,
                    ..
                } => Some(ProtectorInfo {
                    id: *id,
                    protection: *protection,
                    protector_type: ProtectorType::from_code(*protection),
                    type_name: protection_name(*protection),
                    modified_filetime: *modified,
                    modified: filetime_rfc3339(*modified),
                    description: properties.iter().find_map(|p| match &p.value {
                        Value::String(s) => Some(s.clone()),
                        _ => None,
                    }),
                    salt: stretch_salt(properties).map(hex::encode),
                    entry_offset: e.offset,
                }),
                _ => None,
            })
            .collect()
    }

    fn vmk_entries(&self) -> impl Iterator<Item = (KeyProtectorId, u16, &[Entry])> {
        self.block.entries.iter().filter_map(|e| match &e.value {
            Value::Vmk {
                id,
                protection,
                properties,
                ..
            } if e.entry_type == entry_type::VMK => Some((*id, *protection, properties.as_slice())),
            _ => None,
        })
    }

    /// Unlocks: derives the protector key, unwraps the VMK (MAC), validates the metadata's
    /// SHA-256 under the VMK, unwraps the FVEK (MAC).
    pub fn unlock(&self, secret: Secret<'_>) -> Result<UnlockedImage, FveError> {
        let cipher = self.cipher()?;
        let (vmk, via) = self.find_vmk(secret)?;
        self.block.verify(vmk.as_bytes())?;
        let w = self
            .block
            .entries
            .iter()
            .find_map(|e| match &e.value {
                Value::AesCcm(w) if e.entry_type == entry_type::FVEK => Some(w),
                _ => None,
            })
            .ok_or_else(|| FveError::Malformed {
                structure: "FVE metadata block",
                offset: self.block.offset,
                problem: "no FVEK entry".into(),
            })?;
        let fvek = keywrap::unwrap(vmk.as_bytes(), w).map_err(|source| FveError::Unwrap {
            context: "unwrapping the FVEK with the VMK".into(),
            source,
        })?;
        Ok(UnlockedImage {
            sectors: SectorCipher::new(cipher, &fvek.key)?,
            vmk,
            cipher,
            via,
        })
    }

    fn find_vmk(&self, secret: Secret<'_>) -> Result<(Vmk, Option<KeyProtectorId>), FveError> {
        if let Secret::Vmk(v) = secret {
            return Ok((v.clone(), None));
        }
        let want = match secret {
            Secret::RecoveryPassword(_) => 0x0800,
            Secret::Password(_) => 0x2000,
            Secret::StartupKey(_) => 0x0200,
            _ => 0x0000,
        };
        let mut any = false;
        for (id, protection, props) in self.vmk_entries() {
            if protection != want {
                continue;
            }
            let key: [u8; 32] = match secret {
                Secret::RecoveryPassword(pw) => {
                    let Some(salt) = stretch_salt(props) else {
                        continue;
                    };
                    stretch_recovery_password(pw, &salt)
                }
                Secret::Password(pw) => {
                    let Some(salt) = stretch_salt(props) else {
                        continue;
                    };
                    stretch_pin(pw, &salt)
                }
                Secret::StartupKey(bek) => {
                    if bek.id != id {
                        continue;
                    }
                    bek.key
                }
                _ => {
                    let clear = props.iter().find_map(|p| match &p.value {
                        Value::Key { key, .. } => <[u8; 32]>::try_from(key.as_slice()).ok(),
                        _ => None,
                    });
                    let Some(k) = clear else { continue };
                    k
                }
            };
            let Some(w) = first_ccm(props) else { continue };
            any = true;
            match keywrap::unwrap(&key, w) {
                Ok(e) => {
                    let vmk = e.key32().map_err(|source| FveError::Unwrap {
                        context: format!("VMK entry of protector {id}"),
                        source,
                    })?;
                    return Ok((Vmk::from_bytes(vmk), Some(id)));
                }
                Err(KeyWrapError::MacMismatch) => continue,
                Err(source) => {
                    return Err(FveError::Unwrap {
                        context: format!("VMK entry of protector {id}"),
                        source,
                    })
                }
            }
        }
        if let Secret::StartupKey(bek) = secret {
            if !any {
                return Err(FveError::NoSuchProtector(bek.id));
            }
        }
        Err(if any {
            FveError::WrongSecret {
                kind: secret.kind(),
            }
        } else {
            FveError::NoProtector {
                kind: secret.kind(),
            }
        })
    }

    /// Whether an offset falls in a metadata area or the relocated-header area (read as 0).
    fn is_virtual(&self, offset: u64) -> bool {
        let (ho, hs) = self.volume_header_area();
        self.header
            .metadata_offsets
            .iter()
            .any(|&m| offset >= m && offset < m.saturating_add(BLOCK_AREA))
            || (offset >= ho && offset < ho.saturating_add(hs))
    }

    /// Decrypts the volume to `out`, as cryptsetup's mapping and dislocker show it.
    pub fn decrypt_to(
        &self,
        src: &(impl ReadAt + ?Sized),
        unlocked: &UnlockedImage,
        out: &mut dyn Write,
    ) -> Result<u64, FveError> {
        if self.header.kind != VolumeKind::Normal {
            return Err(FveError::Unsupported(format!(
                "decrypting a volume of kind {:?} (only normal volumes; cryptsetup refuses these too)",
                self.header.kind
            )));
        }
        let ss = u64::from(self.header.sector_size);
        let (ho, hs) = self.volume_header_area();
        let header_sectors = hs / ss;
        let count = self.len / ss;
        let mut buf = vec![0u8; ss as usize];
        for n in 0..count {
            let off = n * ss;
            if n < header_sectors {
                let phys = ho / ss + n;
                src.read_at("relocated volume header", phys * ss, &mut buf)?;
                unlocked.sectors.decrypt(phys, &mut buf);
            } else if self.is_virtual(off) {
                buf.fill(0);
            } else {
                src.read_at("volume data", off, &mut buf)?;
                if off < self.block.encrypted_volume_size {
                    unlocked.sectors.decrypt(n, &mut buf);
                }
            }
            out.write_all(&buf).map_err(|source| FveError::Io {
                offset: off,
                source,
            })?;
        }
        Ok(count * ss)
    }

    /// Serialises the three metadata blocks with fresh validations under `vmk`.
    pub fn sealed_blocks(&mut self, vmk: &Vmk) -> Result<Vec<(u64, Vec<u8>)>, FveError> {
        let nonce = Nonce::now(self.block.next_nonce);
        self.block.next_nonce = self.block.next_nonce.wrapping_add(1);
        let bytes = self.block.seal(vmk.as_bytes(), nonce)?;
        Ok(self
            .block
            .metadata_offsets
            .iter()
            .map(|&o| (o, bytes.clone()))
            .collect())
    }

    fn next_nonce(&mut self) -> Nonce {
        let n = Nonce::now(self.block.next_nonce);
        self.block.next_nonce = self.block.next_nonce.wrapping_add(1);
        n
    }

    /// Adds a recovery-password protector (one stretch); returns its ID and password. The
    /// caller writes [`Image::sealed_blocks`] back.
    pub fn add_recovery_password<R: Rng + CryptoRng + ?Sized>(
        &mut self,
        unlocked: &UnlockedImage,
        rng: &mut R,
    ) -> Result<(KeyProtectorId, RecoveryPassword), FveError> {
        let pw = RecoveryPassword::generate(rng);
        let mut salt = [0u8; 16];
        rng.fill(&mut salt);
        let key = stretch_recovery_password(&pw, &salt);
        let id = KeyProtectorId::random(rng);
        let nonce = self.next_nonce();
        let e = vmk_entry(
            id,
            0x0800,
            vec![
                stretch(STRETCH_RECOVERY, salt),
                wrap_vmk(&key, nonce, &unlocked.vmk)?,
            ],
        );
        let at = self
            .block
            .entries
            .iter()
            .rposition(|e| e.entry_type == entry_type::VMK)
            .map_or(0, |i| i + 1);
        self.block.entries.insert(at, e);
        Ok((id, pw))
    }

    /// Removes a protector.
    pub fn remove_protector(&mut self, id: KeyProtectorId) -> Result<(), FveError> {
        let before = self.block.entries.len();
        self.block
            .entries
            .retain(|e| !matches!(&e.value, Value::Vmk { id: x, .. } if *x == id));
        if self.block.entries.len() == before {
            return Err(FveError::NoSuchProtector(id));
        }
        Ok(())
    }

    /// Rotation after use: a new recovery password replaces `old`.
    pub fn rotate_recovery_password<R: Rng + CryptoRng + ?Sized>(
        &mut self,
        unlocked: &UnlockedImage,
        rng: &mut R,
        old: KeyProtectorId,
    ) -> Result<(KeyProtectorId, RecoveryPassword), FveError> {
        if !self
            .protectors()
            .iter()
            .any(|p| p.id == old && p.protection == 0x0800)
        {
            return Err(FveError::NoSuchProtector(old));
        }
        let new = self.add_recovery_password(unlocked, rng)?;
        self.remove_protector(old)?;
        Ok(new)
    }

    /// The sealed blob of a TPM or TPM+PIN protector.
    pub fn tpm_key(&self, id: KeyProtectorId) -> Option<Vec<u8>> {
        self.vmk_entries()
            .filter(|(x, _, _)| *x == id)
            .flat_map(|(_, _, props)| props.iter())
            .find_map(|p| match &p.value {
                Value::TpmKey(blob) => Some(blob.clone()),
                _ => None,
            })
    }

    /// Replaces the sealed blob of a TPM or TPM+PIN protector (a re-seal keeps the ID).
    pub fn set_tpm_key(&mut self, id: KeyProtectorId, blob: Vec<u8>) -> Result<(), FveError> {
        for e in &mut self.block.entries {
            if let Value::Vmk {
                id: x, properties, ..
            } = &mut e.value
            {
                if *x != id {
                    continue;
                }
                if let Some(Value::TpmKey(old)) = properties
                    .iter_mut()
                    .map(|p| &mut p.value)
                    .find(|v| matches!(v, Value::TpmKey(_)))
                {
                    *old = blob;
                    return Ok(());
                }
            }
        }
        Err(FveError::NoSuchProtector(id))
    }

    /// Rewrites the metadata of the image file at `path` (all three copies).
    pub fn write_metadata(&mut self, path: &std::path::Path, vmk: &Vmk) -> Result<(), FveError> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| FveError::Io { offset: 0, source })?;
        for (off, bytes) in self.sealed_blocks(vmk)? {
            f.write_all_at(&bytes, off).map_err(|source| FveError::Io {
                offset: off,
                source,
            })?;
        }
        f.sync_all()
            .map_err(|source| FveError::Io { offset: 0, source })
    }
}

impl UnlockedImage {
    /// The VMK.
    pub fn vmk(&self) -> &Vmk {
        &self.vmk
    }
    /// The sector cipher.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }
    /// The protector that opened the volume (None for the VMK itself).
    pub fn unlocked_by(&self) -> Option<KeyProtectorId> {
        self.via
    }
}

fn stretch(method: u32, salt: [u8; 16]) -> Entry {
    Entry::property(Value::StretchKey {
        method,
        salt,
        nested: Vec::new(),
    })
}

fn wrap_vmk(key: &[u8; 32], nonce: Nonce, vmk: &Vmk) -> Result<Entry, FveError> {
    let w = keywrap::wrap(key, nonce, &KeyEntry::vmk(*vmk.as_bytes())).map_err(|source| {
        FveError::Unwrap {
            context: "wrapping the VMK".into(),
            source,
        }
    })?;
    Ok(Entry::property(Value::AesCcm(w)))
}

fn vmk_entry(id: KeyProtectorId, protection: u16, properties: Vec<Entry>) -> Entry {
    Entry::new(
        entry_type::VMK,
        Value::Vmk {
            id,
            modified: now_filetime(),
            unknown: 0,
            protection,
            properties,
        },
    )
}

/// A protector to put on a new volume.
#[derive(Debug, Clone)]
pub enum NewProtector {
    /// A recovery password (random if None).
    RecoveryPassword(Option<RecoveryPassword>),
    /// A password.
    Password(String),
    /// A startup key (a .BEK file is returned).
    StartupKey,
    /// TPM only: an opaque TPM2 sealed blob stored as a TPM-encoded key.
    Tpm {
        /// The sealed blob.
        blob: Vec<u8>,
    },
    /// TPM + PIN: a PIN stretch salt and an opaque TPM2 sealed blob.
    TpmAndPin {
        /// The sealed blob.
        blob: Vec<u8>,
    },
}

/// Parameters of a new volume.
#[derive(Debug, Clone)]
pub struct NewVolume {
    /// Size in bytes (rounded up to 64 KiB; at least 1 MiB).
    pub size: u64,
    /// Sector cipher (not plain AES-CBC).
    pub cipher: Cipher,
    /// Description (Windows: "COMPUTER C: date").
    pub description: String,
    /// Plaintext of the volume (zero-padded); `None`: [`known_sector`] patterns.
    pub plaintext: Option<Vec<u8>>,
    /// Protectors, in order.
    pub protectors: Vec<NewProtector>,
}

/// A protector of a new volume and its secret.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CreatedProtector {
    /// Key protector ID.
    pub id: KeyProtectorId,
    /// Type.
    #[serde(rename = "type")]
    pub protector_type: ProtectorType,
    /// The 48 digits, for a recovery password.
    pub recovery_password: Option<String>,
    /// The .BEK file, for a startup key.
    #[serde(skip)]
    pub bek: Option<BekFile>,
}

/// A volume just created.
#[derive(Debug)]
pub struct CreatedVolume {
    /// The image bytes.
    pub image: Vec<u8>,
    /// Volume GUID.
    pub volume_guid: Uuid,
    /// The protectors.
    pub protectors: Vec<CreatedProtector>,
    /// The VMK (to seal into a TPM, or to rotate).
    pub vmk: Vmk,
    /// What the decrypted volume reads as (the plaintext with the reserved areas zeroed).
    pub plaintext_view: Vec<u8>,
}

/// The known content of sector `n` of a volume made without a plaintext: a line naming the
/// sector, then a byte pattern that depends on `n`.
pub fn known_sector(n: u64) -> [u8; 512] {
    let mut s = [0u8; 512];
    let head = format!("harness BitLocker test volume, sector {n:010}\n");
    for (i, b) in s.iter_mut().enumerate() {
        *b = (n.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8;
    }
    s[..head.len()].copy_from_slice(head.as_bytes());
    s
}

impl NewVolume {
    /// Writes a new volume image in memory, with a random VMK and random protector IDs.
    pub fn create<R: Rng + CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
    ) -> Result<CreatedVolume, FveError> {
        let mut vmk = [0u8; 32];
        rng.fill(&mut vmk);
        self.create_with(rng, Vmk::from_bytes(vmk), &[])
    }

    /// Writes a new volume image in memory under a given VMK (one already sealed into a
    /// TPM); `ids[i]`, when set, is the ID of the `i`-th protector (the others are random).
    pub fn create_with<R: Rng + CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        vmk: Vmk,
        ids: &[Option<KeyProtectorId>],
    ) -> Result<CreatedVolume, FveError> {
        if !self.cipher.writable() {
            return Err(FveError::InvalidParams(format!(
                "{} volumes are read only here; write {}",
                self.cipher.name(),
                Cipher::WRITABLE_NAMES
            )));
        }
        let size = self.size.max(MIN_SIZE).div_ceil(BLOCK_AREA) * BLOCK_AREA;
        if size > 1 << 34 {
            return Err(FveError::InvalidParams(format!(
                "{size} bytes: images are built in memory, keep them under 16 GiB"
            )));
        }
        if self.protectors.is_empty() {
            return Err(FveError::InvalidParams("a volume needs a protector".into()));
        }
        let t = size - 5 * BLOCK_AREA;
        let offsets = [t, t + 2 * BLOCK_AREA, t + 3 * BLOCK_AREA];
        let hdr_off = t + BLOCK_AREA;
        let hdr_size = HEADER_SECTORS * SECTOR;
        let reserved = t..t + 4 * BLOCK_AREA;

        // The plaintext view.
        let mut view = vec![0u8; size as usize];
        match &self.plaintext {
            Some(p) => {
                if p.len() as u64 > size {
                    return Err(FveError::InvalidParams(format!(
                        "plaintext is {} bytes, larger than the volume ({size})",
                        p.len()
                    )));
                }
                let r = reserved.start as usize..(reserved.end as usize).min(p.len());
                if r.start < r.end && p[r.clone()].iter().any(|&b| b != 0) {
                    return Err(FveError::InvalidParams(format!(
                        "plaintext has data in {:#x}..{:#x}, where the metadata lives; make the file system at most {t} bytes",
                        reserved.start, reserved.end
                    )));
                }
                view[..p.len()].copy_from_slice(p);
            }
            None => {
                for (n, chunk) in view.chunks_exact_mut(SECTOR as usize).enumerate() {
                    chunk.copy_from_slice(&known_sector(n as u64));
                }
            }
        }
        // Readers show exactly the metadata areas and the relocated-header area as zeros.
        let is_virtual = |off: u64| {
            offsets.iter().any(|&o| off >= o && off < o + BLOCK_AREA)
                || (off >= hdr_off && off < hdr_off + hdr_size)
        };
        for o in offsets {
            view[o as usize..(o + BLOCK_AREA) as usize].fill(0);
        }
        view[hdr_off as usize..(hdr_off + hdr_size) as usize].fill(0);

        let mut fvek = vec![0u8; self.cipher.key_len()];
        rng.fill(&mut fvek[..]);
        let sectors = SectorCipher::new(self.cipher, &fvek)?;
        let volume_guid = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
        let created = now_filetime();

        let mut counter = 1u32;
        let mut nonce = || {
            let n = Nonce::new(created, counter);
            counter += 1;
            n
        };
        let mut entries = vec![Entry::new(
            entry_type::DESCRIPTION,
            Value::String(self.description.clone()),
        )];
        let mut out_protectors = Vec::new();
        for (i, p) in self.protectors.iter().enumerate() {
            let random_id = KeyProtectorId::random(rng);
            let id = ids.get(i).copied().flatten().unwrap_or(random_id);
            let mut salt = [0u8; 16];
            rng.fill(&mut salt);
            let (ptype, props, pw, bek) = match p {
                NewProtector::RecoveryPassword(given) => {
                    let pw = (*given).unwrap_or_else(|| RecoveryPassword::generate(rng));
                    let key = stretch_recovery_password(&pw, &salt);
                    let props = vec![
                        stretch(STRETCH_RECOVERY, salt),
                        wrap_vmk(&key, nonce(), &vmk)?,
                    ];
                    (
                        ProtectorType::RecoveryPassword,
                        props,
                        Some(pw.to_string()),
                        None,
                    )
                }
                NewProtector::Password(pw) => {
                    let key = stretch_pin(pw, &salt);
                    let props = vec![
                        stretch(STRETCH_PASSWORD, salt),
                        wrap_vmk(&key, nonce(), &vmk)?,
                    ];
                    (ProtectorType::Password, props, None, None)
                }
                NewProtector::StartupKey => {
                    let mut key = [0u8; 32];
                    rng.fill(&mut key);
                    let props = vec![
                        Entry::property(Value::String("ExternalKey".into())),
                        wrap_vmk(&key, nonce(), &vmk)?,
                    ];
                    let bek = BekFile { id, key, created };
                    (ProtectorType::StartupKey, props, None, Some(bek))
                }
                NewProtector::Tpm { blob } => (
                    ProtectorType::Tpm,
                    vec![Entry::property(Value::TpmKey(blob.clone()))],
                    None,
                    None,
                ),
                NewProtector::TpmAndPin { blob } => (
                    ProtectorType::TpmAndPin,
                    vec![
                        stretch(STRETCH_PASSWORD, salt),
                        Entry::property(Value::TpmKey(blob.clone())),
                    ],
                    None,
                    None,
                ),
            };
            let mut e = vmk_entry(id, ptype.code(), props);
            if let Value::Vmk { modified, .. } = &mut e.value {
                *modified = created;
            }
            entries.push(e);
            out_protectors.push(CreatedProtector {
                id,
                protector_type: ptype,
                recovery_password: pw,
                bek,
            });
        }
        let fvek_entry = KeyEntry {
            entry_type: 0,
            version: 1,
            method: self.cipher.code(),
            key: fvek.clone(),
        };
        let w = keywrap::wrap(vmk.as_bytes(), nonce(), &fvek_entry).map_err(|source| {
            FveError::Unwrap {
                context: "wrapping the FVEK".into(),
                source,
            }
        })?;
        entries.push(Entry::new(entry_type::FVEK, Value::AesCcm(w)));
        entries.push(Entry::new(
            entry_type::VOLUME_HEADER,
            Value::OffsetSize {
                offset: hdr_off,
                size: hdr_size,
                extra: Vec::new(),
            },
        ));
        let mut block = MetadataBlock {
            offset: offsets[0],
            version: 2,
            state: STATE_NORMAL,
            next_state: STATE_NORMAL,
            encrypted_volume_size: size,
            convert_size: 0,
            volume_header_sectors: HEADER_SECTORS as u32,
            metadata_offsets: offsets,
            volume_header_offset: hdr_off,
            volume_guid,
            next_nonce: counter + 1,
            method: self.cipher.code(),
            method_hi: self.cipher.method_hi(),
            creation_time: created,
            entries,
            validation: WrappedKey {
                nonce: Nonce::new(0, 0),
                mac: [0; 16],
                ciphertext: Vec::new(),
            },
            sha256: [0; 32],
        };
        let sealed = block.seal(vmk.as_bytes(), Nonce::new(created, counter))?;

        // Encrypt.
        let mut image = vec![0u8; size as usize];
        let header = VolumeHeader {
            sector_size: SECTOR as u16,
            togo: false,
            kind: VolumeKind::Normal,
            metadata_offsets: offsets,
        };
        image[..512].copy_from_slice(&header.to_sector(size / SECTOR));
        for n in HEADER_SECTORS..size / SECTOR {
            let off = n * SECTOR;
            if is_virtual(off) {
                continue;
            }
            let r = off as usize..(off + SECTOR) as usize;
            let s = &mut image[r.clone()];
            s.copy_from_slice(&view[r]);
            sectors.encrypt(n, s)?;
        }
        for n in 0..HEADER_SECTORS {
            let phys = hdr_off / SECTOR + n;
            let dst = (phys * SECTOR) as usize..((phys + 1) * SECTOR) as usize;
            let src = (n * SECTOR) as usize..((n + 1) * SECTOR) as usize;
            let s = &mut image[dst];
            s.copy_from_slice(&view[src]);
            sectors.encrypt(phys, s)?;
        }
        for o in offsets {
            image[o as usize..(o + BLOCK_AREA) as usize].copy_from_slice(&sealed);
        }
        Ok(CreatedVolume {
            image,
            volume_guid,
            protectors: out_protectors,
            vmk,
            plaintext_view: view,
        })
    }
}

/// Whether a value-type code is one the parser models (for the fuzz target's assertions).
pub fn is_modelled_value_type(v: u16) -> bool {
    matches!(
        v,
        value_type::KEY
            | value_type::STRING
            | value_type::STRETCH_KEY
            | value_type::USE_KEY
            | value_type::AES_CCM
            | value_type::TPM_KEY
            | value_type::VMK
            | value_type::EXTERNAL_KEY
            | value_type::OFFSET_SIZE
    )
}
