//! A black-box client of a recovery portal, over HTTP only.
//!
//! **Architecture invariant:** this crate links neither the portal crate nor the harness's
//! scenarios and runner (Cargo enforces it: the harness's `workspace_edges` test).
//! Everything here relies on `portal-under-test/API.md` alone, so the same client gates any
//! build of a portal at a URL.
//!
//! - [`EmbeddedPortal`]: starts a portal *binary* on a free port with a throw-away data
//!   directory and stops it on drop; [`find_portal_bin`] finds the binary.
//! - [`Admin`], [`Agent`], [`HelpDeskApi`]: the JSON APIs (accounts and settings, the
//!   device agent's escrow and check-in, the help desk lookup).
//! - [`BrowserUser`], [`HelpDeskOperator`]: the HTML sites, played as a browser without
//!   JavaScript plays them: it parses each page, finds forms by the documented element
//!   ids, submits every field the form carries (the CSRF token too) and keeps cookies.
//!
//! Every failure is a [`PortalError`] naming the request, the status and a body excerpt.

mod api;
mod browser;
pub mod chrome;
mod error;
mod html;
mod http;
mod process;

pub use api::{
    AccountRole, Admin, Agent, AuditQuery, AuditRow, BulkEscrow, CheckIn, EscrowKey, EscrowedKey,
    HelpDeskApi, HelpDeskLookup, Rotation, Settings, SettingsPatch, SignIn,
};
pub use browser::{Answer, BrowserUser, HelpDeskOperator, IdleWarning, Outcome};
pub use chrome::{ChromeError, ChromeOptions, ChromeUser, Screenshot};
pub use error::PortalError;
pub use html::{extract_key_ids, Page};
pub use process::{find_portal_bin, EmbeddedOptions, EmbeddedPortal};

use std::path::PathBuf;

/// Where a portal is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalTarget {
    /// Base URL, e.g. `https://127.0.0.1:8443`.
    pub url: reqwest::Url,
    /// PEM file of a certificate to trust (the portal's self-signed one); `None` trusts the
    /// system roots only.
    pub ca_cert: Option<PathBuf>,
    /// An admin API token (`admin bootstrap` prints one).
    pub admin_token: String,
}

/// Results of this module.
pub type Result<T, E = PortalError> = std::result::Result<T, E>;
