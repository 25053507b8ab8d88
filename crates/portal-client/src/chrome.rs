//! The self-service user in a real browser: Debian's Chromium, headless, driven over
//! WebDriver (`chromedriver` + `fantoccini`).
//!
//! [`ChromeUser`] offers what the runner uses on [`super::BrowserUser`] (sign in and accept
//! the notice, request a key, the idle warning, "continue") and plays it the way a person
//! at a keyboard does: it types into the element that has the focus, moves with Tab, picks
//! the reason with the arrow keys and submits with Enter, and it fails when the focus is
//! not where the page should have put it. Answers are classified by the same element ids as
//! the no-JavaScript client ([`Answer`]), with the HTTP status read from the page's
//! navigation timing. Every page can be kept as a PNG ([`ChromeUser::screenshot`]).
//!
//! **Processes.** Each user gets its own `chromedriver` on a free loopback port and its own
//! throw-away profile (`--user-data-dir`), so no cookie or cache is shared. chromedriver is
//! forked by one long-lived thread with `PR_SET_PDEATHSIG` (the kernel kills it if the
//! harness dies), in its own process group; Chromium is started by chromedriver through a
//! wrapper that runs it under `setpriv --pdeathsig KILL`, so it dies with chromedriver.
//! Dropping a [`ChromeUser`] kills the whole process group and reaps chromedriver.
//!
//! **Certificates.** The portal's certificate is self-signed: the session asks for the
//! W3C capability `acceptInsecureCerts: true`, which chromedriver applies to this session
//! only; no `--ignore-certificate-errors` flag is passed.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// chromedriver dies with the harness: PDEATHSIG from one long-lived spawner thread.
use supervise::{kill_process_group, spawn_supervised};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::Url;
use serde_json::{json, Value};

use super::browser::{first_number, Answer, IdleWarning};
use super::html::Page;
use super::{Actor, PortalTarget};

/// WebDriver key codes (W3C WebDriver §17.4.2).
const TAB: char = '\u{E004}';
const ENTER: char = '\u{E007}';
const ARROW_DOWN: char = '\u{E015}';

/// Why the browser could not do something.
#[derive(Debug, thiserror::Error)]
pub enum ChromeError {
    /// chromedriver or Chromium is missing or would not start.
    #[error("starting the browser: {step}: {detail}")]
    Start { step: String, detail: String },
    /// A WebDriver command failed.
    #[error("{step}: {detail}")]
    WebDriver { step: String, detail: String },
    /// The page was not what a user of the portal would see at this point.
    #[error("{step}: {detail}")]
    Page { step: String, detail: String },
}

/// Results of this module.
pub type Result<T, E = ChromeError> = std::result::Result<T, E>;

/// Which browser and how to present it.
#[derive(Debug, Clone)]
pub struct ChromeOptions {
    /// `chromedriver` (default: `$HARNESS_CHROMEDRIVER`, else from `PATH`).
    pub chromedriver: PathBuf,
    /// Chromium (default: `$HARNESS_CHROMIUM`, else `chromium` from `PATH`).
    pub chromium: PathBuf,
    /// The browser's language list, sent as `Accept-Language` (e.g. `ja-JP,ja`); `None`
    /// leaves Chromium's default (English).
    pub accept_language: Option<String>,
    /// Window size in CSS pixels (screenshots are this size).
    pub window: (u32, u32),
    /// Deadline for starting and for each page load.
    pub timeout: Duration,
}

impl ChromeOptions {
    /// Finds chromedriver and Chromium (see the fields); an error names what is missing and
    /// how to install it.
    pub fn detect() -> Result<ChromeOptions> {
        Ok(ChromeOptions {
            chromedriver: find_program("HARNESS_CHROMEDRIVER", "chromedriver")?,
            chromium: find_program("HARNESS_CHROMIUM", "chromium")?,
            accept_language: None,
            window: (900, 760),
            timeout: Duration::from_secs(20),
        })
    }

    /// The same browser with another language list.
    pub fn with_language(&self, accept_language: Option<&str>) -> ChromeOptions {
        ChromeOptions {
            accept_language: accept_language.map(str::to_string),
            ..self.clone()
        }
    }
}

fn find_program(env: &str, name: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(ChromeError::Start {
            step: format!("find {name}"),
            detail: format!("${env} = {} is not a file", p.display()),
        });
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| ChromeError::Start {
            step: format!("find {name}"),
            detail: format!(
                "not on PATH: install Debian's chromium and chromium-driver \
                 (scripts/install-system-deps.sh) or set ${env}"
            ),
        })
}

/// A screenshot of one page, in the order taken.
#[derive(Debug, Clone)]
pub struct Screenshot {
    /// What it shows, e.g. `notice`, `key`, `idle-warning`, `expired`.
    pub name: String,
    /// PNG bytes.
    pub png: Vec<u8>,
}

// ---------- processes ----------

/// chromedriver (and, under it, Chromium) with its profile directory.
struct Driver {
    child: Child,
    url: String,
    // Removed after the processes are killed (see `Drop`).
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("pid", &self.child.id())
            .field("url", &self.url)
            .finish()
    }
}

impl Driver {
    async fn start(options: &ChromeOptions) -> Result<Driver> {
        let mut last = String::new();
        // The port is free when we look and taken when chromedriver binds it, unless
        // someone else was quicker: then try another (with a fresh directory).
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("chrome-")
                .tempdir()
                .map_err(|e| start("create a profile directory", e))?;
            let port = free_port().map_err(|e| start("find a free port", e))?;
            let log = std::fs::File::create(dir.path().join("chromedriver.log"))
                .map_err(|e| start("create the chromedriver log", e))?;
            let mut cmd = Command::new(&options.chromedriver);
            cmd.arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::from(
                    log.try_clone()
                        .map_err(|e| start("open the chromedriver log", e))?,
                ))
                .stderr(Stdio::from(log))
                // Its own group: Drop kills chromedriver and every browser process at once.
                .process_group(0);
            let child = spawn_supervised(cmd).map_err(|e| {
                start(
                    "spawn chromedriver",
                    format!("{}: {e}", options.chromedriver.display()),
                )
            })?;
            let mut driver = Driver {
                child,
                url: format!("http://127.0.0.1:{port}"),
                dir,
            };
            match driver.wait_ready(options.timeout).await {
                Ok(()) => return Ok(driver),
                // Dropping it kills it and removes its directory.
                Err(detail) => last = detail,
            }
        }
        Err(start("chromedriver /status", last))
    }

    async fn wait_ready(&mut self, timeout: Duration) -> std::result::Result<(), String> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        let mut last = "no answer yet".to_string();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "chromedriver exited ({status}); log: {}",
                    self.log_tail()
                ));
            }
            match http.get(format!("{}/status", self.url)).send().await {
                Ok(r) => {
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    if v["value"]["ready"] == Value::Bool(true) {
                        return Ok(());
                    }
                    last = v.to_string();
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!("not ready within {timeout:?}: {last}"))
    }

    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// The wrapper Chromium is started through: `setpriv --pdeathsig KILL` makes the kernel
    /// kill the browser when chromedriver dies, whatever killed chromedriver.
    fn chromium_wrapper(&self, chromium: &Path) -> Result<PathBuf> {
        let path = self.dir.path().join("chromium-under-harness");
        let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .find(|p| Path::new(p).is_file());
        let exec = match setpriv {
            Some(s) => format!(
                "exec {s} --pdeathsig KILL -- '{}' \"$@\"",
                chromium.display()
            ),
            // Without setpriv the process-group kill in Drop still applies.
            None => format!("exec '{}' \"$@\"", chromium.display()),
        };
        std::fs::write(&path, format!("#!/bin/sh\n{exec}\n"))
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)))
            .map_err(|e| start("write the chromium wrapper", e))?;
        Ok(path)
    }

    fn kill(&mut self) {
        // The whole group chromedriver leads (`process_group(0)` above): Chromium too.
        let _ = kill_process_group(&self.child);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start(step: &str, e: impl std::fmt::Display) -> ChromeError {
    ChromeError::Start {
        step: step.to_string(),
        detail: e.to_string(),
    }
}

// ---------- the user ----------

/// An end user at `/SelfService` in headless Chromium, at the keyboard.
#[derive(Debug)]
pub struct ChromeUser {
    // Field order: the WebDriver client goes before the processes it talks to.
    client: Client,
    base: Url,
    who: String,
    timeout: Duration,
    shots: Vec<Screenshot>,
    driver: Driver,
}

impl ChromeUser {
    /// Starts chromedriver and a fresh headless Chromium for `username` (the name is used
    /// in messages only).
    pub async fn start(
        target: &PortalTarget,
        username: &str,
        options: &ChromeOptions,
    ) -> Result<ChromeUser> {
        let driver = Driver::start(options).await?;
        let wrapper = driver.chromium_wrapper(&options.chromium)?;
        let profile = driver.dir.path().join("profile");
        let (w, h) = options.window;
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".to_string(),
            "--disable-gpu".to_string(),
            // Without these Chromium dials out at start, which this closed network refuses.
            "--disable-quic".to_string(),
            "--no-first-run".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--disable-dev-shm-usage".to_string(),
            format!("--user-data-dir={}", profile.display()),
            format!("--window-size={w},{h}"),
            "--hide-scrollbars".to_string(),
        ];
        let mut prefs = serde_json::Map::new();
        if let Some(lang) = &options.accept_language {
            // The UI language and the Accept-Language list the pages are negotiated with.
            args.push(format!(
                "--lang={}",
                lang.split(',').next().unwrap_or(lang).trim()
            ));
            prefs.insert("intl.accept_languages".into(), json!(lang));
        }
        let caps = json!({
            "browserName": "chrome",
            // The portal's certificate is self-signed (see the module docs).
            "acceptInsecureCerts": true,
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": wrapper,
                "args": args,
                "prefs": prefs,
            }
        });
        let caps = match caps {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .map_err(|e| {
                start(
                    "open a WebDriver session (Chromium)",
                    format!("{e}; chromedriver log:\n{}", driver.log_tail()),
                )
            })?;
        let user = ChromeUser {
            client,
            base: target.url_for(Actor::User).clone(),
            who: format!("self-service user {username} (Chromium)"),
            timeout: options.timeout,
            shots: Vec::new(),
            driver,
        };
        // Headless windows start at 800x600 whatever --window-size says on some builds.
        let _ = user.client.set_window_size(w, h).await;
        Ok(user)
    }

    fn step(&self, what: &str) -> String {
        format!("{}: {what}", self.who)
    }

    fn wd(&self, what: &str) -> impl FnOnce(fantoccini::error::CmdError) -> ChromeError {
        let step = self.step(what);
        move |e| ChromeError::WebDriver {
            step,
            detail: e.to_string(),
        }
    }

    fn page_error(&self, what: &str, detail: impl Into<String>) -> ChromeError {
        ChromeError::Page {
            step: self.step(what),
            detail: detail.into(),
        }
    }

    async fn js(&self, what: &str, script: &str) -> Result<Value> {
        self.client
            .execute(script, Vec::new())
            .await
            .map_err(self.wd(what))
    }

    /// Runs a script in the page and returns its value (for checks a user's assistive
    /// technology makes: attributes, focus, labels).
    pub async fn execute(&self, script: &str) -> Result<Value> {
        self.js("run a script", script).await
    }

    /// Opens `path` on the portal (like typing the address).
    pub async fn open(&mut self, path: &str) -> Result<()> {
        let url = self
            .base
            .join(path)
            .map_err(|e| self.page_error(&format!("open {path}"), e.to_string()))?;
        self.client
            .goto(url.as_str())
            .await
            .map_err(self.wd(&format!("open {path}")))
    }

    /// The `id` of the focused element ("" for none).
    pub async fn focused_id(&self) -> Result<String> {
        let v = self
            .js(
                "read the focused element",
                "return document.activeElement ? document.activeElement.id : '';",
            )
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// Fails unless the element with `id` has the focus.
    async fn expect_focus(&self, id: &str, when: &str) -> Result<()> {
        let got = self.focused_id().await?;
        if got != id {
            return Err(self.page_error(
                when,
                format!("keyboard focus should be on id=\"{id}\", is on {got:?}"),
            ));
        }
        Ok(())
    }

    /// Presses keys (text and WebDriver key codes) on whatever has the focus.
    pub async fn press(&self, keys: &str) -> Result<()> {
        let mut actions = KeyActions::new("keyboard".to_string());
        for c in keys.chars() {
            actions = actions
                .then(KeyAction::Down { value: c })
                .then(KeyAction::Up { value: c });
        }
        self.client
            .perform_actions(actions)
            .await
            .map_err(self.wd("press keys"))
    }

    /// Presses Enter and waits until the next page has loaded.
    async fn enter_and_wait(&self, what: &str) -> Result<()> {
        self.js(what, "window.__harnessOldPage = true; return null;")
            .await?;
        self.press(&ENTER.to_string()).await?;
        self.wait_new_page(what).await
    }

    async fn wait_new_page(&self, what: &str) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        loop {
            // During navigation the script may fail (no document): keep polling.
            let state = self
                .client
                .execute(
                    "return window.__harnessOldPage === true ? 'old' : document.readyState;",
                    Vec::new(),
                )
                .await
                .ok();
            if state.as_ref().and_then(Value::as_str) == Some("complete") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.page_error(
                    what,
                    format!("no new page within {:?} (state {state:?})", self.timeout),
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The page on screen as the no-JavaScript client sees one: final URL, the HTTP
    /// status of its navigation (Navigation Timing `responseStatus`), and the live DOM.
    pub async fn page(&self) -> Result<Page> {
        let url = self
            .client
            .current_url()
            .await
            .map_err(self.wd("read the URL"))?;
        let status = self
            .js(
                "read the HTTP status",
                "const e = performance.getEntriesByType('navigation')[0]; \
                 return e && e.responseStatus ? e.responseStatus : 0;",
            )
            .await?
            .as_u64()
            .unwrap_or(0);
        let body = self
            .client
            .source()
            .await
            .map_err(self.wd("read the page"))?;
        let url =
            Url::parse(url.as_str()).map_err(|e| self.page_error("read the URL", e.to_string()))?;
        Ok(Page {
            status: u16::try_from(status).unwrap_or(0),
            url,
            body,
        })
    }

    /// `<html lang>` of the page on screen.
    pub async fn page_language(&self) -> Result<String> {
        let v = self
            .js("read <html lang>", "return document.documentElement.lang;")
            .await?;
        Ok(v.as_str().unwrap_or_default().to_string())
    }

    /// The visible text of element `id`, `None` if there is no such element.
    pub async fn text_of(&self, id: &str) -> Result<Option<String>> {
        match self.client.find(Locator::Id(id)).await {
            Ok(e) => Ok(Some(e.text().await.map_err(self.wd("read a text"))?)),
            Err(e) if e.is_no_such_element() => Ok(None),
            Err(e) => Err(self.wd("find an element")(e)),
        }
    }

    /// Attribute `name` of element `id`.
    pub async fn attr_of(&self, id: &str, name: &str) -> Result<Option<String>> {
        match self.client.find(Locator::Id(id)).await {
            Ok(e) => e.attr(name).await.map_err(self.wd("read an attribute")),
            Err(e) if e.is_no_such_element() => Ok(None),
            Err(e) => Err(self.wd("find an element")(e)),
        }
    }

    /// Takes a screenshot of the window and keeps it under `name`.
    pub async fn screenshot(&mut self, name: &str) -> Result<()> {
        let png = self
            .client
            .screenshot()
            .await
            .map_err(self.wd("take a screenshot"))?;
        self.shots.push(Screenshot {
            name: name.to_string(),
            png,
        });
        Ok(())
    }

    /// The screenshots taken so far, in order.
    pub fn screenshots(&self) -> &[Screenshot] {
        &self.shots
    }

    /// Takes the screenshots out (for the report).
    pub fn take_screenshots(&mut self) -> Vec<Screenshot> {
        std::mem::take(&mut self.shots)
    }

    /// Signs in with the keyboard only: the user name field has the focus, Tab to the
    /// password, Enter.
    pub async fn sign_in(&mut self, username: &str, password: &str) -> Result<()> {
        self.open("/SelfService/login").await?;
        self.expect_focus("username", "the sign-in page opens")
            .await?;
        self.press(username).await?;
        self.press(&TAB.to_string()).await?;
        self.expect_focus("password", "Tab from the user name")
            .await?;
        self.press(password).await?;
        self.enter_and_wait("sign in (Enter)").await?;
        let page = self.page().await?;
        if !page.url.path().ends_with("/notice") {
            return Err(self.page_error(
                "sign in",
                format!(
                    "expected the notice, got {} (status {}): {}",
                    page.url.path(),
                    page.status,
                    page.text_of("error").unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }

    /// Accepts the notice with Enter (its button has the focus); the key form follows.
    pub async fn accept_notice(&mut self) -> Result<()> {
        self.expect_focus("accept-notice", "the notice opens")
            .await?;
        self.screenshot("notice").await?;
        self.enter_and_wait("accept the notice (Enter)").await?;
        if self.text_of("key-id").await?.is_none() {
            let page = self.page().await?;
            return Err(self.page_error(
                "accept the notice",
                format!("expected the key form next, got {}", page.url.path()),
            ));
        }
        Ok(())
    }

    /// Sign in and accept the notice.
    pub async fn sign_in_and_accept(&mut self, username: &str, password: &str) -> Result<()> {
        self.sign_in(username, password).await?;
        self.accept_notice().await
    }

    /// On the key form: types the key ID into the focused field, Tab to Reason, arrow keys
    /// down to `reason` (by its value), Tab to Get Key, Enter; then reads the answer.
    pub async fn request_key(&mut self, key_id: &str, reason: &str) -> Result<Answer> {
        if self.text_of("get-key").await?.is_none() {
            self.open("/SelfService").await?;
        }
        // The page puts the focus on the key ID field; after an answer it may be on the
        // field in error. Either way the user clears it and types.
        let focused = self.focused_id().await?;
        if focused != "key-id" {
            return Err(self.page_error(
                "the key form opens",
                format!("keyboard focus should be on id=\"key-id\", is on {focused:?}"),
            ));
        }
        self.js(
            "clear the key ID field",
            "document.getElementById('key-id').select(); return null;",
        )
        .await?;
        self.press(key_id).await?;
        self.press(&TAB.to_string()).await?;
        self.expect_focus("reason", "Tab from the key ID").await?;
        let values = self
            .js(
                "read the reasons",
                "const s = document.getElementById('reason'); s.selectedIndex = 0; \
                 return Array.from(s.options).map(o => o.value);",
            )
            .await?;
        let index = values
            .as_array()
            .and_then(|v| v.iter().position(|o| o.as_str() == Some(reason)))
            .ok_or_else(|| {
                self.page_error(
                    "choose the reason",
                    format!("no option with value {reason:?} in {values}"),
                )
            })?;
        self.press(&ARROW_DOWN.to_string().repeat(index)).await?;
        let chosen = self
            .js(
                "read the chosen reason",
                "return document.getElementById('reason').value;",
            )
            .await?;
        if chosen.as_str() != Some(reason) {
            return Err(self.page_error(
                "choose the reason with the arrow keys",
                format!("expected {reason:?} selected, got {chosen}"),
            ));
        }
        self.press(&TAB.to_string()).await?;
        self.expect_focus("get-key", "Tab from Reason").await?;
        self.enter_and_wait("Get Key (Enter)").await?;
        let page = self.page().await?;
        let answer = Answer::from_page(&page);
        let name = match answer.outcome {
            super::Outcome::KeyShown(_) => "key",
            super::Outcome::Expired => "expired",
            _ => "answer",
        };
        self.screenshot(name).await?;
        Ok(answer)
    }

    /// The idle-warning block as it is on screen now (hidden or shown, the number the
    /// countdown shows). `None` when the page has none.
    pub async fn idle_warning(&self) -> Result<Option<IdleWarning>> {
        let v = self
            .js(
                "read the idle warning",
                "const w = document.getElementById('idle-warning'); if (!w) return null; \
                 const c = document.getElementById('idle-countdown'); \
                 return { hidden: w.hidden || w.offsetParent === null, \
                          text: c ? c.textContent : null, \
                          cont: !!document.getElementById('idle-continue') };",
            )
            .await?;
        if v.is_null() {
            return Ok(None);
        }
        Ok(Some(IdleWarning {
            hidden: v["hidden"].as_bool().unwrap_or(false),
            countdown_secs: v["text"].as_str().and_then(first_number),
            has_continue: v["cont"].as_bool().unwrap_or(false),
        }))
    }

    /// Waits up to `within` for the idle warning to be shown; returns it.
    pub async fn wait_for_idle_warning(&self, within: Duration) -> Result<IdleWarning> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(w) = self.idle_warning().await? {
                if !w.hidden {
                    return Ok(w);
                }
            }
            if Instant::now() > deadline {
                return Err(self.page_error(
                    "wait for the idle warning",
                    format!("not shown within {within:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits up to `within` for the page's script to go to the expiry page.
    pub async fn wait_for_expiry_page(&self, within: Duration) -> Result<Page> {
        let deadline = Instant::now() + within;
        loop {
            let on_expired = self
                .client
                .current_url()
                .await
                .map(|u| u.path().ends_with("/expired"))
                .unwrap_or(false);
            if on_expired {
                self.wait_new_page_loaded().await?;
                if self.text_of("expired").await?.is_some() {
                    return self.page().await;
                }
            }
            if Instant::now() > deadline {
                return Err(self.page_error(
                    "wait for the expiry page",
                    format!("still not there after {within:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_new_page_loaded(&self) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        while Instant::now() < deadline {
            let state = self
                .client
                .execute("return document.readyState;", Vec::new())
                .await
                .ok();
            if state.as_ref().and_then(Value::as_str) == Some("complete") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(self.page_error("load a page", "not complete in time"))
    }

    /// "Continue" on the idle warning, with the keyboard: the warning put the focus on
    /// its button; Enter. `Ok(true)` when the warning went away and the page stayed,
    /// `Ok(false)` when the browser ended on the expiry page instead.
    pub async fn keepalive(&mut self) -> Result<bool> {
        self.expect_focus("idle-continue", "the idle warning appears")
            .await?;
        self.press(&ENTER.to_string()).await?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let url = self
                .client
                .current_url()
                .await
                .map_err(self.wd("read the URL"))?;
            if url.path().ends_with("/expired") {
                return Ok(false);
            }
            if let Some(w) = self.idle_warning().await? {
                if w.hidden {
                    return Ok(true);
                }
            }
            if Instant::now() > deadline {
                return Err(self.page_error("continue", "the warning stayed on screen"));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The session cookie the browser holds (`portal_session`), to show that the server
    /// refuses it afterwards.
    pub async fn session_cookie(&self) -> Result<Option<String>> {
        let cookies = self
            .client
            .get_all_cookies()
            .await
            .map_err(self.wd("read cookies"))?;
        Ok(cookies
            .iter()
            .find(|c| c.name() == "portal_session")
            .map(|c| c.value().to_string()))
    }

    /// Ends the WebDriver session (Chromium quits), then stops chromedriver.
    pub async fn close(self) {
        let ChromeUser { client, driver, .. } = self;
        let _ = client.close().await;
        drop(driver);
    }

    /// chromedriver's process id (its process group holds every browser process).
    pub fn driver_pid(&self) -> u32 {
        self.driver.child.id()
    }
}

/// The text a page in `lang` shows on the Get Key button: the product's own wording
/// (English UI; the Japanese documentation's **\[キーの取得\]**).
pub fn get_key_label(lang: &str) -> Option<&'static str> {
    match lang {
        "en" => Some("Get Key"),
        "ja" => Some("キーの取得"),
        _ => None,
    }
}
