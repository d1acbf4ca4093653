//! The programme's funnel: from the triggers of a period to rewarded referrals, each
//! step with its count and its rate from the step before. The cohort is the triggers
//! received in the period; every later step counts what became of them.

use serde::Serialize;

use super::referral::ReferralState;
use super::state::{persisted, InviteState};

/// Counts for one cohort of triggers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FunnelCounts {
    /// HubSpot workflow calls received (one per trigger key).
    pub triggers: i64,
    /// Triggers that passed the eligibility rules.
    pub eligible: i64,
    /// Eligible customers sent the invite template.
    pub invited: i64,
    /// Customers sent the referral Flow.
    pub flow_sent: i64,
    /// Friends nominated (one customer may nominate several).
    pub nominated: i64,
    /// Nominated friends reached: invited directly, or arrived through the share link.
    pub friend_reached: i64,
    /// Referrals converted (the friend bought).
    pub converted: i64,
    /// Converted referrals with at least one reward issued.
    pub rewarded: i64,
    /// Sends that waited for the recipient's daytime (each counted once).
    pub held_quiet_hours: i64,
    /// Sends that waited for the weekly frequency cap (each counted once).
    pub held_frequency_cap: i64,
    /// Promoters' reminders queued (at most one per invite).
    pub reminded: i64,
    /// Nominations from invites that had been reminded, made after the reminder.
    pub nominated_after_reminder: i64,
    /// Conversions of those nominations.
    pub converted_after_reminder: i64,
    /// Referrers nudged about a friend who had not converted (at most one per referral).
    pub nudged: i64,
    /// Nudged referrals that converted after the nudge.
    pub converted_after_nudge: i64,
    /// Friends reminded inside the window they opened (at most one per referral).
    pub friend_reminded: i64,
    /// Milestone bonuses granted (a later void may cancel one; the rewards list shows it).
    pub bonuses_granted: i64,
}

/// A step of the funnel, as tallied when something first reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Triggers,
    Eligible,
    Invited,
    FlowSent,
    Nominated,
    FriendReached,
    Converted,
    Rewarded,
    /// Not a step of the chain: a send of the cohort held for quiet hours.
    HeldQuietHours,
    /// Not a step of the chain: a send of the cohort held by the frequency cap.
    HeldFrequencyCap,
    /// Not a step of the chain: a promoter reminded.
    Reminded,
    /// Not a step of the chain: a nomination after a reminder.
    NominatedAfterReminder,
    /// Not a step of the chain: a conversion of a nomination after a reminder.
    ConvertedAfterReminder,
    /// Not a step of the chain: a referrer nudged.
    Nudged,
    /// Not a step of the chain: a nudged referral converted.
    ConvertedAfterNudge,
    /// Not a step of the chain: a friend reminded.
    FriendReminded,
    /// Not a step of the chain: a milestone bonus granted.
    BonusGranted,
}

persisted!(Step {
    Triggers => "triggers",
    Eligible => "eligible",
    Invited => "invited",
    FlowSent => "flow_sent",
    Nominated => "nominated",
    FriendReached => "friend_reached",
    Converted => "converted",
    Rewarded => "rewarded",
    HeldQuietHours => "held_quiet_hours",
    HeldFrequencyCap => "held_frequency_cap",
    Reminded => "reminded",
    NominatedAfterReminder => "nominated_after_reminder",
    ConvertedAfterReminder => "converted_after_reminder",
    Nudged => "nudged",
    ConvertedAfterNudge => "converted_after_nudge",
    FriendReminded => "friend_reminded",
    BonusGranted => "bonus_granted",
});

impl FunnelCounts {
    /// Adds `n` to `step`.
    pub fn add(&mut self, step: Step, n: i64) {
        let count = match step {
            Step::Triggers => &mut self.triggers,
            Step::Eligible => &mut self.eligible,
            Step::Invited => &mut self.invited,
            Step::FlowSent => &mut self.flow_sent,
            Step::Nominated => &mut self.nominated,
            Step::FriendReached => &mut self.friend_reached,
            Step::Converted => &mut self.converted,
            Step::Rewarded => &mut self.rewarded,
            Step::HeldQuietHours => &mut self.held_quiet_hours,
            Step::HeldFrequencyCap => &mut self.held_frequency_cap,
            Step::Reminded => &mut self.reminded,
            Step::NominatedAfterReminder => &mut self.nominated_after_reminder,
            Step::ConvertedAfterReminder => &mut self.converted_after_reminder,
            Step::Nudged => &mut self.nudged,
            Step::ConvertedAfterNudge => &mut self.converted_after_nudge,
            Step::FriendReminded => &mut self.friend_reminded,
            Step::BonusGranted => &mut self.bonuses_granted,
        };
        *count += n;
    }
}

/// The steps an invite reaches by being recorded in `state` (for an invite inserted
/// past its first state) or by moving there from `from`.
pub fn invite_steps(from: Option<InviteState>, to: InviteState) -> Vec<Step> {
    let rank = |s: InviteState| match s {
        InviteState::Ineligible => 0,
        InviteState::Invited => 1,
        InviteState::FlowSent => 2,
        InviteState::Nominated => 3,
    };
    let mut steps = Vec::new();
    if from.is_none() {
        steps.push(Step::Triggers);
        if to != InviteState::Ineligible {
            steps.push(Step::Eligible);
        }
    }
    let before = from.map_or(0, rank);
    if before < 1 && rank(to) >= 1 {
        steps.push(Step::Invited);
    }
    if before < 2 && rank(to) >= 2 {
        steps.push(Step::FlowSent);
    }
    steps
}

/// The steps a referral reaches by moving from `from` (`None`: being recorded) to `to`.
pub fn referral_steps(from: Option<ReferralState>, to: ReferralState) -> Vec<Step> {
    let reached = |s: ReferralState| matches!(s, ReferralState::FriendInvited | ReferralState::Converted);
    let mut steps = Vec::new();
    if from.is_none() {
        steps.push(Step::Nominated);
    }
    if reached(to) && !from.is_some_and(reached) {
        steps.push(Step::FriendReached);
    }
    if to == ReferralState::Converted && from != Some(ReferralState::Converted) {
        steps.push(Step::Converted);
    }
    steps
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunnelStep {
    pub step: &'static str,
    pub count: i64,
    /// This step's count over the previous step's, when that is not zero.
    pub rate: Option<f64>,
}

impl FunnelCounts {
    /// The steps in order, each with its rate from the one before.
    pub fn steps(&self) -> Vec<FunnelStep> {
        let counts = [
            ("triggers", self.triggers),
            ("eligible", self.eligible),
            ("invited", self.invited),
            ("flow_sent", self.flow_sent),
            ("nominated", self.nominated),
            ("friend_reached", self.friend_reached),
            ("converted", self.converted),
            ("rewarded", self.rewarded),
        ];
        let mut previous: Option<i64> = None;
        counts
            .into_iter()
            .map(|(step, count)| {
                let rate = previous.filter(|p| *p > 0).map(|p| count as f64 / p as f64);
                previous = Some(count);
                FunnelStep { step, count, rate }
            })
            .collect()
    }
}

/// A period of whole days ending now, as the funnel is asked for it (7, 30, 90 days or
/// custom), in Unix milliseconds: `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Period {
    pub from: i64,
    pub to: i64,
}

pub const DAY_MS: i64 = 86_400_000;
/// The longest period the funnel answers for.
pub const MAX_DAYS: i64 = 366;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error("days must be between 1 and {MAX_DAYS}")]
    Days,
    #[error("from must be before to, and at most {MAX_DAYS} days apart")]
    Range,
}

impl Period {
    /// The last `days` days up to `now`.
    pub fn last_days(days: i64, now: i64) -> Result<Period, PeriodError> {
        if !(1..=MAX_DAYS).contains(&days) {
            return Err(PeriodError::Days);
        }
        Ok(Period {
            from: now - days * DAY_MS,
            to: now,
        })
    }

    /// A custom period, in Unix milliseconds.
    pub fn between(from: i64, to: i64) -> Result<Period, PeriodError> {
        if from >= to || to - from > MAX_DAYS * DAY_MS {
            return Err(PeriodError::Range);
        }
        Ok(Period { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::state::Persisted;

    #[test]
    fn each_step_has_its_rate_from_the_previous_one() {
        let counts = FunnelCounts {
            triggers: 100,
            eligible: 80,
            invited: 80,
            flow_sent: 40,
            nominated: 10,
            friend_reached: 8,
            converted: 2,
            rewarded: 0,
            ..FunnelCounts::default()
        };
        let steps = counts.steps();
        assert_eq!(steps.len(), 8);
        assert_eq!((steps[0].step, steps[0].count, steps[0].rate), ("triggers", 100, None));
        assert_eq!(steps[1].rate, Some(0.8));
        assert_eq!(steps[4].rate, Some(0.25));
        assert_eq!(steps[7].rate, Some(0.0));
    }

    #[test]
    fn each_step_is_tallied_once_on_the_way_forward() {
        use InviteState as I;
        assert_eq!(invite_steps(None, I::Ineligible), vec![Step::Triggers]);
        assert_eq!(
            invite_steps(None, I::Nominated),
            vec![Step::Triggers, Step::Eligible, Step::Invited, Step::FlowSent]
        );
        assert_eq!(invite_steps(Some(I::Invited), I::FlowSent), vec![Step::FlowSent]);
        assert_eq!(invite_steps(Some(I::Invited), I::Nominated), vec![Step::FlowSent]);
        assert!(invite_steps(Some(I::FlowSent), I::Nominated).is_empty());
        use ReferralState as R;
        assert_eq!(referral_steps(None, R::Nominated), vec![Step::Nominated]);
        assert_eq!(
            referral_steps(Some(R::Nominated), R::FriendInvited),
            vec![Step::FriendReached]
        );
        assert_eq!(
            referral_steps(Some(R::FriendInvited), R::Converted),
            vec![Step::Converted]
        );
        assert_eq!(
            referral_steps(Some(R::AwaitingFriend), R::Converted),
            vec![Step::FriendReached, Step::Converted]
        );
        assert!(referral_steps(Some(R::FriendInvited), R::Expired).is_empty());
        for &step in Step::ALL {
            assert_eq!(Step::parse(step.as_str()), Some(step));
        }
    }

    #[test]
    fn a_step_after_zero_has_no_rate() {
        let steps = FunnelCounts::default().steps();
        assert!(steps.iter().all(|s| s.count == 0 && s.rate.is_none()));
    }

    #[test]
    fn periods_are_bounded() {
        assert_eq!(
            Period::last_days(7, 10 * DAY_MS),
            Ok(Period {
                from: 3 * DAY_MS,
                to: 10 * DAY_MS
            })
        );
        assert_eq!(Period::last_days(0, 0), Err(PeriodError::Days));
        assert_eq!(Period::last_days(MAX_DAYS + 1, 0), Err(PeriodError::Days));
        assert!(Period::between(5, 5).is_err());
        assert!(Period::between(0, (MAX_DAYS + 1) * DAY_MS).is_err());
        assert!(Period::between(0, DAY_MS).is_ok());
    }
}
