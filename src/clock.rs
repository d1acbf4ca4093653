//! The time every step reads. One [`Clock`] belongs to the [`Store`](crate::store::Store)
//! and is shared by all its clones, so the HTTP handlers, the use cases and the worker read
//! the same time. It is the system's time, plus an offset that only tests move
//! ([`Clock::advance`]): a test that waits for a retry, a lease or a hold to fall due
//! moves the clock instead of sleeping. Time keeps running either way, so nothing that
//! waits on real time (timeouts, the send pacer) is frozen by a test.
//!
//! Timestamps are Unix milliseconds, as every table stores them.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Milliseconds added to the system's time; zero unless a test moved the clock.
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    /// The system's time.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        system_ms().saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Moves this clock (and every clone) forward by `by` (tests).
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(duration_ms(by), Ordering::Relaxed);
    }
}

/// The system's time in Unix milliseconds, for what must not follow a test's clock: the
/// timestamps a test signs its requests with, tools outside the store.
pub fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(duration_ms)
        .unwrap_or(0)
}

/// A duration in whole milliseconds (saturating).
pub fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advanced_clock_and_its_clones_move_together() {
        let clock = Clock::system();
        let clone = clock.clone();
        let before = clock.now_ms();
        clone.advance(Duration::from_secs(3600));
        let after = clock.now_ms();
        assert!(after - before >= 3_600_000, "moved an hour: {before} -> {after}");
        assert!(after - before < 3_660_000, "and no more than the time that passed");
        assert!(
            Clock::system().now_ms() < after - 3_000_000,
            "other clocks did not move"
        );
    }
}
