//! What both engines' bulk imports work out before they write: the rows grouped by device,
//! each new device's imported user (kept on the device row: no association row for it), and
//! the device UUIDs to assign.

use crate::store::ImportRow;

/// The rows grouped by lower-case device name, in name order (so the unique name index grows
/// by appends). One `String` a row for its lower-case name; the groups are ranges of one
/// sorted list of row indexes, not a `Vec` each.
pub(crate) struct DeviceGroups {
    /// Each row's lower-case device name.
    lc: Vec<String>,
    /// Row indexes by (lower-case name, index): a group's first member is its first row in
    /// the file.
    order: Vec<usize>,
    /// Where each group starts in `order`, and `order.len()` last.
    starts: Vec<usize>,
}

impl DeviceGroups {
    pub(crate) fn new(rows: &[ImportRow]) -> Self {
        let lc: Vec<String> = rows.iter().map(|r| r.device.to_lowercase()).collect();
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_unstable_by(|&a, &b| lc[a].cmp(&lc[b]).then(a.cmp(&b)));
        let mut starts: Vec<usize> = (0..order.len())
            .filter(|&n| n == 0 || lc[order[n - 1]] != lc[order[n]])
            .collect();
        starts.push(order.len());
        DeviceGroups { lc, order, starts }
    }

    /// Row `i`'s lower-case device name.
    pub(crate) fn lc_of(&self, i: usize) -> &str {
        self.lc.get(i).map_or("", String::as_str)
    }

    pub(crate) fn len(&self) -> usize {
        self.starts.len() - 1
    }

    /// Each group: its lower-case name and its row indexes (file order).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &[usize])> + '_ {
        self.starts.windows(2).map(|w| {
            let members = &self.order[w[0]..w[1]];
            let name = members.first().map_or("", |&i| self.lc[i].as_str());
            (name, members)
        })
    }
}

/// A new device's imported user and its lower case (None: no line of the device has one).
pub(crate) type DeviceUser<'r> = Option<(&'r str, String)>;

/// The user a new device's row takes as its imported user: that of the device's first row
/// in the file with a user. Marks in `on_device` (indexed by row) each member whose user is
/// that one, so no association row is written for it; other users of the device still get one.
pub(crate) fn device_user<'r>(
    rows: &'r [ImportRow],
    members: &[usize],
    on_device: &mut [bool],
) -> DeviceUser<'r> {
    let first = members.iter().find_map(|&i| rows.get(i)?.user.as_deref())?;
    let first_lc = first.to_lowercase();
    if let [only] = members {
        // The common case (one row a device) needs no second lower-casing.
        if let Some(flag) = on_device.get_mut(*only) {
            *flag = true;
        }
    } else {
        mark_users_on_device(rows, members, &first_lc, on_device);
    }
    Some((first, first_lc))
}

/// Marks in `on_device` each member whose user is `user_lc` (compared in lower case, as
/// associations are): the user already on the device's row.
pub(crate) fn mark_users_on_device(
    rows: &[ImportRow],
    members: &[usize],
    user_lc: &str,
    on_device: &mut [bool],
) {
    for &i in members {
        let same = rows
            .get(i)
            .and_then(|r| r.user.as_deref())
            .is_some_and(|u| u.to_lowercase() == user_lc);
        if let (true, Some(flag)) = (same, on_device.get_mut(i)) {
            *flag = true;
        }
    }
}

/// A device UUID as text (hyphenated, lower case).
pub(crate) type UuidText = [u8; uuid::fmt::Hyphenated::LENGTH];

/// `n` random (v4) device UUIDs, sorted (an index on them, where there is one, grows by
/// appends), as text without a `String` each.
pub(crate) fn sorted_uuids(n: usize) -> Vec<UuidText> {
    use rand::Rng;
    let mut rng = rand::rng();
    let mut uuids: Vec<UuidText> = (0..n)
        .map(|_| {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            uuid::Builder::from_random_bytes(rng.random())
                .into_uuid()
                .hyphenated()
                .encode_lower(&mut buf);
            buf
        })
        .collect();
    uuids.sort_unstable();
    uuids
}

/// A UUID's text (always ASCII).
pub(crate) fn uuid_str(u: &UuidText) -> &str {
    std::str::from_utf8(u).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::crypto::Sealed;
    use crate::store::NewKey;

    fn row(device: &str, user: Option<&str>) -> ImportRow {
        ImportRow {
            device: device.into(),
            user: user.map(str::to_string),
            key: NewKey {
                key_id: 0,
                volume_id: 0,
                protector_type: "recovery_password".into(),
                sealed: Sealed {
                    nonce: vec![],
                    ciphertext: vec![],
                },
                fingerprint: [0; 32],
            },
        }
    }

    #[test]
    fn groups_by_lower_case_name_in_name_order_members_in_file_order() {
        let rows = [
            row("PC-B", None),
            row("pc-a", None),
            row("PC-A", None),
            row("pc-b", None),
            row("PC-C", None),
        ];
        let g = DeviceGroups::new(&rows);
        let groups: Vec<(&str, &[usize])> = g.iter().collect();
        assert_eq!(
            groups,
            vec![
                ("pc-a", &[1, 2][..]),
                ("pc-b", &[0, 3][..]),
                ("pc-c", &[4][..])
            ]
        );
        assert_eq!(g.len(), 3);
        assert_eq!(DeviceGroups::new(&[]).len(), 0);
    }

    #[test]
    fn the_device_takes_its_first_user_and_only_that_user_is_marked() {
        let rows = [
            row("PC-1", None),
            row("PC-1", Some("CONTOSO\\Alice")),
            row("PC-1", Some("contoso\\alice")),
            row("PC-1", Some("CONTOSO\\bob")),
        ];
        let mut on_device = vec![false; rows.len()];
        let user = device_user(&rows, &[0, 1, 2, 3], &mut on_device);
        assert_eq!(user, Some(("CONTOSO\\Alice", "contoso\\alice".to_string())));
        assert_eq!(on_device, vec![false, true, true, false]);
        let mut none = vec![false; 1];
        assert_eq!(device_user(&rows[..1], &[0], &mut none), None);
        // A stored device's user: only its rows are marked.
        let mut stored = vec![false; rows.len()];
        mark_users_on_device(&rows, &[0, 1, 2, 3], "contoso\\bob", &mut stored);
        assert_eq!(stored, vec![false, false, false, true]);
    }

    #[test]
    fn uuids_are_sorted_v4_text() {
        let u = sorted_uuids(50);
        assert!(u.windows(2).all(|w| w[0] <= w[1]));
        for x in &u {
            let parsed = uuid::Uuid::parse_str(uuid_str(x)).unwrap();
            assert_eq!(parsed.get_version_num(), 4);
        }
    }
}
