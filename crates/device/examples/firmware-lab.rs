//! Boot real firmware with a named change and write what it measured.
//!
//! ```text
//! cargo run -p device --example firmware-lab -- boot --change db-update --out DIR
//! ```
//! writes DIR/eventlog.bin (the firmware's TCG log), DIR/pcrs.json (sha256 PCRs as the
//! kernel printed them), DIR/info.txt and DIR/boot.json (boot time, disk, packages), for
//! `harness eventlog show/diff/predict`.
//!
//! ```text
//! cargo run -p device --example firmware-lab -- matrix --out DIR
//! ```
//! boots every change (one QEMU at a time) into DIR/<change>/ and writes DIR/table.md: per
//! change, the firmware-owned PCRs the harness model (`device::predict::apply` on
//! the real base log) moves and those the real boot moved, and the events behind any
//! disagreement. `table --out DIR` redoes only the table from existing boots.
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
    /// Boot every change, then write the model-vs-reality table.
    Matrix {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Write the model-vs-reality table from the boots already in OUT.
    Table {
        #[arg(long)]
        out: PathBuf,
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
        Cmd::Matrix { out, timeout } => {
            // One device: one TPM state for every boot (PCR values do not depend on it).
            let tpm = out.join("tpm");
            for change in Change::ALL {
                boot_and_write(
                    &change,
                    &out.join(change.name()),
                    &tpm,
                    Duration::from_secs(timeout),
                )?;
            }
            table::write(&out)
        }
        Cmd::Table { out } => table::write(&out),
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

mod table {
    //! The model held to reality, per firmware-owned PCR: the rule and the known
    //! differences are `device::real_firmware`'s ([`firmware_owned`], [`check_model`]), the
    //! same check every boot of a real-firmware scenario device makes. PCR 4 and 8-9 (the
    //! loader chain: Debian's shim/grub/kernel here, Windows' boot manager on a real device)
    //! are shown but not compared. The comparison is of *which* PCRs move, not of their
    //! values: the model's edit (e.g. its db certificate) is not byte-for-byte the real one.

    use std::fmt::Write as _;
    use std::path::Path;

    use anyhow::Context;
    use device::predict::apply;
    use device::real_firmware::{check_model, model_kind};
    use eventlog::diff::LogDiff;
    use eventlog::tcg::TcgLog;
    use firmware_boot::{Change, FIRMWARE_PCRS};

    fn log(dir: &Path) -> anyhow::Result<TcgLog> {
        let path = dir.join("eventlog.bin");
        let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
        TcgLog::parse(&bytes).with_context(|| format!("{}", path.display()))
    }

    fn pcr_list(pcrs: &[u32]) -> String {
        if pcrs.is_empty() {
            "none".to_string()
        } else {
            pcrs.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    pub fn write(out: &Path) -> anyhow::Result<()> {
        let base = log(&out.join(Change::None.name()))?;
        let mut table = String::from(
            "| real change | scenario `change.kind` | model: firmware PCRs moved | real: firmware PCRs moved | real: all PCRs 0-9 moved | agree |\n|---|---|---|---|---|---|\n",
        );
        let mut details = String::new();
        for change in Change::ALL.iter().skip(1) {
            let real_log = log(&out.join(change.name()))?;
            let real_all: Vec<u32> = LogDiff::new(&base, &real_log)
                .pcr_indices()
                .into_iter()
                .filter(|&p| p < 10)
                .collect();
            let kind = model_kind(change);
            let (kind_cell, model_cell, real_cell, agree) = match kind {
                None => {
                    let check = check_model(&base, &base, &real_log, None);
                    let real = pcr_list(&check.real_moved);
                    (
                        "(none)".to_string(),
                        "–".to_string(),
                        real,
                        "no model".to_string(),
                    )
                }
                Some(kind) => {
                    let name = serde_json::to_value(kind)?
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    match apply(&base, kind) {
                        Err(e) => (
                            name,
                            format!("cannot predict: {e}"),
                            "–".into(),
                            "no".into(),
                        ),
                        Ok(model_log) => {
                            let check = check_model(&base, &model_log, &real_log, Some(kind));
                            let agree = if check.disagreements.is_empty() {
                                "yes".to_string()
                            } else if check.holds() {
                                "no, documented".to_string()
                            } else {
                                "**no**".to_string()
                            };
                            if !check.disagreements.is_empty() {
                                let _ = writeln!(details, "- **{}**: {check}", change.name());
                            }
                            (
                                name,
                                pcr_list(&check.model_moved),
                                pcr_list(&check.real_moved),
                                agree,
                            )
                        }
                    }
                }
            };
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} | {} | {} |",
                change.name(),
                kind_cell,
                model_cell,
                real_cell,
                pcr_list(&real_all),
                agree,
            );
        }
        let mut doc = format!(
            "# Model vs real firmware (sha256 bank)\n\nFirmware-owned PCRs compared: {:?} (PCR 7: up to its separator, and the db authority events). Base: {} events.\n\n{table}",
            FIRMWARE_PCRS,
            base.records.len()
        );
        if !details.is_empty() {
            doc.push_str("\n## Disagreements: the events behind them\n\n");
            doc.push_str(&details);
        }
        std::fs::write(out.join("table.md"), &doc)?;
        println!("{doc}");
        Ok(())
    }
}
