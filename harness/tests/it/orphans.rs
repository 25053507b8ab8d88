//! `harness run` of one short scenario, killed with SIGKILL or SIGINT at seeded random
//! moments, run after run: no process of a run outlives it (swtpm, the embedded portal,
//! chromedriver, Chromium: anything carrying the run's marker in its environment) and no
//! entry stays in its TMPDIR. `scripts/orphans.sh` makes the runs and counts. CI: 50 runs
//! and 5 with the browser; `make orphans`: 1,000 (`HARNESS_ORPHAN_RUNS`) and 50
//! (`HARNESS_ORPHAN_BROWSER_RUNS`).

use std::path::Path;
use std::process::Command;

/// Runs `scripts/orphans.sh` for `runs` runs with `env` and returns its report; fails the
/// test if anything was left behind.
fn orphan_pass(runs: &str, env: &[(&str, &str)]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(root.join("scripts/orphans.sh"))
        .args([runs, "27", env!("CARGO_BIN_EXE_harness")])
        .envs(env.iter().copied())
        .current_dir(&root)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{report}");
    assert!(
        out.status.success(),
        "a killed run left something behind:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains(&format!("orphans: {runs} runs, 0 leaked")),
        "{report}"
    );
    report
}

#[test]
fn killed_harness_runs_leave_no_process_and_no_temp_dir() {
    let runs = std::env::var("HARNESS_ORPHAN_RUNS").unwrap_or_else(|_| "50".into());
    orphan_pass(&runs, &[]);
}

#[test]
fn killed_browser_runs_leave_no_chromedriver_no_chromium_and_no_temp_dir() {
    let runs = std::env::var("HARNESS_ORPHAN_BROWSER_RUNS").unwrap_or_else(|_| "5".into());
    // A self-service scenario played in Chromium, killed 0.1-3 s after its chromedriver
    // appears (it lives for a few seconds in a debug build).
    let report = orphan_pass(
        &runs,
        &[
            ("ORPHANS_ARGS", "--browser"),
            ("ORPHANS_SCENARIO", "scenarios/firmware-update-uefi.yaml"),
            ("ORPHANS_WAIT_FOR", "chromedriver"),
        ],
    );
    let with_browser: u32 = report
        .rsplit_once("killed with chromedriver up: ")
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no browser count in {report}"));
    assert!(
        with_browser > 0,
        "no kill met a running chromedriver: the pass proves nothing\n{report}"
    );
}
