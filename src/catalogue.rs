//! The texts referloop writes itself, per language: replies inside a window the recipient
//! opened, in-Flow errors, the Flow's screen, and each language's stop keywords. They live
//! in `templates/messages/<language>.toml` (built in), and a file of the same name in
//! `templates.catalogue_dir` overrides any of its keys. Approved templates are Meta's
//! (`templates/tmpl_*.json`), not these.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::domain::messaging::{pick_language, StopKeywords};
use crate::domain::nomination::NominationRefusal;

/// The catalogues that ship with referloop, by language code.
pub const BUILT_IN: [(&str, &str); 5] = [
    ("en_US", include_str!("../templates/messages/en_US.toml")),
    ("es", include_str!("../templates/messages/es.toml")),
    ("pt_BR", include_str!("../templates/messages/pt_BR.toml")),
    ("fr", include_str!("../templates/messages/fr.toml")),
    ("de", include_str!("../templates/messages/de.toml")),
];

/// One language's texts. Every key is required, so a catalogue missing one fails at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalogue {
    pub stop_keywords: Vec<String>,
    pub replies: ReplyTexts,
    pub refusals: ReasonTexts,
    pub flow_errors: ReasonTexts,
    pub flow: FlowTexts,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyTexts {
    pub flow_prompt: String,
    pub flow_cta: String,
    pub share_link: String,
    pub share_prefill: String,
    pub friend_welcome: String,
    pub friend_reminder: String,
    pub opt_out_ack: String,
    pub default_personal_message: String,
    pub unknown_name: String,
    pub unknown_friend: String,
    pub unknown_referrer: String,
}

/// A text for each reason a nomination is refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonTexts {
    pub invalid_flow_token: String,
    pub invalid_name: String,
    pub invalid_phone: String,
    pub message_too_long: String,
    pub self_referral: String,
    pub already_referred: String,
    pub already_customer: String,
    pub too_many_open_referrals: String,
    pub friend_opted_out: String,
}

impl ReasonTexts {
    pub fn get(&self, refusal: &NominationRefusal) -> &str {
        match refusal {
            NominationRefusal::InvalidToken => &self.invalid_flow_token,
            NominationRefusal::InvalidName => &self.invalid_name,
            NominationRefusal::InvalidPhone(_) => &self.invalid_phone,
            NominationRefusal::MessageTooLong => &self.message_too_long,
            NominationRefusal::SelfReferral => &self.self_referral,
            NominationRefusal::AlreadyReferred => &self.already_referred,
            NominationRefusal::AlreadyCustomer => &self.already_customer,
            NominationRefusal::TooManyOpenReferrals => &self.too_many_open_referrals,
            NominationRefusal::FriendOptedOut => &self.friend_opted_out,
        }
    }
}

/// The Flow's screen texts, filled into the Flow JSON at setup.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowTexts {
    pub title: String,
    pub heading: String,
    pub friend_name_label: String,
    pub friend_phone_label: String,
    pub friend_phone_helper: String,
    pub message_label: String,
    pub consent_label: String,
    pub submit_label: String,
}

impl FlowTexts {
    /// (placeholder, text) pairs for `{{flow.<key>}}` in the Flow JSON.
    pub fn placeholders(&self) -> [(&'static str, &str); 8] {
        [
            ("title", &self.title),
            ("heading", &self.heading),
            ("friend_name_label", &self.friend_name_label),
            ("friend_phone_label", &self.friend_phone_label),
            ("friend_phone_helper", &self.friend_phone_helper),
            ("message_label", &self.message_label),
            ("consent_label", &self.consent_label),
            ("submit_label", &self.submit_label),
        ]
    }
}

impl Catalogue {
    /// The refusal reply to the referrer (after a static Flow).
    pub fn refusal(&self, refusal: &NominationRefusal, friend_name: &str) -> String {
        fill(self.refusals.get(refusal), &[("friend_name", self.friend(friend_name))])
    }

    /// The error shown inside the Flow (endpoint variant).
    pub fn flow_error(&self, refusal: &NominationRefusal, friend_name: &str) -> String {
        fill(
            self.flow_errors.get(refusal),
            &[("friend_name", self.friend(friend_name))],
        )
    }

    fn friend<'a>(&'a self, friend_name: &'a str) -> &'a str {
        match friend_name.trim() {
            "" => &self.replies.unknown_friend,
            name => name,
        }
    }
}

/// `template` with each `{name}` replaced by its value.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    values.iter().fold(template.to_string(), |text, (name, value)| {
        text.replace(&format!("{{{name}}}"), value)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("no message catalogue for language {0} (built in: en_US, es, pt_BR, fr, de; or add {0}.toml to templates.catalogue_dir)")]
    Missing(String),
    #[error("message catalogue {language}: {problem}")]
    Invalid { language: String, problem: String },
}

/// The catalogues of the configured languages.
#[derive(Debug, Clone)]
pub struct Catalogues {
    by_language: BTreeMap<String, Catalogue>,
    default_language: String,
    stop_keywords: StopKeywords,
}

impl Catalogues {
    /// Loads each language (the configured ones, the default, and those whose stop
    /// keywords are honoured): the built-in file, then the override's keys. Stop keywords
    /// are matched in that order, so a word two languages share answers in the first.
    pub fn load(
        languages: &[String],
        stop_keyword_languages: &[String],
        default_language: &str,
        override_dir: Option<&Path>,
    ) -> Result<Catalogues, CatalogueError> {
        let mut order: Vec<String> = vec![];
        let all = languages
            .iter()
            .chain(std::iter::once(&default_language.to_string()))
            .chain(stop_keyword_languages)
            .cloned()
            .collect::<Vec<_>>();
        for language in all {
            if !order.contains(&language) {
                order.push(language);
            }
        }
        let mut by_language = BTreeMap::new();
        for language in &order {
            by_language.insert(language.clone(), load_one(language, override_dir)?);
        }
        let stop_keywords = StopKeywords::new(
            order
                .iter()
                .filter_map(|l| by_language.get(l).map(|c| (l.clone(), c.stop_keywords.clone()))),
        );
        Ok(Catalogues {
            by_language,
            default_language: default_language.to_string(),
            stop_keywords,
        })
    }

    /// The catalogue for a language code as stored (`pt_BR`) or as HubSpot spells it
    /// (`pt-br`), through the fallback chain to the default language.
    pub fn get(&self, language: &str) -> &Catalogue {
        let available: Vec<String> = self.by_language.keys().cloned().collect();
        let chosen = pick_language(Some(language), &available, &self.default_language);
        self.by_language
            .get(&chosen)
            .or_else(|| self.by_language.get(&self.default_language))
            .unwrap_or_else(|| unreachable!("the default language's catalogue is always loaded"))
    }

    pub fn stop_keywords(&self) -> &StopKeywords {
        &self.stop_keywords
    }

    pub fn languages(&self) -> impl Iterator<Item = &str> {
        self.by_language.keys().map(String::as_str)
    }
}

impl Default for Catalogues {
    /// The built-in English catalogue alone (settings before `Settings::load` finishes).
    fn default() -> Catalogues {
        Catalogues::load(&["en_US".to_string()], &[], "en_US", None)
            .unwrap_or_else(|e| unreachable!("the built-in catalogue is tested: {e}"))
    }
}

fn load_one(language: &str, override_dir: Option<&Path>) -> Result<Catalogue, CatalogueError> {
    let invalid = |problem: String| CatalogueError::Invalid {
        language: language.to_string(),
        problem,
    };
    let built_in = BUILT_IN
        .iter()
        .find(|(code, _)| *code == language)
        .map(|(_, text)| *text);
    let overrides = match override_dir.map(|dir| dir.join(format!("{language}.toml"))) {
        Some(path) if path.exists() => {
            Some(std::fs::read_to_string(&path).map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?)
        }
        _ => None,
    };
    let mut merged = match built_in {
        Some(text) => text.parse::<toml::Table>().map_err(|e| invalid(e.to_string()))?,
        None if overrides.is_some() => toml::Table::new(),
        None => return Err(CatalogueError::Missing(language.to_string())),
    };
    if let Some(text) = overrides {
        let table = text.parse::<toml::Table>().map_err(|e| invalid(e.to_string()))?;
        merge(&mut merged, table);
    }
    toml::Value::Table(merged)
        .try_into::<Catalogue>()
        .map_err(|e| invalid(e.to_string()))
}

/// Overlays `over` on `base`, key by key inside tables.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(over_inner)) => merge(inner, over_inner),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_languages() -> Vec<String> {
        BUILT_IN.iter().map(|(code, _)| code.to_string()).collect()
    }

    #[test]
    fn every_built_in_catalogue_loads_with_the_placeholders_its_texts_need() {
        let catalogues = Catalogues::load(&all_languages(), &[], "en_US", None).expect("loads");
        for language in all_languages() {
            let c = catalogues.get(&language);
            assert!(!c.stop_keywords.is_empty(), "{language}");
            // Meta's limits: input labels and the Flow button 20 characters, OptIn 120.
            let short = [
                &c.flow.friend_name_label,
                &c.flow.friend_phone_label,
                &c.flow.message_label,
                &c.replies.flow_cta,
            ];
            for label in short {
                assert!(label.chars().count() <= 20, "{language}: {label}");
            }
            assert!(
                c.flow.consent_label.chars().count() <= 90,
                "{language}: room for the business name"
            );
            for (text, needs) in [
                (&c.replies.share_link, &["{friend_name}", "{code}", "{link}"][..]),
                (&c.replies.share_prefill, &["{code}"]),
                (&c.replies.friend_welcome, &["{code}"]),
                (&c.replies.flow_prompt, &["{greeting}"]),
                (&c.flow.consent_label, &["{business_name}"]),
            ] {
                for placeholder in needs {
                    assert!(text.contains(placeholder), "{language}: {text} lacks {placeholder}");
                }
            }
            for refusal in NominationRefusal::ALL {
                assert!(!c.refusal(&refusal, "Ana").contains('{'), "{language} {refusal:?}");
                assert!(!c.flow_error(&refusal, "Ana").contains('{'), "{language} {refusal:?}");
                assert!(
                    c.flow_error(&refusal, "Ana").chars().count() <= 80,
                    "{language} {refusal:?}"
                );
            }
        }
        assert_eq!(catalogues.get("es").stop_keywords[0], "BAJA");
    }

    #[test]
    fn languages_fall_back_along_the_chain() {
        let configured: Vec<String> = ["en_US", "es", "pt_BR"].iter().map(|s| s.to_string()).collect();
        let catalogues = Catalogues::load(&configured, &[], "en_US", None).expect("loads");
        let flow_cta = |language: &str| catalogues.get(language).replies.flow_cta.clone();
        let english = flow_cta("en_US");
        assert_eq!(flow_cta("pt-br"), flow_cta("pt_BR"));
        assert_eq!(flow_cta("pt"), flow_cta("pt_BR"), "pt takes the Portuguese we have");
        assert_eq!(flow_cta("es_MX"), flow_cta("es"));
        assert_eq!(flow_cta("de"), english, "not configured: the default");
        assert_eq!(flow_cta(""), english);
        assert_ne!(flow_cta("es"), english);
    }

    #[test]
    fn an_override_directory_changes_one_key_and_adds_a_language() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("en_US.toml"), "[replies]\nopt_out_ack = \"Bye!\"\n").expect("write");
        let dutch = BUILT_IN[0].1.replace("Invite a friend", "Nodig een vriend uit");
        std::fs::write(dir.path().join("nl.toml"), dutch).expect("write");
        let languages = vec!["en_US".to_string(), "nl".to_string()];
        let catalogues = Catalogues::load(&languages, &[], "en_US", Some(dir.path())).expect("loads");
        assert_eq!(catalogues.get("en_US").replies.opt_out_ack, "Bye!");
        assert_eq!(
            catalogues.get("en_US").replies.flow_cta,
            "Invite a friend",
            "other keys kept"
        );
        assert_eq!(catalogues.get("nl").replies.flow_cta, "Nodig een vriend uit");
        std::fs::write(dir.path().join("en_US.toml"), "[replies]\nno_such_key = \"x\"\n").expect("write");
        assert!(Catalogues::load(&languages, &[], "en_US", Some(dir.path())).is_err());
        assert!(matches!(
            Catalogues::load(&["xx".to_string()], &[], "en_US", None),
            Err(CatalogueError::Missing(_))
        ));
    }
}
