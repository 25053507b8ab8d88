//! The device side of a scenario: one recovery-password stretch, and the TPM work of one
//! boot (reboot, measure the boot into the PCRs, unseal the VMK under PolicyPCR).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bitlocker::{stretch_recovery_password, RecoveryPassword};
use criterion::{criterion_group, criterion_main, Criterion};
use device::machine::{BitLockerSetup, BootOutcome, Machine, TpmProtection};
use device::{Device, Profile};

fn stretch(c: &mut Criterion) {
    let password = RecoveryPassword::generate(&mut rand::rng());
    let salt = [7u8; 16];
    let mut group = c.benchmark_group("recovery password");
    group.sample_size(20);
    group.bench_function("stretch (0x100000 SHA-256 rounds)", |b| {
        b.iter(|| stretch_recovery_password(&password, &salt))
    });
    group.finish();
}

fn boot(c: &mut Criterion) {
    let mut group = c.benchmark_group("device boot");
    for (name, protection) in [
        ("TPM, profile 7,11", TpmProtection::Tpm),
        (
            "TPM+PIN, profile 7,11",
            TpmProtection::TpmPin {
                pin: "246810".into(),
            },
        ),
    ] {
        let setup = BitLockerSetup {
            profile: Profile::SecureBoot7_11,
            protection: protection.clone(),
            ..BitLockerSetup::default()
        };
        let (mut machine, _) =
            Machine::provision(Device::default(), &setup, &mut rand::rng()).unwrap();
        let pin = match &protection {
            TpmProtection::TpmPin { pin } => Some(pin.clone()),
            TpmProtection::Tpm => None,
        };
        group.bench_function(format!("reboot + measure + unseal ({name})"), |b| {
            b.iter(|| match machine.boot(pin.as_deref()).unwrap() {
                BootOutcome::Unlocked { .. } => {}
                other => panic!("{other:?}"),
            })
        });
    }
    group.finish();
}

criterion_group!(benches, stretch, boot);
criterion_main!(benches);
