//! Shared helpers, once for the whole test binary: the workspace root, the `harness` and
//! portal binaries, processes as /proc shows them, and the Windows-made recovery-password
//! vectors.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

/// The workspace root (scenario paths in tests are relative to it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `portal-under-test` binary next to the harness binary (built by the same cargo run).
pub fn portal_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_harness")).with_file_name("portal-under-test");
    assert!(
        bin.exists(),
        "build the portal first: cargo build -p portal-under-test"
    );
    bin
}

/// The real `harness` binary, run from the workspace root with the TSS's own logging off.
pub fn harness() -> Command {
    harness_at(env!("CARGO_BIN_EXE_harness"))
}

/// Runs `cmd` (a `harness run ... --json <json>`), asserts it exits with `code` (showing its
/// output if not), and returns its stdout and the JSON report it wrote.
pub fn run_for_report(
    cmd: &mut Command,
    json: &std::path::Path,
    code: i32,
) -> (String, serde_json::Value) {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    (stdout, report)
}

/// A `harness` binary (the release one, say), run from the workspace root with the TSS's own
/// logging off.
pub fn harness_at(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root())
        .env("TSS2_LOG", "all+none");
    cmd
}

/// Every process id /proc lists now.
pub fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Process `pid`'s state letter (`R`, `S`, `Z`, ...) and process group, if it exists.
pub fn process_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((
        fields.first()?.chars().next()?,
        fields.get(2)?.parse().ok()?,
    ))
}

/// Whether process `pid` runs (exists and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    process_state(pid).is_some_and(|(state, _)| state != 'Z')
}

#[derive(Debug, Deserialize)]
pub struct Vector {
    pub kind: String,
    pub recovery_password: String,
    pub key16_hex: String,
    pub salt_hex: String,
    pub stretched_key_hex: String,
    pub nonce_hex: String,
    pub mac_hex: String,
    pub ciphertext_hex: String,
    pub vmk_payload_hex: String,
    pub vmk_hex: String,
    /// Only the Windows-made ("real") vectors carry a protector GUID.
    pub protector_guid: Option<String>,
    pub protector_guid_ondisk_hex: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Invalid {
    pub password: String,
    pub why: String,
}

#[derive(Debug, Deserialize)]
pub struct Vectors {
    pub vectors: Vec<Vector>,
    pub invalid_passwords: Vec<Invalid>,
}

/// Copy of /work/shared/testdata/recovery-password-vectors.json, kept in the repository so
/// the tests need nothing outside it.
pub fn vectors() -> Vectors {
    let text = include_str!("data/recovery-password-vectors.json");
    serde_json::from_str(text).unwrap()
}

pub fn arr<const N: usize>(hex_str: &str) -> [u8; N] {
    hex::decode(hex_str).unwrap().try_into().unwrap()
}

/// The gate's scenarios: a fixed subset of the catalog that shows every kind of step the
/// whole catalog shows (the whole-catalog test checks it), so a portal fault any step of
/// the catalog could catch is met here too, in about a quarter of the catalog's time. The
/// first six are the scenarios that catch the `failpoints` build's faults.
pub const GATE_SUBSET: &[&str] = &[
    "remote-only-user-help-desk-message",
    "single-use-key-rotation",
    "several-matches-32-digits",
    "idle-session-expires",
    "firmware-update-uefi",
    "foreign-key-request-refused",
    "help-desk-end-user-without-sign-in-refused",
    "lost-pin-help-desk-tpm-reset",
    "lost-pin-help-desk-tpm-reset-not-escrowed",
    "lost-pin-remembered",
    "lost-pin-wrong-pins",
    "key-kept-until-rotated",
    // A story of several changes (`changes`, steps named `... (change N)`) and `suspend`.
    "windows-update-suspend-one-reboot-and-expiry",
    // `expect.tpm_failed_tries`, `checks.audit_absent` and a help desk in Japanese.
    "help-desk-ja-lost-pin-caller-refused",
    // `wait_secs` and the TPM forgetting failures by its own clock, over three changes.
    "lost-pin-over-two-days",
    // `devices`: two devices, Manage TPM by computer name, the untouched device's checks.
    "help-desk-manage-tpm-two-devices",
    // A recovery mid-story (`changes[i].recovery`) and the locked-out next boot after it.
    "lost-pin-locked-out-next-boot",
];

/// [`GATE_SUBSET`] as the scenario files `harness run` takes.
pub fn gate_subset_files() -> Vec<String> {
    GATE_SUBSET
        .iter()
        .map(|name| format!("scenarios/{name}.yaml"))
        .collect()
}

/// A step's kind: its name without what a scenario fills in (account names, key IDs, digit
/// counts, which change), e.g. `wrong PIN #2` → `wrong PIN #N`.
pub fn step_kind(step: &str) -> String {
    let mut kind = String::new();
    let mut chars = step.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            while chars.next_if(char::is_ascii_digit).is_some() {}
            kind.push('N');
        } else {
            kind.push(c);
        }
    }
    for filled_in in [
        "admin creates account ",
        "sign-in by ",
        "apply the change: ",
        "agent escrows {",
    ] {
        if let Some(at) = kind.find(filled_in) {
            kind.truncate(at + filled_in.len());
            kind.push('…');
        }
    }
    kind
}

/// Waits for the `PORTAL-READY {json}` line a `portal-under-test serve` child prints once it
/// listens, and returns the JSON (`url`, `ca_cert`, ...). Panics with what the child printed
/// instead, naming `what` (e.g. "replica 1").
pub fn ready_line(child: &mut std::process::Child, what: &str) -> serde_json::Value {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("serve's stdout is piped");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read serve's stdout");
    let json = line
        .trim()
        .strip_prefix("PORTAL-READY ")
        .unwrap_or_else(|| panic!("{what} did not start: {line:?}"));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{what}'s ready line {line:?}: {e}"))
}
