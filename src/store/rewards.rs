//! Conversions, rewards (the ledger) and the discount-code pool.

use serde::Serialize;
use sqlx::Row;

use super::tx::{Cohort, EconomicsEntry, TallyKey, Tx};
use super::StoredName;
use super::{typed_column, Backend, Store, StoreError, StoredPhone};
use crate::domain::economics::{Currency, Measure};
use crate::domain::funnel::Step;
use crate::domain::phone::E164;
use crate::domain::referral::ReferralState;
use crate::domain::reward::{Beneficiary, RewardKind, RewardState};
use crate::domain::state::{sql_list, ConversionOutcome, ConversionSource, MatchedBy, Persisted};

#[derive(Debug, Clone, PartialEq)]
pub struct NewConversion {
    pub source: ConversionSource,
    pub external_id: String,
    pub referral_id: Option<i64>,
    pub matched_by: Option<MatchedBy>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub payment_ref: Option<String>,
    pub stripe_customer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ConversionRow {
    pub id: i64,
    #[sqlx(try_from = "String")]
    pub source: ConversionSource,
    pub external_id: String,
    pub referral_id: Option<i64>,
    #[sqlx(try_from = "String")]
    pub outcome: ConversionOutcome,
    #[sqlx(try_from = "StoredName")]
    pub matched_by: Option<MatchedBy>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewReward {
    pub beneficiary: Beneficiary,
    pub contact_id: Option<String>,
    pub phone: Option<E164>,
    pub first_name: String,
    pub language: String,
    pub kind: RewardKind,
    pub state: RewardState,
    pub amount: i64,
    pub currency: String,
    pub stripe_customer: Option<String>,
    pub available_at: i64,
    /// For a milestone bonus: the number of rewarded referrals it was reached at.
    pub milestone: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct RewardRow {
    pub id: i64,
    pub referral_id: i64,
    #[sqlx(try_from = "String")]
    pub beneficiary: Beneficiary,
    pub contact_id: Option<String>,
    #[sqlx(try_from = "StoredPhone")]
    pub phone: Option<E164>,
    pub first_name: String,
    pub language: String,
    #[sqlx(try_from = "String")]
    pub kind: RewardKind,
    #[sqlx(try_from = "String")]
    pub state: RewardState,
    pub amount: i64,
    pub currency: String,
    pub code: Option<String>,
    pub external_ref: Option<String>,
    pub stripe_customer: Option<String>,
    pub last_error: Option<String>,
    pub available_at: i64,
    pub milestone: Option<i64>,
}

/// What a conversion names its friend's referral by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FriendKey {
    HubSpotContact,
    Phone,
    ReferralCode,
}

impl FriendKey {
    fn column(self) -> &'static str {
        match self {
            FriendKey::HubSpotContact => "friend_contact_id",
            FriendKey::Phone => "friend_phone",
            FriendKey::ReferralCode => "referral_code",
        }
    }
}

const CONVERSION_COLUMNS: &str =
    "id, source, external_id, referral_id, outcome, matched_by, amount, currency, created_at";
const REWARD_COLUMNS: &str = "id, referral_id, beneficiary, contact_id, phone, first_name, language, kind, state, \
    amount, currency, code, external_ref, stripe_customer, last_error, available_at, milestone";

impl Tx {
    /// Records a conversion signal once per (source, external id). A signal seen before
    /// returns its first recording (`created` false); when that recording's outcome is
    /// not final and this signal names a referral, the referral is taken over so the
    /// signal can be evaluated again.
    pub async fn record_conversion_signal(
        &mut self,
        conversion: &NewConversion,
    ) -> Result<(ConversionRow, bool), StoreError> {
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO conversions (source, external_id, referral_id, outcome, matched_by, amount, currency, \
             payment_ref, stripe_customer, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (source, external_id) DO NOTHING RETURNING id",
        )
        .bind(conversion.source.as_str())
        .bind(&conversion.external_id)
        .bind(conversion.referral_id)
        .bind(ConversionOutcome::Pending.as_str())
        .bind(conversion.matched_by.map(MatchedBy::as_str))
        .bind(conversion.amount)
        .bind(&conversion.currency)
        .bind(&conversion.payment_ref)
        .bind(&conversion.stripe_customer)
        .bind(self.now_ms())
        .fetch_optional(self.write()?)
        .await?;
        // Locked: a signal seen again while its first recording is being evaluated waits
        // for that evaluation, and then decides on its outcome.
        let sql = format!(
            "SELECT {CONVERSION_COLUMNS} FROM conversions WHERE source = $1 AND external_id = $2{}",
            self.lock_clause()
        );
        let mut row = sqlx::query_as::<_, ConversionRow>(&sql)
            .bind(conversion.source.as_str())
            .bind(&conversion.external_id)
            .fetch_one(self.read())
            .await?;
        if inserted.is_some() {
            return Ok((row, true));
        }
        if !row.outcome.is_final() && conversion.referral_id.is_some() && row.referral_id != conversion.referral_id {
            sqlx::query("UPDATE conversions SET referral_id = $1, matched_by = $2 WHERE id = $3")
                .bind(conversion.referral_id)
                .bind(conversion.matched_by.map(MatchedBy::as_str))
                .bind(row.id)
                .execute(self.write()?)
                .await?;
            row.referral_id = conversion.referral_id;
            row.matched_by = conversion.matched_by;
        }
        Ok((row, false))
    }

    /// Names the referral a conversion created (a code-only attribution).
    pub async fn set_conversion_referral(
        &mut self,
        id: i64,
        referral_id: i64,
        matched_by: MatchedBy,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE conversions SET referral_id = $1, matched_by = $2 WHERE id = $3")
            .bind(referral_id)
            .bind(matched_by.as_str())
            .bind(id)
            .execute(self.write()?)
            .await?;
        Ok(())
    }

    /// A full refund of the payment that converted the referral: its converting purchase's
    /// revenue is taken back, once (a redelivered refund finds it refunded already).
    /// True when it was taken back now.
    /// (`reporting`: the currency of an amount recorded without one, as the revenue was.)
    pub async fn refund_conversion(&mut self, referral_id: i64, reporting: &Currency) -> Result<bool, StoreError> {
        let refunded = sqlx::query(
            "UPDATE conversions SET refunded_at = $1 WHERE referral_id = $2 AND outcome = $3 \
             AND refunded_at IS NULL AND amount IS NOT NULL RETURNING amount, currency",
        )
        .bind(self.now_ms())
        .bind(referral_id)
        .bind(ConversionOutcome::Converted.as_str())
        .fetch_all(self.write()?)
        .await?;
        for row in &refunded {
            let amount: i64 = row.try_get("amount")?;
            let currency: Option<String> = row.try_get("currency")?;
            let currency = currency
                .as_deref()
                .and_then(Currency::parse)
                .unwrap_or_else(|| reporting.clone());
            let micros = currency.micros_from_minor(amount);
            let currency = currency.as_str().to_string();
            self.tally_economics(
                Cohort::Referral(referral_id),
                EconomicsEntry {
                    measure: Measure::Revenue,
                    detail: "refunded".into(),
                    currency,
                    micros: -micros,
                },
            );
        }
        Ok(!refunded.is_empty())
    }

    pub async fn set_conversion_outcome(&mut self, id: i64, outcome: ConversionOutcome) -> Result<(), StoreError> {
        sqlx::query("UPDATE conversions SET outcome = $1 WHERE id = $2")
            .bind(outcome.as_str())
            .bind(id)
            .execute(self.write()?)
            .await?;
        Ok(())
    }

    /// Locks the customer's row (PostgreSQL) until the step commits: decisions about one
    /// referrer's referrals and rewards (the reward cap, the open-referral limit) are
    /// taken one after the other.
    pub async fn lock_customer(&mut self, contact_id: &str) -> Result<(), StoreError> {
        let sql = format!(
            "SELECT contact_id FROM customers WHERE contact_id = $1{}",
            self.lock_clause()
        );
        sqlx::query(&sql).bind(contact_id).fetch_optional(self.read()).await?;
        Ok(())
    }

    /// The referrer's rewards counting against the cap since `since`, with the
    /// referrer's customer row locked on PostgreSQL so that concurrent conversions of
    /// the same referrer's friends are decided one after the other.
    pub async fn referrer_rewards_since(&mut self, referrer_contact_id: &str, since: i64) -> Result<i64, StoreError> {
        self.lock_customer(referrer_contact_id).await?;
        // A referrer's reward carries the referrer's contact, so the contact's index
        // finds them (a join through referrals was planned as a scan of every reward).
        let sql = format!(
            "SELECT COUNT(*) FROM rewards WHERE contact_id = $1 AND beneficiary = $2 AND state IN ({}) \
             AND created_at >= $3",
            sql_list(RewardState::COUNTS_AGAINST_CAP)
        );
        let n = sqlx::query_scalar(&sql)
            .bind(referrer_contact_id)
            .bind(Beneficiary::Referrer.as_str())
            .bind(since)
            .fetch_one(self.read())
            .await?;
        Ok(n)
    }

    /// Whether the referrer already has a bonus (not voided) for the milestone at
    /// `conversions` since `since`. Asked after [`Tx::referrer_rewards_since`], which
    /// locks the referrer, so two conversions cannot both find none.
    pub async fn bonus_granted_since(
        &mut self,
        referrer_contact_id: &str,
        conversions: i64,
        since: i64,
    ) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM rewards WHERE contact_id = $1 AND milestone = $2 AND beneficiary = $3 \
             AND state <> $4 AND created_at >= $5",
        )
        .bind(referrer_contact_id)
        .bind(conversions)
        .bind(Beneficiary::ReferrerBonus.as_str())
        .bind(RewardState::Void.as_str())
        .bind(since)
        .fetch_one(self.read())
        .await?;
        Ok(n > 0)
    }

    /// Creates a reward, once per (referral, beneficiary); `None` when it exists.
    pub async fn insert_reward(&mut self, referral_id: i64, reward: &NewReward) -> Result<Option<i64>, StoreError> {
        let now = self.now_ms();
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO rewards (referral_id, beneficiary, contact_id, phone, first_name, language, kind, state, \
             amount, currency, stripe_customer, available_at, created_at, updated_at, milestone) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14) \
             ON CONFLICT (referral_id, beneficiary) DO NOTHING RETURNING id",
        )
        .bind(referral_id)
        .bind(reward.beneficiary.as_str())
        .bind(&reward.contact_id)
        .bind(E164::text_of(reward.phone.as_ref()))
        .bind(&reward.first_name)
        .bind(&reward.language)
        .bind(reward.kind.as_str())
        .bind(reward.state.as_str())
        .bind(reward.amount)
        .bind(&reward.currency)
        .bind(&reward.stripe_customer)
        .bind(reward.available_at)
        .bind(now)
        .bind(reward.milestone)
        .fetch_optional(self.write()?)
        .await?;
        if id.is_some() && reward.state == RewardState::Issued {
            self.tally_reward_cost(
                referral_id,
                reward.beneficiary.as_str().to_string(),
                reward.amount,
                reward.currency.clone(),
            );
            self.note_rewarded(referral_id).await?;
        }
        Ok(id)
    }

    /// Notes an issued reward's cost to the programme: the value it was issued at
    /// (`amount` of `currency`'s minor unit).
    fn tally_reward_cost(&mut self, referral_id: i64, beneficiary: String, amount: i64, currency: String) {
        let (currency, micros) = match Currency::parse(&currency) {
            Some(c) => (c.as_str().to_string(), c.micros_from_minor(amount)),
            // Not a currency code: reported as unconverted under its own name.
            None => (currency, amount.saturating_mul(10_000)),
        };
        self.tally_economics(
            Cohort::Referral(referral_id),
            EconomicsEntry {
                measure: Measure::RewardCost,
                detail: beneficiary,
                currency,
                micros,
            },
        );
    }

    /// Tallies the funnel's "rewarded" step for the referral's first issued reward.
    async fn note_rewarded(&mut self, referral_id: i64) -> Result<(), StoreError> {
        let first = sqlx::query("UPDATE referrals SET rewarded_at = $1 WHERE id = $2 AND rewarded_at IS NULL")
            .bind(self.now_ms())
            .bind(referral_id)
            .execute(self.write()?)
            .await?;
        if first.rows_affected() == 1 {
            self.tally(TallyKey::Referral(referral_id), vec![Step::Rewarded]);
        }
        Ok(())
    }

    pub async fn reward(&mut self, id: i64) -> Result<Option<RewardRow>, StoreError> {
        let sql = format!("SELECT {REWARD_COLUMNS} FROM rewards WHERE id = $1");
        Ok(sqlx::query_as::<_, RewardRow>(&sql)
            .bind(id)
            .fetch_optional(self.read())
            .await?)
    }

    /// Marks a reward that is being issued as issued; returns it as it is now.
    /// [`StoreError::Conflict`] when it is no longer `issuing` (another attempt, whose
    /// lease lapsed, issued it first).
    pub async fn mark_reward_issued(
        &mut self,
        id: i64,
        code: Option<&str>,
        external_ref: Option<&str>,
    ) -> Result<RewardRow, StoreError> {
        let sql = format!(
            "UPDATE rewards SET state = $1, code = $2, external_ref = $3, last_error = NULL, updated_at = $4 \
             WHERE id = $5 AND state = $6 RETURNING {REWARD_COLUMNS}"
        );
        let issued = sqlx::query_as::<_, RewardRow>(&sql)
            .bind(RewardState::Issued.as_str())
            .bind(code)
            .bind(external_ref)
            .bind(self.now_ms())
            .bind(id)
            .bind(RewardState::Issuing.as_str())
            .fetch_optional(self.write()?)
            .await?;
        let Some(issued) = issued else {
            return Err(StoreError::Conflict(format!("reward {id} is no longer issuing")));
        };
        self.tally_reward_cost(
            issued.referral_id,
            issued.beneficiary.as_str().to_string(),
            issued.amount,
            issued.currency.clone(),
        );
        self.note_rewarded(issued.referral_id).await?;
        Ok(issued)
    }

    /// Cancels a referral's rewards that are not issued yet; returns how many.
    /// Voids the referral's rewards that are not issued yet; and, when that takes away a
    /// rewarded referral of its referrer, the referrer's milestone bonuses still held that
    /// the count in the cap period (from `cap_since`) no longer reaches. The referrer is
    /// locked first, as a conversion granting a bonus locks them.
    pub async fn void_rewards(&mut self, referral_id: i64, cap_since: i64) -> Result<u64, StoreError> {
        let referrer: Option<String> = sqlx::query_scalar("SELECT referrer_contact_id FROM referrals WHERE id = $1")
            .bind(referral_id)
            .fetch_optional(self.read())
            .await?;
        if let Some(referrer) = &referrer {
            self.lock_customer(referrer).await?;
        }
        let now = self.now_ms();
        let sql = format!(
            "UPDATE rewards SET state = $1, updated_at = $2 WHERE referral_id = $3 AND state IN ({})",
            sql_list(RewardState::VOIDABLE)
        );
        let voided = sqlx::query(&sql)
            .bind(RewardState::Void.as_str())
            .bind(now)
            .bind(referral_id)
            .execute(self.write()?)
            .await?
            .rows_affected();
        let Some(referrer) = referrer.filter(|_| voided > 0) else {
            return Ok(voided);
        };
        let count = format!(
            "SELECT COUNT(*) FROM rewards WHERE contact_id = $1 AND beneficiary = $2 AND state IN ({}) \
             AND created_at >= $3",
            sql_list(RewardState::COUNTS_AGAINST_CAP)
        );
        let rewarded: i64 = sqlx::query_scalar(&count)
            .bind(&referrer)
            .bind(Beneficiary::Referrer.as_str())
            .bind(cap_since)
            .fetch_one(self.read())
            .await?;
        let bonuses = format!(
            "UPDATE rewards SET state = $1, updated_at = $2 WHERE contact_id = $3 AND beneficiary = $4 \
             AND milestone > $5 AND created_at >= $6 AND state IN ({})",
            sql_list(RewardState::VOIDABLE)
        );
        let cancelled = sqlx::query(&bonuses)
            .bind(RewardState::Void.as_str())
            .bind(now)
            .bind(&referrer)
            .bind(Beneficiary::ReferrerBonus.as_str())
            .bind(rewarded)
            .bind(cap_since)
            .execute(self.write()?)
            .await?
            .rows_affected();
        Ok(voided + cancelled)
    }
}

impl Store {
    pub async fn list_conversions(&self, limit: i64) -> Result<Vec<ConversionRow>, StoreError> {
        let sql = format!("SELECT {CONVERSION_COLUMNS} FROM conversions ORDER BY id DESC LIMIT $1");
        Ok(sqlx::query_as::<_, ConversionRow>(&sql)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// The referral a Stripe payment converted (for refunds).
    pub async fn referral_for_payment(&self, payment_ref: &str) -> Result<Option<i64>, StoreError> {
        let id: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT referral_id FROM conversions WHERE payment_ref = $1 AND referral_id IS NOT NULL ORDER BY id LIMIT 1",
        )
        .bind(payment_ref)
        .fetch_optional(&self.pool)
        .await?;
        Ok(id.flatten())
    }

    pub async fn reward(&self, id: i64) -> Result<Option<RewardRow>, StoreError> {
        let sql = format!("SELECT {REWARD_COLUMNS} FROM rewards WHERE id = $1");
        Ok(sqlx::query_as::<_, RewardRow>(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Rewards granted in `[from, to)`, oldest first (the CSV export).
    pub async fn rewards_created_in(&self, from: i64, to: i64) -> Result<Vec<RewardRow>, StoreError> {
        let sql =
            format!("SELECT {REWARD_COLUMNS} FROM rewards WHERE created_at >= $1 AND created_at < $2 ORDER BY id");
        Ok(sqlx::query_as::<_, RewardRow>(&sql)
            .bind(from)
            .bind(to)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Rewards held before issuing (pending), oldest first: what an operator may void.
    pub async fn pending_rewards(&self, limit: i64) -> Result<Vec<RewardRow>, StoreError> {
        let sql = format!("SELECT {REWARD_COLUMNS} FROM rewards WHERE state = $1 ORDER BY id LIMIT $2");
        Ok(sqlx::query_as::<_, RewardRow>(&sql)
            .bind(RewardState::Pending.as_str())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn list_rewards(&self, limit: i64) -> Result<Vec<RewardRow>, StoreError> {
        let sql = format!("SELECT {REWARD_COLUMNS} FROM rewards ORDER BY id DESC LIMIT $1");
        Ok(sqlx::query_as::<_, RewardRow>(&sql)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Claims a reward for fulfilment (committed before any outside call);
    /// [`StoreError::Conflict`] when it was voided, capped or issued since it was read.
    pub async fn claim_reward(&self, id: i64) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        self.faults.before_write()?;
        let sql = format!(
            "UPDATE rewards SET state = $1, updated_at = $2 WHERE id = $3 AND state IN ({})",
            sql_list(RewardState::ISSUABLE)
        );
        let claimed = sqlx::query(&sql)
            .bind(RewardState::Issuing.as_str())
            .bind(self.now_ms())
            .bind(id)
            .execute(&self.pool)
            .await?;
        if claimed.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "reward {id} left the issuable states meanwhile"
            )));
        }
        Ok(())
    }

    /// Records a failed fulfilment; the job's retry claims it again.
    pub async fn fail_reward(&self, id: i64, error: &str) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        sqlx::query("UPDATE rewards SET state = $1, last_error = $2, updated_at = $3 WHERE id = $4 AND state = $5")
            .bind(RewardState::Failed.as_str())
            .bind(error)
            .bind(self.now_ms())
            .bind(id)
            .bind(RewardState::Issuing.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The referrer's counters from the ledger: converted referrals and the total amount
    /// of the referrer's issued rewards.
    /// The referrer's counters for HubSpot: converted referrals, and the totals of their
    /// issued rewards and of their issued milestone bonuses.
    pub async fn referrer_counters(&self, referrer_contact_id: &str) -> Result<(i64, i64, i64), StoreError> {
        // One statement: the counters come from one snapshot, in one round trip.
        let (converted, total, bonuses): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM referrals WHERE referrer_contact_id = $1 AND state = $2), \
                    (SELECT CAST(SUM(amount) AS BIGINT) FROM rewards \
                     WHERE contact_id = $1 AND beneficiary = $3 AND state = $4), \
                    (SELECT CAST(SUM(amount) AS BIGINT) FROM rewards \
                     WHERE contact_id = $1 AND beneficiary = $5 AND state = $4)",
        )
        .bind(referrer_contact_id)
        .bind(ReferralState::Converted.as_str())
        .bind(Beneficiary::Referrer.as_str())
        .bind(RewardState::Issued.as_str())
        .bind(Beneficiary::ReferrerBonus.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok((converted, total.unwrap_or(0), bonuses.unwrap_or(0)))
    }

    /// Issued credit (hubspot_credit rewards) of a contact, from the ledger.
    pub async fn contact_credit_total(&self, contact_id: &str) -> Result<i64, StoreError> {
        let total: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(SUM(amount) AS BIGINT) FROM rewards WHERE contact_id = $1 AND kind = $3 AND state = $2",
        )
        .bind(contact_id)
        .bind(RewardState::Issued.as_str())
        .bind(RewardKind::HubspotCredit.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(total.unwrap_or(0))
    }

    /// Loads codes into the pool; codes already there are skipped. Returns how many were new.
    pub async fn load_reward_codes(&self, codes: &[String]) -> Result<u64, StoreError> {
        let turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        tx.keep_until_ended(turn);
        let mut loaded = 0;
        for code in codes {
            loaded +=
                sqlx::query("INSERT INTO reward_codes (code, loaded_at) VALUES ($1, $2) ON CONFLICT (code) DO NOTHING")
                    .bind(code)
                    .bind(self.now_ms())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
        }
        tx.commit().await?;
        Ok(loaded)
    }

    /// The pool code for this reward: the one it already holds, or a free one assigned
    /// atomically (never the same code twice). `None` when the pool is empty.
    pub async fn assign_pool_code(&self, reward_id: i64) -> Result<Option<String>, StoreError> {
        let _turn = self.write_turn().await;
        self.faults.before_write()?;
        for _ in 0..5 {
            let held: Option<String> = sqlx::query_scalar("SELECT code FROM reward_codes WHERE reward_id = $1")
                .bind(reward_id)
                .fetch_optional(&self.pool)
                .await?;
            if held.is_some() {
                return Ok(held);
            }
            let lock = match self.backend {
                Backend::Postgres => "FOR UPDATE SKIP LOCKED",
                Backend::Sqlite => "",
            };
            let sql = format!(
                "UPDATE reward_codes SET reward_id = $1, assigned_at = $2 WHERE id = \
                 (SELECT id FROM reward_codes WHERE reward_id IS NULL ORDER BY id LIMIT 1 {lock}) RETURNING code"
            );
            match sqlx::query_scalar::<_, String>(&sql)
                .bind(reward_id)
                .bind(self.now_ms())
                .fetch_optional(&self.pool)
                .await
            {
                Ok(code) => return Ok(code),
                // A concurrent attempt for the same reward won the unique reward_id: re-read.
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// Rewards by (beneficiary, state), for the metrics.
    pub async fn reward_counts(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT beneficiary, state, COUNT(*) AS n FROM rewards GROUP BY beneficiary, state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("beneficiary")?, row.try_get("state")?, row.try_get("n")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    pub async fn free_pool_codes(&self) -> Result<i64, StoreError> {
        let n = sqlx::query_scalar("SELECT COUNT(*) FROM reward_codes WHERE reward_id IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// Friend referrals matching a conversion: by HubSpot contact, by phone, or by code.
    pub async fn referral_ids_by(&self, key: FriendKey, value: &str) -> Result<Vec<(i64, Option<E164>)>, StoreError> {
        let column = key.column();
        // Referrals that may convert, or did: a repeated signal finds its referral again.
        let mut states = ReferralState::CONVERTIBLE.to_vec();
        states.push(ReferralState::Converted);
        let sql = format!(
            "SELECT id, friend_phone FROM referrals WHERE {column} = $1 AND state IN ({}) ORDER BY id",
            sql_list(&states)
        );
        let rows = sqlx::query(&sql).bind(value).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, typed_column::<StoredPhone, _>(r, "friend_phone")?)))
            .collect()
    }
}
