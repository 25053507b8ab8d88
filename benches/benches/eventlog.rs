//! Parse + replay of a real Windows measured-boot log, and of our own device's log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, Criterion};
use eventlog::tcg::TcgLog;

fn eventlog(c: &mut Criterion) {
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../harness/tests/it/data/eventlogs/"
    );
    let windows =
        std::fs::read(format!("{data}go-attestation-windows_gcp_shielded_vm.log")).unwrap();
    let ubuntu = std::fs::read(format!("{data}tpm2-tools-event-gce-ubuntu-2104-log.bin")).unwrap();
    let ours = device::Device::default().event_log().to_bytes();
    // A "typical" Windows log has hundreds of events: the real one has 21 records (43 KB);
    // Windows writes one file per boot with its SIPA records, so repeat its PCR 11-14 part.
    let w = TcgLog::parse(&windows).unwrap();
    let mut big = w.clone();
    let tail: Vec<_> = w.records.iter().filter(|r| r.pcr >= 11).cloned().collect();
    while big.records.len() < 500 {
        big.records.extend(tail.iter().cloned());
    }
    let big = big.to_bytes();
    let n = TcgLog::parse(&big).unwrap().records.len();
    eprintln!("windows x: {n} records, {} bytes", big.len());

    let mut g = c.benchmark_group("eventlog_parse_replay");
    for (name, bytes) in [
        ("windows_gcp_21_records", &windows),
        ("windows_500_records", &big),
        ("ubuntu_3_banks", &ubuntu),
        ("own_device", &ours),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let log = TcgLog::parse(std::hint::black_box(bytes)).unwrap();
                std::hint::black_box(log.replay())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, eventlog);
criterion_main!(benches);
