//! Named changes to a device: what Windows users and admins do that may trigger recovery.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Device, Image, Signer};

/// A named change. Serde names are snake_case (`firmware_update`,
/// `{option_rom_added: {signer: microsoft_uefi_ca}}`) so YAML scenarios can name them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// A BIOS/UEFI update: new version string and image. Changes PCR 0; Windows enters
    /// recovery at the next boot under profiles with PCR 0 (0,2,4,11 and legacy).
    FirmwareUpdate,
    /// A new option ROM (e.g. a GPU added) signed by `signer`. Changes PCR 2, and PCR 7 when
    /// its signer is an authority not yet logged (a "new signing authority").
    OptionRomAdded { signer: Signer },
    /// The first option ROM's code is updated and now signed by `signer`. PCR 2; PCR 7 as
    /// for [`Change::OptionRomAdded`].
    OptionRomChanged { signer: Signer },
    /// A new boot manager binary. Same signer: PCR 4 only (no recovery under 7,11); other
    /// signer (the Microsoft UEFI CA): PCR 4 and PCR 7.
    BootManagerReplaced { same_signer: bool },
    /// A certificate added to db (the Windows UEFI CA 2023 rollout). PCR 7.
    SecureBootDbUpdate,
    /// A hash added to dbx (a revocation update). PCR 7.
    SecureBootDbxUpdate,
    /// Secure Boot turned off in firmware setup. PCR 7 (SecureBoot variable, and no more
    /// authority events); Windows then falls back to 0,2,4,11 when it re-seals.
    SecureBootOff,
    /// `bcdedit /set bootdebug on`: BitLocker's BCD validation refuses it (event 523).
    /// PCR 11 in our model (see the module docs).
    BcdDebugOn,
    /// The firmware boot order changed (`bcdedit /set {fwbootmgr} displayorder`, or "DVD
    /// drive first" in setup): the BootOrder variable, PCR 1.
    BcdBootOrder,
    /// The MBR's boot code is rewritten (`bootsect /nt60`, a boot manager installer, a
    /// boot-sector virus). Legacy PCR 4; a UEFI firmware neither runs nor measures it.
    MbrBootCodeChanged,
    /// The NTFS boot sector of the system volume is rewritten. Legacy PCR 8; not measured
    /// on a UEFI machine.
    NtfsBootSectorChanged,
    /// The disk moved to another machine. Measurements of an identical machine would match;
    /// recovery happens because the other machine's TPM never sealed this VMK. No PCR
    /// changes in the model; [`TpmEffect::OtherTpm`].
    DiskMovedToAnotherMachine,
    /// The TPM was cleared (tpm.msc, firmware setup): the storage hierarchy's seeds change,
    /// so the sealed VMK cannot load. No PCR change; [`TpmEffect::Clear`].
    TpmCleared,
    /// The TPM (or motherboard) was replaced: a different TPM, same effect as a clear for the
    /// sealed VMK. No PCR change; [`TpmEffect::Replace`].
    TpmReplaced,
    /// A firmware update done the Windows way: `manage-bde -protectors -disable` (suspend:
    /// the VMK is stored in the clear), update, reboot; Windows re-seals to the new PCRs and
    /// resumes. PCR 0 changes but no recovery. [`TpmEffect::SuspendProtection`] first.
    PlannedUpdateWithSuspend,
}

/// What a change asks of the TPM / protector layer (beyond new measurements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TpmEffect {
    /// Nothing: the change is measurements only.
    None,
    /// Clear the TPM (new storage seed: sealed objects no longer load).
    Clear,
    /// Replace the TPM with a fresh one.
    Replace,
    /// Boot the disk on another machine's TPM.
    OtherTpm,
    /// Suspend protection (clear key) before applying the measured part; re-seal and resume
    /// at the next boot.
    SuspendProtection,
}

/// Why a change cannot be applied to this device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// The change needs a component the device does not have.
    #[error("{change:?} needs {needs}, which this device does not have")]
    Missing { change: Change, needs: &'static str },
    /// The device boots a real log, which cannot express this change.
    #[error("{change:?} on a device booting a real log: {reason}")]
    RealLog { change: Change, reason: String },
}

impl Change {
    /// Every named change, once (with representative parameters), for tests and listings.
    pub fn catalog() -> Vec<Change> {
        vec![
            Self::FirmwareUpdate,
            Self::OptionRomAdded {
                signer: Signer::WindowsPca2011,
            },
            Self::OptionRomAdded {
                signer: Signer::MicrosoftUefiCa,
            },
            Self::OptionRomChanged {
                signer: Signer::WindowsPca2011,
            },
            Self::OptionRomChanged {
                signer: Signer::MicrosoftUefiCa,
            },
            Self::BootManagerReplaced { same_signer: true },
            Self::BootManagerReplaced { same_signer: false },
            Self::SecureBootDbUpdate,
            Self::SecureBootDbxUpdate,
            Self::SecureBootOff,
            Self::BcdDebugOn,
            Self::BcdBootOrder,
            Self::MbrBootCodeChanged,
            Self::NtfsBootSectorChanged,
            Self::DiskMovedToAnotherMachine,
            Self::TpmCleared,
            Self::TpmReplaced,
            Self::PlannedUpdateWithSuspend,
        ]
    }

    /// What the TPM layer must do for this change.
    pub fn tpm_effect(&self) -> TpmEffect {
        match self {
            Self::DiskMovedToAnotherMachine => TpmEffect::OtherTpm,
            Self::TpmCleared => TpmEffect::Clear,
            Self::TpmReplaced => TpmEffect::Replace,
            Self::PlannedUpdateWithSuspend => TpmEffect::SuspendProtection,
            _ => TpmEffect::None,
        }
    }
}

impl Device {
    /// Applies a change's measured part in place (see [`Change::tpm_effect`] for the rest).
    pub fn apply(&mut self, change: &Change) -> Result<(), ChangeError> {
        if let Some(real) = &mut self.real_log {
            return real.apply(change).map_err(|reason| ChangeError::RealLog {
                change: change.clone(),
                reason,
            });
        }
        match change {
            Change::FirmwareUpdate | Change::PlannedUpdateWithSuspend => {
                self.firmware.version.push_str("+update");
                let mut h = Sha256::new();
                h.update(&self.firmware.image);
                h.update(b"firmware update");
                self.firmware.image = h.finalize().to_vec();
            }
            Change::OptionRomAdded { signer } => {
                let n = self.option_roms.len();
                self.option_roms.push(Image {
                    name: format!("addin-card-{n}.rom"),
                    content: format!("add-in card option ROM {n}").into_bytes(),
                    signer: signer.clone(),
                });
            }
            Change::OptionRomChanged { signer } => {
                let rom = self.option_roms.first_mut().ok_or(ChangeError::Missing {
                    change: change.clone(),
                    needs: "an option ROM",
                })?;
                rom.bump("option ROM update");
                rom.signer = signer.clone();
            }
            Change::BootManagerReplaced { same_signer } => {
                self.boot_manager.bump("boot manager update");
                if !same_signer {
                    // A loader signed by the other Microsoft CA that db trusts.
                    self.boot_manager.signer =
                        if self.boot_manager.signer == Signer::MicrosoftUefiCa {
                            Signer::WindowsPca2011
                        } else {
                            Signer::MicrosoftUefiCa
                        };
                }
            }
            Change::SecureBootDbUpdate => {
                let mut n = 0;
                let mut cert = Signer::WindowsUefiCa2023;
                while self.secure_boot.db.contains(&cert) {
                    n += 1;
                    cert = Signer::Other(format!("db update certificate {n}"));
                }
                self.secure_boot.db.push(cert);
            }
            Change::SecureBootDbxUpdate => {
                let n = self.secure_boot.dbx.len();
                self.secure_boot
                    .dbx
                    .push(Sha256::digest(format!("revoked image {n}")).into());
            }
            Change::SecureBootOff => self.secure_boot.enabled = false,
            Change::BcdDebugOn => self.bcd.bootdebug = true,
            Change::BcdBootOrder => {
                if self.platform.boot_order.len() < 2 {
                    return Err(ChangeError::Missing {
                        change: change.clone(),
                        needs: "two boot entries to reorder",
                    });
                }
                // The last entry (the DVD drive in the reference device) goes first.
                self.platform.boot_order.rotate_right(1);
            }
            Change::MbrBootCodeChanged => {
                self.disk.mbr_code = bumped(&self.disk.mbr_code, "MBR boot code rewritten");
            }
            Change::NtfsBootSectorChanged => {
                let s = &mut self.disk.ntfs_boot_sector;
                // The boot code area (after the BPB), so the volume stays what it was.
                if let Some(b) = s.get_mut(0x54) {
                    *b ^= 0xFF;
                } else {
                    *s = bumped(s, "NTFS boot sector rewritten");
                }
            }
            Change::DiskMovedToAnotherMachine | Change::TpmCleared | Change::TpmReplaced => {}
        }
        Ok(())
    }
}

/// A new, deterministic version of some code.
fn bumped(code: &[u8], why: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(code);
    h.update(why.as_bytes());
    h.finalize().to_vec()
}
