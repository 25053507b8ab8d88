//! The volume master key (VMK): the key every protector wraps and the TPM seals.

use serde::{Deserialize, Serialize};

/// The 32-byte volume master key. Debug never prints it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vmk(#[serde(with = "hex::serde")] [u8; 32]);

impl Vmk {
    /// Wraps raw key bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }
    /// The raw key bytes (to seal into a TPM).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Vmk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vmk(..)")
    }
}
