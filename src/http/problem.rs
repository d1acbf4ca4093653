//! The admin API's plumbing, written once: its error answer ([`Problem`], one JSON shape
//! for every refusal), the caller's role (checked by the router from the operation table,
//! see [`require_role`]) and extractors whose rejections are that same JSON shape.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::domain::access::Role;
use crate::store::StoreError;
use crate::telemetry::escape;

/// Every refusal of the admin API, answered as [`ErrorAnswer`].
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("the API is not configured (api.tokens)")]
    NotConfigured,
    #[error("missing or unknown bearer token")]
    Unauthenticated,
    #[error("this token's role may only read")]
    Forbidden,
    /// A parameter or body that does not parse as the document describes it.
    #[error("{0}")]
    BadRequest(String),
    #[error("request body too large or unreadable")]
    BodyRejected(StatusCode),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(&'static str),
    /// Well formed, but the fields together say nothing we can act on.
    #[error("{0}")]
    Unprocessable(String),
    #[error("temporarily unavailable")]
    Unavailable,
}

/// The body of every error answer.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorAnswer {
    /// What was wrong, for a person.
    pub error: String,
}

impl Problem {
    pub fn status(&self) -> StatusCode {
        match self {
            Problem::NotConfigured | Problem::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Problem::Unauthenticated => StatusCode::UNAUTHORIZED,
            Problem::Forbidden => StatusCode::FORBIDDEN,
            Problem::BadRequest(_) => StatusCode::BAD_REQUEST,
            Problem::BodyRejected(status) => *status,
            Problem::NotFound(_) => StatusCode::NOT_FOUND,
            Problem::Conflict(_) => StatusCode::CONFLICT,
            Problem::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_client_error() {
            tracing::info!(status = status.as_u16(), reason = %escape(&self.to_string()), "admin API refused a request");
        }
        (
            status,
            Json(ErrorAnswer {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

impl From<StoreError> for Problem {
    /// The database's text stays in the log; the client learns only to retry.
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %escape(&e.to_string()), "admin API: database error");
        Problem::Unavailable
    }
}

/// Who called: the role of a bearer token the router accepted for the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
}

impl Caller {
    /// How the caller is recorded in admin actions.
    pub fn actor(self) -> String {
        format!("api:{}", self.role)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        // Put there by `require_role`: a handler asking for a Caller on a route without it
        // is refused rather than let through.
        parts
            .extensions
            .get::<Caller>()
            .copied()
            .ok_or(Problem::Unauthenticated)
    }
}

/// The role of the request's bearer token. Every configured digest is compared, in
/// constant time, whichever matches.
fn token_role(state: &AppState, headers: &HeaderMap) -> Result<Role, Problem> {
    let allowed = &state.settings.api.tokens;
    if allowed.is_empty() {
        tracing::error!("API refused: api.tokens is empty");
        return Err(Problem::NotConfigured);
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    let digest = hex::encode(Sha256::digest(token.as_bytes()));
    let mut role = None;
    for entry in allowed.iter() {
        if bool::from(digest.as_bytes().ct_eq(entry.digest.as_bytes())) {
            role = role.max(Some(entry.role));
        }
    }
    role.filter(|_| !token.is_empty()).ok_or_else(|| {
        state.metrics.reject("api", "bad_token");
        tracing::warn!("API refused: missing or unknown bearer token");
        Problem::Unauthenticated
    })
}

/// The router's guard for an operation whose least role is `least`: 401 without a known
/// token, 403 when its role is below `least`; otherwise the [`Caller`] goes with the
/// request to the handler.
pub async fn require_role(
    State((state, least)): State<(AppState, Role)>,
    mut request: Request,
    next: Next,
) -> Result<Response, Problem> {
    let role = token_role(&state, request.headers())?;
    if role < least {
        state.metrics.reject("api", "role");
        tracing::warn!(role = %role, "API refused: the token's role may not take this action");
        return Err(Problem::Forbidden);
    }
    request.extensions_mut().insert(Caller { role });
    Ok(next.run(request).await)
}

/// `Query<T>` whose refusal is a [`Problem`] (400 with the parameter at fault).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(Problem::BadRequest(query_reason(&rejection))),
        }
    }
}

fn query_reason(rejection: &QueryRejection) -> String {
    match rejection {
        QueryRejection::FailedToDeserializeQueryString(e) => format!("query: {}", e.body_text()),
        other => other.body_text(),
    }
}

/// `Path<T>` whose refusal is a [`Problem`] (400: a segment that is not the type).
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => Err(Problem::BadRequest(e.body_text())),
            Err(other) => Err(Problem::BadRequest(other.body_text())),
        }
    }
}

/// A JSON body whose refusal is a [`Problem`]. The body is read as JSON whatever its
/// content type says (integrations send `text/plain` more often than one would think).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let body = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| Problem::BodyRejected(rejection.status()))?;
        serde_json::from_slice(&body)
            .map(ApiJson)
            .map_err(|e| Problem::BadRequest(format!("body is not the expected JSON: {e}")))
    }
}
