//! The parts of BitLocker we simulate, written by us on RustCrypto primitives.
//!
//! - [`recovery_password`]: the 48-digit password, parsing with errors that name the block.
//! - [`stretch`]: the SHA-256 stretch that turns a password or PIN into an AES-256 key.
//! - [`keywrap`]: AES-256-CCM wrapping of FVE key entries (VMK, FVEK).
//! - [`protector`]: key protector IDs (GUIDs) and protector types.
//! - [`volume`]: a volume with real AES-XTS sector encryption, a VMK, and protectors.
//! - [`fve`]: the real on-disk format (volume header, FVE metadata, protectors, sectors),
//!   read and written; opened by cryptsetup and dislocker.
//! - [`disk`]: a volume kept as an image file (the simulated device's system volume).
//! - [`external`]: runs cryptsetup and dislocker against an image (tests and the runner).
//!
//! Nothing here needs a TPM. The TPM-bound protectors are built on
//! [`volume::Volume::unlock_with_vmk`] and [`volume::Volume::add_opaque_protector`].

pub mod disk;
pub mod external;
pub mod fve;
pub mod keywrap;
pub mod protector;
pub mod recovery_password;
pub mod stretch;
pub mod volume;

pub use keywrap::{KeyEntry, KeyWrapError, Nonce, WrappedKey};
pub use protector::{KeyProtectorId, ProtectorType};
pub use recovery_password::{check_block, BlockError, BlockProblem, ParseError, RecoveryPassword};
pub use stretch::{stretch_pin, stretch_recovery_password, Salt, StretchedKey};
pub use volume::{UnlockedVolume, Vmk, Volume, VolumeError};

/// Serde helper: fixed-size byte arrays as lowercase hex strings.
pub(crate) mod hex_array {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(&s).map_err(D::Error::custom)?;
        <[u8; N]>::try_from(v.as_slice())
            .map_err(|_| D::Error::custom(format!("expected {N} bytes of hex, got {}", v.len())))
    }
}

/// Serde helper: byte vectors as lowercase hex strings.
pub(crate) mod hex_vec {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(&s).map_err(D::Error::custom)
    }
}
