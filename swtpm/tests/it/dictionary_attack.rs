use swtpm::{DaParameters, Error, SealPolicy, Tpm};

fn pin_protected(tpm: &mut Tpm, pin: &[u8]) -> swtpm::SealedBlob {
    tpm.seal(
        b"intermediate key",
        &SealPolicy {
            pcrs: vec![7, 11],
            expected: None,
            auth_value: Some(pin.to_vec()),
            dictionary_attack_protected: true,
        },
    )
    .unwrap()
}

#[test]
fn wrong_pins_count_up_to_lockout_and_a_lockout_reset_restores_the_right_pin() {
    let mut tpm = Tpm::spawn().unwrap();
    tpm.set_lockout_auth(b"lockout secret").unwrap();
    let params = DaParameters {
        max_tries: 4,
        recovery_time_secs: 600,
        lockout_recovery_secs: 1000,
    };
    tpm.set_dictionary_attack_parameters(params).unwrap();
    assert_eq!(tpm.dictionary_attack_parameters().unwrap(), params);

    let blob = pin_protected(&mut tpm, b"123456");
    assert_eq!(
        tpm.unseal(&blob, &[7, 11], Some(b"123456")).unwrap(),
        b"intermediate key"
    );
    assert_eq!(tpm.lockout_counter().unwrap(), 0);

    for failures in 1..params.max_tries {
        let err = tpm.unseal(&blob, &[7, 11], Some(b"000000")).unwrap_err();
        assert!(matches!(err, Error::AuthFailed { .. }), "{err:?}");
        assert_eq!(tpm.lockout_counter().unwrap(), failures);
        assert!(!tpm.in_lockout().unwrap());
    }
    // The N-th failure locks the TPM out ...
    let err = tpm.unseal(&blob, &[7, 11], Some(b"000000")).unwrap_err();
    assert!(
        matches!(err, Error::AuthFailed { .. } | Error::LockedOut { .. }),
        "{err:?}"
    );
    assert!(tpm.in_lockout().unwrap());
    // ... and then the right PIN fails too.
    let err = tpm.unseal(&blob, &[7, 11], Some(b"123456")).unwrap_err();
    assert!(matches!(err, Error::LockedOut { code: 0x921 }), "{err:?}");

    tpm.dictionary_attack_lock_reset().unwrap();
    assert_eq!(tpm.lockout_counter().unwrap(), 0);
    assert!(!tpm.in_lockout().unwrap());
    assert_eq!(
        tpm.unseal(&blob, &[7, 11], Some(b"123456")).unwrap(),
        b"intermediate key"
    );
}

#[test]
fn a_lockout_reset_with_the_wrong_lockout_auth_is_refused() {
    let mut tpm = Tpm::spawn().unwrap();
    tpm.set_lockout_auth(b"right").unwrap();
    tpm.assume_lockout_auth(b"wrong");
    let err = tpm.dictionary_attack_lock_reset().unwrap_err();
    assert!(
        matches!(err, Error::AuthFailed { .. } | Error::BadAuth { .. }),
        "{err:?}"
    );
}

#[test]
fn a_wrong_auth_on_a_no_da_object_is_bad_auth_and_not_counted() {
    let mut tpm = Tpm::spawn().unwrap();
    let blob = tpm
        .seal(
            b"s",
            &SealPolicy {
                pcrs: vec![7],
                expected: None,
                auth_value: Some(b"pin".to_vec()),
                dictionary_attack_protected: false,
            },
        )
        .unwrap();
    let err = tpm.unseal(&blob, &[7], Some(b"nip")).unwrap_err();
    assert!(matches!(err, Error::BadAuth { .. }), "{err:?}");
    assert_eq!(tpm.lockout_counter().unwrap(), 0);
}
