//! The retry schedule, kept as data: the delay before each retry, with jitter so that
//! many items failing together do not retry together.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
    jitter: f64,
}

/// What to do with an item whose attempt number `attempts` just failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RetryDecision {
    RetryAfter(Duration),
    GiveUp,
}

impl RetrySchedule {
    /// `delays[i]` is the wait after the (i+1)-th failed attempt; `jitter` is a fraction in [0, 1).
    pub fn new(delays: Vec<Duration>, jitter: f64) -> Self {
        Self {
            delays,
            jitter: jitter.clamp(0.0, 0.99),
        }
    }

    pub fn from_seconds(seconds: &[u64], jitter: f64) -> Self {
        Self::new(seconds.iter().map(|s| Duration::from_secs(*s)).collect(), jitter)
    }

    /// Attempts allowed in all: the first plus one per delay.
    pub fn max_attempts(&self) -> i64 {
        self.delays.len() as i64 + 1
    }

    /// `attempts` counts attempts made so far (1 after the first failure). `unit_random` is
    /// a number in [0, 1) supplied by the caller so that this stays deterministic.
    pub fn after_failure(&self, attempts: i64, max_attempts: i64, unit_random: f64) -> RetryDecision {
        if attempts >= max_attempts || attempts < 1 {
            return RetryDecision::GiveUp;
        }
        // Items may allow more attempts than the schedule has entries: repeat the last delay.
        let index = (attempts as usize - 1).min(self.delays.len().saturating_sub(1));
        let Some(base) = self.delays.get(index) else {
            return RetryDecision::GiveUp;
        };
        let factor = 1.0 + self.jitter * (2.0 * unit_random.clamp(0.0, 1.0) - 1.0);
        RetryDecision::RetryAfter(base.mul_f64(factor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RetrySchedule {
        RetrySchedule::from_seconds(&[5, 30, 120], 0.2)
    }

    #[test]
    fn follows_the_schedule_then_gives_up() {
        let s = schedule();
        assert_eq!(s.max_attempts(), 4);
        assert_eq!(
            s.after_failure(1, 4, 0.5),
            RetryDecision::RetryAfter(Duration::from_secs(5))
        );
        assert_eq!(
            s.after_failure(2, 4, 0.5),
            RetryDecision::RetryAfter(Duration::from_secs(30))
        );
        assert_eq!(
            s.after_failure(3, 4, 0.5),
            RetryDecision::RetryAfter(Duration::from_secs(120))
        );
        assert_eq!(s.after_failure(4, 4, 0.5), RetryDecision::GiveUp);
        assert_eq!(s.after_failure(9, 4, 0.5), RetryDecision::GiveUp);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let s = schedule();
        let low = s.after_failure(2, 4, 0.0);
        let high = s.after_failure(2, 4, 0.999_999);
        assert_eq!(low, RetryDecision::RetryAfter(Duration::from_secs(24)));
        match high {
            RetryDecision::RetryAfter(d) => {
                assert!(d > Duration::from_secs(35) && d <= Duration::from_secs(36))
            }
            RetryDecision::GiveUp => panic!("expected a retry"),
        }
    }

    #[test]
    fn extra_attempts_repeat_the_last_delay() {
        let s = schedule();
        assert_eq!(
            s.after_failure(6, 10, 0.5),
            RetryDecision::RetryAfter(Duration::from_secs(120))
        );
    }

    #[test]
    fn empty_schedule_never_retries() {
        let s = RetrySchedule::from_seconds(&[], 0.0);
        assert_eq!(s.max_attempts(), 1);
        assert_eq!(s.after_failure(1, 3, 0.5), RetryDecision::GiveUp);
    }
}
