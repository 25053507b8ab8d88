//! Child processes that never outlive their owner.
//!
//! Nothing TPM-specific: the swtpm crate starts its `swtpm` processes with it, and the portal
//! client its portal binary and its chromedriver, which must all die with the harness.
//!
//! - [`spawn_supervised`]: the kernel kills the child when this process dies, however it dies.
//! - [`output_supervised`]: `Command::output` for a supervised child, with a deadline.
//! - [`kill_process_group`]: SIGKILL to a whole process group (a driver and the browser it
//!   started), without `unsafe`.
//!
//! The one `unsafe` block is the `pre_exec` hook of [`spawn_supervised`]: `Command` offers
//! no safe way to run code in the forked child.

use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that the kernel kills it (SIGKILL) when this process exits for any
/// reason — return from `main`, `process::exit`, a panic, abort, or SIGKILL.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process.
/// Spawning from a caller's thread (a tokio worker or blocking-pool thread, say) would kill
/// the child when that thread is retired, so every child is forked by one long-lived
/// spawner thread. A `getppid` check in the child closes the race where the parent dies
/// between fork and `prctl`.
///
/// Every descriptor above stdio is marked close-on-exec in the child: C libraries open
/// sockets without it (the TSS TCTI's connection to a swtpm), and a second swtpm forked while
/// a first one's client connection is open would hold that connection forever; swtpm serves
/// one connection at a time, so the first TPM's next connection would never be accepted.
pub fn spawn_supervised(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id();
    // The workspace denies `unsafe_code`; this is its one exception.
    // SAFETY: the closure runs in the forked child before exec and only calls the
    // async-signal-safe functions prctl, getppid, _exit and the close_range system call; it
    // allocates nothing.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            // Linux 5.11+; on an older kernel it fails and the descriptors stay as they are.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| io::Error::other("the spawner thread panicked"))?
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the spawner thread is not running"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the spawner thread stopped"))?
}

/// Runs `cmd` as [`spawn_supervised`] does and collects its status, stdout and stderr, as
/// `Command::output` does. `Ok(None)`: it had not finished within `timeout`, and was killed
/// and reaped. Blocking: call it from a thread that may block.
pub fn output_supervised(mut cmd: Command, timeout: Duration) -> io::Result<Option<Output>> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = spawn_supervised(cmd)?;
    // Both pipes are drained while we wait, so a chatty child cannot block on a full one.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill()?;
            child.wait()?;
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(5));
    };
    Ok(Some(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }))
}

/// Reads `pipe` to its end on a thread of its own.
fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            // A read error ends the output where it is: what was read is kept.
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// Sends SIGKILL to the process group `leader` leads (a child started with
/// `Command::process_group(0)`), so its own children die with it. A group that is already
/// gone is not an error.
pub fn kill_process_group(leader: &Child) -> io::Result<()> {
    let pgid = i32::try_from(leader.id())
        .map(Pid::from_raw)
        .map_err(|_| io::Error::other("process id out of range"))?;
    match killpg(pgid, Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("supervised-spawner".to_string())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // The requester may have given up; nothing to tell it then.
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("cannot start the spawner thread: {e}"));
        Mutex::new(tx)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::Command;

    use super::{kill_process_group, output_supervised, spawn_supervised};

    #[test]
    fn output_supervised_collects_both_pipes_and_kills_a_child_past_its_deadline() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let output = output_supervised(cmd, std::time::Duration::from_secs(30))
            .unwrap()
            .unwrap();
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");

        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exec sleep 30"]);
        let start = std::time::Instant::now();
        let late = output_supervised(cmd, std::time::Duration::from_millis(300)).unwrap();
        assert!(late.is_none(), "{late:?}");
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn a_killed_group_takes_the_grandchild_with_it() {
        // sh leads the group and starts a sleep: both must die of SIGKILL.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 30 & echo $!; wait"])
            .process_group(0)
            .stdout(std::process::Stdio::piped());
        let mut leader = spawn_supervised(cmd).unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(leader.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let grandchild: u32 = line.trim().parse().unwrap();
        kill_process_group(&leader).unwrap();
        assert_eq!(leader.wait().unwrap().signal(), Some(libc::SIGKILL));
        // The sleep is reparented and reaped by init; give it a moment to disappear.
        let gone = (0..100).any(|_| {
            let stat = std::fs::read_to_string(format!("/proc/{grandchild}/stat"));
            let dead = stat.map_or(true, |s| s.contains(") Z "));
            if !dead {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            dead
        });
        assert!(
            gone,
            "the grandchild {grandchild} survived its group's kill"
        );
        // Killing a group that is gone is not an error.
        kill_process_group(&leader).unwrap();
    }
}
