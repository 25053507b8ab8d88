//! The HTTP plumbing every client shares: a client that trusts the portal's certificate,
//! and "send, check the status, decode" with errors that name the step.

use std::time::Duration;

use reqwest::{Client, RequestBuilder, Url};
use serde::de::DeserializeOwned;

use super::error::{excerpt, PortalError};
use super::{PortalTarget, Result};

/// Per-request deadline: a hung portal must fail a step, not hang the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for `target`; `cookies` for the HTML sites (the session cookie).
pub(crate) fn client(target: &PortalTarget, cookies: bool) -> Result<Client> {
    let mut builder = Client::builder()
        .use_rustls_tls()
        .timeout(REQUEST_TIMEOUT)
        .cookie_store(cookies)
        // A browser follows the 303 after a form post; so do we (bounded).
        .redirect(reqwest::redirect::Policy::limited(10));
    if let Some(path) = &target.ca_cert {
        let cert_error = |detail: String| PortalError::Certificate {
            path: path.display().to_string(),
            detail,
        };
        let pem = std::fs::read(path).map_err(|e| cert_error(e.to_string()))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| cert_error(e.to_string()))?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().map_err(|source| PortalError::Transport {
        step: "building the HTTP client".to_string(),
        source,
    })
}

/// `base` + an absolute path like `/api/agent/keys`.
pub(crate) fn join(base: &Url, path: &str) -> Result<Url> {
    base.join(path)
        .map_err(|e| PortalError::Usage(format!("cannot join {base} and {path}: {e}")))
}

/// A finished exchange: status, final URL (after redirects) and body text.
pub(crate) struct Reply {
    pub status: u16,
    pub url: Url,
    pub body: String,
}

pub(crate) async fn send(step: &str, request: RequestBuilder) -> Result<Reply> {
    let transport = |source| PortalError::Transport {
        step: step.to_string(),
        source,
    };
    let response = request.send().await.map_err(transport)?;
    let status = response.status().as_u16();
    let url = response.url().clone();
    let body = response.text().await.map_err(transport)?;
    Ok(Reply { status, url, body })
}

/// Sends and insists on one of `expected` statuses.
pub(crate) async fn send_expect(
    step: &str,
    request: RequestBuilder,
    expected: &[u16],
) -> Result<Reply> {
    let reply = send(step, request).await?;
    if !expected.contains(&reply.status) {
        return Err(status_error(step, expected, &reply));
    }
    Ok(reply)
}

/// Sends, insists on a status, and decodes the JSON body.
pub(crate) async fn send_json<T: DeserializeOwned>(
    step: &str,
    request: RequestBuilder,
    expected: &[u16],
) -> Result<T> {
    let reply = send_expect(step, request, expected).await?;
    decode(step, &reply)
}

pub(crate) fn decode<T: DeserializeOwned>(step: &str, reply: &Reply) -> Result<T> {
    serde_json::from_str(&reply.body).map_err(|e| PortalError::Body {
        step: step.to_string(),
        status: reply.status,
        detail: format!("not the documented JSON: {e}"),
        excerpt: excerpt(&reply.body),
    })
}

pub(crate) fn status_error(step: &str, expected: &[u16], reply: &Reply) -> PortalError {
    let expected = expected
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(" or ");
    PortalError::Status {
        step: step.to_string(),
        expected: format!("status {expected}"),
        status: reply.status,
        code: error_code(&reply.body),
        excerpt: excerpt(&reply.body),
    }
}

/// The `code` of the documented JSON error shape `{"error":{"code":..}}`.
fn error_code(body: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    value
        .get("error")?
        .get("code")?
        .as_str()
        .map(str::to_string)
}
