//! Key protector IDs and types.
//!
//! A key protector ID is a GUID shown as `{24B0AA32-F8D0-40BA-BB05-73A800324C09}`; portals
//! accept its first 8 hex digits (the first group). On disk the first three groups are
//! stored little-endian (domain.md; checked against `protector_guid_ondisk_hex`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A key protector ID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyProtectorId(Uuid);

/// A string that is not a protector ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not a key protector ID (expected {{XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}}): {reason}")]
pub struct ProtectorIdError {
    /// What was given.
    pub given: String,
    /// Why it was refused.
    pub reason: String,
}

impl KeyProtectorId {
    /// A random (v4) ID.
    pub fn random<R: rand::Rng + ?Sized>(rng: &mut R) -> Self {
        let mut b = [0u8; 16];
        rng.fill(&mut b);
        Self(uuid::Builder::from_random_bytes(b).into_uuid())
    }

    /// From the display-order bytes.
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    /// The GUID.
    pub fn uuid(&self) -> Uuid {
        self.0
    }

    /// The 16 bytes as stored on disk (first three fields little-endian).
    pub fn to_disk_bytes(&self) -> [u8; 16] {
        self.0.to_bytes_le()
    }

    /// From the 16 on-disk bytes.
    pub fn from_disk_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes_le(bytes))
    }

    /// The first 8 hex digits, uppercase: what a user types into a portal.
    pub fn first8(&self) -> String {
        let mut s = self.to_string();
        s.truncate(9);
        s.split_off(1)
    }
}

impl fmt::Display for KeyProtectorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.hyphenated().to_string().to_ascii_uppercase();
        write!(f, "{{{s}}}")
    }
}

impl fmt::Debug for KeyProtectorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyProtectorId({self})")
    }
}

impl FromStr for KeyProtectorId {
    type Err = ProtectorIdError;
    /// Accepts the display form, with or without braces, in either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let inner = t
            .strip_prefix('{')
            .and_then(|x| x.strip_suffix('}'))
            .unwrap_or(t);
        if inner.len() != 36 || inner.matches('-').count() != 4 {
            return Err(ProtectorIdError {
                given: s.to_owned(),
                reason: "expected 32 hex digits in groups 8-4-4-4-12".into(),
            });
        }
        Uuid::parse_str(inner)
            .map(Self)
            .map_err(|e| ProtectorIdError {
                given: s.to_owned(),
                reason: e.to_string(),
            })
    }
}

impl TryFrom<String> for KeyProtectorId {
    type Error = ProtectorIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<KeyProtectorId> for String {
    fn from(id: KeyProtectorId) -> Self {
        id.to_string()
    }
}

/// Protector types with their on-disk codes (libbde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtectorType {
    /// TPM only.
    Tpm,
    /// Startup key (USB).
    StartupKey,
    /// TPM + PIN.
    TpmAndPin,
    /// 48-digit recovery password.
    RecoveryPassword,
    /// Password (data volumes).
    Password,
}

impl ProtectorType {
    /// The on-disk code.
    pub fn code(self) -> u16 {
        match self {
            Self::Tpm => 0x0100,
            Self::StartupKey => 0x0200,
            Self::TpmAndPin => 0x0500,
            Self::RecoveryPassword => 0x0800,
            Self::Password => 0x2000,
        }
    }

    /// The type of an on-disk code.
    pub fn from_code(code: u16) -> Option<Self> {
        [
            Self::Tpm,
            Self::StartupKey,
            Self::TpmAndPin,
            Self::RecoveryPassword,
            Self::Password,
        ]
        .into_iter()
        .find(|t| t.code() == code)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn display_parse_first8() {
        let id: KeyProtectorId = "{24b0aa32-f8d0-40ba-bb05-73a800324c09}".parse().unwrap();
        assert_eq!(id.to_string(), "{24B0AA32-F8D0-40BA-BB05-73A800324C09}");
        assert_eq!(id.first8(), "24B0AA32");
        assert_eq!(
            "24B0AA32-F8D0-40BA-BB05-73A800324C09"
                .parse::<KeyProtectorId>()
                .unwrap(),
            id
        );
        assert!("24B0AA32F8D040BABB0573A800324C09"
            .parse::<KeyProtectorId>()
            .is_err());
        assert!("{24B0AA32-F8D0-40BA-BB05-73A800324C0G}"
            .parse::<KeyProtectorId>()
            .is_err());
        assert_eq!(KeyProtectorId::from_disk_bytes(id.to_disk_bytes()), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<KeyProtectorId>(&json).unwrap(), id);
    }

    #[test]
    fn type_codes() {
        for t in [
            ProtectorType::Tpm,
            ProtectorType::StartupKey,
            ProtectorType::TpmAndPin,
            ProtectorType::RecoveryPassword,
            ProtectorType::Password,
        ] {
            assert_eq!(ProtectorType::from_code(t.code()), Some(t));
        }
        assert_eq!(ProtectorType::RecoveryPassword.code(), 0x0800);
        assert_eq!(ProtectorType::from_code(0x0801), None);
    }
}
