//! The stable half of the portal's fuzzing (the CI machines have no nightly for cargo-fuzz):
//! every committed seed of `fuzz/corpus/<target>/` through the very function its fuzz
//! target calls (fuzz/checks.rs, included here), then a bounded proptest of mutated seeds
//! through it. The 10-minute libFuzzer runs are `make fuzz`.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#[path = "../../fuzz/checks.rs"]
mod checks;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    files.sort();
    assert!(!files.is_empty(), "{}: no seeds", dir.display());
    files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display())))
        .collect()
}

/// A seed with a few bytes overwritten, inserted or cut: libFuzzer's simplest mutations.
fn mutated(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let all = seeds(target);
    (
        0..all.len(),
        proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..3), 1..8),
    )
        .prop_map(move |(pick, edits)| {
            let mut bytes = all[pick].clone();
            for (at, byte, kind) in edits {
                let i = usize::from(at) % (bytes.len() + 1);
                match kind {
                    0 if i < bytes.len() => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => bytes.truncate(i),
                }
            }
            bytes
        })
}

#[test]
fn key_id_input_seeds_replay() {
    seeds("key_id_input")
        .iter()
        .for_each(|s| checks::key_id_input(s));
}

#[test]
fn import_lines_seeds_replay() {
    seeds("import_lines")
        .iter()
        .for_each(|s| checks::import_lines(s));
}

#[test]
fn http_bodies_seeds_replay() {
    seeds("http_bodies")
        .iter()
        .for_each(|s| checks::http_bodies(s));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn key_id_input_mutated_seeds(bytes in mutated("key_id_input")) {
        checks::key_id_input(&bytes);
    }

    #[test]
    fn import_lines_mutated_seeds(bytes in mutated("import_lines")) {
        checks::import_lines(&bytes);
    }

    #[test]
    fn http_bodies_mutated_seeds(bytes in mutated("http_bodies")) {
        checks::http_bodies(&bytes);
    }
}
