//! A scenario device on real firmware (`device.firmware: ovmf`): provisioned on a real OVMF
//! boot, and every boot after it real too (`device::real_firmware`). The runner plays it
//! like any other device; this module is where it is made, and how its boots are reported.

use std::fmt::Write as _;
use std::time::Duration;

use device::machine::{BitLockerSetup, EscrowedKey, Machine, MachineError};
use device::real_firmware::{ModelCheck, RealBoot, RealFirmware};
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
            let verdict = match verdict(check) {
                "disagrees" => "DISAGREES".to_string(),
                v => v.replace('_', " "),
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

/// The model's verdict on a real boot: `agrees`, `agrees_but_for_documented_differences` or
/// `disagrees`.
fn verdict(check: &ModelCheck) -> &'static str {
    if check.disagreements.is_empty() {
        "agrees"
    } else if check.holds() {
        "agrees_but_for_documented_differences"
    } else {
        "disagrees"
    }
}

/// One real boot in the JSON report.
#[derive(serde::Serialize)]
struct BootJson {
    /// 1 is the boot BitLocker sealed to.
    boot: usize,
    change: &'static str,
    seconds: f64,
    events: usize,
    /// PCRs whose SHA-256 value differs from boot 1's.
    pcrs_moved_since_boot_1: Vec<u32>,
    /// The model held to this boot (every boot but the first).
    model: Option<ModelJson>,
}

#[derive(serde::Serialize)]
struct ModelJson {
    /// `agrees`, `agrees_but_for_documented_differences` or `disagrees`.
    verdict: &'static str,
    model_moved: Vec<u32>,
    real_moved: Vec<u32>,
    disagreements: Vec<DisagreementJson>,
}

#[derive(serde::Serialize)]
struct DisagreementJson {
    pcr: u32,
    /// `model` or `real_boot`: which of the two moved it.
    moved_only_in: &'static str,
    /// Why it does not matter for a Windows device, when documented.
    documented: Option<&'static str>,
}

/// Serializes a device's real boots (`LockoutFacts::real_boots`) for the JSON report.
pub fn serialize_boots<S: serde::Serializer>(
    boots: &Option<device::real_firmware::SharedBoots>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let boots = match boots.as_deref().map(|b| b.lock()) {
        Some(Ok(b)) => b,
        // None is skipped by the field's attribute; a poisoned lock has nothing sound to show.
        _ => return s.serialize_none(),
    };
    let json: Vec<BootJson> = boots
        .iter()
        .enumerate()
        .map(|(i, boot)| BootJson {
            boot: i + 1,
            change: boot.change.name(),
            seconds: (boot.boot_time.as_secs_f64() * 10.0).round() / 10.0,
            events: boot.log.records.len(),
            pcrs_moved_since_boot_1: boots
                .first()
                .map(|sealed| {
                    LogDiff::new(&sealed.log, &boot.log)
                        .pcrs
                        .iter()
                        .map(|p| p.pcr)
                        .collect()
                })
                .unwrap_or_default(),
            model: boot.model_check.as_ref().map(|check| ModelJson {
                verdict: verdict(check),
                model_moved: check.model_moved.clone(),
                real_moved: check.real_moved.clone(),
                disagreements: check
                    .disagreements
                    .iter()
                    .map(|d| DisagreementJson {
                        pcr: d.pcr,
                        moved_only_in: if d.model_moved { "model" } else { "real_boot" },
                        documented: d.excused,
                    })
                    .collect(),
            }),
        })
        .collect();
    serde::Serialize::serialize(&json, s)
}
