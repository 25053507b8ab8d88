//! Issue 27: swtpm killed mid-scenario. The run must fail at a named step whose failure says
//! the TPM is gone, within 2 s of the TPM being asked: no hang, no generic TSS error.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{harness, pids, portal_bin, process_alive};

/// A TPM+PIN laptop whose user types many wrong PINs: each one is a boot on the TPM, so
/// the TPM is in use for a while after the portal phases.
const MANY_WRONG_PINS: &str = "\
name: tpm-gone-mid-scenario
description: swtpm is killed while the user types wrong PINs (issue 27).
device:
  profile: \"7,11\"
  protectors: [tpm_pin, recovery_password]
  pin: \"472918\"
  lockout_threshold: 32
users:
  - name: CONTOSO\\alice
    sign_ins: [local]
change:
  kind: lost_pin
  wrong_pins: 3000
expect:
  recovery: true
  tpm_error: locked_out
recovery:
  via: self_service
  as: CONTOSO\\alice
  reason: Lost PIN/passphrase
  answer: key_shown
";

/// The swtpm processes whose parent is `parent`.
fn swtpm_children(parent: u32) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|&pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            comm.trim() == "swtpm" && ppid == Some(parent)
        })
        .collect()
}

fn wait_until(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

#[test]
fn swtpm_killed_mid_scenario_fails_at_a_named_step_saying_the_tpm_is_gone_within_2_s() {
    let _ = portal_bin();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tpm-gone-mid-scenario.yaml");
    std::fs::write(&file, MANY_WRONG_PINS).unwrap();
    let json = dir.path().join("run.json");
    let mut run = harness()
        .arg("run")
        .arg(&file)
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // The scenario's swtpm, then a moment for the wrong PINs to start.
    let mut swtpm = vec![];
    assert!(
        wait_until(Duration::from_secs(60), || {
            swtpm = swtpm_children(run.id());
            !swtpm.is_empty()
        }),
        "no swtpm child of the harness appeared"
    );
    std::thread::sleep(Duration::from_secs(2));
    for pid in &swtpm {
        let status = Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -9 {pid}");
    }
    assert!(wait_until(Duration::from_secs(2), || swtpm
        .iter()
        .all(|&p| !process_alive(p))));

    // The run ends by itself, failed.
    let mut code = None;
    let ended = wait_until(Duration::from_secs(60), || {
        code = run.try_wait().unwrap().map(|s| s.code());
        code.is_some()
    });
    if !ended {
        let _ = run.kill();
        let _ = run.wait();
        panic!("the harness still runs 60 s after swtpm was killed");
    }
    assert_eq!(code, Some(Some(1)), "the run must fail");

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&json)).unwrap()).unwrap();
    let scenario = &report["scenarios"][0];
    let failure = &scenario["failure"];
    let step = failure["step"].as_str().unwrap();
    let got = failure["got"].as_str().unwrap();
    // Named as the TPM gone, never a generic TSS response code, and saying how swtpm ended
    // whether the death was seen between commands or cut one off mid-way (the swtpm crate
    // maps a TCTI error to the process's exit status).
    assert!(
        got.contains("the TPM is gone: swtpm exited (signal: 9 (SIGKILL))"),
        "step {step:?} got {got:?}"
    );
    // The failing step is the one that asked the TPM: it took under 2 s.
    let failed = scenario["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == step)
        .unwrap();
    let ms = failed["duration"].as_f64().unwrap();
    eprintln!("failed at step {step:?} after {ms:.1} ms: {got}");
    assert!(ms < 2000.0, "step {step:?} took {ms} ms");
}
