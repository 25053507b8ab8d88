//! `harness fleet` against real portal processes on loopback: the `make test` size (200
//! devices, 20 recoveries) on the embedded portal, a portal with the `corrupt_key_digit`
//! fault caught as wrong keys, and bad usage.

use std::path::PathBuf;
use std::process::Output;
use std::time::Instant;

use crate::common::{harness, portal_bin, workspace_root};

/// What a `harness fleet` run left: its exit, JSON report, JUnit XML and HTML page.
struct Run {
    out: Output,
    report: serde_json::Value,
    junit: String,
    html: String,
}

/// Runs `harness fleet` with every report.
fn fleet(args: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("fleet.json");
    let junit = dir.path().join("fleet.xml");
    let html = dir.path().join("html");
    let out = harness()
        .arg("fleet")
        .args(args)
        .arg("--quiet")
        .arg("--json")
        .arg(&json)
        .arg("--junit")
        .arg(&junit)
        .arg("--html")
        .arg(&html)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let report = std::fs::read_to_string(&json)
        .map(|text| serde_json::from_str(&text).unwrap())
        .unwrap_or(serde_json::Value::Null);
    Run {
        out,
        report,
        junit: std::fs::read_to_string(&junit).unwrap_or_default(),
        html: std::fs::read_to_string(html.join("index.html")).unwrap_or_default(),
    }
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn op<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["op"] == name)
        .unwrap_or_else(|| panic!("no operation {name} in {report}"))
}

/// The issue's `make test` size: every device escrowed, every recovered key verified against
/// its protector and rotated, no failed call, exit 0.
#[test]
fn fleet_of_200_devices_and_20_recoveries_on_the_embedded_portal() {
    let _ = portal_bin();
    let started = Instant::now();
    let Run {
        out,
        report,
        junit,
        html,
    } = fleet(
        &[
            "--devices",
            "200",
            "--recoveries",
            "20",
            "-j",
            "16",
            "--seed",
            "26",
        ],
        &[],
    );
    println!("200 devices, 20 recoveries: {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        report["verdicts"],
        serde_json::json!({"escrowed": 180, "rotated": 20})
    );
    assert_eq!(report["failures_by_status"], serde_json::json!({}));
    let devices = report["device_reports"].as_array().unwrap();
    assert_eq!(devices.len(), 200);
    let recovered: Vec<_> = devices.iter().filter(|d| !d["route"].is_null()).collect();
    assert_eq!(recovered.len(), 20);
    for d in &recovered {
        assert_eq!(d["key_verified"], true, "{d}");
        assert_eq!(d["verdict"], "rotated", "{d}");
    }
    let by_route = |route: &str| recovered.iter().filter(|d| d["route"] == route).count();
    assert_eq!((by_route("help_desk"), by_route("self_service")), (10, 10));
    assert_eq!(op(&report, "helpdesk_lookup")["count"], 10);
    assert_eq!(op(&report, "self_service_sign_in")["count"], 10);
    assert_eq!(op(&report, "verify")["count"], 20);
    assert_eq!(op(&report, "verify")["failed"], 0);
    assert_eq!(op(&report, "confirm_rotation")["count"], 20);
    // Enrollment escrow + the rotated keys; two check-ins more per rotation.
    assert_eq!(op(&report, "escrow")["count"], 220);
    assert_eq!(op(&report, "check_in")["count"], 240);
    for o in report["operations"].as_array().unwrap() {
        let (p50, p99, max) = (
            o["p50_ms"].as_f64(),
            o["p99_ms"].as_f64(),
            o["max_ms"].as_f64(),
        );
        assert!(p50 <= p99 && p99 <= max && max > Some(0.0), "{o}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("escrowed 180, rotated 20"), "{stdout}");
    assert!(
        junit.contains(r#"tests="201""#) && junit.contains(r#"failures="0""#),
        "{junit}"
    );
    assert!(
        html.contains("<p class=\"pass\">passed</p>") && html.contains("escrowed 180, rotated 20"),
        "{html}"
    );
}

/// `--tpm-sample 2`: two of the six locked-out devices are real machines on their own
/// swtpm. Each escrows the password BitLocker made, is locked out by the TPM after a PCR of
/// its profile moved, unlocks with the password the portal hands out, rotates it, and boots
/// by TPM again; the report flags them and counts them as unlocked.
#[test]
fn a_fleet_with_two_devices_on_a_real_swtpm_unlocks_them_with_the_recovered_keys() {
    let _ = portal_bin();
    let started = Instant::now();
    let Run { out, report, .. } = fleet(
        &[
            "--devices",
            "40",
            "--recoveries",
            "6",
            "--tpm-sample",
            "2",
            "-j",
            "4",
            "--seed",
            "2626",
        ],
        &[],
    );
    println!(
        "40 devices, 6 recoveries, 2 on a swtpm: {:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        report["verdicts"],
        serde_json::json!({"escrowed": 34, "rotated": 6})
    );
    assert_eq!(
        (report["tpm_sample"].clone(), report["tpm_unlocked"].clone()),
        (2.into(), 2.into())
    );
    let devices = report["device_reports"].as_array().unwrap();
    let on_tpm: Vec<_> = devices.iter().filter(|d| d["tpm"] == true).collect();
    assert_eq!(on_tpm.len(), 2, "{report}");
    for d in &on_tpm {
        assert_eq!(d["verdict"], "rotated", "{d}");
        assert_eq!(d["key_verified"], true, "{d}");
    }
    // One of each route: the sample is the first two locked-out devices drawn.
    let mut routes: Vec<_> = on_tpm
        .iter()
        .map(|d| d["route"].as_str().unwrap())
        .collect();
    routes.sort_unstable();
    assert_eq!(routes, ["help_desk", "self_service"]);
    assert_eq!(op(&report, "verify")["count"], 6);
    assert_eq!(op(&report, "confirm_rotation")["count"], 6);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("2 devices on a real swtpm: 2 unlocked"),
        "{stdout}"
    );
}

/// A portal that changes a digit of every key it shows (the failpoints build's
/// `corrupt_key_digit`): every recovery is a wrong key, named as such, and the fleet exits 1.
#[test]
fn a_portal_handing_out_wrong_keys_fails_the_fleet_as_wrong_key() {
    let bin = std::env::var_os("PORTAL_FAILPOINTS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/failpoints/debug/portal-under-test"));
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p portal-under-test --features failpoints --target-dir target/failpoints` (make test does)",
        bin.display()
    );
    let bin = bin.to_string_lossy().into_owned();
    let Run {
        out,
        report,
        junit,
        html,
    } = fleet(
        &[
            "--devices",
            "12",
            "--recoveries",
            "4",
            "-j",
            "4",
            "--tpm-sample",
            "2",
            "--portal-bin",
            &bin,
        ],
        &[("FAILPOINTS", "corrupt_key_digit=return")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert_eq!(
        report["verdicts"],
        serde_json::json!({"escrowed": 8, "wrong_key": 4})
    );
    for d in report["device_reports"].as_array().unwrap() {
        if !d["route"].is_null() {
            assert_eq!(d["key_verified"], false, "{d}");
            assert!(
                d["detail"].as_str().unwrap().contains("does not unlock"),
                "{d}"
            );
        }
    }
    assert_eq!(op(&report, "verify")["failures"]["wrong key"], 4);
    // The devices on a swtpm refuse it too: their volume does not open with it.
    assert_eq!(report["tpm_unlocked"], 0);
    let on_tpm = report["device_reports"].as_array().unwrap().iter();
    let on_tpm: Vec<_> = on_tpm.filter(|d| d["tpm"] == true).collect();
    assert_eq!(on_tpm.len(), 2);
    for d in on_tpm {
        assert_eq!(d["verdict"], "wrong_key", "{d}");
        assert!(
            d["detail"].as_str().unwrap().contains("on its swtpm"),
            "{d}"
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("wrong_key"), "{stdout}");
    assert!(junit.contains(r#"failures="4""#), "{junit}");
    assert!(junit.contains("expected rotated, got wrong_key"), "{junit}");
    assert!(
        html.contains("FAILED")
            && html.contains("4 failed devices")
            && html.contains("does not unlock"),
        "{html}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("4 of 12 devices failed"),
        "{}",
        show(&out)
    );
}

/// The 1-minute soak of `make test` (issue 26): the devices that did not lock out keep
/// checking in while the recoveries run; no call fails, the first and last tenth (6 s) of
/// the soak are compared, the embedded portal's RSS grows less than 10% after the warm-up
/// and its write-ahead log stays bounded.
#[test]
fn a_one_minute_soak_has_no_error_and_bounded_rss_and_wal() {
    let _ = portal_bin();
    let started = Instant::now();
    let Run {
        out, report, junit, ..
    } = fleet(
        &[
            "--devices",
            "40",
            "--recoveries",
            "4",
            "-j",
            "4",
            "--duration",
            "1m",
        ],
        &[],
    );
    let elapsed = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        (60..100).contains(&elapsed.as_secs()),
        "the soak took {elapsed:?}"
    );
    assert_eq!(
        report["verdicts"],
        serde_json::json!({"escrowed": 36, "rotated": 4})
    );
    assert_eq!(report["failures_by_status"], serde_json::json!({}));
    assert_eq!(report["duration_secs"], 60.0);
    // 40 enrollment check-ins and 8 around the rotations; the soak adds many more.
    let check_ins = op(&report, "check_in")["count"].as_u64().unwrap();
    assert!(check_ins > 48 + 100, "{check_ins} check-ins");
    assert_eq!(op(&report, "check_in")["failed"], 0);

    let soak = &report["soak"];
    assert_eq!(soak["windows"], "first and last tenth", "{soak}");
    assert_eq!(soak["window_secs"], 6.0);
    for window in ["first", "last"] {
        let check_in = soak["latency"][window]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["op"] == "check_in")
            .unwrap_or_else(|| panic!("no check-in in the {window} window: {soak}"));
        assert!(check_in["count"].as_u64().unwrap() > 10, "{check_in}");
        assert!(check_in["p50_ms"].as_f64() <= check_in["p99_ms"].as_f64());
    }
    let resources = &soak["resources"];
    let samples = resources["samples"].as_array().unwrap();
    assert!(samples.len() >= 55, "{} samples", samples.len());
    assert!(samples.iter().all(|s| s["rss_kib"].as_u64() > Some(1024)));
    let growth = resources["rss_growth_pct"].as_f64().unwrap();
    assert!(growth < 10.0, "RSS grew {growth}% after the warm-up");
    assert_eq!(resources["rss_ok"], true);
    assert_eq!(resources["wal_bounded"], true);
    assert!(
        resources["wal_max_bytes"].as_u64().unwrap() > 0,
        "{resources}"
    );
    assert!(
        resources["data_dir_soak_end_bytes"].as_u64()
            >= resources["data_dir_soak_start_bytes"].as_u64()
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("soak: first and last tenth"), "{stdout}");
    assert!(
        junit.contains("soak: RSS and WAL bounded") && junit.contains(r#"failures="0""#),
        "{junit}"
    );
    assert!(
        stdout.contains("portal RSS: ") && stdout.contains("bounded"),
        "{stdout}"
    );
}

/// `--mix`: the soak's devices also send their key again and have it looked up by the help
/// desk; every shown key equals the device's and is rotated at its next check-in.
#[test]
fn a_soak_with_a_mix_escrows_again_looks_up_and_rotates_without_error() {
    let _ = portal_bin();
    let Run { out, report, .. } = fleet(
        &[
            "--devices",
            "20",
            "--recoveries",
            "2",
            "-j",
            "4",
            "--duration",
            "8s",
            "--mix",
            "checkin=60,escrow=20,lookup=20",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        report["verdicts"],
        serde_json::json!({"escrowed": 18, "rotated": 2})
    );
    assert_eq!(report["failures_by_status"], serde_json::json!({}));
    // 1 lookup per recovered help desk device; the soak adds many, each rotated once the
    // device next checks in (2 rotations came from the recoveries).
    let lookups = op(&report, "helpdesk_lookup")["count"].as_u64().unwrap();
    let rotations = op(&report, "confirm_rotation")["count"].as_u64().unwrap();
    assert!(lookups > 10, "{lookups} lookups");
    assert!(
        rotations > 10 && rotations <= lookups + 2,
        "{rotations} rotations, {lookups} lookups"
    );
    let escrows = op(&report, "escrow")["count"].as_u64().unwrap();
    assert!(escrows > 22 + rotations, "{escrows} escrows");
}

#[test]
fn fleet_bad_usage_exits_2_naming_the_flag() {
    for (args, flag) in [
        (vec!["--devices", "5", "--recoveries", "6"], "--recoveries"),
        (
            vec!["--devices", "5", "--recoveries", "2", "--tpm-sample", "3"],
            "--tpm-sample",
        ),
        (
            vec![
                "--devices",
                "40",
                "--recoveries",
                "20",
                "--tpm-sample",
                "17",
            ],
            "--tpm-sample",
        ),
        (vec!["--devices", "0"], "--devices"),
        (vec!["--devices", "5", "-j", "0"], "-j"),
        (vec!["--devices", "many"], "--devices"),
        (vec!["--devices", "5", "--duration", "25h"], "--duration"),
        (
            vec![
                "--devices",
                "5",
                "--duration",
                "5s",
                "--mix",
                "checkin=1,reboot=2",
            ],
            "--mix",
        ),
        (vec!["--devices", "5", "--mix", "checkin=1"], "--duration"),
    ] {
        let out = harness().arg("fleet").args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(flag),
            "{args:?}: {}",
            show(&out)
        );
    }
}
