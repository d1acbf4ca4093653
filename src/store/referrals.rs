//! Referral codes, invites, referrals, WhatsApp users (opt-outs, service windows) and
//! the messages we send. Reads are on [`Store`]; writes are on [`Tx`], so that each step
//! commits with its effects. Every step that must happen once is guarded by a unique key.

use serde::Serialize;
use sqlx::{AnyConnection, Row};

use super::jobs::NewJob;
use super::tx::{TallyKey, Tx};
use super::{typed_column, Store, StoreError, StoredFlag, StoredPhone};
use crate::domain::funnel::{invite_steps, referral_steps};
use crate::domain::messaging::{MessagePurpose, MessageStatus, TemplateEvent};
use crate::domain::phone::E164;
use crate::domain::referral::ReferralState;
use crate::domain::state::{sql_list, InviteState, Persisted};
use crate::domain::work::Job;

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct InviteRow {
    pub id: i64,
    pub trigger_key: String,
    pub contact_id: String,
    pub trigger: String,
    #[sqlx(try_from = "StoredPhone")]
    pub phone: Option<E164>,
    pub first_name: String,
    pub language: String,
    pub referral_code: Option<String>,
    #[sqlx(try_from = "String")]
    pub state: InviteState,
    pub reason: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewInvite {
    pub trigger_key: String,
    pub contact_id: String,
    pub trigger: String,
    pub phone: Option<E164>,
    pub first_name: String,
    pub language: String,
    pub referral_code: Option<String>,
    pub state: InviteState,
    pub reason: Option<String>,
}

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
    pub reason: Option<String>,
    pub friend_contact_id: Option<String>,
    pub nominated_at: i64,
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

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct MessageRow {
    pub id: i64,
    pub idempotency_key: String,
    #[sqlx(try_from = "String")]
    pub purpose: MessagePurpose,
    #[sqlx(try_from = "StoredPhone")]
    pub to_phone: E164,
    pub invite_id: Option<i64>,
    pub referral_id: Option<i64>,
    #[sqlx(try_from = "StoredFlag")]
    pub marketing: bool,
    pub body: String,
    pub wamid: Option<String>,
    #[sqlx(try_from = "String")]
    pub status: MessageStatus,
    pub error_code: Option<i64>,
    pub error_title: Option<String>,
    pub updated_at: i64,
}

/// One message's move in a batch of Meta's statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusMove {
    pub id: i64,
    pub from: MessageStatus,
    pub to: MessageStatus,
}

/// A message to send through the job queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub idempotency_key: String,
    pub purpose: MessagePurpose,
    pub to_phone: E164,
    pub invite_id: Option<i64>,
    pub referral_id: Option<i64>,
    pub marketing: bool,
    /// The Graph API request body.
    pub body: String,
    pub run_at: i64,
    pub max_attempts: i64,
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

impl OptOutChange {
    /// Whether the preference changed (and HubSpot must hear of it).
    pub fn changed(self) -> bool {
        matches!(self, OptOutChange::OptedOut(_) | OptOutChange::Resumed)
    }
}

const MESSAGE_COLUMNS: &str = "id, idempotency_key, purpose, to_phone, invite_id, referral_id, marketing, body, \
    wamid, status, error_code, error_title, updated_at";
pub(super) const REFERRAL_COLUMNS: &str =
    "id, invite_id, flow_token, referrer_contact_id, referrer_phone, referrer_name, \
    referral_code, friend_phone, friend_name, personal_message, consent, language, state, reason, \
    friend_contact_id, nominated_at";
const INVITE_COLUMNS: &str = "id, trigger_key, contact_id, trigger, phone, first_name, language, referral_code, \
    state, reason, created_at";

/// The row of `table` whose `column` equals `value`, as `T` (`columns` names its fields).
async fn row_where<T, V>(
    conn: &mut AnyConnection,
    columns: &str,
    table: &str,
    column: &str,
    value: V,
) -> Result<Option<T>, StoreError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    V: for<'q> sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + Send,
{
    let sql = format!("SELECT {columns} FROM {table} WHERE {column} = $1");
    Ok(sqlx::query_as::<_, T>(&sql).bind(value).fetch_optional(conn).await?)
}

async fn referral_in(conn: &mut AnyConnection, id: i64) -> Result<Option<ReferralRow>, StoreError> {
    row_where(conn, REFERRAL_COLUMNS, "referrals", "id", id).await
}

async fn invite_by_key_in(conn: &mut AnyConnection, trigger_key: &str) -> Result<Option<InviteRow>, StoreError> {
    row_where(conn, INVITE_COLUMNS, "invites", "trigger_key", trigger_key.to_string()).await
}

async fn message_by_wamid_in(conn: &mut AnyConnection, wamid: &str) -> Result<Option<MessageRow>, StoreError> {
    row_where(conn, MESSAGE_COLUMNS, "messages", "wamid", wamid.to_string()).await
}

// ---------------------------------------------------------------------------------------
// Writes: one step's statements, committed together by the caller.

impl Tx {
    /// Inserts a message and its send job; `None` (and nothing queued) when the key was
    /// seen before.
    pub async fn insert_message(&mut self, message: &NewMessage) -> Result<Option<i64>, StoreError> {
        let now = self.now_ms();
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO messages (idempotency_key, purpose, to_phone, invite_id, referral_id, marketing, body, status, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        )
        .bind(&message.idempotency_key)
        .bind(message.purpose.as_str())
        .bind(message.to_phone.as_str())
        .bind(message.invite_id)
        .bind(message.referral_id)
        .bind(i64::from(message.marketing))
        .bind(&message.body)
        .bind(MessageStatus::Queued.as_str())
        .bind(now)
        .fetch_optional(self.write()?)
        .await?;
        let Some(id) = id else { return Ok(None) };
        let send = NewJob::new(
            &Job::SendWhatsApp { message_id: id },
            message.max_attempts,
            message.run_at,
        );
        self.enqueue(&send).await?;
        Ok(Some(id))
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
        .bind(&invite.trigger)
        .bind(invite.phone.as_ref().map(E164::as_str))
        .bind(&invite.first_name)
        .bind(&invite.language)
        .bind(&invite.referral_code)
        .bind(invite.state.as_str())
        .bind(&invite.reason)
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
        let gate = sqlx::query(
            "UPDATE customers SET last_invite_at = $1, invite_count = invite_count + 1 WHERE contact_id = $2 \
             AND (last_invite_at IS NULL OR last_invite_at < $3) AND invite_count < $4",
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
        Ok(Some(current))
    }

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
            .insert_referral_row(referral, ReferralState::Refused, Some("already_referred"))
            .await?
            .ok_or(StoreError::Exhausted("refused nomination could not be recorded"))?;
        Ok(ReferralInsert::FriendTaken(id))
    }

    /// A referral created by a conversion (a code shared by hand, `attribute_code_only`):
    /// it starts `converted`'s predecessor so the conversion moves it like any other.
    pub async fn insert_code_only_referral(&mut self, referral: &NewReferral) -> Result<i64, StoreError> {
        self.insert_referral_row(referral, ReferralState::FriendUnreachable, Some("code_only"))
            .await?
            .ok_or(StoreError::Exhausted("code-only referral could not be recorded"))
    }

    async fn insert_referral_row(
        &mut self,
        referral: &NewReferral,
        state: ReferralState,
        reason: Option<&str>,
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
        .bind(reason)
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
        let sql = format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE id = $1{}",
            self.lock_clause()
        );
        Ok(sqlx::query_as::<_, ReferralRow>(&sql)
            .bind(id)
            .fetch_optional(self.read())
            .await?)
    }

    /// Moves a referral from `from` to `to` (compare-and-set, on a row the caller read
    /// with [`Tx::referral_for_update`]); [`StoreError::Conflict`] when it was no longer in
    /// `from`.
    pub async fn move_referral(
        &mut self,
        id: i64,
        from: ReferralState,
        to: ReferralState,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let moved = sqlx::query(
            "UPDATE referrals SET state = $1, reason = COALESCE($2, reason), updated_at = $3 WHERE id = $4 AND state = $5",
        )
        .bind(to.as_str())
        .bind(reason)
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
        self.record_transition(id, Some(from), to, reason).await
    }

    /// Notes a referral's change of state for its timeline.
    async fn record_transition(
        &mut self,
        referral_id: i64,
        from: Option<ReferralState>,
        to: ReferralState,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO referral_transitions (referral_id, from_state, to_state, reason, at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(referral_id)
        .bind(from.map(ReferralState::as_str))
        .bind(to.as_str())
        .bind(reason)
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

    /// The message Meta knows as `wamid`, locked until this step commits (see
    /// [`Tx::message_for_update`]).
    pub async fn message_by_wamid_for_update(&mut self, wamid: &str) -> Result<Option<MessageRow>, StoreError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE wamid = $1{}",
            self.lock_clause()
        );
        Ok(sqlx::query_as::<_, MessageRow>(&sql)
            .bind(wamid)
            .fetch_optional(self.read())
            .await?)
    }

    /// The messages Meta knows by `wamids`, locked until this step commits, in id order
    /// (so two batches that share messages wait for each other rather than deadlock).
    pub async fn messages_by_wamids_for_update(&mut self, wamids: &[&str]) -> Result<Vec<MessageRow>, StoreError> {
        if wamids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE wamid IN ({}) ORDER BY id{}",
            super::queue::placeholders(1, wamids.len()),
            self.lock_clause()
        );
        let mut select = sqlx::query_as::<_, MessageRow>(&sql);
        for wamid in wamids {
            select = select.bind(*wamid);
        }
        Ok(select.fetch_all(self.read()).await?)
    }

    /// Moves each message from its `from` status to its `to` status (compare-and-set, on
    /// rows the caller locked with [`Tx::messages_by_wamids_for_update`]) in one
    /// statement. [`StoreError::Conflict`] when any was no longer in its `from`.
    pub async fn set_message_statuses(&mut self, moves: &[StatusMove]) -> Result<(), StoreError> {
        if moves.is_empty() {
            return Ok(());
        }
        let rows = (0..moves.len())
            .map(|n| format!("(${}, ${}, ${})", 2 + 3 * n, 3 + 3 * n, 4 + 3 * n))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "WITH moved (id, from_status, to_status) AS (VALUES {rows}) \
             UPDATE messages SET status = moved.to_status, updated_at = $1 FROM moved \
             WHERE messages.id = moved.id AND messages.status = moved.from_status"
        );
        let mut update = sqlx::query(&sql).bind(self.now_ms());
        for m in moves {
            update = update.bind(m.id).bind(m.from.as_str()).bind(m.to.as_str());
        }
        let done = update.execute(self.write()?).await?;
        if done.rows_affected() != moves.len() as u64 {
            return Err(StoreError::Conflict(format!(
                "{} of {} messages left their status meanwhile",
                moves.len() as u64 - done.rows_affected(),
                moves.len()
            )));
        }
        Ok(())
    }

    /// The message, locked until this step commits: a step that changes a message's
    /// status decides on this read, and concurrent steps about the same message (two of
    /// Meta's statuses, a status and the send that recorded its acceptance) wait their turn.
    pub async fn message_for_update(&mut self, id: i64) -> Result<Option<MessageRow>, StoreError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1{}",
            self.lock_clause()
        );
        Ok(sqlx::query_as::<_, MessageRow>(&sql)
            .bind(id)
            .fetch_optional(self.read())
            .await?)
    }

    /// A status arrived for a wamid we never recorded (our send was interrupted after Meta
    /// accepted it): Meta echoes our callback data, which is the message's idempotency key.
    pub async fn attach_wamid(&mut self, idempotency_key: &str, wamid: &str) -> Result<Option<MessageRow>, StoreError> {
        let sql = format!(
            "UPDATE messages SET wamid = $1, status = CASE WHEN status IN ({}) THEN $2 ELSE status END, \
             updated_at = $3 WHERE idempotency_key = $4 AND wamid IS NULL",
            sql_list(MessageStatus::UNCONFIRMED)
        );
        sqlx::query(&sql)
            .bind(wamid)
            .bind(MessageStatus::Accepted.as_str())
            .bind(self.now_ms())
            .bind(idempotency_key)
            .execute(self.write()?)
            .await?;
        self.message_by_wamid_for_update(wamid).await
    }

    /// Moves a message's status from `from` to `to` (compare-and-set, on a row the
    /// caller read with [`Tx::message_for_update`]), with Meta's error and, when given,
    /// the wamid. [`StoreError::Conflict`] when the message was no longer in `from`.
    pub async fn set_message_status(
        &mut self,
        id: i64,
        from: MessageStatus,
        to: MessageStatus,
        wamid: Option<&str>,
        error: Option<(Option<i64>, &str)>,
    ) -> Result<(), StoreError> {
        let (code, title) = match error {
            Some((code, title)) => (code, Some(title)),
            None => (None, None),
        };
        let done = sqlx::query(
            "UPDATE messages SET status = $1, wamid = COALESCE($2, wamid), error_code = COALESCE($3, error_code), \
             error_title = COALESCE($4, error_title), updated_at = $5 WHERE id = $6 AND status = $7",
        )
        .bind(to.as_str())
        .bind(wamid)
        .bind(code)
        .bind(title)
        .bind(self.now_ms())
        .bind(id)
        .bind(from.as_str())
        .execute(self.write()?)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "message {id} left {} meanwhile",
                from.as_str()
            )));
        }
        Ok(())
    }

    /// Notes an inbound message: it opens (or extends) the 24-hour service window.
    pub async fn record_inbound(&mut self, phone: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO wa_users (phone, last_inbound_at, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (phone) DO UPDATE SET last_inbound_at = CASE \
               WHEN wa_users.last_inbound_at IS NULL OR wa_users.last_inbound_at < excluded.last_inbound_at \
               THEN excluded.last_inbound_at ELSE wa_users.last_inbound_at END, updated_at = excluded.updated_at",
        )
        .bind(phone)
        .bind(at)
        .bind(self.now_ms())
        .execute(self.write()?)
        .await?;
        Ok(())
    }

    /// Records an opt-out (`opted_out = true`) or its lifting.
    pub async fn set_opt_out(
        &mut self,
        phone: &str,
        opted_out: bool,
        source: &str,
    ) -> Result<OptOutChange, StoreError> {
        let now = self.now_ms();
        sqlx::query("INSERT INTO wa_users (phone, updated_at) VALUES ($1, $2) ON CONFLICT (phone) DO NOTHING")
            .bind(phone)
            .bind(now)
            .execute(self.write()?)
            .await?;
        if !opted_out {
            let changed = sqlx::query(
                "UPDATE wa_users SET opted_out = 0, opted_out_at = NULL, opt_out_source = $1, updated_at = $2 \
                 WHERE phone = $3 AND opted_out = 1",
            )
            .bind(source)
            .bind(now)
            .bind(phone)
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
        .bind(source)
        .bind(phone)
        .execute(self.write()?)
        .await?;
        if changed.rows_affected() == 1 {
            return Ok(OptOutChange::OptedOut(now));
        }
        let since: Option<i64> = sqlx::query_scalar("SELECT opted_out_at FROM wa_users WHERE phone = $1")
            .bind(phone)
            .fetch_one(self.read())
            .await?;
        Ok(OptOutChange::AlreadyOptedOut(since.unwrap_or(now)))
    }

    /// Records a template's status from Meta's webhook (the newest wins).
    pub async fn set_template_status(
        &mut self,
        name: &str,
        language: &str,
        status: &TemplateEvent,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO template_status (name, language, status, reason, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name, language) DO UPDATE SET status = excluded.status, reason = excluded.reason, \
             updated_at = excluded.updated_at",
        )
        .bind(name)
        .bind(language)
        .bind(status.as_str())
        .bind(reason)
        .bind(self.now_ms())
        .execute(self.write()?)
        .await?;
        Ok(())
    }

    pub async fn is_opted_out(&mut self, phone: &str) -> Result<bool, StoreError> {
        let flag: Option<StoredFlag> = sqlx::query_scalar("SELECT opted_out FROM wa_users WHERE phone = $1")
            .bind(phone)
            .fetch_optional(self.read())
            .await?;
        Ok(flag.is_some_and(bool::from))
    }
}

// ---------------------------------------------------------------------------------------
// Reads, and the writes that must commit before an outside call.

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
        invite_by_key_in(&mut conn, trigger_key).await
    }

    pub async fn invite(&self, id: i64) -> Result<Option<InviteRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        row_where(&mut conn, INVITE_COLUMNS, "invites", "id", id).await
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

    pub async fn referral(&self, id: i64) -> Result<Option<ReferralRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        referral_in(&mut conn, id).await
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
    pub async fn friend_has_open_referral(&self, friend_phone: &str, window_start: i64) -> Result<bool, StoreError> {
        let sql = format!(
            "SELECT id FROM referrals WHERE friend_phone = $1 AND nominated_at >= $2 AND state IN ({}) LIMIT 1",
            sql_list(ReferralState::OPEN)
        );
        let found: Option<i64> = sqlx::query_scalar(&sql)
            .bind(friend_phone)
            .bind(window_start)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    /// The open referral waiting for this friend: matched by the nominated number, else by
    /// a code that exactly one share-link referral has (never the referrer's own number).
    pub async fn referral_awaiting_friend(
        &self,
        phone: &str,
        codes: &[String],
    ) -> Result<Option<ReferralRow>, StoreError> {
        let sql = format!(
            "SELECT {REFERRAL_COLUMNS} FROM referrals WHERE friend_phone = $1 AND state IN ({}) ORDER BY id LIMIT 1",
            sql_list(ReferralState::AWAITING_FRIEND)
        );
        if let Some(row) = sqlx::query_as::<_, ReferralRow>(&sql)
            .bind(phone)
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
                .bind(phone)
                .fetch_all(&self.pool)
                .await?;
            if rows.len() == 1 {
                return Ok(rows.into_iter().next());
            }
        }
        Ok(None)
    }

    pub async fn message(&self, id: i64) -> Result<Option<MessageRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        row_where(&mut conn, MESSAGE_COLUMNS, "messages", "id", id).await
    }

    pub async fn message_by_wamid(&self, wamid: &str) -> Result<Option<MessageRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        message_by_wamid_in(&mut conn, wamid).await
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
        purpose: MessagePurpose,
    ) -> Result<Option<MessageRow>, StoreError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE invite_id = $1 AND purpose = $2 ORDER BY id DESC LIMIT 1"
        );
        Ok(sqlx::query_as::<_, MessageRow>(&sql)
            .bind(invite_id)
            .bind(purpose.as_str())
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Marks a send as begun, committed before the request to Meta (so that a crash
    /// mid-request is known afterwards). [`StoreError::Conflict`] when something moved it
    /// since the caller read `from` (a status recorded the send, another attempt).
    pub async fn mark_sending(&self, id: i64, from: MessageStatus) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        self.faults.before_write()?;
        let done = sqlx::query("UPDATE messages SET status = $1, updated_at = $2 WHERE id = $3 AND status = $4")
            .bind(MessageStatus::Sending.as_str())
            .bind(self.now_ms())
            .bind(id)
            .bind(from.as_str())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "message {id} left {} meanwhile",
                from.as_str()
            )));
        }
        Ok(())
    }

    /// Notes an inbound message on its own (the latest time wins, so repeating it is harmless).
    pub async fn record_inbound(&self, phone: &str, at: i64) -> Result<(), StoreError> {
        let mut tx = self.begin(None).await?;
        tx.record_inbound(phone, at).await?;
        tx.commit("").await?;
        Ok(())
    }

    /// Records Meta's final refusal of a send (committed at once: only the attempt that got
    /// the answer knows it).
    pub async fn record_refusal(&self, id: i64, code: Option<i64>, title: &str) -> Result<(), StoreError> {
        let mut tx = self.begin(None).await?;
        tx.set_message_status(
            id,
            MessageStatus::Sending,
            MessageStatus::Failed,
            None,
            Some((code, title)),
        )
        .await?;
        tx.commit("").await?;
        Ok(())
    }

    /// A template's last status from Meta (`None` when no webhook told of it).
    pub async fn template_status(
        &self,
        name: &str,
        language: &str,
    ) -> Result<Option<(TemplateEvent, Option<String>)>, StoreError> {
        let row = sqlx::query("SELECT status, reason FROM template_status WHERE name = $1 AND language = $2")
            .bind(name)
            .bind(language)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(Some((
                typed_column::<String, _>(&row, "status")?,
                row.try_get("reason")?,
            ))),
            None => Ok(None),
        }
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
        let flag: Option<StoredFlag> = sqlx::query_scalar("SELECT opted_out FROM wa_users WHERE phone = $1")
            .bind(phone)
            .fetch_optional(&self.pool)
            .await?;
        Ok(flag.is_some_and(bool::from))
    }

    /// Whether a number we know for this HubSpot contact (as customer or as friend) has
    /// opted out of marketing.
    pub async fn contact_opted_out(&self, contact_id: &str) -> Result<bool, StoreError> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT phone FROM wa_users WHERE opted_out = 1 AND phone IN \
             (SELECT phone FROM invites WHERE contact_id = $1 AND phone IS NOT NULL \
              UNION SELECT friend_phone FROM referrals WHERE friend_contact_id = $1) LIMIT 1",
        )
        .bind(contact_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
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
