//! The soak's measurements: the portal's resident memory (`/proc/PID/status` VmRSS) and its
//! data directory's size (store file and write-ahead log) sampled over the run, and the
//! verdict on them. Only a portal this process started can be sampled: its pids and data
//! directory are known; a portal at a URL is said to be "not sampled".

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::metrics::WindowSummary;

/// RSS may grow this much (in %) between the end of the warm-up and the end of the soak.
pub const RSS_GROWTH_LIMIT_PCT: f64 = 10.0;
/// The portal truncates its SQLite write-ahead log above 64 MiB (portal-under-test's
/// checkpointer); the log is bounded when it never ends the soak above both this and its
/// largest size before the last window.
pub const WAL_LIMIT_BYTES: u64 = 64 << 20;
/// The windows compared: the first and last minute, or the first and last tenth of a soak
/// shorter than 10 minutes.
const WINDOW_MAX: Duration = Duration::from_secs(60);

/// A portal process this harness started: what can be sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalProcess {
    /// Every replica's pid (their RSS is summed).
    pub pids: Vec<u32>,
    pub data_dir: PathBuf,
    /// Whether the store lives in the data directory (SQLite), not in PostgreSQL.
    pub store_in_data_dir: bool,
}

/// One sample of the portal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds since the fleet started.
    pub at_secs: f64,
    /// `None` when no replica's `/proc/PID/status` could be read.
    pub rss_kib: Option<u64>,
    /// Every file under the data directory (store, WAL, keys, certificates).
    pub data_dir_bytes: u64,
    /// The files whose name ends in `-wal`.
    pub wal_bytes: u64,
}

/// The soak's figures and verdict (in the JSON report and the summary).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SoakReport {
    /// Which windows are compared: "first and last minute" or "first and last tenth".
    pub windows: &'static str,
    pub window_secs: f64,
    /// Seconds since the fleet started at which the soak began.
    pub soak_start_secs: f64,
    /// p50/p99 per operation in the first and the last window.
    pub latency: WindowSummary,
    /// `None` with a reason in `not_sampled` (a portal at `--portal-url`).
    pub resources: Option<Resources>,
    pub not_sampled: Option<String>,
}

/// The portal's memory and data directory over the soak.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resources {
    pub sample_every_secs: f64,
    pub samples: Vec<Sample>,
    /// RSS at the end of the warm-up (the first window) and the largest after it.
    pub rss_after_warm_up_kib: Option<u64>,
    pub rss_max_after_warm_up_kib: Option<u64>,
    pub rss_growth_pct: Option<f64>,
    /// Growth below [`RSS_GROWTH_LIMIT_PCT`]; `None` when RSS could not be read.
    pub rss_ok: Option<bool>,
    /// The data directory at the start of the soak and at its end, and the growth per call
    /// made during the soak.
    pub data_dir_soak_start_bytes: u64,
    pub data_dir_soak_end_bytes: u64,
    pub data_dir_bytes_per_soak_call: f64,
    pub wal_max_bytes: u64,
    /// The WAL's largest sample in the last window.
    pub wal_last_window_max_bytes: u64,
    /// `None` when the store is in PostgreSQL (no WAL in the data directory).
    pub wal_bounded: Option<bool>,
}

impl SoakReport {
    /// Fails only on a measured bound that was broken.
    pub fn passed(&self) -> bool {
        self.resources
            .as_ref()
            .is_none_or(|r| r.rss_ok != Some(false) && r.wal_bounded != Some(false))
    }
}

/// The window length for a soak of `duration`, and its name.
pub fn window(duration: Duration) -> (Duration, &'static str) {
    let tenth = duration / 10;
    if tenth >= WINDOW_MAX {
        (WINDOW_MAX, "first and last minute")
    } else {
        (tenth, "first and last tenth")
    }
}

/// How often to sample: about 60 samples over the soak, between 1 s and 10 s apart.
pub fn sample_interval(duration: Option<Duration>) -> Duration {
    duration
        .map(|d| d / 60)
        .unwrap_or_default()
        .clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// Samples `process` every `every` from now until [`Sampler::stop`].
pub struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    process: PortalProcess,
    started: Instant,
}

impl Sampler {
    pub fn start(process: PortalProcess, started: Instant, every: Duration) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = {
            let (samples, process) = (Arc::clone(&samples), process.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            let one = sample(&process, started);
                            if let Ok(mut samples) = samples.lock() {
                                samples.push(one);
                            }
                        }
                        _ = &mut stopped => break,
                    }
                }
            })
        };
        Sampler {
            samples,
            stop,
            task,
            process,
            started,
        }
    }

    /// Stops sampling, takes a last sample, and returns them all in order.
    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        let _ = self.task.await;
        let mut samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        samples.push(sample(&self.process, self.started));
        samples
    }
}

/// One sample now.
pub fn sample(process: &PortalProcess, started: Instant) -> Sample {
    let rss: Vec<u64> = process
        .pids
        .iter()
        .filter_map(|&pid| rss_kib(pid))
        .collect();
    let (data_dir_bytes, wal_bytes) = dir_sizes(&process.data_dir);
    Sample {
        at_secs: started.elapsed().as_secs_f64(),
        rss_kib: (!rss.is_empty()).then(|| rss.iter().sum()),
        data_dir_bytes,
        wal_bytes,
    }
}

/// `VmRSS` of `/proc/PID/status`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Bytes of every file under `dir` (a file removed while walking counts 0), and of its
/// `-wal` files.
fn dir_sizes(dir: &Path) -> (u64, u64) {
    let (mut total, mut wal) = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_dir() {
            let (t, w) = dir_sizes(&entry.path());
            total += t;
            wal += w;
        } else {
            total += meta.len();
            if entry.file_name().to_string_lossy().ends_with("-wal") {
                wal += meta.len();
            }
        }
    }
    (total, wal)
}

/// The verdict on the samples of a soak that started `soak_start_secs` into the run and
/// lasted `duration`, with `window` long windows and `soak_calls` calls.
pub fn judge(
    samples: Vec<Sample>,
    every: Duration,
    soak_start_secs: f64,
    duration: Duration,
    window: Duration,
    soak_calls: u64,
    store_in_data_dir: bool,
) -> Resources {
    let warm_up_end = soak_start_secs + window.as_secs_f64();
    let last_window_start = soak_start_secs + (duration - window).as_secs_f64();
    let after_warm_up: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at_secs >= warm_up_end)
        .collect();
    let rss_after_warm_up_kib = after_warm_up.first().and_then(|s| s.rss_kib);
    let rss_max_after_warm_up_kib = after_warm_up.iter().filter_map(|s| s.rss_kib).max();
    let rss_growth_pct = match (rss_after_warm_up_kib, rss_max_after_warm_up_kib) {
        (Some(warm), Some(max)) if warm > 0 => Some((max as f64 / warm as f64 - 1.0) * 100.0),
        _ => None,
    };
    let at_or_after = |t: f64| samples.iter().find(|s| s.at_secs >= t);
    let soak_start = at_or_after(soak_start_secs).map_or(0, |s| s.data_dir_bytes);
    let soak_end = samples.last().map_or(0, |s| s.data_dir_bytes);
    let wal_max_bytes = samples.iter().map(|s| s.wal_bytes).max().unwrap_or(0);
    let wal_before_last = samples
        .iter()
        .filter(|s| s.at_secs < last_window_start)
        .map(|s| s.wal_bytes)
        .max()
        .unwrap_or(0);
    let wal_last_window_max_bytes = samples
        .iter()
        .filter(|s| s.at_secs >= last_window_start)
        .map(|s| s.wal_bytes)
        .max()
        .unwrap_or(0);
    Resources {
        sample_every_secs: every.as_secs_f64(),
        rss_after_warm_up_kib,
        rss_max_after_warm_up_kib,
        rss_growth_pct,
        rss_ok: rss_growth_pct.map(|g| g < RSS_GROWTH_LIMIT_PCT),
        data_dir_soak_start_bytes: soak_start,
        data_dir_soak_end_bytes: soak_end,
        data_dir_bytes_per_soak_call: soak_end.saturating_sub(soak_start) as f64
            / soak_calls.max(1) as f64,
        wal_max_bytes,
        wal_last_window_max_bytes,
        wal_bounded: store_in_data_dir
            .then_some(wal_last_window_max_bytes <= WAL_LIMIT_BYTES.max(wal_before_last)),
        samples,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn at(at_secs: f64, rss: u64, wal: u64) -> Sample {
        Sample {
            at_secs,
            rss_kib: Some(rss),
            data_dir_bytes: 1000 + wal,
            wal_bytes: wal,
        }
    }

    #[test]
    fn vm_rss_in_kib_and_this_process_has_one() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmPeak:\t 9 kB\nVmRSS:\t   12345 kB\n"),
            Some(12345)
        );
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn windows_are_the_first_and_last_minute_or_tenth() {
        assert_eq!(
            window(Duration::from_secs(600)),
            (Duration::from_secs(60), "first and last minute")
        );
        assert_eq!(window(Duration::from_secs(60)).0, Duration::from_secs(6));
        assert_eq!(
            sample_interval(Some(Duration::from_secs(600))).as_secs(),
            10
        );
        assert_eq!(sample_interval(None).as_secs(), 1);
    }

    #[test]
    fn rss_growth_after_warm_up_and_a_growing_wal_are_caught() {
        let soak = Duration::from_secs(100);
        let every = Duration::from_secs(10);
        // Warm-up ends at 10 + 10 s; the last window starts at 100 s.
        let steady = vec![
            at(0.0, 500, 0),
            at(20.0, 1000, 10),
            at(60.0, 1050, 20),
            at(105.0, 1080, 20),
        ];
        let r = judge(
            steady,
            every,
            10.0,
            soak,
            Duration::from_secs(10),
            100,
            true,
        );
        assert_eq!(r.rss_after_warm_up_kib, Some(1000));
        assert_eq!(r.rss_ok, Some(true), "{r:?}");
        assert_eq!(r.wal_bounded, Some(true));
        let growing = vec![at(20.0, 1000, 0), at(105.0, 1200, WAL_LIMIT_BYTES + 1)];
        let r = judge(
            growing,
            every,
            10.0,
            soak,
            Duration::from_secs(10),
            100,
            true,
        );
        assert_eq!(r.rss_ok, Some(false));
        assert!((r.rss_growth_pct.unwrap() - 20.0).abs() < 1e-9);
        assert_eq!(r.wal_bounded, Some(false));
        let r = judge(vec![], every, 10.0, soak, Duration::from_secs(10), 0, false);
        assert_eq!((r.rss_ok, r.wal_bounded), (None, None));
    }
}
