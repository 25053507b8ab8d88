//! The `harness` command line: argument types (clap derive) and one function per
//! subcommand. `main` only parses, calls [`run`], prints the error and exits with
//! [`CliError::exit_code`].
//!
//! To add a subcommand: a variant in [`Command`], a function `fn name(args, out)`, an arm in
//! [`run`]; new failure kinds get a [`CliError`] variant and an exit code in [`exit_codes`].

mod eventlog;
mod fleet;
mod portal;
mod run;
mod volume;

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use fleet::FleetArgs;
pub use run::{CatalogArgs, RunArgs};

use bitlocker::keywrap::{self, KeyWrapError, Nonce, WrappedKey};
use bitlocker::{stretch_recovery_password, ParseError, RecoveryPassword};

/// Exit codes of the `harness` binary.
pub mod exit_codes {
    /// Success.
    pub const OK: u8 = 0;
    /// The input was understood and is wrong: invalid password, MAC failure.
    pub const FAILED: u8 = 1;
    /// Usage error: bad flag value (clap's own usage errors also exit 2).
    pub const USAGE: u8 = 2;
    /// Could not write the output.
    pub const IO: u8 = 3;
}

/// BitLocker recovery test harness.
#[derive(Debug, Parser)]
#[command(name = "harness", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the scenario catalog end to end against a portal (the embedded one by default).
    /// Exit 0: all passed; 1: some scenario failed; 2: bad usage, catalog or portal.
    Run(RunArgs),
    /// Many simulated devices escrow and check in while some recover at once (help desk and
    /// self-service), with latency figures. Exit 0: every device as expected; 1: a wrong key,
    /// a lost escrow, a 5xx or another failed device; 2: bad usage.
    Fleet(FleetArgs),
    /// List the scenarios a run would play.
    List(CatalogArgs),
    /// Check every scenario file; names file:line:column of each problem.
    Validate(CatalogArgs),
    /// Check, stretch or use a 48-digit recovery password.
    #[command(subcommand)]
    RecoveryPassword(RecoveryPasswordCommand),
    /// Key-pair sets for scale tests.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// BitLocker volume images in the real on-disk format (cryptsetup/dislocker open them).
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Real measured-boot (TCG) logs: show, replay (into a TPM too), diff, predict recovery.
    #[command(subcommand)]
    Eventlog(eventlog::EventlogCommand),
}

/// `harness keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Seeded, reproducible key-protector-ID / recovery-password pairs in the portal's bulk
    /// import format (JSON Lines).
    Generate {
        /// How many pairs.
        #[arg(long)]
        count: u64,
        /// RNG seed: the same seed gives the same file.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file (`-` for standard output).
        #[arg(long)]
        out: PathBuf,
        /// Recovery keys per device.
        #[arg(long, default_value_t = 1)]
        keys_per_device: u64,
        /// Distinct users (device d belongs to user d % users; 0: no users).
        #[arg(long, default_value_t = 1000)]
        users: u64,
    },
}

/// `harness recovery-password ...`
#[derive(Debug, Subcommand)]
pub enum RecoveryPasswordCommand {
    /// Validate a recovery password: prints `valid`, or names the bad block and exits 1.
    Check(PasswordArg),
    /// Print the stretched key (32 bytes, lowercase hex) for a salt.
    Stretch {
        #[command(flatten)]
        password: PasswordArg,
        /// The protector's 16-byte salt, hex.
        #[arg(long)]
        salt: String,
    },
    /// Decrypt a VMK protector: prints the 32-byte VMK in hex; exits 1 if the MAC fails.
    Unwrap {
        #[command(flatten)]
        password: PasswordArg,
        /// The protector's 16-byte salt, hex.
        #[arg(long)]
        salt: String,
        /// The 12-byte AES-CCM nonce, hex.
        #[arg(long)]
        nonce: String,
        /// The 16-byte AES-CCM MAC, hex.
        #[arg(long)]
        mac: String,
        /// The encrypted key entry, hex.
        #[arg(long)]
        ciphertext: String,
    },
}

/// A recovery password given as one argument or as several (blocks separated by spaces).
#[derive(Debug, Args)]
pub struct PasswordArg {
    /// 48 digits, with hyphens, spaces or no separators.
    #[arg(required = true, num_args = 1.., value_name = "PASSWORD")]
    pub password: Vec<String>,
}

impl PasswordArg {
    fn text(&self) -> String {
        self.password.join(" ")
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The recovery password is not valid.
    #[error("invalid recovery password: {0}")]
    InvalidPassword(#[from] ParseError),
    /// A hex flag could not be decoded or has the wrong length.
    #[error("{flag}: {reason}")]
    BadHex { flag: &'static str, reason: String },
    /// The key did not decrypt the protector.
    #[error("unwrap failed: the MAC does not verify, so the recovery password (or salt, nonce, MAC, ciphertext) is wrong: {0}")]
    Unwrap(#[source] KeyWrapError),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
    /// A scenario file is bad (every bad file is listed with file:line:column).
    #[error("{0}")]
    Catalog(#[from] crate::scenario::CatalogError),
    /// A `--filter` expression is bad.
    #[error("--filter: {0}")]
    Filter(#[from] crate::scenario::FilterError),
    /// The portal could not be started or reached.
    #[error("portal: {0}")]
    Portal(#[from] portal_client::PortalError),
    /// A report could not be written.
    #[error("{0}")]
    Report(#[from] crate::runner::report::ReportError),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// A `harness volume` command failed.
    #[error("{0}")]
    Volume(#[source] volume::VolumeCliError),
    /// A `harness eventlog` command failed.
    #[error("{0}")]
    Eventlog(#[source] eventlog::EventLogCliError),
    /// `harness fleet` could not be played (setup failed).
    #[error("{0}")]
    Fleet(#[source] crate::fleet::FleetError),
    /// A `harness fleet` report could not be written.
    #[error("{0}")]
    FleetReport(#[source] crate::fleet::report::FleetReportError),
    /// `harness fleet` finished and some devices failed, the portal answered 5xx, or a
    /// soak's RSS or WAL bound broke.
    #[error(
        "fleet: {failed} of {total} devices failed, {server_errors} server errors (5xx){soak}"
    )]
    FleetFailed {
        failed: usize,
        total: usize,
        server_errors: u64,
        /// `", soak bounds broken (RSS growth or WAL)"` or empty.
        soak: &'static str,
    },
    /// The run finished and some scenarios failed.
    #[error("{failed} of {total} scenarios failed")]
    ScenariosFailed { failed: usize, total: usize },
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::InvalidPassword(_)
            | Self::Unwrap(_)
            | Self::ScenariosFailed { .. }
            | Self::Fleet(_)
            | Self::FleetFailed { .. } => exit_codes::FAILED,
            Self::BadHex { .. }
            | Self::Catalog(_)
            | Self::Filter(_)
            | Self::Portal(_)
            | Self::Usage(_) => exit_codes::USAGE,
            Self::Io(_) | Self::Report(_) | Self::FleetReport(_) => exit_codes::IO,
            Self::Volume(e) => e.exit_code(),
            Self::Eventlog(e) => e.exit_code(),
        }
    }
}

/// Runs a parsed command line, writing results to `out`.
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<(), CliError> {
    match &cli.command {
        Command::RecoveryPassword(cmd) => recovery_password(cmd, out),
        Command::Run(args) => run::run(args, out),
        Command::Fleet(args) => fleet::run(args, out),
        Command::List(args) => run::list(args, out),
        Command::Validate(args) => run::validate(args, out),
        Command::Volume(cmd) => volume::run(cmd, out),
        Command::Eventlog(cmd) => eventlog::run(cmd, out).map_err(CliError::Eventlog),
        Command::Keys(KeysCommand::Generate {
            count,
            seed,
            out: path,
            keys_per_device,
            users,
        }) => {
            let spec = crate::keys::KeySetSpec {
                count: *count,
                seed: *seed,
                keys_per_device: (*keys_per_device).max(1),
                users: *users,
                ..crate::keys::KeySetSpec::default()
            };
            if path.as_os_str() == "-" {
                crate::keys::write_jsonl(&spec, std::io::stdout().lock())?;
            } else {
                let file = std::fs::File::create(path)?;
                let n = crate::keys::write_jsonl(&spec, file)?;
                writeln!(out, "wrote {n} key pairs to {}", path.display())?;
            }
            Ok(())
        }
    }
}

fn hex_bytes<const N: usize>(flag: &'static str, value: &str) -> Result<[u8; N], CliError> {
    let v = hex_vec(flag, value)?;
    <[u8; N]>::try_from(v.as_slice()).map_err(|_| CliError::BadHex {
        flag,
        reason: format!(
            "expected {N} bytes ({} hex digits), got {} bytes",
            2 * N,
            v.len()
        ),
    })
}

fn hex_vec(flag: &'static str, value: &str) -> Result<Vec<u8>, CliError> {
    hex::decode(value.trim()).map_err(|e| CliError::BadHex {
        flag,
        reason: format!("not hex ({e}): {value:?}"),
    })
}

/// `harness recovery-password ...`
pub fn recovery_password(
    cmd: &RecoveryPasswordCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match cmd {
        RecoveryPasswordCommand::Check(pw) => {
            RecoveryPassword::parse(&pw.text())?;
            writeln!(out, "valid")?;
        }
        RecoveryPasswordCommand::Stretch { password, salt } => {
            // Check the flags before the password so a usage error wins over a typo.
            let salt = hex_bytes::<16>("--salt", salt)?;
            let pw = RecoveryPassword::parse(&password.text())?;
            writeln!(
                out,
                "{}",
                hex::encode(stretch_recovery_password(&pw, &salt))
            )?;
        }
        RecoveryPasswordCommand::Unwrap {
            password,
            salt,
            nonce,
            mac,
            ciphertext,
        } => {
            let salt = hex_bytes::<16>("--salt", salt)?;
            let wrapped = WrappedKey {
                nonce: Nonce(hex_bytes::<12>("--nonce", nonce)?),
                mac: hex_bytes::<16>("--mac", mac)?,
                ciphertext: hex_vec("--ciphertext", ciphertext)?,
            };
            let pw = RecoveryPassword::parse(&password.text())?;
            let key = stretch_recovery_password(&pw, &salt);
            let entry = keywrap::unwrap(&key, &wrapped).map_err(CliError::Unwrap)?;
            writeln!(out, "{}", hex::encode(&entry.key))?;
        }
    }
    Ok(())
}
