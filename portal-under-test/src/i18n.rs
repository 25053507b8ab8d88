//! The HTML sites in English and Japanese.
//!
//! Messages are Fluent files compiled into the binary (`locales/<lang>/portal.ftl`). The
//! language of a request is chosen, in this order, by `?lang=` (which also sets the
//! `portal_lang` cookie: the switch on every page), the `portal_lang` cookie, and the
//! `Accept-Language` header (by its `q` weights), negotiated with `fluent-langneg` (`ja-JP`
//! → `ja`; anything unsupported → English).
//!
//! [`layer`] resolves it once per request and keeps it in a task-local for the handler, so
//! page builders and error messages ask [`tr`] without threading a parameter through every
//! handler. Element ids and form values (the reasons) never change with the language.

use std::sync::LazyLock;

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use fluent_bundle::concurrent::FluentBundle;
use fluent_bundle::{FluentArgs, FluentResource};
use fluent_langneg::{negotiate_languages, NegotiationStrategy};
use unic_langid::LanguageIdentifier;

/// The cookie the language switch sets.
pub const LANG_COOKIE: &str = "portal_lang";

/// A language the pages exist in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    En,
    Ja,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::En, Lang::Ja];

    /// The BCP 47 tag (`<html lang>`, `?lang=`, `notice_texts` keys).
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ja => "ja",
        }
    }

    /// A supported language by its exact tag (`en`, `ja`; case-insensitive).
    pub fn from_tag(tag: &str) -> Option<Lang> {
        Lang::ALL
            .into_iter()
            .find(|l| l.tag().eq_ignore_ascii_case(tag.trim()))
    }

    fn source(self) -> &'static str {
        match self {
            Lang::En => include_str!("../locales/en/portal.ftl"),
            Lang::Ja => include_str!("../locales/ja/portal.ftl"),
        }
    }

    fn id(self) -> LanguageIdentifier {
        self.tag().parse().unwrap_or_default()
    }
}

struct Bundles {
    en: FluentBundle<FluentResource>,
    ja: FluentBundle<FluentResource>,
}

fn bundle(lang: Lang) -> FluentBundle<FluentResource> {
    let mut b = FluentBundle::new_concurrent(vec![lang.id()]);
    // No Unicode isolation marks around arguments: the pages are plain LTR text.
    b.set_use_isolating(false);
    // A syntax error leaves the rest of the file usable (the unit test refuses any).
    let res = FluentResource::try_new(lang.source().to_string()).unwrap_or_else(|(res, _)| res);
    // Duplicate ids keep the first; the unit test refuses them too.
    let _ = b.add_resource(res);
    b
}

static BUNDLES: LazyLock<Bundles> = LazyLock::new(|| Bundles {
    en: bundle(Lang::En),
    ja: bundle(Lang::Ja),
});

fn format(lang: Lang, id: &str, args: Option<&FluentArgs>) -> Option<String> {
    let b = match lang {
        Lang::En => &BUNDLES.en,
        Lang::Ja => &BUNDLES.ja,
    };
    let pattern = b.get_message(id)?.value()?;
    let mut errors = Vec::new();
    Some(b.format_pattern(pattern, args, &mut errors).into_owned())
}

/// Message `id` in `lang`, else in English, else the id itself (never fails).
pub fn text(lang: Lang, id: &str, args: Option<&FluentArgs>) -> String {
    format(lang, id, args)
        .or_else(|| format(Lang::En, id, args))
        .unwrap_or_else(|| id.to_string())
}

/// What the middleware resolved for the request being handled.
#[derive(Debug, Clone)]
pub struct RequestLang {
    pub lang: Lang,
    /// Where the language links point: the page itself for a GET, else the site's home.
    pub switch_path: String,
}

tokio::task_local! {
    static CURRENT: RequestLang;
}

/// The language of the request being handled (English outside a request).
pub fn current() -> Lang {
    CURRENT.try_with(|c| c.lang).unwrap_or_default()
}

/// The path the language links point to (`/` outside a request).
pub fn switch_path() -> String {
    CURRENT
        .try_with(|c| c.switch_path.clone())
        .unwrap_or_else(|_| "/".to_string())
}

/// Message `id` in the current request's language.
pub fn tr(id: &str) -> String {
    text(current(), id, None)
}

/// Message `id` with one argument, in the current request's language.
pub fn tr1(id: &str, name: &'static str, value: &str) -> String {
    let mut args = FluentArgs::new();
    args.set(name, value.to_string());
    text(current(), id, Some(&args))
}

/// The text shown for a reason value (the value itself stays the product's English label).
pub fn reason_label(value: &str) -> String {
    let id = match value {
        "BIOS/TPM changed" => "reason-bios-tpm",
        "OS filed modified" => "reason-os-files",
        "Lost PIN/passphrase" => "reason-lost-pin",
        other => return other.to_string(),
    };
    tr(id)
}

/// `?lang=` of a query string, if it names a supported language.
fn query_lang(query: Option<&str>) -> Option<Lang> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "lang")
        .and_then(|(_, v)| Lang::from_tag(v))
}

fn cookie_lang(headers: &HeaderMap) -> Option<Lang> {
    CookieJar::from_headers(headers)
        .get(LANG_COOKIE)
        .and_then(|c| Lang::from_tag(c.value()))
}

/// Negotiates an `Accept-Language` value against the supported languages (RFC 4647
/// filtering: `ja-JP` matches `ja`); English when nothing matches.
pub fn from_accept_language(value: &str) -> Lang {
    let requested = accepted_by_weight(value);
    let available: Vec<LanguageIdentifier> = Lang::ALL.iter().map(|l| l.id()).collect();
    let default = Lang::En.id();
    let chosen = negotiate_languages(
        &requested,
        &available,
        Some(&default),
        NegotiationStrategy::Filtering,
    );
    chosen
        .first()
        .and_then(|id| Lang::from_tag(id.language.as_str()))
        .unwrap_or_default()
}

/// The language ranges of an `Accept-Language` value, most wanted first (RFC 9110 §12.4.2:
/// by `q`, ties in the order given), without the refused ones (`q=0`) and those that do not
/// parse. `fluent-langneg`'s own parser keeps the order given and ignores `q`.
fn accepted_by_weight(value: &str) -> Vec<LanguageIdentifier> {
    let mut ranges: Vec<(u16, LanguageIdentifier)> = value
        .split(',')
        .filter_map(|item| {
            let mut parts = item.split(';');
            let tag = parts.next()?.trim().parse().ok()?;
            let weight = match parts.find_map(|p| {
                let p = p.trim();
                p.strip_prefix("q=").or_else(|| p.strip_prefix("Q="))
            }) {
                Some(q) => qvalue(q)?,
                None => 1000,
            };
            (weight > 0).then_some((weight, tag))
        })
        .collect();
    ranges.sort_by_key(|(weight, _)| std::cmp::Reverse(*weight));
    ranges.into_iter().map(|(_, tag)| tag).collect()
}

/// A `q` value (0 to 1, up to three decimals) in thousandths.
fn qvalue(q: &str) -> Option<u16> {
    let q: f32 = q.trim().parse().ok()?;
    // In range, so the product fits a u16.
    (0.0..=1.0)
        .contains(&q)
        .then(|| (q * 1000.0).round() as u16)
}

/// The language of a request: `?lang=`, then the cookie, then `Accept-Language`.
/// The second value says whether `?lang=` chose it (then the cookie is set).
pub fn resolve(query: Option<&str>, headers: &HeaderMap) -> (Lang, bool) {
    if let Some(lang) = query_lang(query) {
        return (lang, true);
    }
    if let Some(lang) = cookie_lang(headers) {
        return (lang, false);
    }
    let accept = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    (from_accept_language(accept), false)
}

/// Middleware for the HTML routes: resolves the language, runs the handler with it, and
/// labels the answer (`Content-Language`, `Vary`, and the cookie after a switch).
pub async fn layer(req: Request, next: Next) -> Response {
    let (lang, switched) = resolve(req.uri().query(), req.headers());
    let path = req.uri().path();
    let switch_path = if req.method() == Method::GET {
        path.to_string()
    } else {
        // A POST's answer cannot be reloaded by a link: go to the site's home instead.
        let site = path.trim_start_matches('/').split('/').next().unwrap_or("");
        format!("/{site}")
    };
    let ctx = RequestLang { lang, switch_path };
    let mut resp = CURRENT.scope(ctx, next.run(req)).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_LANGUAGE,
        HeaderValue::from_static(lang.tag()),
    );
    h.insert(
        header::VARY,
        HeaderValue::from_static("Accept-Language, Cookie"),
    );
    if switched {
        let c = Cookie::build((LANG_COOKIE, lang.tag()))
            .path("/")
            .same_site(SameSite::Lax)
            .max_age(time::Duration::days(365));
        return (CookieJar::new().add(c), resp).into_response();
    }
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn ids(lang: Lang) -> Vec<String> {
        if let Err((_, e)) = FluentResource::try_new(lang.source().to_string()) {
            panic!("{lang:?}: syntax errors {e:?}");
        }
        lang.source()
            .lines()
            .filter(|l| l.starts_with(|c: char| c.is_ascii_lowercase()))
            .filter_map(|l| l.split_once(" = ").map(|(id, _)| id.to_string()))
            .collect()
    }

    #[test]
    fn both_languages_parse_and_have_the_same_messages() {
        let mut en = ids(Lang::En);
        let mut ja = ids(Lang::Ja);
        en.sort();
        ja.sort();
        let n = en.len();
        en.dedup();
        assert_eq!(en.len(), n, "duplicate ids in en");
        assert_eq!(en, ja, "en and ja must define the same message ids");
    }

    #[test]
    fn accept_language_falls_back_from_region_to_language_to_english() {
        assert_eq!(from_accept_language("ja-JP"), Lang::Ja);
        assert_eq!(from_accept_language("ja"), Lang::Ja);
        assert_eq!(from_accept_language("fr-FR, ja;q=0.5"), Lang::Ja);
        assert_eq!(from_accept_language("en-US,en;q=0.9,ja;q=0.8"), Lang::En);
        assert_eq!(from_accept_language("de-DE"), Lang::En);
        assert_eq!(from_accept_language(""), Lang::En);
        assert_eq!(from_accept_language("*;;;=garbage,\u{0}"), Lang::En);
        // The weights decide, not the order; `q=0` refuses a language.
        assert_eq!(from_accept_language("en;q=0.9, ja"), Lang::Ja);
        assert_eq!(from_accept_language("en;q=0.5,ja-JP;Q=0.8"), Lang::Ja);
        assert_eq!(from_accept_language("ja;q=0"), Lang::En);
        assert_eq!(from_accept_language("ja;q=0.000, de"), Lang::En);
        assert_eq!(from_accept_language("ja;q=2, en;q=x"), Lang::En);
    }

    #[test]
    fn query_beats_cookie_beats_header() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("ja-JP"));
        assert_eq!(resolve(None, &h), (Lang::Ja, false));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; portal_lang=en"),
        );
        assert_eq!(resolve(None, &h), (Lang::En, false));
        assert_eq!(resolve(Some("x=1&lang=ja"), &h), (Lang::Ja, true));
        assert_eq!(resolve(Some("lang=xx"), &h), (Lang::En, false));
    }

    #[test]
    fn reasons_keep_their_values_and_translate_their_text() {
        assert_eq!(
            text(Lang::Ja, "reason-lost-pin", None),
            "PIN/パスフレーズの紛失"
        );
        assert_eq!(text(Lang::En, "reason-os-files", None), "OS filed modified");
        assert_eq!(text(Lang::Ja, "no-such-message", None), "no-such-message");
    }
}
