//! A device whose boot is a real measured-boot log (`C:\Windows\Logs\MeasuredBoot\*.log`,
//! `/sys/kernel/security/tpm0/binary_bios_measurements`) instead of the synthetic model.
//!
//! Every boot of such a device extends that log's records, in the log's own bank(s), into
//! the machine's swtpm; BitLocker seals to the state at the log's unseal point
//! ([`unseal_point`]: after the boot manager's SIPA `BITLOCKER_UNLOCK` in a Windows log).
//! Named [`Change`]s edit the log the way `harness eventlog predict` does
//! ([`crate::predict::apply`]); changes a log cannot express are refused with the
//! reason.

use std::sync::Arc;

use super::{Change, Signer};
use crate::predict::{self, unseal_point};
use crate::ChangeKind;
use eventlog::tcg::{PcrBanks, TcgLog};
use eventlog::HashAlg;

/// What one boot measures: the log, and how many of its records come before the unseal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasuredBoot {
    /// The boot's log (ours converted, or a real one as changed).
    pub log: TcgLog,
    /// Records `..unseal_index` are measured before the boot manager unseals the VMK.
    pub unseal_index: usize,
}

impl MeasuredBoot {
    /// The bank BitLocker's TPM protector is sealed in (SHA-256 if the log has it).
    pub fn bank(&self) -> HashAlg {
        self.log.policy_bank()
    }

    /// The PCRs at the unseal point, every bank of the log.
    pub fn at_unseal(&self) -> PcrBanks {
        self.log.replay_prefix(self.unseal_index)
    }
}

/// The boot of a device that starts from a real log, as changed so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealLog {
    /// Where the log came from (shown in reports).
    pub source: String,
    /// The log as read.
    pub original: Arc<TcgLog>,
    /// The log after the changes applied so far.
    pub current: TcgLog,
}

impl RealLog {
    /// A device boot that replays `log` unchanged.
    pub fn new(source: impl Into<String>, log: Arc<TcgLog>) -> Self {
        Self {
            source: source.into(),
            current: (*log).clone(),
            original: log,
        }
    }

    /// The boot this log measures now.
    pub fn measured_boot(&self) -> MeasuredBoot {
        MeasuredBoot {
            unseal_index: unseal_point(&self.current).index,
            log: self.current.clone(),
        }
    }

    /// Edits the log as `change` would (measurements only; TPM-level effects are the
    /// machine's, see [`Change::tpm_effect`]).
    pub fn apply(&mut self, change: &Change) -> Result<(), String> {
        if let Some(edit) = log_change(change)? {
            self.current = predict::apply(&self.current, edit).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// The log edit a named change makes (by its name, [`predict::apply`]), `None` for changes
/// that measure nothing new (TPM clear or replace, disk moved); `Err` names why a log cannot
/// express the change.
pub fn log_change(change: &Change) -> Result<Option<ChangeKind>, String> {
    match change {
        Change::OptionRomAdded {
            signer: Signer::Unsigned,
        } => {}
        Change::OptionRomAdded { .. } => {
            return Err(
                "a signed option ROM logs its signer's authority in PCR 7 only the \
                        first time that certificate verifies an image in a boot, which a real \
                        log's firmware decides and we cannot reproduce faithfully; use \
                        `signer: unsigned` (PCR 2 only), or a synthetic device"
                    .into(),
            )
        }
        // Nothing measured: no TPM-visible edit; the MBR and NTFS boot sector only count
        // on a BIOS machine, and a real log's device is UEFI (the loader refuses BIOS ones).
        Change::DiskMovedToAnotherMachine
        | Change::TpmCleared
        | Change::TpmReplaced
        | Change::MbrBootCodeChanged
        | Change::NtfsBootSectorChanged => return Ok(None),
        Change::OptionRomChanged { .. } => {
            return Err("a real log does not say which option ROM is which card's; \
                        use option_rom_added with `signer: unsigned`, or a synthetic device"
                .into())
        }
        Change::BcdDebugOn => {
            return Err(
                "in a real Windows log boot debugging is a SIPA event in PCR 12-14, \
                        outside every profile: BitLocker refuses it by its BCD validation in \
                        software, not by the TPM; `harness eventlog predict --change \
                        bcd_debug_on` reports that verdict"
                    .into(),
            )
        }
        // Every other change is the log edit of its name; `predict::apply` (exhaustive over
        // the names) edits the log or says why it cannot.
        _ => {}
    }
    Ok(Some(change.kind()))
}
