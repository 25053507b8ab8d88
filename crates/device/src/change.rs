//! Named changes to a device: what Windows users and admins do that may trigger recovery.
//!
//! One idea, one vocabulary: [`Change`] is a change as the device model plays it (with its
//! parameters). [`ChangeKind`] is its name, the one spelling that scenario files
//! (`change.kind`), `harness eventlog predict --change`, the log edits of
//! [`crate::predict::apply`] and the reports use; [`ChangeKind::change`] and [`Change::kind`]
//! project one onto the other. [`TpmEffect`] is what a change asks of the TPM beyond new
//! measurements ([`Change::tpm_effect`]).

use std::fmt;

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

/// The name of a change: what scenario files write as `change.kind`, what
/// `eventlog predict --change` takes, what JSON and reports print. snake_case is canonical;
/// the kebab-case spellings, and the log-change names of earlier releases (`db_update`,
/// `option_rom`, `boot_debugging_on`, `boot_order`), stay accepted on the command line.
/// `--help` lists only the kinds a measured-boot log can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Nothing: no reboot either (portal-only stories).
    #[value(hide = true)] // a log cannot show it (`predict` says why)
    None,
    /// A plain reboot.
    #[value(hide = true)] // a log cannot show it (`predict` says why)
    Reboot,
    /// A UEFI/BIOS update: the PCR 0 code measurements (CRTM version, firmware blobs) change.
    #[value(alias = "firmware-update")]
    FirmwareUpdate,
    /// A new option ROM (add-in card) in PCR 2; scenarios name its `signer` (a log edit
    /// adds one that logs no new PCR 7 authority).
    #[value(alias = "option-rom-added", alias = "option_rom", alias = "option-rom")]
    OptionRomAdded,
    /// The first option ROM updated, now signed by the Microsoft UEFI CA (PCR 2, maybe 7).
    #[value(alias = "option-rom-changed")]
    #[value(hide = true)] // a log cannot show it (`predict` says why)
    OptionRomChanged,
    /// A new boot manager binary signed by the same authority: PCR 4 only.
    #[value(alias = "boot-manager-same-signer")]
    BootManagerSameSigner,
    /// A new boot manager signed by another db authority: PCR 4 and PCR 7 (authority event).
    #[value(alias = "boot-manager-other-signer")]
    BootManagerOtherSigner,
    /// A certificate appended to db (e.g. the Windows UEFI CA 2023): PCR 7.
    #[value(
        alias = "secure-boot-db-update",
        alias = "db_update",
        alias = "db-update"
    )]
    SecureBootDbUpdate,
    /// A hash appended to dbx (a revocation update): PCR 7.
    #[value(
        alias = "secure-boot-dbx-update",
        alias = "dbx_update",
        alias = "dbx-update"
    )]
    SecureBootDbxUpdate,
    /// Secure Boot turned off: SecureBoot=0, no authority events (PCR 7).
    #[value(alias = "secure-boot-off")]
    SecureBootOff,
    /// `bcdedit /set bootdebug on`: BitLocker's BCD validation refuses it (event 523).
    #[value(
        alias = "bcd-debug-on",
        alias = "boot_debugging_on",
        alias = "boot-debugging-on"
    )]
    BcdDebugOn,
    /// The firmware BootOrder rotated (e.g. DVD first): PCR 1.
    #[value(alias = "bcd-boot-order", alias = "boot_order", alias = "boot-order")]
    BcdBootOrder,
    /// The MBR's boot code rewritten (legacy PCR 4).
    #[value(alias = "mbr-boot-code-changed")]
    #[value(hide = true)] // a log cannot show it (`predict` says why)
    MbrBootCodeChanged,
    /// The NTFS boot sector rewritten (legacy PCR 8).
    #[value(alias = "ntfs-boot-sector-changed")]
    #[value(hide = true)] // a log cannot show it (`predict` says why)
    NtfsBootSectorChanged,
    /// The disk moved to another machine (another TPM).
    #[value(alias = "disk-moved")]
    #[value(hide = true)] // a log cannot show it (`predict` says why)
    DiskMoved,
    /// The TPM cleared (new storage seed).
    #[value(alias = "tpm-cleared")]
    #[value(hide = true)] // a log cannot show it (`predict` says why)
    TpmCleared,
    /// The TPM (or motherboard) replaced.
    #[value(alias = "tpm-replaced")]
    #[value(hide = true)] // a log cannot show it (`predict` says why)
    TpmReplaced,
    /// A firmware update done with BitLocker protection suspended (a clear key).
    #[value(alias = "firmware-update-suspended")]
    #[value(hide = true)] // a log cannot show it (`predict` says why)
    FirmwareUpdateSuspended,
    /// The user types `wrong_pins` wrong PINs (the device does not change).
    #[value(alias = "lost-pin")]
    #[value(hide = true)] // a log cannot show it (`predict` says why)
    LostPin,
}

/// Who signed an added option ROM, as a scenario names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RomSigner {
    /// The Microsoft Corporation UEFI CA 2011 (in db): PCR 2, and a PCR 7 authority event
    /// the first time that certificate verifies an image in a boot.
    UefiCa,
    /// No signature: PCR 2 only (no db certificate verified it, so no authority event).
    Unsigned,
}

impl ChangeKind {
    /// The device change this name plays; `None` for kinds that change no measurement and
    /// no TPM state (nothing, a plain reboot, wrong PINs), and for `option_rom_added`
    /// without its `signer` (the signer decides PCR 7).
    pub fn change(self, rom_signer: Option<RomSigner>) -> Option<Change> {
        Some(match self {
            Self::None | Self::Reboot | Self::LostPin => return None,
            Self::FirmwareUpdate => Change::FirmwareUpdate,
            Self::OptionRomAdded => Change::OptionRomAdded {
                signer: match rom_signer? {
                    RomSigner::UefiCa => Signer::MicrosoftUefiCa,
                    RomSigner::Unsigned => Signer::Unsigned,
                },
            },
            Self::OptionRomChanged => Change::OptionRomChanged {
                signer: Signer::MicrosoftUefiCa,
            },
            Self::BootManagerSameSigner => Change::BootManagerReplaced { same_signer: true },
            Self::BootManagerOtherSigner => Change::BootManagerReplaced { same_signer: false },
            Self::SecureBootDbUpdate => Change::SecureBootDbUpdate,
            Self::SecureBootDbxUpdate => Change::SecureBootDbxUpdate,
            Self::SecureBootOff => Change::SecureBootOff,
            Self::BcdDebugOn => Change::BcdDebugOn,
            Self::BcdBootOrder => Change::BcdBootOrder,
            Self::MbrBootCodeChanged => Change::MbrBootCodeChanged,
            Self::NtfsBootSectorChanged => Change::NtfsBootSectorChanged,
            Self::DiskMoved => Change::DiskMovedToAnotherMachine,
            Self::TpmCleared => Change::TpmCleared,
            Self::TpmReplaced => Change::TpmReplaced,
            Self::FirmwareUpdateSuspended => Change::PlannedUpdateWithSuspend,
        })
    }
}

impl fmt::Display for ChangeKind {
    /// The canonical (snake_case) name, as scenario files, `--change` and the JSON spell it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use clap::ValueEnum;
        match self.to_possible_value() {
            Some(value) => f.write_str(value.get_name()),
            None => Ok(()),
        }
    }
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

    /// This change's name (the inverse of [`ChangeKind::change`]).
    pub fn kind(&self) -> ChangeKind {
        match self {
            Self::FirmwareUpdate => ChangeKind::FirmwareUpdate,
            Self::OptionRomAdded { .. } => ChangeKind::OptionRomAdded,
            Self::OptionRomChanged { .. } => ChangeKind::OptionRomChanged,
            Self::BootManagerReplaced { same_signer: true } => ChangeKind::BootManagerSameSigner,
            Self::BootManagerReplaced { same_signer: false } => ChangeKind::BootManagerOtherSigner,
            Self::SecureBootDbUpdate => ChangeKind::SecureBootDbUpdate,
            Self::SecureBootDbxUpdate => ChangeKind::SecureBootDbxUpdate,
            Self::SecureBootOff => ChangeKind::SecureBootOff,
            Self::BcdDebugOn => ChangeKind::BcdDebugOn,
            Self::BcdBootOrder => ChangeKind::BcdBootOrder,
            Self::MbrBootCodeChanged => ChangeKind::MbrBootCodeChanged,
            Self::NtfsBootSectorChanged => ChangeKind::NtfsBootSectorChanged,
            Self::DiskMovedToAnotherMachine => ChangeKind::DiskMoved,
            Self::TpmCleared => ChangeKind::TpmCleared,
            Self::TpmReplaced => ChangeKind::TpmReplaced,
            Self::PlannedUpdateWithSuspend => ChangeKind::FirmwareUpdateSuspended,
        }
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
