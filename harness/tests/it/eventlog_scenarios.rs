//! A device that boots a real measured-boot log: the machine on its own swtpm, the catalog's
//! real-log scenarios through `harness run` (real portal, real swtpm), and the loader's
//! errors for bad logs.

use crate::common::{harness, portal_bin, run_for_report, workspace_root};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use device::machine::{BitLockerSetup, BootOutcome, Machine, MachineError, TpmError};
use device::{Change, Device, Profile};
use eventlog::tcg::TcgLog;
use eventlog::HashAlg;
use harness::scenario::load_scenario;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/data/eventlogs")
        .join(name)
}

const WINDOWS: &str = "go-attestation-windows_gcp_shielded_vm.log";
const HIRS: &str = "hirs-TpmLog.bin";

fn real_device(name: &str) -> Device {
    let log = TcgLog::parse(&std::fs::read(data(name)).unwrap()).unwrap();
    Device::from_real_log(name, Arc::new(log))
}

/// Provision, apply `change`, boot: the outcome, and after a recovery the key unlocks and
/// the next boot is normal (the re-seal in the log's bank worked).
fn play(name: &str, profile: Profile, change: &Change) -> Option<Vec<u32>> {
    let setup = BitLockerSetup {
        profile,
        ..BitLockerSetup::default()
    };
    let (mut machine, keys) = Machine::provision(real_device(name), &setup, &mut rand::rng())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(
        matches!(machine.boot(None).unwrap(), BootOutcome::Unlocked { .. }),
        "{name}: the unchanged log must unseal"
    );
    machine.apply(change).unwrap();
    match machine.boot(None).unwrap() {
        BootOutcome::Unlocked { .. } => None,
        BootOutcome::Recovery(screen) => {
            assert_eq!(screen.cause, TpmError::PolicyFailed, "{name}");
            assert_eq!(screen.tpm_response_code, Some(0x99d), "{name}");
            let pcrs = screen.explanation.pcrs();
            machine
                .enter_recovery_password(&keys[0].recovery_password.to_string(), None)
                .unwrap();
            assert!(
                matches!(machine.boot(None).unwrap(), BootOutcome::Unlocked { .. }),
                "{name}: after recovery the device re-sealed to the changed log"
            );
            Some(pcrs)
        }
        BootOutcome::WrongPin { .. } => panic!("{name}: no PIN here"),
    }
}

#[test]
fn eventlog_machine_on_the_sha1_windows_log_seals_at_the_unseal_point_in_sha1() {
    let device = real_device(WINDOWS);
    let boot = device.measured_boot();
    assert_eq!(boot.bank(), HashAlg::Sha1);
    // Sealed right after the boot manager's BITLOCKER_UNLOCK, before the PCR 11 cap.
    assert!(boot.unseal_index < boot.log.records.len());
    assert_eq!(
        play(
            WINDOWS,
            Profile::SecureBoot7_11,
            &Change::SecureBootDbUpdate
        ),
        Some(vec![7])
    );
    assert_eq!(
        play(WINDOWS, Profile::Uefi0_2_4_11, &Change::SecureBootDbUpdate),
        None
    );
    assert_eq!(
        play(WINDOWS, Profile::Uefi0_2_4_11, &Change::FirmwareUpdate),
        Some(vec![0])
    );
    assert_eq!(
        play(WINDOWS, Profile::SecureBoot7_11, &Change::FirmwareUpdate),
        None
    );
}

#[test]
fn eventlog_machine_on_the_crypto_agile_sha256_log() {
    assert_eq!(real_device(HIRS).measured_boot().bank(), HashAlg::Sha256);
    assert_eq!(
        play(HIRS, Profile::SecureBoot7_11, &Change::SecureBootDbUpdate),
        Some(vec![7])
    );
    assert_eq!(
        play(HIRS, Profile::Uefi0_2_4_11, &Change::SecureBootDbUpdate),
        None
    );
    assert_eq!(
        play(HIRS, Profile::Uefi0_2_4_11, &Change::FirmwareUpdate),
        Some(vec![0])
    );
}

#[test]
fn eventlog_machine_refuses_changes_a_real_log_cannot_express() {
    let setup = BitLockerSetup::default();
    let (mut machine, _) =
        Machine::provision(real_device(WINDOWS), &setup, &mut rand::rng()).unwrap();
    let e = machine.apply(&Change::BcdDebugOn).unwrap_err();
    assert!(matches!(e, MachineError::Change(_)), "{e}");
    assert!(e.to_string().contains("PCR 12-14"), "{e}");
}

#[test]
fn eventlog_catalog_real_log_scenarios_pass_against_the_embedded_portal() {
    let _ = portal_bin();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let (stdout, report) = run_for_report(
        harness()
            .args(["run", "scenarios/", "--filter", "tag:real-log", "--json"])
            .arg(&json),
        &json,
        0,
    );
    let scenarios = report["scenarios"].as_array().unwrap();
    assert!(scenarios.len() >= 2, "{stdout}");
    let by_name = |n: &str| {
        scenarios
            .iter()
            .find(|s| s["name"] == n)
            .unwrap_or_else(|| panic!("{n} not run: {stdout}"))
    };
    let db = by_name("real-log-windows-db-update-secure-boot");
    assert!(db["failure"].is_null());
    assert_eq!(db["lockout"]["tpm_error"], "policy_failed");
    assert_eq!(db["lockout"]["changed_pcrs"], serde_json::json!([7]));
    let why = db["lockout"]["explanation"].as_str().unwrap();
    // The explanation is the real log's own db record, in the bank sealed to.
    assert!(why.contains("PCR 7 (sha1 bank)"), "{why}");
    assert!(
        why.contains("- #4 EV_EFI_VARIABLE_DRIVER_CONFIG db: 3 entries"),
        "{why}"
    );
    let steps: Vec<&str> = db["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(steps.contains(&"the key from the portal unlocks the device"));
    assert!(steps.contains(&"the next boot opens without recovery"));
    let control = by_name("real-log-windows-db-update-uefi-control");
    assert!(control["failure"].is_null());
    assert!(control["lockout"]["tpm_error"].is_null(), "{control}");
}

/// The control's expectation turned around must fail at the boot: the TPM, not the
/// scenario, decides.
#[test]
fn eventlog_real_log_scenario_with_a_wrong_expectation_fails_at_the_boot() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(
        workspace_root().join("scenarios/real-log-windows-db-update-uefi-control.yaml"),
    )
    .unwrap()
    .replace(
        "real-log-windows-db-update-uefi-control",
        "wrong-expectation",
    )
    .replace(
        "event_log: ../harness/tests/it/data/eventlogs/",
        &format!("event_log: {}/", data("").display()),
    )
    .replace(
        "  recovery: false\n  tpm_error: none\n",
        "  recovery: true\n  tpm_error: policy_failed\n  changed_pcrs: [0]\n",
    );
    assert!(text.contains("recovery: true"));
    let file = dir.path().join("wrong-expectation.yaml");
    std::fs::write(&file, text + "recovery:\n  via: self_service\n  as: CONTOSO\\alice\n  reason: BIOS/TPM changed\n  answer: key_shown\n").unwrap();
    let out = harness().arg("run").arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("boot after the change"), "{stdout}");
    assert!(stdout.contains("a normal boot"), "{stdout}");
}

/// Writes a scenario with `event_log: <log>` and `kind: <change>` into `dir`.
fn write_scenario(dir: &Path, log: &str, change: &str) -> PathBuf {
    let file = dir.join("s.yaml");
    std::fs::write(
        &file,
        format!(
            "name: s\ndescription: a real-log scenario for the loader's error tests\n\
             device:\n  profile: \"7,11\"\n  protectors: [tpm, recovery_password]\n  \
             event_log: {log}\nusers:\n  - name: CONTOSO\\alice\n    sign_ins: [local]\n\
             change:\n  kind: {change}\nexpect:\n  recovery: false\n  tpm_error: none\n"
        ),
    )
    .unwrap();
    file
}

/// The loader's error for that scenario, with the temp dir written as `DIR`.
fn load_error(dir: &Path, log: &str, change: &str) -> String {
    match load_scenario(&write_scenario(dir, log, change)) {
        Ok(_) => panic!("{log} / {change}: loaded"),
        Err(e) => e.to_string().replace(&dir.display().to_string(), "DIR"),
    }
}

#[test]
fn eventlog_scenario_loader_names_the_yaml_position_and_the_log_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Missing.
    let e = load_error(d, "missing.log", "reboot");
    assert!(
        e.starts_with("DIR/s.yaml:6:3: device.event_log: cannot read `DIR/missing.log`"),
        "{e}"
    );
    // Not a log at all.
    std::fs::write(d.join("garbage.log"), b"this is not a TCG log").unwrap();
    let e = load_error(d, "garbage.log", "reboot");
    assert!(
        e.starts_with(
            "DIR/s.yaml:6:3: device.event_log: `DIR/garbage.log` is not a TCG event log: \
             event log:"
        ),
        "{e}"
    );
    assert!(e.contains("byte offset"), "{e}");
    // A real log cut inside a record: the record and the byte offset.
    let bytes = std::fs::read(data(WINDOWS)).unwrap();
    let log = TcgLog::parse(&bytes).unwrap();
    let cut = log.records[5].offset + 10;
    std::fs::write(d.join("cut.log"), &bytes[..cut]).unwrap();
    let e = load_error(d, "cut.log", "reboot");
    assert!(
        e.contains("device.event_log: `DIR/cut.log` is not a TCG event log"),
        "{e}"
    );
    assert!(
        e.contains(&format!("record {}", log.records[5].number)),
        "{e}"
    );
    // A change a real log cannot express: located at change.kind, with the reason.
    std::fs::copy(data(WINDOWS), d.join("windows.log")).unwrap();
    let e = load_error(d, "windows.log", "bcd_debug_on");
    assert!(
        e.starts_with(
            "DIR/s.yaml:11:3: change.kind: `bcd_debug_on` on a device booting a real log: \
             in a real Windows log boot debugging is a SIPA event in PCR 12-14"
        ),
        "{e}"
    );
    // A change the log has nothing to edit for: this log measures no BootOrder.
    let sha1_log = "tpm2-tools-event-uefi-sha1-log.bin";
    std::fs::copy(data(sha1_log), d.join("sha1.bin")).unwrap();
    let e = load_error(d, "sha1.bin", "bcd_boot_order");
    assert!(
        e.starts_with(
            "DIR/s.yaml:11:3: change.kind: `bcd_boot_order` on a device booting a real log"
        ),
        "{e}"
    );
    assert!(e.contains("no BootOrder measurement in PCR 1"), "{e}");
    // A good one loads, with the log parsed for the runner.
    let s = load_scenario(&write_scenario(d, "windows.log", "secure_boot_db_update")).unwrap();
    assert_eq!(
        s.device_named(None).unwrap().real_log.as_deref(),
        Some(&log)
    );
}
