//! BitLocker recovery test harness.
//!
//! - [`bitlocker`]: recovery passwords, the stretch, AES-CCM key wrapping, protector IDs and
//!   a volume with real sector encryption. Pure software.
//! - [`eventlog`]: the TCG PC Client crypto-agile binary event log (writer, reader, replay).
//! - [`device`]: the measured-boot model: components in, TCG events and PCR predictions out.
//! - [`machine`]: a device on its own real TPM with BitLocker: boot, lockouts, the recovery
//!   screen, re-seal.
//! - [`runner`]: plays scenarios end to end against a portal and writes the reports.
//! - [`keys`]: seeded, reproducible key-ID / recovery-password pairs at millions a second.
//! - [`cli`]: the `harness` command line, one function per subcommand.
//! - [`portal`]: a black-box client of a recovery portal over HTTP (agent, admin, user,
//!   help desk), and the embedded portal process.
//! - [`scenario`]: the YAML scenario schema and the catalog loader.

pub mod cli;
pub mod device;
pub mod keys;
pub mod machine;
pub mod portal;
pub mod runner;
pub mod scenario;
