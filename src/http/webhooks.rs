//! Webhook intake: authenticate the raw bytes, split the body into events, store them in
//! one short transaction, and only then answer 200. Work happens later, in the worker.

use crate::domain::state::Persisted;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;

use super::{ApiError, AppState};
use crate::config::secret_value;
use crate::domain::inbox::{self, HubSpotTrigger, NewInboxEvent, Source};
use crate::signatures::{self, SignatureError};

/// Default attempts for processing an inbox event before it is marked dead.
fn inbox_max_attempts(state: &AppState) -> i64 {
    state.settings.worker.retry_schedule.len() as i64 + 1
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

impl AppState {
    /// Counts and logs a refused webhook request, and returns the error to answer with.
    fn refuse(&self, source: Source, error: ApiError) -> ApiError {
        self.metrics.reject(source.as_str(), error.reason());
        match &error {
            ApiError::NotConfigured(why) => {
                tracing::error!(source = source.as_str(), why, "webhook refused: not configured")
            }
            _ => tracing::warn!(source = source.as_str(), reason = error.reason(), "webhook refused"),
        }
        error
    }

    /// Stores the events; the caller answers 200 only when this returns Ok. The insert runs
    /// to its end in a writer task, whatever the client does meanwhile.
    async fn store_events(&self, source: Source, mut events: Vec<NewInboxEvent>) -> Result<u64, ApiError> {
        let limit = self.settings.server.max_events_per_request.get();
        if events.len() > limit {
            return Err(self.refuse(source, ApiError::TooManyEvents(limit)));
        }
        inbox::clean_nul(&mut events).map_err(|e| self.refuse(source, e.into()))?;
        let received = events.len();
        // The writer tasks run apart from this request: a client that hangs up cannot
        // cancel the write inside its transaction.
        let stored = self.inbox.insert(events, inbox_max_attempts(self)).await;
        match stored {
            Ok(new) => {
                self.metrics
                    .webhook_events_stored
                    .get_or_create(&crate::metrics::SourceLabels {
                        source: source.as_str().into(),
                    })
                    .inc_by(new);
                tracing::info!(source = source.as_str(), received, new, "webhook stored");
                Ok(new)
            }
            Err(e) if e.is_unavailable() => {
                tracing::error!(source = source.as_str(), error = %e, "database unavailable; webhook refused, the sender will retry");
                Err(self.refuse(source, ApiError::Unavailable))
            }
            Err(e) => {
                let detail = crate::telemetry::escape(&e.to_string());
                tracing::error!(source = source.as_str(), error = %detail, "the database refused the webhook's events; the sender will retry");
                Err(self.refuse(source, ApiError::Unavailable))
            }
        }
    }
}

fn body_or_refusal(state: &AppState, source: Source, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| state.refuse(source, ApiError::BodyRejected(rejection.status())))
}

/// Meta's verification handshake: echo `hub.challenge` when the token matches.
pub async fn whatsapp_verify(State(state): State<AppState>, OriginalUri(uri): OriginalUri) -> impl IntoResponse {
    let Some(expected) = secret_value(&state.settings.whatsapp.verify_token) else {
        return state
            .refuse(
                Source::WhatsApp,
                ApiError::NotConfigured("whatsapp.verify_token is not set"),
            )
            .into_response();
    };
    let query = uri.query().unwrap_or("");
    let param = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let mode_ok = param("hub.mode").as_deref() == Some("subscribe");
    let token_ok = signatures::verify_api_key(expected, param("hub.verify_token").as_deref()).is_ok();
    match (mode_ok && token_ok, param("hub.challenge")) {
        (true, Some(challenge)) => {
            tracing::info!("webhook verification handshake accepted");
            (StatusCode::OK, [("content-type", "text/plain")], challenge).into_response()
        }
        _ => state.refuse(Source::WhatsApp, ApiError::Forbidden).into_response(),
    }
}

pub async fn whatsapp_receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let source = Source::WhatsApp;
    let Some(secret) = secret_value(&state.settings.whatsapp.app_secret) else {
        return Err(state.refuse(source, ApiError::NotConfigured("whatsapp.app_secret is not set")));
    };
    let body = body_or_refusal(&state, source, body)?;
    signatures::verify_meta(secret, &body, header(&headers, "x-hub-signature-256"))
        .map_err(|e| state.refuse(source, ApiError::Unauthenticated(e)))?;
    let events = inbox::split_whatsapp(&body).map_err(|e| state.refuse(source, e.into()))?;
    state.store_events(source, events).await?;
    Ok(StatusCode::OK)
}

/// HubSpot workflow ("Send a webhook") and Webhooks API deliveries. Authenticated by the
/// v3 signature when it is sent and a client secret is configured, else by the API key.
pub async fn hubspot_receive(
    State(state): State<AppState>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let source = Source::HubSpot;
    let hubspot = &state.settings.hubspot;
    let client_secret = secret_value(&hubspot.client_secret);
    let api_key = secret_value(&hubspot.webhook_api_key);
    if client_secret.is_none() && api_key.is_none() {
        return Err(state.refuse(
            source,
            ApiError::NotConfigured("neither hubspot.client_secret nor hubspot.webhook_api_key is set"),
        ));
    }
    let body = body_or_refusal(&state, source, body)?;

    let signature = header(&headers, "x-hubspot-signature-v3");
    let authenticated = match (client_secret, api_key, signature) {
        (Some(secret), _, Some(_)) | (Some(secret), None, None) => {
            // HubSpot signs the public URL it called: rebuild it from our configured base.
            let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let public_uri = state.settings.server.public_base_url.join(path_and_query);
            signatures::verify_hubspot_v3(
                secret,
                "POST",
                &public_uri,
                &body,
                signature,
                header(&headers, "x-hubspot-request-timestamp"),
                // The signer's clock is the real one: a test's moved clock must not age it.
                crate::clock::system_ms(),
            )
        }
        (_, Some(key), _) => signatures::verify_api_key(key, header(&headers, &hubspot.webhook_api_key_header)),
        (None, None, _) => Err(SignatureError::Missing),
    };
    authenticated.map_err(|e| state.refuse(source, ApiError::Unauthenticated(e)))?;

    let trigger = hubspot_trigger(uri.query().unwrap_or(""));
    let events = inbox::split_hubspot(&body, &trigger).map_err(|e| state.refuse(source, e.into()))?;
    state.store_events(source, events).await?;
    Ok(StatusCode::OK)
}

fn hubspot_trigger(query: &str) -> HubSpotTrigger {
    let mut trigger = HubSpotTrigger::default();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "trigger" if !value.is_empty() => trigger.trigger = Some(value.into_owned()),
            "name" if !value.is_empty() => trigger.name = Some(value.into_owned()),
            _ => {}
        }
    }
    trigger
}

pub async fn stripe_receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let source = Source::Stripe;
    let Some(secret) = secret_value(&state.settings.stripe.webhook_secret) else {
        return Err(state.refuse(source, ApiError::NotConfigured("stripe.webhook_secret is not set")));
    };
    let body = body_or_refusal(&state, source, body)?;
    signatures::verify_stripe(
        secret,
        &body,
        header(&headers, "stripe-signature"),
        crate::clock::system_ms() / 1000,
    )
    .map_err(|e| state.refuse(source, ApiError::Unauthenticated(e)))?;
    let events = inbox::split_stripe(&body).map_err(|e| state.refuse(source, e.into()))?;
    state.store_events(source, events).await?;
    Ok(StatusCode::OK)
}
