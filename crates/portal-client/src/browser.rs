//! The self-service user and the help desk operator, played through the HTML sites
//! (API.md §6, §7, §9) as a browser without JavaScript: GET a page, fill its form, submit
//! every field it carries, follow the 303, read the answer by element id.

use reqwest::{Client, Url};

use super::error::{excerpt, PortalError};
use super::html::{extract_key_ids, Form, Page};
use super::http::{client, join, send};
use super::{Actor, PortalTarget, Result};

/// What a key (or Manage TPM) request came back with, by the contract's element ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `id="recovery-password"`: the 48-digit key.
    KeyShown(String),
    /// `id="lockout-auth"`: the TPM lockout authorization (hex).
    LockoutAuth(String),
    /// `id="matches"`: all 32 digits are asked for; the key IDs listed (help desk lists
    /// them; self-service lists none).
    SeveralMatches(Vec<String>),
    /// `id="helpdesk-message"`: "contact the help desk" (its text).
    HelpDeskMessage(String),
    /// 404 with `id="error"`.
    NotFound(String),
    /// 400 with `id="error"`: a field was refused.
    Invalid(String),
    /// 429 with `id="error"`.
    RateLimited(String),
    /// `id="expired"`: the session timed out.
    Expired,
    /// Sent to the sign-in page: no session.
    SignedOut,
    /// Any other error page (403 role or CSRF, 500): status in [`Answer::status`].
    Refused(String),
    /// None of the documented elements: see the body.
    Unrecognised,
}

/// A request's outcome with the raw exchange, for assertions such as "these two answers
/// are byte-identical".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub outcome: Outcome,
    pub status: u16,
    pub url: Url,
    pub body: String,
}

impl Answer {
    /// Classifies a page by the contract's element ids (also used by the Chromium user).
    pub fn from_page(page: &Page) -> Answer {
        Answer {
            outcome: classify(page),
            status: page.status,
            url: page.url.clone(),
            body: page.body.clone(),
        }
    }
}

fn classify(page: &Page) -> Outcome {
    if page.has("expired") {
        return Outcome::Expired;
    }
    if let Some(key) = page.text_of("recovery-password") {
        return Outcome::KeyShown(key);
    }
    if let Some(auth) = page.text_of("lockout-auth") {
        return Outcome::LockoutAuth(auth);
    }
    if let Some(matches) = page.text_of("matches") {
        return Outcome::SeveralMatches(extract_key_ids(&matches));
    }
    if let Some(message) = page.text_of("helpdesk-message") {
        return Outcome::HelpDeskMessage(message);
    }
    if page.has("sign-in") && page.url.path().ends_with("/login") && page.status != 401 {
        return Outcome::SignedOut;
    }
    let error = page.text_of("error").unwrap_or_default();
    match page.status {
        429 => Outcome::RateLimited(error),
        404 => Outcome::NotFound(error),
        400 => Outcome::Invalid(error),
        s if s >= 400 || !error.is_empty() => Outcome::Refused(error),
        _ => Outcome::Unrecognised,
    }
}

/// The idle-warning block of a signed-in page (API.md §6 "Inactivity").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleWarning {
    /// Hidden until the script shows it (it must be, on a fresh page).
    pub hidden: bool,
    /// The countdown's seconds: the number in `id="idle-countdown"` (its text, else a
    /// numeric attribute such as `data-seconds`).
    pub countdown_secs: Option<u64>,
    /// Whether the "continue" button `id="idle-continue"` is there.
    pub has_continue: bool,
}

/// A cookie-carrying browser session on one site (`/SelfService` or `/HelpDesk`).
#[derive(Debug)]
struct Browser {
    http: Client,
    base: Url,
    who: String,
    /// The page on screen: forms are taken from it, as a user would.
    page: Option<Page>,
    /// The browser's language list, sent as `Accept-Language` (e.g. `ja-JP,ja`); `None`:
    /// no header, the portal's default.
    accept_language: Option<String>,
}

impl Browser {
    fn new(target: &PortalTarget, actor: Actor, who: &str) -> Result<Browser> {
        Ok(Browser {
            http: client(target, true)?,
            base: target.url_for(actor).clone(),
            who: who.to_string(),
            page: None,
            accept_language: None,
        })
    }

    /// A request as this browser sends it (with its language list).
    fn request(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.accept_language {
            Some(lang) => request.header(reqwest::header::ACCEPT_LANGUAGE, lang),
            None => request,
        }
    }

    fn step(&self, what: &str) -> String {
        format!("{}: {what}", self.who)
    }

    async fn get(&mut self, path: &str) -> Result<&Page> {
        let url = join(&self.base, path)?;
        let step = self.step(&format!("GET {path}"));
        let reply = send(&step, self.request(self.http.get(url))).await?;
        Ok(self.show(Page {
            status: reply.status,
            url: reply.url,
            body: reply.body,
        }))
    }

    fn show(&mut self, page: Page) -> &Page {
        self.page.insert(page)
    }

    /// The form around element `id` on the page on screen, or on `path` freshly loaded.
    async fn form(&mut self, id: &str, path: &str) -> Result<Form> {
        let on_screen = self.page.as_ref().is_some_and(|p| p.has(id));
        if !on_screen {
            self.get(path).await?;
        }
        let page = self
            .page
            .as_ref()
            .ok_or_else(|| PortalError::Usage("no page loaded".to_string()))?;
        page.form_with(id).map_err(|detail| PortalError::Body {
            step: self.step(&format!(
                "find the form with id=\"{id}\" on {}",
                page.url.path()
            )),
            status: page.status,
            detail,
            excerpt: excerpt(&page.body),
        })
    }

    async fn submit(&mut self, what: &str, form: &Form) -> Result<&Page> {
        let step = self.step(&format!(
            "{what} ({} {})",
            if form.method_post { "POST" } else { "GET" },
            form.action.path()
        ));
        let request = if form.method_post {
            self.http.post(form.action.clone()).form(&form.fields)
        } else {
            self.http.get(form.action.clone()).query(&form.fields)
        };
        let reply = send(&step, self.request(request)).await?;
        Ok(self.show(Page {
            status: reply.status,
            url: reply.url,
            body: reply.body,
        }))
    }

    fn fill(&self, form: &mut Form, name: &str, value: &str) -> Result<()> {
        form.set(name, value).map_err(|detail| PortalError::Body {
            step: self.step(&format!("fill `{name}`")),
            status: self.page.as_ref().map_or(0, |p| p.status),
            detail,
            excerpt: String::new(),
        })
    }

    /// Signs in on `{area}/login`; `landing` is the id expected on the page it leads to.
    async fn sign_in(&mut self, area: &str, username: &str, password: &str) -> Result<()> {
        let mut form = self.form("sign-in", &format!("{area}/login")).await?;
        self.fill(&mut form, "username", username)?;
        self.fill(&mut form, "password", password)?;
        let who = self.who.clone();
        let page = self.submit("sign in", &form).await?;
        if page.status != 200 || page.url.path().ends_with("/login") {
            return Err(PortalError::Status {
                step: format!("{who}: sign in (POST {area}/login)"),
                expected: format!("303 to a signed-in {area} page"),
                status: page.status,
                code: None,
                excerpt: page.text_of("error").unwrap_or_else(|| excerpt(&page.body)),
            });
        }
        Ok(())
    }

    fn idle_warning(&self) -> Option<IdleWarning> {
        let page = self.page.as_ref()?;
        if !page.has("idle-warning") {
            return None;
        }
        let from_text = page
            .text_of("idle-countdown")
            .and_then(|t| first_number(&t));
        let from_attr = || {
            [
                "data-seconds",
                "data-warning-secs",
                "data-countdown",
                "value",
            ]
            .iter()
            .find_map(|a| page.attr_of("idle-countdown", a))
            .and_then(|v| first_number(&v))
        };
        Some(IdleWarning {
            hidden: page.is_hidden("idle-warning").unwrap_or(false),
            countdown_secs: from_text.or_else(from_attr),
            has_continue: page.has("idle-continue"),
        })
    }

    /// The idle warning's "continue": its form if it has one, else the POST the script
    /// makes with the page's CSRF token. `Ok(false)` when the session had expired.
    async fn keepalive(&mut self, area: &str) -> Result<bool> {
        let path = format!("{area}/keepalive");
        let page = self
            .page
            .as_ref()
            .ok_or_else(|| PortalError::Usage("keepalive before any page".to_string()))?;
        let fields = match page.form_with("idle-continue") {
            Ok(form) if form.action.path().ends_with("/keepalive") => form.fields,
            _ => vec![(
                "csrf_token".to_string(),
                page.csrf_token().unwrap_or_default(),
            )],
        };
        let url = join(&self.base, &path)?;
        let step = self.step(&format!("continue after the idle warning (POST {path})"));
        // A 204 leaves the page on screen, as in a browser.
        let reply = send(&step, self.request(self.http.post(url).form(&fields))).await?;
        match reply.status {
            200..=299 => Ok(true),
            401 => Ok(false),
            status => Err(PortalError::Status {
                step,
                expected: "status 204 (or 401 when expired)".to_string(),
                status,
                code: None,
                excerpt: excerpt(&reply.body),
            }),
        }
    }

    async fn logout(&mut self, area: &str) -> Result<()> {
        let path = format!("{area}/logout");
        let csrf = self
            .page
            .as_ref()
            .and_then(Page::csrf_token)
            .unwrap_or_default();
        let url = join(&self.base, &path)?;
        let step = self.step(&format!("sign out (POST {path})"));
        let reply = send(
            &step,
            self.request(self.http.post(url).form(&[("csrf_token", csrf)])),
        )
        .await?;
        self.show(Page {
            status: reply.status,
            url: reply.url,
            body: reply.body,
        });
        Ok(())
    }
}

/// The first run of digits in `s` (the idle warning's countdown), if any.
pub(crate) fn first_number(s: &str) -> Option<u64> {
    let digits: String = s
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// An end user at `/SelfService`.
#[derive(Debug)]
pub struct BrowserUser {
    browser: Browser,
}

const SELF_SERVICE: &str = "/SelfService";
const HELP_DESK: &str = "/HelpDesk";

impl BrowserUser {
    pub fn new(target: &PortalTarget, username: &str) -> Result<BrowserUser> {
        Ok(BrowserUser {
            browser: Browser::new(
                target,
                Actor::User,
                &format!("self-service user {username}"),
            )?,
        })
    }

    /// The same user with a browser set to `accept_language` (e.g. `ja-JP,ja`).
    pub fn with_language(mut self, accept_language: Option<&str>) -> BrowserUser {
        self.browser.accept_language = accept_language.map(str::to_string);
        self
    }

    /// Signs in: the portal then shows the notice.
    pub async fn sign_in(&mut self, username: &str, password: &str) -> Result<()> {
        self.browser.sign_in(SELF_SERVICE, username, password).await
    }

    /// Accepts the notice; the key form follows.
    pub async fn accept_notice(&mut self) -> Result<()> {
        let form = self
            .browser
            .form("accept-notice", "/SelfService/notice")
            .await?;
        let who = self.browser.who.clone();
        let page = self.browser.submit("accept the notice", &form).await?;
        if !page.has("key-id") {
            return Err(PortalError::Body {
                step: format!("{who}: accept the notice"),
                status: page.status,
                detail: "expected the key form (id=\"key-id\") next".to_string(),
                excerpt: excerpt(&page.body),
            });
        }
        Ok(())
    }

    /// Sign in and accept the notice.
    pub async fn sign_in_and_accept(&mut self, username: &str, password: &str) -> Result<()> {
        self.sign_in(username, password).await?;
        self.accept_notice().await
    }

    /// Types the key ID (8 or 32 digits, any spelling) and picks the reason on the key form
    /// on screen (loading `/SelfService` if none is), then Get Key.
    pub async fn request_key(&mut self, key_id: &str, reason: &str) -> Result<Answer> {
        let mut form = self.browser.form("get-key", SELF_SERVICE).await?;
        self.browser.fill(&mut form, "key_id", key_id)?;
        self.browser.fill(&mut form, "reason", reason)?;
        let page = self.browser.submit("Get Key", &form).await?;
        Ok(Answer::from_page(page))
    }

    /// Loads the key page again (counts as activity).
    pub async fn open_key_page(&mut self) -> Result<Answer> {
        let page = self.browser.get(SELF_SERVICE).await?;
        Ok(Answer::from_page(page))
    }

    /// The idle warning block of the page on screen (no request made).
    pub fn idle_warning(&self) -> Option<IdleWarning> {
        self.browser.idle_warning()
    }

    /// "Continue" on the idle warning: `Ok(true)` kept alive, `Ok(false)` already expired.
    pub async fn keepalive(&mut self) -> Result<bool> {
        self.browser.keepalive(SELF_SERVICE).await
    }

    pub async fn sign_out(&mut self) -> Result<()> {
        self.browser.logout(SELF_SERVICE).await
    }

    /// The page on screen.
    pub fn page(&self) -> Option<&Page> {
        self.browser.page.as_ref()
    }
}

/// A help desk operator at `/HelpDesk` (role `helpdesk` or `advanced_helpdesk`).
#[derive(Debug)]
pub struct HelpDeskOperator {
    browser: Browser,
}

impl HelpDeskOperator {
    pub fn new(target: &PortalTarget, username: &str) -> Result<HelpDeskOperator> {
        Ok(HelpDeskOperator {
            browser: Browser::new(
                target,
                Actor::HelpDesk,
                &format!("help desk operator {username}"),
            )?,
        })
    }

    /// The same operator with a browser set to `accept_language` (e.g. `ja-JP,ja`).
    pub fn with_language(mut self, accept_language: Option<&str>) -> HelpDeskOperator {
        self.browser.accept_language = accept_language.map(str::to_string);
        self
    }

    pub async fn sign_in(&mut self, username: &str, password: &str) -> Result<()> {
        self.browser.sign_in(HELP_DESK, username, password).await
    }

    /// Looks a key up. `end_user` is required for role `helpdesk`, optional for advanced.
    /// With 8 digits and several matches the answer lists them
    /// ([`Outcome::SeveralMatches`]); repeat with all 32.
    pub async fn lookup_key(
        &mut self,
        key_id: &str,
        end_user: Option<&str>,
        reason: &str,
    ) -> Result<Answer> {
        let mut form = self.browser.form("get-key", HELP_DESK).await?;
        self.browser.fill(&mut form, "key_id", key_id)?;
        if end_user.is_some() || form.has("end_user") {
            self.browser
                .fill(&mut form, "end_user", end_user.unwrap_or_default())?;
        }
        self.browser.fill(&mut form, "reason", reason)?;
        let page = self.browser.submit("look up a key", &form).await?;
        Ok(Answer::from_page(page))
    }

    /// "Manage TPM": the lockout authorization of `computer`.
    pub async fn manage_tpm(
        &mut self,
        computer: &str,
        end_user: Option<&str>,
        reason: &str,
    ) -> Result<Answer> {
        let path = "/HelpDesk/tpm";
        // The TPM form is its own page; load it unless it is on screen.
        let on_tpm_page = self
            .browser
            .page
            .as_ref()
            .is_some_and(|p| p.has("computer"));
        if !on_tpm_page {
            self.browser.get(path).await?;
        }
        let mut form = self.browser.form("computer", path).await?;
        self.browser.fill(&mut form, "computer", computer)?;
        if end_user.is_some() || form.has("end_user") {
            self.browser
                .fill(&mut form, "end_user", end_user.unwrap_or_default())?;
        }
        self.browser.fill(&mut form, "reason", reason)?;
        let page = self.browser.submit("Manage TPM", &form).await?;
        Ok(Answer::from_page(page))
    }

    pub fn idle_warning(&self) -> Option<IdleWarning> {
        self.browser.idle_warning()
    }

    pub async fn keepalive(&mut self) -> Result<bool> {
        self.browser.keepalive(HELP_DESK).await
    }

    pub async fn sign_out(&mut self) -> Result<()> {
        self.browser.logout(HELP_DESK).await
    }

    pub fn page(&self) -> Option<&Page> {
        self.browser.page.as_ref()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn page(status: u16, path: &str, body: &str) -> Page {
        Page {
            status,
            url: Url::parse("https://127.0.0.1:1")
                .unwrap()
                .join(path)
                .unwrap(),
            body: body.to_string(),
        }
    }

    #[test]
    fn outcomes_follow_the_documented_ids() {
        let cases = [
            (
                page(
                    200,
                    "/SelfService/key",
                    r#"<p id="recovery-password">1-2</p>"#,
                ),
                Outcome::KeyShown("1-2".into()),
            ),
            (
                page(401, "/SelfService/key", r#"<div id="expired">gone</div>"#),
                Outcome::Expired,
            ),
            (
                page(
                    403,
                    "/SelfService/key",
                    r#"<div id="helpdesk-message">Call us</div>"#,
                ),
                Outcome::HelpDeskMessage("Call us".into()),
            ),
            (
                page(
                    404,
                    "/SelfService/key",
                    r#"<p id="error" role="alert">Not found</p>"#,
                ),
                Outcome::NotFound("Not found".into()),
            ),
            (
                page(429, "/SelfService/key", r#"<p id="error">Slow down</p>"#),
                Outcome::RateLimited("Slow down".into()),
            ),
            (
                page(400, "/SelfService/key", r#"<p id="error">key_id</p>"#),
                Outcome::Invalid("key_id".into()),
            ),
            (
                page(403, "/SelfService/key", r#"<p id="error">csrf</p>"#),
                Outcome::Refused("csrf".into()),
            ),
            (
                page(
                    200,
                    "/SelfService/login",
                    r#"<form><button id="sign-in"></button></form>"#,
                ),
                Outcome::SignedOut,
            ),
            (
                page(
                    200,
                    "/SelfService/key",
                    r#"<p id="matches">Type all 32</p>"#,
                ),
                Outcome::SeveralMatches(vec![]),
            ),
            (
                page(200, "/SelfService", "<p>hello</p>"),
                Outcome::Unrecognised,
            ),
        ];
        for (p, expected) in cases {
            assert_eq!(classify(&p), expected, "{}", p.body);
        }
    }

    #[test]
    fn numbers_are_read_from_countdown_text() {
        assert_eq!(first_number("60 s"), Some(60));
        assert_eq!(first_number("in 5 seconds"), Some(5));
        assert_eq!(first_number("soon"), None);
    }
}
