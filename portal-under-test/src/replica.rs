//! Keeping a replica's memory current when several portal processes share one database
//! (PostgreSQL): the prefix index and the settings are the only things a portal keeps in
//! memory that another process can change (sessions, the failed-lookup count, disclosure
//! marks and the sign-in throttle are read from the store on each use).
//!
//! One thread a replica ([`follow`]) waits for the store's change notifications (or
//! [`POLL_EVERY`] at most), then reads every key added or superseded since its last
//! position in the store's change sequence and applies it to the index, and reloads the
//! settings if another process saved new ones. After a lost connection the store's listener
//! reconnects by itself and wakes the thread, which catches up from its position.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::config::Settings;
use crate::{AppState, InitError, Inner};

/// The longest a replica goes without catching up, notification or not.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// Starts the follower thread from `position` (taken before the index was loaded);
/// `settings_json` is the settings as this process last saved them. The thread ends when
/// the state is dropped.
pub fn follow(state: &AppState, position: i64, settings_json: String) -> Result<(), InitError> {
    let weak = Arc::downgrade(&state.0);
    std::thread::Builder::new()
        .name("replica-follower".into())
        .spawn(move || run(weak, position, settings_json))
        .map(drop)
        .map_err(InitError::Follower)
}

fn run(state: Weak<Inner>, mut position: i64, mut settings_json: String) {
    let mut seen = 0;
    loop {
        let Some(s) = state.upgrade() else { return };
        let store = s.store.clone();
        drop(s);
        // Not holding the state while waiting: a dropped portal ends the thread.
        seen = store.wait_for_change(seen, POLL_EVERY);
        let Some(s) = state.upgrade() else { return };
        match catch_up(&s, position, &mut settings_json) {
            Ok(next) => position = next,
            // The store is away (a restart): the next wake-up retries from the same place.
            Err(e) => tracing::warn!(error = %e, "replica: catching up failed"),
        }
    }
}

/// Applies every key change since `position` to the index and reloads changed settings;
/// returns the next position.
fn catch_up(
    s: &Inner,
    position: i64,
    settings_json: &mut String,
) -> Result<i64, crate::store::StoreError> {
    let changes = s.store.key_changes_since(position)?;
    if !changes.current.is_empty() {
        s.index.insert_many(changes.current);
    }
    for key_id in changes.superseded {
        s.index.supersede(key_id);
    }
    if let Some(json) = s.store.load_settings()? {
        if json != *settings_json {
            match serde_json::from_str::<Settings>(&json) {
                Ok(new) => s.set_settings(new),
                Err(e) => tracing::error!(error = %e, "replica: stored settings are damaged"),
            }
            *settings_json = json;
        }
    }
    Ok(changes.next)
}
