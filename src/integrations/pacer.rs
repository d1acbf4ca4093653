//! Paces calls to an outside API: at most `per_interval` calls per `interval`. Within
//! this process calls are spaced evenly; with a shared store, every call also reserves a
//! place in the interval's window in the database, so the limit holds for the whole
//! deployment however many replicas run (a call whose window is full waits for the next).

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::store::{now_ms, Store};

pub struct Pacer {
    spacing: Duration,
    next_slot: Mutex<Instant>,
    shared: Option<SharedRate>,
}

/// The deployment-wide window this pacer reserves in.
struct SharedRate {
    store: Store,
    bucket: String,
    per_interval: i64,
    interval_ms: i64,
}

impl Pacer {
    pub fn new(per_interval: u32, interval: Duration) -> Pacer {
        let spacing = interval / per_interval.max(1);
        Pacer {
            spacing,
            next_slot: Mutex::new(Instant::now()),
            shared: None,
        }
    }

    /// The same pace, held across every replica that shares `store` under `bucket`.
    pub fn shared(per_interval: u32, interval: Duration, store: Store, bucket: String) -> Pacer {
        Pacer {
            shared: Some(SharedRate {
                store,
                bucket,
                per_interval: i64::from(per_interval.max(1)),
                interval_ms: i64::try_from(interval.as_millis()).unwrap_or(i64::MAX),
            }),
            ..Pacer::new(per_interval, interval)
        }
    }

    /// Waits for this call's slot.
    pub async fn wait(&self) {
        let slot = {
            let mut next = self.next_slot.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.spacing;
            slot
        };
        tokio::time::sleep_until(slot).await;
        let Some(shared) = &self.shared else { return };
        match shared
            .store
            .reserve_rate_slot(&shared.bucket, shared.interval_ms, shared.per_interval)
            .await
        {
            Ok(Some(window_start)) => {
                let wait = window_start - now_ms();
                if wait > 0 {
                    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                }
            }
            // Every window within reach is full: the local pace still applies.
            Ok(None) => tracing::warn!(bucket = %shared.bucket, "shared rate fully reserved ahead"),
            // Without the database the call would fail anyway; pace locally.
            Err(e) => tracing::warn!(bucket = %shared.bucket, error = %e, "could not reserve a shared rate slot"),
        }
    }
}
