//! A real TPM 2.0 of your own, for a test.
//!
//! [`Tpm::spawn`] starts a `swtpm socket --tpm2` process on free loopback ports with a
//! private state directory and connects a [`tss_esapi::Context`] to it. The process never
//! outlives its owner: it is killed and reaped on drop, and the kernel kills it
//! (`PR_SET_PDEATHSIG`) if the owning process exits, aborts or is SIGKILLed.
//!
//! On top sit the machine-level acts a test needs — reboot, `TPM2_Clear`, dictionary-attack
//! parameters and lockout reset, the lockout counter, PCR read and extend — and sealing a
//! secret to PCR values. Errors name the outcomes a caller acts on ([`Error::PolicyFailed`],
//! [`Error::LockedOut`], [`Error::Integrity`], [`Error::TpmGone`], ...).
//!
//! **This crate knows nothing of BitLocker.** "Another machine" is simply a second
//! [`Tpm::spawn`]: a fresh TPM with its own seeds.
//!
//! Runtime needs: the `swtpm` program and the swtpm TCTI (`libtss2-tcti-swtpm0`, loaded at
//! run time). Set `TSS2_LOG=all+none` to silence the TSS's own logging.

mod error;
mod process;
mod raw;
mod seal;
mod tpm;

pub use error::{Error, Result};
pub use process::SwtpmProcess;
pub use seal::{SealPolicy, SealedBlob};
pub use tpm::{DaParameters, Tpm, MAX_PCR};
pub use tss_esapi::interface_types::algorithm::HashingAlgorithm;
