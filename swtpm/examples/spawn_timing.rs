//! Prints where the start-up time of a TPM goes: process ready, context, first command.
#![allow(clippy::unwrap_used)]
use std::time::Instant;

fn main() {
    let mut rows = Vec::new();
    for _ in 0..30 {
        let t0 = Instant::now();
        let p = swtpm::SwtpmProcess::spawn().unwrap();
        let t1 = t0.elapsed();
        drop(p);
        let t2 = Instant::now();
        let mut tpm = swtpm::Tpm::spawn().unwrap();
        let t3 = t2.elapsed();
        tpm.pcr_read(swtpm::HashingAlgorithm::Sha256, &[0]).unwrap();
        let t4 = t2.elapsed();
        rows.push((t1, t3, t4));
    }
    rows.sort_by_key(|r| r.2);
    let m = rows[rows.len() / 2];
    println!(
        "median: process ready {:?}, Tpm::spawn {:?}, + first PCR read {:?}",
        m.0, m.1, m.2
    );
}
