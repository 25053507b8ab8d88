//! A scenario device on real firmware (`device.firmware: ovmf`): provisioned on a real OVMF
//! boot, and every boot after it real too (`device::real_firmware`). The runner plays it
//! like any other device; this module is where it is made, and how its boots are reported.

use std::fmt::Write as _;
use std::time::Duration;

use device::machine::{BitLockerSetup, EscrowedKey, Machine, MachineError};
use device::real_firmware::{RealBoot, RealFirmware};
use device::Device;
use eventlog::diff::LogDiff;

use crate::scenario::{self, RealFirmwareKind};

/// One real boot is 15-40 s on 2 busy cores; the bound only catches a hang (QEMU and its
/// swtpm are killed when it passes).
pub const BOOT_BOUND: Duration = Duration::from_secs(180);

/// The scenario device's machine: on real firmware when `spec.firmware` says so (then
/// `device`, the model, is not used: the first real boot is what BitLocker seals to), else
/// `device`.
pub fn provision(
    spec: &scenario::Device,
    device: Device,
    setup: &BitLockerSetup,
    real_boots: &mut Option<device::real_firmware::SharedBoots>,
) -> Result<(Machine, Vec<EscrowedKey>), MachineError> {
    match spec.firmware {
        None => Machine::provision(device, setup, &mut rand::rng()),
        Some(RealFirmwareKind::Ovmf) => {
            let firmware = RealFirmware::new(BOOT_BOUND)?;
            *real_boots = Some(firmware.history());
            Machine::provision_on_real_firmware(firmware, setup, &mut rand::rng())
        }
    }
}

/// Every real boot for the report: its change and time, the model's prediction held to it,
/// and its PCR diff against the boot BitLocker sealed to, with the events behind it.
pub fn describe(boots: &[RealBoot]) -> String {
    let mut out = String::new();
    let Some(sealed) = boots.first() else {
        return "no real boot was made".into();
    };
    let _ = writeln!(
        out,
        "{} real boot(s) of OVMF with Secure Boot under QEMU, each log replayed into the \
         device's TPM (sha256 bank). Boot 1 is the one BitLocker sealed to ({} events).",
        boots.len(),
        sealed.log.records.len()
    );
    for (i, boot) in boots.iter().enumerate() {
        let _ = writeln!(
            out,
            "\nboot {} (real change: {}, {:.1} s)",
            i + 1,
            boot.change.name(),
            boot.boot_time.as_secs_f64()
        );
        if let Some(check) = &boot.model_check {
            let verdict = if check.disagreements.is_empty() {
                "agrees"
            } else if check.holds() {
                "agrees but for documented differences"
            } else {
                "DISAGREES"
            };
            let _ = writeln!(out, "model vs real firmware: {verdict}: {check}");
        }
        if i > 0 {
            let _ = writeln!(out, "PCR diff against boot 1, with the events behind it:");
            let _ = write!(out, "{}", LogDiff::new(&sealed.log, &boot.log));
        }
    }
    out
}
