//! A simulated Windows device on its own real TPM, with BitLocker on its system volume.
//!
//! [`Machine`] joins the pieces: the measured-boot model ([`crate`]) is booted into a
//! real swtpm ([`swtpm::Tpm`]); BitLocker's TPM protector is the volume master key sealed by
//! that TPM under PolicyPCR to the validation profile (TPM+PIN adds PolicyAuthValue and
//! dictionary-attack protection); the recovery-password protector is the on-disk scheme
//! ([`bitlocker`]). A lockout is therefore one the TPM enforces — its own response
//! code — and a recovery is a real unwrap of the VMK followed by sectors that decrypt.
//!
//! The boot sequence, as Windows does it:
//! 1. TPM reset (Shutdown(CLEAR), power cycle, Startup(CLEAR)).
//! 2. The firmware and boot manager measure everything up to the unseal point
//!    ([`Device::unseal_index`]: through the BCD settings BitLocker validates in PCR 11).
//! 3. The boot manager asks the TPM to unseal the VMK (with the PIN's auth value for
//!    TPM+PIN). A suspended volume (clear key) opens without the TPM.
//! 4. The rest of the boot is measured.
//! 5. On failure the recovery screen shows the recovery-password protector's ID and why.
//!
//! Modelling choices (see ARCHITECTURE.md):
//! - The TPM+PIN auth value is SHA-256(UTF-16LE(PIN)). Windows stretches the PIN and uses an
//!   intermediate key (domain.md, unconfirmed); the TPM's behaviour — PolicyAuthValue on a
//!   DA-protected object, counted failures, lockout — is the same, and it keeps each of the
//!   32 wrong-PIN attempts of a lost-PIN scenario cheap.
//! - The device takes TPM ownership like Windows 10 1607+: a random lockout authorization
//!   and Windows' dictionary-attack settings (32 tries, one forgiven every 10 minutes).

use rand::{CryptoRng, Rng};
/// The TPM's dictionary-attack settings a machine is provisioned with (the runner sets them
/// from a scenario without talking to `swtpm` itself).
use serde::{Deserialize, Serialize};
pub use swtpm::DaParameters;
use swtpm::{HashingAlgorithm, SealPolicy, SealedBlob, Tpm};

use crate::real_firmware::{check_model, model_kind, RealFirmware, RealFirmwareError};
use crate::replay::{self as log_tpm, hashing_algorithm, TpmReplayError};
use crate::{
    explain_boots, Change, ChangeError, Device, Explanation, MeasuredBoot, Profile, TpmEffect,
};
use bitlocker::disk::VolumeFile;
use bitlocker::fve::{Cipher, FveError, NewProtector, Secret};
use bitlocker::{check_block, BlockError, KeyProtectorId, ProtectorType, RecoveryPassword, Vmk};
use eventlog::{HashAlg, Pcrs};

/// Windows' TPM 2.0 dictionary-attack settings (windows-itpro-docs, tpm-fundamentals):
/// lockout after 32 failures, one failure forgotten every 10 minutes; a failed lockout-auth
/// use blocks further attempts for a day.
pub const WINDOWS_DA: DaParameters = DaParameters {
    max_tries: 32,
    recovery_time_secs: 600,
    lockout_recovery_secs: 86_400,
};

/// How the VMK is protected by the TPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmProtection {
    /// TPM only: PolicyPCR over the profile.
    Tpm,
    /// TPM+PIN: PolicyPCR + PolicyAuthValue, dictionary-attack protected.
    TpmPin {
        /// The PIN the user types at boot.
        pin: String,
    },
}

/// How BitLocker is set up on a new machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitLockerSetup {
    /// The validation profile the TPM protector is sealed to.
    pub profile: Profile,
    /// TPM or TPM+PIN.
    pub protection: TpmProtection,
    /// Recovery-password protectors to add (usually 1).
    pub recovery_passwords: usize,
    /// When set, every recovery-password protector ID starts with these 8 hex digits
    /// (the "several keys match" path).
    pub key_id_prefix: Option<u32>,
    /// Dictionary-attack parameters the device provisions (Windows: [`WINDOWS_DA`]).
    pub dictionary_attack: DaParameters,
    /// Sector cipher of the system volume (Windows 10+: AES-XTS-128; a volume encrypted
    /// under Windows 7 keeps AES-CBC + Elephant).
    pub cipher: Cipher,
}

impl Default for BitLockerSetup {
    fn default() -> Self {
        BitLockerSetup {
            profile: Profile::SecureBoot7_11,
            protection: TpmProtection::Tpm,
            recovery_passwords: 1,
            key_id_prefix: None,
            dictionary_attack: WINDOWS_DA,
            cipher: Cipher::AesXts128,
        }
    }
}

/// A key-protector-ID / recovery-password pair, as the device's agent escrows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscrowedKey {
    /// The volume's GUID.
    pub volume_id: uuid::Uuid,
    /// The recovery-password protector's ID.
    pub key_protector_id: KeyProtectorId,
    /// The 48 digits.
    pub recovery_password: RecoveryPassword,
}

/// The TPM's answer to the device's unseal: what the recovery screen reports and what a
/// scenario's `expect.tpm_error` states (one type, serde names as the YAML spells them).
/// [`TpmError::from_unseal`] is the one translation from the TPM's own error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TpmError {
    /// The device unlocked: no error.
    None,
    /// `TPM_RC_POLICY_FAIL`: a PCR of the profile changed.
    PolicyFailed,
    /// `TPM_RC_AUTH_FAIL`: a wrong PIN (counted by dictionary-attack protection), and the
    /// user chose recovery at the PIN prompt (Esc).
    AuthFailed,
    /// `TPM_RC_LOCKOUT`: too many wrong PINs; no PIN is even tried.
    LockedOut,
    /// `TPM_RC_INTEGRITY`: the sealed blob is from another TPM or from before a clear.
    Integrity,
    /// Another TPM response code (never in a scenario file).
    #[serde(skip)]
    Other(u32),
}

impl TpmError {
    /// The TPM's refusal of an unseal as the device reports it; `None` when `err` is not a
    /// TPM answer at all (the TPM is gone, a wrapper error): the caller fails with it.
    pub fn from_unseal(err: &swtpm::Error) -> Option<Self> {
        Some(match err {
            swtpm::Error::PolicyFailed { .. } => Self::PolicyFailed,
            swtpm::Error::AuthFailed { .. } => Self::AuthFailed,
            swtpm::Error::LockedOut { .. } => Self::LockedOut,
            swtpm::Error::Integrity { .. } => Self::Integrity,
            swtpm::Error::Tpm { code, .. } | swtpm::Error::BadAuth { code } => Self::Other(*code),
            _ => return None,
        })
    }

    /// The short name scenarios use, its serde name (`policy_failed`, `locked_out`,
    /// `integrity`; a test keeps the two equal), or `tpm_error_0x…` for another code.
    pub fn name(&self) -> String {
        match self {
            Self::None => "none".into(),
            Self::PolicyFailed => "policy_failed".into(),
            Self::AuthFailed => "auth_failed".into(),
            Self::LockedOut => "locked_out".into(),
            Self::Integrity => "integrity".into(),
            Self::Other(code) => format!("tpm_error_{code:#x}"),
        }
    }
}

/// What the recovery screen shows: the ID to look up and why the device is here.
#[derive(Debug, Clone)]
pub struct RecoveryScreen {
    /// The recovery-password protector's ID (what the user types the first 8 digits of).
    pub key_id: KeyProtectorId,
    /// The TPM's refusal.
    pub cause: TpmError,
    /// The TPM's response code.
    pub tpm_response_code: Option<u32>,
    /// Which profile PCRs differ from the sealed state, and the events behind it.
    pub explanation: Explanation,
}

/// How a boot ended.
#[derive(Debug, Clone)]
pub enum BootOutcome {
    /// The volume opened without user help.
    Unlocked {
        /// Which protector opened it.
        via: ProtectorType,
        /// Whether the TPM protector was re-sealed during this boot (resume after suspend).
        resealed: bool,
    },
    /// The TPM refused a wrong PIN and counted it; the user may try again.
    WrongPin {
        /// The TPM's lockout counter after this failure.
        lockout_counter: u32,
    },
    /// The BitLocker recovery screen.
    Recovery(Box<RecoveryScreen>),
}

/// How a boot ended, as a report says it: "a normal boot", "a refused PIN (counter 3)",
/// "the recovery screen: policy_failed (...)".
impl std::fmt::Display for BootOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootOutcome::Unlocked { .. } => f.write_str("a normal boot"),
            BootOutcome::WrongPin { lockout_counter } => {
                write!(f, "a refused PIN (counter {lockout_counter})")
            }
            BootOutcome::Recovery(screen) => write!(
                f,
                "the recovery screen: {} ({})",
                screen.cause.name(),
                screen.explanation
            ),
        }
    }
}

/// A successful recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The recovery-password protector that opened the volume.
    pub via: KeyProtectorId,
}

/// What went wrong (not a lockout: lockouts are [`BootOutcome::Recovery`]).
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The TPM failed in a way no boot expects.
    #[error("TPM: {0}")]
    Tpm(#[from] swtpm::Error),
    /// The volume image could not be read, unlocked or written.
    #[error("volume image: {0}")]
    Volume(#[from] FveError),
    /// The change cannot apply to this device.
    #[error(transparent)]
    Change(#[from] ChangeError),
    /// A typed recovery password has a bad block (checked as the user types).
    #[error("the recovery password is not valid: {0}")]
    BadBlock(#[from] BlockError),
    /// A typed recovery password has the wrong number of blocks.
    #[error("the recovery password has {0} blocks of digits; it needs 8")]
    BlockCount(usize),
    /// A well-formed password that no protector accepts (the AES-CCM MAC did not verify).
    #[error("the recovery password does not unlock this volume (MAC check failed)")]
    WrongRecoveryPassword,
    /// The device is not on the recovery screen.
    #[error("the device is not on the recovery screen")]
    NotInRecovery,
    /// The device was booted before anything sealed to it.
    #[error("{0}")]
    State(String),
    /// A real firmware boot failed, or the model does not hold to it.
    #[error(transparent)]
    RealFirmware(#[from] RealFirmwareError),
}

/// The TPM protector: the sealed VMK and what it is bound to.
#[derive(Debug, Clone)]
struct SealedProtector {
    id: KeyProtectorId,
    profile: Profile,
    /// The boot it was sealed to (the "before" of an explanation).
    sealed_boot: MeasuredBoot,
}

/// A simulated device with its own TPM and a BitLocker volume.
#[derive(Debug)]
pub struct Machine {
    device: Device,
    tpm: Tpm,
    /// The system volume: a BitLocker image file in the real format (the sealed TPM blob
    /// and the recovery-password protectors live in its metadata).
    volume: VolumeFile,
    dictionary_attack: DaParameters,
    /// The VMK in the running OS's memory after an unlock; `None` while locked.
    running_vmk: Option<Vmk>,
    protection: TpmProtection,
    tpm_protector: SealedProtector,
    recovery_ids: Vec<KeyProtectorId>,
    /// Protection suspended: the VMK is stored in the clear until the next boot re-seals.
    clear_key: Option<Vmk>,
    /// Reboots left before a suspension resumes (re-seals); counted down by [`Self::boot`].
    suspended_reboots: u32,
    lockout_auth: Vec<u8>,
    /// The last boot (up to its unseal point, then the rest).
    last_boot: MeasuredBoot,
    on_recovery_screen: bool,
    /// The TPM's response code to the last wrong PIN, while the PIN prompt is up.
    pin_prompt_failure: Option<u32>,
    /// Real firmware in the loop: every boot is a real OVMF boot whose log is replayed
    /// into `tpm` ([`crate::real_firmware`]); `None` for a modelled or real-log device.
    real_firmware: Option<RealFirmware>,
}

impl Machine {
    /// A new machine: its own TPM (owned the Windows way), a BitLocker volume image on disk
    /// (real encrypted sectors), the TPM protector sealed to a first boot, and
    /// recovery-password protectors. Returns the pairs the agent escrows.
    pub fn provision<R: Rng + CryptoRng>(
        device: Device,
        setup: &BitLockerSetup,
        rng: &mut R,
    ) -> Result<(Machine, Vec<EscrowedKey>), MachineError> {
        let mut tpm = Tpm::spawn()?;
        let lockout_auth = take_ownership(&mut tpm, rng, setup.dictionary_attack)?;
        // First boot measures the platform; BitLocker seals a new VMK to that state.
        let sealed_boot = boot_measurements(&mut tpm, &device)?;
        let vmk = Vmk::from_bytes(rng.random());
        let blob = seal_vmk(
            &mut tpm,
            &vmk,
            setup.profile,
            &setup.protection,
            &sealed_boot,
        )?;
        let tpm_protector = match setup.protection {
            TpmProtection::Tpm => NewProtector::Tpm {
                blob: blob.to_bytes(),
            },
            TpmProtection::TpmPin { .. } => NewProtector::TpmAndPin {
                blob: blob.to_bytes(),
            },
        };
        let mut protectors = vec![(tpm_protector, None)];
        for _ in 0..setup.recovery_passwords.max(1) {
            let id = setup.key_id_prefix.map(|prefix| {
                let mut bytes: [u8; 16] = rng.random();
                bytes[..4].copy_from_slice(&prefix.to_be_bytes());
                bytes[6] = (bytes[6] & 0x0f) | 0x40;
                bytes[8] = (bytes[8] & 0x3f) | 0x80;
                KeyProtectorId::from_uuid(uuid::Uuid::from_bytes(bytes))
            });
            protectors.push((NewProtector::RecoveryPassword(None), id));
        }
        let (volume, created) = VolumeFile::create(
            rng,
            "SIMULATED-PC C: harness",
            setup.cipher,
            &vmk,
            protectors,
        )?;
        let id = created
            .first()
            .map(|p| p.id)
            .ok_or_else(|| MachineError::State("the volume has no TPM protector".into()))?;
        let mut escrow = Vec::new();
        let mut recovery_ids = Vec::new();
        for p in &created {
            let Some(digits) = &p.recovery_password else {
                continue;
            };
            let password = RecoveryPassword::parse(digits)
                .map_err(|e| MachineError::State(format!("new recovery password: {e}")))?;
            recovery_ids.push(p.id);
            escrow.push(EscrowedKey {
                volume_id: volume.volume_guid(),
                key_protector_id: p.id,
                recovery_password: password,
            });
        }
        let machine = Machine {
            device,
            tpm,
            volume,
            dictionary_attack: setup.dictionary_attack,
            running_vmk: Some(vmk.clone()),
            protection: setup.protection.clone(),
            tpm_protector: SealedProtector {
                id,
                profile: setup.profile,
                sealed_boot: sealed_boot.clone(),
            },
            recovery_ids,
            clear_key: None,
            suspended_reboots: 0,
            lockout_auth,
            last_boot: sealed_boot,
            on_recovery_screen: false,
            pin_prompt_failure: None,
            real_firmware: None,
        };
        Ok((machine, escrow))
    }

    /// A machine on real firmware: OVMF boots once for real, and BitLocker is provisioned
    /// sealed to that boot (its log replayed into the machine's own TPM, as for a real-log
    /// device); every later boot is a real boot too ([`crate::real_firmware`]).
    pub fn provision_on_real_firmware<R: Rng + CryptoRng>(
        mut firmware: RealFirmware,
        setup: &BitLockerSetup,
        rng: &mut R,
    ) -> Result<(Machine, Vec<EscrowedKey>), MachineError> {
        let first = firmware.boot()?;
        let device = Device::from_real_log(
            "OVMF with Secure Boot (real boot)",
            std::sync::Arc::new(first.log),
        );
        let (mut machine, escrow) = Self::provision(device, setup, rng)?;
        machine.real_firmware = Some(firmware);
        Ok((machine, escrow))
    }

    /// The real firmware, for a machine on it: its boots, their times and model checks.
    pub fn real_firmware(&self) -> Option<&RealFirmware> {
        self.real_firmware.as_ref()
    }

    /// The device model as it is now.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The volume GUID.
    pub fn volume_id(&self) -> uuid::Uuid {
        self.volume.volume_guid()
    }

    /// The system volume's image file (BitLocker's on-disk format; cryptsetup and dislocker
    /// open it). It lives as long as the machine.
    pub fn volume_image(&self) -> &std::path::Path {
        self.volume.path()
    }

    /// SHA-256 of the volume's decrypted data as written (what an unlock must show).
    pub fn volume_data_sha256(&self) -> [u8; 32] {
        self.volume.data_sha256()
    }

    /// The validation profile of the TPM protector.
    pub fn profile(&self) -> Profile {
        self.tpm_protector.profile
    }

    /// The TPM (or TPM+PIN) protector's ID.
    pub fn tpm_protector_id(&self) -> KeyProtectorId {
        self.tpm_protector.id
    }

    /// The current recovery-password protector IDs.
    pub fn recovery_key_ids(&self) -> &[KeyProtectorId] {
        &self.recovery_ids
    }

    /// The TPM's lockout authorization (what the agent escrows for help-desk resets).
    pub fn lockout_auth(&self) -> &[u8] {
        &self.lockout_auth
    }

    /// The TPM's dictionary-attack failure counter.
    pub fn tpm_lockout_counter(&mut self) -> Result<u32, MachineError> {
        Ok(self.tpm.lockout_counter()?)
    }

    /// Whether the TPM is in dictionary-attack lockout, as the TPM says (`inLockout`).
    pub fn tpm_in_lockout(&mut self) -> Result<bool, MachineError> {
        Ok(self.tpm.in_lockout()?)
    }

    /// What the last boot measured (its log and unseal point).
    pub fn last_boot(&self) -> &MeasuredBoot {
        &self.last_boot
    }

    /// The PCRs the TPM holds now (SHA-256 bank), for checking predictions.
    pub fn tpm_pcrs(&mut self, pcrs: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, MachineError> {
        Ok(self.tpm.pcr_read(HashingAlgorithm::Sha256, pcrs)?)
    }

    /// The PCR values a boot of the device *as it is now* will produce.
    pub fn predict_pcrs(&self) -> Pcrs {
        self.device.predict_pcrs()
    }

    /// Applies a named change: measurements change in the model, TPM-level changes act on
    /// the TPM (clear, replace, another machine's TPM), suspension stores a clear key.
    pub fn apply(&mut self, change: &Change) -> Result<(), MachineError> {
        if let Some(firmware) = &mut self.real_firmware {
            // The real change, for the next real boot; the model's edit of the log below
            // is the prediction that boot is held to.
            firmware.apply(change.kind())?;
        }
        match change.tpm_effect() {
            TpmEffect::None => {}
            TpmEffect::Clear => {
                self.tpm.assume_lockout_auth(&self.lockout_auth);
                self.tpm.clear()?;
                self.lockout_auth.clear();
            }
            // A new TPM (replaced, or the disk now boots on another machine's): new seeds.
            TpmEffect::Replace | TpmEffect::OtherTpm => {
                self.tpm = Tpm::spawn()?;
                self.lockout_auth.clear();
            }
            TpmEffect::SuspendProtection => {
                // manage-bde -protectors -disable C: (one reboot): the VMK in the clear.
                self.clear_key = Some(self.current_vmk()?);
                self.suspended_reboots = 1;
            }
        }
        self.device.apply(change)?;
        Ok(())
    }

    /// `Suspend-BitLocker -RebootCount reboots` (`manage-bde -protectors -disable
    /// -RebootCount`): the VMK is stored in the clear for that many reboots; the boot that
    /// uses the last one re-seals to its own measurements and resumes protection.
    pub fn suspend_protection(&mut self, reboots: u32) -> Result<(), MachineError> {
        if reboots == 0 {
            return Err(MachineError::State(
                "a suspension lasts at least one reboot".into(),
            ));
        }
        self.clear_key = Some(self.current_vmk()?);
        self.suspended_reboots = reboots;
        Ok(())
    }

    /// Boots. `pin` is what the user types at the pre-boot PIN prompt (TPM+PIN only).
    pub fn boot(&mut self, pin: Option<&str>) -> Result<BootOutcome, MachineError> {
        self.running_vmk = None;
        self.pin_prompt_failure = None;
        let boot = self.next_boot()?;
        measure(&mut self.tpm, &boot)?;
        self.last_boot = boot;

        let outcome = if let Some(vmk) = self.clear_key.take() {
            // Suspended: the clear key opens the volume; the last suspended reboot resumes,
            // re-sealing to this boot.
            self.volume.unlock(Secret::Vmk(&vmk))?;
            self.suspended_reboots = self.suspended_reboots.saturating_sub(1);
            let resumes = self.suspended_reboots == 0;
            if resumes {
                self.reseal(&vmk)?;
            } else {
                self.clear_key = Some(vmk.clone());
            }
            self.running_vmk = Some(vmk);
            BootOutcome::Unlocked {
                via: ProtectorType::Tpm,
                resealed: resumes,
            }
        } else {
            let auth = self.pin_auth(pin);
            let pcrs = profile_pcrs(self.tpm_protector.profile);
            // The boot manager reads the sealed blob from the volume's metadata.
            let blob = SealedBlob::from_bytes(&self.volume.tpm_key(self.tpm_protector.id)?)?;
            let bank = hashing_algorithm(self.tpm_protector.sealed_boot.bank());
            match self.tpm.unseal_in_bank(&blob, &pcrs, bank, auth.as_deref()) {
                Ok(secret) => {
                    let vmk = vmk_from(&secret)?;
                    self.volume.unlock(Secret::Vmk(&vmk))?;
                    self.running_vmk = Some(vmk);
                    BootOutcome::Unlocked {
                        via: self.tpm_protector_type(),
                        resealed: false,
                    }
                }
                Err(swtpm::Error::AuthFailed { code }) => {
                    self.pin_prompt_failure = Some(code);
                    BootOutcome::WrongPin {
                        lockout_counter: self.tpm.lockout_counter()?,
                    }
                }
                Err(err) => {
                    let Some(cause) = TpmError::from_unseal(&err) else {
                        return Err(err.into());
                    };
                    let key_id = self.recovery_ids.first().copied().ok_or_else(|| {
                        MachineError::State("no recovery-password protector".into())
                    })?;
                    self.on_recovery_screen = true;
                    BootOutcome::Recovery(Box::new(RecoveryScreen {
                        key_id,
                        tpm_response_code: err.response_code(),
                        cause,
                        explanation: explain_boots(
                            &self.tpm_protector.sealed_boot,
                            &self.last_boot,
                            self.tpm_protector.profile,
                        ),
                    }))
                }
            }
        };
        measure_rest(&mut self.tpm, &self.last_boot)?;
        Ok(outcome)
    }

    /// At the PIN prompt after a wrong PIN, the user gives up (Esc) and asks for recovery:
    /// the recovery screen, with the TPM's last refusal as the cause.
    pub fn choose_recovery_at_pin_prompt(&mut self) -> Result<RecoveryScreen, MachineError> {
        let code = self.pin_prompt_failure.take().ok_or_else(|| {
            MachineError::State("no PIN was refused: the device is not at the PIN prompt".into())
        })?;
        let key_id = self
            .recovery_ids
            .first()
            .copied()
            .ok_or_else(|| MachineError::State("no recovery-password protector".into()))?;
        self.on_recovery_screen = true;
        Ok(RecoveryScreen {
            key_id,
            cause: TpmError::AuthFailed,
            tpm_response_code: Some(code),
            explanation: explain_boots(
                &self.tpm_protector.sealed_boot,
                &self.last_boot,
                self.tpm_protector.profile,
            ),
        })
    }

    /// Types a recovery password on the recovery screen. Blocks are checked as typed (the
    /// error names the first bad block); a well-formed password must then unwrap the VMK
    /// (AES-CCM MAC verified) and decrypt the volume. On success the TPM protector is
    /// re-sealed to this boot's measurements; for TPM+PIN, `new_pin` sets a new PIN.
    /// The TPM's dictionary-attack state is left as the TPM has it: Windows 10 1607+ keeps
    /// no lockout authorization, so a lockout lasts until the TPM forgets failures by its
    /// own clock or a help desk resets it with the escrowed value (Manage TPM).
    pub fn enter_recovery_password(
        &mut self,
        typed: &str,
        new_pin: Option<&str>,
    ) -> Result<Recovered, MachineError> {
        if !self.on_recovery_screen {
            return Err(MachineError::NotInRecovery);
        }
        let password = check_typed(typed)?;
        let unlocked = match self.volume.unlock(Secret::RecoveryPassword(&password)) {
            Ok(unlocked) => unlocked,
            Err(FveError::WrongSecret { .. }) => return Err(MachineError::WrongRecoveryPassword),
            Err(other) => return Err(other.into()),
        };
        let via = unlocked.unlocked_by();
        let vmk = unlocked.vmk().clone();
        drop(unlocked);
        if let (TpmProtection::TpmPin { pin }, Some(new)) = (&mut self.protection, new_pin) {
            *pin = new.to_string();
        }
        if self.lockout_auth.is_empty() {
            // A cleared or new TPM: Windows takes ownership again after recovery.
            self.lockout_auth =
                take_ownership(&mut self.tpm, &mut rand::rng(), self.dictionary_attack)?;
        }
        self.reseal(&vmk)?;
        self.running_vmk = Some(vmk);
        self.on_recovery_screen = false;
        let via =
            via.ok_or_else(|| MachineError::State("unlocked by an unknown protector".into()))?;
        Ok(Recovered { via })
    }

    /// A help-desk TPM lockout reset: the escrowed lockout authorization resets the DA
    /// counter, so the right PIN works again without the recovery key.
    pub fn reset_tpm_lockout(&mut self, lockout_auth: &[u8]) -> Result<(), MachineError> {
        self.tpm.assume_lockout_auth(lockout_auth);
        let result = self.tpm.dictionary_attack_lock_reset();
        self.tpm.assume_lockout_auth(&self.lockout_auth);
        result?;
        self.on_recovery_screen = false;
        Ok(())
    }

    /// Sets a new TPM lockout authorization (after the escrowed one was shown); returns it
    /// for the agent to escrow.
    pub fn rotate_lockout_auth<R: Rng + CryptoRng>(
        &mut self,
        rng: &mut R,
    ) -> Result<Vec<u8>, MachineError> {
        let mut auth = vec![0u8; 32];
        rng.fill(auth.as_mut_slice());
        self.tpm.assume_lockout_auth(&self.lockout_auth);
        self.tpm.set_lockout_auth(&auth)?;
        self.lockout_auth = auth.clone();
        Ok(auth)
    }

    /// Replaces a recovery password (after it was disclosed): a new protector with a new ID;
    /// the old one is removed and no longer unlocks.
    pub fn rotate_recovery_password<R: Rng + CryptoRng>(
        &mut self,
        old: KeyProtectorId,
        rng: &mut R,
    ) -> Result<EscrowedKey, MachineError> {
        let vmk = self.current_vmk()?;
        let (id, password) = self.volume.rotate_recovery_password(&vmk, rng, old)?;
        self.recovery_ids.retain(|k| *k != old);
        self.recovery_ids.push(id);
        Ok(EscrowedKey {
            volume_id: self.volume.volume_guid(),
            key_protector_id: id,
            recovery_password: password,
        })
    }

    /// Whether `password` unlocks the volume now (a full stretch + unwrap + decrypt).
    pub fn password_unlocks(&self, password: &RecoveryPassword) -> Result<bool, MachineError> {
        Ok(self.volume.recovery_password_unlocks(password)?)
    }

    /// What the next boot measures: the model's (or the real log's) boot, or on real
    /// firmware a real boot, held to the model's prediction before it counts.
    fn next_boot(&mut self) -> Result<MeasuredBoot, MachineError> {
        let Some(firmware) = &mut self.real_firmware else {
            return Ok(self.device.measured_boot());
        };
        let kind = model_kind(firmware.change());
        let real = firmware.boot()?;
        let log = self.device.real_log.as_mut().ok_or_else(|| {
            MachineError::State("a real-firmware machine without its real log".into())
        })?;
        let check = check_model(&log.original, &log.current, &real.log, kind);
        let holds = check.holds();
        firmware.record_check(check.clone());
        if !holds {
            return Err(RealFirmwareError::ModelDisagrees(check.to_string()).into());
        }
        log.current = real.log;
        Ok(self.device.measured_boot())
    }

    fn tpm_protector_type(&self) -> ProtectorType {
        match self.protection {
            TpmProtection::Tpm => ProtectorType::Tpm,
            TpmProtection::TpmPin { .. } => ProtectorType::TpmAndPin,
        }
    }

    fn pin_auth(&self, typed: Option<&str>) -> Option<Vec<u8>> {
        match (&self.protection, typed) {
            (TpmProtection::TpmPin { pin }, None) => Some(pin_auth_value(pin)),
            (TpmProtection::TpmPin { .. }, Some(typed)) => Some(pin_auth_value(typed)),
            (TpmProtection::Tpm, _) => None,
        }
    }

    /// The VMK the running OS holds (rotation and suspension happen in the running OS).
    fn current_vmk(&self) -> Result<Vmk, MachineError> {
        self.running_vmk.clone().ok_or_else(|| {
            MachineError::State("the volume is locked: boot or recover the device first".into())
        })
    }

    fn reseal(&mut self, vmk: &Vmk) -> Result<(), MachineError> {
        let boot = self.device.measured_boot();
        // swtpm takes precomputed policy values for SHA-256 only; in another bank (a SHA-1
        // log) the TPM must hold the unseal-point values when it seals: replay to there.
        let replay = boot.bank() != HashAlg::Sha256;
        if replay {
            measure(&mut self.tpm, &boot)?;
        }
        let blob = seal_vmk(
            &mut self.tpm,
            vmk,
            self.tpm_protector.profile,
            &self.protection,
            &boot,
        )?;
        if replay {
            measure_rest(&mut self.tpm, &boot)?;
        }
        self.volume
            .set_tpm_key(vmk, self.tpm_protector.id, blob.to_bytes())?;
        self.tpm_protector.sealed_boot = boot;
        Ok(())
    }
}

/// The checks of the recovery screen's input boxes: 8 blocks, each checked as typed.
fn check_typed(typed: &str) -> Result<RecoveryPassword, MachineError> {
    let blocks: Vec<&str> = typed
        .split(|c: char| c == '-' || c.is_whitespace())
        .filter(|b| !b.is_empty())
        .collect();
    let blocks: Vec<String> = if blocks.len() == 1 && blocks[0].len() == 48 {
        blocks[0]
            .as_bytes()
            .chunks(6)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    } else {
        blocks.into_iter().map(str::to_string).collect()
    };
    for (i, block) in blocks.iter().enumerate().take(8) {
        check_block(i + 1, block)?;
    }
    if blocks.len() != 8 {
        return Err(MachineError::BlockCount(blocks.len()));
    }
    RecoveryPassword::parse(&blocks.join("-"))
        .map_err(|e| MachineError::State(format!("recovery password: {e}")))
}

/// SHA-256 of the PIN as UTF-16LE: the TPM+PIN auth value (see the module docs).
pub fn pin_auth_value(pin: &str) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let utf16: Vec<u8> = pin.encode_utf16().flat_map(u16::to_le_bytes).collect();
    Sha256::digest(utf16).to_vec()
}

fn take_ownership<R: Rng + CryptoRng + ?Sized>(
    tpm: &mut Tpm,
    rng: &mut R,
    dictionary_attack: DaParameters,
) -> Result<Vec<u8>, MachineError> {
    let mut auth = vec![0u8; 32];
    rng.fill(auth.as_mut_slice());
    tpm.set_lockout_auth(&auth)?;
    tpm.set_dictionary_attack_parameters(dictionary_attack)?;
    Ok(auth)
}

/// Reboots the TPM and measures the boot up to its unseal point; returns the boot.
fn boot_measurements(tpm: &mut Tpm, device: &Device) -> Result<MeasuredBoot, MachineError> {
    let boot = device.measured_boot();
    measure(tpm, &boot)?;
    Ok(boot)
}

/// Resets the TPM (from the log's startup locality) and extends the records before the
/// unseal point, in every bank the log has.
fn measure(tpm: &mut Tpm, boot: &MeasuredBoot) -> Result<(), MachineError> {
    tpm.reboot_with_startup_locality(boot.log.startup_locality)?;
    let split = boot.unseal_index.min(boot.log.records.len());
    log_tpm::extend(tpm, &boot.log.records[..split]).map_err(replay_error)
}

/// Extends the records after the unseal point (the rest of the boot).
fn measure_rest(tpm: &mut Tpm, boot: &MeasuredBoot) -> Result<(), MachineError> {
    let split = boot.unseal_index.min(boot.log.records.len());
    log_tpm::extend(tpm, &boot.log.records[split..]).map_err(replay_error)
}

fn replay_error(e: TpmReplayError) -> MachineError {
    match e {
        TpmReplayError::Tpm(e) => MachineError::Tpm(e),
        other => MachineError::State(other.to_string()),
    }
}

/// Seals the VMK to the boot's values at the unseal point. In SHA-256 they are computed
/// from the log (the caller has just measured the same records into the TPM, so a wrong
/// computation shows at once as a failed unseal on the next boot); in another bank the TPM
/// must hold them now (swtpm takes precomputed values for SHA-256 only).
fn seal_vmk(
    tpm: &mut Tpm,
    vmk: &Vmk,
    profile: Profile,
    protection: &TpmProtection,
    boot: &MeasuredBoot,
) -> Result<SealedBlob, MachineError> {
    let bank = boot.bank();
    let at_unseal = boot.at_unseal();
    let pcrs = profile_pcrs(profile);
    let expected = if bank == HashAlg::Sha256 {
        let mut expected = Vec::with_capacity(pcrs.len());
        for &pcr in &pcrs {
            let value: [u8; 32] = at_unseal
                .get(bank, u32::from(pcr))
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| MachineError::State(format!("no SHA-256 value for PCR {pcr}")))?;
            expected.push(value);
        }
        Some(expected)
    } else {
        None
    };
    let (auth_value, dictionary_attack_protected) = match protection {
        TpmProtection::Tpm => (None, false),
        TpmProtection::TpmPin { pin } => (Some(pin_auth_value(pin)), true),
    };
    Ok(tpm.seal_in_bank(
        vmk.as_bytes(),
        &SealPolicy {
            pcrs,
            expected,
            auth_value,
            dictionary_attack_protected,
        },
        hashing_algorithm(bank),
    )?)
}

fn profile_pcrs(profile: Profile) -> Vec<u8> {
    profile
        .pcrs()
        .iter()
        .filter_map(|&p| u8::try_from(p).ok())
        .collect()
}

fn vmk_from(secret: &[u8]) -> Result<Vmk, MachineError> {
    let bytes: [u8; 32] = secret
        .try_into()
        .map_err(|_| MachineError::State(format!("unsealed {} bytes, not a VMK", secret.len())))?;
    Ok(Vmk::from_bytes(bytes))
}
