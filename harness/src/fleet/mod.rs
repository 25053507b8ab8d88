//! `harness fleet`: many simulated devices and concurrent recoveries against one portal, with
//! figures (issue 26).
//!
//! - [`plan`]: the devices drawn from the seed (names, accounts, real key material, who locks
//!   out and how they recover).
//! - [`protector`]: a locked-out device's recovery-password protector and the check of a
//!   recovered password against it (the real stretch and MAC).
//! - [`tpm`]: `--tpm-sample`: locked-out devices played as a real `device::Machine` on
//!   their own swtpm (a lockout the TPM judges, the password typed on its recovery screen).
//! - [`run`]: plays the fleet over HTTP through `portal-client`, `jobs` devices at a time.
//! - [`mix`]: the soak's operation mix (`--mix`).
//! - [`metrics`]: latency histograms (hdrhistogram) and failures by status per operation.
//! - [`verdict`]: a verdict per device and the pass rule.
//! - [`soak`]: with a duration, the portal's RSS and data directory sampled, and their
//!   verdict.
//! - [`report`]: the terminal summary and the JSON report.

pub mod metrics;
pub mod mix;
pub mod plan;
pub mod protector;
pub mod report;
pub mod run;
pub mod soak;
pub mod tpm;
pub mod verdict;

pub use run::{run, FleetError, FleetOptions, Phase, Progress};
pub use verdict::{DeviceReport, FleetReport, Verdict};
