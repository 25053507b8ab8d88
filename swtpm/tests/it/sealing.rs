use swtpm::{Error, SealPolicy, Tpm};

use crate::common::{digest, SHA256};

fn policy(pcrs: &[u8]) -> SealPolicy {
    SealPolicy {
        pcrs: pcrs.to_vec(),
        expected: None,
        auth_value: None,
        dictionary_attack_protected: false,
    }
}

fn extend(tpm: &mut Tpm, pcr: u8, byte: u8) {
    tpm.pcr_extend(pcr, &[(SHA256, &digest(byte))]).unwrap();
}

#[test]
fn sealed_secret_unseals_only_while_the_pcrs_match_and_again_after_replay() {
    let mut tpm = Tpm::spawn().unwrap();
    extend(&mut tpm, 7, 0x11);
    extend(&mut tpm, 11, 0x22);
    let blob = tpm.seal(b"volume master key", &policy(&[7, 11])).unwrap();
    assert_eq!(
        tpm.unseal(&blob, &[7, 11], None).unwrap(),
        b"volume master key"
    );

    // One more measurement into a PCR of the policy: the TPM refuses.
    extend(&mut tpm, 11, 0x33);
    let err = tpm.unseal(&blob, &[7, 11], None).unwrap_err();
    assert!(
        matches!(err, Error::PolicyFailed { code: 0x99D }),
        "{err:?}"
    );

    // A reboot resets the PCRs; replaying the same measurements unseals again.
    tpm.reboot().unwrap();
    let after = tpm.pcr_read(SHA256, &[7, 11]).unwrap();
    assert_eq!(after, vec![(7, vec![0; 32]), (11, vec![0; 32])]);
    extend(&mut tpm, 7, 0x11);
    extend(&mut tpm, 11, 0x22);
    assert_eq!(
        tpm.unseal(&blob, &[7, 11], None).unwrap(),
        b"volume master key"
    );
}

#[test]
fn sealing_to_predicted_values_unseals_once_the_tpm_reaches_them() {
    let mut tpm = Tpm::spawn().unwrap();
    // Predict PCR 7 after one extend of 0x11 from zero: SHA-256(zero || digest).
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update(digest(0x11));
    let predicted: [u8; 32] = h.finalize().into();
    let blob = tpm
        .seal(
            b"secret",
            &SealPolicy {
                expected: Some(vec![predicted]),
                ..policy(&[7])
            },
        )
        .unwrap();
    assert!(matches!(
        tpm.unseal(&blob, &[7], None),
        Err(Error::PolicyFailed { .. })
    ));
    extend(&mut tpm, 7, 0x11);
    assert_eq!(tpm.pcr_read(SHA256, &[7]).unwrap()[0].1, predicted.to_vec());
    assert_eq!(tpm.unseal(&blob, &[7], None).unwrap(), b"secret");
}

#[test]
fn a_blob_from_before_a_clear_or_from_another_tpm_fails_integrity() {
    let mut tpm = Tpm::spawn().unwrap();
    let blob = tpm.seal(b"vmk", &policy(&[7])).unwrap();
    let bytes = blob.to_bytes();

    let mut other = Tpm::spawn().unwrap();
    let moved = swtpm::SealedBlob::from_bytes(&bytes).unwrap();
    let err = other.unseal(&moved, &[7], None).unwrap_err();
    assert!(matches!(err, Error::Integrity { code: 0x1DF }), "{err:?}");

    tpm.clear().unwrap();
    let err = tpm.unseal(&blob, &[7], None).unwrap_err();
    assert!(matches!(err, Error::Integrity { .. }), "{err:?}");
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    let mut tpm = Tpm::spawn().unwrap();
    assert!(matches!(
        tpm.pcr_read(SHA256, &[24]),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        tpm.seal(b"x", &policy(&[])),
        Err(Error::InvalidArgument(_))
    ));
    assert!(swtpm::SealedBlob::from_bytes(&[1, 0, 0]).is_err());
    assert!(swtpm::SealedBlob::from_bytes(&[0xff, 0, 0, 0, 1]).is_err());
}
