//! Integration tests: the real router over a temp-dir SQLite store, one real TLS port, the
//! real binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod admin;
mod contract;
#[cfg(feature = "failpoints")]
mod faults;
mod full_disk;
mod fuzz_replay;
mod hardening;
mod helpdesk;
mod import_crash;
mod kill_traffic;
mod lifecycle;
mod prop;
mod replicas;
mod security;
mod self_service;
mod server;
mod store_guarantees;
mod wal;
