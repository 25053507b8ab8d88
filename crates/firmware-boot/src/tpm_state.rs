//! The device's TPM state directory: provisioned once like a real TPM (sha256 bank only),
//! kept across boots, and readable after a boot.
//!
//! The boot's swtpm is stopped with its volatile state (PCRs included) stored in the
//! directory (`CMD_STORE_VOLATILE`), the way a suspend keeps it. A swtpm started afterwards
//! on the same directory *without* `startup-clear` resumes that state, so its PCRs are the
//! ones the boot left. (The `swtpm` crate's own processes always use a fresh private state
//! directory and `startup-clear`, so they cannot take over this one as they are.)

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{PcrSelectionListBuilder, PcrSlot};
use tss_esapi::tcti_ldr::{NetworkTPMConfig, TctiNameConf};
use tss_esapi::Context;

use crate::command::run;
use crate::error::{io_error, Error, Result};
use crate::supervise::{spawn_swtpm, KillOnDrop};
use crate::Sha256Pcrs;

/// The file swtpm keeps its permanent state (seeds, NV) in.
const PERMANENT_STATE: &str = "tpm2-00.permall";
/// The file `CMD_STORE_VOLATILE` writes (PCRs, sessions) and a resuming swtpm reads.
pub(crate) const VOLATILE_STATE: &str = "tpm2-00.volatilestate";
/// Control-channel commands (swtpm's ptm interface).
const CMD_SHUTDOWN: u32 = 3;
const CMD_STORE_VOLATILE: u32 = 10;
const IO_DEADLINE: Duration = Duration::from_secs(10);
/// Starts of the read-back swtpm before giving up (a port taken under us is retried).
const READBACK_ATTEMPTS: usize = 4;

/// Makes `dir` a manufactured TPM with only the sha256 PCR bank active, as real TPMs ship
/// (an unprovisioned swtpm has four banks). Does nothing if `dir` already holds a TPM.
pub fn provision(dir: &Path) -> Result<()> {
    if dir.join(PERMANENT_STATE).is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    run(
        Command::new("swtpm_setup")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(dir)
            .args(["--pcr-banks", "sha256", "--overwrite"])
            .arg("--logfile")
            .arg(dir.join("swtpm_setup.log")),
        "Debian package swtpm-tools",
    )?;
    Ok(())
}

/// Sends one control-channel command with no payload on swtpm's unix control socket and
/// checks its result code.
pub(crate) fn control(socket: &Path, command: u32) -> Result<()> {
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| Error::Tpm(format!("cannot reach swtpm at {}: {e}", socket.display())))?;
    let deadline = Some(IO_DEADLINE);
    stream
        .set_read_timeout(deadline)
        .and_then(|()| stream.set_write_timeout(deadline))
        .and_then(|()| stream.write_all(&command.to_be_bytes()))
        .map_err(|e| Error::Tpm(format!("swtpm control command {command}: {e}")))?;
    let mut reply = [0u8; 4];
    stream
        .read_exact(&mut reply)
        .map_err(|e| Error::Tpm(format!("swtpm control command {command}: no answer: {e}")))?;
    match u32::from_be_bytes(reply) {
        0 => Ok(()),
        code => Err(Error::Tpm(format!(
            "swtpm control command {command} failed with TPM code {code:#x}"
        ))),
    }
}

/// Stores the volatile state (the PCRs) into the state directory and stops swtpm.
pub(crate) fn store_and_stop(socket: &Path, swtpm: &mut KillOnDrop) -> Result<()> {
    control(socket, CMD_STORE_VOLATILE)?;
    control(socket, CMD_SHUTDOWN)?;
    let start = Instant::now();
    while start.elapsed() < IO_DEADLINE {
        if let Ok(Some(_)) = swtpm.0.try_wait() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    swtpm.kill();
    Err(Error::Tpm(
        "swtpm did not exit after CMD_SHUTDOWN".to_string(),
    ))
}

/// Starts a swtpm on the kept state `dir` (resuming the stored volatile state, no
/// TPM2_Startup) and reads the sha256 PCRs 0-23 through tss-esapi.
pub fn read_pcrs(dir: &Path) -> Result<Sha256Pcrs> {
    if !dir.join(VOLATILE_STATE).is_file() {
        return Err(Error::Tpm(format!(
            "{} holds no stored volatile state: the PCRs of the last boot are gone",
            dir.display()
        )));
    }
    let (_swtpm, port) = start_readback_swtpm(dir)?;
    let conf = NetworkTPMConfig::from_str(&format!("host=127.0.0.1,port={port}"))
        .map_err(|e| Error::Tpm(format!("TCTI configuration: {e}")))?;
    let mut context = Context::new(TctiNameConf::Swtpm(conf))
        .map_err(|e| Error::Tpm(format!("cannot connect to the swtpm on {port}: {e}")))?;
    let mut pcrs = [[0u8; 32]; 24];
    // TPM2_PCR_Read returns at most 8 digests per call.
    for chunk in 0..3u32 {
        let slots: Vec<PcrSlot> = (chunk * 8..chunk * 8 + 8)
            .map(|i| PcrSlot::try_from(1u32 << i))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Tpm(format!("PCR slot: {e}")))?;
        let selection = PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &slots)
            .build()
            .map_err(|e| Error::Tpm(format!("PCR selection: {e}")))?;
        let (_, _, digests) = context
            .pcr_read(selection)
            .map_err(|e| Error::Tpm(format!("TPM2_PCR_Read: {e}")))?;
        let values = digests.value();
        if values.len() != 8 {
            return Err(Error::Tpm(format!(
                "TPM2_PCR_Read returned {} of 8 sha256 PCRs (is the sha256 bank active?)",
                values.len()
            )));
        }
        for (k, d) in values.iter().enumerate() {
            let pcr = chunk as usize * 8 + k;
            pcrs[pcr] = d.value().try_into().map_err(|_| {
                Error::Tpm(format!("PCR {pcr}: a sha256 digest of {} bytes", d.len()))
            })?;
        }
    }
    Ok(Sha256Pcrs(pcrs))
}

/// Starts swtpm on `dir` with TCP channels and waits until it accepts connections. Another
/// process may take a port between our check and swtpm's bind: then swtpm exits and we
/// retry on other ports.
fn start_readback_swtpm(dir: &Path) -> Result<(KillOnDrop, u16)> {
    let mut last_failure = String::from("no attempt");
    for _ in 0..READBACK_ATTEMPTS {
        let port = free_port_pair()?;
        let mut cmd = Command::new("swtpm");
        cmd.arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            // Power on without TPM2_Startup: the resumed state is already started.
            .args(["--flags", "not-need-init"])
            .arg("--log")
            .arg(format!("file={}", dir.join("swtpm-readback.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut swtpm = spawn_swtpm(cmd)?;
        let start = Instant::now();
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok((swtpm, port));
            }
            if let Ok(Some(status)) = swtpm.0.try_wait() {
                last_failure = format!("swtpm on port {port} exited ({status})");
                break;
            }
            if start.elapsed() > IO_DEADLINE {
                return Err(Error::Tpm(format!(
                    "swtpm on {} did not accept connections within {IO_DEADLINE:?}",
                    dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Err(Error::Tpm(format!(
        "swtpm could not start on {} in {READBACK_ATTEMPTS} attempts; last: {last_failure}",
        dir.display()
    )))
}

/// A port P with P and P+1 free now (swtpm's control channel is P+1 by convention), drawn
/// below Linux's ephemeral range (32768-60999) that outgoing connections take ports from.
fn free_port_pair() -> Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..256 {
        // A fresh RandomState is randomly keyed: a random draw without a rand dependency.
        let draw = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let port = 20_000 + (draw % 12_000) as u16;
        let Ok(_first) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) else {
            continue;
        };
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(Error::Tpm(
        "found no pair of adjacent free loopback ports".to_string(),
    ))
}
