//! Rates shared by every replica, kept in the database. A rate is a generic cell rate
//! algorithm (GCRA): its row holds the theoretical arrival time of the next free place,
//! and a reservation of k places advances it by k emission intervals in one atomic
//! upsert. Places are evenly spaced whoever takes them, so one replica or ten, the
//! configured rate holds over any interval. A message reserves its recipient's next turn
//! the same way (one place per `spacing`, kept by the message across its attempts).

use super::{Backend, Store, StoreError};
use crate::domain::phone::E164;

/// Microseconds since the Unix epoch (pacing needs finer steps than milliseconds: at
/// 1,000 a second, places are one millisecond apart).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// What a reservation of places got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The places, `interval_us` apart from `first_at_us`.
    Granted { first_at_us: i64 },
    /// The rate is reserved beyond the horizon: its next free place is at `next_free_us`.
    Full { next_free_us: i64 },
}

impl Store {
    /// Reserves `count` consecutive places of `bucket`, a rate of one place every
    /// `interval_us`, provided the first of them comes within `horizon_us` of now. An idle
    /// rate starts from now (no burst is saved up); a busy one from its next free place.
    pub async fn reserve_places(
        &self,
        bucket: &str,
        interval_us: i64,
        count: i64,
        horizon_us: i64,
    ) -> Result<Reservation, StoreError> {
        let _turn = self.write_turn().await;
        let now = now_us();
        let span = interval_us.max(1).saturating_mul(count.max(1));
        let later = match self.backend {
            Backend::Postgres => "GREATEST",
            Backend::Sqlite => "MAX",
        };
        let sql = format!(
            "INSERT INTO rate_gcra (bucket, tat_us) VALUES ($1, $2 + $3) \
             ON CONFLICT (bucket) DO UPDATE SET tat_us = {later}(rate_gcra.tat_us, $2) + $3 \
             WHERE rate_gcra.tat_us <= $2 + $4 RETURNING tat_us"
        );
        let granted: Option<i64> = sqlx::query_scalar(&sql)
            .bind(bucket)
            .bind(now)
            .bind(span)
            .bind(horizon_us)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(tat) = granted {
            return Ok(Reservation::Granted {
                first_at_us: tat - span,
            });
        }
        let tat: Option<i64> = sqlx::query_scalar("SELECT tat_us FROM rate_gcra WHERE bucket = $1")
            .bind(bucket)
            .fetch_optional(&self.pool)
            .await?;
        Ok(Reservation::Full {
            next_free_us: tat.unwrap_or(now),
        })
    }

    /// Reserves `phone`'s next turn for message `message_id` (the same message keeps its
    /// turn across attempts): a rate of one place per `spacing_ms` with no look-ahead.
    /// `None` when granted now; otherwise how long until the recipient's turn is free.
    pub async fn reserve_recipient_turn(
        &self,
        phone: &E164,
        message_id: i64,
        spacing_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        if spacing_ms <= 0 {
            return Ok(None);
        }
        let _turn = self.write_turn().await;
        let now = self.now_ms();
        let granted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO recipient_pacing (phone, next_at, message_id) VALUES ($1, $2, $3) \
             ON CONFLICT (phone) DO UPDATE SET next_at = $2, message_id = $3 \
             WHERE recipient_pacing.next_at <= $4 OR recipient_pacing.message_id = $3 RETURNING next_at",
        )
        .bind(phone.as_str())
        .bind(now + spacing_ms)
        .bind(message_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if granted.is_some() {
            return Ok(None);
        }
        let next_at: Option<i64> = sqlx::query_scalar("SELECT next_at FROM recipient_pacing WHERE phone = $1")
            .bind(phone.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(Some(next_at.map_or(0, |at| (at - now).max(1))))
    }
}
