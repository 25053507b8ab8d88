//! The fleet's reports: a plain-text summary for the terminal, JSON and JUnit XML for
//! machines (the same spirit as `harness run`'s reports, their own shape).

use std::fmt::Write as _;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::plan::Route;
use super::soak::{SoakReport, RSS_GROWTH_LIMIT_PCT};
use super::verdict::FleetReport;
use crate::runner::report::{escape, html_head};

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FleetReportError {
    #[error("cannot write JUnit XML: {0}")]
    Junit(#[from] quick_junit::SerializeError),
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
}

fn route_name(route: Option<Route>) -> &'static str {
    match route {
        None => "no lockout",
        Some(Route::HelpDesk) => "help desk",
        Some(Route::SelfService) => "self-service",
    }
}

/// The terminal summary: verdicts, then one line per operation, then failures by status and
/// the first failed devices.
pub fn summary(report: &FleetReport) -> String {
    let mut s = String::new();
    let verdicts: Vec<String> = report
        .verdicts
        .iter()
        .map(|(v, n)| format!("{} {n}", v.name()))
        .collect();
    let _ = writeln!(
        s,
        "fleet: {} devices, {} recoveries, -j {}, seed {}: {} in {:.1} s \
         (enrollment {:.1} s, recoveries {:.1} s)",
        report.devices,
        report.recoveries,
        report.jobs,
        report.seed,
        verdicts.join(", "),
        report.wall_secs,
        report.enroll_secs,
        report.recover_secs
    );
    if report.tpm_sample > 0 {
        let _ = writeln!(
            s,
            "{} devices on a real swtpm: {} unlocked (recovered password typed at the \
             TPM's lockout, booted by TPM after the rotation)",
            report.tpm_sample, report.tpm_unlocked
        );
    }
    let _ = writeln!(
        s,
        "{:<22}{:>8}{:>8}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "operation", "count", "failed", "ops/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for op in &report.operations {
        let _ = writeln!(
            s,
            "{:<22}{:>8}{:>8}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}",
            op.op, op.count, op.failed, op.ops_per_sec, op.p50_ms, op.p90_ms, op.p99_ms, op.max_ms
        );
    }
    if let Some(soak) = &report.soak {
        soak_summary(&mut s, soak);
    }
    if !report.failures_by_status.is_empty() {
        let by_status: Vec<String> = report
            .failures_by_status
            .iter()
            .map(|(kind, n)| format!("{kind}: {n}"))
            .collect();
        let _ = writeln!(s, "failures by status: {}", by_status.join(", "));
    }
    const SHOWN: usize = 10;
    let failed: Vec<_> = report.failed_devices().collect();
    for d in failed.iter().take(SHOWN) {
        let _ = writeln!(
            s,
            "FAIL {} ({}): {}: {}",
            d.name,
            route_name(d.route),
            d.verdict.name(),
            d.detail.as_deref().unwrap_or("")
        );
    }
    if failed.len() > SHOWN {
        let _ = writeln!(s, "... and {} more failed devices", failed.len() - SHOWN);
    }
    s
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// The soak's lines: p50/p99 per operation in the first and last window, RSS, data
/// directory and WAL, and the verdict on them.
fn soak_summary(s: &mut String, soak: &SoakReport) {
    let _ = writeln!(
        s,
        "soak: {} ({:.1} s each): p50 / p99 ms, first -> last",
        soak.windows, soak.window_secs
    );
    for first in &soak.latency.first {
        let Some(last) = soak.latency.last.iter().find(|l| l.op == first.op) else {
            continue;
        };
        let _ = writeln!(
            s,
            "  {:<20}{:>8.1} / {:<8.1} -> {:>8.1} / {:<8.1} ({} -> {} calls)",
            first.op, first.p50_ms, first.p99_ms, last.p50_ms, last.p99_ms, first.count, last.count
        );
    }
    let Some(r) = &soak.resources else {
        let _ = writeln!(
            s,
            "  portal RSS and data directory: {}",
            soak.not_sampled.as_deref().unwrap_or("not sampled")
        );
        return;
    };
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "ok",
        Some(false) => "FAIL",
        None => "not judged",
    };
    match (
        r.rss_after_warm_up_kib,
        r.rss_max_after_warm_up_kib,
        r.rss_growth_pct,
    ) {
        (Some(warm), Some(max), Some(growth)) => {
            let _ = writeln!(
                s,
                "  portal RSS: {:.1} MiB after warm-up, at most {:.1} MiB after it ({growth:+.1}%, \
                 bound {RSS_GROWTH_LIMIT_PCT}%): {}",
                warm as f64 / 1024.0,
                max as f64 / 1024.0,
                verdict(r.rss_ok)
            );
        }
        _ => {
            let _ = writeln!(s, "  portal RSS: not sampled (no sample after the warm-up)");
        }
    }
    let _ = writeln!(
        s,
        "  data directory: {:.2} -> {:.2} MiB over the soak ({} calls: {:.1} bytes per call); \
         WAL at most {:.2} MiB, {:.2} MiB in the last window: {}",
        mib(r.data_dir_soak_start_bytes),
        mib(r.data_dir_soak_end_bytes),
        soak.latency.soak_calls,
        r.data_dir_bytes_per_soak_call,
        mib(r.wal_max_bytes),
        mib(r.wal_last_window_max_bytes),
        match r.wal_bounded {
            Some(true) => "bounded",
            Some(false) => "FAIL (growing)",
            None => "not judged (the store is in PostgreSQL)",
        }
    );
}

/// The HTML report (`index.html`; the page shell of `harness run`'s): the verdict, the
/// terminal summary, the soak's samples and every failed device.
pub fn html(report: &FleetReport) -> String {
    let mut out = html_head("harness fleet");
    let (class, result) = if report.passed() {
        ("pass", "passed")
    } else {
        ("fail", "FAILED")
    };
    let _ = write!(
        out,
        "<h1>harness fleet</h1><p class=\"{class}\">{result}</p><pre>{}</pre>",
        escape(&summary(report))
    );
    if let Some(r) = report.soak.as_ref().and_then(|s| s.resources.as_ref()) {
        let _ = write!(
            out,
            "<details><summary>The portal sampled every {:.0} s ({} samples)</summary>\
             <table><tr><th>at s</th><th>RSS MiB</th><th>data directory MiB</th><th>WAL MiB</th></tr>",
            r.sample_every_secs,
            r.samples.len()
        );
        for sample in &r.samples {
            let rss = sample
                .rss_kib
                .map_or("-".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));
            let _ = write!(
                out,
                "<tr><td>{:.1}</td><td>{rss}</td><td>{:.2}</td><td>{:.2}</td></tr>",
                sample.at_secs,
                mib(sample.data_dir_bytes),
                mib(sample.wal_bytes)
            );
        }
        out.push_str("</table></details>");
    }
    let failed: Vec<_> = report.failed_devices().collect();
    if !failed.is_empty() {
        let _ = write!(
            out,
            "<h2>{} failed devices</h2><table><tr><th>device</th><th>route</th><th>expected</th><th>got</th><th>why</th></tr>",
            failed.len()
        );
        for d in failed {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"fail\">{}</td><td>{}</td></tr>",
                escape(&d.name),
                route_name(d.route),
                d.expected().name(),
                d.verdict.name(),
                escape(d.detail.as_deref().unwrap_or(""))
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</body></html>\n");
    out
}

/// The whole report as pretty JSON.
pub fn json(report: &FleetReport) -> Result<String, FleetReportError> {
    Ok(serde_json::to_string_pretty(report)?)
}

/// JUnit XML: one test case per device (its expected verdict is the test), and one for "no
/// server errors".
pub fn junit(report: &FleetReport) -> Result<String, FleetReportError> {
    let mut suite = TestSuite::new("harness-fleet");
    for d in &report.device_reports {
        let status = if d.passed() {
            TestCaseStatus::success()
        } else {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            status.set_message(format!(
                "expected {}, got {}",
                d.expected().name(),
                d.verdict.name()
            ));
            status.set_description(d.detail.clone().unwrap_or_default());
            status
        };
        let mut case = TestCase::new(d.name.clone(), status);
        case.set_classname(format!("fleet.{}", route_name(d.route).replace(' ', "-")));
        suite.add_test_case(case);
    }
    let server_errors = report.server_errors();
    let status = if server_errors == 0 {
        TestCaseStatus::success()
    } else {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
        status.set_message(format!("{server_errors} calls answered 5xx"));
        status
    };
    let mut case = TestCase::new("no server errors", status);
    case.set_classname("fleet");
    suite.add_test_case(case);
    if let Some(soak) = &report.soak {
        let status = if soak.passed() {
            TestCaseStatus::success()
        } else {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            status.set_message("the portal's RSS grew 10% or more, or its WAL kept growing");
            status
        };
        let mut case = TestCase::new("soak: RSS and WAL bounded", status);
        case.set_classname("fleet");
        suite.add_test_case(case);
    }
    suite.set_time(Duration::from_secs_f64(report.wall_secs.max(0.0)));
    let mut junit = Report::new("harness fleet");
    junit.add_test_suite(suite);
    Ok(junit.to_string()?)
}
