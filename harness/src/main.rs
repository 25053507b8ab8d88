//! The `harness` binary: parse, call the library, map the error to an exit code
//! (see `harness::cli::exit_codes`).

use std::process::ExitCode;

use clap::Parser;
use harness::cli::{run, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    match run(&cli, &mut stdout.lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
