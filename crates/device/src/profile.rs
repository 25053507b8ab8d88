//! BitLocker TPM validation profiles.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The PCRs a TPM protector is sealed to (domain.md; windows-itpro-docs).
///
/// Serde: the PCR list as a string, `"7,11"`, `"0,2,4,11"`, `"0,2,4,8,9,10,11"`; the
/// snake_case names `secure_boot_7_11`, `uefi_0_2_4_11`, `legacy` are accepted too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Profile {
    /// UEFI with Secure Boot: PCR 7, 11 (the default).
    #[default]
    #[serde(rename = "7,11", alias = "secure_boot_7_11")]
    SecureBoot7_11,
    /// Native UEFI without PCR 7 binding: PCR 0, 2, 4, 11.
    #[serde(rename = "0,2,4,11", alias = "uefi_0_2_4_11")]
    Uefi0_2_4_11,
    /// BIOS / CSM: PCR 0, 2, 4, 8, 9, 10, 11.
    #[serde(rename = "0,2,4,8,9,10,11", alias = "legacy")]
    Legacy,
}

impl Profile {
    /// The PCR indices, ascending.
    pub fn pcrs(self) -> &'static [u32] {
        match self {
            Self::SecureBoot7_11 => &[7, 11],
            Self::Uefi0_2_4_11 => &[0, 2, 4, 11],
            Self::Legacy => &[0, 2, 4, 8, 9, 10, 11],
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s: Vec<String> = self.pcrs().iter().map(u32::to_string).collect();
        write!(f, "PCR {}", s.join(","))
    }
}
