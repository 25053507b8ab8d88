//! `harness run`, `harness list`, `harness validate`: the scenario catalog.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::portal::PortalArgs;
use super::CliError;
use crate::runner::volume_check::{VolumeJudges, VolumeTool};
use crate::runner::{self, report, RunOptions, ScenarioReport};
use crate::scenario::{load_catalog, select, Filter, Scenario};
use portal_client::ChromeOptions;

/// Which scenarios: files or directories, and filters.
#[derive(Debug, Args)]
pub struct CatalogArgs {
    /// Scenario files or directories (default: `scenarios/`).
    #[arg(value_name = "PATHS")]
    pub paths: Vec<PathBuf>,
    /// Only scenarios matching EXPR: space-separated terms that must all match — `tag:T`,
    /// `name:GLOB`, a bare substring of the name, `!term` to exclude. Repeat to OR.
    #[arg(long, value_name = "EXPR")]
    pub filter: Vec<String>,
    /// Only the K-th of N equal shards (1-based), e.g. `--shard 2/4`.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
}

/// `harness run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// Scenarios in flight at once.
    #[arg(short = 'j', long, default_value_t = 2)]
    pub jobs: usize,
    #[command(flatten)]
    pub portal: PortalArgs,
    /// Write JUnit XML here.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write the run as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the HTML report (`index.html`) into this directory (with `--browser`, the
    /// screenshots too, as PNG files next to it).
    #[arg(long, value_name = "DIR")]
    pub html: Option<PathBuf>,
    /// Play the self-service user in headless Chromium over WebDriver (Debian's `chromium`
    /// and `chromium-driver`; `$HARNESS_CHROMIUM` / `$HARNESS_CHROMEDRIVER` override): typed
    /// with the keyboard, a screenshot of each page.
    #[arg(long)]
    pub browser: bool,
    /// Judge the device's volume image with outside tools (comma-separated: `cryptsetup`,
    /// `dislocker`): wherever a recovery password from the portal was typed, cryptsetup
    /// lists its key ID and accepts it, dislocker decrypts the data the harness wrote; after
    /// the rotation cryptsetup refuses the old password and accepts the new one. A missing
    /// tool is a usage error (exit 2).
    #[arg(long, value_name = "TOOLS", value_delimiter = ',')]
    pub check_volume_with: Vec<VolumeTool>,
}

/// Loads, filters and shards the catalog; a bad file fails the whole catalog.
pub fn selected(args: &CatalogArgs) -> Result<Vec<Scenario>, CliError> {
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from("scenarios")]
    } else {
        args.paths.clone()
    };
    let all = load_catalog(&paths)?;
    let filters = args
        .filter
        .iter()
        .map(|f| Filter::parse(f))
        .collect::<Result<Vec<_>, _>>()?;
    let mut chosen: Vec<Scenario> = select(&all, &filters).into_iter().cloned().collect();
    if let Some(shard) = &args.shard {
        let (k, n) = parse_shard(shard)?;
        chosen = chosen
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % n == k - 1)
            .map(|(_, s)| s)
            .collect();
    }
    Ok(chosen)
}

fn parse_shard(text: &str) -> Result<(usize, usize), CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--shard: expected K/N with 1 <= K <= N, got {text:?}"
        ))
    };
    let (k, n) = text.split_once('/').ok_or_else(bad)?;
    let k: usize = k.trim().parse().map_err(|_| bad())?;
    let n: usize = n.trim().parse().map_err(|_| bad())?;
    if k == 0 || n == 0 || k > n {
        return Err(bad());
    }
    Ok((k, n))
}

/// `harness list`: one line per selected scenario.
pub fn list(args: &CatalogArgs, out: &mut dyn Write) -> Result<(), CliError> {
    for s in played(args)? {
        writeln!(
            out,
            "{}\t{}\t[{}]",
            s.name,
            s.file.display(),
            s.tags.join(", ")
        )?;
    }
    Ok(())
}

/// `harness validate`: loads every file; exit 0 when all are valid.
pub fn validate(args: &CatalogArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let n = selected(args)?.len();
    writeln!(out, "{n} scenarios valid")?;
    Ok(())
}

/// The tag of scenarios `harness run` plays only when asked for.
pub const REAL_FIRMWARE_TAG: &str = "real-firmware";

/// The scenarios `harness run` plays (and `harness list` lists): the selected ones, less
/// the real-firmware ones unless asked for, by a filter (`--filter tag:real-firmware`) or
/// by their file; each of their boots is a real QEMU boot.
fn played(args: &CatalogArgs) -> Result<Vec<Scenario>, CliError> {
    let mut scenarios = selected(args)?;
    if args.filter.is_empty() {
        // By its real path: `scenarios/x.yaml` names the file `./scenarios/` lists.
        let real = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        let named: Vec<PathBuf> = args
            .paths
            .iter()
            .filter(|p| p.is_file())
            .map(real)
            .collect();
        scenarios.retain(|s| {
            !s.tags.iter().any(|t| t == REAL_FIRMWARE_TAG) || named.contains(&real(&s.file))
        });
    }
    Ok(scenarios)
}

/// `harness run`.
pub fn run(args: &RunArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let scenarios = played(&args.catalog)?;
    if scenarios.is_empty() {
        return Err(CliError::Usage("no scenario matches the filters".into()));
    }
    // Before the portal starts: a missing browser is a usage problem, said at once.
    let browser = if args.browser {
        Some(ChromeOptions::detect().map_err(|e| CliError::Usage(e.to_string()))?)
    } else {
        None
    };
    let volume_judges = VolumeJudges::from_tools(&args.check_volume_with);
    volume_judges
        .ensure_installed()
        .map_err(|e| CliError::Usage(format!("--check-volume-with: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The embedded portal lives until the end of this function (dropped: killed, reaped).
    let (target, _embedded) = args.portal.start(&runtime)?;

    let bar = indicatif::ProgressBar::new(scenarios.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let on_done = |r: &ScenarioReport| {
        bar.inc(1);
        bar.set_message(r.name.clone());
        if let Some(f) = &r.failure {
            bar.println(format!("FAIL {}: {f}", r.name));
        }
    };
    let report = runner::run(
        &scenarios,
        &target,
        &RunOptions {
            jobs: args.jobs,
            browser,
            volume_judges,
        },
        &on_done,
    );
    bar.finish_and_clear();

    write!(out, "{}", report::summary(&report))?;
    if let Some(path) = &args.junit {
        std::fs::write(path, report::junit(&report)?)?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, report::json(&report)?)?;
    }
    if let Some(dir) = &args.html {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("index.html"), report::html(&report))?;
        for s in &report.scenarios {
            for (i, shot) in s.screenshots.iter().enumerate() {
                let file = report::screenshot_file(&s.name, i, &shot.name);
                std::fs::write(dir.join(file), &shot.png)?;
            }
        }
    }
    if report.failed() > 0 {
        return Err(CliError::ScenariosFailed {
            failed: report.failed(),
            total: report.scenarios.len(),
        });
    }
    Ok(())
}
