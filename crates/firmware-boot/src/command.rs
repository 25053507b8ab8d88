//! Running the Debian tools this crate drives (apt, dpkg-deb, sfdisk, mkfs.vfat, mtools,
//! virt-fw-vars, swtpm_setup), with errors that name the command and its stderr.

use std::process::{Command, Output};

use crate::error::{Error, Result};

/// Runs `cmd` to completion; a non-zero exit is an error carrying its stderr.
/// `hint` says which package provides the program, for when it is missing.
pub(crate) fn run(cmd: &mut Command, hint: &'static str) -> Result<Output> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let output = cmd.output().map_err(|source| Error::Spawn {
        program: program.clone(),
        hint,
        source,
    })?;
    if !output.status.success() {
        return Err(Error::Command {
            command: describe(cmd),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output)
}

/// Runs `cmd` and returns its stdout as text.
pub(crate) fn stdout(cmd: &mut Command, hint: &'static str) -> Result<String> {
    let output = run(cmd, hint)?;
    String::from_utf8(output.stdout)
        .map_err(|_| Error::Input(format!("`{}` printed non-UTF-8 output", describe(cmd))))
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}
