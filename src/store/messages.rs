//! The messages we send, with Meta's latest status for each, and the status of the
//! templates they use. Reads are on [`Store`]; writes are on [`Tx`].

use serde::Serialize;
use sqlx::{AnyConnection, FromRow, Row};

use super::jobs::NewJob;
use super::queue::{padded, placeholders, value_rows};
use super::tx::{Committed, ItemEnd, Lease, TallyKey, Tx};
use super::{row_where, typed_column, Backend, Store, StoreError, StoredFlag, StoredName, StoredPhone};
use crate::domain::funnel::Step;
use crate::domain::messaging::{MessagePurpose, MessageStatus, TemplateEvent};
use crate::domain::phone::E164;
use crate::domain::send_window::{HoldReason, LocalZone, SendTiming};
use crate::domain::state::{sql_list, Persisted, QueueState};
use crate::domain::work::Job;

/// What [`Store::accept_sending`] did.
#[derive(Debug)]
pub enum Acceptance {
    /// The message had moved since it was marked `sending` (a status recorded first, a
    /// lapsed attempt): nothing written.
    Moved,
    /// The acceptance is recorded; the job is still to be completed.
    Recorded,
    /// The acceptance is recorded and the job ended with it, in one commit.
    Ended(Committed),
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
    /// Whether it waits for the recipient's send window.
    #[sqlx(try_from = "String")]
    pub timing: SendTiming,
    /// Why and until when its send last waited without using an attempt.
    #[sqlx(try_from = "StoredName")]
    pub held_reason: Option<HoldReason>,
    pub held_until: Option<i64>,
}

/// A message about to be sent, and what its send checks first.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageToSend {
    pub message: MessageRow,
    /// The recipient opted out of marketing.
    pub recipient_opted_out: bool,
    /// Its template's recorded status and reason.
    pub template: Option<(TemplateEvent, Option<String>)>,
    /// The recipient's time zone, as their CRM record gave it.
    pub recipient_zone: Option<LocalZone>,
}

/// One message's move in a batch of Meta's statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusMove {
    pub id: i64,
    pub from: MessageStatus,
    pub to: MessageStatus,
    /// The wamid to record, for a message found by its callback data (its status
    /// overtook the record of our send).
    pub wamid: Option<String>,
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
    pub timing: SendTiming,
}

const MESSAGE_COLUMNS: &str = "id, idempotency_key, purpose, to_phone, invite_id, referral_id, marketing, body, \
    wamid, status, error_code, error_title, updated_at, timing, held_reason, held_until";

async fn message_by_wamid_in(conn: &mut AnyConnection, wamid: &str) -> Result<Option<MessageRow>, StoreError> {
    row_where(conn, MESSAGE_COLUMNS, "messages", "wamid", wamid.to_string()).await
}

impl Tx {
    /// Inserts a message and its send job; `None` (and nothing queued) when the key was
    /// seen before.
    pub async fn insert_message(&mut self, message: &NewMessage) -> Result<Option<i64>, StoreError> {
        let now = self.now_ms();
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO messages (idempotency_key, purpose, to_phone, invite_id, referral_id, marketing, body, status, \
             created_at, updated_at, timing) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10) \
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
        .bind(message.timing.as_str())
        .fetch_optional(self.write()?)
        .await?;
        let Some(id) = id else { return Ok(None) };
        let send = NewJob::new(
            &Job::SendWhatsApp { message_id: id },
            message.max_attempts,
            message.run_at,
        );
        self.enqueue(send);
        Ok(Some(id))
    }

    /// The message Meta knows as `wamid`, locked until this step commits (see
    /// [`Tx::message_for_update`]).
    pub async fn message_by_wamid_for_update(&mut self, wamid: &str) -> Result<Option<MessageRow>, StoreError> {
        self.row_for_update(MESSAGE_COLUMNS, "messages", "wamid", wamid.to_string())
            .await
    }

    /// The messages Meta knows by `wamids`, and those not yet known by any wamid whose
    /// idempotency key is among `keys` (Meta echoes it as callback data), locked until this
    /// step commits, in id order (so two batches that share messages wait for each other
    /// rather than deadlock).
    pub async fn messages_by_wamids_for_update(
        &mut self,
        wamids: &[&str],
        keys: &[&str],
    ) -> Result<Vec<MessageRow>, StoreError> {
        if wamids.is_empty() {
            return Ok(Vec::new());
        }
        let by_key = if keys.is_empty() {
            String::new()
        } else {
            format!(
                " OR (wamid IS NULL AND idempotency_key IN ({}))",
                placeholders(1 + wamids.len(), keys.len())
            )
        };
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE wamid IN ({}){by_key} ORDER BY id{}",
            placeholders(1, wamids.len()),
            self.lock_clause()
        );
        // Planned afresh each time: a generic plan of a list lookup, made while `messages`
        // was small (a new install), scans the table whole long after it has grown.
        let mut select = sqlx::query_as::<_, MessageRow>(&sql).persistent(false);
        for value in wamids.iter().chain(keys) {
            select = select.bind(*value);
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
        let rows = value_rows(2, padded(moves.len()), &["", "", "", ""]);
        // A wamid is recorded only on a message that has none (compare-and-set too).
        let sql = format!(
            "WITH moved (id, from_status, to_status, wamid) AS (VALUES {rows}) \
             UPDATE messages SET status = moved.to_status, wamid = COALESCE(moved.wamid, messages.wamid), \
             updated_at = $1 FROM moved \
             WHERE messages.id = moved.id AND messages.status = moved.from_status \
             AND (moved.wamid IS NULL OR messages.wamid IS NULL)"
        );
        let mut update = sqlx::query(&sql).bind(self.now_ms());
        for m in moves {
            update = update
                .bind(m.id)
                .bind(m.from.as_str())
                .bind(m.to.as_str())
                .bind(m.wamid.as_deref());
        }
        for _ in moves.len()..padded(moves.len()) {
            update = update
                .bind(None::<i64>)
                .bind(None::<String>)
                .bind(None::<String>)
                .bind(None::<String>);
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
        self.row_for_update(MESSAGE_COLUMNS, "messages", "id", id).await
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

    /// Records that `message`'s send waits, for `reason`, until `until` (its timeline says
    /// so). The first hold for a reason is counted in the funnel, under the message's
    /// invite or referral. A compare-and-set on the reason the send held before: a lost
    /// one is a conflict, and the step runs again.
    pub async fn hold_message(
        &mut self,
        message: &MessageRow,
        reason: HoldReason,
        until: i64,
    ) -> Result<(), StoreError> {
        let before = message.held_reason.map_or("", |r| r.as_str());
        let done = sqlx::query(
            "UPDATE messages SET held_reason = $1, held_until = $2 WHERE id = $3 AND COALESCE(held_reason, '') = $4",
        )
        .bind(reason.as_str())
        .bind(until)
        .bind(message.id)
        .bind(before)
        .execute(self.write()?)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "message {} was held meanwhile",
                message.id
            )));
        }
        if message.held_reason != Some(reason) {
            let step = match reason {
                HoldReason::QuietHours => Step::HeldQuietHours,
                HoldReason::FrequencyCap => Step::HeldFrequencyCap,
            };
            match (message.referral_id, message.invite_id) {
                (Some(referral_id), _) => self.tally(TallyKey::Referral(referral_id), vec![step]),
                (None, Some(invite_id)) => self.tally(TallyKey::Invite(invite_id), vec![step]),
                (None, None) => {}
            }
        }
        Ok(())
    }
}

impl Store {
    pub async fn message(&self, id: i64) -> Result<Option<MessageRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let found = row_where(&mut conn, MESSAGE_COLUMNS, "messages", "id", id).await;
        conn.settle(&found);
        found
    }

    /// A message about to be sent, with what every send checks first, read together (one
    /// round trip): whether its recipient opted out of marketing, and the recorded status
    /// of its template (none for a free-form message, or a template Meta never reported on).
    pub async fn message_to_send(&self, id: i64) -> Result<Option<MessageToSend>, StoreError> {
        let columns: Vec<String> = MESSAGE_COLUMNS.split(", ").map(|c| format!("m.{c}")).collect();
        // The template's name and language, from the request body we stored.
        let (name, language) = match self.backend {
            super::Backend::Postgres => (
                "m.body::jsonb #>> '{template,name}'",
                "m.body::jsonb #>> '{template,language,code}'",
            ),
            super::Backend::Sqlite => (
                "json_extract(m.body, '$.template.name')",
                "json_extract(m.body, '$.template.language.code')",
            ),
        };
        let sql = format!(
            "SELECT {}, COALESCE(w.opted_out, 0) AS recipient_opted_out, w.time_zone AS recipient_zone, \
                    t.status AS template_status, t.reason AS template_reason \
             FROM messages m LEFT JOIN wa_users w ON w.phone = m.to_phone \
             LEFT JOIN template_status t ON t.name = {name} AND t.language = {language} \
             WHERE m.id = $1",
            columns.join(", ")
        );
        let Some(row) = sqlx::query(&sql).bind(id).fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        let opted_out: StoredFlag = row.try_get("recipient_opted_out")?;
        let template = match row.try_get::<Option<String>, _>("template_status")? {
            Some(_) => Some((
                typed_column::<String, _>(&row, "template_status")?,
                row.try_get("template_reason")?,
            )),
            None => None,
        };
        Ok(Some(MessageToSend {
            message: MessageRow::from_row(&row)?,
            recipient_opted_out: opted_out.into(),
            template,
            recipient_zone: typed_column::<StoredName, _>(&row, "recipient_zone")?,
        }))
    }

    pub async fn message_by_wamid(&self, wamid: &str) -> Result<Option<MessageRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let found = message_by_wamid_in(&mut conn, wamid).await;
        conn.settle(&found);
        found
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
        // `sent_at`: handed to Meta now (what the frequency cap counts).
        let done =
            sqlx::query("UPDATE messages SET status = $1, updated_at = $2, sent_at = $2 WHERE id = $3 AND status = $4")
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

    /// Records Meta's acceptance of a send that nothing moved since it was marked
    /// `sending`, in one statement. On PostgreSQL the same statement ends the send job
    /// (`job`, still held by its owner) with `note`: the work and the completion in one
    /// round trip. On SQLite the job ends through the worker's completion, and a crash in
    /// between only reruns a job that finds its message accepted.
    pub async fn accept_sending(
        &self,
        id: i64,
        wamid: &str,
        job: &Lease,
        note: &str,
    ) -> Result<Acceptance, StoreError> {
        let _turn = self.write_turn().await;
        self.faults.before_write()?;
        let mut conn = self.pool.acquire().await?;
        let accepted = self.accept_sending_on(&mut conn, id, wamid, job, note).await;
        conn.settle(&accepted);
        accepted
    }

    async fn accept_sending_on(
        &self,
        conn: &mut AnyConnection,
        id: i64,
        wamid: &str,
        job: &Lease,
        note: &str,
    ) -> Result<Acceptance, StoreError> {
        let now = self.now_ms();
        if self.backend != Backend::Postgres {
            let accepted = accept_sending(conn, id, wamid, now).await?;
            return Ok(if accepted {
                Acceptance::Recorded
            } else {
                Acceptance::Moved
            });
        }
        let sql = format!(
            "WITH accepted AS ({ACCEPT_SENDING} RETURNING id), \
             ended AS (UPDATE {jobs} SET state = '{done}', finished_at = $3, lease_until = NULL, note = $6 \
                 WHERE id = $7 AND state = '{running}' AND lease_owner = $8 AND EXISTS (SELECT 1 FROM accepted) \
                 RETURNING id) \
             SELECT (SELECT COUNT(*) FROM accepted) AS accepted, (SELECT COUNT(*) FROM ended) AS ended",
            jobs = job.queue.table(),
            done = QueueState::Done.as_str(),
            running = QueueState::Running.as_str(),
        );
        let row = bind_acceptance(sqlx::query(&sql), id, wamid, now)
            .bind(note)
            .bind(job.id)
            .bind(job.owner.as_str())
            .fetch_one(conn)
            .await?;
        let (accepted, ended): (i64, i64) = (row.try_get("accepted")?, row.try_get("ended")?);
        Ok(match (accepted, ended) {
            (0, _) => Acceptance::Moved,
            (_, 0) => Acceptance::Recorded,
            _ => Acceptance::Ended(Committed::ended_with_its_work(ItemEnd::Done(note.to_string()))),
        })
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

    /// When the marketing templates handed to Meta for `phone` since `since` were sent,
    /// oldest first (what the weekly frequency cap counts; refused ones do not count), but
    /// `excluding` (the send asking: an interrupted attempt of its own is not another).
    pub async fn marketing_sent_to(
        &self,
        phone: &E164,
        since: i64,
        excluding: Option<i64>,
    ) -> Result<Vec<i64>, StoreError> {
        let purposes: Vec<MessagePurpose> = MessagePurpose::ALL
            .iter()
            .copied()
            .filter(|p| p.is_marketing_template())
            .collect();
        let statuses = [
            MessageStatus::Sending,
            MessageStatus::Accepted,
            MessageStatus::Sent,
            MessageStatus::Delivered,
            MessageStatus::Read,
        ];
        let sql = format!(
            "SELECT sent_at FROM messages WHERE to_phone = $1 AND sent_at > $2 AND purpose IN ({}) \
             AND status IN ({}) AND id <> $3 ORDER BY sent_at",
            sql_list(&purposes),
            sql_list(&statuses)
        );
        Ok(sqlx::query_scalar(&sql)
            .bind(phone.as_str())
            .bind(since)
            .bind(excluding.unwrap_or(0))
            .fetch_all(&self.pool)
            .await?)
    }
}

/// Compare-and-set from `sending` to `accepted` with Meta's wamid (bound by
/// [`bind_acceptance`]).
const ACCEPT_SENDING: &str = "UPDATE messages SET status = $1, wamid = $2, updated_at = $3 \
     WHERE id = $4 AND status = $5 AND (wamid IS NULL OR wamid = $2)";

/// Binds `$1`–`$5` of [`ACCEPT_SENDING`].
fn bind_acceptance<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    id: i64,
    wamid: &'q str,
    now: i64,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    query
        .bind(MessageStatus::Accepted.as_str())
        .bind(wamid)
        .bind(now)
        .bind(id)
        .bind(MessageStatus::Sending.as_str())
}

async fn accept_sending(conn: &mut AnyConnection, id: i64, wamid: &str, now: i64) -> Result<bool, StoreError> {
    let done = bind_acceptance(sqlx::query(ACCEPT_SENDING), id, wamid, now)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}
