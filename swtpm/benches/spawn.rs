//! Time from nothing to a TPM that answers a command: spawn swtpm, connect, read a PCR.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use swtpm::{HashingAlgorithm, Tpm};

fn spawn_ready(c: &mut Criterion) {
    c.bench_function("swtpm spawn to first PCR read", |b| {
        // Drop (kill + reap + remove the state dir) is not start-up: keep it out of the timing.
        b.iter_with_large_drop(|| {
            let mut tpm = Tpm::spawn().unwrap();
            tpm.pcr_read(HashingAlgorithm::Sha256, &[0]).unwrap();
            tpm
        })
    });
}

criterion_group!(benches, spawn_ready);
criterion_main!(benches);
