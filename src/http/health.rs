//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use super::AppState;
use crate::domain::state::Persisted;
use crate::store::Queue;

/// The process answers.
pub async fn healthz() -> &'static str {
    "ok"
}

/// The database answers and its migrations are applied.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.readiness().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(not_ready) => {
            tracing::warn!(detail = %crate::telemetry::escape(&not_ready.to_string()), "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, not_ready.public_reason())
        }
    }
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    for (queue, name) in [(Queue::Inbox, "inbox"), (Queue::Jobs, "jobs")] {
        match state.store.count_by_state(queue).await {
            Ok(counts) => {
                for (queue_state, n) in counts {
                    state.metrics.set_queue_items(name, queue_state.as_str(), n);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, queue = name, "could not count queue items for metrics")
            }
        }
    }
    for (queue, name) in [(Queue::Inbox, "inbox"), (Queue::Jobs, "jobs")] {
        match state.store.oldest_due(queue).await {
            Ok(due) => {
                let age = due.map_or(0, |at| (crate::store::now_ms() - at).max(0) / 1000);
                state
                    .metrics
                    .queue_oldest_due_seconds
                    .get_or_create(&crate::metrics::QueueNameLabels { queue: name.into() })
                    .set(age);
            }
            Err(e) => tracing::warn!(error = %e, queue = name, "could not read the oldest due item for metrics"),
        }
    }
    match state.store.reward_counts().await {
        Ok(counts) => {
            for (beneficiary, reward_state, n) in counts {
                state
                    .metrics
                    .rewards
                    .get_or_create(&crate::metrics::RewardLabels {
                        beneficiary,
                        state: reward_state,
                    })
                    .set(n);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not count rewards for metrics"),
    }
    match state.store.free_pool_codes().await {
        Ok(free) => {
            state.metrics.reward_codes_free.set(free);
        }
        Err(e) => tracing::warn!(error = %e, "could not count free reward codes for metrics"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
