//! Sector decryption throughput of each BitLocker method the harness reads: AES-XTS,
//! AES-CBC and AES-CBC + Elephant diffuser, 128 and 256 bit, over 1 MiB of 512-byte
//! sectors (what `harness volume unlock --out` and the device's volume check run per sector).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bitlocker::fve::{Cipher, SectorCipher};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const SECTOR: usize = 512;
const SPAN: usize = 1 << 20;

fn decrypt(c: &mut Criterion) {
    let fvek: Vec<u8> = (0u8..64).map(|b| b.wrapping_mul(37)).collect();
    let mut group = c.benchmark_group("sector decrypt");
    group.throughput(Throughput::Bytes(SPAN as u64));
    for cipher in [
        Cipher::AesXts128,
        Cipher::AesXts256,
        Cipher::AesCbc128,
        Cipher::AesCbc256,
        Cipher::AesCbcElephant128,
        Cipher::AesCbcElephant256,
    ] {
        let sectors = SectorCipher::new(cipher, &fvek).unwrap();
        let mut data: Vec<u8> = (0..SPAN).map(|i| (i % 251) as u8).collect();
        group.bench_function(
            format!("{} (1 MiB, 512-byte sectors)", cipher.name()),
            |b| {
                b.iter(|| {
                    for (n, s) in data.chunks_exact_mut(SECTOR).enumerate() {
                        sectors.decrypt(n as u64 + 4096, s);
                    }
                    std::hint::black_box(&data);
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, decrypt);
criterion_main!(benches);
