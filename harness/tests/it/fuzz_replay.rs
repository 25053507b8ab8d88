//! The stable half of the recovery-password and scenario-YAML fuzzing (the CI machines have
//! no nightly for cargo-fuzz):
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
fn recovery_password_seeds_replay() {
    seeds("recovery_password")
        .iter()
        .for_each(|s| checks::recovery_password(s));
}

#[test]
fn scenario_yaml_seeds_replay() {
    seeds("scenario_yaml")
        .iter()
        .for_each(|s| checks::scenario_yaml(s));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn recovery_password_mutated_seeds(bytes in mutated("recovery_password")) {
        checks::recovery_password(&bytes);
    }

    #[test]
    fn scenario_yaml_mutated_seeds(bytes in mutated("scenario_yaml")) {
        checks::scenario_yaml(&bytes);
    }
}
