//! Real firmware in the loop: boot Debian's OVMF (UEFI, Secure Boot with the Microsoft keys)
//! under QEMU on a swtpm, from a disk built from Debian's signed shim, grub and kernel, and
//! get the firmware's real TCG event log and PCRs back.
//!
//! - [`disk::build_boot_disk`] builds the boot disk (cached, byte-reproducible).
//! - [`boot::boot`] boots it once on a caller-given TPM state directory: bounded in time,
//!   a fresh varstore copy, `-nic none`, QEMU and swtpm killed on a hang, no orphans.
//! - [`tpm_state::read_pcrs`] reads back the PCRs the boot left in that state.
//! - [`Change`] names the real changes (varstore edits, another firmware build, an option
//!   ROM, the boot order, the loader configuration) and [`Change::plan`] turns one into a
//!   disk and a boot request.
//!
//! This crate knows no BitLocker and no scenario model. Runtime needs: qemu-system-x86,
//! ovmf, swtpm, swtpm-tools, mtools, dosfstools, fdisk, apt (for `apt-get download`),
//! ipxe-qemu (option ROM), and virt-firmware's venv (`scripts/install-firmware-venv.sh`).

pub mod boot;
mod command;
pub mod cpio;
pub mod disk;
mod error;
mod supervise;
pub mod tpm_state;
pub mod varstore;

use std::fmt;
use std::path::{Path, PathBuf};

pub use boot::{boot, BootOutcome, BootRequest, Firmware};
pub use disk::{build_boot_disk, BootDisk, Cache, DiskSpec};
pub use error::{Error, Result};
use varstore::VarsEdit;

/// The firmware-owned PCRs: what the platform firmware measures before it hands over to a
/// boot loader (0 code, 1 config, 2 option ROMs, 3 their config, 5 GPT/boot variables,
/// 7 Secure Boot policy). 4 and 8-9 hold the loader chain, which differs between this Linux
/// chain and Windows; 6 is unused here.
pub const FIRMWARE_PCRS: [usize; 6] = [0, 1, 2, 3, 5, 7];

/// The sha256 bank, PCR 0-23.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sha256Pcrs(pub [[u8; 32]; 24]);

impl Sha256Pcrs {
    /// The PCRs (of `among`) whose values differ.
    pub fn differing(&self, other: &Self, among: &[usize]) -> Vec<usize> {
        among
            .iter()
            .copied()
            .filter(|&i| self.0[i] != other.0[i])
            .collect()
    }

    /// PCR `i` in lowercase hex.
    pub fn hex(&self, i: usize) -> String {
        hex::encode(self.0[i])
    }
}

impl fmt::Debug for Sha256Pcrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (i, v) in self.0.iter().enumerate() {
            m.entry(&i, &hex::encode(v));
        }
        m.finish()
    }
}

/// A real change to the machine, done for real before the boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing: the base boot.
    None,
    /// A certificate appended to db (`virt-fw-vars --add-db`).
    DbUpdate,
    /// A SHA-256 appended to dbx (`virt-fw-vars --add-dbx-hash`).
    DbxUpdate,
    /// `SecureBootEnable` set to 0 in the varstore.
    SecureBootOff,
    /// Another firmware build: Debian's OVMF without Secure Boot, with its own varstore.
    FirmwareCode,
    /// A PCI card with an option ROM (an e1000 with iPXE's EFI ROM, no network).
    OptionRom,
    /// The boot order QEMU hands OVMF: the boot disk first (`bootindex=0`).
    BootOrder,
    /// The loader configuration: an extra kernel command-line word in grub.cfg.
    KernelCmdline,
    /// The loader configuration: an extra grub.cfg line.
    GrubCfgLine,
}

impl Change {
    /// Every change, in a stable order.
    pub const ALL: [Change; 9] = [
        Change::None,
        Change::DbUpdate,
        Change::DbxUpdate,
        Change::SecureBootOff,
        Change::FirmwareCode,
        Change::OptionRom,
        Change::BootOrder,
        Change::KernelCmdline,
        Change::GrubCfgLine,
    ];

    /// The kebab-case name used on command lines and in file names.
    pub fn name(&self) -> &'static str {
        match self {
            Change::None => "none",
            Change::DbUpdate => "db-update",
            Change::DbxUpdate => "dbx-update",
            Change::SecureBootOff => "secure-boot-off",
            Change::FirmwareCode => "firmware-code",
            Change::OptionRom => "option-rom",
            Change::BootOrder => "boot-order",
            Change::KernelCmdline => "kernel-cmdline",
            Change::GrubCfgLine => "grub-cfg-line",
        }
    }

    /// The change called `name`.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(Change::name).collect();
                Error::Input(format!(
                    "unknown change {name:?}; known: {}",
                    known.join(", ")
                ))
            })
    }

    /// Builds (or finds in `cache`) the disk this change boots, prepares its varstore in
    /// `work_dir`, and returns the boot request (on the device's `tpm_state`).
    pub fn plan(&self, cache: &Cache, tpm_state: &Path, work_dir: &Path) -> Result<BootRequest> {
        let spec = match self {
            Change::KernelCmdline => DiskSpec {
                kernel_cmdline_extra: vec!["firmware_boot.variant=1".to_string()],
                grub_cfg_extra: None,
            },
            Change::GrubCfgLine => DiskSpec {
                kernel_cmdline_extra: Vec::new(),
                grub_cfg_extra: Some("set firmware_boot_marker=1".to_string()),
            },
            _ => DiskSpec::default(),
        };
        let disk = build_boot_disk(cache, &spec)?;
        let mut req = BootRequest::new(&disk.path, tpm_state, work_dir);
        let vars_edit = match self {
            Change::DbUpdate => Some(VarsEdit::AddDb(test_db_certificate(work_dir)?)),
            // The SHA-256 of a string no binary has: revokes nothing that boots here.
            Change::DbxUpdate => Some(VarsEdit::AddDbxHash(
                "6b1a2a5d2f7a1c4b8e0c9d3f5a7b9c1d3e5f7a9b1c3d5e7f9a1b3c5d7e9f1a2b".to_string(),
            )),
            Change::SecureBootOff => Some(VarsEdit::SecureBootOff),
            _ => None,
        };
        if let Some(edit) = vars_edit {
            std::fs::create_dir_all(work_dir).map_err(error::io_error(work_dir))?;
            let edited = work_dir.join("vars-template.fd");
            varstore::edit(&req.firmware.vars_template, &edited, &edit)?;
            req.firmware.vars_template = edited;
        }
        match self {
            Change::FirmwareCode => req.firmware = Firmware::ovmf_plain(),
            Change::OptionRom => req.extra_qemu_args = option_rom_args(),
            Change::BootOrder => req.disk_bootindex = Some(0),
            _ => {}
        }
        Ok(req)
    }
}

/// iPXE's EFI ROM for the e1000, from Debian's ipxe-qemu.
pub const OPTION_ROM: &str = "/usr/lib/ipxe/qemu/efi-e1000.rom";

fn option_rom_args() -> Vec<String> {
    // No netdev: the card has no peer, so there is no network (`-nic none` stays).
    vec!["-device".to_string(), format!("e1000,romfile={OPTION_ROM}")]
}

/// A self-signed test certificate (CN=firmware-boot-test-db), written where virt-fw-vars
/// can read it.
fn test_db_certificate(work_dir: &Path) -> Result<PathBuf> {
    const PEM: &str = include_str!("../data/test-db-cert.pem");
    std::fs::create_dir_all(work_dir).map_err(error::io_error(work_dir))?;
    let path = work_dir.join("test-db-cert.pem");
    std::fs::write(&path, PEM).map_err(error::io_error(&path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_is_found_by_its_name_and_an_unknown_name_is_refused() {
        for c in Change::ALL {
            assert_eq!(Change::from_name(c.name()).ok(), Some(c.clone()));
        }
        let err = Change::from_name("bios-flash").err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("known: none, db-update")));
    }
}
