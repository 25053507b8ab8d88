//! Server-side sessions: the portal owns the table, so inactivity expiry is enforced here
//! and counted from the last *request*, whatever the page does. Time comes from the
//! portal's [`Clock`] (a test's manual clock in the idle tests).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use time::OffsetDateTime;

use crate::clock::Clock;
use crate::crypto::random_token;
use crate::store::Role;

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
    last_seen: OffsetDateTime,
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
/// Above this many sessions, stale ones are swept on insert.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    clock: Clock,
}

/// How long ago `then` was; a clock stepped backwards counts as no time at all.
fn since(now: OffsetDateTime, then: OffsetDateTime) -> Duration {
    Duration::try_from(now - then).unwrap_or(Duration::ZERO)
}

impl Sessions {
    pub fn new(clock: Clock) -> Sessions {
        Sessions {
            map: Mutex::default(),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a session with a fresh id and CSRF token.
    pub fn create(&self, user: Option<SessionUser>, max_idle: Duration) -> Session {
        let s = Session {
            id: random_token("s"),
            csrf: random_token("c"),
            user,
            notice_accepted: false,
            last_seen: self.clock.now(),
        };
        let mut map = self.lock();
        if map.len() > SWEEP_ABOVE {
            let now = self.clock.now();
            map.retain(|_, v| {
                let limit = if v.user.is_some() {
                    max_idle
                } else {
                    ANON_LIFETIME
                };
                since(now, v.last_seen) <= limit
            });
        }
        map.insert(s.id.clone(), s.clone());
        s
    }

    /// Looks a session up and counts the request as activity. A signed-in session idle for
    /// longer than `max_idle` is destroyed and reported as expired (unless `enforce` is off).
    pub fn touch(&self, id: &str, max_idle: Duration, enforce: bool) -> SessionLookup {
        let mut map = self.lock();
        let now = self.clock.now();
        let Some(s) = map.get_mut(id) else {
            return SessionLookup::Missing;
        };
        let idle = since(now, s.last_seen);
        if s.user.is_some() && enforce && idle > max_idle {
            let dead = s.clone();
            map.remove(id);
            return SessionLookup::Expired(dead);
        }
        if s.user.is_none() && idle > ANON_LIFETIME {
            map.remove(id);
            return SessionLookup::Missing;
        }
        s.last_seen = now;
        SessionLookup::Live(s.clone())
    }

    pub fn update(&self, id: &str, f: impl FnOnce(&mut Session)) {
        if let Some(s) = self.lock().get_mut(id) {
            f(s);
        }
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}
