//! Marketing opt-outs, from a stop keyword, the invite's "Stop" button, WhatsApp's own
//! preference setting or Meta's 131050 error; mirrored to HubSpot when they change.

use super::{Outcome, Services, StepError, StepResult, Work};
use crate::domain::messaging::{MessagePurpose, OptOutSource};
use crate::domain::phone::E164;
use crate::domain::state::Persisted;
use crate::domain::work::Job;
use crate::store::{OptOutChange, Tx};
use crate::telemetry::mask_phone;
use crate::whatsapp::inbound::{Preference, PreferenceUpdate};
use crate::whatsapp::render;

/// Records an opt-out (or its lifting) inside `tx`, queuing the HubSpot mirror when the
/// preference changed.
pub async fn record(
    s: &Services,
    tx: &mut Tx,
    phone: &E164,
    source: OptOutSource,
    opted_out: bool,
) -> Result<OptOutChange, StepError> {
    let change = tx.set_opt_out(phone, opted_out, source).await?;
    if change.changed() {
        tx.enqueue(s.job(Job::SyncOptOut {
            phone: phone.clone(),
            opted_out,
            at: s.now_ms(),
        }));
        tracing::info!(phone = %mask_phone(phone.as_str()), source = source.as_str(), opted_out, "marketing preference recorded");
    }
    Ok(change)
}

/// The person asked us to stop (keyword or button); a keyword is acknowledged in its own
/// language (`acknowledge_in`), once per opt-out.
pub async fn on_stop_request(
    s: &Services,
    work: &Work,
    phone: &E164,
    source: OptOutSource,
    acknowledge_in: Option<&str>,
) -> StepResult {
    let mut tx = s.store.begin(Some(&work.lease)).await?;
    let change = record(s, &mut tx, phone, source, true).await?;
    if let Some(language) = acknowledge_in {
        // The key carries the time the opt-out began: one acknowledgement per opt-out.
        let since = match change {
            OptOutChange::OptedOut(at) | OptOutChange::AlreadyOptedOut(at) => at,
            OptOutChange::Resumed | OptOutChange::Unchanged => s.now_ms(),
        };
        let key = format!("opt_out_ack:{}:{since}", phone.as_str());
        let body = render::opt_out_ack(&s.settings, language, phone.as_str());
        tx.insert_message(&s.message(key, MessagePurpose::Reply, phone, false, body))
            .await?;
    }
    let note = format!("opt-out ({}): {change:?}", source.as_str());
    Ok(tx.commit(note).await?.into())
}

/// A marketing-preference change made in WhatsApp itself.
pub async fn on_preference(s: &Services, work: &Work, update: &PreferenceUpdate) -> StepResult {
    let Some(phone) = &update.phone else {
        return Outcome::done("preference for an invalid number");
    };
    let (opted_out, source) = match &update.preference {
        Preference::Stop => (true, OptOutSource::WhatsAppStop),
        Preference::Resume => (false, OptOutSource::WhatsAppResume),
        Preference::Other(value) => return Outcome::done(format!("preference {value:?} not handled")),
    };
    let mut tx = s.store.begin(Some(&work.lease)).await?;
    let change = record(s, &mut tx, phone, source, opted_out).await?;
    let note = format!("{change:?}");
    Ok(tx.commit(note).await?.into())
}
