//! The BitLocker key stretch (libbde "BDE format"; dislocker `stretch_key.c`; domain.md).
//!
//! An 88-byte structure `{ last[32] = 0, initial[32], salt[16], count: u64 LE = 0 }` is hashed
//! 0x100000 times: `last = SHA-256(structure); count += 1`. The final `last` is an AES-256 key.
//! Recovery passwords use `initial = SHA-256(key16)`; PINs and passwords use
//! `initial = SHA-256(SHA-256(UTF-16LE(secret)))`.
//!
//! Speed: 88 bytes are always two SHA-256 blocks, and the padding is fixed, so we call the
//! compression function directly on a reused buffer instead of a streaming hasher per round.

use sha2::{Digest, Sha256};

/// Rounds of the stretch.
pub const STRETCH_ROUNDS: u64 = 0x10_0000;

/// The 16-byte salt stored with a protector.
pub type Salt = [u8; 16];

/// A stretched key: the AES-256 key that wraps the VMK.
pub type StretchedKey = [u8; 32];

const SHA256_IV: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Runs the stretch loop from `initial` and `salt`.
pub fn stretch(initial: &[u8; 32], salt: &Salt) -> StretchedKey {
    stretch_rounds(initial, salt, STRETCH_ROUNDS)
}

fn stretch_rounds(initial: &[u8; 32], salt: &Salt, rounds: u64) -> StretchedKey {
    // Two 64-byte blocks: [last | initial] and [salt | count | 0x80 | 0.. | bit length 704].
    // Plain arrays and index loops: this crate is not optimised in debug builds, where
    // iterator adapters and `GenericArray` indexing cost more than the compressions.
    let mut blocks = [[0u8; 64]; 2];
    blocks[0][32..64].copy_from_slice(initial);
    blocks[1][..16].copy_from_slice(salt);
    blocks[1][24] = 0x80;
    blocks[1][56..64].copy_from_slice(&(88u64 * 8).to_be_bytes());
    for count in 0..rounds {
        let c = count.to_le_bytes();
        let mut i = 0;
        while i < 8 {
            blocks[1][16 + i] = c[i];
            i += 1;
        }
        let mut state = SHA256_IV;
        for block in &blocks {
            sha2::compress256(&mut state, std::slice::from_ref(block.into()));
        }
        let mut i = 0;
        while i < 8 {
            let be = state[i].to_be_bytes();
            blocks[0][4 * i] = be[0];
            blocks[0][4 * i + 1] = be[1];
            blocks[0][4 * i + 2] = be[2];
            blocks[0][4 * i + 3] = be[3];
            i += 1;
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&blocks[0][..32]);
    out
}

/// The stretched key of a recovery password.
pub fn stretch_recovery_password(password: &super::RecoveryPassword, salt: &Salt) -> StretchedKey {
    let initial: [u8; 32] = Sha256::digest(password.key16()).into();
    stretch(&initial, salt)
}

/// The stretched key of a PIN or password (`initial = SHA-256(SHA-256(UTF-16LE(pin)))`).
pub fn stretch_pin(pin: &str, salt: &Salt) -> StretchedKey {
    let utf16: Vec<u8> = pin.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let initial: [u8; 32] = Sha256::digest(Sha256::digest(utf16)).into();
    stretch(&initial, salt)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// The straightforward definition, for a few rounds, against the fast loop.
    fn reference(initial: &[u8; 32], salt: &Salt, rounds: u64) -> [u8; 32] {
        let mut s = [0u8; 88];
        s[32..64].copy_from_slice(initial);
        s[64..80].copy_from_slice(salt);
        for _ in 0..rounds {
            let h: [u8; 32] = Sha256::digest(s).into();
            s[..32].copy_from_slice(&h);
            let c = u64::from_le_bytes(s[80..88].try_into().unwrap()) + 1;
            s[80..88].copy_from_slice(&c.to_le_bytes());
        }
        s[..32].try_into().unwrap()
    }

    #[test]
    fn compression_matches_plain_sha256_chain() {
        let initial = [7u8; 32];
        let salt = [9u8; 16];
        for rounds in [0, 1, 3, 1000] {
            assert_eq!(
                stretch_rounds(&initial, &salt, rounds),
                reference(&initial, &salt, rounds)
            );
        }
    }
}
