//! Independent implementations as judges: Debian's `cryptsetup` (BITLK) and `dislocker`.
//!
//! The runner and the tests ask them whether an image the harness wrote is BitLocker:
//! [`cryptsetup_accepts`] (`cryptsetup open --type bitlk --test-passphrase`, no device
//! mapper needed), [`cryptsetup_dump`] (`bitlkDump`), [`dislocker_decrypts`]
//! (`dislocker-file`, which writes the decrypted volume to a file).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Why a tool could not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    /// The tool is not installed.
    #[error(
        "{tool} not found: install the Debian package {package} (scripts/install-system-deps.sh)"
    )]
    Missing {
        /// Executable.
        tool: &'static str,
        /// Debian package.
        package: &'static str,
    },
    /// Running it failed.
    #[error("running {tool}: {source}")]
    Io {
        /// Executable.
        tool: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// It failed in a way that is not "wrong secret".
    #[error("{tool} failed (exit status {status}): {stderr}")]
    Failed {
        /// Executable.
        tool: &'static str,
        /// Exit status.
        status: String,
        /// Its standard error.
        stderr: String,
    },
}

/// A secret as the tools take it.
#[derive(Debug, Clone, Copy)]
pub enum ToolSecret<'a> {
    /// Recovery password, 8 groups of 6 digits with hyphens.
    RecoveryPassword(&'a str),
    /// User password.
    Password(&'a str),
    /// Path to a .BEK startup key file.
    BekFile(&'a Path),
}

fn find(tool: &'static str, package: &'static str) -> Result<std::path::PathBuf, ExternalError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or(ExternalError::Missing { tool, package })
}

/// Whether cryptsetup is installed.
pub fn cryptsetup_available() -> bool {
    find("cryptsetup", "cryptsetup-bin").is_ok()
}

/// Whether dislocker-file is installed.
pub fn dislocker_available() -> bool {
    find("dislocker-file", "dislocker").is_ok()
}

/// `cryptsetup bitlkDump IMAGE`: its standard output.
pub fn cryptsetup_dump(image: &Path) -> Result<String, ExternalError> {
    let tool = "cryptsetup";
    let exe = find(tool, "cryptsetup-bin")?;
    let out = Command::new(exe)
        .arg("bitlkDump")
        .arg(image)
        .output()
        .map_err(|source| ExternalError::Io { tool, source })?;
    if !out.status.success() {
        return Err(ExternalError::Failed {
            tool,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cryptsetup open --type bitlk --test-passphrase IMAGE` with the secret on standard input
/// (or the .BEK as key file). `Ok(false)`: cryptsetup tried every protector and none
/// opened; any other failure (metadata rejected, unsupported) is an error.
pub fn cryptsetup_accepts(image: &Path, secret: ToolSecret<'_>) -> Result<bool, ExternalError> {
    let tool = "cryptsetup";
    let exe = find(tool, "cryptsetup-bin")?;
    let mut cmd = Command::new(exe);
    cmd.args(["open", "--type", "bitlk", "--test-passphrase", "--debug"]);
    let input = match secret {
        ToolSecret::RecoveryPassword(p) | ToolSecret::Password(p) => {
            cmd.arg("--key-file=-");
            Some(p.as_bytes().to_vec())
        }
        ToolSecret::BekFile(f) => {
            cmd.arg(format!("--key-file={}", f.display()));
            None
        }
    };
    cmd.arg(image)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|source| ExternalError::Io { tool, source })?;
    if let Some(mut stdin) = child.stdin.take() {
        if let Some(bytes) = input {
            stdin
                .write_all(&bytes)
                .map_err(|source| ExternalError::Io { tool, source })?;
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|source| ExternalError::Io { tool, source })?;
    // cryptsetup 2.6 exits 2 for a refused secret only when the last protector it tried
    // said EPERM; a failed AES-CCM MAC on the last one gives exit 1 ("wrong or missing
    // parameters"). Its debug log tells the two apart: "No more VMKs to try" means every
    // protector was tried and none opened.
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1 | 2) if log.contains("No more VMKs to try") || log.contains("No key available") => {
            Ok(false)
        }
        _ => Err(ExternalError::Failed {
            tool,
            status: out.status.to_string(),
            stderr: log
                .lines()
                .filter(|l| !l.starts_with("# ") || l.contains("ailed"))
                .collect::<Vec<_>>()
                .join("\n"),
        }),
    }
}

/// What dislocker-file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DislockerOutcome {
    /// It decrypted the volume into the output file.
    pub decrypted: bool,
    /// Its messages (stdout and stderr).
    pub log: String,
}

/// `dislocker-file -V IMAGE -p<pw> OUT` (or `-u<pw>`, `-f BEK`). dislocker-file exits 0
/// even on some failures; success here means exit 0 and an output file as large as the
/// image.
pub fn dislocker_decrypts(
    image: &Path,
    secret: ToolSecret<'_>,
    out: &Path,
) -> Result<DislockerOutcome, ExternalError> {
    let tool = "dislocker-file";
    let exe = find(tool, "dislocker")?;
    let mut cmd = Command::new(exe);
    cmd.arg("-V").arg(image);
    match secret {
        ToolSecret::RecoveryPassword(p) => cmd.arg(format!("-p{p}")),
        ToolSecret::Password(p) => cmd.arg(format!("-u{p}")),
        ToolSecret::BekFile(f) => cmd.arg("-f").arg(f),
    };
    let _ = std::fs::remove_file(out);
    let o = cmd
        .arg("--")
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ExternalError::Io { tool, source })?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let image_len = std::fs::metadata(image)
        .map_err(|source| ExternalError::Io { tool, source })?
        .len();
    let out_len = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(DislockerOutcome {
        decrypted: o.status.success() && out_len > 0 && out_len <= image_len,
        log,
    })
}

/// A VMK keyslot as `cryptsetup bitlkDump` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedProtector {
    /// Its GUID, lowercase with hyphens (cryptsetup's spelling).
    pub guid: String,
    /// cryptsetup's wording, e.g. `VMK protected with recovery passphrase`.
    pub protection: String,
}

/// The VMK keyslots in `cryptsetup bitlkDump` output, in order (the volume GUID and the
/// FVEK are not keyslots of this kind and are left out).
pub fn dumped_protectors(dump: &str) -> Vec<DumpedProtector> {
    let mut out: Vec<DumpedProtector> = Vec::new();
    let mut in_keyslots = false;
    for line in dump.lines() {
        if line.starts_with("Keyslots:") {
            in_keyslots = true;
            continue;
        }
        if !in_keyslots {
            continue;
        }
        if !line.starts_with([' ', '\t']) && !line.trim().is_empty() {
            break; // the next section ("Metadata segments:")
        }
        let field = line.trim();
        if let Some(guid) = field.strip_prefix("GUID:") {
            out.push(DumpedProtector {
                guid: guid.trim().to_ascii_lowercase(),
                protection: String::new(),
            });
        } else if let Some(p) = field.strip_prefix("Protection:") {
            if let Some(last) = out.last_mut() {
                last.protection = p.trim().to_string();
            }
        }
    }
    out
}
