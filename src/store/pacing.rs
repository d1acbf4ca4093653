//! Rates shared by every replica, kept in the database: a call reserves a place in the
//! first fixed window (`bucket`, `window_start`) that has room, and a message reserves
//! its recipient's next turn. One replica or ten, the configured rates hold.

use super::{now_ms, Store, StoreError};

/// How far ahead a reservation may look, in windows (a queue this deep waits its turn
/// through retries instead).
const MAX_WINDOWS_AHEAD: i64 = 600;

impl Store {
    /// Reserves up to `wanted` calls in `bucket`, all in one window of `window_ms`: the
    /// first window (from the one holding now + `guard_ms`, so a window about to end is
    /// skipped) with room for the whole block, or else for a single call. Returns the
    /// window's start and how many calls were granted there; `None` when every window
    /// within reach is full.
    pub async fn reserve_rate_slots(
        &self,
        bucket: &str,
        window_ms: i64,
        limit: i64,
        wanted: i64,
        guard_ms: i64,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let _turn = self.write_turn().await;
        let now = now_ms();
        let earliest = now + guard_ms;
        let first = earliest - earliest.rem_euclid(window_ms.max(1));
        let wanted = wanted.clamp(1, limit.max(1));
        for ahead in 0..MAX_WINDOWS_AHEAD {
            let window_start = first + ahead * window_ms;
            let sizes: &[i64] = if wanted > 1 { &[wanted, 1] } else { &[1] };
            for &size in sizes {
                let used: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO rate_slots (bucket, window_start, used) VALUES ($1, $2, $4) \
                     ON CONFLICT (bucket, window_start) DO UPDATE SET used = rate_slots.used + $4 \
                     WHERE rate_slots.used + $4 <= $3 RETURNING used",
                )
                .bind(bucket)
                .bind(window_start)
                .bind(limit)
                .bind(size)
                .fetch_optional(&self.pool)
                .await?;
                let Some(used) = used else { continue };
                if used == size {
                    // A new window: forget the old ones of this bucket.
                    sqlx::query("DELETE FROM rate_slots WHERE bucket = $1 AND window_start < $2")
                        .bind(bucket)
                        .bind(now - 60_000)
                        .execute(&self.pool)
                        .await?;
                }
                return Ok(Some((window_start, size)));
            }
        }
        Ok(None)
    }

    /// Reserves `phone`'s next turn for message `message_id` (the same message keeps its
    /// turn across attempts). `None` when granted now; otherwise how long until the
    /// recipient's turn is free.
    pub async fn reserve_recipient_turn(
        &self,
        phone: &str,
        message_id: i64,
        spacing_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        if spacing_ms <= 0 {
            return Ok(None);
        }
        let _turn = self.write_turn().await;
        let now = now_ms();
        let granted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO recipient_pacing (phone, next_at, message_id) VALUES ($1, $2, $3) \
             ON CONFLICT (phone) DO UPDATE SET next_at = $2, message_id = $3 \
             WHERE recipient_pacing.next_at <= $4 OR recipient_pacing.message_id = $3 RETURNING next_at",
        )
        .bind(phone)
        .bind(now + spacing_ms)
        .bind(message_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if granted.is_some() {
            return Ok(None);
        }
        let next_at: Option<i64> = sqlx::query_scalar("SELECT next_at FROM recipient_pacing WHERE phone = $1")
            .bind(phone)
            .fetch_optional(&self.pool)
            .await?;
        Ok(Some(next_at.map_or(0, |at| (at - now).max(1))))
    }
}
