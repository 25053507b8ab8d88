//! The JSON APIs: admin (accounts, tokens, settings, audit), the device agent, and the help
//! desk lookup. API.md §3-§5.

use reqwest::{Client, Url};
use serde::{Deserialize, Serialize};

use super::http::{client, join, send_expect, send_json};
use super::{Actor, PortalTarget, Result};

/// Account roles (API.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountRole {
    User,
    Helpdesk,
    AdvancedHelpdesk,
    Admin,
}

/// The settings object (API.md §4.4). Unknown fields a newer portal adds are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub company_name: String,
    pub helpdesk_text: String,
    pub helpdesk_url: String,
    pub notice_text: String,
    pub idle_timeout_secs: u64,
    pub warning_secs: u64,
    pub lookup_failure_limit: u64,
    pub lookup_failure_window_secs: u64,
}

/// Any subset of the settings, for `PUT /api/admin/settings`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SettingsPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helpdesk_text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helpdesk_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice_text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lookup_failure_limit: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lookup_failure_window_secs: Option<u64>,
}

/// Filters of `GET /api/admin/audit` (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub since: Option<String>,
    pub source: Option<String>,
    pub outcome: Option<String>,
    pub user: Option<String>,
    pub device: Option<String>,
}

/// One audit row, as the JSON export gives it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AuditRow {
    pub id: serde_json::Value,
    pub time: String,
    pub source: String,
    pub requester: Option<String>,
    pub end_user: Option<String>,
    pub device: Option<String>,
    pub key_id: Option<String>,
    pub key_type: Option<String>,
    pub reason: Option<String>,
    pub outcome: String,
}

#[derive(Deserialize)]
struct AuditRows {
    rows: Vec<AuditRow>,
}

#[derive(Deserialize)]
struct Token {
    token: String,
}

/// The admin JSON API, with an admin API token.
#[derive(Debug, Clone)]
pub struct Admin {
    http: Client,
    base: Url,
    token: String,
}

impl Admin {
    /// With the target's admin token.
    pub fn new(target: &PortalTarget) -> Result<Admin> {
        Admin::with_token(target, &target.admin_token)
    }

    /// With another token (e.g. to check that a non-admin token gets 403).
    pub fn with_token(target: &PortalTarget, token: &str) -> Result<Admin> {
        Ok(Admin {
            http: client(target, false)?,
            base: target.url_for(Actor::Admin).clone(),
            token: token.to_string(),
        })
    }

    pub async fn create_account(
        &self,
        username: &str,
        password: &str,
        role: AccountRole,
    ) -> Result<()> {
        let body = serde_json::json!({ "username": username, "password": password, "role": role });
        let url = join(&self.base, "/api/admin/accounts")?;
        send_expect(
            "admin: POST /api/admin/accounts",
            self.http.post(url).bearer_auth(&self.token).json(&body),
            &[201],
        )
        .await
        .map(drop)
    }

    /// A one-time enrollment token for a device agent.
    pub async fn create_enrollment_token(&self) -> Result<String> {
        let url = join(&self.base, "/api/admin/enrollment-tokens")?;
        let token: Token = send_json(
            "admin: POST /api/admin/enrollment-tokens",
            self.http.post(url).bearer_auth(&self.token),
            &[201],
        )
        .await?;
        Ok(token.token)
    }

    /// An API token for `username` (help desk accounts use it for [`HelpDeskApi`]).
    pub async fn create_api_token(&self, username: &str) -> Result<String> {
        let mut url = join(&self.base, "/api/admin/accounts/")?;
        // The name goes in one path segment, escaped (`CONTOSO\alice`).
        url.path_segments_mut()
            .map_err(|()| super::PortalError::Usage(format!("{} cannot be a base", self.base)))?
            .pop_if_empty()
            .push(username)
            .push("api-tokens");
        let token: Token = send_json(
            "admin: POST /api/admin/accounts/{username}/api-tokens",
            self.http.post(url).bearer_auth(&self.token),
            &[201],
        )
        .await?;
        Ok(token.token)
    }

    pub async fn settings(&self) -> Result<Settings> {
        let url = join(&self.base, "/api/admin/settings")?;
        send_json(
            "admin: GET /api/admin/settings",
            self.http.get(url).bearer_auth(&self.token),
            &[200],
        )
        .await
    }

    /// Changes the given settings; returns them all.
    pub async fn update_settings(&self, patch: &SettingsPatch) -> Result<Settings> {
        let url = join(&self.base, "/api/admin/settings")?;
        send_json(
            "admin: PUT /api/admin/settings",
            self.http.put(url).bearer_auth(&self.token).json(patch),
            &[200],
        )
        .await
    }

    /// The audit, oldest first.
    pub async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRow>> {
        let mut url = join(&self.base, "/api/admin/audit")?;
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("format", "json");
            let filters = [
                ("since", &query.since),
                ("source", &query.source),
                ("outcome", &query.outcome),
                ("user", &query.user),
                ("device", &query.device),
            ];
            for (name, value) in filters {
                if let Some(value) = value {
                    pairs.append_pair(name, value);
                }
            }
        }
        let rows: AuditRows = send_json(
            "admin: GET /api/admin/audit",
            self.http.get(url).bearer_auth(&self.token),
            &[200],
        )
        .await?;
        Ok(rows.rows)
    }
}

/// A sign-in the agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignIn {
    Local,
    Remote,
}

/// One key the agent escrows. `protector_type` is always `recovery_password` (the only
/// type the contract accepts); other values are for testing the portal's validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EscrowKey {
    pub volume_id: String,
    pub key_protector_id: String,
    pub recovery_password: String,
    pub protector_type: String,
}

impl EscrowKey {
    pub fn recovery_password(volume_id: &str, key_protector_id: &str, password: &str) -> Self {
        EscrowKey {
            volume_id: volume_id.to_string(),
            key_protector_id: key_protector_id.to_string(),
            recovery_password: password.to_string(),
            protector_type: "recovery_password".to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EscrowedKey {
    /// As the portal prints it: `{GUID}`, upper case.
    pub key_protector_id: String,
    /// False when this device had already escrowed the same pair.
    pub created: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct BulkEscrow {
    pub created: u64,
    pub existing: u64,
}

/// What the portal tells the agent at check-in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CheckIn {
    /// Key IDs shown to someone and not yet superseded: rotate them.
    pub rotate_keys: Vec<String>,
    /// The TPM lockout authorization was shown: rotate it.
    pub rotate_tpm_lockout: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Rotation {
    pub superseded: String,
    pub current: String,
}

#[derive(Deserialize)]
struct Enrolled {
    device_id: String,
    credential: String,
}

/// The device agent (API.md §3): enrolled once, then authenticated by its credential.
#[derive(Debug, Clone)]
pub struct Agent {
    http: Client,
    base: Url,
    device_name: String,
    device_id: String,
    credential: String,
}

impl Agent {
    /// Enrolls `device_name` with a one-time token.
    pub async fn enroll(
        target: &PortalTarget,
        enrollment_token: &str,
        device_name: &str,
    ) -> Result<Agent> {
        let http = client(target, false)?;
        let base = target.url_for(Actor::Agent).clone();
        let url = join(&base, "/api/agent/enroll")?;
        let body =
            serde_json::json!({ "enrollment_token": enrollment_token, "device_name": device_name });
        let enrolled: Enrolled = send_json(
            "agent: POST /api/agent/enroll",
            http.post(url).json(&body),
            &[200],
        )
        .await?;
        Ok(Agent {
            http,
            base,
            device_name: device_name.to_string(),
            device_id: enrolled.device_id,
            credential: enrolled.credential,
        })
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Escrows one recovery password (201 new, 200 already there).
    pub async fn escrow_key(&self, key: &EscrowKey) -> Result<EscrowedKey> {
        let url = join(&self.base, "/api/agent/keys")?;
        send_json(
            "agent: POST /api/agent/keys",
            self.http.post(url).bearer_auth(&self.credential).json(key),
            &[200, 201],
        )
        .await
    }

    /// Escrows many keys at once, all or nothing.
    pub async fn escrow_keys_bulk(&self, keys: &[EscrowKey]) -> Result<BulkEscrow> {
        let url = join(&self.base, "/api/agent/keys/bulk")?;
        send_json(
            "agent: POST /api/agent/keys/bulk",
            self.http
                .post(url)
                .bearer_auth(&self.credential)
                .json(&serde_json::json!({ "keys": keys })),
            &[200],
        )
        .await
    }

    /// Reports that `user` signed in to this device.
    pub async fn report_sign_in(&self, user: &str, kind: SignIn) -> Result<()> {
        let url = join(&self.base, "/api/agent/sign-ins")?;
        send_expect(
            "agent: POST /api/agent/sign-ins",
            self.http
                .post(url)
                .bearer_auth(&self.credential)
                .json(&serde_json::json!({ "user": user, "kind": kind })),
            &[204],
        )
        .await
        .map(drop)
    }

    pub async fn check_in(&self) -> Result<CheckIn> {
        let url = join(&self.base, "/api/agent/check-in")?;
        send_json(
            "agent: POST /api/agent/check-in",
            self.http
                .post(url)
                .bearer_auth(&self.credential)
                .json(&serde_json::json!({})),
            &[200],
        )
        .await
    }

    /// Confirms that `new` (already escrowed) replaces `old`.
    pub async fn confirm_rotation(&self, old: &str, new: &str) -> Result<Rotation> {
        let url = join(&self.base, "/api/agent/rotations")?;
        send_json(
            "agent: POST /api/agent/rotations",
            self.http.post(url).bearer_auth(&self.credential).json(
                &serde_json::json!({ "old_key_protector_id": old, "new_key_protector_id": new }),
            ),
            &[200],
        )
        .await
    }

    /// Escrows the TPM lockout authorization (also after rotating it).
    pub async fn escrow_tpm_lockout(&self, lockout_auth: &[u8]) -> Result<()> {
        let url = join(&self.base, "/api/agent/tpm-lockout")?;
        send_expect(
            "agent: POST /api/agent/tpm-lockout",
            self.http
                .post(url)
                .bearer_auth(&self.credential)
                .json(&serde_json::json!({ "lockout_auth": hex::encode(lockout_auth) })),
            &[204],
        )
        .await
        .map(drop)
    }
}

/// The help desk JSON lookup (API.md §5), with a help desk account's API token.
#[derive(Debug, Clone)]
pub struct HelpDeskApi {
    http: Client,
    base: Url,
    token: String,
}

/// The lookup's 200 answers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum HelpDeskLookup {
    Shown {
        key_id: String,
        device: String,
        recovery_password: String,
    },
    Ambiguous {
        matches: Vec<HelpDeskMatch>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HelpDeskMatch {
    pub key_id: String,
    pub device: String,
    pub users: Vec<String>,
}

impl HelpDeskApi {
    pub fn new(target: &PortalTarget, token: &str) -> Result<HelpDeskApi> {
        Ok(HelpDeskApi {
            http: client(target, false)?,
            base: target.url_for(Actor::HelpDesk).clone(),
            token: token.to_string(),
        })
    }

    /// Looks a key up; 404/400/429 come back as [`super::PortalError::Status`] with the
    /// JSON error code.
    pub async fn lookup(
        &self,
        key_id: &str,
        user: Option<&str>,
        reason: &str,
    ) -> Result<HelpDeskLookup> {
        let url = join(&self.base, "/api/helpdesk/lookup")?;
        let mut body = serde_json::json!({ "key_id": key_id, "reason": reason });
        if let (Some(user), Some(map)) = (user, body.as_object_mut()) {
            map.insert("user".to_string(), serde_json::Value::from(user));
        }
        send_json(
            "help desk: POST /api/helpdesk/lookup",
            self.http.post(url).bearer_auth(&self.token).json(&body),
            &[200],
        )
        .await
    }
}
