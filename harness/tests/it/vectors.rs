//! Every vector of recovery-password-vectors.json, through the library.

use bitlocker::keywrap::{self, KeyEntry, KeyWrapError, Nonce, WrappedKey};
use bitlocker::{
    stretch_recovery_password, BlockProblem, KeyProtectorId, ParseError, RecoveryPassword,
};

use crate::common::{arr, vectors};

#[test]
fn every_vector_key16_stretch_and_vmk_unwrap() {
    let v = vectors();
    assert_eq!(v.vectors.len(), 5);
    assert_eq!(v.vectors.iter().filter(|x| x.kind == "real").count(), 2);
    let mut guids = 0;
    for x in &v.vectors {
        let pw = RecoveryPassword::parse(&x.recovery_password).unwrap();
        assert_eq!(
            hex::encode(pw.key16()),
            x.key16_hex,
            "{}",
            x.recovery_password
        );
        let key = stretch_recovery_password(&pw, &arr(&x.salt_hex));
        assert_eq!(
            hex::encode(key),
            x.stretched_key_hex,
            "{}",
            x.recovery_password
        );
        let wrapped = WrappedKey {
            nonce: Nonce(arr(&x.nonce_hex)),
            mac: arr(&x.mac_hex),
            ciphertext: hex::decode(&x.ciphertext_hex).unwrap(),
        };
        // The raw CCM plaintext is exactly the payload; the parsed entry is a VMK entry.
        let raw =
            keywrap::ccm_decrypt(&key, &wrapped.nonce, &wrapped.mac, &wrapped.ciphertext).unwrap();
        assert_eq!(hex::encode(&raw), x.vmk_payload_hex);
        let entry = keywrap::unwrap(&key, &wrapped).unwrap();
        assert_eq!(entry.method, keywrap::METHOD_VMK);
        assert_eq!(hex::encode(&entry.key), x.vmk_hex);
        // Our writer produces the same payload bytes and, with the same nonce, the same
        // ciphertext and MAC as Windows.
        let ours = KeyEntry::vmk(arr(&x.vmk_hex));
        assert_eq!(hex::encode(ours.to_bytes().unwrap()), x.vmk_payload_hex);
        assert_eq!(keywrap::wrap(&key, wrapped.nonce, &ours).unwrap(), wrapped);

        if x.kind == "real" {
            let guid = x.protector_guid.as_deref().unwrap();
            let ondisk = x.protector_guid_ondisk_hex.as_deref().unwrap();
            let id: KeyProtectorId = guid.parse().unwrap();
            assert_eq!(hex::encode(id.to_disk_bytes()), ondisk);
            assert_eq!(KeyProtectorId::from_disk_bytes(arr(ondisk)), id);
            assert_eq!(id.first8(), guid[..8].to_ascii_uppercase());
            guids += 1;
        }
    }
    assert_eq!(guids, 2, "both Windows-made vectors carry a protector GUID");
}

#[test]
fn wrong_password_with_valid_checksum_fails_the_mac() {
    let v = vectors();
    let x = &v.vectors[0];
    let right = RecoveryPassword::parse(&x.recovery_password).unwrap();
    // Another valid password: every block still divisible by 11.
    let mut k = right.key16();
    k[0] ^= 1;
    let wrong = RecoveryPassword::from_key16(&k);
    assert!(RecoveryPassword::parse(&wrong.to_string()).is_ok());
    let key = stretch_recovery_password(&wrong, &arr(&x.salt_hex));
    let wrapped = WrappedKey {
        nonce: Nonce(arr(&x.nonce_hex)),
        mac: arr(&x.mac_hex),
        ciphertext: hex::decode(&x.ciphertext_hex).unwrap(),
    };
    assert_eq!(
        keywrap::unwrap(&key, &wrapped).unwrap_err(),
        KeyWrapError::MacMismatch
    );
}

#[test]
fn every_invalid_password_names_its_problem() {
    let v = vectors();
    type Check = Box<dyn Fn(&ParseError) -> bool>;
    let expected: Vec<Check> = vec![
        Box::new(
            |e| matches!(e, ParseError::Block(b) if b.block == 1 && b.problem == BlockProblem::TooLarge { value: 956714 }),
        ),
        Box::new(
            |e| matches!(e, ParseError::Block(b) if b.block == 1 && b.problem == BlockProblem::TooLarge { value: 720896 }),
        ),
        Box::new(
            |e| matches!(e, ParseError::Block(b) if b.block == 1 && matches!(b.problem, BlockProblem::NotDivisibleBy11 { value: 235819, .. })),
        ),
        Box::new(
            |e| matches!(e, ParseError::Block(b) if b.block == 8 && b.problem == BlockProblem::WrongLength { len: 5 }),
        ),
        Box::new(|e| matches!(e, ParseError::WrongBlockCount { count: 7, .. })),
        Box::new(
            |e| matches!(e, ParseError::Block(b) if b.block == 4 && b.problem == BlockProblem::NonDigit { position: 6, found: 'a' }),
        ),
    ];
    assert_eq!(v.invalid_passwords.len(), expected.len());
    for (inv, check) in v.invalid_passwords.iter().zip(&expected) {
        let err = RecoveryPassword::parse(&inv.password).unwrap_err();
        assert!(check(&err), "{} ({}): got {err:?}", inv.password, inv.why);
    }
}
