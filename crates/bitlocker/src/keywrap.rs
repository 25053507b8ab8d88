//! AES-256-CCM key wrapping as BitLocker stores it (libbde "BDE format"; domain.md).
//!
//! A wrapped key is `nonce[12] | mac[16] | ciphertext`: the nonce is an 8-byte FILETIME
//! followed by a 4-byte counter, the MAC is CCM's 16-byte tag. The plaintext is an FVE key
//! entry (libbde's "FVE metadata entry" header followed by a key value):
//!
//! ```text
//! u16 entry size (12 + key length; 0x2c for a 32-byte key)
//! u16 entry type (0 inside a wrapped key)
//! u16 value type (1 = key)
//! u16 version    (0 in every Windows-made vector we have)
//! u16 encryption method (0x2003 for a VMK, 0x8004 for an AES-XTS-128 FVEK)
//! u16 0
//! key bytes
//! ```
//!
//! All integers little-endian. The layout was checked against `vmk_payload_hex` of the
//! Windows-made vectors in `recovery-password-vectors.json`.

use aes::Aes256;
use ccm::aead::AeadInPlace;
use ccm::consts::{U12, U16};
use ccm::{Ccm, KeyInit};
use serde::{Deserialize, Serialize};

type Aes256Ccm = Ccm<Aes256, U16, U12>;

/// Nonce length.
pub const NONCE_LEN: usize = 12;
/// MAC (CCM tag) length.
pub const MAC_LEN: usize = 16;
/// FVE value type "key".
pub const VALUE_TYPE_KEY: u16 = 1;
/// Encryption method code of a VMK key entry.
pub const METHOD_VMK: u16 = 0x2003;
/// Encryption method code of an AES-XTS-128 FVEK (Windows 10 1511+ default).
pub const METHOD_XTS_AES_128: u16 = 0x8004;
const HEADER_LEN: usize = 12;

/// Why an unwrap failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyWrapError {
    /// The CCM tag did not verify: wrong key, or the data was altered.
    #[error("AES-CCM MAC verification failed (wrong key or corrupted data)")]
    MacMismatch,
    /// The decrypted payload is not a key entry.
    #[error("decrypted payload is not an FVE key entry: {0}")]
    BadPayload(String),
    /// The key entry does not fit the size field.
    #[error("key entry too long to wrap: {0} bytes")]
    TooLong(usize),
}

/// A 12-byte CCM nonce: FILETIME (8 bytes LE) then a counter (4 bytes LE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nonce(#[serde(with = "hex::serde")] pub [u8; NONCE_LEN]);

impl Nonce {
    /// Builds a nonce from a FILETIME (100 ns since 1601) and a counter.
    pub fn new(filetime: u64, counter: u32) -> Self {
        let mut n = [0u8; NONCE_LEN];
        n[..8].copy_from_slice(&filetime.to_le_bytes());
        n[8..].copy_from_slice(&counter.to_le_bytes());
        Self(n)
    }

    /// A nonce for now and `counter`. A clock before 1970 gives FILETIME of 1970.
    pub fn now(counter: u32) -> Self {
        // Seconds between 1601-01-01 and 1970-01-01.
        const EPOCH_DIFF_100NS: u64 = 11_644_473_600 * 10_000_000;
        let since_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos() / 100).unwrap_or(u64::MAX - EPOCH_DIFF_100NS))
            .unwrap_or(0);
        Self::new(EPOCH_DIFF_100NS.saturating_add(since_unix), counter)
    }
}

/// A decrypted FVE key entry.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyEntry {
    /// Entry type (0 in wrapped keys).
    pub entry_type: u16,
    /// Version field.
    pub version: u16,
    /// Encryption method code (e.g. [`METHOD_VMK`]).
    pub method: u16,
    /// The key bytes.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("entry_type", &self.entry_type)
            .field("version", &self.version)
            .field("method", &format_args!("{:#06x}", self.method))
            .field("key_len", &self.key.len())
            .finish()
    }
}

impl KeyEntry {
    /// A key entry as Windows writes it for a VMK.
    pub fn vmk(key: [u8; 32]) -> Self {
        Self {
            entry_type: 0,
            version: 0,
            method: METHOD_VMK,
            key: key.to_vec(),
        }
    }

    /// Serialises the entry (see the module docs for the layout).
    pub fn to_bytes(&self) -> Result<Vec<u8>, KeyWrapError> {
        let size = u16::try_from(HEADER_LEN + self.key.len())
            .map_err(|_| KeyWrapError::TooLong(HEADER_LEN + self.key.len()))?;
        let mut out = Vec::with_capacity(usize::from(size));
        for field in [
            size,
            self.entry_type,
            VALUE_TYPE_KEY,
            self.version,
            self.method,
            0,
        ] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        out.extend_from_slice(&self.key);
        Ok(out)
    }

    /// Parses an entry, checking the size and value type.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyWrapError> {
        if bytes.len() < HEADER_LEN {
            return Err(KeyWrapError::BadPayload(format!(
                "{} bytes, shorter than the 12-byte header",
                bytes.len()
            )));
        }
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let size = usize::from(u16_at(0));
        if size != bytes.len() {
            return Err(KeyWrapError::BadPayload(format!(
                "size field says {size} bytes, payload has {}",
                bytes.len()
            )));
        }
        if u16_at(4) != VALUE_TYPE_KEY {
            return Err(KeyWrapError::BadPayload(format!(
                "value type {:#06x}, expected 1 (key)",
                u16_at(4)
            )));
        }
        Ok(Self {
            entry_type: u16_at(2),
            version: u16_at(6),
            method: u16_at(8),
            key: bytes[HEADER_LEN..].to_vec(),
        })
    }

    /// The key as exactly 32 bytes, if it is that long.
    pub fn key32(&self) -> Result<[u8; 32], KeyWrapError> {
        <[u8; 32]>::try_from(self.key.as_slice()).map_err(|_| {
            KeyWrapError::BadPayload(format!("key is {} bytes, expected 32", self.key.len()))
        })
    }
}

/// A wrapped key as stored on disk: nonce, MAC and ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// CCM nonce.
    pub nonce: Nonce,
    /// CCM tag.
    #[serde(with = "hex::serde")]
    pub mac: [u8; MAC_LEN],
    /// Encrypted key entry.
    #[serde(with = "hex::serde")]
    pub ciphertext: Vec<u8>,
}

/// Decrypts raw bytes with AES-256-CCM, verifying the tag.
pub fn ccm_decrypt(
    key: &[u8; 32],
    nonce: &Nonce,
    mac: &[u8; MAC_LEN],
    ciphertext: &[u8],
) -> Result<Vec<u8>, KeyWrapError> {
    let cipher = Aes256Ccm::new(key.into());
    let mut buf = ciphertext.to_vec();
    cipher
        .decrypt_in_place_detached((&nonce.0).into(), b"", &mut buf, mac.into())
        .map_err(|_| KeyWrapError::MacMismatch)?;
    Ok(buf)
}

/// Wraps a key entry under `kek` with `nonce`.
pub fn wrap(kek: &[u8; 32], nonce: Nonce, entry: &KeyEntry) -> Result<WrappedKey, KeyWrapError> {
    let cipher = Aes256Ccm::new(kek.into());
    let mut buf = entry.to_bytes()?;
    let tag = cipher
        .encrypt_in_place_detached((&nonce.0).into(), b"", &mut buf)
        // CCM refuses only messages longer than its length field allows (2^24 here).
        .map_err(|_| KeyWrapError::TooLong(buf.len()))?;
    Ok(WrappedKey {
        nonce,
        mac: tag.into(),
        ciphertext: buf,
    })
}

/// Unwraps a key entry: MAC check, then entry parse.
pub fn unwrap(kek: &[u8; 32], wrapped: &WrappedKey) -> Result<KeyEntry, KeyWrapError> {
    let plain = ccm_decrypt(kek, &wrapped.nonce, &wrapped.mac, &wrapped.ciphertext)?;
    KeyEntry::from_bytes(&plain)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn wrap_unwrap_round_trip_and_tamper() {
        let kek = [3u8; 32];
        let entry = KeyEntry::vmk([5u8; 32]);
        let w = wrap(&kek, Nonce::new(0x01d5_3233_139a_7c30, 6), &entry).unwrap();
        assert_eq!(w.ciphertext.len(), 0x2c);
        assert_eq!(unwrap(&kek, &w).unwrap(), entry);
        let mut bad = w.clone();
        bad.ciphertext[20] ^= 1;
        assert_eq!(unwrap(&kek, &bad).unwrap_err(), KeyWrapError::MacMismatch);
        assert_eq!(
            unwrap(&[4u8; 32], &w).unwrap_err(),
            KeyWrapError::MacMismatch
        );
    }

    #[test]
    fn nonce_layout() {
        let n = Nonce::new(0x01d5_3233_139a_7c30, 6);
        assert_eq!(hex::encode(n.0), "307c9a133332d50106000000");
    }
}
