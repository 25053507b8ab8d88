//! Boot real firmware with a named change and write what it measured.
//!
//! ```text
//! cargo run -p firmware-boot --example firmware-boot -- boot --change db-update --out DIR
//! ```
//! writes DIR/eventlog.bin (the firmware's TCG log), DIR/pcrs.json (sha256 PCRs as the
//! kernel printed them), DIR/info.txt and DIR/boot.json (boot time, disk, packages), for
//! `harness eventlog show/diff/predict`.
//!
//! ```text
//! cargo run -p firmware-boot --example firmware-boot -- matrix --out DIR
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
    //! The model held to reality, per firmware-owned PCR.
    //!
    //! The rule: the firmware-owned PCRs are 0-3, 5 and 7 (what the platform firmware
    //! measures: code, configuration, option ROMs and their configuration, GPT and boot
    //! variables, Secure Boot policy). PCR 4 and 8-9 hold the boot loader chain, which is
    //! Debian's shim/grub/kernel here and Windows' boot manager on a real device, so they are
    //! shown but not compared. The firmware also writes into PCR 4: one EV_EFI_ACTION pair
    //! per boot option it tries ("Calling/Returning from EFI Application from Boot Option");
    //! the last column says whether that sequence changed. The comparison is of *which* PCRs
    //! move, not of their values: the model's edit (e.g. its db certificate) is not
    //! byte-for-byte the real one.

    use std::collections::BTreeSet;
    use std::fmt::Write as _;
    use std::path::Path;

    use anyhow::Context;
    use device::predict::apply;
    use device::ChangeKind;
    use eventlog::diff::{LogDiff, NamedRecord};
    use eventlog::tcg::TcgLog;
    use eventlog::EventType;
    use firmware_boot::{Change, FIRMWARE_PCRS};

    /// The firmware's own PCR 4 events: its boot-option actions, in order.
    fn boot_option_actions(log: &TcgLog) -> Vec<Vec<u8>> {
        log.records
            .iter()
            .filter(|r| r.pcr == 4 && r.event_type == EventType::EV_EFI_ACTION)
            .map(|r| r.data.clone())
            .collect()
    }

    fn yes_no(changed: bool) -> &'static str {
        if changed {
            "changed"
        } else {
            "same"
        }
    }

    /// The harness model's change that means the same as a real one (if any).
    fn model_kind(change: &Change) -> Option<ChangeKind> {
        match change {
            Change::DbUpdate => Some(ChangeKind::SecureBootDbUpdate),
            Change::DbxUpdate => Some(ChangeKind::SecureBootDbxUpdate),
            Change::SecureBootOff => Some(ChangeKind::SecureBootOff),
            Change::FirmwareCode => Some(ChangeKind::FirmwareUpdate),
            Change::OptionRom => Some(ChangeKind::OptionRomAdded),
            Change::BootOrder => Some(ChangeKind::BcdBootOrder),
            Change::None | Change::KernelCmdline | Change::GrubCfgLine => None,
        }
    }

    fn log(dir: &Path) -> anyhow::Result<TcgLog> {
        let path = dir.join("eventlog.bin");
        let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
        TcgLog::parse(&bytes).with_context(|| format!("{}", path.display()))
    }

    fn pcr_list(pcrs: &BTreeSet<u32>) -> String {
        if pcrs.is_empty() {
            "none".to_string()
        } else {
            pcrs.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    fn events(records: &[NamedRecord]) -> String {
        records
            .iter()
            .map(|r| r.description.clone())
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn write(out: &Path) -> anyhow::Result<()> {
        let base = log(&out.join(Change::None.name()))?;
        let owned: BTreeSet<u32> = FIRMWARE_PCRS.iter().map(|&p| p as u32).collect();
        let mut table = String::from(
            "| change | model change | model: firmware PCRs moved | real: firmware PCRs moved | real: all PCRs 0-9 moved | agree | PCR 4 boot-option actions: model / real |\n|---|---|---|---|---|---|---|\n",
        );
        let mut details = String::new();
        for change in Change::ALL.iter().skip(1) {
            let real_log = log(&out.join(change.name()))?;
            let real = LogDiff::new(&base, &real_log);
            let real_all: BTreeSet<u32> = real
                .pcrs
                .iter()
                .map(|d| d.pcr)
                .filter(|&p| p < 10)
                .collect();
            let real_owned: BTreeSet<u32> = real_all.intersection(&owned).copied().collect();
            let base_actions = boot_option_actions(&base);
            let real_actions = yes_no(boot_option_actions(&real_log) != base_actions);
            let (model_name, model_owned, model_diff) = match model_kind(change) {
                None => ("(none)".to_string(), None, None),
                Some(kind) => {
                    let name = format!("{kind:?}");
                    match apply(&base, kind) {
                        Ok(model_log) => {
                            let d = LogDiff::new(&base, &model_log);
                            let moved: BTreeSet<u32> = d
                                .pcrs
                                .iter()
                                .map(|p| p.pcr)
                                .filter(|p| owned.contains(p))
                                .collect();
                            let actions = yes_no(boot_option_actions(&model_log) != base_actions);
                            (name, Some(Ok(moved)), Some((d, actions)))
                        }
                        Err(e) => (name, Some(Err(e.to_string())), None),
                    }
                }
            };
            let model_actions = model_diff.as_ref().map_or("–", |(_, a)| a);
            let (model_cell, agree) = match &model_owned {
                None => ("–".to_string(), "no model".to_string()),
                Some(Err(e)) => (format!("cannot predict: {e}"), "no".to_string()),
                Some(Ok(m)) if *m == real_owned => (pcr_list(m), "yes".to_string()),
                Some(Ok(m)) => (pcr_list(m), "**no**".to_string()),
            };
            let _ = writeln!(
                table,
                "| {} | {} | {} | {} | {} | {} | {} / {} |",
                change.name(),
                model_name,
                model_cell,
                pcr_list(&real_owned),
                pcr_list(&real_all),
                agree,
                model_actions,
                real_actions
            );
            // The events behind every firmware-owned PCR where model and reality part.
            if let (Some(Ok(m)), Some((md, _))) = (&model_owned, &model_diff) {
                for pcr in m.symmetric_difference(&real_owned) {
                    let _ = writeln!(details, "- **{}**, PCR {pcr}:", change.name());
                    for (who, diff) in [("real", &real), ("model", md)] {
                        match diff.pcrs.iter().find(|d| d.pcr == *pcr) {
                            None => {
                                let _ = writeln!(details, "  - {who}: unchanged");
                            }
                            Some(d) => {
                                let _ = writeln!(
                                    details,
                                    "  - {who}: added [{}]; removed [{}]",
                                    events(&d.added),
                                    events(&d.removed)
                                );
                            }
                        }
                    }
                }
            }
        }
        let mut doc = format!(
            "# Model vs real firmware (sha256 bank)\n\nFirmware-owned PCRs compared: {:?}. Base: {} events.\n\n{table}",
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
