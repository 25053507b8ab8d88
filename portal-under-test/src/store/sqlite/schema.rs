//! The SQLite schema as numbered migrations, applied in order at open, each in its own
//! transaction; `PRAGMA user_version` records the last one applied. Never edit a released
//! migration: add one.

use rusqlite::Connection;

use crate::store::StoreError;

/// (version, SQL). Versions start at 1 and have no gaps.
const MIGRATIONS: &[(i64, &str)] = &[(1, V1_TABLES), (2, V2_MICROSECONDS_AND_SESSIONS)];

/// Applies the migrations newer than the file's `user_version`.
pub(super) fn migrate(c: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let tx = c.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
    }
    Ok(())
}

/// The tables as first released (`IF NOT EXISTS`: files from before the migrations list
/// already have them at `user_version` 1).
const V1_TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS accounts(
  id INTEGER PRIMARY KEY, username TEXT NOT NULL, username_lc TEXT NOT NULL UNIQUE,
  password_hash TEXT NOT NULL, role TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_tokens(
  token_hash BLOB PRIMARY KEY, account_id INTEGER NOT NULL REFERENCES accounts(id),
  created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS enrollment_tokens(
  token_hash BLOB PRIMARY KEY, created_at TEXT NOT NULL, used_at TEXT);
CREATE TABLE IF NOT EXISTS devices(
  id INTEGER PRIMARY KEY, device_uuid TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
  name_lc TEXT NOT NULL UNIQUE, credential_hash BLOB UNIQUE, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys(
  id INTEGER PRIMARY KEY, key_id BLOB NOT NULL UNIQUE, device_id INTEGER NOT NULL REFERENCES devices(id),
  volume_id BLOB NOT NULL, protector_type TEXT NOT NULL, nonce BLOB NOT NULL,
  ciphertext BLOB NOT NULL, fingerprint BLOB NOT NULL, created_at TEXT NOT NULL,
  disclosed_at TEXT, superseded_at TEXT, superseded_by BLOB);
-- Only keys waiting for rotation are indexed by device: bulk escrow stays cheap.
CREATE INDEX IF NOT EXISTS keys_to_rotate ON keys(device_id)
  WHERE disclosed_at IS NOT NULL AND superseded_at IS NULL;
CREATE TABLE IF NOT EXISTS associations(
  device_id INTEGER NOT NULL, user_lc TEXT NOT NULL, user TEXT NOT NULL,
  local INTEGER NOT NULL DEFAULT 0, remote INTEGER NOT NULL DEFAULT 0,
  imported INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(device_id, user_lc));
CREATE INDEX IF NOT EXISTS assoc_user ON associations(user_lc);
CREATE TABLE IF NOT EXISTS sign_ins(
  id INTEGER PRIMARY KEY, device_id INTEGER NOT NULL, user TEXT NOT NULL, kind TEXT NOT NULL,
  time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tpm_lockout(
  id INTEGER PRIMARY KEY, device_id INTEGER NOT NULL, nonce BLOB NOT NULL,
  ciphertext BLOB NOT NULL, created_at TEXT NOT NULL, disclosed_at TEXT, superseded_at TEXT);
CREATE TABLE IF NOT EXISTS settings(id INTEGER PRIMARY KEY CHECK(id = 1), json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit(
  id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, time_unix INTEGER NOT NULL,
  source TEXT NOT NULL, requester TEXT NOT NULL, requester_lc TEXT NOT NULL, end_user TEXT,
  device TEXT, key_id TEXT, key_type TEXT, reason TEXT, outcome TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_requester ON audit(requester_lc, time_unix);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
  BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
  BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
CREATE TRIGGER IF NOT EXISTS keys_no_delete BEFORE DELETE ON keys
  BEGIN SELECT RAISE(ABORT, 'key records are never deleted'); END;
"#;

/// Audit times in microseconds (the failure window and `since=` compare below the second),
/// and web sessions in the store (a restart signs no one out).
const V2_MICROSECONDS_AND_SESSIONS: &str = r#"
ALTER TABLE audit ADD COLUMN time_us INTEGER NOT NULL DEFAULT 0;
DROP TRIGGER audit_no_update;
UPDATE audit SET time_us = time_unix * 1000000;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
  BEGIN SELECT RAISE(ABORT, 'audit is append-only'); END;
DROP INDEX audit_requester;
CREATE INDEX audit_requester_us ON audit(requester_lc, time_us);
CREATE TABLE sessions(
  id TEXT PRIMARY KEY, csrf TEXT NOT NULL, username TEXT, role TEXT,
  notice_accepted INTEGER NOT NULL DEFAULT 0, last_seen_us INTEGER NOT NULL);
CREATE INDEX sessions_last_seen ON sessions(last_seen_us);
"#;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_version_1_file_is_migrated_keeping_its_audit_rows() {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch(V1_TABLES).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.execute(
            "INSERT INTO audit(time, time_unix, source, requester, requester_lc, outcome)
             VALUES ('2026-01-02T03:04:05Z', 1767323045, 'api', 'hd', 'hd', 'not_found')",
            [],
        )
        .unwrap();
        migrate(&mut c).unwrap();
        let us: i64 = c
            .query_row("SELECT time_us FROM audit", [], |r| r.get(0))
            .unwrap();
        assert_eq!(us, 1_767_323_045_000_000);
        let version: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 2);
        // Still append-only, and the sessions table exists.
        assert!(c.execute("UPDATE audit SET outcome = 'shown'", []).is_err());
        c.execute(
            "INSERT INTO sessions(id, csrf, last_seen_us) VALUES ('s', 'c', 1)",
            [],
        )
        .unwrap();
        // Migrating again is a no-op.
        migrate(&mut c).unwrap();
    }
}
