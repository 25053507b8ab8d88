//! Start-up configuration (`--config FILE`) and the run-time settings admins can change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::clock::Clock;
use crate::crypto::Argon2Config;

#[derive(Debug, Error)]
pub enum ConfigError {
    // The source is printed by the error chain (`{e:#}`), so not here as well.
    #[error("config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("config file: settings.{field}: {message}")]
    Setting {
        field: &'static str,
        message: String,
    },
}

/// Run-time settings (admin API `GET/PUT /api/admin/settings`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Settings {
    pub company_name: String,
    pub helpdesk_text: String,
    pub helpdesk_url: String,
    pub notice_text: String,
    /// The notice per page language (`ja`, `en`); a language without an entry shows
    /// `notice_text`. Absent from settings stored by older builds: the default then.
    #[serde(default = "default_notice_texts")]
    pub notice_texts: BTreeMap<String, String>,
    pub idle_timeout_secs: u64,
    pub warning_secs: u64,
    pub lookup_failure_limit: u64,
    pub lookup_failure_window_secs: u64,
    /// Accounts (user names, any case) the failed-lookup limit does not apply to, e.g. a
    /// load-test account. Empty by default; absent from older stored settings.
    #[serde(default)]
    pub lookup_rate_limit_exempt: Vec<String>,
}

/// The Japanese notice shipped by default.
pub const DEFAULT_NOTICE_JA: &str =
    "このポータルでは、お使いのデバイスの BitLocker 回復キーを取得できます。\
    すべての要求は記録されます。ここで取得したキーは 1 回だけ使用できます。\
    ロックを解除した後、デバイスによって新しいキーに置き換えられます。";

fn default_notice_texts() -> BTreeMap<String, String> {
    BTreeMap::from([("ja".to_string(), DEFAULT_NOTICE_JA.to_string())])
}

impl Settings {
    /// The notice for a page in language `tag`.
    pub fn notice_for(&self, tag: &str) -> &str {
        self.notice_texts
            .get(tag)
            .map_or(self.notice_text.as_str(), String::as_str)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            company_name: "Contoso".into(),
            helpdesk_text: "Contact your help desk to get your recovery key.".into(),
            helpdesk_url: "https://helpdesk.contoso.com".into(),
            notice_text: "This portal gives you the BitLocker recovery key of a device you use. \
                Every request is recorded. A key you get here is valid for one use only: your \
                device replaces it after you have unlocked it."
                .into(),
            notice_texts: default_notice_texts(),
            idle_timeout_secs: 300,
            warning_secs: 60,
            lookup_failure_limit: 10,
            lookup_failure_window_secs: 600,
            lookup_rate_limit_exempt: Vec::new(),
        }
    }
}

/// A partial settings update; every field optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    pub company_name: Option<String>,
    pub helpdesk_text: Option<String>,
    pub helpdesk_url: Option<String>,
    pub notice_text: Option<String>,
    /// Per language: a text sets that language's notice, `null` removes it (the page then
    /// shows `notice_text`); languages not named keep theirs.
    pub notice_texts: Option<BTreeMap<String, Option<String>>>,
    pub idle_timeout_secs: Option<u64>,
    pub warning_secs: Option<u64>,
    pub lookup_failure_limit: Option<u64>,
    pub lookup_failure_window_secs: Option<u64>,
    pub lookup_rate_limit_exempt: Option<Vec<String>>,
}

fn text(
    field: &'static str,
    v: &str,
    min: usize,
    max: usize,
) -> Result<(), (&'static str, String)> {
    let n = v.chars().count();
    if n < min || n > max {
        return Err((field, format!("must be {min} to {max} characters")));
    }
    if v.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
    {
        return Err((field, "must not contain control characters".into()));
    }
    Ok(())
}

fn range(field: &'static str, v: u64, min: u64, max: u64) -> Result<(), (&'static str, String)> {
    if v < min || v > max {
        return Err((field, format!("must be between {min} and {max}")));
    }
    Ok(())
}

impl Settings {
    /// Applies a patch after validating it; on error names the field.
    pub fn apply(&self, p: &SettingsPatch) -> Result<Settings, (&'static str, String)> {
        let mut s = self.clone();
        if let Some(v) = &p.company_name {
            text("company_name", v, 1, 200)?;
            s.company_name = v.clone();
        }
        if let Some(v) = &p.helpdesk_text {
            text("helpdesk_text", v, 0, 2000)?;
            s.helpdesk_text = v.clone();
        }
        if let Some(v) = &p.helpdesk_url {
            text("helpdesk_url", v, 0, 2000)?;
            if !(v.is_empty() || v.starts_with("https://") || v.starts_with("http://"))
                || v.contains(['"', '<', '>', ' '])
            {
                return Err(("helpdesk_url", "must be an http(s) URL or empty".into()));
            }
            s.helpdesk_url = v.clone();
        }
        if let Some(v) = &p.notice_text {
            text("notice_text", v, 0, 10000)?;
            s.notice_text = v.clone();
        }
        if let Some(map) = &p.notice_texts {
            for (tag, text_of) in map {
                let Some(lang) = crate::i18n::Lang::from_tag(tag) else {
                    return Err(("notice_texts", "keys must be page languages: en, ja".into()));
                };
                match text_of {
                    Some(v) => {
                        text("notice_texts", v, 0, 10000)?;
                        s.notice_texts.insert(lang.tag().to_string(), v.clone());
                    }
                    None => {
                        s.notice_texts.remove(lang.tag());
                    }
                }
            }
        }
        if let Some(v) = p.idle_timeout_secs {
            range("idle_timeout_secs", v, 1, 86400)?;
            s.idle_timeout_secs = v;
        }
        if let Some(v) = p.warning_secs {
            range("warning_secs", v, 0, 3600)?;
            s.warning_secs = v;
        }
        if let Some(v) = p.lookup_failure_limit {
            range("lookup_failure_limit", v, 1, 1_000_000)?;
            s.lookup_failure_limit = v;
        }
        if let Some(v) = p.lookup_failure_window_secs {
            range("lookup_failure_window_secs", v, 1, 86400)?;
            s.lookup_failure_window_secs = v;
        }
        if let Some(v) = &p.lookup_rate_limit_exempt {
            if v.len() > 100 {
                return Err((
                    "lookup_rate_limit_exempt",
                    "must name at most 100 accounts".into(),
                ));
            }
            for name in v {
                text("lookup_rate_limit_exempt", name, 1, 256)?;
            }
            s.lookup_rate_limit_exempt = v.clone();
        }
        Ok(s)
    }
}

/// The `--config FILE` document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub settings: SettingsPatch,
    #[serde(default)]
    pub argon2: Argon2Config,
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    #[serde(default = "default_bulk")]
    pub max_bulk_body_bytes: usize,
    /// `postgres://...`: keep the store in that PostgreSQL database instead of the SQLite
    /// file in the data dir. `--database-url` overrides it.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Set by `serve` under TLS: adds `Secure` to the session cookie. Not read from the file.
    #[serde(skip)]
    pub secure_cookies: bool,
    /// The clock for session inactivity: the system's, or a test's `ManualClock`. Never
    /// read from the file (`crate::clock`).
    #[serde(skip)]
    pub clock: Clock,
}

fn default_body() -> usize {
    64 * 1024
}
fn default_bulk() -> usize {
    // 100 000 keys of ~220 bytes of JSON each.
    32 * 1024 * 1024
}

impl Default for Config {
    fn default() -> Self {
        Config {
            settings: SettingsPatch::default(),
            argon2: Argon2Config::default(),
            max_body_bytes: default_body(),
            max_bulk_body_bytes: default_bulk(),
            database_url: None,
            secure_cookies: false,
            clock: Clock::System,
        }
    }
}

impl Config {
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        let cfg: Config =
            serde_json::from_str(&text).map_err(|source| ConfigError::Parse { path: p, source })?;
        Settings::default()
            .apply(&cfg.settings)
            .map_err(|(field, message)| ConfigError::Setting { field, message })?;
        Ok(cfg)
    }
}
