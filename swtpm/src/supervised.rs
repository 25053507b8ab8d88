//! Child processes that never outlive their owner.
//!
//! Nothing TPM-specific: the swtpm processes use it, and so does anything else a test
//! harness starts (a portal, a WebDriver) that must die with it.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `cmd` so that the kernel kills it (SIGKILL) when this process exits for any
/// reason — return from `main`, `process::exit`, a panic, abort, or SIGKILL.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process.
/// Spawning from a caller's thread (a tokio worker or blocking-pool thread, say) would kill
/// the child when that thread is retired, so every child is forked by one long-lived
/// spawner thread. A `getppid` check in the child closes the race where the parent dies
/// between fork and `prctl`.
pub fn spawn_supervised(mut cmd: Command) -> io::Result<Child> {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only calls the
    // async-signal-safe functions prctl, getppid and _exit; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
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
