//! The parts of BitLocker we simulate, written by us on RustCrypto primitives.
//!
//! - [`recovery_password`]: the 48-digit password, parsing with errors that name the block.
//! - [`stretch`]: the SHA-256 stretch that turns a password or PIN into an AES-256 key.
//! - [`keywrap`]: AES-256-CCM wrapping of FVE key entries (VMK, FVEK).
//! - [`protector`]: key protector IDs (GUIDs) and protector types.
//! - [`vmk`]: the volume master key.
//! - [`fve`]: the real on-disk format (volume header, FVE metadata, protectors, sectors),
//!   read and written; opened by cryptsetup and dislocker.
//! - [`disk`]: a volume kept as an image file (the simulated device's system volume).
//! - [`external`]: runs cryptsetup and dislocker against an image (tests and the runner).
//!
//! **This crate knows no TPM** (Cargo enforces it: the harness's `workspace_edges` test). The
//! TPM-bound protectors hold a [`Vmk`] sealed by the `device` crate's machine; here they are
//! opaque key-protector entries of the image ([`fve::NewProtector`]).

pub mod disk;
pub mod external;
pub mod fve;
pub mod keywrap;
pub mod protector;
pub mod recovery_password;
pub mod stretch;
pub mod vmk;

pub use keywrap::{KeyEntry, KeyWrapError, Nonce, WrappedKey};
pub use protector::{KeyProtectorId, ProtectorType};
pub use recovery_password::{check_block, BlockError, BlockProblem, ParseError, RecoveryPassword};
pub use stretch::{stretch_pin, stretch_recovery_password, Salt, StretchedKey};
pub use vmk::Vmk;
