//! The real-firmware scenarios (`tag:real-firmware`, `device.firmware: ovmf`) as a user runs
//! them: `harness run --filter tag:real-firmware`, every boot a real boot of OVMF with Secure
//! Boot under QEMU (one at a time), each log replayed into the device's swtpm, the embedded
//! portal over HTTP. Twelve real boots of 15-40 s: nextest's `real-firmware` group runs this
//! alone (.config/nextest.toml).

use crate::common::{harness, portal_bin, run_for_report};

#[test]
fn real_firmware_scenarios_lock_out_recover_and_hold_the_model_to_real_boots() {
    let _ = portal_bin();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let (_, report) = run_for_report(
        harness()
            .args(["run", "--filter", "tag:real-firmware", "-j", "1", "--json"])
            .arg(&json)
            .arg("--html")
            .arg(dir.path().join("html")),
        &json,
        0,
    );
    let played: Vec<(&str, bool)> = report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["failure"].is_null()))
        .collect();
    assert_eq!(
        played,
        [
            ("real-firmware-db-update-secure-boot", true),
            ("real-firmware-db-update-uefi-control", true),
            ("real-firmware-option-rom-model-vs-reality", true),
        ]
    );
    // Each device's real boots are in the report, with the PCR diff and the events behind
    // it: the real db update in PCR 7, and the option ROM's real PCR 1 (its network boot
    // options), which the model does not predict and the check names as documented.
    let html = std::fs::read_to_string(dir.path().join("html/index.html")).unwrap();
    assert_eq!(html.matches("Real firmware boots").count(), 3, "{html}");
    assert!(
        html.contains("db: 3 entries in 3 signature lists"),
        "{html}"
    );
    assert!(html.contains("model [7], real [7]"), "{html}");
    assert!(html.contains("model [2], real [1, 2]"), "{html}");
    assert!(html.contains("UEFI PXEv4"), "{html}");
    // The JSON report carries the same boots for machines: each boot's change, the PCRs it
    // moved against boot 1 and the model's verdict.
    for s in report["scenarios"].as_array().unwrap() {
        let boots = s["lockout"]["real_boots"].as_array().unwrap();
        assert!(boots.len() >= 2, "{s:#}");
        assert_eq!(boots[0]["boot"], 1);
        assert!(
            boots[0]["model"].is_null(),
            "boot 1 is what BitLocker sealed to"
        );
        assert!(boots[0]["pcrs_moved_since_boot_1"]
            .as_array()
            .unwrap()
            .is_empty());
        for b in &boots[1..] {
            assert_ne!(b["model"]["verdict"], "disagrees", "{b:#}");
            assert!(b["seconds"].as_f64().unwrap() > 0.0, "{b:#}");
        }
    }
    // The boot of scenario `name` made with real change `change`.
    let boot_of = |name: &str, change: &str| {
        report["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["lockout"]["real_boots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["change"] == change)
            .unwrap_or_else(|| panic!("{name}: no {change} boot"))
            .clone()
    };
    let changed = boot_of("real-firmware-db-update-secure-boot", "db-update");
    assert!(
        changed["pcrs_moved_since_boot_1"]
            .as_array()
            .unwrap()
            .contains(&7.into()),
        "{changed:#}"
    );
    assert_eq!(changed["model"]["verdict"], "agrees", "{changed:#}");
    let rom_boot = boot_of("real-firmware-option-rom-model-vs-reality", "option-rom");
    assert_eq!(
        rom_boot["model"]["verdict"], "agrees_but_for_documented_differences",
        "{rom_boot:#}"
    );
    let pcr1 = &rom_boot["model"]["disagreements"][0];
    assert_eq!(pcr1["pcr"], 1, "{rom_boot:#}");
    assert_eq!(pcr1["moved_only_in"], "real_boot", "{rom_boot:#}");
    assert!(pcr1["documented"].is_string(), "{rom_boot:#}");
}
