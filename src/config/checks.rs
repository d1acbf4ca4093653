//! What a loaded configuration must satisfy, each refusal naming its key.

use std::net::SocketAddr;
use std::time::Duration;

use crate::domain::reward::RewardKind;

use super::settings::{RewardSide, Settings};
use super::{secret_value, ConfigError, MAX_INBOX_BATCH, MAX_JOB_BATCH};

/// `host:port` with a port number and a host (a name, an IPv4 address or `[IPv6]`).
fn is_host_and_port(listen: &str) -> bool {
    if listen.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = listen.rsplit_once(':') else {
        return false;
    };
    let host_ok = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    host_ok && port.parse::<u16>().is_ok()
}

impl Settings {
    /// Checks what serde cannot: values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: String| Err(ConfigError::Invalid { key, problem });
        if !is_host_and_port(&self.server.listen) {
            return invalid(
                "server.listen",
                format!(
                    "`{}` is not host:port (for example 127.0.0.1:8080, localhost:8080 or [::]:8080)",
                    self.server.listen
                ),
            );
        }
        if self.server.request_timeout.is_zero() {
            return invalid("server.request_timeout_seconds", "must be at least 1".into());
        }
        if self.server.header_read_timeout.is_zero() {
            return invalid("server.header_read_timeout_seconds", "must be at least 1".into());
        }
        if self.server.idle_timeout <= self.server.request_timeout {
            return invalid(
                "server.idle_timeout_seconds",
                "must be longer than server.request_timeout_seconds".into(),
            );
        }
        if self.worker.keep_done < Duration::from_secs(24 * 60 * 60) {
            return invalid(
                "worker.keep_done_days",
                "must be at least 1 (Meta redelivers a webhook for up to 7 days)".into(),
            );
        }
        if self.worker.keep_done_statuses < Duration::from_secs(60) {
            return invalid("worker.keep_done_statuses_seconds", "must be at least 60".into());
        }
        if self.database.acquire_timeout.is_zero() {
            return invalid("database.acquire_timeout_ms", "must be at least 1".into());
        }
        if !(self.database.url.starts_with("sqlite:") || self.database.url.starts_with("postgres")) {
            return invalid("database.url", "must start with sqlite: or postgres://".into());
        }
        let flow_path = &self.whatsapp.flow_endpoint_path;
        let plain_path = flow_path.len() > 1
            && flow_path.starts_with('/')
            && flow_path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'));
        let taken = [
            "/webhooks/whatsapp",
            "/webhooks/hubspot",
            "/webhooks/stripe",
            "/healthz",
            "/readyz",
            "/metrics",
        ];
        if !plain_path
            || taken.contains(&flow_path.as_str())
            || flow_path.starts_with("/admin")
            || flow_path.starts_with("/api/")
        {
            return invalid(
                "whatsapp.flow_endpoint_path",
                format!("`{flow_path}` must be a path of its own, such as /webhooks/whatsapp/flow"),
            );
        }
        let check = self.whatsapp.flow_customer_check;
        if check > Duration::from_secs(8) {
            return invalid(
                "whatsapp.flow_customer_check_ms",
                format!(
                    "{} must be at most 8000 (Meta gives the endpoint 10 s)",
                    check.as_millis()
                ),
            );
        }
        if self.worker.job_batch.get() > MAX_JOB_BATCH {
            return invalid("worker.job_batch", format!("must be at most {MAX_JOB_BATCH}"));
        }
        if self.worker.inbox_batch.get() > MAX_INBOX_BATCH {
            return invalid("worker.inbox_batch", format!("must be at most {MAX_INBOX_BATCH}"));
        }
        if self.worker.lease.is_zero() {
            return invalid("worker.lease_seconds", "must be at least 1".into());
        }
        for (key, value) in [
            (
                "worker.outbound_connect_timeout_ms",
                self.worker.outbound_connect_timeout,
            ),
            ("worker.outbound_timeout_ms", self.worker.outbound_timeout),
        ] {
            if value < Duration::from_millis(100) {
                return invalid(key, "must be at least 100 (milliseconds)".into());
            }
        }
        if !(0.0..1.0).contains(&self.worker.retry_jitter) {
            return invalid("worker.retry_jitter", "must be in [0, 1)".into());
        }
        if !self.sandbox() {
            if self.whatsapp.phone_number_id.is_empty() {
                return invalid("whatsapp.phone_number_id", "is required outside sandbox mode".into());
            }
            if secret_value(&self.whatsapp.access_token).is_none() {
                return invalid("whatsapp.access_token", "is required outside sandbox mode".into());
            }
        }
        if self
            .programme
            .default_region
            .parse::<phonenumber::country::Id>()
            .is_err()
        {
            return invalid(
                "programme.default_region",
                "is not an ISO 3166 alpha-2 region such as US or GB".into(),
            );
        }
        if self.programme.promoter_min_score > 10 {
            return invalid("programme.promoter_min_score", "must be 0..=10".into());
        }
        if !self.templates.languages.contains(&self.templates.default_language) {
            return invalid(
                "templates.default_language",
                "must be one of templates.languages".into(),
            );
        }
        if self.templates.flow_id.is_empty() && self.templates.flow_name.is_empty() {
            return invalid("templates.flow_id", "set flow_id or flow_name".into());
        }
        for (key, side) in [
            ("rewards.referrer", &self.rewards.referrer),
            ("rewards.friend", &self.rewards.friend),
        ] {
            if let Some(problem) = side.problem() {
                return Err(ConfigError::Invalid { key, problem });
            }
        }
        let mut reached = std::collections::BTreeSet::new();
        for (n, milestone) in self.rewards.milestones.iter().enumerate() {
            if !reached.insert(milestone.conversions) {
                let problem = format!("two milestones at {} conversions", milestone.conversions);
                return invalid("rewards.milestones", problem);
            }
            if milestone.reward.kind == RewardKind::None {
                return invalid(
                    "rewards.milestones",
                    format!("milestone {n}: kind \"none\" grants nothing"),
                );
            }
            if let Some(problem) = milestone.reward.problem() {
                return invalid("rewards.milestones", format!("milestone {n}: {problem}"));
            }
        }
        if let Some(problem) = self.experiments_problem() {
            return invalid("experiments", problem);
        }
        if axum::http::HeaderName::try_from(self.hubspot.webhook_api_key_header.as_str()).is_err() {
            return invalid("hubspot.webhook_api_key_header", "is not a valid header name".into());
        }
        Ok(())
    }
}

impl RewardSide {
    /// What is missing for this kind of reward, if anything.
    fn problem(&self) -> Option<String> {
        let missing = |key: &str| Some(format!("kind {:?} needs `{key}`", self.kind));
        match self.kind {
            RewardKind::StaticCode if self.static_code.is_empty() => missing("static_code"),
            RewardKind::StripePromotionCode if self.stripe_coupon.is_empty() => missing("stripe_coupon"),
            RewardKind::HubspotCredit if self.hubspot_property.is_empty() => missing("hubspot_property"),
            RewardKind::Webhook if self.webhook_url.is_none() => missing("webhook_url"),
            RewardKind::Webhook if secret_value(&self.webhook_secret).is_none() => missing("webhook_secret"),
            RewardKind::StripeBalanceCredit | RewardKind::HubspotCredit if self.amount <= 0 => {
                Some("amount must be positive".into())
            }
            _ => None,
        }
    }
}

/// A name for an experiment or a variant: it goes in HubSpot and in URLs.
fn is_plain_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Settings {
    /// What makes `[[experiments]]` unusable, said with the experiment's name.
    fn experiments_problem(&self) -> Option<String> {
        let mut spans: Vec<(&str, (i64, i64))> = Vec::new();
        for e in &self.experiments {
            let name = &e.name;
            if !is_plain_name(name) {
                return Some(format!("{name:?}: a name is 1 to 64 of a-z, 0-9, - and _"));
            }
            if spans.iter().any(|(other, _)| other == name) {
                return Some(format!("two experiments are named {name:?}"));
            }
            let span = e.span_ms();
            if e.ends < e.starts {
                return Some(format!("{name}: ends before it starts"));
            }
            if let Some((other, _)) = spans.iter().find(|(_, s)| s.0 < span.1 && span.0 < s.1) {
                return Some(format!("{name} and {other} overlap: one experiment runs at a time"));
            }
            spans.push((name, span));
            let rates_make_sense = e.baseline_rate > 0.0
                && e.baseline_rate < 1.0
                && e.minimum_effect > 0.0
                && e.baseline_rate + e.minimum_effect < 1.0;
            if !rates_make_sense {
                return Some(format!(
                    "{name}: baseline_rate and minimum_effect are rates, with their sum below 1"
                ));
            }
            if e.variants.len() < 2 {
                return Some(format!("{name}: give a control and at least one variant"));
            }
            let mut seen = std::collections::BTreeSet::new();
            for v in &e.variants {
                if !is_plain_name(&v.name) || !seen.insert(v.name.as_str()) {
                    return Some(format!(
                        "{name}: variant {:?} needs a unique name of a-z, 0-9, - and _",
                        v.name
                    ));
                }
                let applied = v.apply(self);
                for (side, settings) in [
                    ("referrer", &applied.rewards.referrer),
                    ("friend", &applied.rewards.friend),
                ] {
                    if let Some(problem) = settings.problem() {
                        return Some(format!("{name}: variant {}: rewards.{side}: {problem}", v.name));
                    }
                }
                if v.templates.invite.as_deref().is_some_and(str::is_empty) {
                    return Some(format!("{name}: variant {}: templates.invite is empty", v.name));
                }
            }
            if !e.variants[0].changes_nothing() {
                return Some(format!(
                    "{name}: the first variant ({}) is the control and changes nothing; move its settings to another variant",
                    e.variants[0].name
                ));
            }
        }
        None
    }
}
