//! The recovery-password protector of a device that locks out, and the check of a
//! recovered password against it: the real BitLocker stretch (2^20 SHA-256 rounds) and the
//! AES-256-CCM MAC of the wrapped volume master key. One stretch to make the protector, one
//! to check the password the portal handed out; devices that never lock out need neither.

use bitlocker::keywrap::{self, KeyEntry, KeyWrapError, Nonce, WrappedKey};
use bitlocker::{stretch_recovery_password, RecoveryPassword, Salt};

/// A recovery-password protector: its salt and the volume master key wrapped under the
/// stretched password.
#[derive(Debug, Clone)]
pub struct Protector {
    salt: Salt,
    wrapped: WrappedKey,
    vmk: [u8; 32],
}

/// What a recovered password does to the protector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// It unwraps the volume master key: the device unlocks.
    Unlocks,
    /// It does not: why (not a valid password, or the MAC fails).
    WrongKey(String),
}

impl Protector {
    /// Wraps `vmk` under `password` stretched with `salt` (one stretch).
    pub fn new(
        password: &RecoveryPassword,
        salt: Salt,
        nonce: Nonce,
        vmk: [u8; 32],
    ) -> Result<Protector, KeyWrapError> {
        let key = stretch_recovery_password(password, &salt);
        let wrapped = keywrap::wrap(&key, nonce, &KeyEntry::vmk(vmk))?;
        Ok(Protector { salt, wrapped, vmk })
    }

    /// Whether the password text (as the portal showed it) unlocks this protector (one
    /// stretch, then the MAC check, then the unwrapped key compared with the volume's).
    pub fn check(&self, recovered: &str) -> KeyCheck {
        let password = match RecoveryPassword::parse(recovered) {
            Ok(p) => p,
            Err(e) => return KeyCheck::WrongKey(format!("not a valid recovery password: {e}")),
        };
        let key = stretch_recovery_password(&password, &self.salt);
        match keywrap::unwrap(&key, &self.wrapped) {
            Ok(entry) if entry.key32().is_ok_and(|k| k == self.vmk) => KeyCheck::Unlocks,
            Ok(_) => KeyCheck::WrongKey("it unwraps another volume master key".into()),
            Err(e) => KeyCheck::WrongKey(format!("the protector's MAC does not verify: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_escrowed_password_unlocks_and_a_changed_digit_does_not() {
        let password = RecoveryPassword::from_key16(&[7; 16]);
        let protector = Protector::new(&password, [1; 16], Nonce::new(5, 6), [9; 32]).unwrap();
        assert_eq!(protector.check(&password.to_string()), KeyCheck::Unlocks);
        let other = RecoveryPassword::from_key16(&[8; 16]).to_string();
        assert!(matches!(protector.check(&other), KeyCheck::WrongKey(w) if w.contains("MAC")));
        let mut typo = password.to_string();
        typo.replace_range(0..1, if typo.starts_with('9') { "8" } else { "9" });
        assert!(matches!(protector.check(&typo), KeyCheck::WrongKey(_)));
    }
}
