//! One error type for every JSON handler; it renders the documented error body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use thiserror::Error;

use crate::store::StoreError;

#[derive(Debug, Error)]
pub enum AppError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("missing or wrong CSRF token")]
    Csrf,
    #[error("not found: {message}")]
    NotFound {
        field: Option<String>,
        message: String,
    },
    #[error("conflict: {message}")]
    Conflict {
        field: Option<String>,
        message: String,
    },
    #[error("request body too large")]
    TooLarge,
    #[error("too many failed key lookups")]
    RateLimited,
    #[error("method {0} not allowed")]
    MethodNotAllowed(String),
    /// The store's disk is full: nothing of the request was written (API.md, "Errors").
    #[error("insufficient storage: {0}")]
    InsufficientStorage(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The store is unreachable for now (503 with `Retry-After`).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// Seconds a client is told to wait (`Retry-After`) when the store is unreachable.
pub const RETRY_AFTER_SECS: u32 = 1;

impl AppError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        AppError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Invalid { .. } => StatusCode::BAD_REQUEST,
            AppError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) | AppError::Csrf => StatusCode::FORBIDDEN,
            AppError::NotFound { .. } => StatusCode::NOT_FOUND,
            AppError::Conflict { .. } => StatusCode::CONFLICT,
            AppError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            AppError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AppError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            AppError::Invalid { .. } => "invalid",
            AppError::Unauthenticated(_) => "unauthenticated",
            AppError::Forbidden(_) => "forbidden",
            AppError::Csrf => "csrf",
            AppError::NotFound { .. } => "not_found",
            AppError::Conflict { .. } => "conflict",
            AppError::TooLarge => "too_large",
            AppError::RateLimited => "rate_limited",
            AppError::MethodNotAllowed(_) => "method_not_allowed",
            AppError::InsufficientStorage(_) => "insufficient_storage",
            AppError::Internal(_) => "internal",
            AppError::Unavailable(_) => "unavailable",
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            AppError::Invalid { field, .. } => Some(field),
            AppError::NotFound { field, .. } | AppError::Conflict { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    /// The human text shown to the caller (internal details stay in the log).
    pub fn public_message(&self) -> String {
        match self {
            AppError::Invalid { field, message } => format!("{field} {message}"),
            AppError::Unauthenticated(m) | AppError::Forbidden(m) => m.clone(),
            AppError::Csrf => "missing or wrong CSRF token; reload the page and try again".into(),
            AppError::NotFound { message, .. } | AppError::Conflict { message, .. } => {
                message.clone()
            }
            AppError::TooLarge => "request body too large".into(),
            AppError::RateLimited => "too many failed key lookups; try again later".into(),
            AppError::MethodNotAllowed(m) => format!("method {m} is not allowed on this path"),
            AppError::InsufficientStorage(_) => {
                "the portal's storage is full: nothing was stored; try again later".into()
            }
            AppError::Internal(_) => "internal error".into(),
            AppError::Unavailable(_) => {
                "the portal's database is unavailable; try again shortly".into()
            }
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { field, message } => AppError::NotFound {
                field: Some(field.into()),
                message,
            },
            StoreError::Superseded(m) => AppError::Conflict {
                field: None,
                message: m,
            },
            StoreError::Conflict { message, .. } => AppError::Conflict {
                field: None,
                message,
            },
            StoreError::Unavailable(m) => AppError::Unavailable(m),
            // SQLite's SQLITE_FULL: the transaction rolled back, so the client may retry.
            StoreError::Sqlite(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) =>
            {
                AppError::InsufficientStorage(e.to_string())
            }
            other => AppError::Internal(other.to_string()),
        }
    }
}

impl From<crate::crypto::CryptoError> for AppError {
    fn from(e: crate::crypto::CryptoError) -> Self {
        AppError::Internal(e.to_string())
    }
}

impl From<tokio::task::JoinError> for AppError {
    fn from(e: tokio::task::JoinError) -> Self {
        AppError::Internal(format!("blocking task failed: {e}"))
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match &self {
            AppError::Internal(detail) => tracing::error!(%detail, "internal error"),
            AppError::InsufficientStorage(detail) => tracing::error!(%detail, "storage full"),
            _ => {}
        }
        if let AppError::Unavailable(detail) = &self {
            tracing::warn!(%detail, "store unavailable");
        }
        let body = json!({"error": {
            "code": self.code(),
            "field": self.field(),
            "message": self.public_message(),
        }});
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if matches!(self, AppError::Unavailable(_)) {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(RETRY_AFTER_SECS),
            );
        }
        resp
    }
}
