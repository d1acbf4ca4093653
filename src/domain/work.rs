//! The jobs referloop queues, as one typed enum. A job is stored as its `kind` and its
//! JSON payload; its idempotency key is derived from what it is for, so that queuing the
//! same work twice yields one job. The worker decodes a stored job with [`Job::decode`]
//! and dispatches it with an exhaustive `match`; a kind this binary does not know is
//! retried on the schedule (a newer replica may take it) and ends dead saying so.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::inbox::InboxKind;
use super::phone::E164;
use super::referral::ReferralState;
use super::state::{persisted, InviteState, Persisted};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload")]
pub enum Job {
    /// Send one row of `messages` through the Graph API.
    #[serde(rename = "whatsapp.send")]
    SendWhatsApp { message_id: i64 },
    /// The checks on a nomination that need HubSpot, then the friend's invitation.
    #[serde(rename = "referral.screen")]
    ScreenReferral { referral_id: i64, business_number: String },
    /// `referral_status` (and on `invited`, `referral_code`) on the referrer's contact.
    #[serde(rename = "hubspot.referrer_status")]
    ReferrerStatus {
        invite_id: i64,
        contact_id: String,
        status: InviteState,
        code: Option<String>,
    },
    /// The referrer's reward was capped: say so on the contact.
    #[serde(rename = "hubspot.referrer_capped")]
    ReferrerCapped { referral_id: i64, contact_id: String },
    /// Find or create the friend's contact, once per referral. `searched_at`: when
    /// screening searched HubSpot by the friend's phone and found no contact (ms since
    /// the epoch); a first attempt soon after trusts that search rather than make another.
    #[serde(rename = "hubspot.create_friend")]
    CreateFriendContact {
        referral_id: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        searched_at: Option<i64>,
    },
    /// The friend's referral properties from the referral's current state.
    #[serde(rename = "hubspot.sync_friend")]
    SyncFriend { referral_id: i64, state: ReferralState },
    /// Mirror an opt-out (or its lifting) onto the number's contacts.
    #[serde(rename = "hubspot.sync_opt_out")]
    SyncOptOut { phone: E164, opted_out: bool, at: i64 },
    /// Fulfil one reward.
    #[serde(rename = "reward.issue")]
    IssueReward { reward_id: i64 },
    /// `rewarded` and the reward given, on the beneficiary's contact.
    #[serde(rename = "hubspot.reward_recorded")]
    RewardRecorded {
        reward_id: i64,
        contact_id: String,
        given: String,
    },
    /// The referrer's reward issued: `rewarded`, the reward given and the counters from
    /// the ledger, in one write to the referrer's contact.
    #[serde(rename = "hubspot.referrer_rewarded")]
    ReferrerRewarded {
        reward_id: i64,
        contact_id: String,
        given: String,
    },
    /// Referrer and friend associated, with a timeline note.
    #[serde(rename = "hubspot.link_referral")]
    LinkReferral { referral_id: i64 },
    /// The referrer's counters from the ledger; `cause` names the change that asked.
    #[serde(rename = "hubspot.referrer_counters")]
    ReferrerCounters { contact_id: String, cause: String },
    /// The promoter's reminder, due `reminders.promoter_after` after the invite; it does
    /// nothing once the invite moved on (a tap, a nomination) or the number opted out.
    #[serde(rename = "reminder.promoter")]
    PromoterReminder { invite_id: i64 },
    /// The referrer's nudge, due `reminders.friend_after` after the nomination; it does
    /// nothing once the referral converted, was refused or expired. The business number
    /// is the one the nomination came to (for the share link).
    #[serde(rename = "reminder.nudge")]
    ReferrerNudge { referral_id: i64, business_number: String },
    /// The friend's reminder, due `reminders.friend_reminder_after` after they wrote; it
    /// does nothing once the referral converted, was refused or expired, or the window
    /// their message opened has closed.
    #[serde(rename = "reminder.friend")]
    FriendReminder { referral_id: i64 },
    /// A contact's credit property from the ledger.
    #[serde(rename = "hubspot.credit_total")]
    CreditTotal {
        reward_id: i64,
        contact_id: String,
        property: String,
    },
}

/// Which [`Job`] a stored job is: its `kind` column, the serde tag of its variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    SendWhatsApp,
    ScreenReferral,
    ReferrerStatus,
    ReferrerCapped,
    CreateFriendContact,
    SyncFriend,
    SyncOptOut,
    IssueReward,
    RewardRecorded,
    ReferrerRewarded,
    LinkReferral,
    ReferrerCounters,
    CreditTotal,
    PromoterReminder,
    ReferrerNudge,
    FriendReminder,
}

persisted!(JobKind {
    SendWhatsApp => "whatsapp.send",
    ScreenReferral => "referral.screen",
    ReferrerStatus => "hubspot.referrer_status",
    ReferrerCapped => "hubspot.referrer_capped",
    CreateFriendContact => "hubspot.create_friend",
    SyncFriend => "hubspot.sync_friend",
    SyncOptOut => "hubspot.sync_opt_out",
    IssueReward => "reward.issue",
    RewardRecorded => "hubspot.reward_recorded",
    ReferrerRewarded => "hubspot.referrer_rewarded",
    LinkReferral => "hubspot.link_referral",
    ReferrerCounters => "hubspot.referrer_counters",
    CreditTotal => "hubspot.credit_total",
    PromoterReminder => "reminder.promoter",
    ReferrerNudge => "reminder.nudge",
    FriendReminder => "reminder.friend",
});

/// What a queue item is, decoded from its stored `kind` with its queue known (the two
/// queues' names overlap: `whatsapp.send` would read as a WhatsApp field): an inbox
/// event's kind, a job's, or a name this binary does not know (a newer binary's), kept
/// so the item stays listed, is left for a newer replica, and ends dead saying so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemKind {
    Event(InboxKind),
    Job(JobKind),
    Unknown(String),
}

impl ItemKind {
    /// An inbox event's stored kind.
    pub fn of_event(name: &str) -> ItemKind {
        InboxKind::parse(name).map_or_else(|| ItemKind::Unknown(name.to_string()), ItemKind::Event)
    }

    /// A job's stored kind.
    pub fn of_job(name: &str) -> ItemKind {
        JobKind::parse(name).map_or_else(|| ItemKind::Unknown(name.to_string()), ItemKind::Job)
    }
}

impl std::fmt::Display for ItemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ItemKind::Event(kind) => f.write_str(&kind.name()),
            ItemKind::Job(kind) => f.write_str(kind.as_str()),
            ItemKind::Unknown(name) => f.write_str(name),
        }
    }
}

impl Serialize for ItemKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode job `{kind}`: {reason}")]
pub struct DecodeError {
    pub kind: String,
    pub reason: String,
}

impl Job {
    /// The key that makes queuing this work idempotent.
    pub fn idempotency_key(&self) -> String {
        match self {
            Job::SendWhatsApp { message_id } => format!("whatsapp.send:{message_id}"),
            Job::ScreenReferral { referral_id, .. } => format!("referral.screen:{referral_id}"),
            Job::ReferrerStatus { invite_id, status, .. } => {
                format!("hubspot.referrer:{invite_id}:{}", status.as_str())
            }
            Job::ReferrerCapped { referral_id, .. } => format!("hubspot.capped:{referral_id}"),
            Job::CreateFriendContact { referral_id, .. } => format!("hubspot.friend_create:{referral_id}"),
            Job::SyncFriend { referral_id, state } => format!("hubspot.friend:{referral_id}:{}", state.as_str()),
            Job::SyncOptOut { phone, opted_out, at } => {
                let value = if *opted_out { "stop" } else { "resume" };
                format!("hubspot.opt_out:{phone}:{value}:{at}")
            }
            Job::IssueReward { reward_id } => format!("reward.issue:{reward_id}"),
            Job::RewardRecorded { reward_id, .. } => format!("hubspot.reward:{reward_id}"),
            Job::ReferrerRewarded { reward_id, .. } => format!("hubspot.referrer_reward:{reward_id}"),
            Job::LinkReferral { referral_id } => format!("hubspot.link:{referral_id}"),
            Job::ReferrerCounters { cause, .. } => format!("hubspot.counters:{cause}"),
            Job::CreditTotal { reward_id, .. } => format!("hubspot.credit:{reward_id}"),
            Job::PromoterReminder { invite_id } => format!("reminder.promoter:{invite_id}"),
            Job::ReferrerNudge { referral_id, .. } => format!("reminder.nudge:{referral_id}"),
            Job::FriendReminder { referral_id } => format!("reminder.friend:{referral_id}"),
        }
    }

    pub fn kind(&self) -> JobKind {
        match self {
            Job::SendWhatsApp { .. } => JobKind::SendWhatsApp,
            Job::ScreenReferral { .. } => JobKind::ScreenReferral,
            Job::ReferrerStatus { .. } => JobKind::ReferrerStatus,
            Job::ReferrerCapped { .. } => JobKind::ReferrerCapped,
            Job::CreateFriendContact { .. } => JobKind::CreateFriendContact,
            Job::SyncFriend { .. } => JobKind::SyncFriend,
            Job::SyncOptOut { .. } => JobKind::SyncOptOut,
            Job::IssueReward { .. } => JobKind::IssueReward,
            Job::RewardRecorded { .. } => JobKind::RewardRecorded,
            Job::ReferrerRewarded { .. } => JobKind::ReferrerRewarded,
            Job::LinkReferral { .. } => JobKind::LinkReferral,
            Job::ReferrerCounters { .. } => JobKind::ReferrerCounters,
            Job::CreditTotal { .. } => JobKind::CreditTotal,
            Job::PromoterReminder { .. } => JobKind::PromoterReminder,
            Job::ReferrerNudge { .. } => JobKind::ReferrerNudge,
            Job::FriendReminder { .. } => JobKind::FriendReminder,
        }
    }

    /// `(kind, payload)` as stored.
    pub fn encode(&self) -> (JobKind, String) {
        let tagged = serde_json::to_value(self).unwrap_or(Value::Null);
        (self.kind(), tagged["payload"].to_string())
    }

    pub fn decode(kind: JobKind, payload: &str) -> Result<Job, DecodeError> {
        let error = |reason: String| DecodeError {
            kind: kind.as_str().to_string(),
            reason,
        };
        let payload: Value = serde_json::from_str(payload).map_err(|e| error(format!("payload is not JSON: {e}")))?;
        serde_json::from_value(json!({"kind": kind.as_str(), "payload": payload})).map_err(|e| error(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<Job> {
        vec![
            Job::SendWhatsApp { message_id: 1 },
            Job::ScreenReferral {
                referral_id: 2,
                business_number: "15550001234".into(),
            },
            Job::ReferrerStatus {
                invite_id: 3,
                contact_id: "90001".into(),
                status: InviteState::Invited,
                code: Some("ANA7KQ2".into()),
            },
            Job::ReferrerCapped {
                referral_id: 4,
                contact_id: "90001".into(),
            },
            Job::CreateFriendContact {
                referral_id: 5,
                searched_at: None,
            },
            Job::CreateFriendContact {
                referral_id: 55,
                searched_at: Some(1_795_510_800_000),
            },
            Job::SyncFriend {
                referral_id: 6,
                state: ReferralState::AwaitingFriend,
            },
            Job::SyncOptOut {
                phone: E164::parse_mobile("+447911123456", "GB").expect("a mobile number"),
                opted_out: true,
                at: 7,
            },
            Job::IssueReward { reward_id: 8 },
            Job::RewardRecorded {
                reward_id: 9,
                contact_id: "90001".into(),
                given: "£10 credit".into(),
            },
            Job::ReferrerRewarded {
                reward_id: 16,
                contact_id: "90001".into(),
                given: "£10 credit".into(),
            },
            Job::LinkReferral { referral_id: 10 },
            Job::ReferrerCounters {
                contact_id: "90001".into(),
                cause: "11:converted".into(),
            },
            Job::CreditTotal {
                reward_id: 12,
                contact_id: "90001".into(),
                property: "referral_credit".into(),
            },
            Job::PromoterReminder { invite_id: 13 },
            Job::ReferrerNudge {
                referral_id: 14,
                business_number: "15550001234".into(),
            },
            Job::FriendReminder { referral_id: 15 },
        ]
    }

    #[test]
    fn every_job_round_trips_through_its_stored_form() {
        let mut keys = std::collections::HashSet::new();
        let mut kinds = std::collections::HashSet::new();
        for job in every_kind() {
            let (kind, payload) = job.encode();
            // The kind's stored name is the variant's serde tag.
            let tagged = serde_json::to_value(&job).expect("a job serialises");
            assert_eq!(tagged["kind"].as_str(), Some(kind.as_str()));
            assert_eq!(Job::decode(kind, &payload), Ok(job.clone()));
            assert!(keys.insert(job.idempotency_key()), "keys differ across kinds");
            kinds.insert(kind);
        }
        assert_eq!(kinds.len(), JobKind::ALL.len(), "every kind is tried");
        // Queued by a binary from before screening's search was passed on.
        assert_eq!(
            Job::decode(JobKind::CreateFriendContact, r#"{"referral_id": 5}"#),
            Ok(Job::CreateFriendContact {
                referral_id: 5,
                searched_at: None
            })
        );
    }

    #[test]
    fn unknown_kinds_and_bad_payloads_are_errors() {
        assert_eq!(
            ItemKind::of_job("hubspot.teleport"),
            ItemKind::Unknown("hubspot.teleport".into())
        );
        assert_eq!(ItemKind::of_job("whatsapp.send"), ItemKind::Job(JobKind::SendWhatsApp));
        assert!(matches!(ItemKind::of_event("whatsapp.send"), ItemKind::Event(_)));
        assert!(Job::decode(JobKind::SendWhatsApp, "{\"message_id\": \"x\"}").is_err());
        assert!(Job::decode(JobKind::SendWhatsApp, "not json").is_err());
    }

    #[test]
    fn sync_friend_keys_name_the_state() {
        let job = Job::SyncFriend {
            referral_id: 6,
            state: ReferralState::FriendInvited,
        };
        assert_eq!(job.idempotency_key(), "hubspot.friend:6:friend_invited");
    }
}

/// Webhook events received but not yet handled, as the inbox counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Events queued, waiting for a retry, or in hand.
    pub events: u64,
    /// How long the oldest of them has waited since it was received.
    pub oldest_age: std::time::Duration,
}

impl Backlog {
    /// More waiting than the operator's bound allows, by count or by age.
    pub fn is_over(&self, events: std::num::NonZeroU64, age: std::time::Duration) -> bool {
        self.events > events.get() || self.oldest_age > age
    }
}
