//! AES-CBC with the Elephant diffuser: the sector cipher of Windows Vista and 7 (methods
//! 0x8000 and 0x8001), written by us from Niels Ferguson, "AES-CBC + Elephant diffuser: A
//! Disk Encryption Algorithm for Windows Vista" (Microsoft, 2006).
//!
//! The FVEK holds two keys: the AES key at byte 0 and the sector-key key at byte 32 (16
//! bytes each for the 128-bit method, 32 for the 256-bit one). For a sector at byte offset
//! `s`, with `e(s)` the 16-byte little-endian encoding of `s`:
//!
//! - sector key `K_s = E(K_sec, e(s)) || E(K_sec, e(s) with byte 15 = 0x80)` (32 bytes);
//! - encrypt: `P xor K_s` (repeated over the sector), diffuser A, diffuser B, then AES-CBC
//!   under the AES key with `IV = E(K_aes, e(s))`;
//! - decrypt: the reverse.
//!
//! The diffusers work on the sector as little-endian 32-bit words `d[0..n]`. The paper
//! defines them in the decryption direction (the direction that must be fast):
//! A: 5 cycles of `d[i] += d[i-2] ^ (d[i-5] <<< R_A[i mod 4])`, `R_A = [9, 0, 13, 0]`;
//! B: 3 cycles of `d[i] += d[i+2] ^ (d[i+5] <<< R_B[i mod 4])`, `R_B = [0, 10, 0, 25]`;
//! indices mod n, `i` from 0 to n-1 in each cycle. Encryption runs each step backwards with
//! `-=`: the operands are then exactly the values the forward step saw.

use aes::cipher::consts::U16;
use aes::cipher::{BlockDecrypt, BlockEncrypt, BlockSizeUser};

/// Rotations of diffuser A.
const ROT_A: [u32; 4] = [9, 0, 13, 0];
/// Rotations of diffuser B.
const ROT_B: [u32; 4] = [0, 10, 0, 25];
/// Cycles of diffuser A.
const CYCLES_A: usize = 5;
/// Cycles of diffuser B.
const CYCLES_B: usize = 3;
/// Words of the largest sector kept on the stack (4096-byte sectors).
const STACK_WORDS: usize = 1024;

/// The AES block cipher traits the sector modes need.
pub trait Aes: BlockEncrypt + BlockDecrypt + BlockSizeUser<BlockSize = U16> {}
impl<C: BlockEncrypt + BlockDecrypt + BlockSizeUser<BlockSize = U16>> Aes for C {}

/// `E(key, e(byte_offset))`: the CBC IV (under the AES key) and, under the sector-key key,
/// the first half of the sector key.
pub fn offset_block<C: Aes>(cipher: &C, byte_offset: u64, last_byte: u8) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[..8].copy_from_slice(&byte_offset.to_le_bytes());
    block[15] = last_byte;
    let mut b = block.into();
    cipher.encrypt_block(&mut b);
    b.into()
}

/// AES-CBC decryption of a sector with `IV = E(key, e(byte_offset))` (BitLocker's CBC).
pub fn cbc_decrypt<C: Aes>(cipher: &C, byte_offset: u64, buf: &mut [u8]) {
    let mut prev = offset_block(cipher, byte_offset, 0);
    for chunk in buf.chunks_exact_mut(16) {
        let mut cur = [0u8; 16];
        cur.copy_from_slice(chunk);
        let mut b = cur.into();
        cipher.decrypt_block(&mut b);
        for (o, (d, p)) in chunk.iter_mut().zip(b.iter().zip(prev.iter())) {
            *o = d ^ p;
        }
        prev = cur;
    }
}

/// AES-CBC encryption of a sector, the inverse of [`cbc_decrypt`].
pub fn cbc_encrypt<C: Aes>(cipher: &C, byte_offset: u64, buf: &mut [u8]) {
    let mut prev = offset_block(cipher, byte_offset, 0);
    for chunk in buf.chunks_exact_mut(16) {
        let mut b = [0u8; 16];
        for (o, (c, p)) in b.iter_mut().zip(chunk.iter().zip(prev.iter())) {
            *o = c ^ p;
        }
        let mut block = b.into();
        cipher.encrypt_block(&mut block);
        chunk.copy_from_slice(&block);
        prev.copy_from_slice(&block);
    }
}

/// The two keys of an AES-CBC + Elephant FVEK.
pub struct Elephant<C> {
    /// The AES-CBC key.
    data: C,
    /// The key that derives each sector's key.
    sector_key_key: C,
}

impl<C: Aes> Elephant<C> {
    /// From the FVEK's AES key and sector-key key.
    pub fn new(data: C, sector_key_key: C) -> Self {
        Self {
            data,
            sector_key_key,
        }
    }

    /// The 32-byte sector key of the sector at `byte_offset`.
    fn sector_key(&self, byte_offset: u64) -> [u8; 32] {
        let mut k = [0u8; 32];
        k[..16].copy_from_slice(&offset_block(&self.sector_key_key, byte_offset, 0));
        k[16..].copy_from_slice(&offset_block(&self.sector_key_key, byte_offset, 0x80));
        k
    }

    /// Decrypts the sector at `byte_offset` in place (512 or 4096 bytes, as the volume
    /// header allows; any multiple of 16 works).
    pub fn decrypt_sector(&self, byte_offset: u64, buf: &mut [u8]) {
        cbc_decrypt(&self.data, byte_offset, buf);
        with_words(buf, |d| {
            diffuser_b_decrypt(d);
            diffuser_a_decrypt(d);
        });
        xor_sector_key(buf, &self.sector_key(byte_offset));
    }

    /// Encrypts the sector at `byte_offset` in place, the inverse of
    /// [`Elephant::decrypt_sector`].
    pub fn encrypt_sector(&self, byte_offset: u64, buf: &mut [u8]) {
        xor_sector_key(buf, &self.sector_key(byte_offset));
        with_words(buf, |d| {
            diffuser_a_encrypt(d);
            diffuser_b_encrypt(d);
        });
        cbc_encrypt(&self.data, byte_offset, buf);
    }
}

fn xor_sector_key(buf: &mut [u8], key: &[u8; 32]) {
    for chunk in buf.chunks_mut(32) {
        for (b, k) in chunk.iter_mut().zip(key) {
            *b ^= k;
        }
    }
}

/// Runs `f` on the sector as little-endian 32-bit words and writes them back.
fn with_words(buf: &mut [u8], f: impl FnOnce(&mut [u32])) {
    let n = buf.len() / 4;
    let mut stack = [0u32; STACK_WORDS];
    let mut heap = Vec::new();
    let words: &mut [u32] = if n <= STACK_WORDS {
        &mut stack[..n]
    } else {
        heap.resize(n, 0);
        &mut heap
    };
    for (w, b) in words.iter_mut().zip(buf.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    f(words);
    for (w, b) in words.iter().zip(buf.chunks_exact_mut(4)) {
        b.copy_from_slice(&w.to_le_bytes());
    }
}

/// `(i - k) mod n` for `i < n` (the division only near the start of the sector).
fn back(i: usize, k: usize, n: usize) -> usize {
    if i >= k {
        i - k
    } else {
        (i + n - k % n) % n
    }
}

/// `(i + k) mod n` for `i < n` (the division only near the end of the sector).
fn ahead(i: usize, k: usize, n: usize) -> usize {
    if i + k < n {
        i + k
    } else {
        (i + k) % n
    }
}

fn a_term(d: &[u32], i: usize) -> u32 {
    let n = d.len();
    d[back(i, 2, n)] ^ d[back(i, 5, n)].rotate_left(ROT_A[i % 4])
}

fn b_term(d: &[u32], i: usize) -> u32 {
    let n = d.len();
    d[ahead(i, 2, n)] ^ d[ahead(i, 5, n)].rotate_left(ROT_B[i % 4])
}

/// Diffuser A, decryption direction.
pub fn diffuser_a_decrypt(d: &mut [u32]) {
    for _ in 0..CYCLES_A {
        for i in 0..d.len() {
            d[i] = d[i].wrapping_add(a_term(d, i));
        }
    }
}

/// Diffuser A, encryption direction (the inverse of [`diffuser_a_decrypt`]).
pub fn diffuser_a_encrypt(d: &mut [u32]) {
    for _ in 0..CYCLES_A {
        for i in (0..d.len()).rev() {
            d[i] = d[i].wrapping_sub(a_term(d, i));
        }
    }
}

/// Diffuser B, decryption direction.
pub fn diffuser_b_decrypt(d: &mut [u32]) {
    for _ in 0..CYCLES_B {
        for i in 0..d.len() {
            d[i] = d[i].wrapping_add(b_term(d, i));
        }
    }
}

/// Diffuser B, encryption direction (the inverse of [`diffuser_b_decrypt`]).
pub fn diffuser_b_encrypt(d: &mut [u32]) {
    for _ in 0..CYCLES_B {
        for i in (0..d.len()).rev() {
            d[i] = d[i].wrapping_sub(b_term(d, i));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use aes::cipher::KeyInit;
    use aes::{Aes128, Aes256};
    use proptest::prelude::*;

    use super::*;

    /// A sector: `(byte offset, ciphertext, plaintext)`.
    type Vector = (u64, Vec<u8>, Vec<u8>);

    /// The 32-byte key and the sectors.
    fn windows_vectors() -> ([u8; 32], Vec<Vector>) {
        let text = include_str!("elephant_128_vectors.txt");
        let mut key = [0u8; 32];
        let mut out = Vec::new();
        let mut offset = 0;
        let mut cipher = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (k, v) = line.split_once(' ').unwrap();
            match k {
                "key" => hex::decode_to_slice(v, &mut key).unwrap(),
                "byte_offset" => offset = v.parse().unwrap(),
                "cipher" => cipher = hex::decode(v).unwrap(),
                "plain" => out.push((offset, cipher.clone(), hex::decode(v).unwrap())),
                other => panic!("unknown line {other}"),
            }
        }
        (key, out)
    }

    fn elephant128(key: &[u8; 32]) -> Elephant<Aes128> {
        Elephant::new(
            Aes128::new_from_slice(&key[..16]).unwrap(),
            Aes128::new_from_slice(&key[16..]).unwrap(),
        )
    }

    #[test]
    fn windows_7_sectors_decrypt_to_what_dislocker_reads() {
        let (key, vectors) = windows_vectors();
        assert_eq!(vectors.len(), 2);
        let e = elephant128(&key);
        for (offset, cipher, plain) in &vectors {
            let mut buf = cipher.clone();
            e.decrypt_sector(*offset, &mut buf);
            assert!(&buf == plain, "sector at {offset:#x}");
        }
        // The NTFS boot sector, for the reader.
        assert_eq!(&vectors[0].2[3..11], b"NTFS    ");
    }

    #[test]
    fn windows_7_sectors_encrypt_to_the_bytes_windows_wrote() {
        let (key, vectors) = windows_vectors();
        let e = elephant128(&key);
        for (offset, cipher, plain) in &vectors {
            let mut buf = plain.clone();
            e.encrypt_sector(*offset, &mut buf);
            assert!(&buf == cipher, "sector at {offset:#x}");
        }
    }

    #[test]
    fn each_stage_changes_a_one_bit_difference_into_a_wide_one() {
        // Decryption direction: one flipped bit spreads over many words (the diffusers'
        // purpose), so an error in a rotation or an index would show in the vectors above.
        let mut a = [0u32; 128];
        let mut b = a;
        b[64] ^= 1;
        diffuser_b_decrypt(&mut a);
        diffuser_b_decrypt(&mut b);
        diffuser_a_decrypt(&mut a);
        diffuser_a_decrypt(&mut b);
        let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert!(differing > 120, "{differing} of 128 words differ");
    }

    proptest! {
        #[test]
        fn diffusers_invert(words in prop::collection::vec(any::<u32>(), 128..=128)) {
            let mut d = words.clone();
            diffuser_a_encrypt(&mut d);
            diffuser_a_decrypt(&mut d);
            prop_assert_eq!(&d, &words);
            diffuser_b_encrypt(&mut d);
            diffuser_b_decrypt(&mut d);
            prop_assert_eq!(&d, &words);
        }

        #[test]
        fn sectors_round_trip_and_depend_on_their_offset(
            key in any::<[u8; 32]>(),
            sector in prop::collection::vec(any::<u8>(), 512..=512),
            offset in (0u64..1 << 40).prop_map(|s| s * 512),
            big in any::<bool>(),
        ) {
            let e = Elephant::new(
                Aes256::new_from_slice(&key).unwrap(),
                Aes256::new_from_slice(&key.map(|b| b ^ 0x5c)).unwrap(),
            );
            let mut buf = sector.clone();
            if big {
                buf = sector.repeat(8);
            }
            let plain = buf.clone();
            e.encrypt_sector(offset, &mut buf);
            prop_assert_ne!(&buf, &plain);
            let mut elsewhere = buf.clone();
            e.decrypt_sector(offset + 512, &mut elsewhere);
            prop_assert_ne!(&elsewhere, &plain);
            e.decrypt_sector(offset, &mut buf);
            prop_assert_eq!(&buf, &plain);
        }
    }
}
