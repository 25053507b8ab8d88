use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong building a boot disk or booting it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program could not be started at all (most often: not installed).
    #[error("cannot run `{program}` ({hint}): {source}")]
    Spawn {
        program: String,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    /// A program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// Reading or writing a file or directory failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An input the boot needs is missing or malformed (a package file, a program's output).
    #[error("{0}")]
    Input(String),
    /// The guest did not print its measurements in time: QEMU and swtpm were killed.
    #[error("the boot did not finish within {timeout:?} (QEMU and swtpm killed); serial tail: {serial_tail}")]
    Timeout {
        timeout: Duration,
        serial_tail: String,
    },
    /// QEMU stopped before the guest printed its measurements.
    #[error("QEMU exited ({status}) before the guest printed its measurements; QEMU said: {qemu_output}; serial tail: {serial_tail}")]
    QemuExited {
        status: String,
        qemu_output: String,
        serial_tail: String,
    },
    /// The guest's serial output lacks a section or has a malformed line.
    #[error("serial console output: {0}")]
    Serial(String),
    /// The swtpm control channel or a TPM command failed.
    #[error("TPM: {0}")]
    Tpm(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
