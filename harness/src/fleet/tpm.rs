//! `--tpm-sample K`: K locked-out devices of the fleet are a real [`device::Machine`], each
//! on its own swtpm (the device crate spawns and supervises it, as `harness run` does). The
//! Machine makes its own recovery password when BitLocker is provisioned, and the agent
//! escrows that one: the escrowed key is the device's key. Its lockout is the TPM's own
//! refusal to unseal after a change moves a PCR of its profile; its recovery is the
//! recovered password typed on its recovery screen; after the rotation the next boot must
//! unlock by TPM (recovery re-sealed the volume master key to the new measurements).
//!
//! Every call here blocks (TPM commands, the 2^20-round stretch): the caller runs them
//! off the async workers.

use bitlocker::ProtectorType;
use device::machine::{BitLockerSetup, BootOutcome, Machine, MachineError, TpmError};
use device::{Change, Device};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::plan::{DeviceKey, PlannedDevice};

/// The most devices of one fleet on a real swtpm (each is a process and a volume image).
pub const MAX_TPM_SAMPLE: usize = 16;

/// The changes that lock a sampled device out, taken in turn: each moves a PCR of the
/// default profile (7, 11), so the TPM refuses to unseal.
const LOCKOUT_CHANGES: [Change; 2] = [Change::SecureBootDbUpdate, Change::BcdDebugOn];

/// What went wrong with a device on a real swtpm.
#[derive(Debug, thiserror::Error)]
pub enum TpmDeviceError {
    #[error("{step}: {source}")]
    Machine {
        step: &'static str,
        source: MachineError,
    },
    /// The TPM did something the step does not expect (unlocked when it must refuse, ...).
    #[error("{0}")]
    Unexpected(String),
    /// The recovered password does not unlock the volume: a wrong key.
    #[error("the recovered password does not unlock the volume on the swtpm: {0}")]
    WrongKey(MachineError),
}

fn at(step: &'static str) -> impl FnOnce(MachineError) -> TpmDeviceError {
    move |source| TpmDeviceError::Machine { step, source }
}

/// A fleet device on its own swtpm.
#[derive(Debug)]
pub struct TpmDevice {
    machine: Machine,
    rng: ChaCha20Rng,
    /// The change that locks it out.
    pub change: Change,
}

/// BitLocker provisioned on a new swtpm (TPM-only, profile 7,11), then a first boot that
/// must unlock by TPM. Returns the device and the key its agent escrows.
pub fn provision(
    seed: u64,
    planned: &PlannedDevice,
) -> Result<(TpmDevice, DeviceKey), TpmDeviceError> {
    // Its own stream of the seed: the same fleet gives the same volume and keys.
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(0x7470_6d00_0000_0000 | planned.index as u64);
    let (mut machine, escrow) =
        Machine::provision(Device::default(), &BitLockerSetup::default(), &mut rng)
            .map_err(at("provisioning BitLocker on a new swtpm"))?;
    let key = escrow.first().ok_or_else(|| {
        TpmDeviceError::Unexpected("the provisioned volume has no recovery password".into())
    })?;
    let key = DeviceKey {
        volume_id: key.volume_id.hyphenated().to_string().to_uppercase(),
        key_protector_id: key.key_protector_id,
        password: key.recovery_password,
    };
    boot_by_tpm(&mut machine, "the first boot")?;
    let change = LOCKOUT_CHANGES[planned.index % LOCKOUT_CHANGES.len()].clone();
    Ok((
        TpmDevice {
            machine,
            rng,
            change,
        },
        key,
    ))
}

impl TpmDevice {
    /// The change, then a boot the TPM must refuse (policy failed: a PCR of the profile
    /// moved) onto the recovery screen, which must show `escrowed`'s key ID.
    pub fn lock_out(&mut self, escrowed: &DeviceKey) -> Result<(), TpmDeviceError> {
        self.machine
            .apply(&self.change)
            .map_err(at("applying the lockout change"))?;
        let outcome = self
            .machine
            .boot(None)
            .map_err(at("booting after the change"))?;
        let BootOutcome::Recovery(screen) = outcome else {
            return Err(TpmDeviceError::Unexpected(format!(
                "after {:?} the TPM did not refuse the unseal: {outcome:?}",
                self.change
            )));
        };
        if screen.cause != TpmError::PolicyFailed {
            return Err(TpmDeviceError::Unexpected(format!(
                "after {:?} the TPM refused with {}, expected policy_failed",
                self.change,
                screen.cause.name()
            )));
        }
        if screen.key_id != escrowed.key_protector_id {
            return Err(TpmDeviceError::Unexpected(format!(
                "the recovery screen shows key ID {}, the agent escrowed {}",
                screen.key_id, escrowed.key_protector_id
            )));
        }
        Ok(())
    }

    /// Types the recovered password on the recovery screen: it must open the volume by
    /// `escrowed`'s protector (a wrong password is [`TpmDeviceError::WrongKey`]).
    pub fn type_recovery_password(
        &mut self,
        recovered: &str,
        escrowed: &DeviceKey,
    ) -> Result<(), TpmDeviceError> {
        let opened = match self.machine.enter_recovery_password(recovered, None) {
            Ok(opened) => opened,
            Err(
                e @ (MachineError::WrongRecoveryPassword
                | MachineError::BadBlock(_)
                | MachineError::BlockCount(_)),
            ) => return Err(TpmDeviceError::WrongKey(e)),
            Err(e) => return Err(at("typing the recovered password")(e)),
        };
        if opened.via != escrowed.key_protector_id {
            return Err(TpmDeviceError::Unexpected(format!(
                "the recovered password opened protector {}, expected {}",
                opened.via, escrowed.key_protector_id
            )));
        }
        Ok(())
    }

    /// Replaces the disclosed recovery password with a new protector (the Machine makes the
    /// password); returns the key the agent escrows next.
    pub fn rotate(&mut self, old: &DeviceKey) -> Result<DeviceKey, TpmDeviceError> {
        let new = self
            .machine
            .rotate_recovery_password(old.key_protector_id, &mut self.rng)
            .map_err(at("rotating the recovery password"))?;
        Ok(DeviceKey {
            volume_id: old.volume_id.clone(),
            key_protector_id: new.key_protector_id,
            password: new.recovery_password,
        })
    }

    /// The boot after the rotation: it must unlock by TPM (re-sealed at recovery).
    pub fn reboot(&mut self) -> Result<(), TpmDeviceError> {
        boot_by_tpm(&mut self.machine, "the boot after the rotation")
    }
}

fn boot_by_tpm(machine: &mut Machine, which: &'static str) -> Result<(), TpmDeviceError> {
    match machine.boot(None).map_err(at(which))? {
        BootOutcome::Unlocked {
            via: ProtectorType::Tpm,
            ..
        } => Ok(()),
        other => Err(TpmDeviceError::Unexpected(format!(
            "{which} did not unlock by TPM: {other:?}"
        ))),
    }
}
