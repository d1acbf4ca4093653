//! Paces calls to an outside API: at most `per_interval` calls per `interval`, spaced
//! evenly (one place every `interval / per_interval`).
//!
//! Alone (sandbox mode, where nothing leaves), a pacer spaces its own calls. Shared, it
//! takes its places from the deployment-wide rate in the database (a GCRA, see
//! `store::pacing`): every replica draws from one evenly spaced sequence of places, so
//! no interval of any length or alignment holds more than its share, however many
//! replicas run. Places are reserved in small blocks (a twentieth of the rate, at most
//! 50 ms of places), so a busy replica makes one reservation per block rather than per
//! call. A place nobody used within a short lateness allowance is dropped rather than
//! used late (sent late, it would crowd the places after it); dropping only lowers the
//! rate.

use std::num::NonZeroU32;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::store::{now_us, Reservation, Store, StoreError};

/// How far ahead a call with no deadline may reserve its place; beyond it, it waits and
/// asks again (so that a deep backlog does not reserve the rate minutes ahead).
const MAX_AHEAD: Duration = Duration::from_secs(2);

/// The least lateness a place is allowed (wakeups and the work between taking a place
/// and sending take a few milliseconds).
const MIN_LATENESS: Duration = Duration::from_millis(20);

pub struct Pacer {
    local: LocalRate,
    shared: Option<SharedRate>,
}

/// This process's own spacing: used alone in sandbox mode, and when the shared rate's
/// database cannot be reached (the call would likely fail anyway).
struct LocalRate {
    spacing: Duration,
    next_slot: Mutex<Instant>,
}

impl LocalRate {
    /// This call's slot, or `None` when it would come after `deadline`.
    async fn slot(&self, deadline: Option<Instant>) -> Option<Instant> {
        let mut next = self.next_slot.lock().await;
        let slot = (*next).max(Instant::now());
        if deadline.is_some_and(|d| slot > d) {
            return None;
        }
        *next = slot + self.spacing;
        Some(slot)
    }
}

/// The deployment-wide rate this pacer takes its places from.
struct SharedRate {
    store: Store,
    bucket: String,
    interval_us: i64,
    block: i64,
    lateness_us: i64,
    /// Places reserved and not yet taken.
    places: Mutex<Places>,
}

#[derive(Debug, Default)]
struct Places {
    next_at_us: i64,
    left: i64,
}

/// What asking for a shared place gave.
enum Place {
    /// Call at this time (microseconds since the epoch).
    At(i64),
    /// The rate is reserved beyond the horizon until about this time: ask again then.
    Full(i64),
}

impl SharedRate {
    /// This call's place: the next one in hand, or the first of a new block. The lock is
    /// held while reserving, so concurrent callers share one new block instead of each
    /// reserving their own.
    async fn place(&self, horizon: Duration) -> Result<Place, StoreError> {
        let horizon_us = i64::try_from(horizon.as_micros()).unwrap_or(i64::MAX);
        let mut places = self.places.lock().await;
        let now = now_us();
        let stale = now - self.lateness_us;
        if places.left > 0 && places.next_at_us < stale {
            let skipped = ((stale - places.next_at_us) / self.interval_us + 1).min(places.left);
            places.next_at_us += skipped * self.interval_us;
            places.left -= skipped;
        }
        if places.left > 0 {
            if places.next_at_us > now + horizon_us {
                return Ok(Place::Full(places.next_at_us - horizon_us));
            }
            let at = places.next_at_us;
            places.next_at_us += self.interval_us;
            places.left -= 1;
            return Ok(Place::At(at));
        }
        match self
            .store
            .reserve_places(&self.bucket, self.interval_us, self.block, horizon_us)
            .await?
        {
            Reservation::Granted { first_at_us } => {
                *places = Places {
                    next_at_us: first_at_us + self.interval_us,
                    left: self.block - 1,
                };
                Ok(Place::At(first_at_us))
            }
            Reservation::Full { next_free_us } => Ok(Place::Full(next_free_us - horizon_us)),
        }
    }
}

impl Pacer {
    pub fn new(per_interval: NonZeroU32, interval: Duration) -> Pacer {
        Pacer {
            local: LocalRate {
                spacing: interval / per_interval.get(),
                next_slot: Mutex::new(Instant::now()),
            },
            shared: None,
        }
    }

    /// The same pace, held across every replica that shares `store` under `bucket`.
    pub fn shared(per_interval: NonZeroU32, interval: Duration, store: Store, bucket: String) -> Pacer {
        let per_interval_i64 = i64::from(per_interval.get());
        let interval_us = (i64::try_from(interval.as_micros()).unwrap_or(i64::MAX) / per_interval_i64).max(1);
        // A twentieth of the rate, and never more than 50 ms of places.
        let block = (per_interval_i64 / 20).clamp(1, (50_000 / interval_us).max(1));
        let lateness_us = interval_us.max(i64::try_from(MIN_LATENESS.as_micros()).unwrap_or(0));
        Pacer {
            shared: Some(SharedRate {
                store,
                bucket,
                interval_us,
                block,
                lateness_us,
                places: Mutex::new(Places::default()),
            }),
            ..Pacer::new(per_interval, interval)
        }
    }

    /// Waits for this call's place.
    pub async fn wait(&self) {
        self.wait_at_most(None).await;
    }

    /// Waits for this call's place if it comes within `limit`; otherwise takes no place
    /// (the pace is left to the callers that wait) and returns false at once.
    pub async fn wait_at_most(&self, limit: Option<Duration>) -> bool {
        let deadline = limit.map(|l| Instant::now() + l);
        let Some(shared) = &self.shared else {
            let Some(slot) = self.local.slot(deadline).await else {
                return false;
            };
            tokio::time::sleep_until(slot).await;
            return true;
        };
        loop {
            let horizon = limit.unwrap_or(MAX_AHEAD).min(MAX_AHEAD);
            match shared.place(horizon).await {
                Ok(Place::At(at_us)) => {
                    sleep_until_us(at_us).await;
                    return true;
                }
                Ok(Place::Full(_)) if limit.is_some() => return false,
                Ok(Place::Full(retry_at_us)) => sleep_until_us(retry_at_us).await,
                Err(e) => {
                    // Without the database the call would likely fail anyway; pace locally.
                    tracing::warn!(bucket = %shared.bucket, error = %e, "could not reserve a place in the shared rate");
                    let Some(slot) = self.local.slot(deadline).await else {
                        return false;
                    };
                    tokio::time::sleep_until(slot).await;
                    return true;
                }
            }
        }
    }
}

/// Sleeps until `at_us` (microseconds since the epoch); returns at once if it has passed.
async fn sleep_until_us(at_us: i64) {
    let wait = at_us - now_us();
    if wait > 0 {
        tokio::time::sleep(Duration::from_micros(wait.unsigned_abs())).await;
    }
}
