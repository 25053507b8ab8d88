//! The bulk import (`portal-under-test import`) into PostgreSQL: one transaction (a crash or
//! a kill of the importer leaves none of the file's rows: the server rolls back a transaction
//! whose client went away), rows sent with binary `COPY` straight into their tables, row ids
//! assigned by the import from blocks reserved on the tables' own identity sequences.
//! Checks against stored rows run only when the table already has rows; into an empty table
//! the secondary indexes are built after the load (`LateIndex`).

use std::collections::HashMap;
use std::pin::pin;
use std::time::Instant;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use crate::index::IndexEntry;
use crate::store::import_plan::{
    device_user, mark_users_on_device, sorted_uuids, uuid_str, DeviceGroups,
};
use crate::store::{escrow_of_known_key, now_rfc3339, EscrowResult, ImportRow, StoreError};

/// Reserves `n` consecutive ids on `table`'s identity sequence; returns the first. The
/// import holds the table's write lock, so no one else takes ids meanwhile.
async fn reserve_ids(tx: &Transaction<'_>, table: &str, n: usize) -> Result<i64, StoreError> {
    if n == 0 {
        return Ok(0);
    }
    let n = i64::try_from(n).map_err(|_| StoreError::Postgres("too many rows".into()))?;
    let sql = format!(
        "SELECT setval(pg_get_serial_sequence('{table}', 'id'), nextval(pg_get_serial_sequence('{table}', 'id')) + $1 - 1)"
    );
    let last: i64 = tx.query_one(&sql, &[&n]).await?.try_get(0)?;
    Ok(last - n + 1)
}

async fn has_rows(tx: &Transaction<'_>, table: &str) -> Result<bool, StoreError> {
    let sql = format!("SELECT EXISTS(SELECT 1 FROM {table})");
    Ok(tx.query_one(&sql, &[]).await?.try_get(0)?)
}

/// A secondary index (or constraint) that a load into an empty table builds after the
/// load instead of taking one entry, and one WAL record, per row: the build sorts once,
/// writes dense pages, logs whole pages and can use parallel workers. Dropped and built in
/// the import's transaction, so a crash or a kill leaves the schema as it was.
struct LateIndex {
    drop: &'static str,
    build: &'static str,
}

/// Devices: the unique name (the import groups its rows by name, so none repeats) and the
/// imported user's.
const LATE_DEVICE_INDEXES: &[LateIndex] = &[
    LateIndex {
        drop: "ALTER TABLE devices DROP CONSTRAINT devices_name_lc_key",
        build: "ALTER TABLE devices ADD CONSTRAINT devices_name_lc_key UNIQUE (name_lc)",
    },
    LateIndex {
        drop: "DROP INDEX devices_imported_user",
        build: "CREATE INDEX devices_imported_user ON devices(imported_user_lc)
                WHERE imported_user_lc IS NOT NULL",
    },
];

/// Keys: the unique key ID (the import refuses a repeated one first), the replicas' change
/// position, and the device reference: checked by a per-row trigger, it cost more than the
/// row's own write (1M keys: 27.5 s with it); after the load it is one join.
const LATE_KEY_INDEXES: &[LateIndex] = &[
    LateIndex {
        drop: "ALTER TABLE keys DROP CONSTRAINT keys_key_id_key",
        build: "ALTER TABLE keys ADD CONSTRAINT keys_key_id_key UNIQUE (key_id)",
    },
    LateIndex {
        drop: "DROP INDEX keys_changed",
        build: "CREATE INDEX keys_changed ON keys(changed_xid)",
    },
    LateIndex {
        drop: "ALTER TABLE keys DROP CONSTRAINT keys_device_id_fkey",
        build: "ALTER TABLE keys ADD CONSTRAINT keys_device_id_fkey FOREIGN KEY (device_id) REFERENCES devices(id)",
    },
];

/// Associations: the by-user index.
const LATE_ASSOCIATION_INDEXES: &[LateIndex] = &[LateIndex {
    drop: "DROP INDEX assoc_user",
    build: "CREATE INDEX assoc_user ON associations(user_lc)",
}];

async fn drop_indexes(tx: &Transaction<'_>, late: &[LateIndex]) -> Result<(), StoreError> {
    for l in late {
        tx.batch_execute(l.drop).await?;
    }
    Ok(())
}

async fn build_indexes(tx: &Transaction<'_>, late: &[LateIndex]) -> Result<(), StoreError> {
    for l in late {
        tx.batch_execute(l.build).await?;
    }
    Ok(())
}

/// The import proper, inside the caller's transaction. Returns the keys newly stored.
pub(super) async fn import_rows(
    tx: &Transaction<'_>,
    rows: &[ImportRow],
) -> Result<Vec<IndexEntry>, StoreError> {
    let t0 = Instant::now();
    let (now, _) = now_rfc3339();
    // Writers wait; readers (a running portal's lookups) go on.
    tx.batch_execute("LOCK TABLE devices, keys, associations IN SHARE ROW EXCLUSIVE MODE")
        .await?;
    // The late index builds sort in memory (the default 64 MB spills a 10M-key sort to disk).
    tx.batch_execute("SET LOCAL maintenance_work_mem = '512MB'")
        .await?;
    // The indexes dropped for a load into an empty table, built again before the commit.
    let mut late: Vec<&[LateIndex]> = Vec::new();

    // Devices: the stored ones by name, the others created with ids reserved here, each
    // with its first imported user on its row (`on_device`: no association row for it).
    let groups = DeviceGroups::new(rows);
    // Id and imported user (lower case) of each stored device the file names.
    let mut stored_devices: HashMap<&str, (i64, Option<String>)> = HashMap::new();
    let devices_empty = !has_rows(tx, "devices").await?;
    if devices_empty {
        drop_indexes(tx, LATE_DEVICE_INDEXES).await?;
        late.push(LATE_DEVICE_INDEXES);
    } else {
        tx.batch_execute("CREATE TEMP TABLE import_device_names(name_lc TEXT) ON COMMIT DROP")
            .await?;
        let sink = tx
            .copy_in("COPY import_device_names(name_lc) FROM STDIN BINARY")
            .await?;
        let mut w = pin!(BinaryCopyInWriter::new(sink, &[Type::TEXT]));
        for (name, _) in groups.iter() {
            w.as_mut().write(&[&name]).await?;
        }
        w.finish().await?;
        let names: HashMap<&str, ()> = groups.iter().map(|(name, _)| (name, ())).collect();
        for r in tx
            .query(
                "SELECT d.name_lc, d.id, d.imported_user_lc FROM devices d
                 JOIN import_device_names n USING (name_lc)",
                &[],
            )
            .await?
        {
            let name: &str = r.try_get(0)?;
            if let Some((&name, _)) = names.get_key_value(name) {
                stored_devices.insert(name, (r.try_get(1)?, r.try_get(2)?));
            }
        }
    }
    let new_count = groups.len() - stored_devices.len();
    let mut next_device = reserve_ids(tx, "devices", new_count).await?;
    let uuids = sorted_uuids(new_count);
    let mut uuid = uuids.iter();
    let mut dev_of = vec![0i64; rows.len()];
    let mut on_device = vec![false; rows.len()];
    let sink = tx
        .copy_in("COPY devices(id, device_uuid, name, name_lc, created_at, imported_user, imported_user_lc) FROM STDIN BINARY")
        .await?;
    let mut w = pin!(BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT
        ]
    ));
    for (name, members) in groups.iter() {
        let id = match stored_devices.get(name) {
            Some((id, user_lc)) => {
                if let Some(user_lc) = user_lc {
                    mark_users_on_device(rows, members, user_lc, &mut on_device);
                }
                *id
            }
            None => {
                let first = members.first().and_then(|&i| rows.get(i));
                let display = first.map_or("", |r| r.device.as_str());
                let u = uuid.next().map_or("", uuid_str);
                let user = device_user(rows, members, &mut on_device);
                let (user, user_lc) = match &user {
                    Some((u, lc)) => (Some(*u), Some(lc.as_str())),
                    None => (None, None),
                };
                w.as_mut()
                    .write(&[&next_device, &u, &display, &name, &now, &user, &user_lc])
                    .await?;
                next_device += 1;
                next_device - 1
            }
        };
        for &i in members {
            dev_of[i] = id;
        }
    }
    w.finish().await?;
    drop(stored_devices);
    drop(groups);
    drop(uuids);
    let t_dev = t0.elapsed();

    // Keys, in key-ID order (the unique index grows by appends). A key ID repeated in the
    // file or already stored follows the escrow rule: the same device and password is
    // skipped, anything else is a conflict naming the row.
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_unstable_by_key(|&i| (rows[i].key.key_id, i));
    let mut fresh: Vec<usize> = Vec::with_capacity(rows.len());
    for (n, &i) in order.iter().enumerate() {
        let repeated = n > 0 && rows[order[n - 1]].key.key_id == rows[i].key.key_id;
        if repeated {
            // Compared with the group's first row, the one that is stored.
            let f = fresh.last().copied().unwrap_or(i);
            let stored = (dev_of[f], &rows[f].key.fingerprint[..]);
            escrow_of_known_key(i, dev_of[i], stored, &rows[i].key.fingerprint)?;
        } else {
            fresh.push(i);
        }
    }
    drop(order);
    let keys_empty = !has_rows(tx, "keys").await?;
    if !keys_empty {
        tx.batch_execute(
            "CREATE TEMP TABLE import_key_ids(idx BIGINT, key_id BYTEA) ON COMMIT DROP",
        )
        .await?;
        let sink = tx
            .copy_in("COPY import_key_ids(idx, key_id) FROM STDIN BINARY")
            .await?;
        let mut w = pin!(BinaryCopyInWriter::new(sink, &[Type::INT8, Type::BYTEA]));
        for &i in &fresh {
            let idx = i as i64;
            w.as_mut()
                .write(&[&idx, &&rows[i].key.key_id.to_be_bytes()[..]])
                .await?;
        }
        w.finish().await?;
        let known = tx
            .query(
                "SELECT s.idx, k.device_id, k.fingerprint FROM import_key_ids s
                 JOIN keys k ON k.key_id = s.key_id ORDER BY s.idx",
                &[],
            )
            .await?;
        let mut skip = vec![false; rows.len()];
        for r in known {
            let idx = usize::try_from(r.try_get::<_, i64>(0)?).unwrap_or(usize::MAX);
            let (dev, fp): (i64, Vec<u8>) = (r.try_get(1)?, r.try_get(2)?);
            let row = rows
                .get(idx)
                .ok_or_else(|| StoreError::Corrupt(format!("import row {idx}")))?;
            if let EscrowResult::Existing =
                escrow_of_known_key(idx, dev_of[idx], (dev, &fp), &row.key.fingerprint)?
            {
                skip[idx] = true;
            }
        }
        fresh.retain(|&i| !skip[i]);
    }
    // Into an empty table the key ID's uniqueness, the change position and the device
    // reference are built once after the load. They are back before the commit, so the
    // promise is the same; meanwhile the table is locked for readers too (the import is
    // for a stopped portal).
    if keys_empty {
        drop_indexes(tx, LATE_KEY_INDEXES).await?;
        late.push(LATE_KEY_INDEXES);
    }
    let mut next_key = reserve_ids(tx, "keys", fresh.len()).await?;
    let mut created = Vec::with_capacity(fresh.len());
    let sink = tx
        .copy_in(
            "COPY keys(id, key_id, device_id, volume_id, protector_type, nonce, ciphertext, fingerprint, created_at) FROM STDIN BINARY",
        )
        .await?;
    let mut w = pin!(BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT8,
            Type::BYTEA,
            Type::INT8,
            Type::BYTEA,
            Type::TEXT,
            Type::BYTEA,
            Type::BYTEA,
            Type::BYTEA,
            Type::TEXT,
        ]
    ));
    for &i in &fresh {
        let k = &rows[i].key;
        w.as_mut()
            .write(&[
                &next_key,
                &&k.key_id.to_be_bytes()[..],
                &dev_of[i],
                &&k.volume_id.to_be_bytes()[..],
                &k.protector_type,
                &k.sealed.nonce,
                &k.sealed.ciphertext,
                &&k.fingerprint[..],
                &now,
            ])
            .await?;
        created.push(IndexEntry {
            key_id: k.key_id,
            key_row: next_key,
            device_row: dev_of[i],
        });
        next_key += 1;
    }
    w.finish().await?;
    drop(fresh);
    let t_keys = t0.elapsed();

    // Associations, each (device, user) once, in primary-key order: straight into an empty
    // table, else through a staging table and an upsert (an association may exist). Only the
    // users not on their device's row (a stored device's, or a new device's second user).
    let mut assoc: Vec<(i64, String, usize)> = rows
        .iter()
        .enumerate()
        .filter(|&(i, _)| !on_device[i])
        .filter_map(|(i, r)| r.user.as_ref().map(|u| (dev_of[i], u.to_lowercase(), i)))
        .collect();
    assoc.sort_unstable();
    assoc.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    // Most imports have none left (one user a device).
    if !assoc.is_empty() {
        let empty = !has_rows(tx, "associations").await?;
        let target = if empty {
            drop_indexes(tx, LATE_ASSOCIATION_INDEXES).await?;
            late.push(LATE_ASSOCIATION_INDEXES);
            "associations(device_id, user_lc, user_name, imported)"
        } else {
            tx.batch_execute(
                "CREATE TEMP TABLE import_assoc(device_id BIGINT, user_lc TEXT, user_name TEXT, imported BOOLEAN) ON COMMIT DROP",
            )
            .await?;
            "import_assoc(device_id, user_lc, user_name, imported)"
        };
        let sink = tx
            .copy_in(&format!("COPY {target} FROM STDIN BINARY"))
            .await?;
        let mut w = pin!(BinaryCopyInWriter::new(
            sink,
            &[Type::INT8, Type::TEXT, Type::TEXT, Type::BOOL]
        ));
        for (dev, user_lc, i) in &assoc {
            let user = rows
                .get(*i)
                .and_then(|r| r.user.as_deref())
                .unwrap_or_default();
            w.as_mut().write(&[dev, user_lc, &user, &true]).await?;
        }
        w.finish().await?;
        if !empty {
            tx.batch_execute(
                "INSERT INTO associations(device_id, user_lc, user_name, imported)
                 SELECT device_id, user_lc, user_name, imported FROM import_assoc
                 ON CONFLICT (device_id, user_lc) DO UPDATE SET imported = true",
            )
            .await?;
        }
    }
    let t_assoc = t0.elapsed();
    for indexes in late {
        build_indexes(tx, indexes).await?;
    }
    tracing::info!(
        devices_secs = t_dev.as_secs_f64(),
        keys_secs = (t_keys - t_dev).as_secs_f64(),
        associations_secs = (t_assoc - t_keys).as_secs_f64(),
        late_index_build_secs = (t0.elapsed() - t_assoc).as_secs_f64(),
        "import store phases (PostgreSQL, before commit)"
    );
    Ok(created)
}
