//! JSON API: device agent, admin, help desk lookup.

use axum::extract::{FromRequest, Path, Query, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::config::SettingsPatch;
use crate::crypto::{random_token, token_hash};
use crate::error::AppError;
use crate::keyid::{format_guid, parse_guid, validate_recovery_password};
use crate::lookup::{self, KeyAnswer, Source};
use crate::store::{
    Account, AuditFilter, AuditRow, Device, EscrowResult, NewKey, Role, SignInKind, StoreError,
};
use crate::{store, AppState, Inner};

/// A JSON body whose rejections use the documented error body: 413 over the cap, 400 naming
/// the field that failed to deserialize (`recovery_password`, `keys[1].volume_id`, an
/// unknown field's name), `body` for what is not JSON at all or not sent as JSON.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .is_some_and(|v| v == "application/json" || v.ends_with("+json"));
        if !is_json {
            return Err(AppError::invalid(
                "body",
                "must be sent with Content-Type: application/json",
            ));
        }
        let bytes = match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(AppError::TooLarge)
            }
            Err(rej) => return Err(AppError::invalid("body", rej.body_text())),
        };
        parse_json(&bytes).map(JsonBody)
    }
}

/// Deserializes `bytes`, naming the failing field in the error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AppError> {
    // Every body is an object; serde would read an array as the fields in order and blame
    // a field named `[0]`.
    if bytes.trim_ascii_start().first().is_some_and(|b| *b != b'{') {
        return Err(AppError::invalid("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        let message = without_type_names(&inner.to_string());
        let path = e.path().to_string();
        let field = if !inner.is_data() {
            "body".to_string()
        } else if let Some(unknown) = unknown_field(&message) {
            // `deny_unknown_fields`: the path ends at the object, the name is in the message.
            match path.as_str() {
                "." | "" => unknown,
                p if p == unknown || p.ends_with(&format!(".{unknown}")) => path,
                parent => format!("{parent}.{unknown}"),
            }
        } else if path == "." || path.is_empty() {
            "body".to_string()
        } else {
            path
        };
        AppError::invalid(field, message)
    })?;
    de.end()
        .map_err(|e| AppError::invalid("body", e.to_string()))?;
    Ok(value)
}

/// serde's message with "expected struct KeyBody" (a Rust type name, meaningless to a
/// caller) said as "expected a JSON object".
fn without_type_names(message: &str) -> String {
    const STRUCT: &str = "expected struct ";
    let Some(at) = message.find(STRUCT) else {
        return message.to_string();
    };
    let rest = &message[at + STRUCT.len()..];
    let mut tail = rest.trim_start_matches(|c: char| c.is_alphanumeric() || c == '_');
    if let Some(end) = tail
        .strip_prefix(" with ")
        .and_then(|t| t.find(" elements").map(|e| &t[e + " elements".len()..]))
    {
        tail = end;
    }
    format!("{}expected a JSON object{tail}", &message[..at])
}

/// The name in serde's "unknown field `name`, expected ..." message.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    // The scheme name is case-insensitive (RFC 9110 §11.1): `bearer` works as `Bearer`.
    let (scheme, t) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("Bearer") {
        return None;
    }
    let t = t.trim();
    (!t.is_empty() && t.len() <= 256).then(|| t.to_string())
}

async fn agent(st: &AppState, headers: &HeaderMap) -> Result<Device, AppError> {
    let t = bearer(headers)
        .ok_or_else(|| AppError::Unauthenticated("device credential required".into()))?;
    let h = token_hash(&t);
    st.run(move |s| Ok(s.store.device_by_credential(&h)?))
        .await?
        .ok_or_else(|| AppError::Unauthenticated("unknown device credential".into()))
}

async fn account(st: &AppState, headers: &HeaderMap) -> Result<Account, AppError> {
    let t =
        bearer(headers).ok_or_else(|| AppError::Unauthenticated("API token required".into()))?;
    // The store keeps API tokens in memory: no blocking thread needed.
    st.store
        .account_by_api_token(&token_hash(&t))?
        .ok_or_else(|| AppError::Unauthenticated("unknown API token".into()))
}

async fn admin(st: &AppState, headers: &HeaderMap) -> Result<Account, AppError> {
    let a = account(st, headers).await?;
    if a.role != Role::Admin {
        return Err(AppError::Forbidden("admin role required".into()));
    }
    Ok(a)
}

fn required<'a>(v: &'a Option<String>, field: &str) -> Result<&'a str, AppError> {
    match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(AppError::invalid(field, "is required")),
    }
}

/// A user or device name: 1-`max` chars, no control characters.
pub fn validate_name(v: &str, field: &str, max: usize) -> Result<String, AppError> {
    let v = v.trim();
    if v.is_empty() {
        return Err(AppError::invalid(field, "is required"));
    }
    if v.chars().count() > max {
        return Err(AppError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(AppError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(v.to_string())
}

pub fn validate_device_name(v: &str, field: &str) -> Result<String, AppError> {
    let v = validate_name(v, field, 64)?;
    if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(AppError::invalid(
            field,
            "may contain only letters, digits, '-', '_' and '.'",
        ));
    }
    Ok(v)
}

#[derive(Debug, Deserialize)]
pub struct EnrollBody {
    enrollment_token: Option<String>,
    device_name: Option<String>,
}

pub async fn enroll(
    axum::extract::State(st): axum::extract::State<AppState>,
    JsonBody(b): JsonBody<EnrollBody>,
) -> Result<Response, AppError> {
    let token = required(&b.enrollment_token, "enrollment_token")?.to_string();
    let name = validate_device_name(required(&b.device_name, "device_name")?, "device_name")?;
    let credential = random_token("dev");
    let ch = token_hash(&credential);
    let dev = st
        .run(move |s| {
            if !s.store.use_enrollment_token(&token_hash(&token))? {
                return Err(AppError::Unauthenticated(
                    "unknown or already used enrollment token".into(),
                ));
            }
            Ok(s.store.enroll_device(&name, &ch)?)
        })
        .await?;
    Ok(Json(json!({"device_id": dev.device_id, "credential": credential})).into_response())
}

#[derive(Debug, Deserialize)]
pub struct KeyBody {
    volume_id: Option<String>,
    key_protector_id: Option<String>,
    recovery_password: Option<String>,
    protector_type: Option<String>,
}

/// Validates and seals one escrow entry; `prefix` names bulk entries (`keys[3].`).
pub fn seal_key(st: &Inner, b: &KeyBody, prefix: &str) -> Result<NewKey, AppError> {
    let f = |n: &str| format!("{prefix}{n}");
    let volume_id = parse_guid(required(&b.volume_id, &f("volume_id"))?)
        .map_err(|e| AppError::invalid(f("volume_id"), e.to_string()))?;
    let key_id = parse_guid(required(&b.key_protector_id, &f("key_protector_id"))?)
        .map_err(|e| AppError::invalid(f("key_protector_id"), e.to_string()))?;
    let pw = validate_recovery_password(required(&b.recovery_password, &f("recovery_password"))?)
        .map_err(|e| AppError::invalid(f("recovery_password"), e.to_string()))?;
    let pt = required(&b.protector_type, &f("protector_type"))?;
    if pt != "recovery_password" {
        return Err(AppError::invalid(
            f("protector_type"),
            "must be \"recovery_password\"",
        ));
    }
    let aad = key_id.to_be_bytes();
    Ok(NewKey {
        key_id,
        volume_id,
        protector_type: pt.to_string(),
        sealed: st.sealer.seal(&aad, pw.as_bytes())?,
        fingerprint: st.sealer.fingerprint(&aad, pw.as_bytes()),
    })
}

fn escrow(
    s: &Inner,
    device_row: i64,
    keys: &[NewKey],
    bulk: bool,
) -> Result<Vec<EscrowResult>, AppError> {
    let res = s.store.escrow_keys(device_row, keys).map_err(|e| match e {
        StoreError::Conflict { index, message } => AppError::Conflict {
            field: Some(if bulk {
                format!("keys[{index}].key_protector_id")
            } else {
                "key_protector_id".into()
            }),
            message,
        },
        other => other.into(),
    })?;
    s.index.insert_many(res.iter().filter_map(|r| match r {
        EscrowResult::Created(e) => Some(*e),
        EscrowResult::Existing => None,
    }));
    Ok(res)
}

pub async fn escrow_one(
    axum::extract::State(st): axum::extract::State<AppState>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<KeyBody>,
) -> Result<Response, AppError> {
    let dev = agent(&st, &headers).await?;
    let res = st
        .run(move |s| {
            let k = seal_key(s, &b, "")?;
            let id = k.key_id;
            Ok((escrow(s, dev.row, &[k], false)?, id))
        })
        .await?;
    let created = matches!(res.0.first(), Some(EscrowResult::Created(_)));
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"key_protector_id": format_guid(res.1), "created": created})),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct BulkBody {
    keys: Option<Vec<KeyBody>>,
}

pub const MAX_BULK: usize = 100_000;

pub async fn escrow_bulk(
    axum::extract::State(st): axum::extract::State<AppState>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<BulkBody>,
) -> Result<Response, AppError> {
    let dev = agent(&st, &headers).await?;
    let keys = b
        .keys
        .ok_or_else(|| AppError::invalid("keys", "is required"))?;
    if keys.len() > MAX_BULK {
        return Err(AppError::invalid(
            "keys",
            format!("at most {MAX_BULK} keys per request"),
        ));
    }
    let res = st
        .run(move |s| {
            let sealed = keys
                .iter()
                .enumerate()
                .map(|(i, k)| seal_key(s, k, &format!("keys[{i}].")))
                .collect::<Result<Vec<_>, _>>()?;
            escrow(s, dev.row, &sealed, true)
        })
        .await?;
    let created = res
        .iter()
        .filter(|r| matches!(r, EscrowResult::Created(_)))
        .count();
    Ok(Json(json!({"created": created, "existing": res.len() - created})).into_response())
}

#[derive(Debug, Deserialize)]
pub struct SignInBody {
    user: Option<String>,
    kind: Option<String>,
}

pub async fn sign_in(
    axum::extract::State(st): axum::extract::State<AppState>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<SignInBody>,
) -> Result<Response, AppError> {
    let dev = agent(&st, &headers).await?;
    let user = validate_name(required(&b.user, "user")?, "user", 256)?;
    let kind = match required(&b.kind, "kind")? {
        "local" => SignInKind::Local,
        "remote" => SignInKind::Remote,
        _ => return Err(AppError::invalid("kind", "must be \"local\" or \"remote\"")),
    };
    st.run(move |s| Ok(s.store.record_sign_in(dev.row, &user, kind)?))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn check_in(
    axum::extract::State(st): axum::extract::State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let dev = agent(&st, &headers).await?;
    let (keys, tpm) = st
        .run(move |s| {
            Ok((
                s.store.keys_to_rotate(dev.row)?,
                s.store.tpm_rotation_pending(dev.row)?,
            ))
        })
        .await?;
    let keys: Vec<String> = keys.into_iter().map(format_guid).collect();
    Ok(Json(json!({"rotate_keys": keys, "rotate_tpm_lockout": tpm})).into_response())
}

#[derive(Debug, Deserialize)]
pub struct RotationBody {
    old_key_protector_id: Option<String>,
    new_key_protector_id: Option<String>,
}

pub async fn rotation(
    axum::extract::State(st): axum::extract::State<AppState>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<RotationBody>,
) -> Result<Response, AppError> {
    let dev = agent(&st, &headers).await?;
    let old = parse_guid(required(&b.old_key_protector_id, "old_key_protector_id")?)
        .map_err(|e| AppError::invalid("old_key_protector_id", e.to_string()))?;
    let new = parse_guid(required(&b.new_key_protector_id, "new_key_protector_id")?)
        .map_err(|e| AppError::invalid("new_key_protector_id", e.to_string()))?;
    st.run(move |s| {
        s.store.supersede(dev.row, old, new)?;
        s.index.supersede(old);
        Ok(())
    })
    .await?;
    Ok(Json(json!({"superseded": format_guid(old), "current": format_guid(new)})).into_response())
}

#[derive(Debug, Deserialize)]
pub struct TpmBody {
    lockout_auth: Option<String>,
}

pub async fn tpm_lockout(
    axum::extract::State(st): axum::extract::State<AppState>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<TpmBody>,
) -> Result<Response, AppError> {
    let dev = agent(&st, &headers).await?;
    let raw = hex::decode(required(&b.lockout_auth, "lockout_auth")?)
        .map_err(|_| AppError::invalid("lockout_auth", "must be hexadecimal"))?;
    if raw.is_empty() || raw.len() > 128 {
        return Err(AppError::invalid("lockout_auth", "must be 1 to 128 bytes"));
    }
    st.run(move |s| {
        let sealed = s.sealer.seal(&dev.row.to_be_bytes(), &raw)?;
        Ok(s.store.put_tpm_lockout(dev.row, &sealed)?)
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
pub struct AccountBody {
    username: Option<String>,
    password: Option<String>,
    role: Option<String>,
}

/// Validates and creates an account (shared by the admin API and the admin pages).
pub async fn do_create_account(
    st: &AppState,
    username: Option<String>,
    password: Option<String>,
    role: Option<String>,
) -> Result<Account, AppError> {
    let username = validate_name(required(&username, "username")?, "username", 128)?;
    let password = password.unwrap_or_default();
    let n = password.chars().count();
    if !(8..=1024).contains(&n) {
        return Err(AppError::invalid(
            "password",
            "must be 8 to 1024 characters",
        ));
    }
    let role = Role::parse(required(&role, "role")?).ok_or_else(|| {
        AppError::invalid("role", "must be user, helpdesk, advanced_helpdesk or admin")
    })?;
    st.run(move |s| {
        let hash = s.hasher.hash(&password)?;
        s.store
            .create_account(&username, &hash, role)
            .map_err(|e| match e {
                StoreError::Conflict { message, .. } => AppError::Conflict {
                    field: Some("username".into()),
                    message,
                },
                o => o.into(),
            })
    })
    .await
}

pub async fn create_account(
    axum::extract::State(st): axum::extract::State<AppState>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<AccountBody>,
) -> Result<Response, AppError> {
    admin(&st, &headers).await?;
    let a = do_create_account(&st, b.username, b.password, b.role).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"username": a.username, "role": a.role.as_str()})),
    )
        .into_response())
}

pub async fn create_api_token(
    axum::extract::State(st): axum::extract::State<AppState>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> Result<Response, AppError> {
    admin(&st, &headers).await?;
    let token = random_token("api");
    let h = token_hash(&token);
    st.run(move |s| {
        let a = s
            .store
            .account_by_name(&username)?
            .ok_or_else(|| AppError::NotFound {
                field: Some("username".into()),
                message: "no such account".into(),
            })?;
        Ok(s.store.add_api_token(a.id, &h)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!({"token": token}))).into_response())
}

pub async fn new_enrollment_token(st: &AppState) -> Result<String, AppError> {
    let token = random_token("enr");
    let h = token_hash(&token);
    st.run(move |s| Ok(s.store.add_enrollment_token(&h)?))
        .await?;
    Ok(token)
}

pub async fn create_enrollment_token(
    axum::extract::State(st): axum::extract::State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    admin(&st, &headers).await?;
    let token = new_enrollment_token(&st).await?;
    Ok((StatusCode::CREATED, Json(json!({"token": token}))).into_response())
}

pub async fn get_settings(
    axum::extract::State(st): axum::extract::State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    admin(&st, &headers).await?;
    Ok(Json(st.settings()).into_response())
}

/// Validates, stores and applies a settings patch.
pub async fn apply_settings(
    st: &AppState,
    p: SettingsPatch,
) -> Result<crate::config::Settings, AppError> {
    let new = st
        .settings()
        .apply(&p)
        .map_err(|(f, m)| AppError::invalid(f, m))?;
    let json = serde_json::to_string(&new).map_err(|e| AppError::Internal(e.to_string()))?;
    st.run(move |s| Ok(s.store.save_settings(&json)?)).await?;
    st.set_settings(new.clone());
    Ok(new)
}

pub async fn put_settings(
    axum::extract::State(st): axum::extract::State<AppState>,
    headers: HeaderMap,
    JsonBody(p): JsonBody<SettingsPatch>,
) -> Result<Response, AppError> {
    admin(&st, &headers).await?;
    Ok(Json(apply_settings(&st, p).await?).into_response())
}

#[derive(Debug, Deserialize, Default)]
pub struct AuditQuery {
    pub since: Option<String>,
    pub source: Option<String>,
    pub outcome: Option<String>,
    pub user: Option<String>,
    pub device: Option<String>,
    pub format: Option<String>,
}

pub const OUTCOMES: [&str; 8] = [
    "shown",
    "denied",
    "not_found",
    "ambiguous",
    "rate_limited",
    "expired_session",
    "not_eligible",
    "sign_in_throttled",
];

fn nonempty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

/// [`audit_rows`] of a query as extracted (a malformed one is the `query` error).
pub async fn audit_rows_of_query(
    st: &AppState,
    q: AuditQueryInput,
) -> Result<Vec<AuditRow>, AppError> {
    audit_rows(st, audit_query(q)?).await
}

/// Validates audit filters and returns the matching rows (format checked by the caller).
pub async fn audit_rows(st: &AppState, q: AuditQuery) -> Result<Vec<AuditRow>, AppError> {
    let since_us = match nonempty(q.since) {
        Some(s) => Some(store::unix_us_ceil(
            time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                .map_err(|_| AppError::invalid("since", "must be an RFC 3339 time"))?,
        )),
        None => None,
    };
    let source = nonempty(q.source);
    if let Some(s) = &source {
        if !["self_service", "help_desk", "api"].contains(&s.as_str()) {
            return Err(AppError::invalid(
                "source",
                "must be self_service, help_desk or api",
            ));
        }
    }
    let outcome = nonempty(q.outcome);
    if let Some(o) = &outcome {
        if !OUTCOMES.contains(&o.as_str()) {
            return Err(AppError::invalid("outcome", "is not a known outcome"));
        }
    }
    let f = AuditFilter {
        since_us,
        source,
        outcome,
        user: nonempty(q.user),
        device: nonempty(q.device),
    };
    st.run(move |s| Ok(s.store.query_audit(&f)?)).await
}

fn csv_field(v: &str) -> String {
    // Quote every field; a leading formula character (OWASP's list: `=`, `+`, `-`, `@`, tab,
    // carriage return) is neutralised for spreadsheet users.
    let v = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_string()
    };
    format!("\"{}\"", v.replace('"', "\"\""))
}

pub fn audit_csv(rows: &[AuditRow]) -> String {
    let mut out =
        String::from("id,time,source,requester,end_user,device,key_id,key_type,reason,outcome\n");
    for r in rows {
        let o = |v: &Option<String>| csv_field(v.as_deref().unwrap_or(""));
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            r.id,
            csv_field(&r.time),
            csv_field(&r.source),
            csv_field(&r.requester),
            o(&r.end_user),
            o(&r.device),
            o(&r.key_id),
            o(&r.key_type),
            o(&r.reason),
            csv_field(&r.outcome)
        ));
    }
    out
}

/// Renders audit rows in the requested format.
pub fn audit_response(rows: Vec<AuditRow>, format: Option<&str>) -> Result<Response, AppError> {
    match format.unwrap_or("json") {
        "json" | "" => Ok(Json(json!({"rows": rows})).into_response()),
        "csv" => Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            audit_csv(&rows),
        )
            .into_response()),
        _ => Err(AppError::invalid("format", "must be json or csv")),
    }
}

/// The audit filters as extracted from a query string, before [`audit_query`] reads them.
pub type AuditQueryInput = Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>;

/// The audit filters; a malformed query (e.g. a filter given twice) is a `query` error in
/// the documented shape, on the API and the admin site alike.
pub fn audit_query(q: AuditQueryInput) -> Result<AuditQuery, AppError> {
    q.map(|Query(q)| q)
        .map_err(|rej| AppError::invalid("query", rej.body_text()))
}

pub async fn get_audit(
    axum::extract::State(st): axum::extract::State<AppState>,
    headers: HeaderMap,
    q: AuditQueryInput,
) -> Result<Response, AppError> {
    admin(&st, &headers).await?;
    let q = audit_query(q)?;
    let format = q.format.clone();
    if let Some(f) = format.as_deref() {
        if !["json", "csv", ""].contains(&f) {
            return Err(AppError::invalid("format", "must be json or csv"));
        }
    }
    let rows = audit_rows(&st, q).await?;
    audit_response(rows, format.as_deref())
}

#[derive(Debug, Deserialize)]
pub struct LookupBody {
    key_id: Option<String>,
    user: Option<String>,
    reason: Option<String>,
}

pub async fn helpdesk_lookup(
    axum::extract::State(st): axum::extract::State<AppState>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<LookupBody>,
) -> Result<Response, AppError> {
    let acct = account(&st, &headers).await?;
    if !acct.role.is_helpdesk() {
        return Err(AppError::Forbidden("a help desk role is required".into()));
    }
    let req = lookup::helpdesk_key_request(
        Source::Api,
        &acct.username,
        acct.role,
        b.key_id.as_deref().unwrap_or(""),
        b.user.as_deref().unwrap_or(""),
        "user",
        b.reason.as_deref().unwrap_or(""),
    )?;
    let ans = lookup::lookup_key(&st, req).await?;
    match ans {
        KeyAnswer::Shown { key_id, device, password } => Ok(Json(
            json!({"outcome": "shown", "key_id": key_id, "device": device, "recovery_password": password}),
        )
        .into_response()),
        KeyAnswer::Ambiguous(m) => Ok(Json(json!({"outcome": "ambiguous", "matches": m})).into_response()),
        KeyAnswer::RateLimited => Err(AppError::RateLimited),
        KeyAnswer::NotFound | KeyAnswer::Foreign | KeyAnswer::NotEligible => Err(AppError::NotFound {
            field: Some("key_id".into()),
            message: "no matching recovery key".into(),
        }),
    }
}
