//! Server-side sessions: the portal owns the table, so inactivity expiry is enforced here
//! and counted from the last *request*, whatever the page does. Time comes from the
//! portal's [`Clock`] (a test's manual clock in the idle tests).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::Clock;
use crate::crypto::random_token;
use crate::store::{unix_us, Role, Store, StoredSession};

#[derive(Debug, Clone)]
pub struct SessionUser {
    pub username: String,
    pub role: Role,
}

#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub csrf: String,
    /// None before sign-in (the session only carries the sign-in form's CSRF token).
    pub user: Option<SessionUser>,
    pub notice_accepted: bool,
    /// Microseconds since the Unix epoch.
    last_seen_us: i64,
}

impl Session {
    fn stored(&self) -> StoredSession {
        StoredSession {
            id: self.id.clone(),
            csrf: self.csrf.clone(),
            user: self.user.as_ref().map(|u| (u.username.clone(), u.role)),
            notice_accepted: self.notice_accepted,
            last_seen_us: self.last_seen_us,
        }
    }

    fn from_stored(s: StoredSession) -> Session {
        Session {
            id: s.id,
            csrf: s.csrf,
            user: s
                .user
                .map(|(username, role)| SessionUser { username, role }),
            notice_accepted: s.notice_accepted,
            last_seen_us: s.last_seen_us,
        }
    }
}

#[derive(Debug)]
pub enum SessionLookup {
    Missing,
    /// The session was idle too long; it has been destroyed.
    Expired(Session),
    Live(Session),
}

/// Anonymous (pre-sign-in) sessions are dropped after this long.
const ANON_LIFETIME: Duration = Duration::from_secs(3600);
/// Stale sessions are swept from the store once per this many new sessions.
const SWEEP_EVERY: u64 = 1024;

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The sessions, kept in the store (not in process memory): a restart, or another portal
/// process on the same database, signs no one out. A store error reads as "no session"
/// (the user signs in again) and is logged.
pub struct Sessions {
    store: Arc<dyn Store>,
    created: AtomicU64,
    clock: Clock,
}

impl Sessions {
    pub fn new(store: Arc<dyn Store>, clock: Clock) -> Sessions {
        Sessions {
            store,
            created: AtomicU64::new(0),
            clock,
        }
    }

    fn now_us(&self) -> i64 {
        unix_us(self.clock.now())
    }

    fn put(&self, s: &Session) {
        if let Err(e) = self.store.put_session(&s.stored()) {
            tracing::error!(error = %e, "storing a session failed");
        }
    }

    /// Creates a session with a fresh id and CSRF token.
    pub fn create(&self, user: Option<SessionUser>, max_idle: Duration) -> Session {
        let now = self.now_us();
        let s = Session {
            id: random_token("s"),
            csrf: random_token("c"),
            user,
            notice_accepted: false,
            last_seen_us: now,
        };
        if self.created.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            let swept = self.store.sweep_sessions(
                now.saturating_sub(micros(max_idle)),
                now.saturating_sub(micros(ANON_LIFETIME)),
            );
            if let Err(e) = swept {
                tracing::warn!(error = %e, "sweeping stale sessions failed");
            }
        }
        self.put(&s);
        s
    }

    /// Looks a session up and counts the request as activity. A signed-in session idle for
    /// longer than `max_idle` is destroyed and reported as expired (unless `enforce` is off).
    pub fn touch(&self, id: &str, max_idle: Duration, enforce: bool) -> SessionLookup {
        let stored = match self.store.session(id) {
            Ok(Some(s)) => s,
            Ok(None) => return SessionLookup::Missing,
            Err(e) => {
                tracing::error!(error = %e, "reading a session failed");
                return SessionLookup::Missing;
            }
        };
        let mut s = Session::from_stored(stored);
        let now = self.now_us();
        let idle = now.saturating_sub(s.last_seen_us);
        if s.user.is_some() && enforce && idle > micros(max_idle) {
            self.remove(id);
            return SessionLookup::Expired(s);
        }
        if s.user.is_none() && idle > micros(ANON_LIFETIME) {
            self.remove(id);
            return SessionLookup::Missing;
        }
        s.last_seen_us = now;
        self.put(&s);
        SessionLookup::Live(s)
    }

    pub fn update(&self, id: &str, f: impl FnOnce(&mut Session)) {
        match self.store.session(id) {
            Ok(Some(stored)) => {
                let mut s = Session::from_stored(stored);
                f(&mut s);
                self.put(&s);
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "reading a session failed"),
        }
    }

    pub fn remove(&self, id: &str) {
        if let Err(e) = self.store.delete_session(id) {
            tracing::error!(error = %e, "deleting a session failed");
        }
    }
}
