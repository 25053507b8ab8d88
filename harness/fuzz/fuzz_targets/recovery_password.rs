//! Fuzzes `checks::recovery_password` (harness/fuzz/checks.rs: the parser and the property it must keep).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::recovery_password(data));
