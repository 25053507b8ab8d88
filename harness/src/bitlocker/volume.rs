//! A simulated BitLocker volume whose sectors are really encrypted.
//!
//! Key hierarchy, as in BitLocker: a random full-volume encryption key (FVEK) encrypts the
//! sectors with AES-XTS-128 (Windows 10+ default; the 32-byte FVEK is the two AES-128 keys,
//! the sector number is the tweak, 512-byte sectors). The FVEK is wrapped by the volume
//! master key (VMK) with AES-256-CCM. Each protector wraps the VMK: a recovery-password
//! protector under the stretched password (random salt, FILETIME+counter nonce).
//!
//! "Unlocked" means the sectors decrypt: every unlock unwraps the FVEK (MAC checked) and
//! decrypts sector 0, which must equal the known content given at creation (the volume
//! stores its SHA-256, standing in for the known NTFS boot sector a real unlock finds).

use aes::cipher::KeyInit;
use aes::Aes128;
use rand::{CryptoRng, Rng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xts_mode::{get_tweak_default, Xts128};

use super::keywrap::{self, KeyEntry, KeyWrapError, Nonce, WrappedKey, METHOD_XTS_AES_128};
use super::protector::{KeyProtectorId, ProtectorType};
use super::recovery_password::RecoveryPassword;
use super::stretch::{stretch_recovery_password, Salt, StretchedKey};

/// Sector size in bytes.
pub const SECTOR_SIZE: usize = 512;

/// One plaintext or ciphertext sector.
pub type Sector = [u8; SECTOR_SIZE];

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A volume needs at least sector 0 (the known content unlock checks).
    #[error("a volume needs at least one sector")]
    NoSectors,
    /// The password does not open any recovery-password protector (every MAC failed).
    #[error("the recovery password does not unlock this volume (no recovery-password protector's MAC verified)")]
    WrongRecoveryPassword,
    /// The volume has no recovery-password protector at all.
    #[error("the volume has no recovery-password protector")]
    NoRecoveryPasswordProtector,
    /// No protector with this ID.
    #[error("no key protector {0}")]
    NoSuchProtector(KeyProtectorId),
    /// A protector with this ID exists already.
    #[error("key protector {0} exists already")]
    DuplicateProtectorId(KeyProtectorId),
    /// The protector exists but is of another type.
    #[error("key protector {id} is a {actual:?} protector, not a {expected:?} one")]
    WrongProtectorType {
        id: KeyProtectorId,
        expected: ProtectorType,
        actual: ProtectorType,
    },
    /// The key does not open the protector or the FVEK.
    #[error("key unwrap failed: {context}")]
    Unwrap {
        context: &'static str,
        #[source]
        source: KeyWrapError,
    },
    /// Sector 0 decrypted to something other than the known content.
    #[error("sector 0 does not decrypt to the known content: wrong FVEK or corrupted volume")]
    KnownContentMismatch,
    /// A sector number past the end.
    #[error("sector {sector} is out of range (volume has {count})")]
    SectorOutOfRange { sector: u64, count: u64 },
}

/// The 32-byte volume master key. Debug never prints it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vmk(#[serde(with = "super::hex_array")] [u8; 32]);

impl Vmk {
    /// Wraps raw key bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }
    /// The raw key bytes (to seal into a TPM).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Vmk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vmk(..)")
    }
}

/// What a protector holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProtectorData {
    /// The VMK wrapped under the stretched recovery password.
    RecoveryPassword {
        /// Stretch salt.
        #[serde(with = "super::hex_array")]
        salt: Salt,
        /// The VMK entry under the stretched key.
        wrapped_vmk: WrappedKey,
    },
    /// Data owned by another layer (e.g. a TPM-sealed blob); this module stores it only.
    Opaque {
        /// The protector's type.
        protector_type: ProtectorType,
        /// The other layer's data.
        #[serde(with = "super::hex_vec")]
        data: Vec<u8>,
    },
}

impl ProtectorData {
    /// The protector's type.
    pub fn protector_type(&self) -> ProtectorType {
        match self {
            Self::RecoveryPassword { .. } => ProtectorType::RecoveryPassword,
            Self::Opaque { protector_type, .. } => *protector_type,
        }
    }
}

/// A key protector: an ID and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protector {
    /// The key protector ID.
    pub id: KeyProtectorId,
    /// Its data.
    pub data: ProtectorData,
}

/// An encrypted volume at rest. Serialisable so a device can persist it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// The FVEK wrapped by the VMK.
    wrapped_fvek: WrappedKey,
    /// Key protectors, in the order they were added.
    protectors: Vec<Protector>,
    /// SHA-256 of sector 0's plaintext: the known content unlock checks.
    #[serde(with = "super::hex_array")]
    sector0_sha256: [u8; 32],
    /// Encrypted sectors, each `SECTOR_SIZE` bytes, concatenated.
    #[serde(with = "super::hex_vec")]
    ciphertext: Vec<u8>,
    /// Counter part of the next CCM nonce.
    nonce_counter: u32,
}

/// A volume whose keys are known: it reads (decrypts) sectors.
pub struct UnlockedVolume<'v> {
    volume: &'v Volume,
    vmk: Vmk,
    xts: Xts128<Aes128>,
    via: Option<KeyProtectorId>,
}

impl std::fmt::Debug for UnlockedVolume<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnlockedVolume")
            .field("via", &self.via)
            .field("sectors", &self.volume.sector_count())
            .finish_non_exhaustive()
    }
}

fn xts_for(fvek: &[u8; 32]) -> Xts128<Aes128> {
    let (k1, k2) = fvek.split_at(16);
    // Both halves are exactly 16 bytes: `new_from_slice` cannot fail here, but we avoid
    // a panic path by building from arrays.
    let mut a = [0u8; 16];
    let mut b = [0u8; 16];
    a.copy_from_slice(k1);
    b.copy_from_slice(k2);
    Xts128::new(Aes128::new(&a.into()), Aes128::new(&b.into()))
}

impl Volume {
    /// Creates a volume: random VMK and FVEK, `sectors` encrypted. Returns the volume and its
    /// VMK; the volume has no protector yet (add one with [`Volume::add_recovery_password`]).
    pub fn create<R: Rng + CryptoRng + ?Sized>(
        rng: &mut R,
        sectors: &[Sector],
    ) -> Result<(Self, Vmk), VolumeError> {
        let first = sectors.first().ok_or(VolumeError::NoSectors)?;
        let mut vmk = [0u8; 32];
        let mut fvek = [0u8; 32];
        rng.fill(&mut vmk);
        rng.fill(&mut fvek);
        let xts = xts_for(&fvek);
        let mut ciphertext = Vec::with_capacity(sectors.len() * SECTOR_SIZE);
        for (n, s) in sectors.iter().enumerate() {
            let mut buf = *s;
            xts.encrypt_sector(&mut buf, get_tweak_default(n as u128));
            ciphertext.extend_from_slice(&buf);
        }
        let entry = KeyEntry {
            entry_type: 0,
            version: 0,
            method: METHOD_XTS_AES_128,
            key: fvek.to_vec(),
        };
        let wrapped_fvek =
            keywrap::wrap(&vmk, Nonce::now(0), &entry).map_err(|source| VolumeError::Unwrap {
                context: "wrapping the FVEK",
                source,
            })?;
        let vol = Self {
            wrapped_fvek,
            protectors: Vec::new(),
            sector0_sha256: Sha256::digest(first).into(),
            ciphertext,
            nonce_counter: 1,
        };
        Ok((vol, Vmk(vmk)))
    }

    /// Number of sectors.
    pub fn sector_count(&self) -> u64 {
        (self.ciphertext.len() / SECTOR_SIZE) as u64
    }

    /// The raw (encrypted) bytes of a sector, as an attacker reading the disk sees them.
    pub fn raw_sector(&self, sector: u64) -> Result<&[u8], VolumeError> {
        let count = self.sector_count();
        let start = usize::try_from(sector)
            .ok()
            .filter(|_| sector < count)
            .map(|s| s * SECTOR_SIZE)
            .ok_or(VolumeError::SectorOutOfRange { sector, count })?;
        Ok(&self.ciphertext[start..start + SECTOR_SIZE])
    }

    /// The protectors.
    pub fn protectors(&self) -> &[Protector] {
        &self.protectors
    }

    /// IDs of the recovery-password protectors.
    pub fn recovery_password_ids(&self) -> Vec<KeyProtectorId> {
        self.protectors
            .iter()
            .filter(|p| p.data.protector_type() == ProtectorType::RecoveryPassword)
            .map(|p| p.id)
            .collect()
    }

    fn next_nonce(&mut self) -> Nonce {
        let n = Nonce::now(self.nonce_counter);
        self.nonce_counter = self.nonce_counter.wrapping_add(1);
        n
    }

    /// Unlocks with the VMK (the TPM path): unwraps the FVEK and checks sector 0.
    pub fn unlock_with_vmk(&self, vmk: &Vmk) -> Result<UnlockedVolume<'_>, VolumeError> {
        self.open(vmk.clone(), None)
    }

    fn open(
        &self,
        vmk: Vmk,
        via: Option<KeyProtectorId>,
    ) -> Result<UnlockedVolume<'_>, VolumeError> {
        let entry =
            keywrap::unwrap(&vmk.0, &self.wrapped_fvek).map_err(|source| VolumeError::Unwrap {
                context: "unwrapping the FVEK with the VMK",
                source,
            })?;
        let fvek = entry.key32().map_err(|source| VolumeError::Unwrap {
            context: "reading the FVEK entry",
            source,
        })?;
        let unlocked = UnlockedVolume {
            volume: self,
            vmk,
            xts: xts_for(&fvek),
            via,
        };
        let s0 = unlocked.read_sector(0)?;
        if <[u8; 32]>::from(Sha256::digest(s0)) != self.sector0_sha256 {
            return Err(VolumeError::KnownContentMismatch);
        }
        Ok(unlocked)
    }

    /// Unlocks with a recovery password: for each recovery-password protector, stretch with
    /// its salt (about 0.1-0.3 s each), unwrap the VMK (MAC checked), then unlock with it.
    pub fn unlock_with_recovery_password(
        &self,
        password: &RecoveryPassword,
    ) -> Result<UnlockedVolume<'_>, VolumeError> {
        let mut any = false;
        for p in &self.protectors {
            if let ProtectorData::RecoveryPassword { salt, .. } = &p.data {
                any = true;
                let key = stretch_recovery_password(password, salt);
                match self.unlock_with_stretched_key(p.id, &key) {
                    Err(VolumeError::Unwrap {
                        source: KeyWrapError::MacMismatch,
                        ..
                    }) => continue,
                    other => return other,
                }
            }
        }
        Err(if any {
            VolumeError::WrongRecoveryPassword
        } else {
            VolumeError::NoRecoveryPasswordProtector
        })
    }

    /// The salt of a recovery-password protector (to stretch once and reuse the key).
    pub fn recovery_password_salt(&self, id: KeyProtectorId) -> Result<Salt, VolumeError> {
        match &self.protector(id)?.data {
            ProtectorData::RecoveryPassword { salt, .. } => Ok(*salt),
            other => Err(VolumeError::WrongProtectorType {
                id,
                expected: ProtectorType::RecoveryPassword,
                actual: other.protector_type(),
            }),
        }
    }

    /// Unlocks through one recovery-password protector with an already stretched key: the
    /// cheap path for tests that unlock many times.
    pub fn unlock_with_stretched_key(
        &self,
        id: KeyProtectorId,
        key: &StretchedKey,
    ) -> Result<UnlockedVolume<'_>, VolumeError> {
        let ProtectorData::RecoveryPassword { wrapped_vmk, .. } = &self.protector(id)?.data else {
            return Err(VolumeError::WrongProtectorType {
                id,
                expected: ProtectorType::RecoveryPassword,
                actual: self.protector(id)?.data.protector_type(),
            });
        };
        let entry = keywrap::unwrap(key, wrapped_vmk).map_err(|source| VolumeError::Unwrap {
            context: "unwrapping the VMK with the stretched recovery password",
            source,
        })?;
        let vmk = entry.key32().map_err(|source| VolumeError::Unwrap {
            context: "reading the VMK entry",
            source,
        })?;
        self.open(Vmk(vmk), Some(id))
    }

    fn protector(&self, id: KeyProtectorId) -> Result<&Protector, VolumeError> {
        self.protectors
            .iter()
            .find(|p| p.id == id)
            .ok_or(VolumeError::NoSuchProtector(id))
    }

    /// Adds a recovery-password protector for a new random password; returns its ID and the
    /// password. `vmk` must be this volume's (checked). Costs one stretch.
    pub fn add_recovery_password<R: Rng + CryptoRng + ?Sized>(
        &mut self,
        vmk: &Vmk,
        rng: &mut R,
    ) -> Result<(KeyProtectorId, RecoveryPassword), VolumeError> {
        let password = RecoveryPassword::generate(rng);
        let mut salt = [0u8; 16];
        rng.fill(&mut salt);
        let key = stretch_recovery_password(&password, &salt);
        let id = self.add_recovery_password_stretched(vmk, rng, salt, &key)?;
        Ok((id, password))
    }

    /// Like [`Volume::add_recovery_password`], with the protector ID chosen by the caller
    /// (e.g. to make several IDs share their first 8 digits). Fails if the ID is taken.
    pub fn add_recovery_password_with_id<R: Rng + CryptoRng + ?Sized>(
        &mut self,
        vmk: &Vmk,
        rng: &mut R,
        id: KeyProtectorId,
    ) -> Result<RecoveryPassword, VolumeError> {
        if self.protectors.iter().any(|p| p.id == id) {
            return Err(VolumeError::DuplicateProtectorId(id));
        }
        let (random_id, password) = self.add_recovery_password(vmk, rng)?;
        if let Some(p) = self.protectors.iter_mut().find(|p| p.id == random_id) {
            p.id = id;
        }
        Ok(password)
    }

    /// Adds a recovery-password protector from a salt and the key already stretched from it
    /// (no stretch here). `vmk` must be this volume's (checked).
    pub fn add_recovery_password_stretched<R: Rng + CryptoRng + ?Sized>(
        &mut self,
        vmk: &Vmk,
        rng: &mut R,
        salt: Salt,
        key: &StretchedKey,
    ) -> Result<KeyProtectorId, VolumeError> {
        self.unlock_with_vmk(vmk)?;
        let nonce = self.next_nonce();
        let wrapped_vmk = keywrap::wrap(key, nonce, &KeyEntry::vmk(vmk.0)).map_err(|source| {
            VolumeError::Unwrap {
                context: "wrapping the VMK",
                source,
            }
        })?;
        let id = KeyProtectorId::random(rng);
        self.protectors.push(Protector {
            id,
            data: ProtectorData::RecoveryPassword { salt, wrapped_vmk },
        });
        Ok(id)
    }

    /// Stores a protector whose data another layer owns (e.g. a TPM-sealed VMK); returns its
    /// new ID. `vmk` must be this volume's (checked) so no protector for a stranger is added.
    pub fn add_opaque_protector<R: Rng + ?Sized>(
        &mut self,
        vmk: &Vmk,
        rng: &mut R,
        protector_type: ProtectorType,
        data: Vec<u8>,
    ) -> Result<KeyProtectorId, VolumeError> {
        self.unlock_with_vmk(vmk)?;
        let id = KeyProtectorId::random(rng);
        self.protectors.push(Protector {
            id,
            data: ProtectorData::Opaque {
                protector_type,
                data,
            },
        });
        Ok(id)
    }

    /// Removes a protector.
    pub fn remove_protector(&mut self, id: KeyProtectorId) -> Result<Protector, VolumeError> {
        let i = self
            .protectors
            .iter()
            .position(|p| p.id == id)
            .ok_or(VolumeError::NoSuchProtector(id))?;
        Ok(self.protectors.remove(i))
    }

    /// Rotation after use: adds a new recovery password (new protector ID), then removes
    /// `old`, so the old password no longer unlocks. Returns the new ID and password.
    pub fn rotate_recovery_password<R: Rng + CryptoRng + ?Sized>(
        &mut self,
        vmk: &Vmk,
        rng: &mut R,
        old: KeyProtectorId,
    ) -> Result<(KeyProtectorId, RecoveryPassword), VolumeError> {
        self.recovery_password_salt(old)?;
        let new = self.add_recovery_password(vmk, rng)?;
        self.remove_protector(old)?;
        Ok(new)
    }
}

impl UnlockedVolume<'_> {
    /// The VMK (to seal into a TPM, or to add and rotate protectors).
    pub fn vmk(&self) -> &Vmk {
        &self.vmk
    }

    /// The protector that unlocked the volume, if it was a recovery password.
    pub fn unlocked_by(&self) -> Option<KeyProtectorId> {
        self.via
    }

    /// Decrypts one sector.
    pub fn read_sector(&self, sector: u64) -> Result<Sector, VolumeError> {
        let mut buf = [0u8; SECTOR_SIZE];
        buf.copy_from_slice(self.volume.raw_sector(sector)?);
        self.xts
            .decrypt_sector(&mut buf, get_tweak_default(u128::from(sector)));
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use rand::SeedableRng;

    fn sectors() -> Vec<Sector> {
        (0..4u8)
            .map(|i| {
                let mut s = [0u8; SECTOR_SIZE];
                s[..8].copy_from_slice(b"-FVE-FS-");
                s[8..]
                    .iter_mut()
                    .enumerate()
                    .for_each(|(j, b)| *b = i ^ (j as u8));
                s
            })
            .collect()
    }

    #[test]
    fn sectors_are_encrypted_and_decrypt_with_the_vmk() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let plain = sectors();
        let (vol, vmk) = Volume::create(&mut rng, &plain).unwrap();
        assert_ne!(vol.raw_sector(0).unwrap(), &plain[0][..]);
        // Same plaintext prefix, different sector tweak: different ciphertext.
        assert_ne!(
            vol.raw_sector(1).unwrap()[..16],
            vol.raw_sector(2).unwrap()[..16]
        );
        let u = vol.unlock_with_vmk(&vmk).unwrap();
        for (n, p) in plain.iter().enumerate() {
            assert_eq!(&u.read_sector(n as u64).unwrap(), p);
        }
        assert!(matches!(
            u.read_sector(4),
            Err(VolumeError::SectorOutOfRange {
                sector: 4,
                count: 4
            })
        ));
        let wrong = Vmk::from_bytes([0u8; 32]);
        assert!(matches!(
            vol.unlock_with_vmk(&wrong),
            Err(VolumeError::Unwrap {
                source: KeyWrapError::MacMismatch,
                ..
            })
        ));
    }

    #[test]
    fn recovery_password_unlock_rotation_and_serde() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let plain = sectors();
        let (mut vol, vmk) = Volume::create(&mut rng, &plain).unwrap();
        assert!(matches!(
            vol.unlock_with_recovery_password(&RecoveryPassword::from_key16(&[0; 16])),
            Err(VolumeError::NoRecoveryPasswordProtector)
        ));
        let (id, pw) = vol.add_recovery_password(&vmk, &mut rng).unwrap();
        let u = vol.unlock_with_recovery_password(&pw).unwrap();
        assert_eq!(u.unlocked_by(), Some(id));
        assert_eq!(u.read_sector(3).unwrap(), plain[3]);

        // A well-formed but wrong password fails on the MAC.
        let wrong = RecoveryPassword::from_key16(&[1; 16]);
        assert!(matches!(
            vol.unlock_with_recovery_password(&wrong),
            Err(VolumeError::WrongRecoveryPassword)
        ));

        // Persist and reload: the reloaded volume still decrypts.
        let json = serde_json::to_string(&vol).unwrap();
        let back: Volume = serde_json::from_str(&json).unwrap();
        assert_eq!(back, vol);

        // Rotation: new ID, old password stops working (checked with the stretched keys, so
        // only the two stretches of the rotation and this check are paid).
        let old_key = stretch_recovery_password(&pw, &vol.recovery_password_salt(id).unwrap());
        let (new_id, new_pw) = vol.rotate_recovery_password(&vmk, &mut rng, id).unwrap();
        assert_ne!(new_id, id);
        assert_ne!(new_pw, pw);
        assert_eq!(vol.recovery_password_ids(), vec![new_id]);
        assert!(matches!(
            vol.unlock_with_stretched_key(id, &old_key),
            Err(VolumeError::NoSuchProtector(_))
        ));
        let new_key =
            stretch_recovery_password(&new_pw, &vol.recovery_password_salt(new_id).unwrap());
        let u = vol.unlock_with_stretched_key(new_id, &new_key).unwrap();
        assert_eq!(u.read_sector(1).unwrap(), plain[1]);
        assert!(matches!(
            vol.unlock_with_stretched_key(new_id, &old_key),
            Err(VolumeError::Unwrap {
                source: KeyWrapError::MacMismatch,
                ..
            })
        ));
    }

    #[test]
    fn protectors_need_the_right_vmk() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (mut vol, _vmk) = Volume::create(&mut rng, &sectors()).unwrap();
        let stranger = Vmk::from_bytes([9u8; 32]);
        assert!(vol
            .add_opaque_protector(&stranger, &mut rng, ProtectorType::Tpm, vec![1])
            .is_err());
        assert!(vol.protectors().is_empty());
        assert!(matches!(
            Volume::create(&mut rng, &[]),
            Err(VolumeError::NoSectors)
        ));
    }
}
