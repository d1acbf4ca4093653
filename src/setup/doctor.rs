//! `referloop doctor`: one line per check — ✓ fine, ! worth a look, ✗ blocks going live
//! (with the fix in a sentence), - skipped (and why) — and a non-zero exit status when
//! anything blocks. `--json` gives the same for automation. In sandbox mode the outside
//! accounts cannot be reached, so only the local parts are checked.

use serde::Serialize;
use serde_json::Value;

use super::{hubspot, Finding};
use crate::app::Services;
use crate::config::{secret_value, Account, FlowKind};
use crate::domain::ids::path_segment;
use crate::domain::reward::RewardKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub area: &'static str,
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// What to do, for a failure or a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    pub checks: Vec<Check>,
}

impl Diagnosis {
    /// Nothing blocks going live.
    pub fn ok(&self) -> bool {
        !self.checks.iter().any(|c| c.status == Status::Fail)
    }

    pub fn lines(&self) -> Vec<String> {
        self.checks
            .iter()
            .map(|c| {
                let mark = match c.status {
                    Status::Ok => "✓",
                    Status::Warn => "!",
                    Status::Fail => "✗",
                    Status::Skipped => "-",
                };
                let mut line = format!("{mark} {:<9} {}: {}", c.area, c.name, c.detail);
                if let Some(fix) = &c.fix {
                    line.push_str(&format!(" — {fix}"));
                }
                line
            })
            .collect()
    }

    fn add(&mut self, area: &'static str, name: impl Into<String>, status: Status, detail: impl Into<String>) {
        self.checks.push(Check {
            area,
            name: name.into(),
            status,
            detail: detail.into(),
            fix: None,
        });
    }

    fn fail(&mut self, area: &'static str, name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) {
        self.push_with_fix(area, name, Status::Fail, detail, fix);
    }

    fn warn(&mut self, area: &'static str, name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) {
        self.push_with_fix(area, name, Status::Warn, detail, fix);
    }

    fn push_with_fix(
        &mut self,
        area: &'static str,
        name: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.checks.push(Check {
            area,
            name: name.into(),
            status,
            detail: detail.into(),
            fix: Some(fix.into()),
        });
    }
}

pub async fn run(s: &Services) -> Diagnosis {
    let mut d = Diagnosis::default();
    configuration(s, &mut d);
    pricing(s, &mut d);
    database(s, &mut d).await;
    experiments(s, &mut d).await;
    // Each account is checked when it is live; a recorded one (sandbox until its
    // credential is set) is said so.
    let recorded = |d: &mut Diagnosis, area| {
        d.add(
            area,
            "account",
            Status::Skipped,
            "sandbox: its calls are recorded, not sent, until its credential is set",
        )
    };
    if s.settings.live(Account::WhatsApp) {
        whatsapp(s, &mut d).await;
    } else {
        // The Flow's key needs no call to check: a missing one is said in sandbox too.
        flow_key_configured(s, &mut d);
        recorded(&mut d, "whatsapp");
    }
    // Once WhatsApp is live the programme is: an account still recorded blocks it.
    let programme_live = s.settings.live(Account::WhatsApp);
    if s.settings.live(Account::HubSpot) {
        hubspot_account(s, &mut d).await;
    } else if programme_live {
        d.fail(
            "hubspot",
            "account",
            "WhatsApp is live but HubSpot's calls are only recorded (no hubspot.access_token)",
            "set hubspot.access_token (a private app's token), then `referloop setup hubspot`",
        );
    } else {
        recorded(&mut d, "hubspot");
    }
    if s.settings.live(Account::Stripe) || programme_live {
        // Without a key it makes no call: it says whether the rewards need one.
        stripe(s, &mut d).await;
    } else {
        recorded(&mut d, "stripe");
    }
    d
}

fn configuration(s: &Services, d: &mut Diagnosis) {
    let settings = &s.settings;
    let https = settings.server.public_base_url.is_https();
    match (https, settings.sandbox()) {
        (true, _) => d.add(
            "config",
            "public URL",
            Status::Ok,
            settings.server.public_base_url.to_string(),
        ),
        (false, true) => d.warn(
            "config",
            "public URL",
            format!("{} is not https", settings.server.public_base_url.as_str()),
            "set server.public_base_url to the https URL of your TLS proxy before going live",
        ),
        (false, false) => d.fail(
            "config",
            "public URL",
            format!("{} is not https", settings.server.public_base_url.as_str()),
            "Meta, HubSpot and Stripe call https only: set server.public_base_url to your TLS proxy's URL",
        ),
    }
    let secrets = [
        (
            "whatsapp.app_secret",
            secret_value(&settings.whatsapp.app_secret).is_some(),
            "WhatsApp webhooks answer 503",
        ),
        (
            "whatsapp.verify_token",
            secret_value(&settings.whatsapp.verify_token).is_some(),
            "Meta's handshake is refused",
        ),
        (
            "hubspot.client_secret or hubspot.webhook_api_key",
            secret_value(&settings.hubspot.client_secret).is_some()
                || secret_value(&settings.hubspot.webhook_api_key).is_some(),
            "HubSpot webhooks answer 503",
        ),
    ];
    for (key, set, without) in secrets {
        if set {
            d.add("config", key, Status::Ok, "set");
        } else {
            d.fail("config", key, format!("not set: {without}"), format!("set {key}"));
        }
    }
    if secret_value(&settings.stripe.webhook_secret).is_some() {
        d.add("config", "stripe.webhook_secret", Status::Ok, "set");
    } else {
        d.warn(
            "config",
            "stripe.webhook_secret",
            "not set: Stripe conversions are off",
            "set it to the endpoint's whsec_… secret if purchases happen on Stripe",
        );
    }
}

/// Where the economics report's prices come from, and whether every reward's currency can
/// be converted to the reporting one.
fn pricing(s: &Services, d: &mut Diagnosis) {
    let pricing = &s.settings.pricing;
    let markets: Vec<&str> = pricing.markets.keys().map(String::as_str).collect();
    let source = format!(
        "the rate card in the configuration (pricing.markets: {} market(s){}{}, in {}); Meta's pricing analytics is not read",
        markets.len(),
        if markets.is_empty() { "" } else { ": " },
        markets.join(", ").to_ascii_uppercase(),
        pricing.currency
    );
    if markets.is_empty() {
        d.warn(
            "config",
            "message prices",
            format!("{source}: every billable message is reported unpriced"),
            "add [pricing.markets.<country>] tables with Meta's prices for your markets",
        );
    } else {
        d.add("config", "message prices", Status::Ok, source);
    }
    let rewards = &s.settings.rewards;
    let sides = [&rewards.referrer, &rewards.friend]
        .into_iter()
        .chain(rewards.milestones.iter().map(|m| &m.reward));
    let exchange = pricing.exchange();
    let mut missing: Vec<String> = sides
        .filter(|side| side.kind != crate::domain::reward::RewardKind::None)
        .filter(|side| exchange.convert(0, &side.currency).is_none())
        .map(|side| side.currency.to_ascii_uppercase())
        .collect();
    missing.dedup();
    if !missing.is_empty() {
        d.warn(
            "config",
            "exchange rates",
            format!(
                "rewards are paid in {} but pricing.exchange_rates has no rate into {}: their cost is reported as uncounted",
                missing.join(", "),
                pricing.currency
            ),
            "add the rate under [pricing.exchange_rates]",
        );
    }
}

/// Each experiment that has not ended: refused when a variant names a template Meta has
/// not approved (its contacts get the control until it is).
async fn experiments(s: &Services, d: &mut Diagnosis) {
    let now = s.now_ms();
    for e in &s.settings.experiments {
        let name = format!("experiment {}", e.name);
        if e.span_ms().1 <= now {
            d.add("config", name, Status::Ok, "ended");
            continue;
        }
        match s.experiments.refused_now(&s.store, &e.name).await {
            Ok(None) => d.add(
                "config",
                name,
                Status::Ok,
                format!(
                    "{} variants, {} to {}",
                    e.variants.len(),
                    String::from(e.starts),
                    String::from(e.ends)
                ),
            ),
            Ok(Some(reason)) => d.fail(
                "config",
                name,
                format!("refused: {reason}"),
                "submit the template (`referloop setup whatsapp`) and wait for Meta's approval, or remove the variant",
            ),
            Err(_) => d.fail(
                "config",
                name,
                "could not be checked: the database did not answer",
                "run `referloop doctor` again once the database answers",
            ),
        }
    }
}

async fn database(s: &Services, d: &mut Diagnosis) {
    match s.store.readiness().await {
        Ok(()) => d.add(
            "database",
            "reachable and migrated",
            Status::Ok,
            format!("{:?}", s.store.backend()),
        ),
        Err(not_ready) => d.fail(
            "database",
            "reachable and migrated",
            not_ready.public_reason(),
            "check database.url, then run `referloop migrate`",
        ),
    }
    match s.store.autovacuum_runs().await {
        Ok(Some(true)) => d.add("database", "autovacuum", Status::Ok, "on"),
        Ok(Some(false)) => d.warn(
            "database",
            "autovacuum",
            "off: the rows the queues finish with are never reclaimed, and claims slow as the tables grow",
            "set `autovacuum = on` in postgresql.conf and reload PostgreSQL",
        ),
        Ok(None) => {}
        Err(_) => d.warn("database", "autovacuum", "cannot be read", "check the database"),
    }
    let uses_pool = [&s.settings.rewards.referrer, &s.settings.rewards.friend]
        .iter()
        .any(|side| side.kind == RewardKind::CodePool);
    if !uses_pool {
        return;
    }
    match s.store.free_pool_codes().await {
        Ok(0) => d.fail(
            "database",
            "reward code pool",
            "empty: code-pool rewards cannot be issued",
            "load codes with `referloop rewards load-codes FILE.csv`",
        ),
        Ok(free) if free < s.settings.rewards.pool_low_watermark => d.warn(
            "database",
            "reward code pool",
            format!("{free} free codes"),
            "load more with `referloop rewards load-codes FILE.csv`",
        ),
        Ok(free) => d.add("database", "reward code pool", Status::Ok, format!("{free} free codes")),
        Err(_) => d.fail("database", "reward code pool", "cannot be read", "check the database"),
    }
}

/// A read's answer, or why there is none.
fn answered(result: Result<Option<(u16, Value)>, String>) -> Result<(u16, Value), String> {
    match result {
        Ok(Some(answer)) => Ok(answer),
        Ok(None) => Err("recorded, not sent (sandbox)".into()),
        Err(e) => Err(format!("unreachable: {e}")),
    }
}

fn graph_error(body: &Value) -> String {
    body.pointer("/error/message")
        .and_then(Value::as_str)
        .unwrap_or("no detail")
        .to_string()
}

async fn whatsapp(s: &Services, d: &mut Diagnosis) {
    let w = &s.settings.whatsapp;
    token_scopes(s, d).await;
    let fields = "?fields=display_phone_number,verified_name,quality_rating,messaging_limit_tier,status,health_status";
    let number = answered(
        s.whatsapp
            .probe(&format!("/{}{fields}", path_segment(&w.phone_number_id)))
            .await,
    );
    match number {
        Ok((200, body)) => {
            let quality = body["quality_rating"].as_str().unwrap_or("UNKNOWN").to_string();
            let detail = format!(
                "{} ({}), quality {quality}, limit {}",
                body["display_phone_number"].as_str().unwrap_or("?"),
                body["verified_name"].as_str().unwrap_or("?"),
                body["messaging_limit_tier"].as_str().unwrap_or("?")
            );
            health(d, &body["health_status"]);
            if quality == "RED" {
                d.warn(
                    "whatsapp",
                    "phone number",
                    detail,
                    "quality is low: send less marketing until it recovers",
                );
            } else {
                d.add("whatsapp", "phone number", Status::Ok, detail);
            }
        }
        Ok((status, body)) => {
            d.fail(
                "whatsapp",
                "token and phone number",
                format!("HTTP {status}: {}", graph_error(&body)),
                "check whatsapp.access_token (a system-user token with whatsapp_business_messaging and whatsapp_business_management) and whatsapp.phone_number_id",
            );
            return;
        }
        Err(why) => {
            d.fail(
                "whatsapp",
                "token and phone number",
                why,
                "check whatsapp.api_base and the network",
            );
            return;
        }
    }
    if w.waba_id.is_empty() {
        d.fail(
            "whatsapp",
            "business account",
            "whatsapp.waba_id is not set: templates and the webhook subscription cannot be checked",
            "set whatsapp.waba_id",
        );
        return;
    }
    let waba = path_segment(&w.waba_id);
    match answered(s.whatsapp.probe(&format!("/{waba}/subscribed_apps")).await) {
        Ok((200, body)) if body["data"].as_array().is_some_and(|apps| !apps.is_empty()) => d.add(
            "whatsapp",
            "webhook subscription",
            Status::Ok,
            "the app receives this account's webhooks",
        ),
        Ok((200, _)) => d.fail(
            "whatsapp",
            "webhook subscription",
            "no app is subscribed to the account: no message or status will arrive",
            format!("POST /{}/subscribed_apps with the system-user token", w.waba_id),
        ),
        Ok((status, body)) => d.fail(
            "whatsapp",
            "webhook subscription",
            format!("HTTP {status}: {}", graph_error(&body)),
            "the token needs whatsapp_business_management on this account",
        ),
        Err(why) => d.fail("whatsapp", "webhook subscription", why, "check the network"),
    }
    flow_published(s, d, &waba).await;
    for language in s.settings.templates.languages.iter() {
        if *language != s.settings.templates.default_language {
            language_flow_published(s, d, &waba, language).await;
        }
    }
    flow_endpoint_key(s, d).await;
    let t = &s.settings.templates;
    for name in [
        &t.invite,
        &t.flow,
        &t.friend_invite,
        &t.thanks,
        &t.reward,
        &t.reminder,
        &t.nudge,
        &t.bonus,
    ] {
        let path = format!(
            "/{waba}/message_templates?name={}&fields=name,language,status,category,rejected_reason",
            path_segment(name)
        );
        let found = answered(s.whatsapp.probe(&path).await);
        template(d, name, &t.languages, found);
    }
}

/// The token's scopes, and that they reach the configured account (`/debug_token`).
async fn token_scopes(s: &Services, d: &mut Diagnosis) {
    const NEEDED: [&str; 2] = ["whatsapp_business_messaging", "whatsapp_business_management"];
    let answer = match answered(s.whatsapp.inspect_token().await) {
        Ok((200, body)) => body,
        Ok((status, body)) => {
            d.fail(
                "whatsapp",
                "token",
                format!("HTTP {status}: {}", graph_error(&body)),
                "create a new system-user token (Meta Business Suite → System users)",
            );
            return;
        }
        Err(why) => {
            d.fail("whatsapp", "token", why, "check whatsapp.api_base and the network");
            return;
        }
    };
    let data = &answer["data"];
    if data["is_valid"] == Value::Bool(false) {
        d.fail(
            "whatsapp",
            "token",
            "expired or revoked",
            "create a new system-user token and set whatsapp.access_token",
        );
        return;
    }
    let scopes: Vec<&str> = data["scopes"]
        .as_array()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let missing: Vec<&str> = NEEDED.iter().copied().filter(|n| !scopes.contains(n)).collect();
    if !missing.is_empty() {
        d.fail(
            "whatsapp",
            "token scopes",
            format!("missing {}", missing.join(", ")),
            "grant them to the system user's token",
        );
        return;
    }
    let waba = &s.settings.whatsapp.waba_id;
    let reaches = |scope: &str| {
        data["granular_scopes"].as_array().is_none_or(|granular| {
            granular.iter().any(|g| {
                g["scope"] == scope
                    && g["target_ids"]
                        .as_array()
                        .is_none_or(|ids| ids.iter().any(|id| id.as_str() == Some(waba.as_str())))
            })
        })
    };
    if waba.is_empty() || NEEDED.iter().all(|scope| reaches(scope)) {
        d.add("whatsapp", "token scopes", Status::Ok, NEEDED.join(", "));
    } else {
        d.fail(
            "whatsapp",
            "token scopes",
            format!("the token's scopes do not reach account {waba}"),
            "assign the WhatsApp account to the system user and create a new token",
        );
    }
}

/// `health_status.can_send_message` of the phone number: AVAILABLE, LIMITED or BLOCKED.
fn health(d: &mut Diagnosis, health: &Value) {
    let can_send = health["can_send_message"].as_str().unwrap_or("UNKNOWN");
    let reasons: Vec<String> = health["entities"]
        .as_array()
        .map(|entities| {
            entities
                .iter()
                .flat_map(|e| e["errors"].as_array().cloned().unwrap_or_default())
                .map(|e| format!("{} {}", e["error_code"], e["error_description"].as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    match can_send {
        "AVAILABLE" => d.add("whatsapp", "health", Status::Ok, "can send messages"),
        "LIMITED" => d.warn(
            "whatsapp",
            "health",
            format!("limited: {}", reasons.join("; ")),
            "see WhatsApp Manager",
        ),
        "BLOCKED" => d.fail(
            "whatsapp",
            "health",
            format!("blocked: {}", reasons.join("; ")),
            "resolve it in WhatsApp Manager (payment method, verification, policy)",
        ),
        _ => d.add("whatsapp", "health", Status::Skipped, "not reported"),
    }
}

/// The nomination Flow is published (the static one by `templates.flow_id`, else by name).
async fn flow_published(s: &Services, d: &mut Diagnosis, waba: &str) {
    let t = &s.settings.templates;
    if t.flow_id.is_empty() || s.settings.whatsapp.flow_kind == FlowKind::Endpoint {
        return language_flow_published(s, d, waba, &t.default_language).await;
    }
    let one = answered(
        s.whatsapp
            .probe(&format!("/{}?fields=name,status", path_segment(&t.flow_id)))
            .await,
    );
    let found = one.ok().filter(|(status, _)| *status == 200).map(|(_, body)| body);
    let check = format!("Flow {}", t.flow_id);
    match found.as_ref().and_then(|f| f["status"].as_str()) {
        Some("PUBLISHED") => d.add("whatsapp", check, Status::Ok, "published"),
        Some(status) => d.fail(
            "whatsapp",
            check,
            status.to_string(),
            "publish it (`referloop setup whatsapp`)",
        ),
        None => d.fail(
            "whatsapp",
            check,
            "not found",
            "run `referloop setup whatsapp`, then set templates.flow_id",
        ),
    }
}

/// A language's Flow, sent by name (`render::flow_name`).
async fn language_flow_published(s: &Services, d: &mut Diagnosis, waba: &str, language: &str) {
    let name = crate::whatsapp::render::flow_name(&s.settings, language);
    let listed = answered(s.whatsapp.probe(&format!("/{waba}/flows")).await);
    let status = listed.ok().and_then(|(_, body)| {
        body["data"].as_array().and_then(|flows| {
            flows
                .iter()
                .find(|f| f["name"] == name.as_str())
                .and_then(|f| f["status"].as_str().map(str::to_string))
        })
    });
    let check = format!("Flow {name}");
    match status.as_deref() {
        Some("PUBLISHED") => d.add("whatsapp", check, Status::Ok, "published"),
        Some(other) => d.fail(
            "whatsapp",
            check,
            other.to_string(),
            "publish it (`referloop setup whatsapp`)",
        ),
        None => d.fail(
            "whatsapp",
            check,
            format!("not found: {language} contacts get no Flow"),
            "run `referloop setup whatsapp`, or remove the language from templates.languages",
        ),
    }
}

/// An endpoint Flow without its key (also what `serve` warns of at start).
pub const NO_FLOW_KEY: &str =
    "whatsapp.flow_kind is \"endpoint\" but no private key is configured: the Flow cannot open";
pub const NO_FLOW_KEY_FIX: &str =
    "run `referloop flow keygen`, set whatsapp.flow_private_key_file, then `referloop setup whatsapp`";

/// The endpoint Flow's key as far as this machine can tell: configured and loadable.
fn flow_key_configured(s: &Services, d: &mut Diagnosis) {
    let check = "Flow endpoint key";
    let endpoint = s.settings.whatsapp.flow_kind == FlowKind::Endpoint;
    match crate::whatsapp::flow_crypto::configured_key(&s.settings) {
        Ok(Some(_)) => d.add(
            "whatsapp",
            check,
            Status::Ok,
            "configured (Meta's copy is checked when live)",
        ),
        Ok(None) if endpoint => d.fail("whatsapp", check, NO_FLOW_KEY, NO_FLOW_KEY_FIX),
        Ok(None) => {}
        Err(problem) => d.fail("whatsapp", check, problem, "see README.md, \"The Flow endpoint\""),
    }
}

/// The endpoint Flow's key: configured, loadable, and the one Meta holds, signed.
async fn flow_endpoint_key(s: &Services, d: &mut Diagnosis) {
    let check = "Flow endpoint key";
    let endpoint = s.settings.whatsapp.flow_kind == FlowKind::Endpoint;
    let key = match crate::whatsapp::flow_crypto::configured_key(&s.settings) {
        Ok(Some(key)) => key,
        Ok(None) if endpoint => return d.fail("whatsapp", check, NO_FLOW_KEY, NO_FLOW_KEY_FIX),
        Ok(None) => return d.add("whatsapp", check, Status::Ok, "static Flow: no endpoint key needed"),
        Err(problem) => return d.fail("whatsapp", check, problem, "see README.md, \"The Flow endpoint\""),
    };
    let number = path_segment(&s.settings.whatsapp.phone_number_id);
    let registered = answered(
        s.whatsapp
            .probe(&format!("/{number}/whatsapp_business_encryption"))
            .await,
    );
    let entry = match registered {
        Ok((200, body)) => body["data"].get(0).cloned().unwrap_or(Value::Null),
        Ok((status, body)) => {
            return d.fail(
                "whatsapp",
                check,
                format!("HTTP {status}: {}", graph_error(&body)),
                "the token needs whatsapp_business_messaging on this number",
            )
        }
        Err(why) => return d.fail("whatsapp", check, why, "check the network"),
    };
    let compact = |pem: &str| pem.split_whitespace().collect::<String>();
    let same = entry["business_public_key"].as_str().map(compact) == Some(compact(key.public_key_pem()));
    let status = entry["business_public_key_signature_status"]
        .as_str()
        .unwrap_or("UNKNOWN");
    match (same, status) {
        (true, "VALID") => d.add("whatsapp", check, Status::Ok, "uploaded and signed (VALID)"),
        (true, other) => d.fail(
            "whatsapp",
            check,
            format!("uploaded, signature status {other}"),
            "upload it again (`referloop setup whatsapp`) after the number is registered",
        ),
        (false, _) if !endpoint => d.warn(
            "whatsapp",
            check,
            "a key is configured but Meta holds another (or none)",
            "run `referloop setup whatsapp` before switching whatsapp.flow_kind to \"endpoint\"",
        ),
        (false, _) => d.fail(
            "whatsapp",
            check,
            "Meta holds another key (or none): the client encrypts to a key we cannot open",
            "run `referloop setup whatsapp` to upload the configured key",
        ),
    }
}

fn template(d: &mut Diagnosis, name: &str, languages: &[String], found: Result<(u16, Value), String>) {
    let templates = match found {
        Ok((200, body)) => body["data"].as_array().cloned().unwrap_or_default(),
        Ok((status, body)) => {
            d.fail(
                "whatsapp",
                format!("template {name}"),
                format!("HTTP {status}: {}", graph_error(&body)),
                "check the token's scopes",
            );
            return;
        }
        Err(why) => {
            d.fail("whatsapp", format!("template {name}"), why, "check the network");
            return;
        }
    };
    for language in languages {
        let check = format!("template {name} ({language})");
        let entry = templates
            .iter()
            .find(|t| t["name"] == name && t["language"] == language.as_str());
        match entry.map(|t| (t["status"].as_str().unwrap_or("UNKNOWN"), t)) {
            Some(("APPROVED", t)) => d.add(
                "whatsapp",
                check,
                Status::Ok,
                format!("approved, {}", t["category"].as_str().unwrap_or("?")),
            ),
            Some(("PENDING", _)) => d.warn("whatsapp", check, "pending review", "wait for Meta's review"),
            Some((status, t)) => d.fail(
                "whatsapp",
                check,
                format!(
                    "{status}: {}",
                    t["rejected_reason"].as_str().unwrap_or("no reason given")
                ),
                "edit and resubmit it (templates/ has its definition)",
            ),
            None => d.fail(
                "whatsapp",
                check,
                "missing",
                "submit it from templates/ (see templates/README.md)",
            ),
        }
    }
}

/// Scopes referloop's HubSpot calls need: reading and writing contacts, and reading and
/// creating their properties.
const HUBSPOT_SCOPES: [&str; 4] = [
    "crm.objects.contacts.read",
    "crm.objects.contacts.write",
    "crm.schemas.contacts.read",
    "crm.schemas.contacts.write",
];
/// Needed only for conversions from deals (the deal's contacts are read).
const HUBSPOT_DEAL_SCOPE: &str = "crm.objects.deals.read";

async fn hubspot_token(s: &Services, d: &mut Diagnosis) {
    const WHERE: &str = "HubSpot → Settings → Integrations → Private apps (or Service keys) → Scopes";
    let scopes = match s.hubspot.token_scopes().await {
        Ok(scopes) => scopes,
        Err(e) => {
            // Service keys cannot be introspected; the property checks below still show
            // what the token may do.
            d.warn(
                "hubspot",
                "token scopes",
                format!("not readable: {e}"),
                "a service key cannot be inspected; the property checks below show what it can do",
            );
            return;
        }
    };
    let missing: Vec<&str> = HUBSPOT_SCOPES
        .iter()
        .copied()
        .filter(|needed| !scopes.iter().any(|s| s == needed))
        .collect();
    if !missing.is_empty() {
        d.fail(
            "hubspot",
            "token scopes",
            format!("missing {}", missing.join(", ")),
            format!("add them in {WHERE}"),
        );
    } else if !scopes.iter().any(|s| s == HUBSPOT_DEAL_SCOPE) {
        d.warn(
            "hubspot",
            "token scopes",
            format!("missing {HUBSPOT_DEAL_SCOPE}"),
            format!("conversions from deals need it: add it in {WHERE}"),
        );
    } else {
        d.add("hubspot", "token scopes", Status::Ok, HUBSPOT_SCOPES.join(", "));
    }
}

async fn hubspot_account(s: &Services, d: &mut Diagnosis) {
    hubspot_token(s, d).await;
    match hubspot::setup(&s.hubspot, &s.settings, true).await {
        Ok(report) => {
            for finding in report.findings {
                match finding {
                    Finding::Present(what) | Finding::Created(what) => d.add("hubspot", what, Status::Ok, "present"),
                    Finding::Recorded(what) => d.add("hubspot", what, Status::Skipped, "sandbox: not checked"),
                    Finding::WouldCreate { what, .. } => {
                        d.fail("hubspot", what, "missing", "run `referloop setup hubspot`")
                    }
                    Finding::Wrong { what, fix } => d.fail("hubspot", what, "wrong type", fix),
                }
            }
        }
        Err(e) => {
            d.fail(
                "hubspot",
                "token",
                e.to_string(),
                "check hubspot.access_token: a private-app token or service key with crm.objects.contacts.read/write and crm.schemas.contacts.read/write",
            );
            return;
        }
    }
    let nps = &s.settings.programme.nps_property;
    match s.hubspot.contact_property(nps).await {
        Ok(Some(_)) => d.add("hubspot", format!("NPS property {nps}"), Status::Ok, "present"),
        Ok(None) => d.fail(
            "hubspot",
            format!("NPS property {nps}"),
            "missing",
            "set programme.nps_property to the property your survey writes",
        ),
        Err(e) => d.fail(
            "hubspot",
            format!("NPS property {nps}"),
            e.to_string(),
            "check the token's scopes",
        ),
    }
}

async fn stripe(s: &Services, d: &mut Diagnosis) {
    let sides = [&s.settings.rewards.referrer, &s.settings.rewards.friend];
    let uses_stripe = sides.iter().any(|side| {
        matches!(
            side.kind,
            RewardKind::StripePromotionCode | RewardKind::StripeBalanceCredit
        )
    });
    match (s.stripe.live_key(), uses_stripe) {
        (Some(true), _) => d.add("stripe", "secret key", Status::Ok, "live mode"),
        (Some(false), _) => d.warn(
            "stripe",
            "secret key",
            "test mode",
            "use a live key (sk_live_/rk_live_) to go live",
        ),
        (None, true) => d.fail(
            "stripe",
            "secret key",
            "not set or not a Stripe key, but a reward uses Stripe",
            "set stripe.secret_key",
        ),
        (None, false) => {
            d.add("stripe", "secret key", Status::Skipped, "no reward uses Stripe");
            return;
        }
    }
    for side in sides.iter().filter(|side| side.kind == RewardKind::StripePromotionCode) {
        let coupon = &side.stripe_coupon;
        let found = answered(s.stripe.probe(&format!("/v1/coupons/{}", path_segment(coupon))).await);
        match found {
            Ok((200, body)) if body["valid"] != Value::Bool(false) => {
                d.add("stripe", format!("coupon {coupon}"), Status::Ok, "exists and is valid")
            }
            Ok((200, _)) => d.fail(
                "stripe",
                format!("coupon {coupon}"),
                "no longer valid",
                "create a new coupon and name it in rewards.*.stripe_coupon",
            ),
            Ok((404, _)) => d.fail(
                "stripe",
                format!("coupon {coupon}"),
                "missing",
                "create it in Stripe or fix rewards.*.stripe_coupon",
            ),
            Ok((status, body)) => d.fail(
                "stripe",
                format!("coupon {coupon}"),
                format!(
                    "HTTP {status}: {}",
                    body.pointer("/error/message").and_then(Value::as_str).unwrap_or("")
                ),
                "check stripe.secret_key and its permissions (rak_coupon_read)",
            ),
            Err(why) => d.fail("stripe", format!("coupon {coupon}"), why, "check the network"),
        }
    }
}
