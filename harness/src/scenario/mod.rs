//! Recovery scenarios: the YAML catalog's schema and its loader.
//!
//! A scenario file tells one recovery story — a device and its protectors, the users and
//! their sign-ins, one change (a firmware update, a new boot manager, wrong PINs, ...), what
//! must follow at the next boot, and how the user gets back in through the portal. The
//! schema is documented for QA in `scenarios/SCHEMA.md` and as JSON Schema in
//! `scenarios/scenario.schema.json`.
//!
//! Parsing is strict: unknown fields, wrong types and values outside a closed set are
//! errors, and so are stories that contradict themselves (a `tpm_pin` protector without a
//! PIN, a help desk recovery by a plain user). Every error names `file:line:column` and
//! what was expected; [`load_catalog`] refuses a catalog with any bad file.
//!
//! This module only reads and checks; running a scenario is the runner's job.

mod filter;
mod load;
mod locate;
mod model;

pub use filter::{select, Filter, FilterError};
pub use load::{
    catalog_files, check_scenario, check_scenario_file, load_catalog, load_scenario,
    parse_scenario, CatalogError, ScenarioError,
};
pub use model::*;
