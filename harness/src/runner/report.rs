//! Reports: a summary table for the terminal, JUnit XML for CI systems, JSON for machines,
//! and an HTML page for people (steps, timings, the PCR diff and the events behind it).

use std::fmt::Write as _;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::{RunReport, ScenarioReport};

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// JUnit serialisation.
    #[error("cannot write JUnit XML: {0}")]
    Junit(#[from] quick_junit::SerializeError),
    /// JSON serialisation.
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The terminal summary: one line per scenario, then the totals.
pub fn summary(report: &RunReport) -> String {
    let width = report
        .scenarios
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:>6}  {:>9}  TPM / detail",
        "scenario", "result", "time"
    );
    for s in &report.scenarios {
        let result = if s.passed() { "pass" } else { "FAIL" };
        let detail = match &s.failure {
            Some(f) => format!(
                "step \"{}\": expected {}; got {}",
                f.step, f.expected, f.got
            ),
            None => s
                .lockout
                .tpm_error
                .as_ref()
                .map(|e| match s.lockout.changed_pcrs.as_slice() {
                    [] => e.clone(),
                    pcrs => format!("{e} PCR {pcrs:?}"),
                })
                .unwrap_or_else(|| "no recovery".to_string()),
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:>6}  {:>8.2}s  {}",
            s.name,
            result,
            s.duration.as_secs_f64(),
            detail
        );
    }
    let _ = writeln!(
        out,
        "\n{} passed, {} failed ({} scenarios in {:.1} s, -j {}, portal {})",
        report.passed(),
        report.failed(),
        report.scenarios.len(),
        report.duration.as_secs_f64(),
        report.jobs,
        report.portal_url
    );
    out
}

/// JUnit XML: one test suite, one test case per scenario; a failure carries the step.
pub fn junit(report: &RunReport) -> Result<String, ReportError> {
    let mut suite = TestSuite::new("bitlocker-recovery-scenarios");
    for s in &report.scenarios {
        let status = match &s.failure {
            None => TestCaseStatus::success(),
            Some(f) => {
                let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
                status.set_message(format!("step \"{}\" failed", f.step));
                status.set_description(format!("expected: {}\ngot: {}", f.expected, f.got));
                status
            }
        };
        let mut case = TestCase::new(s.name.clone(), status);
        case.set_classname("scenarios");
        case.set_time(s.duration);
        case.set_system_out(steps_text(s));
        suite.add_test_case(case);
    }
    suite.set_time(report.duration);
    let mut junit = Report::new("harness");
    junit.set_time(report.duration);
    junit.add_test_suite(suite);
    Ok(junit.to_string()?)
}

/// The run as JSON.
pub fn json(report: &RunReport) -> Result<String, ReportError> {
    Ok(serde_json::to_string_pretty(report)?)
}

fn steps_text(s: &ScenarioReport) -> String {
    let mut out = String::new();
    for step in &s.steps {
        let mark = if step.failure.is_some() { "FAIL" } else { "ok" };
        let _ = writeln!(
            out,
            "[{mark}] {} ({:.1} ms)",
            step.name,
            step.duration.as_secs_f64() * 1000.0
        );
        if let Some(note) = &step.note {
            let _ = writeln!(out, "       {note}");
        }
    }
    if let Some(explanation) = &s.lockout.explanation {
        let _ = writeln!(out, "\n{explanation}");
    }
    out
}

/// The file a screenshot is written to, next to `index.html`:
/// `<scenario>-<nn>-<name>.png` (names are file-safe: letters, digits, `-`).
pub fn screenshot_file(scenario: &str, index: usize, name: &str) -> String {
    let safe = |t: &str| -> String {
        t.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect()
    };
    format!("{}-{:02}-{}.png", safe(scenario), index + 1, safe(name))
}

/// The HTML report: one page; browser screenshots are PNG files next to it
/// ([`screenshot_file`]), shown per scenario.
pub fn html(report: &RunReport) -> String {
    let mut out = html_head("BitLocker recovery scenarios");
    let _ = write!(
        out,
        "<h1>BitLocker recovery scenarios</h1><p>{} passed, {} failed, {:.1} s, portal <code>{}</code></p>",
        report.passed(),
        report.failed(),
        report.duration.as_secs_f64(),
        escape(&report.portal_url)
    );
    out.push_str("<table><tr><th>scenario</th><th>result</th><th>time</th><th>TPM error</th><th>changed PCRs</th></tr>");
    for s in &report.scenarios {
        let (class, result) = if s.passed() {
            ("pass", "pass")
        } else {
            ("fail", "FAIL")
        };
        let _ = write!(
            out,
            "<tr><td><a href=\"#{}\">{}</a></td><td class=\"{class}\">{result}</td><td>{:.2} s</td><td>{}</td><td>{:?}</td></tr>",
            escape(&s.name),
            escape(&s.name),
            s.duration.as_secs_f64(),
            escape(s.lockout.tpm_error.as_deref().unwrap_or("-")),
            s.lockout.changed_pcrs
        );
    }
    out.push_str("</table>");
    for s in &report.scenarios {
        let _ = write!(
            out,
            "<h2 id=\"{}\">{}</h2><p>{}</p>",
            escape(&s.name),
            escape(&s.name),
            escape(&s.description)
        );
        if let Some(f) = &s.failure {
            let _ = write!(
                out,
                "<p class=\"fail\">Step “{}”: expected {}; got {}</p>",
                escape(&f.step),
                escape(&f.expected),
                escape(&f.got)
            );
        }
        out.push_str("<table><tr><th>step</th><th>time</th><th>result</th></tr>");
        for step in &s.steps {
            let (class, text) = match &step.failure {
                None => ("pass", step.note.clone().unwrap_or_else(|| "ok".into())),
                Some(f) => ("fail", format!("expected {}; got {}", f.expected, f.got)),
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{:.1} ms</td><td class=\"{class}\">{}</td></tr>",
                escape(&step.name),
                step.duration.as_secs_f64() * 1000.0,
                escape(&text)
            );
        }
        out.push_str("</table>");
        if let Some(explanation) = &s.lockout.explanation {
            let _ = write!(
                out,
                "<details open><summary>Why the device went to recovery (PCR diff and events)</summary><pre>{}</pre></details>",
                escape(explanation)
            );
        }
        if let Some(Ok(boots)) = s.lockout.real_boots.as_deref().map(|b| b.lock()) {
            let _ = write!(
                out,
                "<details open><summary>Real firmware boots (PCR diff and events)</summary><pre>{}</pre></details>",
                escape(&super::real_firmware::describe(&boots))
            );
        }
        if !s.screenshots.is_empty() {
            out.push_str("<details open><summary>In the browser</summary><div class=\"shots\">");
            for (i, shot) in s.screenshots.iter().enumerate() {
                let file = escape(&screenshot_file(&s.name, i, &shot.name));
                let _ = write!(
                    out,
                    "<figure><a href=\"{file}\"><img src=\"{file}\" alt=\"{}\" width=\"300\"></a><figcaption>{}</figcaption></figure>",
                    escape(&shot.name),
                    escape(&shot.name)
                );
            }
            out.push_str("</div></details>");
        }
    }
    out.push_str("</body></html>\n");
    out
}

/// The start of an HTML report page up to `<body>` (its style shared by `harness run` and
/// `harness fleet`); the caller appends the body and `</body></html>`.
pub fn html_head(title: &str) -> String {
    let mut out = String::new();
    out.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    let _ = write!(out, "<title>{}</title><style>", escape(title));
    out.push_str(
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}\
         table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #ddd;text-align:left}\
         .pass{color:#176b2c}.fail{color:#b00020;font-weight:bold}pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap}\
         details{margin:.6em 0}.shots{display:flex;flex-wrap:wrap;gap:1em}\
         figure{margin:0}img{border:1px solid #ccc}",
    );
    out.push_str("</style></head><body>");
    out
}

/// Text for HTML (element content and quoted attributes).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
