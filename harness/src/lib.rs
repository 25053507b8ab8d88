//! BitLocker recovery test harness.
//!
//! - [`bitlocker`]: recovery passwords, the stretch, AES-CCM key wrapping, protector IDs and
//!   a volume with real sector encryption. Pure software.
//! - [`eventlog`]: the TCG PC Client crypto-agile binary event log (writer, reader, replay).
//! - [`device`]: the measured-boot model: components in, TCG events and PCR predictions out.
//! - [`cli`]: the `harness` command line, one function per subcommand.

pub mod bitlocker;
pub mod cli;
pub mod device;
pub mod eventlog;
