//! `harness run` as CI uses it: the real binary, the real portal binary, real swtpm.

use crate::common::{
    gate_subset_files, harness, pids, portal_bin, process_alive, ready_line, step_kind,
    workspace_root, GATE_SUBSET,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn json_report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap()
}

fn failures(report: &serde_json::Value) -> Vec<(String, String)> {
    report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["failure"].is_null())
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["failure"]["step"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn run_with_reports(extra: &[&str], dir: &Path) -> Output {
    harness()
        .arg("run")
        .args(extra)
        .arg("--json")
        .arg(dir.join("run.json"))
        .arg("--junit")
        .arg(dir.join("junit.xml"))
        .arg("--html")
        .arg(dir.join("html"))
        .output()
        .unwrap()
}

#[test]
fn the_whole_catalog_passes_against_the_embedded_portal_with_reports() {
    let _ = portal_bin();
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_reports(&["-j", "2"], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_report(dir.path());
    let n = report["scenarios"].as_array().unwrap().len();
    assert!(n >= 20, "{n} scenarios");
    assert!(failures(&report).is_empty());
    assert!(
        stdout.contains(&format!("{n} passed, 0 failed")),
        "{stdout}"
    );
    let junit = std::fs::read_to_string(dir.path().join("junit.xml")).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), n);
    assert!(!junit.contains("<failure"));
    let html = std::fs::read_to_string(dir.path().join("html/index.html")).unwrap();
    assert!(
        html.contains("firmware-update-uefi") && html.contains("Why the device went to recovery")
    );

    // The gate's subset must show every kind of step the whole catalog shows.
    let kinds_of = |subset_only: bool| -> BTreeSet<String> {
        report["scenarios"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| !subset_only || GATE_SUBSET.contains(&s["name"].as_str().unwrap()))
            .flat_map(|s| s["steps"].as_array().unwrap())
            .map(|step| step_kind(step["name"].as_str().unwrap()))
            .collect()
    };
    let missing: Vec<String> = kinds_of(false)
        .difference(&kinds_of(true))
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "GATE_SUBSET (tests/it/common.rs) shows no step of these kinds; add a scenario that does: {missing:?}"
    );
}

#[test]
fn a_scenario_whose_expectation_is_wrong_fails_naming_the_step_expected_and_got() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(workspace_root().join("scenarios/firmware-update-uefi.yaml"))
            .unwrap();
    let wrong = text.replace("changed_pcrs: [0]", "changed_pcrs: [4]");
    assert_ne!(text, wrong, "the scenario file changed; update this test");
    let file = dir.path().join("firmware-update-uefi.yaml");
    std::fs::write(&file, wrong).unwrap();
    let out = run_with_reports(&[file.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let report = json_report(dir.path());
    let failure = &report["scenarios"][0]["failure"];
    assert_eq!(failure["step"], "boot after the change");
    assert_eq!(failure["expected"], "changed PCRs [4]");
    assert_eq!(failure["got"], "changed PCRs [0]");
    let junit = std::fs::read_to_string(dir.path().join("junit.xml")).unwrap();
    assert!(
        junit.contains("<failure") && junit.contains("boot after the change"),
        "{junit}"
    );
}

/// The audit expectation is every row of the story, in order: a row the portal wrote for one
/// of the harness's own probes (the absent key ID it compares a refusal with, the
/// rotated-away key it asks for again) cannot stand in for a story row. Here the portal audits Mallory's
/// request for Alice's key `denied`; the file claims `not_found`, which only the harness's
/// absent-key probe produced.
#[test]
fn an_audit_row_only_a_harness_probe_matches_fails_the_audit_step() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(
        workspace_root().join("scenarios/foreign-key-request-refused.yaml"),
    )
    .unwrap();
    let story = "- { source: self_service, outcome: denied }";
    assert!(
        text.contains(story),
        "the scenario file changed; update this test"
    );
    let probe_only = text.replace(story, "- { source: self_service, outcome: not_found }");
    let file = dir.path().join("foreign-key-request-refused.yaml");
    std::fs::write(&file, probe_only).unwrap();
    let out = run_with_reports(&[file.to_str().unwrap()], dir.path());
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report = json_report(dir.path());
    let failure = &report["scenarios"][0]["failure"];
    assert_eq!(failure["step"], "the audit shows each request", "{failure}");
    assert_eq!(
        failure["got"],
        "self_service shown, self_service not_found (harness probe), \
         self_service denied, self_service not_found (harness probe)"
    );
}

/// A refusal that does not come fails at the refusal's own step, naming what came instead
/// (here the expiry page: the user went idle), not at the harness's absent-key probe.
#[test]
fn an_expected_refusal_that_does_not_come_fails_at_the_refusal_step() {
    let dir = tempfile::tempdir().unwrap();
    let text =
        std::fs::read_to_string(workspace_root().join("scenarios/idle-session-expires.yaml"))
            .unwrap();
    let refused = text.replace("answer: expired", "answer: refused");
    assert_ne!(text, refused, "the scenario file changed; update this test");
    let file = dir.path().join("idle-session-expires.yaml");
    std::fs::write(&file, refused).unwrap();
    let out = run_with_reports(&[file.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let report = json_report(dir.path());
    let failure = &report["scenarios"][0]["failure"];
    assert_eq!(
        failure["step"], "a foreign key ID is answered exactly like an absent one",
        "{failure}"
    );
    assert!(
        failure["got"]
            .as_str()
            .unwrap()
            .starts_with("expired (the expiry page)"),
        "{failure}"
    );
}

#[test]
fn a_catalog_with_one_bad_file_names_it_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        workspace_root().join("scenarios/control-reboot.yaml"),
        dir.path().join("control-reboot.yaml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "name: bad\ndescription: x\ndevise: {}\n",
    )
    .unwrap();
    let out = harness().arg("run").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml:3:1"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing ran: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn an_unreachable_portal_url_is_exit_code_2() {
    let out = harness()
        .args([
            "run",
            "--filter",
            "control-reboot",
            "--portal-url",
            "https://127.0.0.1:9",
            "--admin-token",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A portal started on its own, as an operator would, and gated by URL.
struct SeparatePortal {
    child: Child,
    url: String,
    ca: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl SeparatePortal {
    fn start(bin: &Path, env: &[(&str, &str)]) -> SeparatePortal {
        let dir = tempfile::tempdir().unwrap();
        let token = Command::new(bin)
            .args(["admin", "bootstrap", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(token.status.success());
        let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
        let config = dir.path().join("config.json");
        std::fs::write(
            &config,
            r#"{"argon2":{"m_cost_kib":64,"t_cost":1,"p_cost":1}}"#,
        )
        .unwrap();
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .arg("--config")
            .arg(&config)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let ready = ready_line(&mut child, "the separate portal");
        SeparatePortal {
            child,
            url: ready["url"].as_str().unwrap().to_string(),
            ca: ready["ca_cert"].as_str().unwrap().to_string(),
            token,
            _dir: dir,
        }
    }

    fn args(&self) -> Vec<String> {
        vec![
            "--portal-url".into(),
            self.url.clone(),
            "--portal-ca".into(),
            self.ca.clone(),
            "--admin-token".into(),
            self.token.clone(),
        ]
    }
}

impl Drop for SeparatePortal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes whose environment carries `marker` (children inherit it): what a run left.
fn processes_with(marker: &str) -> Vec<u32> {
    let needle = format!("HARNESS_TEST_MARKER={marker}");
    pids()
        .into_iter()
        .filter(|pid| {
            process_alive(*pid)
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .map(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
                    .unwrap_or(false)
        })
        .collect()
}

fn eventually_none(marker: &str, within: Duration) -> Vec<u32> {
    let deadline = Instant::now() + within;
    loop {
        let left = processes_with(marker);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn no_swtpm_or_portal_is_left_after_a_run_a_failure_or_ctrl_c() {
    // A passing run.
    let marker = format!("pass-{}", std::process::id());
    let out = harness()
        .args(["run", "--filter", "control-reboot"])
        .env("HARNESS_TEST_MARKER", &marker)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        eventually_none(&marker, Duration::from_secs(2)),
        Vec::<u32>::new()
    );

    // Ctrl-C in the middle of a run.
    let marker = format!("sigint-{}", std::process::id());
    let mut child = harness()
        .args(["run", "-j", "2"])
        .env("HARNESS_TEST_MARKER", &marker)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the run has its portal and some TPMs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes_with(&marker).len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        processes_with(&marker).len() >= 3,
        "the run never started its portal and TPMs"
    );
    Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    child.wait().unwrap();
    assert_eq!(
        eventually_none(&marker, Duration::from_secs(2)),
        Vec::<u32>::new()
    );
}

/// The gate must catch a broken portal: each fault point of the `failpoints` build makes
/// the harness fail, naming the scenario and step that caught it. It runs the gate's subset
/// of the catalog (every kind of step, a quarter of the time), once per fault.
#[test]
fn the_gate_catches_every_fault_of_a_broken_portal() {
    let bin = std::env::var_os("PORTAL_FAILPOINTS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/failpoints/debug/portal-under-test"));
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p portal-under-test --features failpoints --target-dir target/failpoints` (make test does)",
        bin.display()
    );
    let faults = [
        (
            "skip_local_signin_check",
            "remote-only-user-help-desk-message",
        ),
        ("never_mark_disclosed", "single-use-key-rotation"),
        ("first_of_many_matches", "several-matches-32-digits"),
        ("no_expiry", "idle-session-expires"),
        ("corrupt_key_digit", "firmware-update-uefi"),
        ("foreign_differs", "foreign-key-request-refused"),
    ];
    // The faulty build with no fault set passes: the faults are what the gate catches.
    let clean = SeparatePortal::start(&bin, &[]);
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = vec!["-j".into(), "2".into()];
    args.extend(gate_subset_files());
    args.extend(clean.args());
    let out = run_with_reports(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        dir.path(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    drop(clean);

    let mut summary = Vec::new();
    for (fault, catcher) in faults {
        let setting = format!("{fault}=return");
        let portal = SeparatePortal::start(&bin, &[("FAILPOINTS", setting.as_str())]);
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = vec!["-j".into(), "2".into()];
        args.extend(gate_subset_files());
        args.extend(portal.args());
        let out = run_with_reports(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            dir.path(),
        );
        let failed = failures(&json_report(dir.path()));
        summary.push(format!("{fault}: {failed:?}"));
        assert_eq!(out.status.code(), Some(1), "{fault} was not caught");
        assert!(
            failed
                .iter()
                .any(|(name, step)| name == catcher && !step.is_empty()),
            "{fault}: expected {catcher} to catch it; failures: {failed:?}"
        );
    }
    println!("{}", summary.join("\n"));
}

/// `--check-volume-with cryptsetup,dislocker`: the device's image is judged by the real
/// tools with the key the portal handed out, and again after the rotation.
#[test]
fn check_volume_with_cryptsetup_and_dislocker_after_a_rotation_scenario() {
    let _ = portal_bin();
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_reports(
        &[
            "scenarios/single-use-key-rotation.yaml",
            "--check-volume-with",
            "cryptsetup,dislocker",
        ],
        dir.path(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_report(dir.path());
    let steps: Vec<(String, bool)> = report["scenarios"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["failure"].is_null(),
            )
        })
        .collect();
    let names: Vec<&str> = steps.iter().map(|(n, _)| n.as_str()).collect();
    let wanted = [
        "cryptsetup bitlkDump lists the portal's key ID",
        "cryptsetup accepts the portal's recovery password",
        "dislocker-file decrypts with the portal's recovery password and the data matches",
        "the device makes a new recovery password",
        "cryptsetup bitlkDump lists the new key ID and not the old",
        "cryptsetup refuses the old recovery password",
        "cryptsetup accepts the new recovery password",
        "dislocker-file decrypts with the new recovery password and the data matches",
    ];
    let mut at = 0;
    for w in wanted {
        let i = names[at..]
            .iter()
            .position(|n| *n == w)
            .unwrap_or_else(|| panic!("step {w:?} missing or out of order in {names:?}"));
        at += i + 1;
    }
    assert!(steps.iter().all(|(_, passed)| *passed), "{steps:?}");
    let junit = std::fs::read_to_string(dir.path().join("junit.xml")).unwrap();
    assert!(!junit.contains("<failure"), "{junit}");
    let html = std::fs::read_to_string(dir.path().join("html/index.html")).unwrap();
    assert!(html.contains("cryptsetup refuses the old recovery password"));
}

/// The Windows 7 scenario (an AES-CBC + Elephant volume) passes end to end, its volume
/// judged by cryptsetup and dislocker with the key the portal showed.
#[test]
fn check_volume_with_cryptsetup_and_dislocker_on_the_elephant_scenario() {
    let _ = portal_bin();
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_reports(
        &[
            "scenarios/windows7-elephant-volume-firmware-flash.yaml",
            "--check-volume-with",
            "cryptsetup,dislocker",
        ],
        dir.path(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_report(dir.path());
    let steps = report["scenarios"][0]["steps"].as_array().unwrap();
    for wanted in [
        "cryptsetup bitlkDump lists the portal's key ID",
        "cryptsetup accepts the portal's recovery password",
        "dislocker-file decrypts with the portal's recovery password and the data matches",
    ] {
        let step = steps
            .iter()
            .find(|s| s["name"] == wanted)
            .unwrap_or_else(|| panic!("step {wanted:?} missing from {steps:?}"));
        assert!(step["failure"].is_null(), "{step}");
    }
}

#[test]
fn check_volume_with_an_unknown_tool_is_exit_code_2_before_anything_runs() {
    let out = harness()
        .args([
            "run",
            "scenarios/single-use-key-rotation.yaml",
            "--check-volume-with",
            "cryptsetup,veracrypt",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("veracrypt"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// A step's reported time is its own work: the boot after the change, and each wrong PIN,
/// run a real boot on swtpm (a TPM reset, the boot's PCR extends, a policy session and an
/// unseal over TCP), which takes well over a millisecond; a step that only judged an
/// outcome computed before it started took microseconds (and showed 0.0 ms in the HTML
/// report).
#[test]
fn boot_steps_report_the_time_of_their_own_boot() {
    let dir = tempfile::tempdir().unwrap();
    let scenarios = workspace_root().join("scenarios");
    let out = run_with_reports(
        &[
            scenarios
                .join("firmware-update-uefi.yaml")
                .to_str()
                .unwrap(),
            scenarios.join("lost-pin-wrong-pins.yaml").to_str().unwrap(),
        ],
        dir.path(),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json_report(dir.path());
    let mut boots = Vec::new();
    for scenario in report["scenarios"].as_array().unwrap() {
        for step in scenario["steps"].as_array().unwrap() {
            let name = step["name"].as_str().unwrap();
            if name == "boot after the change" || name.starts_with("wrong PIN #") {
                boots.push((name.to_string(), step["duration"].as_f64().unwrap()));
            }
        }
    }
    assert!(boots.len() >= 2, "{boots:?}");
    assert!(boots.iter().all(|(_, ms)| *ms >= 1.0), "{boots:?}");
}
