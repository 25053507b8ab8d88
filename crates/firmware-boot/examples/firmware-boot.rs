//! Boot real firmware with a named change and write what it measured.
//!
//! ```text
//! cargo run -p firmware-boot --example firmware-boot -- boot --change db-update --out DIR
//! ```
//! writes DIR/eventlog.bin (the firmware's TCG log), DIR/pcrs.json (sha256 PCRs as the
//! kernel printed them), DIR/info.txt and DIR/boot.json (boot time, disk, packages), for
//! `harness eventlog show/diff/predict`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use firmware_boot::{Cache, Change, Sha256Pcrs};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One real boot with a change.
    Boot {
        /// none, db-update, dbx-update, secure-boot-off, firmware-code, option-rom,
        /// boot-order, kernel-cmdline, grub-cfg-line
        #[arg(long, default_value = "none")]
        change: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// The TPM state directory (default: OUT/tpm, fresh).
        #[arg(long)]
        tpm_state: Option<PathBuf>,
        /// Bound on the boot, seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Boot {
            change,
            out,
            tpm_state,
            timeout,
        } => {
            let change = Change::from_name(&change)?;
            let tpm = tpm_state.unwrap_or_else(|| out.join("tpm"));
            boot_and_write(&change, &out, &tpm, Duration::from_secs(timeout))
        }
    }
}

fn boot_and_write(
    change: &Change,
    out: &Path,
    tpm: &Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let cache = Cache::default_location()?;
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;
    let mut req = change.plan(&cache, tpm, &out.join("work"))?;
    req.timeout = timeout;
    let outcome =
        firmware_boot::boot(&req).with_context(|| format!("boot with change {}", change.name()))?;
    std::fs::write(out.join("eventlog.bin"), &outcome.event_log)?;
    std::fs::write(out.join("pcrs.json"), pcrs_json(&outcome.pcrs))?;
    std::fs::write(out.join("info.txt"), &outcome.info)?;
    let summary = serde_json::json!({
        "change": change.name(),
        "boot_seconds": outcome.boot_time.as_secs_f64(),
        "disk": req.disk,
        "firmware_code": req.firmware.code,
        "event_log_bytes": outcome.event_log.len(),
    });
    std::fs::write(
        out.join("boot.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    println!(
        "{}: booted in {:.1} s, {} log bytes, written to {}",
        change.name(),
        outcome.boot_time.as_secs_f64(),
        outcome.event_log.len(),
        out.display()
    );
    Ok(())
}

fn pcrs_json(p: &Sha256Pcrs) -> String {
    let bank: serde_json::Map<String, serde_json::Value> =
        (0..24).map(|i| (i.to_string(), p.hex(i).into())).collect();
    serde_json::to_string_pretty(&serde_json::json!({ "sha256": bank })).unwrap_or_default()
}
