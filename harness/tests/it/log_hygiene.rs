//! The catalog against a portal given by URL (`--portal-url`), and no recovery password or
//! TPM lockout authorization in the portal's log or in the harness's run output after it
//! (issue 20). It plays the gate's subset, which shows every kind of step the catalog has. The secrets are random and never leave the
//! devices and the portal's store, so the test looks for their shapes: a recovery password is
//! eight groups of six digits, a lockout authorization 32 random bytes (64 hex digits).

use std::process::{Command, Stdio};

use crate::common::{gate_subset_files, harness, portal_bin, ready_line};

/// Recovery passwords (`dddddd-dddddd-…`, 8 groups, or the 48 digits run together).
fn recovery_password_shapes(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() || (i > 0 && bytes[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        let run: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        let digits = run.chars().filter(char::is_ascii_digit).count();
        let grouped = run.split('-').take(8).filter(|g| g.len() == 6).count() == 8;
        if grouped || digits >= 48 && !run.contains('-') {
            found.push(run.clone());
        }
        i += run.len().max(1);
    }
    found
}

/// Runs of at least 64 hex digits (a lockout authorization is 32 bytes).
fn long_hex_runs(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut run = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            if run.len() >= 64 {
                found.push(run.clone());
            }
            run.clear();
        }
    }
    found
}

#[test]
fn the_shape_finders_find_what_they_look_for() {
    let pw = "154385-556014-002783-318076-499070-405394-660242-212234";
    assert_eq!(recovery_password_shapes(&format!("x {pw} y")), vec![pw]);
    assert_eq!(
        recovery_password_shapes(&pw.replace('-', "")),
        vec![pw.replace('-', "")]
    );
    assert!(
        recovery_password_shapes("2026-12-06 {0A1B2C3D-0000-1111-2222-333344445555}").is_empty()
    );
    let auth = "5e".repeat(32);
    assert_eq!(long_hex_runs(&format!("auth={auth};")), vec![auth]);
    assert!(long_hex_runs("{0A1B2C3D-0000-1111-2222-333344445555}").is_empty());
}

#[test]
fn the_catalog_passes_by_url_and_leaves_no_secret_in_the_portals_log_or_the_harness_output() {
    // The portal, run apart so its log (stderr, at debug) is ours to read.
    let bin = portal_bin();
    let dir = tempfile::tempdir().unwrap();
    let token = Command::new(&bin)
        .args(["admin", "bootstrap", "--data-dir"])
        .arg(dir.path().join("data"))
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
    let log_path = dir.path().join("portal.log");
    let mut portal = Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let ready = ready_line(&mut portal, "the portal");
    let report = dir.path().join("run.json");
    let run = harness()
        .args(["run", "-j", "2"])
        .args(gate_subset_files())
        .arg("--json")
        .arg(&report)
        .arg("--portal-url")
        .arg(ready["url"].as_str().unwrap())
        .arg("--portal-ca")
        .arg(ready["ca_cert"].as_str().unwrap())
        .arg("--admin-token")
        .arg(&token)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let _ = portal.kill();
    let _ = portal.wait();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(0),
        "the catalog must pass:\n{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(
        report["portal_url"].as_str().unwrap().trim_end_matches('/'),
        ready["url"].as_str().unwrap().trim_end_matches('/'),
        "the report names the portal it gated"
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("/api/agent/keys") && log.contains("/HelpDesk/tpm"),
        "the portal's log saw no escrow or Manage TPM: is it at debug?"
    );
    let outputs = [
        ("the portal's log", log),
        ("the harness's stdout", stdout.into_owned()),
        (
            "the harness's stderr",
            String::from_utf8_lossy(&run.stderr).into_owned(),
        ),
    ];
    for (name, text) in &outputs {
        let pw = recovery_password_shapes(text);
        assert!(pw.is_empty(), "recovery passwords in {name}: {pw:?}");
        let hex = long_hex_runs(text);
        assert!(
            hex.is_empty(),
            "lockout-authorization-sized hex in {name}: {hex:?}"
        );
    }
}
