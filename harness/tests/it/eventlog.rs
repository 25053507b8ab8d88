//! Our event logs against Debian's `tpm2_eventlog` (package tpm2-tools).

use std::collections::BTreeMap;
use std::process::Command;

use device::{Change, Device};
use eventlog::{EventLog, Pcrs};

/// PCR values per bank as `tpm2_eventlog` prints them.
struct ToolOutput {
    banks: BTreeMap<String, BTreeMap<u32, String>>,
    stdout: String,
    /// Its `WARN:` lines (digest vs data mismatches) go to stderr.
    stderr: String,
}

fn tpm2_eventlog(log: &EventLog) -> ToolOutput {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("binary_bios_measurements");
    std::fs::write(&path, log.to_bytes()).unwrap();
    let out = match Command::new("tpm2_eventlog").arg(&path).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "tpm2_eventlog not found: install tpm2-tools (Debian: apt-get install tpm2-tools); CI installs it"
        ),
        Err(e) => panic!("cannot run tpm2_eventlog: {e}"),
    };
    // EV_IPL data is printed as a string even when it is binary (the NTFS boot sector).
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "tpm2_eventlog failed: {stderr}\n{stdout}"
    );
    // YAML tail: "pcrs:", "  sha1:", "    0  : 0x...", "  sha256:", ...
    let mut banks: BTreeMap<String, BTreeMap<u32, String>> = BTreeMap::new();
    let mut bank: Option<String> = None;
    let mut in_pcrs = false;
    for line in stdout.lines() {
        if line == "pcrs:" {
            in_pcrs = true;
            continue;
        }
        if !in_pcrs {
            continue;
        }
        if let Some(name) = line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')) {
            if !name.starts_with(' ') {
                bank = Some(name.to_owned());
                continue;
            }
        }
        if let (Some(b), Some((idx, val))) = (&bank, line.trim().split_once(':')) {
            let idx: u32 = idx.trim().parse().unwrap();
            let val = val.trim().strip_prefix("0x").unwrap().to_ascii_lowercase();
            banks.entry(b.clone()).or_default().insert(idx, val);
        }
    }
    ToolOutput {
        banks,
        stdout,
        stderr,
    }
}

/// The tool's replay equals ours for every PCR it reports, in both banks, and it reports
/// every PCR our log extends.
fn assert_tool_agrees(log: &EventLog, what: &str) {
    let ours: Pcrs = log.replay();
    let tool = tpm2_eventlog(log);
    // tpm2_eventlog checks data against digest for the event types it can; no warnings means
    // our event data and digests agree wherever it looks.
    assert!(!tool.stderr.contains("WARN"), "{what}: {}", tool.stderr);
    let sha256 = tool
        .banks
        .get("sha256")
        .unwrap_or_else(|| panic!("{what}: no sha256 bank in output:\n{}", tool.stdout));
    let sha1 = tool.banks.get("sha1").unwrap();
    let mut extended: Vec<u32> = log
        .events
        .iter()
        .filter(|e| e.is_extended())
        .map(|e| e.pcr)
        .collect();
    extended.sort();
    extended.dedup();
    assert_eq!(
        sha256.keys().copied().collect::<Vec<_>>(),
        extended,
        "{what}"
    );
    for (pcr, value) in sha256 {
        assert_eq!(
            value,
            &hex::encode(ours.sha256(*pcr).unwrap()),
            "{what}: PCR {pcr} sha256"
        );
        assert_eq!(
            &sha1[pcr],
            &hex::encode(ours.sha1(*pcr).unwrap()),
            "{what}: PCR {pcr} sha1"
        );
    }
}

#[test]
fn a_wrong_digest_is_what_tpm2_eventlog_warns_about() {
    // Guards the no-WARN assertions above: the tool does warn, on stderr, when a separator's
    // digest is not the hash of its data.
    let mut e = eventlog::Event::separator(0);
    e.digests = eventlog::Digests::of(b"not the separator");
    let tool = tpm2_eventlog(&EventLog::new(vec![e]));
    assert!(tool.stderr.contains("WARN"), "{}", tool.stderr);
}

#[test]
fn reference_device_log_parses_and_replays_to_the_prediction() {
    let d = Device::default();
    let bytes = d.event_log().to_bytes();
    let parsed = EventLog::parse(&bytes).unwrap();
    assert_eq!(parsed, d.event_log());
    assert_eq!(parsed.replay(), d.predict_pcrs());
    assert_tool_agrees(&parsed, "reference device");
}

#[test]
fn tpm2_eventlog_agrees_after_every_change() {
    // A BIOS boot writes a SHA-1 log instead: checked against the tool in `profiles.rs`.
    for change in Change::catalog() {
        let d = Device::default().with(&change).unwrap();
        assert_tool_agrees(&d.event_log(), &format!("{change:?}"));
    }
}

#[test]
fn tpm2_eventlog_decodes_our_event_data() {
    let tool = tpm2_eventlog(&Device::default().event_log());
    // Structures it decodes: variable names, the CRTM version, actions, the GPT header.
    for needle in [
        "UnicodeName: SecureBoot",
        "UnicodeName: dbx",
        "UnicodeName: BootOrder",
        "Calling EFI Application from Boot Option",
        "EV_EFI_VARIABLE_AUTHORITY",
        "EV_EFI_BOOT_SERVICES_APPLICATION",
        "EV_EFI_GPT_EVENT",
        "EV_EVENT_TAG",
        "EV_COMPACT_HASH",
    ] {
        assert!(
            tool.stdout.contains(needle),
            "missing {needle:?} in:\n{}",
            tool.stdout
        );
    }
    assert!(!tool.stderr.contains("WARN"), "{}", tool.stderr);
}
