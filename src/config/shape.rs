//! The configuration's shape, read from the JSON Schema that `schemars` derives from the
//! settings' types: which keys each section has, which keys are lists, and which values
//! an enumerated setting accepts. The merged configuration is checked against it before
//! it is deserialised, so a refusal names the whole key and what was meant from the
//! types themselves, never from a library's error text.

use std::sync::OnceLock;

use serde_json::{Map, Value};

use super::settings::Settings;

/// What the shape refuses in a merged configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Misfit {
    /// `key` (dotted, whole) is no setting; `known` are the keys its section has.
    UnknownKey {
        section: Option<String>,
        field: String,
        known: Vec<String>,
    },
    /// `value` at `key` is not one of `accepted`.
    NotOneOf {
        key: String,
        value: String,
        accepted: Vec<String>,
    },
}

/// The settings' schema, derived once.
fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| schemars::schema_for!(Settings).to_value())
}

/// A schema node with its `$ref` followed (`#/$defs/<name>`).
fn resolved(node: &Value) -> &Value {
    let target = node
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|reference| reference.strip_prefix("#/$defs/"))
        .and_then(|name| schema().get("$defs").and_then(|defs| defs.get(name)));
    match target {
        Some(target) => resolved(target),
        None => node,
    }
}

/// The node an optional setting (`anyOf`/`oneOf` with `null`) has when it is set.
fn unwrapped(node: &Value) -> &Value {
    let node = resolved(node);
    for alternatives in ["anyOf", "oneOf"] {
        let Some(options) = node.get(alternatives).and_then(Value::as_array) else {
            continue;
        };
        let set: Vec<&Value> = options
            .iter()
            .filter(|option| option.get("type").and_then(Value::as_str) != Some("null"))
            .collect();
        if let [only] = set.as_slice() {
            if set.len() < options.len() {
                return unwrapped(only);
            }
        }
    }
    node
}

/// The names an enumerated node accepts: `enum`, or `oneOf` alternatives each a `const`.
fn accepted(node: &Value) -> Option<Vec<String>> {
    let names = |values: &[Value]| values.iter().filter_map(Value::as_str).map(str::to_string).collect();
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        return Some(names(values));
    }
    let options = node.get("oneOf").and_then(Value::as_array)?;
    let consts: Vec<Value> = options
        .iter()
        .map(|o| resolved(o).get("const").cloned())
        .collect::<Option<_>>()?;
    Some(names(&consts))
}

fn is_type(node: &Value, wanted: &str) -> bool {
    match node.get("type") {
        Some(Value::String(one)) => one == wanted,
        Some(Value::Array(several)) => several.iter().any(|t| t.as_str() == Some(wanted)),
        _ => false,
    }
}

/// The first misfit of `value` (the merged configuration, keys lower case) against the
/// settings' schema, in key order.
pub(super) fn misfit(value: &Value) -> Option<Misfit> {
    walk(schema(), value, None)
}

fn walk(node: &Value, value: &Value, path: Option<&str>) -> Option<Misfit> {
    let node = unwrapped(node);
    if value.is_null() {
        return None;
    }
    if let (Some(accepted), Some(text)) = (accepted(node), value.as_str()) {
        if accepted.iter().any(|name| name == text) {
            return None;
        }
        return Some(Misfit::NotOneOf {
            key: path.unwrap_or_default().to_string(),
            value: text.to_string(),
            accepted,
        });
    }
    match value {
        Value::Object(fields) => walk_section(node, fields, path),
        Value::Array(items) => {
            let item = node.get("items")?;
            items.iter().find_map(|value| walk(item, value, path))
        }
        _ => None,
    }
}

fn walk_section(node: &Value, fields: &Map<String, Value>, path: Option<&str>) -> Option<Misfit> {
    let properties = node.get("properties").and_then(Value::as_object);
    let others = node.get("additionalProperties");
    for (name, value) in fields {
        let key = match path {
            Some(path) => format!("{path}.{name}"),
            None => name.clone(),
        };
        let child = properties.and_then(|p| p.get(name)).or(match others {
            Some(Value::Bool(false)) | None => None,
            Some(schema) => Some(schema),
        });
        let Some(child) = child else {
            if properties.is_none() && others.is_none() {
                continue; // a free-form value: nothing to check against
            }
            return Some(Misfit::UnknownKey {
                section: path.map(str::to_string),
                field: name.clone(),
                known: properties.map(|p| p.keys().cloned().collect()).unwrap_or_default(),
            });
        };
        if let Some(misfit) = walk(child, value, Some(&key)) {
            return Some(misfit);
        }
    }
    None
}

/// The dotted keys whose setting is a list (given in the environment as `a,b,c`).
pub(super) fn list_keys() -> &'static [String] {
    static KEYS: OnceLock<Vec<String>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut keys = Vec::new();
        collect_lists(schema(), None, &mut keys);
        keys.sort();
        keys
    })
}

fn collect_lists(node: &Value, path: Option<&str>, keys: &mut Vec<String>) {
    let node = unwrapped(node);
    if is_type(node, "array") {
        keys.extend(path.map(str::to_string));
        return;
    }
    let Some(properties) = node.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, child) in properties {
        let key = match path {
            Some(path) => format!("{path}.{name}"),
            None => name.clone(),
        };
        collect_lists(child, Some(&key), keys);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_list_keys_are_the_list_settings() {
        let keys = list_keys();
        for key in [
            "worker.retry_schedule_seconds",
            "programme.stop_button_payloads",
            "programme.stop_keyword_languages",
            "hubspot_properties.phone",
            "templates.languages",
            "templates.invite_body",
            "templates.reward_body",
            "api.tokens",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} in {keys:?}");
        }
        assert!(!keys.iter().any(|k| k == "server.listen"), "{keys:?}");
    }

    #[test]
    fn unknown_keys_and_values_are_found_with_their_section() {
        let typo = json!({"whatsapp": {"app_secert": "x"}});
        let Some(Misfit::UnknownKey { section, field, known }) = misfit(&typo) else {
            panic!("an unknown key");
        };
        assert_eq!((section.as_deref(), field.as_str()), (Some("whatsapp"), "app_secert"));
        assert!(known.iter().any(|k| k == "app_secret"), "{known:?}");

        let top = json!({"whatsap": {}});
        assert!(matches!(misfit(&top), Some(Misfit::UnknownKey { section: None, .. })));

        let value = json!({"log": {"format": "xml"}});
        assert_eq!(
            misfit(&value),
            Some(Misfit::NotOneOf {
                key: "log.format".into(),
                value: "xml".into(),
                accepted: vec!["text".into(), "json".into()],
            })
        );
        // An enum whose variants are documented is a `oneOf` of constants in the schema.
        let documented = json!({"whatsapp": {"flow_kind": "dynamic"}});
        assert_eq!(
            misfit(&documented),
            Some(Misfit::NotOneOf {
                key: "whatsapp.flow_kind".into(),
                value: "dynamic".into(),
                accepted: vec!["static".into(), "endpoint".into()],
            })
        );
        let listed = json!({"templates": {"invite_body": ["first_name", "nickname"]}});
        assert!(matches!(misfit(&listed), Some(Misfit::NotOneOf { key, .. }) if key == "templates.invite_body"));

        // Free-form maps take any key; secrets and their siblings are known.
        let fine = json!({"rewards": {"friend": {"descriptions": {"xx": "y"}, "kind": "static_code"}},
                          "whatsapp": {"app_secret": "s", "flow_kind": "endpoint"}});
        assert_eq!(misfit(&fine), None);
    }
}
