//! A BitLocker volume kept as an image file in the real on-disk format ([`super::fve`]):
//! the simulated device's system volume.
//!
//! The file is the volume: every unlock reads the metadata from disk (so a corrupted or
//! tampered image fails the way it would on a device), and every change (a new protector,
//! a rotation, a re-sealed TPM blob) rewrites its three metadata copies at once. cryptsetup
//! and dislocker can therefore be pointed at [`VolumeFile::path`] at any moment.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::{CryptoRng, Rng};
use sha2::{Digest, Sha256};

use super::fve::image::Cipher;
use super::fve::{
    CreatedProtector, FveError, Image, NewProtector, NewVolume, ProtectorInfo, Secret,
    UnlockedImage,
};
use super::{KeyProtectorId, RecoveryPassword, Vmk};

/// Size of a device's volume image: the smallest the format writer makes (1 MiB).
pub const DEVICE_VOLUME_SIZE: u64 = 1024 * 1024;

/// A volume image file, removed with this value.
#[derive(Debug)]
pub struct VolumeFile {
    /// Keeps the directory (and the image in it) alive.
    _dir: tempfile::TempDir,
    path: PathBuf,
    volume_guid: uuid::Uuid,
    /// SHA-256 of the decrypted volume as written (what cryptsetup and dislocker must show).
    data_sha256: [u8; 32],
}

fn io(source: std::io::Error) -> FveError {
    FveError::Io { offset: 0, source }
}

/// Writes the decrypted volume into a SHA-256.
struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl VolumeFile {
    /// Writes a new volume with sector cipher `cipher` (known data in every sector, see
    /// [`super::fve::known_sector`]) under `vmk` into a fresh temporary directory.
    /// `protectors[i].1`, when set, is the `i`-th protector's ID.
    pub fn create<R: Rng + CryptoRng + ?Sized>(
        rng: &mut R,
        description: &str,
        cipher: Cipher,
        vmk: &Vmk,
        protectors: Vec<(NewProtector, Option<KeyProtectorId>)>,
    ) -> Result<(VolumeFile, Vec<CreatedProtector>), FveError> {
        let (kinds, ids): (Vec<_>, Vec<_>) = protectors.into_iter().unzip();
        let created = NewVolume {
            size: DEVICE_VOLUME_SIZE,
            cipher,
            description: description.to_string(),
            plaintext: None,
            protectors: kinds,
        }
        .create_with(rng, vmk.clone(), &ids)?;
        let dir = tempfile::Builder::new()
            .prefix("harness-volume-")
            .tempdir()
            .map_err(io)?;
        let path = dir.path().join("volume.img");
        std::fs::write(&path, &created.image).map_err(io)?;
        let volume = VolumeFile {
            _dir: dir,
            path,
            volume_guid: created.volume_guid,
            data_sha256: Sha256::digest(&created.plaintext_view).into(),
        };
        Ok((volume, created.protectors))
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The volume GUID.
    pub fn volume_guid(&self) -> uuid::Uuid {
        self.volume_guid
    }

    /// SHA-256 of the decrypted volume as written.
    pub fn data_sha256(&self) -> [u8; 32] {
        self.data_sha256
    }

    /// The image's metadata, read from disk now.
    pub fn image(&self) -> Result<Image, FveError> {
        let file = std::fs::File::open(&self.path).map_err(io)?;
        Image::open(&file)
    }

    /// The protectors in the image now.
    pub fn protectors(&self) -> Result<Vec<ProtectorInfo>, FveError> {
        Ok(self.image()?.protectors())
    }

    /// Unlocks from disk with `secret` (every MAC and the metadata validation checked),
    /// then decrypts the whole volume and compares it with what was written.
    pub fn unlock(&self, secret: Secret<'_>) -> Result<UnlockedImage, FveError> {
        let file = std::fs::File::open(&self.path).map_err(io)?;
        let image = Image::open(&file)?;
        let unlocked = image.unlock(secret)?;
        let mut hash = HashWriter(Sha256::new());
        image.decrypt_to(&file, &unlocked, &mut hash)?;
        let got: [u8; 32] = hash.0.finalize().into();
        if got != self.data_sha256 {
            return Err(FveError::DataMismatch {
                expected: hex::encode(self.data_sha256),
                got: hex::encode(got),
            });
        }
        Ok(unlocked)
    }

    /// Whether `password` opens the volume now (`Ok(false)`: no MAC verified).
    pub fn recovery_password_unlocks(&self, password: &RecoveryPassword) -> Result<bool, FveError> {
        match self.unlock(Secret::RecoveryPassword(password)) {
            Ok(_) => Ok(true),
            Err(FveError::WrongSecret { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Replaces recovery password `old` with a new one (new ID); rewrites the metadata.
    pub fn rotate_recovery_password<R: Rng + CryptoRng + ?Sized>(
        &self,
        vmk: &Vmk,
        rng: &mut R,
        old: KeyProtectorId,
    ) -> Result<(KeyProtectorId, RecoveryPassword), FveError> {
        let mut image = self.image()?;
        let unlocked = image.unlock(Secret::Vmk(vmk))?;
        let new = image.rotate_recovery_password(&unlocked, rng, old)?;
        image.write_metadata(&self.path, vmk)?;
        Ok(new)
    }

    /// Stores a re-sealed TPM blob in protector `id`; rewrites the metadata.
    pub fn set_tpm_key(
        &self,
        vmk: &Vmk,
        id: KeyProtectorId,
        blob: Vec<u8>,
    ) -> Result<(), FveError> {
        let mut image = self.image()?;
        image.unlock(Secret::Vmk(vmk))?;
        image.set_tpm_key(id, blob)?;
        image.write_metadata(&self.path, vmk)
    }

    /// The sealed blob stored in TPM protector `id`.
    pub fn tpm_key(&self, id: KeyProtectorId) -> Result<Vec<u8>, FveError> {
        self.image()?
            .tpm_key(id)
            .ok_or(FveError::NoSuchProtector(id))
    }
}
