//! Latency and errors per operation: an HDR histogram (microseconds, 3 significant digits)
//! per operation, the first start and last end (for its throughput), and failures counted
//! by HTTP status (or `transport` / `bad body` when there was none).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use portal_client::PortalError;
use serde::Serialize;

/// What the fleet asks of the portal (and `verify`, the local key check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Admin: a one-time enrollment token.
    EnrollmentToken,
    /// Agent: enroll.
    Enroll,
    /// Agent: escrow one recovery password.
    Escrow,
    /// Agent: check in.
    CheckIn,
    /// Admin: the self-service user's account.
    CreateAccount,
    /// Agent: a local sign-in by the user.
    ReportSignIn,
    /// Help desk JSON lookup.
    HelpDeskLookup,
    /// Self-service: sign in and accept the notice.
    SelfServiceSignIn,
    /// Self-service: ask for the key.
    SelfServiceKey,
    /// Local: the recovered password against the device's protector (one stretch).
    Verify,
    /// Agent: confirm a rotation.
    ConfirmRotation,
}

impl Op {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::EnrollmentToken => "enrollment_token",
            Op::Enroll => "enroll",
            Op::Escrow => "escrow",
            Op::CheckIn => "check_in",
            Op::CreateAccount => "create_account",
            Op::ReportSignIn => "report_sign_in",
            Op::HelpDeskLookup => "helpdesk_lookup",
            Op::SelfServiceSignIn => "self_service_sign_in",
            Op::SelfServiceKey => "self_service_key",
            Op::Verify => "verify",
            Op::ConfirmRotation => "confirm_rotation",
        }
    }
}

#[derive(Debug)]
struct OpStats {
    latency_us: Histogram<u64>,
    first_start: Instant,
    last_end: Instant,
    failures: BTreeMap<String, u64>,
}

/// Everything measured, shared by the workers.
#[derive(Debug, Default)]
pub struct Metrics {
    ops: Mutex<BTreeMap<Op, OpStats>>,
    windows: Mutex<Option<Windows>>,
}

/// The soak's first and last windows: a histogram per operation of the calls that started
/// in each, and the calls that started during the soak at all.
#[derive(Debug)]
struct Windows {
    soak_start: Instant,
    soak_end: Instant,
    length: Duration,
    first: BTreeMap<Op, Histogram<u64>>,
    last: BTreeMap<Op, Histogram<u64>>,
    soak_calls: u64,
}

/// One operation's latency in one window of the soak.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowOp {
    pub op: &'static str,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The soak's windows, summarised.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowSummary {
    pub first: Vec<WindowOp>,
    pub last: Vec<WindowOp>,
    /// Calls started between the soak's start and its end (every operation).
    pub soak_calls: u64,
}

/// 1 µs to 1 h at 3 significant digits: the bounds are constants, never bad.
fn latency_histogram() -> Option<Histogram<u64>> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).ok()
}

fn record_in(histograms: &mut BTreeMap<Op, Histogram<u64>>, op: Op, micros: u64) {
    if let std::collections::btree_map::Entry::Vacant(e) = histograms.entry(op) {
        let Some(h) = latency_histogram() else {
            return;
        };
        e.insert(h);
    }
    if let Some(h) = histograms.get_mut(&op) {
        h.saturating_record(micros.max(1));
    }
}

fn window_ops(histograms: &BTreeMap<Op, Histogram<u64>>) -> Vec<WindowOp> {
    let ms = |us: u64| us as f64 / 1000.0;
    histograms
        .iter()
        .map(|(op, h)| WindowOp {
            op: op.name(),
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
        })
        .collect()
}

/// One operation's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpSummary {
    pub op: &'static str,
    /// Calls made (failed ones included).
    pub count: u64,
    pub failed: u64,
    /// Calls per second between the first call's start and the last one's end.
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Failures by HTTP status (`transport` when no answer came).
    pub failures: BTreeMap<String, u64>,
}

impl Metrics {
    /// From now on, calls starting in `[start, start + length)` and in
    /// `[end - length, end)` are also counted in the first and the last window.
    pub fn watch_soak(&self, start: Instant, end: Instant, length: Duration) {
        if let Ok(mut windows) = self.windows.lock() {
            *windows = Some(Windows {
                soak_start: start,
                soak_end: end,
                length,
                first: BTreeMap::new(),
                last: BTreeMap::new(),
                soak_calls: 0,
            });
        }
    }

    /// The soak's windows (`None` without [`Metrics::watch_soak`]).
    pub fn windows(&self) -> Option<WindowSummary> {
        let windows = self.windows.lock().ok()?;
        let w = windows.as_ref()?;
        Some(WindowSummary {
            first: window_ops(&w.first),
            last: window_ops(&w.last),
            soak_calls: w.soak_calls,
        })
    }

    /// Times `call` as one `op`, counting its failure (if any) by status.
    pub async fn time<T>(
        &self,
        op: Op,
        call: impl std::future::Future<Output = Result<T, PortalError>>,
    ) -> Result<T, PortalError> {
        let start = Instant::now();
        let result = call.await;
        let failure = result.as_ref().err().map(failure_kind);
        self.record(op, start, failure);
        result
    }

    /// Records one call of `op` that started at `start` and ends now.
    pub fn record(&self, op: Op, start: Instant, failure: Option<String>) {
        let end = Instant::now();
        let micros = u64::try_from(end.duration_since(start).as_micros()).unwrap_or(u64::MAX);
        if let Ok(mut windows) = self.windows.lock() {
            if let Some(w) = windows.as_mut() {
                if start >= w.soak_start && start < w.soak_end {
                    w.soak_calls += 1;
                }
                if start >= w.soak_start && start < w.soak_start + w.length {
                    record_in(&mut w.first, op, micros);
                }
                if start >= w.soak_end.checked_sub(w.length).unwrap_or(w.soak_end)
                    && start < w.soak_end
                {
                    record_in(&mut w.last, op, micros);
                }
            }
        }
        let Ok(mut ops) = self.ops.lock() else {
            return;
        };
        let stats = match ops.entry(op) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let Some(latency_us) = latency_histogram() else {
                    return;
                };
                e.insert(OpStats {
                    latency_us,
                    first_start: start,
                    last_end: end,
                    failures: BTreeMap::new(),
                })
            }
        };
        stats.latency_us.saturating_record(micros.max(1));
        stats.first_start = stats.first_start.min(start);
        stats.last_end = stats.last_end.max(end);
        if let Some(kind) = failure {
            *stats.failures.entry(kind).or_default() += 1;
        }
    }

    /// One summary per operation, in [`Op`] order.
    pub fn summary(&self) -> Vec<OpSummary> {
        let Ok(ops) = self.ops.lock() else {
            return Vec::new();
        };
        ops.iter()
            .map(|(op, s)| {
                let h = &s.latency_us;
                let ms = |us: u64| us as f64 / 1000.0;
                let span = s
                    .last_end
                    .duration_since(s.first_start)
                    .max(Duration::from_micros(1));
                OpSummary {
                    op: op.name(),
                    count: h.len(),
                    failed: s.failures.values().sum(),
                    ops_per_sec: h.len() as f64 / span.as_secs_f64(),
                    p50_ms: ms(h.value_at_quantile(0.50)),
                    p90_ms: ms(h.value_at_quantile(0.90)),
                    p99_ms: ms(h.value_at_quantile(0.99)),
                    max_ms: ms(h.max()),
                    failures: s.failures.clone(),
                }
            })
            .collect()
    }
}

/// `500`, `404 not_found`, `transport`, `bad body (200)`.
pub fn failure_kind(error: &PortalError) -> String {
    match error {
        PortalError::Status { status, code, .. } => match code {
            Some(code) => format!("{status} {code}"),
            None => status.to_string(),
        },
        PortalError::Body { status, .. } => format!("bad body ({status})"),
        PortalError::Transport { .. } => "transport".into(),
        other => format!("other: {other}"),
    }
}

/// Whether a failure kind is a server error (5xx), which fails the fleet outright.
pub fn is_server_error(kind: &str) -> bool {
    kind.starts_with('5') || kind.starts_with("bad body (5")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn quantiles_and_failures_per_operation() {
        let metrics = Metrics::default();
        let now = Instant::now();
        for ms in 1..=100u64 {
            let start = now - Duration::from_millis(ms);
            let failure = (ms > 98).then(|| "503".to_string());
            metrics.record(Op::Escrow, start, failure);
        }
        let summary = metrics.summary();
        assert_eq!(summary.len(), 1);
        let escrow = &summary[0];
        assert_eq!((escrow.op, escrow.count, escrow.failed), ("escrow", 100, 2));
        assert!((49.0..=52.0).contains(&escrow.p50_ms), "{escrow:?}");
        assert!((98.0..=101.0).contains(&escrow.p99_ms), "{escrow:?}");
        assert!(escrow.max_ms >= escrow.p99_ms);
        assert!(is_server_error("503"));
    }

    #[test]
    fn the_soaks_first_and_last_windows_hold_the_calls_started_in_them() {
        let metrics = Metrics::default();
        let start = Instant::now() - Duration::from_secs(100);
        let end = start + Duration::from_secs(100);
        metrics.watch_soak(start, end, Duration::from_secs(10));
        // Calls that started 1 s, 2 s, 50 s and 95 s into a 100 s soak.
        for at in [1, 2, 50, 95] {
            metrics.record(Op::CheckIn, start + Duration::from_secs(at), None);
        }
        let w = metrics.windows().unwrap();
        assert_eq!(w.soak_calls, 4);
        assert_eq!((w.first.len(), w.first[0].count), (1, 2));
        assert_eq!((w.last.len(), w.last[0].count), (1, 1));
        assert_eq!(w.first[0].op, "check_in");
        assert!(!is_server_error("404 not_found"));
    }
}
