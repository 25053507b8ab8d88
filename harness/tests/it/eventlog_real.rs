//! Real measured-boot logs (see data/eventlogs/README.md for sources and licences): reading,
//! replay (software and swtpm) against the PCR values recorded with each log, our own logs
//! against PCR_Read, malformed input, and recovery predictions decided by a real TPM.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::common::harness;
use device::predict;
use device::replay as tpm_replay;
use device::ChangeKind;
use device::{Change, Device, Profile};
use eventlog::tcg::{LogFormat, TcgLog};
use eventlog::{describe, HashAlg, ParseErrorKind};

const WINDOWS: &str = "go-attestation-windows_gcp_shielded_vm.log";
/// Crypto-agile SHA-256 firmware log of a PC booting the Windows boot manager (no SIPA events).
const HIRS: &str = "hirs-TpmLog.bin";
const LOGS: &[&str] = &[
    WINDOWS,
    HIRS,
    "tpm2-tools-event-arch-linux.bin",
    "tpm2-tools-event-gce-ubuntu-2104-log.bin",
    "tpm2-tools-event-sd-boot-fedora37.bin",
    "tpm2-tools-event-uefi-sha1-log.bin",
];

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/data/eventlogs")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(data_dir().join(name)).unwrap()
}

fn load(name: &str) -> TcgLog {
    TcgLog::parse(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `{"sha1": {"0": "<hex>"}}` recorded with the log.
fn recorded(name: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let text = std::fs::read_to_string(data_dir().join(format!("{name}.pcrs.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn bank(name: &str) -> HashAlg {
    HashAlg::KNOWN
        .into_iter()
        .find(|a| a.name() == name)
        .unwrap_or_else(|| panic!("bank {name}"))
}

fn check_against_recorded(name: &str, got: &eventlog::tcg::PcrBanks) {
    let want = recorded(name);
    let mut checked = 0;
    for (b, pcrs) in &want {
        for (pcr, value) in pcrs {
            let v = got
                .get(bank(b), pcr.parse().unwrap())
                .unwrap_or_else(|| panic!("{name}: no {b} PCR {pcr}"));
            assert_eq!(&hex::encode(v), value, "{name}: {b} PCR {pcr}");
            checked += 1;
        }
    }
    assert!(checked >= 8, "{name}: only {checked} recorded values");
}

#[test]
fn eventlog_real_logs_replay_to_the_recorded_pcrs() {
    for name in LOGS {
        let log = load(name);
        check_against_recorded(name, &log.replay());
    }
}

#[test]
fn eventlog_real_logs_replay_identically_in_swtpm() {
    for name in LOGS {
        let log = load(name);
        let tpm = tpm_replay::replay_on_tpm(&log).unwrap_or_else(|e| panic!("{name}: {e}"));
        check_against_recorded(name, &tpm);
    }
}

#[test]
fn eventlog_real_logs_formats_and_banks_are_recognised() {
    let w = load(WINDOWS);
    assert_eq!(w.format, LogFormat::Sha1);
    assert_eq!(w.banks, vec![HashAlg::Sha1]);
    let u = load("tpm2-tools-event-gce-ubuntu-2104-log.bin");
    assert_eq!(u.format, LogFormat::CryptoAgile);
    assert_eq!(
        u.banks,
        vec![HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha384]
    );
    let f = load("tpm2-tools-event-sd-boot-fedora37.bin");
    assert_eq!(f.banks, vec![HashAlg::Sha256]);
}

#[test]
fn eventlog_real_windows_events_are_named() {
    let w = load(WINDOWS);
    let lines: Vec<String> = w.records.iter().map(describe::describe).collect();
    let has = |s: &str| lines.iter().any(|l| l.contains(s));
    assert!(has("SecureBoot=1"), "{lines:#?}");
    assert!(has("db: 3 entries"));
    assert!(has("image \\EFI\\Microsoft\\Boot\\bootmgfw.efi"));
    assert!(has("BITLOCKER_UNLOCK=none (0x0)"));
    assert!(has("BOOTDEBUGGING=0"));
    assert!(has("CODEINTEGRITY=1"));
    assert!(has("SYSTEMROOT=\"\\\\Windows\""));
    assert!(has("EV_COMPACT_HASH 0xffff"));
    assert!(has("separator \"WBCL\""));
}

/// Our own device's log: replay (software and swtpm) equals PCR_Read after the same extends,
/// before and after a change.
#[test]
fn eventlog_real_own_device_logs_replay_like_pcr_read() {
    for device in [
        Device::default(),
        Device::default().with(&Change::SecureBootDbUpdate).unwrap(),
        Device::default().with(&Change::FirmwareUpdate).unwrap(),
    ] {
        let log = device.event_log();
        let ours = log.replay();
        let t = TcgLog::parse(&log.to_bytes()).unwrap();
        let mut tpm = swtpm::Tpm::spawn().unwrap();
        tpm_replay::extend(&mut tpm, &t.records).unwrap();
        let read = tpm_replay::read(&mut tpm, &t.banks).unwrap();
        for pcr in 0..24u32 {
            assert_eq!(
                read.get(HashAlg::Sha256, pcr).unwrap(),
                ours.sha256(pcr).unwrap()
            );
            assert_eq!(
                read.get(HashAlg::Sha1, pcr).unwrap(),
                ours.sha1(pcr).unwrap()
            );
        }
        assert_eq!(t.replay(), read);
        assert_eq!(tpm_replay::replay_on_tpm(&t).unwrap(), read);
    }
}

/// A log whose Startup came from locality 3: software and swtpm both start PCR 0 at 0...03.
#[test]
fn eventlog_real_startup_locality_3_replays_in_swtpm() {
    let mut log = Device::default().event_log();
    let mut data = b"StartupLocality\0".to_vec();
    data.push(3);
    log.events.insert(
        0,
        eventlog::Event {
            pcr: 0,
            event_type: eventlog::EventType::EV_NO_ACTION,
            data,
            digests: eventlog::Digests::ZERO,
        },
    );
    let t = TcgLog::parse(&log.to_bytes()).unwrap();
    assert_eq!(t.startup_locality, 3);
    let tpm = tpm_replay::replay_on_tpm(&t).unwrap();
    // Differs from the locality-0 replay in PCR 0 only.
    let zero = TcgLog::from(&Device::default().event_log()).replay();
    assert_eq!(tpm.differing(&zero), vec![0]);
}

/// Windows-style records with DigestCount < the header's count are read with a warning.
#[test]
fn eventlog_real_short_digest_count_is_read_with_a_warning() {
    let mut t = TcgLog::from(&Device::default().event_log());
    let i = t.records.iter().position(|r| r.pcr == 12).unwrap();
    t.records[i].digests.retain(|(a, _)| *a == HashAlg::Sha256);
    let back = TcgLog::parse(&t.to_bytes()).unwrap();
    assert_eq!(back.warnings.len(), 1);
    assert!(back.warnings[0].message.contains("DigestCount 1 < 2"));
    // And the TPM agrees: the SHA-1 bank of PCR 12 misses that extend in both.
    tpm_replay::replay_on_tpm(&back).unwrap();
}

#[test]
fn eventlog_real_malformed_real_logs_fail_with_offsets() {
    let bytes = read("tpm2-tools-event-arch-linux.bin");
    let log = load("tpm2-tools-event-arch-linux.bin");
    // Truncated in the middle of the fifth record.
    let r5 = log.records[4].offset;
    let e = TcgLog::parse(&bytes[..r5 + 20]).unwrap_err();
    assert_eq!(e.record, log.records[4].number);
    assert!(matches!(e.kind, ParseErrorKind::Truncated { .. }), "{e}");
    // An impossible DigestCount.
    let mut b = bytes.clone();
    b[r5 + 8..r5 + 12].copy_from_slice(&7u32.to_le_bytes());
    let e = TcgLog::parse(&b).unwrap_err();
    assert_eq!((e.record, e.offset), (log.records[4].number, r5 + 8));
    // An oversized EventSize on the last record.
    let last = log.records.last().unwrap();
    let size_at = bytes.len() - last.data.len() - 4;
    let mut b = bytes.clone();
    b[size_at..size_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = TcgLog::parse(&b).unwrap_err();
    assert_eq!(e.offset, size_at);
    assert!(e.to_string().contains("byte offset"));
}

/// The acceptance: on a real Windows log a db update means recovery under 7,11 and not under
/// 0,2,4,11; a firmware update the opposite. Each verdict comes from a real unseal.
#[test]
fn eventlog_real_windows_predictions_match_the_profiles() {
    let log = load(WINDOWS);
    let up = predict::unseal_point(&log);
    assert!(up.reason.contains("BITLOCKER_UNLOCK"), "{}", up.reason);
    let cases = [
        (
            ChangeKind::SecureBootDbUpdate,
            Profile::SecureBoot7_11,
            true,
            7,
        ),
        (
            ChangeKind::SecureBootDbUpdate,
            Profile::Uefi0_2_4_11,
            false,
            7,
        ),
        (
            ChangeKind::FirmwareUpdate,
            Profile::SecureBoot7_11,
            false,
            0,
        ),
        (ChangeKind::FirmwareUpdate, Profile::Uefi0_2_4_11, true, 0),
        (
            ChangeKind::BootManagerSameSigner,
            Profile::SecureBoot7_11,
            false,
            4,
        ),
        (
            ChangeKind::BootManagerSameSigner,
            Profile::Uefi0_2_4_11,
            true,
            4,
        ),
        (
            ChangeKind::BootManagerOtherSigner,
            Profile::SecureBoot7_11,
            true,
            7,
        ),
        (ChangeKind::SecureBootOff, Profile::SecureBoot7_11, true, 7),
    ];
    for (change, profile, recovery, pcr) in cases {
        let p = predict::predict(&log, profile, change).unwrap();
        let what = format!("{change:?} under {profile}");
        assert_eq!(p.recovery, recovery, "{what}: {p}");
        assert_eq!(p.tpm_unsealed, !recovery, "{what}");
        if recovery {
            assert_eq!(
                p.tpm_response_code,
                Some(0x99d),
                "{what}: TPM_RC_POLICY_FAIL"
            );
            assert_eq!(p.changed_profile_pcrs, vec![pcr], "{what}");
        }
        let d = p.diff.pcrs.iter().find(|d| d.pcr == pcr).unwrap();
        assert!(!d.removed.is_empty() && !d.added.is_empty(), "{what}: {p}");
    }
    // The explanation names the event that changed.
    let p = predict::predict(
        &log,
        Profile::SecureBoot7_11,
        ChangeKind::SecureBootDbUpdate,
    )
    .unwrap();
    let text = p.to_string();
    assert!(
        text.contains("- #4 EV_EFI_VARIABLE_DRIVER_CONFIG db: 3 entries"),
        "{text}"
    );
    assert!(
        text.contains("+ #4 EV_EFI_VARIABLE_DRIVER_CONFIG db: 4 entries"),
        "{text}"
    );
    assert!(text.contains("TPM_RC_POLICY_FAIL"), "{text}");
}

/// The same acceptance on a crypto-agile SHA-256 log (sealed and unsealed in the SHA-256
/// bank): HIRS' firmware log of a PC that boots `\EFI\Microsoft\Boot\bootmgfw.efi`. It has
/// no Windows SIPA events, so the unseal point is the end of the log and PCR 11 is zero.
#[test]
fn eventlog_real_crypto_agile_sha256_predictions_match_the_profiles() {
    let log = load(HIRS);
    assert_eq!(log.format, LogFormat::CryptoAgile);
    assert_eq!(log.banks, vec![HashAlg::Sha256]);
    assert!(log
        .records
        .iter()
        .any(|r| describe::describe(r).contains("bootmgfw.efi")));
    for (change, profile, recovery, pcr) in [
        (
            ChangeKind::SecureBootDbUpdate,
            Profile::SecureBoot7_11,
            true,
            7,
        ),
        (
            ChangeKind::SecureBootDbUpdate,
            Profile::Uefi0_2_4_11,
            false,
            7,
        ),
        (
            ChangeKind::FirmwareUpdate,
            Profile::SecureBoot7_11,
            false,
            0,
        ),
        (ChangeKind::FirmwareUpdate, Profile::Uefi0_2_4_11, true, 0),
    ] {
        let p = predict::predict(&log, profile, change).unwrap();
        let what = format!("{change:?} under {profile}");
        assert_eq!(p.bank, HashAlg::Sha256, "{what}");
        assert_eq!(p.recovery, recovery, "{what}: {p}");
        assert_eq!(p.tpm_unsealed, !recovery, "{what}");
        if recovery {
            assert_eq!(p.tpm_response_code, Some(0x99d), "{what}: {p}");
            assert_eq!(p.changed_profile_pcrs, vec![pcr], "{what}");
        }
        assert!(p.diff.pcr_indices().contains(&pcr), "{what}: {p}");
    }
}

#[test]
fn eventlog_real_boot_debugging_moves_pcr_12_and_bcd_validation_decides() {
    let log = load(WINDOWS);
    let p = predict::predict(&log, Profile::SecureBoot7_11, ChangeKind::BcdDebugOn).unwrap();
    assert!(p.tpm_unsealed, "PCR 12-14 are in no profile: {p}");
    assert!(p.recovery, "BCD validation: {p}");
    // Only the boot manager's PCR 12 event comes before the unseal point.
    assert_eq!(p.diff.pcr_indices(), vec![12], "{p}");
    let changed = predict::apply(&log, ChangeKind::BcdDebugOn).unwrap();
    let touched = predict::touched(&log, &changed);
    assert!(touched
        .iter()
        .all(|r| r.description.contains("BOOTDEBUGGING=1")));
}

#[test]
fn eventlog_real_cli_replay_json_and_predict() {
    let path = data_dir().join("tpm2-tools-event-gce-ubuntu-2104-log.bin");
    let out = harness()
        .args(["eventlog", "replay", "--tpm", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: BTreeMap<String, BTreeMap<String, String>> =
        serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json.keys().collect::<Vec<_>>(),
        ["sha1", "sha256", "sha384"]
    );
    assert!(json.values().all(|b| b.len() == 24));
    for (b, pcrs) in recorded("tpm2-tools-event-gce-ubuntu-2104-log.bin") {
        for (i, v) in pcrs {
            assert_eq!(json[&b][&i], v);
        }
    }
    let out = harness()
        .args([
            "eventlog",
            "predict",
            "--profile",
            "0,2,4,11",
            "--change",
            "firmware-update",
        ])
        .arg(data_dir().join(WINDOWS))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("verdict: RECOVERY"), "{text}");
    assert!(text.contains("EV_S_CRTM_VERSION"), "{text}");
    // A malformed file: exit 2 and the offset.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.log");
    std::fs::write(&bad, &read(WINDOWS)[..100]).unwrap();
    let out = harness()
        .args(["eventlog", "show"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("byte offset"));
}

mod fuzz_smoke {
    use super::*;
    use proptest::prelude::*;

    /// Runs everything the fuzz target runs on one input.
    fn exercise(bytes: &[u8]) {
        let _ = eventlog::EventLog::parse(bytes);
        let _ = eventlog::sipa::parse(bytes);
        if let Ok(log) = TcgLog::parse(bytes) {
            let _ = log.replay();
            for r in &log.records {
                let _ = describe::describe(r);
            }
            let _ = predict::unseal_point(&log);
            let round_trips = log.format == LogFormat::CryptoAgile
                || log
                    .records
                    .first()
                    .is_some_and(|r| !r.data.starts_with(b"Spec ID Event03"));
            if round_trips {
                TcgLog::parse(&log.to_bytes()).unwrap();
            }
            for change in [
                ChangeKind::SecureBootDbUpdate,
                ChangeKind::BcdDebugOn,
                ChangeKind::BcdBootOrder,
            ] {
                let _ = predict::apply(&log, change);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// The stable stand-in for `cargo fuzz run tcg_parse`: real logs with bytes
        /// overwritten, cut and inserted never panic the reader.
        #[test]
        fn eventlog_fuzz_smoke(
            which in 0..LOGS.len(),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
            insert in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut bytes = read(LOGS[which]);
            for (pos, byte) in edits {
                let p = pos % bytes.len();
                bytes[p] = byte;
            }
            let at = cut % (bytes.len() + 1);
            bytes.splice(at..at, insert);
            exercise(&bytes);
            bytes.truncate(cut % (bytes.len() + 1));
            exercise(&bytes);
        }
    }
}

/// Found by `cargo fuzz run tcg_parse`: a SHA-1-format log that is only a trust point reads
/// as an empty log with a warning (and writes back as nothing, which is not a log).
#[test]
fn eventlog_real_trust_point_only_log_is_empty_with_a_warning() {
    let mut bytes = 0xFFFF_FFFFu32.to_le_bytes().to_vec();
    bytes.extend_from_slice(&0x007d_0a01u32.to_le_bytes());
    bytes.extend_from_slice(&[0; 20]);
    bytes.extend_from_slice(&0u32.to_le_bytes());
    let log = TcgLog::parse(&bytes).unwrap();
    assert_eq!(log.format, LogFormat::Sha1);
    assert!(log.records.is_empty());
    assert_eq!(log.warnings.len(), 1);
    assert!(TcgLog::parse(&log.to_bytes()).is_err());
}
