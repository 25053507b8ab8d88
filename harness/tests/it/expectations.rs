//! Issue 16: a green run means what it says. Each test plays scenario files through the
//! real `harness` binary (real swtpm, the embedded portal over HTTP) and checks what a QA
//! reader would: a stated expectation that the device or portal contradicts fails, naming
//! the step; a true one passes.

use std::path::Path;
use std::process::Output;

use crate::common::{harness, portal_bin};

/// A finished `harness run` of one scenario file: exit code, and the JSON report.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    report: Option<serde_json::Value>,
}

impl Run {
    fn passed(&self) -> bool {
        self.code == Some(0)
    }

    /// The first scenario's steps, in order.
    fn steps(&self) -> Vec<String> {
        self.report.as_ref().map_or_else(Vec::new, |r| {
            r["scenarios"][0]["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap().to_string())
                .collect()
        })
    }

    /// The failing step, what it expected and what it got.
    fn failure(&self) -> Option<(String, String, String)> {
        let f = &self.report.as_ref()?["scenarios"][0]["failure"];
        if f.is_null() {
            return None;
        }
        let s = |k: &str| f[k].as_str().unwrap_or_default().to_string();
        Some((s("step"), s("expected"), s("got")))
    }

    fn explain(&self) -> String {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}\nsteps: {:?}\nfailure: {:?}",
            self.code,
            self.stdout,
            self.stderr,
            self.steps(),
            self.failure()
        )
    }
}

/// `<name>.yaml` for a scenario text: the loader wants a file named after its scenario.
fn file_name(yaml: &str) -> String {
    let name = yaml
        .lines()
        .find_map(|l| l.strip_prefix("name:"))
        .map_or("scenario", str::trim);
    format!("{name}.yaml")
}

/// Writes `yaml` as `<name>.yaml` in a fresh directory and runs it with `args`.
fn run_yaml(yaml: &str, args: &[&str]) -> Run {
    let _ = portal_bin();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(file_name(yaml));
    std::fs::write(&file, yaml).unwrap();
    run_file(&file, dir.path(), args)
}

fn run_file(file: &Path, dir: &Path, args: &[&str]) -> Run {
    let json = dir.join("run.json");
    let out: Output = harness()
        .arg("run")
        .arg(file)
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let report = std::fs::read_to_string(&json)
        .ok()
        .map(|t| serde_json::from_str(&t).unwrap());
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        report,
    }
}

/// `harness validate FILE` on `yaml`: exit code and stderr.
fn validate_yaml(yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(file_name(yaml));
    std::fs::write(&file, yaml).unwrap();
    let out = harness().arg("validate").arg(&file).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

/// A TPM+PIN laptop whose user types `wrong_pins` wrong PINs (threshold `threshold`);
/// `rest` is the YAML from `expect:` on (and any extra `change` keys before it).
fn lost_pin(name: &str, wrong_pins: u32, threshold: u32, change_extra: &str, rest: &str) -> String {
    format!(
        "\
name: {name}
description: A TPM+PIN laptop whose user types wrong PINs, for the issue-16 tests of the runner.
device:
  profile: \"7,11\"
  protectors: [tpm_pin, recovery_password]
  pin: \"472918\"
  lockout_threshold: {threshold}
users:
  - name: CONTOSO\\alice
    sign_ins: [local]
  - name: CONTOSO\\hd-carol
    role: helpdesk
change:
  kind: lost_pin
  wrong_pins: {wrong_pins}
{change_extra}{rest}"
    )
}

const SELF_SERVICE_KEY: &str = "\
recovery:
  via: self_service
  as: CONTOSO\\alice
  reason: Lost PIN/passphrase
  answer: key_shown
";

fn count_wrong_pin_steps(steps: &[String]) -> usize {
    steps.iter().filter(|s| s.starts_with("wrong PIN")).count()
}

/// Defect 2: `wrong_pins: N` means exactly N wrong PINs, each answered by the TPM (auth
/// failed up to the threshold, locked out after); `tpm_error` is the answer to the last.
#[test]
fn defect_2_lost_pin_types_exactly_wrong_pins_wrong_pins() {
    // 5 wrong PINs, threshold 5: the 5th is still refused as a wrong PIN (the counter
    // reaches 5), so the user at the prompt sees `auth_failed` and takes recovery.
    let yaml = lost_pin(
        "exact-five",
        5,
        5,
        "",
        &format!("expect:\n  recovery: true\n  tpm_error: auth_failed\n{SELF_SERVICE_KEY}"),
    );
    let run = run_yaml(&yaml, &[]);
    assert!(run.passed(), "{}", run.explain());
    let steps = run.steps();
    assert_eq!(count_wrong_pin_steps(&steps), 5, "{steps:?}");
    for i in 1..=5 {
        assert!(
            steps.contains(&format!("wrong PIN #{i}")),
            "wrong PIN #{i} missing: {steps:?}"
        );
    }

    // 6 wrong PINs, threshold 5: the 6th is answered `locked_out`; `auth_failed` cannot be
    // the answer to the last one, and the loader says so at `wrong_pins`.
    let yaml = lost_pin(
        "six-auth-failed",
        6,
        5,
        "",
        &format!("expect:\n  recovery: true\n  tpm_error: auth_failed\n{SELF_SERVICE_KEY}"),
    );
    let (code, err) = validate_yaml(&yaml);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("six-auth-failed.yaml:15:3: change.wrong_pins"),
        "{err}"
    );
    assert!(err.contains("locked out"), "{err}");
}

/// Defect 3: what the user does after the wrong PINs is input (`then: esc | right_pin`);
/// whether the recovery screen shows and what the TPM answers are checked against the TPM.
#[test]
fn defect_3_the_lost_pin_users_action_is_input_and_the_outcome_is_checked() {
    // 2 wrong PINs, then the right one: the TPM (threshold 32) is not locked out, the
    // drive opens, no recovery.
    let unlocks = lost_pin(
        "right-pin-unlocks",
        2,
        32,
        "  then: right_pin\n",
        "expect:\n  recovery: false\n  tpm_error: none\n",
    );
    let run = run_yaml(&unlocks, &[]);
    assert!(run.passed(), "{}", run.explain());
    assert_eq!(count_wrong_pin_steps(&run.steps()), 2, "{:?}", run.steps());

    // The same story with a contradicted expectation (a recovery screen, locked out)
    // must fail at the step where the user types the right PIN.
    let contradicted = lost_pin(
        "right-pin-contradicted",
        2,
        32,
        "  then: right_pin\n",
        &format!("expect:\n  recovery: true\n  tpm_error: locked_out\n{SELF_SERVICE_KEY}"),
    );
    let run = run_yaml(&contradicted, &[]);
    assert_eq!(run.code, Some(1), "{}", run.explain());
    let (step, expected, got) = run.failure().unwrap();
    assert_eq!(step, "the user types the right PIN", "{}", run.explain());
    assert!(expected.contains("locked_out"), "{expected}");
    assert!(got.contains("normal boot"), "{got}");

    // 5 wrong PINs (threshold 5), then the right one: the TPM is locked out now and
    // answers `locked_out`; the recovery key gets the user in.
    let locked = lost_pin(
        "right-pin-locked-out",
        5,
        5,
        "  then: right_pin\n",
        &format!("expect:\n  recovery: true\n  tpm_error: locked_out\n{SELF_SERVICE_KEY}"),
    );
    let run = run_yaml(&locked, &[]);
    assert!(run.passed(), "{}", run.explain());

    // Esc after 2 wrong PINs shows the recovery screen with the TPM's `auth_failed`:
    // a stated `locked_out` is contradicted by the TPM and fails at the Esc step.
    let esc_contradicted = lost_pin(
        "esc-contradicted",
        2,
        32,
        "  then: esc\n",
        &format!("expect:\n  recovery: true\n  tpm_error: locked_out\n{SELF_SERVICE_KEY}"),
    );
    let run = run_yaml(&esc_contradicted, &[]);
    assert_eq!(run.code, Some(1), "{}", run.explain());
    let (step, expected, got) = run.failure().unwrap();
    assert_eq!(
        step,
        "the user presses Esc at the PIN prompt",
        "{}",
        run.explain()
    );
    assert!(expected.contains("locked_out"), "{expected}");
    assert!(got.contains("auth_failed"), "{got}");

    // `then` belongs to `lost_pin` only.
    let (code, err) = validate_yaml(
        &std::fs::read_to_string(
            crate::common::workspace_root().join("scenarios/control-reboot.yaml"),
        )
        .unwrap()
        .replace("  kind: reboot\n", "  kind: reboot\n  then: esc\n"),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("change.then"), "{err}");
}

/// A workstation with 3 keys sharing their first 8 digits, after a firmware update, and a
/// help desk call; `recovery_tail` is the `recovery` section from `answer:` on.
fn help_desk_several(name: &str, answer: &str) -> String {
    format!(
        "\
name: {name}
description: Three keys share their first 8 digits; the help desk looks one up, for the issue-16 tests.
device:
  name: WS-0312
  profile: \"0,2,4,11\"
  protectors: [tpm, recovery_password]
  recovery_passwords: 3
  key_id_prefix: \"5EC0A11D\"
users:
  - name: CONTOSO\\alice
    sign_ins: [local]
  - name: CONTOSO\\hd-frank
    role: advanced_helpdesk
change:
  kind: firmware_update
expect:
  recovery: true
  tpm_error: policy_failed
  changed_pcrs: [0]
recovery:
  via: help_desk
  as: CONTOSO\\hd-frank
  reason: BIOS changed
  key_id_digits: 8
  answer: {answer}
"
    )
}

/// Defect 4: the help desk path checks `answer` as self-service does: several matches
/// are not a `key_shown`, and `several_matches` is checked before all 32 digits are typed.
#[test]
fn defect_4_help_desk_checks_the_answer() {
    let run = run_yaml(
        &help_desk_several("hd-several-stated-key-shown", "key_shown"),
        &[],
    );
    assert_eq!(run.code, Some(1), "{}", run.explain());
    let (step, expected, got) = run.failure().unwrap();
    assert_eq!(
        step,
        "the portal answers as the scenario says",
        "{}",
        run.explain()
    );
    assert!(expected.contains("key_shown"), "{expected}");
    assert!(got.starts_with("several_matches"), "{got}");

    let run = run_yaml(&help_desk_several("hd-several", "several_matches"), &[]);
    assert!(run.passed(), "{}", run.explain());
    let steps = run.steps();
    let asks = steps
        .iter()
        .position(|s| s == "the portal asks for all 32 digits")
        .unwrap_or_else(|| panic!("{steps:?}"));
    let retypes = steps
        .iter()
        .position(|s| s == "operator picks the key by all 32 digits")
        .unwrap_or_else(|| panic!("{steps:?}"));
    assert!(asks < retypes, "{steps:?}");
    assert!(steps.contains(&"the key from the portal unlocks the device".to_string()));
}

/// Defect 5: `refused` is byte-identical to the answer for an absent key ID (or, for
/// Manage TPM, an absent computer) on the help desk paths too, and `help_desk_tpm_reset`
/// with `answer: refused` is playable.
#[test]
fn defect_5_help_desk_refusals_are_compared_with_an_absent_one() {
    // Carol (role helpdesk) types an end user who never signed in to the laptop.
    let key = "\
name: hd-refused
description: The help desk types an end user with no sign-in on the device and is refused, for issue 16.
device:
  name: PC-0221
  profile: \"7,11\"
  protectors: [tpm, recovery_password]
users:
  - name: CONTOSO\\erin
    sign_ins: [local]
  - name: CONTOSO\\bob
  - name: CONTOSO\\hd-carol
    role: helpdesk
change:
  kind: secure_boot_db_update
expect:
  recovery: true
  tpm_error: policy_failed
  changed_pcrs: [7]
recovery:
  via: help_desk
  as: CONTOSO\\hd-carol
  end_user: CONTOSO\\bob
  reason: BIOS changed
  answer: refused
checks:
  audit:
    - { source: help_desk, outcome: denied }
    - { source: help_desk, outcome: not_found }
";
    let run = run_yaml(key, &[]);
    assert!(run.passed(), "{}", run.explain());
    assert!(
        run.steps()
            .contains(&"the refusal is answered exactly like an absent key ID".to_string()),
        "{:?}",
        run.steps()
    );

    // Manage TPM for a device whose agent never escrowed the lockout authorization.
    let tpm = lost_pin(
        "tpm-reset-refused",
        6,
        5,
        "",
        "\
expect:
  recovery: true
  tpm_error: locked_out
recovery:
  via: help_desk_tpm_reset
  as: CONTOSO\\hd-carol
  end_user: CONTOSO\\alice
  reason: Lost PIN
  answer: refused
",
    )
    .replace(
        "  lockout_threshold: 5\n",
        "  lockout_threshold: 5\n  escrow_tpm_lockout: false\n",
    );
    let run = run_yaml(&tpm, &[]);
    assert!(run.passed(), "{}", run.explain());
    assert!(
        run.steps()
            .contains(&"the refusal is answered exactly like an absent computer".to_string()),
        "{:?}",
        run.steps()
    );
}

/// Defect 6: `checks.after_recovery` says what the agent does after the key (or the
/// lockout authorization) was shown: `rotate` or `keep`; the runner does that and checks it.
#[test]
fn defect_6_after_recovery_keep_is_played_and_checked() {
    let root = crate::common::workspace_root();
    let rotation =
        std::fs::read_to_string(root.join("scenarios/single-use-key-rotation.yaml")).unwrap();
    let keep = rotation
        .replace("name: single-use-key-rotation", "name: key-kept")
        .replace("after_recovery: rotate", "after_recovery: keep")
        // Kept, the old key ID asked for again is shown, not "not found".
        .replace(
            "{ source: self_service, outcome: not_found }",
            "{ source: self_service, outcome: shown }",
        );
    assert_ne!(
        keep, rotation,
        "the scenario file changed; update this test"
    );
    let run = run_yaml(&keep, &[]);
    assert!(run.passed(), "{}", run.explain());
    let steps = run.steps();
    for step in [
        "agent check-in is told to rotate the shown key",
        "the agent keeps the key: the old password still unlocks the device",
        "the portal still shows the kept key to its user",
        "the next check-in still asks to rotate it",
    ] {
        assert!(
            steps.contains(&step.to_string()),
            "{step} missing: {steps:?}"
        );
    }
    assert!(
        !steps.contains(&"the device makes a new recovery password".to_string()),
        "{steps:?}"
    );

    // Kept, but the scenario states the rotation's "not found" for the old key ID: the
    // audit check catches the contradiction.
    let contradicted = rotation
        .replace(
            "name: single-use-key-rotation",
            "name: key-kept-contradicted",
        )
        .replace("after_recovery: rotate", "after_recovery: keep");
    let run = run_yaml(&contradicted, &[]);
    assert_eq!(run.code, Some(1), "{}", run.explain());
    assert_eq!(
        run.failure().unwrap().0,
        "the audit shows each request",
        "{}",
        run.explain()
    );

    // `rotate` still rotates.
    let dir = tempfile::tempdir().unwrap();
    let run = run_file(
        &root.join("scenarios/single-use-key-rotation.yaml"),
        dir.path(),
        &[],
    );
    assert!(run.passed(), "{}", run.explain());
    assert!(run
        .steps()
        .contains(&"the device makes a new recovery password".to_string()));

    // The lockout authorization kept: Manage TPM's value is not rotated, and the portal
    // keeps asking for it.
    let tpm = std::fs::read_to_string(root.join("scenarios/lost-pin-help-desk-tpm-reset.yaml"))
        .unwrap()
        .replace("name: lost-pin-help-desk-tpm-reset", "name: lockout-kept")
        .replace("after_recovery: rotate", "after_recovery: keep");
    let run = run_yaml(&tpm, &[]);
    assert!(run.passed(), "{}", run.explain());
    let steps = run.steps();
    assert!(
        steps.contains(
            &"the next check-in still asks to rotate the TPM lockout authorization".to_string()
        ),
        "{steps:?}"
    );
    assert!(
        !steps.contains(&"agent escrows the new lockout authorization".to_string()),
        "{steps:?}"
    );
}

/// Defect 7: `harness run --browser` checks the `expired_session` audit row the scenario
/// states, as the no-JavaScript run does (it used to drop it).
#[test]
fn defect_7_browser_checks_the_expired_session_audit_row() {
    let root = crate::common::workspace_root();
    let idle = std::fs::read_to_string(root.join("scenarios/idle-session-expires.yaml")).unwrap();
    let run = run_yaml(&idle, &["--browser"]);
    assert!(run.passed(), "{}", run.explain());
    assert!(
        run.steps()
            .contains(&"the audit shows each request".to_string()),
        "{:?}",
        run.steps()
    );

    // The row stated with the wrong source must fail the audit check in the browser too.
    let wrong = idle.replace(
        "{ source: self_service, outcome: expired_session }",
        "{ source: help_desk, outcome: expired_session }",
    );
    assert_ne!(wrong, idle, "the scenario file changed; update this test");
    for args in [&[][..], &["--browser"][..]] {
        let run = run_yaml(&wrong, args);
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.explain());
        let (step, expected, _) = run.failure().unwrap();
        assert_eq!(
            step,
            "the audit shows each request",
            "{args:?}: {}",
            run.explain()
        );
        assert!(expected.contains("help_desk"), "{expected}");
    }
}

/// YAML as editors and YAML 1.2 core-schema tools read it (an unquoted `0123` is the
/// integer 123, not a string), as JSON for the JSON Schema.
fn yaml_as_json(text: &str) -> Option<serde_json::Value> {
    use yaml_rust2::Yaml;
    fn convert(y: &Yaml) -> Option<serde_json::Value> {
        Some(match y {
            Yaml::Real(r) => serde_json::json!(r.parse::<f64>().ok()?),
            Yaml::Integer(i) => serde_json::json!(i),
            Yaml::String(s) => serde_json::json!(s),
            Yaml::Boolean(b) => serde_json::json!(b),
            Yaml::Null => serde_json::Value::Null,
            Yaml::Array(items) => {
                serde_json::Value::Array(items.iter().map(convert).collect::<Option<_>>()?)
            }
            Yaml::Hash(map) => {
                let mut out = serde_json::Map::new();
                for (k, v) in map {
                    out.insert(k.as_str()?.to_string(), convert(v)?);
                }
                serde_json::Value::Object(out)
            }
            Yaml::Alias(_) | Yaml::BadValue => return None,
        })
    }
    let docs = yaml_rust2::YamlLoader::load_from_str(text).ok()?;
    convert(docs.first()?)
}

fn schema_validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(
        crate::common::workspace_root().join("scenarios/scenario.schema.json"),
    )
    .unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

/// Defect 8: a PIN is a string. An unquoted one is an error at `device.pin` that says to
/// quote it; and the loader (`harness validate`) and the JSON Schema accept and reject the
/// same files: every catalog file, and a set of good and bad variants.
#[test]
fn defect_8_loader_and_json_schema_accept_and_reject_the_same_files() {
    use harness::scenario::parse_scenario;
    let root = crate::common::workspace_root();
    let base = std::fs::read_to_string(root.join("scenarios/lost-pin-wrong-pins.yaml")).unwrap();
    let edit = |from: &str, to: &str| -> String {
        assert!(
            base.contains(from),
            "lost-pin-wrong-pins.yaml changed: {from}"
        );
        base.replacen(from, to, 1)
    };
    let pin = "  pin: \"472918\"\n";

    // An unquoted numeric PIN names its position and says to quote it.
    for unquoted in ["0123", "582046"] {
        let yaml = edit(pin, &format!("  pin: {unquoted}\n"));
        let err = parse_scenario(Path::new("pin.yaml"), &yaml)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("pin.yaml:11:8: device.pin:"), "{err}");
        assert!(err.contains("quote it"), "{err}");
    }

    let mut files: Vec<(String, String)> = Vec::new();
    let mut catalog: Vec<_> = std::fs::read_dir(root.join("scenarios"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    catalog.sort();
    assert!(catalog.len() >= 20);
    for path in catalog {
        files.push((
            path.display().to_string(),
            std::fs::read_to_string(&path).unwrap(),
        ));
    }
    let variants = [
        // Good.
        (
            "quoted PIN with a leading zero",
            edit(pin, "  pin: \"0123\"\n"),
        ),
        ("single-quoted PIN", edit(pin, "  pin: '582046'\n")),
        ("no then (esc by default)", edit("  then: esc\n", "")),
        (
            "after_recovery: keep",
            format!("{base}checks:\n  after_recovery: keep\n"),
        ),
        // Bad.
        ("then: later", edit("  then: esc\n", "  then: later\n")),
        (
            "unquoted PIN with a leading zero",
            edit(pin, "  pin: 0123\n"),
        ),
        ("unquoted numeric PIN", edit(pin, "  pin: 582046\n")),
        ("unquoted 8-digit PIN", edit(pin, "  pin: 58204612\n")),
        ("PIN too short", edit(pin, "  pin: \"123\"\n")),
        (
            "PIN without tpm_pin",
            edit("[tpm_pin, recovery_password]", "[tpm, recovery_password]"),
        ),
        ("tpm_pin without PIN", edit(pin, "")),
        (
            "unknown key",
            edit("  wrong_pins: 3\n", "  wrong_pins: 3\n  wrongpins: 3\n"),
        ),
        (
            "wrong_pins zero",
            edit("  wrong_pins: 3\n", "  wrong_pins: 0\n"),
        ),
        ("lost_pin without wrong_pins", edit("  wrong_pins: 3\n", "")),
        (
            "bad enum",
            edit("tpm_error: auth_failed", "tpm_error: pin_wrong"),
        ),
        ("bad type", edit("recovery: true", "recovery: \"yes\"")),
        (
            "missing expect",
            edit("expect:\n  recovery: true\n  tpm_error: auth_failed\n", ""),
        ),
        (
            "bad key_id_digits",
            edit(
                "  answer: key_shown\n",
                "  answer: key_shown\n  key_id_digits: 12\n",
            ),
        ),
        (
            "bad after_recovery",
            format!("{base}checks:\n  after_recovery: sometimes\n"),
        ),
    ];
    for (name, text) in variants {
        files.push((name.to_string(), text));
    }

    let validator = schema_validator();
    let mut disagreements = Vec::new();
    for (name, text) in &files {
        // A `matrix` file is several scenarios: all of them or none load.
        let loader =
            harness::scenario::check_scenario(Path::new("variant.yaml"), text).map_err(|errors| {
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            });
        let schema = yaml_as_json(text).map(|v| validator.is_valid(&v));
        let schema_ok = schema == Some(true);
        if loader.is_ok() != schema_ok {
            disagreements.push(format!(
                "{name}: loader {}, JSON Schema {}",
                match &loader {
                    Ok(_) => "accepts".to_string(),
                    Err(e) => format!("rejects ({e})"),
                },
                if schema_ok { "accepts" } else { "rejects" }
            ));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

/// `wait_secs` is real time the TPM forgets failures in: without the night of
/// `lost-pin-over-two-days`, Tuesday's counter still holds Monday's three failed PINs and
/// the run fails where the scenario states they are gone.
#[test]
fn the_tpm_forgets_failed_pins_only_in_real_time() {
    let story = std::fs::read_to_string(
        crate::common::workspace_root().join("scenarios/lost-pin-over-two-days.yaml"),
    )
    .unwrap();
    assert!(story.contains("  - wait_secs: 10\n"));
    let no_night = run_yaml(
        &story.replace("  - wait_secs: 10\n", "  - wait_secs: 1\n"),
        &[],
    );
    assert!(!no_night.passed(), "{}", no_night.explain());
    let (step, expected, got) = no_night.failure().unwrap();
    assert_eq!(step, "the TPM's failure counter (change 2)");
    assert_eq!(
        (expected.as_str(), got.as_str()),
        ("0 failure(s) counted", "3 failure(s) counted")
    );
}

/// Wrong PINs count on from the failures the TPM still holds: Monday's three and
/// Tuesday's first reach the threshold of 4, so Tuesday's second wrong PIN meets a
/// locked-out TPM.
#[test]
fn wrong_pins_count_on_from_the_tpms_counter() {
    let story = "\
name: two-days-no-night
description: Three wrong PINs and the right one, then two more wrong PINs at once.
device:
  profile: \"7,11\"
  protectors: [tpm_pin, recovery_password]
  pin: \"730462\"
  lockout_threshold: 4
users:
  - name: CONTOSO\\kenji
    sign_ins: [local]
changes:
  - change: { kind: lost_pin, wrong_pins: 3, then: right_pin }
    expect: { recovery: false, tpm_error: none, tpm_failed_tries: 3 }
  - change: { kind: lost_pin, wrong_pins: 2, then: esc }
    expect: { recovery: true, tpm_error: locked_out, tpm_failed_tries: 4 }
recovery:
  via: self_service
  as: CONTOSO\\kenji
  reason: Lost PIN/passphrase
  answer: key_shown
";
    let run = run_yaml(story, &[]);
    assert!(run.passed(), "{}", run.explain());
    let steps = run.steps();
    assert!(
        steps.contains(&"the recovery screen after the wrong PINs (change 2)".to_string()),
        "{steps:?}"
    );
}
