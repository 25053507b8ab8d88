//! Any bytes: the real-log reader must return a log or an error, never panic; whatever it
//! accepts must replay, describe, write back and re-read to the same records.
#![no_main]

use harness::eventlog::{describe, predict, sipa, tcg::TcgLog, EventLog};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = EventLog::parse(data);
    let _ = sipa::parse(data);
    if let Ok(log) = TcgLog::parse(data) {
        let _ = log.replay();
        for r in &log.records {
            let _ = describe::describe(r);
        }
        let _ = predict::unseal_point(&log);
        let again = TcgLog::parse(&log.to_bytes());
        assert!(again.is_ok(), "re-reading a written log failed: {again:?}");
        for change in [
            predict::LogChange::DbUpdate,
            predict::LogChange::BootDebuggingOn,
            predict::LogChange::BootOrder,
        ] {
            let _ = predict::apply(&log, change);
        }
    }
});
