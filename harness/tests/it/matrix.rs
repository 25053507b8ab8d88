//! `matrix:` files through `harness run`: each cell is its own scenario, and a failing cell
//! names its parameters in the run's output and reports.

use crate::common::{harness, workspace_root};

#[test]
fn a_failing_matrix_cell_names_its_profile_and_the_other_cells_still_pass() {
    let dir = tempfile::tempdir().unwrap();
    let name = "matrix-boot-manager-other-signer";
    let text =
        std::fs::read_to_string(workspace_root().join(format!("scenarios/{name}.yaml"))).unwrap();
    // The legacy cell claims PCR 4 (in the profile, so the loader takes it); the BIOS
    // machine measures the boot manager in PCR 10.
    let wrong = text.replace("changed_pcrs: [10]", "changed_pcrs: [4]");
    assert_ne!(text, wrong, "the scenario file changed; update this test");
    std::fs::write(dir.path().join(format!("{name}.yaml")), wrong).unwrap();
    let json = dir.path().join("run.json");
    let out = harness()
        .arg("run")
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let line = |cell: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name}[profile={cell}]")))
            .unwrap_or_else(|| panic!("no line for the {cell} cell:\n{stdout}"))
            .to_string()
    };
    assert!(line("0,2,4,11").contains(" pass "), "{stdout}");
    let failed = line("legacy");
    assert!(
        failed.contains(" FAIL ") && failed.contains("got changed PCRs [10]"),
        "{failed}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let failing: Vec<&str> = report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["failure"].is_null())
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(failing, [format!("{name}[profile=legacy]")]);
}
