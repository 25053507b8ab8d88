//! BitLocker recovery test harness: the top of the stack.
//!
//! - [`scenario`]: the YAML scenario schema and the catalog loader.
//! - [`runner`]: plays scenarios end to end against a portal and writes the reports.
//! - [`cli`]: the `harness` command line, one function per subcommand.
//! - [`fleet`]: `harness fleet`, many devices and concurrent recoveries against one portal.
//! - [`keys`]: seeded, reproducible key-ID / recovery-password pairs at millions a second.
//!
//! The layers below are crates of their own (ARCHITECTURE.md, "Code map"): `eventlog` (the
//! TCG log), `bitlocker` (the BitLocker formats), `device` (the device model and the
//! machine on its swtpm), `portal-client` (the portal over HTTP), `swtpm` and `supervise`.

pub mod cli;
pub mod fleet;
pub mod keys;
pub mod runner;
pub mod scenario;
