//! What became of each device, and whether the fleet as a whole passed.

use std::collections::BTreeMap;

use serde::Serialize;

use super::metrics::{is_server_error, OpSummary};
use super::plan::Route;
use super::soak::SoakReport;

/// A device's verdict: how far it got, or what went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Enrolled, escrowed, checked in (a device that does not lock out ends here).
    Escrowed,
    /// Its key was recovered and unlocks its protector, but the rotation did not finish.
    Recovered,
    /// Recovered, then the shown key rotated at the next check-in and the portal confirmed it.
    Rotated,
    /// The portal handed out a password that does not unlock the device's protector.
    WrongKey,
    /// The portal refused the recovery (a 4xx, or the key not found: a lost escrow).
    Refused,
    /// Anything else: no answer, a 5xx, an answer that breaks the contract.
    Error,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Escrowed => "escrowed",
            Verdict::Recovered => "recovered",
            Verdict::Rotated => "rotated",
            Verdict::WrongKey => "wrong_key",
            Verdict::Refused => "refused",
            Verdict::Error => "error",
        }
    }
}

/// One device's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceReport {
    pub name: String,
    /// How it recovered, if it locked out.
    pub route: Option<Route>,
    /// Played as a real machine on its own swtpm (`--tpm-sample`): its lockout was the
    /// TPM's refusal to unseal, its recovery the password typed on its recovery screen.
    pub tpm: bool,
    pub verdict: Verdict,
    /// Whether the recovered password unlocked its protector (`None`: not recovered).
    pub key_verified: Option<bool>,
    /// What went wrong, naming the request.
    pub detail: Option<String>,
}

impl DeviceReport {
    /// The verdict a healthy portal gives this device.
    pub fn expected(&self) -> Verdict {
        if self.route.is_some() {
            Verdict::Rotated
        } else {
            Verdict::Escrowed
        }
    }

    pub fn passed(&self) -> bool {
        self.verdict == self.expected()
    }
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetReport {
    pub seed: u64,
    pub devices: usize,
    pub recoveries: usize,
    /// Locked-out devices on a real swtpm (`--tpm-sample`).
    pub tpm_sample: usize,
    /// Of those, the ones the recovered password unlocked and that booted by TPM again
    /// after the rotation (verdict `rotated`).
    pub tpm_unlocked: usize,
    pub jobs: usize,
    /// The soak's length (`--duration`), if any.
    pub duration_secs: Option<f64>,
    /// How the self-service user was played.
    pub self_service_client: &'static str,
    pub wall_secs: f64,
    /// The enrollment phase (every device enrolls, escrows, checks in).
    pub enroll_secs: f64,
    /// The recovery phase (recover, verify, rotate; the soak beside it).
    pub recover_secs: f64,
    /// Device count per verdict.
    pub verdicts: BTreeMap<Verdict, usize>,
    /// Failed calls by status, over every operation.
    pub failures_by_status: BTreeMap<String, u64>,
    pub operations: Vec<OpSummary>,
    /// With `--duration`: the first and last window's latency, the portal's RSS and data
    /// directory over the soak, and their verdict.
    pub soak: Option<SoakReport>,
    pub device_reports: Vec<DeviceReport>,
}

impl FleetReport {
    /// Devices whose verdict is not what a healthy portal gives.
    pub fn failed_devices(&self) -> impl Iterator<Item = &DeviceReport> {
        self.device_reports.iter().filter(|d| !d.passed())
    }

    /// Server errors (5xx) seen on any operation.
    pub fn server_errors(&self) -> u64 {
        self.failures_by_status
            .iter()
            .filter(|(kind, _)| is_server_error(kind))
            .map(|(_, n)| n)
            .sum()
    }

    /// The fleet passes when every device got its expected verdict, no call got a 5xx, and
    /// a soak's measured bounds (RSS growth, WAL) held.
    pub fn passed(&self) -> bool {
        self.failed_devices().next().is_none()
            && self.server_errors() == 0
            && self.soak.as_ref().is_none_or(SoakReport::passed)
    }

    pub fn count(&self, verdict: Verdict) -> usize {
        self.verdicts.get(&verdict).copied().unwrap_or(0)
    }
}
