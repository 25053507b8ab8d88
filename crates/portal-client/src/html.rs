//! Reading the portal's HTML as a browser without JavaScript does: elements by id, and
//! forms serialised with every successful control (hidden CSRF token included).
//!
//! scraper's `Html` is not `Send`, so a [`Page`] keeps the text and parses on demand; the
//! clients stay usable across `.await`s on a multi-threaded runtime.

use reqwest::Url;
use scraper::{ElementRef, Html, Selector};

/// One page the portal answered, after redirects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub status: u16,
    /// The final URL (after following 303s).
    pub url: Url,
    pub body: String,
}

/// A form ready to submit: where to, how, and the fields in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Form {
    pub action: Url,
    pub method_post: bool,
    pub fields: Vec<(String, String)>,
    /// For each `<select>`: its name and the values it offers.
    pub selects: Vec<(String, Vec<String>)>,
}

impl Form {
    /// Types `value` into the control `name` (adding it when the form has no such control,
    /// as a script would; the portal must cope).
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        if let Some((_, options)) = self.selects.iter().find(|(n, _)| n == name) {
            if !options.iter().any(|o| o == value) {
                return Err(format!(
                    "the `{name}` list does not offer `{value}` (it offers: {})",
                    options.join(" | ")
                ));
            }
        }
        match self.fields.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value.to_string(),
            None => self.fields.push((name.to_string(), value.to_string())),
        }
        Ok(())
    }

    pub fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|(n, _)| n == name)
    }
}

fn selector(css: &str) -> Option<Selector> {
    Selector::parse(css).ok()
}

/// The element with that id, if any.
fn by_id<'a>(doc: &'a Html, id: &str) -> Option<ElementRef<'a>> {
    let sel = selector(&format!("[id=\"{id}\"]"))?;
    doc.select(&sel).next()
}

/// Whitespace-normalised text of an element.
fn text(el: ElementRef<'_>) -> String {
    el.text()
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl Page {
    pub fn has(&self, id: &str) -> bool {
        let doc = Html::parse_document(&self.body);
        by_id(&doc, id).is_some()
    }

    /// `<html lang>`: the language the page says it is in.
    pub fn language(&self) -> Option<String> {
        let doc = Html::parse_document(&self.body);
        doc.root_element().value().attr("lang").map(str::to_string)
    }

    /// The text of the element with that id (whitespace normalised).
    pub fn text_of(&self, id: &str) -> Option<String> {
        let doc = Html::parse_document(&self.body);
        by_id(&doc, id).map(text)
    }

    /// An attribute of the element with that id.
    pub fn attr_of(&self, id: &str, attr: &str) -> Option<String> {
        let doc = Html::parse_document(&self.body);
        by_id(&doc, id).and_then(|el| el.value().attr(attr).map(str::to_string))
    }

    /// Whether the element with that id, or one of its ancestors, is hidden (`hidden`
    /// attribute or an inline `display:none`).
    pub fn is_hidden(&self, id: &str) -> Option<bool> {
        let doc = Html::parse_document(&self.body);
        let el = by_id(&doc, id)?;
        let hidden = std::iter::once(*el)
            .chain(el.ancestors())
            .filter_map(|n| n.value().as_element())
            .any(|e| {
                e.attr("hidden").is_some()
                    || e.attr("style").is_some_and(|s| {
                        s.chars()
                            .filter(|c| !c.is_whitespace())
                            .collect::<String>()
                            .to_ascii_lowercase()
                            .contains("display:none")
                    })
            });
        Some(hidden)
    }

    /// The value of the first `csrf_token` field on the page.
    pub fn csrf_token(&self) -> Option<String> {
        let doc = Html::parse_document(&self.body);
        let sel = selector("input[name=\"csrf_token\"]")?;
        doc.select(&sel)
            .next()
            .and_then(|el| el.value().attr("value").map(str::to_string))
    }

    /// The form that contains the element `id` (or is it), serialised as a browser would
    /// submit it with that element as the submitter.
    pub(crate) fn form_with(&self, id: &str) -> Result<Form, String> {
        let doc = Html::parse_document(&self.body);
        let target = by_id(&doc, id).ok_or_else(|| format!("no element with id=\"{id}\""))?;
        let form = std::iter::once(*target)
            .chain(target.ancestors())
            .filter_map(ElementRef::wrap)
            .find(|e| e.value().name() == "form")
            .ok_or_else(|| format!("element id=\"{id}\" is not inside a form"))?;
        let action = match form.value().attr("action") {
            Some(a) if !a.is_empty() => self
                .url
                .join(a)
                .map_err(|e| format!("form action `{a}`: {e}"))?,
            _ => self.url.clone(),
        };
        let method_post = form
            .value()
            .attr("method")
            .is_some_and(|m| m.eq_ignore_ascii_case("post"));
        let mut fields = Vec::new();
        let mut selects = Vec::new();
        let controls = selector("input, select, textarea, button")
            .ok_or_else(|| "internal: bad control selector".to_string())?;
        let options =
            selector("option").ok_or_else(|| "internal: bad option selector".to_string())?;
        for control in form.select(&controls) {
            let el = control.value();
            let Some(name) = el.attr("name") else {
                continue;
            };
            if name.is_empty() || el.attr("disabled").is_some() {
                continue;
            }
            match el.name() {
                "input" => {
                    let kind = el.attr("type").unwrap_or("text").to_ascii_lowercase();
                    let value = el.attr("value").unwrap_or_default().to_string();
                    match kind.as_str() {
                        "checkbox" | "radio" => {
                            if el.attr("checked").is_some() {
                                let v = if value.is_empty() {
                                    "on".to_string()
                                } else {
                                    value
                                };
                                fields.push((name.to_string(), v));
                            }
                        }
                        // Buttons count only as the submitter.
                        "submit" | "image" => {
                            if el.attr("id") == Some(id) {
                                fields.push((name.to_string(), value));
                            }
                        }
                        "button" | "reset" | "file" => {}
                        _ => fields.push((name.to_string(), value)),
                    }
                }
                "button" => {
                    let kind = el.attr("type").unwrap_or("submit").to_ascii_lowercase();
                    if kind == "submit" && el.attr("id") == Some(id) {
                        fields.push((
                            name.to_string(),
                            el.attr("value").unwrap_or_default().to_string(),
                        ));
                    }
                }
                "select" => {
                    let mut offered = Vec::new();
                    let mut chosen = None;
                    let mut first: Option<String> = None;
                    for option in control.select(&options) {
                        let o = option.value();
                        if o.attr("disabled").is_some() {
                            continue;
                        }
                        let value = o
                            .attr("value")
                            .map(str::to_string)
                            .unwrap_or_else(|| text(option));
                        if first.is_none() {
                            first = Some(value.clone());
                        }
                        if o.attr("selected").is_some() && chosen.is_none() {
                            chosen = Some(value.clone());
                        }
                        offered.push(value);
                    }
                    if let Some(v) = chosen.or(first) {
                        fields.push((name.to_string(), v));
                    }
                    selects.push((name.to_string(), offered));
                }
                "textarea" => fields.push((name.to_string(), text(control))),
                _ => {}
            }
        }
        Ok(Form {
            action,
            method_post,
            fields,
            selects,
        })
    }
}

/// The key IDs (`{GUID}`) in a text, in order, upper case, without repeats.
pub fn extract_key_ids(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut found: Vec<String> = Vec::new();
    let mut i = 0;
    while i + 38 <= bytes.len() {
        if bytes[i] == b'{' && bytes[i + 37] == b'}' && is_guid(&bytes[i + 1..i + 37]) {
            let id = text[i..i + 38].to_ascii_uppercase();
            if !found.contains(&id) {
                found.push(id);
            }
            i += 38;
        } else {
            i += 1;
        }
    }
    found
}

fn is_guid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn page(body: &str) -> Page {
        Page {
            status: 200,
            url: Url::parse("https://127.0.0.1:1/SelfService").unwrap(),
            body: body.to_string(),
        }
    }

    #[test]
    fn form_carries_hidden_fields_and_selected_option() {
        let p = page(
            r#"<form method="post" action="/SelfService/key">
                 <input type="hidden" name="csrf_token" value="abc">
                 <input id="key-id" name="key_id">
                 <select id="reason" name="reason"><option>BIOS/TPM changed</option>
                   <option value="OS filed modified" selected>OS</option></select>
                 <button id="get-key" type="submit">Get Key</button>
               </form>"#,
        );
        let mut form = p.form_with("get-key").unwrap();
        assert_eq!(form.action.as_str(), "https://127.0.0.1:1/SelfService/key");
        assert!(form.method_post);
        assert_eq!(
            form.fields,
            vec![
                ("csrf_token".to_string(), "abc".to_string()),
                ("key_id".to_string(), String::new()),
                ("reason".to_string(), "OS filed modified".to_string()),
            ]
        );
        assert!(form.set("reason", "Lost PIN").is_err());
        form.set("reason", "BIOS/TPM changed").unwrap();
        form.set("key_id", "0A1B2C3D").unwrap();
        assert_eq!(form.fields[1].1, "0A1B2C3D");
        assert_eq!(form.fields[2].1, "BIOS/TPM changed");
    }

    #[test]
    fn text_and_hidden_state_by_id() {
        let p = page(
            r#"<div id="idle-warning" hidden><span id="idle-countdown"> 60 </span></div>
               <p id="recovery-password">
                 111111-222222-333333-444444-555555-666666-777777-888888</p>"#,
        );
        assert_eq!(p.text_of("idle-countdown").as_deref(), Some("60"));
        assert_eq!(p.is_hidden("idle-countdown"), Some(true));
        assert_eq!(
            p.text_of("recovery-password").as_deref(),
            Some("111111-222222-333333-444444-555555-666666-777777-888888")
        );
        assert!(!p.has("matches"));
    }

    #[test]
    fn key_ids_are_found_in_text() {
        let t = "Keys: {0a1b2c3d-0000-1111-2222-333344445555} on PC-1, \
                 {0A1B2C3D-9999-1111-2222-333344445555} on PC-2, {bad}";
        assert_eq!(
            extract_key_ids(t),
            vec![
                "{0A1B2C3D-0000-1111-2222-333344445555}",
                "{0A1B2C3D-9999-1111-2222-333344445555}"
            ]
        );
    }
}
