//! The one place this crate starts a child process that must not outlive it.
//!
//! Spawning goes through the workspace's supervision crate (a spawner thread +
//! `PR_SET_PDEATHSIG`).

use std::io;
use std::process::{Child, Command};

/// Spawns `cmd` so that the kernel kills it if this process dies first.
pub(crate) fn spawn_supervised(cmd: Command) -> io::Result<Child> {
    ::supervise::spawn_supervised(cmd)
}

/// Starts a supervised swtpm (the boot's and the read-back's), killed when dropped.
pub(crate) fn spawn_swtpm(cmd: Command) -> crate::error::Result<KillOnDrop> {
    spawn_supervised(cmd)
        .map(KillOnDrop)
        .map_err(|source| crate::error::Error::Spawn {
            program: "swtpm".into(),
            hint: "Debian package swtpm",
            source,
        })
}

/// A supervised child that is killed and reaped when dropped (a hung boot, an early return).
#[derive(Debug)]
pub(crate) struct KillOnDrop(pub(crate) Child);

impl KillOnDrop {
    pub(crate) fn kill(&mut self) {
        // An error means it has already exited: nothing to do.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}
