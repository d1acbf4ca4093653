//! The configured experiments as they run: which variant an invite is given, and the
//! settings each variant runs with (the base settings with its overrides applied, made
//! once at start). A step that acts for an invite, a referral or a reward takes its
//! settings from the variant its invite was given, so the reward promised is the reward
//! issued whatever restarts in between.
//!
//! An experiment whose variant names an invite template that Meta has not approved (in
//! every configured language, by the template status webhooks recorded) does not start:
//! its contacts get the control, the log says why, and `doctor` and the results page say
//! it is refused. It is checked again a minute later, so it starts once Meta approves.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::config::{Experiment, Settings};
use crate::domain::experiment;
use crate::domain::messaging::TemplateEvent;
use crate::store::{Store, StoreError};

/// How long a template check is trusted.
const RECHECK_MS: i64 = 60_000;

pub struct Experiments {
    running: Vec<Running>,
    /// Per experiment: when its templates were last checked, and why it is refused.
    checked: Mutex<BTreeMap<String, (i64, Option<String>)>>,
}

struct Running {
    config: Experiment,
    span: (i64, i64),
    weights: Vec<u32>,
    /// Each variant's name and settings, in the configured order (the control first).
    variants: Vec<(String, Arc<Settings>)>,
}

/// The variant an invite was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub experiment: String,
    pub variant: String,
}

impl Experiments {
    pub fn new(base: &Arc<Settings>) -> Experiments {
        let running = base
            .experiments
            .iter()
            .map(|config| Running {
                span: config.span_ms(),
                weights: config.variants.iter().map(|v| v.weight.get()).collect(),
                variants: config
                    .variants
                    .iter()
                    .map(|v| (v.name.clone(), Arc::new(v.apply(base))))
                    .collect(),
                config: config.clone(),
            })
            .collect();
        Experiments {
            running,
            checked: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// The variant `contact_id` gets if an experiment is running at `now` and is not
    /// refused; `None` (the control, not counted) otherwise.
    pub async fn assign(&self, store: &Store, contact_id: &str, now: i64) -> Result<Option<Assignment>, StoreError> {
        let Some(running) = self.running.iter().find(|r| r.span.0 <= now && now < r.span.1) else {
            return Ok(None);
        };
        if let Some(reason) = self.refusal(store, running, now).await? {
            tracing::warn!(experiment = %running.config.name, %reason, "experiment refused: its contacts get the control");
            return Ok(None);
        }
        Ok(
            experiment::assign(&running.config.name, contact_id, &running.weights).map(|index| Assignment {
                experiment: running.config.name.clone(),
                variant: running.variants[index].0.clone(),
            }),
        )
    }

    /// Why the experiment is refused (checked at most once a minute), if it is.
    async fn refusal(&self, store: &Store, running: &Running, now: i64) -> Result<Option<String>, StoreError> {
        let name = &running.config.name;
        if let Ok(checked) = self.checked.lock() {
            if let Some((at, reason)) = checked.get(name) {
                if now - at < RECHECK_MS {
                    return Ok(reason.clone());
                }
            }
        }
        let reason = unapproved_template(store, running).await?;
        if let Ok(mut checked) = self.checked.lock() {
            checked.insert(name.clone(), (now, reason.clone()));
        }
        Ok(reason)
    }

    /// Why `experiment` is refused now, checking afresh (for `doctor` and the results).
    pub async fn refused_now(&self, store: &Store, experiment: &str) -> Result<Option<String>, StoreError> {
        match self.running.iter().find(|r| r.config.name == experiment) {
            Some(running) => unapproved_template(store, running).await,
            None => Ok(None),
        }
    }

    /// The settings a variant runs with: the base ones for an invite given none, or one
    /// whose experiment or variant is no longer configured.
    pub fn settings<'a>(
        &'a self,
        base: &'a Arc<Settings>,
        experiment: Option<&str>,
        variant: Option<&str>,
    ) -> &'a Arc<Settings> {
        let (Some(experiment), Some(variant)) = (experiment, variant) else {
            return base;
        };
        self.running
            .iter()
            .find(|r| r.config.name == experiment)
            .and_then(|r| r.variants.iter().find(|(name, _)| name == variant))
            .map_or(base, |(_, settings)| settings)
    }
}

/// The first variant template that is not recorded approved in every configured language.
async fn unapproved_template(store: &Store, running: &Running) -> Result<Option<String>, StoreError> {
    for (variant, settings) in running.config.variants.iter().zip(&running.variants) {
        let Some(template) = &variant.templates.invite else {
            continue;
        };
        for language in &settings.1.templates.languages {
            let status = store.template_status(template, language).await?;
            let approved = matches!(status, Some((TemplateEvent::Approved | TemplateEvent::Reinstated, _)));
            if !approved {
                let said = match status {
                    Some((event, _)) => format!("is {}", event.as_str()),
                    None => "has no approval recorded".to_string(),
                };
                return Ok(Some(format!(
                    "variant {:?}: template {template} ({language}) {said}; it must be approved by Meta first",
                    variant.name
                )));
            }
        }
    }
    Ok(None)
}
