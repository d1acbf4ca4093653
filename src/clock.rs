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

/// Unix milliseconds as a UTC time; times before 1970 (none is stored) as the epoch.
fn utc(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms.max(0)).unwrap_or_default()
}

/// `2026-11-24T09:01:40Z`: RFC 3339 to the second, for listings that scripts read.
pub fn rfc3339(ms: i64) -> String {
    utc(ms).format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `2026-11-24 09:01:40 UTC`: the same time, spelled for people.
pub fn for_people(ms: i64) -> String {
    utc(ms).format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_in_utc() {
        assert_eq!(for_people(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(for_people(1_795_510_900_000), "2026-11-24 09:01:40 UTC");
        assert_eq!(for_people(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(rfc3339(1_795_510_900_999), "2026-11-24T09:01:40Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00Z");
    }

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
