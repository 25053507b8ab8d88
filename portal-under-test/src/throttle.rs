//! Password sign-in throttling (API.md §6 "Sign-in throttling"), per account and per source
//! address: a few free failures, then an exponential back-off between attempts, capped, and
//! forgotten after a quiet period, so an attacker slows an account down but never locks its
//! user out for good. Kept in the store when the store is shared by several portal
//! processes (PostgreSQL: every replica counts the same failures), else in memory (SQLite:
//! one process; a restart forgets them).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

use crate::store::{unix_us, Store};

/// Failed passwords an account may have before its back-off starts.
pub const ACCOUNT_FREE_FAILURES: u32 = 5;
/// Failed passwords (any accounts) a source address may have before its back-off starts.
pub const SOURCE_FREE_FAILURES: u32 = 20;
/// The back-off doubles from 1 s per further failure up to this.
pub const MAX_DELAY: Duration = Duration::from_secs(300);
/// Failures are forgotten after this long without a new one.
pub const FORGET_AFTER: Duration = Duration::from_secs(900);
/// Above this many tracked accounts and addresses, forgotten entries are swept.
const SWEEP_ABOVE: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    /// Lower-cased: account names compare case-insensitively.
    Account(String),
    Source(IpAddr),
}

impl Subject {
    /// The subject's key in the store's table.
    fn key(&self) -> String {
        match self {
            Subject::Account(a) => format!("account:{a}"),
            Subject::Source(ip) => format!("source:{ip}"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: OffsetDateTime,
}

/// The wait a subject with `count` failures owes after its last one.
fn back_off(count: u32, free: u32) -> Duration {
    if count < free {
        return Duration::ZERO;
    }
    let doublings = (count - free).min(16);
    Duration::from_secs(1u64 << doublings).min(MAX_DELAY)
}

#[derive(Default)]
pub struct SignInThrottle {
    failures: Mutex<HashMap<Subject, Failures>>,
    /// Where the failures live when the store shares them between processes.
    shared: Option<Arc<dyn Store>>,
}

fn time_of_us(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl SignInThrottle {
    /// Keeps the failures in `store` if it shares them between processes, else in memory.
    pub fn new(store: Arc<dyn Store>) -> SignInThrottle {
        SignInThrottle {
            failures: Mutex::default(),
            shared: store.shares_sign_in_failures().then_some(store),
        }
    }

    /// The recorded failures of each subject (None: none recorded). A store error reads as
    /// none (logged): the sign-in's own account lookup then fails on the same store.
    fn load(&self, subjects: &[(Subject, u32)]) -> Vec<Option<Failures>> {
        let Some(store) = &self.shared else {
            let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            return subjects.iter().map(|(s, _)| map.get(s).copied()).collect();
        };
        let keys: Vec<String> = subjects.iter().map(|(s, _)| s.key()).collect();
        let stored = store.sign_in_failures(&keys).unwrap_or_else(|e| {
            tracing::error!(error = %e, "reading sign-in failures failed");
            Vec::new()
        });
        keys.iter()
            .map(|k| {
                stored
                    .iter()
                    .find(|(s, _, _)| s == k)
                    .map(|(_, count, last)| Failures {
                        count: *count,
                        last: time_of_us(*last),
                    })
            })
            .collect()
    }

    fn subjects(account: &str, source: Option<IpAddr>) -> Vec<(Subject, u32)> {
        let mut s = vec![(
            Subject::Account(account.to_lowercase()),
            ACCOUNT_FREE_FAILURES,
        )];
        if let Some(ip) = source {
            s.push((Subject::Source(ip), SOURCE_FREE_FAILURES));
        }
        s
    }

    fn live(f: &Failures, now: OffsetDateTime) -> bool {
        now - f.last < FORGET_AFTER
    }

    /// `Err(wait)` when the account or the address must wait before its next attempt (the
    /// password is then not checked at all).
    pub fn check(
        &self,
        account: &str,
        source: Option<IpAddr>,
        now: OffsetDateTime,
    ) -> Result<(), Duration> {
        let subjects = Self::subjects(account, source);
        let loaded = self.load(&subjects);
        let mut wait = Duration::ZERO;
        for ((_, free), f) in subjects.into_iter().zip(loaded) {
            if let Some(f) = f.filter(|f| Self::live(f, now)) {
                let since = Duration::try_from(now - f.last).unwrap_or(Duration::ZERO);
                wait = wait.max(back_off(f.count, free).saturating_sub(since));
            }
        }
        if wait.is_zero() {
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// A wrong password (or unknown account) from `source`.
    pub fn failed(&self, account: &str, source: Option<IpAddr>, now: OffsetDateTime) {
        if let Some(store) = &self.shared {
            let keys: Vec<String> = Self::subjects(account, source)
                .iter()
                .map(|(s, _)| s.key())
                .collect();
            if let Err(e) =
                store.add_sign_in_failure(&keys, unix_us(now), unix_us(now - FORGET_AFTER))
            {
                tracing::error!(error = %e, "recording a sign-in failure failed");
            }
            return;
        }
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > SWEEP_ABOVE {
            map.retain(|_, f| Self::live(f, now));
        }
        for (subject, _) in Self::subjects(account, source) {
            let f = map.entry(subject).or_insert(Failures {
                count: 0,
                last: now,
            });
            if !Self::live(f, now) {
                f.count = 0;
            }
            f.count = f.count.saturating_add(1);
            f.last = now;
        }
    }

    /// The right password: the account's failures are forgotten (the address's are not).
    pub fn succeeded(&self, account: &str) {
        let subject = Subject::Account(account.to_lowercase());
        if let Some(store) = &self.shared {
            if let Err(e) = store.clear_sign_in_failures(&subject.key()) {
                tracing::error!(error = %e, "clearing sign-in failures failed");
            }
            return;
        }
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&subject);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_starts_after_the_free_failures_doubles_and_is_capped() {
        assert_eq!(back_off(4, 5), Duration::ZERO);
        assert_eq!(back_off(5, 5), Duration::from_secs(1));
        assert_eq!(back_off(6, 5), Duration::from_secs(2));
        assert_eq!(back_off(13, 5), Duration::from_secs(256));
        assert_eq!(back_off(14, 5), MAX_DELAY);
        assert_eq!(back_off(u32::MAX, 5), MAX_DELAY);
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_period() {
        let t = SignInThrottle::default();
        let now = OffsetDateTime::now_utc();
        for _ in 0..20 {
            t.failed("Alice", None, now);
        }
        assert_eq!(t.check("alice", None, now), Err(MAX_DELAY));
        assert!(t.check("alice", None, now + MAX_DELAY).is_ok());
        // Forgotten: the next failure is the first again.
        let later = now + FORGET_AFTER;
        t.failed("alice", None, later);
        assert!(t.check("alice", None, later).is_ok());
    }
}
