//! The rules of referloop, free of I/O: what a received webhook is made of and how its
//! events are deduplicated, who is eligible, referral codes and Flow tokens, the
//! referral state machine, what Meta's answers mean, and how failed work is retried.
//! Everything else (HTTP, storage, outside APIs) depends on this module, never the reverse.

pub mod access;
pub mod code;
pub mod country_zones;
pub mod economics;
pub mod eligibility;
pub mod experiment;
pub mod flow_exchange;
pub mod flow_token;
pub mod funnel;
pub mod ids;
pub mod inbox;
pub mod messaging;
pub mod nomination;
pub mod pacing;
pub mod phone;
pub mod referral;
pub mod retry;
pub mod reward;
pub mod send_window;
pub mod state;
pub mod work;
