//! One real boot: OVMF under QEMU (TCG) on a swtpm, bounded in time, nothing left running.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

use crate::error::{io_error, Error, Result};
use crate::supervise::{spawn_supervised, spawn_swtpm, KillOnDrop};
use crate::tpm_state::{self, VOLATILE_STATE};
use crate::Sha256Pcrs;

const OVMF_DIR: &str = "/usr/share/OVMF";
/// How often the serial log is polled for the end marker.
const POLL: Duration = Duration::from_millis(100);
const PCRS_END: &str = "===FWBOOT-PCRS-END===";

/// The firmware image pair and how QEMU must present it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    /// The read-only code flash.
    pub code: PathBuf,
    /// The varstore template: every boot gets a fresh copy.
    pub vars_template: PathBuf,
    /// A Secure Boot build: needs SMM and the secure pflash.
    pub secure: bool,
}

impl Firmware {
    /// Debian's OVMF with Secure Boot, Microsoft and Debian keys enrolled.
    pub fn ovmf_secure_boot() -> Self {
        Self {
            code: Path::new(OVMF_DIR).join("OVMF_CODE_4M.ms.fd"),
            vars_template: Path::new(OVMF_DIR).join("OVMF_VARS_4M.ms.fd"),
            secure: true,
        }
    }

    /// Debian's OVMF built without Secure Boot (no SMM), with its empty varstore.
    pub fn ovmf_plain() -> Self {
        Self {
            code: Path::new(OVMF_DIR).join("OVMF_CODE_4M.fd"),
            vars_template: Path::new(OVMF_DIR).join("OVMF_VARS_4M.fd"),
            secure: false,
        }
    }
}

/// Everything a boot needs.
#[derive(Debug, Clone)]
pub struct BootRequest {
    /// The raw boot disk (attached read-only).
    pub disk: PathBuf,
    pub firmware: Firmware,
    /// The device's TPM state directory: provisioned if empty, kept after the boot with
    /// the PCRs the boot left (see [`crate::tpm_state`]).
    pub tpm_state: PathBuf,
    /// Scratch for this boot: varstore copy, serial log, sockets. Created if missing.
    pub work_dir: PathBuf,
    /// Extra QEMU arguments (a PCI card with an option ROM, ...).
    pub extra_qemu_args: Vec<String>,
    /// `bootindex` of the boot disk: set, it makes QEMU hand OVMF a boot order.
    pub disk_bootindex: Option<u32>,
    /// The whole boot is bounded by this; QEMU and swtpm are killed when it passes.
    pub timeout: Duration,
}

impl BootRequest {
    /// A Secure Boot boot of `disk` with a 5-minute bound.
    pub fn new(disk: &Path, tpm_state: &Path, work_dir: &Path) -> Self {
        Self {
            disk: disk.to_path_buf(),
            firmware: Firmware::ovmf_secure_boot(),
            tpm_state: tpm_state.to_path_buf(),
            work_dir: work_dir.to_path_buf(),
            extra_qemu_args: Vec::new(),
            disk_bootindex: None,
            timeout: Duration::from_secs(300),
        }
    }
}

/// What a real boot measured.
#[derive(Debug, Clone)]
pub struct BootOutcome {
    /// The firmware's TCG event log as the kernel exposes it (binary_bios_measurements).
    pub event_log: Vec<u8>,
    /// The sha256 PCRs as the kernel read them from the TPM.
    pub pcrs: Sha256Pcrs,
    /// From QEMU's start to the guest's last PCR line.
    pub boot_time: Duration,
    /// The INFO section the guest printed (kernel, cmdline, Secure Boot state).
    pub info: String,
}

/// Boots once. The swtpm is stopped with its volatile state stored in `tpm_state`, so
/// [`tpm_state::read_pcrs`] reads the PCRs the boot left.
pub fn boot(req: &BootRequest) -> Result<BootOutcome> {
    let deadline = Instant::now() + req.timeout;
    fs::create_dir_all(&req.work_dir).map_err(io_error(&req.work_dir))?;
    tpm_state::provision(&req.tpm_state)?;
    // A boot is a power-on: whatever an earlier boot left in volatile state is gone.
    let stale = req.tpm_state.join(VOLATILE_STATE);
    if stale.exists() {
        fs::remove_file(&stale).map_err(io_error(&stale))?;
    }
    let vars = req.work_dir.join("vars.fd");
    fs::copy(&req.firmware.vars_template, &vars).map_err(io_error(&req.firmware.vars_template))?;
    let serial = req.work_dir.join("serial.log");
    let qemu_log = req.work_dir.join("qemu.log");
    let socket = req.work_dir.join("swtpm.ctrl");
    for old in [&serial, &socket] {
        if old.exists() {
            fs::remove_file(old).map_err(io_error(old))?;
        }
    }

    let mut swtpm = start_swtpm(&req.tpm_state, &socket, deadline)?;
    let qemu_out = fs::File::create(&qemu_log).map_err(io_error(&qemu_log))?;
    let qemu_err = qemu_out.try_clone().map_err(io_error(&qemu_log))?;
    let mut cmd = qemu_command(req, &vars, &serial, &socket);
    cmd.stdin(Stdio::null()).stdout(qemu_out).stderr(qemu_err);
    let started = Instant::now();
    let mut qemu = KillOnDrop(spawn_supervised(cmd).map_err(|source| Error::Spawn {
        program: "qemu-system-x86_64".into(),
        hint: "Debian package qemu-system-x86",
        source,
    })?);

    let output = loop {
        let text = read_serial(&serial)?;
        if text.contains(PCRS_END) {
            break text;
        }
        if let Ok(Some(status)) = qemu.0.try_wait() {
            return Err(Error::QemuExited {
                status: status.to_string(),
                qemu_output: fs::read_to_string(&qemu_log).unwrap_or_default(),
                serial_tail: tail(&text),
            });
        }
        if Instant::now() > deadline {
            qemu.kill();
            swtpm.kill();
            return Err(Error::Timeout {
                timeout: req.timeout,
                serial_tail: tail(&text),
            });
        }
        std::thread::sleep(POLL);
    };
    let boot_time = started.elapsed();
    // Stop QEMU before the guest powers off: QEMU's exit would shut the TPM down and its
    // PCRs would be lost. The swtpm stays up (no --terminate) to store them.
    qemu.kill();
    tpm_state::store_and_stop(&socket, &mut swtpm)?;

    let (event_log, pcrs, info) = parse_serial(&output)?;
    Ok(BootOutcome {
        event_log,
        pcrs,
        boot_time,
        info,
    })
}

fn start_swtpm(state: &Path, socket: &Path, deadline: Instant) -> Result<KillOnDrop> {
    let mut cmd = Command::new("swtpm");
    cmd.arg("socket")
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}", socket.display()))
        .arg("--log")
        .arg(format!("file={}", state.join("swtpm.log").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut swtpm = spawn_swtpm(cmd)?;
    while !socket.exists() {
        if let Ok(Some(status)) = swtpm.0.try_wait() {
            return Err(Error::Tpm(format!(
                "swtpm exited at start ({status}); see {}",
                state.join("swtpm.log").display()
            )));
        }
        if Instant::now() > deadline {
            swtpm.kill();
            return Err(Error::Tpm("swtpm did not create its control socket".into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(swtpm)
}

fn qemu_command(req: &BootRequest, vars: &Path, serial: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    // KVM fails with this OVMF here ("emulation failure"): TCG, about 15 s a boot.
    cmd.args(["-accel", "tcg", "-m", "512", "-smp", "1"]);
    cmd.args([
        "-machine",
        if req.firmware.secure {
            "q35,smm=on"
        } else {
            "q35"
        },
    ]);
    cmd.args([
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-nic",
        "none",
    ]);
    cmd.arg("-serial").arg(format!("file:{}", serial.display()));
    if req.firmware.secure {
        cmd.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
    }
    cmd.arg("-drive").arg(format!(
        "if=pflash,format=raw,unit=0,readonly=on,file={}",
        req.firmware.code.display()
    ));
    cmd.arg("-drive").arg(format!(
        "if=pflash,format=raw,unit=1,file={}",
        vars.display()
    ));
    cmd.arg("-chardev")
        .arg(format!("socket,id=chrtpm,path={}", socket.display()));
    cmd.args([
        "-tpmdev",
        "emulator,id=tpm0,chardev=chrtpm",
        "-device",
        "tpm-crb,tpmdev=tpm0",
    ]);
    cmd.arg("-drive").arg(format!(
        "if=none,id=disk0,format=raw,readonly=on,file={}",
        req.disk.display()
    ));
    let bootindex = req
        .disk_bootindex
        .map(|i| format!(",bootindex={i}"))
        .unwrap_or_default();
    cmd.arg("-device")
        .arg(format!("virtio-blk-pci,drive=disk0{bootindex}"));
    cmd.args(&req.extra_qemu_args);
    cmd
}

fn read_serial(path: &Path) -> Result<String> {
    match fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).replace('\r', "")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().rev().take(15).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn section<'a>(text: &'a str, name: &str) -> Result<&'a str> {
    let begin = format!("==={name}-BEGIN===\n");
    let end = format!("==={name}-END===");
    let start = text
        .find(&begin)
        .map(|i| i + begin.len())
        .ok_or_else(|| Error::Serial(format!("no {name} section")))?;
    let len = text[start..]
        .find(&end)
        .ok_or_else(|| Error::Serial(format!("the {name} section does not end")))?;
    Ok(&text[start..start + len])
}

/// The event log, the PCRs and the info text from the guest's serial output.
pub fn parse_serial(text: &str) -> Result<(Vec<u8>, Sha256Pcrs, String)> {
    let info = section(text, "FWBOOT-INFO")?.to_string();
    let encoded: String = section(text, "FWBOOT-EVENTLOG")?
        .split_whitespace()
        .collect();
    if encoded.is_empty() {
        return Err(Error::Serial(
            "the event log is empty (the kernel got no log from the firmware)".into(),
        ));
    }
    let event_log = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| Error::Serial(format!("event log base64: {e}")))?;
    let mut pcrs = [[0u8; 32]; 24];
    let mut seen = [false; 24];
    for line in section(text, "FWBOOT-PCRS")?.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let parsed = match parts.as_slice() {
            ["sha256", index, value] => index.parse::<usize>().ok().filter(|i| *i < 24).zip(
                hex::decode(value)
                    .ok()
                    .and_then(|v| <[u8; 32]>::try_from(v).ok()),
            ),
            _ => None,
        };
        let (index, value) =
            parsed.ok_or_else(|| Error::Serial(format!("malformed PCR line {line:?}")))?;
        pcrs[index] = value;
        seen[index] = true;
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        return Err(Error::Serial(format!(
            "sha256 PCR {missing} was not printed"
        )));
    }
    Ok((event_log, Sha256Pcrs(pcrs), info))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn serial(pcr_lines: &str) -> String {
        format!(
            "noise\n===FWBOOT-INFO-BEGIN===\nkernel=6.1\n===FWBOOT-INFO-END===\n\
             ===FWBOOT-EVENTLOG-BEGIN===\nAAEC\nAw==\n===FWBOOT-EVENTLOG-END===\n\
             ===FWBOOT-PCRS-BEGIN===\n{pcr_lines}===FWBOOT-PCRS-END===\n"
        )
    }

    fn all_pcrs() -> String {
        (0..24)
            .map(|i| format!("sha256 {i} {:064X}\n", i))
            .collect()
    }

    #[test]
    fn the_serial_sections_give_the_log_and_the_pcrs() -> Result<()> {
        let (log, pcrs, info) = parse_serial(&serial(&all_pcrs()))?;
        assert_eq!(log, vec![0, 1, 2, 3]);
        assert_eq!(pcrs.0[23][31], 23);
        assert_eq!(info, "kernel=6.1\n");
        Ok(())
    }

    #[test]
    fn a_missing_pcr_or_section_is_an_error_naming_it() {
        let short: String = all_pcrs()
            .lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect();
        let err = parse_serial(&serial(&short)).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("PCR 0 was not printed"), "{err}");
        let err = parse_serial("nothing").map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("no FWBOOT-INFO section"), "{err}");
    }
}
