//! The fleet's reports: a plain-text summary for the terminal and JSON for machines (the
//! same spirit as `harness run`'s reports, its own shape).

use std::fmt::Write as _;

use super::verdict::FleetReport;

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
        "fleet: {} devices, {} recoveries, -j {}, seed {}: {} in {:.1} s",
        report.devices,
        report.recoveries,
        report.jobs,
        report.seed,
        verdicts.join(", "),
        report.wall_secs
    );
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
            d.route.map_or("no lockout", |r| match r {
                super::plan::Route::HelpDesk => "help desk",
                super::plan::Route::SelfService => "self-service",
            }),
            d.verdict.name(),
            d.detail.as_deref().unwrap_or("")
        );
    }
    if failed.len() > SHOWN {
        let _ = writeln!(s, "... and {} more failed devices", failed.len() - SHOWN);
    }
    s
}

/// The whole report as pretty JSON.
pub fn json(report: &FleetReport) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(report)
}
