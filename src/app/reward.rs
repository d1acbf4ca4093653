//! Step 6: both sides' rewards. Converting a referral grants them (inside the converting
//! transaction, where the referrer's cap is decided). A reward that is not held and
//! needs no outside call (a static code, a HubSpot credit) is issued there too;
//! otherwise the `reward.issue` job fulfils it by its kind, once. Either way the issue,
//! the beneficiary's message and the HubSpot updates commit together.

use std::time::Duration;

use serde_json::json;

use super::{Outcome, Services, StepError, StepResult, Work, DAY_MS};
use crate::clock::duration_ms;
use crate::config::{secret_value, RewardSide};
use crate::domain::ids::{StripeId, StripeObject};
use crate::domain::messaging::MessagePurpose;
use crate::domain::phone::E164;
use crate::domain::reward::{self, Beneficiary, RewardKind, RewardState};
use crate::domain::state::Persisted;
use crate::domain::work::Job;
use crate::integrations::{OutboundRequest, OutboundResponse};
use crate::signatures;
use crate::store::{NewConversion, NewJob, NewMessage, NewReward, ReferralRow, RewardRow, Tx};
use crate::whatsapp::render;

impl Services {
    /// How a reward is fulfilled: its side's settings (as its invite's variant has them),
    /// or for a bonus its milestone's.
    async fn reward_side(&self, reward: &RewardRow, invite_id: i64) -> Result<&RewardSide, StepError> {
        let rewards = &self.settings_for_invite(invite_id).await?.rewards;
        match reward.beneficiary {
            Beneficiary::Referrer => Ok(&rewards.referrer),
            Beneficiary::Friend => Ok(&rewards.friend),
            Beneficiary::ReferrerBonus => {
                let conversions = reward.milestone.unwrap_or_default();
                rewards.milestone(conversions).map(|m| &m.reward).ok_or_else(|| {
                    StepError::Permanent(format!(
                        "no milestone at {conversions} conversions is configured any more (rewards.milestones)"
                    ))
                })
            }
        }
    }
}

/// Creates both sides' rewards for a converting referral, inside its transaction. The
/// referrer's cap is counted there, with the referrer locked, so concurrent conversions
/// of the same referrer's friends cannot both pass it.
pub async fn grant(
    s: &Services,
    tx: &mut Tx,
    r: &ReferralRow,
    conversion: Option<&NewConversion>,
) -> Result<Granted, StepError> {
    let programme = &s.settings.programme;
    // The sides as the invite's experiment variant has them.
    let variant = s.settings_for_invite_in(tx, r.invite_id).await?;
    let now = s.now_ms();
    let available_at = now + duration_ms(programme.reward_hold);
    let since = now - duration_ms(programme.reward_cap_period);
    let rewarded = tx.referrer_rewards_since(&r.referrer_contact_id, since).await?;
    let mut granted = Granted::default();
    let sides = [
        (Beneficiary::Referrer, &variant.rewards.referrer),
        (Beneficiary::Friend, &variant.rewards.friend),
    ];
    for (beneficiary, side) in sides {
        if side.kind == RewardKind::None {
            continue;
        }
        let state = reward::initial_state(beneficiary, rewarded, programme.max_rewarded_referrals_per_referrer);
        // Issued now: inserted as being issued, then marked issued below, as the job would.
        let issue_now = state == RewardState::Pending && available_at <= now && side.kind.is_fulfilled_locally();
        let (contact_id, phone, name, customer) = match beneficiary {
            Beneficiary::Referrer => (
                Some(r.referrer_contact_id.clone()),
                r.referrer_phone.clone(),
                r.referrer_name.clone(),
                None,
            ),
            Beneficiary::Friend => (
                r.friend_contact_id.clone(),
                r.friend_phone.clone(),
                r.friend_name.clone(),
                conversion.and_then(|c| c.stripe_customer.clone()),
            ),
            // Granted by `grant_bonus`, never as a side.
            Beneficiary::ReferrerBonus => continue,
        };
        let new = NewReward {
            beneficiary,
            contact_id,
            phone,
            first_name: name,
            language: r.language.clone(),
            kind: side.kind,
            state: if issue_now { RewardState::Issuing } else { state },
            amount: side.amount,
            currency: side.currency.clone(),
            stripe_customer: customer,
            available_at,
            milestone: None,
        };
        let Some(id) = tx.insert_reward(r.id, &new).await? else {
            continue;
        };
        if beneficiary == Beneficiary::Referrer && state == RewardState::Pending {
            grant_bonus(s, tx, r, rewarded + 1, since, available_at).await?;
        }
        match state {
            RewardState::Pending if issue_now => {
                issue_locally(s, tx, id, r, side).await?;
                match beneficiary {
                    Beneficiary::Referrer => granted.referrer_issued_now = true,
                    Beneficiary::Friend => granted.friend_issued_in_commit = true,
                    Beneficiary::ReferrerBonus => {}
                }
            }
            RewardState::Pending => {
                let issue = NewJob::new(&Job::IssueReward { reward_id: id }, s.max_attempts(), available_at);
                tx.enqueue(issue);
                if beneficiary == Beneficiary::Referrer && available_at <= now {
                    granted.referrer_issued_now = true;
                }
            }
            RewardState::Capped => {
                tx.enqueue(s.job(Job::ReferrerCapped {
                    referral_id: r.id,
                    contact_id: r.referrer_contact_id.clone(),
                }));
            }
            RewardState::Issuing | RewardState::Issued | RewardState::Failed | RewardState::Void => {}
        }
    }
    Ok(granted)
}

/// What [`grant`] queued that the conversion's other updates depend on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Granted {
    /// The referrer's reward is issued now (no hold): its HubSpot write carries the
    /// referrer's counters, so the conversion need not write them separately.
    pub referrer_issued_now: bool,
    /// The friend's reward is issued in the converting transaction itself: its HubSpot
    /// record (`hubspot.reward_recorded`, queued there for a known contact) writes
    /// `rewarded`, so a write of `converted` first would only be overwritten.
    pub friend_issued_in_commit: bool,
}

/// The milestone bonus reached with this referral, if `rewarded` (this referral's reward
/// included) is a milestone's number and the referrer has no bonus for it in the period
/// yet: granted in the converting transaction, with the referrer locked, held like the
/// referrer's reward.
async fn grant_bonus(
    s: &Services,
    tx: &mut Tx,
    r: &ReferralRow,
    rewarded: i64,
    since: i64,
    available_at: i64,
) -> Result<(), StepError> {
    let Some(milestone) = s.settings.rewards.milestone(rewarded) else {
        return Ok(());
    };
    if tx.bonus_granted_since(&r.referrer_contact_id, rewarded, since).await? {
        return Ok(());
    }
    let side = &milestone.reward;
    let bonus = NewReward {
        beneficiary: Beneficiary::ReferrerBonus,
        contact_id: Some(r.referrer_contact_id.clone()),
        phone: r.referrer_phone.clone(),
        first_name: r.referrer_name.clone(),
        language: r.language.clone(),
        kind: side.kind,
        state: RewardState::Pending,
        amount: side.amount,
        currency: side.currency.clone(),
        stripe_customer: None,
        available_at,
        milestone: Some(rewarded),
    };
    if let Some(id) = tx.insert_reward(r.id, &bonus).await? {
        tx.enqueue(NewJob::new(
            &Job::IssueReward { reward_id: id },
            s.max_attempts(),
            available_at,
        ));
        tx.tally_bonus(r.id);
        tracing::info!(referral_id = r.id, milestone = rewarded, "milestone bonus granted");
    }
    Ok(())
}

/// The `reward.issue` job.
pub async fn issue(s: &Services, work: &Work, reward_id: i64) -> StepResult {
    let Some(reward) = s.store.reward(reward_id).await? else {
        return Err(StepError::Permanent(format!("reward {reward_id} not found")));
    };
    if !reward.state.can_issue() {
        // A referrer's reward granted for issue at once was to carry the counters of its
        // conversion (`Granted`); voided before it was issued, it writes them alone. (A
        // held reward's conversion wrote them itself; a second write of the ledger's
        // figures changes nothing.)
        if reward.beneficiary == Beneficiary::Referrer && reward.state == RewardState::Void {
            if let Some(contact) = &reward.contact_id {
                return super::crm::referrer_counters(s, work, contact).await;
            }
        }
        return Outcome::done(format!("reward is {:?}", reward.state));
    }
    let wait = reward.available_at - s.now_ms();
    if wait > 0 {
        return Err(StepError::retry_after(
            "reward on hold",
            Duration::from_millis(wait as u64),
        ));
    }
    let beneficiary = reward.beneficiary;
    let Some(referral) = s.store.referral(reward.referral_id).await? else {
        return Err(StepError::Permanent("referral not found".into()));
    };
    // Voided or issued since it was read: a conflict, so the step runs again and reads
    // what happened.
    s.store.claim_reward(reward.id).await?;
    let side = s.reward_side(&reward, referral.invite_id).await?.clone();
    let (code, external_ref) = match fulfil(s, &reward, &referral, beneficiary, &side, work.job_id()).await {
        Ok(done) => done,
        Err(error) => {
            s.store.fail_reward(reward.id, &error.to_string()).await?;
            return Err(error);
        }
    };
    let given = code
        .clone()
        .unwrap_or_else(|| side.description_in(&reward.language).to_string());
    let last_inbound_at = match window_to_check(&reward, &referral) {
        Some(phone) => s.store.last_inbound_at(&phone).await?,
        None => None,
    };
    let message = reward_message(s, &reward, &referral, last_inbound_at, &given);
    let jobs = recording_jobs(s, &reward, &referral, beneficiary, &side, &given);
    let mut tx = s.store.begin(Some(&work.lease)).await?;
    tx.mark_reward_issued(reward.id, code.as_deref(), external_ref.as_deref())
        .await?;
    if let Some(message) = message {
        tx.insert_message(&message).await?;
    }
    for job in jobs {
        tx.enqueue(job);
    }
    let note = format!("reward {} issued: {given}", reward.id);
    Ok(tx.commit(note).await?.into())
}

/// Issues a reward of a kind fulfilled locally (see [`RewardKind::is_fulfilled_locally`])
/// inside the transaction that granted it (`issuing`): no job and no outside call, and
/// the same record, message and HubSpot jobs as [`issue`] commits.
async fn issue_locally(
    s: &Services,
    tx: &mut Tx,
    reward_id: i64,
    referral: &ReferralRow,
    side: &RewardSide,
) -> Result<(), StepError> {
    let code = match side.kind {
        RewardKind::StaticCode => Some(side.static_code.clone()),
        _ => None,
    };
    let reward = tx.mark_reward_issued(reward_id, code.as_deref(), None).await?;
    let given = code.unwrap_or_else(|| side.description_in(&reward.language).to_string());
    // Read in the transaction: it holds a connection, and another could be long coming.
    let last_inbound_at = match window_to_check(&reward, referral) {
        Some(phone) => tx.last_inbound_at(&phone).await?,
        None => None,
    };
    if let Some(message) = reward_message(s, &reward, referral, last_inbound_at, &given) {
        tx.insert_message(&message).await?;
    }
    for job in recording_jobs(s, &reward, referral, reward.beneficiary, side, &given) {
        tx.enqueue(job);
    }
    Ok(())
}

/// The number whose last message decides whether the beneficiary may be messaged: a
/// friend who gave no consent, only inside a window they opened.
fn window_to_check(reward: &RewardRow, referral: &ReferralRow) -> Option<E164> {
    match reward.beneficiary {
        Beneficiary::Friend if !referral.consent => reward.phone.clone(),
        Beneficiary::Friend | Beneficiary::Referrer | Beneficiary::ReferrerBonus => None,
    }
}

/// The reward message, when the beneficiary may be messaged: a friend who gave no consent
/// only inside a window they opened (`last_inbound_at`, read for [`window_to_check`]'s
/// number). (An opted-out number is suppressed at send time; the reward is still issued
/// and recorded in HubSpot.)
fn reward_message(
    s: &Services,
    reward: &RewardRow,
    referral: &ReferralRow,
    last_inbound_at: Option<i64>,
    given: &str,
) -> Option<NewMessage> {
    let phone = reward.phone.clone()?;
    let may_message = match window_to_check(reward, referral) {
        None => true,
        Some(_) => last_inbound_at.is_some_and(|at| s.now_ms() - at < DAY_MS),
    };
    if !may_message {
        return None;
    }
    let body = match reward.milestone {
        Some(conversions) => render::bonus(
            &s.settings,
            phone.as_str(),
            &reward.language,
            &reward.first_name,
            conversions,
            given,
        ),
        None => render::reward(&s.settings, phone.as_str(), &reward.language, &reward.first_name, given),
    };
    let key = format!("reward:{}:message", reward.id);
    Some(NewMessage {
        referral_id: Some(reward.referral_id),
        ..s.message(key, MessagePurpose::Reward, &phone, true, body)
    })
}

/// HubSpot updates that record an issued reward.
fn recording_jobs(
    s: &Services,
    reward: &RewardRow,
    referral: &ReferralRow,
    beneficiary: Beneficiary,
    side: &RewardSide,
    given: &str,
) -> Vec<NewJob> {
    let contact = reward.contact_id.clone().or_else(|| match beneficiary {
        Beneficiary::Friend => referral.friend_contact_id.clone(),
        Beneficiary::Referrer | Beneficiary::ReferrerBonus => Some(referral.referrer_contact_id.clone()),
    });
    let mut jobs = Vec::new();
    if let Some(contact) = contact {
        // The referrer's reward and counters go in one write. A bonus is recorded in the
        // referrer's counters (`referral_bonus_total`), not as the referral's reward.
        match beneficiary {
            Beneficiary::Referrer => jobs.push(s.job(Job::ReferrerRewarded {
                reward_id: reward.id,
                contact_id: contact.clone(),
                given: given.to_string(),
            })),
            Beneficiary::Friend => jobs.push(s.job(Job::RewardRecorded {
                reward_id: reward.id,
                contact_id: contact.clone(),
                given: given.to_string(),
            })),
            Beneficiary::ReferrerBonus => {}
        }
        if side.kind == RewardKind::HubspotCredit {
            jobs.push(s.job(Job::CreditTotal {
                reward_id: reward.id,
                contact_id: contact,
                property: side.hubspot_property.clone(),
            }));
        }
    }
    // The referrer's reward wrote the counters with it.
    if beneficiary == Beneficiary::ReferrerBonus {
        jobs.push(s.job(Job::ReferrerCounters {
            contact_id: referral.referrer_contact_id.clone(),
            cause: format!("reward:{}", reward.id),
        }));
    }
    jobs
}

/// Fulfils a reward: `(code, external reference)`. Outside calls carry an idempotency
/// key derived from the reward, so a retried fulfilment gives the same result.
async fn fulfil(
    s: &Services,
    reward: &RewardRow,
    referral: &ReferralRow,
    beneficiary: Beneficiary,
    side: &RewardSide,
    job_id: i64,
) -> Result<(Option<String>, Option<String>), StepError> {
    let idempotency_key = format!("referloop-reward-{}", reward.id);
    match side.kind {
        RewardKind::None | RewardKind::HubspotCredit => Ok((None, None)),
        RewardKind::StaticCode => Ok((Some(side.static_code.clone()), None)),
        RewardKind::CodePool => {
            let code = s.store.assign_pool_code(reward.id).await?;
            let free = s.store.free_pool_codes().await?;
            if free < s.settings.rewards.pool_low_watermark {
                tracing::warn!(
                    free,
                    "reward code pool is running low: load more with `referloop rewards load-codes`"
                );
            }
            match code {
                Some(code) => Ok((Some(code), None)),
                None => {
                    s.metrics.reward_pool_exhausted();
                    Err(StepError::Permanent(
                        "reward code pool is exhausted: load codes with `referloop rewards load-codes FILE.csv`, then `referloop jobs retry`".into(),
                    ))
                }
            }
        }
        RewardKind::StripePromotionCode => {
            let code = reward::promotion_code(&referral.referral_code, referral.id, beneficiary);
            let metadata = [
                ("referral_id", referral.id.to_string()),
                ("beneficiary", beneficiary.as_str().to_string()),
            ];
            let created = s
                .stripe
                .create_promotion_code(
                    &side.stripe_coupon,
                    &code,
                    reward.stripe_customer.as_deref(),
                    &metadata,
                    &idempotency_key,
                    Some(job_id),
                )
                .await?;
            let field = |name: &str| created.get(name).and_then(|v| v.as_str()).map(str::to_string);
            Ok((Some(field("code").unwrap_or(code)), field("id")))
        }
        RewardKind::StripeBalanceCredit => {
            let Some(customer) = reward.stripe_customer.as_deref() else {
                return Err(StepError::Permanent(format!(
                    "no Stripe customer known for the {}: a balance credit needs one (a Stripe conversion carries it)",
                    beneficiary.as_str()
                )));
            };
            let customer = StripeId::parse(customer, StripeObject::Customer)?;
            let txn = s
                .stripe
                .credit_balance(
                    &customer,
                    side.amount,
                    &side.currency,
                    &side.description,
                    &idempotency_key,
                    Some(job_id),
                )
                .await?;
            Ok((None, txn.get("id").and_then(|v| v.as_str()).map(str::to_string)))
        }
        RewardKind::Webhook => {
            fulfil_by_webhook(s, reward, referral, beneficiary, side, &idempotency_key, job_id).await
        }
    }
}

/// The business's own fulfilment endpoint, signed as a Standard Webhook.
async fn fulfil_by_webhook(
    s: &Services,
    reward: &RewardRow,
    referral: &ReferralRow,
    beneficiary: Beneficiary,
    side: &RewardSide,
    idempotency_key: &str,
    job_id: i64,
) -> Result<(Option<String>, Option<String>), StepError> {
    // Loading refuses a webhook reward without its URL; a side changed since is said.
    let Some(url) = side.webhook_url.as_ref() else {
        return Err(StepError::Permanent("rewards webhook_url is not set".into()));
    };
    let secret = secret_value(&side.webhook_secret).unwrap_or_default();
    let body = json!({
        "type": "referral.reward",
        "data": {"reward_id": reward.id, "referral_id": referral.id, "beneficiary": beneficiary.as_str(),
                 "hubspot_contact_id": reward.contact_id, "phone": E164::text_of(reward.phone.as_ref()), "amount": reward.amount,
                 "currency": reward.currency, "referral_code": referral.referral_code}
    })
    .to_string();
    // The business checks the signature's age against its own (real) clock.
    let timestamp = crate::clock::system_ms() / 1000;
    let signature = signatures::sign_standard_webhook(secret, idempotency_key, timestamp, body.as_bytes())
        .map_err(|e| StepError::Permanent(format!("rewards webhook_secret: {e}")))?;
    let request = OutboundRequest {
        method: reqwest::Method::POST,
        url: url.as_str().to_string(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("webhook-id".into(), idempotency_key.to_string()),
            ("webhook-timestamp".into(), timestamp.to_string()),
            ("webhook-signature".into(), signature),
        ],
        body,
        job_id: Some(job_id),
    };
    match s.outbound.send(request).await {
        Ok(OutboundResponse::Recorded { .. }) => Ok((None, Some(idempotency_key.to_string()))),
        Ok(OutboundResponse::Sent { status, .. }) if (200..300).contains(&status) => {
            Ok((None, Some(idempotency_key.to_string())))
        }
        Ok(OutboundResponse::Sent { status, .. }) => {
            Err(StepError::retry(format!("fulfilment webhook answered {status}")))
        }
        Err(e) => Err(StepError::retry(format!("fulfilment webhook: {e}"))),
    }
}

/// Voids a referral's rewards that are not issued yet (the API's void, an operator).
/// As [`void`], for a person: the void and the record of who asked commit together.
pub async fn void_by(s: &Services, referral_id: i64, actor: &str) -> Result<u64, StepError> {
    let mut tx = s.store.begin(None).await?;
    let voided = tx.void_rewards(referral_id, s.cap_period_start()).await?;
    tx.record_admin_action(actor, "void", &format!("referral:{referral_id}"))
        .await?;
    tx.commit("").await?;
    Ok(voided)
}
