//! WhatsApp users: their marketing preference (opt-outs) and the service window their
//! last message opened. Reads are on [`Store`]; writes are on [`Tx`].

use sqlx::Row;

use super::tx::Tx;
use super::{Store, StoreError, StoredFlag};
use crate::domain::messaging::OptOutSource;
use crate::domain::phone::E164;
use crate::domain::send_window::LocalZone;
use crate::domain::state::Persisted;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptOutChange {
    /// Newly opted out at this time.
    OptedOut(i64),
    /// Was already opted out (since this time).
    AlreadyOptedOut(i64),
    Resumed,
    Unchanged,
}

impl OptOutChange {
    /// Whether the preference changed (and HubSpot must hear of it).
    pub fn changed(self) -> bool {
        matches!(self, OptOutChange::OptedOut(_) | OptOutChange::Resumed)
    }
}

/// The one read of a number's marketing preference, for a step's transaction and for
/// the store alike.
async fn opted_out_in<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    phone: &E164,
) -> Result<bool, StoreError> {
    let flag: Option<StoredFlag> = sqlx::query_scalar("SELECT opted_out FROM wa_users WHERE phone = $1")
        .bind(phone.as_str())
        .fetch_optional(executor)
        .await?;
    Ok(flag.is_some_and(bool::from))
}

/// Notes an inbound message at `at` (the latest time wins, so repeating it is harmless).
async fn record_inbound_in<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    phone: &E164,
    at: i64,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO wa_users (phone, last_inbound_at, updated_at) VALUES ($1, $2, $3) \
         ON CONFLICT (phone) DO UPDATE SET last_inbound_at = CASE \
           WHEN wa_users.last_inbound_at IS NULL OR wa_users.last_inbound_at < excluded.last_inbound_at \
           THEN excluded.last_inbound_at ELSE wa_users.last_inbound_at END, updated_at = excluded.updated_at",
    )
    .bind(phone.as_str())
    .bind(at)
    .bind(now)
    .execute(executor)
    .await?;
    Ok(())
}

impl Tx {
    /// Records the number's time zone as its CRM contact gives it (the latest wins).
    pub async fn record_time_zone(&mut self, phone: &E164, zone: &LocalZone) -> Result<(), StoreError> {
        let now = self.now_ms();
        sqlx::query(
            "INSERT INTO wa_users (phone, time_zone, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (phone) DO UPDATE SET time_zone = excluded.time_zone, updated_at = excluded.updated_at",
        )
        .bind(phone.as_str())
        .bind(zone.name())
        .bind(now)
        .execute(self.write()?)
        .await?;
        Ok(())
    }

    /// Notes an inbound message: it opens (or extends) the 24-hour service window.
    pub async fn record_inbound(&mut self, phone: &E164, at: i64) -> Result<(), StoreError> {
        let now = self.now_ms();
        record_inbound_in(self.write()?, phone, at, now).await
    }

    /// Records an opt-out (`opted_out = true`) or its lifting.
    pub async fn set_opt_out(
        &mut self,
        phone: &E164,
        opted_out: bool,
        source: OptOutSource,
    ) -> Result<OptOutChange, StoreError> {
        let now = self.now_ms();
        sqlx::query("INSERT INTO wa_users (phone, updated_at) VALUES ($1, $2) ON CONFLICT (phone) DO NOTHING")
            .bind(phone.as_str())
            .bind(now)
            .execute(self.write()?)
            .await?;
        if !opted_out {
            let changed = sqlx::query(
                "UPDATE wa_users SET opted_out = 0, opted_out_at = NULL, opt_out_source = $1, updated_at = $2 \
                 WHERE phone = $3 AND opted_out = 1",
            )
            .bind(source.as_str())
            .bind(now)
            .bind(phone.as_str())
            .execute(self.write()?)
            .await?;
            return Ok(if changed.rows_affected() == 1 {
                OptOutChange::Resumed
            } else {
                OptOutChange::Unchanged
            });
        }
        let changed = sqlx::query(
            "UPDATE wa_users SET opted_out = 1, opted_out_at = $1, opt_out_source = $2, updated_at = $1 \
             WHERE phone = $3 AND opted_out = 0",
        )
        .bind(now)
        .bind(source.as_str())
        .bind(phone.as_str())
        .execute(self.write()?)
        .await?;
        if changed.rows_affected() == 1 {
            return Ok(OptOutChange::OptedOut(now));
        }
        let since: Option<i64> = sqlx::query_scalar("SELECT opted_out_at FROM wa_users WHERE phone = $1")
            .bind(phone.as_str())
            .fetch_one(self.read())
            .await?;
        Ok(OptOutChange::AlreadyOptedOut(since.unwrap_or(now)))
    }

    /// When the number last wrote to us, read in this step's transaction.
    pub async fn last_inbound_at(&mut self, phone: &E164) -> Result<Option<i64>, StoreError> {
        let at: Option<Option<i64>> = sqlx::query_scalar("SELECT last_inbound_at FROM wa_users WHERE phone = $1")
            .bind(phone.as_str())
            .fetch_optional(self.read())
            .await?;
        Ok(at.flatten())
    }

    /// Whether the number opted out of marketing, read in this step's transaction.
    pub async fn is_opted_out(&mut self, phone: &E164) -> Result<bool, StoreError> {
        opted_out_in(self.read(), phone).await
    }
}

/// The opted-out numbers of contact `$1` (as customer or as friend).
pub(super) const CONTACT_OPTED_OUT: &str = "SELECT phone FROM wa_users WHERE opted_out = 1 AND phone IN \
     (SELECT phone FROM invites WHERE contact_id = $1 AND phone IS NOT NULL \
      UNION SELECT friend_phone FROM referrals WHERE friend_contact_id = $1)";

impl Store {
    /// Notes an inbound message on its own (the latest time wins, so repeating it is harmless).
    /// One statement, committed on its own (no transaction around it).
    pub async fn record_inbound(&self, phone: &E164, at: i64) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        self.faults.before_write()?;
        record_inbound_in(&self.pool, phone, at, self.now_ms()).await
    }

    /// The last inbound message time, when the user has written to us.
    pub async fn last_inbound_at(&self, phone: &E164) -> Result<Option<i64>, StoreError> {
        let at: Option<Option<i64>> = sqlx::query_scalar("SELECT last_inbound_at FROM wa_users WHERE phone = $1")
            .bind(phone.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(at.flatten())
    }

    /// Whether the number opted out of marketing.
    pub async fn is_opted_out(&self, phone: &E164) -> Result<bool, StoreError> {
        opted_out_in(&self.pool, phone).await
    }

    /// Whether a number we know for this HubSpot contact (as customer or as friend) has
    /// opted out of marketing.
    pub async fn contact_opted_out(&self, contact_id: &str) -> Result<bool, StoreError> {
        let sql = format!("{CONTACT_OPTED_OUT} LIMIT 1");
        let found: Option<String> = sqlx::query_scalar(&sql)
            .bind(contact_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    /// HubSpot contact ids we know for a number (as customer or as friend).
    pub async fn contact_ids_for_phone(&self, phone: &E164) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT contact_id AS id FROM invites WHERE phone = $1 \
             UNION SELECT DISTINCT friend_contact_id AS id FROM referrals WHERE friend_phone = $1 AND friend_contact_id IS NOT NULL",
        )
        .bind(phone.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("id").map_err(StoreError::from))
            .collect()
    }
}
