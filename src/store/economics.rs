//! What the programme costs and earns: each delivered message's charge (once), and the
//! economics tally's reads. Rewards and conversions note their value in the transactions
//! that issue and convert them (`rewards.rs`, the conversion step).

use std::collections::BTreeMap;

use sqlx::Row;

use super::tx::{Cohort, EconomicsEntry, Tx};
use super::{Store, StoreError};
use crate::domain::economics::{Currency, Measure, MessageCharge, TallyLine};
use crate::domain::funnel::{Period, Step};
use crate::domain::state::Persisted;

/// A delivered message's charge, to be recorded once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredCharge {
    pub message_id: i64,
    pub cohort: Cohort,
    /// The recipient's country, `unknown` when their number names none.
    pub market: String,
    pub charge: MessageCharge,
}

impl DeliveredCharge {
    /// The tally's entry for it, in the rate card's `currency`.
    fn entry(&self, currency: &Currency) -> EconomicsEntry {
        match &self.charge {
            MessageCharge::Priced { category, micros } => EconomicsEntry {
                measure: Measure::MessageCost,
                detail: category.as_str().to_string(),
                currency: currency.as_str().to_string(),
                micros: *micros,
            },
            MessageCharge::Free { category } => EconomicsEntry {
                measure: Measure::MessageFree,
                detail: category.clone(),
                currency: String::new(),
                micros: 0,
            },
            MessageCharge::Unpriced { market, category } => EconomicsEntry {
                measure: Measure::MessageUnpriced,
                detail: format!("{market}:{category}"),
                currency: String::new(),
                micros: 0,
            },
        }
    }
}

impl Tx {
    /// Records the charges of delivered messages, each once whatever redelivery or retry
    /// brings it again (the charges' primary key), and tallies those recorded now.
    pub async fn record_charges(&mut self, charges: &[DeliveredCharge], currency: &Currency) -> Result<(), StoreError> {
        if charges.is_empty() {
            return Ok(());
        }
        let rows = (0..charges.len())
            .map(|n| {
                let p = 2 + 6 * n;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, $1)",
                    p,
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO message_charges (message_id, measure, category, market, currency, micros, charged_at) \
             VALUES {rows} ON CONFLICT (message_id) DO NOTHING RETURNING message_id"
        );
        let mut insert = sqlx::query_scalar::<_, i64>(&sql).bind(self.now_ms());
        for c in charges {
            let entry = c.entry(currency);
            let category = match &c.charge {
                MessageCharge::Priced { category, .. } => category.as_str().to_string(),
                MessageCharge::Free { category } | MessageCharge::Unpriced { category, .. } => category.clone(),
            };
            insert = insert
                .bind(c.message_id)
                .bind(entry.measure.as_str())
                .bind(category)
                .bind(c.market.clone())
                .bind(entry.currency)
                .bind(entry.micros);
        }
        let recorded = insert.fetch_all(self.write()?).await?;
        for c in charges.iter().filter(|c| recorded.contains(&c.message_id)) {
            self.tally_economics(c.cohort, c.entry(currency));
        }
        Ok(())
    }
}

impl Store {
    /// The economics tally of the triggers received in the days of `period` (optionally
    /// of one trigger kind, as the funnel's filter), summed by trigger kind, measure,
    /// detail and currency; and each trigger kind's conversions from the funnel's tally.
    pub async fn economics_lines(
        &self,
        period: Period,
        trigger: Option<&str>,
    ) -> Result<(Vec<TallyLine>, BTreeMap<String, i64>), StoreError> {
        let (first, end) = super::reporting::tally_days(period);
        let filter =
            "(CAST($3 AS TEXT) IS NULL OR trigger = CAST($3 AS TEXT) OR trigger LIKE CAST($3 AS TEXT) || ':%')";
        let rows = sqlx::query(&format!(
            "SELECT trigger, measure, detail, currency, CAST(SUM(n) AS BIGINT) AS n, CAST(SUM(micros) AS BIGINT) AS micros \
             FROM economics_tally WHERE day >= $1 AND day < $2 AND {filter} \
             GROUP BY trigger, measure, detail, currency ORDER BY trigger, measure, detail, currency"
        ))
        .bind(first)
        .bind(end)
        .bind(trigger)
        .fetch_all(&self.pool)
        .await?;
        let mut lines = Vec::with_capacity(rows.len());
        for row in &rows {
            let measure: String = row.try_get("measure")?;
            // A measure this version does not know (written by a newer one) is left out.
            let Some(measure) = Measure::parse(&measure) else {
                continue;
            };
            lines.push(TallyLine {
                trigger: row.try_get("trigger")?,
                measure,
                detail: row.try_get("detail")?,
                currency: row.try_get("currency")?,
                n: row.try_get::<Option<i64>, _>("n")?.unwrap_or(0),
                micros: row.try_get::<Option<i64>, _>("micros")?.unwrap_or(0),
            });
        }
        let conversions = sqlx::query(&format!(
            "SELECT trigger, CAST(SUM(n) AS BIGINT) AS n FROM funnel_tally WHERE day >= $1 AND day < $2 \
             AND {filter} AND step = $4 GROUP BY trigger"
        ))
        .bind(first)
        .bind(end)
        .bind(trigger)
        .bind(Step::Converted.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut by_trigger = BTreeMap::new();
        for row in &conversions {
            by_trigger.insert(
                row.try_get::<String, _>("trigger")?,
                row.try_get::<Option<i64>, _>("n")?.unwrap_or(0),
            );
        }
        Ok((lines, by_trigger))
    }

    /// An experiment's tally by variant: its funnel steps (measure `step`) and its
    /// economics, as lines whose `trigger` is the variant.
    pub async fn experiment_lines(&self, experiment: &str) -> Result<Vec<VariantLine>, StoreError> {
        let rows = sqlx::query(
            "SELECT variant, measure, detail, currency, CAST(SUM(n) AS BIGINT) AS n, CAST(SUM(micros) AS BIGINT) AS micros \
             FROM experiment_tally WHERE experiment = $1 \
             GROUP BY variant, measure, detail, currency ORDER BY variant, measure, detail, currency",
        )
        .bind(experiment)
        .fetch_all(&self.pool)
        .await?;
        let mut lines = Vec::with_capacity(rows.len());
        for row in &rows {
            lines.push(VariantLine {
                variant: row.try_get("variant")?,
                measure: row.try_get("measure")?,
                detail: row.try_get("detail")?,
                currency: row.try_get("currency")?,
                n: row.try_get::<Option<i64>, _>("n")?.unwrap_or(0),
                micros: row.try_get::<Option<i64>, _>("micros")?.unwrap_or(0),
            });
        }
        Ok(lines)
    }

    /// The experiment and variant of the invite behind a referral, when it has one.
    pub async fn referral_variant(&self, referral_id: i64) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT i.experiment AS experiment, i.variant AS variant FROM referrals r \
             JOIN invites i ON i.id = r.invite_id WHERE r.id = $1",
        )
        .bind(referral_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(row) => match (
                row.try_get::<Option<String>, _>("experiment")?,
                row.try_get::<Option<String>, _>("variant")?,
            ) {
                (Some(e), Some(v)) => Some((e, v)),
                _ => None,
            },
            None => None,
        })
    }
}

/// One row of an experiment's tally, summed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantLine {
    pub variant: String,
    /// `step` (a funnel step, named by `detail`) or an economics measure.
    pub measure: String,
    pub detail: String,
    pub currency: String,
    pub n: i64,
    pub micros: i64,
}
