//! The import's parse + validate + seal stage, split (issue 25): the whole stage on one
//! thread (`parse_jsonl` of an input under 1 MiB stays on one thread), and its two
//! cryptographic parts alone, AES-256-GCM sealing and the HMAC fingerprint. What is left
//! of a key's time after them is JSON, validation and allocation.
//!
//!   cargo bench -p benches --bench import

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use portal_under_test::crypto::Sealer;
use portal_under_test::import::parse_jsonl;
use portal_under_test::keyid::format_guid;

/// Keys per `parse_jsonl` call: about 0.8 MB, under its 1 MiB threshold for threads.
const LINES: u64 = 3000;

fn password(i: u64) -> String {
    (0..8u64)
        .map(|b| {
            format!(
                "{:06}",
                (i.wrapping_mul(7919).wrapping_add(b * 131)) % 65536 * 11
            )
        })
        .collect::<Vec<_>>()
        .join("-")
}

fn jsonl(n: u64) -> String {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"device":"PC-{i:08}","user":"CONTOSO\\user{:04}","volume_id":"{{11111111-2222-3333-4444-555555555555}}","key_protector_id":"{}","recovery_password":"{}","protector_type":"recovery_password"}}"#,
                i % 1000,
                format_guid(u128::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)),
                password(i)
            ) + "\n"
        })
        .collect()
}

fn stages(c: &mut Criterion) {
    let sealer = Sealer::from_key(&[7; 32]);
    let text = jsonl(LINES);
    let pw = password(1);
    let aad = 42u128.to_be_bytes();
    // Every line must pass, or the loop would time the first error.
    let parsed = parse_jsonl(&text, &sealer).map(|(rows, _)| rows.len());
    assert_eq!(
        parsed.ok(),
        Some(LINES as usize),
        "the generated lines are valid"
    );
    let mut g = c.benchmark_group("import_stage");
    g.throughput(Throughput::Elements(LINES));
    g.bench_function("parse_validate_seal_one_thread", |b| {
        b.iter(|| parse_jsonl(&text, &sealer).map(|(rows, _)| rows.len()))
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("seal_aes_256_gcm", |b| {
        b.iter(|| sealer.seal(&aad, pw.as_bytes()))
    });
    g.bench_function("fingerprint_hmac", |b| {
        b.iter(|| sealer.fingerprint(&aad, pw.as_bytes()))
    });
    g.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
