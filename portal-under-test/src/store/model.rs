//! The portal's domain records, as the store hands them out and takes them in.

use serde::{Deserialize, Serialize};

use crate::crypto::Sealed;
use crate::index::IndexEntry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Helpdesk,
    AdvancedHelpdesk,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Helpdesk => "helpdesk",
            Role::AdvancedHelpdesk => "advanced_helpdesk",
            Role::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "helpdesk" => Some(Role::Helpdesk),
            "advanced_helpdesk" => Some(Role::AdvancedHelpdesk),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
    /// May use the help desk site / lookup API.
    pub fn is_helpdesk(self) -> bool {
        !matches!(self, Role::User)
    }
    /// Needs only the key ID (no end user) at the help desk.
    pub fn is_advanced(self) -> bool {
        matches!(self, Role::AdvancedHelpdesk | Role::Admin)
    }
}

#[derive(Debug, Clone)]
pub struct Account {
    pub id: i64,
    pub username: String,
    pub password_hash: String,
    pub role: Role,
}

#[derive(Debug, Clone)]
pub struct Device {
    pub row: i64,
    pub device_id: String,
    pub name: String,
}

/// A key ready to store (already sealed).
#[derive(Debug, Clone)]
pub struct NewKey {
    pub key_id: u128,
    pub volume_id: u128,
    pub protector_type: String,
    pub sealed: Sealed,
    pub fingerprint: [u8; 32],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscrowResult {
    Created(IndexEntry),
    Existing,
}

/// The escrow rule for a key protector ID the store already holds, the same on every
/// engine: the same device with the same recovery password is an idempotent retry
/// (`Existing`); anything else is a conflict. `stored` is the held row's device and
/// password fingerprint, compared in constant time.
pub(crate) fn escrow_of_known_key(
    index: usize,
    device_row: i64,
    stored: (i64, &[u8]),
    fingerprint: &[u8],
) -> Result<EscrowResult, super::StoreError> {
    let (stored_device, stored_fingerprint) = stored;
    if stored_device != device_row {
        return Err(super::StoreError::Conflict {
            index,
            message: "key protector ID is already escrowed for another device".into(),
        });
    }
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        stored_fingerprint,
        fingerprint,
    )) {
        return Err(super::StoreError::Conflict {
            index,
            message: "key protector ID is already escrowed with a different recovery password"
                .into(),
        });
    }
    Ok(EscrowResult::Existing)
}

#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub row: i64,
    pub key_id: u128,
    pub device_row: i64,
    pub device_name: String,
    pub sealed: Sealed,
    pub superseded: bool,
    /// Already shown once (the device must rotate it).
    pub disclosed: bool,
}

/// How a user is associated with a device.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Assoc {
    pub local: bool,
    pub remote: bool,
    pub imported: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInKind {
    Local,
    Remote,
}

#[derive(Debug, Clone)]
pub struct ImportRow {
    pub device: String,
    pub user: Option<String>,
    pub key: NewKey,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRow {
    pub id: i64,
    pub time: String,
    pub source: String,
    pub requester: String,
    pub end_user: Option<String>,
    pub device: Option<String>,
    pub key_id: Option<String>,
    pub key_type: Option<String>,
    pub reason: Option<String>,
    pub outcome: String,
}

/// The audit outcomes that count towards the failed-lookup limit.
pub const FAILED_LOOKUP_OUTCOMES: [&str; 3] = ["not_found", "denied", "not_eligible"];

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Rows at or after this time, in microseconds since the Unix epoch.
    pub since_us: Option<i64>,
    pub source: Option<String>,
    pub outcome: Option<String>,
    pub user: Option<String>,
    pub device: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TpmRecord {
    pub row: i64,
    pub sealed: Sealed,
}

/// A web session as stored (see `session.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub id: String,
    pub csrf: String,
    /// The signed-in account; None before sign-in.
    pub user: Option<(String, Role)>,
    pub notice_accepted: bool,
    /// Microseconds since the Unix epoch.
    pub last_seen_us: i64,
}
