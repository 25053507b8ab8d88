//! The `harness` binary: parse, call the library, map the error to an exit code
//! (see `harness::cli::exit_codes`).

use std::process::{Command, ExitCode, Stdio};

use clap::Parser;
use harness::cli::{exit_codes, run, Cli};

/// Puts every temporary directory of this run (the embedded portal's data dir, each swtpm's
/// state dir) under one private directory, and starts a janitor that removes it when this
/// process ends, however it ends: the janitor waits only for its stdin to close, which the
/// kernel does even after a SIGKILL (a `TempDir`'s `Drop` never runs then). Must run before
/// any thread starts (it sets `TMPDIR`).
///
/// The pipe can close a moment before the kernel delivers the death signal to our children,
/// and their own children (a browser's helpers) die later still, writing as they go: one
/// still alive can make `rm -rf` fail on a directory it just emptied, or make its directory
/// again after `rm` succeeded. So the janitor first waits (up to 30 s) until no process
/// started by this run is left, known by the `TMPDIR` they all inherit, and then removes the
/// directory, retrying `rm` for up to 10 s.
fn private_temp_dir() -> std::io::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("harness-run-")
        .tempdir()?
        .keep();
    let mut janitor = Command::new("sh")
        // Deaf to the signals a terminal sends the whole group: it must outlive us.
        .args([
            "-c",
            "trap '' INT TERM HUP; read -r _; n=0; \
             while [ $n -lt 300 ] && grep -qzFx \"TMPDIR=$0\" /proc/[0-9]*/environ 2>/dev/null; \
             do n=$((n+1)); sleep 0.1; done; n=0; \
             until rm -rf -- \"$0\" 2>/dev/null || [ $n -ge 50 ]; do n=$((n+1)); sleep 0.2; done",
        ])
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // The pipe's write end stays open for as long as this process lives.
    std::mem::forget(janitor.stdin.take());
    std::env::set_var("TMPDIR", &dir);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = private_temp_dir() {
        eprintln!("error: a private temporary directory: {e}");
        return ExitCode::from(exit_codes::IO);
    }
    let stdout = std::io::stdout();
    match run(&cli, &mut stdout.lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
