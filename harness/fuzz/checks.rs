//! The properties the harness's fuzz targets check, one function a parser. Shared, word for
//! word, by the cargo-fuzz targets (nightly, `fuzz_targets/`) and the stable replay of the
//! committed corpora in `make test` (harness/tests/it/fuzz_replay.rs includes this file).
//! Each takes any bytes and panics only when a property fails.
#![allow(dead_code)] // each fuzz target uses one function of this file

use std::path::Path;
use std::str::FromStr;

use bitlocker::{KeyProtectorId, RecoveryPassword};

/// Recovery-password and key-protector-ID input (typed at a prompt, read from a key file):
/// any text parses or gives an error; what parses prints in the canonical form, which
/// parses back to the same value.
pub fn recovery_password(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(pw) = RecoveryPassword::parse(text) {
        let shown = pw.to_string();
        match RecoveryPassword::parse(&shown) {
            Ok(again) => assert!(
                again == pw,
                "{text:?} printed as {shown:?}, re-read differs"
            ),
            Err(e) => panic!("{text:?} printed as {shown:?}, which does not parse: {e}"),
        }
    }
    if let Ok(id) = KeyProtectorId::from_str(text) {
        let shown = id.to_string();
        match KeyProtectorId::from_str(&shown) {
            Ok(again) => assert!(
                again == id,
                "{text:?} printed as {shown:?}, re-read differs"
            ),
            Err(e) => panic!("{text:?} printed as {shown:?}, which does not parse: {e}"),
        }
    }
}

/// The scenario YAML loader: any text gives a scenario or an error whose message names
/// the file (and, when the YAML parser placed it, a line and column of the text).
pub fn scenario_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz.yaml");
    if let Err(errors) = harness::scenario::check_scenario(file, text) {
        assert!(!errors.is_empty(), "refused without an error");
        for e in errors {
            let message = e.to_string();
            assert!(
                message.starts_with("fuzz.yaml"),
                "error does not name the file: {message}"
            );
        }
    }
}
