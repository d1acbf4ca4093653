//! Liveness, readiness and metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use super::AppState;
use crate::domain::state::Persisted;
use crate::domain::work::Backlog;
use crate::store::Queue;

/// The process answers.
pub async fn healthz() -> &'static str {
    "ok"
}

/// The database answers and its migrations are applied. A backlogged inbox is said in
/// the answer but keeps it 200: replicas share one inbox, so taking them out of the load
/// balancer for it would refuse the webhooks that can still be stored.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if let Err(not_ready) = state.store.readiness().await {
        tracing::warn!(detail = %crate::telemetry::escape(&not_ready.to_string()), "not ready");
        return (StatusCode::SERVICE_UNAVAILABLE, not_ready.public_reason().to_string());
    }
    let Some(backlog) = inbox_backlog(&state).await else {
        return (StatusCode::OK, "ready".to_string());
    };
    let worker = &state.settings.worker;
    if !is_backlogged(&state, &backlog) {
        return (StatusCode::OK, "ready".to_string());
    }
    (
        StatusCode::OK,
        format!(
            "ready; inbox backlogged: {} events waiting, the oldest for {} s \
             (bounds: worker.inbox_backlog_events = {}, worker.inbox_backlog_seconds = {})",
            backlog.events,
            backlog.oldest_age.as_secs(),
            worker.inbox_backlog_events,
            worker.inbox_backlog_age.as_secs()
        ),
    )
}

/// The inbox backlog, also set on the metrics; `None` (logged) when it cannot be read.
async fn inbox_backlog(state: &AppState) -> Option<Backlog> {
    match state.store.inbox_backlog().await {
        Ok(backlog) => {
            let metrics = &state.metrics;
            metrics
                .inbox_backlog
                .set(i64::try_from(backlog.events).unwrap_or(i64::MAX));
            metrics
                .inbox_oldest_age_seconds
                .set(i64::try_from(backlog.oldest_age.as_secs()).unwrap_or(i64::MAX));
            metrics.inbox_backlogged.set(i64::from(is_backlogged(state, &backlog)));
            Some(backlog)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the inbox backlog");
            None
        }
    }
}

fn is_backlogged(state: &AppState, backlog: &Backlog) -> bool {
    let worker = &state.settings.worker;
    backlog.is_over(worker.inbox_backlog_events, worker.inbox_backlog_age)
}

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    inbox_backlog(&state).await;
    for queue in Queue::ALL {
        let name = queue.name();
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
    for queue in Queue::ALL {
        let name = queue.name();
        match state.store.oldest_due(queue).await {
            Ok(due) => {
                let age = due.map_or(0, |at| (state.store.now_ms() - at).max(0) / 1000);
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
