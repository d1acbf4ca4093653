//! The Flow data endpoint (`whatsapp.flow_endpoint_path`): Meta's signature first, then
//! decryption, then the answer, encrypted under the request's key. Statuses are Meta's:
//! 421 when the request cannot be decrypted (the client fetches our public key again),
//! 427 for a token we refuse, 432 for a bad signature; none carries a detail.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::app::flow_endpoint;
use crate::config::secret_value;
use crate::domain::flow_exchange::FlowRequest;
use crate::signatures;
use crate::telemetry::escape;

/// Meta's status for a request whose AES key or data we cannot decrypt.
const UNDECRYPTABLE: u16 = 421;
/// Meta's sample endpoint's status for a signature that does not match.
const SIGNATURE_FAILED: u16 = 432;

fn plain(status: u16, text: &'static str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, [("content-type", "text/plain")], text).into_response()
}

fn refused(state: &AppState, label: &'static str, status: u16, text: &'static str) -> Response {
    state.metrics.flow_answer(label);
    plain(status, text)
}

pub async fn flow_data(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Nothing is known of a request until its signature is checked, so nothing else is
    // said (or counted as our failure) before.
    let Some(secret) = secret_value(&state.settings.whatsapp.app_secret) else {
        tracing::error!("Flow endpoint called, but whatsapp.app_secret is not set");
        return refused(&state, "not_configured", 503, "not configured");
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            tracing::warn!(
                status = rejection.status().as_u16(),
                "Flow endpoint: unreadable or oversized body"
            );
            return refused(&state, "bad_request", rejection.status().as_u16(), "unreadable body");
        }
    };
    let signature = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok());
    if let Err(e) = signatures::verify_meta(secret, &body, signature) {
        tracing::warn!(reason = e.as_label(), "Flow endpoint refused a request: signature");
        return refused(&state, "signature_failed", SIGNATURE_FAILED, "signature failed");
    }
    let Some(key) = state.flow_key.clone() else {
        tracing::error!("Flow endpoint called, but no Flow private key is configured (referloop flow keygen)");
        return refused(&state, "not_configured", 503, "not configured");
    };
    // RSA decryption is a millisecond of CPU: keep it off the threads serving requests.
    let decrypted = tokio::task::spawn_blocking(move || Arc::clone(&key).decrypt_request(&body)).await;
    let (session, plaintext) = match decrypted {
        Ok(Ok(readable)) => readable,
        Ok(Err(e)) => {
            tracing::warn!(reason = e.as_label(), "Flow endpoint could not decrypt a request");
            return refused(&state, "undecryptable", UNDECRYPTABLE, "");
        }
        Err(_) => return refused(&state, "unavailable", 503, "busy"),
    };
    let request = match FlowRequest::parse(&plaintext) {
        Ok(request) => request,
        Err(e) => {
            tracing::warn!(problem = %escape(&e.to_string()), "Flow endpoint: a decrypted request is not Meta's shape");
            return refused(&state, "bad_request", 400, "not a Flow request");
        }
    };
    let answer = match flow_endpoint::answer(&state.services, request).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::error!(error = %escape(&e.to_string()), "Flow endpoint could not answer; the client will retry");
            return refused(&state, "unavailable", 503, "temporarily unavailable");
        }
    };
    state.metrics.flow_answer(answer.label());
    let status = StatusCode::from_u16(answer.status()).unwrap_or(StatusCode::OK);
    let encrypted = session.encrypt_response(answer.body().to_string().as_bytes());
    (status, [("content-type", "text/plain")], encrypted).into_response()
}
