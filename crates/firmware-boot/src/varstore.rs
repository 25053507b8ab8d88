//! Real edits of an OVMF varstore with `virt-fw-vars` (PyPI's `virt-firmware`, installed
//! into a venv by scripts/install-firmware-venv.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::command::run;
use crate::error::{Error, Result};

/// The signature owner GUID of the entries this crate adds (any fixed GUID will do).
pub const OWNER_GUID: &str = "a0baa8a3-041d-48a8-bc87-c36d121b5e3d";

/// An edit of the Secure Boot variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarsEdit {
    /// Append an X.509 certificate (PEM file) to db.
    AddDb(PathBuf),
    /// Append a SHA-256 hash (64 hex digits) to dbx.
    AddDbxHash(String),
    /// Turn Secure Boot off (`SecureBootEnable` = 0).
    SecureBootOff,
}

/// Where `virt-fw-vars` is: `$FIRMWARE_BOOT_VENV/bin`, else the venv the install script
/// makes under `$XDG_CACHE_HOME` or `$HOME/.cache`.
pub fn virt_fw_vars() -> Result<PathBuf> {
    let venv = if let Some(v) = std::env::var_os("FIRMWARE_BOOT_VENV") {
        PathBuf::from(v)
    } else if let Some(c) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(c).join("firmware-boot/venv")
    } else if let Some(h) = std::env::var_os("HOME") {
        PathBuf::from(h).join(".cache/firmware-boot/venv")
    } else {
        return Err(Error::Input(
            "no venv for virt-fw-vars: set FIRMWARE_BOOT_VENV".to_string(),
        ));
    };
    let tool = venv.join("bin/virt-fw-vars");
    if tool.is_file() {
        Ok(tool)
    } else {
        Err(Error::Input(format!(
            "{} is missing: run scripts/install-firmware-venv.sh (make deps)",
            tool.display()
        )))
    }
}

/// Writes `output`: the varstore `template` with `edit` applied.
pub fn edit(template: &Path, output: &Path, edit: &VarsEdit) -> Result<()> {
    let mut cmd = Command::new(virt_fw_vars()?);
    cmd.arg("-i").arg(template).arg("-o").arg(output);
    match edit {
        VarsEdit::AddDb(cert) => {
            cmd.args(["--add-db", OWNER_GUID]).arg(cert);
        }
        VarsEdit::AddDbxHash(hash) => {
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::Input(format!(
                    "dbx hash {hash:?} is not 64 hex digits (a SHA-256)"
                )));
            }
            cmd.args(["--add-dbx-hash", OWNER_GUID, hash]);
        }
        VarsEdit::SecureBootOff => {
            cmd.args(["--set-false", "SecureBootEnable"]);
        }
    }
    run(
        &mut cmd,
        "virt-firmware in its venv: scripts/install-firmware-venv.sh",
    )?;
    Ok(())
}
