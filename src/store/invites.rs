//! Invites (one per trigger) and the customers' referral codes. Reads are on [`Store`];
//! writes are on [`Tx`], so that each step commits with its effects.

use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::tx::{TallyKey, Tx};
use super::{row_where, Store, StoreError, StoredFlag, StoredName, StoredPhone};
use crate::domain::eligibility::{IneligibleReason, TriggerKind};
use crate::domain::funnel::{invite_steps, Step};
use crate::domain::phone::E164;
use crate::domain::reward::{Beneficiary, RewardState};
use crate::domain::state::{InviteState, Persisted};
use crate::domain::work::Job;

/// An invite as its referrer's HubSpot status sees it ([`Store::invite_for_crm`]).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct InviteForCrm {
    #[sqlx(try_from = "String")]
    pub state: InviteState,
    pub experiment: Option<String>,
    pub variant: Option<String>,
    /// Whether a number of the invite's contact opted out of marketing.
    #[sqlx(try_from = "StoredFlag")]
    pub contact_opted_out: bool,
    /// Whether the referrer's reward for a referral of this invite was issued, or capped:
    /// from then on the referral's jobs own the referrer's status (`rewarded`,
    /// `reward_capped`), and the invite's steps are behind it.
    #[sqlx(try_from = "StoredFlag")]
    pub referrer_rewarded: bool,
    #[sqlx(try_from = "StoredFlag")]
    pub referrer_capped: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct InviteRow {
    pub id: i64,
    pub trigger_key: String,
    pub contact_id: String,
    #[sqlx(try_from = "String")]
    pub trigger: TriggerKind,
    #[sqlx(try_from = "StoredPhone")]
    pub phone: Option<E164>,
    pub first_name: String,
    pub language: String,
    pub referral_code: Option<String>,
    #[sqlx(try_from = "String")]
    pub state: InviteState,
    #[sqlx(try_from = "StoredName")]
    pub reason: Option<IneligibleReason>,
    pub created_at: i64,
    /// The experiment and variant it was given (`[[experiments]]`), if any.
    pub experiment: Option<String>,
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewInvite {
    pub trigger_key: String,
    pub contact_id: String,
    pub trigger: TriggerKind,
    pub phone: Option<E164>,
    pub first_name: String,
    pub language: String,
    pub referral_code: Option<String>,
    pub state: InviteState,
    pub reason: Option<IneligibleReason>,
}

const INVITE_COLUMNS: &str = "id, trigger_key, contact_id, trigger, phone, first_name, language, referral_code, \
    state, reason, created_at, experiment, variant";

async fn invite_by_key_in(conn: &mut AnyConnection, trigger_key: &str) -> Result<Option<InviteRow>, StoreError> {
    row_where(conn, INVITE_COLUMNS, "invites", "trigger_key", trigger_key.to_string()).await
}

impl Tx {
    /// The experiment and variant an invite was given, read in this step's transaction.
    pub async fn invite_variant(&mut self, id: i64) -> Result<Option<(Option<String>, Option<String>)>, StoreError> {
        Ok(sqlx::query_as::<_, (Option<String>, Option<String>)>(
            "SELECT experiment, variant FROM invites WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.read())
        .await?)
    }

    /// The contact's referral code, created on first use. `generate` proposes codes; a
    /// collision with another contact's code is retried under the unique constraint.
    pub async fn customer_code(
        &mut self,
        contact_id: &str,
        first_name: &str,
        mut generate: impl FnMut() -> String,
    ) -> Result<String, StoreError> {
        for _ in 0..20 {
            let inserted: Option<String> = sqlx::query_scalar(
                "INSERT INTO customers (contact_id, referral_code, first_name, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING RETURNING referral_code",
            )
            .bind(contact_id)
            .bind(generate())
            .bind(first_name)
            .bind(self.now_ms())
            .fetch_optional(self.write()?)
            .await?;
            if let Some(code) = inserted {
                return Ok(code);
            }
            let existing: Option<String> =
                sqlx::query_scalar("SELECT referral_code FROM customers WHERE contact_id = $1")
                    .bind(contact_id)
                    .fetch_optional(self.read())
                    .await?;
            if let Some(code) = existing {
                return Ok(code);
            }
        }
        Err(StoreError::Exhausted(
            "no free referral code after 20 attempts; widen programme.code_pattern",
        ))
    }

    /// Records a trigger's invite; a redelivered trigger (same key) returns the first row.
    pub async fn insert_invite(&mut self, invite: &NewInvite) -> Result<InviteRow, StoreError> {
        let now = self.now_ms();
        let inserted = sqlx::query(
            "INSERT INTO invites (trigger_key, contact_id, trigger, phone, first_name, language, referral_code, \
             state, reason, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) \
             ON CONFLICT (trigger_key) DO NOTHING",
        )
        .bind(&invite.trigger_key)
        .bind(&invite.contact_id)
        .bind(invite.trigger.to_string())
        .bind(invite.phone.as_ref().map(E164::as_str))
        .bind(&invite.first_name)
        .bind(&invite.language)
        .bind(&invite.referral_code)
        .bind(invite.state.as_str())
        .bind(invite.reason.as_ref().map(ToString::to_string))
        .bind(now)
        .execute(self.write()?)
        .await?;
        let row = invite_by_key_in(self.read(), &invite.trigger_key)
            .await?
            .ok_or(StoreError::Exhausted("invite vanished after insert"))?;
        if inserted.rows_affected() == 1 {
            self.tally(TallyKey::Invite(row.id), invite_steps(None, invite.state));
        }
        Ok(row)
    }

    /// Passes the contact's invite gate: a compare-and-set on the customer row, so that
    /// the cooldown and lifetime limit hold however many triggers arrive at once. False
    /// when another invite got there first.
    pub async fn pass_invite_gate(
        &mut self,
        contact_id: &str,
        cooldown_start: i64,
        max_invites: i64,
    ) -> Result<bool, StoreError> {
        // `<=`: a cooldown of 0 lets a second trigger through even within the same
        // millisecond (with `<` it lost the gate as a concurrent invite).
        let gate = sqlx::query(
            "UPDATE customers SET last_invite_at = $1, invite_count = invite_count + 1 WHERE contact_id = $2 \
             AND (last_invite_at IS NULL OR last_invite_at <= $3) AND invite_count < $4",
        )
        .bind(self.now_ms())
        .bind(contact_id)
        .bind(cooldown_start)
        .bind(max_invites)
        .execute(self.write()?)
        .await?;
        Ok(gate.rows_affected() == 1)
    }

    /// Moves an invite forward (invited → flow_sent → nominated); never back. The invite
    /// is read locked, so the move (and the funnel steps it reaches) is decided on what
    /// no other step can change before this one commits. `None` when the invite is
    /// missing or already at or past `to` (so there is nothing to move); otherwise the
    /// state it moved from.
    pub async fn advance_invite(&mut self, id: i64, to: InviteState) -> Result<Option<InviteState>, StoreError> {
        let sql = format!("SELECT state FROM invites WHERE id = $1{}", self.lock_clause());
        let current: Option<String> = sqlx::query_scalar(&sql).bind(id).fetch_optional(self.read()).await?;
        let Some(current) = current.as_deref().and_then(InviteState::parse) else {
            return Ok(None);
        };
        if !current.may_advance_to(to) {
            return Ok(None);
        }
        let done = sqlx::query("UPDATE invites SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4")
            .bind(to.as_str())
            .bind(self.now_ms())
            .bind(id)
            .bind(current.as_str())
            .execute(self.write()?)
            .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "invite {id} left {} meanwhile",
                current.as_str()
            )));
        }
        self.tally(TallyKey::Invite(id), invite_steps(Some(current), to));
        if current == InviteState::Invited {
            self.cancel_promoter_reminder(id, to).await?;
        }
        Ok(Some(current))
    }

    /// The invite, locked until this step commits.
    pub async fn invite_for_update(&mut self, id: i64) -> Result<Option<InviteRow>, StoreError> {
        self.row_for_update(INVITE_COLUMNS, "invites", "id", id).await
    }

    /// Records the experiment's variant an invite was given, in the transaction that
    /// creates it (an invite is given one at most).
    pub async fn assign_variant(
        &mut self,
        invite: &mut InviteRow,
        experiment: &str,
        variant: &str,
    ) -> Result<(), StoreError> {
        let done = sqlx::query("UPDATE invites SET experiment = $1, variant = $2 WHERE id = $3 AND variant IS NULL")
            .bind(experiment)
            .bind(variant)
            .bind(invite.id)
            .execute(self.write()?)
            .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "invite {} has a variant already",
                invite.id
            )));
        }
        invite.experiment = Some(experiment.to_string());
        invite.variant = Some(variant.to_string());
        Ok(())
    }

    /// Notes that the promoter's reminder was queued (the funnel counts it, and what the
    /// invite becomes after it).
    pub async fn mark_reminded(&mut self, id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE invites SET reminded_at = $1 WHERE id = $2")
            .bind(self.now_ms())
            .bind(id)
            .execute(self.write()?)
            .await?;
        self.tally(TallyKey::Invite(id), vec![Step::Reminded]);
        Ok(())
    }

    /// A customer who acted on the invite needs no reminder.
    async fn cancel_promoter_reminder(&mut self, id: i64, to: InviteState) -> Result<(), StoreError> {
        let why = format!("cancelled: the customer is {} now", to.as_str());
        let job = Job::PromoterReminder { invite_id: id };
        self.cancel_reminder(&job, &format!("reminder:{id}"), &why).await
    }
}

impl Store {
    /// Invites that counted (not ineligible) for this contact: how many, and the latest time.
    pub async fn invite_history(&self, contact_id: &str) -> Result<(i64, Option<i64>), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MAX(created_at) AS last FROM invites WHERE contact_id = $1 AND state <> $2",
        )
        .bind(contact_id)
        .bind(InviteState::Ineligible.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("n")?, row.try_get("last")?))
    }

    pub async fn invite_by_trigger_key(&self, trigger_key: &str) -> Result<Option<InviteRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let found = invite_by_key_in(&mut conn, trigger_key).await;
        conn.settle(&found);
        found
    }

    /// What the referrer's HubSpot status reads, before and after each write: the
    /// invite's state and variant, whether its contact's number opted out, and whether the
    /// referrer's reward for one of its referrals was issued or capped.
    pub async fn invite_for_crm(&self, id: i64) -> Result<Option<InviteForCrm>, StoreError> {
        let referrer_reward_in = |placeholder: &str| {
            format!(
                "CAST(CASE WHEN EXISTS (SELECT 1 FROM referrals AS r JOIN rewards AS w ON w.referral_id = r.id \
                 WHERE r.invite_id = i.id AND w.beneficiary = $2 AND w.state = {placeholder}) \
                 THEN 1 ELSE 0 END AS BIGINT)"
            )
        };
        let sql = format!(
            "SELECT i.state, i.experiment, i.variant, \
             CAST(CASE WHEN EXISTS ({}) THEN 1 ELSE 0 END AS BIGINT) AS contact_opted_out, \
             {} AS referrer_rewarded, {} AS referrer_capped \
             FROM invites AS i WHERE i.id = $1",
            super::wa_users::CONTACT_OPTED_OUT.replace("$1", "i.contact_id"),
            referrer_reward_in("$3"),
            referrer_reward_in("$4"),
        );
        Ok(sqlx::query_as::<_, InviteForCrm>(&sql)
            .bind(id)
            .bind(Beneficiary::Referrer.as_str())
            .bind(RewardState::Issued.as_str())
            .bind(RewardState::Capped.as_str())
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn invite(&self, id: i64) -> Result<Option<InviteRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let found = row_where(&mut conn, INVITE_COLUMNS, "invites", "id", id).await;
        conn.settle(&found);
        found
    }

    /// The contact's newest invite that passed the gate (a code-only referral hangs off it).
    pub async fn latest_invite_with_code(&self, referral_code: &str) -> Result<Option<InviteRow>, StoreError> {
        let sql = format!(
            "SELECT {INVITE_COLUMNS} FROM invites WHERE referral_code = $1 AND state <> $2 ORDER BY id DESC LIMIT 1"
        );
        Ok(sqlx::query_as::<_, InviteRow>(&sql)
            .bind(referral_code)
            .bind(InviteState::Ineligible.as_str())
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn list_invites(&self, limit: i64) -> Result<Vec<InviteRow>, StoreError> {
        let sql = format!("SELECT {INVITE_COLUMNS} FROM invites ORDER BY id DESC LIMIT $1");
        Ok(sqlx::query_as::<_, InviteRow>(&sql)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }
}
