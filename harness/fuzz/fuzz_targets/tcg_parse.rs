//! Any bytes: the real-log reader must return a log or an error, never panic; whatever it
//! accepts must replay, describe, write back and re-read to the same records.
#![no_main]

use eventlog::tcg::{LogFormat, TcgLog};
use eventlog::{describe, sipa, EventLog};
use device::predict;
use libfuzzer_sys::fuzz_target;

fn round_trips(log: &TcgLog) -> bool {
    log.format == LogFormat::CryptoAgile
        || log
            .records
            .first()
            .is_some_and(|r| !r.data.starts_with(b"Spec ID Event03"))
}

fuzz_target!(|data: &[u8]| {
    let _ = EventLog::parse(data);
    let _ = sipa::parse(data);
    if let Ok(log) = TcgLog::parse(data) {
        let _ = log.replay();
        for r in &log.records {
            let _ = describe::describe(r);
        }
        let _ = predict::unseal_point(&log);
        // Written back, it must read again, except where nothing or a Spec ID event would
        // come first (a SHA-1-format log of only a skipped trust point, or one whose first
        // kept record looks like a crypto-agile header).
        if round_trips(&log) {
            let again = TcgLog::parse(&log.to_bytes());
            assert!(again.is_ok(), "re-reading a written log failed: {again:?}");
        }
        for change in [
            device::ChangeKind::SecureBootDbUpdate,
            device::ChangeKind::BcdDebugOn,
            device::ChangeKind::BcdBootOrder,
        ] {
            let _ = predict::apply(&log, change);
        }
    }
});
