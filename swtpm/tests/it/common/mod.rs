use std::path::Path;

/// Whether a process exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Polls `cond` every 10 ms until it holds or `secs` pass.
pub fn eventually(secs: f64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

pub fn exists(path: &Path) -> bool {
    path.exists()
}

pub const SHA256: swtpm::HashingAlgorithm = swtpm::HashingAlgorithm::Sha256;

/// A SHA-256-sized digest filled with `byte`.
pub fn digest(byte: u8) -> [u8; 32] {
    [byte; 32]
}
