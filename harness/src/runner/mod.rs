//! The runner: plays scenarios end to end against a portal and reports.
//!
//! Each scenario gets a fresh device with its own swtpm ([`device::machine`]) and talks to the
//! portal only over HTTP (the `portal-client` crate). Scenarios run on `jobs` worker threads, each
//! with its own single-threaded tokio runtime (TPM work is synchronous and stays on the
//! worker). Scenarios that change portal-wide settings (the inactivity timeout) run alone
//! after the others, and the settings are put back afterwards.

mod play;
pub mod real_firmware;
pub mod report;
mod steps;
mod user;
pub mod volume_check;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use play::{bitlocker_setup, scenario_device, LockoutFacts};
pub use steps::{step, Failure, StepRecord};

use crate::scenario::Scenario;
use portal_client::{Admin, ChromeOptions, PortalTarget, Screenshot, SettingsPatch};

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Worker threads (scenarios in flight at once).
    pub jobs: usize,
    /// Play the self-service user in headless Chromium (`--browser`); `None`: the
    /// no-JavaScript client.
    pub browser: Option<ChromeOptions>,
    /// Outside tools that judge the device's volume image with the portal's key
    /// (`--check-volume-with`); none: no such steps.
    pub volume_judges: volume_check::VolumeJudges,
}

/// One scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// The scenario's name.
    pub name: String,
    /// Its file.
    pub file: String,
    /// Its description.
    pub description: String,
    /// `None` when every step passed.
    pub failure: Option<Failure>,
    /// Every step that ran, in order.
    pub steps: Vec<StepRecord>,
    /// The lockout as the device saw it (TPM error, changed PCRs, explanation).
    pub lockout: LockoutFacts,
    /// Wall time.
    #[serde(serialize_with = "millis")]
    pub duration: Duration,
    /// The browser's screenshots (`--browser`), in order; written next to the HTML report.
    #[serde(skip)]
    pub screenshots: Vec<Screenshot>,
}

impl ScenarioReport {
    /// Whether every step passed.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The portal the run gated.
    pub portal_url: String,
    /// Scenario results, in catalog order.
    pub scenarios: Vec<ScenarioReport>,
    /// Wall time of the run.
    #[serde(serialize_with = "millis")]
    pub duration: Duration,
    /// Worker threads used.
    pub jobs: usize,
}

impl RunReport {
    /// Scenarios that passed.
    pub fn passed(&self) -> usize {
        self.scenarios.iter().filter(|s| s.passed()).count()
    }
    /// Scenarios that failed.
    pub fn failed(&self) -> usize {
        self.scenarios.len() - self.passed()
    }
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Runs `scenarios` against `target`. `on_done` is called after each scenario (progress).
pub fn run(
    scenarios: &[Scenario],
    target: &PortalTarget,
    options: &RunOptions,
    on_done: &(dyn Fn(&ScenarioReport) + Sync),
) -> RunReport {
    let start = Instant::now();
    let (exclusive, shared): (Vec<usize>, Vec<usize>) =
        (0..scenarios.len()).partition(|&i| play::idle_settings(&scenarios[i]).is_some());
    let results: Mutex<Vec<Option<ScenarioReport>>> = Mutex::new(vec![None; scenarios.len()]);

    // Portal-neutral scenarios, `jobs` at a time.
    let next = AtomicUsize::new(0);
    let jobs = options.jobs.max(1).min(shared.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&index) = shared.get(i) else { break };
                let report = run_one(&scenarios[index], target, None, options);
                on_done(&report);
                if let Ok(mut r) = results.lock() {
                    r[index] = Some(report);
                }
            });
        }
    });
    // Scenarios that change portal-wide settings, one at a time.
    for index in exclusive {
        let report = run_one(
            &scenarios[index],
            target,
            play::idle_settings(&scenarios[index]),
            options,
        );
        on_done(&report);
        if let Ok(mut r) = results.lock() {
            r[index] = Some(report);
        }
    }

    let scenarios_done = results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect();
    RunReport {
        portal_url: target.url.to_string(),
        scenarios: scenarios_done,
        duration: start.elapsed(),
        jobs,
    }
}

fn run_one(
    scenario: &Scenario,
    target: &PortalTarget,
    settings: Option<SettingsPatch>,
    options: &RunOptions,
) -> ScenarioReport {
    let start = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let (failure, steps, lockout, screenshots) = match runtime {
        Err(e) => (
            Some(Failure {
                step: "start an async runtime".into(),
                expected: "a runtime".into(),
                got: e.to_string(),
            }),
            Vec::new(),
            LockoutFacts::default(),
            Vec::new(),
        ),
        Ok(rt) => rt.block_on(async {
            let mut previous = None;
            if let Some(patch) = &settings {
                match apply_settings(target, patch).await {
                    Ok(old) => previous = Some(old),
                    Err(failure) => {
                        return (
                            Some(failure),
                            Vec::new(),
                            LockoutFacts::default(),
                            Vec::new(),
                        )
                    }
                }
            }
            let mut play = play::Play::new(scenario, target);
            play.browser = options.browser.clone();
            play.volume_judges = options.volume_judges;
            let outcome = play.run().await;
            if let Some(old) = previous {
                // Put the portal back as it was; a failure here fails the scenario too.
                if let Err(failure) = apply_settings(target, &old).await {
                    return (
                        Some(failure),
                        play.steps.into_records(),
                        play.facts,
                        play.screenshots,
                    );
                }
            }
            (
                outcome.err(),
                play.steps.into_records(),
                play.facts,
                play.screenshots,
            )
        }),
    };
    ScenarioReport {
        name: scenario.name.clone(),
        file: scenario.file.display().to_string(),
        description: scenario.description.trim().to_string(),
        failure,
        steps,
        lockout,
        duration: start.elapsed(),
        screenshots,
    }
}

/// Applies `patch`; returns the patch that restores the previous values.
async fn apply_settings(
    target: &PortalTarget,
    patch: &SettingsPatch,
) -> Result<SettingsPatch, Failure> {
    let fail = |e: portal_client::PortalError| Failure {
        step: "admin sets the portal's idle timeout for this scenario".into(),
        expected: "200".into(),
        got: e.to_string(),
    };
    let admin = Admin::new(target).map_err(fail)?;
    let old = admin.settings().await.map_err(fail)?;
    admin.update_settings(patch).await.map_err(fail)?;
    Ok(SettingsPatch {
        idle_timeout_secs: Some(old.idle_timeout_secs),
        warning_secs: Some(old.warning_secs),
        ..SettingsPatch::default()
    })
}

// The scenario's words for the portal client's: the client knows no scenarios.
impl From<crate::scenario::Role> for portal_client::AccountRole {
    fn from(role: crate::scenario::Role) -> Self {
        match role {
            crate::scenario::Role::User => Self::User,
            crate::scenario::Role::Helpdesk => Self::Helpdesk,
            crate::scenario::Role::AdvancedHelpdesk => Self::AdvancedHelpdesk,
        }
    }
}

impl From<crate::scenario::SignInKind> for portal_client::SignIn {
    fn from(kind: crate::scenario::SignInKind) -> Self {
        match kind {
            crate::scenario::SignInKind::Local => Self::Local,
            crate::scenario::SignInKind::Remote => Self::Remote,
        }
    }
}
