//! Real varstore edits with virt-fw-vars (from the venv `make deps` installs), read back
//! with virt-fw-vars itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use firmware_boot::varstore::{self, VarsEdit};
use firmware_boot::Firmware;

fn print_verbose(vars: &Path) -> String {
    let out = Command::new(varstore::virt_fw_vars().unwrap())
        .arg("-i")
        .arg(vars)
        .arg("--print")
        .arg("--verbose")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_db_edit_adds_the_certificate_and_secure_boot_off_clears_the_switch() {
    let dir = tempfile::tempdir().unwrap();
    let template = Firmware::ovmf_secure_boot().vars_template;
    assert!(!print_verbose(&template).contains("CN=firmware-boot-test-db"));

    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, include_str!("../data/test-db-cert.pem")).unwrap();
    let db = dir.path().join("db.fd");
    varstore::edit(&template, &db, &VarsEdit::AddDb(cert)).unwrap();
    assert!(print_verbose(&db).contains("CN=firmware-boot-test-db"));

    let off = dir.path().join("off.fd");
    varstore::edit(&template, &off, &VarsEdit::SecureBootOff).unwrap();
    // `--verbose` prints `name=SecureBootEnable ...` and the value on the next line.
    let value_of_switch = |vars: &Path| {
        let printed = print_verbose(vars);
        let mut lines = printed.lines();
        lines
            .find(|l| l.starts_with("name=SecureBootEnable"))
            .unwrap();
        lines.next().unwrap().trim().to_string()
    };
    assert_eq!(value_of_switch(&template), "bool: ON");
    assert_eq!(value_of_switch(&off), "bool: off");
}

#[test]
fn a_dbx_hash_that_is_not_sha256_hex_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let err = varstore::edit(
        &Firmware::ovmf_secure_boot().vars_template,
        &dir.path().join("x.fd"),
        &VarsEdit::AddDbxHash("abc".into()),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("\"abc\" is not 64 hex digits"),
        "{err}"
    );
    assert!(!dir.path().join("x.fd").exists());
}
