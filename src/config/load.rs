//! Loading: built-in defaults, then a file, then the environment; and errors that name
//! the whole key, where it came from, and what was meant.

use std::path::Path;

use crate::catalogue::Catalogues;

use super::settings::Settings;
use super::shape::{self, Misfit};
use super::{ConfigError, DEFAULT_TOML};

/// A list setting from the environment: `a,b,c`, or a JSON array (`["a","b"]`, numbers
/// allowed), each item a string.
fn env_list(value: &str) -> Result<Vec<String>, String> {
    let value = value.trim();
    if !value.starts_with('[') {
        return Ok(value
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect());
    }
    let refused =
        || "a list is comma-separated (a,b) or a JSON array ([\"a\",\"b\"]) of strings or numbers".to_string();
    let items: Vec<serde_json::Value> = serde_json::from_str(value).map_err(|_| refused())?;
    items
        .into_iter()
        .map(|item| match item {
            serde_json::Value::String(s) => Ok(s),
            serde_json::Value::Number(n) => Ok(n.to_string()),
            _ => Err(refused()),
        })
        .collect()
}

/// Settings that left the configuration, each with where it went: a configuration that
/// still sets one is told so rather than "unknown key".
const REMOVED_KEYS: [(&str, &str); 4] = [
    (
        "replies",
        "the reply texts moved to the message catalogue, `[replies]` in templates/messages/<language>.toml; put the texts you change in a file of that name under `templates.catalogue_dir`",
    ),
    (
        "programme.stop_keywords",
        "stop keywords moved to each language's message catalogue (`stop_keywords` in templates/messages/<language>.toml, overridden under `templates.catalogue_dir`); `programme.stop_keyword_languages` picks the languages",
    ),
    (
        "programme.default_personal_message",
        "it moved to the message catalogue, `default_personal_message` under `[replies]` in templates/messages/<language>.toml (overridden under `templates.catalogue_dir`)",
    ),
    (
        "templates.flow_cta",
        "it moved to the message catalogue, `flow_cta` under `[replies]` in templates/messages/<language>.toml (overridden under `templates.catalogue_dir`)",
    ),
];

/// A misfit of the merged configuration, said with the whole key, where it came from,
/// and what was meant.
fn explain(misfit: Misfit, env: &std::collections::HashMap<String, String>, file: Option<&Path>) -> ConfigError {
    let (section, field, known) = match misfit {
        Misfit::NotOneOf { key, value, accepted } => {
            let accepted = accepted.iter().map(|name| format!("`{name}`")).collect::<Vec<_>>();
            return ConfigError::NotOneOf {
                key,
                value,
                accepted: accepted.join(", "),
            };
        }
        Misfit::UnknownKey { section, field, known } => (section, field, known),
    };
    let parent = section.as_deref();
    let key = match parent {
        Some(parent) => format!("{parent}.{field}"),
        None => field.clone(),
    };
    let variable = env
        .keys()
        .filter_map(|name| name.strip_prefix("REFERLOOP_").map(|rest| (name, rest)))
        .find(|(_, rest)| rest.to_ascii_lowercase().replace("__", ".").starts_with(&key))
        .map(|(name, _)| name.clone());
    let source_note = match &variable {
        Some(name) => format!(" (from the environment variable {name})"),
        None => match file {
            Some(path) => match line_of(path, &field) {
                Some(line) => format!(" (in {}, line {line})", path.display()),
                None => format!(" (in {})", path.display()),
            },
            None => " (in the configuration file)".to_string(),
        },
    };
    let removed = REMOVED_KEYS
        .iter()
        .find(|(gone, _)| key == *gone || key.starts_with(&format!("{gone}.")))
        .map(|(_, went)| format!("; {went}"));
    // REFERLOOP_WHATSAPP_APP_SECRET: the section and the key need a double underscore.
    let separator_hint = variable.as_ref().filter(|_| parent.is_none()).and_then(|name| {
        known
            .iter()
            .find(|section| field.starts_with(&format!("{section}_")))
            .map(|section| {
                let rest = &field[section.len() + 1..];
                format!(
                    "; a section and its key are separated by a double underscore: `REFERLOOP_{}__{}` (not {name})",
                    section.to_ascii_uppercase(),
                    rest.to_ascii_uppercase()
                )
            })
    });
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    let suggestion = removed
        .or(separator_hint)
        .or_else(|| {
            nearest(&field, &known).map(|near| {
                let known = match parent {
                    Some(parent) => format!("{parent}.{near}"),
                    None => near.to_string(),
                };
                format!("; did you mean `{known}`?")
            })
        })
        .unwrap_or_default();
    ConfigError::UnknownKey {
        key,
        source_note,
        suggestion,
    }
}

/// The line (from 1) of a TOML file where `key` is set or opened as a table: the first
/// line that starts with it and then `=`, `.` or `]`.
fn line_of(path: &Path, key: &str) -> Option<usize> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .position(|line| {
            let line = line.trim_start().trim_start_matches('[').trim_start();
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with(['=', '.', ']']))
        })
        .map(|index| index + 1)
}

/// The closest name by edit distance (strsim's Levenshtein), when it is close enough to
/// be a typo.
fn nearest<'a>(typed: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::levenshtein(typed, k), *k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 3))
        .min()
        .map(|(_, k)| k)
}

impl Settings {
    /// Loads the layers from the real environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Loads the layers with an explicit environment, so tests need not touch the process's.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let env: std::collections::HashMap<String, String> = env
            .into_iter()
            // REFERLOOP_CONFIG names the file (read by the command line), not a setting.
            .filter(|(k, _)| (k.starts_with("REFERLOOP_") && k != "REFERLOOP_CONFIG") || k == "DATABASE_URL")
            .collect();
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("REFERLOOP")
                .prefix_separator("_")
                .separator("__")
                // Values stay strings (a verify token "007" must not become 7); serde
                // converts numbers and booleans where the setting is one.
                .source(Some(env.clone())),
        );
        // Lists come as comma-separated strings; split them here so that every value stays
        // a string (config's own list parsing would also coerce scalars).
        for (name, value) in &env {
            let Some(rest) = name.strip_prefix("REFERLOOP_") else {
                continue;
            };
            let key = rest.to_ascii_lowercase().replace("__", ".");
            if shape::list_keys().contains(&key) {
                let items = env_list(value).map_err(|problem| ConfigError::InvalidList {
                    key: key.clone(),
                    problem: format!("{problem} (from the environment variable {name})"),
                })?;
                builder = builder.set_override(key, items)?;
            }
        }
        if let Some(url) = env.get("DATABASE_URL") {
            builder = builder.set_override("database.url", url.as_str())?;
        }
        let merged = builder.build()?;
        // Checked against the settings' shape first, so that an unknown key or value is
        // said from the types; what is left for serde is a value of the wrong type.
        let tree: serde_json::Value = merged.clone().try_deserialize()?;
        if let Some(misfit) = shape::misfit(&tree) {
            return Err(explain(misfit, &env, file));
        }
        let mut settings: Settings = merged.try_deserialize()?;
        settings.validate()?;
        let templates = &settings.templates;
        let override_dir = Some(templates.catalogue_dir.trim())
            .filter(|d| !d.is_empty())
            .map(Path::new);
        settings.catalogues = Catalogues::load(
            &templates.languages,
            &settings.programme.stop_keyword_languages,
            &templates.default_language,
            override_dir,
        )
        .map_err(|e| ConfigError::Invalid {
            key: "templates.catalogue_dir",
            problem: e.to_string(),
        })?;
        Ok(settings)
    }
}
