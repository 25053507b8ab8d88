#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

fn diff(change: &Change) -> Vec<u32> {
    let before = Device::default();
    let after = before.clone().with(change).unwrap();
    before.predict_pcrs().differing(&after.predict_pcrs())
}

/// The expected PCR movement of every named change, as domain.md states it.
#[test]
fn every_change_moves_exactly_the_expected_pcrs() {
    use Change::*;
    let expected: Vec<(Change, Vec<u32>)> = vec![
        (FirmwareUpdate, vec![0]),
        // The reference device's ROM and boot manager are PCA-signed: a PCA ROM is no new
        // authority, a UEFI-CA ROM is.
        (
            OptionRomAdded {
                signer: Signer::WindowsPca2011,
            },
            vec![2],
        ),
        (
            OptionRomAdded {
                signer: Signer::MicrosoftUefiCa,
            },
            vec![2, 7],
        ),
        (
            OptionRomChanged {
                signer: Signer::WindowsPca2011,
            },
            vec![2],
        ),
        (
            OptionRomChanged {
                signer: Signer::MicrosoftUefiCa,
            },
            vec![2, 7],
        ),
        (BootManagerReplaced { same_signer: true }, vec![4]),
        (BootManagerReplaced { same_signer: false }, vec![4, 7]),
        (SecureBootDbUpdate, vec![7]),
        (SecureBootDbxUpdate, vec![7]),
        (SecureBootOff, vec![7]),
        (BcdDebugOn, vec![11]),
        (BcdBootOrder, vec![1]),
        // A UEFI firmware runs neither: nothing measured (legacy: PCR 4 and 8).
        (MbrBootCodeChanged, vec![]),
        (NtfsBootSectorChanged, vec![]),
        (DiskMovedToAnotherMachine, vec![]),
        (TpmCleared, vec![]),
        (TpmReplaced, vec![]),
        (PlannedUpdateWithSuspend, vec![0]),
    ];
    assert_eq!(
        expected.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>(),
        Change::catalog(),
        "every catalogued change has an expectation"
    );
    for (change, pcrs) in expected {
        assert_eq!(diff(&change), pcrs, "{change:?}");
    }
}

#[test]
fn recovery_under_each_profile_follows_domain_md() {
    let d = Device::default();
    assert_eq!(d.default_profile(), Profile::SecureBoot7_11);
    let triggers = |c: Change, p: Profile| {
        let after = d.clone().with(&c).unwrap();
        explain(&d.event_log(), &after.event_log(), p).triggers_recovery()
    };
    // Same-signer boot manager: no recovery under 7,11; recovery under 0,2,4,11.
    let bm = Change::BootManagerReplaced { same_signer: true };
    assert!(!triggers(bm.clone(), Profile::SecureBoot7_11));
    assert!(triggers(bm, Profile::Uefi0_2_4_11));
    // Firmware update: only profiles with PCR 0.
    assert!(!triggers(Change::FirmwareUpdate, Profile::SecureBoot7_11));
    assert!(triggers(Change::FirmwareUpdate, Profile::Uefi0_2_4_11));
    // BCD debug: every profile (PCR 11).
    for p in [
        Profile::SecureBoot7_11,
        Profile::Uefi0_2_4_11,
        Profile::Legacy,
    ] {
        assert!(triggers(Change::BcdDebugOn, p), "{p}");
    }
}

#[test]
fn default_profile_follows_signers_and_boot_mode() {
    let d = Device::default();
    let uefi_ca_rom = d
        .clone()
        .with(&Change::OptionRomAdded {
            signer: Signer::MicrosoftUefiCa,
        })
        .unwrap();
    assert_eq!(uefi_ca_rom.default_profile(), Profile::Uefi0_2_4_11);
    let sb_off = d.clone().with(&Change::SecureBootOff).unwrap();
    assert_eq!(sb_off.default_profile(), Profile::Uefi0_2_4_11);
    let mut bios = d.clone();
    bios.boot_mode = BootMode::Bios;
    assert_eq!(bios.default_profile(), Profile::Legacy);
}

#[test]
fn legacy_boot_measures_pcr_8_9_10() {
    let d = Device {
        boot_mode: BootMode::Bios,
        ..Device::default()
    };
    let p = d.predict_pcrs();
    let reset = eventlog::Pcrs::reset();
    for pcr in [0, 1, 2, 4, 5, 8, 9, 10, 11, 12] {
        assert_ne!(p.sha256(pcr), reset.sha256(pcr), "PCR {pcr}");
    }
    let mut d2 = d.clone();
    d2.disk.ntfs_boot_sector[100] ^= 1;
    assert_eq!(p.differing(&d2.predict_pcrs()), vec![8]);
    let d3 = d
        .clone()
        .with(&Change::BootManagerReplaced { same_signer: true })
        .unwrap();
    assert_eq!(p.differing(&d3.predict_pcrs()), vec![10]);
}

#[test]
fn explanation_names_the_events() {
    let d = Device::default();
    let after = d.clone().with(&Change::BcdDebugOn).unwrap();
    let ex = explain(&d.event_log(), &after.event_log(), Profile::SecureBoot7_11);
    assert_eq!(ex.pcrs(), vec![11]);
    let diff = &ex.differences[0];
    assert_eq!(diff.removed.len(), 1);
    assert_eq!(diff.added.len(), 1);
    let text = ex.to_string();
    assert!(text.contains("- EV_EVENT_TAG \"bootdebug=off\""), "{text}");
    assert!(text.contains("+ EV_EVENT_TAG \"bootdebug=on\""), "{text}");
    let db = d.clone().with(&Change::SecureBootDbUpdate).unwrap();
    let text = explain(&d.event_log(), &db.event_log(), Profile::SecureBoot7_11).to_string();
    assert!(
        text.contains("EV_EFI_VARIABLE_DRIVER_CONFIG \"db\""),
        "{text}"
    );
    let none = explain(&d.event_log(), &d.event_log(), Profile::SecureBoot7_11);
    assert!(!none.triggers_recovery());
}

#[test]
fn unseal_point_follows_pcr_11() {
    let d = Device::default();
    let ev = d.events();
    let i = d.unseal_index();
    assert_eq!(ev[i - 1].pcr, 11);
    assert!(ev[i..].iter().all(|e| e.pcr != 11));
    assert!(ev[..i].iter().all(|e| e.pcr != 12));
}

#[test]
fn changes_and_profiles_use_snake_case_names() {
    let c: Change = serde_json::from_str("\"firmware_update\"").unwrap();
    assert_eq!(c, Change::FirmwareUpdate);
    let c: Change =
        serde_json::from_str(r#"{"option_rom_added":{"signer":"microsoft_uefi_ca"}}"#).unwrap();
    assert_eq!(
        c,
        Change::OptionRomAdded {
            signer: Signer::MicrosoftUefiCa
        }
    );
    let c: Change =
        serde_json::from_str(r#"{"boot_manager_replaced":{"same_signer":false}}"#).unwrap();
    assert_eq!(c, Change::BootManagerReplaced { same_signer: false });
    for c in Change::catalog() {
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Change>(&s).unwrap(), c);
    }
    let p: Profile = serde_json::from_str("\"7,11\"").unwrap();
    assert_eq!(p, Profile::SecureBoot7_11);
    let p: Profile = serde_json::from_str("\"uefi_0_2_4_11\"").unwrap();
    assert_eq!(p, Profile::Uefi0_2_4_11);
    assert_eq!(
        serde_json::to_string(&Profile::Legacy).unwrap(),
        "\"0,2,4,8,9,10,11\""
    );
    // A device round-trips through JSON.
    let d = Device::default();
    let back: Device = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
    assert_eq!(back, d);
}

#[test]
fn option_rom_changed_needs_a_rom() {
    let mut d = Device::default();
    d.option_roms.clear();
    let err = d
        .with(&Change::OptionRomChanged {
            signer: Signer::WindowsPca2011,
        })
        .unwrap_err();
    assert!(err.to_string().contains("option ROM"));
}

#[test]
fn tpm_error_names_are_the_serde_names() {
    use crate::machine::TpmError;
    for e in [
        TpmError::None,
        TpmError::PolicyFailed,
        TpmError::AuthFailed,
        TpmError::LockedOut,
        TpmError::Integrity,
    ] {
        assert_eq!(serde_json::to_value(e).unwrap(), e.name().as_str());
    }
    assert_eq!(TpmError::Other(0x9a2).name(), "tpm_error_0x9a2");
}
