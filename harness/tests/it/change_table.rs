//! The change × profile tables of `scenarios/SCHEMA.md` ("What each change does under each
//! profile"), read from the file and played cell by cell: each cell is a scenario the loader
//! reads, then a device built by the runner's own `scenario_device` / `bitlocker_setup` on a
//! real swtpm, changed and booted. A cell that says "not possible here" must be a load error
//! at the offending key's `file:line:column` (and, for the synthetic device, a JSON Schema
//! error too). So the documentation cannot drift from the harness.

use std::path::{Path, PathBuf};

use device::machine::{BootOutcome, Machine, TpmError};
use harness::runner::{bitlocker_setup, scenario_device};
use harness::scenario::{parse_scenario, ChangeKind, Scenario};

use crate::common::workspace_root;

const PROFILES: [&str; 3] = ["7,11", "0,2,4,11", "legacy"];

/// What one cell says the next boot shows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cell {
    /// Boots normally.
    None,
    /// Recovery with `policy_failed`: these profile PCRs changed.
    Pcrs(Vec<u32>),
    /// Recovery with `integrity`.
    Integrity,
    /// The TPM refuses the wrong PIN.
    AuthFailed,
    /// A load-time error.
    NotPossible,
}

impl Cell {
    fn parse(text: &str) -> Cell {
        match text.trim() {
            "none" => Cell::None,
            "integrity" => Cell::Integrity,
            "auth_failed" => Cell::AuthFailed,
            "not possible here" => Cell::NotPossible,
            pcrs => Cell::Pcrs(
                pcrs.split(',')
                    .map(|p| {
                        p.trim()
                            .parse()
                            .unwrap_or_else(|_| panic!("SCHEMA.md: bad table cell {text:?}"))
                    })
                    .collect(),
            ),
        }
    }
}

/// One row: a change kind (and signer), and a cell per profile.
#[derive(Debug)]
struct Row {
    kind: String,
    signer: Option<String>,
    cells: Vec<Cell>,
}

/// The table under `### {heading}` in SCHEMA.md's change × profile section.
fn table(heading: &str) -> Vec<Row> {
    let text = std::fs::read_to_string(workspace_root().join("scenarios/SCHEMA.md")).unwrap();
    let section = text
        .split("## What each change does under each profile")
        .nth(1)
        .expect("SCHEMA.md has the change × profile section");
    let under = section
        .split(&format!("### {heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("SCHEMA.md: no `### {heading}` table"));
    let mut rows = Vec::new();
    let mut header_seen = false;
    for line in under.lines() {
        if !line.starts_with('|') {
            if header_seen {
                break;
            }
            continue;
        }
        let cols: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if !header_seen {
            let profiles: Vec<String> = PROFILES
                .iter()
                .map(|p| {
                    if *p == "legacy" {
                        "`legacy`".to_string()
                    } else {
                        format!("`\"{p}\"`")
                    }
                })
                .collect();
            assert_eq!(cols[1..], profiles[..], "SCHEMA.md: the table's columns");
            header_seen = true;
            continue;
        }
        if cols[0].starts_with("---") {
            continue;
        }
        let kind = cols[0].split('`').nth(1).unwrap().to_string();
        let signer = cols[0]
            .split("signer: ")
            .nth(1)
            .map(|s| s.trim_end_matches('`').to_string());
        assert_eq!(cols.len(), 4, "SCHEMA.md row {line}");
        rows.push(Row {
            kind,
            signer,
            cells: cols[1..].iter().map(|c| Cell::parse(c)).collect(),
        });
    }
    assert!(!rows.is_empty(), "SCHEMA.md: empty `{heading}` table");
    rows
}

fn schema() -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("scenarios/scenario.schema.json")).unwrap(),
    )
    .unwrap()
}

/// Each table has exactly one row per change kind (per signer for `option_rom_added`), in
/// the JSON Schema's list: a new kind without a row fails here.
fn assert_covers_every_change(rows: &[Row]) {
    let schema = schema();
    let change = &schema["$defs"]["change"]["properties"];
    let signers: Vec<&str> = change["signer"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut expected = Vec::new();
    for kind in change["kind"]["enum"].as_array().unwrap() {
        let kind = kind.as_str().unwrap();
        if kind == "option_rom_added" {
            for s in &signers {
                expected.push((kind.to_string(), Some(s.to_string())));
            }
        } else {
            expected.push((kind.to_string(), None));
        }
    }
    let mut got: Vec<(String, Option<String>)> = rows
        .iter()
        .map(|r| (r.kind.clone(), r.signer.clone()))
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
}

/// The cell's scenario: the change under the profile, nothing expected of the boot (the
/// loader's expectation rules are tested elsewhere; the cell is judged here).
fn cell_yaml(row: &Row, profile: &str, event_log: Option<&Path>) -> String {
    let lost_pin = row.kind == "lost_pin";
    let mut y = String::from(
        "name: cell\ndescription: One cell of the change-by-profile table in SCHEMA.md, played by a test.\n",
    );
    y += &format!("device:\n  profile: \"{profile}\"\n");
    if lost_pin {
        y += "  protectors: [tpm_pin, recovery_password]\n  pin: \"246813\"\n  lockout_threshold: 5\n";
    } else {
        y += "  protectors: [tpm, recovery_password]\n";
    }
    if let Some(log) = event_log {
        y += &format!("  event_log: {}\n", log.display());
    }
    y += &format!("users: []\nchange:\n  kind: {}\n", row.kind);
    if lost_pin {
        // Then the right PIN (`change.then`), so `recovery: false` below is consistent.
        y += "  wrong_pins: 1\n  then: right_pin\n";
    }
    if let Some(signer) = &row.signer {
        y += &format!("  signer: {signer}\n");
    }
    y += "expect:\n  recovery: false\n  tpm_error: none\n";
    y
}

/// Plays the cell's scenario on a fresh swtpm, as the runner builds the device.
fn play(s: &Scenario) -> Cell {
    let spec = s.device_named(None).expect("a cell has one device");
    let device = scenario_device(spec).unwrap_or_else(|f| panic!("{f:?}"));
    let setup = bitlocker_setup(spec).unwrap_or_else(|f| panic!("{f:?}"));
    let pin = spec.pin.clone();
    let (mut machine, _) = Machine::provision(device, &setup, &mut rand::rng()).unwrap();
    let unlocked = |outcome: BootOutcome| matches!(outcome, BootOutcome::Unlocked { .. });
    assert!(
        unlocked(machine.boot(pin.as_deref()).unwrap()),
        "first boot"
    );
    let (change, _) = s.last_step().expect("a cell has one change");
    match change.kind {
        ChangeKind::None => return Cell::None, // not even a reboot
        ChangeKind::LostPin => {
            return match machine.boot(Some("135790")).unwrap() {
                BootOutcome::WrongPin { lockout_counter: 1 } => Cell::AuthFailed,
                other => panic!("a wrong PIN: {other:?}"),
            }
        }
        _ => {}
    }
    if let Some(change) = change.device_change() {
        machine.apply(&change).unwrap();
    }
    match machine.boot(pin.as_deref()).unwrap() {
        BootOutcome::Unlocked { .. } => {
            assert!(
                unlocked(machine.boot(pin.as_deref()).unwrap()),
                "the boot after a normal one is normal too"
            );
            Cell::None
        }
        BootOutcome::Recovery(screen) => match screen.cause {
            TpmError::PolicyFailed => Cell::Pcrs(screen.explanation.pcrs()),
            TpmError::Integrity => Cell::Integrity,
            other => panic!("recovery with {other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

/// Checks one column of one table.
fn check_column(heading: &str, profile: &str, event_log: Option<PathBuf>) {
    let column = PROFILES.iter().position(|p| *p == profile).unwrap();
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let rows = table(heading);
    assert_covers_every_change(&rows);
    let mut failures = Vec::new();
    for row in &rows {
        let want = &row.cells[column];
        let yaml = cell_yaml(row, profile, event_log.as_deref());
        let what = format!(
            "{heading}, `{}`{} under {profile}",
            row.kind,
            row.signer
                .as_deref()
                .map(|s| format!(" (signer {s})"))
                .unwrap_or_default()
        );
        let schema_ok = validator.is_valid(&serde_yaml::from_str(&yaml).unwrap());
        let got = match parse_scenario(Path::new("cell.yaml"), &yaml) {
            Err(e) => {
                // At the key that makes it impossible, by line and column.
                let e = e.to_string();
                let at = ["  signer:", "  kind:", "  event_log:"]
                    .iter()
                    .find_map(|key| {
                        let line = yaml.lines().position(|l| l.starts_with(key))? + 1;
                        let path = match *key {
                            "  signer:" => "change.signer",
                            "  kind:" => "change.kind",
                            _ => "device.event_log",
                        };
                        e.starts_with(&format!("cell.yaml:{line}:3: {path}: "))
                            .then_some(())
                    });
                assert!(at.is_some(), "{what}: a load error not at the change: {e}");
                if event_log.is_none() {
                    assert!(
                        !schema_ok,
                        "{what}: the loader refuses, the JSON Schema accepts"
                    );
                }
                Cell::NotPossible
            }
            Ok(s) => {
                assert!(
                    schema_ok,
                    "{what}: the loader accepts, the JSON Schema refuses"
                );
                play(&s)
            }
        };
        if &got != want {
            failures.push(format!(
                "{what}: SCHEMA.md says {want:?}, the harness gives {got:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The real Windows log SCHEMA.md's real-log table is about.
const REAL_LOG_FILE: &str = "go-attestation-windows_gcp_shielded_vm.log";

fn real_log() -> PathBuf {
    workspace_root()
        .join("harness/tests/it/data/eventlogs")
        .join(REAL_LOG_FILE)
}

#[test]
fn change_table_synthetic_device_under_7_11() {
    check_column("Synthetic device", "7,11", None);
}

#[test]
fn change_table_synthetic_device_under_0_2_4_11() {
    check_column("Synthetic device", "0,2,4,11", None);
}

#[test]
fn change_table_synthetic_device_under_legacy() {
    check_column("Synthetic device", "legacy", None);
}

#[test]
fn change_table_real_log_device_under_7_11() {
    check_column("Real-log device", "7,11", Some(real_log()));
}

#[test]
fn change_table_real_log_device_under_0_2_4_11_and_legacy() {
    check_column("Real-log device", "0,2,4,11", Some(real_log()));
    check_column("Real-log device", "legacy", Some(real_log()));
}

/// Every possible cell of the synthetic-device table is a scenario of the catalog (written
/// out, or a `matrix` cell): one change on one synthetic device of that profile whose file
/// states the table's answer. So the whole-catalog run plays each cell through the portal,
/// and a cell without a scenario fails here.
#[test]
fn the_catalog_has_a_scenario_for_every_cell_of_both_tables() {
    use harness::scenario::{load_catalog, serde_name};
    let catalog = load_catalog(&[workspace_root().join("scenarios")]).unwrap();
    // The table, a change kind, its signer and a profile, as the table names them.
    type Key = (&'static str, String, Option<String>, String);
    // Each such cell's scenarios: what the file states, as a table cell, and its name.
    let stated: Vec<(Key, Cell, String)> = catalog
        .iter()
        .filter_map(|s| {
            let [device] = s.all_devices()[..] else {
                return None;
            };
            let [(change, expect)] = s.steps()[..] else {
                return None;
            };
            // The two tables: the synthetic device, and the real-log device on
            // go-attestation's Windows log (SCHEMA.md names the log).
            let table = match (&device.event_log, &device.firmware) {
                (None, None) => "Synthetic device",
                (Some(log), None) if log.ends_with(REAL_LOG_FILE) => "Real-log device",
                _ => return None,
            };
            let cell = match (expect.recovery, expect.tpm_error) {
                (false, TpmError::None) => Cell::None,
                (true, TpmError::PolicyFailed) => Cell::Pcrs(expect.changed_pcrs.clone()),
                (true, TpmError::Integrity) => Cell::Integrity,
                (true, TpmError::AuthFailed) => Cell::AuthFailed,
                _ => return None,
            };
            let key = (
                table,
                serde_name(&change.kind),
                change.signer.as_ref().map(serde_name),
                device.profile.as_str().to_string(),
            );
            Some((key, cell, s.name.clone()))
        })
        .collect();
    let mut missing = Vec::new();
    for (heading, row) in ["Synthetic device", "Real-log device"]
        .into_iter()
        .flat_map(|heading| table(heading).into_iter().map(move |row| (heading, row)))
    {
        for (profile, want) in PROFILES.iter().zip(&row.cells) {
            if *want == Cell::NotPossible {
                continue;
            }
            let key = (
                heading,
                row.kind.clone(),
                row.signer.clone(),
                profile.to_string(),
            );
            // A lost PIN that ends on the right PIN states `none`: not this cell.
            let found: Vec<&String> = stated
                .iter()
                .filter(|(k, cell, _)| *k == key && cell == want)
                .map(|(_, _, name)| name)
                .collect();
            if found.is_empty() {
                let others: Vec<String> = stated
                    .iter()
                    .filter(|(k, _, _)| *k == key)
                    .map(|(_, cell, name)| format!("{name} states {cell:?}"))
                    .collect();
                missing.push(format!(
                    "{heading}: `{}`{} under {profile} ({want:?}): no scenario{}",
                    row.kind,
                    row.signer
                        .as_deref()
                        .map(|s| format!(" signer {s}"))
                        .unwrap_or_default(),
                    if others.is_empty() {
                        String::new()
                    } else {
                        format!(" states it; {}", others.join(", "))
                    }
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "cells of SCHEMA.md's tables without a catalog scenario:\n{}",
        missing.join("\n")
    );
}
