//! The use cases, one module per step of the programme. The worker (`jobs`) and the HTTP
//! API call them alike. Each step reads what it needs, makes its outside calls, then
//! commits its state change with everything the change causes (and the completion of
//! the work item that caused it) in one transaction, through [`transition`] where a
//! referral moves.
//!
//! - [`invite`]: a trigger, eligibility and the invite; the "Refer someone" tap.
//! - [`nomination`]: the Flow reply and the screening of the friend.
//! - [`friend`]: the friend arriving through a share link; the friend's HubSpot contact.
//! - [`delivery`]: sending messages and what Meta's statuses and errors mean.
//! - [`conversion`]: a purchase or signup, matched to a referral.
//! - [`reward`]: fulfilling each side's reward.
//! - [`opt_out`]: marketing opt-outs, wherever they come from.
//! - [`crm`]: HubSpot updates that mirror our records.

pub mod accounts;
pub mod conversion;
pub mod crm;
pub mod delivery;
pub mod experiments;
pub mod flow_endpoint;
pub mod friend;
pub mod inbox;
pub mod invite;
pub mod nomination;
pub mod opt_out;
pub mod reminder;
pub mod reward;
pub mod transition;

mod services;

use std::time::Duration;

use serde_json::Value;

pub use services::Services;

use crate::clock::duration_ms;
use crate::domain::ids::InvalidId;
use crate::domain::messaging::MessagePurpose;
use crate::domain::phone::E164;
use crate::domain::work::Job;
use crate::integrations::hubspot::HubSpotError;
use crate::integrations::stripe::StripeError;
use crate::store::{Committed, Lease, NewJob, NewMessage, StoreError};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// The work item a step runs for: its lease (so the step commits with the item's
/// completion) and how many attempts it has had, this one included.
#[derive(Debug, Clone)]
pub struct Work {
    pub lease: Lease,
    pub attempts: i64,
}

impl Work {
    pub fn job_id(&self) -> i64 {
        self.lease.id
    }
}

/// What a step made of its item.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Nothing to write: the worker completes the item with this note.
    Done(String),
    /// The step committed, and ended its item, in one transaction. Only a commit makes a
    /// [`Committed`] ([`crate::store::Tx::commit`], [`crate::store::Tx::finish`]), so no
    /// step can report a transaction it did not commit.
    Committed(Committed),
}

impl Outcome {
    pub fn done(note: impl Into<String>) -> StepResult {
        Ok(Outcome::Done(note.into()))
    }
}

impl From<Committed> for Outcome {
    fn from(committed: Committed) -> Self {
        Outcome::Committed(committed)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StepError {
    /// Worth another attempt (a timeout, a 5xx, a rate limit, the database), no sooner
    /// than `not_before` when the other side said so (Retry-After, Meta's pair-rate limit).
    #[error("{message}")]
    Retryable {
        message: String,
        not_before: Option<Duration>,
    },
    /// Another attempt would fail the same way; the item is marked dead at once.
    #[error("{0}")]
    Permanent(String),
    /// Not now, and not a failure: run again after `delay` without using an attempt
    /// (a recipient's turn, a shared rate).
    #[error("{reason}")]
    Deferred { reason: String, delay: Duration },
    /// A compare-and-set lost to a concurrent step ([`StoreError::Conflict`]): the step's
    /// transaction is dropped, and the step runs again at once from a fresh read (what it
    /// committed on its own before, such as marking a send begun, is read back then).
    #[error("{0}")]
    Conflict(String),
}

impl StepError {
    pub fn retry(message: impl Into<String>) -> StepError {
        StepError::Retryable {
            message: message.into(),
            not_before: None,
        }
    }

    pub fn retry_after(message: impl Into<String>, delay: Duration) -> StepError {
        StepError::Retryable {
            message: message.into(),
            not_before: Some(delay),
        }
    }
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => StepError::Conflict(what),
            e => StepError::retry(e.to_string()),
        }
    }
}

impl From<InvalidId> for StepError {
    /// An id that cannot reach a URL: a permanent refusal, never a request.
    fn from(e: InvalidId) -> Self {
        StepError::Permanent(e.to_string())
    }
}

impl From<HubSpotError> for StepError {
    fn from(error: HubSpotError) -> Self {
        match error {
            HubSpotError::RateLimited { retry_after, policy } => {
                StepError::retry_after(format!("HubSpot rate limit {policy}"), retry_after)
            }
            HubSpotError::Retryable(message) => StepError::retry(message),
            HubSpotError::Permanent(message) | HubSpotError::NotFound(message) => StepError::Permanent(message),
        }
    }
}

impl From<StripeError> for StepError {
    fn from(error: StripeError) -> Self {
        match error {
            StripeError::Retryable { message, not_before } => StepError::Retryable { message, not_before },
            StripeError::Permanent(message) => StepError::Permanent(message),
        }
    }
}

pub type StepResult = Result<Outcome, StepError>;

impl Services {
    /// A message to queue. Its callback data is its key, so that a status for a send we
    /// failed to record can still be matched to it.
    pub fn message(&self, key: String, purpose: MessagePurpose, to: &E164, marketing: bool, body: Value) -> NewMessage {
        let mut body = body;
        body["biz_opaque_callback_data"] = Value::String(key.clone());
        NewMessage {
            idempotency_key: key,
            purpose,
            to_phone: to.clone(),
            invite_id: None,
            referral_id: None,
            marketing,
            body: body.to_string(),
            run_at: self.now_ms(),
            max_attempts: self.max_attempts(),
            timing: purpose.timing(),
        }
    }

    /// A job due now, with the configured attempts.
    pub fn job(&self, job: Job) -> NewJob {
        self.job_at(job, self.now_ms())
    }

    /// A job due at `run_at` (Unix ms), with the configured attempts.
    pub fn job_at(&self, job: Job, run_at: i64) -> NewJob {
        NewJob::new(&job, self.max_attempts(), run_at)
    }

    /// Attempts for the jobs the steps queue (from the retry schedule).
    pub fn max_attempts(&self) -> i64 {
        self.settings.worker.retry_schedule.len() as i64 + 1
    }

    /// The start of the attribution window: referrals nominated before it no longer convert.
    pub fn attribution_window_start(&self) -> i64 {
        self.now_ms() - duration_ms(self.settings.programme.attribution_window)
    }

    /// Where the referrer's cap period (`programme.reward_cap_period_days`) starts now.
    pub fn cap_period_start(&self) -> i64 {
        self.now_ms() - duration_ms(self.settings.programme.reward_cap_period)
    }
}

/// A referral's texts as stored, for the messages about it.
fn referral_text(r: &crate::store::ReferralRow) -> crate::whatsapp::render::ReferralText<'_> {
    crate::whatsapp::render::ReferralText {
        code: &r.referral_code,
        referrer_name: &r.referrer_name,
        friend_name: &r.friend_name,
        personal_message: r.personal_message.as_deref(),
        language: &r.language,
    }
}
