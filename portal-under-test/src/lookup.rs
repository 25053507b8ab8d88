//! The key and TPM-lockout request rules shared by the self-service pages, the help desk
//! pages and the help desk JSON API: one validation of a help desk request
//! ([`helpdesk_key_request`]) and one way to answer a key request ([`lookup_key`]).
//!
//! Absent and foreign key IDs take the same path: the same index lookup, the same
//! association query, one decryption (a dummy one when nothing is shown) and one audit row.

use std::collections::HashMap;

use crate::api::validate_name;
use crate::error::AppError;
use crate::fp;
use crate::index::IndexEntry;
use crate::keyid::{format_guid, parse_key_id_input, KeyIdInput};
use crate::store::{now_rfc3339, unix_us, Assoc, AuditRow, JournalEntry, Role};
use crate::{AppState, Inner};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    SelfService,
    HelpDesk,
    Api,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::SelfService => "self_service",
            Source::HelpDesk => "help_desk",
            Source::Api => "api",
        }
    }
}

pub const SELF_SERVICE_REASONS: [&str; 3] = [
    "BIOS/TPM changed",
    "OS filed modified",
    "Lost PIN/passphrase",
];

pub const HELPDESK_REASONS: [&str; 9] = [
    "Operating System Boot Order changed",
    "BIOS changed",
    "Operating System files modified",
    "Lost Startup key",
    "Lost PIN",
    "TPM Reset",
    "Lost Passphrase",
    "Lost Smartcard",
    "Other",
];

#[derive(Debug, Clone)]
pub struct KeyRequest {
    pub source: Source,
    pub requester: String,
    pub role: Role,
    pub key: KeyIdInput,
    /// Help desk: the end user typed by the operator.
    pub end_user: Option<String>,
    pub reason: String,
}

/// The end user and reason of a help desk request (key lookup or Manage TPM), validated
/// the same way on every surface. The end user is required for role `helpdesk` (optional,
/// and then ignored for matching, for the advanced roles); the reason must be one of
/// [`HELPDESK_REASONS`]. `end_user_field` is the end user's field name on the caller's
/// surface (`end_user` on the HTML form, `user` in the JSON API), so errors name it.
pub fn helpdesk_end_user_and_reason(
    role: Role,
    end_user: &str,
    end_user_field: &str,
    reason: &str,
) -> Result<(Option<String>, String), AppError> {
    let end_user = match end_user.trim() {
        "" if role.is_advanced() => None,
        "" => {
            return Err(AppError::invalid(
                end_user_field,
                "is required for the helpdesk role",
            ))
        }
        u => Some(validate_name(u, end_user_field, 256)?),
    };
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(AppError::invalid("reason", "is required"));
    }
    if !HELPDESK_REASONS.contains(&reason) {
        return Err(AppError::invalid(
            "reason",
            "is not one of the help desk reasons",
        ));
    }
    Ok((end_user, reason.to_string()))
}

/// Validates a help desk key lookup as typed, for the HTML help desk and the JSON API alike:
/// `key_id` (8 or 32 hex digits), then the end user and the reason
/// ([`helpdesk_end_user_and_reason`]). The first bad field is the error.
pub fn helpdesk_key_request(
    source: Source,
    requester: &str,
    role: Role,
    key_id: &str,
    end_user: &str,
    end_user_field: &str,
    reason: &str,
) -> Result<KeyRequest, AppError> {
    let key = parse_key_id_input(key_id).map_err(|e| AppError::invalid("key_id", e.to_string()))?;
    let (end_user, reason) = helpdesk_end_user_and_reason(role, end_user, end_user_field, reason)?;
    Ok(KeyRequest {
        source,
        requester: requester.to_string(),
        role,
        key,
        end_user,
        reason,
    })
}

#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct Match {
    pub key_id: String,
    pub device: String,
    pub users: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAnswer {
    Shown {
        key_id: String,
        device: String,
        password: String,
    },
    /// Several matches: self-service gets an empty list (it must not reveal anything).
    Ambiguous(Vec<Match>),
    NotFound,
    /// Only with the `foreign_differs` fault point: a foreign key answered differently.
    Foreign,
    NotEligible,
    RateLimited,
}

/// Who asked, for what: the part of an audit row that is the same for every outcome.
struct Who<'a> {
    source: Source,
    requester: &'a str,
    end_user: Option<&'a str>,
    key_type: &'a str,
    reason: &'a str,
}

/// Queues the audit row of an answer in `journal` (committed before the answer is sent).
fn audit(
    journal: &mut Vec<JournalEntry>,
    who: &Who<'_>,
    device: Option<String>,
    key_id: Option<String>,
    outcome: &str,
) {
    let (time, _) = now_rfc3339();
    journal.push(JournalEntry::Audit(Box::new(AuditRow {
        id: 0,
        time,
        source: who.source.as_str().into(),
        requester: who.requester.into(),
        end_user: who.end_user.map(str::to_string),
        device,
        key_id,
        key_type: Some(who.key_type.into()),
        reason: Some(who.reason.into()),
        outcome: outcome.into(),
    })));
}

fn who<'a>(req: &'a KeyRequest, end_user: Option<&'a str>) -> Who<'a> {
    Who {
        source: req.source,
        requester: &req.requester,
        end_user,
        key_type: "recovery_password",
        reason: &req.reason,
    }
}

/// Records a key request that arrived on an expired session.
pub fn audit_expired(
    st: &Inner,
    source: Source,
    requester: &str,
    reason: Option<&str>,
) -> Result<(), AppError> {
    let (time, _) = now_rfc3339();
    st.store.append_audit(&AuditRow {
        id: 0,
        time,
        source: source.as_str().into(),
        requester: requester.into(),
        end_user: None,
        device: None,
        key_id: None,
        key_type: None,
        reason: reason.map(str::to_string),
        outcome: "expired_session".into(),
    })?;
    Ok(())
}

fn rate_limited(st: &Inner, requester: &str) -> Result<bool, AppError> {
    let Some((window_secs, limit)) = st.failure_limit_for(requester) else {
        return Ok(false);
    };
    // Microseconds: a failure leaves the window exactly `window_secs` after it was recorded.
    let now_us = unix_us(time::OffsetDateTime::now_utc());
    let window_us = i64::try_from(window_secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
    let since = now_us.saturating_sub(window_us);
    Ok(st.store.count_failures(requester, since)? >= limit)
}

/// Changes one digit of a 48-digit key (the `corrupt_key_digit` fault point).
fn corrupt(password: &str) -> String {
    let mut chars: Vec<char> = password.chars().collect();
    if let Some(c) = chars.iter_mut().find(|c| c.is_ascii_digit()) {
        *c = if *c == '9' {
            '0'
        } else {
            ((*c as u8) + 1) as char
        };
    }
    chars.into_iter().collect()
}

fn show(
    st: &Inner,
    journal: &mut Vec<JournalEntry>,
    req: &KeyRequest,
    e: IndexEntry,
    end_user: Option<&str>,
) -> Result<KeyAnswer, AppError> {
    let rec = st
        .store
        .key_by_row(e.key_row)?
        .ok_or_else(|| AppError::Internal("indexed key missing from store".into()))?;
    let plain = st.sealer.open(&rec.key_id.to_be_bytes(), &rec.sealed)?;
    let mut password = String::from_utf8(plain)
        .map_err(|_| AppError::Internal("stored recovery password is not text".into()))?;
    // The mark commits in the same transaction as the audit row (a key already marked
    // stays marked: nothing to write).
    if !rec.disclosed && !fp::active(fp::NEVER_MARK_DISCLOSED) {
        journal.push(JournalEntry::KeyDisclosed { key_row: rec.row });
    }
    let key_id = format_guid(rec.key_id);
    audit(
        journal,
        &who(req, end_user),
        Some(rec.device_name.clone()),
        Some(key_id.clone()),
        "shown",
    );
    if fp::active(fp::CORRUPT_KEY_DIGIT) {
        password = corrupt(&password);
    }
    Ok(KeyAnswer::Shown {
        key_id,
        device: rec.device_name,
        password,
    })
}

/// The same work as a real decryption, for paths that show nothing.
fn dummy_decrypt(st: &Inner) {
    let _ = st.sealer.open(&[0u8; 16], &st.dummy_sealed);
}

fn candidates(st: &Inner, key: KeyIdInput) -> Vec<IndexEntry> {
    match key {
        KeyIdInput::Prefix(p) => st.index.lookup_prefix(p),
        KeyIdInput::Full(k) => st.index.lookup_full(k).into_iter().collect(),
    }
}

/// Answers one key request, from any surface (self-service, help desk HTML, JSON API), as
/// one disclose-with-audit (`Store::disclose_with_audit`): the answer comes back only after
/// its audit row (and a shown key's disclosure mark) committed, and the requester's
/// failed-lookup limit is checked and counted atomically. If the commit fails, the caller
/// gets the error and nothing to show.
pub async fn lookup_key(st: &AppState, req: KeyRequest) -> Result<KeyAnswer, AppError> {
    // An account exempt from the limit has nothing to serialise (a load-test account).
    let limited = st
        .failure_limit_for(&req.requester)
        .map(|_| req.requester.clone());
    st.run_staged(limited.as_deref(), move |s| lookup_key_staged(s, &req))
        .await
}

/// Answers one key request without writing: returns the answer and the audit row (plus the
/// disclosure mark of a shown key) that must be committed before the answer may be sent
/// ([`lookup_key`] does both). Reads only (the store's reads and the in-memory index).
pub fn lookup_key_staged(
    st: &Inner,
    req: &KeyRequest,
) -> Result<(KeyAnswer, Vec<JournalEntry>), AppError> {
    let mut journal = Vec::with_capacity(2);
    let answer = decide(st, &mut journal, req)?;
    Ok((answer, journal))
}

fn decide(
    st: &Inner,
    journal: &mut Vec<JournalEntry>,
    req: &KeyRequest,
) -> Result<KeyAnswer, AppError> {
    let typed = req.key.display();
    let end_user: Option<&str> = match req.source {
        Source::SelfService => Some(req.requester.as_str()),
        _ => req.end_user.as_deref().filter(|u| !u.is_empty()),
    };
    if rate_limited(st, &req.requester)? {
        audit(
            journal,
            &who(req, end_user),
            None,
            Some(typed),
            "rate_limited",
        );
        return Ok(KeyAnswer::RateLimited);
    }
    let cands = candidates(st, req.key);

    if req.source == Source::SelfService {
        let assocs: HashMap<i64, Assoc> = st
            .store
            .associations_of_user(&req.requester)?
            .into_iter()
            .collect();
        let associated: Vec<(IndexEntry, Assoc)> = cands
            .iter()
            .filter_map(|e| assocs.get(&e.device_row).map(|a| (*e, *a)))
            .collect();
        let skip_local = fp::active(fp::SKIP_LOCAL_SIGNIN_CHECK);
        let eligible: Vec<IndexEntry> = associated
            .iter()
            .filter(|(_, a)| a.local || skip_local)
            .map(|(e, _)| *e)
            .collect();
        if eligible.len() == 1 || (eligible.len() > 1 && fp::active(fp::FIRST_OF_MANY_MATCHES)) {
            return show(st, journal, req, eligible[0], end_user);
        }
        dummy_decrypt(st);
        if eligible.len() > 1 {
            audit(journal, &who(req, end_user), None, Some(typed), "ambiguous");
            return Ok(KeyAnswer::Ambiguous(Vec::new()));
        }
        if let Some((e, _)) = associated.first() {
            let device = st.store.device_name(e.device_row)?;
            let kid = if associated.len() == 1 {
                format_guid(e.key_id)
            } else {
                typed
            };
            audit(
                journal,
                &who(req, end_user),
                device,
                Some(kid),
                "not_eligible",
            );
            return Ok(KeyAnswer::NotEligible);
        }
        let outcome = if cands.is_empty() {
            "not_found"
        } else {
            "denied"
        };
        audit(journal, &who(req, end_user), None, Some(typed), outcome);
        if !cands.is_empty() && fp::active(fp::FOREIGN_DIFFERS) {
            return Ok(KeyAnswer::Foreign);
        }
        return Ok(KeyAnswer::NotFound);
    }

    // Help desk (HTML or API).
    let visible: Vec<IndexEntry> = if req.role.is_advanced() {
        // The association query is made anyway so both roles do the same work.
        let _ = st.store.associations_of_user(end_user.unwrap_or(""))?;
        cands.clone()
    } else {
        let user = end_user.unwrap_or("");
        let assocs: HashMap<i64, Assoc> =
            st.store.associations_of_user(user)?.into_iter().collect();
        cands
            .iter()
            .filter(|e| assocs.contains_key(&e.device_row))
            .copied()
            .collect()
    };
    if visible.len() == 1 || (visible.len() > 1 && fp::active(fp::FIRST_OF_MANY_MATCHES)) {
        return show(st, journal, req, visible[0], end_user);
    }
    dummy_decrypt(st);
    if visible.len() > 1 {
        let mut matches = Vec::with_capacity(visible.len());
        for e in &visible {
            matches.push(Match {
                key_id: format_guid(e.key_id),
                device: st.store.device_name(e.device_row)?.unwrap_or_default(),
                users: st.store.users_of_device(e.device_row)?,
            });
        }
        audit(journal, &who(req, end_user), None, Some(typed), "ambiguous");
        return Ok(KeyAnswer::Ambiguous(matches));
    }
    let outcome = if cands.is_empty() {
        "not_found"
    } else {
        "denied"
    };
    audit(journal, &who(req, end_user), None, Some(typed), outcome);
    Ok(KeyAnswer::NotFound)
}

#[derive(Debug, Clone)]
pub struct TpmRequest {
    pub source: Source,
    pub requester: String,
    pub role: Role,
    pub computer: String,
    pub end_user: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TpmAnswer {
    Shown {
        device: String,
        lockout_auth_hex: String,
    },
    NotFound,
    RateLimited,
}

/// Help desk "Manage TPM": the device's current TPM lockout authorization. Like a key
/// request, the decision runs in the group-commit writer's batch and the value is shown only
/// after the transaction holding its audit row and its disclosure mark (the device must
/// rotate it) has committed: one transaction, or neither (API.md, "Audit").
pub async fn lookup_tpm(st: &AppState, req: TpmRequest) -> Result<TpmAnswer, AppError> {
    let limited = st
        .failure_limit_for(&req.requester)
        .map(|_| req.requester.clone());
    st.run_staged(limited.as_deref(), move |s| lookup_tpm_staged(s, &req))
        .await
}

/// Answers a Manage TPM request without writing: the answer and the entries (audit row,
/// and for a shown value its disclosure mark) to commit before it may be sent. Reads only.
pub fn lookup_tpm_staged(
    st: &Inner,
    req: &TpmRequest,
) -> Result<(TpmAnswer, Vec<JournalEntry>), AppError> {
    let end_user = req.end_user.as_deref().filter(|u| !u.is_empty());
    let who = Who {
        source: req.source,
        requester: &req.requester,
        end_user,
        key_type: "tpm_lockout",
        reason: &req.reason,
    };
    let mut journal = Vec::with_capacity(2);
    let answered = |mut journal: Vec<JournalEntry>, answer, outcome: &str, device: &str| {
        audit(&mut journal, &who, Some(device.to_string()), None, outcome);
        Ok((answer, journal))
    };
    if rate_limited(st, &req.requester)? {
        return answered(
            journal,
            TpmAnswer::RateLimited,
            "rate_limited",
            &req.computer,
        );
    }
    let Some(dev) = st.store.device_by_name(&req.computer)? else {
        return answered(journal, TpmAnswer::NotFound, "not_found", &req.computer);
    };
    if !req.role.is_advanced() {
        let user = end_user.unwrap_or("");
        let ok = st
            .store
            .associations_of_user(user)?
            .iter()
            .any(|(d, _)| *d == dev.row);
        if !ok {
            return answered(journal, TpmAnswer::NotFound, "denied", &dev.name);
        }
    }
    let Some(rec) = st.store.current_tpm_lockout(dev.row)? else {
        return answered(journal, TpmAnswer::NotFound, "not_found", &dev.name);
    };
    let plain = st.sealer.open(&dev.row.to_be_bytes(), &rec.sealed)?;
    journal.push(JournalEntry::TpmDisclosed { row: rec.row });
    let shown = TpmAnswer::Shown {
        device: dev.name.clone(),
        lockout_auth_hex: hex::encode(plain),
    };
    answered(journal, shown, "shown", &dev.name)
}
