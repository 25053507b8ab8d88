//! Reading scenario files: strict parsing, then the checks a type cannot express, every
//! error naming `file:line:column`.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::locate::{path_string, Locator, Seg};
use super::model::{
    serde_name, Answer, Change, ChangeKind, Device, Expect, KeyIdDigits, PinAction, Profile,
    ProtectorKind, Recovery, RecoveryVia, Role, RomSigner, Scenario, TpmError,
};
use eventlog::tcg::TcgLog;

/// Why one scenario file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{}: cannot read: {source}", file.display())]
    Read { file: PathBuf, source: io::Error },
    /// A syntax, type, unknown-field or enum error (from the YAML parse) or a semantic one.
    #[error("{}:{line}:{column}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A parse error the YAML parser could not place (an empty file, say).
    #[error("{}: {message}", file.display())]
    Unplaced { file: PathBuf, message: String },
    #[error(
        "{}:{line}:{column}: name: the scenario name `{name}` is already used by {}",
        file.display(),
        first.display()
    )]
    DuplicateName {
        file: PathBuf,
        line: usize,
        column: usize,
        name: String,
        first: PathBuf,
    },
}

impl ScenarioError {
    /// The file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            ScenarioError::Read { file, .. }
            | ScenarioError::Invalid { file, .. }
            | ScenarioError::Unplaced { file, .. }
            | ScenarioError::DuplicateName { file, .. } => file,
        }
    }
}

/// Why a catalog cannot run: if any file is bad, nothing runs.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{}", Listed(.0))]
    Invalid(Vec<ScenarioError>),
    #[error("no scenario files (*.yaml, *.yml) in {0}")]
    Empty(String),
    #[error("{}: cannot list scenario files: {source}", path.display())]
    List { path: PathBuf, source: io::Error },
}

struct Listed<'a>(&'a [ScenarioError]);

impl fmt::Display for Listed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        let mut files: Vec<&Path> = self.0.iter().map(ScenarioError::file).collect();
        files.dedup();
        let m = files.len();
        write!(
            f,
            "{m} invalid scenario file{}, {n} problem{}:",
            if m == 1 { "" } else { "s" },
            if n == 1 { "" } else { "s" }
        )?;
        for e in self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Reads and checks one scenario file; the first problem (in file order) if there are any.
/// A `matrix` file, which expands to several scenarios, is an error here: the catalog
/// functions read it.
pub fn load_scenario(file: &Path) -> Result<Scenario, ScenarioError> {
    check_scenario_file(file)
        .map_err(first_problem)
        .and_then(|cells| only_one(file, cells))
}

/// Reads and checks one scenario file, reporting every problem found, in file order: its
/// scenario, or one per cell of its `matrix`. The file must be named after the scenario
/// (`<name>.yaml`).
pub fn check_scenario_file(file: &Path) -> Result<Vec<Scenario>, Vec<ScenarioError>> {
    let text = std::fs::read_to_string(file).map_err(|source| {
        vec![ScenarioError::Read {
            file: file.to_path_buf(),
            source,
        }]
    })?;
    let parsed = check_scenario(file, &text);
    let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned());
    // The file's own `name:` (a matrix cell's name carries its parameters besides), still
    // worth checking when something else is wrong.
    let named = serde_yaml::from_str::<NameOnly>(&text).ok().map(|n| n.name);
    let misnamed = match (named, stem) {
        (Some(name), Some(stem)) if name != stem => {
            let at = Locator::new(&text).locate(&[Key("name")]);
            Some(ScenarioError::Invalid {
                file: file.to_path_buf(),
                line: at.line,
                column: at.column,
                message: format!(
                    "name: the scenario `{name}` must be in a file named `{name}.yaml` (this one is `{stem}`)"
                ),
            })
        }
        _ => None,
    };
    match (parsed, misnamed) {
        (Ok(s), None) => Ok(s),
        (Ok(_), Some(e)) => Err(vec![e]),
        (Err(errors), None) => Err(errors),
        (Err(mut errors), Some(e)) => {
            errors.push(e);
            sort_by_position(&mut errors);
            Err(errors)
        }
    }
}

/// The `name:` of a document whatever else it holds.
#[derive(serde::Deserialize)]
struct NameOnly {
    name: String,
}

/// Parses and checks one scenario; `file` is used in errors and kept in the scenario. The
/// first problem (in file order) if there are any. A `matrix` file is an error here (it is
/// several scenarios: [`check_scenario`] expands it).
pub fn parse_scenario(file: &Path, text: &str) -> Result<Scenario, ScenarioError> {
    check_scenario(file, text)
        .map_err(first_problem)
        .and_then(|cells| only_one(file, cells))
}

/// The one scenario of a file that is not a `matrix`.
fn only_one(file: &Path, cells: Vec<Scenario>) -> Result<Scenario, ScenarioError> {
    let n = cells.len();
    match cells.into_iter().next() {
        Some(s) if n == 1 => Ok(s),
        _ => Err(ScenarioError::Unplaced {
            file: file.to_path_buf(),
            message: format!(
                "a `matrix` file is {n} scenarios, one per cell: read it as part of a catalog"
            ),
        }),
    }
}

fn first_problem(errors: Vec<ScenarioError>) -> ScenarioError {
    let mut errors = errors.into_iter();
    errors.next().unwrap_or_else(|| ScenarioError::Unplaced {
        file: PathBuf::new(),
        message: "invalid scenario".to_string(),
    })
}

/// Parses and checks one scenario file's text, reporting every problem, in file order: a
/// syntax error alone (nothing after it can be read reliably); else the first type error
/// of each top-level section; else every broken rule of the loader's checks. A file with a
/// `matrix` is one scenario per cell, named `NAME[profile=P]`; any other file is one.
pub fn check_scenario(file: &Path, text: &str) -> Result<Vec<Scenario>, Vec<ScenarioError>> {
    let located = |line: usize, column: usize, message: String| ScenarioError::Invalid {
        file: file.to_path_buf(),
        line,
        column,
        message,
    };
    let mut scenario: Scenario = match serde_yaml::from_str(text) {
        Ok(s) => s,
        Err(first) => return Err(parse_errors(file, text, first)),
    };
    scenario.file = file.to_path_buf();
    let locator = Locator::new(text);
    let mut errors = Vec::new();
    for (i, device) in scenario.all_devices().into_iter().enumerate() {
        let Some(pin) = &device.pin else {
            continue;
        };
        // serde reads any scalar as a string; YAML tools do not: an unquoted 0123 is a
        // number to them (octal 83 in YAML 1.1), 582046 too.
        let path = device_path(&scenario, i, "pin");
        if let Some(at) = locator.plain_scalar(&path) {
            errors.push(located(
                at.line,
                at.column,
                format!(
                    "{}: a PIN is a string: quote it (`pin: \"{pin}\"`); unquoted, YAML readers take `{pin}` as a number (a leading 0 even as octal)",
                    path_string(&path)
                ),
            ));
        }
    }
    let (scenarios, broken) = if scenario.matrix.is_empty() {
        let mut broken = Vec::new();
        if locator.has(&[Key("matrix")]) {
            // Alone: the missing profiles and `expect` are what the cells would give.
            broken.push(Semantic {
                path: vec![Key("matrix")],
                message: "expected at least one cell (a `profile` with its `expect`)".to_string(),
            });
        } else {
            broken.extend(unwritten_profiles(&scenario, &locator));
            broken.extend(validate(&scenario));
        }
        if broken.is_empty() {
            // The log is checked against a change that is known to be valid.
            broken.extend(load_event_logs(&mut scenario).err());
        }
        (vec![scenario], broken)
    } else {
        expand_matrix(&scenario, &locator)
    };
    for Semantic { path, message } in broken {
        let at = locator.locate(&path);
        errors.push(located(
            at.line,
            at.column,
            format!("{}: {message}", path_string(&path)),
        ));
    }
    if errors.is_empty() {
        Ok(scenarios)
    } else {
        sort_by_position(&mut errors);
        Err(errors)
    }
}

/// A device with no `profile` written (serde fills one in, for `matrix` files' sake).
fn unwritten_profiles(s: &Scenario, locator: &Locator) -> Vec<Semantic> {
    (0..s.all_devices().len())
        .filter(|&i| !locator.has(&device_path(s, i, "profile")))
        .map(|i| {
            let mut path = device_path(s, i, "profile");
            path.pop();
            Semantic {
                path,
                message: "missing field `profile`".to_string(),
            }
        })
        .collect()
}

/// One scenario per `matrix` cell: the file's story on a device of the cell's profile with
/// the cell's `expect`, and the file's `recovery` only where the cell expects one. Every
/// rule is checked on each cell; a broken one inside a cell (its `expect`, its profile) is
/// placed at `matrix[i]...`, one elsewhere that only some cells break names them.
fn expand_matrix(s: &Scenario, locator: &Locator) -> (Vec<Scenario>, Vec<Semantic>) {
    let mut found = matrix_form(s, locator);
    // Cells of several devices or several changes mean nothing; else each is checked too.
    if s.device.is_none() || !s.changes.is_empty() {
        return (Vec::new(), found);
    }
    let mut outside: Vec<(Semantic, Vec<usize>)> = Vec::new();
    let mut cells = Vec::new();
    for (i, cell) in s.matrix.iter().enumerate() {
        let mut c = s.clone();
        c.matrix.clear();
        if let Some(device) = c.device.as_mut() {
            device.profile = cell.profile;
        }
        c.expect = Some(cell.expect.clone());
        if !cell.expect.recovery {
            c.recovery = None;
        }
        let mut broken = validate(&c);
        if broken.is_empty() {
            broken.extend(load_event_logs(&mut c).err());
        }
        for b in broken {
            match in_cell(&b.path, i) {
                Some(path) => found.push(Semantic {
                    path,
                    message: b.message,
                }),
                None => match outside
                    .iter_mut()
                    .find(|(o, _)| o.path == b.path && o.message == b.message)
                {
                    Some((_, broken_in)) => broken_in.push(i),
                    None => outside.push((b, vec![i])),
                },
            }
        }
        c.name = format!("{}[profile={}]", s.name, cell.profile.as_str());
        cells.push(c);
    }
    for (mut b, broken_in) in outside {
        if broken_in.len() < s.matrix.len() {
            let which: Vec<String> = broken_in
                .iter()
                .map(|&i| format!("matrix[{i}] (profile `{}`)", s.matrix[i].profile.as_str()))
                .collect();
            b.message = format!("{} (in {})", b.message, which.join(", "));
        }
        found.push(b);
    }
    (cells, found)
}

/// Where a cell's own part of an expanded scenario is written: its `expect` and its
/// device's profile; `None` for the rest of the file.
fn in_cell(path: &[Seg], i: usize) -> Option<Vec<Seg>> {
    match path {
        [Key("expect"), rest @ ..] => {
            let mut at = vec![Key("matrix"), Index(i), Key("expect")];
            at.extend_from_slice(rest);
            Some(at)
        }
        [Key("device"), Key("profile")] => Some(vec![Key("matrix"), Index(i), Key("profile")]),
        _ => None,
    }
}

/// What a `matrix` file must be: one device without a profile, one `change`, no top-level
/// `expect`, a `recovery` only if some cell recovers, and one cell per profile.
fn matrix_form(s: &Scenario, locator: &Locator) -> Vec<Semantic> {
    let mut found = Vec::new();
    let mut rule = |path: Vec<Seg>, message: &str| {
        found.push(Semantic {
            path,
            message: message.to_string(),
        })
    };
    if s.device.is_none() {
        rule(
            vec![Key("devices")],
            "a `matrix` plays one device in each cell's profile: expected `device`, not `devices`",
        );
    } else if locator.has(&[Key("device"), Key("profile")]) {
        rule(
            vec![Key("device"), Key("profile")],
            "each `matrix` cell gives the profile: expected none in `device`",
        );
    }
    if !s.changes.is_empty() {
        rule(
            vec![Key("changes")],
            "a `matrix` plays one change in each profile: expected `change`, not `changes`",
        );
    }
    if s.expect.is_some() {
        rule(
            vec![Key("expect")],
            "each `matrix` cell gives its own `expect`: expected no top-level one",
        );
    }
    if s.recovery.is_some() && !s.matrix.iter().any(|c| c.expect.recovery) {
        rule(
            vec![Key("recovery")],
            "no `matrix` cell expects a recovery: expected no `recovery` section",
        );
    }
    for (i, cell) in s.matrix.iter().enumerate() {
        if s.matrix[..i].iter().any(|c| c.profile == cell.profile) {
            rule(
                vec![Key("matrix"), Index(i), Key("profile")],
                "this profile has a cell already: expected one cell per profile",
            );
        }
    }
    found
}

fn sort_by_position(errors: &mut [ScenarioError]) {
    errors.sort_by_key(|e| match e {
        ScenarioError::Invalid { line, column, .. } => (*line, *column),
        _ => (0, 0),
    });
}

/// Every error of a document serde could not read. serde stops at its first error, so a
/// well-formed document is read again one top-level section at a time (each section's
/// lines alone, its positions shifted back), which finds the first error of each section.
fn parse_errors(file: &Path, text: &str, first: serde_yaml::Error) -> Vec<ScenarioError> {
    let to_error = |e: &serde_yaml::Error, line_offset: usize| match e.location() {
        Some(loc) => ScenarioError::Invalid {
            file: file.to_path_buf(),
            line: loc.line() + line_offset,
            column: loc.column(),
            message: in_yaml_words(strip_location(&e.to_string())),
        },
        None => ScenarioError::Unplaced {
            file: file.to_path_buf(),
            message: e.to_string(),
        },
    };
    // A syntax error (an unclosed `[`, a duplicate key) is named as such, alone: the typed
    // reader may have stumbled on a type first inside the half-read text.
    let document = match serde_yaml::from_str::<serde_yaml::Value>(text) {
        Ok(document) => document,
        Err(syntax) => return vec![syntax_error(to_error(&syntax, 0), text)],
    };
    // serde would say "missing field `name`" of an empty file, "struct Scenario" of a list.
    let what = match document {
        serde_yaml::Value::Mapping(_) => None,
        serde_yaml::Value::Null => Some("the file is empty"),
        serde_yaml::Value::Sequence(_) => Some("the document is a list"),
        _ => Some("the document is a single value"),
    };
    if let Some(what) = what {
        return vec![ScenarioError::Invalid {
            file: file.to_path_buf(),
            line: 1,
            column: 1,
            message: format!(
                "{what}: expected a scenario: a mapping with `name`, `description`, `device` \
                 (or `devices`), `users`, `change` and `expect` (or `changes`); see SCHEMA.md"
            ),
        }];
    }
    let Some(starts) = Locator::new(text).top_level_key_lines() else {
        return vec![to_error(&first, 0)];
    };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut errors = Vec::new();
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(lines.len() + 1, |&next| next);
        let section: String = lines
            .get(start - 1..(end - 1).min(lines.len()))
            .unwrap_or_default()
            .concat();
        if let Err(e) = serde_yaml::from_str::<Scenario>(&section) {
            // Alone, a section lacks the other top-level keys: not its error.
            if !e.to_string().starts_with("missing field") {
                errors.push(to_error(&e, start - 1));
            }
        }
    }
    if errors.is_empty() {
        // A missing top-level key, or an error only the whole document shows.
        errors.push(to_error(&first, 0));
    }
    errors
}

/// A YAML syntax error, named as one; a tab where it stands is named too (YAML's own
/// message, "cannot start any token", does not say what the character is).
fn syntax_error(error: ScenarioError, text: &str) -> ScenarioError {
    match error {
        ScenarioError::Invalid {
            file,
            line,
            column,
            message,
        } => {
            let at = text
                .lines()
                .nth(line.saturating_sub(1))
                .and_then(|l| l.chars().nth(column.saturating_sub(1)));
            let tab = if at == Some('\t') {
                "a tab: YAML indents with spaces ("
            } else {
                ""
            };
            let close = if tab.is_empty() { "" } else { ")" };
            ScenarioError::Invalid {
                file,
                line,
                column,
                message: format!(
                    "YAML syntax error: {tab}{}{close}",
                    drop_positions(&message)
                ),
            }
        }
        other => other,
    }
}

/// The scenario files named by `paths`: files as given, directories' `*.yaml`/`*.yml`
/// (not recursive), sorted by name.
pub fn catalog_files<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<PathBuf>, CatalogError> {
    let mut files = Vec::new();
    for path in paths {
        let path = path.as_ref();
        if path.is_dir() {
            let list_error = |source| CatalogError::List {
                path: path.to_path_buf(),
                source,
            };
            let mut found = Vec::new();
            for entry in std::fs::read_dir(path).map_err(list_error)? {
                let entry_path = entry.map_err(list_error)?.path();
                let is_yaml = entry_path
                    .extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml");
                if is_yaml && entry_path.is_file() {
                    found.push(entry_path);
                }
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(path.to_path_buf());
        }
    }
    // A file named twice, or besides its directory, is one scenario file.
    let mut seen = std::collections::HashSet::new();
    files.retain(|f| seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
    if files.is_empty() {
        let names: Vec<String> = paths
            .iter()
            .map(|p| p.as_ref().display().to_string())
            .collect();
        return Err(CatalogError::Empty(names.join(", ")));
    }
    Ok(files)
}

/// Loads every scenario under `paths` (files or directories). One bad file makes the whole
/// catalog an error listing every bad file, so a runner runs nothing rather than a part.
pub fn load_catalog<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<Scenario>, CatalogError> {
    let files = catalog_files(paths)?;
    let mut scenarios = Vec::new();
    let mut errors = Vec::new();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for file in files {
        match check_scenario_file(&file) {
            Ok(cells) => {
                for s in cells {
                    match names.get(&s.name) {
                        Some(first) => {
                            // At the file's `name` (it read a moment ago).
                            let text = std::fs::read_to_string(&file).unwrap_or_default();
                            let at = Locator::new(&text).locate(&[Seg::Key("name")]);
                            errors.push(ScenarioError::DuplicateName {
                                file: file.clone(),
                                line: at.line,
                                column: at.column,
                                name: s.name.clone(),
                                first: first.clone(),
                            });
                        }
                        None => {
                            names.insert(s.name.clone(), file.clone());
                            scenarios.push(s);
                        }
                    }
                }
            }
            Err(found) => errors.extend(found),
        }
    }
    if errors.is_empty() {
        Ok(scenarios)
    } else {
        Err(CatalogError::Invalid(errors))
    }
}

/// serde's message with the loader's Rust types (`struct Checks`, `u32`) said as the YAML
/// shapes a scenario writer knows.
fn in_yaml_words(message: &str) -> String {
    let mut words = message.to_string();
    if let Some(at) = words.find("expected struct ") {
        let name = at + "expected struct ".len();
        let end = words[name..]
            .find(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .map_or(words.len(), |n| name + n);
        words.replace_range(at..end, "expected a mapping");
    }
    for (rust, yaml) in [
        ("expected u8", "expected a whole number, 0-255"),
        ("expected u16", "expected a whole number, 0-65535"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected u64", "expected a whole number, 0 or more"),
    ] {
        words = words.replace(rust, yaml);
    }
    words
}

/// serde_yaml appends " at line L column C"; we print the position first instead.
fn strip_location(message: &str) -> &str {
    if let Some(i) = message.rfind(" at line ") {
        let rest = &message[i + " at line ".len()..];
        let mut parts = rest.split(" column ");
        let line_ok = parts
            .next()
            .is_some_and(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()));
        let col_ok = parts
            .next()
            .is_some_and(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()));
        if line_ok && col_ok && parts.next().is_none() {
            return &message[..i];
        }
    }
    message
}

/// The parser's message without the " at line L column C" it repeats inside (the error
/// is already placed).
fn drop_positions(message: &str) -> String {
    let mut out = message.to_string();
    while let Some(i) = out.find(" at line ") {
        let rest = &out[i + " at line ".len()..];
        let digits = |t: &str| t.bytes().take_while(u8::is_ascii_digit).count();
        let line_len = digits(rest);
        let Some(after_line) = rest[line_len..].strip_prefix(" column ") else {
            break;
        };
        let col_len = digits(after_line);
        if line_len == 0 || col_len == 0 {
            break;
        }
        let end = i + " at line ".len() + line_len + " column ".len() + col_len;
        out.replace_range(i..end, "");
    }
    out
}

/// A rule broken by a parsed scenario: where (a path into the YAML) and what was expected.
struct Semantic {
    path: Vec<Seg>,
    message: String,
}

fn fail<T>(path: Vec<Seg>, message: impl Into<String>) -> Result<T, Semantic> {
    Err(Semantic {
        path,
        message: message.into(),
    })
}

use Seg::{Index, Key};

fn is_kebab(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// One independent group of rules: its first broken rule, if any.
type Check = fn(&Scenario) -> Result<(), Semantic>;
/// The same for one device (its position in [`Scenario::all_devices`]).
type DeviceCheck = fn(&Scenario, usize, &Device) -> Result<(), Semantic>;

/// Where the `i`-th device's `key` is: in `device` for a story of one, `devices[i]` else.
fn device_path(s: &Scenario, i: usize, key: &'static str) -> Vec<Seg> {
    let mut path = match (&s.device, i) {
        (Some(_), 0) => vec![Key("device")],
        (Some(_), i) => vec![Key("devices"), Index(i - 1)],
        (None, i) => vec![Key("devices"), Index(i)],
    };
    path.push(Key(key));
    path
}

/// The device a change acts on (its `device`, or the only one); the first device when the
/// name is unknown (that is [`validate_devices_form`]'s error).
fn step_device<'s>(s: &'s Scenario, c: &Change) -> Option<&'s Device> {
    s.device_named(c.device.as_deref())
        .or_else(|| s.device_named(None))
}

/// Every rule the scenario breaks. Each check stops at its first problem; the checks are
/// independent, so a file with several mistakes gets one error for each.
fn validate(s: &Scenario) -> Vec<Semantic> {
    const CHECKS: &[Check] = &[
        validate_name,
        validate_description,
        validate_tags,
        validate_devices_form,
        validate_users,
        validate_recovery,
        validate_checks,
        validate_real_firmware,
    ];
    const DEVICE_CHECKS: &[DeviceCheck] = &[
        validate_device_name,
        validate_protectors,
        validate_device_counts,
    ];
    let mut found: Vec<Semantic> = CHECKS.iter().filter_map(|check| check(s).err()).collect();
    for (i, d) in s.all_devices().into_iter().enumerate() {
        found.extend(
            DEVICE_CHECKS
                .iter()
                .filter_map(|check| check(s, i, d).err()),
        );
    }
    found.extend(validate_story_form(s).err());
    for (i, (change, expect)) in s.steps().into_iter().enumerate() {
        let at = StepAt::new(s, i);
        found.extend(validate_change(s, change, &at).err());
        found.extend(validate_expect(s, change, expect, &at).err());
    }
    found
}

/// Where one step's `change` and `expect` are: top level for the single `change`, in
/// `changes[i]` for a story of several.
struct StepAt {
    change: Vec<Seg>,
    expect: Vec<Seg>,
}

impl StepAt {
    fn new(s: &Scenario, i: usize) -> StepAt {
        if s.changes.is_empty() {
            StepAt {
                change: vec![Key("change")],
                expect: vec![Key("expect")],
            }
        } else {
            StepAt {
                change: vec![Key("changes"), Index(i), Key("change")],
                expect: vec![Key("changes"), Index(i), Key("expect")],
            }
        }
    }

    fn change(&self, key: &'static str) -> Vec<Seg> {
        let mut path = self.change.clone();
        path.push(Key(key));
        path
    }

    fn expect(&self, key: &'static str) -> Vec<Seg> {
        let mut path = self.expect.clone();
        path.push(Key(key));
        path
    }
}

/// The longest `wait_secs`: the harness sleeps that long for real.
const MAX_WAIT_SECS: u32 = 120;

/// `change` with `expect`, or `changes`; in `changes` a step before the last that ends on
/// the recovery screen has its own `recovery` (the story goes on after it), the last one
/// its own or the top-level one.
fn validate_story_form(s: &Scenario) -> Result<(), Semantic> {
    if s.changes.is_empty() {
        if s.change.is_none() {
            return fail(
                vec![Key("change")],
                "missing `change` (or `changes`, a list of changes each with its `expect`)",
            );
        }
        if s.expect.is_none() {
            return fail(
                vec![Key("expect")],
                "missing `expect`: what must follow the change",
            );
        }
        return Ok(());
    }
    for key in ["change", "expect"] {
        let given = if key == "change" {
            s.change.is_some()
        } else {
            s.expect.is_some()
        };
        if given {
            return fail(
                vec![Key(key)],
                "`changes` lists every change with its own `expect`: expected no top-level `change` or `expect` besides it",
            );
        }
    }
    let last = s.changes.len() - 1;
    for (i, step) in s.changes.iter().enumerate() {
        if step
            .wait_secs
            .is_some_and(|w| !(1..=MAX_WAIT_SECS).contains(&w))
        {
            return fail(
                vec![Key("changes"), Index(i), Key("wait_secs")],
                format!(
                    "expected 1-{MAX_WAIT_SECS} seconds: the harness really waits (to make a day pass, lower `device.failure_forgotten_secs`)"
                ),
            );
        }
        if i < last && step.expect.recovery && step.recovery.is_none() {
            return fail(
                vec![Key("changes"), Index(i), Key("expect"), Key("recovery")],
                "a change before the last that ends on the recovery screen needs its own `recovery` (how the user gets back in before the story goes on), or `recovery: false` here",
            );
        }
        if step.recovery.is_some() && !step.expect.recovery {
            return fail(
                vec![Key("changes"), Index(i), Key("recovery")],
                "`expect.recovery` is false: expected no `recovery` here",
            );
        }
        if i == last && step.recovery.is_some() && s.recovery.is_some() {
            return fail(
                vec![Key("recovery")],
                "the last change has its own `recovery`: expected no top-level one besides it",
            );
        }
        if let Some(r) = step.recovery.as_ref().filter(|_| i < last) {
            if !matches!(
                r.answer,
                Answer::KeyShown | Answer::SeveralMatches | Answer::LockoutAuthShown
            ) {
                return fail(
                    vec![Key("changes"), Index(i), Key("recovery"), Key("answer")],
                    "the story goes on after this recovery, so it must unlock the device: expected `key_shown`, `several_matches` or `lockout_auth_shown`",
                );
            }
        }
        if step.change.kind == ChangeKind::None {
            return fail(
                vec![Key("changes"), Index(i), Key("change"), Key("kind")],
                "`none` is for a story with no change at all: leave it out of `changes`",
            );
        }
    }
    Ok(())
}

/// `device` or `devices` (not both, not none); with several devices every change, the
/// recovery and the foreign key request name a known one, and the recovery the one the
/// last change acted on.
fn validate_devices_form(s: &Scenario) -> Result<(), Semantic> {
    match (&s.device, s.devices.is_empty()) {
        (None, true) => {
            return fail(
                vec![Key("device")],
                "missing `device` (or `devices`, a list of devices each with its `name`)",
            )
        }
        (Some(_), false) => {
            return fail(
                vec![Key("devices")],
                "`device` is the one device of a story: expected `device` or `devices`, not both",
            )
        }
        _ => {}
    }
    let several = s.all_devices().len() > 1;
    let known = |named: &Option<String>, path: Vec<Seg>| -> Result<(), Semantic> {
        match named {
            None if several => fail(
                path,
                format!(
                    "the story has several devices: expected `device:` naming one of {}",
                    device_list(s)
                ),
            ),
            Some(name) if s.device_named(Some(name)).is_none() => fail(
                path,
                format!(
                    "unknown device `{name}`: expected one of {}",
                    device_list(s)
                ),
            ),
            _ => Ok(()),
        }
    };
    // An absent `device:` is reported at the mapping it belongs in.
    let at = |mut path: Vec<Seg>, named: &Option<String>| {
        if named.is_some() {
            path.push(Key("device"));
        }
        path
    };
    for (i, (change, _)) in s.steps().into_iter().enumerate() {
        known(&change.device, at(StepAt::new(s, i).change, &change.device))?;
    }
    for (i, r) in s.recoveries() {
        let path = recovery_path(s, i);
        known(&r.device, at(path.clone(), &r.device))?;
        let changed = s.steps().get(i).and_then(|(c, _)| step_device(s, c));
        let recovered = s.device_named(r.device.as_deref());
        if let (Some(changed), Some(recovered)) = (changed, recovered) {
            if !std::ptr::eq(changed, recovered) {
                let mut path = path;
                path.push(Key("device"));
                return fail(
                    path,
                    format!(
                        "the recovery follows the change that happens to `{}`: expected that device",
                        changed.name
                    ),
                );
            }
        }
    }
    if let Some(foreign) = &s.checks.foreign_key_request {
        known(
            &foreign.device,
            at(
                vec![Key("checks"), Key("foreign_key_request")],
                &foreign.device,
            ),
        )?;
    }
    Ok(())
}

fn device_list(s: &Scenario) -> String {
    s.all_devices()
        .iter()
        .map(|d| format!("`{}`", d.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn validate_name(s: &Scenario) -> Result<(), Semantic> {
    if !is_kebab(&s.name) || s.name.len() > 100 {
        return fail(
            vec![Key("name")],
            "expected 1-100 characters of a-z, 0-9, `-` and `_`",
        );
    }
    Ok(())
}

fn validate_description(s: &Scenario) -> Result<(), Semantic> {
    if s.description.trim().is_empty() {
        return fail(
            vec![Key("description")],
            "expected a description for QA readers",
        );
    }
    Ok(())
}

fn validate_tags(s: &Scenario) -> Result<(), Semantic> {
    for (i, tag) in s.tags.iter().enumerate() {
        if !is_kebab(tag) {
            return fail(
                vec![Key("tags"), Index(i)],
                format!("tag `{tag}`: expected a-z, 0-9, `-` and `_`"),
            );
        }
    }
    Ok(())
}

fn validate_device_name(s: &Scenario, i: usize, d: &Device) -> Result<(), Semantic> {
    let name_ok = (1..=64).contains(&d.name.len())
        && d.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !name_ok {
        return fail(
            device_path(s, i, "name"),
            "expected 1-64 characters of letters, digits, `-`, `_`, `.`",
        );
    }
    if s.all_devices()[..i]
        .iter()
        .any(|other| other.name.eq_ignore_ascii_case(&d.name))
    {
        return fail(
            device_path(s, i, "name"),
            format!(
                "computer `{}` listed twice (names are case-insensitive)",
                d.name
            ),
        );
    }
    Ok(())
}

fn validate_protectors(s: &Scenario, i: usize, d: &Device) -> Result<(), Semantic> {
    let at = |key| device_path(s, i, key);
    let at_index = |key, j| {
        let mut path = device_path(s, i, key);
        path.push(Index(j));
        path
    };
    if d.protectors.is_empty() {
        return fail(at("protectors"), "expected at least one protector");
    }
    for (j, p) in d.protectors.iter().enumerate() {
        if d.protectors[..j].contains(p) {
            return fail(at_index("protectors", j), "protector listed twice");
        }
    }
    let tpm_at = d.protectors.iter().position(|p| *p == ProtectorKind::Tpm);
    let pin_at = d
        .protectors
        .iter()
        .position(|p| *p == ProtectorKind::TpmPin);
    if let (Some(_), Some(j)) = (tpm_at, pin_at) {
        return fail(
            at_index("protectors", j),
            "expected one TPM protector: `tpm` or `tpm_pin`, not both",
        );
    }
    if !d.protectors.contains(&ProtectorKind::RecoveryPassword) {
        return fail(
            at("protectors"),
            "expected a `recovery_password` protector: it is what the agent escrows",
        );
    }
    match (pin_at, &d.pin) {
        (Some(j), None) => {
            return fail(
                at_index("protectors", j),
                "protector `tpm_pin` needs a `pin` in `device`",
            )
        }
        (None, Some(_)) => return fail(at("pin"), "a `pin` needs a `tpm_pin` protector"),
        (Some(_), Some(pin)) => {
            let len = pin.chars().count();
            if !(4..=20).contains(&len) || pin.chars().any(char::is_control) {
                return fail(at("pin"), "expected a PIN of 4-20 characters");
            }
        }
        (None, None) => {}
    }
    Ok(())
}

fn validate_device_counts(s: &Scenario, i: usize, d: &Device) -> Result<(), Semantic> {
    let at = |key| device_path(s, i, key);
    if !(1..=16).contains(&d.recovery_passwords) {
        return fail(at("recovery_passwords"), "expected 1-16");
    }
    if let Some(prefix) = &d.key_id_prefix {
        if prefix.len() != 8 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return fail(at("key_id_prefix"), "expected exactly 8 hex digits");
        }
        let shared_with_another = s.all_devices().iter().enumerate().any(|(j, other)| {
            j != i
                && other
                    .key_id_prefix
                    .as_deref()
                    .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
        });
        if d.recovery_passwords < 2 && !shared_with_another {
            return fail(
                at("key_id_prefix"),
                "a shared key-ID prefix needs `recovery_passwords` of 2 or more (or another device with the same prefix)",
            );
        }
    }
    if !(1..=1000).contains(&d.lockout_threshold) {
        return fail(at("lockout_threshold"), "expected 1-1000");
    }
    if !(1..=86_400).contains(&d.failure_forgotten_secs) {
        return fail(
            at("failure_forgotten_secs"),
            "expected 1-86400 seconds (0 would switch the TPM's dictionary-attack protection off)",
        );
    }
    Ok(())
}

/// Reads and parses each device's `event_log` (relative to the scenario file) into its
/// `real_log`, and checks the changes made to that device can be applied to that log.
fn load_event_logs(s: &mut Scenario) -> Result<(), Semantic> {
    let count = s.all_devices().len();
    for i in 0..count {
        let log = load_event_log(s, i)?;
        let device = match (&mut s.device, i) {
            (Some(d), 0) => Some(d),
            (Some(_), i) => s.devices.get_mut(i - 1),
            (None, i) => s.devices.get_mut(i),
        };
        if let (Some(device), Some(log)) = (device, log) {
            device.real_log = Some(log);
        }
    }
    Ok(())
}

/// The `i`-th device's parsed `event_log`, if it has one.
fn load_event_log(s: &Scenario, i: usize) -> Result<Option<std::sync::Arc<TcgLog>>, Semantic> {
    let Some(this) = s.all_devices().get(i).copied() else {
        return Ok(None);
    };
    let Some(rel) = this.event_log.clone() else {
        return Ok(None);
    };
    let at = || device_path(s, i, "event_log");
    let path = s.file.parent().unwrap_or(Path::new("")).join(&rel);
    let bytes = std::fs::read(&path).map_err(|e| Semantic {
        path: at(),
        message: format!("cannot read `{}`: {e}", path.display()),
    })?;
    let log = TcgLog::parse(&bytes).map_err(|e| Semantic {
        path: at(),
        message: format!("`{}` is not a TCG event log: {e}", path.display()),
    })?;
    if log.records.iter().all(|r| !r.is_extended()) {
        return fail(
            at(),
            format!("`{}` measures nothing (no extended record)", path.display()),
        );
    }
    if this.profile == Profile::Legacy {
        // Event types from 0x80000000 up are the UEFI ones (EV_EFI_*): no BIOS logs them.
        if let Some(uefi) = log.records.iter().find(|r| r.event_type.0 >= 0x8000_0000) {
            return fail(
                at(),
                format!(
                    "`profile: legacy` is a BIOS machine, but `{}` is a UEFI log (record #{} is \
                     {}): a legacy device boots a BIOS log",
                    path.display(),
                    uefi.number,
                    uefi.event_type
                ),
            );
        }
    }
    let log = std::sync::Arc::new(log);
    let mut device = device::Device::from_real_log(rel.display().to_string(), log.clone());
    for (n, (step, _)) in s.steps().into_iter().enumerate() {
        if !step_device(s, step).is_some_and(|d| std::ptr::eq(d, this)) {
            continue;
        }
        let Some(change) = step.device_change() else {
            continue;
        };
        match device.with(&change) {
            Ok(changed) => device = changed,
            Err(e) => {
                // A signed ROM is refused for its signer (the log cannot say what PCR 7 does).
                let key = if step.signer == Some(RomSigner::UefiCa) {
                    "signer"
                } else {
                    "kind"
                };
                // Named as the scenario file spells the change, not as the device crate's
                // type prints it.
                let kind = serde_name(&step.kind);
                let message = match e {
                    device::ChangeError::RealLog { reason, .. } => {
                        format!("`{kind}` on a device booting a real log: {reason}")
                    }
                    device::ChangeError::Missing { needs, .. } => {
                        format!("`{kind}` needs {needs}, which this log does not have")
                    }
                };
                return fail(StepAt::new(s, n).change(key), message);
            }
        }
    }
    Ok(Some(log))
}

fn validate_users(s: &Scenario) -> Result<(), Semantic> {
    for (i, u) in s.users.iter().enumerate() {
        let name_path = || vec![Key("users"), Index(i), Key("name")];
        if u.name.is_empty() || u.name.chars().count() > 128 || u.name.chars().any(char::is_control)
        {
            return fail(
                name_path(),
                "expected 1-128 characters, no control characters",
            );
        }
        if s.users[..i]
            .iter()
            .any(|other| other.name.eq_ignore_ascii_case(&u.name))
        {
            return fail(
                name_path(),
                format!(
                    "user `{}` listed twice (names are case-insensitive)",
                    u.name
                ),
            );
        }
        for (j, kind) in u.sign_ins.iter().enumerate() {
            if u.sign_ins[..j].contains(kind) {
                return fail(
                    vec![Key("users"), Index(i), Key("sign_ins"), Index(j)],
                    "sign-in kind listed twice",
                );
            }
        }
        let several = s.all_devices().len() > 1;
        if several && !u.sign_ins.is_empty() {
            return fail(
                vec![Key("users"), Index(i), Key("sign_ins")],
                "the story has several devices: expected `sign_ins_on`, the sign-ins on each device by its name",
            );
        }
        if !u.sign_ins.is_empty() && !u.sign_ins_on.is_empty() {
            return fail(
                vec![Key("users"), Index(i), Key("sign_ins_on")],
                "expected `sign_ins` (the one device) or `sign_ins_on`, not both",
            );
        }
        for (device, kinds) in &u.sign_ins_on {
            let path = || vec![Key("users"), Index(i), Key("sign_ins_on")];
            if s.device_named(Some(device)).is_none() {
                return fail(
                    path(),
                    format!(
                        "unknown device `{device}`: expected one of {}",
                        device_list(s)
                    ),
                );
            }
            for (j, kind) in kinds.iter().enumerate() {
                if kinds[..j].contains(kind) {
                    return fail(
                        path(),
                        format!(
                            "`{device}`: sign-in kind `{}` listed twice",
                            serde_name(kind)
                        ),
                    );
                }
            }
        }
    }
    Ok(())
}

fn validate_change(s: &Scenario, c: &Change, at: &StepAt) -> Result<(), Semantic> {
    validate_suspend(c, at)?;
    let Some(device) = step_device(s, c) else {
        return Ok(());
    };
    match (c.kind, c.signer) {
        (ChangeKind::OptionRomAdded, None) => {
            return fail(
                at.change("kind"),
                "`option_rom_added` needs `signer`: `uefi_ca` (PCR 2, and a PCR 7 authority \
                 event the first time the UEFI CA verifies an image) or `unsigned` (PCR 2 only)",
            )
        }
        (ChangeKind::OptionRomAdded, Some(RomSigner::UefiCa))
            if device.profile == Profile::Legacy =>
        {
            return fail(
                at.change("signer"),
                "a BIOS machine (`profile: legacy`) runs legacy option ROMs, which carry no \
                 UEFI signature and log no authority event: expected `signer: unsigned`",
            )
        }
        (kind, Some(_)) if kind != ChangeKind::OptionRomAdded => {
            return fail(
                at.change("signer"),
                "`signer` belongs to `kind: option_rom_added` only",
            )
        }
        _ => {}
    }
    if device.profile == Profile::Legacy {
        if let Some(why) = not_on_a_bios_machine(c.kind) {
            return fail(
                at.change("kind"),
                format!(
                    "`{}` cannot happen on a BIOS machine (`profile: legacy`): {why}",
                    serde_name(&c.kind)
                ),
            );
        }
    }
    match (c.kind, c.wrong_pins) {
        (ChangeKind::LostPin, None) => fail(
            at.change("kind"),
            "`lost_pin` needs `wrong_pins`: how many wrong PINs are typed",
        ),
        (ChangeKind::LostPin, Some(0)) => fail(at.change("wrong_pins"), "expected at least 1"),
        (ChangeKind::LostPin, Some(_)) if !device.protectors.contains(&ProtectorKind::TpmPin) => {
            fail(
                at.change("kind"),
                "`lost_pin` needs a `tpm_pin` protector in the device's `protectors`",
            )
        }
        (kind, Some(_)) if kind != ChangeKind::LostPin => fail(
            at.change("wrong_pins"),
            "`wrong_pins` belongs to `kind: lost_pin` only",
        ),
        _ if c.then.is_some() && c.kind != ChangeKind::LostPin => fail(
            at.change("then"),
            "`then` (what the user does after wrong PINs) belongs to `kind: lost_pin` only",
        ),
        _ => Ok(()),
    }
}

/// `suspend`: 1-15 reboots (as `Suspend-BitLocker -RebootCount` takes), before a change
/// that boots with a TPM protector to suspend.
fn validate_suspend(c: &Change, at: &StepAt) -> Result<(), Semantic> {
    let Some(suspend) = c.suspend else {
        return Ok(());
    };
    if !(1..=15).contains(&suspend.reboots) {
        let mut path = at.change("suspend");
        path.push(Key("reboots"));
        return fail(path, "expected 1-15 reboots");
    }
    let why = match c.kind {
        ChangeKind::None => "`none` does not reboot",
        ChangeKind::LostPin => "a suspended drive asks for no PIN",
        ChangeKind::FirmwareUpdateSuspended => "`firmware_update_suspended` suspends already",
        _ => return Ok(()),
    };
    fail(
        at.change("suspend"),
        format!(
            "`suspend` does not go with `kind: {}`: {why}",
            serde_name(&c.kind)
        ),
    )
}

/// A real-firmware device (`device.firmware`): what real OVMF can do and what the device
/// stands for (SCHEMA.md, "Real firmware"). Each refusal names the field and why.
fn validate_real_firmware(s: &Scenario) -> Result<(), Semantic> {
    if let Some(i) = s.devices.iter().position(|d| d.firmware.is_some()) {
        return fail(
            vec![Key("devices"), Index(i), Key("firmware")],
            "`firmware: ovmf` is for a story of one device (`device:`): its every boot is a \
             real 15-40 s QEMU boot, one at a time",
        );
    }
    let Some(device) = s.device.as_ref().filter(|d| d.firmware.is_some()) else {
        return Ok(());
    };
    let firmware = || vec![Key("device"), Key("firmware")];
    if device.profile == Profile::Legacy {
        return fail(
            vec![Key("device"), Key("profile")],
            "`firmware: ovmf` is UEFI firmware: a legacy (BIOS) profile cannot be sealed to its \
             boot; expected \"7,11\" or \"0,2,4,11\"",
        );
    }
    if device.event_log.is_some() {
        return fail(
            firmware(),
            "a real-firmware device boots its own log: drop `event_log` (or `firmware`)",
        );
    }
    if s.changes.len() > 1 {
        return fail(
            vec![Key("changes")],
            "a real-firmware device carries one change (each boot is a real 15-40 s QEMU \
             boot): give a single `change`",
        );
    }
    for (i, (c, _)) in s.steps().into_iter().enumerate() {
        let at = StepAt::new(s, i);
        if let Err(why) = device::real_firmware::real_change(c.kind) {
            return fail(
                at.change("kind"),
                format!("`{}` on real firmware: {why}", serde_name(&c.kind)),
            );
        }
        if c.signer == Some(RomSigner::UefiCa) {
            return fail(
                at.change("signer"),
                "the real option ROM (iPXE's EFI ROM on an e1000) is not signed by the UEFI CA \
                 and logs no PCR 7 authority: expected `signer: unsigned`",
            );
        }
        if let Some(why) = real_pcr4_reason(c.kind) {
            if device.profile.pcrs().contains(&4) {
                return fail(
                    at.change("kind"),
                    format!(
                        "`{}` on real firmware also moves PCR 4, {why}: under a profile with \
                         PCR 4 the verdict would not answer for a Windows device; use profile \
                         \"7,11\"",
                        serde_name(&c.kind)
                    ),
                );
            }
        }
    }
    Ok(())
}

/// Why a change moves PCR 4 on the real-firmware device where the model moves none
/// (ARCHITECTURE.md, "Real firmware in the loop": the model-vs-reality table).
fn real_pcr4_reason(kind: ChangeKind) -> Option<&'static str> {
    match kind {
        ChangeKind::SecureBootOff => Some(
            "through Debian's loader chain (with Secure Boot off shim no longer loads the \
             kernel as a measured EFI image), which Windows' boot manager does not share",
        ),
        ChangeKind::BcdBootOrder => Some(
            "through the firmware's own boot-option actions (\"Calling EFI Application from \
             Boot Option\" for each option it tries), which the model does not log yet",
        ),
        _ => None,
    }
}

/// Why a change kind does not exist on a BIOS machine, if it does not.
fn not_on_a_bios_machine(kind: ChangeKind) -> Option<&'static str> {
    match kind {
        ChangeKind::SecureBootDbUpdate
        | ChangeKind::SecureBootDbxUpdate
        | ChangeKind::SecureBootOff => Some(
            "a BIOS has no Secure Boot (no db, dbx or SecureBoot variable; PCR 7 holds only \
             its separator)",
        ),
        _ => None,
    }
}

fn validate_expect(s: &Scenario, c: &Change, e: &Expect, at: &StepAt) -> Result<(), Semantic> {
    let Some(device) = step_device(s, c) else {
        return Ok(());
    };
    match (e.recovery, e.tpm_error) {
        (true, TpmError::None) => {
            return fail(
                at.expect("tpm_error"),
                "a recovery needs the TPM error that causes it: expected one of `policy_failed`, `auth_failed`, `locked_out`, `integrity`",
            )
        }
        (false, err) if err != TpmError::None => {
            return fail(
                at.expect("tpm_error"),
                "without recovery the device unlocks: expected `none`",
            )
        }
        _ => {}
    }
    let profile = device.profile;
    for (i, pcr) in e.changed_pcrs.iter().enumerate() {
        let path = || {
            let mut path = at.expect("changed_pcrs");
            path.push(Index(i));
            path
        };
        if !profile.pcrs().contains(pcr) {
            return fail(
                path(),
                format!(
                    "PCR {pcr} is not in profile {} (PCRs {:?})",
                    profile.as_str(),
                    profile.pcrs()
                ),
            );
        }
        if e.changed_pcrs[..i].contains(pcr) {
            return fail(path(), format!("PCR {pcr} listed twice"));
        }
    }
    let policy = e.tpm_error == TpmError::PolicyFailed;
    if policy && e.changed_pcrs.is_empty() {
        return fail(
            at.expect("tpm_error"),
            "`policy_failed` needs `changed_pcrs`: the profile PCRs that changed",
        );
    }
    if !policy && !e.changed_pcrs.is_empty() {
        return fail(
            at.expect("changed_pcrs"),
            "only `tpm_error: policy_failed` comes from changed PCRs: expected none here",
        );
    }
    if c.kind == ChangeKind::None && e.recovery {
        return fail(
            at.expect("recovery"),
            "`change: none` does not even reboot: expected `recovery: false`",
        );
    }
    // A TPM locked out by wrong PINs stays so until it forgets a failure: a reboot with
    // the right PIN after them may still meet the lockout.
    let reboot_after_wrong_pins = c.kind == ChangeKind::Reboot && {
        let steps = s.steps();
        let here = steps.iter().position(|(step, _)| std::ptr::eq(*step, c));
        here.is_some_and(|i| {
            steps[..i].iter().any(|(earlier, _)| {
                earlier.kind == ChangeKind::LostPin
                    && step_device(s, earlier).is_some_and(|d| std::ptr::eq(d, device))
            })
        })
    };
    if matches!(e.tpm_error, TpmError::AuthFailed | TpmError::LockedOut)
        && c.kind != ChangeKind::LostPin
        && !(e.tpm_error == TpmError::LockedOut && reboot_after_wrong_pins)
    {
        return fail(
            at.expect("tpm_error"),
            "`auth_failed` and `locked_out` come from wrong PINs: expected `change.kind: lost_pin` (or, for `locked_out`, a `reboot` after an earlier `lost_pin` on the device)",
        );
    }
    if c.kind == ChangeKind::LostPin {
        validate_pin_action(c, e, at)?;
    }
    // The TPM counts a wrong PIN up to the threshold (the threshold-th still answers
    // auth_failed) and refuses every later attempt as locked out.
    let threshold = device.lockout_threshold;
    if let Some(tries) = e.tpm_failed_tries {
        if tries > threshold {
            return fail(
                at.expect("tpm_failed_tries"),
                format!(
                    "the TPM counts at most `lockout_threshold` ({threshold}) failures: expected 0-{threshold}"
                ),
            );
        }
    }
    if let Some(wrong) = c.wrong_pins {
        if e.tpm_error == TpmError::AuthFailed && wrong > threshold {
            return fail(
                at.change("wrong_pins"),
                format!(
                    "after {wrong} wrong PINs a TPM with `lockout_threshold: {threshold}` is locked out: the last one is answered `locked_out`, not `auth_failed` (at most {threshold} wrong PINs get `auth_failed`)"
                ),
            );
        }
    }
    Ok(())
}

/// What the lost-PIN user does decides which answers can follow; whether the TPM gives
/// them (locked out or not after `wrong_pins`) is the runner's check against the TPM.
fn validate_pin_action(c: &Change, e: &Expect, at: &StepAt) -> Result<(), Semantic> {
    match c.pin_action() {
        PinAction::Esc => {
            if !e.recovery {
                return fail(
                    at.expect("recovery"),
                    "`then: esc` takes the recovery screen: expected `recovery: true` (or `then: right_pin`)",
                );
            }
            if !matches!(e.tpm_error, TpmError::AuthFailed | TpmError::LockedOut) {
                return fail(
                    at.expect("tpm_error"),
                    "after wrong PINs and Esc the TPM's last answer is `auth_failed` or `locked_out`",
                );
            }
        }
        PinAction::RightPin => {
            if !matches!(e.tpm_error, TpmError::None | TpmError::LockedOut) {
                return fail(
                    at.expect("tpm_error"),
                    "the right PIN either unlocks (`none`) or meets a locked-out TPM (`locked_out`)",
                );
            }
        }
    }
    Ok(())
}

/// Where the recovery after the `i`-th change is: `changes[i].recovery`, or the top-level
/// `recovery` after the last change.
fn recovery_path(s: &Scenario, i: usize) -> Vec<Seg> {
    match s.changes.get(i) {
        Some(step) if step.recovery.is_some() => vec![Key("changes"), Index(i), Key("recovery")],
        _ => vec![Key("recovery")],
    }
}

fn validate_recovery(s: &Scenario) -> Result<(), Semantic> {
    match (&s.recovery, s.recovers()) {
        (None, true)
            if s.recovery_after(s.steps().len().saturating_sub(1))
                .is_none() =>
        {
            return fail(
                last_expect_path(s, "recovery"),
                "a recovery is expected: add a `recovery` section saying how the user gets back in",
            )
        }
        // Without a change (or its `expect`) there is no `expect.recovery` to speak of:
        // the missing one is the error.
        (Some(_), false) if s.last_step().is_some() => {
            return fail(
                vec![Key("recovery")],
                "`expect.recovery` is false: expected no `recovery` section",
            )
        }
        _ => {}
    }
    for (i, r) in s.recoveries() {
        validate_one_recovery(s, i, r)?;
    }
    Ok(())
}

/// The recovery `r` after the `i`-th change.
fn validate_one_recovery(s: &Scenario, i: usize, r: &Recovery) -> Result<(), Semantic> {
    let rp = |k: &'static str| {
        let mut path = recovery_path(s, i);
        path.push(Key(k));
        path
    };
    let Some(device) = s.device_named(r.device.as_deref()) else {
        return Ok(()); // an unknown `recovery.device`: validate_devices_form's error
    };
    let Some(requester) = s.user(&r.requester) else {
        return fail(
            rp("as"),
            format!(
                "unknown user `{}`: expected one of `users` ({})",
                r.requester,
                user_list(s)
            ),
        );
    };
    let answers: &[Answer] = match r.via {
        RecoveryVia::SelfService => &[
            Answer::KeyShown,
            Answer::HelpdeskMessage,
            Answer::Refused,
            Answer::SeveralMatches,
            Answer::Expired,
        ],
        RecoveryVia::HelpDesk => &[Answer::KeyShown, Answer::Refused, Answer::SeveralMatches],
        RecoveryVia::HelpDeskTpmReset => &[Answer::LockoutAuthShown, Answer::Refused],
    };
    if !answers.contains(&r.answer) {
        return fail(
            rp("answer"),
            format!(
                "not an answer of `via: {}`: expected one of {}",
                via_str(r.via),
                answers
                    .iter()
                    .map(|a| format!("`{}`", answer_str(*a)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    match r.via {
        RecoveryVia::SelfService => {
            if !r.reason.is_self_service() {
                return fail(
                    rp("reason"),
                    format!("`{}` is a help desk reason: self-service expects one of `BIOS/TPM changed`, `OS filed modified`, `Lost PIN/passphrase`", r.reason),
                );
            }
            if r.end_user.is_some() {
                return fail(rp("end_user"), "`end_user` belongs to help desk recoveries");
            }
            let local = s.signed_in_locally(requester, device);
            if r.answer == Answer::KeyShown && !local {
                return fail(
                    rp("as"),
                    format!("`{}` has no local sign-in on `{}`: self-service cannot show its key (expected `answer: helpdesk_message` or `refused`)", requester.name, device.name),
                );
            }
            if r.answer == Answer::HelpdeskMessage
                && (local || s.sign_ins(requester, device).is_empty())
            {
                return fail(
                    rp("answer"),
                    format!(
                        "the help-desk message is for users signed in remotely only; `{}` is not",
                        requester.name
                    ),
                );
            }
        }
        RecoveryVia::HelpDesk | RecoveryVia::HelpDeskTpmReset => {
            if !requester.role.is_help_desk() {
                return fail(
                    rp("as"),
                    format!(
                        "`{}` has role `user`: a help desk recovery needs a `helpdesk` or `advanced_helpdesk` user",
                        requester.name
                    ),
                );
            }
            if r.reason.is_self_service() {
                return fail(
                    rp("reason"),
                    format!("`{}` is a self-service reason: the help desk expects one of `Operating System Boot Order changed`, `BIOS changed`, `Operating System files modified`, `Lost Startup key`, `Lost PIN`, `TPM Reset`, `Lost Passphrase`, `Lost Smartcard`, `Other`", r.reason),
                );
            }
            match &r.end_user {
                None if requester.role == Role::Helpdesk => {
                    return fail(
                        rp("as"),
                        format!(
                        "`{}` has role `helpdesk`, which must type the end user: add `end_user`",
                        requester.name
                    ),
                    )
                }
                Some(end_user) if s.user(end_user).is_none() => {
                    return fail(
                        rp("end_user"),
                        format!(
                            "unknown user `{end_user}`: expected one of `users` ({})",
                            user_list(s)
                        ),
                    )
                }
                _ => {}
            }
        }
    }
    if r.via == RecoveryVia::HelpDeskTpmReset {
        if r.key_id_digits.is_some() {
            return fail(
                rp("key_id_digits"),
                "Manage TPM asks for the computer, not a key ID: remove `key_id_digits`",
            );
        }
        if s.steps().get(i).map(|(_, e)| e.tpm_error) != Some(TpmError::LockedOut) {
            return fail(
                rp("via"),
                "a TPM lockout reset needs a locked-out TPM: expected `expect.tpm_error: locked_out`",
            );
        }
        if !device.escrow_tpm_lockout && r.answer == Answer::LockoutAuthShown {
            let i = s.device_index(Some(&device.name)).unwrap_or_default();
            return fail(
                device_path(s, i, "escrow_tpm_lockout"),
                "Manage TPM can only show an escrowed lockout authorization",
            );
        }
    }
    if r.answer == Answer::SeveralMatches {
        if r.digits() != KeyIdDigits::Eight {
            return fail(
                rp("key_id_digits"),
                "several keys can only match 8 digits: expected 8",
            );
        }
        if device.key_id_prefix.is_none() {
            return fail(
                rp("answer"),
                "several matches need keys sharing their first 8 digits: set the device's `key_id_prefix`",
            );
        }
    }
    if r.answer == Answer::Expired && s.checks.idle_expiry.is_none() {
        return fail(
            rp("answer"),
            "`expired` needs `checks.idle_expiry` (the idle timeout and warning)",
        );
    }
    Ok(())
}

/// `expect.KEY` of the story's last step.
fn last_expect_path(s: &Scenario, key: &'static str) -> Vec<Seg> {
    StepAt::new(s, s.steps().len().saturating_sub(1)).expect(key)
}

fn validate_checks(s: &Scenario) -> Result<(), Semantic> {
    let c = &s.checks;
    if c.after_recovery.is_some() {
        let shown = s.recoveries().iter().any(|(_, r)| {
            matches!(
                r.answer,
                Answer::KeyShown | Answer::SeveralMatches | Answer::LockoutAuthShown
            )
        });
        if !shown {
            return fail(
                vec![Key("checks"), Key("after_recovery")],
                "rotation follows a shown key: expected a recovery whose answer shows one",
            );
        }
    }
    if let Some(idle) = &c.idle_expiry {
        if !(1..=86400).contains(&idle.idle_secs) {
            return fail(
                vec![Key("checks"), Key("idle_expiry"), Key("idle_secs")],
                "expected 1-86400",
            );
        }
        if idle.warning_secs > 3600 {
            return fail(
                vec![Key("checks"), Key("idle_expiry"), Key("warning_secs")],
                "expected 0-3600",
            );
        }
    }
    for (i, absent) in c.audit_absent.iter().enumerate() {
        if c.audit.contains(absent) {
            return fail(
                vec![Key("checks"), Key("audit_absent"), Index(i)],
                format!(
                    "`{} {}` is stated in `checks.audit` too: a row cannot be both there and absent",
                    serde_name(&absent.source),
                    serde_name(&absent.outcome)
                ),
            );
        }
    }
    if let Some(foreign) = &c.foreign_key_request {
        let path = || vec![Key("checks"), Key("foreign_key_request"), Key("as_user")];
        match s.user(&foreign.as_user) {
            None => {
                return fail(
                    path(),
                    format!(
                        "unknown user `{}`: expected one of `users` ({})",
                        foreign.as_user,
                        user_list(s)
                    ),
                )
            }
            Some(u)
                if s.device_named(foreign.device.as_deref())
                    .is_some_and(|d| !s.sign_ins(u, d).is_empty()) =>
            {
                return fail(
                    path(),
                    format!(
                        "`{}` has signed in to the device: the key is not foreign to them",
                        u.name
                    ),
                )
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn user_list(s: &Scenario) -> String {
    if s.users.is_empty() {
        return "none".to_string();
    }
    s.users
        .iter()
        .map(|u| format!("`{}`", u.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn via_str(via: RecoveryVia) -> &'static str {
    match via {
        RecoveryVia::SelfService => "self_service",
        RecoveryVia::HelpDesk => "help_desk",
        RecoveryVia::HelpDeskTpmReset => "help_desk_tpm_reset",
    }
}

fn answer_str(a: Answer) -> &'static str {
    match a {
        Answer::KeyShown => "key_shown",
        Answer::HelpdeskMessage => "helpdesk_message",
        Answer::Refused => "refused",
        Answer::SeveralMatches => "several_matches",
        Answer::Expired => "expired",
        Answer::LockoutAuthShown => "lockout_auth_shown",
    }
}

#[cfg(test)]
mod tests {
    use super::strip_location;

    #[test]
    fn strips_only_a_trailing_position() {
        assert_eq!(strip_location("bad at line 3 column 7"), "bad");
        assert_eq!(strip_location("look at line items"), "look at line items");
    }

    #[test]
    fn drops_every_inner_position() {
        assert_eq!(
            super::drop_positions("no ']' at line 15 column 9, while parsing at line 14 column 17"),
            "no ']', while parsing"
        );
        assert_eq!(super::drop_positions("at line items"), "at line items");
    }
}
