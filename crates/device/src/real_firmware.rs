//! A device whose every boot is a real boot of real firmware: Debian's OVMF with Secure Boot
//! and the Microsoft keys, under QEMU on a swtpm ([`firmware_boot`]), booting Debian's signed
//! shim → grub → kernel. It stands for a Windows machine's *firmware*: what OVMF measures
//! before it hands over to a boot loader (PCR 0-3, 5, 7) is real; the loader chain (PCR 4,
//! 8-9: Linux here, Windows' boot manager on a real device) and Windows' PCR 11 are not in
//! it (SCHEMA.md, "Real firmware").
//!
//! How BitLocker sees it: each real boot's TCG log (sha256 bank only, as real TPMs ship) is
//! replayed into the machine's own swtpm with the real-log machinery ([`crate::RealLog`]), so
//! the seal, the unseal verdict, the dictionary-attack counter and the recovery are the same
//! TPM operations as for every device. Every real boot is checked: the log's replay must give
//! the PCRs the kernel read from the boot's TPM ([`RealFirmwareError::ReplayMismatch`]).
//!
//! [`real_change`] is the one mapping from the change vocabulary ([`ChangeKind`]) to the
//! changes real firmware can do ([`firmware_boot::Change`]); [`check_model`] holds the model's
//! prediction of a change to the real boot, per firmware-owned PCR.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventlog::describe::uefi_variable;
use eventlog::diff::LogDiff;
use eventlog::tcg::TcgLog;
use eventlog::{EventType, HashAlg};
use firmware_boot::{Cache, Change as RealChange, FIRMWARE_PCRS};

use crate::ChangeKind;

static ONE_QEMU: Mutex<()> = Mutex::new(());

/// Why a real boot could not be done or does not hold.
#[derive(Debug, thiserror::Error)]
pub enum RealFirmwareError {
    /// QEMU, OVMF, swtpm or the boot disk failed (the message says which and how).
    #[error("real firmware boot: {0}")]
    Boot(#[from] firmware_boot::Error),
    /// The kernel handed out a log that does not parse.
    #[error("the real boot's event log does not parse: {0}")]
    Log(String),
    /// Replaying the real log does not give the PCRs the real TPM held.
    #[error("the real boot's log does not replay to its TPM's PCRs: PCR {pcr} replays to {replayed}, the TPM held {tpm}")]
    ReplayMismatch {
        pcr: usize,
        replayed: String,
        tpm: String,
    },
    /// A change real firmware cannot do (the scenario loader refuses these first).
    #[error("{0}")]
    Unsupported(String),
    /// The model's prediction of the change and the real boot part on a firmware-owned PCR.
    #[error("the model does not hold to the real firmware: {0}")]
    ModelDisagrees(String),
}

/// The real change that means the same as `kind`, or why real firmware cannot do it. The one
/// place the two vocabularies meet.
pub fn real_change(kind: ChangeKind) -> Result<RealChange, String> {
    use ChangeKind as K;
    Ok(match kind {
        // Nothing measured changes: the boot is the base boot (TPM-level effects are the
        // machine's own, as for every device).
        K::Reboot | K::DiskMoved | K::TpmCleared | K::TpmReplaced => RealChange::None,
        K::SecureBootDbUpdate => RealChange::DbUpdate,
        K::SecureBootDbxUpdate => RealChange::DbxUpdate,
        K::SecureBootOff => RealChange::SecureBootOff,
        K::OptionRomAdded => RealChange::OptionRom,
        K::BcdBootOrder => RealChange::BootOrder,
        K::BootManagerSameSigner | K::BootManagerOtherSigner => {
            return Err(
                "the boot manager is Windows' (PCR 4); a real-firmware device boots \
                        Debian's shim, grub and kernel, which stand in for no Windows binary"
                    .into(),
            )
        }
        K::BcdDebugOn => {
            return Err(
                "BCD validation is Windows' boot manager (PCR 11), which is not in \
                        the real-firmware chain; its loader configuration (grub.cfg) is \
                        measured into PCR 8-9, in no Windows UEFI profile"
                    .into(),
            )
        }
        K::MbrBootCodeChanged | K::NtfsBootSectorChanged => {
            return Err(
                "OVMF is UEFI firmware: it neither runs nor measures an MBR or an \
                        NTFS boot sector"
                    .into(),
            )
        }
        K::FirmwareUpdate => {
            return Err(
                "the only other OVMF build here (OVMF_CODE_4M.fd) has no Secure Boot, \
                        so booting it is a firmware update and Secure Boot off at once (PCR 0 \
                        and 7); Debian's 2 MB Secure Boot build (OVMF_CODE.secboot.fd with \
                        OVMF_VARS.ms.fd) printed nothing in 300 s here"
                    .into(),
            )
        }
        K::OptionRomChanged => {
            return Err(
                "OVMF's machine has no option ROM of its own to update; use \
                        `option_rom_added` with `signer: unsigned` (a real e1000 with iPXE's ROM)"
                    .into(),
            )
        }
        K::None | K::LostPin | K::FirmwareUpdateSuspended => {
            return Err(
                "not offered on a real-firmware device: each of its boots is a real \
                        QEMU boot of 15-40 s (lost_pin boots once per PIN), and a planned \
                        update is not played on it yet"
                    .into(),
            )
        }
    })
}

/// The change kind whose real change is `change` (the inverse of [`real_change`], for the
/// model-vs-reality table); `None` for real changes no scenario names (the loader
/// configuration; a firmware build without Secure Boot, which is an update and Secure Boot
/// off at once).
pub fn model_kind(change: &RealChange) -> Option<ChangeKind> {
    if *change == RealChange::None {
        return None;
    }
    <ChangeKind as clap::ValueEnum>::value_variants()
        .iter()
        .copied()
        .find(|k| real_change(*k).as_ref() == Ok(change))
}

/// A real boot: the firmware's log and how long it took.
#[derive(Debug, Clone)]
pub struct RealBoot {
    /// The firmware's TCG log (sha256 bank), as the kernel handed it out.
    pub log: TcgLog,
    /// From QEMU's start to the guest's last PCR line.
    pub boot_time: Duration,
    /// The real change this boot was made with.
    pub change: RealChange,
    /// The model's prediction held to this boot (every boot but the first, which the
    /// device is provisioned on).
    pub model_check: Option<ModelCheck>,
}

/// The real firmware of one device: the changes made to it and a place for its boots.
#[derive(Debug)]
pub struct RealFirmware {
    cache: Cache,
    /// Per-boot scratch (varstore copy, serial log) and the boots' TPM state.
    dir: tempfile::TempDir,
    change: RealChange,
    boots: usize,
    timeout: Duration,
    /// Every boot so far, oldest first (shared with whoever reports them).
    history: SharedBoots,
}

/// A device's real boots, oldest first, readable while the machine lives on.
pub type SharedBoots = Arc<Mutex<Vec<RealBoot>>>;

impl RealFirmware {
    /// OVMF with Secure Boot, unchanged, booting from the cached Debian boot disk. Each boot
    /// is bounded by `timeout` (QEMU and swtpm are killed when it passes).
    pub fn new(timeout: Duration) -> Result<Self, RealFirmwareError> {
        let dir = tempfile::Builder::new()
            .prefix("real-firmware-")
            .tempdir()
            .map_err(|e| RealFirmwareError::Unsupported(format!("a scratch directory: {e}")))?;
        Ok(Self {
            cache: Cache::default_location()?,
            dir,
            change: RealChange::None,
            boots: 0,
            timeout,
            history: SharedBoots::default(),
        })
    }

    /// Makes the real change that means `kind` (before the next boot). One real change at a
    /// time: the machine carries only the latest.
    pub fn apply(&mut self, kind: ChangeKind) -> Result<(), RealFirmwareError> {
        let change = real_change(kind).map_err(RealFirmwareError::Unsupported)?;
        if change != RealChange::None {
            if self.change != RealChange::None && self.change != change {
                return Err(RealFirmwareError::Unsupported(format!(
                    "a real-firmware device carries one change; it already has {}",
                    self.change.name()
                )));
            }
            self.change = change;
        }
        Ok(())
    }

    /// The real change the next boot is made with.
    pub fn change(&self) -> &RealChange {
        &self.change
    }

    /// Keeps the model check of the last boot with it.
    pub fn record_check(&mut self, check: ModelCheck) {
        if let Ok(mut history) = self.history.lock() {
            if let Some(last) = history.last_mut() {
                last.model_check = Some(check);
            }
        }
    }

    /// The boots so far (and every later one), for a report.
    pub fn history(&self) -> SharedBoots {
        Arc::clone(&self.history)
    }

    /// The scratch directory (the boots' serial logs, for a failure's evidence).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Boots for real, checks the log replays to the TPM's PCRs, and returns it.
    pub fn boot(&mut self) -> Result<RealBoot, RealFirmwareError> {
        self.boots += 1;
        let work: PathBuf = self.dir.path().join(format!("boot-{}", self.boots));
        // The boot's own TPM: the machine's swtpm gets the log replayed (module docs).
        let tpm = self.dir.path().join("firmware-tpm");
        let mut req = self.change.plan(&self.cache, &tpm, &work)?;
        req.timeout = self.timeout;
        let outcome = {
            // One QEMU at a time in this process: two on 2 cores only slow each other down
            // (a poisoned lock only means another boot panicked; this one may go ahead).
            let _one_at_a_time = ONE_QEMU.lock().unwrap_or_else(|p| p.into_inner());
            firmware_boot::boot(&req)?
        };
        let log =
            TcgLog::parse(&outcome.event_log).map_err(|e| RealFirmwareError::Log(e.to_string()))?;
        let replay = log.replay();
        // PCR 10 is the kernel's IMA boot_aggregate: not in the firmware's log.
        for pcr in (0..24).filter(|&p| p != 10) {
            let replayed = replay.get(HashAlg::Sha256, pcr as u32).unwrap_or_default();
            if replayed != outcome.pcrs.0[pcr] {
                return Err(RealFirmwareError::ReplayMismatch {
                    pcr,
                    replayed: hex::encode(replayed),
                    tpm: outcome.pcrs.hex(pcr),
                });
            }
        }
        let boot = RealBoot {
            log,
            boot_time: outcome.boot_time,
            change: self.change.clone(),
            model_check: None,
        };
        if let Ok(mut history) = self.history.lock() {
            history.push(boot.clone());
        }
        Ok(boot)
    }
}

/// Known differences between the model and real OVMF that change no BitLocker verdict, with
/// the evidence (ARCHITECTURE.md, "Real firmware in the loop").
const EXCUSED: &[(ChangeKind, u32, &str)] = &[(
    ChangeKind::OptionRomAdded,
    1,
    "the card's ROM (iPXE) adds network boot options, so OVMF's BDS writes new Boot#### \
     entries and BootOrder (PCR 1); a ROM that offers no boot option (a GPU's GOP driver) \
     does not. PCR 1 is in no BitLocker profile",
)];

/// One firmware-owned PCR where the model and the real boot part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    pub pcr: u32,
    /// Whether the model moved it (the real boot did the opposite).
    pub model_moved: bool,
    /// The model's events behind it (added / removed against the base boot).
    pub model_events: String,
    /// The real boot's events behind it.
    pub real_events: String,
    /// Why it does not matter for a Windows device, when known and documented.
    pub excused: Option<&'static str>,
}

/// The model held to a real boot: which firmware-owned PCRs each moved, and where they part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCheck {
    pub model_moved: Vec<u32>,
    pub real_moved: Vec<u32>,
    pub disagreements: Vec<Disagreement>,
}

impl ModelCheck {
    /// Whether they agree, but for the documented differences.
    pub fn holds(&self) -> bool {
        self.disagreements.iter().all(|d| d.excused.is_some())
    }
}

impl std::fmt::Display for ModelCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "firmware-owned PCRs moved: model {:?}, real {:?}",
            self.model_moved, self.real_moved
        )?;
        for d in &self.disagreements {
            write!(
                f,
                "; PCR {} moved only in the {}: model [{}], real [{}]",
                d.pcr,
                if d.model_moved { "model" } else { "real boot" },
                d.model_events,
                d.real_events
            )?;
            if let Some(why) = d.excused {
                write!(f, " (documented: {why})")?;
            }
        }
        Ok(())
    }
}

/// The records of `log` the firmware owns (the rule, ARCHITECTURE.md): every record in PCR
/// 0-3 and 5, and in PCR 7 those up to its separator (SecureBoot, PK, KEK, db, dbx) and the
/// `db` authority events (the firmware verifying an image against db). The loader's own
/// PCR 7 events after the separator (shim's SbatLevel, MokListRT, its vendor certificate)
/// and PCR 4, 8-9 are the loader chain, Linux's here and Windows' on a real device.
pub fn firmware_owned(log: &TcgLog) -> TcgLog {
    let mut out = log.clone();
    let mut before_separator = true;
    out.records.retain(|r| {
        let pcr = r.pcr as usize;
        if pcr != 7 {
            return FIRMWARE_PCRS.contains(&pcr);
        }
        let keep = before_separator
            || (r.event_type == EventType::EV_EFI_VARIABLE_AUTHORITY
                && uefi_variable(&r.data).is_some_and(|v| v.name == "db"));
        if r.event_type == EventType::EV_SEPARATOR {
            before_separator = false;
        }
        keep
    });
    out
}

/// Compares the model's prediction of a change (`model`: the base log edited by
/// [`crate::predict::apply`]) with the real boot after it, both against the real `base`
/// boot: which firmware-owned PCRs moved (values are not compared: the model's edit, e.g.
/// its db certificate, is not byte-for-byte the real one).
pub fn check_model(
    base: &TcgLog,
    model: &TcgLog,
    real: &TcgLog,
    kind: Option<ChangeKind>,
) -> ModelCheck {
    let base = firmware_owned(base);
    let model_diff = LogDiff::new(&base, &firmware_owned(model));
    let real_diff = LogDiff::new(&base, &firmware_owned(real));
    let model_moved = model_diff.pcr_indices();
    let real_moved = real_diff.pcr_indices();
    let events = |diff: &LogDiff, pcr: u32| {
        diff.pcrs
            .iter()
            .find(|d| d.pcr == pcr)
            .map_or("unchanged".to_string(), |d| {
                let names = |rs: &[eventlog::diff::NamedRecord]| {
                    rs.iter()
                        .map(|r| r.description.clone())
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                format!(
                    "added {{{}}} removed {{{}}}",
                    names(&d.added),
                    names(&d.removed)
                )
            })
    };
    let mut disagreements = Vec::new();
    for &pcr in FIRMWARE_PCRS.iter() {
        let pcr = pcr as u32;
        let (m, r) = (model_moved.contains(&pcr), real_moved.contains(&pcr));
        if m != r {
            disagreements.push(Disagreement {
                pcr,
                model_moved: m,
                model_events: events(&model_diff, pcr),
                real_events: events(&real_diff, pcr),
                excused: EXCUSED
                    .iter()
                    .find(|(k, p, _)| Some(*k) == kind && *p == pcr)
                    .map(|(_, _, why)| *why),
            });
        }
    }
    ModelCheck {
        model_moved,
        real_moved,
        disagreements,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_real_change_has_one_kind_and_back() {
        for change in RealChange::ALL {
            match model_kind(&change) {
                Some(kind) => assert_eq!(real_change(kind).ok(), Some(change)),
                None => assert!(matches!(
                    change,
                    RealChange::None
                        | RealChange::FirmwareCode
                        | RealChange::KernelCmdline
                        | RealChange::GrubCfgLine
                ),),
            }
        }
        let why = real_change(ChangeKind::BcdDebugOn).unwrap_err();
        assert!(why.contains("PCR 11"), "{why}");
        let why = real_change(ChangeKind::FirmwareUpdate).unwrap_err();
        assert!(why.contains("no Secure Boot"), "{why}");
    }

    /// The check on model logs (no QEMU): a disagreement names the PCR and the events on
    /// both sides; the option ROM's PCR 1 is excused, nothing else is.
    #[test]
    fn the_model_check_names_the_pcrs_and_events_where_model_and_real_part() {
        use crate::predict::apply;
        let base = crate::Device::default().measured_boot().log;
        let db = apply(&base, ChangeKind::SecureBootDbUpdate).unwrap();
        let agree = check_model(&base, &db, &db, Some(ChangeKind::SecureBootDbUpdate));
        assert_eq!(
            (agree.model_moved.clone(), agree.real_moved.clone()),
            (vec![7], vec![7])
        );
        assert!(agree.disagreements.is_empty() && agree.holds());

        let boot_order = apply(&base, ChangeKind::BcdBootOrder).unwrap();
        let part = check_model(
            &base,
            &db,
            &boot_order,
            Some(ChangeKind::SecureBootDbUpdate),
        );
        assert_eq!(
            part.disagreements.iter().map(|d| d.pcr).collect::<Vec<_>>(),
            [1, 7]
        );
        assert!(!part.holds());
        let text = part.to_string();
        assert!(text.contains("PCR 7 moved only in the model"), "{text}");
        assert!(text.contains("BootOrder"), "{text}");

        let rom = apply(&base, ChangeKind::OptionRomAdded).unwrap();
        let rom_and_entries = apply(&rom, ChangeKind::BcdBootOrder).unwrap();
        let excused = check_model(
            &base,
            &rom,
            &rom_and_entries,
            Some(ChangeKind::OptionRomAdded),
        );
        assert_eq!(excused.disagreements.len(), 1);
        assert!(excused.holds(), "{excused}");
    }

    /// PCR 7 counts up to its separator and the db authority events, not the loader's own.
    #[test]
    fn firmware_owned_keeps_pcr7_to_its_separator_and_db_authorities() {
        let log = crate::Device::default().measured_boot().log;
        let owned = firmware_owned(&log);
        assert!(owned
            .records
            .iter()
            .all(|r| [0, 1, 2, 3, 5, 7].contains(&r.pcr)));
        let pcr7 = |l: &TcgLog| l.records.iter().filter(|r| r.pcr == 7).count();
        // The model logs only firmware events in PCR 7: all of them stay.
        assert_eq!(pcr7(&owned), pcr7(&log));
        assert!(owned.records.len() < log.records.len());
    }
}
