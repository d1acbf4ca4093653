//! `referloop setup hubspot`: the property group and every contact property referloop
//! writes (names from `[hubspot_properties]` and `[rewards.*]`), with the types it
//! writes; and, with `hubspot.record_referral_links`, the association labels.

use serde_json::{json, Value};

use super::{Finding, Report};
use crate::config::Settings;
use crate::domain::reward::RewardKind;
use crate::integrations::hubspot::{HubSpotClient, HubSpotError};

const GROUP: &str = "referloop";
const GROUP_LABEL: &str = "Referloop";

/// What referloop writes into a property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Number,
}

impl Kind {
    /// HubSpot's `type` and `fieldType`.
    fn hubspot(self) -> (&'static str, &'static str) {
        match self {
            Kind::Text => ("string", "text"),
            Kind::Number => ("number", "number"),
        }
    }
}

struct Wanted {
    name: String,
    label: &'static str,
    kind: Kind,
}

fn wanted(settings: &Settings) -> Vec<Wanted> {
    let p = &settings.hubspot_properties;
    let mut wanted = vec![
        (p.referral_code.clone(), "Referral code", Kind::Text),
        (p.referral_status.clone(), "Referral status", Kind::Text),
        (p.referred_by_code.clone(), "Referred by code", Kind::Text),
        (p.referrer_contact_id.clone(), "Referrer contact id", Kind::Text),
        (p.whatsapp_opted_out.clone(), "WhatsApp marketing opt-out", Kind::Text),
        (p.referral_reward.clone(), "Referral reward", Kind::Text),
        (p.referrals_converted.clone(), "Referrals converted", Kind::Number),
        (p.referral_rewards_total.clone(), "Referral rewards total", Kind::Number),
        (p.referral_bonus_total.clone(), "Referral bonus total", Kind::Number),
        (
            p.referral_experiment_variant.clone(),
            "Referral experiment variant",
            Kind::Text,
        ),
    ];
    for side in [&settings.rewards.referrer, &settings.rewards.friend] {
        let property = side.hubspot_property.clone();
        if side.kind == RewardKind::HubspotCredit && !wanted.iter().any(|(n, _, _)| *n == property) {
            wanted.push((property, "Referral credit balance", Kind::Number));
        }
    }
    wanted
        .into_iter()
        .map(|(name, label, kind)| Wanted { name, label, kind })
        .collect()
}

/// Creates what is missing (or, with `dry_run`, says what it would create) and reports
/// each thing as created, present or wrong.
pub async fn setup(client: &HubSpotClient, settings: &Settings, dry_run: bool) -> Result<Report, HubSpotError> {
    let mut report = Report::default();
    // Sandbox: nothing can be read, so everything is "created" (recorded, not sent).
    let sandbox = client.is_sandbox();
    let group = if sandbox {
        None
    } else {
        client.contact_property_group(GROUP).await?
    };
    let what = format!("property group {GROUP}");
    match (group, dry_run) {
        (Some(_), _) => report.findings.push(Finding::Present(what)),
        (None, true) => report.findings.push(Finding::WouldCreate {
            what,
            call: format!(
                "POST /crm/v3/properties/contacts/groups {}",
                json!({"name": GROUP, "label": GROUP_LABEL})
            ),
        }),
        (None, false) => {
            client.create_contact_property_group(GROUP, GROUP_LABEL).await?;
            report.findings.push(Finding::Created(what));
        }
    }
    for property in wanted(settings) {
        let finding = ensure_property(client, &property, sandbox, dry_run).await?;
        report.findings.push(finding);
    }
    if settings.hubspot.record_referral_links {
        let what = "association label Referred / Referred by (contact to contact)".to_string();
        if dry_run {
            report.findings.push(Finding::WouldCreate {
                what,
                call: "POST /crm/v4/associations/contact/contact/labels, when missing".into(),
            });
        } else {
            let type_id = client
                .referral_association_type("referrer_referred", "Referred", "Referred by", None)
                .await?;
            report
                .findings
                .push(Finding::Present(format!("{what}, type {type_id}")));
        }
    }
    Ok(report)
}

async fn ensure_property(
    client: &HubSpotClient,
    property: &Wanted,
    sandbox: bool,
    dry_run: bool,
) -> Result<Finding, HubSpotError> {
    let (kind, field) = property.kind.hubspot();
    let what = format!("property {} ({kind}, {field})", property.name);
    let existing = if sandbox {
        None
    } else {
        client.contact_property(&property.name).await?
    };
    if let Some(existing) = existing {
        return Ok(check_type(&existing, property, what));
    }
    let definition = json!({"name": property.name, "label": property.label, "type": kind,
                            "fieldType": field, "groupName": GROUP});
    if dry_run {
        return Ok(Finding::WouldCreate {
            what,
            call: format!("POST /crm/v3/properties/contacts {definition}"),
        });
    }
    client.create_contact_property(&definition).await?;
    Ok(Finding::Created(what))
}

fn check_type(existing: &Value, property: &Wanted, what: String) -> Finding {
    let (kind, _) = property.kind.hubspot();
    let found = existing.get("type").and_then(Value::as_str).unwrap_or("unknown");
    if found == kind {
        return Finding::Present(what);
    }
    let writes = match property.kind {
        Kind::Text => "text",
        Kind::Number => "numbers",
    };
    Finding::Wrong {
        what: format!("property {} has type {found}", property.name),
        fix: format!(
            "referloop writes {writes} into it: change its type to {kind} in HubSpot (Settings → Properties), \
             or point the setting naming it at another property and run setup again"
        ),
    }
}
