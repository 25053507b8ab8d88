//! `harness fleet`: many simulated devices and concurrent recoveries against one portal.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::portal::PortalArgs;
use super::CliError;
use crate::fleet::mix::Mix;
use crate::fleet::soak::PortalProcess;
use crate::fleet::tpm::MAX_TPM_SAMPLE;
use crate::fleet::{self, report, FleetOptions, Phase};

/// The largest fleet one run plays (bounded in count).
const MAX_DEVICES: usize = 1_000_000;

/// `harness fleet`.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Simulated devices: each enrolls, escrows a real recovery password and checks in.
    #[arg(long, value_name = "N")]
    pub devices: usize,
    /// How many of them lock out and recover (half through the help desk API, half through
    /// self-service), verify the key against their protector and rotate it.
    #[arg(long, value_name = "M", default_value_t = 0)]
    pub recoveries: usize,
    /// How many of the M locked-out devices (drawn from `--seed`, on both routes) are a real
    /// machine on its own swtpm, as in `harness run`: BitLocker makes their recovery password
    /// (the one escrowed), a Secure Boot db update or `bootdebug on` moves a PCR of the
    /// 7,11 profile so the TPM refuses to unseal, the recovered password is typed on the
    /// recovery screen and must unlock, and after the rotation the next boot must unlock by
    /// TPM. At most M and 16 (one swtpm process each).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub tpm_sample: usize,
    /// Devices in flight at once.
    #[arg(short = 'j', long, value_name = "C", default_value_t = 16)]
    pub jobs: usize,
    /// After enrollment, keep the devices that did not lock out busy (`-j` more tasks, back
    /// to back: the operations of `--mix`) while the recoveries run, for this long: `90s`,
    /// `10m`, `1h` (at most 24h). A soak: every operation must succeed; the first and last
    /// minute (the first and last tenth of a soak under 10 minutes) are compared, and the
    /// embedded portal's RSS (growth < 10% after that first window) and write-ahead log
    /// (bounded) are sampled and judged. Keeps one connection per device open.
    #[arg(long, value_name = "T", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// The soak's operations by weight: `checkin` (asks to rotate nothing, or the key the
    /// help desk was shown: then the device escrows a new key and confirms the rotation),
    /// `escrow` (the device sends its current key again: known, `created: false`), `lookup`
    /// (the help desk looks up the device's current key: shown, equal to it). Needs
    /// `--duration`.
    #[arg(
        long,
        value_name = "NAME=WEIGHT,...",
        default_value = "checkin=100",
        value_parser = Mix::parse,
        requires = "duration"
    )]
    pub mix: Mix,
    /// Seed of the fleet (names, key material, who locks out): the same seed plays the same
    /// fleet. Against a long-lived portal use a new seed per run (names and key IDs repeat).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the report as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write JUnit XML here (a test case per device, and one for "no server errors").
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write the HTML report (`index.html`) into this directory.
    #[arg(long, value_name = "DIR")]
    pub html: Option<PathBuf>,
    #[command(flatten)]
    pub portal: PortalArgs,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl FleetArgs {
    fn options(&self) -> Result<FleetOptions, CliError> {
        if self.devices == 0 || self.devices > MAX_DEVICES {
            return Err(CliError::Usage(format!(
                "--devices: between 1 and {MAX_DEVICES}, got {}",
                self.devices
            )));
        }
        if self.recoveries > self.devices {
            return Err(CliError::Usage(format!(
                "--recoveries: at most --devices ({}), got {}",
                self.devices, self.recoveries
            )));
        }
        if self.tpm_sample > self.recoveries.min(MAX_TPM_SAMPLE) {
            return Err(CliError::Usage(format!(
                "--tpm-sample: at most --recoveries ({}) and {MAX_TPM_SAMPLE}, got {}",
                self.recoveries, self.tpm_sample
            )));
        }
        if self.jobs == 0 {
            return Err(CliError::Usage("-j: at least 1".into()));
        }
        Ok(FleetOptions {
            devices: self.devices,
            recoveries: self.recoveries,
            tpm_sample: self.tpm_sample,
            jobs: self.jobs,
            seed: self.seed,
            duration: self.duration,
            mix: self.mix,
            portal: None,
        })
    }
}

/// `harness fleet`: exit 0 when every device got its expected verdict and no call got a
/// 5xx; 1 otherwise (wrong key, lost escrow, 5xx, ...); 2 on bad usage.
pub fn run(args: &FleetArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let mut options = args.options()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The embedded portal lives until the end of this function (dropped: killed, reaped).
    let (target, embedded) = args.portal.start(&runtime)?;
    options.portal = embedded.as_ref().and_then(|portal| {
        Some(PortalProcess {
            pids: portal.replicas.iter().map(|r| r.pid()).collect(),
            data_dir: portal.replicas.first()?.data_dir(),
            store_in_data_dir: args.portal.database_url.is_none(),
        })
    });

    let total = (options.devices + options.recoveries.min(options.devices)) as u64;
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress_bar = bar.clone();
    let soak_check_ins = std::sync::atomic::AtomicU64::new(0);
    let progress: fleet::Progress = Arc::new(move |phase| match phase {
        Phase::Enroll => {
            progress_bar.inc(1);
            progress_bar.set_message("enroll + escrow + check in");
        }
        Phase::Recover => {
            progress_bar.inc(1);
            progress_bar.set_message("recover + verify + rotate");
        }
        Phase::CheckIn => {
            let n = soak_check_ins.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n % 100 == 0 {
                progress_bar.set_message(format!("soak: {n} operations"));
            }
        }
    });
    let result = runtime.block_on(fleet::run(&target, &options, progress));
    bar.finish_and_clear();
    let report = result.map_err(CliError::Fleet)?;

    write!(out, "{}", report::summary(&report))?;
    if let Some(path) = &args.json {
        std::fs::write(path, report::json(&report).map_err(CliError::FleetReport)?)?;
    }
    if let Some(path) = &args.junit {
        std::fs::write(path, report::junit(&report).map_err(CliError::FleetReport)?)?;
    }
    if let Some(dir) = &args.html {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("index.html"), report::html(&report))?;
    }
    if !report.passed() {
        return Err(CliError::FleetFailed {
            failed: report.failed_devices().count(),
            total: report.devices,
            server_errors: report.server_errors(),
            soak: if report.soak.as_ref().is_some_and(|s| !s.passed()) {
                ", soak bounds broken (RSS growth or WAL)"
            } else {
                ""
            },
        });
    }
    Ok(())
}

/// `90s`, `10m`, `1h`, or plain seconds; between 1 s and 24 h.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => {
            return Err(format!(
                "{text:?}: expected a number and s, m or h, e.g. 10m"
            ))
        }
    };
    let secs = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|s| (1..=24 * 3600).contains(s))
        .ok_or_else(|| format!("{text:?}: between 1s and 24h"))?;
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn durations_in_seconds_minutes_hours_and_bounded() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        for bad in ["0s", "25h", "10 minutes", "m", "-3s", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
