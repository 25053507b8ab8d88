//! The HTML sites: `/SelfService`, `/HelpDesk`, `/Admin`. Server-side sessions with a
//! per-session CSRF token on every form; inactivity expiry is enforced here on every request.

use std::collections::HashMap;
use std::time::Duration;

use askama::Template;
use axum::extract::{Form, FromRequest, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use subtle::ConstantTimeEq;

use crate::api::{self, validate_device_name};
use crate::config::{Settings, SettingsPatch};
use crate::error::AppError;
use crate::fp;
use crate::i18n::{self, reason_label, tr, tr1};
use crate::keyid::parse_key_id_input;
use crate::lookup::{
    self, KeyAnswer, KeyRequest, Match, Source, TpmAnswer, TpmRequest, HELPDESK_REASONS,
    SELF_SERVICE_REASONS,
};
use crate::session::{Session, SessionLookup, SessionUser};
use crate::store::{AuditRow, Role};
use crate::AppState;

pub const COOKIE: &str = "portal_session";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    SelfService,
    HelpDesk,
    Admin,
}

impl Site {
    fn path(self) -> &'static str {
        match self {
            Site::SelfService => "SelfService",
            Site::HelpDesk => "HelpDesk",
            Site::Admin => "Admin",
        }
    }
    /// The site a request path is under (`/HelpDesk/key` → help desk); self-service else.
    fn of_path(path: &str) -> Site {
        let first = path.split('/').nth(1);
        [Site::HelpDesk, Site::Admin]
            .into_iter()
            .find(|site| first == Some(site.path()))
            .unwrap_or(Site::SelfService)
    }
    /// The site's name in the request's language.
    fn title(self) -> String {
        tr(match self {
            Site::SelfService => "site-selfservice",
            Site::HelpDesk => "site-helpdesk",
            Site::Admin => "site-admin",
        })
    }
    fn allows(self, role: Role) -> bool {
        match self {
            Site::SelfService => true,
            Site::HelpDesk => role.is_helpdesk(),
            Site::Admin => role == Role::Admin,
        }
    }
    fn source(self) -> Source {
        match self {
            Site::SelfService => Source::SelfService,
            _ => Source::HelpDesk,
        }
    }
    fn home(self) -> &'static str {
        match self {
            Site::SelfService => "/SelfService/notice",
            Site::HelpDesk => "/HelpDesk",
            Site::Admin => "/Admin",
        }
    }
}

pub struct PageCtx {
    company: String,
    title: String,
    site: &'static str,
    csrf: String,
    signed_in: bool,
    idle_secs: u64,
    warning_secs: u64,
    /// `<html lang>`: the request's language (see `i18n`).
    lang: &'static str,
    /// Where the language switch links point.
    switch_path: String,
}

impl PageCtx {
    /// A message in the page's language (templates call `page.t("id")`).
    fn t(&self, id: &str) -> String {
        tr(id)
    }

    /// The language switch: (tag, its own name, is it the page's language).
    fn languages(&self) -> Vec<(&'static str, String, bool)> {
        i18n::Lang::ALL
            .iter()
            .map(|l| {
                (
                    l.tag(),
                    i18n::text(*l, "lang-name", None),
                    l.tag() == self.lang,
                )
            })
            .collect()
    }
}

fn page(st: &AppState, site: Site, title: &str, s: Option<&Session>) -> PageCtx {
    let set = st.settings();
    PageCtx {
        company: set.company_name,
        title: title.to_string(),
        site: site.path(),
        csrf: s.map(|s| s.csrf.clone()).unwrap_or_default(),
        signed_in: s.is_some_and(|s| s.user.is_some()),
        idle_secs: set.idle_timeout_secs,
        warning_secs: set.warning_secs,
        lang: i18n::current().tag(),
        switch_path: i18n::switch_path(),
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginT {
    page: PageCtx,
    error: Option<String>,
    username: String,
}

#[derive(Template)]
#[template(path = "notice.html")]
struct NoticeT {
    page: PageCtx,
    notice_text: String,
}

pub struct HelpdeskMsg {
    text: String,
    url: String,
}

pub struct ShownKey {
    key_id: String,
    device: String,
    password: String,
}

#[derive(Template)]
#[template(path = "selfservice.html")]
struct SelfT {
    page: PageCtx,
    error: Option<String>,
    matches: bool,
    helpdesk: Option<HelpdeskMsg>,
    key: Option<ShownKey>,
    key_id: String,
    /// Which field `error` is about (`key_id`, `reason`), "" for the whole form: the
    /// message is placed next to that field and the field points at it.
    error_field: &'static str,
    /// (value, shown text, selected): values are the product's English labels.
    reasons: Vec<(&'static str, String, bool)>,
}

#[derive(Template)]
#[template(path = "helpdesk.html")]
struct HelpT {
    page: PageCtx,
    error: Option<String>,
    matches: Vec<Match>,
    key: Option<ShownKey>,
    end_user: String,
    key_id: String,
    reasons: Vec<(&'static str, bool)>,
}

#[derive(Template)]
#[template(path = "tpm.html")]
struct TpmT {
    page: PageCtx,
    error: Option<String>,
    lockout: Option<String>,
    device: String,
    end_user: String,
    reasons: Vec<(&'static str, bool)>,
}

#[derive(Template)]
#[template(path = "expired.html")]
struct ExpiredT {
    page: PageCtx,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessageT {
    page: PageCtx,
    message: String,
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminT {
    page: PageCtx,
    error: Option<String>,
    info: Option<String>,
    enrollment_token: Option<String>,
    s: Settings,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditT {
    page: PageCtx,
    error: Option<String>,
    rows: Vec<AuditRow>,
    query: String,
}

fn html(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => AppError::Internal(format!("template: {e}")).into_response(),
    }
}

fn reasons(list: &'static [&'static str], chosen: &str) -> Vec<(&'static str, bool)> {
    list.iter().map(|r| (*r, *r == chosen)).collect()
}

/// Self-service reasons with their shown text in the request's language.
fn self_reasons(chosen: &str) -> Vec<(&'static str, String, bool)> {
    SELF_SERVICE_REASONS
        .iter()
        .map(|r| (*r, reason_label(r), *r == chosen))
        .collect()
}

/// The session id from the request's `portal_session` cookie, if it has a plausible one.
fn session_id(jar: &CookieJar) -> Option<String> {
    jar.get(COOKIE)
        .map(Cookie::value)
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
}

/// `resp` with the session cookie set to `id` (`Secure` when the portal serves TLS).
fn with_session_cookie(st: &AppState, id: String, resp: Response) -> Response {
    let c = Cookie::build((COOKIE, id))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(st.config.secure_cookies);
    (CookieJar::new().add(c), resp).into_response()
}

fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

fn max_idle(st: &AppState) -> Duration {
    let s = st.settings();
    Duration::from_secs(s.idle_timeout_secs.saturating_add(s.warning_secs))
}

fn message(st: &AppState, site: Site, status: StatusCode, msg: &str) -> Response {
    html(
        status,
        &MessageT {
            page: page(st, site, &site.title(), None),
            message: msg.to_string(),
        },
    )
}

fn expired_page(st: &AppState, site: Site, status: StatusCode) -> Response {
    html(
        status,
        &ExpiredT {
            page: page(st, site, &tr("title-expired"), None),
        },
    )
}

/// Form body whose rejections are HTML-friendly (413 stays 413).
pub struct FormData(pub HashMap<String, String>);

impl FromRequest<AppState> for FormData {
    type Rejection = Response;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let site = Site::of_path(req.uri().path());
        match Form::<HashMap<String, String>>::from_request(req, state).await {
            Ok(Form(m)) => Ok(FormData(m)),
            // The site's page with `id="error"`, like every other refused form (API.md §2).
            Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(message(
                state,
                site,
                StatusCode::PAYLOAD_TOO_LARGE,
                &tr("err-too-large"),
            )),
            // No form body (none at all, or not `application/x-www-form-urlencoded`) carries
            // no `csrf_token`: the handler answers it as every POST without one, 403 with
            // the page's `id="error"` (API.md §2), not a bare text 400.
            Err(rej) => {
                tracing::debug!(rejection = %rej.body_text(), "form body not read");
                Ok(FormData(HashMap::new()))
            }
        }
    }
}

impl FormData {
    fn get(&self, k: &str) -> &str {
        self.0.get(k).map(String::as_str).unwrap_or("")
    }
}

fn csrf_ok(s: &Session, f: &FormData) -> bool {
    let t = f.get("csrf_token");
    !t.is_empty() && bool::from(t.as_bytes().ct_eq(s.csrf.as_bytes()))
}

/// Runs a session call (a store read and write: the writer connection on SQLite, round trips
/// on PostgreSQL) on the blocking pool, like every other store call, never on an async
/// worker.
async fn sessions<T: Send + 'static>(
    st: &AppState,
    f: impl FnOnce(&crate::session::Sessions) -> T + Send + 'static,
) -> Result<T, Response> {
    st.run(move |i| Ok(f(&i.sessions)))
        .await
        .map_err(|e: AppError| e.into_response())
}

/// Resolves the signed-in session for a page, or the response to send instead.
/// `key_reason` is set for key requests, so an expired session is audited.
async fn gate(
    st: &AppState,
    jar: &CookieJar,
    site: Site,
    key_reason: Option<&str>,
) -> Result<Session, Response> {
    let login = format!("/{}/login", site.path());
    let Some(id) = session_id(jar) else {
        return Err(redirect(&login));
    };
    let enforce = !fp::active(fp::NO_EXPIRY);
    let idle = max_idle(st);
    match sessions(st, move |s| s.touch(&id, idle, enforce)).await? {
        SessionLookup::Missing => Err(redirect(&login)),
        SessionLookup::Expired(s) => {
            if let (Some(reason), Some(u)) = (key_reason, s.user.as_ref()) {
                let user = u.username.clone();
                let reason = reason.to_string();
                let src = site.source();
                if let Err(e) = st
                    .run(move |i| lookup::audit_expired(i, src, &user, Some(&reason)))
                    .await
                {
                    return Err(e.into_response());
                }
            }
            Err(expired_page(st, site, StatusCode::UNAUTHORIZED))
        }
        SessionLookup::Live(s) => match &s.user {
            None => Err(redirect(&login)),
            Some(u) if !site.allows(u.role) => {
                Err(message(st, site, StatusCode::FORBIDDEN, &tr("err-role")))
            }
            Some(_) => Ok(s),
        },
    }
}

// ---------- sign-in, keepalive, expiry, sign-out (all sites) ----------

async fn login_get(st: AppState, site: Site) -> Response {
    let idle = max_idle(&st);
    let s = match sessions(&st, move |s| s.create(None, idle)).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let r = html(
        StatusCode::OK,
        &LoginT {
            page: page(&st, site, &site.title(), Some(&s)),
            error: None,
            username: String::new(),
        },
    );
    with_session_cookie(&st, s.id, r)
}

/// The client's address (None when served without connect info, e.g. a test's `oneshot`).
pub struct Peer(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// Audits a sign-in refused by the throttle: requester = the name typed, reason = the
/// address it came from.
fn throttled_row(site: Site, username: &str, peer: Option<std::net::IpAddr>) -> AuditRow {
    AuditRow {
        id: 0,
        time: crate::store::now_rfc3339().0,
        source: site.source().as_str().into(),
        requester: username.into(),
        end_user: None,
        device: None,
        key_id: None,
        key_type: None,
        reason: Some(match peer {
            Some(ip) => format!("sign-in from {ip}"),
            None => "sign-in".into(),
        }),
        outcome: "sign_in_throttled".into(),
    }
}

async fn login_post(
    st: AppState,
    jar: CookieJar,
    site: Site,
    Peer(peer): Peer,
    f: FormData,
) -> Response {
    let Some(id) = session_id(&jar) else {
        return message(&st, site, StatusCode::FORBIDDEN, &tr("err-csrf-login"));
    };
    let idle = max_idle(&st);
    let touched = id.clone();
    let s = match sessions(&st, move |s| s.touch(&touched, idle, false)).await {
        Ok(SessionLookup::Live(s)) => s,
        Err(r) => return r,
        _ => return message(&st, site, StatusCode::FORBIDDEN, &tr("err-csrf-login")),
    };
    if !csrf_ok(&s, &f) {
        return message(&st, site, StatusCode::FORBIDDEN, &tr("err-csrf-login"));
    }
    let username = f.get("username").trim().to_string();
    let password = f.get("password").to_string();
    let fail = |status: StatusCode, msg: String, username: String| {
        html(
            status,
            &LoginT {
                page: page(&st, site, &site.title(), Some(&s)),
                error: Some(msg),
                username,
            },
        )
    };
    if username.is_empty() || username.chars().count() > 128 {
        return fail(StatusCode::BAD_REQUEST, tr("err-username"), String::new());
    }
    if password.is_empty() || password.chars().count() > 1024 {
        return fail(StatusCode::BAD_REQUEST, tr("err-password"), username);
    }
    let now = st.config.clock.now();
    if let Err(wait) = st.sign_in_throttle.check(&username, peer, now) {
        let row = throttled_row(site, &username, peer);
        if let Err(e) = st.run(move |i| Ok(i.store.append_audit(&row)?)).await {
            return e.into_response();
        }
        // Whole seconds, rounded up: a client that waits this long is not refused again.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut r = fail(
            StatusCode::TOO_MANY_REQUESTS,
            tr1("err-sign-in-throttled", "seconds", &secs.to_string()),
            username,
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        return r;
    }
    let u2 = username.clone();
    let res = st
        .run(move |i| {
            let acct = i.store.account_by_name(&u2)?;
            let ok = i
                .hasher
                .verify(&password, acct.as_ref().map(|a| a.password_hash.as_str()));
            Ok(if ok { acct } else { None })
        })
        .await;
    let acct = match res {
        Ok(Some(a)) => a,
        Ok(None) => {
            st.sign_in_throttle.failed(&username, peer, now);
            return fail(StatusCode::UNAUTHORIZED, tr("err-credentials"), username);
        }
        Err(e) => return e.into_response(),
    };
    st.sign_in_throttle.succeeded(&username);
    if !site.allows(acct.role) {
        return fail(StatusCode::FORBIDDEN, tr("err-role"), username);
    }
    // A fresh session id at sign-in (no fixation).
    let user = SessionUser {
        username: acct.username,
        role: acct.role,
    };
    let idle = max_idle(&st);
    let new = match sessions(&st, move |s| {
        s.remove(&id);
        s.create(Some(user), idle)
    })
    .await
    {
        Ok(new) => new,
        Err(r) => return r,
    };
    with_session_cookie(&st, new.id, redirect(site.home()))
}

async fn keepalive(st: AppState, jar: CookieJar, site: Site, f: FormData) -> Response {
    // Called by the page's script: "no session" is 401 (expired), never a redirect.
    let enforce = !fp::active(fp::NO_EXPIRY);
    let Some(id) = session_id(&jar) else {
        return expired_page(&st, site, StatusCode::UNAUTHORIZED);
    };
    let idle = max_idle(&st);
    let s = match sessions(&st, move |s| s.touch(&id, idle, enforce)).await {
        Ok(SessionLookup::Live(s)) if s.user.is_some() => s,
        Err(r) => return r,
        _ => return expired_page(&st, site, StatusCode::UNAUTHORIZED),
    };
    if !csrf_ok(&s, &f) {
        return message(&st, site, StatusCode::FORBIDDEN, &tr("err-csrf"));
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn expired_get(st: AppState, jar: CookieJar, site: Site) -> Response {
    if let Some(id) = session_id(&jar) {
        if let Err(r) = sessions(&st, move |s| s.remove(&id)).await {
            return r;
        }
    }
    expired_page(&st, site, StatusCode::OK)
}

async fn logout(st: AppState, jar: CookieJar, site: Site, f: FormData) -> Response {
    let s = match gate(&st, &jar, site, None).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !csrf_ok(&s, &f) {
        return message(&st, site, StatusCode::FORBIDDEN, &tr("err-csrf"));
    }
    let id = s.id;
    if let Err(r) = sessions(&st, move |s| s.remove(&id)).await {
        return r;
    }
    redirect(&format!("/{}/login", site.path()))
}

// ---------- self-service ----------

fn self_page(st: &AppState, s: &Session) -> SelfT {
    SelfT {
        page: page(st, Site::SelfService, &tr("title-get-key"), Some(s)),
        error: None,
        matches: false,
        helpdesk: None,
        key: None,
        key_id: String::new(),
        error_field: "",
        reasons: self_reasons(""),
    }
}

async fn notice_get(State(st): State<AppState>, jar: CookieJar) -> Response {
    let s = match gate(&st, &jar, Site::SelfService, None).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    html(
        StatusCode::OK,
        &NoticeT {
            page: page(&st, Site::SelfService, &tr("title-notice"), Some(&s)),
            notice_text: st.settings().notice_for(i18n::current().tag()).to_string(),
        },
    )
}

async fn notice_post(State(st): State<AppState>, jar: CookieJar, f: FormData) -> Response {
    let s = match gate(&st, &jar, Site::SelfService, None).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !csrf_ok(&s, &f) {
        return message(
            &st,
            Site::SelfService,
            StatusCode::FORBIDDEN,
            &tr("err-csrf"),
        );
    }
    let id = s.id;
    if let Err(r) = sessions(&st, move |s| s.update(&id, |s| s.notice_accepted = true)).await {
        return r;
    }
    redirect("/SelfService")
}

async fn self_get(State(st): State<AppState>, jar: CookieJar) -> Response {
    let s = match gate(&st, &jar, Site::SelfService, None).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !s.notice_accepted {
        return redirect("/SelfService/notice");
    }
    html(StatusCode::OK, &self_page(&st, &s))
}

async fn self_key(State(st): State<AppState>, jar: CookieJar, f: FormData) -> Response {
    // Surrounding spaces are ignored, as on the help desk surfaces.
    let reason = f.get("reason").trim().to_string();
    let s = match gate(&st, &jar, Site::SelfService, Some(&reason)).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if !csrf_ok(&s, &f) {
        return message(
            &st,
            Site::SelfService,
            StatusCode::FORBIDDEN,
            &tr("err-csrf"),
        );
    }
    if !s.notice_accepted {
        return redirect("/SelfService/notice");
    }
    let Some(user) = s.user.clone() else {
        return redirect("/SelfService/login");
    };
    let mut t = self_page(&st, &s);
    let typed = f.get("key_id").to_string();
    t.reasons = self_reasons(&reason);
    let key = match parse_key_id_input(&typed) {
        Ok(k) => k,
        Err(e) => {
            t.error = Some(tr1("err-key-id", "detail", &e.to_string()));
            t.error_field = "key_id";
            return html(StatusCode::BAD_REQUEST, &t);
        }
    };
    if !SELF_SERVICE_REASONS.contains(&reason.as_str()) {
        t.error = Some(tr("err-reason"));
        t.error_field = "reason";
        t.key_id = typed.chars().take(64).collect();
        return html(StatusCode::BAD_REQUEST, &t);
    }
    let req = KeyRequest {
        source: Source::SelfService,
        requester: user.username,
        role: user.role,
        key,
        end_user: None,
        reason,
    };
    let ans = match lookup::lookup_key(&st, req).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let status = match ans {
        KeyAnswer::Shown {
            key_id,
            device,
            password,
        } => {
            t.key = Some(ShownKey {
                key_id,
                device,
                password,
            });
            StatusCode::OK
        }
        KeyAnswer::Ambiguous(_) => {
            t.matches = true;
            t.key_id = typed.chars().take(64).collect();
            StatusCode::OK
        }
        KeyAnswer::NotEligible => {
            let set = st.settings();
            t.helpdesk = Some(HelpdeskMsg {
                text: set.helpdesk_text,
                url: set.helpdesk_url,
            });
            StatusCode::FORBIDDEN
        }
        KeyAnswer::NotFound => {
            // Nothing typed is echoed: absent and foreign key IDs must render identically.
            t.reasons = self_reasons("");
            t.error = Some(tr("err-not-found"));
            t.error_field = "key_id";
            StatusCode::NOT_FOUND
        }
        KeyAnswer::Foreign => {
            t.error = Some(tr("err-foreign"));
            t.error_field = "key_id";
            StatusCode::NOT_FOUND
        }
        KeyAnswer::RateLimited => {
            t.error = Some(tr("err-rate-limited"));
            StatusCode::TOO_MANY_REQUESTS
        }
    };
    html(status, &t)
}

// ---------- help desk ----------

/// The signed-in help desk user behind a form post (session, CSRF token), and the reason
/// typed, or the response to send instead. The reason is passed to [`gate`] so that a
/// request on an expired session is audited with it.
async fn helpdesk_gate(
    st: &AppState,
    jar: &CookieJar,
    f: &FormData,
) -> Result<(Session, SessionUser, String), Response> {
    let reason = f.get("reason").to_string();
    let s = gate(st, jar, Site::HelpDesk, Some(&reason)).await?;
    if !csrf_ok(&s, f) {
        return Err(message(
            st,
            Site::HelpDesk,
            StatusCode::FORBIDDEN,
            &tr("err-csrf"),
        ));
    }
    let Some(user) = s.user.clone() else {
        return Err(redirect("/HelpDesk/login"));
    };
    Ok((s, user, reason))
}

fn help_page(st: &AppState, s: &Session) -> HelpT {
    HelpT {
        page: page(st, Site::HelpDesk, "Drive recovery", Some(s)),
        error: None,
        matches: Vec::new(),
        key: None,
        end_user: String::new(),
        key_id: String::new(),
        reasons: reasons(&HELPDESK_REASONS, ""),
    }
}

async fn help_get(State(st): State<AppState>, jar: CookieJar) -> Response {
    match gate(&st, &jar, Site::HelpDesk, None).await {
        Ok(s) => html(StatusCode::OK, &help_page(&st, &s)),
        Err(r) => r,
    }
}

async fn help_key(State(st): State<AppState>, jar: CookieJar, f: FormData) -> Response {
    let (s, user, reason) = match helpdesk_gate(&st, &jar, &f).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let mut t = help_page(&st, &s);
    let typed = f.get("key_id").to_string();
    let end_user_in = f.get("end_user").trim().to_string();
    t.reasons = reasons(&HELPDESK_REASONS, &reason);
    t.end_user = end_user_in.chars().take(256).collect();
    t.key_id = typed.chars().take(64).collect();
    // The same validation and the same commit path as the JSON API (`lookup`).
    let req = match lookup::helpdesk_key_request(
        Source::HelpDesk,
        &user.username,
        user.role,
        &typed,
        &end_user_in,
        "end_user",
        &reason,
    ) {
        Ok(r) => r,
        Err(e) => {
            t.error = Some(e.public_message());
            return html(e.status(), &t);
        }
    };
    let ans = match lookup::lookup_key(&st, req).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let status = match ans {
        KeyAnswer::Shown {
            key_id,
            device,
            password,
        } => {
            t.key = Some(ShownKey {
                key_id,
                device,
                password,
            });
            t.key_id.clear();
            StatusCode::OK
        }
        KeyAnswer::Ambiguous(m) => {
            t.matches = m;
            StatusCode::OK
        }
        KeyAnswer::NotFound | KeyAnswer::Foreign | KeyAnswer::NotEligible => {
            t.error = Some("No recovery key matches this key ID for this end user.".into());
            StatusCode::NOT_FOUND
        }
        KeyAnswer::RateLimited => {
            t.error = Some("Too many failed key requests. Try again later.".into());
            StatusCode::TOO_MANY_REQUESTS
        }
    };
    html(status, &t)
}

fn tpm_page(st: &AppState, s: &Session) -> TpmT {
    TpmT {
        page: page(st, Site::HelpDesk, "Manage TPM", Some(s)),
        error: None,
        lockout: None,
        device: String::new(),
        end_user: String::new(),
        reasons: reasons(&HELPDESK_REASONS, ""),
    }
}

async fn tpm_get(State(st): State<AppState>, jar: CookieJar) -> Response {
    match gate(&st, &jar, Site::HelpDesk, None).await {
        Ok(s) => html(StatusCode::OK, &tpm_page(&st, &s)),
        Err(r) => r,
    }
}

async fn tpm_post(State(st): State<AppState>, jar: CookieJar, f: FormData) -> Response {
    let (s, user, reason) = match helpdesk_gate(&st, &jar, &f).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let mut t = tpm_page(&st, &s);
    t.reasons = reasons(&HELPDESK_REASONS, &reason);
    t.device = f.get("computer").trim().chars().take(64).collect();
    t.end_user = f.get("end_user").trim().chars().take(256).collect();
    let computer = match validate_device_name(f.get("computer"), "computer") {
        Ok(c) => c,
        Err(e) => {
            t.error = Some(e.public_message());
            return html(StatusCode::BAD_REQUEST, &t);
        }
    };
    let (end_user, reason) =
        match lookup::helpdesk_end_user_and_reason(user.role, &t.end_user, "end_user", &reason) {
            Ok(v) => v,
            Err(e) => {
                t.error = Some(e.public_message());
                return html(e.status(), &t);
            }
        };
    let req = TpmRequest {
        source: Source::HelpDesk,
        requester: user.username,
        role: user.role,
        computer,
        end_user,
        reason,
    };
    let ans = match lookup::lookup_tpm(&st, req).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let status = match ans {
        TpmAnswer::Shown {
            device,
            lockout_auth_hex,
        } => {
            t.device = device;
            t.lockout = Some(lockout_auth_hex);
            StatusCode::OK
        }
        TpmAnswer::NotFound => {
            t.error = Some(
                "No TPM lockout authorization is escrowed for this computer and end user.".into(),
            );
            StatusCode::NOT_FOUND
        }
        TpmAnswer::RateLimited => {
            t.error = Some("Too many failed requests. Try again later.".into());
            StatusCode::TOO_MANY_REQUESTS
        }
    };
    html(status, &t)
}

// ---------- admin ----------

fn admin_page(st: &AppState, s: &Session) -> AdminT {
    AdminT {
        page: page(st, Site::Admin, "Administration", Some(s)),
        error: None,
        info: None,
        enrollment_token: None,
        s: st.settings(),
    }
}

async fn admin_get(State(st): State<AppState>, jar: CookieJar) -> Response {
    match gate(&st, &jar, Site::Admin, None).await {
        Ok(s) => html(StatusCode::OK, &admin_page(&st, &s)),
        Err(r) => r,
    }
}

async fn admin_gate(st: &AppState, jar: &CookieJar, f: &FormData) -> Result<Session, Response> {
    let s = gate(st, jar, Site::Admin, None).await?;
    if !csrf_ok(&s, f) {
        return Err(message(
            st,
            Site::Admin,
            StatusCode::FORBIDDEN,
            &tr("err-csrf"),
        ));
    }
    Ok(s)
}

async fn admin_accounts(State(st): State<AppState>, jar: CookieJar, f: FormData) -> Response {
    let s = match admin_gate(&st, &jar, &f).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut t = admin_page(&st, &s);
    let r = api::do_create_account(
        &st,
        Some(f.get("username").to_string()),
        Some(f.get("password").to_string()),
        Some(f.get("role").to_string()),
    )
    .await;
    match r {
        Ok(a) => {
            t.info = Some(format!(
                "Account {} ({}) created.",
                a.username,
                a.role.as_str()
            ));
            html(StatusCode::CREATED, &t)
        }
        Err(e) => {
            t.error = Some(e.public_message());
            html(e.status(), &t)
        }
    }
}

async fn admin_enroll(State(st): State<AppState>, jar: CookieJar, f: FormData) -> Response {
    let s = match admin_gate(&st, &jar, &f).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut t = admin_page(&st, &s);
    match api::new_enrollment_token(&st).await {
        Ok(tok) => {
            t.enrollment_token = Some(tok);
            html(StatusCode::CREATED, &t)
        }
        Err(e) => e.into_response(),
    }
}

fn num(f: &FormData, k: &'static str) -> Result<Option<u64>, AppError> {
    let v = f.get(k).trim();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse::<u64>()
        .map(Some)
        .map_err(|_| AppError::invalid(k, "must be a whole number"))
}

async fn admin_settings(State(st): State<AppState>, jar: CookieJar, f: FormData) -> Response {
    let s = match admin_gate(&st, &jar, &f).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let text = |k: &str| f.0.get(k).cloned();
    let patch = (|| -> Result<SettingsPatch, AppError> {
        Ok(SettingsPatch {
            company_name: text("company_name"),
            helpdesk_text: text("helpdesk_text"),
            helpdesk_url: text("helpdesk_url"),
            notice_text: text("notice_text"),
            notice_texts: text("notice_text_ja")
                .map(|v| std::collections::BTreeMap::from([("ja".to_string(), Some(v))])),
            idle_timeout_secs: num(&f, "idle_timeout_secs")?,
            warning_secs: num(&f, "warning_secs")?,
            lookup_failure_limit: num(&f, "lookup_failure_limit")?,
            lookup_failure_window_secs: num(&f, "lookup_failure_window_secs")?,
            // Not on the settings page: the admin API sets it.
            lookup_rate_limit_exempt: None,
        })
    })();
    let res = match patch {
        Ok(p) => api::apply_settings(&st, p).await,
        Err(e) => Err(e),
    };
    let mut t = admin_page(&st, &s);
    match res {
        Ok(_) => {
            t.info = Some("Settings saved.".into());
            html(StatusCode::OK, &t)
        }
        Err(e) => {
            t.error = Some(e.public_message());
            html(e.status(), &t)
        }
    }
}

async fn admin_audit(
    State(st): State<AppState>,
    jar: CookieJar,
    q: api::AuditQueryInput,
    RawQuery(raw): RawQuery,
) -> Response {
    let s = match gate(&st, &jar, Site::Admin, None).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut t = AuditT {
        page: page(&st, Site::Admin, "Recovery audit", Some(&s)),
        error: None,
        rows: Vec::new(),
        query: raw.unwrap_or_default(),
    };
    match api::audit_rows_of_query(&st, q).await {
        Ok(rows) => {
            t.rows = rows;
            html(StatusCode::OK, &t)
        }
        Err(e) => {
            t.error = Some(e.public_message());
            html(e.status(), &t)
        }
    }
}

async fn admin_audit_export(
    st: AppState,
    jar: CookieJar,
    q: api::AuditQueryInput,
    format: &'static str,
) -> Response {
    if let Err(r) = gate(&st, &jar, Site::Admin, None).await {
        return r;
    }
    match api::audit_rows_of_query(&st, q).await {
        Ok(rows) => {
            api::audit_response(rows, Some(format)).unwrap_or_else(IntoResponse::into_response)
        }
        Err(e) => e.into_response(),
    }
}

/// The pages' script and style sheet: files, so the CSP allows no inline code.
const IDLE_JS: &str = include_str!("../static/idle.js");
const PORTAL_CSS: &str = include_str!("../static/portal.css");

async fn static_file(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// All HTML routes.
pub fn routes() -> Router<AppState> {
    let mut r = Router::new();
    for site in [Site::SelfService, Site::HelpDesk, Site::Admin] {
        let p = site.path();
        r = r
            .route(
                &format!("/{p}/login"),
                get(move |State(st): State<AppState>| login_get(st, site)).post(
                    move |State(st): State<AppState>, j: CookieJar, peer: Peer, f: FormData| {
                        login_post(st, j, site, peer, f)
                    },
                ),
            )
            .route(
                &format!("/{p}/keepalive"),
                post(
                    move |State(st): State<AppState>, j: CookieJar, f: FormData| {
                        keepalive(st, j, site, f)
                    },
                ),
            )
            .route(
                &format!("/{p}/expired"),
                get(move |State(st): State<AppState>, j: CookieJar| expired_get(st, j, site)),
            )
            .route(
                &format!("/{p}/logout"),
                post(
                    move |State(st): State<AppState>, j: CookieJar, f: FormData| {
                        logout(st, j, site, f)
                    },
                ),
            );
    }
    r.route(
        "/static/idle.js",
        get(|| static_file(IDLE_JS, "text/javascript; charset=utf-8")),
    )
    .route(
        "/static/portal.css",
        get(|| static_file(PORTAL_CSS, "text/css; charset=utf-8")),
    )
    .route("/SelfService", get(self_get))
    .route("/SelfService/", get(self_get))
    .route("/SelfService/notice", get(notice_get).post(notice_post))
    .route("/SelfService/key", post(self_key))
    .route("/HelpDesk", get(help_get))
    .route("/HelpDesk/", get(help_get))
    .route("/HelpDesk/key", post(help_key))
    .route("/HelpDesk/tpm", get(tpm_get).post(tpm_post))
    .route("/Admin", get(admin_get))
    .route("/Admin/", get(admin_get))
    .route("/Admin/accounts", post(admin_accounts))
    .route("/Admin/enrollment-tokens", post(admin_enroll))
    .route("/Admin/settings", post(admin_settings))
    .route("/Admin/audit", get(admin_audit))
    .route(
        "/Admin/audit.csv",
        get(
            |State(st): State<AppState>, j: CookieJar, q: api::AuditQueryInput| {
                admin_audit_export(st, j, q, "csv")
            },
        ),
    )
    .route(
        "/Admin/audit.json",
        get(
            |State(st): State<AppState>, j: CookieJar, q: api::AuditQueryInput| {
                admin_audit_export(st, j, q, "json")
            },
        ),
    )
    .layer(axum::middleware::from_fn(i18n::layer))
}
