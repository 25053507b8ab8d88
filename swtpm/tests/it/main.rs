//! Integration tests: each uses its own real swtpm process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod dictionary_attack;
mod lifecycle;
mod sealing;
