//! Every lockout reproduced on a real swtpm, asserting the TPM's own error, then a real
//! recovery; and the controls that must not lock.

use bitlocker::{ProtectorType, RecoveryPassword};
use device::machine::{
    BitLockerSetup, BootOutcome, EscrowedKey, Machine, MachineError, RecoveryScreen, TpmError,
    TpmProtection,
};
use device::{Change, Device, Profile, Signer};

fn provision(profile: Profile, protection: TpmProtection) -> (Machine, EscrowedKey) {
    let setup = BitLockerSetup {
        profile,
        protection,
        ..BitLockerSetup::default()
    };
    let (machine, mut escrow) =
        Machine::provision(Device::default(), &setup, &mut rand::rng()).unwrap();
    (machine, escrow.remove(0))
}

fn expect_unlocked(machine: &mut Machine, pin: Option<&str>) {
    match machine.boot(pin).unwrap() {
        BootOutcome::Unlocked { .. } => {}
        other => panic!("expected a normal boot, got {other:?}"),
    }
}

fn expect_recovery(machine: &mut Machine, pin: Option<&str>) -> RecoveryScreen {
    match machine.boot(pin).unwrap() {
        BootOutcome::Recovery(screen) => *screen,
        other => panic!("expected the recovery screen, got {other:?}"),
    }
}

/// A password with valid blocks that is not this volume's.
fn wrong_password(right: &RecoveryPassword) -> String {
    let mut key = right.key16();
    key[0] ^= 1;
    RecoveryPassword::from_key16(&key).to_string()
}

/// The whole lockout story: change → recovery screen with the TPM's own error and the
/// changed PCRs → a wrong password refused by the MAC → the right one unlocks and re-seals
/// → the next boot is normal.
fn lockout(profile: Profile, change: Change, cause: TpmError, pcrs: &[u32]) {
    let (mut machine, key) = provision(profile, TpmProtection::Tpm);
    expect_unlocked(&mut machine, None);
    machine.apply(&change).unwrap();
    let screen = expect_recovery(&mut machine, None);
    assert_eq!(screen.cause, cause, "{change:?} under {profile}");
    assert_eq!(
        screen.key_id, key.key_protector_id,
        "the screen shows the recovery key ID"
    );
    if cause == TpmError::PolicyFailed {
        assert_eq!(
            screen.explanation.pcrs(),
            pcrs,
            "{change:?} under {profile}"
        );
        assert!(screen
            .explanation
            .differences
            .iter()
            .all(|d| !d.added.is_empty() || !d.removed.is_empty()));
    }
    let wrong = wrong_password(&key.recovery_password);
    assert!(matches!(
        machine.enter_recovery_password(&wrong, None),
        Err(MachineError::WrongRecoveryPassword)
    ));
    let recovered = machine
        .enter_recovery_password(&key.recovery_password.to_string(), None)
        .unwrap();
    assert_eq!(recovered.via, key.key_protector_id);
    expect_unlocked(&mut machine, None);
}

#[test]
fn firmware_update_under_0_2_4_11() {
    lockout(
        Profile::Uefi0_2_4_11,
        Change::FirmwareUpdate,
        TpmError::PolicyFailed,
        &[0],
    );
}

#[test]
fn option_rom_change_under_0_2_4_11() {
    let change = Change::OptionRomChanged {
        signer: Signer::MicrosoftUefiCa,
    };
    lockout(Profile::Uefi0_2_4_11, change, TpmError::PolicyFailed, &[2]);
}

#[test]
fn boot_manager_from_another_signer_under_7_11() {
    let change = Change::BootManagerReplaced { same_signer: false };
    lockout(
        Profile::SecureBoot7_11,
        change,
        TpmError::PolicyFailed,
        &[7],
    );
}

#[test]
fn any_boot_manager_replacement_under_0_2_4_11() {
    let change = Change::BootManagerReplaced { same_signer: true };
    lockout(Profile::Uefi0_2_4_11, change, TpmError::PolicyFailed, &[4]);
}

#[test]
fn secure_boot_db_update() {
    lockout(
        Profile::SecureBoot7_11,
        Change::SecureBootDbUpdate,
        TpmError::PolicyFailed,
        &[7],
    );
}

#[test]
fn secure_boot_dbx_update() {
    lockout(
        Profile::SecureBoot7_11,
        Change::SecureBootDbxUpdate,
        TpmError::PolicyFailed,
        &[7],
    );
}

#[test]
fn secure_boot_turned_off() {
    lockout(
        Profile::SecureBoot7_11,
        Change::SecureBootOff,
        TpmError::PolicyFailed,
        &[7],
    );
}

#[test]
fn boot_debugging_enabled_locks_under_both_uefi_profiles() {
    lockout(
        Profile::SecureBoot7_11,
        Change::BcdDebugOn,
        TpmError::PolicyFailed,
        &[11],
    );
    lockout(
        Profile::Uefi0_2_4_11,
        Change::BcdDebugOn,
        TpmError::PolicyFailed,
        &[11],
    );
}

#[test]
fn tpm_cleared_is_an_integrity_failure() {
    lockout(
        Profile::SecureBoot7_11,
        Change::TpmCleared,
        TpmError::Integrity,
        &[],
    );
}

#[test]
fn disk_moved_to_another_machine_is_an_integrity_failure() {
    lockout(
        Profile::SecureBoot7_11,
        Change::DiskMovedToAnotherMachine,
        TpmError::Integrity,
        &[],
    );
}

#[test]
fn tpm_replaced_is_an_integrity_failure() {
    lockout(
        Profile::SecureBoot7_11,
        Change::TpmReplaced,
        TpmError::Integrity,
        &[],
    );
}

#[test]
fn lost_pin_counts_up_to_lockout_then_the_right_pin_fails_too_and_recovery_sets_a_new_pin() {
    let (mut machine, key) = provision(
        Profile::SecureBoot7_11,
        TpmProtection::TpmPin {
            pin: "246810".into(),
        },
    );
    expect_unlocked(&mut machine, Some("246810"));
    for expected in 1..32 {
        match machine.boot(Some("000000")).unwrap() {
            BootOutcome::WrongPin { lockout_counter } => assert_eq!(lockout_counter, expected),
            other => panic!("wrong PIN {expected}: {other:?}"),
        }
    }
    // The 32nd wrong PIN locks the TPM out; from then on even the right PIN fails.
    let _ = machine.boot(Some("000000")).unwrap();
    let screen = expect_recovery(&mut machine, Some("246810"));
    assert_eq!(screen.cause, TpmError::LockedOut);
    assert_eq!(screen.tpm_response_code, Some(0x921));
    assert!(
        screen.explanation.pcrs().is_empty(),
        "no PCR changed: the PIN is the cause"
    );

    // The recovery key opens the volume, but the TPM's lockout stays as the TPM has it
    // (Windows keeps no lockout authorization to reset it with): the next boot, even with
    // the new PIN, meets the lockout again.
    machine
        .enter_recovery_password(&key.recovery_password.to_string(), Some("135790"))
        .unwrap();
    assert_eq!(machine.tpm_lockout_counter().unwrap(), 32);
    assert!(machine.tpm_in_lockout().unwrap());
    let screen = expect_recovery(&mut machine, Some("135790"));
    assert_eq!(screen.cause, TpmError::LockedOut);
    // Once the lockout is reset, the new PIN (sealed at recovery) unlocks.
    let escrowed = machine.lockout_auth().to_vec();
    machine.reset_tpm_lockout(&escrowed).unwrap();
    expect_unlocked(&mut machine, Some("135790"));
}

#[test]
fn lost_pin_resolved_by_a_lockout_reset_with_the_escrowed_lockout_auth() {
    let (mut machine, _key) = provision(
        Profile::SecureBoot7_11,
        TpmProtection::TpmPin {
            pin: "246810".into(),
        },
    );
    let escrowed = machine.lockout_auth().to_vec();
    for _ in 0..32 {
        let _ = machine.boot(Some("111111")).unwrap();
    }
    expect_recovery(&mut machine, Some("246810"));
    machine.reset_tpm_lockout(&escrowed).unwrap();
    assert_eq!(machine.tpm_lockout_counter().unwrap(), 0);
    expect_unlocked(&mut machine, Some("246810"));
}

#[test]
fn a_guessed_lockout_auth_blocks_even_the_escrowed_one_so_the_recovery_key_is_needed() {
    let (mut machine, key) = provision(
        Profile::SecureBoot7_11,
        TpmProtection::TpmPin {
            pin: "246810".into(),
        },
    );
    let escrowed = machine.lockout_auth().to_vec();
    for _ in 0..32 {
        let _ = machine.boot(Some("111111")).unwrap();
    }
    expect_recovery(&mut machine, Some("246810"));
    assert!(machine.reset_tpm_lockout(b"guess").is_err());
    // The TPM now refuses lockout-auth use for lockoutRecovery (a day, Windows' setting).
    assert!(matches!(
        machine.reset_tpm_lockout(&escrowed),
        Err(MachineError::Tpm(swtpm::Error::LockedOut { .. }))
    ));
    expect_recovery(&mut machine, Some("246810"));
    // The recovery key still opens the volume; the TPM stays locked out.
    let recovered = machine
        .enter_recovery_password(&key.recovery_password.to_string(), None)
        .unwrap();
    assert_eq!(recovered.via, key.key_protector_id);
    assert!(machine.tpm_in_lockout().unwrap());
}

#[test]
fn controls_that_must_not_lock() {
    // A plain reboot.
    let (mut machine, _) = provision(Profile::SecureBoot7_11, TpmProtection::Tpm);
    expect_unlocked(&mut machine, None);
    expect_unlocked(&mut machine, None);
    // The boot manager replaced by one from the same signer, under 7,11.
    machine
        .apply(&Change::BootManagerReplaced { same_signer: true })
        .unwrap();
    expect_unlocked(&mut machine, None);

    // A firmware update done with protection suspended: resumes and re-seals on the next
    // boot, and the boot after that is normal too.
    let (mut machine, _) = provision(Profile::Uefi0_2_4_11, TpmProtection::Tpm);
    expect_unlocked(&mut machine, None);
    machine.apply(&Change::PlannedUpdateWithSuspend).unwrap();
    match machine.boot(None).unwrap() {
        BootOutcome::Unlocked { resealed, .. } => assert!(resealed),
        other => panic!("{other:?}"),
    }
    expect_unlocked(&mut machine, None);
}

/// `Suspend-BitLocker -RebootCount 2`: the clear key opens the drive for two reboots and
/// only the second re-seals; a change after the suspension ran out locks the drive.
#[test]
fn a_suspension_lasts_its_reboots_then_resumes_and_expires() {
    let (mut machine, _) = provision(Profile::Uefi0_2_4_11, TpmProtection::Tpm);
    expect_unlocked(&mut machine, None);
    machine.suspend_protection(2).unwrap();
    machine.apply(&Change::FirmwareUpdate).unwrap();
    let resealed = |machine: &mut Machine| match machine.boot(None).unwrap() {
        BootOutcome::Unlocked { resealed, .. } => resealed,
        other => panic!("{other:?}"),
    };
    assert!(!resealed(&mut machine), "the first of two reboots");
    // Still suspended: a change now is covered too.
    machine.apply(&Change::FirmwareUpdate).unwrap();
    assert!(resealed(&mut machine), "the second reboot resumes");
    expect_unlocked(&mut machine, None);
    // Expired: the next update is not covered.
    machine.apply(&Change::FirmwareUpdate).unwrap();
    expect_recovery(&mut machine, None);
    assert!(machine.suspend_protection(0).is_err());
}

#[test]
fn the_recovery_screen_checks_blocks_as_typed_and_names_the_bad_one() {
    let (mut machine, key) = provision(Profile::SecureBoot7_11, TpmProtection::Tpm);
    machine.apply(&Change::SecureBootDbUpdate).unwrap();
    expect_recovery(&mut machine, None);
    let mut blocks: Vec<String> = key
        .recovery_password
        .to_string()
        .split('-')
        .map(String::from)
        .collect();
    blocks[3] = "123456".into(); // not divisible by 11
    let err = machine
        .enter_recovery_password(&blocks.join("-"), None)
        .unwrap_err();
    assert!(err.to_string().contains("block 4"), "{err}");
    let err = machine.enter_recovery_password("123", None).unwrap_err();
    assert!(
        matches!(err, MachineError::BadBlock(_) | MachineError::BlockCount(_)),
        "{err}"
    );
    // Spaces or no separators are accepted as well as hyphens.
    let plain: String = key.recovery_password.to_string().replace('-', "");
    machine.enter_recovery_password(&plain, None).unwrap();
}

#[test]
fn rotation_replaces_the_recovery_password_and_the_old_one_stops_unlocking() {
    let (mut machine, key) = provision(Profile::SecureBoot7_11, TpmProtection::Tpm);
    expect_unlocked(&mut machine, None);
    let new = machine
        .rotate_recovery_password(key.key_protector_id, &mut rand::rng())
        .unwrap();
    assert_ne!(new.key_protector_id, key.key_protector_id);
    assert!(!machine.password_unlocks(&key.recovery_password).unwrap());
    assert!(machine.password_unlocks(&new.recovery_password).unwrap());
    assert_eq!(machine.recovery_key_ids(), &[new.key_protector_id]);
}

#[test]
fn predictions_equal_what_the_tpm_reads_after_a_boot_and_after_each_change() {
    let (mut machine, _) = provision(Profile::SecureBoot7_11, TpmProtection::Tpm);
    for change in [
        Change::FirmwareUpdate,
        Change::SecureBootDbUpdate,
        Change::BcdDebugOn,
    ] {
        // Predict before applying, from the model alone ...
        let predicted = machine
            .device()
            .clone()
            .with(&change)
            .unwrap()
            .predict_pcrs();
        machine.apply(&change).unwrap();
        let _ = machine.boot(None).unwrap();
        // ... then compare with the real TPM after the boot measured everything.
        let read = machine.tpm_pcrs(&[0, 1, 2, 4, 5, 7, 11]).unwrap();
        for (pcr, value) in read {
            assert_eq!(
                predicted.sha256(u32::from(pcr)).unwrap().as_slice(),
                value.as_slice(),
                "PCR {pcr} after {change:?}"
            );
        }
    }
    let _ = ProtectorType::Tpm;
}
