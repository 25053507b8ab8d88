//! The scenario catalog and the loader's errors.

use std::path::{Path, PathBuf};

use harness::scenario::{
    load_catalog, parse_scenario, select, Answer, CatalogError, ChangeKind, Filter, Profile,
    RecoveryVia, Scenario, TpmError,
};

fn catalog_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

fn catalog() -> Vec<Scenario> {
    load_catalog(&[catalog_dir()]).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn whole_catalog_loads() {
    let scenarios = catalog();
    assert!(scenarios.len() >= 20, "only {} scenarios", scenarios.len());
    for s in &scenarios {
        assert!(
            s.description.split_whitespace().count() >= 10,
            "{}: the description is too short for a QA reader",
            s.name
        );
        // One file, one story (or one per `matrix` cell, `NAME[profile=P]`), named after
        // it: QA finds the file from a report line.
        let stem = s.file.file_stem().and_then(|n| n.to_str()).unwrap();
        let file_name = s
            .name
            .split_once("[profile=")
            .map_or(s.name.as_str(), |(n, _)| n);
        assert_eq!(stem, file_name, "{}", s.name);
    }
}

/// Every lockout and every control the mission names is in the catalog with the outcome
/// domain.md gives for it.
#[test]
fn catalog_covers_every_required_story() {
    let scenarios = catalog();
    let has = |kind: ChangeKind, profile: Option<Profile>, recovery: bool, error: TpmError| {
        scenarios.iter().any(|s| {
            s.steps().iter().any(|(change, expect)| {
                change.kind == kind
                    && profile.is_none_or(|p| {
                        s.device_named(change.device.as_deref())
                            .is_some_and(|d| d.profile == p)
                    })
                    && expect.recovery == recovery
                    && expect.tpm_error == error
            })
        })
    };
    use ChangeKind as C;
    use TpmError as E;
    let required = [
        (
            C::FirmwareUpdate,
            Some(Profile::Uefi),
            true,
            E::PolicyFailed,
        ),
        (
            C::OptionRomChanged,
            Some(Profile::Uefi),
            true,
            E::PolicyFailed,
        ),
        (
            C::BootManagerOtherSigner,
            Some(Profile::SecureBoot),
            true,
            E::PolicyFailed,
        ),
        (
            C::BootManagerSameSigner,
            Some(Profile::Uefi),
            true,
            E::PolicyFailed,
        ),
        (C::SecureBootDbUpdate, None, true, E::PolicyFailed),
        (C::SecureBootDbxUpdate, None, true, E::PolicyFailed),
        (C::SecureBootOff, None, true, E::PolicyFailed),
        (C::BcdDebugOn, None, true, E::PolicyFailed),
        (C::TpmCleared, None, true, E::Integrity),
        (C::DiskMoved, None, true, E::Integrity),
        (C::TpmReplaced, None, true, E::Integrity),
        (C::LostPin, None, true, E::AuthFailed),
        (C::LostPin, None, true, E::LockedOut),
        // Controls: must not lock.
        (C::Reboot, None, false, E::None),
        (
            C::BootManagerSameSigner,
            Some(Profile::SecureBoot),
            false,
            E::None,
        ),
        (C::FirmwareUpdateSuspended, None, false, E::None),
    ];
    for (kind, profile, recovery, error) in required {
        assert!(
            has(kind, profile, recovery, error),
            "no scenario for {kind:?} under {profile:?} with recovery={recovery}, {error:?}"
        );
    }
    let recovery_with = |pred: &dyn Fn(&Scenario) -> bool| scenarios.iter().any(pred);
    let answer = |s: &Scenario, via: RecoveryVia, a: Answer| {
        s.recovery
            .as_ref()
            .is_some_and(|r| r.via == via && r.answer == a)
    };
    assert!(recovery_with(&|s| answer(
        s,
        RecoveryVia::SelfService,
        Answer::SeveralMatches
    )));
    assert!(recovery_with(&|s| answer(
        s,
        RecoveryVia::SelfService,
        Answer::HelpdeskMessage
    )));
    assert!(recovery_with(&|s| answer(
        s,
        RecoveryVia::SelfService,
        Answer::Expired
    )));
    assert!(recovery_with(&|s| s.checks.foreign_key_request.is_some()));
    // The second slice's words, each in a story: a failure count read from the TPM, an
    // audit row that must not exist, the help desk in another language, a real wait.
    assert!(recovery_with(&|s| s
        .steps()
        .iter()
        .any(|(_, e)| e.tpm_failed_tries.is_some())));
    assert!(recovery_with(&|s| !s.checks.audit_absent.is_empty()));
    assert!(recovery_with(&|s| s
        .recovery
        .as_ref()
        .is_some_and(
            |r| r.via == RecoveryVia::HelpDesk && r.language.is_some()
        )));
    assert!(recovery_with(&|s| s
        .changes
        .iter()
        .any(|c| c.wait_secs.is_some())));
    assert!(recovery_with(&|s| s.checks.after_recovery.is_some()
        && answer(s, RecoveryVia::SelfService, Answer::KeyShown)));
    assert!(recovery_with(&|s| answer(
        s,
        RecoveryVia::HelpDeskTpmReset,
        Answer::LockoutAuthShown
    )));
    for role in [
        harness::scenario::Role::Helpdesk,
        harness::scenario::Role::AdvancedHelpdesk,
    ] {
        assert!(
            recovery_with(&|s| s
                .recovery
                .as_ref()
                .is_some_and(|r| r.via == RecoveryVia::HelpDesk
                    && s.user(&r.requester).is_some_and(|u| u.role == role))),
            "no help desk recovery by role {role:?}"
        );
    }
}

/// The JSON Schema accepts every catalog file (so editors and CI tools that use it agree
/// with the loader).
#[test]
fn catalog_validates_against_the_json_schema() {
    let validator = schema_validator();
    let mut files: Vec<PathBuf> = std::fs::read_dir(catalog_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 20);
    for file in files {
        let value: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", file.display());
    }
}

fn schema_validator() -> jsonschema::Validator {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(catalog_dir().join("scenario.schema.json")).unwrap(),
    )
    .unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

/// A small valid scenario; each error case below breaks one line of it.
const BASE: &str = "\
name: inline
description: An inline scenario for the loader's error tests, long enough to read.
device:
  profile: \"7,11\"
  protectors: [tpm, recovery_password]
users:
  - name: CONTOSO\\alice
    sign_ins: [local]
change:
  kind: secure_boot_off
expect:
  recovery: true
  tpm_error: policy_failed
  changed_pcrs: [7]
recovery:
  via: self_service
  as: CONTOSO\\alice
  reason: BIOS/TPM changed
  answer: key_shown
";

/// Parses `yaml` as `inline.yaml` and checks the whole error line.
#[track_caller]
fn check(yaml: &str, expected: &str) {
    match parse_scenario(Path::new("inline.yaml"), yaml) {
        Ok(_) => panic!("expected `{expected}`, but it parsed"),
        Err(e) => assert_eq!(e.to_string(), expected),
    }
}

fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from}");
    BASE.replacen(from, to, 1)
}

#[test]
fn base_scenario_is_valid() {
    let s = parse_scenario(Path::new("inline.yaml"), BASE).unwrap();
    assert_eq!(s.name, "inline");
    let device = s.device_named(None).unwrap();
    assert_eq!(device.profile.pcrs(), &[7, 11]);
    assert_eq!(device.name, "PC-0001");
}

#[test]
fn unknown_field_names_its_position_and_the_allowed_fields() {
    check(
        &edit(
            "  kind: secure_boot_off\n",
            "  kind: secure_boot_off\n  knd: x\n",
        ),
        "inline.yaml:11:3: change: unknown field `knd`, expected one of `kind`, `wrong_pins`, `then`, `signer`, `suspend`, `device`",
    );
}

#[test]
fn wrong_type_names_its_position_and_the_expected_type() {
    check(
        &edit("  recovery: true\n", "  recovery: often\n"),
        "inline.yaml:12:13: expect.recovery: invalid type: string \"often\", expected a boolean",
    );
}

/// A type error names a YAML shape (a mapping, a whole number), never the loader's Rust
/// type (`struct Checks`, `u32`) that a scenario writer has never seen.
#[test]
fn type_errors_name_yaml_shapes_not_rust_types() {
    check(
        &edit("  answer: key_shown\n", "  answer: key_shown\nchecks: 3\n"),
        "inline.yaml:20:9: checks: invalid type: integer `3`, expected a mapping",
    );
    check(
        &edit(
            "  kind: secure_boot_off\n",
            "  kind: secure_boot_off\n  suspend: 1\n",
        ),
        "inline.yaml:11:12: change.suspend: invalid type: integer `1`, expected a mapping",
    );
    check(
        &edit("[7]", "[-1]"),
        "inline.yaml:14:18: expect.changed_pcrs[0]: invalid type: integer `-1`, expected a \
         whole number, 0 or more",
    );
    check(
        &edit(
            "  protectors: [tpm, recovery_password]\n",
            "  protectors: [tpm, recovery_password]\n  recovery_passwords: 300\n",
        ),
        "inline.yaml:6:23: device.recovery_passwords: invalid value: integer `300`, expected a \
         whole number, 0-255",
    );
}

#[test]
fn bad_enum_value_lists_the_allowed_values() {
    check(
        &edit("  profile: \"7,11\"\n", "  profile: \"7,12\"\n"),
        "inline.yaml:4:12: device.profile: unknown variant `7,12`, expected one of `7,11`, `0,2,4,11`, `legacy`",
    );
    check(
        &edit("[tpm, recovery_password]", "[tpm, password]"),
        "inline.yaml:5:21: device.protectors[1]: unknown variant `password`, expected one of `tpm`, `tpm_pin`, `recovery_password`",
    );
}

#[test]
fn bad_key_id_digits_says_8_or_32() {
    check(
        &edit(
            "  answer: key_shown\n",
            "  answer: key_shown\n  key_id_digits: 12\n",
        ),
        "inline.yaml:20:18: recovery.key_id_digits: invalid value: integer `12`, expected 8 or 32",
    );
}

#[test]
fn semantic_errors_point_at_the_offending_key() {
    // A TPM+PIN protector without a PIN: points at the protector.
    check(
        &edit("[tpm, recovery_password]", "[tpm_pin, recovery_password]"),
        "inline.yaml:5:16: device.protectors[0]: protector `tpm_pin` needs a `pin` in `device`",
    );
    // A help desk recovery by a plain user: points at `as`.
    check(
        &edit("  via: self_service\n", "  via: help_desk\n")
            .replace("reason: BIOS/TPM changed", "reason: BIOS changed"),
        "inline.yaml:17:3: recovery.as: `CONTOSO\\alice` has role `user`: a help desk recovery needs a `helpdesk` or `advanced_helpdesk` user",
    );
    // An unknown requester.
    check(
        &edit("  as: CONTOSO\\alice\n", "  as: CONTOSO\\bob\n"),
        "inline.yaml:17:3: recovery.as: unknown user `CONTOSO\\bob`: expected one of `users` (`CONTOSO\\alice`)",
    );
    // A PCR outside the profile: points at the list item.
    check(
        &edit("changed_pcrs: [7]", "changed_pcrs: [7, 0]"),
        "inline.yaml:14:21: expect.changed_pcrs[1]: PCR 0 is not in profile 7,11 (PCRs [7, 11])",
    );
    // A recovery section when none is expected: points at `recovery`.
    check(
        &edit(
            "  recovery: true\n  tpm_error: policy_failed\n  changed_pcrs: [7]\n",
            "  recovery: false\n  tpm_error: none\n",
        ),
        "inline.yaml:14:1: recovery: `expect.recovery` is false: expected no `recovery` section",
    );
}

/// The rules of the second slice's words: failure counts, audit rows that must not exist,
/// the TPM's forgetting time and real waits.
#[test]
fn failed_tries_absent_rows_and_waits_are_checked_where_written() {
    check(
        &edit("  changed_pcrs: [7]\n", "  changed_pcrs: [7]\n  tpm_failed_tries: 33\n"),
        "inline.yaml:15:3: expect.tpm_failed_tries: the TPM counts at most `lockout_threshold` (32) failures: expected 0-32",
    );
    check(
        &edit(
            "  answer: key_shown\n",
            "  answer: key_shown\nchecks:\n  audit: [{ source: self_service, outcome: shown }]\n  audit_absent: [{ source: self_service, outcome: shown }]\n",
        ),
        "inline.yaml:22:18: checks.audit_absent[0]: `self_service shown` is stated in `checks.audit` too: a row cannot be both there and absent",
    );
    check(
        &edit("  protectors: [tpm, recovery_password]\n", "  protectors: [tpm, recovery_password]\n  failure_forgotten_secs: 0\n"),
        "inline.yaml:6:3: device.failure_forgotten_secs: expected 1-86400 seconds (0 would switch the TPM's dictionary-attack protection off)",
    );
    let waits = |secs: u32| {
        edit(
            "change:\n  kind: secure_boot_off\nexpect:\n  recovery: true\n  tpm_error: policy_failed\n  changed_pcrs: [7]\n",
            &format!("changes:\n  - wait_secs: {secs}\n    change: {{ kind: secure_boot_off }}\n    expect: {{ recovery: true, tpm_error: policy_failed, changed_pcrs: [7] }}\n"),
        )
    };
    check(
        &waits(121),
        "inline.yaml:10:5: changes[0].wait_secs: expected 1-120 seconds: the harness really waits (to make a day pass, lower `device.failure_forgotten_secs`)",
    );
    let s = parse_scenario(Path::new("inline.yaml"), &waits(5)).unwrap();
    assert_eq!(s.changes[0].wait_secs, Some(5));
    // The help desk's pages may be asked for in a language too.
    let ja = edit(
        "  answer: key_shown\n",
        "  answer: key_shown\n  language: ja\n",
    )
    .replace("  via: self_service\n", "  via: help_desk\n")
    .replace("reason: BIOS/TPM changed", "reason: BIOS changed")
    .replace(
        "    sign_ins: [local]\n",
        "    sign_ins: [local]\n  - name: CONTOSO\\hd\n    role: advanced_helpdesk\n",
    )
    .replace("  as: CONTOSO\\alice\n", "  as: CONTOSO\\hd\n");
    let s = parse_scenario(Path::new("inline.yaml"), &ja).unwrap();
    assert_eq!(
        s.recovery.unwrap().language,
        Some(harness::scenario::Language::Ja)
    );
}

#[test]
fn flow_style_yaml_is_located_too() {
    let yaml = edit(
        "device:\n  profile: \"7,11\"\n  protectors: [tpm, recovery_password]\n",
        "device: {profile: \"7,11\", protectors: [tpm, recovery_password], pin: \"1234\"}\n",
    );
    check(
        &yaml,
        "inline.yaml:3:65: device.pin: a `pin` needs a `tpm_pin` protector",
    );
}

/// The JSON Schema rejects the same kinds of mistakes, so the two stay in step.
#[test]
fn json_schema_rejects_what_the_loader_rejects() {
    let validator = schema_validator();
    let value = |yaml: &str| -> serde_json::Value { serde_yaml::from_str(yaml).unwrap() };
    assert!(validator.is_valid(&value(BASE)));
    for bad in [
        edit(
            "  kind: secure_boot_off\n",
            "  kind: secure_boot_off\n  knd: x\n",
        ),
        edit("  recovery: true\n", "  recovery: often\n"),
        edit("  profile: \"7,11\"\n", "  profile: \"7,12\"\n"),
        edit(
            "  answer: key_shown\n",
            "  answer: key_shown\n  key_id_digits: 12\n",
        ),
        edit("[tpm, recovery_password]", "[tpm_pin, recovery_password]"),
        edit("  kind: secure_boot_off\n", "  kind: lost_pin\n"),
        edit("  changed_pcrs: [7]\n", "  changed_pcrs: [7]\n  tpm_failed_tries: -1\n"),
        edit(
            "  protectors: [tpm, recovery_password]\n",
            "  protectors: [tpm, recovery_password]\n  failure_forgotten_secs: 0\n",
        ),
        edit(
            "  answer: key_shown\n",
            "  answer: key_shown\nchecks:\n  audit_absent: [{ source: self_service, outcome: lost }]\n",
        ),
    ] {
        assert!(!validator.is_valid(&value(&bad)), "schema accepted:\n{bad}");
        assert!(parse_scenario(Path::new("inline.yaml"), &bad).is_err());
    }
}

/// A file named twice, or named besides its directory (`harness run scenarios/
/// scenarios/real-firmware-....yaml`, to add a scenario a plain run skips), is one
/// scenario: not a clash of its name with itself.
#[test]
fn a_file_named_twice_or_with_its_directory_loads_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("inline.yaml");
    std::fs::write(&file, BASE).unwrap();
    let dotted = dir.path().join(".").join("inline.yaml");
    let loaded = load_catalog(&[dir.path(), file.as_path(), dotted.as_path()])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].file, file);
}

#[test]
fn a_catalog_with_one_bad_file_fails_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("inline.yaml"), BASE).unwrap();
    std::fs::write(
        dir.path().join("other.yaml"),
        edit("name: inline", "name: other")
            .replace("tpm_error: policy_failed", "tpm_error: melted"),
    )
    .unwrap();
    let err = load_catalog(&[dir.path()]).unwrap_err();
    let CatalogError::Invalid(errors) = &err else {
        panic!("{err}")
    };
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].file(), dir.path().join("other.yaml"));
    let text = err.to_string();
    assert!(
        text.starts_with("1 invalid scenario file, 1 problem:"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{}:13:14: expect.tpm_error: unknown variant `melted`",
            dir.path().join("other.yaml").display()
        )),
        "{text}"
    );
}

#[test]
fn duplicate_names_and_empty_catalogs_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("inline.yaml"), BASE).unwrap();
    std::fs::write(dir.path().join("inline.yml"), BASE).unwrap();
    let err = load_catalog(&[dir.path()]).unwrap_err().to_string();
    assert!(
        err.contains("inline.yml:1:1: name: the scenario name `inline` is already used by"),
        "{err}"
    );

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        load_catalog(&[empty.path()]),
        Err(CatalogError::Empty(_))
    ));
}

#[test]
fn filters_select_by_name_tag_glob_and_negation() {
    let scenarios = catalog();
    let names = |expr: &[&str]| -> Vec<String> {
        let filters: Vec<Filter> = expr.iter().map(|e| Filter::parse(e).unwrap()).collect();
        select(&scenarios, &filters)
            .into_iter()
            .map(|s| s.name.clone())
            .collect()
    };
    assert_eq!(names(&[]).len(), scenarios.len());
    let controls = names(&["tag:control"]);
    assert!(controls.len() >= 3 && controls.iter().all(|n| n.starts_with("control-")));
    assert_eq!(
        names(&["control-* !tag:firmware"]),
        vec![
            "control-boot-manager-same-signer-secure-boot",
            "control-option-rom-added-unsigned-secure-boot",
            "control-reboot"
        ]
    );
    let lost = names(&["lost-pin"]);
    assert!(lost.len() >= 3 && lost.iter().all(|n| n.contains("lost-pin")));
    // Several filters: the union, in catalog order.
    assert_eq!(
        names(&["name:tpm-cleared !tag:matrix", "disk-moved !tag:matrix"]),
        vec!["disk-moved", "tpm-cleared"]
    );
    // A matrix cell is chosen by its parameters too.
    assert_eq!(
        names(&["matrix-tpm-cleared"]),
        vec![
            "matrix-tpm-cleared[profile=0,2,4,11]",
            "matrix-tpm-cleared[profile=legacy]"
        ]
    );
    let legacy_cells = names(&["tag:matrix profile=legacy"]);
    assert!(
        legacy_cells.len() >= 10 && legacy_cells.iter().all(|n| n.ends_with("[profile=legacy]")),
        "{legacy_cells:?}"
    );
    assert!(Filter::parse("tag:").is_err());
    assert!(Filter::parse("   ").is_err());
}

/// serde's own list of a type's names, read from the error it gives for an unknown one:
/// an enum's variants (for `"no_such_name"`), or the fields of a struct that denies
/// unknown fields (for `{"no_such_name": 0}`). Nothing to keep in step by hand: a new
/// variant or field appears here as soon as it is in the Rust type.
fn serde_names<T: serde::de::DeserializeOwned + std::fmt::Debug>(
    probe: serde_json::Value,
) -> Vec<String> {
    let err = serde_json::from_value::<T>(probe).unwrap_err().to_string();
    // "unknown variant `x`, expected one of `a`, `b`" / "expected `a` or `b`" / "expected `a`"
    let (_, list) = err.split_once("expected ").unwrap();
    let mut names: Vec<String> = list
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect();
    names.sort();
    names
}

/// The JSON Schema cannot miss (or keep) a name the Rust types do not: every enum of the
/// schema lists exactly the variants of its Rust type, and every object of the schema
/// exactly the fields of its struct.
#[test]
fn json_schema_names_exactly_the_variants_and_fields_of_the_rust_types() {
    use harness::scenario as m;
    use serde_json::json;
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(catalog_dir().join("scenario.schema.json")).unwrap(),
    )
    .unwrap();
    let at = |pointer: &str| -> Vec<String> {
        let node = schema
            .pointer(pointer)
            .unwrap_or_else(|| panic!("no {pointer} in the schema"));
        let mut names: Vec<String> = match node {
            serde_json::Value::Array(values) => values
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect(),
            serde_json::Value::Object(props) => props.keys().cloned().collect(),
            other => panic!("{pointer}: {other}"),
        };
        names.sort();
        names
    };
    let variant = json!("no_such_name");
    let field = json!({"no_such_name": 0});
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("/properties", serde_names::<m::Scenario>(field.clone())),
        (
            "/$defs/device/properties",
            serde_names::<m::Device>(field.clone()),
        ),
        (
            "/$defs/device/properties/profile/enum",
            serde_names::<m::Profile>(variant.clone()),
        ),
        (
            "/$defs/device/properties/protectors/items/enum",
            serde_names::<m::ProtectorKind>(variant.clone()),
        ),
        (
            "/$defs/device/properties/volume_cipher/enum",
            serde_names::<m::VolumeCipher>(variant.clone()),
        ),
        (
            "/$defs/user/properties",
            serde_names::<m::User>(field.clone()),
        ),
        (
            "/$defs/user/properties/role/enum",
            serde_names::<m::Role>(variant.clone()),
        ),
        (
            "/$defs/user/properties/sign_ins/items/enum",
            serde_names::<m::SignInKind>(variant.clone()),
        ),
        (
            "/$defs/change_step/properties",
            serde_names::<m::ChangeStep>(field.clone()),
        ),
        (
            "/$defs/change/properties",
            serde_names::<m::Change>(field.clone()),
        ),
        (
            "/$defs/change/properties/kind/enum",
            serde_names::<m::ChangeKind>(variant.clone()),
        ),
        (
            "/$defs/change/properties/then/enum",
            serde_names::<m::PinAction>(variant.clone()),
        ),
        (
            "/$defs/change/properties/signer/enum",
            serde_names::<m::RomSigner>(variant.clone()),
        ),
        (
            "/$defs/expect/properties",
            serde_names::<m::Expect>(field.clone()),
        ),
        (
            "/$defs/matrix_cell/properties",
            serde_names::<m::MatrixCell>(field.clone()),
        ),
        (
            "/$defs/expect/properties/tpm_error/enum",
            serde_names::<m::TpmError>(variant.clone()),
        ),
        (
            "/$defs/recovery/properties",
            serde_names::<m::Recovery>(field.clone()),
        ),
        (
            "/$defs/recovery/properties/via/enum",
            serde_names::<m::RecoveryVia>(variant.clone()),
        ),
        (
            "/$defs/recovery/properties/reason/enum",
            serde_names::<m::Reason>(variant.clone()),
        ),
        (
            "/$defs/recovery/properties/language/enum",
            serde_names::<m::Language>(variant.clone()),
        ),
        (
            "/$defs/recovery/properties/answer/enum",
            serde_names::<m::Answer>(variant.clone()),
        ),
        (
            "/$defs/checks/properties",
            serde_names::<m::Checks>(field.clone()),
        ),
        (
            "/$defs/checks/properties/after_recovery/enum",
            serde_names::<m::AfterRecovery>(variant.clone()),
        ),
        (
            "/$defs/checks/properties/idle_expiry/properties",
            serde_names::<m::IdleExpiry>(field.clone()),
        ),
        (
            "/$defs/checks/properties/foreign_key_request/properties",
            serde_names::<m::ForeignKeyRequest>(field.clone()),
        ),
        (
            "/$defs/checks/properties/audit/items/properties",
            serde_names::<m::AuditExpectation>(field.clone()),
        ),
        (
            "/$defs/checks/properties/audit/items/properties/source/enum",
            serde_names::<m::AuditSource>(variant.clone()),
        ),
        (
            "/$defs/checks/properties/audit/items/properties/outcome/enum",
            serde_names::<m::AuditOutcome>(variant.clone()),
        ),
    ];
    for (pointer, rust) in cases {
        assert!(!rust.is_empty(), "{pointer}");
        assert_eq!(
            at(pointer),
            rust,
            "the schema at {pointer} and the Rust type differ"
        );
    }
}

/// `harness validate` through the real binary: every problem of a file, each at its own
/// file:line:column, in file order, like a compiler; `harness run` refuses the same
/// catalog with the same errors and exit code 2.
#[test]
fn validate_reports_every_problem_at_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let three = edit(
        "protectors: [tpm, recovery_password]",
        "protectors: [tpm, recovery_password, tpm]",
    )
    .replace("changed_pcrs: [7]", "changed_pcrs: [7, 9]")
    .replace("  as: CONTOSO\\alice", "  as: CONTOSO\\bob");
    let file = dir.path().join("inline.yaml");
    std::fs::write(&file, three).unwrap();
    let f = file.display();
    let expected = format!(
        "error: 1 invalid scenario file, 3 problems:\n  \
         {f}:5:40: device.protectors[2]: protector listed twice\n  \
         {f}:14:21: expect.changed_pcrs[1]: PCR 9 is not in profile 7,11 (PCRs [7, 11])\n  \
         {f}:17:3: recovery.as: unknown user `CONTOSO\\bob`: expected one of `users` (`CONTOSO\\alice`)\n"
    );
    for command in ["validate", "run"] {
        let out = crate::common::harness()
            .arg(command)
            .arg(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{command}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), expected, "{command}");
        assert!(out.stdout.is_empty(), "{command}");
    }
}

/// serde stops at its first type error; the loader reads each top-level section again on
/// its own, so each section's first type error is reported, at its real line.
#[test]
fn type_errors_in_several_sections_are_each_reported() {
    let bad = edit("profile: \"7,11\"", "profile: \"7,12\"")
        .replace("sign_ins: [local]", "sign_ins: [locall]")
        .replace("changed_pcrs: [7]", "changed_pcrs: [7]\n  extra: 1");
    let errors = harness::scenario::check_scenario(Path::new("inline.yaml"), &bad).unwrap_err();
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "inline.yaml:4:12: device.profile: unknown variant `7,12`, expected one of `7,11`, `0,2,4,11`, `legacy`",
            "inline.yaml:8:16: users[0].sign_ins[0]: unknown variant `locall`, expected `local` or `remote`",
            "inline.yaml:15:3: expect: unknown field `extra`, expected one of `recovery`, `tpm_error`, `changed_pcrs`, `tpm_failed_tries`",
        ]
    );
}

/// An unclosed flow sequence is a syntax error, named as one, not the type error the typed
/// reader meets first inside the half-read text.
#[test]
fn an_unclosed_flow_sequence_is_named_a_syntax_error() {
    let bad = edit("changed_pcrs: [7]", "changed_pcrs: [7");
    let errors = harness::scenario::check_scenario(Path::new("inline.yaml"), &bad).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let text = errors[0].to_string();
    assert!(
        text.starts_with("inline.yaml:15:9: YAML syntax error: did not find expected ',' or ']'"),
        "{text}"
    );
    assert!(text.contains("flow sequence"), "{text}");
}

/// An empty file (or only comments), or a document that is a list or a scalar, is named
/// for what it is, in the file's words: not serde's "missing field `name`" or "struct
/// Scenario".
#[test]
fn an_empty_file_or_a_document_that_is_no_mapping_says_so() {
    let expected = "expected a scenario: a mapping with `name`, `description`, `device` (or \
                    `devices`), `users`, `change` and `expect` (or `changes`); see SCHEMA.md";
    check(
        "",
        &format!("inline.yaml:1:1: the file is empty: {expected}"),
    );
    check(
        "# only a comment\n\n",
        &format!("inline.yaml:1:1: the file is empty: {expected}"),
    );
    check(
        "- name: inline\n",
        &format!("inline.yaml:1:1: the document is a list: {expected}"),
    );
    check(
        "just text\n",
        &format!("inline.yaml:1:1: the document is a single value: {expected}"),
    );
}

/// A story without its change (or its `expect`) is told so, once: its `recovery` is not
/// also said to follow an `expect.recovery` that is false.
#[test]
fn a_missing_change_or_expect_is_the_only_error_named() {
    assert_eq!(
        all_errors(&edit("change:\n  kind: secure_boot_off\n", "change:\n")),
        "inline.yaml:9:1: change: missing `change` (or `changes`, a list of changes each with \
         its `expect`)"
    );
    let no_expect = edit(
        "expect:\n  recovery: true\n  tpm_error: policy_failed\n  changed_pcrs: [7]\n",
        "",
    );
    let errors = all_errors(&no_expect);
    assert!(!errors.contains("is false"), "{errors}");
    assert_eq!(errors.lines().count(), 1, "{errors}");
}

/// A tab where YAML wants indentation is a syntax error that says it is a tab.
#[test]
fn a_tab_in_the_indentation_is_named() {
    let tabbed = edit("  profile: \"7,11\"\n", "\tprofile: \"7,11\"\n");
    let errors = all_errors(&tabbed);
    assert!(
        errors.starts_with("inline.yaml:4:1: YAML syntax error: a tab: YAML indents with spaces"),
        "{errors}"
    );
}

/// `matrix: []` is told that it needs a cell, and nothing else: not also that the device
/// lacks the profile the cells would give, nor that `expect` is missing.
#[test]
fn an_empty_matrix_is_the_only_error_named() {
    let empty = edit("  profile: \"7,11\"\n", "").replace(
        "expect:\n  recovery: true\n  tpm_error: policy_failed\n  changed_pcrs: [7]\n",
        "matrix: []\n",
    );
    assert_eq!(
        all_errors(&empty),
        "inline.yaml:10:1: matrix: expected at least one cell (a `profile` with its `expect`)"
    );
}

/// SCHEMA.md: the file is named `<name>.yaml`.
#[test]
fn a_file_named_differently_from_its_scenario_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("renamed.yaml");
    std::fs::write(&file, BASE).unwrap();
    let err = harness::scenario::load_scenario(&file)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}:1:1: name: the scenario `inline` must be in a file named `inline.yaml` (this one is `renamed`)",
            file.display()
        )
    );
}

/// `changes:` (a story of several changes, each with its own `expect`) in place of
/// `change` + `expect`: its rules, each at its position.
#[test]
fn a_story_of_several_changes_is_checked_step_by_step() {
    let steps = BASE.replace(
        "change:\n  kind: secure_boot_off\nexpect:\n  recovery: true\n  tpm_error: policy_failed\n  changed_pcrs: [7]\n",
        "changes:\n  - change: { kind: firmware_update_suspended }\n    expect: { recovery: false, tpm_error: none }\n  - change: { kind: secure_boot_off }\n    expect: { recovery: true, tpm_error: policy_failed, changed_pcrs: [7] }\n",
    );
    assert_ne!(steps, BASE);
    let s = parse_scenario(Path::new("inline.yaml"), &steps).unwrap();
    assert_eq!(s.steps().len(), 2);
    assert!(s.recovers());
    // A step before the last that ends on the recovery screen needs its own recovery,
    // one that unlocks (the story goes on).
    let mid = steps.replace(
        "expect: { recovery: false, tpm_error: none }",
        "expect: { recovery: true, tpm_error: integrity }",
    );
    check(
        &mid,
        "inline.yaml:11:15: changes[0].expect.recovery: a change before the last that ends on the recovery screen needs its own `recovery` (how the user gets back in before the story goes on), or `recovery: false` here",
    );
    let own = "expect: { recovery: true, tpm_error: integrity }\n    recovery: { via: self_service, as: CONTOSO\\alice, reason: BIOS/TPM changed, answer: key_shown }";
    let with_own = mid.replace("expect: { recovery: true, tpm_error: integrity }", own);
    let s = parse_scenario(Path::new("inline.yaml"), &with_own).unwrap();
    assert_eq!(s.recoveries().len(), 2);
    assert!(validator_accepts(&with_own));
    check(
        &with_own.replace("answer: key_shown }", "answer: refused }"),
        "inline.yaml:12:81: changes[0].recovery.answer: the story goes on after this recovery, so it must unlock the device: expected `key_shown`, `several_matches` or `lockout_auth_shown`",
    );
    check(
        &with_own.replace("as: CONTOSO\\alice,", "as: CONTOSO\\bob,"),
        "inline.yaml:12:36: changes[0].recovery.as: unknown user `CONTOSO\\bob`: expected one of `users` (`CONTOSO\\alice`)",
    );
    // A locked-out TPM stays so: a reboot after wrong PINs may meet the lockout.
    let pin_story = BASE
        .replace("[tpm, recovery_password]", "[tpm_pin, recovery_password]\n  pin: \"246813\"\n  lockout_threshold: 2")
        .replace(
            "change:\n  kind: secure_boot_off\nexpect:\n  recovery: true\n  tpm_error: policy_failed\n  changed_pcrs: [7]\n",
            "changes:\n  - change: { kind: lost_pin, wrong_pins: 3 }\n    expect: { recovery: true, tpm_error: locked_out }\n    recovery: { via: self_service, as: CONTOSO\\alice, reason: Lost PIN/passphrase, answer: key_shown }\n  - change: { kind: reboot }\n    expect: { recovery: true, tpm_error: locked_out }\n",
        )
        .replace("reason: BIOS/TPM changed", "reason: Lost PIN/passphrase");
    parse_scenario(Path::new("inline.yaml"), &pin_story).unwrap();
    check(
        &pin_story.replace("kind: lost_pin, wrong_pins: 3", "kind: firmware_update"),
        "inline.yaml:13:31: changes[0].expect.tpm_error: `auth_failed` and `locked_out` come from wrong PINs: expected `change.kind: lost_pin` (or, for `locked_out`, a `reboot` after an earlier `lost_pin` on the device)",
    );
    // Each step's expectation is checked like a single change's, at its own position.
    check(
        &steps.replace("changed_pcrs: [7]", "changed_pcrs: [7, 7]"),
        "inline.yaml:13:75: changes[1].expect.changed_pcrs[1]: PCR 7 listed twice",
    );
    // One form or the other.
    check(
        &format!("{steps}change:\n  kind: reboot\n"),
        "inline.yaml:19:1: change: `changes` lists every change with its own `expect`: expected no top-level `change` or `expect` besides it",
    );
    let validator = schema_validator();
    let value: serde_json::Value = serde_yaml::from_str(&steps).unwrap();
    assert!(validator.is_valid(&value));
    let both: serde_json::Value =
        serde_yaml::from_str(&format!("{steps}change:\n  kind: reboot\n")).unwrap();
    assert!(!validator.is_valid(&both));
}

fn validator_accepts(yaml: &str) -> bool {
    schema_validator().is_valid(&serde_yaml::from_str(yaml).unwrap())
}

/// `suspend: { reboots: N }` on a change: 1-15, and not with a change that does not boot
/// with the TPM protector.
#[test]
fn suspend_takes_1_to_15_reboots_before_a_change_that_boots() {
    let suspended = edit(
        "  kind: secure_boot_off\nexpect:\n  recovery: true\n  tpm_error: policy_failed\n  changed_pcrs: [7]\n",
        "  kind: secure_boot_off\n  suspend: { reboots: 1 }\nexpect:\n  recovery: false\n  tpm_error: none\n",
    );
    let suspended = suspended[..suspended.find("recovery:\n  via").unwrap()].to_string();
    let s = parse_scenario(Path::new("inline.yaml"), &suspended).unwrap();
    assert_eq!(s.steps()[0].0.suspend.map(|x| x.reboots), Some(1));
    check(
        &suspended.replace("reboots: 1", "reboots: 16"),
        "inline.yaml:11:14: change.suspend.reboots: expected 1-15 reboots",
    );
    check(
        &suspended.replace("kind: secure_boot_off", "kind: none"),
        "inline.yaml:11:3: change.suspend: `suspend` does not go with `kind: none`: `none` does not reboot",
    );
    let validator = schema_validator();
    let ok: serde_json::Value = serde_yaml::from_str(&suspended).unwrap();
    assert!(validator.is_valid(&ok));
    let bad: serde_json::Value =
        serde_yaml::from_str(&suspended.replace("reboots: 1", "reboots: 16")).unwrap();
    assert!(!validator.is_valid(&bad));
}

/// [`BASE`] with two devices: Alice signed in locally to the first, the change and the
/// recovery on it.
const TWO_DEVICES: &str = "\
name: inline
description: An inline scenario of two devices for the loader's error tests.
devices:
  - name: PC-A
    profile: \"7,11\"
    protectors: [tpm, recovery_password]
  - name: PC-B
    profile: \"0,2,4,11\"
    protectors: [tpm, recovery_password]
users:
  - name: CONTOSO\\alice
    sign_ins_on:
      PC-A: [local]
change:
  kind: secure_boot_off
  device: PC-A
expect:
  recovery: true
  tpm_error: policy_failed
  changed_pcrs: [7]
recovery:
  via: self_service
  device: PC-A
  as: CONTOSO\\alice
  reason: BIOS/TPM changed
  answer: key_shown
";

fn edit_two(from: &str, to: &str) -> String {
    assert!(TWO_DEVICES.contains(from), "{from}");
    TWO_DEVICES.replacen(from, to, 1)
}

#[test]
fn a_story_of_several_devices_names_the_device_of_each_change_and_recovery() {
    let s = parse_scenario(Path::new("inline.yaml"), TWO_DEVICES).unwrap();
    assert_eq!(s.all_devices().len(), 2);
    let b = s.device_named(Some("pc-b")).unwrap();
    assert_eq!(b.profile.pcrs(), &[0, 2, 4, 11]);
    let alice = s.user("contoso\\alice").unwrap();
    assert!(s.signed_in_locally(alice, s.device_named(Some("PC-A")).unwrap()));
    assert!(s.sign_ins(alice, b).is_empty());
    assert!(schema_validator().is_valid(&serde_yaml::from_str(TWO_DEVICES).unwrap()));

    check(
        &edit_two("  device: PC-A\nexpect", "expect"),
        "inline.yaml:14:1: change: the story has several devices: expected `device:` naming one of `PC-A`, `PC-B`",
    );
    check(
        &edit_two("  device: PC-A\nexpect", "  device: PC-C\nexpect"),
        "inline.yaml:16:3: change.device: unknown device `PC-C`: expected one of `PC-A`, `PC-B`",
    );
    check(
        &edit_two("  device: PC-A\n  as:", "  device: PC-B\n  as:"),
        "inline.yaml:23:3: recovery.device: the recovery follows the change that happens to `PC-A`: expected that device",
    );
    check(
        &edit_two("    sign_ins_on:\n      PC-A: [local]\n", "    sign_ins: [local]\n"),
        "inline.yaml:12:5: users[0].sign_ins: the story has several devices: expected `sign_ins_on`, the sign-ins on each device by its name",
    );
    check(
        &edit_two("      PC-A: [local]\n", "      PC-A: [local]\n      PC-Z: [local]\n"),
        "inline.yaml:12:5: users[0].sign_ins_on: unknown device `PC-Z`: expected one of `PC-A`, `PC-B`",
    );
    check(
        &edit_two("  - name: PC-B\n", "  - name: pc-a\n"),
        "inline.yaml:7:5: devices[1].name: computer `pc-a` listed twice (names are case-insensitive)",
    );
    check(
        &edit_two("    protectors: [tpm, recovery_password]\nusers", "    protectors: [tpm]\nusers"),
        "inline.yaml:9:5: devices[1].protectors: expected a `recovery_password` protector: it is what the agent escrows",
    );
    // Alice has no local sign-in on PC-B: self-service cannot show its key.
    check(
        &edit_two("      PC-A: [local]\n", "      PC-B: [local]\n"),
        "inline.yaml:24:3: recovery.as: `CONTOSO\\alice` has no local sign-in on `PC-A`: self-service cannot show its key (expected `answer: helpdesk_message` or `refused`)",
    );
    let both = TWO_DEVICES.replacen(
        "users:\n",
        "device:\n  profile: \"7,11\"\n  protectors: [tpm, recovery_password]\nusers:\n",
        1,
    );
    check(
        &both,
        "inline.yaml:3:1: devices: `device` is the one device of a story: expected `device` or `devices`, not both",
    );
    assert!(!schema_validator().is_valid(&serde_yaml::from_str(&both).unwrap()));
    let none = edit(
        "device:\n  profile: \"7,11\"\n  protectors: [tpm, recovery_password]\n",
        "",
    );
    assert!(parse_scenario(Path::new("inline.yaml"), &none).is_err());
    assert!(!schema_validator().is_valid(&serde_yaml::from_str(&none).unwrap()));
}

#[test]
fn a_real_firmware_device_is_refused_what_real_firmware_cannot_answer() {
    let fw = |yaml: String| yaml.replacen("device:\n", "device:\n  firmware: ovmf\n", 1);
    // BASE (Secure Boot off under 7,11) is something real OVMF does.
    assert!(parse_scenario(Path::new("inline.yaml"), &fw(BASE.to_string())).is_ok());
    check(
        &fw(edit("  profile: \"7,11\"\n", "  profile: legacy\n")),
        "inline.yaml:5:3: device.profile: `firmware: ovmf` is UEFI firmware: a legacy (BIOS) profile cannot be sealed to its boot; expected \"7,11\" or \"0,2,4,11\"",
    );
    check(
        &fw(edit(
            "  kind: secure_boot_off\n",
            "  kind: firmware_update\n",
        )),
        &format!(
            "inline.yaml:11:3: change.kind: `firmware_update` on real firmware: {}",
            device::real_firmware::real_change(device::ChangeKind::FirmwareUpdate).unwrap_err()
        ),
    );
    let under_0_2_4_11 = fw(edit("  profile: \"7,11\"\n", "  profile: \"0,2,4,11\"\n")
        .replace("changed_pcrs: [7]", "changed_pcrs: [0]"));
    let err = parse_scenario(Path::new("inline.yaml"), &under_0_2_4_11)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("change.kind: `secure_boot_off` on real firmware also moves PCR 4"),
        "{err}"
    );
    // Only a story of one device boots real firmware.
    let two = BASE
        .replace(
            "device:\n  profile: \"7,11\"\n  protectors: [tpm, recovery_password]\n",
            "devices:\n  - name: A\n    firmware: ovmf\n    profile: \"7,11\"\n    protectors: [tpm, recovery_password]\n  - name: B\n    profile: \"7,11\"\n    protectors: [tpm, recovery_password]\n",
        )
        .replace("    sign_ins: [local]\n", "    sign_ins_on: { A: [local] }\n");
    let err = parse_scenario(Path::new("inline.yaml"), &two)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "inline.yaml:5:5: devices[0].firmware: `firmware: ovmf` is for a story of one device"
        ),
        "{err}"
    );
}

const MATRIX: &str = "\
name: inline
description: An inline matrix scenario for the loader's tests, long enough to read.
device:
  protectors: [tpm, recovery_password]
users:
  - name: CONTOSO\\alice
    sign_ins: [local]
change:
  kind: secure_boot_off
matrix:
  - profile: \"7,11\"
    expect: { recovery: true, tpm_error: policy_failed, changed_pcrs: [7] }
  - profile: \"0,2,4,11\"
    expect: { recovery: false, tpm_error: none }
recovery:
  via: self_service
  as: CONTOSO\\alice
  reason: BIOS/TPM changed
  answer: key_shown
";

/// Every error of `yaml` read as `inline.yaml`, one per line.
fn all_errors(yaml: &str) -> String {
    let errors = harness::scenario::check_scenario(Path::new("inline.yaml"), yaml)
        .err()
        .unwrap_or_else(|| panic!("expected errors, but it loaded:\n{yaml}"));
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_matrix_is_one_scenario_per_cell_with_the_cells_own_expect() {
    assert!(validator_accepts(MATRIX));
    let cells = harness::scenario::check_scenario(Path::new("inline.yaml"), MATRIX).unwrap();
    let names: Vec<&str> = cells.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["inline[profile=7,11]", "inline[profile=0,2,4,11]"]);
    let (sb, uefi) = (&cells[0], &cells[1]);
    assert_eq!(sb.device_named(None).unwrap().profile, Profile::SecureBoot);
    assert_eq!(uefi.device_named(None).unwrap().profile, Profile::Uefi);
    let expect = |s: &Scenario| s.last_step().unwrap().1.clone();
    assert_eq!(
        (
            expect(sb).recovery,
            expect(sb).tpm_error,
            expect(sb).changed_pcrs
        ),
        (true, TpmError::PolicyFailed, vec![7])
    );
    assert_eq!(
        (expect(uefi).recovery, expect(uefi).tpm_error),
        (false, TpmError::None)
    );
    // The file's recovery is played by the cell that expects one, not by the other.
    assert_eq!(sb.recovery.as_ref().unwrap().answer, Answer::KeyShown);
    assert!(uefi.recovery.is_none());
    assert!(cells.iter().all(|s| s.matrix.is_empty()));
    // One scenario per cell is not one scenario.
    let e = parse_scenario(Path::new("inline.yaml"), MATRIX).unwrap_err();
    assert!(
        e.to_string().contains("a `matrix` file is 2 scenarios"),
        "{e}"
    );
}

#[test]
fn a_matrix_cell_s_errors_are_located_in_the_cell() {
    // The table says 0,2,4,11 does not see PCR 7: a cell claiming it is refused there.
    let wrong_pcr = MATRIX.replace(
        "expect: { recovery: false, tpm_error: none }",
        "expect: { recovery: true, tpm_error: policy_failed, changed_pcrs: [7] }",
    );
    assert_eq!(
        all_errors(&wrong_pcr),
        "inline.yaml:14:72: matrix[1].expect.changed_pcrs[0]: PCR 7 is not in profile 0,2,4,11 (PCRs [0, 2, 4, 11])"
    );
    // A rule only one cell breaks, outside the cells, names that cell.
    let legacy = MATRIX.replace("\"0,2,4,11\"", "legacy");
    let e = all_errors(&legacy);
    assert!(
        e.starts_with("inline.yaml:9:3: change.kind: ")
            && e.ends_with(" (in matrix[1] (profile `legacy`))"),
        "{e}"
    );
    assert!(!validator_accepts(&legacy));
    // The profile and the expect where the cells give them; the same profile twice; and
    // still each cell's own mistakes (`policy_failed` names no PCR).
    let three = MATRIX
        .replace(
            "    expect: { recovery: false, tpm_error: none }",
            "    expect: { recovery: true, tpm_error: policy_failed }",
        )
        .replace("  - profile: \"0,2,4,11\"", "  - profile: \"7,11\"")
        .replace("  protectors:", "  profile: \"7,11\"\n  protectors:")
        .replace(
            "recovery:\n  via",
            "expect: { recovery: false, tpm_error: none }\nrecovery:\n  via",
        );
    assert_eq!(
        all_errors(&three),
        [
            "inline.yaml:4:3: device.profile: each `matrix` cell gives the profile: expected none in `device`",
            "inline.yaml:14:5: matrix[1].profile: this profile has a cell already: expected one cell per profile",
            "inline.yaml:15:31: matrix[1].expect.tpm_error: `policy_failed` needs `changed_pcrs`: the profile PCRs that changed",
            "inline.yaml:16:1: expect: each `matrix` cell gives its own `expect`: expected no top-level one",
        ]
        .join("\n")
    );
    assert!(!validator_accepts(&three));
    let no_recovery = MATRIX.split("recovery:\n  via").next().unwrap().to_string();
    assert_eq!(
        all_errors(&no_recovery),
        "inline.yaml:12:15: matrix[0].expect.recovery: a recovery is expected: add a `recovery` section saying how the user gets back in"
    );
    let empty = format!("{BASE}matrix: []\n");
    assert_eq!(
        all_errors(&empty),
        "inline.yaml:20:1: matrix: expected at least one cell (a `profile` with its `expect`)"
    );
    assert!(!validator_accepts(&empty));
    // Without a matrix a device still needs its profile.
    let unprofiled = BASE.replace("  profile: \"7,11\"\n", "");
    assert_eq!(
        all_errors(&unprofiled),
        "inline.yaml:3:1: device: missing field `profile`"
    );
    assert!(!validator_accepts(&unprofiled));
}

/// Every ```` ```yaml ```` block of SCHEMA.md and README.md loads: a whole scenario (it has
/// `name`) as it stands; an excerpt over the catalog file named in the HTML comment just
/// before it (`<!-- example excerpt of FILE.yaml -->`), its top-level keys replacing the
/// file's. So a reader who copies an example gets a story the loader takes.
#[test]
fn every_yaml_example_in_the_docs_loads() {
    const EXCERPT: &str = "<!-- example excerpt of ";
    let mut checked = 0;
    for doc in ["scenarios/SCHEMA.md", "README.md"] {
        let text = std::fs::read_to_string(crate::common::workspace_root().join(doc)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            if lines[i].trim_end() != "```yaml" {
                i += 1;
                continue;
            }
            let start = i + 1;
            let end = start
                + lines[start..]
                    .iter()
                    .position(|l| l.starts_with("```"))
                    .unwrap_or_else(|| panic!("{doc}:{start}: unclosed ```yaml block"));
            let block = lines[start..end].join("\n") + "\n";
            let at = format!("{doc}:{start}");
            let mut example: serde_yaml::Mapping = serde_yaml::from_str(&block)
                .unwrap_or_else(|e| panic!("{at}: the example is not YAML: {e}\n{block}"));
            let base = lines[..i]
                .iter()
                .rev()
                .find(|l| !l.trim().is_empty())
                .and_then(|l| l.trim().strip_prefix(EXCERPT))
                .and_then(|l| l.strip_suffix(" -->"));
            let yaml = match (example.contains_key("name"), base) {
                (true, None) => block,
                (false, Some(base)) => {
                    let file = catalog_dir().join(base);
                    let text = std::fs::read_to_string(&file)
                        .unwrap_or_else(|e| panic!("{at}: the excerpt's file {base}: {e}"));
                    let mut story: serde_yaml::Mapping = serde_yaml::from_str(&text).unwrap();
                    for (key, value) in std::mem::take(&mut example) {
                        story.insert(key, value);
                    }
                    serde_yaml::to_string(&story).unwrap()
                }
                (true, Some(_)) => panic!("{at}: a whole scenario needs no `{EXCERPT}...`"),
                (false, None) => {
                    panic!("{at}: an excerpt (no `name`) needs `{EXCERPT}FILE.yaml -->` before it")
                }
            };
            let name: serde_yaml::Mapping = serde_yaml::from_str(&yaml).unwrap();
            let name = name["name"].as_str().unwrap().to_owned();
            if let Err(errors) = harness::scenario::check_scenario(
                &catalog_dir().join(format!("{name}.yaml")),
                &yaml,
            ) {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                panic!(
                    "{at}: the example does not load:\n{}\n{yaml}",
                    errors.join("\n")
                );
            }
            checked += 1;
            i = end + 1;
        }
    }
    assert!(checked >= 8, "only {checked} examples found");
}
