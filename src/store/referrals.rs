//! Referral codes, invites, referrals, WhatsApp users (opt-outs, service windows) and
//! the messages we send. Every step that must happen once is guarded by a unique key.

use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::{now_ms, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct InviteRow {
    pub id: i64,
    pub trigger_key: String,
    pub contact_id: String,
    pub trigger: String,
    pub phone: Option<String>,
    pub first_name: String,
    pub language: String,
    pub referral_code: Option<String>,
    pub state: String,
    pub reason: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewInvite {
    pub trigger_key: String,
    pub contact_id: String,
    pub trigger: String,
    pub phone: Option<String>,
    pub first_name: String,
    pub language: String,
    pub referral_code: Option<String>,
    pub state: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ReferralRow {
    pub id: i64,
    pub invite_id: i64,
    pub flow_token: String,
    pub referrer_contact_id: String,
    pub referrer_phone: String,
    pub referrer_name: String,
    pub referral_code: String,
    pub friend_phone: String,
    pub friend_name: String,
    pub personal_message: Option<String>,
    pub consent: i64,
    pub language: String,
    pub state: String,
    pub reason: Option<String>,
    pub friend_contact_id: Option<String>,
    pub nominated_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewReferral {
    pub invite_id: i64,
    pub flow_token: String,
    pub referrer_contact_id: String,
    pub referrer_phone: String,
    pub referrer_name: String,
    pub referral_code: String,
    pub friend_phone: String,
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

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct MessageRow {
    pub id: i64,
    pub idempotency_key: String,
    pub purpose: String,
    pub to_phone: String,
    pub invite_id: Option<i64>,
    pub referral_id: Option<i64>,
    pub marketing: i64,
    pub body: String,
    pub wamid: Option<String>,
    pub status: String,
    pub error_code: Option<i64>,
    pub error_title: Option<String>,
    pub updated_at: i64,
}

/// A message to send through the job queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub idempotency_key: String,
    pub purpose: String,
    pub to_phone: String,
    pub invite_id: Option<i64>,
    pub referral_id: Option<i64>,
    pub marketing: bool,
    /// The Graph API request body.
    pub body: String,
    pub run_at: i64,
    pub max_attempts: i64,
}

/// A job to enqueue in the same transaction as a state change.
#[derive(Debug, Clone, PartialEq)]
pub struct SideJob {
    pub kind: String,
    pub payload: String,
    pub idempotency_key: String,
    pub max_attempts: i64,
    pub run_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptOutChange {
    /// Newly opted out at this time.
    OptedOut(i64),
    /// Was already opted out (since this time).
    AlreadyOptedOut(i64),
    Resumed,
    Unchanged,
}

const MESSAGE_COLUMNS: &str = "id, idempotency_key, purpose, to_phone, invite_id, referral_id, marketing, body, \
    wamid, status, error_code, error_title, updated_at";
const REFERRAL_COLUMNS: &str = "id, invite_id, flow_token, referrer_contact_id, referrer_phone, referrer_name, \
    referral_code, friend_phone, friend_name, personal_message, consent, language, state, reason, \
    friend_contact_id, nominated_at";
const INVITE_COLUMNS: &str = "id, trigger_key, contact_id, trigger, phone, first_name, language, referral_code, \
    state, reason, created_at";

/// Inserts a message and its send job; nothing when the key was seen before.
pub(super) async fn insert_message(conn: &mut AnyConnection, message: &NewMessage) -> Result<Option<i64>, StoreError> {
    let now = now_ms();
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO messages (idempotency_key, purpose, to_phone, invite_id, referral_id, marketing, body, status, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $8) \
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
    )
    .bind(&message.idempotency_key)
    .bind(&message.purpose)
    .bind(&message.to_phone)
    .bind(message.invite_id)
    .bind(message.referral_id)
    .bind(i64::from(message.marketing))
    .bind(&message.body)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(id) = id else { return Ok(None) };
    let job = SideJob {
        kind: "whatsapp.send".into(),
        payload: serde_json::json!({ "message_id": id }).to_string(),
        idempotency_key: format!("whatsapp.send:{}", message.idempotency_key),
        max_attempts: message.max_attempts,
        run_at: message.run_at,
    };
    insert_job(conn, &job).await?;
    Ok(Some(id))
}

/// Records a trigger's invite; a redelivered trigger (same key) adds nothing.
async fn insert_invite_row(conn: &mut AnyConnection, invite: &NewInvite) -> Result<(), StoreError> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO invites (trigger_key, contact_id, trigger, phone, first_name, language, referral_code, state, \
         reason, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) \
         ON CONFLICT (trigger_key) DO NOTHING",
    )
    .bind(&invite.trigger_key)
    .bind(&invite.contact_id)
    .bind(&invite.trigger)
    .bind(&invite.phone)
    .bind(&invite.first_name)
    .bind(&invite.language)
    .bind(&invite.referral_code)
    .bind(&invite.state)
    .bind(&invite.reason)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn insert_job(conn: &mut AnyConnection, job: &SideJob) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO jobs (kind, payload, idempotency_key, state, max_attempts, run_at, created_at) \
         VALUES ($1, $2, $3, 'queued', $4, $5, $6) ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(&job.kind)
    .bind(&job.payload)
    .bind(&job.idempotency_key)
    .bind(job.max_attempts)
    .bind(job.run_at)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    /// The contact's referral code, creating it on first use. `generate` proposes codes;
    /// a collision with another contact's code is retried under the unique constraint.
    pub async fn customer_code(
        &self,
        contact_id: &str,
        first_name: &str,
        mut generate: impl FnMut() -> String,
    ) -> Result<String, StoreError> {
        for _ in 0..20 {
            let existing: Option<String> =
                sqlx::query_scalar("SELECT referral_code FROM customers WHERE contact_id = $1")
                    .bind(contact_id)
                    .fetch_optional(&self.pool)
                    .await?;
            if let Some(code) = existing {
                return Ok(code);
            }
            let inserted: Option<String> = sqlx::query_scalar(
                "INSERT INTO customers (contact_id, referral_code, first_name, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING RETURNING referral_code",
            )
            .bind(contact_id)
            .bind(generate())
            .bind(first_name)
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await?;
            if let Some(code) = inserted {
                return Ok(code);
            }
        }
        Err(StoreError::Exhausted(
            "no free referral code after 20 attempts; widen programme.code_pattern",
        ))
    }

    /// Invites that counted (not ineligible) for this contact: how many, and the latest time.
    pub async fn invite_history(&self, contact_id: &str) -> Result<(i64, Option<i64>), StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MAX(created_at) AS last FROM invites WHERE contact_id = $1 AND state <> 'ineligible'",
        )
        .bind(contact_id)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get("n")?, row.try_get("last")?))
    }

    /// Records a trigger's invite; a redelivered trigger returns the existing row.
    pub async fn insert_invite(&self, invite: &NewInvite) -> Result<InviteRow, StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_invite_row(&mut conn, invite).await?;
        let sql = format!("SELECT {INVITE_COLUMNS} FROM invites WHERE trigger_key = $1");
        Ok(sqlx::query_as::<_, InviteRow>(&sql)
            .bind(&invite.trigger_key)
            .fetch_one(&mut *conn)
            .await?)
    }

    /// Records an eligible invite only if the contact's cooldown and lifetime limit still
    /// allow it at this instant (a compare-and-set on the customer row, in the same
    /// transaction). `None` when a concurrent invite got there first.
    pub async fn claim_invite(
        &self,
        invite: &NewInvite,
        cooldown_start: i64,
        max_invites: i64,
    ) -> Result<Option<InviteRow>, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let gate = sqlx::query(
            "UPDATE customers SET last_invite_at = $1, invite_count = invite_count + 1 WHERE contact_id = $2 \
             AND (last_invite_at IS NULL OR last_invite_at < $3) AND invite_count < $4",
        )
        .bind(now)
        .bind(&invite.contact_id)
        .bind(cooldown_start)
        .bind(max_invites)
        .execute(&mut *tx)
        .await?;
        if gate.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(None);
        }
        insert_invite_row(&mut tx, invite).await?;
        tx.commit().await?;
        self.invite_by_trigger_key(&invite.trigger_key).await
    }

    pub async fn invite_by_trigger_key(&self, trigger_key: &str) -> Result<Option<InviteRow>, StoreError> {
        let sql = format!("SELECT {INVITE_COLUMNS} FROM invites WHERE trigger_key = $1");
        Ok(sqlx::query_as::<_, InviteRow>(&sql)
            .bind(trigger_key)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn invite(&self, id: i64) -> Result<Option<InviteRow>, StoreError> {
        let sql = format!("SELECT {INVITE_COLUMNS} FROM invites WHERE id = $1");
        Ok(sqlx::query_as::<_, InviteRow>(&sql)
            .bind(id)
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

    /// Moves an invite forward (invited → flow_sent → nominated); never back.
    pub async fn advance_invite(&self, id: i64, state: &str) -> Result<bool, StoreError> {
        let from: &[&str] = match state {
            "flow_sent" => &["invited"],
            "nominated" => &["invited", "flow_sent"],
            _ => &[],
        };
        let mut changed = false;
        for previous in from {
            let done = sqlx::query("UPDATE invites SET state = $1, updated_at = $2 WHERE id = $3 AND state = $4")
                .bind(state)
                .bind(now_ms())
                .bind(id)
                .bind(*previous)
                .execute(&self.pool)
                .await?;
            changed |= done.rows_affected() == 1;
        }
        Ok(changed)
    }

    /// Inserts a nomination. Open referrals of the same number older than
    /// `window_start` are expired first, so the first nomination wins only within the window.
    pub async fn insert_referral(
        &self,
        referral: &NewReferral,
        window_start: i64,
    ) -> Result<ReferralInsert, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE referrals SET state = 'expired', updated_at = $1 WHERE friend_phone = $2 AND nominated_at < $3 \
             AND state IN ('nominated', 'direct_invite_queued', 'awaiting_friend', 'friend_invited')",
        )
        .bind(now)
        .bind(&referral.friend_phone)
        .bind(window_start)
        .execute(&mut *tx)
        .await?;
        let insert = |state: &'static str, reason: Option<&'static str>| {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO referrals (invite_id, flow_token, referrer_contact_id, referrer_phone, referrer_name, \
                 referral_code, friend_phone, friend_name, personal_message, consent, language, state, reason, \
                 nominated_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14) \
                 ON CONFLICT DO NOTHING RETURNING id",
            )
            .bind(referral.invite_id)
            .bind(referral.flow_token.clone())
            .bind(referral.referrer_contact_id.clone())
            .bind(referral.referrer_phone.clone())
            .bind(referral.referrer_name.clone())
            .bind(referral.referral_code.clone())
            .bind(referral.friend_phone.clone())
            .bind(referral.friend_name.clone())
            .bind(referral.personal_message.clone())
            .bind(i64::from(referral.consent))
            .bind(referral.language.clone())
            .bind(state)
            .bind(reason)
            .bind(now)
        };
        if let Some(id) = insert("nominated", None).fetch_optional(&mut *tx).await? {
            tx.commit().await?;
            return Ok(ReferralInsert::Created(id));
        }
        let used: Option<i64> = sqlx::query_scalar("SELECT id FROM referrals WHERE flow_token = $1")
            .bind(&referral.flow_token)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(id) = used {
            tx.commit().await?;
            return Ok(ReferralInsert::TokenAlreadyUsed(id));
        }
        // The open index blocks a second open nomination: record this one as refused.
        let id = insert("refused", Some("already_referred")).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(ReferralInsert::FriendTaken(id))
    }

    pub async fn referral(&self, id: i64) -> Result<Option<ReferralRow>, StoreError> {
        let sql = format!("SELECT {REFERRAL_COLUMNS} FROM referrals WHERE id = $1");
        Ok(sqlx::query_as::<_, ReferralRow>(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
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
        let n = sqlx::query_scalar(
            "SELECT COUNT(*) FROM referrals WHERE referrer_contact_id = $1 \
             AND state IN ('nominated', 'direct_invite_queued', 'awaiting_friend', 'friend_invited')",
        )
        .bind(referrer_contact_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n)
    }

    /// The open referral waiting for this friend: matched by the nominated number, else by
    /// a code that exactly one waiting referral has (never the referrer's own number).
    pub async fn referral_awaiting_friend(
        &self,
        phone: &str,
        codes: &[String],
    ) -> Result<Option<ReferralRow>, StoreError> {
        let sql = format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE friend_phone = $1 \
             AND state IN ('direct_invite_queued', 'awaiting_friend') ORDER BY id LIMIT 1"
        );
        if let Some(row) = sqlx::query_as::<_, ReferralRow>(&sql)
            .bind(phone)
            .fetch_optional(&self.pool)
            .await?
        {
            return Ok(Some(row));
        }
        let by_code = format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE referral_code = $1 AND state = 'awaiting_friend' \
             AND referrer_phone <> $2 ORDER BY id LIMIT 2"
        );
        for code in codes {
            let rows = sqlx::query_as::<_, ReferralRow>(&by_code)
                .bind(code)
                .bind(phone)
                .fetch_all(&self.pool)
                .await?;
            if rows.len() == 1 {
                return Ok(rows.into_iter().next());
            }
        }
        Ok(None)
    }

    /// Moves a referral from `from` to `to` and queues what the transition asks for, in one
    /// transaction. False (and nothing queued) when the referral was no longer in `from`.
    pub async fn transition_referral(
        &self,
        id: i64,
        from: &str,
        to: &str,
        reason: Option<&str>,
        messages: &[NewMessage],
        jobs: &[SideJob],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE referrals SET state = $1, reason = COALESCE($2, reason), updated_at = $3 WHERE id = $4 AND state = $5",
        )
        .bind(to)
        .bind(reason)
        .bind(now_ms())
        .bind(id)
        .bind(from)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() != 1 {
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

    /// Records the friend's HubSpot contact unless one is recorded already.
    pub async fn set_friend_contact_id(&self, referral_id: i64, contact_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE referrals SET friend_contact_id = $1, updated_at = $2 WHERE id = $3 AND friend_contact_id IS NULL",
        )
        .bind(contact_id)
        .bind(now_ms())
        .bind(referral_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Queues messages and jobs together; messages already queued are skipped.
    pub async fn queue(&self, messages: &[NewMessage], jobs: &[SideJob]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for message in messages {
            insert_message(&mut tx, message).await?;
        }
        for job in jobs {
            insert_job(&mut tx, job).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn message(&self, id: i64) -> Result<Option<MessageRow>, StoreError> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1");
        Ok(sqlx::query_as::<_, MessageRow>(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn message_by_wamid(&self, wamid: &str) -> Result<Option<MessageRow>, StoreError> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE wamid = $1");
        Ok(sqlx::query_as::<_, MessageRow>(&sql)
            .bind(wamid)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub async fn list_messages(&self, limit: i64) -> Result<Vec<MessageRow>, StoreError> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages ORDER BY id DESC LIMIT $1");
        Ok(sqlx::query_as::<_, MessageRow>(&sql)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// The newest message of a purpose for an invite (the Flow message a reply answers).
    pub async fn latest_message_for_invite(
        &self,
        invite_id: i64,
        purpose: &str,
    ) -> Result<Option<MessageRow>, StoreError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE invite_id = $1 AND purpose = $2 ORDER BY id DESC LIMIT 1"
        );
        Ok(sqlx::query_as::<_, MessageRow>(&sql)
            .bind(invite_id)
            .bind(purpose)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Records the outcome of a send: `status` is accepted, suppressed or failed.
    pub async fn record_send(
        &self,
        id: i64,
        status: &str,
        wamid: Option<&str>,
        error_code: Option<i64>,
        error_title: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE messages SET status = $1, wamid = COALESCE($2, wamid), error_code = $3, error_title = $4, \
             updated_at = $5 WHERE id = $6 AND status = 'queued'",
        )
        .bind(status)
        .bind(wamid)
        .bind(error_code)
        .bind(error_title)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Meta accepted the message: its wamid and status, in one statement.
    pub async fn mark_accepted(&self, id: i64, wamid: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE messages SET status = 'accepted', wamid = $1, updated_at = $2 WHERE id = $3 AND status = 'sending'",
        )
        .bind(wamid)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// A status arrived for a wamid we never recorded (our send was interrupted after Meta
    /// accepted it): Meta echoes our callback data, which is the message's idempotency key.
    pub async fn attach_wamid(&self, idempotency_key: &str, wamid: &str) -> Result<Option<MessageRow>, StoreError> {
        sqlx::query(
            "UPDATE messages SET wamid = $1, status = CASE WHEN status IN ('queued', 'sending') THEN 'accepted' \
             ELSE status END, updated_at = $2 WHERE idempotency_key = $3 AND wamid IS NULL",
        )
        .bind(wamid)
        .bind(now_ms())
        .bind(idempotency_key)
        .execute(&self.pool)
        .await?;
        self.message_by_wamid(wamid).await
    }

    /// Moves a message's status from `from` to `to` (compare-and-set).
    pub async fn advance_message_status(
        &self,
        id: i64,
        from: &str,
        to: &str,
        error_code: Option<i64>,
        error_title: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE messages SET status = $1, error_code = COALESCE($2, error_code), \
             error_title = COALESCE($3, error_title), updated_at = $4 WHERE id = $5 AND status = $6",
        )
        .bind(to)
        .bind(error_code)
        .bind(error_title)
        .bind(now_ms())
        .bind(id)
        .bind(from)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Notes an inbound message: it opens (or extends) the 24-hour service window.
    pub async fn record_inbound(&self, phone: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO wa_users (phone, last_inbound_at, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (phone) DO UPDATE SET last_inbound_at = CASE \
               WHEN wa_users.last_inbound_at IS NULL OR wa_users.last_inbound_at < excluded.last_inbound_at \
               THEN excluded.last_inbound_at ELSE wa_users.last_inbound_at END, updated_at = excluded.updated_at",
        )
        .bind(phone)
        .bind(at)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The last inbound message time, when the user has written to us.
    pub async fn last_inbound_at(&self, phone: &str) -> Result<Option<i64>, StoreError> {
        let at: Option<Option<i64>> = sqlx::query_scalar("SELECT last_inbound_at FROM wa_users WHERE phone = $1")
            .bind(phone)
            .fetch_optional(&self.pool)
            .await?;
        Ok(at.flatten())
    }

    pub async fn is_opted_out(&self, phone: &str) -> Result<bool, StoreError> {
        let flag: Option<i64> = sqlx::query_scalar("SELECT opted_out FROM wa_users WHERE phone = $1")
            .bind(phone)
            .fetch_optional(&self.pool)
            .await?;
        Ok(flag == Some(1))
    }

    /// Records an opt-out (`opted_out = true`) or its lifting, atomically; `mirror` (the
    /// HubSpot update) is queued in the same transaction when something changed.
    pub async fn set_opt_out(
        &self,
        phone: &str,
        opted_out: bool,
        source: &str,
        mirror: &SideJob,
    ) -> Result<OptOutChange, StoreError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO wa_users (phone, updated_at) VALUES ($1, $2) ON CONFLICT (phone) DO NOTHING")
            .bind(phone)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let change = if opted_out {
            let changed = sqlx::query(
                "UPDATE wa_users SET opted_out = 1, opted_out_at = $1, opt_out_source = $2, updated_at = $1 \
                 WHERE phone = $3 AND opted_out = 0",
            )
            .bind(now)
            .bind(source)
            .bind(phone)
            .execute(&mut *tx)
            .await?;
            if changed.rows_affected() == 1 {
                OptOutChange::OptedOut(now)
            } else {
                let since: Option<i64> = sqlx::query_scalar("SELECT opted_out_at FROM wa_users WHERE phone = $1")
                    .bind(phone)
                    .fetch_one(&mut *tx)
                    .await?;
                OptOutChange::AlreadyOptedOut(since.unwrap_or(now))
            }
        } else {
            let changed = sqlx::query(
                "UPDATE wa_users SET opted_out = 0, opted_out_at = NULL, opt_out_source = $1, updated_at = $2 \
                 WHERE phone = $3 AND opted_out = 1",
            )
            .bind(source)
            .bind(now)
            .bind(phone)
            .execute(&mut *tx)
            .await?;
            if changed.rows_affected() == 1 {
                OptOutChange::Resumed
            } else {
                OptOutChange::Unchanged
            }
        };
        if matches!(change, OptOutChange::OptedOut(_) | OptOutChange::Resumed) {
            insert_job(&mut tx, mirror).await?;
        }
        tx.commit().await?;
        Ok(change)
    }

    /// HubSpot contact ids we know for a number (as customer or as friend).
    pub async fn contact_ids_for_phone(&self, phone: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT contact_id AS id FROM invites WHERE phone = $1 \
             UNION SELECT DISTINCT friend_contact_id AS id FROM referrals WHERE friend_phone = $1 AND friend_contact_id IS NOT NULL",
        )
        .bind(phone)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("id").map_err(StoreError::from))
            .collect()
    }
}
