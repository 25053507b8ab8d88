//! Fuzzes `checks::import_lines` (portal-under-test/fuzz/checks.rs: the parser and the property it
//! must keep).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::import_lines(data));
