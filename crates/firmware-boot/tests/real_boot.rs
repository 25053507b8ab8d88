//! Real boots: Debian's OVMF with Secure Boot under QEMU on a real swtpm, from the real boot
//! disk. A boot takes 15-40 s on this 2-core machine; nextest runs the `real_firmware_` tests
//! one at a time (test group `real-firmware` in .config/nextest.toml).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use eventlog::tcg::TcgLog;
use eventlog::HashAlg;
use firmware_boot::{tpm_state, BootOutcome, Cache, Change, DiskSpec, Sha256Pcrs};

/// A boot is about 15-35 s here; the bound only catches a hang.
const BOOT_BOUND: Duration = Duration::from_secs(150);

fn boot(change: &Change, tpm: &Path, work: &Path) -> BootOutcome {
    let cache = Cache::default_location().unwrap();
    let mut req = change.plan(&cache, tpm, work).unwrap();
    req.timeout = BOOT_BOUND;
    firmware_boot::boot(&req).unwrap_or_else(|e| panic!("boot with {}: {e}", change.name()))
}

fn replay_sha256(log: &[u8]) -> Sha256Pcrs {
    let log = TcgLog::parse(log).unwrap();
    assert_eq!(
        log.banks,
        vec![HashAlg::Sha256],
        "a sha256-only TPM gives a sha256-only log"
    );
    let banks = log.replay();
    let values = &banks.banks[&HashAlg::Sha256];
    let mut out = [[0u8; 32]; 24];
    for (i, v) in values.iter().enumerate().take(24) {
        out[i] = v.as_slice().try_into().unwrap();
    }
    Sha256Pcrs(out)
}

/// Three real boots on one device's TPM (three, to keep `make test` within its budget):
/// 1. the base boot: the PCRs the kernel printed equal the PCRs read back from the kept swtpm
///    state, and a replay of the firmware's event log;
/// 2. the same inputs again: the same PCRs and the same log;
/// 3. a db update done in the varstore: PCR 7 moves, no other boot PCR (0-9) does (the model
///    is held to real boots by the real-firmware scenarios: `device::real_firmware`).
///
/// `make firmware-lab` runs it; `make test` runs the real-firmware scenarios instead
/// (harness/tests/it/real_firmware.rs), whose every boot checks the log's replay against the
/// kernel's PCRs, boots the same inputs twice and makes a real db update.
#[test]
#[ignore = "three real boots: make firmware-lab runs it"]
fn real_firmware_base_boot_matches_tpm_and_log_repeats_and_db_update_moves_pcr7_only() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = dir.path().join("tpm");
    let first = boot(&Change::None, &tpm, &dir.path().join("base1"));
    assert!(first.info.contains("Secure boot enabled"), "{}", first.info);

    // 1. The PCRs the kernel printed are the ones the swtpm state keeps after the boot ...
    let kept = tpm_state::read_pcrs(&tpm).unwrap();
    assert_eq!(
        kept, first.pcrs,
        "kernel-printed PCRs vs PCRs read back from the state"
    );
    // ... and a replay of the firmware's log gives them (PCR 10 is the kernel's IMA
    // boot_aggregate, which is not in the firmware log).
    let replayed = replay_sha256(&first.event_log);
    let all_but_ima: Vec<usize> = (0..24).filter(|&i| i != 10).collect();
    assert_eq!(
        replayed.differing(&first.pcrs, &all_but_ima),
        Vec::<usize>::new()
    );
    // Not a vacuous comparison: firmware and loader extended PCR 0-9.
    let reset = Sha256Pcrs([[0u8; 32]; 24]);
    assert_eq!(replayed.differing(&reset, &[0, 1, 4, 5, 7, 8, 9]).len(), 7);

    // 2. The same inputs again, on the same device's TPM, boot to the same PCRs.
    let second = boot(&Change::None, &tpm, &dir.path().join("base2"));
    assert_eq!(second.pcrs, first.pcrs, "same inputs, other PCRs");
    assert_eq!(second.event_log, first.event_log);

    // 3. db update: PCR 7 only among 0-9 (10, IMA's aggregate over 0-9, follows any change).
    let db = boot(&Change::DbUpdate, &tpm, &dir.path().join("db"));
    let boot_pcrs: Vec<usize> = (0..10).collect();
    assert_eq!(first.pcrs.differing(&db.pcrs, &boot_pcrs), vec![7]);
}

#[test]
fn boot_disk_rebuild_gives_the_same_bytes() {
    let cache = Cache::default_location().unwrap();
    // A spec of its own, so deleting its disk disturbs no other test.
    let spec = DiskSpec {
        kernel_cmdline_extra: vec![],
        grub_cfg_extra: Some("set reproducibility_test=1".to_string()),
    };
    let first = firmware_boot::build_boot_disk(&cache, &spec).unwrap();
    let bytes = std::fs::read(&first.path).unwrap();
    std::fs::remove_file(&first.path).unwrap();
    let again = firmware_boot::build_boot_disk(&cache, &spec).unwrap();
    assert_eq!(again.path, first.path);
    assert!(
        std::fs::read(&again.path).unwrap() == bytes,
        "a rebuild gave other bytes"
    );
    assert!(first
        .packages
        .iter()
        .any(|p| p.name.starts_with("linux-image-6")));
}

/// Processes whose command line mentions `needle` (our QEMU and swtpm name their work dir).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(cmdline);
            }
        }
    }
    found
}

#[test]
fn real_firmware_a_boot_past_its_bound_is_an_error_and_leaves_no_process() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let cache = Cache::default_location().unwrap();
    let mut req = Change::None
        .plan(&cache, &dir.path().join("tpm"), &work)
        .unwrap();
    // Far too short for OVMF to get anywhere: QEMU and swtpm are running when it passes.
    req.timeout = Duration::from_secs(3);
    let started = std::time::Instant::now();
    let err = firmware_boot::boot(&req).unwrap_err();
    assert!(matches!(err, firmware_boot::Error::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        processes_mentioning(&work.display().to_string()),
        Vec::<String>::new()
    );
}
