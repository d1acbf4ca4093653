//! Reads for the admin API (and the dashboard): the funnel of a period, lists with cursor
//! pagination, and one referral's timeline. Read-only; every query is answered from an
//! index on the period or the id.

use serde::Serialize;
use sqlx::Row;

use super::{typed_column, ReferralRow, Store, StoreError, StoredName};
use crate::domain::eligibility::TriggerKind;
use crate::domain::funnel::{FunnelCounts, Period, Step, DAY_MS};
use crate::domain::messaging::{MessagePurpose, MessageStatus};
use crate::domain::phone::E164;
use crate::domain::referral::ReferralState;
use crate::domain::reward::{Beneficiary, RewardKind, RewardState};
use crate::domain::send_window::HoldReason;
use crate::domain::state::{ConversionOutcome, ConversionSource, InviteState, Persisted, QueueState};

/// One day of the funnel's daily chart (every day of the period, zero when quiet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct FunnelDay {
    /// Unix milliseconds at the day's start (UTC).
    pub day: i64,
    pub triggers: i64,
    pub nominated: i64,
    pub converted: i64,
}

/// A count by reason (or code, or source).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ReasonCount {
    pub reason: String,
    pub count: i64,
}

/// Why people dropped out of the funnel in a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Dropouts {
    /// Triggers that were not eligible, by reason.
    pub ineligible: Vec<ReasonCount>,
    /// Nominations refused, by reason.
    pub refused: Vec<ReasonCount>,
    /// Messages Meta refused or failed, by error code and title.
    pub message_failures: Vec<ReasonCount>,
    /// Numbers that opted out of marketing, by source.
    pub opt_outs: Vec<ReasonCount>,
}

/// Rewards of one state, kind and currency, with their total value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RewardTotal {
    pub state: RewardState,
    pub kind: RewardKind,
    pub currency: String,
    pub count: i64,
    pub amount: i64,
}

/// A referrer and what their nominations became.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ReferrerCounts {
    pub contact_id: String,
    pub name: String,
    pub nominated: i64,
    pub converted: i64,
}

/// One entry of a referral's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct TimelineEntry {
    pub at: i64,
    /// invite, referral, transition, message, conversion, reward or outside call.
    pub kind: &'static str,
    pub what: String,
}

/// The tally's days covering `period`: from the day `from` falls in up to and including
/// the day of the period's last moment.
pub(super) fn tally_days(period: Period) -> (i64, i64) {
    (period.from.div_euclid(DAY_MS), (period.to - 1).div_euclid(DAY_MS) + 1)
}

fn count(row: &sqlx::any::AnyRow, column: &str) -> Result<i64, sqlx::Error> {
    Ok(row.try_get::<Option<i64>, _>(column)?.unwrap_or(0))
}

impl super::Tx {
    /// Records what a person did through the admin API or the dashboard.
    pub async fn record_admin_action(&mut self, actor: &str, action: &str, target: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO admin_actions (actor, action, target, at) VALUES ($1, $2, $3, $4)")
            .bind(actor)
            .bind(action)
            .bind(target)
            .bind(self.now_ms())
            .execute(self.write()?)
            .await?;
        Ok(())
    }
}

/// One recorded admin action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct AdminAction {
    pub id: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub at: i64,
}

impl Store {
    /// The recorded admin actions, newest first.
    pub async fn admin_actions(&self, limit: i64) -> Result<Vec<AdminAction>, StoreError> {
        Ok(sqlx::query_as::<_, AdminAction>(
            "SELECT id, actor, action, target, at FROM admin_actions ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The funnel of the triggers received in the days of `period` (optionally of one
    /// trigger kind: `milestone` takes every milestone, `milestone:renewal` one of them),
    /// from the tally each step adds to when it is first reached.
    pub async fn funnel(&self, period: Period, trigger: Option<&str>) -> Result<FunnelCounts, StoreError> {
        let (first, end) = tally_days(period);
        let rows = sqlx::query(
            "SELECT step, CAST(SUM(n) AS BIGINT) AS n FROM funnel_tally WHERE day >= $1 AND day < $2 \
             AND (CAST($3 AS TEXT) IS NULL OR trigger = CAST($3 AS TEXT) OR trigger LIKE CAST($3 AS TEXT) || ':%') GROUP BY step",
        )
        .bind(first)
        .bind(end)
        .bind(trigger)
        .fetch_all(&self.pool)
        .await?;
        let mut counts = FunnelCounts::default();
        for row in &rows {
            let step: String = row.try_get("step")?;
            if let Some(step) = Step::parse(&step) {
                counts.add(step, count(row, "n")?);
            }
        }
        Ok(counts)
    }

    /// The trigger kinds (and milestone names) seen in the days of `period`.
    pub async fn funnel_triggers(&self, period: Period) -> Result<Vec<String>, StoreError> {
        let (first, end) = tally_days(period);
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT trigger FROM funnel_tally WHERE day >= $1 AND day < $2 ORDER BY trigger",
        )
        .bind(first)
        .bind(end)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The funnel's daily chart: triggers, nominations and conversions by the day the
    /// trigger arrived (UTC).
    pub async fn funnel_days(&self, period: Period, trigger: Option<&str>) -> Result<Vec<FunnelDay>, StoreError> {
        let (first, end) = tally_days(period);
        let charted = [Step::Triggers, Step::Nominated, Step::Converted]
            .map(|step| format!("'{}'", step.as_str()))
            .join(", ");
        let sql = format!(
            "SELECT day, step, CAST(SUM(n) AS BIGINT) AS n FROM funnel_tally WHERE day >= $1 AND day < $2 \
             AND (CAST($3 AS TEXT) IS NULL OR trigger = CAST($3 AS TEXT) OR trigger LIKE CAST($3 AS TEXT) || ':%') \
             AND step IN ({charted}) GROUP BY day, step ORDER BY day"
        );
        let rows = sqlx::query(&sql)
            .bind(first)
            .bind(end)
            .bind(trigger)
            .fetch_all(&self.pool)
            .await?;
        let mut days: Vec<FunnelDay> = Vec::new();
        for row in &rows {
            let day = count(row, "day")? * DAY_MS;
            let step: String = row.try_get("step")?;
            let n = count(row, "n")?;
            if days.last().is_none_or(|d| d.day != day) {
                days.push(FunnelDay {
                    day,
                    triggers: 0,
                    nominated: 0,
                    converted: 0,
                });
            }
            if let Some(entry) = days.last_mut() {
                match Step::parse(&step) {
                    Some(Step::Triggers) => entry.triggers = n,
                    Some(Step::Nominated) => entry.nominated = n,
                    Some(Step::Converted) => entry.converted = n,
                    // Not charted (the statement asks for none of these).
                    Some(_) | None => {}
                }
            }
        }
        // A series over the whole period: the days nothing happened count zero.
        let mut tallied = days.into_iter().peekable();
        let mut series = Vec::with_capacity(usize::try_from(end - first).unwrap_or(0));
        for day in (first..end).map(|d| d * DAY_MS) {
            match tallied.next_if(|d| d.day == day) {
                Some(entry) => series.push(entry),
                None => series.push(FunnelDay {
                    day,
                    triggers: 0,
                    nominated: 0,
                    converted: 0,
                }),
            }
        }
        Ok(series)
    }

    /// Why people dropped out of the triggers, nominations, messages and opt-outs of
    /// `period`.
    pub async fn dropouts(&self, period: Period) -> Result<Dropouts, StoreError> {
        let by = |sql: String| async move {
            let rows = sqlx::query(&sql)
                .bind(period.from)
                .bind(period.to)
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(ReasonCount {
                        reason: row
                            .try_get::<Option<String>, _>("reason")?
                            .unwrap_or_else(|| "unknown".into()),
                        count: count(row, "n")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
        };
        // Four reads on their own indexes, side by side (the page waits for the slowest,
        // not for their sum).
        let (ineligible, refused, message_failures, opt_outs) = tokio::try_join!(
            by(format!(
                "SELECT reason, COUNT(*) AS n FROM invites WHERE state = '{}' \
                 AND created_at >= $1 AND created_at < $2 GROUP BY reason ORDER BY n DESC, reason",
                InviteState::Ineligible.as_str()
            )),
            by(format!(
                "SELECT r.reason AS reason, COUNT(*) AS n FROM referrals r \
                 WHERE r.state = '{}' AND r.nominated_at >= $1 AND r.nominated_at < $2 \
                 GROUP BY r.reason ORDER BY n DESC, reason",
                ReferralState::Refused.as_str()
            )),
            by(format!(
                "SELECT CAST(error_code AS TEXT) || ' ' || COALESCE(error_title, '') AS reason, \
                 COUNT(*) AS n FROM messages WHERE status = '{}' AND created_at >= $1 AND created_at < $2 \
                 GROUP BY error_code, error_title ORDER BY n DESC, reason",
                MessageStatus::Failed.as_str()
            )),
            by(
                "SELECT opt_out_source AS reason, COUNT(*) AS n FROM wa_users WHERE opted_out = 1 \
                 AND opted_out_at >= $1 AND opted_out_at < $2 GROUP BY opt_out_source ORDER BY n DESC, reason"
                    .to_string(),
            ),
        )?;
        Ok(Dropouts {
            ineligible,
            refused,
            message_failures,
            opt_outs,
        })
    }

    /// Rewards granted in `period` by state, kind and currency, with their total value.
    pub async fn reward_totals(&self, period: Period) -> Result<Vec<RewardTotal>, StoreError> {
        let rows = sqlx::query(
            "SELECT state, kind, currency, COUNT(*) AS n, CAST(SUM(amount) AS BIGINT) AS amount FROM rewards \
             WHERE created_at >= $1 AND created_at < $2 GROUP BY state, kind, currency ORDER BY state, kind, currency",
        )
        .bind(period.from)
        .bind(period.to)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RewardTotal {
                    state: typed_column::<String, _>(row, "state")?,
                    kind: typed_column::<String, _>(row, "kind")?,
                    currency: row.try_get("currency")?,
                    count: count(row, "n")?,
                    amount: count(row, "amount")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The referrers with the most converted friends (all time), from their tally.
    pub async fn top_referrers(&self, limit: i64) -> Result<Vec<ReferrerCounts>, StoreError> {
        let sql = format!(
            "SELECT c.contact_id AS contact_id, c.n AS converted, COALESCE(m.n, 0) AS nominated, \
               (SELECT r.referrer_name FROM referrals r WHERE r.referrer_contact_id = c.contact_id \
                ORDER BY r.id DESC LIMIT 1) AS name \
             FROM referrer_tally c LEFT JOIN referrer_tally m ON m.contact_id = c.contact_id AND m.step = '{}' \
             WHERE c.step = '{}' ORDER BY c.n DESC, c.contact_id LIMIT $1",
            Step::Nominated.as_str(),
            Step::Converted.as_str()
        );
        let rows = sqlx::query(&sql).bind(limit).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                Ok(ReferrerCounts {
                    contact_id: row.try_get("contact_id")?,
                    name: row.try_get::<Option<String>, _>("name")?.unwrap_or_default(),
                    nominated: count(row, "nominated")?,
                    converted: count(row, "converted")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// A page of referrals, newest first: those with an id below `before` (the cursor),
    /// optionally in one state, optionally nominated at or after `since`.
    pub async fn referrals_page(
        &self,
        state: Option<ReferralState>,
        since: Option<i64>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ReferralRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM referrals WHERE (CAST($1 AS TEXT) IS NULL OR state = CAST($1 AS TEXT)) \
             AND nominated_at >= $2 AND id < $3 ORDER BY id DESC LIMIT $4",
            super::referrals::REFERRAL_COLUMNS
        );
        Ok(sqlx::query_as::<_, ReferralRow>(&sql)
            .bind(state.map(ReferralState::as_str))
            .bind(since.unwrap_or(i64::MIN))
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Referrals found by code, HubSpot contact id (referrer's or friend's) or phone
    /// (`phone`: the query as an E.164 number, when it is one), newest first.
    pub async fn find_referrals(&self, query: &str, phone: Option<&E164>) -> Result<Vec<ReferralRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM referrals WHERE referral_code = $1 OR referrer_contact_id = $1 OR friend_contact_id = $1 \
             OR referrer_phone = $2 OR friend_phone = $2 ORDER BY id DESC LIMIT 50",
            super::referrals::REFERRAL_COLUMNS
        );
        Ok(sqlx::query_as::<_, ReferralRow>(&sql)
            .bind(query)
            .bind(E164::text_of(phone))
            .fetch_all(&self.pool)
            .await?)
    }

    /// Referrals nominated in `period`, oldest first (the CSV export).
    pub async fn referrals_nominated_in(&self, period: Period) -> Result<Vec<ReferralRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM referrals WHERE nominated_at >= $1 AND nominated_at < $2 ORDER BY id",
            super::referrals::REFERRAL_COLUMNS
        );
        Ok(sqlx::query_as::<_, ReferralRow>(&sql)
            .bind(period.from)
            .bind(period.to)
            .fetch_all(&self.pool)
            .await?)
    }

    /// What is known of one referral, in order: its trigger, its nomination, every change
    /// of its state, every message to the referrer (from that trigger) and to the friend
    /// with its latest status, conversions, rewards, and the outside calls made for it
    /// (HubSpot, Stripe, reward webhooks) with their outcome. Phones are not included.
    pub async fn timeline(&self, referral: &ReferralRow) -> Result<Vec<TimelineEntry>, StoreError> {
        let mut entries = Vec::new();
        // Each entry says what happened at its time; the states the referral went through
        // come from its recorded transitions, and its state now from the referral itself.
        let invite = sqlx::query("SELECT trigger, created_at FROM invites WHERE id = $1")
            .bind(referral.invite_id)
            .fetch_optional(&self.pool)
            .await?;
        if let Some(invite) = invite {
            let trigger: TriggerKind = typed_column::<String, _>(&invite, "trigger")?;
            entries.push(TimelineEntry {
                at: invite.try_get("created_at")?,
                kind: "invite",
                what: format!("trigger {trigger} received; the customer was invited"),
            });
        }
        entries.push(TimelineEntry {
            at: referral.nominated_at,
            kind: "referral",
            what: format!(
                "friend nominated ({}consent)",
                if referral.consent { "" } else { "no " }
            ),
        });
        let messages = sqlx::query(
            "SELECT purpose, status, error_code, error_title, created_at, updated_at, held_reason, held_until FROM messages \
             WHERE referral_id = $1 OR (invite_id = $2 AND referral_id IS NULL) ORDER BY id",
        )
        .bind(referral.id)
        .bind(referral.invite_id)
        .fetch_all(&self.pool)
        .await?;
        for m in &messages {
            let purpose = typed_column::<String, MessagePurpose>(m, "purpose")?.as_str();
            let status = typed_column::<String, MessageStatus>(m, "status")?.as_str();
            let error = match (
                m.try_get::<Option<i64>, _>("error_code")?,
                m.try_get::<Option<String>, _>("error_title")?,
            ) {
                (Some(code), Some(title)) => format!(" (error {code}: {title})"),
                (None, Some(title)) => format!(" ({title})"),
                _ => String::new(),
            };
            entries.push(TimelineEntry {
                at: m.try_get("created_at")?,
                kind: "message",
                what: format!("{purpose} message queued"),
            });
            let held: Option<HoldReason> = typed_column::<StoredName, _>(m, "held_reason")?;
            if let (Some(reason), Some(until)) = (held, m.try_get::<Option<i64>, _>("held_until")?) {
                entries.push(TimelineEntry {
                    at: m.try_get("created_at")?,
                    kind: "message",
                    what: format!(
                        "{purpose} message {} until {}",
                        reason.for_people(),
                        crate::clock::for_people(until)
                    ),
                });
            }
            entries.push(TimelineEntry {
                at: m.try_get("updated_at")?,
                kind: "message",
                what: format!("{purpose} message {status}{error}"),
            });
        }
        let conversions = sqlx::query(
            "SELECT source, outcome, amount, currency, created_at FROM conversions WHERE referral_id = $1 ORDER BY id",
        )
        .bind(referral.id)
        .fetch_all(&self.pool)
        .await?;
        for c in &conversions {
            let source = typed_column::<String, ConversionSource>(c, "source")?.as_str();
            let outcome = typed_column::<String, ConversionOutcome>(c, "outcome")?.as_str();
            let amount = match (
                c.try_get::<Option<i64>, _>("amount")?,
                c.try_get::<Option<String>, _>("currency")?,
            ) {
                (Some(amount), Some(currency)) => format!(", {amount} {currency}"),
                _ => String::new(),
            };
            entries.push(TimelineEntry {
                at: c.try_get("created_at")?,
                kind: "conversion",
                what: format!("conversion from {source}: {outcome}{amount}"),
            });
        }
        let rewards = sqlx::query(
            "SELECT id, beneficiary, kind, state, amount, currency, last_error, created_at, updated_at FROM rewards \
             WHERE referral_id = $1 ORDER BY id",
        )
        .bind(referral.id)
        .fetch_all(&self.pool)
        .await?;
        for w in &rewards {
            let beneficiary = typed_column::<String, Beneficiary>(w, "beneficiary")?.as_str();
            let kind = typed_column::<String, RewardKind>(w, "kind")?.as_str();
            let state = typed_column::<String, RewardState>(w, "state")?.as_str();
            let amount: i64 = w.try_get("amount")?;
            let currency: String = w.try_get("currency")?;
            entries.push(TimelineEntry {
                at: w.try_get("created_at")?,
                kind: "reward",
                what: format!("{beneficiary}'s reward granted: {kind}, {amount} {currency}"),
            });
            let error = w
                .try_get::<Option<String>, _>("last_error")?
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            entries.push(TimelineEntry {
                at: w.try_get("updated_at")?,
                kind: "reward",
                what: format!("{beneficiary}'s reward {state}{error}"),
            });
        }
        let transitions = sqlx::query(
            "SELECT from_state, to_state, reason, at FROM referral_transitions WHERE referral_id = $1 ORDER BY id",
        )
        .bind(referral.id)
        .fetch_all(&self.pool)
        .await?;
        for t in &transitions {
            let to = typed_column::<String, ReferralState>(t, "to_state")?.as_str();
            let reason = t
                .try_get::<Option<String>, _>("reason")?
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            let from: Option<ReferralState> = typed_column::<super::StoredName, _>(t, "from_state")?;
            let what = match from {
                Some(from) => format!("referral moved from {} to {to}{reason}", from.as_str()),
                None => format!("referral recorded as {to}{reason}"),
            };
            entries.push(TimelineEntry {
                at: t.try_get("at")?,
                kind: "transition",
                what,
            });
        }
        // Outside calls made for it (HubSpot, Stripe, reward webhooks), as jobs: what
        // each did, after how many attempts.
        let reward_ids: Vec<i64> = rewards.iter().filter_map(|w| w.try_get("id").ok()).collect();
        let mut keys = vec![
            format!("referral.screen:{}", referral.id),
            format!("hubspot.capped:{}", referral.id),
            format!("hubspot.friend_create:{}", referral.id),
            format!("hubspot.link:{}", referral.id),
        ];
        for reward in &reward_ids {
            keys.extend([
                format!("reward.issue:{reward}"),
                format!("hubspot.reward:{reward}"),
                format!("hubspot.credit:{reward}"),
            ]);
        }
        let friend_sync = format!("hubspot.friend:{}:%", referral.id);
        let referrer_status = format!("hubspot.referrer:{}:%", referral.invite_id);
        let placeholders: Vec<String> = (3..keys.len() + 3).map(|n| format!("${n}")).collect();
        let sql = format!(
            "SELECT kind, state, attempts, last_error, created_at, finished_at FROM jobs \
             WHERE idempotency_key LIKE $1 OR idempotency_key LIKE $2 OR idempotency_key IN ({}) ORDER BY id",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(&friend_sync).bind(&referrer_status);
        for key in &keys {
            query = query.bind(key);
        }
        for job in &query.fetch_all(&self.pool).await? {
            let kind = super::Queue::Jobs.kind_named(&job.try_get::<String, _>("kind")?);
            let state = typed_column::<String, QueueState>(job, "state")?.as_str();
            let attempts: i64 = job.try_get("attempts")?;
            let error = job
                .try_get::<Option<String>, _>("last_error")?
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default();
            let at = job
                .try_get::<Option<i64>, _>("finished_at")?
                .unwrap_or(job.try_get("created_at")?);
            entries.push(TimelineEntry {
                at,
                kind: "outside call",
                what: format!("{kind}: {state} after {attempts} attempt(s){error}"),
            });
        }
        entries.sort_by_key(|e| e.at);
        Ok(entries)
    }
}
