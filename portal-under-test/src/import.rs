//! Bulk import of JSON Lines escrow records (`portal-under-test import FILE`).
//!
//! The whole file is validated and sealed first; nothing is stored unless every line is good.

use std::borrow::Cow;

use serde::Deserialize;
use thiserror::Error;

use crate::api::{validate_device_name, validate_name};
use crate::crypto::Sealer;
use crate::index::IndexEntry;
use crate::keyid::{check_recovery_password, parse_guid};
use crate::store::{ImportRow, NewKey, Store, StoreError};

#[derive(Debug, Error)]
pub enum ImportError {
    #[error("line {line}: field {field}: {message}")]
    Line {
        line: usize,
        field: String,
        message: String,
    },
    /// The line is not a JSON object with the import's fields (no one field to name).
    #[error("line {line}: {message}")]
    Unreadable { line: usize, message: String },
    #[error("store: {0}")]
    Store(#[source] StoreError),
    #[error("encryption: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
}

/// One line's fields, borrowed from the line where JSON needs no unescaping (most fields):
/// the parse allocates only for escaped strings and the row it returns.
#[derive(Debug, Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    device: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    volume_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    key_protector_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    recovery_password: Option<Cow<'a, str>>,
    #[serde(borrow)]
    protector_type: Option<Cow<'a, str>>,
}

fn req<'a>(v: &'a Option<Cow<'_, str>>, line: usize, field: &str) -> Result<&'a str, ImportError> {
    match v.as_deref() {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(ImportError::Line {
            line,
            field: field.into(),
            message: "is required".into(),
        }),
    }
}

fn bad(line: usize, field: &str, message: impl ToString) -> ImportError {
    ImportError::Line {
        line,
        field: field.into(),
        message: message.to_string(),
    }
}

/// Why `text` is not a [`Record`]: the field whose value has the wrong type, found by
/// parsing the line again with its path tracked (on this error path only, so the fast parse
/// pays nothing), or else what is wrong with the line as a whole.
fn unreadable(text: &str, line: usize) -> ImportError {
    let mut de = serde_json::Deserializer::from_str(text);
    let Err(e) = serde_path_to_error::deserialize::<_, Record>(&mut de) else {
        // The fast parse failed, so this one does too; say so rather than panic.
        return ImportError::Unreadable {
            line,
            message: "could not be read".into(),
        };
    };
    let inner = e.inner();
    let full = inner.to_string();
    // serde_json ends its message with "at line 1 column C": the line is this file line.
    let what = full
        .rsplit_once(" at line ")
        .map_or(full.as_str(), |(m, _)| m);
    let at = format!("(column {})", inner.column());
    let path = e.path().to_string();
    let message = if !inner.is_data() {
        format!("not JSON: {what} {at}")
    } else if !text.trim_start().starts_with('{') {
        // serde would take a JSON array for the record's fields in order: not ours.
        "not a JSON object: each line is one object with the fields device, user, volume_id, \
         key_protector_id, recovery_password and protector_type"
            .to_string()
    } else if path != "." {
        return bad(line, &path, format!("{what} {at}"));
    } else {
        format!("{what} {at}")
    };
    ImportError::Unreadable { line, message }
}

/// Parses and seals one line (1-based `line` for messages).
fn parse_line(sealer: &Sealer, text: &str, line: usize) -> Result<ImportRow, ImportError> {
    let r: Record = serde_json::from_str(text).map_err(|_| unreadable(text, line))?;
    let device = validate_device_name(req(&r.device, line, "device")?, "device")
        .map_err(|e| bad(line, "device", e.public_message()))?;
    let user = match r.user.as_deref().filter(|u| !u.trim().is_empty()) {
        Some(u) => {
            Some(validate_name(u, "user", 256).map_err(|e| bad(line, "user", e.public_message()))?)
        }
        None => None,
    };
    let volume_id =
        parse_guid(req(&r.volume_id, line, "volume_id")?).map_err(|e| bad(line, "volume_id", e))?;
    let key_id = parse_guid(req(&r.key_protector_id, line, "key_protector_id")?)
        .map_err(|e| bad(line, "key_protector_id", e))?;
    let pw = check_recovery_password(req(&r.recovery_password, line, "recovery_password")?)
        .map_err(|e| bad(line, "recovery_password", e))?;
    let pt = req(&r.protector_type, line, "protector_type")?;
    if pt != "recovery_password" {
        return Err(bad(line, "protector_type", "must be \"recovery_password\""));
    }
    let aad = key_id.to_be_bytes();
    Ok(ImportRow {
        device,
        user,
        key: NewKey {
            key_id,
            volume_id,
            protector_type: pt.to_string(),
            sealed: sealer.seal(&aad, pw.as_bytes())?,
            fingerprint: sealer.fingerprint(&aad, pw.as_bytes()),
        },
    })
}

/// Parsed rows and their 1-based line numbers.
type Parsed = (Vec<ImportRow>, Vec<usize>);

/// Parses and seals the lines of one chunk of the text; `first_line` is the 1-based number
/// of its first line. Stops at the chunk's first bad line.
fn parse_chunk(sealer: &Sealer, chunk: &str, first_line: usize) -> Result<Parsed, ImportError> {
    let mut rows = Vec::with_capacity(chunk.len() / 250 + 1);
    let mut lines = Vec::with_capacity(chunk.len() / 250 + 1);
    for (i, l) in chunk.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        rows.push(parse_line(sealer, l, first_line + i)?);
        lines.push(first_line + i);
    }
    Ok((rows, lines))
}

/// Splits `text` into about `parts` pieces at line boundaries; each piece comes with the
/// 1-based number of its first line.
fn split_lines(text: &str, parts: usize) -> Vec<(&str, usize)> {
    let mut out = Vec::with_capacity(parts);
    let mut rest = text;
    let mut line = 1;
    let target = text.len() / parts.max(1) + 1;
    while !rest.is_empty() {
        let cut = if out.len() + 1 >= parts || rest.len() <= target {
            rest.len()
        } else {
            match rest
                .as_bytes()
                .get(target..)
                .and_then(|b| b.iter().position(|&c| c == b'\n'))
            {
                Some(p) => target + p + 1,
                None => rest.len(),
            }
        };
        let (piece, tail) = rest.split_at(cut);
        out.push((piece, line));
        line += piece.bytes().filter(|&c| c == b'\n').count();
        rest = tail;
    }
    out
}

/// Parses and seals every line, on all cores: returns the rows and their 1-based line numbers,
/// or the error of the first bad line in the file.
pub fn parse_jsonl(text: &str, sealer: &Sealer) -> Result<Parsed, ImportError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Small inputs are not worth a thread.
    let parts = if text.len() < (1 << 20) { 1 } else { threads };
    let pieces = split_lines(text, parts);
    let results: Vec<Result<Parsed, ImportError>> = if pieces.len() <= 1 {
        pieces
            .iter()
            .map(|(t, l)| parse_chunk(sealer, t, *l))
            .collect()
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = pieces
                .iter()
                .map(|(t, l)| (*l, s.spawn(move || parse_chunk(sealer, t, *l))))
                .collect();
            handles
                .into_iter()
                .map(|(l, h)| {
                    h.join().unwrap_or_else(|_| {
                        Err(ImportError::Unreadable {
                            line: l,
                            message: "the parser thread of the lines from here failed".into(),
                        })
                    })
                })
                .collect()
        })
    };
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    // Pieces are in file order, so the first error found is the first bad line.
    for r in results {
        let (mut r, mut l) = r?;
        if rows.is_empty() {
            rows = r;
            lines = l;
        } else {
            rows.append(&mut r);
            lines.append(&mut l);
        }
    }
    Ok((rows, lines))
}

fn per_sec(n: usize, d: std::time::Duration) -> u64 {
    (n as f64 / d.as_secs_f64().max(1e-9)) as u64
}

/// Validates, seals and stores every record of a JSON Lines text. Returns the new entries
/// (records already present with the same password are skipped).
pub fn import_jsonl(
    text: &str,
    sealer: &Sealer,
    store: &dyn Store,
) -> Result<Vec<IndexEntry>, ImportError> {
    let started = std::time::Instant::now();
    let (rows, lines) = parse_jsonl(text, sealer)?;
    let parsed = started.elapsed();
    // The stage timings, on stderr (the kill test also waits for this line).
    tracing::info!(
        records = rows.len(),
        secs = parsed.as_secs_f64(),
        records_per_sec = per_sec(rows.len(), parsed),
        "import stage: parsed, validated and sealed"
    );
    let res = store.import(&rows);
    let stored = started.elapsed() - parsed;
    tracing::info!(
        records = rows.len(),
        secs = stored.as_secs_f64(),
        records_per_sec = per_sec(rows.len(), stored),
        "import stage: stored and committed"
    );
    res.map_err(|e| match e {
        StoreError::Conflict { index, message } => ImportError::Line {
            line: lines.get(index).copied().unwrap_or(0),
            field: "key_protector_id".into(),
            message,
        },
        other => ImportError::Store(other),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::store::SqliteStore;

    const PW: &str = "000011-000022-000033-000044-000055-000066-000077-000088";

    fn line(dev: &str, kid: &str, pw: &str) -> String {
        format!(
            r#"{{"device":"{dev}","user":"CONTOSO\\alice","volume_id":"{{11111111-2222-3333-4444-555555555555}}","key_protector_id":"{kid}","recovery_password":"{pw}","protector_type":"recovery_password"}}"#
        )
    }

    /// A line that is not JSON, not an object, or has a field of the wrong type is named
    /// by its line, and by its field where there is one, in words (no Rust type names).
    #[test]
    fn unreadable_lines_are_named_by_line_and_field() {
        let sealer = Sealer::from_key(&[1; 32]);
        let good = line("PC-1", "{AAAAAAAA-0000-0000-0000-000000000001}", PW);
        let cases = [
            ("{\"device\": 5}", "line 2: field device: invalid type: integer `5`, expected a string (column 12)"),
            ("[1, 2]", "line 2: not a JSON object: each line is one object with the fields device, user, volume_id, key_protector_id, recovery_password and protector_type"),
            ("\"PC-1\"", "line 2: not a JSON object: each line is one object with the fields device, user, volume_id, key_protector_id, recovery_password and protector_type"),
            ("{\"device\": \"PC-1\",", "line 2: not JSON: EOF while parsing a value (column 18)"),
            ("device=PC-1", "line 2: not JSON: expected value (column 1)"),
        ];
        for (bad_line, want) in cases {
            let text = format!("{good}\n{bad_line}\n");
            let err = parse_jsonl(&text, &sealer).map(|_| ()).unwrap_err();
            assert_eq!(err.to_string(), want, "{bad_line}");
        }
    }

    #[test]
    fn imports_and_refuses_bad_lines_with_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let sealer = Sealer::from_key(&[1; 32]);
        let good = format!(
            "{}\n\n{}\n",
            line("PC-1", "{AAAAAAAA-0000-0000-0000-000000000001}", PW),
            line("PC-2", "{AAAAAAAA-0000-0000-0000-000000000002}", PW)
        );
        assert_eq!(import_jsonl(&good, &sealer, &store).unwrap().len(), 2);
        // Idempotent.
        assert_eq!(import_jsonl(&good, &sealer, &store).unwrap().len(), 0);
        let bad_pw = format!(
            "{}\n{}\n",
            good.lines().next().unwrap(),
            line("PC-3", "{AAAAAAAA-0000-0000-0000-000000000003}", "123")
        );
        match import_jsonl(&bad_pw, &sealer, &store) {
            Err(ImportError::Line { line, field, .. }) => {
                assert_eq!((line, field.as_str()), (2, "recovery_password"));
            }
            other => panic!("expected a line error, got {other:?}"),
        }
        let moved = line("PC-9", "{AAAAAAAA-0000-0000-0000-000000000001}", PW);
        match import_jsonl(&moved, &sealer, &store) {
            Err(ImportError::Line { line, field, .. }) => {
                assert_eq!((line, field.as_str()), (1, "key_protector_id"))
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        // The imported user is associated, but not by a local sign-in.
        let assocs = store.associations_of_user("contoso\\ALICE").unwrap();
        assert_eq!(assocs.len(), 2);
        assert!(assocs.iter().all(|(_, a)| a.imported && !a.local));
        // Kept on the device rows (one user a device): no association row.
        let raw = rusqlite::Connection::open(dir.path().join("s.db")).unwrap();
        let (on_devices, assoc_rows): (i64, i64) = raw
            .query_row(
                "SELECT (SELECT count(*) FROM devices WHERE imported_user = 'CONTOSO\\alice'),
                        (SELECT count(*) FROM associations)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((on_devices, assoc_rows), (2, 0));
        // The by-user indexes, dropped for the load into an empty table, are back and used.
        for (sql, index) in [
            (
                "EXPLAIN QUERY PLAN SELECT device_id FROM associations WHERE user_lc = 'x'",
                "assoc_user",
            ),
            (
                "EXPLAIN QUERY PLAN SELECT id FROM devices WHERE imported_user_lc = 'x'",
                "devices_imported_user",
            ),
        ] {
            let plan: String = raw.query_row(sql, [], |r| r.get(3)).unwrap();
            assert!(plan.contains(index), "{plan}");
        }
    }

    #[test]
    fn split_lines_keeps_line_numbers() {
        let text = "a\nbb\n\nccc\nd\ne";
        for parts in 1..8 {
            let pieces = split_lines(text, parts);
            let joined: String = pieces.iter().map(|(t, _)| *t).collect();
            assert_eq!(joined, text);
            for (t, l) in pieces {
                if let Some(first) = t.lines().next() {
                    assert_eq!(text.lines().nth(l - 1), Some(first), "parts {parts}");
                }
            }
        }
    }

    #[test]
    fn a_large_file_is_parsed_in_parallel_and_errors_name_the_first_bad_line() {
        let sealer = Sealer::from_key(&[1; 32]);
        let mut text = String::new();
        for i in 0..6000 {
            text.push_str(&line(
                &format!("PC-{i}"),
                &format!("{{AAAAAAAA-0000-0000-0000-{i:012}}}"),
                PW,
            ));
            text.push('\n');
        }
        let (rows, lines) = parse_jsonl(&text, &sealer).unwrap();
        assert_eq!(rows.len(), 6000);
        assert_eq!(lines, (1..=6000).collect::<Vec<_>>());
        assert_eq!(rows[4321].device, "PC-4321");
        // Bad lines near the end and in the middle: the earlier one is reported.
        let mut bad: Vec<String> = text.lines().map(str::to_string).collect();
        bad[5990] = "{".into();
        bad[3003] = line("PC-x", "{AAAAAAAA-0000-0000-0000-000000000001}", "1");
        match parse_jsonl(&bad.join("\n"), &sealer) {
            Err(ImportError::Line { line, field, .. }) => {
                assert_eq!((line, field.as_str()), (3004, "recovery_password"))
            }
            other => panic!("expected a line error, got {other:?}"),
        }
    }
}
