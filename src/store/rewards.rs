//! Conversions, rewards (the ledger) and the discount-code pool.

use serde::Serialize;
use sqlx::Row;

use super::referrals::{insert_job, insert_message};
use super::{now_ms, Backend, NewMessage, SideJob, Store, StoreError};
use crate::domain::reward::{self, Beneficiary};

#[derive(Debug, Clone, PartialEq)]
pub struct NewConversion {
    pub source: String,
    pub external_id: String,
    pub referral_id: Option<i64>,
    pub matched_by: Option<String>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub payment_ref: Option<String>,
    pub stripe_customer: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ConversionRow {
    pub id: i64,
    pub source: String,
    pub external_id: String,
    pub referral_id: Option<i64>,
    pub outcome: String,
    pub matched_by: Option<String>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewReward {
    pub beneficiary: String,
    pub contact_id: Option<String>,
    pub phone: String,
    pub first_name: String,
    pub language: String,
    pub kind: String,
    pub state: String,
    pub amount: i64,
    pub currency: String,
    pub stripe_customer: Option<String>,
    pub available_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct RewardRow {
    pub id: i64,
    pub referral_id: i64,
    pub beneficiary: String,
    pub contact_id: Option<String>,
    pub phone: String,
    pub first_name: String,
    pub language: String,
    pub kind: String,
    pub state: String,
    pub amount: i64,
    pub currency: String,
    pub code: Option<String>,
    pub external_ref: Option<String>,
    pub stripe_customer: Option<String>,
    pub last_error: Option<String>,
    pub available_at: i64,
}

/// What converting asks for when it happens: thanks, the rewards and their jobs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConversionEffects {
    pub messages: Vec<NewMessage>,
    pub rewards: Vec<NewReward>,
    /// Jobs to queue; `reward.issue` jobs are added per reward by the store.
    pub jobs: Vec<SideJob>,
    pub reward_job_attempts: i64,
    /// The referrer's cap, decided inside the transaction so concurrent conversions
    /// of the same referrer's friends cannot both pass it.
    pub referrer_cap: Option<RewardCap>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RewardCap {
    pub referrer_contact_id: String,
    /// Rewards created since then count.
    pub since: i64,
    pub max: i64,
    /// Queued when the referrer's reward is capped (tells HubSpot).
    pub on_capped: SideJob,
}

/// The recorded conversion, whether this call created it, and whether this call converted
/// the referral.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversionRecord {
    pub conversion: ConversionRow,
    pub created: bool,
    pub converted_now: bool,
}

/// Outcomes a repeated signal keeps; the others are evaluated again (the friend may have
/// been invited, or nominated, since).
fn is_final_outcome(outcome: &str) -> bool {
    matches!(outcome, "converted" | "already_converted" | "outside_window")
}

const CONVERSION_COLUMNS: &str =
    "id, source, external_id, referral_id, outcome, matched_by, amount, currency, created_at";
const REWARD_COLUMNS: &str = "id, referral_id, beneficiary, contact_id, phone, first_name, language, kind, state, \
    amount, currency, code, external_ref, stripe_customer, last_error, available_at";

impl Store {
    /// Records a conversion signal and, when it converts its referral (`friend_invited`
    /// within the attribution window), moves the referral to `converted` and creates the
    /// rewards, thanks and jobs — all in one transaction. A signal seen before returns
    /// the first recording unchanged.
    pub async fn record_conversion(
        &self,
        conversion: &NewConversion,
        window_start: i64,
        effects: &ConversionEffects,
    ) -> Result<ConversionRecord, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO conversions (source, external_id, referral_id, outcome, matched_by, amount, currency, \
             payment_ref, stripe_customer, created_at) VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (source, external_id) DO NOTHING RETURNING id",
        )
        .bind(&conversion.source)
        .bind(&conversion.external_id)
        .bind(conversion.referral_id)
        .bind(&conversion.matched_by)
        .bind(conversion.amount)
        .bind(&conversion.currency)
        .bind(&conversion.payment_ref)
        .bind(&conversion.stripe_customer)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let (id, created) = match inserted {
            Some(id) => (id, true),
            None => {
                let sql =
                    format!("SELECT {CONVERSION_COLUMNS} FROM conversions WHERE source = $1 AND external_id = $2");
                let existing = sqlx::query_as::<_, ConversionRow>(&sql)
                    .bind(&conversion.source)
                    .bind(&conversion.external_id)
                    .fetch_one(&mut *tx)
                    .await?;
                if is_final_outcome(&existing.outcome) || conversion.referral_id.is_none() {
                    tx.rollback().await?;
                    return Ok(ConversionRecord {
                        conversion: existing,
                        created: false,
                        converted_now: false,
                    });
                }
                sqlx::query("UPDATE conversions SET referral_id = $1, matched_by = $2 WHERE id = $3")
                    .bind(conversion.referral_id)
                    .bind(&conversion.matched_by)
                    .bind(existing.id)
                    .execute(&mut *tx)
                    .await?;
                (existing.id, false)
            }
        };
        let outcome = match conversion.referral_id {
            None => "unattributed".to_string(),
            Some(referral_id) => {
                let converted = sqlx::query(
                    "UPDATE referrals SET state = 'converted', updated_at = $1 \
                     WHERE id = $2 AND state = 'friend_invited' AND nominated_at >= $3",
                )
                .bind(now)
                .bind(referral_id)
                .bind(window_start)
                .execute(&mut *tx)
                .await?;
                if converted.rows_affected() == 1 {
                    self.grant(&mut tx, referral_id, effects).await?;
                    "converted".to_string()
                } else {
                    let row = sqlx::query("SELECT state, nominated_at FROM referrals WHERE id = $1")
                        .bind(referral_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    match row {
                        None => "unattributed".to_string(),
                        Some(row) => {
                            let state: String = row.try_get("state")?;
                            let nominated_at: i64 = row.try_get("nominated_at")?;
                            match state.as_str() {
                                "converted" => "already_converted".to_string(),
                                "friend_invited" if nominated_at < window_start => "outside_window".to_string(),
                                _ => "not_invited".to_string(),
                            }
                        }
                    }
                }
            }
        };
        sqlx::query("UPDATE conversions SET outcome = $1 WHERE id = $2")
            .bind(&outcome)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let sql = format!("SELECT {CONVERSION_COLUMNS} FROM conversions WHERE id = $1");
        let row = sqlx::query_as::<_, ConversionRow>(&sql)
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        let converted_now = row.outcome == "converted";
        Ok(ConversionRecord {
            conversion: row,
            created,
            converted_now,
        })
    }

    async fn grant(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        referral_id: i64,
        effects: &ConversionEffects,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        for message in &effects.messages {
            insert_message(tx, message).await?;
        }
        let referrer_rewarded = match &effects.referrer_cap {
            Some(cap) => Some((self.referrer_rewards_in(tx, cap).await?, cap.max)),
            None => None,
        };
        for reward in &effects.rewards {
            let state = match (reward.beneficiary.as_str(), referrer_rewarded) {
                ("referrer", Some((rewarded, max))) if reward.state == "pending" => {
                    reward::initial_state(Beneficiary::Referrer, rewarded, max)
                        .as_str()
                        .to_string()
                }
                _ => reward.state.clone(),
            };
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO rewards (referral_id, beneficiary, contact_id, phone, first_name, language, kind, state, \
                 amount, currency, stripe_customer, available_at, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13) \
                 ON CONFLICT (referral_id, beneficiary) DO NOTHING RETURNING id",
            )
            .bind(referral_id)
            .bind(&reward.beneficiary)
            .bind(&reward.contact_id)
            .bind(&reward.phone)
            .bind(&reward.first_name)
            .bind(&reward.language)
            .bind(&reward.kind)
            .bind(&state)
            .bind(reward.amount)
            .bind(&reward.currency)
            .bind(&reward.stripe_customer)
            .bind(reward.available_at)
            .bind(now)
            .fetch_optional(&mut **tx)
            .await?;
            if let (Some(id), "pending") = (id, state.as_str()) {
                let job = SideJob {
                    kind: "reward.issue".into(),
                    payload: serde_json::json!({ "reward_id": id }).to_string(),
                    idempotency_key: format!("reward.issue:{id}"),
                    max_attempts: effects.reward_job_attempts,
                    run_at: reward.available_at,
                };
                insert_job(tx, &job).await?;
            }
        }
        for job in &effects.jobs {
            insert_job(tx, job).await?;
        }
        if let (Some(cap), Some((rewarded, max))) = (&effects.referrer_cap, referrer_rewarded) {
            let referrer_pending = effects
                .rewards
                .iter()
                .any(|r| r.beneficiary == "referrer" && r.state == "pending");
            if referrer_pending
                && reward::initial_state(Beneficiary::Referrer, rewarded, max) == reward::RewardState::Capped
            {
                insert_job(tx, &cap.on_capped).await?;
            }
        }
        Ok(())
    }

    /// The referrer's rewards counting against the cap, with the referrer's customer row
    /// locked on PostgreSQL (SQLite's single writer already serialises the transaction).
    async fn referrer_rewards_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        cap: &RewardCap,
    ) -> Result<i64, StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT contact_id FROM customers WHERE contact_id = $1 FOR UPDATE")
                .bind(&cap.referrer_contact_id)
                .fetch_optional(&mut **tx)
                .await?;
        }
        let n = sqlx::query_scalar(
            "SELECT COUNT(*) FROM rewards w JOIN referrals r ON r.id = w.referral_id \
             WHERE r.referrer_contact_id = $1 AND w.beneficiary = 'referrer' \
             AND w.state IN ('pending', 'issuing', 'issued', 'failed') AND w.created_at >= $2",
        )
        .bind(&cap.referrer_contact_id)
        .bind(cap.since)
        .fetch_one(&mut **tx)
        .await?;
        Ok(n)
    }

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

    pub async fn list_rewards(&self, limit: i64) -> Result<Vec<RewardRow>, StoreError> {
        let sql = format!("SELECT {REWARD_COLUMNS} FROM rewards ORDER BY id DESC LIMIT $1");
        Ok(sqlx::query_as::<_, RewardRow>(&sql)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Marks a reward issued and queues its message and HubSpot updates, once.
    pub async fn issue_reward(
        &self,
        id: i64,
        code: Option<&str>,
        external_ref: Option<&str>,
        messages: &[NewMessage],
        jobs: &[SideJob],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let issued = sqlx::query(
            "UPDATE rewards SET state = 'issued', code = $1, external_ref = $2, last_error = NULL, updated_at = $3 \
             WHERE id = $4 AND state = 'issuing'",
        )
        .bind(code)
        .bind(external_ref)
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if issued.rows_affected() != 1 {
            return Ok(false);
        }
        for message in messages {
            insert_message(&mut tx, message).await?;
        }
        for job in jobs {
            insert_job(&mut tx, job).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Claims a reward for fulfilment; false when it was voided, capped or issued meanwhile.
    pub async fn claim_reward(&self, id: i64) -> Result<bool, StoreError> {
        let claimed = sqlx::query(
            "UPDATE rewards SET state = 'issuing', updated_at = $1 WHERE id = $2 AND state IN ('pending', 'failed', 'issuing')",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(claimed.rows_affected() == 1)
    }

    pub async fn fail_reward(&self, id: i64, error: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE rewards SET state = 'failed', last_error = $1, updated_at = $2 WHERE id = $3 AND state = 'issuing'",
        )
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Cancels a referral's rewards that are not issued yet; returns how many.
    pub async fn void_rewards(&self, referral_id: i64) -> Result<u64, StoreError> {
        let voided = sqlx::query(
            "UPDATE rewards SET state = 'void', updated_at = $1 WHERE referral_id = $2 AND state IN ('pending', 'failed')",
        )
        .bind(now_ms())
        .bind(referral_id)
        .execute(&self.pool)
        .await?;
        Ok(voided.rows_affected())
    }

    /// The referrer's counters from the ledger: converted referrals and the total amount
    /// of the referrer's issued rewards.
    pub async fn referrer_counters(&self, referrer_contact_id: &str) -> Result<(i64, i64), StoreError> {
        let converted: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM referrals WHERE referrer_contact_id = $1 AND state = 'converted'")
                .bind(referrer_contact_id)
                .fetch_one(&self.pool)
                .await?;
        let total: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(SUM(w.amount) AS BIGINT) FROM rewards w JOIN referrals r ON r.id = w.referral_id \
             WHERE r.referrer_contact_id = $1 AND w.beneficiary = 'referrer' AND w.state = 'issued'",
        )
        .bind(referrer_contact_id)
        .fetch_one(&self.pool)
        .await?;
        Ok((converted, total.unwrap_or(0)))
    }

    /// Issued credit (hubspot_credit rewards) of a contact, from the ledger.
    pub async fn contact_credit_total(&self, contact_id: &str) -> Result<i64, StoreError> {
        let total: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(SUM(amount) AS BIGINT) FROM rewards WHERE contact_id = $1 AND kind = 'hubspot_credit' AND state = 'issued'",
        )
        .bind(contact_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(total.unwrap_or(0))
    }

    /// Loads codes into the pool; codes already there are skipped. Returns how many were new.
    pub async fn load_reward_codes(&self, codes: &[String]) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut loaded = 0;
        for code in codes {
            loaded +=
                sqlx::query("INSERT INTO reward_codes (code, loaded_at) VALUES ($1, $2) ON CONFLICT (code) DO NOTHING")
                    .bind(code)
                    .bind(now_ms())
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
                .bind(now_ms())
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

    pub async fn free_pool_codes(&self) -> Result<i64, StoreError> {
        let n = sqlx::query_scalar("SELECT COUNT(*) FROM reward_codes WHERE reward_id IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    /// Friend referrals matching a conversion: by HubSpot contact, by phone, or by code.
    pub async fn referral_ids_by(&self, column: &str, value: &str) -> Result<Vec<(i64, String)>, StoreError> {
        let column = match column {
            "friend_contact_id" => "friend_contact_id",
            "friend_phone" => "friend_phone",
            _ => "referral_code",
        };
        // Open or converted referrals: a signal for one not yet invited is recorded as such.
        let sql = format!(
            "SELECT id, friend_phone FROM referrals WHERE {column} = $1 AND state IN \
             ('nominated', 'direct_invite_queued', 'awaiting_friend', 'friend_invited', 'converted') ORDER BY id"
        );
        let rows = sqlx::query(&sql).bind(value).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("friend_phone")?)))
            .collect()
    }
}
