//! Paces calls to an outside API: at most `per_interval` calls per `interval`. Within
//! this process calls are spaced evenly; with a shared store, every call also needs a
//! place in the interval's window reserved in the database, so the limit holds for the
//! whole deployment however many replicas run (a call whose window is full waits for the
//! next). Places are reserved in small blocks (a twentieth of the rate), so a busy
//! replica makes one reservation per block rather than per call; a place left unused
//! when its window ends is lost, which can only lower the rate. The last hundredth of
//! each window is left unused, so a call made at the end of its window does not arrive
//! in the next one (where it would count on top of that window's full share): at most
//! 99 % of the configured rate is used.

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
    block: i64,
    /// Places reserved and not yet used: (window start, how many).
    reserved: Mutex<Option<(i64, i64)>>,
}

impl SharedRate {
    /// The start of the window of this call's place: from the block in hand if its window
    /// has not ended, else from a new block reserved in the database. The lock is held
    /// while reserving, so concurrent callers share one new block instead of each
    /// reserving (and discarding) their own.
    async fn place(&self) -> Result<Option<i64>, crate::store::StoreError> {
        let guard = (self.interval_ms / 100).max(1);
        let usable = |window_start: i64| now_ms() < window_start + self.interval_ms - guard;
        let mut reserved = self.reserved.lock().await;
        if let Some((window_start, left)) = *reserved {
            if left > 0 && usable(window_start) {
                *reserved = Some((window_start, left - 1));
                return Ok(Some(window_start));
            }
        }
        *reserved = None;
        // A reservation can take a while (SQLite's write lock, full windows): a place whose
        // window has ended by the time it comes back is dropped, and another reserved.
        for _ in 0..3 {
            let granted = self
                .store
                .reserve_rate_slots(&self.bucket, self.interval_ms, self.per_interval, self.block, guard)
                .await?;
            let Some((window_start, count)) = granted else {
                return Ok(None);
            };
            if window_start > now_ms() || usable(window_start) {
                *reserved = Some((window_start, count - 1));
                return Ok(Some(window_start));
            }
        }
        Ok(None)
    }
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
        let per_interval_i64 = i64::from(per_interval.max(1));
        Pacer {
            shared: Some(SharedRate {
                store,
                bucket,
                per_interval: per_interval_i64,
                interval_ms: i64::try_from(interval.as_millis()).unwrap_or(i64::MAX),
                block: (per_interval_i64 / 20).max(1),
                reserved: Mutex::new(None),
            }),
            ..Pacer::new(per_interval, interval)
        }
    }

    /// Waits for this call's slot.
    pub async fn wait(&self) {
        self.wait_at_most(None).await;
    }

    /// Waits for this call's slot if it comes within `limit`; otherwise takes no slot (the
    /// pace is left to the callers that wait) and returns false at once. A shared place
    /// reserved and then found too far off is left unused, which only lowers the rate.
    pub async fn wait_at_most(&self, limit: Option<Duration>) -> bool {
        let deadline = limit.map(|l| Instant::now() + l);
        let slot = {
            let mut next = self.next_slot.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            if deadline.is_some_and(|d| slot > d) {
                return false;
            }
            *next = slot + self.spacing;
            slot
        };
        tokio::time::sleep_until(slot).await;
        let Some(shared) = &self.shared else { return true };
        match shared.place().await {
            Ok(Some(window_start)) => {
                let wait = window_start - now_ms();
                if wait > 0 {
                    let until = Instant::now() + Duration::from_millis(wait as u64);
                    if deadline.is_some_and(|d| until > d) {
                        return false;
                    }
                    tokio::time::sleep_until(until).await;
                }
            }
            // Every window within reach is full: the local pace still applies.
            Ok(None) => tracing::warn!(bucket = %shared.bucket, "shared rate fully reserved ahead"),
            // Without the database the call would fail anyway; pace locally.
            Err(e) => tracing::warn!(bucket = %shared.bucket, error = %e, "could not reserve a shared rate slot"),
        }
        true
    }
}
