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
pub use process::{find_portal_bin, EmbeddedOptions, EmbeddedPortal, EmbeddedReplicas};

use std::path::PathBuf;

/// Where a portal is and how to talk to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalTarget {
    /// Base URL, e.g. `https://127.0.0.1:8443` (with replicas: the first one's).
    pub url: reqwest::Url,
    /// Every replica's base URL when the portal is several processes on one database
    /// (API.md §1 "Replicas"), `url` first; empty for one portal. Each actor talks to one
    /// of them ([`PortalTarget::url_for`]).
    pub replicas: Vec<reqwest::Url>,
    /// PEM file of a certificate to trust (the portal's self-signed one); `None` trusts the
    /// system roots only.
    pub ca_cert: Option<PathBuf>,
    /// An admin API token (`admin bootstrap` prints one).
    pub admin_token: String,
}

/// Who talks to the portal: with replicas, each kind of actor is pinned to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    Admin,
    /// The device agent (enroll, escrow, check-in, rotation).
    Agent,
    /// The self-service end user (HTML, or Chromium).
    User,
    /// The help desk (HTML and its JSON lookup).
    HelpDesk,
}

impl PortalTarget {
    /// The base URL `actor` uses: round robin *per actor*, by kind. The admin and the agent
    /// use the first replica, the self-service user the second, the help desk the last, so
    /// with two or more replicas every key is escrowed through one replica and recovered
    /// through another, and accounts are made on one and used on another. Per actor, not
    /// per request: each actor's requests then stay in order on one replica (as a browser
    /// behind a sticky load balancer), a failure names the replica that answered it, and
    /// the crossing happens on every run, not by the luck of a counter.
    pub fn url_for(&self, actor: Actor) -> &reqwest::Url {
        let n = self.replicas.len();
        let slot = match actor {
            Actor::Admin | Actor::Agent => 0,
            Actor::User => 1,
            Actor::HelpDesk => n.saturating_sub(1),
        };
        self.replicas.get(slot % n.max(1)).unwrap_or(&self.url)
    }
}

/// Results of this module.
pub type Result<T, E = PortalError> = std::result::Result<T, E>;
