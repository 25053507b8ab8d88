//! The portal's clock for session inactivity. A running portal reads the system clock;
//! a test gives [`Config::clock`](crate::config::Config) a [`ManualClock`] and moves it
//! forward itself, so idle-expiry tests neither sleep nor race the wall clock. The manual
//! clock is reachable only from Rust (`Config::clock` is never read from a config file), so
//! a deployed portal cannot be given one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

/// Where the portal reads the time.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system's UTC clock.
    #[default]
    System,
    /// A test's clock: stands still until the test advances it.
    Manual(ManualClock),
}

impl Clock {
    pub fn now(&self) -> OffsetDateTime {
        match self {
            Clock::System => OffsetDateTime::now_utc(),
            Clock::Manual(m) => m.now(),
        }
    }
}

/// A clock that starts at the system time of its creation and moves only when told to.
/// Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    pub fn starting_now() -> ManualClock {
        ManualClock(Arc::new(Mutex::new(OffsetDateTime::now_utc())))
    }

    pub fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t = t.saturating_add(time::Duration::try_from(by).unwrap_or(time::Duration::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let m = ManualClock::starting_now();
        let c = Clock::Manual(m.clone());
        let t0 = c.now();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.now(), t0);
        m.advance(Duration::from_millis(1500));
        assert_eq!(c.now() - t0, time::Duration::milliseconds(1500));
    }
}
