//! Named, timed steps: every check of a scenario is a step, and a failure names the step,
//! what was expected and what came.

use std::time::{Duration, Instant};

use serde::Serialize;

/// The names of the steps that check a scenario's expectations, as reports show them
/// (`harness run --json`, JUnit, HTML). Defined once: the runner runs them under these
/// names and the mutation test expects its failures at them.
pub mod step {
    /// The boot under test (`expect.recovery`, `tpm_error`, `changed_pcrs`).
    pub const BOOT: &str = "boot after the change";
    /// The same checks on a lost-PIN story (`change.then`): the user gives up at the prompt,
    pub const PIN_ESC: &str = "the user presses Esc at the PIN prompt";
    /// ... or was locked out by the last wrong PIN already,
    pub const PIN_LOCKED_OUT: &str = "the recovery screen after the wrong PINs";
    /// ... or types the right PIN.
    pub const PIN_RIGHT: &str = "the user types the right PIN";
    /// The portal's answer to a key request.
    pub const ANSWER: &str = "the portal answers as the scenario says";
    /// `several_matches`: the portal asks for all 32 digits (self-service and help desk).
    pub const SEVERAL_MATCHES: &str = "the portal asks for all 32 digits";
    /// Self-service `refused`: byte-identical to an absent key ID.
    pub const REFUSED_LIKE_ABSENT: &str = "a foreign key ID is answered exactly like an absent one";
    /// Help desk `refused`: the same comparison.
    pub const HELP_DESK_REFUSED: &str = "the refusal is answered exactly like an absent key ID";
    /// Manage TPM `refused`: byte-identical to an absent computer.
    pub const TPM_REFUSED: &str = "the refusal is answered exactly like an absent computer";
    /// The Manage TPM answer (help desk lockout reset).
    pub const MANAGE_TPM: &str = "Manage TPM answers as the scenario says";
    /// `checks.audit`.
    pub const AUDIT: &str = "the audit shows each request";
    /// `checks.audit_absent`.
    pub const AUDIT_ABSENT: &str = "the audit has none of the rows the story must not leave";
    /// `expect.tpm_failed_tries`: the TPM's failure counter after the change's boot.
    pub const FAILED_TRIES: &str = "the TPM's failure counter";

    /// `recovery.language`: the pages come in the language `tag` (`ja`).
    pub fn pages_in(tag: &str) -> String {
        format!("the pages come in {tag}")
    }

    /// A step of the `n`-th change (1-based) of a story of several (`changes`); a story of
    /// one change names its steps plainly.
    pub fn of_change(name: &str, n: usize) -> String {
        format!("{name} (change {n})")
    }
}

/// Why a scenario failed: the step, what it expected, what it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("step \"{step}\": expected {expected}; got {got}")]
pub struct Failure {
    /// The step's name, e.g. `boot after the change`.
    pub step: String,
    /// What the scenario required.
    pub expected: String,
    /// What happened instead.
    pub got: String,
}

/// One step as it ran.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// The step's name.
    pub name: String,
    /// Wall time.
    #[serde(serialize_with = "as_millis")]
    pub duration: Duration,
    /// `None` when it passed.
    pub failure: Option<Failure>,
    /// What it saw (a short note for the report), when it passed.
    pub note: Option<String>,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// The steps of one scenario run.
#[derive(Debug, Default)]
pub struct Steps {
    records: Vec<StepRecord>,
}

/// What a step body returns: a note for the report, or how it failed.
pub type StepResult<T> = Result<T, (String, String)>;

impl Steps {
    /// Runs a synchronous step.
    pub fn run<T>(
        &mut self,
        name: &str,
        body: impl FnOnce() -> StepResult<T>,
    ) -> Result<T, Failure> {
        let start = Instant::now();
        let result = body();
        self.finish(name, start, result)
    }

    /// Runs an asynchronous step.
    pub async fn run_async<T, F>(&mut self, name: &str, body: F) -> Result<T, Failure>
    where
        F: std::future::Future<Output = StepResult<T>>,
    {
        let start = Instant::now();
        let result = body.await;
        self.finish(name, start, result)
    }

    /// Adds a note to the last step (shown in the HTML report).
    pub fn note(&mut self, note: impl Into<String>) {
        if let Some(last) = self.records.last_mut() {
            last.note = Some(note.into());
        }
    }

    /// The steps so far.
    pub fn into_records(self) -> Vec<StepRecord> {
        self.records
    }

    fn finish<T>(
        &mut self,
        name: &str,
        start: Instant,
        result: StepResult<T>,
    ) -> Result<T, Failure> {
        let duration = start.elapsed();
        match result {
            Ok(value) => {
                self.records.push(StepRecord {
                    name: name.to_string(),
                    duration,
                    failure: None,
                    note: None,
                });
                Ok(value)
            }
            Err((expected, got)) => {
                let failure = Failure {
                    step: name.to_string(),
                    expected,
                    got,
                };
                self.records.push(StepRecord {
                    name: name.to_string(),
                    duration,
                    failure: Some(failure.clone()),
                    note: None,
                });
                Err(failure)
            }
        }
    }
}

/// `Err((expected, got))` unless `ok`.
pub fn ensure(ok: bool, expected: impl Into<String>, got: impl Into<String>) -> StepResult<()> {
    if ok {
        Ok(())
    } else {
        Err((expected.into(), got.into()))
    }
}

/// Turns any error into a step failure that expected `expected`.
pub fn because<E: std::fmt::Display>(expected: &str) -> impl FnOnce(E) -> (String, String) + '_ {
    move |e: E| (expected.to_string(), e.to_string())
}
