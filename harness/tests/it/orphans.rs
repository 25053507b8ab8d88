//! `harness run` of one short scenario, killed with SIGKILL or SIGINT at seeded random
//! moments, run after run: no process of a run outlives it (swtpm, the embedded portal,
//! chromedriver: anything carrying the run's marker in its environment) and no entry stays
//! in its TMPDIR. `scripts/orphans.sh` makes the runs and counts. CI: 20 runs (about a
//! minute); `make orphans`: 1,000 (`HARNESS_ORPHAN_RUNS`).

use std::path::Path;
use std::process::Command;

#[test]
fn killed_harness_runs_leave_no_process_and_no_temp_dir() {
    let runs = std::env::var("HARNESS_ORPHAN_RUNS").unwrap_or_else(|_| "20".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(root.join("scripts/orphans.sh"))
        .args([runs.as_str(), "27", env!("CARGO_BIN_EXE_harness")])
        .current_dir(&root)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}");
    assert!(
        out.status.success(),
        "a killed run left something behind:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains(&format!("orphans: {runs} runs")),
        "{report}"
    );
}
