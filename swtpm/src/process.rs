//! The swtpm process: free ports, a private state directory, a death signal, readiness.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long a fresh swtpm may take to accept connections before we give up on it.
const READY_DEADLINE: Duration = Duration::from_secs(5);
/// How often readiness is polled: well under the 10 ms start-up budget.
const READY_POLL: Duration = Duration::from_micros(250);
/// Attempts at a fresh pair of ports when another process steals one between pick and bind.
const PORT_ATTEMPTS: usize = 8;
/// Read/write deadline on the command and control channels, so a hung swtpm cannot hang the
/// caller. Generous: on a loaded 2-core machine a live swtpm can take over 2 s to answer. A
/// dead one is noticed at once (connection refused, or the socket closes).
const IO_DEADLINE: Duration = Duration::from_secs(10);
/// How long a failed channel waits for swtpm to be reaped before calling it alive: a killed
/// process closes its sockets a moment before it becomes a zombie `wait` can see.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// A running `swtpm socket --tpm2` process that is killed and reaped when dropped, and that
/// the kernel kills if its owner dies first (`PR_SET_PDEATHSIG`).
///
/// Its state directory is private and removed on drop. The control port is always the
/// server port + 1: the swtpm TCTI derives it that way when it sets the locality.
#[derive(Debug)]
pub struct SwtpmProcess {
    child: Child,
    server_port: u16,
    // Dropped after `child` is killed (see `Drop`), so swtpm never sees its directory vanish.
    state_dir: tempfile::TempDir,
}

impl SwtpmProcess {
    /// Starts swtpm on free loopback ports and waits until it accepts connections.
    pub fn spawn() -> Result<Self> {
        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let state_dir = tempfile::Builder::new()
                .prefix("swtpm-")
                .tempdir()
                .map_err(|e| spawn_error("cannot create a state directory", e))?;
            let server_port = free_port_pair()?;
            let child = spawn_with_death_signal(swtpm_command(state_dir.path(), server_port))?;
            let mut process = SwtpmProcess {
                child,
                server_port,
                state_dir,
            };
            match process.wait_ready() {
                Ok(()) => return Ok(process),
                // swtpm exited at once: most likely the port was taken in the meantime. Retry.
                Err(ReadyFailure::Exited(why)) => last_failure = why,
                Err(ReadyFailure::Timeout) => {
                    return Err(Error::Spawn {
                        detail: format!(
                            "swtpm did not accept connections within {READY_DEADLINE:?} (log: {})",
                            process.log_tail()
                        ),
                        source: None,
                    })
                }
            }
        }
        Err(Error::Spawn {
            detail: format!("swtpm exited at start {PORT_ATTEMPTS} times; last: {last_failure}"),
            source: None,
        })
    }

    /// The TCP port of the TPM command channel (the control channel is this + 1).
    pub fn server_port(&self) -> u16 {
        self.server_port
    }

    /// The process id of swtpm.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The private state directory (NVRAM: seeds, DA counters, persistent objects).
    pub fn state_dir(&self) -> &Path {
        self.state_dir.path()
    }

    /// The TCTI configuration string that reaches this TPM.
    pub fn tcti_conf(&self) -> String {
        format!("host=127.0.0.1,port={}", self.server_port)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// How the process ended (`signal: 9 (SIGKILL)`, `exit status: 1`), if it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills swtpm now (as a crash would), leaving this handle to report "TPM gone".
    pub fn kill(&mut self) {
        // Errors mean it already exited: nothing to do.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `CMD_INIT` on the control channel: the power-on that follows a power-off.
    /// PCRs are reset; the TPM then needs `TPM2_Startup`.
    pub fn cmd_init(&mut self) -> Result<()> {
        const CMD_INIT: u32 = 0x2;
        let mut request = Vec::with_capacity(8);
        request.extend_from_slice(&CMD_INIT.to_be_bytes());
        request.extend_from_slice(&0u32.to_be_bytes()); // flags: none
        let reply = self.control(&request, 4)?;
        let result = u32::from_be_bytes([reply[0], reply[1], reply[2], reply[3]]);
        if result != 0 {
            return Err(Error::from_response_code(result));
        }
        Ok(())
    }

    /// Sends one raw TPM 2.0 command on the server channel and returns the whole response.
    ///
    /// swtpm's TCP server channel speaks plain TPM command bytes; the TCTI opens one
    /// connection per command, so this does not disturb a `Context` between its commands.
    pub fn raw_command(&mut self, command: &[u8]) -> Result<Vec<u8>> {
        let mut stream = self.connect(self.server_port)?;
        stream.write_all(command).map_err(|e| self.gone(e))?;
        let mut header = [0u8; 10];
        stream.read_exact(&mut header).map_err(|e| self.gone(e))?;
        let size = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        if !(10..=4096).contains(&size) {
            return Err(Error::TpmGone {
                detail: format!("swtpm sent a response of impossible size {size}"),
            });
        }
        let mut response = header.to_vec();
        response.resize(size, 0);
        stream
            .read_exact(&mut response[10..])
            .map_err(|e| self.gone(e))?;
        Ok(response)
    }

    fn control(&mut self, request: &[u8], reply_len: usize) -> Result<Vec<u8>> {
        let mut stream = self.connect(self.server_port + 1)?;
        stream.write_all(request).map_err(|e| self.gone(e))?;
        let mut reply = vec![0u8; reply_len];
        stream.read_exact(&mut reply).map_err(|e| self.gone(e))?;
        Ok(reply)
    }

    fn connect(&mut self, port: u16) -> Result<TcpStream> {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into();
        let stream = TcpStream::connect_timeout(&addr, IO_DEADLINE).map_err(|e| self.gone(e))?;
        stream
            .set_read_timeout(Some(IO_DEADLINE))
            .and_then(|()| stream.set_write_timeout(Some(IO_DEADLINE)))
            .map_err(|e| self.gone(e))?;
        Ok(stream)
    }

    fn gone(&mut self, err: io::Error) -> Error {
        Error::TpmGone {
            detail: format!("{}: {err}", self.state_after_failure()),
        }
    }

    /// What became of swtpm after a channel to it failed: `swtpm exited (signal: 9
    /// (SIGKILL))` if it ended within [`EXIT_GRACE`], else that it runs but does not answer.
    pub(crate) fn state_after_failure(&mut self) -> String {
        let start = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return format!("swtpm exited ({status})"),
                Ok(None) if start.elapsed() < EXIT_GRACE => thread::sleep(Duration::from_millis(2)),
                _ => return "swtpm is running but does not answer".to_string(),
            }
        }
    }

    fn wait_ready(&mut self) -> Result<(), ReadyFailure> {
        let start = Instant::now();
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.server_port);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ReadyFailure::Exited(format!(
                    "swtpm exited with {status}: {}",
                    self.log_tail()
                )));
            }
            // Both channels are bound before swtpm enters its accept loop; a connection to
            // the server channel means the control channel is there too.
            if TcpStream::connect(addr).is_ok() {
                return Ok(());
            }
            if start.elapsed() > READY_DEADLINE {
                return Err(ReadyFailure::Timeout);
            }
            thread::sleep(READY_POLL);
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(3).collect();
        if tail.is_empty() {
            "empty".to_string()
        } else {
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        }
    }

    fn log_path(&self) -> PathBuf {
        self.state_dir.path().join("swtpm.log")
    }
}

impl Drop for SwtpmProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

enum ReadyFailure {
    Exited(String),
    Timeout,
}

fn swtpm_command(state_dir: &Path, server_port: u16) -> Command {
    let mut cmd = Command::new("swtpm");
    cmd.arg("socket")
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(format!("dir={}", state_dir.display()))
        .arg("--server")
        .arg(format!("type=tcp,port={server_port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!(
            "type=tcp,port={},bindaddr=127.0.0.1",
            server_port + 1
        ))
        .arg("--flags")
        .arg("not-need-init,startup-clear")
        .arg("--log")
        .arg(format!("file={}", state_dir.join("swtpm.log").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// The ports a pair is drawn from: below Linux's default ephemeral range (32768-60999), which
/// every outgoing connection (each client of a TPM, a portal or a browser) takes its local
/// port from. Drawing P from `bind(0)` put the pair inside that range, and under load (a
/// test suite plus HTTP traffic on 2 cores) 64 draws in a row found P+1 taken.
const PAIR_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// Picks a port P such that P and P+1 are both free right now. Another process may still
/// take one before swtpm binds it; `spawn` retries when that happens.
fn free_port_pair() -> Result<u16> {
    let mut rng = rand::rng();
    for _ in 0..256 {
        let port = rand::Rng::random_range(&mut rng, PAIR_PORTS);
        let Ok(_first) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) else {
            continue;
        };
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return Ok(port);
        }
    }
    Err(Error::Spawn {
        detail: "found no pair of adjacent free loopback ports".to_string(),
        source: None,
    })
}

fn spawn_error(what: &str, source: io::Error) -> Error {
    Error::Spawn {
        detail: format!("{what}: {source}"),
        source: Some(source),
    }
}

fn spawn_with_death_signal(cmd: Command) -> Result<Child> {
    supervise::spawn_supervised(cmd).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::Spawn {
                detail: "the `swtpm` program is not installed (Debian package swtpm)".to_string(),
                source: Some(e),
            }
        } else {
            spawn_error("cannot execute swtpm", e)
        }
    })
}
