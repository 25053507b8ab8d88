//! The self-service user of a scenario: the no-JavaScript client, or Chromium under
//! `harness run --browser`. Both answer with the same [`Answer`], classified by the same
//! element ids, so the runner's expectations do not care which one played.

use portal_client::{
    Answer, BrowserUser, ChromeOptions, ChromeUser, IdleWarning, PortalTarget, Screenshot,
};

pub enum User {
    Plain(Box<BrowserUser>),
    Chrome(Box<ChromeUser>),
}

impl User {
    /// A user named `username` whose browser is set to `accept_language`; in Chromium when
    /// `browser` is given.
    pub async fn open(
        target: &PortalTarget,
        username: &str,
        browser: Option<&ChromeOptions>,
        accept_language: Option<&str>,
    ) -> Result<User, String> {
        match browser {
            None => BrowserUser::new(target, username)
                .map(|u| User::Plain(Box::new(u.with_language(accept_language))))
                .map_err(|e| e.to_string()),
            Some(options) => {
                let options = options.with_language(accept_language);
                ChromeUser::start(target, username, &options)
                    .await
                    .map(|c| User::Chrome(Box::new(c)))
                    .map_err(|e| e.to_string())
            }
        }
    }

    pub async fn sign_in_and_accept(
        &mut self,
        username: &str,
        password: &str,
    ) -> Result<(), String> {
        match self {
            User::Plain(u) => u
                .sign_in_and_accept(username, password)
                .await
                .map_err(|e| e.to_string()),
            User::Chrome(c) => c
                .sign_in_and_accept(username, password)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    pub async fn request_key(&mut self, key_id: &str, reason: &str) -> Result<Answer, String> {
        match self {
            User::Plain(u) => u
                .request_key(key_id, reason)
                .await
                .map_err(|e| e.to_string()),
            User::Chrome(c) => c
                .request_key(key_id, reason)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// `<html lang>` of the page on screen and the text of its Get Key button.
    pub async fn language_and_get_key(&self) -> Result<(String, Option<String>), String> {
        match self {
            User::Plain(u) => Ok(u
                .page()
                .map(|p| (p.language().unwrap_or_default(), p.text_of("get-key")))
                .unwrap_or_default()),
            User::Chrome(c) => {
                let lang = c.page_language().await.map_err(|e| e.to_string())?;
                let label = c.text_of("get-key").await.map_err(|e| e.to_string())?;
                Ok((lang, label))
            }
        }
    }

    /// The idle-warning block of the page on screen.
    pub async fn idle_warning(&self) -> Result<Option<IdleWarning>, String> {
        match self {
            User::Plain(u) => Ok(u.idle_warning()),
            User::Chrome(c) => c.idle_warning().await.map_err(|e| e.to_string()),
        }
    }

    /// A screenshot (Chromium only; nothing for the no-JavaScript client).
    pub async fn screenshot(&mut self, name: &str) {
        if let User::Chrome(c) = self {
            // A failed screenshot must not hide the scenario's own result.
            let _ = c.screenshot(name).await;
        }
    }

    /// Ends the browser (if any) and hands over its screenshots.
    pub async fn finish(self) -> Vec<Screenshot> {
        match self {
            User::Plain(_) => Vec::new(),
            User::Chrome(mut c) => {
                let shots = c.take_screenshots();
                c.close().await;
                shots
            }
        }
    }
}
