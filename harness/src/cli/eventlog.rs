//! `harness eventlog show|replay|diff|predict`: real measured-boot logs.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Subcommand;

use device::predict::{self, PredictError};
use device::replay::{replay_on_tpm, TpmReplayError};
use device::ChangeKind;
use device::Profile;
use eventlog::describe::describe;
use eventlog::diff::LogDiff;
use eventlog::tcg::TcgLog;
use eventlog::ParseError;

/// `harness eventlog ...`
#[derive(Debug, Subcommand)]
pub enum EventlogCommand {
    /// Decode a TCG event log (crypto-agile or SHA-1 format): every record, named.
    Show {
        /// The binary log (e.g. C:\Windows\Logs\MeasuredBoot\0000000001-0000000000.log).
        file: PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Compute every PCR of every bank in the log; `--tpm` also extends the digests into a
    /// fresh swtpm and fails (exit 1) if the TPM disagrees.
    Replay {
        /// The binary log.
        file: PathBuf,
        /// Replay into a real (software) TPM too and compare.
        #[arg(long)]
        tpm: bool,
        /// `{"sha256": {"0": "<hex>", ...}, ...}` instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Which PCRs differ between two logs, and the events behind each difference.
    Diff {
        /// The first log.
        a: PathBuf,
        /// The second log.
        b: PathBuf,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Would this change send the machine to BitLocker recovery? Seals a secret to the log's
    /// state at the unseal point on a real swtpm, boots the changed log, tries to unseal.
    /// Exit 0 either way; the verdict is in the output.
    Predict {
        /// The binary log of a good boot.
        file: PathBuf,
        /// Validation profile: 7,11 | 0,2,4,11 | 0,2,4,8,9,10,11 (or legacy).
        #[arg(long, default_value = "7,11", value_parser = parse_profile)]
        profile: Profile,
        /// The change to apply to the log.
        #[arg(long, value_enum)]
        change: ChangeKind,
        /// Write the changed log here (to inspect it with `show` or `diff`).
        #[arg(long)]
        write_changed: Option<PathBuf>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn parse_profile(s: &str) -> Result<Profile, String> {
    match s.replace(' ', "").as_str() {
        "7,11" => Ok(Profile::SecureBoot7_11),
        "0,2,4,11" => Ok(Profile::Uefi0_2_4_11),
        "0,2,4,8,9,10,11" | "legacy" => Ok(Profile::Legacy),
        other => Err(format!(
            "unknown profile {other:?}: use 7,11 | 0,2,4,11 | 0,2,4,8,9,10,11 (legacy)"
        )),
    }
}

/// Why an `eventlog` command failed.
#[derive(Debug, thiserror::Error)]
pub enum EventLogCliError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The log does not parse.
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
    /// The replay into the TPM failed or disagrees with the software replay.
    #[error("{0}")]
    Tpm(#[from] TpmReplayError),
    /// The prediction could not be made.
    #[error("{0}")]
    Predict(#[from] PredictError),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
    /// JSON output failed.
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl EventLogCliError {
    /// Exit code: 2 for bad input (unreadable or malformed log, a change the log cannot
    /// take), 1 for a TPM that disagrees or fails, 3 for output errors.
    pub fn exit_code(&self) -> u8 {
        use super::exit_codes;
        match self {
            Self::Read { .. } | Self::Parse { .. } => exit_codes::USAGE,
            Self::Predict(PredictError::Change { .. }) => exit_codes::USAGE,
            Self::Tpm(_) | Self::Predict(_) => exit_codes::FAILED,
            Self::Io(_) | Self::Json(_) => exit_codes::IO,
        }
    }
}

fn load(path: &Path) -> Result<TcgLog, EventLogCliError> {
    let bytes = std::fs::read(path).map_err(|source| EventLogCliError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    TcgLog::parse(&bytes).map_err(|source| EventLogCliError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

fn warnings(log: &TcgLog, out: &mut dyn Write) -> std::io::Result<()> {
    for w in &log.warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(())
}

/// Runs `harness eventlog ...`.
pub fn run(cmd: &EventlogCommand, out: &mut dyn Write) -> Result<(), EventLogCliError> {
    match cmd {
        EventlogCommand::Show { file, json } => {
            let log = load(file)?;
            if *json {
                #[derive(serde::Serialize)]
                struct Shown<'a> {
                    #[serde(flatten)]
                    log: &'a TcgLog,
                    described: Vec<String>,
                }
                let described = log.records.iter().map(describe).collect();
                serde_json::to_writer_pretty(
                    &mut *out,
                    &Shown {
                        log: &log,
                        described,
                    },
                )?;
                writeln!(out)?;
                return Ok(());
            }
            let banks: Vec<&str> = log.banks.iter().map(|b| b.name()).collect();
            writeln!(
                out,
                "{:?} log, banks {}, startup locality {}, {} records",
                log.format,
                banks.join("+"),
                log.startup_locality,
                log.records.len()
            )?;
            for e in &log.records {
                writeln!(
                    out,
                    "#{:<4} @{:<6} PCR{:<2} {}",
                    e.number,
                    e.offset,
                    e.pcr,
                    describe(e)
                )?;
            }
            warnings(&log, out)?;
        }
        EventlogCommand::Replay { file, tpm, json } => {
            let log = load(file)?;
            let pcrs = if *tpm {
                replay_on_tpm(&log)?
            } else {
                log.replay()
            };
            if *json {
                serde_json::to_writer_pretty(&mut *out, &pcrs)?;
                writeln!(out)?;
                return Ok(());
            }
            for (bank, values) in &pcrs.banks {
                writeln!(out, "{bank}:")?;
                for (i, v) in values.iter().enumerate() {
                    writeln!(out, "  {i:>2}: {}", hex::encode(v))?;
                }
            }
            if *tpm {
                writeln!(out, "TPM (swtpm) agrees with the software replay")?;
            }
            warnings(&log, out)?;
        }
        EventlogCommand::Diff { a, b, json } => {
            let (la, lb) = (load(a)?, load(b)?);
            let diff = LogDiff::new(&la, &lb);
            if *json {
                serde_json::to_writer_pretty(&mut *out, &diff)?;
                writeln!(out)?;
            } else {
                write!(out, "{diff}")?;
            }
        }
        EventlogCommand::Predict {
            file,
            profile,
            change,
            write_changed,
            json,
        } => {
            let log = load(file)?;
            let p = predict::predict(&log, *profile, *change)?;
            if let Some(path) = write_changed {
                std::fs::write(path, p.changed_log.to_bytes())?;
            }
            if *json {
                serde_json::to_writer_pretty(&mut *out, &p)?;
                writeln!(out)?;
            } else {
                write!(out, "{p}")?;
            }
        }
    }
    Ok(())
}
