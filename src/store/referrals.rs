//! Referrals: a nominated friend and the referral's state, moved only through
//! [`Tx::move_referral`] with the transition recorded. Reads are on [`Store`]; writes are
//! on [`Tx`]. Every step that must happen once is guarded by a unique key.

use serde::Serialize;
use sqlx::AnyConnection;

use super::tx::{TallyKey, Tx};
use super::{row_where, Backend, Store, StoreError, StoredFlag, StoredName, StoredPhone};
use crate::domain::funnel::{referral_steps, Step};
use crate::domain::nomination::ReferralReason;
use crate::domain::phone::E164;
use crate::domain::referral::ReferralState;
use crate::domain::reward::{Beneficiary, RewardState};
use crate::domain::state::{sql_list, Persisted};
use crate::domain::work::Job;

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ReferralRow {
    pub id: i64,
    pub invite_id: i64,
    pub flow_token: String,
    pub referrer_contact_id: String,
    /// None for a referral recorded from a code alone, whose people we may not know.
    #[sqlx(try_from = "StoredPhone")]
    pub referrer_phone: Option<E164>,
    pub referrer_name: String,
    pub referral_code: String,
    #[sqlx(try_from = "StoredPhone")]
    pub friend_phone: Option<E164>,
    pub friend_name: String,
    pub personal_message: Option<String>,
    #[sqlx(try_from = "StoredFlag")]
    pub consent: bool,
    pub language: String,
    #[sqlx(try_from = "String")]
    pub state: ReferralState,
    #[sqlx(try_from = "StoredName")]
    pub reason: Option<ReferralReason>,
    pub friend_contact_id: Option<String>,
    pub nominated_at: i64,
}

/// A referral as its friend's HubSpot status sees it ([`Store::referral_for_crm`]).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ReferralForCrm {
    #[sqlx(try_from = "String")]
    pub state: ReferralState,
    pub friend_contact_id: Option<String>,
    pub referral_code: String,
    pub referrer_contact_id: String,
    /// Whether the friend's reward was issued.
    #[sqlx(try_from = "StoredFlag")]
    pub friend_rewarded: bool,
    /// Whether a number of the friend's contact opted out of marketing.
    #[sqlx(try_from = "StoredFlag")]
    pub contact_opted_out: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewReferral {
    pub invite_id: i64,
    pub flow_token: String,
    pub referrer_contact_id: String,
    /// None (stored as "") for a referral recorded from a code alone.
    pub referrer_phone: Option<E164>,
    pub referrer_name: String,
    pub referral_code: String,
    pub friend_phone: Option<E164>,
    pub friend_name: String,
    pub personal_message: Option<String>,
    pub consent: bool,
    pub language: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferralInsert {
    Created(i64),
    /// The Flow token was used before (a redelivered or replayed reply).
    TokenAlreadyUsed(i64),
    /// Another open referral holds the friend's number: recorded as refused.
    FriendTaken(i64),
}

pub(super) const REFERRAL_COLUMNS: &str =
    "id, invite_id, flow_token, referrer_contact_id, referrer_phone, referrer_name, \
    referral_code, friend_phone, friend_name, personal_message, consent, language, state, reason, \
    friend_contact_id, nominated_at";

async fn referral_in(conn: &mut AnyConnection, id: i64) -> Result<Option<ReferralRow>, StoreError> {
    row_where(conn, REFERRAL_COLUMNS, "referrals", "id", id).await
}

impl Tx {
    /// Open referrals of a referrer, counted under the referrer's customer row lock (see
    /// [`Tx::lock_customer`]), so that two nominations at once cannot both pass
    /// `programme.max_open_referrals`.
    pub async fn count_open_referrals_locked(&mut self, referrer_contact_id: &str) -> Result<i64, StoreError> {
        self.lock_customer(referrer_contact_id).await?;
        let sql = format!(
            "SELECT COUNT(*) FROM referrals WHERE referrer_contact_id = $1 AND state IN ({})",
            sql_list(ReferralState::OPEN)
        );
        Ok(sqlx::query_scalar(&sql)
            .bind(referrer_contact_id)
            .fetch_one(self.read())
            .await?)
    }

    /// Open referrals of this number nominated before `window_start`: they leave the
    /// window (the caller expires each through the referral machine).
    pub async fn stale_open_referrals(
        &mut self,
        friend_phone: &E164,
        window_start: i64,
    ) -> Result<Vec<ReferralRow>, StoreError> {
        let sql = format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE friend_phone = $1 AND nominated_at < $2 AND state IN ({})",
            sql_list(ReferralState::OPEN)
        );
        Ok(sqlx::query_as::<_, ReferralRow>(&sql)
            .bind(friend_phone.as_str())
            .bind(window_start)
            .fetch_all(self.read())
            .await?)
    }

    /// Inserts a nomination. The first open nomination of a number wins (the partial
    /// unique index); a later one is recorded as refused.
    pub async fn insert_referral(&mut self, referral: &NewReferral) -> Result<ReferralInsert, StoreError> {
        if let Some(id) = self
            .insert_referral_row(referral, ReferralState::Nominated, None)
            .await?
        {
            return Ok(ReferralInsert::Created(id));
        }
        let used: Option<i64> = sqlx::query_scalar("SELECT id FROM referrals WHERE flow_token = $1")
            .bind(&referral.flow_token)
            .fetch_optional(self.read())
            .await?;
        if let Some(id) = used {
            return Ok(ReferralInsert::TokenAlreadyUsed(id));
        }
        let id = self
            .insert_referral_row(referral, ReferralState::Refused, Some(ReferralReason::AlreadyReferred))
            .await?
            .ok_or(StoreError::Exhausted("refused nomination could not be recorded"))?;
        Ok(ReferralInsert::FriendTaken(id))
    }

    /// A referral created by a conversion (a code shared by hand, `attribute_code_only`):
    /// it starts `converted`'s predecessor so the conversion moves it like any other.
    pub async fn insert_code_only_referral(&mut self, referral: &NewReferral) -> Result<i64, StoreError> {
        self.insert_referral_row(
            referral,
            ReferralState::FriendUnreachable,
            Some(ReferralReason::CodeOnly),
        )
        .await?
        .ok_or(StoreError::Exhausted("code-only referral could not be recorded"))
    }

    async fn insert_referral_row(
        &mut self,
        referral: &NewReferral,
        state: ReferralState,
        reason: Option<ReferralReason>,
    ) -> Result<Option<i64>, StoreError> {
        let id = sqlx::query_scalar::<_, i64>(
            "INSERT INTO referrals (invite_id, flow_token, referrer_contact_id, referrer_phone, referrer_name, \
             referral_code, friend_phone, friend_name, personal_message, consent, language, state, reason, \
             nominated_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14) \
             ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(referral.invite_id)
        .bind(&referral.flow_token)
        .bind(&referral.referrer_contact_id)
        .bind(E164::text_of(referral.referrer_phone.as_ref()))
        .bind(&referral.referrer_name)
        .bind(&referral.referral_code)
        .bind(E164::text_of(referral.friend_phone.as_ref()))
        .bind(&referral.friend_name)
        .bind(&referral.personal_message)
        .bind(i64::from(referral.consent))
        .bind(&referral.language)
        .bind(state.as_str())
        .bind(reason.map(ReferralReason::as_str))
        .bind(self.now_ms())
        .fetch_optional(self.write()?)
        .await?;
        if let Some(id) = id {
            self.tally(TallyKey::Referral(id), referral_steps(None, state));
            self.record_transition(id, None, state, reason).await?;
        }
        Ok(id)
    }

    /// The referral as this transaction sees it, locked against concurrent steps on
    /// PostgreSQL (SQLite's single writer already serialises them).
    pub async fn referral_for_update(&mut self, id: i64) -> Result<Option<ReferralRow>, StoreError> {
        self.row_for_update(REFERRAL_COLUMNS, "referrals", "id", id).await
    }

    /// Moves a referral from `from` to `to` (compare-and-set, on a row the caller read
    /// with [`Tx::referral_for_update`]); [`StoreError::Conflict`] when it was no longer in
    /// `from`.
    pub async fn move_referral(
        &mut self,
        id: i64,
        from: ReferralState,
        to: ReferralState,
        reason: Option<ReferralReason>,
    ) -> Result<(), StoreError> {
        // On PostgreSQL the move and its line in the timeline are one statement.
        let together = self.backend() == Backend::Postgres;
        let sql = if together {
            "WITH moved AS (UPDATE referrals SET state = $1, reason = COALESCE($2, reason), updated_at = $3 \
                 WHERE id = $4 AND state = $5 RETURNING id) \
             INSERT INTO referral_transitions (referral_id, from_state, to_state, reason, at) \
             SELECT id, $5, $1, $2, $3 FROM moved"
        } else {
            "UPDATE referrals SET state = $1, reason = COALESCE($2, reason), updated_at = $3 WHERE id = $4 AND state = $5"
        };
        let moved = sqlx::query(sql)
            .bind(to.as_str())
            .bind(reason.map(ReferralReason::as_str))
            .bind(self.now_ms())
            .bind(id)
            .bind(from.as_str())
            .execute(self.write()?)
            .await?;
        if moved.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "referral {id} left {} meanwhile",
                from.as_str()
            )));
        }
        self.tally(TallyKey::Referral(id), referral_steps(Some(from), to));
        if to.ends_nudging() {
            let why = format!("cancelled: the referral is {} now", to.as_str());
            // The job's key is its referral's alone.
            let job = Job::ReferrerNudge {
                referral_id: id,
                business_number: String::new(),
            };
            self.cancel_reminder(&job, &format!("nudge:{id}"), &why).await?;
            let job = Job::FriendReminder { referral_id: id };
            self.cancel_reminder(&job, &format!("friend_reminder:{id}"), &why)
                .await?;
        }
        if together {
            return Ok(());
        }
        self.record_transition(id, Some(from), to, reason).await
    }

    /// Notes that the referrer's nudge was queued (the funnel counts it, and the
    /// referral's conversion after it).
    pub async fn mark_nudged(&mut self, id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE referrals SET nudged_at = $1 WHERE id = $2")
            .bind(self.now_ms())
            .bind(id)
            .execute(self.write()?)
            .await?;
        self.tally(TallyKey::Referral(id), vec![Step::Nudged]);
        Ok(())
    }

    /// Counts a milestone bonus granted with this referral.
    pub fn tally_bonus(&mut self, id: i64) {
        self.tally(TallyKey::Referral(id), vec![Step::BonusGranted]);
    }

    /// Counts a friend's reminder queued.
    pub fn tally_friend_reminded(&mut self, id: i64) {
        self.tally(TallyKey::Referral(id), vec![Step::FriendReminded]);
    }

    /// Notes a referral's change of state for its timeline.
    async fn record_transition(
        &mut self,
        referral_id: i64,
        from: Option<ReferralState>,
        to: ReferralState,
        reason: Option<ReferralReason>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO referral_transitions (referral_id, from_state, to_state, reason, at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(referral_id)
        .bind(from.map(ReferralState::as_str))
        .bind(to.as_str())
        .bind(reason.map(ReferralReason::as_str))
        .bind(self.now_ms())
        .execute(self.write()?)
        .await?;
        Ok(())
    }

    /// Records the friend's HubSpot contact unless one is recorded already.
    pub async fn set_friend_contact_id(&mut self, referral_id: i64, contact_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE referrals SET friend_contact_id = $1, updated_at = $2 WHERE id = $3 AND friend_contact_id IS NULL",
        )
        .bind(contact_id)
        .bind(self.now_ms())
        .bind(referral_id)
        .execute(self.write()?)
        .await?;
        Ok(())
    }
}

impl Store {
    /// What the friend's HubSpot status reads, before and after each write: the
    /// referral's state and friend contact, whether the friend's reward was issued, and
    /// whether the friend's contact opted out.
    pub async fn referral_for_crm(&self, id: i64) -> Result<Option<ReferralForCrm>, StoreError> {
        let sql = format!(
            "SELECT r.state, r.friend_contact_id, r.referral_code, r.referrer_contact_id, \
             CAST(CASE WHEN EXISTS (SELECT 1 FROM rewards AS w WHERE w.referral_id = r.id \
                 AND w.beneficiary = $2 AND w.state = $3) THEN 1 ELSE 0 END AS BIGINT) AS friend_rewarded, \
             CAST(CASE WHEN r.friend_contact_id IS NOT NULL AND EXISTS ({}) THEN 1 ELSE 0 END AS BIGINT) \
                 AS contact_opted_out \
             FROM referrals AS r WHERE r.id = $1",
            super::wa_users::CONTACT_OPTED_OUT.replace("$1", "r.friend_contact_id")
        );
        Ok(sqlx::query_as::<_, ReferralForCrm>(&sql)
            .bind(id)
            .bind(Beneficiary::Friend.as_str())
            .bind(RewardState::Issued.as_str())
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn referral(&self, id: i64) -> Result<Option<ReferralRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let found = referral_in(&mut conn, id).await;
        conn.settle(&found);
        found
    }

    pub async fn list_referrals(&self, limit: i64) -> Result<Vec<ReferralRow>, StoreError> {
        let sql = format!("SELECT {REFERRAL_COLUMNS} FROM referrals ORDER BY id DESC LIMIT $1");
        Ok(sqlx::query_as::<_, ReferralRow>(&sql)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Open referrals of a referrer (they count against `programme.max_open_referrals`).
    pub async fn count_open_referrals(&self, referrer_contact_id: &str) -> Result<i64, StoreError> {
        let sql = format!(
            "SELECT COUNT(*) FROM referrals WHERE referrer_contact_id = $1 AND state IN ({})",
            sql_list(ReferralState::OPEN)
        );
        let n = sqlx::query_scalar(&sql)
            .bind(referrer_contact_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// The referral a Flow token nominated, if it was used.
    pub async fn referral_by_flow_token(&self, flow_token: &str) -> Result<Option<ReferralRow>, StoreError> {
        let sql = format!("SELECT {REFERRAL_COLUMNS} FROM referrals WHERE flow_token = $1");
        Ok(sqlx::query_as::<_, ReferralRow>(&sql)
            .bind(flow_token)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Whether the number has an open referral nominated since `window_start` (inside the
    /// attribution window, so a new nomination of it would be refused).
    pub async fn friend_has_open_referral(&self, friend_phone: &E164, window_start: i64) -> Result<bool, StoreError> {
        let sql = format!(
            "SELECT id FROM referrals WHERE friend_phone = $1 AND nominated_at >= $2 AND state IN ({}) LIMIT 1",
            sql_list(ReferralState::OPEN)
        );
        let found: Option<i64> = sqlx::query_scalar(&sql)
            .bind(friend_phone.as_str())
            .bind(window_start)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    /// The open referral waiting for this friend: matched by the nominated number, else by
    /// a code that exactly one share-link referral has (never the referrer's own number).
    pub async fn referral_awaiting_friend(
        &self,
        phone: &E164,
        codes: &[String],
    ) -> Result<Option<ReferralRow>, StoreError> {
        let sql = format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE friend_phone = $1 AND state IN ({}) ORDER BY id LIMIT 1",
            sql_list(ReferralState::AWAITING_FRIEND)
        );
        if let Some(row) = sqlx::query_as::<_, ReferralRow>(&sql)
            .bind(phone.as_str())
            .fetch_optional(&self.pool)
            .await?
        {
            return Ok(Some(row));
        }
        let by_code = format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE referral_code = $1 AND state = $2 \
             AND referrer_phone <> $3 ORDER BY id LIMIT 2"
        );
        for code in codes {
            let rows = sqlx::query_as::<_, ReferralRow>(&by_code)
                .bind(code)
                .bind(ReferralState::AwaitingFriend.as_str())
                .bind(phone.as_str())
                .fetch_all(&self.pool)
                .await?;
            if rows.len() == 1 {
                return Ok(rows.into_iter().next());
            }
        }
        Ok(None)
    }
}
