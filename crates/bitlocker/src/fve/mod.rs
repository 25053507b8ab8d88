//! The BitLocker on-disk format (Windows 7 and later, metadata version 2), read and written
//! by us: the `-FVE-FS-` volume header, the three FVE metadata blocks with their entries and
//! validation (CRC-32 + an AES-CCM-wrapped SHA-256 under the VMK), the VMK protectors, the
//! FVEK, the relocated first sectors and the sector data: AES-XTS, AES-CBC with the Elephant
//! diffuser (Vista/7), or plain AES-CBC (read only).
//!
//! Sources: libbde "BitLocker Drive Encryption (BDE) format"; cryptsetup `lib/bitlk/bitlk.c`
//! and dislocker `src/metadata/` for what independent readers check; checked against the
//! Windows-made images of cryptsetup's BITLK tests (`tests/it/data/bitlk/`).
//!
//! - [`elephant`]: the AES-CBC + Elephant diffuser sector cipher.
//! - [`entry`]: FVE metadata entries (datums), parse and serialise.
//! - [`metadata`]: the volume header and an FVE metadata block.
//! - [`image`]: a whole volume image: inspect, unlock, decrypt, create, rotate.
//!
//! Parsing never panics: every problem is an [`FveError`] naming the structure and offset.

pub mod elephant;
pub mod entry;
pub mod image;
pub mod metadata;

pub use image::{
    known_sector, BekFile, Cipher, CreatedProtector, CreatedVolume, Image, NewProtector, NewVolume,
    ProtectorInfo, Secret, SectorCipher, UnlockedImage,
};
pub use metadata::{MetadataBlock, VolumeHeader};

use crate::keywrap::KeyWrapError;
use crate::KeyProtectorId;

/// Why reading, unlocking or writing a volume image failed.
#[derive(Debug, thiserror::Error)]
pub enum FveError {
    /// Reading or writing the image failed.
    #[error("I/O error at offset {offset:#x}: {source}")]
    Io {
        /// Where.
        offset: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The image ends before a structure does.
    #[error("{structure} at offset {offset:#x}: image truncated (needs {needed} bytes, image has {len})")]
    Truncated {
        /// The structure being read.
        structure: &'static str,
        /// Its offset.
        offset: u64,
        /// Bytes needed from the start of the image.
        needed: u64,
        /// Image length.
        len: u64,
    },
    /// A structure is not what the format says.
    #[error("{structure} at offset {offset:#x}: {problem}")]
    Malformed {
        /// The structure.
        structure: &'static str,
        /// Its offset.
        offset: u64,
        /// What is wrong.
        problem: String,
    },
    /// None of the three FVE metadata blocks is valid; each one's problem.
    #[error("no valid FVE metadata block: {}", .0.join("; "))]
    NoValidMetadata(Vec<String>),
    /// Recognised, but not supported by this implementation.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Too large to serialise.
    #[error("{structure} is {size} bytes, more than the format allows ({limit})")]
    TooLarge {
        /// The structure.
        structure: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The secret opened no protector of its kind (every AES-CCM MAC failed).
    #[error("the {kind} does not unlock this volume (no {kind} protector's AES-CCM MAC verified)")]
    WrongSecret {
        /// Which kind of secret.
        kind: &'static str,
    },
    /// The volume has no protector the secret could open.
    #[error("the volume has no {kind} protector")]
    NoProtector {
        /// Which kind.
        kind: &'static str,
    },
    /// A .BEK file names a protector the volume does not have.
    #[error("the startup key is for protector {0}, which this volume does not have")]
    NoSuchProtector(KeyProtectorId),
    /// A key unwrap failed where the key is known to be right (FVEK, validation).
    #[error("{context}: {source}")]
    Unwrap {
        /// Which unwrap.
        context: String,
        /// The failure.
        #[source]
        source: KeyWrapError,
    },
    /// The metadata's SHA-256 differs from the one authenticated under the VMK.
    #[error("FVE metadata block at offset {offset:#x}: SHA-256 does not match the AES-CCM-authenticated validation hash (metadata altered)")]
    ValidationMismatch {
        /// The block's offset.
        offset: u64,
    },
    /// The volume unlocked, but its decrypted data is not what was written.
    #[error(
        "the decrypted volume is not the data written to it (SHA-256 {got}, written {expected})"
    )]
    DataMismatch {
        /// SHA-256 of what was written, hex.
        expected: String,
        /// SHA-256 of what decrypts now, hex.
        got: String,
    },
    /// Bad parameters for a new volume.
    #[error("invalid volume parameters: {0}")]
    InvalidParams(String),
}

/// Random access to an image: a byte slice or a file.
pub trait ReadAt {
    /// Length in bytes.
    fn byte_len(&self) -> Result<u64, FveError>;
    /// Fills `buf` from `offset`; a short image is [`FveError::Truncated`].
    fn read_at(&self, structure: &'static str, offset: u64, buf: &mut [u8])
        -> Result<(), FveError>;
}

fn truncated(structure: &'static str, offset: u64, n: usize, len: u64) -> FveError {
    FveError::Truncated {
        structure,
        offset,
        needed: offset.saturating_add(n as u64),
        len,
    }
}

impl ReadAt for [u8] {
    fn byte_len(&self) -> Result<u64, FveError> {
        Ok(<[u8]>::len(self) as u64)
    }
    fn read_at(
        &self,
        structure: &'static str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), FveError> {
        let len = <[u8]>::len(self) as u64;
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| self.get(o..o.checked_add(buf.len())?))
            .ok_or_else(|| truncated(structure, offset, buf.len(), len))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for std::fs::File {
    fn byte_len(&self) -> Result<u64, FveError> {
        self.metadata()
            .map(|m| m.len())
            .map_err(|source| FveError::Io { offset: 0, source })
    }
    fn read_at(
        &self,
        structure: &'static str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), FveError> {
        use std::os::unix::fs::FileExt;
        let len = ReadAt::byte_len(self)?;
        if offset.saturating_add(buf.len() as u64) > len {
            return Err(truncated(structure, offset, buf.len(), len));
        }
        self.read_exact_at(buf, offset)
            .map_err(|source| FveError::Io { offset, source })
    }
}
