//! The mutation test of the runner: a contradicted expectation must fail, at its step.
//!
//! For every catalog scenario and every expectation it states, a mutant replaces the value
//! with a contradicting one (never removes it). A mutant the loader's cross-field rules
//! refuse is counted as loader-caught and then made consistent (dependent expectations
//! adjusted, never the story's input) and run as well. Every runnable mutant goes through the
//! RELEASE `harness run DIR --json OUT -j 2` with the embedded portal, next to the unmutated
//! originals (which must pass), and must fail at the step [`FIELDS`] declares. A mutant
//! that passes is a runner that does not check what the scenario says.
//!
//! Both tests are ignored by default (they need the release build): `make test` runs
//! [`one_mutant_per_field_fails_at_its_step`], `make mutants` runs
//! [`every_mutant_fails_at_its_step`]. The mutants are kept, readable, under
//! `target/mutants/<set>/` with the run's `run.json` and `summary.txt`.
//!
//! To cover a new expectation, add a [`Field`] to [`FIELDS`]: where its values are in the
//! YAML, its contradicting values, how dependent fields follow, and the runner's step.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

use crate::common::{harness_at, workspace_root};

use harness::runner::step;

/// One stated expectation the test contradicts.
struct Field {
    /// How the report names it.
    name: &'static str,
    /// The contradicting replacements of what this scenario states (none if it states
    /// nothing here).
    mutants: fn(&Value) -> Vec<Edit>,
    /// Adjusts the fields that depend on the replaced one so the loader accepts the mutant;
    /// `None` when only a change of the story's input (device, users, change, via) would.
    consistent: fn(&Value, &Edit) -> Option<Value>,
    /// The steps that must fail (as the runner names them; one of them). Empty: the field
    /// is (also) what the story *does*, nothing stated contradicts the other value, and
    /// the runner plays and checks it: the mutant is another story and must pass.
    step: fn(&Value, &Edit) -> Vec<&'static str>,
}

/// The declared map: every expectation the catalog states, and the step that checks it.
/// Every answer a recovery may state (`recovery.answer`, `changes[].recovery.answer`).
const ANSWERS: &[&str] = &[
    "refused",
    "key_shown",
    "several_matches",
    "helpdesk_message",
    "expired",
    "lockout_auth_shown",
];

const FIELDS: &[Field] = &[
    Field {
        name: "expect.recovery",
        mutants: |doc| {
            let Some(Value::Bool(b)) = at(doc, &[K("expect"), K("recovery")]) else {
                return vec![];
            };
            vec![Edit::new(
                vec![K("expect"), K("recovery")],
                Value::Bool(*b),
                Value::Bool(!b),
            )]
        },
        consistent: |doc, edit| {
            let recovers = edit.to == Value::Bool(true);
            let mut doc = doc.clone();
            if recovers {
                let kind = str_at(&doc, &[K("change"), K("kind")]);
                let then = str_at(&doc, &[K("change"), K("then")]);
                let tpm_error = match (kind.as_str(), then.as_str()) {
                    ("lost_pin", "right_pin") => "locked_out",
                    ("lost_pin", _) => "auth_failed",
                    _ => "integrity",
                };
                set(&mut doc, &[K("expect"), K("tpm_error")], tpm_error.into());
                remove(&mut doc, &[K("expect"), K("changed_pcrs")]);
                let section = self_service_recovery(&doc)?;
                set(&mut doc, &[K("recovery")], section);
            } else {
                set(&mut doc, &[K("expect"), K("tpm_error")], "none".into());
                remove(&mut doc, &[K("expect"), K("changed_pcrs")]);
                remove(&mut doc, &[K("recovery")]);
                remove(&mut doc, &[K("checks"), K("after_recovery")]);
            }
            Some(doc)
        },
        step: |doc, _| boot_step(doc),
    },
    Field {
        name: "expect.tpm_error",
        mutants: |doc| {
            enum_mutants(
                doc,
                vec![K("expect"), K("tpm_error")],
                &[
                    "policy_failed",
                    "integrity",
                    "locked_out",
                    "auth_failed",
                    "none",
                ],
            )
        },
        consistent: |doc, edit| {
            let mut doc = doc.clone();
            let to = edit.to.as_str().unwrap_or_default();
            let kind = str_at(&doc, &[K("change"), K("kind")]);
            if matches!(to, "auth_failed" | "locked_out") && kind != "lost_pin" {
                return None; // wrong PINs need a lost-PIN story: an input change
            }
            let via = str_at(&doc, &[K("recovery"), K("via")]);
            if via == "help_desk_tpm_reset" && to != "locked_out" {
                return None; // a lockout reset needs a lockout: an input change
            }
            if to == "policy_failed" {
                let first = profile_pcrs(&doc, &[K("change")]).first().copied()?;
                set(
                    &mut doc,
                    &[K("expect"), K("changed_pcrs")],
                    pcr_list(&[first]),
                );
            } else {
                remove(&mut doc, &[K("expect"), K("changed_pcrs")]);
            }
            let recovered = at(&doc, &[K("recovery")]).is_some();
            if to == "none" {
                set(&mut doc, &[K("expect"), K("recovery")], Value::Bool(false));
                remove(&mut doc, &[K("recovery")]);
                remove(&mut doc, &[K("checks"), K("after_recovery")]);
            } else if !recovered {
                set(&mut doc, &[K("expect"), K("recovery")], Value::Bool(true));
                let section = self_service_recovery(&doc)?;
                set(&mut doc, &[K("recovery")], section);
            }
            Some(doc)
        },
        step: |doc, _| boot_step(doc),
    },
    Field {
        name: "expect.changed_pcrs",
        mutants: |doc| {
            let path = vec![K("expect"), K("changed_pcrs")];
            let Some(Value::Sequence(stated)) = at(doc, &path) else {
                return vec![];
            };
            let stated: Vec<u64> = stated.iter().filter_map(Value::as_u64).collect();
            let others: Vec<u64> = profile_pcrs(doc, &[K("change")])
                .into_iter()
                .filter(|p| !stated.contains(p))
                .collect();
            let mut edits: Vec<Edit> = others
                .iter()
                .map(|&p| Edit::new(path.clone(), pcr_list(&stated), pcr_list(&[p])))
                .collect();
            // One more PCR than happened contradicts too.
            if let Some(&extra) = others.first() {
                if !stated.is_empty() {
                    let mut more = stated.clone();
                    more.push(extra);
                    more.sort_unstable();
                    edits.push(Edit::new(path.clone(), pcr_list(&stated), pcr_list(&more)));
                }
            }
            edits
        },
        consistent: |doc, edit| {
            // Only an empty list is refused (`policy_failed` needs PCRs); never made here.
            let _ = edit;
            Some(doc.clone())
        },
        step: |doc, _| boot_step(doc),
    },
    Field {
        name: "recovery.answer",
        mutants: |doc| enum_mutants(doc, vec![K("recovery"), K("answer")], ANSWERS),
        consistent: |doc, edit| {
            let mut doc = doc.clone();
            let shows = matches!(
                edit.to.as_str(),
                Some("key_shown" | "several_matches" | "lockout_auth_shown")
            );
            if !shows {
                // Rotation follows a shown key only.
                remove(&mut doc, &[K("checks"), K("after_recovery")]);
            }
            Some(doc)
        },
        step: |doc, edit| {
            let via = str_at(doc, &[K("recovery"), K("via")]);
            vec![answer_step(&via, edit.to.as_str().unwrap_or_default())]
        },
    },
    Field {
        name: "changes[].recovery.answer",
        mutants: |doc| {
            (0..changes_len(doc))
                .flat_map(|i| {
                    enum_mutants(
                        doc,
                        vec![K("changes"), I(i), K("recovery"), K("answer")],
                        ANSWERS,
                    )
                })
                .collect()
        },
        // A recovery before the last change must unlock (the story goes on): a mutant
        // that does not is the loader's to refuse; one that does needs no other edit.
        consistent: |doc, _| Some(doc.clone()),
        step: |doc, edit| {
            let Some(i) = step_index(edit) else {
                return vec![];
            };
            let via = str_at(doc, &[K("changes"), I(i), K("recovery"), K("via")]);
            vec![answer_step(&via, edit.to.as_str().unwrap_or_default())]
        },
    },
    Field {
        name: "checks.audit[].outcome",
        mutants: |doc| {
            let Some(Value::Sequence(rows)) = at(doc, &[K("checks"), K("audit")]) else {
                return vec![];
            };
            (0..rows.len())
                .flat_map(|i| {
                    enum_mutants(
                        doc,
                        vec![K("checks"), K("audit"), I(i), K("outcome")],
                        &[
                            "denied",
                            "not_found",
                            "shown",
                            "ambiguous",
                            "rate_limited",
                            "expired_session",
                            "not_eligible",
                        ],
                    )
                })
                .collect()
        },
        consistent: |doc, _| Some(doc.clone()),
        step: |_, _| vec![step::AUDIT],
    },
    Field {
        name: "checks.after_recovery",
        mutants: |doc| {
            enum_mutants(
                doc,
                vec![K("checks"), K("after_recovery")],
                &["rotate", "keep"],
            )
        },
        consistent: |doc, _| Some(doc.clone()),
        // `rotate` / `keep` is what the agent does after the recovery; the runner plays it
        // and checks the portal's answer (rotated: the old key is gone; kept: the portal
        // keeps asking). It contradicts a stated audit row of the key asked for again
        // after the recovery (`not_found` rotated, `shown` kept); with no such row the
        // swapped value is another story, which a correct portal passes.
        step: |doc, _| {
            if states_the_key_asked_for_again(doc) {
                vec![step::AUDIT]
            } else {
                vec![]
            }
        },
    },
    // A story of several changes: each step's `expect`, checked at that change's boot.
    Field {
        name: "changes[].expect.recovery",
        mutants: |doc| {
            (0..changes_len(doc))
                .filter_map(|i| {
                    let path = step_expect(i, "recovery");
                    let Some(Value::Bool(b)) = at(doc, &path) else {
                        return None;
                    };
                    Some(Edit::new(path, Value::Bool(*b), Value::Bool(!b)))
                })
                .collect()
        },
        consistent: |doc, edit| {
            let i = step_index(edit)?;
            let recovery = recovery_at(doc, i);
            let mut doc = doc.clone();
            if edit.to == Value::Bool(true) {
                let kind = str_at(&doc, &[K("changes"), I(i), K("change"), K("kind")]);
                let then = str_at(&doc, &[K("changes"), I(i), K("change"), K("then")]);
                let tpm_error = match (kind.as_str(), then.as_str()) {
                    ("lost_pin", "right_pin") => "locked_out",
                    ("lost_pin", _) => "auth_failed",
                    _ => "integrity",
                };
                set(&mut doc, &step_expect(i, "tpm_error"), tpm_error.into());
                remove(&mut doc, &step_expect(i, "changed_pcrs"));
                let section = self_service_recovery(&doc)?;
                set(&mut doc, &recovery, section);
            } else {
                set(&mut doc, &step_expect(i, "tpm_error"), "none".into());
                remove(&mut doc, &step_expect(i, "changed_pcrs"));
                remove(&mut doc, &recovery);
                if !recovers_anywhere(&doc) {
                    remove(&mut doc, &[K("checks"), K("after_recovery")]);
                }
            }
            Some(doc)
        },
        step: |doc, edit| change_boot_step(doc, edit),
    },
    Field {
        name: "changes[].expect.tpm_error",
        mutants: |doc| {
            (0..changes_len(doc))
                .flat_map(|i| {
                    enum_mutants(
                        doc,
                        step_expect(i, "tpm_error"),
                        &[
                            "policy_failed",
                            "integrity",
                            "locked_out",
                            "auth_failed",
                            "none",
                        ],
                    )
                })
                .collect()
        },
        consistent: |doc, edit| {
            let i = step_index(edit)?;
            let recovery = recovery_at(doc, i);
            let mut doc = doc.clone();
            let to = edit.to.as_str().unwrap_or_default();
            let kind = str_at(&doc, &[K("changes"), I(i), K("change"), K("kind")]);
            if matches!(to, "auth_failed" | "locked_out") && kind != "lost_pin" {
                return None; // wrong PINs need a lost-PIN story: an input change
            }
            if to == "policy_failed" {
                let first = profile_pcrs(&doc, &[K("changes"), I(i), K("change")])
                    .first()
                    .copied()?;
                set(
                    &mut doc,
                    &step_expect(i, "changed_pcrs"),
                    pcr_list(&[first]),
                );
            } else {
                remove(&mut doc, &step_expect(i, "changed_pcrs"));
            }
            let recovered = at(&doc, &recovery).is_some();
            if to == "none" {
                set(&mut doc, &step_expect(i, "recovery"), Value::Bool(false));
                remove(&mut doc, &recovery);
                if !recovers_anywhere(&doc) {
                    remove(&mut doc, &[K("checks"), K("after_recovery")]);
                }
            } else if !recovered {
                set(&mut doc, &step_expect(i, "recovery"), Value::Bool(true));
                let section = self_service_recovery(&doc)?;
                set(&mut doc, &recovery, section);
            }
            Some(doc)
        },
        step: |doc, edit| change_boot_step(doc, edit),
    },
    Field {
        name: "changes[].expect.changed_pcrs",
        mutants: |doc| {
            let mut edits = Vec::new();
            for i in 0..changes_len(doc) {
                let path = step_expect(i, "changed_pcrs");
                let Some(Value::Sequence(stated)) = at(doc, &path) else {
                    continue;
                };
                let stated: Vec<u64> = stated.iter().filter_map(Value::as_u64).collect();
                let others: Vec<u64> = profile_pcrs(doc, &[K("changes"), I(i), K("change")])
                    .into_iter()
                    .filter(|p| !stated.contains(p))
                    .collect();
                edits.extend(
                    others
                        .iter()
                        .map(|&p| Edit::new(path.clone(), pcr_list(&stated), pcr_list(&[p]))),
                );
            }
            edits
        },
        consistent: |doc, _| Some(doc.clone()),
        step: |doc, edit| change_boot_step(doc, edit),
    },
    Field {
        name: "expect.tpm_failed_tries",
        mutants: |doc| failed_tries_mutants(doc, vec![K("expect"), K("tpm_failed_tries")]),
        // More than the threshold is refused: no consistent form.
        consistent: |_, _| None,
        step: |_, _| vec![step::FAILED_TRIES],
    },
    Field {
        name: "changes[].expect.tpm_failed_tries",
        mutants: |doc| {
            (0..changes_len(doc))
                .flat_map(|i| failed_tries_mutants(doc, step_expect(i, "tpm_failed_tries")))
                .collect()
        },
        consistent: |_, _| None,
        step: |_, edit| {
            let Some(i) = step_index(edit) else {
                return vec![];
            };
            vec![leak(step::of_change(step::FAILED_TRIES, i + 1))]
        },
    },
    Field {
        name: "checks.audit_absent[]",
        mutants: |doc| {
            // Contradicted by a row the story does leave: one stated in `checks.audit`.
            let rows = |key| match at(doc, &[K("checks"), K(key)]) {
                Some(Value::Sequence(rows)) => rows.clone(),
                _ => vec![],
            };
            let (absent, present) = (rows("audit_absent"), rows("audit"));
            let mut edits = Vec::new();
            for (i, row) in absent.iter().enumerate() {
                let mut seen: Vec<&Value> = Vec::new();
                for p in &present {
                    if p == row || seen.contains(&p) {
                        continue;
                    }
                    seen.push(p);
                    edits.push(Edit::new(
                        vec![K("checks"), K("audit_absent"), I(i)],
                        row.clone(),
                        p.clone(),
                    ));
                }
            }
            edits
        },
        // A row cannot be both stated and absent: the stated one goes, and the runner
        // must find it all the same.
        consistent: |doc, edit| {
            let mut doc = doc.clone();
            if let Some(Value::Sequence(rows)) = at(&doc, &[K("checks"), K("audit")]).cloned() {
                let kept: Vec<Value> = rows.into_iter().filter(|r| *r != edit.to).collect();
                set(&mut doc, &[K("checks"), K("audit")], Value::Sequence(kept));
            }
            Some(doc)
        },
        step: |_, _| vec![step::AUDIT_ABSENT],
    },
    Field {
        name: "recovery.language",
        mutants: |doc| enum_mutants(doc, vec![K("recovery"), K("language")], &["en", "ja"]),
        consistent: |doc, _| Some(doc.clone()),
        // What the pages must come in. The browser asks for the requester's own
        // `users[].language` when the story declares one: then the swapped value must fail
        // at `the pages come in <it>`. Without one, the browser asks for this very language,
        // so the swapped value is another story, which a correct portal passes.
        step: |doc, edit| {
            let requester = str_at(doc, &[K("recovery"), K("as")]);
            let declared = at(doc, &[K("users")])
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .find(|u| {
                    u.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| n.eq_ignore_ascii_case(&requester))
                })
                .and_then(|u| u.get("language"))
                .is_some();
            match edit.to.as_str() {
                Some(tag) if declared => vec![leak(step::pages_in(tag))],
                _ => vec![],
            }
        },
    },
];

/// The stated failure count plus one and minus one (when there is one less).
fn failed_tries_mutants(doc: &Value, path: Vec<Seg>) -> Vec<Edit> {
    let Some(n) = at(doc, &path).and_then(Value::as_u64) else {
        return vec![];
    };
    let mut edits = vec![Edit::new(path.clone(), n.into(), (n + 1).into())];
    if n > 0 {
        edits.push(Edit::new(path, n.into(), (n - 1).into()));
    }
    edits
}

/// A step name built at run time, kept for the test's life.
fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

/// How many steps a story of several changes has (0 for a single `change`).
fn changes_len(doc: &Value) -> usize {
    at(doc, &[K("changes")])
        .and_then(Value::as_sequence)
        .map_or(0, Vec::len)
}

/// `changes[i].expect.KEY`.
fn step_expect(i: usize, key: &'static str) -> Vec<Seg> {
    vec![K("changes"), I(i), K("expect"), K(key)]
}

/// The step index of an edit under `changes[i]`.
fn step_index(edit: &Edit) -> Option<usize> {
    match edit.path.get(1) {
        Some(I(i)) => Some(*i),
        _ => None,
    }
}

/// The boot step of the edited change in a story of several: the single change's boot
/// step, numbered (`boot after the change (change 2)`).
fn change_boot_step(doc: &Value, edit: &Edit) -> Vec<&'static str> {
    let Some(i) = step_index(edit) else {
        return vec![];
    };
    let change = [K("changes"), I(i), K("change")];
    boot_step_of(doc, &change)
        .into_iter()
        // The names are built at run time; a test leaks these few strings.
        .map(|name| leak(step::of_change(name, i + 1)))
        .collect()
}

/// Whether the stated audit ends on the row of the key asked for again after the recovery:
/// a self-service row after a `shown` one.
fn states_the_key_asked_for_again(doc: &Value) -> bool {
    let Some(Value::Sequence(rows)) = at(doc, &[K("checks"), K("audit")]) else {
        return false;
    };
    let outcome = |r: &Value| r.get("outcome").and_then(Value::as_str).map(str::to_string);
    match rows.split_last() {
        Some((last, before)) => {
            last.get("source").and_then(Value::as_str) == Some("self_service")
                && before
                    .iter()
                    .any(|r| outcome(r).as_deref() == Some("shown"))
        }
        None => false,
    }
}

/// The boot step for this story: on a lost PIN, named after what the user does next.
fn boot_step(doc: &Value) -> Vec<&'static str> {
    boot_step_of(doc, &[K("change")])
}

/// The boot step of the change at `change` (a path to a `change` mapping).
fn boot_step_of(doc: &Value, change: &[Seg]) -> Vec<&'static str> {
    let under = |key: &'static str| {
        let mut path = change.to_vec();
        path.push(K(key));
        path
    };
    if str_at(doc, &under("kind")) != "lost_pin" {
        return vec![step::BOOT];
    }
    let wrong = at(doc, &under("wrong_pins")).and_then(Value::as_u64);
    let threshold = device_of(doc, change)
        .and_then(|d| d.get("lockout_threshold"))
        .and_then(Value::as_u64)
        .unwrap_or(32);
    vec![match str_at(doc, &under("then")).as_str() {
        "right_pin" => step::PIN_RIGHT,
        // The threshold-th wrong PIN still answers auth_failed; a later one finds the
        // TPM locked out and the device on the recovery screen already.
        _ if wrong.is_some_and(|n| n > threshold) => step::PIN_LOCKED_OUT,
        _ => step::PIN_ESC,
    }]
}

// ---------------------------------------------------------------------------------------
// Editing YAML values.

/// One step of a path into the YAML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg {
    K(&'static str),
    I(usize),
}
use Seg::{I, K};

/// One replaced value.
#[derive(Debug, Clone)]
struct Edit {
    path: Vec<Seg>,
    from: Value,
    to: Value,
}

impl Edit {
    fn new(path: Vec<Seg>, from: Value, to: Value) -> Self {
        Edit { path, from, to }
    }

    /// `checks.audit[1].outcome: shown -> denied`.
    fn describe(&self) -> String {
        format!(
            "{}: {} -> {}",
            path_text(&self.path),
            inline(&self.from),
            inline(&self.to)
        )
    }
}

fn path_text(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            K(k) if out.is_empty() => out.push_str(k),
            K(k) => {
                out.push('.');
                out.push_str(k);
            }
            I(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    out
}

fn inline(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Sequence(items) => format!(
            "[{}]",
            items.iter().map(inline).collect::<Vec<_>>().join(", ")
        ),
        Value::Mapping(map) => format!(
            "{{ {} }}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", inline(k), inline(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => format!("{other:?}"),
    }
}

fn at<'v>(doc: &'v Value, path: &[Seg]) -> Option<&'v Value> {
    path.iter().try_fold(doc, |v, seg| match seg {
        K(k) => v.get(*k),
        I(i) => v.get(*i),
    })
}

fn str_at(doc: &Value, path: &[Seg]) -> String {
    at(doc, path)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Sets the value at `path`, creating missing mappings on the way.
fn set(doc: &mut Value, path: &[Seg], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        *doc = value;
        return;
    };
    let mut v = doc;
    for seg in parents {
        v = match seg {
            K(k) => {
                if !v.is_mapping() {
                    *v = Value::Mapping(Mapping::new());
                }
                let map = v.as_mapping_mut().unwrap();
                map.entry(Value::from(*k))
                    .or_insert_with(|| Value::Mapping(Mapping::new()))
            }
            I(i) => &mut v[*i],
        };
    }
    match last {
        K(k) => {
            if !v.is_mapping() {
                *v = Value::Mapping(Mapping::new());
            }
            v.as_mapping_mut().unwrap().insert(Value::from(*k), value);
        }
        I(i) => v[*i] = value,
    }
}

fn remove(doc: &mut Value, path: &[Seg]) {
    let Some((K(last), parents)) = path.split_last() else {
        return;
    };
    let mut v = doc;
    for seg in parents {
        let next = match seg {
            K(k) => v.get_mut(*k),
            I(i) => v.get_mut(*i),
        };
        match next {
            Some(n) => v = n,
            None => return,
        }
    }
    if let Some(map) = v.as_mapping_mut() {
        map.remove(*last);
    }
}

/// One mutant per value of `all` other than the stated one (nothing if none is stated).
fn enum_mutants(doc: &Value, path: Vec<Seg>, all: &[&str]) -> Vec<Edit> {
    let Some(stated) = at(doc, &path).and_then(Value::as_str).map(str::to_string) else {
        return vec![];
    };
    all.iter()
        .filter(|v| **v != stated)
        .map(|v| Edit::new(path.clone(), stated.as_str().into(), (*v).into()))
        .collect()
}

/// Where the recovery after the `i`-th change of `changes` is (or would be): its own
/// `changes[i].recovery`, or the top-level `recovery` for the last change without one.
fn recovery_at(doc: &Value, i: usize) -> Vec<Seg> {
    let own = vec![K("changes"), I(i), K("recovery")];
    if i + 1 == changes_len(doc) && at(doc, &own).is_none() {
        vec![K("recovery")]
    } else {
        own
    }
}

/// Whether any recovery is left in the story.
fn recovers_anywhere(doc: &Value) -> bool {
    at(doc, &[K("recovery")]).is_some()
        || (0..changes_len(doc)).any(|i| at(doc, &[K("changes"), I(i), K("recovery")]).is_some())
}

/// The step that checks a recovery's `answer` for its `via`.
fn answer_step(via: &str, answer: &str) -> &'static str {
    match (via, answer) {
        ("help_desk_tpm_reset", "refused") => step::TPM_REFUSED,
        ("help_desk_tpm_reset", _) => step::MANAGE_TPM,
        ("self_service", "refused") => step::REFUSED_LIKE_ABSENT,
        ("help_desk", "refused") => step::HELP_DESK_REFUSED,
        (_, "several_matches") => step::SEVERAL_MATCHES,
        _ => step::ANSWER,
    }
}

/// The PCRs of the profile of the device the change at `change` acts on.
fn profile_pcrs(doc: &Value, change: &[Seg]) -> Vec<u64> {
    let profile = device_of(doc, change)
        .and_then(|d| d.get("profile"))
        .and_then(Value::as_str);
    match profile {
        Some("7,11") => vec![7, 11],
        Some("0,2,4,11") => vec![0, 2, 4, 11],
        Some("legacy") => vec![0, 2, 4, 8, 9, 10, 11],
        _ => vec![],
    }
}

/// The device the change at `change` acts on: `device`, or the entry of `devices` its
/// `device:` names.
fn device_of<'d>(doc: &'d Value, change: &[Seg]) -> Option<&'d Value> {
    if let Some(device) = at(doc, &[K("device")]) {
        return Some(device);
    }
    let mut named = change.to_vec();
    named.push(K("device"));
    let name = str_at(doc, &named);
    at(doc, &[K("devices")])?
        .as_sequence()?
        .iter()
        .find(|d| d.get("name").and_then(Value::as_str) == Some(name.as_str()))
}

fn pcr_list(pcrs: &[u64]) -> Value {
    Value::Sequence(pcrs.iter().map(|&p| Value::from(p)).collect())
}

/// A self-service recovery by the first user who signed in locally (for a story whose
/// mutant now expects a recovery screen).
fn self_service_recovery(doc: &Value) -> Option<Value> {
    at(doc, &[K("device")])?; // with several devices, which one recovers is the story's
    let users = at(doc, &[K("users")])?.as_sequence()?;
    let user = users.iter().find(|u| {
        u.get("sign_ins")
            .and_then(Value::as_sequence)
            .is_some_and(|s| s.iter().any(|k| k.as_str() == Some("local")))
    })?;
    let mut section = Mapping::new();
    section.insert("via".into(), "self_service".into());
    section.insert("as".into(), user.get("name")?.clone());
    section.insert("reason".into(), "BIOS/TPM changed".into());
    section.insert("answer".into(), "key_shown".into());
    Some(Value::Mapping(section))
}

// ---------------------------------------------------------------------------------------
// Making, checking and running mutants.

/// A catalog scenario, read as YAML.
struct Original {
    name: String,
    doc: Value,
}

fn catalog() -> Vec<Original> {
    let dir = workspace_root().join("scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let mut doc: Value =
                serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            // The mutant lives elsewhere: a relative event log must still be found.
            if let Some(log) = at(&doc, &[K("device"), K("event_log")]).and_then(Value::as_str) {
                let absolute = file.parent().unwrap().join(log);
                let absolute = absolute.canonicalize().unwrap_or(absolute);
                set(
                    &mut doc,
                    &[K("device"), K("event_log")],
                    absolute.display().to_string().into(),
                );
            }
            let name = str_at(&doc, &[K("name")]);
            Original { name, doc }
        })
        // Real-firmware scenarios (real QEMU boots, opt-in) are not mutated: a hundred
        // mutants of them would be an hour of boots. Nor are `matrix` files (one change
        // under each profile): their cells state the same fields as the single-change
        // scenarios mutated here, checked by the same steps, and `change_table` plays each
        // cell against SCHEMA.md's table.
        .filter(|o| at(&o.doc, &[K("matrix")]).is_none())
        .filter(|o| {
            !at(&o.doc, &[K("tags")])
                .and_then(Value::as_sequence)
                .is_some_and(|tags| tags.iter().any(|t| t.as_str() == Some("real-firmware")))
        })
        .collect()
}

/// What became of one mutant.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// The runner failed it at the declared step.
    Caught,
    /// The runner failed it, at another step.
    WrongStep(String),
    /// The runner passed it: the expectation is not checked.
    Survived,
    /// An action field's other value: played, checked, and passed (another story).
    Played,
    /// The loader refused it and only a change of the story's input would make it
    /// consistent: nothing to run.
    LoaderOnly,
    /// The value cannot even be written (the schema does not have it).
    NotInSchema(String),
    /// The unmutated scenario itself fails: its mutants say nothing.
    OriginalFails(String),
}

struct Mutant {
    scenario: String,
    field: &'static str,
    edit: Edit,
    /// The loader refused the plain replacement (its message).
    loader: Option<String>,
    /// The file that ran and the name it ran under.
    ran_as: Option<String>,
    expected_steps: Vec<&'static str>,
    verdict: Option<Verdict>,
}

enum Load {
    Accepted,
    /// A cross-field rule refused it.
    Refused(String),
    /// The YAML does not parse into the schema (an unknown value).
    Unparsable(String),
}

fn load(file: &Path, doc: &Value) -> Load {
    if let Err(e) = serde_yaml::from_value::<harness::scenario::Scenario>(doc.clone()) {
        return Load::Unparsable(e.to_string());
    }
    match harness::scenario::parse_scenario(file, &serde_yaml::to_string(doc).unwrap()) {
        Ok(_) => Load::Accepted,
        Err(e) => Load::Refused(e.to_string()),
    }
}

/// Which mutants: the first runnable one of each field and value path, or all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Set {
    OnePerField,
    All,
}

impl Set {
    fn dir_name(self) -> &'static str {
        match self {
            Set::OnePerField => "one-per-field",
            Set::All => "all",
        }
    }
}

/// The release `harness` binary (its `portal-under-test` beside it).
fn release_harness() -> PathBuf {
    let bin = std::env::var_os("HARNESS_RELEASE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_BIN_EXE_harness"))
                .parent()
                .unwrap()
                .with_file_name("release")
                .join("harness")
        });
    assert!(
        bin.exists() && bin.with_file_name("portal-under-test").exists(),
        "{} (and portal-under-test beside it) missing: build them first with \
         `cargo build --release --locked -p harness -p portal-under-test` (make test does)",
        bin.display()
    );
    bin
}

fn mutate_and_run(which: Set) -> Vec<Mutant> {
    let out_dir = workspace_root()
        .join("target/mutants")
        .join(which.dir_name());
    let _ = std::fs::remove_dir_all(&out_dir);
    let run_dir = out_dir.join("scenarios");
    std::fs::create_dir_all(&run_dir).unwrap();

    let mut mutants = Vec::new();
    let mut count = 0usize;
    for original in catalog() {
        // The original runs too: a mutant of a failing scenario proves nothing.
        let base = format!("original-{}", original.name);
        write_scenario(&run_dir, &base, &original.doc, None);
        for field in FIELDS {
            let edits = (field.mutants)(&original.doc);
            // Per stated value (an audit row, say), in declared order.
            let mut taken: Vec<Vec<Seg>> = Vec::new();
            let mut planned: Vec<(Edit, Load, Option<Value>)> = edits
                .into_iter()
                .map(|edit| {
                    let mut doc = original.doc.clone();
                    set(&mut doc, &edit.path, edit.to.clone());
                    let probe = run_dir.join("probe.yaml");
                    let loaded = load(&probe, &doc);
                    let runnable = match &loaded {
                        Load::Accepted => Some(doc),
                        Load::Refused(_) => (field.consistent)(&doc, &edit)
                            .filter(|d| matches!(load(&probe, d), Load::Accepted)),
                        Load::Unparsable(_) => None,
                    };
                    (edit, loaded, runnable)
                })
                .collect();
            if which == Set::OnePerField {
                // Prefer a mutant that runs; else keep the first (loader-caught only).
                planned.sort_by_key(|(_, _, runnable)| runnable.is_none());
                planned.retain(|(edit, _, _)| {
                    if taken.contains(&edit.path) {
                        false
                    } else {
                        taken.push(edit.path.clone());
                        true
                    }
                });
            }
            for (edit, loaded, runnable) in planned {
                count += 1;
                let mut m = Mutant {
                    scenario: original.name.clone(),
                    field: field.name,
                    edit,
                    loader: None,
                    ran_as: None,
                    expected_steps: vec![],
                    verdict: None,
                };
                match loaded {
                    Load::Unparsable(e) => m.verdict = Some(Verdict::NotInSchema(e)),
                    Load::Refused(e) => m.loader = Some(e),
                    Load::Accepted => {}
                }
                if m.verdict.is_none() {
                    match runnable {
                        None => m.verdict = Some(Verdict::LoaderOnly),
                        Some(doc) => {
                            let name = format!("m{count:03}-{}", original.name);
                            m.expected_steps = (field.step)(&doc, &m.edit);
                            write_scenario(&run_dir, &name, &doc, Some(&m));
                            m.ran_as = Some(name);
                        }
                    }
                }
                mutants.push(m);
            }
        }
    }
    let _ = std::fs::remove_file(run_dir.join("probe.yaml"));

    let report = harness_run(&run_dir, &out_dir.join("run.json"));
    let original = |m: &Mutant| format!("original-{}", m.scenario);
    let mut original_fails: HashMap<String, String> = HashMap::new();
    for m in &mut mutants {
        let Some(name) = &m.ran_as else { continue };
        if let Some(Some(step)) = failed_step(&report, &original(m)) {
            original_fails.insert(original(m), step);
        }
        m.verdict = Some(verdict(m, failed_step(&report, name)));
    }
    // What failed elsewhere runs once more on its own: a loaded machine can fail a setup
    // step (no free loopback ports for swtpm, say); a real wrong step or failure recurs.
    let mut again: Vec<String> = original_fails.keys().cloned().collect();
    again.extend(
        mutants
            .iter()
            .filter(|m| matches!(m.verdict, Some(Verdict::WrongStep(_))))
            .filter_map(|m| m.ran_as.clone()),
    );
    if !again.is_empty() {
        let retry_dir = out_dir.join("retry");
        std::fs::create_dir_all(&retry_dir).unwrap();
        for name in &again {
            let file = format!("{name}.yaml");
            std::fs::copy(run_dir.join(&file), retry_dir.join(&file)).unwrap();
        }
        println!("running {} scenario(s) again: {again:?}", again.len());
        let report = harness_run(&retry_dir, &out_dir.join("retry.json"));
        original_fails.retain(|name, _| failed_step(&report, name) != Some(None));
        for m in &mut mutants {
            if let (Some(Verdict::WrongStep(_)), Some(name)) = (&m.verdict, &m.ran_as) {
                m.verdict = Some(verdict(m, failed_step(&report, name)));
            }
        }
    }
    for m in mutants.iter_mut().filter(|m| m.ran_as.is_some()) {
        if let Some(step) = original_fails.get(&original(m)) {
            m.verdict = Some(Verdict::OriginalFails(step.clone()));
        }
    }
    let summary = summary(&mutants, which);
    std::fs::write(out_dir.join("summary.txt"), &summary).unwrap();
    println!("{summary}");
    mutants
}

/// `harness run DIR --json JSON -j 2` with the release binary; the JSON report.
fn harness_run(dir: &Path, json: &Path) -> serde_json::Value {
    let out = harness_at(release_harness())
        .arg("run")
        .arg(dir)
        .arg("--json")
        .arg(json)
        .args(["-j", "2"])
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "harness run: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

/// `None`: not in the report; `Some(None)`: passed; `Some(Some(step))`: failed there.
fn failed_step(report: &serde_json::Value, name: &str) -> Option<Option<String>> {
    report["scenarios"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
        .map(|s| s["failure"]["step"].as_str().map(str::to_string))
}

/// A mutant's verdict from how its run ended.
fn verdict(m: &Mutant, failed: Option<Option<String>>) -> Verdict {
    match failed {
        None => panic!("{:?} did not run", m.ran_as),
        Some(None) if m.expected_steps.is_empty() => Verdict::Played,
        Some(None) => Verdict::Survived,
        Some(Some(step)) if m.expected_steps.contains(&step.as_str()) => Verdict::Caught,
        Some(Some(step)) => Verdict::WrongStep(step),
    }
}

/// Writes a scenario under a new (catalog-unique) name, with a comment saying what changed.
fn write_scenario(dir: &Path, name: &str, doc: &Value, mutant: Option<&Mutant>) {
    let mut doc = doc.clone();
    set(&mut doc, &[K("name")], name.into());
    let mut text = String::new();
    if let Some(m) = mutant {
        let _ = writeln!(text, "# mutant of {}: {}", m.scenario, m.edit.describe());
        if let Some(refused) = &m.loader {
            let _ = writeln!(
                text,
                "# the loader refused the plain replacement; dependent fields adjusted:"
            );
            let _ = writeln!(text, "#   {}", loader_reason(refused).replace('\n', " "));
        }
    }
    text.push_str(&serde_yaml::to_string(&doc).unwrap());
    std::fs::write(dir.join(format!("{name}.yaml")), text).unwrap();
}

fn summary(mutants: &[Mutant], which: Set) -> String {
    let scenarios = {
        let mut names: Vec<&str> = mutants.iter().map(|m| m.scenario.as_str()).collect();
        names.dedup();
        names.len()
    };
    let n = |f: &dyn Fn(&Mutant) -> bool| mutants.iter().filter(|m| f(m)).count();
    let loader_caught = n(&|m| m.loader.is_some());
    let ran = n(&|m| m.ran_as.is_some());
    let caught = n(&|m| m.verdict == Some(Verdict::Caught));
    let survived = n(&|m| m.verdict == Some(Verdict::Survived));
    let wrong_step = n(&|m| matches!(m.verdict, Some(Verdict::WrongStep(_))));
    let loader_only = n(&|m| m.verdict == Some(Verdict::LoaderOnly));
    let not_in_schema = n(&|m| matches!(m.verdict, Some(Verdict::NotInSchema(_))));
    let original_fails = n(&|m| matches!(m.verdict, Some(Verdict::OriginalFails(_))));
    let played = n(&|m| m.verdict == Some(Verdict::Played));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mutation test ({}): {scenarios} scenarios, {} mutants",
        which.dir_name(),
        mutants.len()
    );
    let _ = writeln!(
        out,
        "  loader-caught {loader_caught} (of which {loader_only} have no consistent form without an input change)"
    );
    let _ = writeln!(
        out,
        "  ran {ran}: runner-caught at the declared step {caught}, at another step {wrong_step}, survived {survived}; another story (nothing stated contradicts it) played and passed {played}"
    );
    let _ = writeln!(
        out,
        "  not writable in today's schema {not_in_schema}; original scenario fails {original_fails}"
    );
    for field in FIELDS {
        let mine: Vec<&Mutant> = mutants.iter().filter(|m| m.field == field.name).collect();
        let count = |v: Verdict| mine.iter().filter(|m| m.verdict == Some(v.clone())).count();
        let _ = writeln!(
            out,
            "  {:<24} {:>4} mutants: loader-caught {:>3}, runner-caught {:>3}, survived {:>3}{}",
            field.name,
            mine.len(),
            mine.iter().filter(|m| m.loader.is_some()).count(),
            count(Verdict::Caught),
            count(Verdict::Survived),
            match count(Verdict::Played) {
                0 => String::new(),
                n => format!(", another story played and passed {n}"),
            }
        );
    }
    for m in mutants {
        let verdict = match m.verdict.as_ref() {
            Some(Verdict::Caught) => continue,
            Some(Verdict::Played) => "PLAYED (another story, passed)".to_string(),
            Some(Verdict::LoaderOnly) => "LOADER ONLY".to_string(),
            Some(Verdict::Survived) => "SURVIVED".to_string(),
            Some(Verdict::WrongStep(s)) => {
                format!("WRONG STEP \"{s}\" (expected {:?})", m.expected_steps)
            }
            Some(Verdict::NotInSchema(e)) => format!("NOT IN SCHEMA: {}", first_line(e)),
            Some(Verdict::OriginalFails(s)) => format!("ORIGINAL FAILS at \"{s}\""),
            None => "NOT RUN".to_string(),
        };
        if m.verdict == Some(Verdict::LoaderOnly) {
            let _ = writeln!(
                out,
                "  {:<44} {:<48} {verdict}: {}",
                m.scenario,
                m.edit.describe(),
                m.loader.as_deref().map(loader_reason).unwrap_or_default()
            );
        } else {
            let _ = writeln!(
                out,
                "  {:<44} {:<48} {verdict}{}",
                m.scenario,
                m.edit.describe(),
                m.ran_as
                    .as_deref()
                    .map(|n| format!(" [{n}.yaml]"))
                    .unwrap_or_default()
            );
        }
    }
    out
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// The loader's message without the probe file's name and position.
fn loader_reason(message: &str) -> &str {
    message.split_once(".yaml:").map_or(message, |(_, rest)| {
        rest.split_once(": ").map_or(rest, |(_, m)| m)
    })
}

fn assert_none_escaped(mutants: &[Mutant]) {
    let bad: Vec<String> = mutants
        .iter()
        .filter(|m| {
            matches!(
                m.verdict,
                Some(
                    Verdict::Survived
                        | Verdict::WrongStep(_)
                        | Verdict::OriginalFails(_)
                        | Verdict::NotInSchema(_)
                )
            )
        })
        .map(|m| format!("{} {}: {:?}", m.scenario, m.edit.describe(), m.verdict))
        .collect();
    assert!(
        bad.is_empty(),
        "{} mutant(s) not caught at their step:\n  {}",
        bad.len(),
        bad.join("\n  ")
    );
}

#[test]
#[ignore = "needs the release build; `make test` runs it"]
fn one_mutant_per_field_fails_at_its_step() {
    let mutants = mutate_and_run(Set::OnePerField);
    assert!(mutants.len() >= 60, "{} mutants", mutants.len());
    assert_none_escaped(&mutants);
}

#[test]
#[ignore = "the full set: `make mutants`"]
fn every_mutant_fails_at_its_step() {
    let mutants = mutate_and_run(Set::All);
    assert_none_escaped(&mutants);
}

#[test]
fn every_field_mutant_replaces_a_stated_value_with_another() {
    // The generator itself, on the catalog: no mutant removes or keeps a value, and every
    // stated expectation the table knows gets at least one mutant.
    for original in catalog() {
        for field in FIELDS {
            for edit in (field.mutants)(&original.doc) {
                assert_eq!(at(&original.doc, &edit.path), Some(&edit.from));
                assert_ne!(edit.from, edit.to, "{}", edit.describe());
                assert!(!edit.to.is_null());
            }
        }
        let mutated: Vec<String> = FIELDS
            .iter()
            .flat_map(|f| (f.mutants)(&original.doc))
            .map(|e| path_text(&e.path))
            .collect();
        let mut stated = vec![
            "expect.recovery".to_string(),
            "expect.tpm_error".to_string(),
        ];
        if changes_len(&original.doc) > 0 {
            stated = (0..changes_len(&original.doc))
                .flat_map(|i| {
                    [
                        format!("changes[{i}].expect.recovery"),
                        format!("changes[{i}].expect.tpm_error"),
                    ]
                })
                .collect();
        }
        for stated in stated {
            assert!(mutated.contains(&stated), "{}: {stated}", original.name);
        }
        if at(&original.doc, &[K("recovery"), K("answer")]).is_some() {
            assert!(mutated.iter().any(|p| p == "recovery.answer"));
        }
        for i in 0..changes_len(&original.doc) {
            if at(
                &original.doc,
                &[K("changes"), I(i), K("recovery"), K("answer")],
            )
            .is_some()
            {
                let path = format!("changes[{i}].recovery.answer");
                assert!(mutated.contains(&path), "{}: {path}", original.name);
            }
        }
    }
}
