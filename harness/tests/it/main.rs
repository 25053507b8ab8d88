//! The harness crate's integration tests: one binary, one module per area.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod browser;
mod change_table;
mod cli;
mod common;
mod eventlog;
mod eventlog_real;
mod eventlog_scenarios;
mod expectations;
mod fleet;
mod fuzz_replay;
mod log_hygiene;
mod machine;
mod matrix;
mod mutants;
mod orphans;
mod portal_client;
mod profiles;
mod real_firmware;
mod replicas;
mod runner;
mod scenarios;
mod tpm_gone;
mod vectors;
mod volume_format;
mod workspace_edges;
