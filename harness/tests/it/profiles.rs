//! Profiles and the machines behind them: a `legacy` device is a BIOS machine (issue 16,
//! defect 1) and `option_rom_added` says who signed the ROM (defect 9).

use std::path::Path;
use std::process::Command;

use device::{BootMode, Device};
use eventlog::tcg::LogFormat;
use eventlog::{EventType, HashAlg};
use harness::scenario::parse_scenario;

use crate::common::{harness, portal_bin, run_for_report};

/// A BIOS machine as the runner builds it for `profile: legacy`.
fn bios_device() -> Device {
    Device {
        boot_mode: BootMode::Bios,
        ..Device::default()
    }
}

/// `tpm2_eventlog` on a binary log: (exit code, stdout, stderr).
fn tpm2_eventlog(bytes: &[u8]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("binary_bios_measurements");
    std::fs::write(&path, bytes).unwrap();
    let out = Command::new("tpm2_eventlog")
        .arg(&path)
        .output()
        .expect("tpm2_eventlog (tpm2-tools) is installed");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_legacy_device_writes_the_sha1_log_a_bios_writes_and_seals_in_sha1() {
    let boot = bios_device().measured_boot();
    let log = &boot.log;
    assert_eq!(
        log.format,
        LogFormat::Sha1,
        "TCG_PCR_EVENT records throughout"
    );
    assert_eq!(log.banks, vec![HashAlg::Sha1]);
    assert_eq!(boot.bank(), HashAlg::Sha1, "a BIOS machine seals in SHA-1");
    // The IPL stages are EV_IPL records whose data is a string naming the stage.
    let ipl = |pcr: u32| -> Vec<String> {
        log.records_for(pcr)
            .filter(|r| r.event_type == EventType::EV_IPL)
            .map(|r| String::from_utf8(r.data.clone()).expect("EV_IPL data is a string"))
            .collect()
    };
    assert_eq!(ipl(4), vec!["MBR boot code".to_string()]);
    assert_eq!(ipl(8), vec!["NTFS boot sector".to_string()]);
    assert_eq!(ipl(9), vec!["NTFS boot block".to_string()]);
    assert_eq!(ipl(10), vec!["bootmgr".to_string()]);
    assert!(
        log.records_for(4)
            .any(|r| r.event_type == EventType::EV_ACTION && r.data == b"Calling INT 19h"),
        "PCR 4 records INT 19h before the IPL"
    );
    // Nothing UEFI on a BIOS machine.
    assert!(log.records.iter().all(|r| r.event_type.0 < 0x8000_0000));
    assert_eq!(log.records_for(7).count(), 1, "PCR 7: its separator only");

    // tpm2_eventlog reads it as a SHA-1 log, prints the stages as strings, and replays the
    // SHA-1 bank to our values.
    let (code, stdout, stderr) = tpm2_eventlog(&log.to_bytes());
    assert_eq!(code, Some(0), "{stderr}\n{stdout}");
    assert!(!stderr.contains("WARN"), "{stderr}");
    let strings: Vec<&str> = stdout
        .lines()
        .zip(stdout.lines().skip(1))
        .filter(|(line, _)| line.trim() == "String: |-")
        .map(|(_, next)| next.trim().trim_matches('"'))
        .collect();
    for stage in [
        "MBR boot code",
        "NTFS boot sector",
        "NTFS boot block",
        "bootmgr",
    ] {
        assert!(
            strings.contains(&stage),
            "{stage} not printed as a string ({strings:?}):\n{stdout}"
        );
    }
    let ours = log.replay();
    let tail = stdout.split("pcrs:\n").nth(1).expect("a pcrs: section");
    assert!(
        !tail.contains("sha256"),
        "a SHA-1 log has no SHA-256 bank:\n{tail}"
    );
    let mut seen = 0;
    for line in tail.lines().filter(|l| l.starts_with("    ")) {
        let (pcr, value) = line.trim().split_once(':').unwrap();
        let pcr: u32 = pcr.trim().parse().unwrap();
        let value = value.trim().trim_start_matches("0x").to_ascii_lowercase();
        assert_eq!(
            value,
            hex::encode(ours.get(HashAlg::Sha1, pcr).unwrap()),
            "PCR {pcr}"
        );
        seen += 1;
    }
    assert!(seen >= 11, "{tail}");
}

/// A scenario for `harness run`: legacy profile, TPM only, one change.
fn legacy_scenario(name: &str, kind: &str, changed: &str) -> String {
    format!(
        "name: {name}
description: A legacy BIOS desktop whose boot chain changes, for the profile tests here.
device:
  profile: legacy
  protectors: [tpm, recovery_password]
users:
  - name: CONTOSO\\bob
    sign_ins: [local]
change:
  kind: {kind}
expect:
  recovery: true
  tpm_error: policy_failed
  changed_pcrs: {changed}
recovery:
  via: self_service
  as: CONTOSO\\bob
  reason: OS filed modified
  answer: key_shown
"
    )
}

#[test]
fn harness_run_boots_a_legacy_scenario_on_a_bios_machine() {
    let _ = portal_bin();
    let dir = tempfile::tempdir().unwrap();
    // On a BIOS machine the boot manager is measured into PCR 10, not PCR 4.
    std::fs::write(
        dir.path().join("legacy-boot-manager.yaml"),
        legacy_scenario("legacy-boot-manager", "boot_manager_same_signer", "[10]"),
    )
    .unwrap();
    let json = dir.path().join("run.json");
    let (_, report) = run_for_report(
        harness()
            .arg("run")
            .arg(dir.path())
            .arg("--json")
            .arg(&json),
        &json,
        0,
    );
    let explanation = report["scenarios"][0]["lockout"]["explanation"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        explanation.contains("PCR 10 (sha1 bank)") && explanation.contains("EV_IPL"),
        "the explanation names the BIOS log's SHA-1 record: {explanation}"
    );
}

#[test]
fn changes_a_bios_machine_cannot_have_are_load_errors_under_legacy() {
    for kind in [
        "secure_boot_db_update",
        "secure_boot_dbx_update",
        "secure_boot_off",
    ] {
        let yaml = legacy_scenario("inline", kind, "[0]");
        let e = parse_scenario(Path::new("inline.yaml"), &yaml)
            .err()
            .unwrap_or_else(|| panic!("{kind} under legacy loaded"))
            .to_string();
        assert!(
            e.starts_with("inline.yaml:10:3: change.kind: ") && e.contains("BIOS"),
            "{kind}: {e}"
        );
    }
}

/// A scenario adding an option ROM signed by `signer` (a `change` line, YAML).
fn option_rom_scenario(name: &str, profile: &str, signer: &str, extra_device: &str) -> String {
    format!(
        "name: {name}
description: A card with its own option ROM is added, signed as the change says, for the tests here.
device:
  profile: \"{profile}\"
  protectors: [tpm, recovery_password]{extra_device}
users:
  - name: CONTOSO\\alice
    sign_ins: [local]
change:
  kind: option_rom_added
  signer: {signer}
expect:
  recovery: false
  tpm_error: none
"
    )
}

fn real_log_line() -> String {
    let log = crate::common::workspace_root()
        .join("harness/tests/it/data/eventlogs/go-attestation-windows_gcp_shielded_vm.log");
    format!("\n  event_log: {}", log.display())
}

#[test]
fn option_rom_added_takes_its_signer_from_the_yaml() {
    // Both signers load, on the model and (unsigned) on a real log.
    for signer in ["uefi_ca", "unsigned"] {
        let yaml = option_rom_scenario("inline", "0,2,4,11", signer, "");
        parse_scenario(Path::new("inline.yaml"), &yaml)
            .unwrap_or_else(|e| panic!("signer {signer}: {e}"));
    }
    let on_real_log = option_rom_scenario("inline", "0,2,4,11", "unsigned", &real_log_line());
    parse_scenario(Path::new("inline.yaml"), &on_real_log).unwrap();
    // The signer is required: which one decides PCR 7.
    let e = parse_scenario(
        Path::new("inline.yaml"),
        &option_rom_scenario("inline", "7,11", "uefi_ca", "").replace("  signer: uefi_ca\n", ""),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("inline.yaml:10:3: change.kind: ") && e.contains("`signer`"),
        "{e}"
    );
    // A real log cannot say whether the firmware would log the UEFI CA's authority.
    let e = parse_scenario(
        Path::new("inline.yaml"),
        &option_rom_scenario("inline", "0,2,4,11", "uefi_ca", &real_log_line()),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("inline.yaml:12:3: change.signer: ") && e.contains("authority"),
        "{e}"
    );
    // A BIOS runs legacy option ROMs: no UEFI signature, no authority event.
    let e = parse_scenario(
        Path::new("inline.yaml"),
        &option_rom_scenario("inline", "legacy", "uefi_ca", ""),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("inline.yaml:11:3: change.signer: ") && e.contains("BIOS"),
        "{e}"
    );
}

#[test]
fn harness_run_plays_the_option_rom_signer_the_yaml_names() {
    let _ = portal_bin();
    let dir = tempfile::tempdir().unwrap();
    // Under 7,11 an unsigned ROM moves PCR 2 only: no recovery.
    std::fs::write(
        dir.path().join("unsigned.yaml"),
        option_rom_scenario("unsigned", "7,11", "unsigned", ""),
    )
    .unwrap();
    // Signed by the UEFI CA it also logs a new authority in PCR 7: recovery.
    let uefi_ca = option_rom_scenario("uefi-ca", "7,11", "uefi_ca", "").replace(
        "  recovery: false\n  tpm_error: none\n",
        "  recovery: true\n  tpm_error: policy_failed\n  changed_pcrs: [7]\n\
         recovery:\n  via: self_service\n  as: CONTOSO\\alice\n  reason: BIOS/TPM changed\n  answer: key_shown\n",
    );
    std::fs::write(dir.path().join("uefi-ca.yaml"), uefi_ca).unwrap();
    let out = harness().arg("run").arg(dir.path()).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tpm2_eventlog_reads_the_runners_bios_log_after_every_change_a_bios_can_have() {
    use device::Change;
    for change in Change::catalog() {
        if matches!(
            change,
            Change::SecureBootDbUpdate | Change::SecureBootDbxUpdate | Change::SecureBootOff
        ) {
            continue; // not on a BIOS machine (a load error under `legacy`)
        }
        let log = Device::legacy_bios()
            .with(&change)
            .unwrap()
            .measured_boot()
            .log;
        assert_eq!(log.format, LogFormat::Sha1);
        let (code, stdout, stderr) = tpm2_eventlog(&log.to_bytes());
        assert_eq!(code, Some(0), "{change:?}: {stderr}");
        assert!(!stderr.contains("WARN"), "{change:?}: {stderr}");
        let tail = stdout.split("pcrs:\n").nth(1).unwrap();
        let ours = log.replay();
        for line in tail.lines().filter(|l| l.starts_with("    ")) {
            let (pcr, value) = line.trim().split_once(':').unwrap();
            let pcr: u32 = pcr.trim().parse().unwrap();
            let value = value.trim().trim_start_matches("0x").to_ascii_lowercase();
            assert_eq!(
                value,
                hex::encode(ours.get(HashAlg::Sha1, pcr).unwrap()),
                "{change:?}: PCR {pcr}"
            );
        }
    }
}

#[test]
fn the_catalog_plays_the_legacy_stories_and_each_option_rom_signer() {
    use harness::scenario::{load_catalog, ChangeKind, Profile, ProtectorKind, RomSigner};
    let catalog = load_catalog(&[crate::common::workspace_root().join("scenarios")]).unwrap();
    let legacy = |kind: ChangeKind, pcr: u32| {
        catalog.iter().any(|s| {
            s.steps().iter().any(|(change, expect)| {
                s.device_named(change.device.as_deref())
                    .is_some_and(|d| d.profile == Profile::Legacy)
                    && change.kind == kind
                    && expect.changed_pcrs == [pcr]
            })
        })
    };
    for (kind, pcr) in [
        (ChangeKind::BootManagerSameSigner, 10),
        (ChangeKind::MbrBootCodeChanged, 4),
        (ChangeKind::NtfsBootSectorChanged, 8),
        (ChangeKind::FirmwareUpdate, 0),
        (ChangeKind::BcdDebugOn, 11),
    ] {
        assert!(
            legacy(kind, pcr),
            "no legacy {kind:?} scenario with PCR {pcr}"
        );
    }
    assert!(
        catalog.iter().any(|s| {
            s.all_devices().iter().any(|d| {
                d.profile == Profile::Legacy && d.protectors.contains(&ProtectorKind::TpmPin)
            })
        }),
        "no legacy TPM+PIN scenario"
    );
    for signer in [RomSigner::UefiCa, RomSigner::Unsigned] {
        assert!(
            catalog
                .iter()
                .flat_map(|s| s.steps())
                .any(|(change, _)| change.kind == ChangeKind::OptionRomAdded
                    && change.signer == Some(signer)),
            "no option_rom_added scenario signed {signer:?}"
        );
    }
}
