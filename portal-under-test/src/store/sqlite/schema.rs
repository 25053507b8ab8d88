//! The SQLite schema as numbered migrations, applied in order at open, each in its own
//! transaction; `PRAGMA user_version` records the last one applied. Never edit a released
//! migration: add one.

use rusqlite::{Connection, OptionalExtension};

use crate::store::StoreError;

/// (version, SQL). Versions start at 1 and have no gaps.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, V1_TABLES),
    (2, V2_MICROSECONDS_AND_SESSIONS),
    (3, V3_LEANER_DEVICES_AND_ASSOCIATIONS),
    (4, V4_IMPORTED_USER_ON_THE_DEVICE),
];

/// Applies the migrations newer than the file's `user_version`.
pub(super) fn migrate(c: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    // A migration that rebuilds a table drops the old one: with foreign keys on, that drop
    // would check (and refuse) the rows referencing it. Off while migrating (it cannot change
    // inside a transaction), and each migration checks the references before it commits.
    let foreign_keys: bool = c.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
    c.pragma_update(None, "foreign_keys", "OFF")?;
    let res = (|| -> Result<(), StoreError> {
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            let tx = c.transaction()?;
            tx.execute_batch(sql)?;
            let broken: Option<String> = tx
                .query_row("PRAGMA foreign_key_check", [], |r| r.get(0))
                .optional()?;
            if let Some(table) = broken {
                return Err(StoreError::Corrupt(format!(
                    "migration {version}: a row of {table} references a missing row"
                )));
            }
            tx.pragma_update(None, "user_version", version)?;
            tx.commit()?;
        }
        Ok(())
    })();
    c.pragma_update(None, "foreign_keys", foreign_keys)?;
    res
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

/// Fewer B-tree entries a device and a key (the bulk import writes one device and one
/// association a key; issue 25). Devices: the UUID is random (v4) and never looked up, so it
/// loses its unique index; only enrolled devices have a credential, so its unique index
/// holds only those (it held a NULL entry for every imported device). Associations: the
/// primary key is the table (`WITHOUT ROWID`), not a rowid table beside a key index.
/// Entries a device + key + association: 9 before (devices 4, keys 2, associations 3), 6 after.
const V3_LEANER_DEVICES_AND_ASSOCIATIONS: &str = r#"
CREATE TABLE devices_v3(
  id INTEGER PRIMARY KEY, device_uuid TEXT NOT NULL, name TEXT NOT NULL,
  name_lc TEXT NOT NULL UNIQUE, credential_hash BLOB, created_at TEXT NOT NULL);
INSERT INTO devices_v3(id, device_uuid, name, name_lc, credential_hash, created_at)
  SELECT id, device_uuid, name, name_lc, credential_hash, created_at FROM devices ORDER BY id;
DROP TABLE devices;
ALTER TABLE devices_v3 RENAME TO devices;
CREATE UNIQUE INDEX devices_credential ON devices(credential_hash)
  WHERE credential_hash IS NOT NULL;
CREATE TABLE associations_v3(
  device_id INTEGER NOT NULL, user_lc TEXT NOT NULL, user TEXT NOT NULL,
  local INTEGER NOT NULL DEFAULT 0, remote INTEGER NOT NULL DEFAULT 0,
  imported INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(device_id, user_lc)) WITHOUT ROWID;
INSERT INTO associations_v3 SELECT device_id, user_lc, user, local, remote, imported
  FROM associations;
DROP TABLE associations;
ALTER TABLE associations_v3 RENAME TO associations;
CREATE INDEX assoc_user ON associations(user_lc);
"#;

/// Fewer rows a key (issue 25): a device's imported user lives on the device row, found by a
/// partial index (only devices that have one), instead of in an association row with its
/// own two B-tree entries. The association table keeps sign-ins and further imported users
/// of a device; the portal reads both. Rows a new device + key + user: 3 before, 2 after;
/// B-tree entries 6 before (devices 2, keys 2, associations 2), 5 after (devices 3, keys 2).
/// Associations already stored stay where they are (both places are read).
const V4_IMPORTED_USER_ON_THE_DEVICE: &str = r#"
ALTER TABLE devices ADD COLUMN imported_user TEXT;
ALTER TABLE devices ADD COLUMN imported_user_lc TEXT;
CREATE INDEX devices_imported_user ON devices(imported_user_lc)
  WHERE imported_user_lc IS NOT NULL;
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
        assert_eq!(version, 4);
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

    #[test]
    fn a_version_2_file_gets_the_leaner_devices_and_associations_keeping_its_rows() {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch(V1_TABLES).unwrap();
        c.execute_batch(V2_MICROSECONDS_AND_SESSIONS).unwrap();
        c.pragma_update(None, "user_version", 2).unwrap();
        c.pragma_update(None, "foreign_keys", "ON").unwrap();
        c.execute_batch(
            "INSERT INTO devices(id, device_uuid, name, name_lc, credential_hash, created_at)
               VALUES (7, 'u7', 'PC-7', 'pc-7', x'01', 't'), (9, 'u9', 'PC-9', 'pc-9', NULL, 't');
             INSERT INTO keys(key_id, device_id, volume_id, protector_type, nonce, ciphertext,
               fingerprint, created_at) VALUES (x'AA', 9, x'BB', 'recovery_password', x'', x'', x'', 't');
             INSERT INTO associations(device_id, user_lc, user, local) VALUES (9, 'a', 'A', 1);",
        )
        .unwrap();
        migrate(&mut c).unwrap();
        let rows: Vec<(i64, String, Option<Vec<u8>>)> = c
            .prepare("SELECT id, name, credential_hash FROM devices ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![(7, "PC-7".into(), Some(vec![1])), (9, "PC-9".into(), None)]
        );
        let assoc: (i64, String, bool) = c
            .query_row("SELECT device_id, user, local FROM associations", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(assoc, (9, "A".into(), true));
        // Foreign keys are back on, and the keys still reference the (rebuilt) devices.
        let fk: bool = c
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert!(fk);
        assert!(c
            .execute(
                "INSERT INTO keys(key_id, device_id, volume_id, protector_type, nonce, ciphertext,
                   fingerprint, created_at) VALUES (x'AC', 404, x'BB', 'r', x'', x'', x'', 't')",
                [],
            )
            .is_err());
        // A credential is still unique and found by its index; NULLs are not indexed.
        assert!(c
            .execute(
                "UPDATE devices SET credential_hash = x'01' WHERE id = 9",
                []
            )
            .is_err());
        let plan: String = c
            .query_row(
                "EXPLAIN QUERY PLAN SELECT id FROM devices WHERE credential_hash = x'01'",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("devices_credential"), "{plan}");
        let without_rowid: String = c
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE name = 'associations'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(without_rowid.contains("WITHOUT ROWID"), "{without_rowid}");
    }

    #[test]
    fn a_version_3_file_gets_the_imported_user_on_the_device_keeping_its_associations() {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch(V1_TABLES).unwrap();
        c.execute_batch(V2_MICROSECONDS_AND_SESSIONS).unwrap();
        c.execute_batch(V3_LEANER_DEVICES_AND_ASSOCIATIONS).unwrap();
        c.pragma_update(None, "user_version", 3).unwrap();
        c.execute_batch(
            "INSERT INTO devices(id, device_uuid, name, name_lc, created_at) VALUES (9, 'u9', 'PC-9', 'pc-9', 't');
             INSERT INTO associations(device_id, user_lc, user, imported) VALUES (9, 'a', 'A', 1);",
        )
        .unwrap();
        migrate(&mut c).unwrap();
        let (user, assoc): (Option<String>, i64) = c
            .query_row(
                "SELECT imported_user, (SELECT count(*) FROM associations) FROM devices",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((user, assoc), (None, 1));
        let plan: String = c
            .query_row(
                "EXPLAIN QUERY PLAN SELECT id FROM devices WHERE imported_user_lc = 'a'",
                [],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("devices_imported_user"), "{plan}");
    }
}
