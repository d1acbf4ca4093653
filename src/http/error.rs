//! One error type for every handler, mapped to a status and a short plain-text reason.
//! Nothing a client sends maps to 500: bad input is 4xx, and our own trouble (the
//! database is down) is 503 so that the sender retries later.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::domain::inbox::PayloadError;
use crate::signatures::SignatureError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("this webhook is not configured: {0}")]
    NotConfigured(&'static str),
    #[error("request body too large or unreadable")]
    BodyRejected(StatusCode),
    #[error("authentication failed: {}", .0.as_label())]
    Unauthenticated(SignatureError),
    #[error("{0}")]
    BadPayload(#[from] PayloadError),
    #[error("forbidden")]
    Forbidden,
    #[error("temporarily unavailable")]
    Unavailable,
    #[error("too many events in one request (at most {0})")]
    TooManyEvents(usize),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotConfigured(_) | ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BodyRejected(status) => *status,
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::BadPayload(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::TooManyEvents(_) => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// The `reason` label of the rejection metric.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotConfigured(_) => "not_configured",
            ApiError::BodyRejected(StatusCode::PAYLOAD_TOO_LARGE) => "too_large",
            ApiError::BodyRejected(_) => "unreadable_body",
            ApiError::Unauthenticated(e) => e.as_label(),
            ApiError::BadPayload(e) => e.as_label(),
            ApiError::Forbidden => "forbidden",
            ApiError::Unavailable => "store_unavailable",
            ApiError::TooManyEvents(_) => "too_many_events",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), self.to_string()).into_response()
    }
}
