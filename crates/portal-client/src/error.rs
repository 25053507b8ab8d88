//! The portal client's one error type.

/// Which request failed and how. `step` reads like `agent: POST /api/agent/keys`, so a
/// runner can say "step X expected Y, got Z".
#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    #[error("portal binary not found: {0}")]
    BinaryNotFound(String),
    #[error("cannot start the portal: {step}: {detail}")]
    Start { step: String, detail: String },
    #[error("cannot use the portal's certificate {path}: {detail}")]
    Certificate { path: String, detail: String },
    #[error("{step}: no answer: {source}")]
    Transport {
        step: String,
        #[source]
        source: reqwest::Error,
    },
    /// The portal answered, but not with a status the step accepts.
    #[error("{step}: expected {expected}, got {status}{}: {excerpt}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status {
        step: String,
        expected: String,
        status: u16,
        /// The JSON error `code`, when the body is the documented error shape.
        code: Option<String>,
        excerpt: String,
    },
    /// The status was right but the body is not what the contract promises (bad JSON, a
    /// page without the expected form or element).
    #[error("{step}: status {status}: {detail}: {excerpt}")]
    Body {
        step: String,
        status: u16,
        detail: String,
        excerpt: String,
    },
    #[error("{0}")]
    Usage(String),
}

impl PortalError {
    /// The HTTP status the portal answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            PortalError::Status { status, .. } | PortalError::Body { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A short, single-line excerpt of a body for error messages.
pub(crate) fn excerpt(body: &str) -> String {
    const MAX: usize = 300;
    let flat: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= MAX {
        return flat;
    }
    let cut: String = flat.chars().take(MAX).collect();
    format!("{cut}…")
}
