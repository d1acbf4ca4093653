//! `referloop setup stripe`: the webhook endpoint for `<public_base_url>/webhooks/stripe`
//! with the events referloop consumes (its signing secret printed once, to be stored as
//! `stripe.webhook_secret`), and a check of the coupons the rewards name.

use serde_json::Value;

use super::{Finding, Report};
use crate::config::Settings;
use crate::domain::ids::path_segment;
use crate::domain::reward::RewardKind;
use crate::integrations::stripe::{StripeClient, StripeError};

/// The events the Stripe webhook route acts on (see `app::conversion`).
pub const EVENTS: [&str; 4] = [
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "invoice.paid",
    "charge.refunded",
];

/// The report, and the new endpoint's signing secret when one was created.
pub struct StripeSetup {
    pub report: Report,
    pub new_secret: Option<String>,
}

pub async fn setup(client: &StripeClient, settings: &Settings, dry_run: bool) -> Result<StripeSetup, StripeError> {
    let url = settings.server.public_base_url.join("/webhooks/stripe");
    let mut report = Report::default();
    let mut new_secret = None;
    let existing = if client.is_sandbox() {
        None
    } else {
        client
            .webhook_endpoints()
            .await?
            .into_iter()
            .find(|e| e.get("url").and_then(Value::as_str) == Some(url.as_str()))
    };
    let what = format!("webhook endpoint {url}");
    match existing {
        Some(endpoint) => {
            let enabled: Vec<&str> = endpoint
                .get("enabled_events")
                .and_then(Value::as_array)
                .map(|events| events.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let covered = enabled.contains(&"*") || EVENTS.iter().all(|e| enabled.contains(e));
            let id = endpoint
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            match (covered, dry_run) {
                (true, _) => report.findings.push(Finding::Present(what)),
                (false, true) => report.findings.push(Finding::WouldCreate {
                    what: format!("{what}: events {}", EVENTS.join(", ")),
                    call: format!("POST /v1/webhook_endpoints/{id} enabled_events[]=…"),
                }),
                (false, false) => {
                    client.update_webhook_endpoint(&id, &EVENTS).await?;
                    report.findings.push(Finding::Created(format!("{what}: events set")));
                }
            }
        }
        None if dry_run => report.findings.push(Finding::WouldCreate {
            what,
            call: format!(
                "POST /v1/webhook_endpoints url={url} enabled_events[]={}",
                EVENTS.join(",")
            ),
        }),
        None => {
            let created = client.create_webhook_endpoint(&url, &EVENTS).await?;
            new_secret = created.get("secret").and_then(Value::as_str).map(str::to_string);
            report.findings.push(Finding::Created(what));
        }
    }
    for side in [&settings.rewards.referrer, &settings.rewards.friend] {
        if side.kind != RewardKind::StripePromotionCode || client.is_sandbox() {
            continue;
        }
        let coupon = &side.stripe_coupon;
        let found = client.probe(&format!("/v1/coupons/{}", path_segment(coupon))).await;
        let what = format!("coupon {coupon}");
        report.findings.push(match found {
            Ok(Some((200, body))) if body.get("valid") != Some(&Value::Bool(false)) => Finding::Present(what),
            Ok(Some((200, _))) => Finding::Wrong {
                what: format!("{what} is no longer valid"),
                fix: "create a new coupon and name it in rewards.*.stripe_coupon".into(),
            },
            Ok(Some((status, _))) => Finding::Wrong {
                what: format!("{what} answered {status}"),
                fix: "create the coupon in Stripe (Products → Coupons) or fix rewards.*.stripe_coupon".into(),
            },
            Ok(None) => Finding::Present(format!("{what} (sandbox: not checked)")),
            Err(e) => Finding::Wrong {
                what: format!("{what} could not be read"),
                fix: e,
            },
        });
    }
    Ok(StripeSetup { report, new_secret })
}
