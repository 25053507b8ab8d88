//! The bulk import (`portal-under-test import`) into SQLite.

use rusqlite::{params, Connection, OptionalExtension};

use super::insert_key;
use crate::index::IndexEntry;
use crate::store::import_plan::{
    device_user, mark_users_on_device, sorted_uuids, uuid_str, DeviceGroups, DeviceUser, UuidText,
};
use crate::store::{now_rfc3339, EscrowResult, ImportRow, StoreError};

/// Rows per multi-row INSERT in the import: one statement step per 64 rows instead of one per
/// row (the per-statement cost dominated the import).
const IMPORT_BATCH: usize = 64;

/// Runs `head VALUES (?, ..), (?, ..) .. tail` over `items`, `IMPORT_BATCH` rows a statement;
/// `bind(statement, first_parameter, item)` binds one row's `ncols` values.
fn insert_batched<T>(
    tx: &rusqlite::Transaction<'_>,
    head: &str,
    tail: &str,
    ncols: usize,
    items: &[T],
    mut bind: impl FnMut(&mut rusqlite::Statement<'_>, usize, &T) -> rusqlite::Result<()>,
) -> Result<(), StoreError> {
    for chunk in items.chunks(IMPORT_BATCH) {
        let one = format!("({})", vec!["?"; ncols].join(","));
        let sql = format!("{head} VALUES {} {tail}", vec![one; chunk.len()].join(","));
        let mut st = tx.prepare_cached(&sql)?;
        for (r, item) in chunk.iter().enumerate() {
            bind(&mut st, r * ncols + 1, item)?;
        }
        st.raw_execute()?;
    }
    Ok(())
}

/// The next free row id of a table (ids are assigned by the import so multi-row inserts
/// can report them).
fn next_id(tx: &rusqlite::Transaction<'_>, table: &str) -> Result<i64, StoreError> {
    let sql = format!("SELECT coalesce(max(id), 0) + 1 FROM {table}");
    Ok(tx.query_row(&sql, [], |r| r.get(0))?)
}

/// The import proper, in one transaction. Every B-tree is written in key order: keys by key
/// ID, devices by name with their random UUIDs sorted before assignment, associations by
/// device row, so each unique index grows by appends instead of random inserts. Rows go in
/// multi-row INSERTs with ids assigned here.
pub(super) fn import_rows(
    c: &mut Connection,
    rows: &[ImportRow],
) -> Result<Vec<IndexEntry>, StoreError> {
    let t0 = std::time::Instant::now();
    let tx = c.transaction()?;
    let (now, _) = now_rfc3339();

    // Devices: the stored ones by name, the others created in name order, each with its
    // first imported user on its row (`on_device`: no association row for that user).
    let groups = DeviceGroups::new(rows);
    let mut dev_of = vec![0i64; rows.len()];
    let mut on_device = vec![false; rows.len()];
    let any_device: bool =
        tx.query_row("SELECT EXISTS(SELECT 1 FROM devices)", [], |r| r.get(0))?;
    // (first row index, id, imported user and its lower case) of each device to create.
    let mut new_devices: Vec<(usize, i64, DeviceUser)> = Vec::new();
    let mut next_device = next_id(&tx, "devices")?;
    for (name, members) in groups.iter() {
        let found: Option<(i64, Option<String>)> = if any_device {
            tx.prepare_cached("SELECT id, imported_user_lc FROM devices WHERE name_lc = ?1")?
                .query_row(params![name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
        } else {
            None
        };
        let d = match found {
            Some((d, user_lc)) => {
                if let Some(user_lc) = user_lc {
                    mark_users_on_device(rows, members, &user_lc, &mut on_device);
                }
                d
            }
            None => {
                let user = device_user(rows, members, &mut on_device);
                new_devices.push((members[0], next_device, user));
                next_device += 1;
                next_device - 1
            }
        };
        members.iter().for_each(|&k| dev_of[k] = d);
    }
    let uuids = sorted_uuids(new_devices.len());
    // Into an empty table, the by-user index is built after the load (one sort, dense
    // pages) instead of taking each row at one of the users' insertion points.
    if !any_device {
        tx.execute_batch("DROP INDEX IF EXISTS devices_imported_user")?;
    }
    let devs: Vec<(&(usize, i64, DeviceUser), &UuidText)> =
        new_devices.iter().zip(&uuids).collect();
    insert_batched(
        &tx,
        "INSERT INTO devices(id, device_uuid, name, name_lc, created_at, imported_user, imported_user_lc)",
        "",
        7,
        &devs,
        |st, p, (device, u)| {
            let (first, id, user) = device;
            st.raw_bind_parameter(p, *id)?;
            st.raw_bind_parameter(p + 1, uuid_str(u))?;
            st.raw_bind_parameter(p + 2, rows.get(*first).map_or("", |r| r.device.as_str()))?;
            st.raw_bind_parameter(p + 3, groups.lc_of(*first))?;
            st.raw_bind_parameter(p + 4, now.as_str())?;
            st.raw_bind_parameter(p + 5, user.as_ref().map(|u| u.0))?;
            st.raw_bind_parameter(p + 6, user.as_ref().map(|u| u.1.as_str()))
        },
    )?;
    if !any_device {
        tx.execute_batch(
            "CREATE INDEX IF NOT EXISTS devices_imported_user ON devices(imported_user_lc)
               WHERE imported_user_lc IS NOT NULL",
        )?;
    }
    drop(devs);
    drop(new_devices);
    drop(groups);
    let t_dev = t0.elapsed();

    // Keys, in key-ID order. Errors still name the caller's index.
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_unstable_by_key(|&i| rows[i].key.key_id);
    let any_key: bool = tx.query_row("SELECT EXISTS(SELECT 1 FROM keys)", [], |r| r.get(0))?;
    let mut created = Vec::with_capacity(rows.len());
    let mut next_key = next_id(&tx, "keys")?;
    let mut new_keys: Vec<usize> = Vec::with_capacity(rows.len());
    let dup_in_file = order
        .windows(2)
        .any(|w| rows[w[0]].key.key_id == rows[w[1]].key.key_id);
    if any_key || dup_in_file {
        // Keys already stored (or repeated): row by row, with the conflict checks.
        for &i in &order {
            if let EscrowResult::Created(e) = insert_key(&tx, dev_of[i], &rows[i].key, &now, i)? {
                created.push(e);
            }
        }
    } else {
        for &i in &order {
            created.push(IndexEntry {
                key_id: rows[i].key.key_id,
                key_row: next_key,
                device_row: dev_of[i],
            });
            next_key += 1;
            new_keys.push(i);
        }
        let items: Vec<(usize, &IndexEntry)> =
            new_keys.iter().copied().zip(created.iter()).collect();
        insert_batched(
            &tx,
            "INSERT INTO keys(id, key_id, device_id, volume_id, protector_type, nonce, ciphertext, fingerprint, created_at)",
            "",
            9,
            &items,
            |st, p, &(i, e)| {
                let k = &rows[i].key;
                st.raw_bind_parameter(p, e.key_row)?;
                st.raw_bind_parameter(p + 1, &k.key_id.to_be_bytes()[..])?;
                st.raw_bind_parameter(p + 2, e.device_row)?;
                st.raw_bind_parameter(p + 3, &k.volume_id.to_be_bytes()[..])?;
                st.raw_bind_parameter(p + 4, k.protector_type.as_str())?;
                st.raw_bind_parameter(p + 5, &k.sealed.nonce[..])?;
                st.raw_bind_parameter(p + 6, &k.sealed.ciphertext[..])?;
                st.raw_bind_parameter(p + 7, &k.fingerprint[..])?;
                st.raw_bind_parameter(p + 8, now.as_str())
            },
        )?;
    }
    let t_keys = t0.elapsed();

    // Associations, in device-row order, each (device, user) once: the users not on their
    // device's row (a stored device's, or a new device's second user).
    let mut assoc: Vec<(i64, String, usize)> = rows
        .iter()
        .enumerate()
        .filter(|&(i, _)| !on_device[i])
        .filter_map(|(i, r)| r.user.as_ref().map(|u| (dev_of[i], u.to_lowercase(), i)))
        .collect();
    assoc.sort_unstable();
    assoc.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    // Into an empty table, the by-user index is built after the load (one sort, dense
    // pages) instead of taking each row at one of the users' insertion points.
    let empty_assoc: bool = !assoc.is_empty()
        && !tx.query_row("SELECT EXISTS(SELECT 1 FROM associations)", [], |r| {
            r.get::<_, bool>(0)
        })?;
    if empty_assoc {
        tx.execute_batch("DROP INDEX IF EXISTS assoc_user")?;
    }
    insert_batched(
        &tx,
        "INSERT INTO associations(device_id, user_lc, user, local, remote, imported)",
        "ON CONFLICT(device_id, user_lc) DO UPDATE SET imported = 1",
        6,
        &assoc,
        |st, p, (dev, user_lc, i)| {
            st.raw_bind_parameter(p, *dev)?;
            st.raw_bind_parameter(p + 1, user_lc.as_str())?;
            st.raw_bind_parameter(
                p + 2,
                rows.get(*i)
                    .and_then(|r| r.user.as_deref())
                    .unwrap_or_default(),
            )?;
            st.raw_bind_parameter(p + 3, 0)?;
            st.raw_bind_parameter(p + 4, 0)?;
            st.raw_bind_parameter(p + 5, 1)
        },
    )?;
    if empty_assoc {
        tx.execute_batch("CREATE INDEX IF NOT EXISTS assoc_user ON associations(user_lc)")?;
    }
    let t_assoc = t0.elapsed();
    tx.commit()?;
    tracing::info!(
        devices_secs = t_dev.as_secs_f64(),
        keys_secs = (t_keys - t_dev).as_secs_f64(),
        associations_secs = (t_assoc - t_keys).as_secs_f64(),
        commit_secs = (t0.elapsed() - t_assoc).as_secs_f64(),
        "import store phases (SQLite)"
    );
    Ok(created)
}
